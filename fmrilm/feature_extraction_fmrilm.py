"""``FmriFeatureExtractor``: raw ROI time series in, normalised fixed-length tensors out.

A scan is an array shaped **(time, rois)** sampled every ``tr`` seconds. For each scan the feature
extractor, in this order,

1. validates it (rank, orientation, ROI count, dtype, length) and casts it to float64;
2. refuses NaN/Inf, or fills them by linear interpolation over time (``nan_policy="interpolate"``);
3. resamples it from ``tr`` to ``target_tr`` on the grid ``t_k = k * target_tr`` that spans the same
   duration (never extrapolating), with an anti-aliasing low-pass when downsampling;
4. normalises every ROI over all real time points of the resampled scan;
5. crops or zero-pads it to ``max_timepoints`` (one scan may give several samples with
   ``crop_strategy="sliding"``).

Resampling is one linear map per ``(n_timepoints, tr, target_tr)``: a Kaiser-windowed sinc
evaluated at the exact output times (no rational approximation of the TR ratio), with cutoff at the
lower of the two Nyquist frequencies (the new Nyquist ``0.5 / target_tr`` Hz when downsampling, the
source Nyquist when upsampling, where it is band-limited interpolation through the samples rather
than an extra low-pass), and odd reflection about the first and last samples at the edges. Each row
is corrected to reproduce constants and linear drifts exactly. From TR 0.72 s to 2 s it passes
0-0.2 Hz within 0.01 dB and removes 0.3 Hz by 63 dB and 0.4 Hz by 97 dB (plain linear
interpolation keeps 0.4 Hz at -2 dB, folded to 0.1 Hz). Edge effects: odd reflection pins the
resampled signal to the first input sample (and to the last one where the grids end together), so
power above the new Nyquist is fully removed only from about ``KERNEL_HALF_WIDTH_PERIODS`` output
samples inside each end.

The map is banded; it is built once, cached, and applied to all scans of a batch that share
``(n_timepoints, tr)`` at once, as single-threaded dense matrix products over row blocks. With
``anti_alias=False`` it is plain linear interpolation, as in the official fMRI-LM code (kept to
reproduce its results).

This module imports only numpy, scipy, the standard library and transformers (torch only through
transformers, for ``return_tensors="pt"``), so ``save_pretrained`` can ship it as remote code.
"""

from __future__ import annotations

import functools
import math
import numbers
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import scipy.sparse
from transformers import BatchFeature, FeatureExtractionMixin

__all__ = ["FmriFeatureExtractor"]

NORMALIZATIONS = ("robust_roi", "zscore_roi", "cohort", "none")
CROP_STRATEGIES = ("start", "center", "random", "sliding")
NAN_POLICIES = ("raise", "interpolate")
RETURN_TENSORS = (None, "np", "pt")

#: Half width of the anti-aliasing kernel, in periods of the coarser of the two grids.
KERNEL_HALF_WIDTH_PERIODS = 12
#: Shape parameter of the Kaiser window. With the half width above, the map passes 0-0.2 Hz within
#: 0.01 dB and attenuates 0.3 Hz and above by more than 60 dB (TR 0.72 s -> 2 s).
KAISER_BETA = 8.0
#: Two TRs closer than this (relative) are equal: the scan is not resampled.
SAME_TR_RTOL = 1e-9
#: A ROI whose spread (IQR or std) is at most this fraction of its location (median or mean) is
#: constant: what resampling leaves of a constant is float64 rounding, about 1e-15 relative, while
#: any real signal, even stored in float32, varies by more than 1e-7 relative.
CONSTANT_RTOL = 1e3 * float(np.finfo(np.float64).eps)
#: Largest m * n * k of a matrix product that OpenBLAS (numpy's BLAS) runs on one thread.
_SINGLE_THREAD_PRODUCT_SIZE = 4 * 65536
#: Output rows per block of the resampling map (8 rows suit the BLAS micro-kernels and keep the
#: zeros multiplied per block low).
_ROWS_PER_BLOCK = 8
#: Keys that transformers itself writes into a saved feature extractor config.
_HF_BOOKKEEPING_KEYS = ("feature_extractor_type", "auto_map", "processor_class")
#: At most this many indices are listed in an error or warning message.
_MAX_LISTED = 10


# --------------------------------------------------------------------------------------------------
# Resampling
# --------------------------------------------------------------------------------------------------


def same_tr(tr: float, target_tr: float) -> bool:
    """Whether ``tr`` equals ``target_tr`` within ``SAME_TR_RTOL`` (relative)."""
    return abs(tr - target_tr) <= SAME_TR_RTOL * target_tr


def resampled_length(n_timepoints: int, tr: float, target_tr: float) -> int:
    """Points of the grid ``t_k = k * target_tr`` within ``[0, (n_timepoints - 1) * tr]`` seconds.

    That is ``floor((n_timepoints - 1) * tr / target_tr) + 1`` (a relative tolerance of 1e-9 keeps
    an exact multiple such as 1201 TRs of 0.72 s -> 433 points of 2 s from losing its last point to
    rounding). ``n_timepoints`` when the TRs are equal.
    """
    if same_tr(tr, target_tr):
        return n_timepoints
    span = (n_timepoints - 1) * tr / target_tr
    return math.floor(span + SAME_TR_RTOL * max(1.0, span)) + 1


@dataclass(frozen=True)
class ResamplingPlan:
    """A banded linear map from ``n_in`` samples to ``n_out`` samples, stored as dense row blocks.

    ``blocks[i] = (row_start, row_stop, col_start, col_stop, weights)``: output rows
    ``row_start:row_stop`` depend only on input rows ``col_start:col_stop`` through ``weights``
    (shape ``(row_stop - row_start, col_stop - col_start)``, float64, read-only).
    """

    n_in: int
    n_out: int
    blocks: tuple[tuple[int, int, int, int, np.ndarray], ...]

    def apply(self, values: np.ndarray) -> np.ndarray:
        """Resample ``values`` (n_in, channels) float64 along axis 0 -> (n_out, channels) float64.

        Each block multiplies the channels in chunks small enough (``_SINGLE_THREAD_PRODUCT_SIZE``)
        that BLAS runs every product on the calling thread, through one batched ``np.matmul`` call
        per block. Feature extraction usually runs in several data-loading processes at once;
        there, multi-threaded BLAS oversubscribes the cores and was measured up to 60x slower,
        while on an idle machine the single-threaded products cost about 25% more.
        """
        n_channels = values.shape[1]
        out = np.empty((self.n_out, n_channels), dtype=np.float64)
        for row_start, row_stop, col_start, col_stop, weights in self.blocks:
            width = max(8, _SINGLE_THREAD_PRODUCT_SIZE // weights.size)
            batched = n_channels // width * width
            if batched:
                chunks = values[col_start:col_stop, :batched].reshape(col_stop - col_start, -1, width)
                out_chunks = out[row_start:row_stop, :batched].reshape(row_stop - row_start, -1, width)
                np.matmul(weights, chunks.transpose(1, 0, 2), out=out_chunks.transpose(1, 0, 2))
            if batched < n_channels:
                np.matmul(weights, values[col_start:col_stop, batched:], out=out[row_start:row_stop, batched:])
        return out

    def dense(self) -> np.ndarray:
        """The whole map as a dense (n_out, n_in) matrix (for inspection and tests)."""
        matrix = np.zeros((self.n_out, self.n_in))
        for row_start, row_stop, col_start, col_stop, weights in self.blocks:
            matrix[row_start:row_stop, col_start:col_stop] = weights
        return matrix


def _windowed_sinc_taps(n_in: int, tr: float, target_tr: float, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Input sample indices (n_out, n_taps) and weights (n_out, n_taps) of the anti-aliasing kernel.

    The kernel is ``sinc(2 * f_c * lag) * kaiser(lag / half_width)`` with ``f_c`` (Hz) the lower of
    the two Nyquist frequencies and ``lag`` (s) the time from the input sample to the output time.
    Indices may fall outside ``[0, n_in)``; ``_fold_edges`` maps them back.
    """
    period_s = max(tr, target_tr)
    cutoff_hz = 0.5 / period_s
    # A scan shorter than the kernel gets a kernel as long as the scan (only tiny scans at a TR well
    # above target_tr are concerned): odd reflection can then still supply every tap.
    half_width_s = min(KERNEL_HALF_WIDTH_PERIODS * period_s, (n_in - 1) * tr)
    half_taps = math.floor(half_width_s / tr + SAME_TR_RTOL)
    centre = np.arange(n_out) * (target_tr / tr)  # output times, in input samples
    taps = np.floor(centre).astype(np.int64)[:, None] + np.arange(-half_taps, half_taps + 2)
    lag_s = (centre[:, None] - taps) * tr
    relative_lag = lag_s / half_width_s
    inside = np.abs(relative_lag) <= 1.0
    window = np.where(inside, np.i0(KAISER_BETA * np.sqrt(np.clip(1.0 - relative_lag**2, 0.0, None))), 0.0)
    weights = np.sinc(2.0 * cutoff_hz * lag_s) * window
    weights /= weights.sum(axis=1, keepdims=True)
    return taps, _with_exact_moments(weights, window / window.sum(axis=1, keepdims=True), lag_s / tr)


def _with_exact_moments(weights: np.ndarray, window: np.ndarray, lag: np.ndarray) -> np.ndarray:
    """Correct each row of ``weights`` so that it sums to 1 and its first moment in ``lag`` is 0.

    A windowed sinc sampled at a fractional offset misses both by its ripple, so a constant or a
    linear drift would come out slightly wrong (by about 1e-7 relative). The smallest smooth
    correction, ``window * (a + b * lag)`` per row, makes both exact; it is far too small to change
    the frequency response.
    """
    s0, s1, s2 = (np.sum(window * lag**power, axis=1) for power in range(3))
    m0, m1 = weights.sum(axis=1), np.sum(weights * lag, axis=1)
    determinant = s0 * s2 - s1 * s1
    a = ((1.0 - m0) * s2 + m1 * s1) / determinant
    b = (-m1 * s0 - (1.0 - m0) * s1) / determinant
    return weights + window * (a[:, None] + b[:, None] * lag)


def _linear_taps(n_in: int, tr: float, target_tr: float, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and weights (n_out, 2) of plain linear interpolation (the official code's method)."""
    centre = np.arange(n_out) * (target_tr / tr)
    left = np.clip(np.floor(centre).astype(np.int64), 0, n_in - 2)
    fraction = np.clip(centre - left, 0.0, 1.0)
    taps = np.stack([left, left + 1], axis=1)
    weights = np.stack([1.0 - fraction, fraction], axis=1)
    return taps, weights


def _fold_edges(taps: np.ndarray, weights: np.ndarray, n_in: int) -> scipy.sparse.csr_array:
    """Sparse (n_out, n_in) map from taps, with out-of-range samples given by odd reflection.

    Odd reflection about the end samples (``x[-j] = 2 x[0] - x[j]``, ``x[last + j] = 2 x[last] -
    x[last - j]``) continues the signal without a step or a kink in its trend, so a constant or a
    linear drift is resampled exactly up to the edges.
    """
    n_out = taps.shape[0]
    last = n_in - 1
    below, above = taps < 0, taps > last
    outside = below | above
    mirrored = np.clip(np.where(below, -taps, np.where(above, 2 * last - taps, taps)), 0, last)
    anchor = np.where(below, 0, last)
    rows = np.broadcast_to(np.arange(n_out)[:, None], taps.shape)
    matrix = scipy.sparse.coo_array(
        (
            np.concatenate([np.where(outside, -weights, weights).ravel(), 2.0 * weights[outside]]),
            (np.concatenate([rows.ravel(), rows[outside]]), np.concatenate([mirrored.ravel(), anchor[outside]])),
        ),
        shape=(n_out, n_in),
    ).tocsr()
    matrix.sum_duplicates()
    matrix.eliminate_zeros()
    return matrix


@functools.lru_cache(maxsize=64)
def resampling_plan(n_in: int, tr: float, target_tr: float, anti_alias: bool = True) -> ResamplingPlan | None:
    """The cached map that resamples ``n_in`` samples at ``tr`` s to ``target_tr`` s (None: no-op).

    ``anti_alias=True``: Kaiser-windowed sinc (see the module docstring); ``False``: linear
    interpolation. The output has ``resampled_length(n_in, tr, target_tr)`` samples.
    """
    n_out = resampled_length(n_in, tr, target_tr)
    if same_tr(tr, target_tr) or n_in < 2:
        return None
    taps, weights = (_windowed_sinc_taps if anti_alias else _linear_taps)(n_in, tr, target_tr, n_out)
    matrix = _fold_edges(taps, weights, n_in)
    first_column = np.minimum.reduceat(matrix.indices, matrix.indptr[:-1])
    stop_column = np.maximum.reduceat(matrix.indices, matrix.indptr[:-1]) + 1
    blocks = []
    for row_start in range(0, n_out, _ROWS_PER_BLOCK):
        row_stop = min(row_start + _ROWS_PER_BLOCK, n_out)
        col_start = int(first_column[row_start:row_stop].min())
        col_stop = int(stop_column[row_start:row_stop].max())
        block = np.ascontiguousarray(matrix[row_start:row_stop, col_start:col_stop].toarray())
        block.flags.writeable = False
        blocks.append((row_start, row_stop, col_start, col_stop, block))
    return ResamplingPlan(n_in=n_in, n_out=n_out, blocks=tuple(blocks))


# --------------------------------------------------------------------------------------------------
# Gaps, statistics, crops
# --------------------------------------------------------------------------------------------------


def fill_gaps_linear(values: np.ndarray, finite: np.ndarray) -> np.ndarray:
    """Fill the entries of ``values`` (time, rois) where ``finite`` is False, per ROI, over time.

    Interior gaps get linear interpolation between the nearest finite samples before and after;
    leading and trailing gaps get the nearest finite sample. Every column must hold at least one
    finite value. Returns a new float64 array.
    """
    n_time = values.shape[0]
    time = np.arange(n_time)[:, None]
    previous = np.maximum.accumulate(np.where(finite, time, -1), axis=0)
    following = np.minimum.accumulate(np.where(finite, time, n_time)[::-1], axis=0)[::-1]
    previous_or_next = np.where(previous >= 0, previous, following)
    following_or_previous = np.where(following < n_time, following, previous)
    before = np.take_along_axis(values, previous_or_next, axis=0).astype(np.float64)
    after = np.take_along_axis(values, following_or_previous, axis=0).astype(np.float64)
    gap = following_or_previous - previous_or_next
    fraction = np.where(gap > 0, (time - previous_or_next) / np.maximum(gap, 1), 0.0)
    return np.where(finite, values, before + fraction * (after - before))


def _quantile_of_sorted(sorted_columns: np.ndarray, probability: float) -> np.ndarray:
    """Linear-interpolation quantile (numpy's default method) of columns sorted along axis 0."""
    position = probability * (sorted_columns.shape[0] - 1)
    low = math.floor(position)
    high = min(low + 1, sorted_columns.shape[0] - 1)
    fraction = position - low
    return sorted_columns[low] + fraction * (sorted_columns[high] - sorted_columns[low])


def roi_location_scale(values: np.ndarray, normalization: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-column location and spread of ``values`` (time, channels) over time.

    ``robust_roi``: median and interquartile range (numpy's linear quantiles);
    ``zscore_roi``: mean and standard deviation (ddof=0). Both shaped (channels,).
    """
    if normalization == "robust_roi":
        ordered = np.sort(values, axis=0)
        upper, lower = _quantile_of_sorted(ordered, 0.75), _quantile_of_sorted(ordered, 0.25)
        return _quantile_of_sorted(ordered, 0.5), upper - lower
    if normalization == "zscore_roi":
        return values.mean(axis=0), values.std(axis=0)
    raise ValueError(f"roi_location_scale handles 'robust_roi' and 'zscore_roi', not {normalization!r}")


def crop_starts(n_time: int, length: int, strategy: str, stride: int, rng: np.random.Generator | None) -> list[int]:
    """First time point of each window of ``length`` taken from a scan of ``n_time`` points.

    A scan no longer than ``length`` gives one window starting at 0 (padded at the end by the
    caller). ``sliding`` gives windows every ``stride`` points and a last one ending at the scan's
    end, so no time point is dropped.
    """
    spare = n_time - length
    if strategy == "random":
        return [int(rng.integers(0, max(spare, 0) + 1))]
    if spare <= 0:
        return [0]
    if strategy == "start":
        return [0]
    if strategy == "center":
        return [spare // 2]
    starts = list(range(0, spare, stride))
    return starts + [spare]


# --------------------------------------------------------------------------------------------------
# Input coercion
# --------------------------------------------------------------------------------------------------


def _is_torch_tensor(obj: Any) -> bool:
    """True for a torch.Tensor, without importing torch (a tensor implies torch is imported)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


def _listed(indices: Sequence[int] | np.ndarray) -> str:
    """``[1, 2, 3]``, shortened to the first few with the total when long."""
    indices = [int(i) for i in indices]
    if len(indices) <= _MAX_LISTED:
        return str(indices)
    return f"[{', '.join(map(str, indices[:_MAX_LISTED]))}, ... ({len(indices)} in all)]"


def _split_scans(fmri: Any) -> list[Any]:
    """One scan or a list of scans -> list of scans (each still in the caller's type)."""
    if fmri is None:
        raise ValueError("No fMRI data given (got None): pass one (time, rois) array or a list of them.")
    if isinstance(fmri, (str, bytes)):
        raise ValueError(
            f"fMRI data must be numbers shaped (time, rois), got a {type(fmri).__name__}: pass a numpy "
            "array, a torch tensor or a nested list of numbers."
        )
    if isinstance(fmri, (list, tuple)):
        if len(fmri) == 0:
            raise ValueError("Got an empty list of scans: pass at least one (time, rois) array.")
        first = fmri[0]
        if isinstance(first, np.ndarray) or _is_torch_tensor(first):
            return list(fmri)
        if isinstance(first, (list, tuple)) and len(first) > 0:
            inner = first[0]
            if isinstance(inner, (list, tuple, np.ndarray)) or _is_torch_tensor(inner):
                return list(fmri)
        return [fmri]  # one scan written as a nested list of numbers
    return [fmri]


def _scan_label(index: int, n_scans: int) -> str:
    return "the scan" if n_scans == 1 else f"scan {index} (of {n_scans})"


def _as_numeric_array(scan: Any, label: str) -> np.ndarray:
    """A scan as a numpy array of integers or floats, refusing anything else with a clear message."""
    if _is_torch_tensor(scan):
        torch = sys.modules["torch"]
        tensor = scan.detach().cpu()
        if tensor.is_floating_point() and tensor.dtype not in (torch.float16, torch.float32, torch.float64):
            tensor = tensor.double()  # bfloat16 and the float8 types have no numpy equivalent
        array = tensor.numpy()
    else:
        try:
            array = np.asarray(scan)
        except (ValueError, TypeError) as error:
            raise ValueError(
                f"{label} could not be read as a (time, rois) array of numbers ({error}). Pass a 2-D numpy "
                "array, a torch tensor, or a rectangular nested list (every row as long as the others)."
            ) from None
    kind = array.dtype.kind
    if kind == "b":
        raise ValueError(
            f"{label} holds booleans, not a BOLD signal. If that is really meant, cast it first, e.g. "
            "scan.astype('float32')."
        )
    if kind not in "iuf":
        raise ValueError(
            f"{label} holds non-numeric data (dtype {array.dtype}): expected real numbers (float16/32/64 "
            "or integers) shaped (time, rois). Convert it with np.asarray(scan, dtype='float32')."
        )
    return array


def _tr_value(value: Any, label: str) -> float:
    if _is_torch_tensor(value) or (isinstance(value, np.ndarray) and value.ndim == 0):
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{label} must be a number of seconds, got {value!r} ({type(value).__name__}).")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{label} must be a positive, finite number of seconds, got {value!r}.")
    return value


def _tr_list(tr: Any, n_scans: int) -> list[float]:
    """``tr`` (one number, or one per scan) -> a list of ``n_scans`` positive finite floats."""
    if tr is None:
        raise ValueError(
            "tr (the repetition time in seconds) is required: pass e.g. tr=0.72, or one per scan, "
            "tr=[0.72, 2.0, ...]. The scans are resampled from it to target_tr."
        )
    if _is_torch_tensor(tr):
        tr = tr.detach().cpu().numpy()
    if isinstance(tr, np.ndarray) and tr.ndim == 0:
        tr = tr.item()
    if isinstance(tr, (list, tuple, np.ndarray)):
        if len(tr) != n_scans:
            raise ValueError(
                f"Got {len(tr)} TRs for {n_scans} scan(s): pass one tr per scan, or a single number "
                "shared by all scans."
            )
        return [_tr_value(value, f"tr[{index}]") for index, value in enumerate(tr)]
    return [_tr_value(tr, "tr")] * n_scans


# --------------------------------------------------------------------------------------------------
# The feature extractor
# --------------------------------------------------------------------------------------------------


@dataclass
class _ResampledGroup:
    """Scans sharing (n_timepoints, tr), resampled together: ``values`` is (n_out, len(scans) * n_rois)."""

    scans: list[int]
    values: np.ndarray


class FmriFeatureExtractor(FeatureExtractionMixin):
    r"""Turns raw fMRI ROI time series into normalised, fixed-length model inputs.

    Args:
        n_rois: ROIs per scan (atlas regions), the second axis of every input.
        target_tr: repetition time in seconds that every scan is resampled to.
        max_timepoints: output length in TRs of ``target_tr``; a multiple of ``patch_size``.
        patch_size: TRs per model token; scans shorter than this after resampling are refused.
        normalization: ``"robust_roi"`` (per ROI: (x - median) / IQR over time), ``"zscore_roi"``
            (per ROI: (x - mean) / std over time, ddof=0), ``"cohort"`` (one scalar map
            (x - m) / q fitted by :meth:`fit`, the official code's "robust" normalisation) or
            ``"none"``. Statistics use all real time points of the resampled scan, before cropping.
        crop_strategy: how a scan longer than ``max_timepoints`` is cut: ``"start"``, ``"center"``,
            ``"random"`` (seeded) or ``"sliding"`` (several windows per scan, see ``window_stride``).
        window_stride: TRs between sliding windows (default ``max_timepoints // 2``).
        seed: seed of the random crops; each call draws from a fresh generator seeded with it, so a
            call is reproducible. ``None`` draws fresh entropy every call.
        nan_policy: ``"raise"`` refuses NaN/Inf; ``"interpolate"`` fills them per ROI by linear
            interpolation over time (nearest valid value at the edges).
        anti_alias: low-pass (Kaiser-windowed sinc) resampling; ``False`` reproduces the official
            code's plain linear interpolation, which aliases power above the new Nyquist.
        atlas: name of the atlas defining the ROIs (metadata saved with the checkpoint).
        roi_names: one name per ROI, in atlas order (metadata saved with the checkpoint).
        cohort_median, cohort_iqr: the cohort statistics set by :meth:`fit` (scalars).

    Calling it returns a :class:`~transformers.BatchFeature` with ``fmri_values``
    (batch, max_timepoints, n_rois) float32 and ``fmri_mask`` (batch, max_timepoints) int64 (1 = real
    time point, 0 = padding), plus ``scan_index`` (batch,) int64 with ``crop_strategy="sliding"``.

    Example:

    ```python
    >>> import numpy as np
    >>> from fmrilm import FmriFeatureExtractor
    >>> fe = FmriFeatureExtractor(n_rois=94, max_timepoints=160)
    >>> scans = [np.random.default_rng(0).normal(size=(1200, 94)).astype("float32")]
    >>> batch = fe(scans, tr=0.72, return_tensors="np")
    >>> batch["fmri_values"].shape, batch["fmri_mask"].shape
    ((1, 160, 94), (1, 160))

    ```
    """

    model_input_names: ClassVar[list[str]] = ["fmri_values", "fmri_mask"]

    def __init__(
        self,
        n_rois: int = 94,
        target_tr: float = 2.0,
        max_timepoints: int = 160,
        patch_size: int = 16,
        normalization: str = "robust_roi",
        crop_strategy: str = "start",
        window_stride: int | None = None,
        seed: int | None = 0,
        nan_policy: str = "raise",
        anti_alias: bool = True,
        atlas: str | None = None,
        roi_names: Sequence[str] | None = None,
        cohort_median: float | None = None,
        cohort_iqr: float | None = None,
        **kwargs: Any,
    ) -> None:
        unknown = sorted(set(kwargs) - set(_HF_BOOKKEEPING_KEYS))
        if unknown:
            raise TypeError(
                f"FmriFeatureExtractor got unexpected argument(s) {unknown}. Accepted: n_rois, target_tr, "
                "max_timepoints, patch_size, normalization, crop_strategy, window_stride, seed, nan_policy, "
                "anti_alias, atlas, roi_names, cohort_median, cohort_iqr."
            )
        kwargs.pop("feature_extractor_type", None)  # written by to_dict(), implied by the class
        super().__init__(**kwargs)
        self.n_rois = _positive_int(n_rois, "n_rois")
        self.target_tr = _tr_value(target_tr, "target_tr")
        self.patch_size = _positive_int(patch_size, "patch_size")
        self.max_timepoints = _positive_int(max_timepoints, "max_timepoints")
        if self.max_timepoints % self.patch_size:
            raise ValueError(
                f"max_timepoints ({self.max_timepoints}) must be a multiple of patch_size ({self.patch_size}): "
                f"use e.g. max_timepoints={max(self.max_timepoints // self.patch_size, 1) * self.patch_size}."
            )
        self.normalization = _choice(normalization, NORMALIZATIONS, "normalization")
        self.crop_strategy = _choice(crop_strategy, CROP_STRATEGIES, "crop_strategy")
        self.window_stride = None if window_stride is None else self._checked_stride(window_stride)
        self.seed = _checked_seed(seed)
        self.nan_policy = _choice(nan_policy, NAN_POLICIES, "nan_policy")
        if not isinstance(anti_alias, (bool, np.bool_)):
            raise ValueError(f"anti_alias must be True or False, got {anti_alias!r}.")
        self.anti_alias = bool(anti_alias)
        if atlas is not None and not isinstance(atlas, str):
            raise ValueError(f"atlas must be a name (str) or None, got {type(atlas).__name__}.")
        self.atlas = atlas
        self.roi_names = None if roi_names is None else self._checked_roi_names(roi_names)
        if (cohort_median is None) != (cohort_iqr is None):
            raise ValueError("cohort_median and cohort_iqr go together: give both (as fit() sets them) or neither.")
        self.cohort_median = None if cohort_median is None else _finite_float(cohort_median, "cohort_median")
        self.cohort_iqr = None if cohort_iqr is None else _finite_float(cohort_iqr, "cohort_iqr")
        if self.cohort_iqr is not None and self.cohort_iqr <= 0:
            raise ValueError(f"cohort_iqr must be > 0, got {self.cohort_iqr}: refit with fit() on varied scans.")

    # ---- argument checks ------------------------------------------------------------------------

    def _checked_stride(self, stride: Any) -> int:
        stride = _positive_int(stride, "window_stride")
        if stride > self.max_timepoints:
            raise ValueError(
                f"window_stride ({stride}) must be at most max_timepoints ({self.max_timepoints}), otherwise "
                "sliding windows leave time points out; use e.g. window_stride=max_timepoints // 2."
            )
        return stride

    def _checked_roi_names(self, roi_names: Sequence[str]) -> list[str]:
        if isinstance(roi_names, str) or not all(isinstance(name, str) for name in roi_names):
            raise ValueError("roi_names must be a sequence of strings, one per ROI in atlas order.")
        names = list(roi_names)
        if len(names) != self.n_rois:
            raise ValueError(f"roi_names has {len(names)} names but n_rois is {self.n_rois}: give one name per ROI.")
        return names

    @property
    def effective_window_stride(self) -> int:
        """TRs between sliding windows: ``window_stride`` or, when None, ``max_timepoints // 2``."""
        return self.window_stride if self.window_stride is not None else max(1, self.max_timepoints // 2)

    # ---- the pipeline ---------------------------------------------------------------------------

    def _validated_scan(self, scan: Any, tr: float, label: str) -> np.ndarray:
        """Checks of step 1 and the NaN policy of step 2; returns a (time, n_rois) numeric array."""
        array = _as_numeric_array(scan, label)
        if array.ndim != 2:
            hint = {
                1: " One scan given as a list of rows should be stacked first (np.stack(rows)).",
                3: " For a batch, pass a list of 2-D arrays (e.g. list(x)).",
            }.get(array.ndim, "")
            raise ValueError(
                f"{label} has {array.ndim} dimension(s) (shape {array.shape}); expected 2, shaped "
                f"(time, rois) with rois = {self.n_rois}.{hint}"
            )
        n_time, n_rois = array.shape
        if n_time == self.n_rois and n_rois != self.n_rois:
            raise ValueError(
                f"{label} is shaped {array.shape}, which looks like (rois, time): inputs must be "
                f"(time, rois) with {self.n_rois} ROIs. Transpose it (scan.T)."
            )
        if n_rois != self.n_rois:
            raise ValueError(
                f"{label} has {n_rois} ROIs (shape {array.shape}) but this feature extractor expects "
                f"n_rois={self.n_rois}: use the same atlas, or a feature extractor built for {n_rois} ROIs."
            )
        if n_time == 0:
            raise ValueError(f"{label} has zero time points (shape {array.shape}): pass at least one patch of data.")
        n_resampled = resampled_length(n_time, tr, self.target_tr)
        if n_resampled < self.patch_size:
            raise ValueError(
                f"{label} is too short: {n_time} TRs of {tr:g} s span {(n_time - 1) * tr:g} s, which gives "
                f"{n_resampled} time point(s) at target_tr={self.target_tr:g} s; at least one patch of "
                f"{self.patch_size} points, i.e. {(self.patch_size - 1) * self.target_tr:g} s, is needed. "
                "Drop this scan or use a smaller patch_size."
            )
        if array.dtype.kind == "f":
            finite = np.isfinite(array)
            if not finite.all():
                array = self._handle_non_finite(array, finite, label)
        return array

    def _handle_non_finite(self, array: np.ndarray, finite: np.ndarray, label: str) -> np.ndarray:
        bad_time, bad_roi = np.nonzero(~finite)
        if self.nan_policy == "raise":
            raise ValueError(
                f"{label} contains {bad_time.size} NaN/Inf value(s) in ROI(s) {_listed(np.unique(bad_roi))} at "
                f"time point(s) {_listed(np.unique(bad_time))}. Clean the data, or pass "
                "nan_policy='interpolate' to fill the gaps by linear interpolation over time."
            )
        empty = np.flatnonzero(~finite.any(axis=0))
        if empty.size:
            raise ValueError(
                f"{label} has no finite value at all in ROI(s) {_listed(empty)}, so nothing can be "
                "interpolated there: drop those ROIs (use an atlas without empty regions) or fix the data."
            )
        return fill_gaps_linear(array, finite)

    def _resampled_groups(self, fmri: Any, tr: Any) -> tuple[list[_ResampledGroup], int]:
        """Steps 1-3 for every scan; scans sharing (n_timepoints, tr) are stacked and resampled together."""
        scans = _split_scans(fmri)
        trs = _tr_list(tr, len(scans))
        arrays = [
            self._validated_scan(scan, scan_tr, _scan_label(index, len(scans)))
            for index, (scan, scan_tr) in enumerate(zip(scans, trs))
        ]
        members: dict[tuple[int, float], list[int]] = {}
        for index, array in enumerate(arrays):
            members.setdefault((array.shape[0], trs[index]), []).append(index)
        groups = []
        for (n_time, scan_tr), indices in members.items():
            stacked = np.empty((n_time, len(indices) * self.n_rois), dtype=np.float64)
            for position, index in enumerate(indices):
                stacked[:, position * self.n_rois : (position + 1) * self.n_rois] = arrays[index]
            plan = resampling_plan(n_time, scan_tr, self.target_tr, self.anti_alias)
            groups.append(_ResampledGroup(indices, stacked if plan is None else plan.apply(stacked)))
        return groups, len(scans)

    def _normalisation_maps(
        self, group: _ResampledGroup, constant_rois: dict[int, np.ndarray]
    ) -> tuple[np.ndarray | float, np.ndarray | float]:
        """(location, inverse scale) of step 4 for a group: per channel arrays or scalars."""
        if self.normalization == "none":
            return 0.0, 1.0
        if self.normalization == "cohort":
            return self.cohort_median, 1.0 / self.cohort_iqr
        location, scale = roi_location_scale(group.values, self.normalization)
        constant = scale <= CONSTANT_RTOL * np.abs(location)
        inverse_scale = np.divide(1.0, scale, out=np.zeros_like(scale), where=~constant)
        if constant.any():
            for position, index in enumerate(group.scans):
                rois = np.flatnonzero(constant[position * self.n_rois : (position + 1) * self.n_rois])
                if rois.size:
                    constant_rois[index] = rois
        return location, inverse_scale

    def __call__(
        self,
        fmri: Any,
        tr: float | Sequence[float] | None = None,
        *,
        return_tensors: str | None = None,
        crop_strategy: str | None = None,
        seed: int | None = None,
        window_stride: int | None = None,
    ) -> BatchFeature:
        """Preprocess one scan (time, rois) or a list of scans into model inputs.

        Args:
            fmri: a (time, n_rois) array (numpy, torch, nested list; float or integer), or a list of them.
            tr: repetition time in seconds: one number for all scans or one per scan.
            return_tensors: ``None`` or ``"np"`` (numpy arrays) or ``"pt"`` (torch tensors).
            crop_strategy, seed, window_stride: override the instance's settings for this call.

        Returns:
            BatchFeature with ``fmri_values`` (batch, max_timepoints, n_rois) float32, ``fmri_mask``
            (batch, max_timepoints) int64, and with sliding windows ``scan_index`` (batch,) int64.
            ``batch`` is the number of scans, or of windows with ``crop_strategy="sliding"``.
        """
        if return_tensors not in RETURN_TENSORS:
            raise ValueError(f"return_tensors must be one of {RETURN_TENSORS}, got {return_tensors!r}.")
        strategy = (
            self.crop_strategy if crop_strategy is None else _choice(crop_strategy, CROP_STRATEGIES, "crop_strategy")
        )
        stride = self.effective_window_stride if window_stride is None else self._checked_stride(window_stride)
        seed = self.seed if seed is None else _checked_seed(seed)
        if self.normalization == "cohort" and self.cohort_median is None:
            raise ValueError(
                "normalization='cohort' needs cohort statistics: call fit(scans, tr) on the training cohort "
                "first (or load a feature extractor saved after fitting)."
            )

        groups, n_scans = self._resampled_groups(fmri, tr)
        per_scan: list[tuple[np.ndarray, Any, Any]] = [None] * n_scans  # type: ignore[list-item]
        constant_rois: dict[int, np.ndarray] = {}
        for group in groups:
            location, inverse_scale = self._normalisation_maps(group, constant_rois)
            for position, index in enumerate(group.scans):
                channels = slice(position * self.n_rois, (position + 1) * self.n_rois)
                per_scan[index] = (
                    group.values[:, channels],
                    location[channels] if isinstance(location, np.ndarray) else location,
                    inverse_scale[channels] if isinstance(inverse_scale, np.ndarray) else inverse_scale,
                )
        if constant_rois:
            details = "; ".join(
                f"{_scan_label(i, n_scans)}: ROI(s) {_listed(r)}" for i, r in sorted(constant_rois.items())
            )
            spread = "IQR" if self.normalization == "robust_roi" else "standard deviation"
            warnings.warn(
                f"Constant ROI time series (zero {spread}) cannot be normalised and are set to 0: {details}.",
                UserWarning,
                stacklevel=2,
            )

        rng = np.random.default_rng(seed) if strategy == "random" else None
        windows = [
            (index, start)
            for index, (values, _, _) in enumerate(per_scan)
            for start in crop_starts(values.shape[0], self.max_timepoints, strategy, stride, rng)
        ]
        fmri_values = np.zeros((len(windows), self.max_timepoints, self.n_rois), dtype=np.float32)
        fmri_mask = np.zeros((len(windows), self.max_timepoints), dtype=np.int64)
        with np.errstate(over="ignore"):  # an overflow to inf is reported just below
            for sample, (index, start) in enumerate(windows):
                values, location, inverse_scale = per_scan[index]
                segment = values[start : start + self.max_timepoints]
                fmri_values[sample, : segment.shape[0]] = (segment - location) * inverse_scale
                fmri_mask[sample, : segment.shape[0]] = 1
        if not np.isfinite(fmri_values).all():
            raise ValueError(
                "The normalised values overflow float32 (|x| > 3.4e38); the input is far outside the range "
                "of BOLD signals: check its scale, or use a normalization other than 'none'."
            )

        data = {"fmri_values": fmri_values, "fmri_mask": fmri_mask}
        if strategy == "sliding":
            data["scan_index"] = np.array([index for index, _ in windows], dtype=np.int64)
        return BatchFeature(data=data, tensor_type=return_tensors)

    def fit(self, fmri: Any, tr: float | Sequence[float] | None = None) -> FmriFeatureExtractor:
        """Fit the cohort statistics used by ``normalization="cohort"`` and return ``self``.

        Every scan is validated and resampled as in ``__call__``; each scan's per-ROI temporal means
        are pooled over all scans and ROIs; ``cohort_median`` is their median and ``cohort_iqr``
        their interquartile range (the official code's per-dataset "robust" statistics).
        """
        groups, _ = self._resampled_groups(fmri, tr)
        roi_means = np.concatenate([group.values.mean(axis=0) for group in groups])
        lower, median, upper = np.percentile(roi_means, [25.0, 50.0, 75.0])
        if not upper - lower > 0:
            raise ValueError(
                "The ROI means of these scans have zero interquartile range, so the cohort scale is "
                "undefined: fit on a cohort of real scans (with differing ROI baselines)."
            )
        self.cohort_median = float(median)
        self.cohort_iqr = float(upper - lower)
        return self


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def _finite_float(value: Any, name: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}.")
    return float(value)


def _checked_seed(seed: Any) -> int | None:
    if seed is None:
        return None
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}.")
    return int(seed)


def _choice(value: Any, options: tuple[str, ...], name: str) -> str:
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"Unknown {name} {value!r}: choose one of {', '.join(map(repr, options))}.")
    return value


FmriFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")
