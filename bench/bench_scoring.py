"""Candidate scoring: one shared prefill + a repeated KV cache against one forward pass per candidate.

Zero-shot evaluation scores every candidate answer of every test question by its log-likelihood
(:func:`fmrilm.scoring_fmrilm.candidate_log_likelihoods`). Ours runs ONE prefill of each prompt (its
940 fMRI tokens, the 4-D block-causal mask) and then all C candidates in one continuation pass over the
cache repeated C times. The baseline is the obvious implementation: one full forward pass over
``prompt + candidate`` per candidate (the prompt batch at once), log-softmax over the candidate's
positions. Both give the same numbers (the largest difference is printed in the notes). Ratio =
baseline seconds / ours (> 1: ours is faster; it grows with C, as the baseline re-reads the prompt C
times).

Cases: a tiny (2 layers x 64) and a small (6 x 256) Llama-style LM built locally with random weights
(the shapes of bench_stage2.py: 94 ROIs x 160 TRs at TR 2 s, patch 16 -> 940 fMRI tokens per scan), a
batch of 4 prompts ("<fmri>\\n### Question: ...\\n### Answer:"), 5 class-like candidates and 20 numeric
candidates (a regression grid), each with EOS. ``--quick``: 64 TRs (376 fMRI tokens), 2 prompts,
fewer repeats.

Run: ``.venv/bin/python bench/bench_scoring.py [--quick]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_stage2 import LM_SIZES, _setup
from common import BenchResult, best_time, machine_description

PROMPT = "<fmri>\n### Question: Is the global coupling of this scan low or high?\n### Answer:"
CANDIDATE_SETS = {
    5: ["lower", "mean", "higher", "low", "high"],
    20: [f"{value:.3f}" for value in np.linspace(0.0, 0.038, 20)],
}


def _per_candidate_forward(model, input_ids, attention_mask, fmri_codes, candidate_ids) -> torch.Tensor:
    """The baseline: one full forward over prompt + candidate per candidate (all prompts at once)."""
    batch = input_ids.shape[0]
    scores = torch.zeros(batch, len(candidate_ids))
    for index, candidate in enumerate(candidate_ids):
        tokens = torch.tensor(candidate).expand(batch, -1)
        ids = torch.cat([input_ids, tokens], dim=1)
        mask = torch.cat([attention_mask, torch.ones_like(tokens)], dim=1)
        logits = model(input_ids=ids, attention_mask=mask, fmri_codes=fmri_codes, logits_to_keep=len(candidate) + 1)
        log_probs = torch.log_softmax(logits.logits[:, :-1].float(), dim=-1)
        scores[:, index] = log_probs.gather(-1, tokens[..., None])[..., 0].sum(dim=1)
    return scores


def _case(size: str, n_candidates: int, quick: bool) -> BenchResult:
    from fmrilm.scoring_fmrilm import candidate_log_likelihoods, tokenize_candidates

    max_timepoints, batch, repeats = (64, 2, 2) if quick else (160, 4, 3)
    model, processor = _setup(size, "tiny", max_timepoints)
    model.eval()
    rng = np.random.default_rng(0)
    codes = torch.from_numpy(rng.integers(0, model.config.codebook_size, size=(batch, processor.num_fmri_tokens)))
    inputs = processor(text=[PROMPT] * batch, fmri_codes=codes, padding_side="left", return_tensors="pt")
    candidate_ids = tokenize_candidates(processor.tokenizer, CANDIDATE_SETS[n_candidates])
    arguments = (model, inputs["input_ids"], inputs["attention_mask"], inputs["fmri_codes"], candidate_ids)

    with torch.inference_mode():
        difference = float((candidate_log_likelihoods(*arguments) - _per_candidate_forward(*arguments)).abs().max())
        ours = best_time(lambda: candidate_log_likelihoods(*arguments), repeats=repeats, warmup=1)
        baseline = best_time(lambda: _per_candidate_forward(*arguments), repeats=repeats, warmup=1)
    layers, width, _, _ = LM_SIZES[size]
    lengths = sorted({len(ids) for ids in candidate_ids})
    return BenchResult(
        benchmark="candidate_scoring",
        case=f"{size} LM ({layers}x{width}), {batch} x {processor.num_fmri_tokens} fMRI tok, C={n_candidates}",
        ours="1 prefill + repeated KV cache",
        baseline="1 forward per candidate",
        ours_seconds=ours,
        baseline_seconds=baseline,
        notes=f"candidate lengths {lengths} tokens; max |difference| {difference:.1e}",
    )


def run(quick: bool = False) -> list[BenchResult]:
    """Shared-prefill scoring against per-candidate forwards, tiny and small LM, 5 and 20 candidates."""
    with torch.no_grad():  # scoped: bench/run_all.py runs the training benchmarks in the same process
        return [_case(size, count, quick) for size in LM_SIZES for count in CANDIDATE_SETS]


if __name__ == "__main__":
    print(machine_description())
    for result in run(quick="--quick" in sys.argv):
        print(result.line(), " ", result.notes)
