"""The shared training loop (fmrilm.training.loop), its schedule and its YAML configs, on a toy regression."""

from __future__ import annotations

import json
import math
import socket
import tempfile
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from accelerate.tracking import GeneralTracker
from safetensors.torch import load_file
from torch import nn

from fmrilm.training import (
    EpochShuffleSampler,
    LoopConfig,
    TrainingLoop,
    WarmupCosineSchedule,
    find_latest_checkpoint,
    load_config,
    make_dataloader,
    parameter_groups,
    save_config,
    warmup_cosine_scheduler,
)
from fmrilm.training.config import parse_overrides
from fmrilm.training.loop import resolve_mixed_precision

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


class ToyRegression(torch.utils.data.Dataset):
    """y = x @ w + noise, x ~ N(0, 1) in 4 dimensions."""

    def __init__(self, n: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.x = rng.normal(size=(n, 4)).astype(np.float32)
        weights = np.array([1.0, -2.0, 0.5, 3.0], dtype=np.float32)
        self.y = (self.x @ weights + 0.1 * rng.normal(size=n).astype(np.float32))[:, None]

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"x": torch.from_numpy(self.x[index]), "y": torch.from_numpy(self.y[index])}


def mse_loss(model, batch):
    prediction = model(batch["x"])
    return nn.functional.mse_loss(prediction, batch["y"]), {"mae": (prediction - batch["y"]).abs().mean()}


def evaluate_regression(model, dataloader, accelerator):
    errors, targets = [], []
    for batch in dataloader:
        error, target = accelerator.gather_for_metrics(((model(batch["x"]) - batch["y"]) ** 2, batch["y"]))
        errors.append(error)
        targets.append(target)
    error, target = torch.cat(errors), torch.cat(targets)
    return {"mse": error.mean().item(), "r2": 1.0 - error.sum().item() / ((target - target.mean()) ** 2).sum().item()}


def mlp_with_dropout() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.2), nn.Linear(8, 1))


def linear_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(4, 1)


def make_loop(
    output_dir, model=None, *, n_train=30, batch_size=4, evaluate=evaluate_regression, compute_loss=mse_loss, **settings
):
    # cpu=True: the exact-equality checks below need float32 arithmetic, not a GPU's bf16 autocast.
    settings = {"learning_rate": 0.05, "progress_bar": False, "best_metric": "mse", "cpu": True, **settings}
    config = LoopConfig(**settings)
    train = make_dataloader(ToyRegression(n_train), batch_size, shuffle=True, seed=config.seed)
    validation = make_dataloader(ToyRegression(10, seed=1), 5, shuffle=False) if evaluate is not None else None
    return TrainingLoop(
        model if model is not None else mlp_with_dropout(), config, output_dir=output_dir, train_dataloader=train,
        compute_loss=compute_loss, eval_dataloader=validation, evaluate=evaluate,
    )  # fmt: skip


def weights(loop) -> list[torch.Tensor]:
    return [p.detach().clone() for p in loop.unwrapped_model.parameters()]


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---- schedule -----------------------------------------------------------------------------------


def test_schedule_warms_up_linearly_then_decays_once_to_the_floor():
    schedule = WarmupCosineSchedule(total_steps=100, warmup_steps=10, min_lr_ratio=0.1)
    factors = np.array([schedule(step) for step in range(130)])
    np.testing.assert_allclose(factors[:10], np.arange(1, 11) / 10)
    assert factors[10] == pytest.approx(1.0)
    assert factors[99] == pytest.approx(0.1)
    # halfway through the decay the cosine is at its midpoint
    assert schedule(10 + 89 / 2) == pytest.approx(0.1 + 0.9 * 0.5)
    assert np.all(np.diff(factors[10:100]) < 0)  # strictly decreasing: no restart anywhere
    np.testing.assert_allclose(factors[100:], 0.1)  # past the end it stays at the floor


def test_scheduler_applies_the_factor_to_each_group_peak():
    parameters = [nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))]
    optimizer = torch.optim.AdamW([{"params": parameters[:1]}, {"params": parameters[1:], "lr": 0.5}], lr=1.0)
    scheduler = warmup_cosine_scheduler(optimizer, total_steps=5, warmup_steps=2, min_lr_ratio=0.0)
    seen = []
    for _ in range(5):
        seen.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    expected = [WarmupCosineSchedule(5, 2, 0.0)(step) for step in range(5)]
    np.testing.assert_allclose(np.array(seen), np.outer(expected, [1.0, 0.5]))
    assert scheduler.state_dict()["lr_lambdas"][0] == {"total_steps": 5, "warmup_steps": 2, "min_lr_ratio": 0.0}


def test_schedule_without_warmup_and_with_a_single_step():
    assert WarmupCosineSchedule(1)(0) == pytest.approx(0.0)  # a one-step run ends at the floor
    assert WarmupCosineSchedule(2, 0, 0.2)(0) == 1.0
    assert WarmupCosineSchedule(2, 0, 0.2)(1) == pytest.approx(0.2)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"total_steps": 0}, "total_steps"),
        ({"total_steps": 10, "warmup_steps": -1}, "warmup_steps"),
        ({"total_steps": 10, "warmup_steps": 10}, "smaller than total_steps"),
        ({"total_steps": 10, "min_lr_ratio": 1.5}, "min_lr_ratio"),
    ],
)
def test_schedule_refuses_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WarmupCosineSchedule(**kwargs)


def test_loop_learning_rate_never_restarts_at_epoch_boundaries(tmp_path):
    """SPEC B5: one cosine over all steps of a 4-epoch run, read back from the JSONL log."""
    loop = make_loop(tmp_path, num_epochs=4, log_every=1, warmup_steps=3, min_lr_ratio=0.1, evaluate=None)
    result = loop.train()
    records = [r for r in read_jsonl(result.metrics_file) if r["split"] == "train"]
    assert [r["step"] for r in records] == list(range(1, 33))  # 8 batches x 4 epochs
    lrs = np.array([r["lr"] for r in records])
    schedule = WarmupCosineSchedule(32, 3, 0.1)
    np.testing.assert_allclose(lrs, [0.05 * schedule(s) for s in range(32)], rtol=1e-12)
    assert np.all(np.diff(lrs[3:]) < 0)
    assert {r["epoch"] for r in records} == {0, 1, 2, 3}


# ---- optimiser groups, sampler, precision --------------------------------------------------------


def test_parameter_groups_decay_only_matrices_and_skip_frozen():
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    model[2].weight.requires_grad_(False)
    decay, no_decay = parameter_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [torch.Size([8, 4])]
    assert all(p.ndim == 1 for p in no_decay["params"]) and len(no_decay["params"]) == 4
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        parameter_groups(model, 0.1)


def test_sampler_order_depends_only_on_seed_and_epoch():
    first, second = EpochShuffleSampler(50, seed=3), EpochShuffleSampler(50, seed=3)
    assert list(first) == list(second) and sorted(first) == list(range(50))
    first.set_epoch(1)
    assert list(first) != list(second)
    second.set_epoch(1)
    assert list(first) == list(second)
    assert list(EpochShuffleSampler(5, shuffle=False)) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="empty"):
        EpochShuffleSampler(0)


def test_mixed_precision_is_off_on_cpu_unless_forced(tmp_path):
    assert resolve_mixed_precision("auto", cpu=True) == "no"
    assert resolve_mixed_precision("bf16", cpu=True) == "bf16"
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        resolve_mixed_precision("fp16", cpu=True)
    loop = make_loop(tmp_path, num_epochs=1, mixed_precision="bf16", cpu=True)
    assert loop.accelerator.mixed_precision == "bf16"
    assert math.isfinite(loop.train().last_eval["mse"])


# ---- accumulation, clipping ----------------------------------------------------------------------


def test_accumulating_two_batches_equals_one_batch_twice_as_large(tmp_path):
    # 10 samples: batch 2 x accumulation 2 gives groups of 2, 2, 1 batches; batch 4 gives 4, 4, 2 samples.
    settings = dict(n_train=10, num_epochs=3, max_grad_norm=None, evaluate=None, weight_decay=0.0)
    accumulated = make_loop(tmp_path / "a", linear_model(), batch_size=2, gradient_accumulation_steps=2, **settings)
    accumulated.train()
    large = make_loop(tmp_path / "b", linear_model(), batch_size=4, **settings)
    large.train()
    assert accumulated.total_steps == large.total_steps == 9
    for a, b in zip(weights(accumulated), weights(large)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert not torch.allclose(weights(large)[0], linear_model().weight)  # it did train


def test_gradients_are_clipped_before_each_optimiser_step(tmp_path):
    loop = make_loop(tmp_path, num_epochs=1, max_grad_norm=0.01, log_every=1, evaluate=None)
    norms_seen = []

    def record_norm(optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norms_seen.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())

    loop.optimizer.optimizer.register_step_pre_hook(record_norm)
    result = loop.train()
    logged = [r["grad_norm"] for r in read_jsonl(result.metrics_file) if r["split"] == "train"]
    assert len(norms_seen) == 8
    assert max(norms_seen) <= 0.01 * (1 + 1e-5)
    assert min(logged) > 0.01  # the logged norm is the one before clipping


# ---- checkpoints and resume ----------------------------------------------------------------------


class StopAfter:
    """compute_loss that raises KeyboardInterrupt on its n-th call, as a killed job would stop."""

    def __init__(self, calls: int) -> None:
        self.calls, self.remaining = calls, calls

    def __call__(self, model, batch):
        self.remaining -= 1
        if self.remaining < 0:
            raise KeyboardInterrupt
        return mse_loss(model, batch)


def test_resume_continues_identically(tmp_path):
    """Dropout (RNG), accumulation with a short last group, a checkpoint inside an epoch."""
    settings = dict(num_epochs=3, gradient_accumulation_steps=3, eval_every=2, save_every=4, log_every=2,
                    best_metric="r2", best_mode="max")  # fmt: skip
    uninterrupted = make_loop(tmp_path / "a", **settings)
    expected = uninterrupted.train()

    with pytest.raises(KeyboardInterrupt):
        make_loop(tmp_path / "b", compute_loss=StopAfter(20), **settings).train()
    assert find_latest_checkpoint(tmp_path / "b").name == "step-00000004"
    resumed_loop = make_loop(tmp_path / "b", **settings)
    resumed = resumed_loop.train(resume_from="latest")

    for a, b in zip(weights(uninterrupted), weights(resumed_loop)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert (resumed.global_step, resumed.best_step, resumed.best_value) == (
        expected.global_step, expected.best_step, expected.best_value,
    )  # fmt: skip
    assert read_jsonl(resumed.metrics_file) == read_jsonl(expected.metrics_file)


def test_checkpoint_rotation_and_resume_errors(tmp_path):
    make_loop(tmp_path / "run", num_epochs=2, save_every=2, keep_checkpoints=2, evaluate=None).train()
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["step-00000012", "step-00000014"]  # 16 steps; the final step is not checkpointed
    with pytest.raises(FileExistsError, match="resume_from='latest'"):
        make_loop(tmp_path / "run", num_epochs=2, save_every=2, evaluate=None).train()
    with pytest.raises(ValueError, match="16 optimisation steps, but this run has 8"):
        make_loop(tmp_path / "run", num_epochs=1, evaluate=None).train(resume_from="latest")
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        make_loop(tmp_path / "empty", num_epochs=1, evaluate=None).train(resume_from="latest")
    with pytest.raises(FileNotFoundError, match="not found"):
        make_loop(tmp_path / "other", num_epochs=1, evaluate=None).train(resume_from=tmp_path / "missing")
    assert make_loop(tmp_path / "auto", num_epochs=1, evaluate=None).train(resume_from="auto").global_step == 8


# ---- validation and the best checkpoint ----------------------------------------------------------


@dataclass
class ScriptedValidation:
    """Returns the given scores in turn and remembers the weights each was computed on."""

    scores: list[float]
    snapshots: list[dict[str, torch.Tensor]] = field(default_factory=list)

    def __call__(self, model, dataloader, accelerator):
        named = accelerator.unwrap_model(model).named_parameters()
        self.snapshots.append({name: p.detach().clone() for name, p in named})
        return {"score": self.scores[len(self.snapshots) - 1], "other": 0.0}


@pytest.mark.parametrize(
    "mode, scores, best_index", [("max", [0.1, 0.5, 0.3, 0.2], 1), ("min", [0.4, 0.3, 0.1, 0.2], 2)]
)
def test_best_checkpoint_is_chosen_on_the_validation_metric(tmp_path, mode, scores, best_index):
    """SPEC B6: validation worsens at the end, the earlier best is kept (not the last step)."""
    validation = ScriptedValidation(scores)
    loop = make_loop(tmp_path, num_epochs=1, eval_every=2, best_metric="score", best_mode=mode, evaluate=validation)
    result = loop.train()
    assert len(validation.snapshots) == 4
    assert result.best_step == 2 * (best_index + 1) and result.best_value == scores[best_index]
    saved = load_file(tmp_path / "best" / "model.safetensors")
    assert saved.keys() == validation.snapshots[best_index].keys()
    for name, value in saved.items():
        torch.testing.assert_close(value, validation.snapshots[best_index][name], rtol=0, atol=0)
    assert not torch.equal(saved["0.weight"], weights(loop)[0])  # not the final weights
    record = json.loads((tmp_path / "best" / "best_metric.json").read_text())
    assert record["step"] == result.best_step and record["metric"] == "score"


def test_validation_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="best_metric='r3' is not among the validation metrics \\(mse, r2\\)"):
        make_loop(tmp_path / "a", num_epochs=1, best_metric="r3").train()
    with pytest.raises(FloatingPointError, match="'score' is nan"):
        make_loop(
            tmp_path / "b", num_epochs=1, best_metric="score", evaluate=ScriptedValidation([float("nan")])
        ).train()
    with pytest.raises(ValueError, match="together"):
        TrainingLoop(linear_model(), LoopConfig(), output_dir=tmp_path, train_dataloader=None, compute_loss=mse_loss,
                     evaluate=evaluate_regression)  # fmt: skip


def test_non_finite_training_loss_stops_the_run(tmp_path):
    def exploding(model, batch):
        loss, metrics = mse_loss(model, batch)
        return loss * float("inf"), metrics

    with pytest.raises(FloatingPointError, match="training loss is inf at step 1"):
        make_loop(tmp_path, num_epochs=1, log_every=1, compute_loss=exploding, evaluate=None).train()


def test_metrics_jsonl_records_training_and_validation(tmp_path):
    result = make_loop(tmp_path, num_epochs=2, log_every=4, eval_every=8, best_metric="r2", best_mode="max").train()
    records = read_jsonl(result.metrics_file)
    train = [r for r in records if r["split"] == "train"]
    validation = [r for r in records if r["split"] == "validation"]
    assert [r["step"] for r in train] == [4, 8, 12, 16]
    assert [r["step"] for r in validation] == [8, 16]
    assert set(train[0]) == {"split", "step", "epoch", "loss", "mae", "lr", "grad_norm"}
    assert set(validation[0]) == {"split", "step", "epoch", "mse", "r2", "best_r2"}
    assert validation[-1]["best_r2"] == max(r["r2"] for r in validation) == result.best_value
    assert train[-1]["loss"] < train[0]["loss"]
    assert result.last_eval == {k: validation[-1][k] for k in ("mse", "r2")}


class MemoryTracker(GeneralTracker):
    """An accelerate tracker that keeps what it is given."""

    name = "memory"
    requires_logging_directory = False

    def __init__(self) -> None:
        super().__init__()
        self.config: dict | None = None
        self.logged: list[tuple[int, dict]] = []

    @property
    def tracker(self):
        return self

    def store_init_configuration(self, values: dict) -> None:
        self.config = values

    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        self.logged.append((step, values))


def test_metrics_go_to_accelerate_trackers(tmp_path):
    from accelerate import Accelerator

    tracker = MemoryTracker()
    config = LoopConfig(num_epochs=1, log_every=4, eval_every=8, progress_bar=False, best_metric="mse", cpu=True)
    loop = TrainingLoop(
        linear_model(), config, output_dir=tmp_path, accelerator=Accelerator(cpu=True, log_with=[tracker]),
        train_dataloader=make_dataloader(ToyRegression(30), 4, shuffle=True), compute_loss=mse_loss,
        eval_dataloader=make_dataloader(ToyRegression(10, seed=1), 5, shuffle=False), evaluate=evaluate_regression,
        tracker_config={"training": {"lr": 0.05, "betas": (0.9, 0.99)}, "name": "toy"},
    )  # fmt: skip
    loop.train()
    assert tracker.config == {"training.lr": 0.05, "training.betas": "(0.9, 0.99)", "name": "toy"}
    assert [step for step, _ in tracker.logged] == [4, 8, 8]
    assert {"train/loss", "train/lr", "train/mae"} <= set(tracker.logged[0][1])
    assert {"validation/mse", "validation/r2", "validation/best_mse"} == set(tracker.logged[2][1])
    jsonl = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if r["split"] == "validation"]
    assert tracker.logged[2][1]["validation/mse"] == jsonl[0]["mse"]


def test_a_requested_tracker_that_cannot_run_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr("accelerate.tracking._available_trackers", [])  # as without the tensorboard package
    with pytest.raises(ValueError, match="report_to names tracker\\(s\\) \\['tensorboard'\\] .*pip install"):
        with pytest.warns(UserWarning, match="no supported trackers"):  # accelerate's own note
            make_loop(tmp_path, num_epochs=1, report_to=["tensorboard"])
    with pytest.raises(ValueError, match="Unsupported logging capability: no_such_tracker"):
        make_loop(tmp_path, num_epochs=1, report_to=["no_such_tracker"])


def test_eval_every_none_validates_after_each_epoch(tmp_path):
    result = make_loop(tmp_path, num_epochs=3).train()
    steps = [r["step"] for r in read_jsonl(result.metrics_file) if r["split"] == "validation"]
    assert steps == [8, 16, 24]


# ---- multi-process -------------------------------------------------------------------------------


def _two_process_worker(output_dir: str) -> None:
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)  # the forked child must not inherit the parent's state
    GradientState._reset_state()
    loop = make_loop(output_dir, linear_model(), n_train=32, num_epochs=2, eval_every=2, save_every=3)
    result = loop.train()
    assert loop.accelerator.num_processes == 2
    if loop.accelerator.is_main_process:
        torch.save({"weights": weights(loop), "last_eval": result.last_eval}, f"{output_dir}/final.pt")


def test_two_gloo_processes_equal_one_process_accumulating_two_batches(tmp_path):
    """DDP over 2 processes with batch b == 1 process with batch b and accumulation 2, bitwise."""
    from accelerate.utils import PrepareForLaunch, patch_environment
    from torch.multiprocessing import start_processes

    single = make_loop(tmp_path / "single", linear_model(), n_train=32, num_epochs=2, eval_every=2,
                       gradient_accumulation_steps=2)  # fmt: skip
    expected = single.train()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.NamedTemporaryFile() as rendezvous, patch_environment(
        world_size=2, master_addr="127.0.0.1", master_port=str(port), accelerate_mixed_precision="no",
        accelerate_debug_rdv_file=rendezvous.name, accelerate_use_cpu="yes", gloo_socket_ifname="lo",
    ):  # fmt: skip
        start_processes(PrepareForLaunch(_two_process_worker, debug=True), args=(str(tmp_path / "multi"),),
                        nprocs=2, start_method="fork")  # fmt: skip
    multi = torch.load(tmp_path / "multi" / "final.pt")
    for a, b in zip(multi["weights"], weights(single)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert multi["last_eval"] == pytest.approx(expected.last_eval)


# ---- configs -------------------------------------------------------------------------------------


@dataclass
class _Section:
    rate: float = 0.1
    names: list[str] = field(default_factory=list)


@dataclass
class _Config:
    training: LoopConfig = field(default_factory=LoopConfig)
    section: _Section = field(default_factory=_Section)
    extra: dict[str, int] = field(default_factory=dict)
    path: str | None = None


def test_yaml_config_with_overrides_round_trips(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  learning_rate: 1e-4\n  max_steps: 10\nsection:\n  names: [a, b]\n")
    config = load_config(_Config, path, ["training.max_steps=20", "section.rate=3", "extra.depth=2", "path=null"])
    assert config.training.learning_rate == 1e-4 and isinstance(config.training.learning_rate, float)
    assert config.training.max_steps == 20 and config.section.rate == 3.0 and config.section.names == ["a", "b"]
    assert config.extra == {"depth": 2} and config.path is None
    saved = save_config(config, tmp_path / "saved.yaml")
    assert load_config(_Config, saved) == config


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["training.max_stepz=3"],
            "Unknown setting\\(s\\) training.max_stepz .* valid keys under training: .*max_steps",
        ),
        (["training.max_steps=abc"], "training.max_steps: expected an integer"),
        (["training.max_steps=0"], "training.max_steps must be a positive integer"),
        (["training.best_mode=median"], "training.best_mode: 'median' is not one of 'min', 'max'"),
        (["section.names=x"], "section.names: expected a list"),
        (["training.cpu=1"], "training.cpu: expected true or false"),
        (["novalue"], "not of the form key=value"),
    ],
)
def test_config_errors_say_what_is_wrong(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config(_Config, None, overrides)


def test_config_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="Config file"):
        load_config(_Config, tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="must hold a YAML mapping"):
        load_config(_Config, tmp_path / "list.yaml")
    assert parse_overrides(["a.b=[1, 2]", "a.c=x"]) == {"a": {"b": [1, 2], "c": "x"}}
