"""Zero-shot and k-shot transfer on the simulated cohort, against the FC + logistic baseline.

The whole pipeline at CPU scale, from nothing but this package (SYNTHETIC data, an LM made from
scratch; no pretrained weights anywhere):

1. a simulated cohort (Stuart-Landau network on the real AAL2 connectome + Balloon-Windkessel
   hemodynamics; labels ``coupling_class`` and ``gain_class``, balanced 2 x 2), subject-grouped
   train / validation / test splits, described (connectivity + graph families, reference = train);
2. stage 1: the tiny tokenizer (``stage1_tiny.yaml``) trained on the train split, then every scan
   pre-tokenized;
3. a byte-level BPE tokenizer trained on the descriptor texts and the task prompts, and a randomly
   initialised Llama-style LM (``fmrilm.text_lm``, preset ``mini``);
4. stage 2 (``stage2_tiny.yaml``): F2T + F2F + T2T on the train split;
5. stage 3 (``stage3_tiny.yaml``): a LoRA adapter instruction-tuned on ``coupling_class`` ONLY,
   selected on validation;
6. evaluation on the TEST subjects of ``gain_class``, a label the model was never tuned on: zero-shot
   (candidate log-likelihoods, no tuning), k-shot (a fresh adapter tuned on k examples per class of
   the train split, 3 seeds, k in 2, 4, 8, 16), against FC + logistic regression on the same k
   examples (and on the whole train split) and the majority class; plus ``coupling_class`` on test
   (the tuned task) for reference.

    python bench/quality_stage3.py [--quick] [--workdir DIR]

Every step is a :mod:`fmrilm.workflow` step (the ones ``fmrilm demo`` runs): with ``--workdir`` a rerun
skips the steps already complete there (settings unchanged) and redoes the rest.

Prints the evaluation tables (markdown) and returns QualityResult rows (balanced accuracy and AUROC)
for bench/run_all.py. Every number is a real output of this run; the data are synthetic.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import QualityResult, machine_description

FAMILIES = ("connectivity", "graph")
#: (tuned in stage 3, evaluated zero-/k-shot without ever being tuned on)
TASKS = ("coupling_class", "gain_class")
#: Cohen's d between the simulated classes (as in `fmrilm demo`; the simulator's default is 1)
CLASS_EFFECT = 3.0
SHOTS = (0, 2, 4, 8, 16)
SEEDS = (0, 1, 2)
#: (subjects, scan duration in s, stage-1 steps, stage-2 steps, stage-3 steps, k-shot tuning steps)
FULL = (240, 300, 300, 300, 150, 30)
QUICK = (40, 200, 20, 20, 10, 4)


def run(quick: bool = False, workdir: str | Path | None = None) -> list[QualityResult]:
    """The chain of :mod:`fmrilm.workflow` steps; with ``workdir`` a rerun skips the steps already complete there."""
    from fmrilm.evaluation import results_table
    from fmrilm.workflow import (
        SCRATCH_CORPUS,
        Workflow,
        build_scratch_lm,
        build_simulated_dataset,
        describe_cohort,
        evaluate_transfer,
        pretokenize_cohort,
        scratch_lm_texts,
        train_stage1,
        train_stage2,
        train_stage3,
    )  # fmt: skip

    n_subjects, duration_s, steps1, steps2, steps3, tune_steps = QUICK if quick else FULL
    shots, seeds = ((0, 2), (0,)) if quick else (SHOTS, SEEDS)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(workdir) if workdir is not None else Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        step = Workflow(root).run
        raw = step("cohort", root / "raw", {"n_subjects": n_subjects, "duration_s": duration_s, "class_effect": CLASS_EFFECT},
                   lambda: build_simulated_dataset(root / "raw", n_subjects, duration_s, class_effect=CLASS_EFFECT,
                                                           progress=False),
                   marker="build_info.json")  # fmt: skip
        described = step("describe", root / "described", {"families": FAMILIES},
                         lambda: describe_cohort(raw.path, root / "described", root / "reference", families=FAMILIES),
                         marker="build_info.json", inputs=[raw])  # fmt: skip
        stage1 = step("stage1", root / "stage1", {"steps": steps1},
                      lambda: train_stage1(root / "stage1", [described.path], steps1, evaluations=0, progress=False),
                      marker="training_summary.json", inputs=[described])  # fmt: skip
        processor_dir = root / "stage1" / "processor"
        tokenized = step("tokenize", root / "tokenized", {},
                         lambda: pretokenize_cohort(described.path, processor_dir, root / "tokenized"),
                         marker="build_info.json", inputs=[described, stage1])  # fmt: skip
        lm = step("lm", root / "scratch_lm", {"preset": "mini", "vocab_size": 1500, "corpus": True},
                  lambda: build_scratch_lm(root / "scratch_lm", scratch_lm_texts([tokenized.path], TASKS), preset="mini",
                                           vocab_size=1500),
                  marker="config.json", inputs=[tokenized])  # fmt: skip
        stage2 = step("stage2", root / "stage2", {"steps": steps2, "t2t": SCRATCH_CORPUS},
                      lambda: train_stage2(root / "stage2", [tokenized.path], processor_dir, lm.path, steps2,
                                           t2t_corpus=lm.path / SCRATCH_CORPUS, progress=False),
                      marker="training_summary.json", inputs=[tokenized, lm])  # fmt: skip
        stage3 = step("stage3", root / "stage3", {"steps": steps3},
                      lambda: train_stage3(root / "stage3", [tokenized.path], stage2.path / "model", steps3,
                                           tasks=(TASKS[0],), progress=False),
                      marker="training_summary.json", inputs=[tokenized, stage2])  # fmt: skip
        step("evaluation", root / "evaluation", {"shots": shots, "seeds": seeds, "tune_steps": tune_steps},
             lambda: evaluate_transfer(root / "evaluation", tokenized.path, stage3.path / "model", transfer_task=TASKS[1],
                                       tuned_task=TASKS[0], shots=shots, seeds=seeds, tune_steps=tune_steps,
                                       progress=False),
             marker="results.json", inputs=[tokenized, stage3])  # fmt: skip
        results = json.loads((root / "evaluation" / "results.json").read_text(encoding="utf-8"))
    minutes = (time.perf_counter() - started) / 60
    budget = (
        f"{n_subjects} simulated subjects x {duration_s:.0f} s; steps: stage 1 {steps1}, stage 2 {steps2}, stage 3 "
        f"{steps3}, k-shot {tune_steps}; {minutes:.1f} min on this CPU"
    )
    for table in results.values():
        print(results_table(table), end="\n\n")
    rows = []
    for task, table in results.items():
        for row in table["rows"]:
            for metric in ("balanced_accuracy", "auroc"):
                entry = row["metrics"].get(metric)
                if entry is None or entry["mean"] is None:
                    continue
                label = "tuned on this task" if task == "coupling_class" else "never tuned on it"
                rows.append(QualityResult(
                    benchmark="stage3 transfer", case=f"{task} ({label}), {row['name']}, k={row['shots']}",
                    metric=f"{metric} (mean of {max(len(row['seeds']), 1)})", value=entry["mean"], budget=budget,
                ))  # fmt: skip
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workdir", default=None, help="keep every stage's outputs here (default: a temp folder)")
    args = parser.parse_args()
    print(machine_description())
    for result in run(quick=args.quick, workdir=args.workdir):
        print(result.line())
