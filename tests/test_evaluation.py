"""Evaluation: metrics against scikit-learn/scipy, the k-shot sampler (SPEC B15), FC baselines, the
zero-/k-shot protocol with a fake tuner, the ``fmrilm evaluate`` command and the local ``evaluate`` metric."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Array2D, Dataset, Features, Sequence, Value
from lm_fixtures import tiny_causal_lm, tiny_tokenizer
from scipy.special import softmax
from scipy.stats import pearsonr
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

from fmrilm.evaluation import (
    KShotSampler,
    MetricWarning,
    add_evaluate_command,
    classification_metrics,
    evaluate_task,
    fc_features,
    fc_logistic_baseline,
    label_metrics,
    majority_baseline,
    regression_metrics,
    results_table,
    task_prompt,
)
from fmrilm.tasks import get_task

# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_classes", [2, 3, 5])
def test_classification_metrics_equal_scikit_learn(n_classes):
    rng = np.random.default_rng(n_classes)
    labels = rng.integers(0, n_classes, 200)
    probabilities = softmax(rng.normal(size=(200, n_classes)) + 0.8 * np.eye(n_classes)[labels], axis=1)
    got = classification_metrics(labels, probabilities)
    predicted = probabilities.argmax(axis=1)
    assert got["n"] == 200
    assert got["accuracy"] == pytest.approx(accuracy_score(labels, predicted))
    assert got["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, predicted))
    assert got["macro_f1"] == pytest.approx(f1_score(labels, predicted, average="macro"))
    expected_auc = (
        roc_auc_score(labels, probabilities[:, 1])
        if n_classes == 2
        else roc_auc_score(labels, probabilities, multi_class="ovr", average="macro")
    )
    assert got["auroc"] == pytest.approx(expected_auc)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_auroc_handles_ties_and_label_metrics_equal_scikit_learn():
    labels = np.array([0, 0, 1, 1, 1, 0])
    probabilities = np.array([[0.5, 0.5], [0.8, 0.2], [0.5, 0.5], [0.1, 0.9], [0.5, 0.5], [0.5, 0.5]])
    assert classification_metrics(labels, probabilities)["auroc"] == pytest.approx(
        roc_auc_score(labels, probabilities[:, 1])
    )
    predicted = np.array([0, 2, 1, 1, 0, 2])
    got = label_metrics(labels, predicted, n_classes=3)
    assert got["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, predicted))
    assert got["macro_f1"] == pytest.approx(f1_score(labels, predicted, average="macro"))
    assert "auroc" not in got


def test_regression_metrics_equal_scipy_and_degenerate_inputs_give_nan_with_a_warning():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=50)
    predicted = truth + rng.normal(scale=0.5, size=50)
    got = regression_metrics(truth, predicted)
    assert got["mae"] == pytest.approx(np.mean(np.abs(truth - predicted)))
    assert got["pearson_r"] == pytest.approx(pearsonr(truth, predicted)[0])
    with pytest.warns(MetricWarning, match="Pearson r is undefined"):
        assert np.isnan(regression_metrics(truth, np.full(50, 3.0))["pearson_r"])
    with pytest.warns(MetricWarning, match="single class"):
        one_class = classification_metrics([1, 1, 1], [[0.2, 0.8], [0.6, 0.4], [0.5, 0.5]])
    assert np.isnan(one_class["auroc"]) and one_class["accuracy"] == pytest.approx(1 / 3)  # a tie is class 0


@pytest.mark.parametrize(
    ("labels", "probabilities", "message"),
    [
        ([0, 1], [[0.5, 0.6], [0.5, 0.5]], "sum to 1"),
        ([0, 1], [0.3, 0.7], r"\(n_examples, n_classes\)"),
        ([0, 1, 1], [[0.5, 0.5], [0.5, 0.5]], r"\(3, C >= 2\)"),
        ([0, 2], [[0.5, 0.5], [0.5, 0.5]], r"expected \[0, 2\)"),
        ([0, np.nan], [[0.5, 0.5], [0.5, 0.5]], "integer class ids"),
        ([0, 1], [[np.nan, 1.0], [0.5, 0.5]], "finite"),
        ([], [], "non-empty"),
    ],
)
def test_bad_classification_inputs_are_refused(labels, probabilities, message):
    with pytest.raises(ValueError, match=message):
        classification_metrics(labels, probabilities)


def test_bad_regression_inputs_are_refused():
    with pytest.raises(ValueError, match="same length"):
        regression_metrics([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="finite"):
        regression_metrics([1.0, np.nan], [1.0, 2.0])
    with pytest.raises(ValueError, match="one per example"):
        label_metrics([0, 1], [0], n_classes=2)


# --------------------------------------------------------------------------------------------------
# k-shot sampler
# --------------------------------------------------------------------------------------------------


def test_sampler_draws_exactly_k_per_class_without_replacement_and_seeds_differ():
    labels = np.array([0] * 10 + [1] * 7 + [2] * 5 + [-1] * 4)
    draws = []
    for seed in range(4):
        rows = KShotSampler(labels, 4, seed).sample()
        assert rows.dtype == np.int64 and len(set(rows.tolist())) == 12
        assert np.bincount(labels[rows], minlength=3).tolist() == [4, 4, 4]
        assert np.array_equal(rows, KShotSampler(labels, 4, seed).sample())  # reproducible
        draws.append(tuple(sorted(rows.tolist())))
    assert len(set(draws)) == 4
    assert KShotSampler(labels, 0, 0).sample().size == 0
    float_labels = np.array([0.0, 1.0, np.nan, 1.0, 0.0])
    assert sorted(float_labels[KShotSampler(float_labels, 2, 1).sample()].tolist()) == [0, 0, 1, 1]


def test_sampler_refuses_too_few_examples_naming_the_class():
    labels = np.array([0] * 10 + [1] * 3)
    with pytest.raises(ValueError, match=r"class 1: 3"):
        KShotSampler(labels, 4, 0)
    with pytest.raises(ValueError, match=r"class 2: 0"):
        KShotSampler(labels, 2, 0, classes=[0, 1, 2])
    with pytest.raises(ValueError, match="k"):
        KShotSampler(labels, -1, 0)
    with pytest.raises(ValueError, match="integer class ids"):
        KShotSampler([0.5, 1.0], 1, 0)


# --------------------------------------------------------------------------------------------------
# Baselines
# --------------------------------------------------------------------------------------------------


def test_fc_features_equal_fisher_z_of_numpy_correlation_and_refuse_bad_scans():
    rng = np.random.default_rng(0)
    scans = [rng.normal(size=(40, 5)), rng.normal(size=(25, 5))]
    features = fc_features(scans)
    upper = np.triu_indices(5, k=1)
    expected = np.stack([np.arctanh(np.corrcoef(scan.T)[upper]) for scan in scans])
    np.testing.assert_allclose(features, expected, atol=1e-10)
    constant = scans[0].copy()
    constant[:, 2] = 4.0
    with pytest.warns(MetricWarning, match="constant ROI"):
        assert np.all(np.isfinite(fc_features([constant])))
    with pytest.raises(ValueError, match="rois = 5"):
        fc_features([scans[0], rng.normal(size=(40, 6))])
    with pytest.raises(ValueError, match="NaN"):
        fc_features([np.full((10, 5), np.nan)])
    with pytest.raises(ValueError, match="single scan"):
        fc_features(scans[0])
    with pytest.raises(ValueError, match="empty"):
        fc_features([])


def test_fc_logistic_and_majority_baselines():
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1, 2], 20)
    features = rng.normal(size=(60, 4)) + 3 * np.eye(3, 4)[labels]
    probabilities = fc_logistic_baseline(features[::2], labels[::2], features[1::2], n_classes=3)
    assert probabilities.shape == (30, 3) and np.allclose(probabilities.sum(axis=1), 1)
    assert classification_metrics(labels[1::2], probabilities)["balanced_accuracy"] > 0.8
    # A class missing from training gets probability 0; one class only gets every vote.
    missing = fc_logistic_baseline(features[labels < 2], labels[labels < 2], features, n_classes=3)
    assert np.all(missing[:, 2] == 0)
    assert np.all(fc_logistic_baseline(features[:3], [1, 1, 1], features, n_classes=3)[:, 1] == 1)

    targets = features @ np.array([1.0, -2.0, 0.5, 0.0])
    predicted = fc_logistic_baseline(features[::2], targets[::2], features[1::2], kind="regression")
    assert regression_metrics(targets[1::2], predicted)["pearson_r"] > 0.95

    majority = majority_baseline([0, 1, 1, 2], 5, n_classes=3)
    np.testing.assert_allclose(majority, np.tile([0.25, 0.5, 0.25], (5, 1)))
    scores = classification_metrics([0, 1, 2, 1, 0], majority)
    assert scores["auroc"] == pytest.approx(0.5) and scores["balanced_accuracy"] == pytest.approx(1 / 3)
    assert majority_baseline([1.0, 3.0], 2, kind="regression").tolist() == [2.0, 2.0]
    with pytest.raises(ValueError, match="same number of features"):
        fc_logistic_baseline(features, labels, features[:, :2])


# --------------------------------------------------------------------------------------------------
# The protocol, on a tiny model and a small labelled cohort
# --------------------------------------------------------------------------------------------------

ROIS = 4


@pytest.fixture(scope="module")
def model_and_processor():
    from fmrilm import FmriFeatureExtractor, FmriTokenizerConfig
    from fmrilm.modeling_fmri_tokenizer import FmriTokenizerModel
    from fmrilm.modeling_fmrilm import FmriLMForCausalLM
    from fmrilm.processing_fmrilm import FmriLMProcessor

    config = FmriTokenizerConfig.preset("tiny", n_rois=ROIS, max_timepoints=16, patch_size=8, codebook_dim=16)
    torch.manual_seed(0)
    processor = FmriLMProcessor(
        feature_extractor=FmriFeatureExtractor(n_rois=ROIS, max_timepoints=16, patch_size=8),
        tokenizer=tiny_tokenizer(),
        fmri_tokenizer=FmriTokenizerModel(config).eval(),
    )
    model = FmriLMForCausalLM.from_text_model(tiny_causal_lm("llama", len(processor.tokenizer)), processor).eval()
    return model, processor


def cohort(n: int, seed: int, n_tokens: int) -> Dataset:
    """Scans whose ROIs share a common signal when coupling_class = 1 (FC tells the classes apart)."""
    rng = np.random.default_rng(seed)
    coupling = np.arange(n) % 2
    bold = []
    for label in coupling:
        common = rng.normal(size=(30, 1))
        bold.append((rng.normal(size=(30, ROIS)) + 2.0 * label * common).astype(np.float32))
    features = Features({
        "subject_id": Value("string"), "coupling_class": Value("int64"), "noise_level": Value("float64"),
        "bold": Array2D(shape=(None, ROIS), dtype="float32"), "fmri_codes": Sequence(Value("int16")),
    })  # fmt: skip
    return Dataset.from_dict(
        {
            "subject_id": [f"s{seed}-{i}" for i in range(n)],
            "coupling_class": coupling.tolist(),
            "noise_level": np.round(rng.uniform(0.0, 0.05, n), 3).tolist(),
            "bold": bold,
            "fmri_codes": rng.integers(0, 64, (n, n_tokens)).astype(np.int16).tolist(),
        },
        features=features,
    )


class FakeTuner:
    """Returns the model unchanged and records what it was given."""

    def __init__(self):
        self.calls = []

    def __call__(self, model, processor, task, split, examples, *, seed):
        self.calls.append((task.name, [e.rows for e in examples], [e.label for e in examples], seed))
        return model


def test_zero_and_k_shot_protocol_with_baselines(model_and_processor):
    from fmrilm.scoring_fmrilm import score_candidates

    model, processor = model_and_processor
    train, test = cohort(16, 0, processor.num_fmri_tokens), cohort(10, 1, processor.num_fmri_tokens)
    tuner = FakeTuner()
    results = evaluate_task(model, processor, "coupling_class", train=train, test=test, shots=(0, 2, 4), seeds=(0, 1, 2),
                            tune=tuner, batch_size=4)  # fmt: skip

    # The tuner got exactly k examples per class, from the training split, a different draw per seed.
    assert [(len(rows), seed) for _, rows, _, seed in tuner.calls] == [(4, 0), (4, 1), (4, 2), (8, 0), (8, 1), (8, 2)]
    for _, rows, labels, _ in tuner.calls:
        assert np.bincount(labels).tolist() == [len(rows) // 2] * 2
        assert all(train[r[0]]["coupling_class"] == label for r, label in zip(rows, labels))
    assert len({tuple(sorted(rows)) for _, rows, _, _ in tuner.calls[:3]}) == 3

    # Zero-shot equals scoring the candidates by hand.
    prompt, rendered = task_prompt(processor, get_task("coupling_class"))
    codes = np.array(test["fmri_codes"])
    scores = score_candidates(model, processor, [prompt] * 10, codes, ["low", "high"], add_special_tokens=not rendered)
    expected = classification_metrics(test["coupling_class"], softmax(scores.astype(np.float64), axis=1))
    by_name = {(row["name"], row["shots"]): row for row in results["rows"]}
    zero = by_name[("fMRI-LM", 0)]
    assert zero["seeds"] == [] and zero["trained_on"] is None
    for name in ("accuracy", "balanced_accuracy", "auroc", "macro_f1"):
        assert zero["metrics"][name]["mean"] == pytest.approx(expected[name], abs=1e-6)
    # The fake tuner leaves the model as it is: every seed gives the zero-shot numbers, SD 0.
    four = by_name[("fMRI-LM", 4)]["metrics"]["auroc"]
    assert four["values"] == pytest.approx([expected["auroc"]] * 3, abs=1e-6) and four["sd"] == pytest.approx(0)

    # Baselines in the same run: k-shot FC fits per seed, the full-train fit separates the classes.
    assert len(by_name[("FC + logistic", 2)]["metrics"]["auroc"]["values"]) == 3
    assert by_name[("FC + logistic", "full")]["metrics"]["balanced_accuracy"]["mean"] >= 0.8
    assert by_name[("majority", "full")]["metrics"]["auroc"]["mean"] == pytest.approx(0.5)
    assert results["splits"] == {"scored": "test", "k_shot_and_baselines_from": "train"}
    json.dumps(results, allow_nan=False)  # JSON-serialisable, NaN written as null
    table = results_table(results)
    assert "| FC + logistic | full |" in table and "± 0.000" in table and "test split" in table


def test_regression_generation_and_errors(model_and_processor):
    model, processor = model_and_processor
    train, test = cohort(8, 2, processor.num_fmri_tokens), cohort(6, 3, processor.num_fmri_tokens)
    results = evaluate_task(model, processor, "noise_level", train=train, test=test, shots=(0,), batch_size=6)
    model_row = results["rows"][0]
    assert results["kind"] == "regression" and set(model_row["metrics"]) == {"mae", "pearson_r"}
    assert 0 <= model_row["metrics"]["mae"]["mean"] <= 0.05  # the expectation lies inside the grid
    assert results["rows"][-1]["name"] == "majority" and results["rows"][-1]["metrics"]["pearson_r"]["mean"] is None

    generated = evaluate_task(model, processor, "coupling_class", train=train, test=test, shots=(0,),
                              method="generate", baselines=False)  # fmt: skip
    assert len(generated["rows"]) == 1 and "auroc" not in generated["rows"][0]["metrics"]
    assert "| balanced_accuracy | macro_f1 |" in results_table(generated)  # no AUROC column from hard answers

    with pytest.raises(ValueError, match="needs tune"):
        evaluate_task(model, processor, "coupling_class", train=train, test=test, shots=(0, 2))
    with pytest.raises(ValueError, match="method"):
        evaluate_task(model, processor, "coupling_class", train=train, test=test, shots=(0,), method="sample")
    with pytest.raises(ValueError, match=r"class 1: 4"):
        evaluate_task(model, processor, "coupling_class", train=train, test=test, shots=(5,), tune=FakeTuner())
    with pytest.raises(ValueError, match="fmrilm tokenize"):
        evaluate_task(model, processor, "coupling_class", train=train, test=test.remove_columns("fmri_codes"),
                      shots=(0,))  # fmt: skip


def test_evaluate_command_writes_json_and_prints_the_table(model_and_processor, tmp_path, capsys):
    model, processor = model_and_processor
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    data = tmp_path / "dataset" / "data"
    data.mkdir(parents=True)
    cohort(8, 4, processor.num_fmri_tokens).to_parquet(str(data / "train-00000-of-00001.parquet"))
    cohort(6, 5, processor.num_fmri_tokens).to_parquet(str(data / "test-00000-of-00001.parquet"))

    parser = argparse.ArgumentParser(prog="fmrilm")
    add_evaluate_command(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "results" / "coupling.json"
    args = parser.parse_args([
        "evaluate", "--model", str(tmp_path / "model"), "--dataset", str(tmp_path / "dataset"),
        "--task", "coupling_class", "--shots", "0", "--out", str(out),
    ])  # fmt: skip
    assert args.handler(args) == 0
    written = json.loads(out.read_text())
    assert written["task"] == "coupling_class" and written["splits"]["scored"] == "test" and written["n_test"] == 6
    assert "| fMRI-LM | 0 |" in capsys.readouterr().out

    missing = parser.parse_args(["evaluate", "--model", str(tmp_path / "nope"), "--dataset", str(tmp_path / "dataset"),
                                 "--task", "coupling_class", "--shots", "0", "--out", str(out)])  # fmt: skip
    with pytest.raises(FileNotFoundError, match="--model"):
        missing.handler(missing)
    wrong_split = parser.parse_args(["evaluate", "--model", str(tmp_path / "model"), "--dataset",
                                     str(tmp_path / "dataset"), "--task", "coupling_class", "--split", "validation",
                                     "--shots", "0", "--out", str(out)])  # fmt: skip
    with pytest.raises(ValueError, match="no 'validation' split"):
        wrong_split.handler(wrong_split)


# --------------------------------------------------------------------------------------------------
# The local `evaluate` metric module
# --------------------------------------------------------------------------------------------------

METRIC_PATH = Path(__file__).resolve().parents[1] / "fmrilm" / "metrics" / "fmri_task_metrics" / "fmri_task_metrics.py"


def test_local_evaluate_metric_loads_offline_and_matches_the_library():
    import evaluate

    metric = evaluate.load(str(METRIC_PATH))
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 40)
    probabilities = softmax(rng.normal(size=(40, 3)), axis=1)
    got = metric.compute(references=labels.tolist(), predictions=probabilities.tolist())
    expected = classification_metrics(labels, probabilities)
    assert got == pytest.approx({k: v for k, v in expected.items() if k != "n"})

    regression = evaluate.load(str(METRIC_PATH), "regression")
    truth, predicted = rng.normal(size=20), rng.normal(size=20)
    assert regression.compute(references=truth.tolist(), predictions=predicted.tolist()) == pytest.approx(
        {k: v for k, v in regression_metrics(truth, predicted).items() if k != "n"}
    )
    with pytest.raises(ValueError, match="sum to 1"):
        metric.compute(references=[0, 1], predictions=[[0.9, 0.9], [0.5, 0.5]])


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated")  # raised inside PEFT
def test_k_shot_with_the_stage3_tuner_scores_a_tuned_copy_and_leaves_the_model_unchanged(model_and_processor):
    import functools

    from fmrilm.training.stage3 import tune_on_examples

    model, processor = model_and_processor
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    train, test = cohort(8, 6, processor.num_fmri_tokens), cohort(4, 7, processor.num_fmri_tokens)
    tune = functools.partial(tune_on_examples, steps=2, learning_rate=1e-2, batch_size=2)
    results = evaluate_task(model, processor, "coupling_class", train=train, test=test, shots=(0, 2), seeds=(0,),
                            tune=tune, baselines=False)  # fmt: skip
    zero, tuned = (row["metrics"]["auroc"]["mean"] for row in results["rows"])
    assert zero is not None and tuned is not None and results["rows"][1]["seeds"] == [0]
    assert all(torch.equal(tensor, before[name]) for name, tensor in model.state_dict().items())
