"""The training loop shared by the three stages, on ``accelerate.Accelerator``.

    loop = TrainingLoop(model, LoopConfig(max_steps=1000, eval_every=100, save_every=100,
                                          best_metric="r2", best_mode="max"),
                        output_dir="runs/x", train_dataloader=train_dl, compute_loss=compute_loss,
                        eval_dataloader=val_dl, evaluate=evaluate)
    result = loop.train(resume_from=None)          # or "latest", "auto", or a checkpoint folder

``compute_loss(model, batch) -> (loss, {name: scalar})`` returns this process's loss on one
micro-batch; ``evaluate(model, dataloader, accelerator) -> {name: float}`` returns validation
metrics over the whole validation set (gathered across processes, e.g. with
``accelerator.gather_for_metrics``). The loop owns everything else:

* AdamW with weight decay only on parameters with >= 2 dimensions (:func:`parameter_groups`);
* linear warm-up then ONE cosine decay over all optimisation steps (SPEC B5, :mod:`.schedule`);
* gradient accumulation (a shorter last group of an epoch is weighted as a full one), clipping,
  bf16 autocast on CUDA devices that support it (on CPU only when asked for);
* validation every ``eval_every`` steps and at the end, with the best model chosen on a real
  validation metric (``best_metric``, ``best_mode``), never on a training loss (SPEC B6), and
  saved to ``OUTPUT/best``;
* ``save_state`` checkpoints every ``save_every`` steps in ``OUTPUT/checkpoints/step-XXXXXXXX``
  (written as ``step-XXXXXXXX.partial`` and renamed when complete, so a killed run never leaves a
  half-written checkpoint behind that ``resume_from="latest"`` would pick);
  resuming restores model, optimiser, scheduler, RNG states, step and position in the epoch, so a
  resumed run ends with the same weights as an uninterrupted one;
* metrics as JSON lines in ``OUTPUT/metrics.jsonl`` (main process) and to accelerate trackers;
* a NaN or infinite training loss (checked on the logged averages, which are always computed
  before a checkpoint is written) or validation metric stops the run with an error before any
  such weights are saved.

Multi-process runs: the data order depends only on the seed and the epoch (:class:`EpochShuffleSampler`),
training metrics are averaged across processes, validation metrics are taken from the main
process (broadcast), and every decision (evaluate, save, stop) depends only on the step, so all
processes follow the same control flow.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from .schedule import warmup_cosine_scheduler

__all__ = [
    "EpochShuffleSampler",
    "LoopConfig",
    "TrainResult",
    "TrainingLoop",
    "build_accelerator",
    "find_latest_checkpoint",
    "make_dataloader",
    "parameter_groups",
    "resolve_mixed_precision",
    "write_run_summary",
]

CHECKPOINT_FOLDER = "checkpoints"
#: Suffix of a checkpoint folder being written (ignored by :func:`find_latest_checkpoint`).
PARTIAL_SUFFIX = ".partial"
BEST_FOLDER = "best"
METRICS_FILE = "metrics.jsonl"
_CHECKPOINT_PATTERN = re.compile(r"^step-(\d{8})$")

ComputeLoss = Callable[[nn.Module, Any], "tuple[torch.Tensor, Mapping[str, Any]] | torch.Tensor"]
Evaluate = Callable[[nn.Module, Any, Any], Mapping[str, float]]


@dataclass
class LoopConfig:
    """Optimisation and bookkeeping settings of :class:`TrainingLoop` (the ``training:`` YAML section).

    Attributes:
        seed: seeds python, numpy and torch at the start and fixes the data order.
        num_epochs: passes over the training data (ignored when ``max_steps`` is set).
        max_steps: optimisation steps of the whole run; ``None`` = ``num_epochs`` epochs.
        gradient_accumulation_steps: micro-batches per optimisation step.
        learning_rate: peak LR of every parameter group without its own ``lr``.
        weight_decay: AdamW decoupled weight decay, applied to parameters with >= 2 dimensions only.
        adam_beta1, adam_beta2, adam_epsilon: AdamW settings.
        warmup_steps: steps of linear warm-up; ``None`` = ``round(warmup_ratio * total steps)``.
        warmup_ratio: warm-up as a fraction of all optimisation steps (when ``warmup_steps`` is None).
        min_lr_ratio: LR at the last step as a fraction of the peak (end of the single cosine).
        max_grad_norm: clip the global gradient norm to this; ``None`` = no clipping.
        mixed_precision: ``"auto"`` (bf16 on a CUDA device that supports it, else off), ``"no"``,
            ``"bf16"`` (also forces bf16 autocast on CPU) or ``"fp16"`` (CUDA only).
        cpu: train on the CPU even when a GPU is present.
        log_every: average and log the training metrics every this many steps.
        eval_every: validate every this many steps (and always after the last step); ``None`` =
            after every epoch.
        save_every: write a resumable checkpoint every this many steps; ``None`` = never.
        keep_checkpoints: how many of the newest checkpoints to keep (older ones are deleted).
        best_metric: the validation metric (a key of ``evaluate``'s dict) that chooses the best model.
        best_mode: ``"max"`` if higher is better for ``best_metric``, ``"min"`` if lower is.
        report_to: accelerate trackers (e.g. ``["tensorboard"]``, ``["wandb"]``); empty = none.
        progress_bar: show a tqdm bar on the main process.
    """

    seed: int = 0
    num_epochs: int = 1
    max_steps: int | None = None
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    weight_decay: float = 1e-4
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    warmup_steps: int | None = None
    warmup_ratio: float = 0.05
    min_lr_ratio: float = 0.1
    max_grad_norm: float | None = 1.0
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    cpu: bool = False
    log_every: int = 10
    eval_every: int | None = None
    save_every: int | None = None
    keep_checkpoints: int = 2
    best_metric: str = "loss"
    best_mode: Literal["min", "max"] = "min"
    report_to: list[str] = field(default_factory=list)
    progress_bar: bool = True

    def __post_init__(self) -> None:
        positive = {
            "num_epochs": self.num_epochs,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "log_every": self.log_every,
            "keep_checkpoints": self.keep_checkpoints,
        }
        positive |= {name: getattr(self, name) for name in ("max_steps", "eval_every", "save_every")
                     if getattr(self, name) is not None}  # fmt: skip
        for name, value in positive.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"training.{name} must be a positive integer, got {value!r}.")
        if self.warmup_steps is not None and (isinstance(self.warmup_steps, bool) or self.warmup_steps < 0):
            raise ValueError(f"training.warmup_steps must be >= 0 or null, got {self.warmup_steps!r}.")
        for name, low, high in (("warmup_ratio", 0.0, 1.0), ("min_lr_ratio", 0.0, 1.0),
                                ("adam_beta1", 0.0, 1.0), ("adam_beta2", 0.0, 1.0)):  # fmt: skip
            value = getattr(self, name)
            if not (math.isfinite(value) and low <= value <= high) or (name.startswith("adam") and value == 1.0):
                raise ValueError(f"training.{name} must lie in [{low}, {high}), got {value!r}.")
        for name in ("learning_rate", "adam_epsilon"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"training.{name} must be a positive number, got {getattr(self, name)!r}.")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"training.weight_decay must be >= 0, got {self.weight_decay!r}.")
        if self.max_grad_norm is not None and not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise ValueError(
                f"training.max_grad_norm must be a positive number or null (no clipping), got {self.max_grad_norm!r}."
            )
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise ValueError(f"training.mixed_precision must be auto, no, bf16 or fp16, got {self.mixed_precision!r}.")
        if self.best_mode not in ("min", "max"):
            raise ValueError(f"training.best_mode must be 'min' or 'max', got {self.best_mode!r}.")
        if not isinstance(self.best_metric, str) or not self.best_metric:
            raise ValueError("training.best_metric must name a validation metric (e.g. 'loss' or 'r2').")


# --------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------


class EpochShuffleSampler(Sampler[int]):
    """Indices ``0..num_samples-1`` in an order fixed by ``(seed, epoch)`` alone.

    Every process draws the same permutation (accelerate then gives each process its share of the
    batches), and a resumed run sees the same order as the run it continues. ``shuffle=False``
    yields ``0..num_samples-1`` in order. Call :meth:`set_epoch` before each epoch (the training
    loop and accelerate's data loaders do).
    """

    def __init__(self, num_samples: int, seed: int = 0, shuffle: bool = True) -> None:
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}: is the dataset empty?")
        self.num_samples = num_samples
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.num_samples))
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_samples)
        return iter(order.tolist())

    def __len__(self) -> int:
        return self.num_samples


def make_dataloader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    collate_fn: Callable | None = None,
    num_workers: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """A ``DataLoader`` whose order depends only on ``(seed, epoch)`` and that leaves the global RNG alone.

    It has its own ``torch.Generator`` (a plain ``DataLoader`` draws its workers' base seed from the
    global torch RNG each time an iterator starts, which would make a resumed run drift from an
    uninterrupted one). Randomness inside ``collate_fn`` must likewise be derived from the samples
    (e.g. seeds from indices and the epoch), never from the global RNG.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if len(dataset) == 0:
        raise ValueError("The dataset is empty: a data loader needs at least one sample.")
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochShuffleSampler(len(dataset), seed, shuffle),
        collate_fn=collate_fn,
        num_workers=num_workers,
        drop_last=drop_last,
        generator=generator,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
    )


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: trainable parameters with >= 2 dimensions get ``weight_decay``, others (biases,
    norms, 1-D scales such as a logit scale) get none. Frozen parameters are left out; empty groups
    are dropped.

    Raises:
        ValueError: the model has no trainable parameter.
    """
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.ndim >= 2 else no_decay).append(parameter)
    if not decay and not no_decay:
        raise ValueError("The model has no trainable parameters (all have requires_grad=False): nothing to train.")
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


def resolve_mixed_precision(setting: str, cpu: bool = False) -> str:
    """The accelerate ``mixed_precision`` for a :class:`LoopConfig` setting on this machine.

    ``"auto"`` is ``"bf16"`` on a CUDA device that supports bf16 (and ``cpu`` is False), else
    ``"no"``. ``"fp16"`` needs CUDA.
    """
    on_cuda = torch.cuda.is_available() and not cpu
    if setting == "auto":
        return "bf16" if on_cuda and torch.cuda.is_bf16_supported() else "no"
    if setting == "fp16" and not on_cuda:
        raise ValueError("mixed_precision='fp16' needs a CUDA GPU; use 'bf16' (supported on CPU) or 'no'.")
    if setting not in ("no", "bf16", "fp16"):
        raise ValueError(f"mixed_precision must be auto, no, bf16 or fp16, got {setting!r}.")
    return setting


def build_accelerator(config: LoopConfig, output_dir: str | Path):
    """The ``Accelerator`` for ``config``: accumulation, precision, trackers, project folder.

    Without CUDA, a multi-process launch (``WORLD_SIZE > 1``) runs on CPU with gloo: a plain
    ``Accelerator()`` there would silently train independent copies (see ENVIRONMENT.md).
    """
    from accelerate import Accelerator
    from accelerate.utils import GradientAccumulationPlugin

    multi_process = int(os.environ.get("WORLD_SIZE", "1")) > 1
    cpu = config.cpu or (multi_process and not torch.cuda.is_available())
    accelerator = Accelerator(
        mixed_precision=resolve_mixed_precision(config.mixed_precision, cpu),
        cpu=cpu,
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=config.gradient_accumulation_steps, sync_with_dataloader=True
        ),
        log_with=list(config.report_to) or None,
        project_dir=str(output_dir),
    )
    # accelerate drops a requested tracker whose package is missing with only a log message.
    active = {str(getattr(tracker, "name", tracker)).lower() for tracker in accelerator.log_with}
    missing = [name for name in config.report_to if name.lower() not in active and name.lower() != "all"]
    if missing:
        raise ValueError(
            f"training.report_to names tracker(s) {missing} that accelerate cannot use here (package not installed, "
            "e.g. `pip install tensorboard`, or an unknown name); install them or remove them from report_to."
        )
    return accelerator


def write_run_summary(path: str | Path, summary: Mapping[str, Any], accelerator, started: float) -> None:
    """Write a stage's ``training_summary.json``: ``summary`` followed by where and how the run ran
    (``num_processes``, ``device``, ``mixed_precision``) and its wall time in seconds since ``started``
    (a ``time.perf_counter()`` value). Call it on the main process only."""
    record = {
        **summary,
        "num_processes": accelerator.num_processes,
        "device": str(accelerator.device),
        "mixed_precision": accelerator.mixed_precision,
        "wall_time_s": round(time.perf_counter() - started, 2),
    }
    Path(path).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def find_latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest ``OUTPUT/checkpoints/step-XXXXXXXX`` folder, or None."""
    folder = Path(output_dir) / CHECKPOINT_FOLDER
    if not folder.is_dir():
        return None
    steps = sorted(
        (int(match.group(1)), path)
        for path in folder.iterdir()
        if path.is_dir() and (match := _CHECKPOINT_PATTERN.match(path.name))
    )
    return steps[-1][1] if steps else None


class TrainerState:
    """Progress that a checkpoint must restore besides model, optimiser, scheduler and RNG."""

    def __init__(self, total_steps: int) -> None:
        self.total_steps = total_steps
        self.global_step = 0
        self.epoch = 0
        self.batches_in_epoch = 0
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.last_eval_step: int | None = None

    def state_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["total_steps"] != self.total_steps:
            raise ValueError(
                f"The checkpoint belongs to a run of {state['total_steps']} optimisation steps, but this run has "
                f"{self.total_steps} (num_epochs, max_steps, batch size, accumulation or dataset changed). Resume "
                "with the same settings, or start a new run in another output folder."
            )
        for key, value in state.items():
            setattr(self, key, value)


class MetricsLog:
    """JSON lines in ``path``, written by the main process only."""

    def __init__(self, path: Path, is_main_process: bool) -> None:
        self.path = path
        self.is_main_process = is_main_process

    def reset(self) -> None:
        if self.is_main_process:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("", encoding="utf-8")

    def truncate_after(self, step: int) -> None:
        """Drop records of steps after ``step`` (what a stopped run logged after its last checkpoint)."""
        if not self.is_main_process or not self.path.is_file():
            return
        kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]  # fmt: skip
        self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def write(self, record: Mapping[str, Any]) -> None:
        if self.is_main_process:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")


@dataclass
class TrainResult:
    """What :meth:`TrainingLoop.train` did.

    Attributes:
        global_step: optimisation steps taken in total (``== total_steps``).
        total_steps: steps of the schedule.
        epochs: epochs started (the last may be partial).
        best_metric: name of the validation metric that chose the best model.
        best_value: its best value, ``None`` without validation.
        best_step: the step of the best model, ``None`` without validation.
        best_dir: folder holding the best model (``save_pretrained`` layout for HF models), or None.
        last_eval: validation metrics after the last step (empty without validation).
        metrics_file: the JSONL log.
    """

    global_step: int
    total_steps: int
    epochs: int
    best_metric: str
    best_value: float | None
    best_step: int | None
    best_dir: Path | None
    last_eval: dict[str, float]
    metrics_file: Path


def _scalar(value: Any, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"Metric {name!r} from compute_loss has shape {tuple(value.shape)}; metrics must be scalars."
            )
        return value.detach().float().reshape(())
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return torch.tensor(float(value))
    raise ValueError(
        f"Metric {name!r} from compute_loss is {type(value).__name__}; metrics must be numbers or scalar tensors."
    )


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------


class TrainingLoop:
    """One training run of ``model``; see the module docstring.

    Args:
        model: the module to train (``save_pretrained`` is used for the best model when it has one).
        config: a :class:`LoopConfig`.
        output_dir: folder for checkpoints, the best model and ``metrics.jsonl``.
        train_dataloader: training batches; build it with :func:`make_dataloader` (or any loader whose
            order depends only on the seed and ``set_epoch``) for resumable, multi-process-safe runs.
            Its sampler and its dataset get ``set_epoch(epoch)`` before each epoch when they have it
            (a dataset may derive per-sample randomness, e.g. random crops, from it).
        compute_loss: ``(model, batch) -> loss`` or ``(loss, metrics)``; ``loss`` a scalar tensor,
            ``metrics`` scalars to average and log (``loss`` itself is logged as ``loss``).
        eval_dataloader, evaluate: the validation split and ``(model, dataloader, accelerator) ->
            {metric: float}``; both or neither.
        optimizer_groups: AdamW parameter groups; default :func:`parameter_groups` (a group may set
            its own ``lr``; the schedule scales every group's peak LR).
        accelerator: an ``Accelerator`` made by :func:`build_accelerator` (made here when None).
        tracker_config: hyper-parameters to record with the accelerate trackers.
        project_name: tracker project name.
    """

    def __init__(
        self,
        model: nn.Module,
        config: LoopConfig,
        *,
        output_dir: str | Path,
        train_dataloader: DataLoader,
        compute_loss: ComputeLoss,
        eval_dataloader: DataLoader | None = None,
        evaluate: Evaluate | None = None,
        optimizer_groups: Sequence[dict[str, Any]] | None = None,
        accelerator=None,
        tracker_config: Mapping[str, Any] | None = None,
        project_name: str = "fmrilm",
    ) -> None:
        if (eval_dataloader is None) != (evaluate is None):
            raise ValueError("Give eval_dataloader and evaluate together (validation needs both), or neither.")
        self.config = config
        self.output_dir = Path(output_dir)
        self.compute_loss = compute_loss
        self.evaluate_fn = evaluate
        self.tracker_config = dict(tracker_config or {})
        self.project_name = project_name
        self.accelerator = accelerator if accelerator is not None else build_accelerator(config, output_dir)
        if self.accelerator.gradient_accumulation_steps != config.gradient_accumulation_steps:
            raise ValueError(
                f"The accelerator accumulates {self.accelerator.gradient_accumulation_steps} micro-batches but the "
                f"config says {config.gradient_accumulation_steps}: build it with build_accelerator(config, ...)."
            )
        if len(train_dataloader) == 0:
            raise ValueError(
                "The training data loader yields no batch (empty split, or drop_last with too few samples)."
            )

        groups = (
            list(optimizer_groups) if optimizer_groups is not None else parameter_groups(model, config.weight_decay)
        )
        optimizer = torch.optim.AdamW(
            groups,
            lr=config.learning_rate,
            betas=(config.adam_beta1, config.adam_beta2),
            eps=config.adam_epsilon,
            weight_decay=config.weight_decay,
        )
        # The sampler whose order depends on (seed, epoch), and the dataset (which may derive
        # per-sample randomness from the epoch): both are told the epoch before it starts.
        self._epoch_listeners = [
            obj
            for obj in (getattr(train_dataloader, "sampler", None), train_dataloader.dataset)
            if hasattr(obj, "set_epoch")
        ]
        if eval_dataloader is not None:
            self.model, self.optimizer, self.train_dataloader, self.eval_dataloader = self.accelerator.prepare(
                model, optimizer, train_dataloader, eval_dataloader
            )
        else:
            self.model, self.optimizer, self.train_dataloader = self.accelerator.prepare(
                model, optimizer, train_dataloader
            )
            self.eval_dataloader = None

        accumulation = config.gradient_accumulation_steps
        self.batches_per_epoch = len(self.train_dataloader)
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / accumulation)
        self.total_steps = config.max_steps or config.num_epochs * self.steps_per_epoch
        warmup = (
            config.warmup_steps if config.warmup_steps is not None else round(config.warmup_ratio * self.total_steps)
        )
        if warmup >= self.total_steps and warmup > 0:
            raise ValueError(
                f"training.warmup_steps ({warmup}) must be smaller than the run's {self.total_steps} optimisation steps."
            )
        self.warmup_steps = warmup
        # The scheduler is stepped by this loop once per optimisation step (not prepared: accelerate
        # would step it once per process), and saved with the checkpoints.
        self.scheduler = warmup_cosine_scheduler(optimizer, self.total_steps, warmup, config.min_lr_ratio)
        self.state = TrainerState(self.total_steps)
        self.accelerator.register_for_checkpointing(self.scheduler, self.state)
        self.metrics_log = MetricsLog(self.output_dir / METRICS_FILE, self.accelerator.is_main_process)
        self.best_dir = self.output_dir / BEST_FOLDER
        self._train_sums: dict[str, torch.Tensor] = {}
        self._train_count = 0
        self._last_grad_norm: float | None = None
        self._last_lr = self.scheduler.get_last_lr()[0]
        self.last_eval: dict[str, float] = {}

    # ---- public helpers ---------------------------------------------------------------------------

    @property
    def uses_trackers(self) -> bool:
        """Whether the accelerator has trackers (``report_to``, or trackers given to a custom accelerator)."""
        return bool(getattr(self.accelerator, "log_with", None))

    @property
    def unwrapped_model(self) -> nn.Module:
        """The model without accelerate's wrappers (DDP, autocast)."""
        return self.accelerator.unwrap_model(self.model)

    def save_model(self, folder: str | Path) -> Path:
        """Save the current weights to ``folder`` (``save_pretrained`` when the model has it); all processes call it."""
        folder = Path(folder)
        self.accelerator.wait_for_everyone()
        model = self.unwrapped_model
        if hasattr(model, "save_pretrained"):
            state_dict = self.accelerator.get_state_dict(self.model)
            model.save_pretrained(
                folder, is_main_process=self.accelerator.is_main_process, state_dict=state_dict,
                save_function=self.accelerator.save,
            )  # fmt: skip
        else:
            self.accelerator.save_model(self.model, folder)
        self.accelerator.wait_for_everyone()
        return folder

    # ---- the run ----------------------------------------------------------------------------------

    def train(self, resume_from: str | Path | None = None) -> TrainResult:
        """Train to ``total_steps``; ``resume_from`` = None (fresh), ``"latest"`` (newest checkpoint,
        which must exist), ``"auto"`` (newest checkpoint if any, else fresh) or a checkpoint folder.

        Raises:
            FileExistsError: a fresh run in an output folder that already holds checkpoints.
            FileNotFoundError: the checkpoint to resume from does not exist.
            FloatingPointError: the training loss became NaN or infinite.
        """
        from accelerate.utils import set_seed
        from tqdm.auto import tqdm

        accelerator = self.accelerator
        set_seed(self.config.seed)
        checkpoint = self._checkpoint_to_resume(resume_from)
        if checkpoint is not None:
            accelerator.load_state(str(checkpoint))
            self.metrics_log.truncate_after(self.state.global_step)
        else:
            self.metrics_log.reset()
        accelerator.wait_for_everyone()
        if self.uses_trackers:
            accelerator.init_trackers(self.project_name, config=_flat_tracker_config(self.tracker_config))

        progress = tqdm(
            total=self.total_steps, initial=self.state.global_step, desc="training", dynamic_ncols=True,
            disable=not (accelerator.is_local_main_process and self.config.progress_bar),
        )  # fmt: skip
        self.model.train()
        while self.state.global_step < self.total_steps:
            finished_epoch = self._train_epoch(progress)
            if finished_epoch:
                self.state.epoch += 1
                self.state.batches_in_epoch = 0
                if self.config.eval_every is None and self.state.global_step < self.total_steps:
                    self._validate()
        progress.close()
        if self.eval_dataloader is not None and self.state.last_eval_step != self.state.global_step:
            self._validate()
        accelerator.wait_for_everyone()
        if self.uses_trackers:
            accelerator.end_training()
        return TrainResult(
            global_step=self.state.global_step,
            total_steps=self.total_steps,
            epochs=self.state.epoch + (1 if self.state.batches_in_epoch else 0),
            best_metric=self.config.best_metric,
            best_value=self.state.best_value,
            best_step=self.state.best_step,
            best_dir=self.best_dir if self.state.best_step is not None else None,
            last_eval=dict(self.last_eval),
            metrics_file=self.metrics_log.path,
        )

    def _checkpoint_to_resume(self, resume_from: str | Path | None) -> Path | None:
        latest = find_latest_checkpoint(self.output_dir)
        if resume_from is None:
            if latest is not None:
                raise FileExistsError(
                    f"{self.output_dir} already holds checkpoints ({latest.name}); resume with resume_from='latest', "
                    "or train into another output folder (or delete it)."
                )
            return None
        if resume_from in ("latest", "auto"):
            if latest is None and resume_from == "latest":
                raise FileNotFoundError(f"No checkpoint to resume from in {self.output_dir / CHECKPOINT_FOLDER}.")
            return latest
        path = Path(resume_from)
        if not path.is_dir():
            raise FileNotFoundError(
                f"Checkpoint folder {path} not found; pass a checkpoints/step-XXXXXXXX folder or 'latest'."
            )
        return path

    def _train_epoch(self, progress) -> bool:
        """Continue the current epoch; True when it was completed, False when training ended inside it."""
        accelerator = self.accelerator
        accumulation = self.config.gradient_accumulation_steps
        loader = self.train_dataloader
        if self.state.batches_in_epoch:
            loader = accelerator.skip_first_batches(loader, self.state.batches_in_epoch)
        for listener in self._epoch_listeners:
            listener.set_epoch(self.state.epoch)
        loader.set_epoch(self.state.epoch)
        for batch in loader:
            position = self.state.batches_in_epoch
            group_start = position - position % accumulation
            group_size = min(accumulation, self.batches_per_epoch - group_start)
            with accelerator.accumulate(self.model):
                output = self.compute_loss(self.model, batch)
                loss, metrics = output if isinstance(output, tuple) else (output, {})
                if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                    raise TypeError("compute_loss must return a scalar loss tensor (or a (loss, metrics) tuple).")
                # accelerate divides by the accumulation steps; a shorter last group weighs as a full one.
                accelerator.backward(loss * (accumulation / group_size) if group_size != accumulation else loss)
                if accelerator.sync_gradients and self.config.max_grad_norm is not None:
                    grad_norm = accelerator.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
                    self._last_grad_norm = None if grad_norm is None else float(grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            self.state.batches_in_epoch += 1
            self._accumulate_metrics(loss, metrics)
            if accelerator.sync_gradients:
                self._last_lr = self.scheduler.get_last_lr()[0]  # the LR this step used
                self.scheduler.step()
                self.state.global_step += 1
                progress.update(1)
                self._after_step(progress)
                if self.state.global_step >= self.total_steps:
                    return self.state.batches_in_epoch >= self.batches_per_epoch
        return True

    def _accumulate_metrics(self, loss: torch.Tensor, metrics: Mapping[str, Any]) -> None:
        values = {"loss": _scalar(loss, "loss")} | {
            name: _scalar(v, name) for name, v in metrics.items() if name != "loss"
        }
        for name, value in values.items():
            self._train_sums[name] = self._train_sums.get(name, 0.0) + value
        self._train_count += 1

    def _after_step(self, progress) -> None:
        step = self.state.global_step
        save_now = self.config.save_every is not None and step % self.config.save_every == 0 and step < self.total_steps
        # Pending training metrics are logged before a checkpoint, so a resumed run's log matches.
        if step % self.config.log_every == 0 or step == self.total_steps or save_now:
            self._log_training(progress)
        if self.config.eval_every is not None and (step % self.config.eval_every == 0 or step == self.total_steps):
            self._validate()
        if save_now:
            self._save_checkpoint()

    def _log_training(self, progress) -> None:
        names = sorted(self._train_sums)
        stacked = torch.stack([torch.as_tensor(self._train_sums[n]).float().to(self.accelerator.device) for n in names])
        means = self.accelerator.reduce(stacked / self._train_count, reduction="mean").tolist()
        self._train_sums, self._train_count = {}, 0
        metrics = dict(zip(names, means))
        if not math.isfinite(metrics["loss"]):
            raise FloatingPointError(
                f"The training loss is {metrics['loss']} at step {self.state.global_step}: lower the learning rate, "
                "enable clipping (training.max_grad_norm) or check the inputs for extreme values."
            )
        metrics["lr"] = self._last_lr
        if self._last_grad_norm is not None:
            metrics["grad_norm"] = self._last_grad_norm
        self._record("train", metrics)
        progress.set_postfix(loss=f"{metrics['loss']:.4g}", lr=f"{metrics['lr']:.3g}")

    def _record(self, split: str, metrics: Mapping[str, float]) -> None:
        self.metrics_log.write({"split": split, "step": self.state.global_step, "epoch": self.state.epoch, **metrics})
        if self.uses_trackers:
            self.accelerator.log(
                {f"{split}/{name}": value for name, value in metrics.items()}, step=self.state.global_step
            )

    def _validate(self) -> None:
        if self.eval_dataloader is None:
            return
        from accelerate.utils import broadcast_object_list

        self.model.eval()
        with torch.no_grad():
            metrics = dict(self.evaluate_fn(self.model, self.eval_dataloader, self.accelerator))
        self.model.train()
        if self.accelerator.num_processes > 1:
            metrics = broadcast_object_list([metrics], from_process=0)[0]
        metrics = {name: float(value) for name, value in metrics.items()}
        name = self.config.best_metric
        if name not in metrics:
            raise ValueError(
                f"training.best_metric={name!r} is not among the validation metrics ({', '.join(sorted(metrics))}); "
                "choose one of them."
            )
        value = metrics[name]
        if not math.isfinite(value):
            raise FloatingPointError(f"The validation metric {name!r} is {value} at step {self.state.global_step}.")
        best = self.state.best_value
        improved = best is None or (value > best if self.config.best_mode == "max" else value < best)
        if improved:
            self.state.best_value, self.state.best_step = value, self.state.global_step
            self.save_model(self.best_dir)
            if self.accelerator.is_main_process:
                record = {"step": self.state.global_step, "metric": name, "value": value, "metrics": metrics}
                (self.best_dir / "best_metric.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        self.state.last_eval_step = self.state.global_step
        self.last_eval = metrics
        self._record("validation", {**metrics, f"best_{name}": self.state.best_value})

    def _save_checkpoint(self) -> None:
        """``save_state`` into ``step-XXXXXXXX.partial``, renamed to ``step-XXXXXXXX`` once every process
        has written its part: a run killed while saving leaves no incomplete folder that ``latest`` would pick."""
        accelerator = self.accelerator
        folder = self.output_dir / CHECKPOINT_FOLDER / f"step-{self.state.global_step:08d}"
        partial = folder.with_name(folder.name + PARTIAL_SUFFIX)
        if accelerator.is_main_process and folder.parent.is_dir():
            for stale in folder.parent.glob(f"*{PARTIAL_SUFFIX}"):  # left by a killed run
                shutil.rmtree(stale)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(partial))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            if folder.exists():  # a run resumed from an older checkpoint passes this step again
                shutil.rmtree(folder)
            partial.rename(folder)
            checkpoints = sorted(p for p in folder.parent.iterdir() if _CHECKPOINT_PATTERN.match(p.name))
            for old in checkpoints[: -self.config.keep_checkpoints]:
                shutil.rmtree(old)
        accelerator.wait_for_everyone()


def _flat_tracker_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings flattened to ``{"a.b": value}`` with values trackers accept (numbers, strings, bools)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat |= _flat_tracker_config(value, f"{name}.")
        elif isinstance(value, (int, float, str, bool)) or value is None:
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat
