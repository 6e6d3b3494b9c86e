"""NIfTI -> ROI time series: parcellation with a label atlas, repetition time, signal cleaning, BIDS discovery.

The one entry point most users need is :func:`parcellate`::

    result = parcellate("sub-01_task-rest_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz",
                        atlas_img, atlas=aal2())
    result.time_series   # (time, rois) float32, columns in the atlas order
    result.tr            # seconds

Pipeline of :func:`parcellate`
------------------------------
1. The atlas label image is resampled onto the image's voxel grid with nearest-neighbour
   interpolation through the two affines (``scipy.ndimage.affine_transform``, order 0, zero outside),
   which is what nilearn's ``NiftiLabelsMasker`` does with its default ``resampling_target="data"``.
   The resampling (and everything else that depends only on the atlas and the image grid) is cached,
   so parcellating many runs on one grid pays for it once.
2. The data are read in chunks of volumes (bounded memory), only the voxels that matter are
   gathered, and every ROI's mean is one sparse (ROIs x voxels) product per chunk, accumulated in
   float64. Non-finite voxel values are replaced by 0 with a warning (as nilearn does).
3. Quality checks: the overlap between atlas and image (see :func:`parcellate`) and labels that have
   no voxel inside the image.
4. Optional cleaning of the ROI series, off by default, in nilearn's order (:func:`clean_roi_signals`).

BIDS helpers
------------
:func:`find_bids_runs` finds ``*_bold.nii[.gz]`` runs in a raw or derivatives tree, with their
entities and their JSON sidecar merged along BIDS inheritance; :func:`read_participants` reads
``participants.tsv``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .atlases import AtlasSpec

if TYPE_CHECKING:
    import nibabel
    import pandas
    import scipy.sparse

__all__ = [
    "BidsRun",
    "ParcellationResult",
    "clean_roi_signals",
    "clear_parcellation_cache",
    "find_bids_runs",
    "parcellate",
    "read_participants",
    "read_tr",
]

#: Upper bound (bytes) on one chunk of volumes read from the image, counted at 8 bytes a value.
DEFAULT_CHUNK_BYTES = 256 * 2**20
#: Order of the Butterworth filter (nilearn's default).
BUTTERWORTH_ORDER = 5
_ON_MISSING = ("warn", "drop", "raise")
# Seconds per unit of the NIfTI xyzt time code ("unknown" is not trusted, see _header_tr).
_TIME_UNIT_SECONDS = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}
_PLAN_CACHE_SIZE = 8
# Label values up to this use a look-up table (8 bytes per value) to find their ROI.
_LOOKUP_TABLE_LIMIT = 2**22


# ============================================================================ images and TR
def _load_image(img: object, role: str) -> nibabel.spatialimages.SpatialImage:
    """A nibabel image from a path or an image; ``role`` names the argument in error messages."""
    import nibabel as nib

    if isinstance(img, (str, os.PathLike)):
        path = Path(img)
        if not path.is_file():
            raise FileNotFoundError(f"The {role} {path} does not exist.")
        try:
            # keep_file_open: reading a .nii.gz in chunks of volumes then decompresses it once, not once per chunk.
            return nib.load(path, keep_file_open=True)
        except Exception as error:  # nibabel raises several types for unreadable files
            raise ValueError(f"Could not read the {role} {path} as a NIfTI image: {error}") from error
    if isinstance(img, nib.spatialimages.SpatialImage):
        return img
    raise TypeError(f"The {role} must be a file path or a nibabel image, got {type(img).__name__}.")


def _checked_affine(image: nibabel.spatialimages.SpatialImage, role: str) -> np.ndarray:
    affine = np.asarray(image.affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ValueError(
            f"The {role} has an invalid affine (voxel-to-world matrix) {affine.tolist()}: it must be a finite, "
            "invertible 4x4 matrix. Fix the header's sform/qform."
        )
    return affine


def _header_tr(header: object) -> float | None:
    """TR in seconds from a NIfTI header: pixdim[4] in its xyzt time unit (sec, msec, usec), else None.

    A time unit of ``"unknown"`` gives None: nibabel writes pixdim[4] = 1 with that unit into every
    image whose TR was never set, so the value cannot be trusted.
    """
    if not hasattr(header, "get_xyzt_units"):
        return None
    zooms = header.get_zooms()
    if len(zooms) < 4:
        return None
    value = float(zooms[3])
    unit = header.get_xyzt_units()[1]
    if unit not in _TIME_UNIT_SECONDS or not math.isfinite(value) or value <= 0:
        return None
    return value * _TIME_UNIT_SECONDS[unit]


def _header_tr_problem(header: object) -> str:
    """Why :func:`_header_tr` found no TR, for error messages."""
    if not hasattr(header, "get_xyzt_units") or len(header.get_zooms()) < 4:
        return "the image header has no time dimension"
    value, unit = float(header.get_zooms()[3]), header.get_xyzt_units()[1]
    if unit not in _TIME_UNIT_SECONDS:
        return f"the NIfTI header's pixdim[4] is {value:g} with time unit {unit!r}, not seconds, msec or usec"
    return f"the NIfTI header's pixdim[4] is {value:g}"


def _sidecar_tr(sidecar: dict, origin: str) -> float | None:
    if "RepetitionTime" not in sidecar:
        return None
    value = sidecar["RepetitionTime"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"RepetitionTime in {origin} is {value!r}; BIDS requires a positive number of seconds. Fix the sidecar."
        )
    return float(value)


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            content = json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"The JSON sidecar {path} is not valid JSON ({error}); fix or remove it.") from error
    if not isinstance(content, dict):
        raise ValueError(f"The JSON sidecar {path} holds a {type(content).__name__}, not a JSON object.")
    return content


def _reconcile_tr(header_tr: float | None, sidecar_tr: float | None, origin: str, stacklevel: int) -> float | None:
    """The sidecar's TR if any (warning when the header disagrees), else the header's."""
    if sidecar_tr is None:
        return header_tr
    if header_tr is not None and not math.isclose(header_tr, sidecar_tr, rel_tol=1e-3):
        warnings.warn(
            f"RepetitionTime in {origin} ({sidecar_tr:g} s) disagrees with the NIfTI header ({header_tr:g} s); "
            "using the sidecar's value, as BIDS prescribes.",
            stacklevel=stacklevel,
        )
    return sidecar_tr


def read_tr(
    img: str | os.PathLike | nibabel.spatialimages.SpatialImage, sidecar: dict | str | os.PathLike | None = None
) -> float:
    """Repetition time in seconds.

    Args:
        img: NIfTI path or nibabel image; its header's pixdim[4] is converted from its time unit
            (sec, msec, usec) to seconds. A header whose time unit is "unknown" gives no TR.
        sidecar: a BIDS JSON sidecar (dict or path). Its ``RepetitionTime`` (seconds) wins over the
            header; when the two disagree a warning says so.

    Raises:
        ValueError: neither source gives a positive TR.
    """
    image = _load_image(img, "image")
    header_tr = _header_tr(image.header)
    origin, sidecar_tr = "the sidecar", None
    if sidecar is not None:
        if isinstance(sidecar, (str, os.PathLike)):
            origin = str(sidecar)
            if not Path(sidecar).is_file():
                raise FileNotFoundError(f"The JSON sidecar {sidecar} does not exist.")
            sidecar = _read_json(Path(sidecar))
        if not isinstance(sidecar, dict):
            raise TypeError(f"sidecar must be a dict, a JSON path or None, got {type(sidecar).__name__}.")
        sidecar_tr = _sidecar_tr(sidecar, origin)
    tr = _reconcile_tr(header_tr, sidecar_tr, origin, stacklevel=3)
    if tr is None:
        raise ValueError(
            f"No repetition time found: {_header_tr_problem(image.header)}, and no sidecar gave RepetitionTime. "
            "Pass tr= (in seconds) explicitly."
        )
    return tr


def _validated_tr(tr: object) -> float:
    if (
        isinstance(tr, bool)
        or not isinstance(tr, (int, float, np.integer, np.floating))
        or not math.isfinite(tr)
        or tr <= 0
    ):
        raise ValueError(f"tr={tr!r}: the repetition time must be a positive number of seconds.")
    return float(tr)


# ============================================================================ atlas label volumes
@dataclass(frozen=True)
class _LabelVolume:
    labels: np.ndarray  # (x, y, z) int32 label image
    affine: np.ndarray  # (4, 4)
    digest: str  # identifies labels + affine in the plan cache


_LABEL_FILE_CACHE: OrderedDict[tuple, _LabelVolume] = OrderedDict()
_CACHE_LOCK = threading.Lock()  # the two caches may be shared by threads parcellating runs in parallel


def _label_volume_from_image(image: nibabel.spatialimages.SpatialImage, role: str) -> _LabelVolume:
    shape = image.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise ValueError(
            f"The {role} must be a 3-D label image (one integer label per voxel); got shape {image.shape}. "
            "Probabilistic (4-D) atlases are not supported: threshold them into a label image first."
        )
    affine = _checked_affine(image, role)
    data = np.asanyarray(image.dataobj).reshape(shape, order="F")  # drops a trailing singleton axis
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)):
            raise ValueError(f"The {role} contains NaN or infinite values; a label image holds integers only.")
        if not np.array_equal(data, np.round(data)):
            raise ValueError(
                f"The {role} holds non-integer values (e.g. {data[data != np.round(data)][:3].tolist()}): it looks "
                "like a probabilistic or continuous map, not a label image. Give a label image (an integer per region)."
            )
    elif data.dtype.kind not in "iub":
        raise ValueError(f"The {role} has data type {data.dtype}; a label image holds integers.")
    if data.size and (data.min() < 0 or data.max() > np.iinfo(np.int32).max):
        raise ValueError(
            f"The {role} has labels outside 0..2^31-1 (min {data.min()}, max {data.max()}); labels must be "
            "non-negative integers with 0 as background."
        )
    labels = np.asarray(data, dtype=np.int32, order="F")
    digest = hashlib.blake2b(
        labels.tobytes(order="F") + affine.tobytes() + str(labels.shape).encode(), digest_size=16
    ).hexdigest()
    return _LabelVolume(labels=labels, affine=affine, digest=digest)


def _load_label_volume(atlas_img: object) -> _LabelVolume:
    """The atlas as an int32 label volume; atlas files are read once and cached by path and mtime."""
    if not (isinstance(atlas_img, (str, os.PathLike)) and Path(atlas_img).is_file()):
        return _label_volume_from_image(_load_image(atlas_img, "atlas image"), "atlas image")
    stat = Path(atlas_img).stat()
    key = (str(Path(atlas_img).resolve()), stat.st_mtime_ns, stat.st_size)
    with _CACHE_LOCK:
        if key in _LABEL_FILE_CACHE:
            _LABEL_FILE_CACHE.move_to_end(key)
            return _LABEL_FILE_CACHE[key]
    volume = _label_volume_from_image(_load_image(atlas_img, "atlas image"), "atlas image")
    with _CACHE_LOCK:
        _LABEL_FILE_CACHE[key] = volume
        while len(_LABEL_FILE_CACHE) > _PLAN_CACHE_SIZE:
            _LABEL_FILE_CACHE.popitem(last=False)
    return volume


# ============================================================================ extraction plan
@dataclass(frozen=True)
class _ExtractionPlan:
    """Everything that depends only on the atlas, the requested labels and the image grid.

    Probe voxels are the image voxels we read: those labelled after resampling plus those hit by the
    centres of the atlas's labelled voxels (for the overlap check). Indices are flat, Fortran order.
    """

    probe_index: np.ndarray  # (P,) int64, sorted
    reducer: scipy.sparse.csr_matrix  # (n_present, P) 0/1: which probe voxels sum into which present label
    present: np.ndarray  # (n_present,) positions (into the requested labels) of labels with voxels on the grid
    voxel_counts: np.ndarray  # (R,) int64 voxels per requested label on the image grid
    labelled_probe: np.ndarray  # (P,) bool, probe voxel carries a requested label after resampling
    atlas_hit_probe: np.ndarray  # (H,) probe positions hit by original labelled atlas voxel centres
    atlas_hit_weight: np.ndarray  # (H,) how many original atlas voxels hit each of them
    n_atlas_voxels: int  # voxels of the requested labels in the original atlas
    expected_grid_voxels: float  # n_atlas_voxels scaled by atlas voxel volume / image voxel volume
    in_atlas: np.ndarray  # (R,) bool, requested label occurs in the atlas image at all


_PLAN_CACHE: OrderedDict[tuple, _ExtractionPlan] = OrderedDict()


def clear_parcellation_cache() -> None:
    """Forget cached atlas volumes and resampling plans (they are rebuilt on the next call)."""
    with _CACHE_LOCK:
        _PLAN_CACHE.clear()
        _LABEL_FILE_CACHE.clear()


def _positions_in(values: np.ndarray, requested: np.ndarray) -> np.ndarray:
    """For each (non-negative integer) value, its position in ``requested`` (unique positive ints), or -1."""
    largest = int(requested.max())
    if largest <= _LOOKUP_TABLE_LIMIT:  # a direct look-up table: one gather, no search
        table = np.full(largest + 2, -1, dtype=np.int64)
        table[requested] = np.arange(len(requested))
        return table[np.minimum(values, largest + 1)]
    order = np.argsort(requested, kind="stable")
    ordered = requested[order]
    slot = np.clip(np.searchsorted(ordered, values), 0, len(ordered) - 1)
    return np.where(ordered[slot] == values, order[slot], -1)


def _resample_labels(volume: _LabelVolume, shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    """The atlas on the image grid, nearest neighbour, 0 outside the atlas's field of view."""
    from scipy import ndimage

    if volume.labels.shape == shape and np.allclose(volume.affine, affine, rtol=0, atol=1e-6):
        return volume.labels
    image_to_atlas = np.linalg.inv(volume.affine) @ affine
    matrix, offset = image_to_atlas[:3, :3], image_to_atlas[:3, 3]
    if np.count_nonzero(matrix - np.diag(np.diag(matrix))) == 0:
        matrix = np.diag(matrix)  # axis-aligned grids: scipy's faster separable path, same coordinates
    return ndimage.affine_transform(
        volume.labels, matrix, offset=offset, output_shape=shape, order=0, mode="constant", cval=0
    )


def _build_plan(
    volume: _LabelVolume, requested: np.ndarray, shape: tuple[int, int, int], affine: np.ndarray
) -> _ExtractionPlan:
    import scipy.sparse

    n_requested = len(requested)
    grid_positions = _positions_in(_resample_labels(volume, shape, affine).ravel(order="F"), requested)
    labelled = np.flatnonzero(grid_positions >= 0)
    voxel_counts = np.bincount(grid_positions[labelled], minlength=n_requested).astype(np.int64)

    # Centres of the original atlas's labelled voxels, mapped into image voxel indices (nearest voxel).
    atlas_positions = _positions_in(volume.labels.ravel(order="F"), requested)
    atlas_voxels = np.flatnonzero(atlas_positions >= 0)
    in_atlas = np.bincount(atlas_positions[atlas_voxels], minlength=n_requested) > 0
    atlas_to_image = np.linalg.inv(affine) @ volume.affine
    ijk = np.stack(np.unravel_index(atlas_voxels, volume.labels.shape, order="F")).astype(np.float64)
    nearest = np.floor(atlas_to_image[:3, :3] @ ijk + atlas_to_image[:3, 3:] + 0.5).astype(np.int64)
    inside = np.all((nearest >= 0) & (nearest < np.asarray(shape)[:, None]), axis=0)
    n_grid = int(np.prod(shape))
    hits_per_voxel = np.bincount(np.ravel_multi_index(tuple(nearest[:, inside]), shape, order="F"), minlength=n_grid)
    hit_voxels = np.flatnonzero(hits_per_voxel)
    hit_weight = hits_per_voxel[hit_voxels]

    probed = np.zeros(n_grid, dtype=bool)
    probed[labelled] = True
    probed[hit_voxels] = True
    probe_index = np.flatnonzero(probed).astype(np.int64)
    present = np.flatnonzero(voxel_counts > 0)
    row_of = np.full(n_requested, -1, dtype=np.int64)
    row_of[present] = np.arange(len(present))
    labelled_columns = np.searchsorted(probe_index, labelled)
    reducer = scipy.sparse.csr_matrix(
        (np.ones(len(labelled)), (row_of[grid_positions[labelled]], labelled_columns)),
        shape=(len(present), len(probe_index)),
    )
    labelled_probe = np.zeros(len(probe_index), dtype=bool)
    labelled_probe[labelled_columns] = True
    volume_ratio = abs(np.linalg.det(volume.affine[:3, :3])) / abs(np.linalg.det(affine[:3, :3]))
    return _ExtractionPlan(
        probe_index=probe_index,
        reducer=reducer,
        present=present,
        voxel_counts=voxel_counts,
        labelled_probe=labelled_probe,
        atlas_hit_probe=np.searchsorted(probe_index, hit_voxels),
        atlas_hit_weight=hit_weight,
        n_atlas_voxels=len(atlas_voxels),
        expected_grid_voxels=len(atlas_voxels) * volume_ratio,
        in_atlas=in_atlas,
    )


def _plan_for(
    volume: _LabelVolume, requested: np.ndarray, shape: tuple[int, int, int], affine: np.ndarray
) -> _ExtractionPlan:
    key = (volume.digest, tuple(requested.tolist()), shape, np.round(affine, 6).tobytes())
    with _CACHE_LOCK:
        if key in _PLAN_CACHE:
            _PLAN_CACHE.move_to_end(key)
            return _PLAN_CACHE[key]
    plan = _build_plan(volume, requested, shape, affine)
    with _CACHE_LOCK:
        _PLAN_CACHE[key] = plan
        while len(_PLAN_CACHE) > _PLAN_CACHE_SIZE:
            _PLAN_CACHE.popitem(last=False)
    return plan


# ============================================================================ reading the data
@dataclass
class _Extracted:
    means: np.ndarray  # (T, n_present) float64
    has_signal: np.ndarray  # (P,) bool, probe voxel is not constant over time (non-zero if T == 1)
    n_nonfinite: int  # non-finite values replaced by 0


def _extract_means(
    dataobj: object, shape: tuple[int, ...], plan: _ExtractionPlan, chunk_volumes: int | None
) -> _Extracted:
    """Mean of each present label per volume, reading ``chunk_volumes`` volumes at a time."""
    n_voxels, n_volumes = int(np.prod(shape[:3])), shape[3]
    if chunk_volumes is None:
        chunk_volumes = DEFAULT_CHUNK_BYTES // (8 * max(n_voxels, 1))
    chunk_volumes = int(min(max(chunk_volumes, 1), n_volumes))
    counts = np.asarray(plan.reducer.sum(axis=1)).ravel()
    means = np.empty((n_volumes, len(plan.present)), dtype=np.float64)
    low = high = None
    n_nonfinite = 0
    for start in range(0, n_volumes, chunk_volumes):
        stop = min(start + chunk_volumes, n_volumes)
        block = np.asanyarray(dataobj[..., start:stop])
        probe = block.reshape(n_voxels, stop - start, order="F")[plan.probe_index]  # (P, c)
        chunk_low, chunk_high = probe.min(axis=1), probe.max(axis=1)
        if probe.dtype.kind == "f" and not (np.isfinite(chunk_low).all() and np.isfinite(chunk_high).all()):
            finite = np.isfinite(probe)  # NaN and inf show in the extremes, so this pass is rarely needed
            n_nonfinite += int(probe.size - np.count_nonzero(finite))
            probe = np.where(finite, probe, 0)
            chunk_low, chunk_high = probe.min(axis=1), probe.max(axis=1)
        low = chunk_low if low is None else np.minimum(low, chunk_low)
        high = chunk_high if high is None else np.maximum(high, chunk_high)
        sums = plan.reducer @ probe.astype(np.float64, copy=False)  # (n_present, c), float64 accumulation
        means[start:stop] = (sums / counts[:, None]).T
    has_signal = high != low if n_volumes > 1 else high != 0
    return _Extracted(means=means, has_signal=has_signal, n_nonfinite=n_nonfinite)


# ============================================================================ cleaning
def _zscore_columns(values: np.ndarray) -> np.ndarray:
    """Mean 0 and sample standard deviation (ddof=1) 1 per column; constant columns become 0."""
    centred = values - values.mean(axis=0)
    scale = centred.std(axis=0, ddof=1)
    scale[scale < np.finfo(np.float64).eps] = 1.0
    return centred / scale


def _detrend_columns(values: np.ndarray) -> np.ndarray:
    """Remove each column's mean and least-squares linear trend over time."""
    ramp = np.arange(values.shape[0], dtype=np.float64)
    ramp -= ramp.mean()
    norm = np.sqrt(ramp @ ramp)
    centred = values - values.mean(axis=0)
    if norm == 0:
        return centred
    ramp /= norm
    return centred - np.outer(ramp, ramp @ centred)


def _butterworth_sos(tr: float, low_pass: float | None, high_pass: float | None) -> np.ndarray:
    """Second-order sections of the Butterworth filter for these settings (designed once, copied out:
    scipy's filter routines need a writable array)."""
    return _design_butterworth(tr, low_pass, high_pass).copy()


@functools.lru_cache(maxsize=64)
def _design_butterworth(tr: float, low_pass: float | None, high_pass: float | None) -> np.ndarray:
    from scipy import signal

    nyquist = 0.5 / tr
    for label, cutoff in (("low_pass", low_pass), ("high_pass", high_pass)):
        if cutoff is None:
            continue
        if (
            isinstance(cutoff, bool)
            or not isinstance(cutoff, (int, float, np.integer, np.floating))
            or not math.isfinite(cutoff)
            or cutoff <= 0
        ):
            raise ValueError(f"{label}={cutoff!r}: a cut-off frequency must be a positive number of Hz (or None).")
        if cutoff >= nyquist:
            raise ValueError(
                f"{label}={cutoff:g} Hz is at or above the Nyquist frequency {nyquist:g} Hz of TR {tr:g} s; "
                f"choose a cut-off below {nyquist:g} Hz or leave {label}=None."
            )
    if low_pass is not None and high_pass is not None:
        if high_pass >= low_pass:
            raise ValueError(
                f"high_pass={high_pass:g} Hz must be below low_pass={low_pass:g} Hz for a band-pass filter."
            )
        return signal.butter(BUTTERWORTH_ORDER, [high_pass, low_pass], btype="bandpass", output="sos", fs=1.0 / tr)
    if low_pass is not None:
        return signal.butter(BUTTERWORTH_ORDER, low_pass, btype="lowpass", output="sos", fs=1.0 / tr)
    return signal.butter(BUTTERWORTH_ORDER, high_pass, btype="highpass", output="sos", fs=1.0 / tr)


def _filter_pad_length(sos: np.ndarray) -> int:
    """sosfiltfilt's default odd-extension pad length; a series must be longer than it."""
    n_taps = 2 * len(sos) + 1 - min(int((sos[:, 2] == 0).sum()), int((sos[:, 5] == 0).sum()))
    return 3 * n_taps


def _zero_phase_filter(values: np.ndarray, sos: np.ndarray) -> np.ndarray:
    from scipy import signal

    return signal.sosfiltfilt(sos, values, axis=0, padtype="odd", padlen=_filter_pad_length(sos))


def _check_cleaning(
    n_volumes: int,
    tr: float | None,
    detrend: bool,
    standardize: bool | str,
    low_pass: float | None,
    high_pass: float | None,
    with_confounds: bool,
) -> np.ndarray | None:
    """Validate the cleaning options for a series of ``n_volumes``; returns the filter (sos) or None."""
    if not isinstance(detrend, (bool, np.bool_)):
        raise ValueError(f"detrend={detrend!r} must be True or False.")
    if not isinstance(standardize, (bool, np.bool_)) and standardize != "zscore_sample":
        raise ValueError(
            f"standardize={standardize!r}: use True (z-score over time, as nilearn's 'zscore_sample') or False."
        )
    if (detrend or standardize or with_confounds) and n_volumes < 3:
        raise ValueError(f"Cleaning needs at least 3 volumes; the series has {n_volumes}.")
    if low_pass is None and high_pass is None:
        return None
    if tr is None:
        raise ValueError(
            "Band-pass filtering needs the repetition time, but none is known (the header has none). Pass tr= "
            "in seconds."
        )
    sos = _butterworth_sos(_validated_tr(tr), low_pass, high_pass)
    pad = _filter_pad_length(sos)
    if n_volumes <= pad:
        raise ValueError(
            f"The series has {n_volumes} volumes; the order-{BUTTERWORTH_ORDER} Butterworth filter needs more "
            f"than {pad}. Filter longer runs, or leave low_pass/high_pass at None."
        )
    return sos


def clean_roi_signals(
    signals: np.ndarray,
    tr: float | None = None,
    *,
    detrend: bool = False,
    standardize: bool | str = False,
    low_pass: float | None = None,
    high_pass: float | None = None,
    confounds: np.ndarray | None = None,
) -> np.ndarray:
    """Clean (time, rois) series in nilearn's order: detrend, band-pass, confound regression, standardize.

    Args:
        signals: (T, R) series.
        tr: repetition time in seconds; needed only for filtering.
        detrend: remove each series' mean and linear trend (least squares). Confounds are detrended too.
        standardize: z-score each series over time with the *sample* standard deviation (ddof=1),
            i.e. nilearn's ``standardize="zscore_sample"`` (that string is accepted too); constant
            series become 0.
        low_pass, high_pass: cut-offs in Hz of an order-5 Butterworth filter applied forwards and
            backwards (zero phase, ``scipy.signal.sosfiltfilt`` with odd padding), low-pass,
            high-pass or band-pass. Cut-offs must lie strictly between 0 and the Nyquist frequency
            0.5/tr; we refuse others rather than move them silently. Confounds get the same filter,
            so the regression stays orthogonal to the filter (Lindquist et al. 2019).
        confounds: (T, K) nuisance regressors. They are z-scored, then removed from the signals by
            projection onto the orthogonal complement of their span (QR with column pivoting;
            linearly dependent or constant columns drop out). The signals' means are kept.

    Returns:
        (T, R) float64 cleaned series.
    """
    values = np.array(signals, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"signals must be a (time, rois) array, got shape {values.shape}.")
    if not np.all(np.isfinite(values)):
        raise ValueError("signals contain NaN or infinite values; clean needs finite series.")
    n_volumes = values.shape[0]
    sos = _check_cleaning(n_volumes, tr, detrend, standardize, low_pass, high_pass, confounds is not None)
    nuisance = None
    if confounds is not None:
        nuisance = np.array(confounds, dtype=np.float64)
        if nuisance.ndim == 1:
            nuisance = nuisance[:, None]
        if nuisance.ndim != 2 or nuisance.shape[0] != n_volumes:
            raise ValueError(
                f"confounds have shape {nuisance.shape}; expected ({n_volumes}, K): one row per volume, one column per "
                "regressor."
            )
        if not np.all(np.isfinite(nuisance)):
            raise ValueError("confounds contain NaN or infinite values; fill or drop those regressors first.")
    if detrend:
        values = _detrend_columns(values)
        if nuisance is not None:
            nuisance = _detrend_columns(nuisance)
    if sos is not None:
        values = _zero_phase_filter(values, sos)
        if nuisance is not None:
            nuisance = _zero_phase_filter(nuisance, sos)
    if nuisance is not None:
        from scipy import linalg

        basis, triangle, _ = linalg.qr(_zscore_columns(nuisance), mode="economic", pivoting=True)
        diagonal = np.abs(np.diag(triangle))
        tolerance = (diagonal.max() if diagonal.size else 0.0) * max(nuisance.shape) * np.finfo(np.float64).eps
        basis = basis[:, diagonal > tolerance]
        if basis.shape[1] >= n_volumes - 1:
            raise ValueError(
                f"The confounds span {basis.shape[1]} dimensions for {n_volumes} volumes: regressing them out would "
                "remove all the signal. Use fewer confound columns."
            )
        values = values - basis @ (basis.T @ values)
    if standardize:
        values = _zscore_columns(values)
    return values


def _read_confounds(confounds: object, confound_columns: Sequence[str] | None, n_volumes: int) -> np.ndarray | None:
    """(T, K) float64 confounds from an array, a DataFrame or a TSV/CSV path (columns chosen by name)."""
    import pandas as pd

    if confounds is None:
        if confound_columns is not None:
            raise ValueError("confound_columns was given without confounds; pass the confounds file or table too.")
        return None
    if isinstance(confounds, (str, os.PathLike)):
        path = Path(confounds)
        if not path.is_file():
            raise FileNotFoundError(f"The confounds file {path} does not exist.")
        if confound_columns is None:
            raise ValueError(
                f"Choose the regressors to use from {path.name} with confound_columns=[...] (e.g. the six motion "
                "parameters); using every column of a confounds file would remove most of the signal."
            )
        sep = "," if path.suffix.lower() == ".csv" else "\t"
        confounds = pd.read_csv(path, sep=sep, na_values=["n/a"])
    if isinstance(confounds, pd.DataFrame):
        table = confounds
        if confound_columns is not None:
            if isinstance(confound_columns, str):
                confound_columns = [confound_columns]
            unknown = [c for c in confound_columns if c not in table.columns]
            if unknown:
                raise ValueError(
                    f"Confound column(s) {unknown} not found; available columns include {list(table.columns)[:30]}."
                )
            table = table[list(confound_columns)]
        non_numeric = [c for c in table.columns if not pd.api.types.is_numeric_dtype(table[c])]
        if non_numeric:
            raise ValueError(f"Confound column(s) {non_numeric} are not numeric; choose numeric regressors.")
        with_gaps = [c for c in table.columns if table[c].isna().any()]
        if with_gaps:
            raise ValueError(
                f"Confound column(s) {with_gaps} contain missing values (n/a), as fMRIPrep's derivative and "
                "framewise-displacement columns do in their first row. Fill them (e.g. table.fillna(0)) or choose "
                "other columns."
            )
        values = table.to_numpy(dtype=np.float64)
    else:
        if confound_columns is not None:
            raise ValueError(
                "confound_columns selects columns by name; it only applies to a confounds file or DataFrame."
            )
        values = np.asarray(confounds, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2 or values.shape[0] != n_volumes:
        raise ValueError(
            f"confounds have shape {values.shape} but the image has {n_volumes} volumes; expected ({n_volumes}, K)."
        )
    if not np.all(np.isfinite(values)):
        raise ValueError("confounds contain NaN or infinite values; fill or drop those regressors first.")
    return values


# ============================================================================ parcellation
@dataclass
class ParcellationResult:
    """ROI time series extracted from a 4-D image.

    Attributes:
        time_series: (T, R) float32, ROI order = the atlas order (``label_values``).
        tr: repetition time in seconds, or None when unknown.
        label_values: label value of each column.
        missing_labels: requested labels with no voxel inside the image (zero columns with
            ``on_missing_labels="warn"``, absent with ``"drop"``).
        overlap_fraction: share of the atlas's labelled voxels on image voxels with signal
            (see :func:`parcellate`).
        voxel_counts: (R,) int64 image voxels averaged per column.
        roi_names: name of each column when an :class:`AtlasSpec` was given, else None.
    """

    time_series: np.ndarray
    tr: float | None
    label_values: tuple[int, ...]
    missing_labels: tuple[int, ...]
    overlap_fraction: float
    voxel_counts: np.ndarray
    roi_names: tuple[str, ...] | None = field(default=None)


def _requested_labels(atlas: AtlasSpec | None, volume: _LabelVolume) -> np.ndarray:
    if atlas is None:
        values = np.unique(volume.labels)
        values = values[values != 0]
        if values.size == 0:
            raise ValueError("The atlas image has no non-zero label: it is empty or all background.")
        return values.astype(np.int64)
    if not isinstance(atlas, AtlasSpec):
        raise TypeError(
            f"atlas must be an AtlasSpec or None, got {type(atlas).__name__}; see fmrilm.atlases.load_atlas."
        )
    return np.asarray(atlas.resolved_label_values, dtype=np.int64)


def _abbreviated(values: np.ndarray, limit: int = 8) -> str:
    shown = ", ".join(str(int(v)) for v in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def _overlap_error(fraction: float, min_overlap: float, where: str) -> ValueError:
    return ValueError(
        f"Only {fraction:.1%} of the atlas's labelled voxels fall {where} (min_overlap={min_overlap:.0%}). Is the "
        "image in native space while the atlas is in MNI space? Register it to the atlas space first, or pass "
        "min_overlap=0 to accept a partial field of view."
    )


def parcellate(
    img: str | os.PathLike | nibabel.spatialimages.SpatialImage,
    atlas_img: str | os.PathLike | nibabel.spatialimages.SpatialImage,
    atlas: AtlasSpec | None = None,
    *,
    tr: float | None = None,
    detrend: bool = False,
    standardize: bool = False,
    low_pass: float | None = None,
    high_pass: float | None = None,
    confounds: np.ndarray | pandas.DataFrame | str | os.PathLike | None = None,
    min_overlap: float = 0.5,
    on_missing_labels: str = "warn",
    confound_columns: Sequence[str] | None = None,
    chunk_volumes: int | None = None,
) -> ParcellationResult:
    """Average a 4-D image within each region of a label atlas.

    Args:
        img: 4-D (x, y, z, time) NIfTI path or nibabel image.
        atlas_img: 3-D integer label image (path or image), on any grid; it is resampled onto the
            image grid by nearest neighbour.
        atlas: which labels to extract and in which order (its ``label_values``). None: every
            non-zero label of the atlas image, sorted.
        tr: repetition time in seconds; wins over the header's (pixdim[4], converted from its unit;
            none when the unit is "unknown").
        detrend, standardize, low_pass, high_pass, confounds: optional cleaning of the ROI series,
            after averaging, exactly as :func:`clean_roi_signals` describes (standardize is
            nilearn's ``"zscore_sample"``). ``confounds``: (T, K) array, DataFrame, or TSV/CSV path
            with ``confound_columns`` naming the columns to use.
        min_overlap: minimal :attr:`ParcellationResult.overlap_fraction` in [0, 1]; below it a
            ValueError says how much overlaps and why that usually happens.
        on_missing_labels: what to do with requested labels that have no voxel inside the image:
            ``"warn"`` (zero columns and a warning), ``"drop"`` (remove the columns), ``"raise"``.
        confound_columns: names of the confound columns to use (file or DataFrame).
        chunk_volumes: volumes read at a time; None picks a chunk of at most 256 MB.

    Overlap fraction:
        The share of the atlas's labelled voxels (of the requested labels) that land inside the
        image's field of view on voxels with signal (voxels whose value varies over time; non-zero
        for a single volume). It is counted twice and the smaller count is reported: in the
        original atlas (each labelled voxel's centre mapped through the affines to the nearest
        image voxel) and on the resampled atlas (labelled image voxels with signal, relative to
        the number the atlas's labelled volume should occupy at the image's voxel size). The
        first sees a field of view that cuts the atlas, the second a coarse image grid.

    Returns:
        A :class:`ParcellationResult`.
    """
    if on_missing_labels not in _ON_MISSING:
        raise ValueError(f"on_missing_labels={on_missing_labels!r}; choose one of {list(_ON_MISSING)}.")
    if isinstance(min_overlap, bool) or not isinstance(min_overlap, (int, float)) or not 0 <= min_overlap <= 1:
        raise ValueError(f"min_overlap={min_overlap!r} must be a fraction between 0 and 1.")
    if chunk_volumes is not None and (
        isinstance(chunk_volumes, bool) or not isinstance(chunk_volumes, (int, np.integer)) or chunk_volumes < 1
    ):
        raise ValueError(f"chunk_volumes={chunk_volumes!r} must be a positive integer or None.")
    image = _load_image(img, "image")
    if len(image.shape) != 4:
        raise ValueError(
            f"The image has shape {image.shape}: a 4-D (x, y, z, time) image is expected. A 3-D volume has no time "
            "series; stack the volumes of a run into one 4-D image (e.g. nibabel.funcs.concat_images)."
        )
    shape = tuple(int(s) for s in image.shape)
    if min(shape) < 1:
        raise ValueError(f"The image has an empty dimension (shape {shape}).")
    affine = _checked_affine(image, "image")
    tr = _validated_tr(tr) if tr is not None else _header_tr(image.header)
    confound_values = _read_confounds(confounds, confound_columns, shape[3])
    _check_cleaning(shape[3], tr, detrend, standardize, low_pass, high_pass, confound_values is not None)

    volume = _load_label_volume(atlas_img)
    requested = _requested_labels(atlas, volume)
    plan = _plan_for(volume, requested, shape[:3], affine)
    if not plan.in_atlas.any():
        present = np.unique(volume.labels)
        raise ValueError(
            f"None of the requested label values ({_abbreviated(requested)}) occur in the atlas image, whose labels "
            f"are {_abbreviated(present[present != 0])}: the AtlasSpec does not describe this atlas image. Pass an "
            "AtlasSpec whose label_values match the image (e.g. aal2() for the AAL2 image), or atlas=None."
        )
    fov_fraction = plan.atlas_hit_weight.sum() / plan.n_atlas_voxels
    if fov_fraction < min_overlap:
        raise _overlap_error(fov_fraction, min_overlap, "inside the image's field of view")
    if plan.present.size == 0:
        raise ValueError(
            "No atlas label has a voxel inside the image's field of view, so there is nothing to average. Is the image "
            "in native space while the atlas is in MNI space? Register it to the atlas space first."
        )

    extracted = _extract_means(image.dataobj, shape, plan, chunk_volumes)
    if extracted.n_nonfinite:
        warnings.warn(
            f"The image has {extracted.n_nonfinite} NaN or infinite values inside the atlas's regions; they were "
            "replaced by 0 before averaging.",
            stacklevel=2,
        )
    signal = extracted.has_signal
    original_fraction = plan.atlas_hit_weight[signal[plan.atlas_hit_probe]].sum() / plan.n_atlas_voxels
    grid_fraction = min(1.0, np.count_nonzero(signal & plan.labelled_probe) / plan.expected_grid_voxels)
    overlap = float(min(original_fraction, grid_fraction))
    if overlap < min_overlap:
        raise _overlap_error(overlap, min_overlap, "inside the image on voxels with signal")

    if detrend or standardize or low_pass is not None or high_pass is not None or confound_values is not None:
        means = clean_roi_signals(
            extracted.means, tr, detrend=detrend, standardize=standardize,
            low_pass=low_pass, high_pass=high_pass, confounds=confound_values,
        )  # fmt: skip
    else:
        means = extracted.means

    missing_mask = plan.voxel_counts == 0
    missing = tuple(int(v) for v in requested[missing_mask])
    if missing:
        described = _describe_labels(requested, missing_mask, plan.in_atlas, atlas)
        if on_missing_labels == "raise":
            raise ValueError(
                f"{len(missing)} requested label(s) have no voxel inside the image: {described}. Pass "
                "on_missing_labels='warn' (zero columns) or 'drop' (remove them) to continue anyway."
            )
        if on_missing_labels == "warn":
            warnings.warn(
                f"{len(missing)} requested label(s) have no voxel inside the image; their columns are zeros: "
                f"{described}.",
                stacklevel=2,
            )
    if on_missing_labels == "drop":
        columns = plan.present
        time_series = means.astype(np.float32)
    else:
        columns = np.arange(len(requested))
        time_series = np.zeros((shape[3], len(requested)), dtype=np.float32)
        time_series[:, plan.present] = means
    return ParcellationResult(
        time_series=np.ascontiguousarray(time_series),
        tr=tr,
        label_values=tuple(int(v) for v in requested[columns]),
        missing_labels=missing,
        overlap_fraction=overlap,
        voxel_counts=plan.voxel_counts[columns].copy(),
        roi_names=None if atlas is None else tuple(atlas.roi_names[i] for i in columns),
    )


def _describe_labels(requested: np.ndarray, missing: np.ndarray, in_atlas: np.ndarray, atlas: AtlasSpec | None) -> str:
    """'2001 (Precentral_L), ...; not in the atlas image at all: ...' for warnings and errors."""

    def name(position: int) -> str:
        label = int(requested[position])
        return f"{label} ({atlas.roi_names[position]})" if atlas is not None else str(label)

    outside = [name(i) for i in np.flatnonzero(missing & in_atlas)]
    absent = [name(i) for i in np.flatnonzero(missing & ~in_atlas)]
    parts = []
    if outside:
        parts.append("outside the image's field of view: " + ", ".join(outside))
    if absent:
        parts.append("not in the atlas image at all: " + ", ".join(absent))
    return "; ".join(parts)


# ============================================================================ BIDS
_BOLD_FILE = re.compile(r"^(?P<stem>.+)_bold\.nii(?:\.gz)?$")
_SIDECAR_FILE = re.compile(r"^(?:(?P<stem>.+)_)?bold\.json$")
_ENTITY = re.compile(r"^(?P<key>[A-Za-z0-9]+)-(?P<value>[A-Za-z0-9+.]+)$")
_SUBJECT_DIR = re.compile(r"^sub-(?P<label>[A-Za-z0-9]+)$")
_SESSION_DIR = re.compile(r"^ses-(?P<label>[A-Za-z0-9]+)$")


@dataclass
class BidsRun:
    """One BOLD run of a BIDS (raw or derivatives) dataset.

    Attributes:
        path: the ``*_bold.nii[.gz]`` file.
        subject, session, task, run, space, desc: entity values (labels without their key).
        entities: every entity of the file name, e.g. ``{"sub": "01", "task": "rest", "run": "1"}``.
        sidecar: the run's JSON metadata, merged along BIDS inheritance (deeper and more specific
            files override).
        tr: repetition time in seconds: the sidecar's ``RepetitionTime``, else the header's, else None.
    """

    path: Path
    subject: str
    session: str | None
    task: str | None
    run: str | None
    space: str | None
    desc: str | None
    entities: dict[str, str]
    sidecar: dict
    tr: float | None


def _parse_entities(stem: str) -> dict[str, str] | None:
    entities = {}
    for part in stem.split("_"):
        match = _ENTITY.match(part)
        if match is None or match["key"] in entities:
            return None
        entities[match["key"]] = match["value"]
    return entities


class _SidecarIndex:
    """``*bold.json`` files per directory with their entities, listed once per directory."""

    def __init__(self) -> None:
        self._listings: dict[Path, list[tuple[int, str, dict[str, str], Path]]] = {}

    def _sidecars_in(self, directory: Path) -> list[tuple[int, str, dict[str, str], Path]]:
        if directory not in self._listings:
            found = []
            for entry in os.scandir(directory):
                match = _SIDECAR_FILE.match(entry.name)
                if match is None or not entry.is_file():
                    continue
                entities = _parse_entities(match["stem"]) if match["stem"] else {}
                if entities is not None:
                    found.append((len(entities), entry.name, entities, Path(entry.path)))
            self._listings[directory] = sorted(found, key=lambda item: (item[0], item[1]))
        return self._listings[directory]

    def merged(self, levels: Sequence[Path], entities: dict[str, str]) -> dict:
        """Sidecar contents applying to a run, from the dataset root down (inheritance principle)."""
        merged: dict = {}
        for directory in levels:
            for _, _, sidecar_entities, path in self._sidecars_in(directory):
                if all(entities.get(key) == value for key, value in sidecar_entities.items()):
                    merged.update(_read_json(path))
        return merged


def _bids_run(path: Path, sidecars: _SidecarIndex) -> BidsRun | None:
    """A BidsRun for a ``*_bold.nii[.gz]`` file in ``sub-X[/ses-Y]/func/``, or None (with a warning) if malformed."""
    import nibabel as nib

    match = _BOLD_FILE.match(path.name)
    func_dir = path.parent
    if match is None or func_dir.name != "func":
        return None
    session_dir = func_dir.parent if _SESSION_DIR.match(func_dir.parent.name) else None
    subject_dir = session_dir.parent if session_dir is not None else func_dir.parent
    subject_match = _SUBJECT_DIR.match(subject_dir.name)
    if subject_match is None:
        return None
    entities = _parse_entities(match["stem"])
    problem = None
    if entities is None:
        problem = "its name is not a sequence of key-value entities"
    elif entities.get("sub") != subject_match["label"]:
        problem = f"its sub entity {entities.get('sub')!r} does not match the folder {subject_dir.name}"
    elif session_dir is not None and entities.get("ses") != session_dir.name[4:]:
        problem = f"its ses entity {entities.get('ses')!r} does not match the folder {session_dir.name}"
    if problem:
        warnings.warn(f"Skipping {path}: {problem} (see the BIDS file naming rules).", stacklevel=3)
        return None
    levels = [subject_dir.parent, subject_dir, *([session_dir] if session_dir is not None else []), func_dir]
    sidecar = sidecars.merged(levels, entities)
    sidecar_tr = _sidecar_tr(sidecar, f"the sidecar of {path.name}")
    try:
        header_tr = _header_tr(nib.load(path).header)  # reads the header only
    except Exception as error:  # nibabel raises several types for unreadable files
        raise ValueError(f"Could not read the NIfTI header of {path}: {error}") from error
    return BidsRun(
        path=path,
        subject=entities["sub"],
        session=entities.get("ses"),
        task=entities.get("task"),
        run=entities.get("run"),
        space=entities.get("space"),
        desc=entities.get("desc"),
        entities=entities,
        sidecar=sidecar,
        tr=_reconcile_tr(header_tr, sidecar_tr, f"the sidecar of {path.name}", stacklevel=4),
    )


def find_bids_runs(
    root: str | os.PathLike, *, task: str | None = None, space: str | None = None, desc: str | None = None
) -> list[BidsRun]:
    """Find the BOLD runs under a BIDS raw or derivatives tree.

    Every ``*_bold.nii`` / ``*_bold.nii.gz`` anywhere under ``root`` that lies in a
    ``sub-<label>[/ses-<label>]/func/`` folder is a run (so a raw dataset with a ``derivatives/``
    folder yields raw and preprocessed runs: filter with ``space``/``desc``). Hidden folders are
    skipped. The sidecar merges every ``[<entities>_]bold.json`` from the dataset root (the folder
    holding ``sub-<label>``) down to ``func/`` whose entities all appear in the run's name.

    Args:
        root: folder to search.
        task, space, desc: keep only runs whose entity equals this value (None: no filter).

    Returns:
        Runs sorted by subject, session, task, run and path.

    Raises:
        FileNotFoundError: ``root`` does not exist or holds no BOLD run.
        ValueError: runs exist but none passes the filters (the message lists the available values).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"The BIDS folder {root} does not exist.")
    sidecars = _SidecarIndex()
    runs = []
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = sorted(d for d in subdirectories if not d.startswith("."))
        for name in files:
            if _BOLD_FILE.match(name):
                run = _bids_run(Path(directory) / name, sidecars)
                if run is not None:
                    runs.append(run)
    if not runs:
        raise FileNotFoundError(
            f"No BOLD runs under {root}: expected files like sub-01/func/sub-01_task-rest_bold.nii.gz (optionally in "
            "ses-<label>/ folders)."
        )
    filters = {"task": task, "space": space, "desc": desc}
    kept = [r for r in runs if all(value is None or r.entities.get(key) == value for key, value in filters.items())]
    if not kept:
        available = {
            key: sorted({r.entities.get(key) for r in runs} - {None})
            for key, value in filters.items()
            if value is not None
        }
        raise ValueError(
            f"{len(runs)} BOLD runs under {root}, but none with "
            + ", ".join(f"{k}={v!r}" for k, v in filters.items() if v is not None)
            + f". Available values: {available}."
        )
    kept.sort(key=lambda r: (r.subject, r.session or "", r.task or "", r.run or "", str(r.path)))
    return kept


def read_participants(root: str | os.PathLike) -> pandas.DataFrame:
    """``participants.tsv`` of a BIDS dataset as a DataFrame with a ``subject_id`` column.

    Args:
        root: the dataset folder, or the ``participants.tsv`` file itself.

    Returns:
        The table with every column as in the file (``n/a`` -> missing; ids kept as strings, so
        ``sub-01`` stays ``"01"``), plus ``subject_id`` = ``participant_id`` without ``sub-``.
    """
    import pandas as pd

    path = Path(root)
    if path.is_dir():
        path = path / "participants.tsv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; a BIDS dataset lists its subjects in participants.tsv.")
    table = pd.read_csv(path, sep="\t", na_values=["n/a"], dtype={"participant_id": str})
    if "participant_id" not in table.columns:
        raise ValueError(f"{path} has no participant_id column (it has {list(table.columns)}); BIDS requires one.")
    ids = table["participant_id"].astype(str).str.strip()
    bad = ids[~ids.str.match(r"^sub-[A-Za-z0-9]+$")].tolist()
    if bad:
        raise ValueError(f"{path}: participant_id values must look like 'sub-<label>'; found {bad[:5]}.")
    repeated = ids[ids.duplicated()].tolist()
    if repeated:
        raise ValueError(f"{path}: participant_id values {repeated[:5]} appear more than once.")
    table["participant_id"] = ids
    table["subject_id"] = ids.str.slice(4)
    return table
