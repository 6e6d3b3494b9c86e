"""Honest zero-/few-shot evaluation of fMRI-LM on a task, with baselines in the same run.

- Metrics: :func:`classification_metrics` (accuracy, balanced accuracy, AUROC from probabilities,
  macro-F1), :func:`label_metrics` (the same without AUROC, for hard answers from generation) and
  :func:`regression_metrics` (MAE, Pearson r). A degenerate input (one class in ``y_true``, constant
  predictions) gives NaN with a :class:`MetricWarning`, never a crash or a silent 0.
- :class:`KShotSampler`: exactly ``k`` examples of every class, without replacement (SPEC B15).
- Baselines: :func:`fc_features` (upper triangle of the Fisher-z functional connectivity of each scan),
  :func:`fc_logistic_baseline` (StandardScaler + LogisticRegression, or Ridge for regression) and
  :func:`majority_baseline` (training class frequencies / training mean).
- :func:`evaluate_task`: k = 0 scores the model as it is; k > 0 draws k examples per class from the
  training split for each seed, tunes a copy with ``tune(...)`` and scores it. The model is scored
  by the log-likelihood of every candidate answer (probabilities, so AUROC is real: SPEC B13) or by
  constrained greedy generation. FC + logistic is fitted on the same k-shot examples and on the
  whole training split; the majority baseline on the whole training split.

Splits (SPEC 6.2): the examples of the k-shot rows and every baseline fit come from the split passed
as ``train``; every reported number is on the split passed as ``test`` (its name is recorded in the
results). Nothing here selects anything on the scored split: pick checkpoints and settings on the
validation split, then score the test split once.

``fmrilm evaluate`` (:func:`add_evaluate_command`) runs it on a saved model and a dataset folder.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = [
    "KShotSampler",
    "MetricWarning",
    "add_evaluate_command",
    "classification_metrics",
    "evaluate_task",
    "fc_features",
    "fc_logistic_baseline",
    "label_metrics",
    "majority_baseline",
    "regression_metrics",
    "results_table",
    "task_prompt",
]

CLASSIFICATION_METRIC_NAMES = ("accuracy", "balanced_accuracy", "auroc", "macro_f1")
REGRESSION_METRIC_NAMES = ("mae", "pearson_r")
MODEL_NAME = "fMRI-LM"
FULL = "full"


class MetricWarning(UserWarning):
    """A metric is undefined for these inputs (reported as NaN)."""


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------


def _class_labels(y_true: Any, n_classes: int | None, name: str = "y_true") -> np.ndarray:
    """``y_true`` as int64 (n,) class ids in [0, n_classes)."""
    labels = np.asarray(y_true)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of class ids, got shape {labels.shape}.")
    if labels.dtype.kind not in "iuf" or not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
        raise ValueError(f"{name} must hold integer class ids (no NaN, no missing labels), got {labels[:5]!r}...")
    labels = labels.astype(np.int64)
    if labels.min() < 0 or (n_classes is not None and labels.max() >= n_classes):
        raise ValueError(
            f"{name} holds class ids in [{labels.min()}, {labels.max()}], expected [0, {n_classes}) "
            "(one column of probabilities per class)."
        )
    return labels


def _checked_probabilities(probabilities: Any, n: int) -> np.ndarray:
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != n or probs.shape[1] < 2:
        raise ValueError(
            f"probabilities must be shaped (n_examples, n_classes) = ({n}, C >= 2), got {probs.shape}; for a binary "
            "task pass both columns [P(class 0), P(class 1)]."
        )
    if not np.all(np.isfinite(probs)) or probs.min() < 0:
        raise ValueError("probabilities must be finite and non-negative (softmax of the candidate log-likelihoods).")
    if not np.allclose(probs.sum(axis=1), 1.0, atol=1e-3):
        raise ValueError(
            "Each row of probabilities must sum to 1 (got row sums in "
            f"[{probs.sum(axis=1).min():.4f}, {probs.sum(axis=1).max():.4f}]); apply a softmax over the candidates."
        )
    return probs


def _binary_auroc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the boolean ``positive`` (Mann-Whitney U, ties averaged)."""
    from scipy.stats import rankdata

    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _label_scores(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> dict[str, float]:
    """Accuracy, balanced accuracy (mean recall over classes present in y_true) and macro-F1 (over
    the classes present in y_true or the predictions, as scikit-learn does)."""
    confusion = np.bincount(labels * n_classes + predicted, minlength=n_classes * n_classes).reshape(
        n_classes, n_classes
    )
    true_counts = confusion.sum(axis=1)
    predicted_counts = confusion.sum(axis=0)
    hits = np.diag(confusion)
    present = true_counts > 0
    seen = present | (predicted_counts > 0)
    f1 = 2 * hits[seen] / (true_counts[seen] + predicted_counts[seen])
    return {
        "accuracy": float(hits.sum() / labels.size),
        "balanced_accuracy": float(np.mean(hits[present] / true_counts[present])),
        "macro_f1": float(np.mean(f1)),
    }


def classification_metrics(y_true: Any, probabilities: Any) -> dict[str, float]:
    """Metrics of class probabilities (n, C) against class ids (n,).

    Returns ``accuracy`` and ``balanced_accuracy`` and ``macro_f1`` of the argmax, and ``auroc``:
    binary, the AUROC of P(class 1); more classes, the one-vs-rest AUROC averaged over the classes
    present in ``y_true``. With fewer than two classes in ``y_true`` the AUROC is NaN (with a
    :class:`MetricWarning`). Also ``n`` (examples).
    """
    labels = _class_labels(y_true, None)
    probs = _checked_probabilities(probabilities, labels.size)
    n_classes = probs.shape[1]
    labels = _class_labels(labels, n_classes)
    results = _label_scores(labels, probs.argmax(axis=1), n_classes)
    present = np.unique(labels)
    if present.size < 2:
        warnings.warn(
            f"AUROC is undefined with a single class ({int(present[0])}) in y_true; reported as NaN.",
            MetricWarning,
            stacklevel=2,
        )
        auroc = math.nan
    elif n_classes == 2:
        auroc = _binary_auroc(labels == 1, probs[:, 1])
    else:
        auroc = float(np.mean([_binary_auroc(labels == c, probs[:, c]) for c in present]))
    return {**results, "auroc": auroc, "n": int(labels.size)}


def label_metrics(y_true: Any, y_pred: Any, n_classes: int) -> dict[str, float]:
    """Accuracy, balanced accuracy and macro-F1 of hard predictions (no AUROC: it needs scores, SPEC B13)."""
    labels = _class_labels(y_true, n_classes)
    predicted = _class_labels(y_pred, n_classes, "y_pred")
    if predicted.size != labels.size:
        raise ValueError(f"y_true has {labels.size} labels but y_pred has {predicted.size}; pass one per example.")
    return {**_label_scores(labels, predicted, n_classes), "n": int(labels.size)}


def regression_metrics(y_true: Any, y_pred: Any) -> dict[str, float]:
    """``mae`` (mean absolute error) and ``pearson_r`` of predictions against true values, and ``n``.

    Pearson r is NaN (with a :class:`MetricWarning`) when either side is constant or n < 2.
    """
    truth = np.asarray(y_true, dtype=np.float64)
    predicted = np.asarray(y_pred, dtype=np.float64)
    if truth.ndim != 1 or truth.size == 0 or predicted.shape != truth.shape:
        raise ValueError(
            f"y_true and y_pred must be non-empty 1-D arrays of the same length, got {truth.shape} and {predicted.shape}."
        )
    if not (np.all(np.isfinite(truth)) and np.all(np.isfinite(predicted))):
        raise ValueError("y_true and y_pred must be finite (drop examples with a missing label before scoring).")
    mae = float(np.mean(np.abs(truth - predicted)))
    centred_truth, centred_pred = truth - truth.mean(), predicted - predicted.mean()
    denominator = math.sqrt(float(centred_truth @ centred_truth) * float(centred_pred @ centred_pred))
    scale = max(np.abs(truth).max(), np.abs(predicted).max(), 1e-300)
    if truth.size < 2 or denominator <= (1e-12 * scale) ** 2 * truth.size:
        warnings.warn(
            "Pearson r is undefined for constant values or fewer than 2 examples; reported as NaN.",
            MetricWarning,
            stacklevel=2,
        )
        pearson = math.nan
    else:
        pearson = float(np.clip(centred_truth @ centred_pred / denominator, -1.0, 1.0))
    return {"mae": mae, "pearson_r": pearson, "n": int(truth.size)}


# --------------------------------------------------------------------------------------------------
# k-shot sampling
# --------------------------------------------------------------------------------------------------


class KShotSampler:
    """Draw exactly ``k`` examples of every class, without replacement (SPEC B15).

    Args:
        labels: (n,) class id of each candidate example; negative values or NaN mark examples without
            a label (never drawn).
        k: examples per class (0 gives an empty draw).
        seed: the draw is a function of the seed: the same seed gives the same rows, other seeds
            other rows.
        classes: the classes that must be drawn (default: those present in ``labels``); a listed
            class absent from ``labels`` is an error like a class with too few examples.

    Raises:
        ValueError: ``k`` negative, or a class with fewer than ``k`` examples (named, with its count).
    """

    def __init__(self, labels: Any, k: int, seed: int = 0, *, classes: Sequence[int] | None = None) -> None:
        values = np.asarray(labels, dtype=np.float64)
        if values.ndim != 1:
            raise ValueError(f"labels must be a 1-D array of class ids, got shape {values.shape}.")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise ValueError(f"k (examples per class) must be an integer >= 0, got {k!r}.")
        valid = np.isfinite(values) & (values >= 0)
        if np.any(values[valid] != np.round(values[valid])):
            raise ValueError("labels must be integer class ids (negative or NaN for a missing label).")
        self.labels = np.where(valid, values, -1).astype(np.int64)
        self.k = int(k)
        self.seed = int(seed)
        self.classes = (
            np.unique(self.labels[valid]) if classes is None else np.asarray(sorted(set(int(c) for c in classes)))
        )
        counts = np.array([int(np.sum(self.labels == c)) for c in self.classes], dtype=np.int64)
        short = self.classes[counts < self.k]
        if self.k and short.size:
            listing = ", ".join(f"class {int(c)}: {int(counts[self.classes == c][0])}" for c in short)
            raise ValueError(
                f"{self.k}-shot sampling needs {self.k} examples of every class, but the split has only {listing} "
                f"(counts of all classes: {dict(zip(self.classes.tolist(), counts.tolist()))}); lower k or use a "
                "larger training split."
            )

    def sample(self) -> np.ndarray:
        """int64 row indices: ``k`` per class, shuffled (classes interleaved), deterministic for the seed."""
        if self.k == 0:
            return np.zeros(0, dtype=np.int64)
        rng = np.random.default_rng(self.seed)
        chosen = [rng.choice(np.flatnonzero(self.labels == c), size=self.k, replace=False) for c in self.classes]
        return rng.permutation(np.concatenate(chosen)).astype(np.int64)


def _draw_examples(task: Any, labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Classification: k per class (:class:`KShotSampler`); regression: k examples drawn uniformly."""
    if task.kind == "classification":
        return KShotSampler(labels, k, seed, classes=range(len(task.candidates()))).sample()
    if k > labels.size:
        raise ValueError(f"{k}-shot regression needs {k} training examples, the split has {labels.size}.")
    return np.random.default_rng(seed).choice(labels.size, size=k, replace=False).astype(np.int64)


# --------------------------------------------------------------------------------------------------
# Baselines
# --------------------------------------------------------------------------------------------------


def fc_features(bold_list: Sequence[Any]) -> np.ndarray:
    """Fisher-z functional connectivity of each scan, upper triangle: float64 (n_scans, R (R - 1) / 2).

    Args:
        bold_list: scans shaped (time, rois), all with the same number of ROIs (lengths may differ).

    A constant ROI has no defined correlation: its edges are set to 0 (no coupling) with a
    :class:`MetricWarning` naming how many scans had one.
    """
    if isinstance(bold_list, np.ndarray) and bold_list.ndim == 2:
        raise ValueError("bold_list must be a list of scans (time, rois), not a single scan; wrap it in a list.")
    if len(bold_list) == 0:
        raise ValueError("bold_list is empty: pass at least one scan shaped (time, rois).")
    scans = [np.asarray(scan, dtype=np.float64) for scan in bold_list]
    rois = scans[0].shape[-1] if scans[0].ndim == 2 else None
    for index, scan in enumerate(scans):
        if scan.ndim != 2 or scan.shape[1] != rois or scan.shape[0] < 3:
            raise ValueError(
                f"Scan {index} is shaped {scan.shape}; every scan must be (time >= 3, rois = {rois}) (time first)."
            )
        if not np.all(np.isfinite(scan)):
            raise ValueError(f"Scan {index} holds NaN or infinite values; clean or drop it before the FC baseline.")
    upper = np.triu_indices(rois, k=1)
    features = np.empty((len(scans), upper[0].size))
    scans_with_constant = 0
    for index, scan in enumerate(scans):  # one (R, R) matrix per scan, vectorised over ROIs
        centred = scan - scan.mean(axis=0)
        norms = np.sqrt((centred**2).sum(axis=0))
        constant = norms <= 1e-12 * max(1.0, float(np.abs(scan).max()))
        scans_with_constant += int(constant.any())
        unit = centred / np.where(constant, 1.0, norms)
        correlation = np.clip(unit.T @ unit, -1 + 1e-7, 1 - 1e-7)
        features[index] = np.arctanh(correlation[upper])
    if scans_with_constant:
        warnings.warn(
            f"{scans_with_constant} scan(s) have a constant ROI; its connectivity is set to 0.",
            MetricWarning,
            stacklevel=2,
        )
    return features


def example_features(scan_features: np.ndarray, rows: Sequence[Sequence[int]]) -> np.ndarray:
    """Features of examples from per-row FC features: a scan's own for one-scan questions; for a pair,
    the absolute difference of its two scans' FC (small when both come from one subject)."""
    first = scan_features[[r[0] for r in rows]]
    if len(rows[0]) == 1:
        return first
    return np.abs(first - scan_features[[r[1] for r in rows]])


def fc_logistic_baseline(
    train_features: Any,
    train_labels: Any,
    test_features: Any,
    *,
    kind: Literal["classification", "regression"] = "classification",
    n_classes: int | None = None,
    regularization: float = 1.0,
    seed: int = 0,
) -> np.ndarray:
    """StandardScaler + LogisticRegression (classification) or Ridge (regression), fitted on train.

    Returns:
        classification: float64 (n_test, n_classes) probabilities, one column per class id (a class
        absent from the training labels gets probability 0); regression: float64 (n_test,) predictions.
        ``regularization`` is LogisticRegression's ``C`` or Ridge's ``alpha``.
    """
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_train, x_test = np.asarray(train_features, np.float64), np.asarray(test_features, np.float64)
    if x_train.ndim != 2 or x_test.ndim != 2 or x_train.shape[1] != x_test.shape[1] or not len(x_train):
        raise ValueError(
            f"train_features and test_features must be (n, features) with the same number of features, got "
            f"{x_train.shape} and {x_test.shape}."
        )
    if kind == "regression":
        y = np.asarray(train_labels, np.float64)
        if y.shape != (len(x_train),) or not np.all(np.isfinite(y)):
            raise ValueError(f"train_labels must be {len(x_train)} finite values, got shape {y.shape}.")
        model = make_pipeline(StandardScaler(), Ridge(alpha=regularization))
        return model.fit(x_train, y).predict(x_test)
    if kind != "classification":
        raise ValueError(f"kind must be 'classification' or 'regression', got {kind!r}.")
    y = _class_labels(train_labels, n_classes, "train_labels")
    if y.size != len(x_train):
        raise ValueError(f"train_labels has {y.size} labels for {len(x_train)} training rows.")
    n_classes = int(n_classes if n_classes is not None else y.max() + 1)
    probabilities = np.zeros((len(x_test), n_classes))
    seen = np.unique(y)
    if seen.size == 1:  # one class to learn from: it gets every vote
        probabilities[:, seen[0]] = 1.0
        return probabilities
    model = make_pipeline(StandardScaler(), LogisticRegression(C=regularization, max_iter=2000, random_state=seed))
    model.fit(x_train, y)
    probabilities[:, model.classes_] = model.predict_proba(x_test)
    return probabilities


def majority_baseline(
    train_labels: Any,
    n_test: int,
    *,
    kind: Literal["classification", "regression"] = "classification",
    n_classes: int | None = None,
) -> np.ndarray:
    """Predictions that ignore the scan: the training class frequencies (so argmax = the majority class,
    AUROC = 0.5) as (n_test, n_classes) probabilities, or the training mean (n_test,) for regression."""
    if kind == "regression":
        values = np.asarray(train_labels, np.float64)
        if values.ndim != 1 or values.size == 0 or not np.all(np.isfinite(values)):
            raise ValueError("train_labels must be a non-empty 1-D array of finite values.")
        return np.full(n_test, values.mean())
    labels = _class_labels(train_labels, n_classes, "train_labels")
    frequencies = np.bincount(labels, minlength=n_classes or 0) / labels.size
    return np.tile(frequencies, (n_test, 1))


# --------------------------------------------------------------------------------------------------
# Prompts and model scoring
# --------------------------------------------------------------------------------------------------


def task_prompt(processor: Any, task: Any, prompt_options: Mapping[str, Any] | None = None) -> tuple[str, bool]:
    """(prompt with one ``<fmri>`` per scan, whether a chat template rendered it) for the base question.

    The stage-3 trainer's :func:`fmrilm.training.stage3.instruction_prompt` when it exists (so that
    evaluation reads prompts exactly as training wrote them); otherwise :func:`fmrilm.tasks.build_prompt`
    rendered as the user turn of the tokenizer's chat template when it has one.
    """
    options = dict(prompt_options or {})
    question = task.question_text(None)
    if importlib.util.find_spec("fmrilm.training.stage3") is not None:
        from .training.stage3 import instruction_prompt

        return instruction_prompt(processor, question, task.n_scans, **options)
    from .tasks import build_prompt

    text = build_prompt(question, task.n_scans, options.pop("context", None))
    if getattr(processor, "chat_template", None) is None or options.get("chat_template") == "never":
        return text, False
    system = options.get("system")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    rendered = processor.apply_chat_template(
        messages, add_generation_prompt=True, **dict(options.get("chat_template_kwargs") or {})
    )
    return rendered, True


def _softmax(scores: np.ndarray) -> np.ndarray:
    from scipy.special import softmax

    return softmax(scores.astype(np.float64), axis=1)


def _score_model(
    model: Any,
    processor: Any,
    task: Any,
    examples: Sequence[Any],
    codes: np.ndarray,
    *,
    prompt: str,
    add_special_tokens: bool,
    method: str,
    readout: str,
    batch_size: int,
    normalize: str,
) -> dict[str, float]:
    """The model's metrics on ``examples`` (their rows index ``codes``)."""
    from .scoring_fmrilm import constrained_generate, score_candidates

    example_codes = codes[[row for example in examples for row in example.rows]]
    prompts = [prompt] * len(examples)
    truth = np.array([example.label for example in examples])
    candidates = list(task.candidates())
    values = np.asarray(task.candidate_values(), dtype=np.float64)
    if method == "likelihood":
        scores = score_candidates(
            model, processor, prompts, example_codes, candidates, add_special_tokens=add_special_tokens,
            batch_size=batch_size, normalize=normalize,
        )  # fmt: skip
        probabilities = _softmax(scores)
        if task.kind == "classification":
            return classification_metrics(truth, probabilities)
        predicted = probabilities @ values if readout == "expectation" else values[probabilities.argmax(axis=1)]
        return regression_metrics(truth, predicted)
    answers = constrained_generate(
        model, processor, prompts, example_codes, candidates, add_special_tokens=add_special_tokens,
        batch_size=batch_size,
    )  # fmt: skip
    chosen = np.array([candidates.index(answer) for answer in answers])
    if task.kind == "classification":
        return label_metrics(truth, values[chosen].astype(np.int64), len(candidates))
    return regression_metrics(truth, values[chosen])


def _baseline_metrics(task: Any, predictions: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    if task.kind == "classification":
        return classification_metrics(truth, predictions)
    with warnings.catch_warnings():  # a constant prediction (majority) has no Pearson r: NaN is the answer
        warnings.simplefilter("ignore", MetricWarning)
        return regression_metrics(truth, predictions)


def _summary(runs: list[dict[str, float]]) -> dict[str, dict[str, Any]]:
    """Per metric: mean and SD (ddof=1; 0 for a single run) over runs, and the values (None for NaN)."""
    summary: dict[str, dict[str, Any]] = {}
    for name in runs[0]:
        if name == "n":
            continue
        values = np.array([run[name] for run in runs], dtype=np.float64)
        finite = values[np.isfinite(values)]
        mean = float(finite.mean()) if finite.size == values.size else math.nan
        sd = (
            float(finite.std(ddof=1))
            if finite.size == values.size and values.size > 1
            else (0.0 if values.size == 1 else math.nan)
        )
        summary[name] = {
            "mean": _json_number(mean),
            "sd": _json_number(sd),
            "values": [_json_number(v) for v in values],
        }
    return summary


def _json_number(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _split_arrays(split: Any, column: str, rows: Sequence[int]) -> list[np.ndarray]:
    if column not in split.column_names:
        raise ValueError(
            f"The split has no {column!r} column (columns: {split.column_names}); "
            + ("pre-tokenize it with `fmrilm tokenize`." if column == "fmri_codes" else "pass the BOLD column name.")
        )
    subset = split.select(list(rows)).with_format("numpy", columns=[column])
    return [np.asarray(value) for value in subset[column]]


def _codes_matrix(split: Any, column: str) -> np.ndarray:
    """(n_rows, N) int64 codes of a pre-tokenized split."""
    arrays = _split_arrays(split, column, range(len(split)))
    return np.stack(arrays).astype(np.int64)


def evaluate_task(
    model: Any,
    processor: Any,
    task: Any,
    *,
    train: Any,
    test: Any,
    shots: Sequence[int] = (0, 2, 4, 8, 16),
    seeds: Sequence[int] = (0, 1, 2),
    tune: Callable[..., Any] | None = None,
    method: Literal["likelihood", "generate"] = "likelihood",
    regression_readout: Literal["expectation", "argmax"] = "expectation",
    normalize: Literal["sum", "mean"] = "sum",
    batch_size: int = 8,
    prompt_options: Mapping[str, Any] | None = None,
    codes_column: str = "fmri_codes",
    bold_column: str = "bold",
    baselines: bool = True,
    split_names: tuple[str, str] = ("train", "test"),
) -> dict[str, Any]:
    """Zero-/k-shot metrics of the model on ``test``, with FC + logistic and majority baselines.

    Args:
        model: an ``FmriLMForCausalLM`` (or a PEFT model around one).
        processor: its ``FmriLMProcessor``.
        task: a :class:`fmrilm.tasks.Task` or its registered name; fitted on ``train`` here.
        train: the split the k-shot examples and the baselines' training rows come from.
        test: the split every number is reported on (pre-tokenized: ``codes_column``; ``bold_column``
            for the baselines).
        shots: k values; 0 scores the model as given, k > 0 tunes a copy per seed on k examples per class.
        seeds: seeds of the k-shot draws and tuning (k = 0 runs once: scoring is deterministic).
        tune: ``tune(model, processor, task, train, examples, seed=seed) -> tuned model`` (e.g.
            ``functools.partial(fmrilm.training.stage3.tune_on_examples, steps=..., ...)``); required
            when some k > 0. It must not modify ``model``.
        method: ``"likelihood"`` (softmax over candidate log-likelihoods: probabilities, AUROC) or
            ``"generate"`` (constrained greedy answers: no AUROC).
        regression_readout: ``"expectation"`` (probability-weighted mean of the candidate values) or
            ``"argmax"`` (the most likely candidate).
        normalize: candidate log-likelihood per ``"sum"`` or ``"mean"`` over its tokens.
        batch_size: prompts per scoring batch.
        prompt_options: passed to ``instruction_prompt`` (``chat_template``, ``system`` ...).
        codes_column, bold_column: the split's columns of fMRI codes and BOLD (time, rois).
        baselines: also fit and score FC + logistic/ridge and the majority baseline.
        split_names: names of ``train`` and ``test`` recorded in the results.

    Returns:
        A JSON-serialisable dict: ``task``, ``kind``, ``method``, ``splits``, ``prompt``, ``n_train``,
        ``n_test`` and ``rows`` (one per method and k: ``name``, ``shots`` (int or ``"full"``),
        ``seeds``, ``trained_on``, ``metrics`` {name: {mean, sd, values}}); NaN is written as None.
        :func:`results_table` renders it as markdown.
    """
    if isinstance(task, str):
        from .tasks import get_task

        task = get_task(task)
    if method not in ("likelihood", "generate"):
        raise ValueError(f"method must be 'likelihood' or 'generate', got {method!r}.")
    if regression_readout not in ("expectation", "argmax"):
        raise ValueError(f"regression_readout must be 'expectation' or 'argmax', got {regression_readout!r}.")
    shots = [int(k) for k in shots]
    if not shots or any(k < 0 for k in shots):
        raise ValueError(f"shots must be a non-empty list of integers >= 0, got {shots}.")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds must hold at least one seed.")
    if any(k > 0 for k in shots) and tune is None:
        raise ValueError(
            "k-shot evaluation (k > 0) needs tune=callable(model, processor, task, train, examples, seed=...), e.g. "
            "functools.partial(fmrilm.training.stage3.tune_on_examples, steps=20, learning_rate=1e-3, lora=None, "
            "batch_size=4, prompt_options=None)."
        )
    task = task.fit(train)
    train_examples = task.examples(train, seed=0)
    test_examples = task.examples(test, seed=0)
    train_labels = np.array([example.label for example in train_examples])
    test_truth = np.array([example.label for example in test_examples])
    prompt, rendered = task_prompt(processor, task, prompt_options)
    test_codes = _codes_matrix(test, codes_column)
    score = functools.partial(
        _score_model, processor=processor, task=task, examples=test_examples, codes=test_codes, prompt=prompt,
        add_special_tokens=not rendered, method=method, readout=regression_readout, batch_size=batch_size,
        normalize=normalize,
    )  # fmt: skip

    train_features = test_features = None
    if baselines:
        train_rows = sorted({row for example in train_examples for row in example.rows})
        test_rows = sorted({row for example in test_examples for row in example.rows})
        train_scan_features = _scan_features(train, bold_column, train_rows)
        test_scan_features = _scan_features(test, bold_column, test_rows)
        train_features = example_features(train_scan_features, [e.rows for e in train_examples])
        test_features = example_features(test_scan_features, [e.rows for e in test_examples])
    n_classes = len(task.candidates()) if task.kind == "classification" else None
    baseline_name = "FC + logistic" if task.kind == "classification" else "FC + ridge"

    rows: list[dict[str, Any]] = []
    for k in shots:
        if k == 0:
            runs, used_seeds = [score(model=model)], []
        else:
            runs, baseline_runs, used_seeds = [], [], seeds
            for seed in seeds:
                chosen = _draw_examples(task, train_labels, k, seed)
                examples = [train_examples[i] for i in chosen]
                tuned = tune(model, processor, task, train, examples, seed=seed)
                runs.append(score(model=tuned))
                del tuned
                if baselines:
                    predictions = fc_logistic_baseline(
                        train_features[chosen], train_labels[chosen], test_features, kind=task.kind,
                        n_classes=n_classes, seed=seed,
                    )  # fmt: skip
                    baseline_runs.append(_baseline_metrics(task, predictions, test_truth))
        rows.append(_row(MODEL_NAME, k, used_seeds, split_names[0] if k else None, runs))
        if k and baselines:
            rows.append(_row(baseline_name, k, seeds, split_names[0], baseline_runs))
    if baselines:
        full = fc_logistic_baseline(train_features, train_labels, test_features, kind=task.kind, n_classes=n_classes)
        rows.append(_row(baseline_name, FULL, [], split_names[0], [_baseline_metrics(task, full, test_truth)]))
        majority = majority_baseline(train_labels, len(test_examples), kind=task.kind, n_classes=n_classes)
        rows.append(_row("majority", FULL, [], split_names[0], [_baseline_metrics(task, majority, test_truth)]))
    return {
        "task": task.name,
        "kind": task.kind,
        "metrics": list(task.metrics),
        "method": method,
        "regression_readout": regression_readout if task.kind == "regression" else None,
        "candidates": list(task.candidates()) if task.kind == "classification" else len(task.candidates()),
        "splits": {"scored": split_names[1], "k_shot_and_baselines_from": split_names[0]},
        "prompt": prompt,
        "n_train": len(train_examples),
        "n_test": len(test_examples),
        "rows": rows,
    }


def _scan_features(split: Any, column: str, rows: list[int]) -> np.ndarray:
    """FC features (n_rows_of_split, E) of ``rows`` (other rows stay zero and are never read)."""
    features = fc_features(_split_arrays(split, column, rows))
    full = np.zeros((len(split), features.shape[1]))
    full[rows] = features
    return full


def _row(name: str, shots: int | str, seeds: list[int], trained_on: str | None, runs: list[dict]) -> dict[str, Any]:
    return {"name": name, "shots": shots, "seeds": list(seeds), "trained_on": trained_on, "metrics": _summary(runs)}


def results_table(results: Mapping[str, Any]) -> str:
    """Markdown table of :func:`evaluate_task` results: one row per method and k, mean +- SD over seeds."""
    names = [m for m in results["metrics"] if any(m in row["metrics"] for row in results["rows"])]
    split = results["splits"]["scored"]
    header = ["method", "shots", "seeds", *names]
    lines = [
        f"Task `{results['task']}` ({results['kind']}, {results['method']}): metrics on the {split} split "
        f"(n = {results['n_test']}); k-shot examples and baselines from {results['splits']['k_shot_and_baselines_from']} "
        f"(n = {results['n_train']}).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for row in results["rows"]:
        cells = [row["name"], str(row["shots"]), str(len(row["seeds"]) or 1)]
        for name in names:
            entry = row["metrics"].get(name)
            if entry is None or entry["mean"] is None:
                cells.append("n/a")
            elif len(entry["values"]) > 1:
                cells.append(f"{entry['mean']:.3f} ± {entry['sd']:.3f}")
            else:
                cells.append(f"{entry['mean']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def add_evaluate_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``evaluate`` to the ``fmrilm`` sub-parsers."""
    parser = subparsers.add_parser(
        "evaluate",
        help="zero-/k-shot evaluation of a model on a task, with FC + logistic and majority baselines",
        description=(
            "Score a saved fMRI-LM on one task of a pre-tokenized dataset: k = 0 as is, k > 0 after tuning a copy on "
            "k examples per class of the training split (one run per seed); prints a markdown table and writes JSON."
        ),
    )
    parser.add_argument("--model", required=True, help="folder of model.save_pretrained (+ the processor)")
    parser.add_argument("--processor", default=None, help="processor folder (default: --model)")
    parser.add_argument("--adapter", default=None, help="a PEFT adapter folder to load on top of the model")
    parser.add_argument("--dataset", required=True, help="pre-tokenized dataset folder (splits train/validation/test)")
    parser.add_argument("--task", required=True, help="registered task name (see fmrilm.tasks.list_tasks())")
    parser.add_argument("--shots", type=int, nargs="+", default=[0, 2, 4, 8, 16], help="k values (0 = zero-shot)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the k-shot runs")
    parser.add_argument("--split", default="test", help="split to report on (default test; validation to select)")
    parser.add_argument("--train-split", default="train", help="split of the k-shot examples and baselines")
    parser.add_argument("--method", choices=("likelihood", "generate"), default="likelihood")
    parser.add_argument("--readout", choices=("expectation", "argmax"), default="expectation", help="regression")
    parser.add_argument("--normalize", choices=("sum", "mean"), default="sum")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--tune-steps", type=int, default=20, help="optimizer steps of each k-shot tuning")
    parser.add_argument("--tune-learning-rate", type=float, default=1e-3)
    parser.add_argument("--tune-batch-size", type=int, default=4)
    parser.add_argument("--no-baselines", action="store_true", help="skip the FC and majority baselines")
    parser.add_argument("--out", required=True, help="JSON file for the results")
    parser.set_defaults(handler=run_evaluate_command)
    return parser


def _load_model_and_processor(model_dir: str, processor_dir: str | None, adapter_dir: str | None) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM

    from . import FmriLMProcessor  # registers the Auto classes

    for label, folder in (("--model", model_dir), ("--processor", processor_dir), ("--adapter", adapter_dir)):
        if folder is not None and not Path(folder).is_dir():
            raise FileNotFoundError(f"{label} folder {folder} does not exist.")
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir)
    processor = FmriLMProcessor.from_pretrained(processor_dir or model_dir)
    if processor.tokenizer is None:
        raise ValueError(f"The processor in {processor_dir or model_dir} has no text tokenizer; save the LM's with it.")
    return model.eval(), processor


def run_evaluate_command(args: argparse.Namespace) -> int:
    """``fmrilm evaluate``: load, evaluate, print the table, write the JSON."""
    from datasets import load_dataset

    if not Path(args.dataset).is_dir():
        raise FileNotFoundError(f"--dataset folder {args.dataset} does not exist.")
    splits = load_dataset(args.dataset)
    for name in (args.split, args.train_split):
        if name not in splits:
            raise ValueError(f"The dataset has no {name!r} split (splits: {list(splits)}).")
    model, processor = _load_model_and_processor(args.model, args.processor, args.adapter)
    tune = None
    if any(k > 0 for k in args.shots):
        from .training.stage3 import tune_on_examples

        tune = functools.partial(
            tune_on_examples, steps=args.tune_steps, learning_rate=args.tune_learning_rate, lora=None,
            batch_size=args.tune_batch_size, prompt_options=None,
        )  # fmt: skip
    results = evaluate_task(
        model, processor, args.task, train=splits[args.train_split], test=splits[args.split], shots=args.shots,
        seeds=args.seeds, tune=tune, method=args.method, regression_readout=args.readout, normalize=args.normalize,
        batch_size=args.batch_size, baselines=not args.no_baselines, split_names=(args.train_split, args.split),
    )  # fmt: skip
    results["model"] = str(args.model)
    results["adapter"] = args.adapter
    results["dataset"] = str(args.dataset)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, allow_nan=False))
    print(results_table(results))
    print(f"\nResults: {out}")
    return 0
