"""Phenotype tables (BIDS ``participants.tsv``) turned into label columns.

The table's subject column is ``participant_id`` (BIDS: ``sub-<label>``; the ``sub-`` prefix is
removed) or ``subject_id``. A ``tr`` column, if present, gives each subject's repetition time in
seconds and is not a label. Every other column becomes a label column whose type follows the
table: integers -> int64, decimals -> float64, true/false -> bool, anything else -> string; ``n/a``
and empty cells are missing values (null).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from datasets import Value

from .schema import check_label_names, label_features_from_frame

__all__ = ["ParticipantsTable", "participants_from_frame", "read_participants_tsv"]

#: Columns that identify the subject (first match wins).
SUBJECT_COLUMNS = ("subject_id", "participant_id")
#: Column giving a subject's repetition time in seconds.
TR_COLUMN = "tr"


@dataclass(frozen=True)
class ParticipantsTable:
    """Labels (and optional TRs) by subject id.

    Attributes:
        labels: subject id -> {label column -> value or None}.
        features: label column -> ``datasets.Value``, in table order.
        tr: subject id -> repetition time in seconds, for subjects whose ``tr`` cell is filled.
        source: where the table came from (for messages and the card).
    """

    labels: dict[str, dict[str, object]]
    features: dict[str, Value]
    tr: dict[str, float] = field(default_factory=dict)
    source: str = "participants.tsv"

    def labels_for(self, subject_id: str) -> dict[str, object]:
        """The subject's labels; all None when the table has no row for it."""
        return self.labels.get(subject_id, dict.fromkeys(self.features))

    def missing_subjects(self, subject_ids) -> list[str]:
        """Those of ``subject_ids`` that have no row in the table, sorted."""
        return sorted(set(subject_ids) - set(self.labels))


def read_participants_tsv(path: str | Path) -> ParticipantsTable:
    """Read a BIDS ``participants.tsv`` (tab-separated, ``n/a`` = missing).

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable table, no subject column, duplicate subjects, a non-numeric ``tr``
            column, or a label column named like a core column.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Participants table {path} does not exist; pass the path of a tab-separated participants.tsv."
        )
    try:
        frame = pd.read_csv(
            path,
            sep="\t",
            dtype={name: str for name in SUBJECT_COLUMNS},
            na_values=["n/a", "N/A"],
            keep_default_na=True,
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ValueError(f"Could not read {path} as a tab-separated table: {error}.") from error
    return participants_from_frame(frame, source=str(path))


def participants_from_frame(frame, source: str = "participants table") -> ParticipantsTable:
    """Build a :class:`ParticipantsTable` from a DataFrame with a ``subject_id`` or ``participant_id`` column."""
    import pandas as pd

    id_column = next((name for name in SUBJECT_COLUMNS if name in frame.columns), None)
    if id_column is None:
        raise ValueError(
            f"{source} has no subject column: expected one of {list(SUBJECT_COLUMNS)} (BIDS uses participant_id "
            f"with values like 'sub-01'); its columns are {list(frame.columns)}."
        )
    ids = frame[id_column].astype("string").str.strip()
    if ids.isna().any() or (ids == "").any():
        raise ValueError(f"{source} has rows without a subject id in column {id_column!r}; fill or delete them.")
    ids = ids.str.removeprefix("sub-")
    duplicated = sorted(set(ids[ids.duplicated()]))
    if duplicated:
        raise ValueError(f"{source} lists subject(s) {duplicated} more than once; keep one row per subject.")

    values = frame.drop(columns=[name for name in SUBJECT_COLUMNS if name in frame.columns]).convert_dtypes()
    tr: dict[str, float] = {}
    if TR_COLUMN in values.columns:
        column = values.pop(TR_COLUMN)
        if not pd.api.types.is_numeric_dtype(column):
            raise ValueError(
                f"The {TR_COLUMN!r} column of {source} must hold repetition times in seconds, got {column.dtype} values."
            )
        tr = {subject: float(value) for subject, value in zip(ids, column.tolist()) if value is not pd.NA}
    values.columns = [str(name) for name in values.columns]
    check_label_names(values.columns)
    features = label_features_from_frame(values)
    columns = {name: [None if value is pd.NA else value for value in values[name].tolist()] for name in values.columns}
    labels = {subject: {name: columns[name][row] for name in columns} for row, subject in enumerate(ids)}
    return ParticipantsTable(labels=labels, features=features, tr=tr, source=source)
