"""Peak memory and time of the VQ code assignment: chunked (ours) against unchunked baselines.

Case: an 8192 x 128 codebook (the paper's) and 8 scans x 4700 tokens (37,600 rows; 2 scans with
``--quick``), inputs and codes L2-normalised.

- Ours: ``NormEMAVectorQuantizer.assign`` with ``chunk_size=4096``: one (4096, 8192) float32
  similarity block, allocated once and reused, so the extra memory does not grow with the rows.
- Baseline "official": the NeuroLM / BEiT-v2 NormEMA computation, the full (rows, 8192) squared
  distance matrix ``|z|^2 + |e|^2 - 2 z e^T`` then ``argmin``.
- Baseline "matmul": the lightest unchunked form, the full (rows, 8192) similarity matrix
  ``z @ e^T`` then ``argmax``.

Peak memory is the largest number of bytes held by tensors allocated during one call, read from
``torch.profiler`` (``profile_memory=True``: its "[memory]" events carry the running total of
allocated bytes). On a CUDA device it is ``torch.cuda.max_memory_allocated`` above the memory in
use before the call. Times are best-of-N wall times; ratio = baseline / ours. ``run`` measures the
CPU, and CUDA too when a GPU is present; ``--device cpu|cuda`` picks one.

Run: ``.venv/bin/python bench/bench_quantizer.py [--quick] [--device cpu|cuda]``.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BenchResult, best_time, machine_description

from fmrilm.quantization_fmri_tokenizer import NormEMAVectorQuantizer

CODEBOOK_SIZE = 8192
CODEBOOK_DIM = 128
TOKENS_PER_SCAN = 4700
CHUNK_SIZE = 4096


def official_distance_assignment(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """NeuroLM / BEiT-v2 NormEMA: full squared-distance matrix on normalised vectors, then argmin."""
    unit = F.normalize(z, dim=-1)
    distances = unit.pow(2).sum(dim=1, keepdim=True) + codebook.pow(2).sum(dim=1) - 2 * unit @ codebook.T
    return distances.argmin(dim=1)


def unchunked_matmul_assignment(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Full (rows, K) cosine-similarity matrix, then argmax."""
    return (F.normalize(z, dim=-1) @ codebook.T).argmax(dim=1)


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Largest number of bytes held by tensors allocated during one call of ``fn``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, acc_events=True) as profiler:
        fn()
    with tempfile.TemporaryDirectory() as directory:
        trace = Path(directory) / "trace.json"
        profiler.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    totals = [event["args"]["Total Allocated"] for event in events if event.get("name") == "[memory]"]
    return max(totals, default=0)


def _mib(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:,.0f} MiB"


def _run_on(device: torch.device, quick: bool) -> list[BenchResult]:
    """Time and peak memory of ours and both baselines on one device; check the codes agree."""
    n_scans = 2 if quick else 8
    repeats = 2 if quick else 3
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(n_scans * TOKENS_PER_SCAN, CODEBOOK_DIM, generator=generator).to(device)
    torch.manual_seed(0)
    quantizer = NormEMAVectorQuantizer(CODEBOOK_SIZE, CODEBOOK_DIM, chunk_size=CHUNK_SIZE).to(device).eval()
    codebook = quantizer.codebook

    def synchronised(fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        def call() -> torch.Tensor:
            result = fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return result

        return call

    ours = synchronised(lambda: quantizer.assign(z))
    baselines = {
        "official |z|^2+|e|^2-2ze^T, argmin": synchronised(lambda: official_distance_assignment(z, codebook)),
        "unchunked z @ e^T, argmax": synchronised(lambda: unchunked_matmul_assignment(z, codebook)),
    }
    our_codes = ours()
    our_peak = peak_bytes(ours, device)
    our_seconds = best_time(ours, repeats=repeats)
    designed_peak = CHUNK_SIZE * CODEBOOK_SIZE * 4 + len(z) * (CODEBOOK_DIM * 4 + 8)
    results = []
    for name, baseline in baselines.items():
        agreement = float((baseline() == our_codes).float().mean())
        baseline_peak = peak_bytes(baseline, device)
        baseline_seconds = best_time(baseline, repeats=repeats)
        results.append(
            BenchResult(
                benchmark="vq_assignment",
                case=f"{len(z)} rows x {CODEBOOK_SIZE}x{CODEBOOK_DIM} codebook, {device.type}",
                ours=f"chunked {CHUNK_SIZE} rows (peak {_mib(our_peak)})",
                baseline=f"{name} (peak {_mib(baseline_peak)})",
                ours_seconds=our_seconds,
                baseline_seconds=baseline_seconds,
                target=">= 1x time, bounded memory",
                target_ratio=1.0,
                notes=(
                    f"peak memory ours {_mib(our_peak)} vs baseline {_mib(baseline_peak)} "
                    f"({baseline_peak / max(our_peak, 1):.1f}x less; ours by design <= {_mib(designed_peak)}); "
                    f"codes agree on {agreement:.4%} of rows (any difference is a float near-tie)"
                ),
            )
        )
    return results


def run(quick: bool = False, devices: list[str] | None = None) -> list[BenchResult]:
    """Results on each device: the CPU, plus CUDA when available (unless ``devices`` names them)."""
    if devices is None:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return [result for device in devices for result in _run_on(torch.device(device), quick)]


if __name__ == "__main__":
    chosen = [sys.argv[sys.argv.index("--device") + 1]] if "--device" in sys.argv else None
    print(machine_description())
    for result in run(quick="--quick" in sys.argv, devices=chosen):
        print(result.line(), " ", result.notes)
