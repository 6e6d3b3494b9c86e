"""Builder ``fmrilm_hdf5``: one HDF5 file in the official fMRI-LM layout (SPEC.md section 1.2).

Layout::

    time_series/sample_000123        float32 (rois, time) array (450 ROIs in the official files)
    metadata/subjects                one entry per sample, aligned with the sample number
    metadata/sessions, file_ids, file_paths, dataset_names   (byte strings; optional except subjects)
    metadata/shapes                  (n_samples, 2) stored shapes (optional; checked when present)

Sample ``sample_000123`` is described by entry 123 of every metadata array. The arrays are
transposed to (time, rois). The official files are already resampled to TR 2.0 s, hence the
default ``tr=2.0``.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .common import BuildResult, Provenance, collect_scans
from .schema import ScanRecord, ScanSkipped

__all__ = ["OFFICIAL_ATLAS", "OFFICIAL_N_ROIS", "OFFICIAL_TR", "build_fmrilm_hdf5"]

OFFICIAL_N_ROIS = 450
OFFICIAL_TR = 2.0
OFFICIAL_ATLAS = "Schaefer2018_400Parcels_7Networks+Tian_Subcortex_S3"
_SAMPLE_KEY = re.compile(r"^sample_(\d+)$")
_TEXT_METADATA = ("subjects", "sessions", "file_ids", "file_paths", "dataset_names")


def _decode(values: np.ndarray) -> list[str]:
    return [
        value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value) for value in values.tolist()
    ]


def _read_metadata(handle, path: Path, dataset_name: str | None) -> dict[str, object]:
    import h5py

    for group in ("time_series", "metadata"):
        if not isinstance(handle.get(group), h5py.Group):
            raise ValueError(
                f"{path} has no {group!r} group; the fMRI-LM layout has time_series/sample_NNNNNN arrays and "
                "metadata/{subjects, sessions, file_ids, file_paths, dataset_names, shapes}."
            )
    group = handle["metadata"]
    required = ["subjects"] + ([] if dataset_name else ["dataset_names"])
    absent = [name for name in required if name not in group]
    if absent:
        hint = " (or pass dataset_name / --dataset-name)" if "dataset_names" in absent else ""
        raise ValueError(f"{path} lacks metadata/{', metadata/'.join(absent)}{hint}.")
    metadata: dict[str, object] = {
        name: _decode(np.asarray(group[name][()]).reshape(-1)) for name in _TEXT_METADATA if name in group
    }
    if "shapes" in group:
        shapes = np.asarray(group["shapes"][()])
        if shapes.ndim != 2:
            raise ValueError(f"metadata/shapes of {path} should be (n_samples, 2), got shape {shapes.shape}.")
        metadata["shapes"] = [tuple(int(v) for v in row) for row in shapes]
    lengths = {name: len(values) for name, values in metadata.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(
            f"The metadata arrays of {path} have different lengths {lengths}; they must describe the same samples."
        )
    return metadata


@dataclass
class _Hdf5Context:
    handle: object
    metadata: dict[str, object]
    n_rois: int
    tr: float
    dataset_name: str | None

    def load(self, key: str) -> ScanRecord:
        match = _SAMPLE_KEY.match(key)
        if match is None:
            raise ScanSkipped("not a sample_NNNNNN key, so no metadata entry describes it")
        index = int(match.group(1))
        n_entries = len(self.metadata["subjects"])
        if index >= n_entries:
            raise ScanSkipped(f"has no metadata entry (metadata describes samples 0-{n_entries - 1})")
        item = self.handle["time_series"][key]
        if not hasattr(item, "shape") or len(item.shape) != 2:
            raise ScanSkipped(
                f"expected a 2-D (rois, time) array, got {'a group' if not hasattr(item, 'shape') else item.shape}"
            )
        stored = tuple(item.shape)
        if "shapes" in self.metadata and tuple(self.metadata["shapes"][index]) != stored:
            raise ScanSkipped(f"stored shape {stored} differs from metadata/shapes {self.metadata['shapes'][index]}")
        if stored[0] != self.n_rois and stored[1] == self.n_rois:
            raise ScanSkipped(
                f"stored (time, rois) {stored}, but the fMRI-LM layout is (rois, time) with {self.n_rois} ROIs"
            )
        if stored[0] != self.n_rois:
            raise ScanSkipped(f"has {stored[0]} ROIs, expected {self.n_rois} (stored shape {stored})")
        try:
            array = np.asarray(item[()])
        except (OSError, TypeError) as error:
            raise ScanSkipped(f"unreadable HDF5 dataset ({error})") from error
        sessions = self.metadata.get("sessions")
        return ScanRecord(
            subject_id=self.metadata["subjects"][index],
            session_id=sessions[index] if sessions is not None else "",
            dataset=self.dataset_name or self.metadata["dataset_names"][index],
            run=key,
            bold=array.T,
            tr=self.tr,
        )


def _infer_n_rois(time_series, keys: list[str], path: Path) -> int:
    counts = Counter(time_series[key].shape[0] for key in keys if len(getattr(time_series[key], "shape", ())) == 2)
    if not counts:
        raise ValueError(f"{path} has no 2-D array under time_series/, so the number of ROIs cannot be inferred.")
    ranked = counts.most_common()
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        raise ValueError(
            f"The samples of {path} disagree on the number of ROIs ({dict(ranked)}); pass n_rois (--n-rois)."
        )
    return int(ranked[0][0])


def build_fmrilm_hdf5(
    path: str | Path,
    *,
    tr: float = OFFICIAL_TR,
    atlas: str | None = None,
    n_rois: int | None = None,
    dataset_name: str | None = None,
    license: str = "other",
    seed: int = 0,
    min_timepoints: int = 1,
    cache_dir: str | Path | None = None,
    keep_in_memory: bool = False,
    progress: bool | None = None,
) -> BuildResult:
    """Build a dataset from an fMRI-LM HDF5 file.

    Args:
        path: the ``.h5`` file.
        tr: repetition time in seconds of every sample (the official files are resampled to 2.0 s).
        atlas: parcellation name; default :data:`OFFICIAL_ATLAS` when the samples have 450 ROIs,
            otherwise required.
        n_rois: ROI count; default: the most common first axis of the samples.
        dataset_name: overrides ``metadata/dataset_names`` (required when that array is absent).
        license: Hub licence identifier of the source data.
        seed, min_timepoints, cache_dir, keep_in_memory, progress: see :func:`collect_scans`.

    Raises:
        FileNotFoundError: no such file. ValueError: not the fMRI-LM layout, or bad options.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"fMRI-LM HDF5 file {path} does not exist.")
    if isinstance(tr, bool) or not isinstance(tr, (int, float)) or not math.isfinite(tr) or tr <= 0:
        raise ValueError(f"tr must be a positive number of seconds, got {tr!r}.")
    if n_rois is not None and (isinstance(n_rois, bool) or not isinstance(n_rois, int) or n_rois < 1):
        raise ValueError(f"n_rois must be a positive integer, got {n_rois!r}.")
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise ValueError(f"{path} is not a readable HDF5 file ({error}).") from error
    with handle:
        metadata = _read_metadata(handle, path, dataset_name)
        time_series = handle["time_series"]
        keys = sorted(
            time_series.keys(), key=lambda k: (0, int(m.group(1)), k) if (m := _SAMPLE_KEY.match(k)) else (1, 0, k)
        )
        if not keys:
            raise ValueError(f"{path} has no samples under time_series/.")
        if n_rois is None:
            n_rois = _infer_n_rois(time_series, keys, path)
        if atlas is None:
            if n_rois != OFFICIAL_N_ROIS:
                raise ValueError(
                    f"The samples of {path} have {n_rois} ROIs, not the official {OFFICIAL_N_ROIS} "
                    f"({OFFICIAL_ATLAS}); name their atlas with atlas= (--atlas)."
                )
            atlas = OFFICIAL_ATLAS
        context = _Hdf5Context(handle, metadata, n_rois, float(tr), dataset_name)
        collected = collect_scans(
            keys,
            context.load,
            n_rois=n_rois,
            atlas=atlas,
            synthetic=False,
            describe=lambda key: f"{path.name}:time_series/{key}",
            seed=seed,
            min_timepoints=min_timepoints,
            cache_dir=cache_dir,
            keep_in_memory=keep_in_memory,
            progress=progress,
            progress_desc="fmrilm_hdf5",
        )
    names = sorted({name for split in collected.dataset.values() for name in split.unique("dataset")})
    provenance = Provenance(
        builder="fmrilm_hdf5",
        source=(
            f"Samples of the fMRI-LM HDF5 file {path.resolve()} (official layout: time_series/sample_NNNNNN (rois, time) "
            f"arrays, transposed here to (time, rois); metadata/ arrays aligned with the sample number). Datasets: "
            f"{', '.join(names)}."
        ),
        license=license,
        terms=(
            f"The terms of use of the source dataset(s) ({', '.join(names)}) apply; most large fMRI cohorts (UK Biobank, "
            "ABCD, HCP, ADNI ...) forbid redistribution. The licence identifier given at build time is "
            f"{license!r}. Check the terms before sharing."
        ),
        atlas=atlas,
        tr_source=(
            f"{tr:g} s for every sample"
            + (
                " (the fMRI-LM preprocessing resamples every series to TR 2.0 s)"
                if math.isclose(tr, OFFICIAL_TR)
                else " (given at build time)"
            )
        ),
        synthetic=False,
        options={
            "path": str(path),
            "tr": float(tr),
            "atlas": atlas,
            "n_rois": n_rois,
            "dataset_name": dataset_name,
            "min_timepoints": min_timepoints,
        },
    )
    return BuildResult.from_collected(collected, provenance, seed)
