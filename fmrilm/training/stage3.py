"""Stage 3: multi-task instruction tuning of the stage-2 model (LoRA, answer-only loss).

    fmrilm train instruct --config fmrilm/training/configs/stage3_tiny.yaml [key=value ...]
    accelerate launch -m fmrilm.training.stage3 --config CONFIG.yaml [key=value ...]

What a run does, in order:

1. reads the pre-tokenized dataset folder(s) (``fmrilm tokenize``: int16 ``fmri_codes``, every label
   column of the dataset kept) and their subject-grouped ``train`` / ``validation`` / ``test``
   splits, checking that the codes were made by the stage-2 model's processor (same number of
   tokens; same processor fingerprint when the dataset records one);
2. resolves ``tasks:`` against :mod:`fmrilm.tasks`: each entry is a task asked on its own
   (``paradigm: single``), several targets answered in one sentence (``multi``, name
   ``"task_a+task_b"``) or an open-ended description scored field by field (``open``), with a
   sampling ``weight``. Training questions are seeded paraphrases (``question_text(seed)``),
   validation and test questions the base question (``question_text(None)``);
3. loads the stage-2 model (``model.path`` = stage 2's ``OUTPUT/model``: an
   :class:`~fmrilm.modeling_fmrilm.FmriLMForCausalLM` and its processor) strictly (missing or
   unexpected weights are an error, SPEC B12) and, by default, adds a NEW LoRA adapter with PEFT's
   ``get_peft_model`` on the LM's attention and MLP projections ONLY: the fMRI modules and the
   vocabulary stay frozen unless ``lora.train_fmri_modules`` / ``lora.train_fmri_token_embeddings``.
   With ``lora.continue_adapter`` the stage-2 adapter keeps training instead (SPEC 5.6): the stage-2
   base is rebuilt as stage 2 documents (``FmriLMForCausalLM.from_text_model(text_model, processor)``
   after ``set_seed(stage-2 training.seed)``, settings read from the stage-2 ``config.yaml``) and the
   adapter is loaded with ``PeftModel.from_pretrained(..., is_trainable=True)``;
4. trains with :class:`~fmrilm.training.loop.TrainingLoop` (warm-up + one cosine, accumulation,
   resume, JSONL, best checkpoint). The loss is the cross-entropy of the answer tokens and their
   EOS only (SPEC 5.1; the prompt, the fMRI blocks and the padding carry no label, and no F2F loss
   is added). Each epoch is a fresh multi-task draw (:func:`epoch_plan`): task ``t`` gets a share
   ``p_t = w_t^(1/T) / sum_s w_s^(1/T)`` of the epoch's ``sampling.examples_per_epoch`` examples
   (default: all training examples of all tasks), ``T = sampling.temperature`` (1: in proportion to
   the weights; larger: closer to uniform over tasks); a task's examples are drawn without
   replacement (whole shuffled passes when it needs more), all seeded by ``(seed, epoch)``;
5. validates every ``training.eval_every`` steps on the VALIDATION split: the answer loss per token,
   and per task the log-likelihood of every candidate answer
   (:func:`fmrilm.scoring_fmrilm.score_candidates`, one prefill per prompt): classification ->
   softmax probabilities -> accuracy, balanced accuracy, AUROC, macro-F1; regression -> the
   expected value over the candidate grid -> MAE, Pearson r; ``multi`` / ``open`` entries are
   answered by greedy generation and scored field by field (``{name}/{task}_accuracy`` and
   ``{name}/all_accuracy``). Metric names are ``{task}/{metric}``; ``mean_balanced_accuracy`` is the
   mean over the single-question classification tasks and the default ``training.best_metric``
   (max). Model selection never sees the test split;
6. writes ``OUTPUT/adapter`` (the PEFT adapter of the best step; its ``adapter_config.json`` names
   ``model.base_repo_id`` as ``base_model_name_or_path`` when set, else the local ``model.path``; a
   continued stage-2 adapter names the stage-2 text model, the base it applies to),
   ``OUTPUT/model`` (the best model merged into a plain :class:`FmriLMForCausalLM` plus the
   processor: ``AutoModelForCausalLM`` / ``AutoProcessor`` load it), ``OUTPUT/metrics.jsonl``,
   ``OUTPUT/training_summary.json`` (``"validation"``: the metrics of the best step; ``"test"``: the
   best model scored ONCE on the test split, reported, never used for selection) and
   ``OUTPUT/config.yaml``.

:func:`tune_on_examples` is the few-shot variant used by the evaluation's k-shot rows.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from .command import StageCommand, best_line
from .config import config_to_dict, load_config, save_config
from .language_model import (
    FMRI_MODULES,
    LoraSettings,
    apply_lora,
    describe_scans,
    export_best,
    fmri_model,
    load_causal_lm,
    load_fmri_lm,
    parameter_counts,
    render_prompt,
)
from .loop import LoopConfig, TrainingLoop, build_accelerator, make_dataloader, write_run_summary

__all__ = [
    "InstructLoraSettings",
    "InstructionCollator",
    "InstructionDataset",
    "InstructionEvaluator",
    "InstructionObjective",
    "InstructionSource",
    "PromptOptions",
    "SamplingConfig",
    "Stage3Config",
    "Stage3DataConfig",
    "Stage3ModelConfig",
    "Stage3Result",
    "Stage3TrainingConfig",
    "TaskSpec",
    "ValidationConfig",
    "answer_token_loss",
    "epoch_plan",
    "instruction_prompt",
    "main",
    "resolve_objective",
    "resolve_sources",
    "score_sources",
    "task_shares",
    "train_instruct",
    "tune_on_examples",
]

MODEL_FOLDER = "model"
ADAPTER_FOLDER = "adapter"
SUMMARY_FILE = "training_summary.json"
CONFIG_FILE = "config.yaml"
IGNORE_INDEX = -100
BEST_DEFAULT = "mean_balanced_accuracy"
PARADIGMS = ("single", "multi", "open")


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


@dataclass
class PromptOptions:
    """How a question becomes a prompt (see :func:`instruction_prompt`).

    Attributes:
        chat_template: ``"auto"`` (the LM tokenizer's chat template when it has one, the question as
            the user turn), ``"always"`` (error without one) or ``"never"`` (plain text).
        chat_template_kwargs: extra template variables, e.g. ``{"enable_thinking": false}`` for Qwen3.
        system: an optional system message (chat template only).
        context: an optional sentence written before the scans (e.g. the cohort the subject is from).
    """

    chat_template: Literal["auto", "always", "never"] = "auto"
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    system: str | None = None
    context: str | None = None


@dataclass
class TaskSpec:
    """One entry of ``tasks:``.

    Attributes:
        name: a registered task (:func:`fmrilm.tasks.list_tasks`) for ``paradigm: single``; for
            ``multi`` / ``open`` the tasks joined by ``+`` (``"coupling_class+gain_class"``).
        paradigm: ``single`` (one question, one answer), ``multi`` (several targets in one answer)
            or ``open`` (an open-ended description scored field by field).
        weight: relative sampling weight of the entry (see :func:`task_shares`).
    """

    name: str = ""
    paradigm: Literal["single", "multi", "open"] = "single"
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("Each tasks entry needs a name (a registered task, or 'a+b' for multi / open).")
        if not (math.isfinite(self.weight) and self.weight > 0):
            raise ValueError(f"tasks entry {self.name!r}: weight must be a positive number, got {self.weight}.")
        if self.paradigm not in PARADIGMS:
            raise ValueError(f"tasks entry {self.name!r}: paradigm must be one of {PARADIGMS}, got {self.paradigm!r}.")
        if self.paradigm == "single" and "+" in self.name:
            raise ValueError(
                f"tasks entry {self.name!r} joins several tasks with '+': use paradigm multi or open for that."
            )

    @property
    def task_names(self) -> list[str]:
        return [part.strip() for part in self.name.split("+")]


@dataclass
class Stage3DataConfig:
    """The pre-tokenized, labelled scans.

    Attributes:
        datasets: dataset folders with an ``fmri_codes`` column made by the stage-2 model's processor
            and the label columns of the tasks; several are concatenated (common columns kept).
        train_split, validation_split, test_split: subject-grouped split names; ``test_split`` may be
            missing from the data (no test report then) or ``null``.
        codes_column: the int16 code column.
        batch_size: training examples per micro-batch and process.
        eval_batch_size: validation examples per batch (answer loss and scoring; default ``batch_size``).
        max_length: the longest row in tokens; ``None`` = no limit.
        num_workers: data-loading worker processes.
        cache_dir: ``datasets`` cache; default ``OUTPUT/dataset_cache``.
    """

    datasets: list[str] = field(default_factory=list)
    train_split: str = "train"
    validation_split: str = "validation"
    test_split: str | None = "test"
    codes_column: str = "fmri_codes"
    batch_size: int = 8
    eval_batch_size: int | None = None
    max_length: int | None = None
    num_workers: int = 0
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if not self.datasets:
            raise ValueError("data.datasets must list at least one pre-tokenized dataset folder (`fmrilm tokenize`).")
        for name in ("batch_size", "eval_batch_size", "max_length"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"data.{name} must be a positive integer, got {value}.")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {self.num_workers}.")
        names = [self.train_split, self.validation_split, self.test_split]
        names = [n for n in names if n is not None]
        if len(set(names)) != len(names):
            raise ValueError(
                f"data.train_split, data.validation_split and data.test_split must differ, got {names}: model "
                "selection and the test report need held-out subjects."
            )


@dataclass
class Stage3ModelConfig:
    """The stage-2 model.

    Attributes:
        path: stage 2's ``OUTPUT/model`` folder (a merged :class:`FmriLMForCausalLM` and its processor).
        base_repo_id: the Hub repo id of that model, written as ``base_model_name_or_path`` into the
            adapter's ``adapter_config.json`` (default: the local ``path``).
        stage2_config: the stage-2 ``config.yaml`` (for ``lora.continue_adapter``: how to rebuild
            the base the stage-2 adapter applies to); default ``<path>/../config.yaml``.
        dtype: weights' dtype when loading (``float32`` for training with autocast).
        attn_implementation: ``"sdpa"`` or ``"eager"`` (default: as saved).
        gradient_checkpointing: recompute activations in the backward pass (less memory).
    """

    path: str = ""
    base_repo_id: str | None = None
    stage2_config: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    attn_implementation: str | None = None
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("model.path must be the stage-2 model folder (OUTPUT/model of `fmrilm train align`).")


@dataclass
class InstructLoraSettings(LoraSettings):
    """:class:`LoraSettings` with the stage-3 defaults: LoRA on, adapters on the LM's projections only.

    Attributes:
        train_fmri_modules: also train ``fmri_embed``, ``roi_embed`` and ``fmri_head`` in full (PEFT
            ``modules_to_save``); default off: the fMRI embeddings learned in stage 2 stay frozen.
        train_fmri_token_embeddings: also train the ``<fmri_start>`` / ``<fmri_end>`` embedding rows.
        continue_adapter: a stage-2 ``OUTPUT/adapter`` to keep training instead of a new adapter
            (then r, alpha, dropout and the targets are the stage-2 adapter's).
    """

    enabled: bool = True
    train_fmri_token_embeddings: bool = False
    train_fmri_modules: bool = False
    continue_adapter: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.continue_adapter is not None and not self.enabled:
            raise ValueError("lora.continue_adapter needs lora.enabled=true (it continues a LoRA adapter).")


@dataclass
class SamplingConfig:
    """Multi-task sampling of each training epoch (see :func:`task_shares`, :func:`epoch_plan`).

    Attributes:
        temperature: ``T`` in ``p_t ∝ weight_t^(1/T)``; 1 = in proportion to the weights.
        examples_per_epoch: examples per epoch over all tasks; ``None`` = all training examples of all tasks.
    """

    temperature: float = 1.0
    examples_per_epoch: int | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"sampling.temperature must be a positive number, got {self.temperature}.")
        if self.examples_per_epoch is not None and self.examples_per_epoch < 1:
            raise ValueError(f"sampling.examples_per_epoch must be >= 1 or null, got {self.examples_per_epoch}.")


@dataclass
class ValidationConfig:
    """Scoring at each validation (and of the test split at the end).

    Attributes:
        max_examples: examples per task scored (the first ones of the split, in the task's order);
            ``None`` = all. The answer loss always uses them all.
        normalize: candidate log-likelihood ``"sum"`` over its tokens or ``"mean"`` per token.
        max_new_tokens: greedy generation length for ``multi`` / ``open`` entries.
    """

    max_examples: int | None = None
    normalize: Literal["sum", "mean"] = "sum"
    max_new_tokens: int = 48

    def __post_init__(self) -> None:
        if self.max_examples is not None and self.max_examples < 1:
            raise ValueError(f"validation.max_examples must be >= 1 or null, got {self.max_examples}.")
        if self.max_new_tokens < 1:
            raise ValueError(f"validation.max_new_tokens must be >= 1, got {self.max_new_tokens}.")


@dataclass
class Stage3TrainingConfig(LoopConfig):
    """:class:`LoopConfig` with stage-3 defaults: the best model has the highest mean validation
    balanced accuracy over the classification tasks."""

    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    best_metric: str = BEST_DEFAULT
    best_mode: Literal["min", "max"] = "max"


@dataclass
class Stage3Config:
    """Everything a stage-3 run needs (one YAML file; see ``fmrilm/training/configs/stage3_*.yaml``)."""

    output_dir: str = "outputs/stage3"
    data: Stage3DataConfig = field(default_factory=lambda: Stage3DataConfig(datasets=["outputs/demo/tokenized"]))
    model: Stage3ModelConfig = field(default_factory=lambda: Stage3ModelConfig(path="outputs/stage2_tiny/model"))
    tasks: list[TaskSpec] = field(default_factory=lambda: [TaskSpec(name="coupling_class")])
    prompt: PromptOptions = field(default_factory=PromptOptions)
    lora: InstructLoraSettings = field(default_factory=InstructLoraSettings)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    training: Stage3TrainingConfig = field(default_factory=Stage3TrainingConfig)
    resume_from: str | None = None

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("tasks must list at least one task, e.g. [{name: coupling_class, paradigm: single}].")
        names = [spec.name for spec in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"tasks lists an entry twice: {names}; merge them (use weight to sample one more).")


# --------------------------------------------------------------------------------------------------
# Prompts, items and batches
# --------------------------------------------------------------------------------------------------


def _prompt_options(options: PromptOptions | Mapping[str, Any] | None) -> PromptOptions:
    if options is None:
        return PromptOptions()
    if isinstance(options, PromptOptions):
        return options
    if isinstance(options, Mapping):
        from .config import config_from_dict

        return config_from_dict(PromptOptions, options, where="prompt_options")
    raise ValueError(f"prompt_options must be a PromptOptions, a mapping or None, got {type(options).__name__}.")


def instruction_prompt(
    processor,
    question: str,
    n_scans: int,
    *,
    chat_template: Literal["auto", "always", "never"] = "auto",
    chat_template_kwargs: Mapping[str, Any] | None = None,
    system: str | None = None,
    context: str | None = None,
) -> tuple[str, bool]:
    """The prompt of a question about ``n_scans`` scans, and whether a chat template rendered it.

    The text is :func:`fmrilm.tasks.build_prompt` (``"<fmri>\\n### Question: ...\\n### Answer:"``,
    one ``<fmri>`` marker per scan, an optional ``context`` sentence first, SPEC 5.1); with a chat
    template it becomes the user turn followed by the assistant header. A rendered prompt already
    holds the template's special tokens: tokenize it with ``add_special_tokens=False`` (the second
    value). The answer that follows is ``" " + answer_text`` and EOS.
    """
    from ..tasks import build_prompt

    if isinstance(n_scans, bool) or not isinstance(n_scans, (int, np.integer)) or n_scans < 1:
        raise ValueError(f"n_scans must be a positive integer (scans the question is about), got {n_scans!r}.")
    text = build_prompt(question, int(n_scans), context)
    return render_prompt(
        processor, text, chat_template=chat_template, chat_template_kwargs=chat_template_kwargs, system=system
    )


class InstructionCollator:
    """Collate function: questions about scans + answers -> answer-only training inputs.

    Each item is a mapping with ``"question"`` (str), ``"target"`` (the answer text, without the
    leading space) and ``"fmri_codes"`` ((n_scans, N) integers: one row per scan the question is
    about, in prompt order). The prompt is :func:`instruction_prompt` (cached per question); the
    target is ``" " + target`` followed by EOS.

    Returns ``input_ids``, ``attention_mask``, ``labels`` (B, L) int64, right-padded, labels only on
    the answer tokens and EOS (:data:`IGNORE_INDEX` elsewhere), and ``fmri_codes`` (S, N) int64
    with S the total number of scans (reading order).

    Args:
        processor: the stage-2 model's :class:`~fmrilm.processing_fmrilm.FmriLMProcessor`.
        prompt_options: :class:`PromptOptions` (or a mapping of them).
        max_length: see :class:`Stage3DataConfig`.
    """

    def __init__(
        self,
        processor,
        *,
        prompt_options: PromptOptions | Mapping[str, Any] | None = None,
        max_length: int | None = None,
    ) -> None:
        self.processor = processor
        self.options = _prompt_options(prompt_options)
        self.max_length = max_length
        self._prompts: dict[tuple[str, int], tuple[str, bool]] = {}

    def prompt(self, question: str, n_scans: int) -> tuple[str, bool]:
        """The rendered prompt of ``question`` about ``n_scans`` scans (cached)."""
        key = (question, int(n_scans))
        if key not in self._prompts:
            options = self.options
            self._prompts[key] = instruction_prompt(
                self.processor, question, int(n_scans), chat_template=options.chat_template,
                chat_template_kwargs=options.chat_template_kwargs, system=options.system, context=options.context,
            )  # fmt: skip
        return self._prompts[key]

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not items:
            raise ValueError("InstructionCollator got an empty batch.")
        prompts, targets, codes, templated = [], [], [], set()
        for index, item in enumerate(items):
            missing = [key for key in ("question", "target", "fmri_codes") if key not in item]
            if missing:
                raise ValueError(f"Item {index} of the batch lacks {missing}; items need question, target, fmri_codes.")
            rows = np.asarray(item["fmri_codes"])
            if rows.ndim != 2 or rows.shape[0] < 1:
                raise ValueError(
                    f"Item {index}: fmri_codes must be shaped (n_scans, N) (one row per scan), got {rows.shape}."
                )
            prompt, rendered = self.prompt(str(item["question"]), rows.shape[0])
            prompts.append(prompt)
            templated.add(rendered)
            targets.append(" " + str(item["target"]))
            codes.append(rows)
        inputs = self.processor(
            text=prompts, fmri_codes=np.concatenate(codes).astype(np.int64), text_target=targets, return_tensors="pt",
            padding=True, padding_side="right", max_length=self.max_length, add_special_tokens=not templated.pop(),
        )  # fmt: skip
        return {name: inputs[name] for name in ("input_ids", "attention_mask", "labels", "fmri_codes")}


def answer_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of next-token cross-entropies over the labelled positions, their number), float32 scalars.

    ``logits`` (B, L, V) predict token ``l + 1`` at position ``l``; ``labels`` (B, L) hold
    :data:`IGNORE_INDEX` where no loss is taken (everything but the answers and their EOS).
    """
    shifted = labels[:, 1:]
    losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]), shifted.reshape(-1), ignore_index=IGNORE_INDEX,
        reduction="sum",
    )  # fmt: skip
    return losses, (shifted != IGNORE_INDEX).sum().float()


class InstructionObjective:
    """``compute_loss`` of the loop: the mean cross-entropy of the answer tokens (and EOS) of the batch.

    The model is called without ``labels`` so that no F2F loss is computed or added (stage 3 trains
    the answers only); the loss is taken from the logits and the collator's answer-only labels.
    """

    def __call__(self, model, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        output = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       fmri_codes=batch["fmri_codes"])  # fmt: skip
        total, count = answer_token_loss(output.logits, batch["labels"])
        if count == 0:
            raise ValueError(
                "A training batch has no answer token to learn (all labels are ignored): check max_length."
            )
        loss = total / count
        return loss, {"answer_loss": loss.detach()}


# --------------------------------------------------------------------------------------------------
# Tasks against splits
# --------------------------------------------------------------------------------------------------


@dataclass
class InstructionSource:
    """One task (or paradigm) resolved against one split.

    Attributes:
        name: the ``tasks:`` entry name.
        paradigm: ``single``, ``multi`` or ``open``.
        objective: the :class:`fmrilm.tasks.Task` (single) or the paradigm object (multi / open).
        rows: (E, n_scans) int64 row indices into the split, one row per example.
        labels: E mappings task name -> label of the example.
        weight: sampling weight.
    """

    name: str
    paradigm: str
    objective: Any
    rows: np.ndarray
    labels: list[dict[str, int | float]]
    weight: float = 1.0

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def n_scans(self) -> int:
        return int(self.rows.shape[1])

    def question(self, seed: int | None) -> str:
        """A seeded paraphrase (training) or, with ``seed=None``, the base question."""
        return self.objective.question_text(seed)

    def target(self, index: int, seed: int | None) -> str:
        """The answer text of example ``index`` (wording seeded for open-ended answers)."""
        labels = self.labels[index]
        if self.paradigm == "single":
            return self.objective.answer_text(labels[self.objective.name])
        return self.objective.target_text(labels, seed=seed)


def _label_value(task, value) -> int | float:
    return int(value) if task.kind == "classification" else float(value)


def _source_from_objective(name: str, paradigm: str, objective, split, examples, weight: float, seed: int):
    """Build an :class:`InstructionSource` for a Task (``examples`` or ``task.examples(split, seed)``) or a
    paradigm (rows where every one of its tasks has a label)."""
    if paradigm == "single":
        task = objective
        if examples is None:
            examples = task.examples(split, seed=seed)
        rows = np.asarray([tuple(e.rows) for e in examples], dtype=np.int64).reshape(len(examples), -1)
        if len(examples) and rows.shape[1] != task.n_scans:
            raise ValueError(
                f"Task {task.name!r} asks about {task.n_scans} scan(s) but its examples hold {rows.shape[1]}."
            )
        labels = [{task.name: _label_value(task, e.label)} for e in examples]
        return InstructionSource(name, paradigm, task, rows.reshape(len(examples), task.n_scans), labels, weight)
    tasks = list(objective.tasks)
    if examples is None:
        examples = objective.examples(split, seed=seed)  # rows with a label for every task
    per_task: dict[str, np.ndarray] = {}
    labels = []
    for example in examples:
        if len(example.rows) != 1:
            raise ValueError(
                f"tasks entry {name!r}: multi / open paradigms ask about one scan, got rows {example.rows}."
            )
        if isinstance(example.label, Mapping):
            given = example.label
        else:  # a plain TaskExample (e.g. from a k-shot sampler): read each task's label at its row
            if not per_task:
                per_task = {t.name: np.asarray(t.labels(split), dtype=np.float64) for t in tasks}
            given = {t.name: per_task[t.name][example.rows[0]] for t in tasks}
        unusable = [
            t.name
            for t in tasks
            if not np.isfinite(given[t.name]) or (t.kind == "classification" and given[t.name] < 0)
        ]
        if unusable:
            raise ValueError(f"tasks entry {name!r}: row {example.rows[0]} has no usable label for {unusable}.")
        labels.append({t.name: _label_value(t, given[t.name]) for t in tasks})
    rows = np.asarray([example.rows[0] for example in examples], dtype=np.int64).reshape(-1, 1)
    return InstructionSource(name, paradigm, objective, rows, labels, weight)


def resolve_objective(spec: TaskSpec, train_split):
    """The :class:`fmrilm.tasks.Task` (single) or paradigm (multi / open) of a ``tasks:`` entry, its tasks
    fitted on ``train_split`` (z-score bins and category classes come from the training split only)."""
    from .. import tasks as registry

    known = set(registry.list_tasks())
    unknown = [n for n in spec.task_names if n not in known]
    if unknown:
        raise ValueError(
            f"tasks entry {spec.name!r}: unknown task(s) {unknown}; registered tasks: {sorted(known)} "
            "(add one with fmrilm.tasks.register_task)."
        )
    resolved = [registry.get_task(n).fit(train_split) for n in spec.task_names]
    if spec.paradigm == "single":
        return resolved[0]
    from ..paradigms import MultiTarget, OpenEnded

    if spec.paradigm == "multi":
        if len(resolved) < 2:
            raise ValueError(f"tasks entry {spec.name!r}: paradigm multi needs at least two tasks joined by '+'.")
        return MultiTarget(resolved)
    return OpenEnded(resolved)


def resolve_sources(
    specs: Sequence[TaskSpec], split, *, train_split, seed: int = 0, split_name: str = "split"
) -> list[InstructionSource]:
    """Each ``tasks:`` entry against ``split``: its examples (rows, or pairs, with a usable label) and labels.

    Tasks are fitted on ``train_split`` (pass the training split itself when resolving it).

    Raises:
        ValueError: an unknown task, a label column missing from the split, or an entry without any example.
    """
    sources = []
    for spec in specs:
        objective = resolve_objective(spec, train_split)
        source = _source_from_objective(spec.name, spec.paradigm, objective, split, None, spec.weight, seed)
        if len(source) == 0:
            raise ValueError(
                f"tasks entry {spec.name!r} has no example with a usable label in the {split_name} split; check the "
                "label column(s) or drop the task."
            )
        sources.append(source)
    return sources


def task_shares(weights: Sequence[float], temperature: float = 1.0) -> np.ndarray:
    """Sampling probabilities ``p_t = w_t^(1/T) / sum_s w_s^(1/T)`` (float64, sums to 1)."""
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 1 or weights.size == 0 or not np.all(np.isfinite(weights) & (weights > 0)):
        raise ValueError(f"weights must be a non-empty list of positive numbers, got {weights.tolist()}.")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature}.")
    scaled = np.exp(np.log(weights) / temperature - np.log(weights).max() / temperature)
    return scaled / scaled.sum()


def _counts(shares: np.ndarray, total: int) -> np.ndarray:
    """Integer counts summing to ``total`` closest to ``shares * total`` (largest remainder)."""
    exact = shares * total
    counts = np.floor(exact).astype(np.int64)
    remainder = total - int(counts.sum())
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[:remainder]] += 1
    return counts


def epoch_plan(
    sizes: Sequence[int], weights: Sequence[float], *, total: int, temperature: float, seed: int, epoch: int
) -> np.ndarray:
    """The examples of one training epoch: (total, 2) int64 of (task index, example index).

    Task ``t`` gets ``round(p_t * total)`` examples (largest remainder, :func:`task_shares`) drawn
    without replacement from its ``sizes[t]`` examples (whole shuffled passes, then a partial one,
    when it needs more); rows are grouped by task (the data loader shuffles them). Fixed by
    ``(seed, epoch)``.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    if np.any(sizes < 1):
        raise ValueError(f"Every task needs at least one training example, got sizes {sizes.tolist()}.")
    counts = _counts(task_shares(weights, temperature), int(total))
    parts = []
    for task, (size, count) in enumerate(zip(sizes.tolist(), counts.tolist())):
        rng = np.random.default_rng([int(seed), int(epoch), task])
        passes = -(-count // size)
        drawn = np.concatenate([rng.permutation(size) for _ in range(passes)])[:count] if count else np.zeros(0, int)
        parts.append(np.stack([np.full(count, task), drawn], axis=1))
    return np.concatenate(parts).astype(np.int64)


def _derived_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


class InstructionDataset(torch.utils.data.Dataset):
    """Question/answer items over a split for :class:`InstructionCollator`.

    Training (``fixed=False``): each epoch is a fresh :func:`epoch_plan` of ``examples_per_epoch``
    items (set by :meth:`set_epoch`; the loop calls it), questions are paraphrases and open-ended
    answers wordings seeded by ``(seed, epoch, position)``. Validation (``fixed=True``): every
    example of every source once, with the base question and wording.

    Args:
        sources: the resolved tasks.
        codes: (rows, N) int16 codes of the split.
    """

    def __init__(
        self,
        sources: Sequence[InstructionSource],
        codes: np.ndarray,
        *,
        seed: int = 0,
        fixed: bool = False,
        examples_per_epoch: int | None = None,
        temperature: float = 1.0,
    ) -> None:
        if not sources:
            raise ValueError("InstructionDataset needs at least one task source.")
        self.sources = list(sources)
        self.codes = codes
        self.seed = int(seed)
        self.fixed = fixed
        self.temperature = float(temperature)
        sizes = [len(s) for s in self.sources]
        self.total = sum(sizes) if (fixed or examples_per_epoch is None) else int(examples_per_epoch)
        self.epoch = 0
        self.plan = self._plan(0)

    def _plan(self, epoch: int) -> np.ndarray:
        if self.fixed:
            return np.asarray([(t, i) for t, s in enumerate(self.sources) for i in range(len(s))], dtype=np.int64)
        return epoch_plan(
            [len(s) for s in self.sources], [s.weight for s in self.sources], total=self.total,
            temperature=self.temperature, seed=self.seed, epoch=epoch,
        )  # fmt: skip

    def set_epoch(self, epoch: int) -> None:
        if int(epoch) != self.epoch:
            self.epoch = int(epoch)
            self.plan = self._plan(self.epoch)

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, index: int) -> dict[str, Any]:
        task, example = (int(v) for v in self.plan[int(index)])
        source = self.sources[task]
        wording = None if self.fixed else _derived_seed(self.seed, self.epoch, index)
        return {
            "question": source.question(wording),
            "target": source.target(example, wording),
            "fmri_codes": self.codes[source.rows[example]],
            "task": task,
        }


# --------------------------------------------------------------------------------------------------
# Scoring (validation and test)
# --------------------------------------------------------------------------------------------------


def _metric_functions():
    from ..evaluation import classification_metrics, regression_metrics

    return classification_metrics, regression_metrics


def _softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores - scores.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


@torch.no_grad()
def score_sources(
    model,
    processor,
    sources: Sequence[InstructionSource],
    codes: np.ndarray,
    *,
    prompt_options: PromptOptions | None = None,
    batch_size: int = 8,
    max_examples: int | None = None,
    normalize: str = "sum",
    max_new_tokens: int = 48,
) -> dict[str, float]:
    """Metrics of ``model`` on each source (base questions): ``{"{name}/{metric}": value}`` plus
    ``mean_balanced_accuracy`` (single-question classification tasks) when there is one.

    Single questions are scored by candidate log-likelihood (softmax over the candidates; regression
    predicts the expected candidate value); ``multi`` / ``open`` entries by greedy generation scored
    field by field.
    """
    from ..scoring_fmrilm import score_candidates

    classification_metrics, regression_metrics = _metric_functions()
    collator = InstructionCollator(processor, prompt_options=prompt_options)
    was_training = model.training
    model.eval()
    metrics: dict[str, float] = {}
    balanced = []
    for source in sources:
        count = len(source) if max_examples is None else min(len(source), max_examples)
        rows = source.rows[:count]
        prompt, templated = collator.prompt(source.question(None), source.n_scans)
        flat_codes = codes[rows.reshape(-1)].astype(np.int64)
        if source.paradigm == "single":
            task = source.objective
            scores = score_candidates(
                model, processor, [prompt] * count, flat_codes, list(task.candidates()),
                add_special_tokens=not templated, batch_size=batch_size, normalize=normalize,
            )  # fmt: skip
            probabilities = _softmax(scores.astype(np.float64))
            truth = np.asarray([labels[task.name] for labels in source.labels[:count]])
            if task.kind == "classification":
                values = classification_metrics(truth.astype(np.int64), probabilities)
                balanced.append(values["balanced_accuracy"])
            else:
                predicted = probabilities @ np.asarray(task.candidate_values(), dtype=np.float64)
                values = regression_metrics(truth.astype(np.float64), predicted)
            metrics |= {f"{source.name}/{key}": float(value) for key, value in values.items()}
        else:
            texts = describe_scans(
                model, processor, list(flat_codes), prompt=prompt, add_special_tokens=not templated,
                max_new_tokens=max_new_tokens, batch_size=batch_size,
            )  # fmt: skip
            marks = [source.objective.score(text, labels) for text, labels in zip(texts, source.labels[:count])]
            for key in marks[0]:
                metrics[f"{source.name}/{key}_accuracy"] = float(np.mean([bool(m[key]) for m in marks]))
    if balanced:
        metrics[BEST_DEFAULT] = float(np.mean(balanced))
    model.train(was_training)
    return metrics


class InstructionEvaluator:
    """``evaluate`` of the loop: the answer loss per token over the whole validation split (gathered
    across processes), then on the main process the task metrics of :func:`score_sources`."""

    def __init__(self, *, processor, sources, codes, prompt_options: PromptOptions, validation: ValidationConfig,
                 batch_size: int) -> None:  # fmt: skip
        self.processor = processor
        self.sources = list(sources)
        self.codes = codes
        self.prompt_options = prompt_options
        self.validation = validation
        self.batch_size = batch_size

    def __call__(self, model, dataloader, accelerator) -> dict[str, float]:
        totals = torch.zeros(2, dtype=torch.float64)
        for batch in dataloader:
            output = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           fmri_codes=batch["fmri_codes"])  # fmt: skip
            total, count = answer_token_loss(output.logits, batch["labels"])
            gathered = accelerator.gather_for_metrics((total.reshape(1), count.reshape(1)))
            totals += torch.stack([g.sum().double().cpu() for g in gathered])
        if totals[1] == 0:
            raise ValueError("The validation split has no answer token: check the tasks' label columns.")
        metrics = {"answer_loss": float(totals[0] / totals[1])}
        if accelerator.is_main_process:
            metrics |= score_sources(
                accelerator.unwrap_model(model), self.processor, self.sources, self.codes,
                prompt_options=self.prompt_options, batch_size=self.batch_size,
                max_examples=self.validation.max_examples, normalize=self.validation.normalize,
                max_new_tokens=self.validation.max_new_tokens,
            )  # fmt: skip
        return metrics


# --------------------------------------------------------------------------------------------------
# Few-shot tuning (the evaluation's k-shot rows)
# --------------------------------------------------------------------------------------------------


def tune_on_examples(
    model,
    processor,
    task_or_paradigm,
    split,
    examples: Sequence,
    *,
    steps: int = 20,
    learning_rate: float = 1e-3,
    lora: LoraSettings | None = None,
    seed: int = 0,
    batch_size: int = 4,
    prompt_options: PromptOptions | Mapping[str, Any] | None = None,
    codes_column: str = "fmri_codes",
    max_grad_norm: float | None = 1.0,
) -> Any:
    """Tune a fresh LoRA adapter on a few labelled examples; returns the tuned model (eval mode).

    The adapter is put on a DEEP COPY of ``model`` (a PEFT model is copied and merged first), so
    ``model`` itself never changes. ``steps`` AdamW steps at a CONSTANT ``learning_rate`` (no warm-up,
    no decay, no weight decay: a handful of examples gives no schedule to speak of), gradient
    clipping at ``max_grad_norm``; each step takes ``batch_size`` examples from seeded shuffled
    passes over ``examples``. Questions are the base question (the one the k-shot rows are scored
    with), the loss is the answer-only cross-entropy. Everything random (LoRA initialisation, dropout,
    order) comes from ``seed``; torch's global RNG state is restored afterwards.

    Args:
        model: an :class:`FmriLMForCausalLM` (or a PEFT model around one).
        processor: its processor.
        task_or_paradigm: a :class:`fmrilm.tasks.Task`, or a MultiTarget / OpenEnded paradigm.
        split: the ``datasets.Dataset`` the examples' rows index (with ``codes_column``).
        examples: :class:`fmrilm.tasks.TaskExample` s (e.g. from a k-shot sampler); for a paradigm
            the labels are read from its tasks' columns at each example's row.
        steps, learning_rate, seed, batch_size, max_grad_norm: the optimisation.
        lora: adapter settings; default rank 8, alpha 16, no dropout, attention and MLP projections
            only (``train_fmri_modules`` / ``train_fmri_token_embeddings`` of an
            :class:`InstructLoraSettings` are honoured).
        prompt_options: :class:`PromptOptions` (or a mapping).

    Raises:
        ValueError: no example, bad settings, or a split without ``codes_column``.
    """
    if not examples:
        raise ValueError("tune_on_examples needs at least one example (k >= 1); k = 0 is zero-shot: skip tuning.")
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if not (math.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(f"learning_rate must be a positive number, got {learning_rate!r}.")
    if codes_column not in split.column_names:
        raise ValueError(f"The split has no {codes_column!r} column (pre-tokenize it with `fmrilm tokenize`).")
    from .. import tasks as registry
    from ..paradigms import SingleQuestion

    settings = lora if lora is not None else InstructLoraSettings(dropout=0.0)
    if isinstance(task_or_paradigm, SingleQuestion):
        task_or_paradigm = task_or_paradigm.task
    paradigm = "single" if isinstance(task_or_paradigm, registry.Task) else "paradigm"
    source = _source_from_objective(
        getattr(task_or_paradigm, "name", "task"), paradigm, task_or_paradigm, split, list(examples), 1.0, seed
    )
    codes = np.asarray(split.with_format("numpy", columns=[codes_column])[codes_column])
    collator = InstructionCollator(processor, prompt_options=prompt_options)
    question = source.question(None)

    tuned = copy.deepcopy(model)
    if hasattr(tuned, "merge_and_unload"):
        tuned = tuned.merge_and_unload()
    for parameter in tuned.parameters():
        parameter.requires_grad_(False)
    device = next(tuned.parameters()).device
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        modules = FMRI_MODULES if getattr(settings, "train_fmri_modules", False) else None
        tuned = apply_lora(tuned, settings, modules_to_save=modules)
        trainable = [p for p in tuned.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=0.0)
        rng = np.random.default_rng(seed)
        order = np.concatenate([rng.permutation(len(source)) for _ in range(-(-steps * batch_size // len(source)))])
        objective = InstructionObjective()
        tuned.train()
        for step in range(steps):
            chosen = order[step * batch_size : (step + 1) * batch_size]
            batch = collator([
                {"question": question, "target": source.target(int(i), None), "fmri_codes": codes[source.rows[i]]}
                for i in chosen
            ])  # fmt: skip
            loss, _ = objective(tuned, {k: v.to(device) for k, v in batch.items()})
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"tune_on_examples: the loss is {float(loss)} at step {step}; lower learning_rate."
                )
            loss.backward()
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return tuned.eval()


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


@dataclass
class Stage3Result:
    """Where a stage-3 run wrote its outputs, and how it went."""

    model_dir: Path
    adapter_dir: Path | None
    summary_file: Path
    metrics_file: Path
    best_step: int | None
    best_metric: str
    best_value: float | None
    validation: dict[str, float]
    test: dict[str, float] | None


def _load_splits(config: Stage3Config, processor, cache_dir: Path) -> dict[str, Any]:
    """{split name: concatenated split} for train, validation and (when present) test."""
    from ..pretokenize import load_pretokenized_splits

    data = config.data
    return load_pretokenized_splits(
        data.datasets,
        processor,
        splits=[data.train_split, data.validation_split],
        optional_splits=[data.test_split] if data.test_split else [],
        codes_column=data.codes_column,
        cache_dir=cache_dir,
        processor_source=str(config.model.path),
        setting_names={
            "folders": "data.datasets",
            "splits": "data.train_split / data.validation_split / data.test_split",
            "columns": "data.codes_column",
        },
        needed_by="stage 3",
    )


def _codes(split, column: str) -> np.ndarray:
    return np.asarray(split.with_format("numpy", columns=[column])[column])


def _load_processor(path: Path):
    from ..processing_fmrilm import FmriLMProcessor

    processor = FmriLMProcessor.from_pretrained(path)
    if processor.fmri_tokenizer is None or getattr(processor, "tokenizer", None) is None:
        raise ValueError(
            f"The processor in {path} lacks its fMRI tokenizer or its text tokenizer; model.path must be stage 2's "
            "OUTPUT/model folder (it holds both)."
        )
    return processor


def _continued_model(config: Stage3Config, processor):
    """The stage-2 base rebuilt as stage 2 builds it, with the stage-2 adapter loaded trainable."""
    from accelerate.utils import set_seed
    from peft import PeftModel

    from ..modeling_fmrilm import FmriLMForCausalLM
    from .stage2 import Stage2Config

    adapter = Path(config.lora.continue_adapter)
    if not (adapter / "adapter_config.json").is_file():
        raise FileNotFoundError(
            f"lora.continue_adapter {adapter} holds no adapter_config.json; pass stage 2's OUTPUT/adapter (a LoRA run)."
        )
    stage2_file = Path(config.model.stage2_config or Path(config.model.path).parent / CONFIG_FILE)
    if not stage2_file.is_file():
        raise FileNotFoundError(
            f"The stage-2 config {stage2_file} is needed to rebuild the base of the stage-2 adapter; set "
            "model.stage2_config to the config.yaml of that stage-2 run."
        )
    stage2 = load_config(Stage2Config, stage2_file)
    language_model = load_causal_lm(
        stage2.model.text_model, dtype=config.model.dtype,
        attn_implementation=config.model.attn_implementation or stage2.model.attn_implementation,
    )  # fmt: skip
    set_seed(stage2.training.seed)  # the stage-2 base: the same new token rows and fMRI embeddings
    overrides = {**stage2.model.overrides, **config_to_dict(stage2.losses)}
    base = FmriLMForCausalLM.from_text_model(language_model, processor, **overrides)
    model = PeftModel.from_pretrained(base, adapter, is_trainable=True)
    return model, stage2.model.text_model


def _build_model(config: Stage3Config, processor):
    """(the model to train, the base name recorded in the adapter config or None without LoRA)."""
    model_path = Path(config.model.path)
    if config.lora.continue_adapter:
        model, base_name = _continued_model(config, processor)
    else:
        model = load_fmri_lm(model_path, dtype=config.model.dtype, attn_implementation=config.model.attn_implementation)
        base_name = str(model_path)
        if config.lora.enabled:
            for parameter in model.parameters():
                parameter.requires_grad_(False)
            modules = FMRI_MODULES if config.lora.train_fmri_modules else None
            model = apply_lora(model, config.lora, modules_to_save=modules)
        elif not config.lora.train_fmri_modules:
            for name in FMRI_MODULES:
                getattr(model, name).requires_grad_(False)
    if config.model.gradient_checkpointing:
        fmri_model(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if config.lora.enabled:
        # The local base while training (PEFT reads its config when saving); the repo id is written at export.
        for peft_config in model.peft_config.values():
            peft_config.base_model_name_or_path = base_name
        return model, config.model.base_repo_id or base_name
    return model, None


def _record_adapter_base(adapter_dir: Path, base_name: str) -> None:
    """Write ``base_name`` as ``base_model_name_or_path`` into the exported ``adapter_config.json``."""
    config_file = adapter_dir / "adapter_config.json"
    adapter_config = json.loads(config_file.read_text(encoding="utf-8"))
    adapter_config["base_model_name_or_path"] = base_name
    config_file.write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def train_instruct(config: Stage3Config) -> Stage3Result:
    """Run stage 3 as configured (see the module docstring); returns where the outputs are."""
    from accelerate.utils import set_seed

    started = time.perf_counter()
    output_dir = Path(config.output_dir)
    model_path = Path(config.model.path)
    if not model_path.is_dir():
        raise FileNotFoundError(f"model.path {model_path} not found; pass stage 2's OUTPUT/model folder.")
    accelerator = build_accelerator(config.training, output_dir)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, output_dir / CONFIG_FILE)
    cache_dir = Path(config.data.cache_dir) if config.data.cache_dir else output_dir / "dataset_cache"
    seed = config.training.seed
    data = config.data

    processor = _load_processor(model_path)
    with accelerator.main_process_first():
        splits = _load_splits(config, processor, cache_dir)
    train_split = splits[data.train_split]
    train_sources = resolve_sources(config.tasks, train_split, train_split=train_split, seed=seed,
                                    split_name=data.train_split)  # fmt: skip
    validation_sources = resolve_sources(config.tasks, splits[data.validation_split], train_split=train_split,
                                         seed=seed, split_name=data.validation_split)  # fmt: skip
    classification = [s for s in train_sources if s.paradigm == "single" and s.objective.kind == "classification"]
    if config.training.best_metric == BEST_DEFAULT and not classification:
        raise ValueError(
            f"training.best_metric={BEST_DEFAULT!r} needs a single-question classification task; with only "
            f"{[s.name for s in train_sources]} choose e.g. '<task>/mae' (best_mode=min) or 'answer_loss'."
        )
    codes = {name: _codes(split, data.codes_column) for name, split in splits.items()}

    set_seed(seed)  # the same adapter initialisation on every process and every run
    model, base_name = _build_model(config, processor)

    prompt_options = config.prompt
    eval_batch_size = data.eval_batch_size or data.batch_size
    train_dataset = InstructionDataset(
        train_sources, codes[data.train_split], seed=seed,
        examples_per_epoch=config.sampling.examples_per_epoch, temperature=config.sampling.temperature,
    )  # fmt: skip
    validation_dataset = InstructionDataset(validation_sources, codes[data.validation_split], seed=seed, fixed=True)
    collator = InstructionCollator(processor, prompt_options=prompt_options, max_length=data.max_length)
    train_loader = make_dataloader(train_dataset, data.batch_size, shuffle=True, seed=seed, collate_fn=collator,
                                   num_workers=data.num_workers)  # fmt: skip
    validation_loader = make_dataloader(validation_dataset, eval_batch_size, shuffle=False, seed=seed,
                                        collate_fn=collator, num_workers=data.num_workers)  # fmt: skip
    evaluator = InstructionEvaluator(
        processor=processor, sources=validation_sources, codes=codes[data.validation_split],
        prompt_options=prompt_options, validation=config.validation, batch_size=eval_batch_size,
    )  # fmt: skip
    loop = TrainingLoop(
        model, config.training, output_dir=output_dir, train_dataloader=train_loader,
        compute_loss=InstructionObjective(), eval_dataloader=validation_loader, evaluate=evaluator,
        accelerator=accelerator, tracker_config=config_to_dict(config), project_name="fmrilm-stage3",
    )  # fmt: skip
    counts = parameter_counts(loop.unwrapped_model)
    result = loop.train(resume_from=config.resume_from)

    model_dir = output_dir / MODEL_FOLDER
    adapter_dir = output_dir / ADAPTER_FOLDER if config.lora.enabled else None
    summary_file = output_dir / SUMMARY_FILE
    validation: dict[str, float] = {}
    test: dict[str, float] | None = None
    if accelerator.is_main_process:
        final = export_best(loop.unwrapped_model, result.best_dir, model_dir, adapter_dir)
        if adapter_dir is not None:
            _record_adapter_base(adapter_dir, base_name)
        processor.save_pretrained(model_dir)
        validation = json.loads((result.best_dir / "best_metric.json").read_text())["metrics"]
        test_name = data.test_split
        if test_name in splits:
            # The best model (= the best adapter merged), scored once on the test split: reported only.
            test_sources = resolve_sources(config.tasks, splits[test_name], train_split=train_split, seed=seed,
                                           split_name=test_name)  # fmt: skip
            final.to(accelerator.device)
            test = score_sources(
                final, processor, test_sources, codes[test_name], prompt_options=prompt_options,
                batch_size=eval_batch_size, max_examples=config.validation.max_examples,
                normalize=config.validation.normalize, max_new_tokens=config.validation.max_new_tokens,
            )  # fmt: skip
        plan_counts = np.bincount(train_dataset.plan[:, 0], minlength=len(train_sources))
        summary = {
            "model_dir": str(model_dir),
            "adapter_dir": None if adapter_dir is None else str(adapter_dir),
            "adapter_base_model": base_name,
            "continued_adapter": config.lora.continue_adapter,
            "best_step": result.best_step,
            "best_metric": result.best_metric,
            "best_value": result.best_value,
            "validation": validation,
            "test": test,
            "final_validation": result.last_eval,
            "total_steps": result.total_steps,
            "epochs": result.epochs,
            "tasks": [
                {
                    "name": s.name,
                    "paradigm": s.paradigm,
                    "weight": s.weight,
                    "train_examples": len(s),
                    "validation_examples": len(v),
                    "examples_per_epoch": int(n),
                }
                for s, v, n in zip(train_sources, validation_sources, plan_counts)
            ],
            "splits": {name: len(split) for name, split in splits.items()},
            "model_path": str(model_path),
            "fmri_tokens_per_scan": processor.num_fmri_tokens,
            "lora": config.lora.enabled,
            **counts,
            "exported_parameters": sum(p.numel() for p in final.parameters()),
        }
        write_run_summary(summary_file, summary, accelerator, started)
    accelerator.wait_for_everyone()
    return Stage3Result(
        model_dir=model_dir, adapter_dir=adapter_dir, summary_file=summary_file, metrics_file=result.metrics_file,
        best_step=result.best_step, best_metric=result.best_metric, best_value=result.best_value,
        validation=validation, test=test,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def report(result: Stage3Result) -> list[str]:
    """What a finished stage-3 run prints: the best validation figure, the test figure of that model
    (reported, never used for selection) and where the outputs are."""
    lines = [best_line(result, prefix="Best validation")]
    if result.test is not None and BEST_DEFAULT in result.test:
        lines.append(
            f"Test {BEST_DEFAULT} of that model (reported, not used for selection) = {result.test[BEST_DEFAULT]:.4g}."
        )
    adapter = f"; LoRA adapter: {result.adapter_dir}" if result.adapter_dir else ""
    lines += [f"Model + processor: {result.model_dir}{adapter}",
              f"Summary: {result.summary_file}; metrics log: {result.metrics_file}"]  # fmt: skip
    return lines


COMMAND = StageCommand(
    name="instruct", stage=3, config_class=Stage3Config, train=train_instruct, report=report,
    description="Stage 3: instruction-tune the stage-2 model.", example="training.max_steps=100 model.path=runs/stage2/model lora.r=16",
)
add_arguments, run_from_args, main = COMMAND.add_arguments, COMMAND.run_from_args, COMMAND.main


if __name__ == "__main__":
    sys.exit(main())
