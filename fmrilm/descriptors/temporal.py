"""Temporal and spectral features of each ROI's series, computed with the scan's real TR.

Every feature is computed per ROI from a native-TR (time, rois) series; :func:`network_means`
averages per-ROI values over each network. All frequencies use the sampling rate ``fs = 1 / tr``
of the scan itself (the official scripts assumed TR = 2 s for every scan: SPEC R8).

Preparation
-----------
1. **Scale.** If every ROI's temporal mean is positive and at least 10 times its temporal standard
   deviation (sample SD, ddof=1, of the raw series), the data are taken to be raw scanner
   intensities and each series becomes percent signal change, ``100 * (x - mean) / mean``; the
   returned scale is ``"percent"``. Otherwise the values are used as given (``"as_given"``: e.g.
   already z-scored or percent-change data). A single ROI with mean <= 0 (say an empty ROI filled
   with zeros) therefore keeps the whole scan ``"as_given"``.
2. **Detrend.** Each ROI's mean and least-squares linear trend over time are removed.

Definitions (``x`` = the prepared series of one ROI, ``T`` time points)
------------------------------------------------------------------------
- ``temporal_sd``: sample standard deviation (ddof=1) of ``x``. Units: the signal's units, i.e.
  percent signal change when the scale is ``"percent"``.
- Spectrum: ``P_k`` is the one-sided periodogram of ``x`` as a power spectral *density*
  (scipy's default ``scaling="density"``: ``2 |X_k|^2 tr / T`` for ``0 < f_k < Nyquist``,
  ``|X_k|^2 tr / T`` at the Nyquist frequency; units^2 / Hz) at the frequencies
  ``f_k = k / (T * tr)`` Hz. The *amplitude* is ``a_k = sqrt(P_k)`` (units / sqrt(Hz)). The DC bin
  (``k = 0``) is never used.
- ``alff`` (amplitude of low-frequency fluctuations): the mean of ``a_k`` over the bins with
  ``0.01 <= f_k <= 0.08`` Hz. Units: signal units / sqrt(Hz) (percent signal change / sqrt(Hz) for
  raw intensities).
  *Why a density:* with the amplitude scaling of REST/DPABI (``2 |X_k| / T``) the ALFF of a
  broadband signal falls as ``1 / sqrt(T)``, so scans of different lengths (1200 HCP volumes vs
  355 Greifswald ones) could not share one cohort z-score. The density makes ALFF independent of
  the duration and of the TR for broadband signals such as BOLD. For a sinusoid ``A cos(2 pi f t)``
  with ``f`` on a bin, ``a_k = A sqrt(T tr / 2)`` at that bin and 0 elsewhere, so its ALFF is
  ``A sqrt(T tr / 2) / n`` with ``n`` the number of bins in the band.
- ``falff`` (fractional ALFF): the sum of ``a_k`` over the ALFF band divided by the sum of ``a_k``
  over ``0 < f_k <= Nyquist``. Unitless, in [0, 1]; a pure in-band sinusoid gives 1. (Any constant
  scaling of the spectrum cancels, so this equals the REST/DPABI definition.)
- ``band_power_ratio``: ``sum P_k`` over ``0.01 <= f_k <= 0.1`` Hz divided by ``sum P_k`` over
  ``0.1 < f_k <= min(0.25, Nyquist)`` Hz (0.1 Hz belongs to the low band only). Unitless. The high
  band power is floored at ``1e-12`` times the ROI's total power, so a series with no high-band
  power at all (a pure low-frequency sinusoid) gets a large finite ratio (at most ``1e12``) instead
  of infinity.
- ``lag1_autocorrelation``: ``sum_t x_t x_{t+1} / sum_t x_t^2`` (the usual autocorrelation
  estimator; ``x`` has mean 0 after detrending). Unitless, in [-1, 1].
- ``outlier_fraction``: the fraction of time points with ``|z| > 3``, where ``z`` is ``x`` divided by
  its sample standard deviation (ddof=1). Unitless, in [0, 1].

Constant ROIs, and ROIs that are an exact linear trend (flat after detrending, up to rounding: an
RMS at most 1e-10 x the largest absolute value), get 0.0 for every feature: no NaN ever leaves this
module.

Limits (checked, with a :class:`ValueError` that says what to do)
------------------------------------------------------------------
- The scan must last at least :data:`MIN_DURATION_S` = 100 s (``T * tr``), so that the frequency
  resolution ``1 / (T * tr)`` resolves the 0.01 Hz band edge; the ALFF band then holds at least 7
  frequency bins and the ratio's low band at least 9.
- The ALFF band must lie below the Nyquist frequency ``0.5 / tr``: TR <= 6.25 s.
- The ratio's high band (0.1-0.25 Hz) needs at least one frequency bin, which fails when the
  Nyquist frequency is 0.1 Hz or less (TR >= 5 s) or barely above it. What then happens is the
  caller's choice: ``missing_band="raise"`` (the default) raises; ``missing_band="omit"`` leaves
  ``"band_power_ratio"`` out of the returned dict (all other features are still valid), so a caller
  can record that fallback.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

__all__ = [
    "ALFF_BAND_HZ",
    "MIN_DURATION_S",
    "OUTLIER_Z",
    "RATIO_FLOOR",
    "RATIO_HIGH_BAND_HZ",
    "RATIO_LOW_BAND_HZ",
    "TEMPORAL_FEATURES",
    "amplitude_spectrum",
    "batch_temporal_features",
    "detect_scale",
    "falff",
    "network_average_matrix",
    "network_means",
    "temporal_features",
]

#: ALFF band in Hz, both edges included.
ALFF_BAND_HZ = (0.01, 0.08)
#: Low band of the band power ratio in Hz, both edges included.
RATIO_LOW_BAND_HZ = (0.01, 0.1)
#: High band of the band power ratio in Hz: lower edge excluded, upper edge ``min(0.25, Nyquist)`` included.
RATIO_HIGH_BAND_HZ = (0.1, 0.25)
#: Shortest scan (seconds) whose frequency resolution resolves 0.01 Hz.
MIN_DURATION_S = 100.0
#: |z| above which a time point counts as an outlier.
OUTLIER_Z = 3.0
#: The ratio's high-band power is floored at this fraction of the total power.
RATIO_FLOOR = 1e-12
#: Raw intensities: every ROI's mean is at least this many temporal SDs.
RAW_MEAN_OVER_SD = 10.0

#: The keys of the dict returned by :func:`temporal_features`, in order.
TEMPORAL_FEATURES = (
    "temporal_sd",
    "alff",
    "falff",
    "band_power_ratio",
    "lag1_autocorrelation",
    "outlier_fraction",
)

# Relative tolerance for "a frequency bin lies on a band edge": rfftfreq computes k * (1 / (T * tr)),
# which can miss an edge such as 0.01 Hz by one unit in the last place.
_EDGE_TOLERANCE = 1e-9


# ============================================================================ validation
def _checked_tr(tr: object) -> float:
    if (
        isinstance(tr, bool)
        or not isinstance(tr, (int, float, np.integer, np.floating))
        or not math.isfinite(tr)
        or tr <= 0
    ):
        raise ValueError(f"tr={tr!r}: the repetition time must be a positive number of seconds (e.g. 0.72 or 2.0).")
    return float(tr)


def _checked_series(series: object, ndims: tuple[int, ...], what: str) -> np.ndarray:
    """``series`` as float64 with one of ``ndims`` dimensions and only finite values."""
    values = np.asarray(series, dtype=np.float64)
    if values.ndim not in ndims:
        layouts = {2: "(time, rois)", 3: "(scans, time, rois)"}
        expected = " or ".join(layouts[n] for n in ndims)
        raise ValueError(f"{what} must be a {expected} array, got shape {values.shape}.")
    if values.shape[-2] == 0 or values.shape[-1] == 0:
        raise ValueError(f"{what} is empty (shape {values.shape}); it needs time points and ROIs.")
    if not np.all(np.isfinite(values)):
        bad = np.argwhere(~np.isfinite(values))[0]
        raise ValueError(
            f"{what} contains NaN or infinite values (first at index {tuple(int(i) for i in bad)}); temporal "
            "features need finite series. Fill or drop the affected ROIs or time points first."
        )
    return values


def _check_duration(n_timepoints: int, tr: float) -> None:
    duration = n_timepoints * tr
    nyquist = 0.5 / tr
    if duration < MIN_DURATION_S:
        needed = math.ceil(MIN_DURATION_S / tr - 1e-9)
        raise ValueError(
            f"The scan has {n_timepoints} time points at TR {tr:g} s = {duration:g} s; temporal and spectral features "
            f"need at least {MIN_DURATION_S:g} s (here {needed} time points) so that the frequency resolution "
            f"1 / duration resolves the {ALFF_BAND_HZ[0]:g} Hz band edge (the ALFF band then holds at least 7 "
            "frequency bins). Use a longer scan."
        )
    if nyquist < ALFF_BAND_HZ[1]:
        raise ValueError(
            f"TR {tr:g} s gives a Nyquist frequency of {nyquist:g} Hz, below the top of the ALFF band "
            f"{ALFF_BAND_HZ[1]:g} Hz; ALFF/fALFF need TR <= {0.5 / ALFF_BAND_HZ[1]:g} s."
        )


def _band_mask(frequencies: np.ndarray, low: float, high: float, *, include_low: bool = True) -> np.ndarray:
    """Boolean mask of the frequencies in [low, high] (or (low, high]) with a tiny tolerance at the edges."""
    above = frequencies >= low * (1 - _EDGE_TOLERANCE) if include_low else frequencies > low * (1 + _EDGE_TOLERANCE)
    return above & (frequencies <= high * (1 + _EDGE_TOLERANCE))


# ============================================================================ preparation
def _detrend(values: np.ndarray) -> np.ndarray:
    """Remove the mean and least-squares linear trend along axis -2 (time) of a (..., T, R) array."""
    n_timepoints = values.shape[-2]
    ramp = np.arange(n_timepoints, dtype=np.float64) - (n_timepoints - 1) / 2.0
    centred = values - values.mean(axis=-2, keepdims=True)
    norm = float(ramp @ ramp)
    if norm == 0.0:
        return centred
    slope = np.einsum("t,...tr->...r", ramp, centred) / norm
    return centred - ramp[:, None] * slope[..., None, :]


def _detrend_or_zero(values: np.ndarray) -> np.ndarray:
    """:func:`_detrend`, with series that are constant (or exactly linear) up to rounding set to exactly 0.

    A constant series leaves rounding residue of order 1e-16 x its level after detrending; left in
    place, that residue would get a lag-1 autocorrelation of about 1 and arbitrary spectra. A series
    counts as flat when its detrended RMS is at most 1e-10 x its largest absolute value.
    """
    detrended = _detrend(values)
    rms = np.sqrt((detrended**2).mean(axis=-2))
    flat = rms <= 1e-10 * np.abs(values).max(axis=-2)
    return np.where(flat[..., None, :], 0.0, detrended)


def _raw_intensity_mask(values: np.ndarray) -> np.ndarray:
    """(...,) bool: which scans of a (..., T, R) array look like raw scanner intensities."""
    mean = values.mean(axis=-2)
    sd = values.std(axis=-2, ddof=1) if values.shape[-2] > 1 else np.zeros_like(mean)
    return np.all((mean > 0) & (mean >= RAW_MEAN_OVER_SD * sd), axis=-1)


def detect_scale(series: np.ndarray) -> str:
    """``"percent"`` if the (T, R) series look like raw scanner intensities, else ``"as_given"``.

    Raw intensities: every ROI's temporal mean is > 0 and >= 10 x its temporal SD (ddof=1).
    """
    values = _checked_series(series, (2,), "series")
    return "percent" if bool(_raw_intensity_mask(values)) else "as_given"


def _prepared(values: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Percent-scale the raw-intensity scans of a (B, T, R) array, then detrend; also return each scale."""
    raw = _raw_intensity_mask(values)
    if np.any(raw):
        values = values.copy()
        mean = values[raw].mean(axis=-2, keepdims=True)
        values[raw] = 100.0 * (values[raw] - mean) / mean
    return _detrend_or_zero(values), ["percent" if is_raw else "as_given" for is_raw in raw]


# ============================================================================ spectra
def _periodogram(detrended: np.ndarray, tr: float) -> tuple[np.ndarray, np.ndarray]:
    """Frequencies (F,) in Hz and one-sided power spectral density (..., F, R) in units^2/Hz of
    detrended (..., T, R) data, the DC bin dropped (scipy.signal.periodogram's default scaling)."""
    n_timepoints = detrended.shape[-2]
    spectrum = np.fft.rfft(detrended, axis=-2)
    density = (spectrum.real**2 + spectrum.imag**2) * (2.0 * tr / n_timepoints)
    if n_timepoints % 2 == 0:
        density[..., -1, :] /= 2.0  # the Nyquist bin has no negative-frequency twin
    frequencies = np.fft.rfftfreq(n_timepoints, d=tr)
    return frequencies[1:], density[..., 1:, :]


def amplitude_spectrum(series: np.ndarray, tr: float) -> tuple[np.ndarray, np.ndarray]:
    """One-sided amplitude spectral density of the linearly detrended series (no percent scaling).

    Args:
        series: (T, R) or (B, T, R) series.
        tr: repetition time in seconds.

    Returns:
        frequencies (F,) in Hz (``k / (T * tr)`` for ``k = 1 .. T // 2``, DC left out) and
        amplitudes ``sqrt(P_k)`` shaped (F, R) or (B, F, R), in series units / sqrt(Hz) (see the
        module docstring).
    """
    tr = _checked_tr(tr)
    values = _checked_series(series, (2, 3), "series")
    if values.shape[-2] < 2:
        raise ValueError(f"series has {values.shape[-2]} time point(s); a spectrum needs at least 2.")
    frequencies, density = _periodogram(_detrend_or_zero(values), tr)
    return frequencies, np.sqrt(density)


def _safe_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0.0 where the denominator is 0."""
    out = np.zeros(np.broadcast_shapes(numerator.shape, denominator.shape))
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _falff_from_amplitude(frequencies: np.ndarray, amplitude: np.ndarray) -> np.ndarray:
    in_band = _band_mask(frequencies, *ALFF_BAND_HZ)
    return _safe_ratio(amplitude[..., in_band, :].sum(axis=-2), amplitude.sum(axis=-2))


def falff(series: np.ndarray, tr: float) -> np.ndarray:
    """fALFF of each column of a (T, R) or (B, T, R) series -> (R,) or (B, R), unitless in [0, 1].

    Same definition and limits as in :func:`temporal_features` (the series is only detrended: fALFF
    does not depend on the scale). Constant columns give 0.0.
    """
    tr = _checked_tr(tr)
    values = _checked_series(series, (2, 3), "series")
    _check_duration(values.shape[-2], tr)
    frequencies, density = _periodogram(_detrend_or_zero(values), tr)
    return _falff_from_amplitude(frequencies, np.sqrt(density))


# ============================================================================ features
def batch_temporal_features(
    series: np.ndarray, tr: float, *, missing_band: Literal["raise", "omit"] = "raise"
) -> tuple[dict[str, np.ndarray], list[str]]:
    """:func:`temporal_features` for B scans of equal length and TR in one pass (one rfft).

    Args:
        series: (B, T, R) native-TR series.
        tr: repetition time in seconds, shared by all B scans.
        missing_band: what to do when the 0.1-0.25 Hz band has no frequency bin: ``"raise"`` or
            ``"omit"`` (leave ``"band_power_ratio"`` out).

    Returns:
        ({feature: (B, R) float64}, [scale of each scan]), keys as in :data:`TEMPORAL_FEATURES`.
    """
    tr = _checked_tr(tr)
    if missing_band not in ("raise", "omit"):
        raise ValueError(f"missing_band={missing_band!r}: use 'raise' or 'omit'.")
    values = _checked_series(series, (3,), "series")
    n_timepoints = values.shape[1]
    _check_duration(n_timepoints, tr)
    detrended, scales = _prepared(values)

    variance = (detrended**2).sum(axis=1) / (n_timepoints - 1)
    sd = np.sqrt(variance)
    frequencies, density = _periodogram(detrended, tr)
    amplitude = np.sqrt(density)
    alff_band = _band_mask(frequencies, *ALFF_BAND_HZ)
    features: dict[str, np.ndarray] = {
        "temporal_sd": sd,
        "alff": amplitude[:, alff_band, :].mean(axis=1),
        "falff": _falff_from_amplitude(frequencies, amplitude),
    }

    high_band = _band_mask(frequencies, RATIO_HIGH_BAND_HZ[0], min(RATIO_HIGH_BAND_HZ[1], 0.5 / tr), include_low=False)
    if high_band.any():
        low_power = density[:, _band_mask(frequencies, *RATIO_LOW_BAND_HZ), :].sum(axis=1)
        total_power = density.sum(axis=1)
        high_power = np.maximum(density[:, high_band, :].sum(axis=1), RATIO_FLOOR * total_power)
        features["band_power_ratio"] = _safe_ratio(low_power, high_power)
    elif missing_band == "raise":
        raise ValueError(
            f"The band power ratio needs power between {RATIO_HIGH_BAND_HZ[0]:g} and {RATIO_HIGH_BAND_HZ[1]:g} Hz, but TR "
            f"{tr:g} s (Nyquist {0.5 / tr:g} Hz) with {n_timepoints} time points has no frequency bin there. Scans with "
            "TR >= 5 s cannot measure it; pass missing_band='omit' to compute the other features without it."
        )

    lagged = (detrended[:, 1:, :] * detrended[:, :-1, :]).sum(axis=1)
    features["lag1_autocorrelation"] = _safe_ratio(lagged, (detrended**2).sum(axis=1))
    threshold = OUTLIER_Z * sd[:, None, :]
    outliers = (np.abs(detrended) > threshold) & (sd[:, None, :] > 0)
    features["outlier_fraction"] = outliers.mean(axis=1)
    return {key: features[key] for key in TEMPORAL_FEATURES if key in features}, scales


def temporal_features(
    series: np.ndarray, tr: float, *, missing_band: Literal["raise", "omit"] = "raise"
) -> tuple[dict[str, np.ndarray], str]:
    """Temporal and spectral features of each ROI of one scan (definitions in the module docstring).

    Args:
        series: (T, R) native-TR series (raw intensities, percent change or z-scores).
        tr: the scan's repetition time in seconds.
        missing_band: ``"raise"`` (default) or ``"omit"``: what to do when the 0.1-0.25 Hz band has no
            frequency bin (TR >= 5 s).

    Returns:
        ({"temporal_sd", "alff", "falff", "band_power_ratio", "lag1_autocorrelation",
        "outlier_fraction"}: each (R,) float64, scale) where scale is ``"percent"`` (raw intensities
        were converted to percent signal change) or ``"as_given"``.
    """
    values = _checked_series(series, (2,), "series")
    features, scales = batch_temporal_features(values[None], tr, missing_band=missing_band)
    return {key: value[0] for key, value in features.items()}, scales[0]


# ============================================================================ network averages
def network_average_matrix(network_indices: np.ndarray, n_networks: int, n_rois: int) -> np.ndarray:
    """(R, K) matrix whose column k averages the ROIs of network k."""
    indices = np.asarray(network_indices)
    if indices.ndim != 1 or indices.shape[0] != n_rois:
        raise ValueError(
            f"network_indices has shape {indices.shape}; expected ({n_rois},): one network index per ROI "
            "(AtlasSpec.network_indices())."
        )
    if isinstance(n_networks, bool) or not isinstance(n_networks, (int, np.integer)) or n_networks < 1:
        raise ValueError(f"n_networks={n_networks!r} must be a positive integer (len(atlas.network_names)).")
    if not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(f"network_indices must be integers, got dtype {indices.dtype}.")
    if indices.size and (indices.min() < 0 or indices.max() >= n_networks):
        raise ValueError(
            f"network_indices range from {indices.min()} to {indices.max()}; with n_networks={n_networks} they must "
            f"lie in 0..{n_networks - 1}."
        )
    counts = np.bincount(indices, minlength=n_networks)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        raise ValueError(
            f"Networks {empty.tolist()} have no ROI, so their mean is undefined; pass n_networks equal to the number "
            "of networks that actually occur, or fix network_indices."
        )
    onehot = np.zeros((n_rois, n_networks))
    onehot[np.arange(n_rois), indices] = 1.0
    return onehot / counts


def network_means(per_roi: np.ndarray, network_indices: np.ndarray, n_networks: int) -> np.ndarray:
    """Average per-ROI values over each network.

    Args:
        per_roi: (..., R) values, ROI order of the atlas.
        network_indices: (R,) int, the network of each ROI (``AtlasSpec.network_indices()``).
        n_networks: K, the number of networks; every network must have at least one ROI.

    Returns:
        (..., K) float64 network means.
    """
    values = np.asarray(per_roi, dtype=np.float64)
    if values.ndim == 0:
        raise ValueError("per_roi must have a last axis of ROIs, got a scalar.")
    if not np.all(np.isfinite(values)):
        raise ValueError("per_roi contains NaN or infinite values; network means need finite values.")
    return values @ network_average_matrix(network_indices, n_networks, values.shape[-1])
