"""Benchmark: simulating a cohort with all subjects integrated together vs one subject at a time.

Ours: :func:`fmrilm.simulate.integrate_network` advances every subject of the cohort at once, in
blocks of ``SUBJECT_BLOCK_SIZE`` subjects per matrix product. Baseline: the very same model, code
and parameters, integrated one subject at a time (a Python loop over subjects, ``block_size=1`` so
no padding is wasted). Both integrate the full burn-in plus scan at the default ``dt``.

The full run times 100 subjects x 10 min at TR 2 s (the cohort the simulator is designed for) and
also reports the absolute time of the public :func:`fmrilm.simulate.simulate_cohort` for it; quick
mode uses 16 subjects x 2 min.

Run: ``.venv/bin/python bench/bench_simulate.py [--quick]``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BenchResult, best_time, machine_description

from fmrilm.atlases import aal2
from fmrilm.sample_data import load_structural_connectome
from fmrilm.simulate import (
    MIN_VOLUMES,
    SUBJECT_BLOCK_SIZE,
    SimulationConfig,
    draw_subject_parameters,
    integrate_network,
    normalise_connectome,
    simulate_cohort,
)


def run(quick: bool = False) -> list[BenchResult]:
    n_subjects, duration_s = (16, 120.0) if quick else (100, 600.0)
    config = SimulationConfig(n_subjects=n_subjects, duration_s=duration_s, tr=2.0)
    connectome = normalise_connectome(load_structural_connectome())
    gain_rois = aal2().rois_in(config.gain_network)
    subjects = [draw_subject_parameters(config, i, connectome.shape[0], gain_rois) for i in range(n_subjects)]
    settings = {
        "n_volumes": config.n_volumes,
        "tr": config.tr,
        "dt": config.dt,
        "burn_in_s": config.burn_in_s,
        "neural_input_scale": config.neural_input_scale,
        "hemodynamics": config.hemodynamics,
    }

    def together() -> np.ndarray:
        return integrate_network(subjects, connectome, block_size=SUBJECT_BLOCK_SIZE, **settings)

    def one_at_a_time() -> np.ndarray:
        return np.concatenate([integrate_network([s], connectome, block_size=1, **settings) for s in subjects])

    repeats = 3 if quick else 1  # a full-size call takes seconds (ours) to minutes (baseline)
    ours_seconds = best_time(together, repeats=repeats, warmup=0)
    baseline_seconds = best_time(one_at_a_time, repeats=repeats, warmup=0)
    # Same model: on a few subjects the two agree up to float32 rounding (BLAS sums in another order).
    check = {**settings, "n_volumes": MIN_VOLUMES}
    difference = float(
        np.abs(
            integrate_network(subjects[:4], connectome, **check)
            - np.concatenate([integrate_network([s], connectome, block_size=1, **check) for s in subjects[:4]])
        ).max()
    )
    start = time.perf_counter()
    simulate_cohort(n_subjects, duration_s=duration_s, tr=2.0)
    public_seconds = time.perf_counter() - start

    case = f"{n_subjects} subj x {duration_s / 60:g} min TR 2s"
    return [
        BenchResult(
            benchmark="simulate_cohort",
            case=case,
            ours=f"all subjects together (blocks of {SUBJECT_BLOCK_SIZE})",
            baseline="same model, one subject at a time",
            ours_seconds=ours_seconds,
            baseline_seconds=baseline_seconds,
            target=">= 3x" if quick else ">= 10x",
            target_ratio=3.0 if quick else 10.0,
            notes=(
                f"simulate_cohort end to end: {public_seconds:.1f} s; max |BOLD difference| between the two "
                f"on 4 subjects {difference:.2e} % signal change"
            ),
        )
    ]


if __name__ == "__main__":
    print(machine_description())
    for result in run(quick="--quick" in sys.argv):
        print(result.line())
        print("   ", result.notes)
