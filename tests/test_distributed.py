"""Scale-out: stage 1 and stage 2 trained in 2 real gloo processes on the CPU, and kill-and-resume.

Every run goes through a stage's real command line (``python -m fmrilm.training.stageN --config ...``)
in a subprocess, started by ``torchrun --standalone --nproc_per_node 2`` (stage 1) or by
``accelerate launch --config_file fmrilm/training/configs/accelerate_ddp.yaml --num_processes 2``
with ``ACCELERATE_USE_CPU=1`` (stage 2: the shipped DDP recipe). A small driver
(``DRIVER`` below, written into the workspace) wraps ``TrainingLoop.train`` so that each process
saves its final weights as ``OUTPUT/final-rank{r}.pt``; nothing else about the runs is changed.

What must hold, and why:

* the ranks hold identical weights (DDP all-reduces the gradients, so both apply the same update;
  the NormEMA codebook statistics are summed across processes): checked bitwise;
* a 2-process run with per-process batch ``b`` equals a 1-process run with the same global batch.
  Stage 1 (reconstruction and commitment losses are means over equally many values per scan, the
  codebook EMA sums over the global batch): against a 1-process batch of ``2b``, to ``atol=1e-5``.
  The float differences come from the summation order: ``(g0 + g1) / 2`` all-reduced by gloo
  versus one backward pass through a mean over ``2b`` scans (measured here: about 1e-6).
  Stage 2 (F2T/F2F/T2T losses are per-token means of each micro-batch, and the T2T windows and
  wordings are drawn from the micro-batch's sample indices): against a 1-process run of batch ``b``
  with ``gradient_accumulation_steps=2``, which sees the same micro-batches and averages the same
  two micro-batch losses; equal to ``atol=1e-6`` (bitwise on this CPU). A 1-process batch of ``2b``
  would weight tokens, not micro-batches, and draw other windows: see docs/scale_out.md.
  Settings that make runs depend on the process count are switched off here and documented there:
  k-means codebook initialisation (candidates drawn per process), dropout (each process draws
  its own masks), random training crops (seeded per micro-batch).
* a run killed with SIGKILL after the checkpoint at step 4 (and one more step) and resumed with
  ``resume_from=latest`` ends with bitwise the same weights and the same metrics log as an
  uninterrupted run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from lm_fixtures import CORPUS, tiny_tokenizer
from stage_workspace import build_tokenized_cohort, save_tiny_lms

from fmrilm.training.text_corpus import (
    TextWindows,
    cached_token_memmap,
    iter_documents,
    load_documents,
    tokenize_documents,
    tokenize_to_npy,
)

pytestmark = pytest.mark.filterwarnings("ignore:Group ICA with 4 components")

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "fmrilm" / "training" / "configs"
BIN = Path(sys.executable).parent
TORCHRUN = shutil.which("torchrun", path=str(BIN)) or shutil.which("torchrun")
ACCELERATE = shutil.which("accelerate", path=str(BIN)) or shutil.which("accelerate")
LAUNCH_TIMEOUT_S = 300
PAUSED_MARKER = "paused-for-kill"

DRIVER = '''"""Test driver: a stage's command line, each process saving its final weights (final-rank{r}.pt).

With PAUSE_AFTER_STEP=k the run writes PAUSED_MARKER and sleeps after step k, to be killed there.
"""
import os, sys, time
from pathlib import Path
import torch
from fmrilm.training import loop

_train, _after_step = loop.TrainingLoop.train, loop.TrainingLoop._after_step
PAUSE_AFTER_STEP = int(os.environ.get("PAUSE_AFTER_STEP", "0"))


def train(self, resume_from=None):
    result = _train(self, resume_from)
    state = {k: v.detach().cpu().clone() for k, v in self.unwrapped_model.state_dict().items()}
    torch.save(state, self.output_dir / f"final-rank{self.accelerator.process_index}.pt")
    return result


def after_step(self, progress):
    _after_step(self, progress)
    if self.state.global_step == PAUSE_AFTER_STEP:
        (self.output_dir / "@MARKER@").write_text(str(os.getpid()))
        time.sleep(600)


loop.TrainingLoop.train, loop.TrainingLoop._after_step = train, after_step
module = __import__(f"fmrilm.training.stage{sys.argv[1]}", fromlist=["main"])
sys.exit(module.main(sys.argv[2:]))
'''.replace("@MARKER@", PAUSED_MARKER)

if TORCHRUN is None or ACCELERATE is None:  # both are installed with torch and accelerate
    pytest.skip("torchrun or accelerate is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """The 8-subject simulated cohort (6 training scans), described, pre-tokenized by a tiny stage-1
    processor, a tiny Llama with the test tokenizer, and the driver script."""
    root = build_tokenized_cohort(tmp_path_factory.mktemp("distributed"))
    save_tiny_lms(root, ("llama",))
    (root / "driver.py").write_text(DRIVER, encoding="utf-8")
    (root / "corpus.txt").write_text("\n".join(CORPUS * 4) + "\n", encoding="utf-8")
    return root


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any launcher variables, offline, one thread per process."""
    launcher = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")
    env = {
        k: v for k, v in os.environ.items() if k not in launcher and not k.startswith(("ACCELERATE_", "TORCHELASTIC"))
    }
    env |= {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}  # fmt: skip
    return env | extra


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(command: list[str], **env: str) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=REPO, env=clean_env(**env), capture_output=True, text=True,
                          timeout=LAUNCH_TIMEOUT_S)  # fmt: skip
    assert done.returncode == 0, f"{' '.join(command[:6])} ... failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return done


def stage1_args(workspace: Path, output: Path, batch_size: int) -> list[str]:
    """Stage 1, tiny model, 6 scans, 4 epochs of global batch 2 (12 steps), checkpoints every 2 steps."""
    return [
        "1", "--config", str(CONFIGS / "stage1_tiny.yaml"), f"data.datasets=[{workspace / 'described'}]",
        f"output_dir={output}", f"data.batch_size={batch_size}", "features.max_timepoints=32",
        "features.train_crop=start", "model.overrides.kmeans_init=false", "training.num_epochs=4",
        "training.eval_every=3", "training.log_every=1", "training.save_every=2", "training.progress_bar=false",
        "training.cpu=true",
    ]  # fmt: skip


def stage2_args(workspace: Path, output: Path, *extra: str) -> list[str]:
    """Stage 2, tiny Llama with LoRA (no dropout), T2T windows of a text-file corpus (streamed to a
    memory-mapped .npy), per-process batch 1, 2 epochs."""
    return [
        "2", "--config", str(CONFIGS / "stage2_tiny.yaml"), f"data.datasets=[{workspace / 'tokenized'}]",
        f"output_dir={output}", f"model.text_model={workspace / 'llama'}", f"model.processor={workspace / 'processor'}",
        "data.families=[graph]", "data.batch_size=1", "data.max_length=320", "lora.enabled=true", "lora.dropout=0.0",
        f"t2t.corpus={workspace / 'corpus.txt'}", "t2t.window_length=32", "t2t.batch_size=1", "generation.num_scans=0",
        "training.num_epochs=2", "training.eval_every=3", "training.log_every=1", "training.save_every=2",
        "training.learning_rate=3.0e-3", "training.warmup_ratio=0.0", "training.progress_bar=false",
        "training.cpu=true", *extra,
    ]  # fmt: skip


def final_weights(output: Path, rank: int = 0) -> dict[str, torch.Tensor]:
    return torch.load(output / f"final-rank{rank}.pt", weights_only=True)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_same_keys(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b) and len(a) > 0


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel())


@pytest.fixture(scope="module")
def stage1_runs(workspace) -> dict[str, Path]:
    """Stage 1 in 2 gloo processes (torchrun, batch 1 each) and in 1 process (batch 2)."""
    runs = {"two": workspace / "s1-two-processes", "one": workspace / "s1-one-process"}
    driver = str(workspace / "driver.py")
    run([TORCHRUN, "--standalone", "--nproc_per_node", "2", driver, *stage1_args(workspace, runs["two"], 1)])
    run([sys.executable, driver, *stage1_args(workspace, runs["one"], 2)])
    return runs


def test_stage1_two_gloo_processes_agree_with_each_other_and_with_one_process(stage1_runs):
    summary = json.loads((stage1_runs["two"] / "training_summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["device"].startswith("cpu")
    rank0, rank1 = final_weights(stage1_runs["two"], 0), final_weights(stage1_runs["two"], 1)
    assert_same_keys(rank0, rank1)
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), "the two ranks ended with different weights"
    # The codebook (a buffer updated from statistics summed across processes) is among the compared tensors.
    assert any("code_vectors" in k for k in rank0)
    single = final_weights(stage1_runs["one"])
    assert_same_keys(rank0, single)
    assert max_difference(rank0, single) < 1e-5
    two_log = [r for r in read_jsonl(stage1_runs["two"] / "metrics.jsonl") if r["split"] == "train"]
    one_log = [r for r in read_jsonl(stage1_runs["one"] / "metrics.jsonl") if r["split"] == "train"]
    assert [r["step"] for r in two_log] == [r["step"] for r in one_log] == list(range(1, 13))
    assert [r["loss"] for r in two_log] == pytest.approx([r["loss"] for r in one_log], abs=1e-5)
    assert len({round(r["loss"], 4) for r in one_log}) > 1  # training moved the weights


def test_stage2_lora_in_two_processes_through_accelerate_launch_equals_gradient_accumulation(workspace):
    two, one = workspace / "s2-two-processes", workspace / "s2-one-process"
    driver = str(workspace / "driver.py")
    launch = [ACCELERATE, "launch", "--config_file", str(CONFIGS / "accelerate_ddp.yaml"), "--num_processes", "2",
              "--mixed_precision", "no", "--main_process_port", str(free_port())]  # fmt: skip
    run([*launch, driver, *stage2_args(workspace, two)], ACCELERATE_USE_CPU="1")
    run([sys.executable, driver, *stage2_args(workspace, one, "training.gradient_accumulation_steps=2")])
    summary = json.loads((two / "training_summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["lora"] is True
    assert (two / "adapter" / "adapter_config.json").is_file()
    assert len(list((two / "dataset_cache").glob("t2t-stream-*.npy"))) == 1  # the streamed corpus, made once
    rank0, rank1 = final_weights(two, 0), final_weights(two, 1)
    assert_same_keys(rank0, rank1)
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), "the two ranks ended with different weights"
    single = final_weights(one)
    assert_same_keys(rank0, single)
    assert max_difference(rank0, single) <= 1e-6
    trained = [k for k in rank0 if "lora_B" in k]
    assert trained and all(rank0[k].abs().max() > 0 for k in trained)  # LoRA B starts at zero: it was trained
    two_log = [r for r in read_jsonl(two / "metrics.jsonl") if r["split"] == "train"]
    one_log = [r for r in read_jsonl(one / "metrics.jsonl") if r["split"] == "train"]
    assert [r["step"] for r in two_log] == [r["step"] for r in one_log] == list(range(1, 7))
    for key in ("loss", "f2t_loss", "t2t_loss"):
        assert [r[key] for r in two_log] == pytest.approx([r[key] for r in one_log], abs=1e-5)


def test_a_run_killed_after_a_checkpoint_resumes_to_the_same_weights(workspace, stage1_runs):
    output = workspace / "s1-killed"
    command = [sys.executable, str(workspace / "driver.py"), *stage1_args(workspace, output, 2)]
    # Paused (and killed) after step 5: one step past the checkpoint at step 4, so the killed run
    # has logged a step and changed weights that the checkpoint does not hold.
    process = subprocess.Popen(command, cwd=REPO, env=clean_env(PAUSE_AFTER_STEP="5"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    try:
        while not (output / PAUSED_MARKER).is_file():
            assert process.poll() is None, f"the run ended before it was killed:\n{process.stderr.read()[-4000:]}"
            assert time.monotonic() < deadline, "the run did not reach step 5 in time"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    checkpoints = sorted(p.name for p in (output / "checkpoints").iterdir())
    assert checkpoints == ["step-00000002", "step-00000004"]
    assert max(r["step"] for r in read_jsonl(output / "metrics.jsonl")) == 5
    assert not (output / "final-rank0.pt").exists() and not (output / "processor").exists()

    run([*command, "resume_from=latest"])
    reference = stage1_runs["one"]
    resumed, uninterrupted = final_weights(output), final_weights(reference)
    assert_same_keys(resumed, uninterrupted)
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed), "resumed weights differ"
    assert read_jsonl(output / "metrics.jsonl") == read_jsonl(reference / "metrics.jsonl")


# ---- streaming T2T corpora (larger than memory) --------------------------------------------------


class CountingTokenizer:
    """The tiny tokenizer, recording the largest number of documents passed in one call."""

    def __init__(self) -> None:
        self.inner = tiny_tokenizer()
        self.eos_token_id = self.inner.eos_token_id
        self.largest_call = 0

    def __len__(self) -> int:
        return len(self.inner)

    def __call__(self, texts, **kwargs):
        self.largest_call = max(self.largest_call, len(texts))
        return self.inner(texts, **kwargs)


def test_streamed_memmap_corpus_equals_the_in_memory_stream_for_files_and_dataset_folders(tmp_path):
    tokenizer = tiny_tokenizer()
    lines = [*CORPUS, "", "   ", *CORPUS[::-1]]
    text_file = tmp_path / "corpus.txt"
    text_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    folder = tmp_path / "corpus_dataset"
    (folder / "data").mkdir(parents=True)
    Dataset.from_dict({"body": lines, "n": list(range(len(lines)))}).to_parquet(
        folder / "data" / "train-00000-of-00001.parquet"
    )
    expected = tokenize_documents(load_documents(text_file), tokenizer)
    assert expected.size > 100
    for source, options in ((text_file, {}), (folder, {"text_column": "body"})):
        stream = cached_token_memmap(source, tokenizer, tmp_path / f"cache-{source.name}", batch_size=3, **options)
        assert isinstance(stream, np.memmap) and stream.dtype == np.int32
        np.testing.assert_array_equal(stream, expected)
        again = cached_token_memmap(source, tokenizer, tmp_path / f"cache-{source.name}", **options)
        assert again.filename == stream.filename  # cached: not re-tokenized
    # A changed corpus gets a new cache entry.
    text_file.write_text("\n".join(CORPUS[:3]) + "\n", encoding="utf-8")
    changed = cached_token_memmap(text_file, tokenizer, tmp_path / "cache-corpus.txt")
    np.testing.assert_array_equal(changed, tokenize_documents(CORPUS[:3], tokenizer))
    # Windows drawn from the memory map equal those from the array, also after pickling (workers).
    import pickle

    from_memmap = pickle.loads(pickle.dumps(TextWindows(stream, 16, seed=2)))
    assert isinstance(from_memmap.stream, np.memmap)
    assert len(pickle.dumps(TextWindows(stream, 16, seed=2))) < stream.nbytes
    assert torch.equal(from_memmap.sample(5, key=[1, 7]), TextWindows(expected, 16, seed=2).sample(5, key=[1, 7]))


def test_streaming_tokenization_holds_one_chunk_at_a_time(tmp_path):
    import tracemalloc

    documents = [f"{CORPUS[i % len(CORPUS)]} {i}" for i in range(6000)]
    text_file = tmp_path / "big.txt"
    text_file.write_text("\n".join(documents) + "\n", encoding="utf-8")
    tokenizer = CountingTokenizer()
    tracemalloc.start()
    try:
        stream = tokenize_to_npy(iter_documents(text_file), tokenizer, tmp_path / "big.npy", batch_size=50)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert tokenizer.largest_call == 50
    assert stream.nbytes > 400_000
    assert peak < stream.nbytes / 4, f"peak {peak} bytes for a {stream.nbytes}-byte stream: not streamed"
    np.testing.assert_array_equal(stream[:2000], tokenize_documents(documents, tiny_tokenizer())[:2000])
    assert not list(tmp_path.glob("*.tmp"))  # temporary files removed


def test_streaming_corpus_errors_name_the_problem(tmp_path):
    tokenizer = tiny_tokenizer()
    with pytest.raises(FileNotFoundError, match="not found"):
        iter_documents(tmp_path / "missing.txt")
    folder = tmp_path / "corpus_dataset"
    (folder / "data").mkdir(parents=True)
    Dataset.from_dict({"text": ["a b c"]}).to_parquet(folder / "data" / "train-00000-of-00001.parquet")
    with pytest.raises(ValueError, match="no 'validation' split"):
        iter_documents(folder, split="validation")
    with pytest.raises(ValueError, match="no 'body' column"):
        iter_documents(folder, text_column="body")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(ValueError, match="no non-empty document"):
        tokenize_to_npy(iter_documents(empty), tokenizer, tmp_path / "empty.npy")
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        tokenize_to_npy(iter(CORPUS), tokenizer, tmp_path / "oov.npy", vocab_size=10)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        tokenize_to_npy(iter(CORPUS), tokenizer, tmp_path / "x.npy", batch_size=0)
    assert not list(tmp_path.glob("*.npy")) and not list(tmp_path.glob("*.tmp"))
