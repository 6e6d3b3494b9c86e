"""``fmrilm dataset info``: what is in a dataset, per split, without reading the ``bold`` arrays.

Works on any folder (or Hub repository) that ``datasets.load_dataset`` can read and that has the
fmri-lm schema: the scalar columns are streamed as Arrow tables (no cache is written) and every
statistic is computed with vectorised pandas/pyarrow operations.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .common import SPLIT_ORDER
from .schema import CORE_COLUMNS

__all__ = [
    "CATEGORICAL_MAX_DISTINCT",
    "SplitSummary",
    "format_summary",
    "label_kinds",
    "summarize_dataset",
    "summarize_split",
]

#: An integer label with at most this many distinct values is reported as classes, not as a number.
CATEGORICAL_MAX_DISTINCT = 10
#: Columns that ``info`` needs (everything but ``bold``).
REQUIRED_COLUMNS = tuple(name for name in CORE_COLUMNS if name != "bold")


@dataclass
class SplitSummary:
    """Statistics of one split.

    Attributes:
        scans, subjects: row count and distinct (dataset, subject_id) pairs.
        datasets: dataset name -> scans.
        atlases: atlas -> scans.
        n_rois: distinct ROI counts -> scans.
        trs: TR in seconds -> scans.
        length_trs, length_seconds: (min, median, max) scan length in time points and seconds.
        synthetic: "yes", "no" or "mixed (k of n)".
        categorical_labels: label -> {class (str) -> count}, plus "missing" when any.
        numeric_labels: label -> {"mean", "sd", "min", "max", "missing"} (None where undefined).
    """

    scans: int
    subjects: int
    datasets: dict[str, int]
    atlases: dict[str, int]
    n_rois: dict[int, int]
    trs: dict[float, int]
    length_trs: tuple[float, float, float]
    length_seconds: tuple[float, float, float]
    synthetic: str
    categorical_labels: dict[str, dict[str, int]] = field(default_factory=dict)
    numeric_labels: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {
            "scans": self.scans,
            "subjects": self.subjects,
            "datasets": self.datasets,
            "atlases": self.atlases,
            "n_rois": {str(k): v for k, v in self.n_rois.items()},
            "trs": {f"{k:g}": v for k, v in self.trs.items()},
            "length_trs": dict(zip(("min", "median", "max"), self.length_trs)),
            "length_seconds": dict(zip(("min", "median", "max"), self.length_seconds)),
            "synthetic": self.synthetic,
            "categorical_labels": self.categorical_labels,
            "numeric_labels": self.numeric_labels,
        }


def _counts(series) -> dict:
    counts = series.value_counts(dropna=True).sort_index()
    return {key.item() if hasattr(key, "item") else key: int(value) for key, value in counts.items()}


def label_kinds(label_features: Mapping[str, object], frames: Sequence) -> dict[str, str]:
    """label -> "categorical" or "numeric", decided once for the whole dataset (all splits).

    Decimal (float) labels are numeric; strings, booleans and class labels are categorical;
    integer labels are categorical when they take at most :data:`CATEGORICAL_MAX_DISTINCT`
    distinct values over all splits, else numeric.
    """
    import pandas as pd

    kinds = {}
    for name, feature in label_features.items():
        dtype = str(getattr(feature, "dtype", ""))
        if dtype.startswith("float"):
            kinds[name] = "numeric"
        elif dtype.startswith(("int", "uint")):
            distinct = pd.concat([frame[name] for frame in frames]).dropna().nunique()
            kinds[name] = "categorical" if distinct <= CATEGORICAL_MAX_DISTINCT else "numeric"
        else:
            kinds[name] = "categorical"
    return kinds


def _summarize_labels(frame, kinds: Mapping[str, str]) -> tuple[dict, dict]:
    categorical, numeric = {}, {}
    for name, kind in kinds.items():
        column = frame[name]
        missing = int(column.isna().sum())
        present = column.dropna()
        if kind == "categorical":
            keys = present.astype("int64") if present.dtype.kind == "f" else present
            classes = {str(key): count for key, count in _counts(keys).items()}
            if missing:
                classes["missing"] = missing
            categorical[name] = classes
        else:
            values = present.to_numpy(dtype=float)
            numeric[name] = {
                "mean": float(values.mean()) if values.size else None,
                "sd": float(values.std(ddof=1)) if values.size > 1 else None,
                "min": float(values.min()) if values.size else None,
                "max": float(values.max()) if values.size else None,
                "missing": missing,
            }
    return categorical, numeric


def summarize_split(frame, label_kinds: Mapping[str, str]) -> SplitSummary:
    """Statistics of one split given its scalar columns as a DataFrame and the kind of each label."""
    lengths = frame["n_timepoints"].to_numpy(dtype=float)
    seconds = lengths * np.round(frame["tr"].to_numpy(dtype=float), 6)  # tr is float32: 0.72 -> 0.7200000286
    n_synthetic = int(frame["synthetic"].astype(bool).sum())
    synthetic = (
        "yes" if n_synthetic == len(frame) else "no" if n_synthetic == 0 else f"mixed ({n_synthetic} of {len(frame)})"
    )
    categorical, numeric = _summarize_labels(frame, label_kinds)
    return SplitSummary(
        scans=len(frame),
        subjects=int(frame[["dataset", "subject_id"]].drop_duplicates().shape[0]),
        datasets=_counts(frame["dataset"]),
        atlases=_counts(frame["atlas"]),
        n_rois=_counts(frame["n_rois"]),
        trs={round(float(k), 6): v for k, v in _counts(frame["tr"]).items()},
        length_trs=(float(lengths.min()), float(np.median(lengths)), float(lengths.max())),
        length_seconds=(float(seconds.min()), float(np.median(seconds)), float(seconds.max())),
        synthetic=synthetic,
        categorical_labels=categorical,
        numeric_labels=numeric,
    )


def summarize_dataset(path: str | Path) -> dict[str, SplitSummary]:
    """Per-split statistics of the dataset at ``path`` (a folder, or a Hub repository id).

    Raises:
        FileNotFoundError: ``path`` is a missing local path.
        ValueError: the data lack a schema column or have no rows.
    """
    import pyarrow as pa
    from datasets import load_dataset

    text = str(path)
    looks_local = Path(text).exists() or text.startswith((".", "/", "~")) or text.count("/") != 1
    if looks_local and not Path(text).expanduser().is_dir():
        raise FileNotFoundError(
            f"Dataset folder {text} does not exist; pass a folder written by `fmrilm dataset build` or a Hub repo id."
        )
    source = str(Path(text).expanduser()) if looks_local else text
    # Streaming writes no Arrow cache, only lock files: keep even those out of the user's cache.
    with tempfile.TemporaryDirectory(prefix="fmrilm-info-") as cache:
        streamed = load_dataset(source, streaming=True, cache_dir=cache)
        features = next(iter(streamed.values())).features
        if features is None:
            raise ValueError(f"{text} declares no features, so it cannot be checked against the fmri-lm schema.")
        missing = [column for column in CORE_COLUMNS if column not in features]
        if missing:
            raise ValueError(
                f"{text} lacks the schema column(s) {missing}; `fmrilm dataset info` needs the fmri-lm dataset schema "
                f"({', '.join(CORE_COLUMNS)})."
            )
        label_features = {k: v for k, v in features.items() if k not in CORE_COLUMNS}
        # Read again with only the scalar columns, so that the Parquet reader never decodes `bold`.
        scalars = load_dataset(source, streaming=True, cache_dir=cache, columns=[*REQUIRED_COLUMNS, *label_features])
        ordered = [name for name in SPLIT_ORDER if name in scalars] + [
            name for name in scalars if name not in SPLIT_ORDER
        ]
        frames = {}
        for name in ordered:
            batches = list(scalars[name].with_format("arrow").iter(batch_size=10_000))
            if batches:
                frames[name] = pa.concat_tables(batches).to_pandas()
    if not frames:
        raise ValueError(f"{text} has no rows in any split.")
    kinds = label_kinds(label_features, list(frames.values()))
    return {name: summarize_split(frame, kinds) for name, frame in frames.items()}


def _format_mapping(mapping: Mapping, unit: str = "") -> str:
    return ", ".join(
        f"{key:g}{unit} ({count})" if isinstance(key, float) else f"{key} ({count})" for key, count in mapping.items()
    )


def format_summary(summaries: Mapping[str, SplitSummary], title: str | None = None) -> str:
    """Human-readable text of :func:`summarize_dataset`'s result."""
    lines = [title] if title else []
    for name, summary in summaries.items():
        low, mid, high = summary.length_trs
        low_s, mid_s, high_s = summary.length_seconds
        lines += [
            f"split {name}: {summary.scans} scans, {summary.subjects} subjects, synthetic: {summary.synthetic}",
            f"  datasets: {_format_mapping(summary.datasets)}",
            f"  atlas: {_format_mapping(summary.atlases)}; ROIs: {_format_mapping(summary.n_rois)}",
            f"  TR (s): {_format_mapping(summary.trs)}",
            f"  length: min {low:g} / median {mid:g} / max {high:g} TRs; min {low_s:.1f} / median {mid_s:.1f} / max {high_s:.1f} s",
        ]
        if summary.categorical_labels or summary.numeric_labels:
            lines.append("  labels:")
        for label, classes in summary.categorical_labels.items():
            lines.append(f"    {label}: " + ", ".join(f"{key} {count}" for key, count in classes.items()))
        for label, stats in summary.numeric_labels.items():
            if stats["mean"] is None:
                lines.append(f"    {label}: all {stats['missing']} missing")
                continue
            sd = f", SD {stats['sd']:.4g}" if stats["sd"] is not None else ""
            lines.append(
                f"    {label}: mean {stats['mean']:.4g}{sd}, range {stats['min']:.4g} to {stats['max']:.4g}"
                + (f", missing {stats['missing']}" if stats["missing"] else "")
            )
    return "\n".join(lines)
