"""Encoder throughput of FmriTokenizerModel (small preset) against hand-written attention.

Ours: ``model.embed`` (patch embedding + 12 pre-LN layers + final LN) of the ``small`` preset
(D = 384, 6 heads, MLP 1536) under ``torch.inference_mode``, attention through
``scaled_dot_product_attention`` (``attn_implementation="sdpa"``, the default).
Baseline: the same model and weights with ``attn_implementation="eager"``: hand-written
``softmax(q k^T / sqrt(d)) v``, as in the official fMRI-LM encoder.

Two figures per case:

- ``sdpa vs eager``: ratio = eager seconds / sdpa seconds (> 1: SDPA is faster);
- ``fraction of matmul rate``: ratio = (encoder FLOPs / this machine's fp32 ``torch.matmul`` rate,
  measured in the same run on 4096 x 4096 matrices) / encoder seconds, i.e. the achieved GFLOP/s as
  a fraction of the matmul rate (target >= 0.75).

Encoder FLOPs are counted analytically (multiply-adds x 2; LayerNorm, GELU, softmax and additions
are not counted), per scan of N = (T / P) * R tokens, width D, MLP width I, L layers:
``2 N P D`` (patch projection) ``+ L * (2 N D 3D + 2 N D D + 2 * 2 N D I + 2 * 2 N^2 D)`` (QKV,
output projection, MLP, then q k^T and attention x v over all heads).

Cases (160 TRs, patch 16): batch 8 of 94 ROIs (AAL2, the sample data: N = 940 tokens, 56 GFLOP
per scan) and, in the full run, batch 2 of 450 ROIs (Schaefer-400 + Tian S3 as in the paper:
N = 4500 tokens, 564 GFLOP per scan, two thirds of it attention; batch 8 would cost minutes per
call on a CPU, and FLOP/s do not depend on the batch at this size). The matmul rate is measured
again just before each case, so that load from other processes affects both sides alike. Runs on
CUDA when available (fp32, TF32 off), else on the CPU.

Run: ``.venv/bin/python bench/bench_tokenizer_encoder.py [--quick]``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BenchResult, best_time, machine_description

from fmrilm.configuration_fmrilm import FmriTokenizerConfig
from fmrilm.modeling_fmri_tokenizer import FmriTokenizerModel

MATMUL_SIZE = 4096
MAX_TIMEPOINTS, PATCH_SIZE, BATCH = 160, 16, 8  # BATCH: the target case


def encoder_flops(config: FmriTokenizerConfig) -> float:
    """Floating-point operations of ``model.embed`` for one scan (see the module docstring)."""
    tokens, width, mlp = config.num_tokens, config.hidden_size, config.intermediate_size
    per_layer = 2 * tokens * width * (3 * width + width + 2 * mlp) + 4 * tokens**2 * width
    return 2 * tokens * config.patch_size * width + config.num_hidden_layers * per_layer


def _synchronised(fn: Callable[[], object], device: torch.device) -> Callable[[], None]:
    def call() -> None:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return call


def matmul_rate(device: torch.device, repeats: int) -> float:
    """FLOP/s of one fp32 ``torch.matmul`` of two MATMUL_SIZE x MATMUL_SIZE matrices."""
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=device, generator=generator)
    b = torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=device, generator=generator)
    seconds = best_time(_synchronised(lambda: torch.matmul(a, b), device), repeats=repeats)
    return 2 * MATMUL_SIZE**3 / seconds


def time_encoder(
    model: FmriTokenizerModel, values: torch.Tensor, implementation: str, repeats: int, device: torch.device
) -> float:
    """Best wall time in seconds of ``model.embed(values)`` with the given attention implementation.

    The untimed warm-up call uses one scan only (the big case costs a minute per batch on a CPU).
    """
    model.set_attn_implementation(implementation)
    with torch.inference_mode():
        _synchronised(lambda: model.embed(values[:1]), device)()
        return best_time(_synchronised(lambda: model.embed(values), device), repeats=repeats, warmup=0)


def run(quick: bool = False) -> list[BenchResult]:
    """Time the SDPA encoder and its eager twin; compare both with the matmul rate."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 on both sides of the comparison
    cases = [(94, 2 if quick else BATCH, 2 if quick else 3)]
    if not quick:
        cases.append((450, 2, 1))
    results = []
    for n_rois, batch, repeats in cases:
        rate = matmul_rate(device, repeats=3 if quick else 5)
        config = FmriTokenizerConfig.preset(
            "small", n_rois=n_rois, max_timepoints=MAX_TIMEPOINTS, patch_size=PATCH_SIZE
        )
        torch.manual_seed(0)
        model = FmriTokenizerModel(config).to(device).eval()
        values = torch.randn(batch, MAX_TIMEPOINTS, n_rois, device=device)
        with torch.inference_mode():
            model.set_attn_implementation("eager")
            reference = model.embed(values[:1])
            model.set_attn_implementation("sdpa")
            agreement = float((model.embed(values[:1]) - reference).abs().max())
        sdpa = time_encoder(model, values, "sdpa", repeats, device)
        eager = time_encoder(model, values, "eager", repeats, device)
        flops = encoder_flops(config) * batch
        case = f"small, batch {batch}, {n_rois} ROI x {MAX_TIMEPOINTS} TR, p{PATCH_SIZE} ({config.num_tokens} tok)"
        throughput = (
            f"{device.type}: sdpa {batch / sdpa:.2f} scans/s, {flops / sdpa / 1e9:.0f} GFLOP/s "
            f"({flops / sdpa / rate:.0%} of matmul {rate / 1e9:.0f} GFLOP/s); eager {batch / eager:.2f} scans/s, "
            f"{flops / eager / 1e9:.0f} GFLOP/s ({flops / eager / rate:.0%}); {flops / batch / 1e9:.1f} GFLOP/scan; "
            f"sdpa vs eager max |diff| {agreement:.1e}"
        )
        results.append(
            BenchResult(
                benchmark="tokenizer_encoder",
                case=case,
                ours="embed(), attention via SDPA",
                baseline="same weights, hand-written softmax attention",
                ours_seconds=sdpa,
                baseline_seconds=eager,
                notes=throughput,
            )
        )
        results.append(
            BenchResult(
                benchmark="tokenizer_encoder",
                case=case + ", fraction of matmul rate",
                ours="embed(), attention via SDPA",
                baseline="same FLOPs at the fp32 torch.matmul rate",
                ours_seconds=sdpa,
                baseline_seconds=flops / rate,
                target=">= 0.75 of the matmul rate",
                target_ratio=0.75,
                notes=throughput,
            )
        )
    return results


if __name__ == "__main__":
    print(machine_description())
    for result in run(quick="--quick" in sys.argv):
        print(result.line(), " ", result.notes)
