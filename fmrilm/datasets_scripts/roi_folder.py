"""Builder ``roi_folder``: a folder of ROI time-series files, one scan per file.

Supported files: .npy, .csv/.tsv (with or without one header line), .mat (MATLAB v5 or v7.3),
.h5/.hdf5 (see :mod:`.roi_files`). Each file holds a (time, rois) matrix, or (rois, time) with
``transpose=True``. Subject and session come from regular expressions applied to the file's path
relative to the folder (default: BIDS-like ``sub-<label>`` and ``ses-<label>``; without a
``sub-`` match the file stem is the subject). An optional ``participants.tsv`` supplies label
columns and may supply a ``tr`` column.

The repetition time of a file comes from its own metadata: a JSON sidecar with the same stem
(``RepetitionTime``) and the ``tr`` column of ``participants.tsv``. If both exist and disagree, the
file is skipped with both values in the reason (no guessing). The ``tr`` argument is the fallback
for files with neither.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .common import BuildResult, Provenance, collect_scans
from .participants import ParticipantsTable, read_participants_tsv
from .roi_files import SUPPORTED_SUFFIXES, probe_roi_matrix_shape, read_roi_matrix
from .schema import ScanRecord, ScanSkipped

__all__ = ["DEFAULT_SESSION_PATTERN", "DEFAULT_SUBJECT_PATTERN", "build_roi_folder", "infer_n_rois"]

DEFAULT_SUBJECT_PATTERN = r"sub-([A-Za-z0-9]+)"
DEFAULT_SESSION_PATTERN = r"ses-([A-Za-z0-9]+)"


def _compile(pattern: str, option: str) -> re.Pattern:
    try:
        compiled = re.compile(pattern)
    except re.error as error:
        raise ValueError(f"{option} {pattern!r} is not a valid regular expression: {error}.") from error
    if compiled.groups > 1:
        raise ValueError(
            f"{option} {pattern!r} has {compiled.groups} capture groups; use at most one, around the label "
            r"(e.g. 'sub-([A-Za-z0-9]+)'); non-capturing groups are written (?:...)."
        )
    return compiled


def _match_label(pattern: re.Pattern, text: str) -> str | None:
    match = pattern.search(text)
    if match is None:
        return None
    return match.group(1) if pattern.groups else match.group(0)


def infer_n_rois(shapes: list[tuple[int, ...]]) -> int:
    """The number of ROIs shared by most (time, rois) shapes (their most common second axis).

    Raises:
        ValueError: no 2-D shape, or a tie between several ROI counts.
    """
    counts = Counter(shape[1] for shape in shapes if len(shape) == 2)
    if not counts:
        raise ValueError("no file holds a readable 2-D matrix, so the number of ROIs cannot be inferred")
    ranked = counts.most_common()
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        tied = {n: c for n, c in ranked if c == ranked[0][1]}
        raise ValueError(f"the files disagree on the number of ROI columns ({tied} files each); pass n_rois (--n-rois)")
    return int(ranked[0][0])


@dataclass
class _FolderContext:
    root: Path
    dataset: str
    transpose: bool
    n_rois: int
    tr: float | None
    subject_pattern: re.Pattern
    subject_pattern_given: bool
    session_pattern: re.Pattern
    participants: ParticipantsTable | None
    mat_variable: str | None
    h5_key: str | None
    tr_sources: Counter

    def load(self, path: Path) -> ScanRecord:
        relative = path.relative_to(self.root).as_posix()
        subject = _match_label(self.subject_pattern, relative)
        if subject is None:
            if self.subject_pattern_given:
                raise ScanSkipped(
                    f"subject pattern {self.subject_pattern.pattern!r} does not match the path {relative!r}"
                )
            subject = path.stem
        session = _match_label(self.session_pattern, relative) or ""

        matrix = read_roi_matrix(path, mat_variable=self.mat_variable, h5_key=self.h5_key)
        if matrix.ndim != 2:
            raise ScanSkipped(f"expected a 2-D matrix, got {matrix.ndim}-D with shape {matrix.shape}")
        if self.transpose:
            matrix = matrix.T
            if matrix.shape[0] == self.n_rois and matrix.shape[1] != self.n_rois:
                raise ScanSkipped(f"stored (time, rois) although --transpose was given (stored shape {matrix.T.shape})")
        tr, source = self._repetition_time(path, subject)
        self.tr_sources[source] += 1
        labels = self.participants.labels_for(subject) if self.participants is not None else {}
        return ScanRecord(subject, session, self.dataset, relative, matrix, tr, labels)

    def _repetition_time(self, path: Path, subject: str) -> tuple[float, str]:
        candidates: list[tuple[str, float]] = []
        sidecar = path.with_suffix(".json")
        if sidecar.is_file():
            try:
                metadata = json.loads(sidecar.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
                raise ScanSkipped(f"unreadable JSON sidecar {sidecar.name} ({error})") from error
            if isinstance(metadata, dict) and "RepetitionTime" in metadata:
                value = metadata["RepetitionTime"]
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ScanSkipped(f"RepetitionTime in {sidecar.name} is {value!r}, not a number of seconds")
                candidates.append((f"JSON sidecar ({sidecar.name})", float(value)))
        if self.participants is not None and subject in self.participants.tr:
            candidates.append(("participants.tsv tr column", self.participants.tr[subject]))
        if not candidates and self.tr is not None:
            candidates.append(("--tr", self.tr))
        if not candidates:
            raise ScanSkipped(
                "no repetition time: pass --tr, add a 'tr' column to participants.tsv, or put a JSON sidecar "
                f"{sidecar.name} with RepetitionTime (seconds) next to the file"
            )
        first_source, first_value = candidates[0]
        for source, value in candidates[1:]:
            if not math.isclose(value, first_value, rel_tol=1e-6):
                raise ScanSkipped(
                    f"conflicting repetition times: {first_value} s from {first_source} but {value} s from {source}"
                )
        kind = "JSON sidecar" if first_source.startswith("JSON") else first_source
        return first_value, kind


def _list_files(root: Path, glob: str, exclude: set[Path]) -> tuple[list[Path], list[Path]]:
    """(data files, ignored files) under ``root`` matching ``glob``; hidden paths and JSON sidecars are neither."""
    data, ignored = [], []
    for path in sorted(root.glob(glob)):
        relative = path.relative_to(root)
        if not path.is_file() or any(part.startswith(".") for part in relative.parts) or path in exclude:
            continue
        suffix = path.suffix.lower()
        if suffix in SUPPORTED_SUFFIXES:
            data.append(path)
        elif suffix != ".json":
            ignored.append(path)
    return data, ignored


def build_roi_folder(
    root: str | Path,
    *,
    atlas: str,
    tr: float | None = None,
    transpose: bool = False,
    n_rois: int | None = None,
    subject_pattern: str | None = None,
    session_pattern: str | None = None,
    dataset_name: str | None = None,
    participants: str | Path | None = None,
    mat_variable: str | None = None,
    h5_key: str | None = None,
    glob: str = "**/*",
    license: str = "other",
    seed: int = 0,
    min_timepoints: int = 1,
    cache_dir: str | Path | None = None,
    keep_in_memory: bool = False,
    progress: bool | None = None,
) -> BuildResult:
    """Build a dataset from a folder of ROI time-series files.

    Args:
        root: the folder (searched recursively with ``glob``).
        atlas: parcellation name written into every row (e.g. ``"AAL2"``, ``"Schaefer400"``).
        tr: repetition time in seconds for files without a sidecar or participants ``tr``.
        transpose: the files store (rois, time); transpose them.
        n_rois: number of ROIs; default: the most common ROI count among the files.
        subject_pattern: regex with at most one group, searched in the relative path; default
            ``sub-([A-Za-z0-9]+)``, falling back to the file stem. A given pattern that does not
            match skips the file.
        session_pattern: regex for the session label; default ``ses-([A-Za-z0-9]+)``; no match = "".
        dataset_name: the ``dataset`` column; default: the folder's name.
        participants: phenotype table; default ``root/participants.tsv`` if it exists.
        mat_variable, h5_key: which matrix to read from .mat / HDF5 files (default: the only 2-D one).
        glob: which files to consider, relative to ``root``.
        license: Hub licence identifier of the data (``"other"`` when unknown).
        seed, min_timepoints, cache_dir, keep_in_memory, progress: see :func:`collect_scans`.

    Raises:
        FileNotFoundError / NotADirectoryError: ``root`` or ``participants`` is missing.
        ValueError: bad options, no data files, or ROI count that cannot be inferred.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"ROI folder {root} does not exist.")
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a folder; pass the folder that holds the ROI time-series files.")
    if tr is not None and (
        isinstance(tr, bool) or not isinstance(tr, (int, float)) or not math.isfinite(tr) or tr <= 0
    ):
        raise ValueError(f"tr must be a positive number of seconds, got {tr!r}.")
    if n_rois is not None and (isinstance(n_rois, bool) or not isinstance(n_rois, int) or n_rois < 1):
        raise ValueError(f"n_rois must be a positive integer, got {n_rois!r}.")
    subject_regex = _compile(subject_pattern or DEFAULT_SUBJECT_PATTERN, "subject pattern")
    session_regex = _compile(session_pattern or DEFAULT_SESSION_PATTERN, "session pattern")

    participants_path = Path(participants) if participants is not None else root / "participants.tsv"
    table = (
        read_participants_tsv(participants_path) if participants is not None or participants_path.is_file() else None
    )
    files, ignored = _list_files(root, glob, {participants_path})
    if not files:
        raise ValueError(
            f"No ROI time-series files ({', '.join(SUPPORTED_SUFFIXES)}) under {root} matching {glob!r}"
            + (f"; found only {[p.name for p in ignored[:10]]}." if ignored else ".")
        )

    n_rois_inferred = n_rois is None
    if n_rois is None:
        shapes = []
        for path in files:
            try:
                shape = probe_roi_matrix_shape(path, mat_variable=mat_variable, h5_key=h5_key)
            except ScanSkipped:
                continue  # the loading pass records the reason
            shapes.append(tuple(reversed(shape)) if transpose else shape)
        try:
            n_rois = infer_n_rois(shapes)
        except ValueError as error:
            raise ValueError(f"Cannot infer the number of ROIs of the files under {root}: {error}.") from error

    context = _FolderContext(
        root=root,
        dataset=dataset_name or root.resolve().name,
        transpose=transpose,
        n_rois=n_rois,
        tr=float(tr) if tr is not None else None,
        subject_pattern=subject_regex,
        subject_pattern_given=subject_pattern is not None,
        session_pattern=session_regex,
        participants=table,
        mat_variable=mat_variable,
        h5_key=h5_key,
        tr_sources=Counter(),
    )
    collected = collect_scans(
        files,
        context.load,
        n_rois=n_rois,
        atlas=atlas,
        synthetic=False,
        label_features=table.features if table is not None else None,
        describe=lambda path: path.relative_to(root).as_posix(),
        seed=seed,
        min_timepoints=min_timepoints,
        cache_dir=cache_dir,
        keep_in_memory=keep_in_memory,
        progress=progress,
        progress_desc="roi_folder",
    )

    notes = []
    if ignored:
        shown = ", ".join(p.relative_to(root).as_posix() for p in ignored[:10]) + (" ..." if len(ignored) > 10 else "")
        notes.append(f"{len(ignored)} file(s) of unsupported type were not read: {shown}.")
    if table is not None:
        subjects = {
            s
            for split in collected.dataset.values()
            for s in np.unique(split.data.table["subject_id"].to_numpy(zero_copy_only=False))
        }
        missing = table.missing_subjects(subjects)
        if missing:
            notes.append(
                f"{len(missing)} subject(s) have no row in {table.source}; their labels are null: {missing[:20]}."
            )
    provenance = Provenance(
        builder="roi_folder",
        source=f"ROI time series read from {len(files)} file(s) under {root.resolve()}"
        + (f", labels from {table.source}" if table is not None else "")
        + ".",
        license=license,
        terms="The terms of use of the source data apply; this card records the licence identifier given at build time "
        f"({license!r}). Check them before sharing the dataset.",
        atlas=atlas,
        tr_source="; ".join(f"{source}: {count} scan(s)" for source, count in sorted(context.tr_sources.items()))
        or "none",
        synthetic=False,
        options={
            "root": str(root),
            "atlas": atlas,
            "tr": tr,
            "transpose": transpose,
            "n_rois": n_rois,
            "n_rois_inferred": n_rois_inferred,
            "subject_pattern": subject_regex.pattern,
            "session_pattern": session_regex.pattern,
            "dataset_name": context.dataset,
            "participants": str(participants_path) if table is not None else None,
            "mat_variable": mat_variable,
            "h5_key": h5_key,
            "glob": glob,
            "min_timepoints": min_timepoints,
        },
        notes=notes,
    )
    return BuildResult.from_collected(collected, provenance, seed)
