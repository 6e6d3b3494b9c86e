"""Functional connectivity of ROI time series and its summary over pairs of networks.

    fc = functional_connectivity(series)                 # (T, R) -> (R, R), or (B, T, R) -> (B, R, R)
    z = fisher_z(fc)                                      # arctanh, clipped so that r = +-1 stays finite
    means, valid = network_pair_means(z, atlas.network_indices(), len(atlas.network_names))

Everything is batched over scans (a leading axis B of scans with the same ROI count) and computed
with matrix products: no loop over ROIs, edges or network pairs.

Documented fallbacks:

- A constant ROI (no variance over time) has no defined correlation. Its correlation with every
  other ROI is set to 0 (its diagonal entry stays 1) and a :class:`ConstantSeriesWarning` names it.
  :func:`constant_rois` tells the caller which ROIs those are, to note it in the scan's record.
- Within a network of one ROI there is no ROI pair: :func:`network_pair_means` reports that pair as
  invalid and gives it the value 0.0 (never NaN).
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = [
    "CONSTANT_ATOL",
    "CONSTANT_RTOL",
    "MIN_TIMEPOINTS",
    "ConstantSeriesWarning",
    "constant_rois",
    "fisher_z",
    "functional_connectivity",
    "network_pair_means",
]

#: Fewest time points accepted for a correlation: with 2 points every correlation is +-1 and says nothing.
MIN_TIMEPOINTS = 3
#: A ROI is constant when its SD over time is at most CONSTANT_RTOL times the scan's largest |value|
#: (this catches constant raw intensities and the ~1e-27 residue that detrending leaves of them) ...
CONSTANT_RTOL = 1e-10
#: ... or at most CONSTANT_ATOL in absolute terms (a whole scan of such residue).
CONSTANT_ATOL = 1e-20
#: How far outside [-1, 1] a correlation may lie from rounding before it is refused.
_CORRELATION_SLACK = 1e-6
#: Relative asymmetry tolerated in a matrix said to be symmetric.
_SYMMETRY_RTOL = 1e-8


class ConstantSeriesWarning(RuntimeWarning):
    """Some ROIs have constant series; their correlations were set to 0."""


def _check_finite_numeric(values: np.ndarray, name: str) -> None:
    if values.dtype == bool or not (
        np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.floating)
    ):
        raise ValueError(
            f"{name} must hold real numbers, got dtype {values.dtype}; convert it with np.asarray(x, float)."
        )
    if values.size == 0:
        raise ValueError(f"{name} is empty (shape {values.shape}); it needs at least one value on every axis.")
    if not np.all(np.isfinite(values)):
        bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
        raise ValueError(
            f"{name} contains {bad} NaN or infinite value(s); fill or drop them before computing connectivity."
        )


def _series_batch(series: np.ndarray, n_rois: int | None) -> tuple[np.ndarray, bool]:
    """Validate (T, R) or (B, T, R) series; return them as float64 (B, T, R) and whether a batch axis was added."""
    values = np.asarray(series)
    if values.ndim not in (2, 3):
        raise ValueError(f"series must be (time, rois) or (scans, time, rois), got an array of shape {values.shape}.")
    _check_finite_numeric(values, "series")
    n_time, n_columns = values.shape[-2:]
    if n_rois is not None and n_columns != n_rois:
        hint = " It looks like (rois, time): transpose it." if n_time == n_rois else ""
        raise ValueError(f"series has {n_columns} ROI columns but the atlas has {n_rois}; expected (time, rois).{hint}")
    if n_time < MIN_TIMEPOINTS:
        raise ValueError(
            f"series has {n_time} time point(s); a correlation needs at least {MIN_TIMEPOINTS}. Series are (time, rois): "
            "transpose a (rois, time) array."
        )
    batched = values.ndim == 3
    values = np.asarray(values, dtype=np.float64)
    return (values if batched else values[None]), not batched


def _centred(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B, T, R) series -> (centred series, (B, R) sums of squares, (B, R) constant-ROI mask)."""
    scale = np.maximum(values.max(axis=(1, 2)), -values.min(axis=(1, 2)))
    centred = values - values.mean(axis=1, keepdims=True)
    sum_squares = np.einsum("btr,btr->br", centred, centred)
    sd = np.sqrt(sum_squares / values.shape[1])
    constant = sd <= np.maximum(CONSTANT_RTOL * scale, CONSTANT_ATOL)[:, None]
    return centred, sum_squares, constant


def constant_rois(series: np.ndarray) -> np.ndarray:
    """Which ROIs :func:`functional_connectivity` treats as constant.

    Args:
        series: (T, R) or (B, T, R) finite time series.

    Returns:
        (R,) or (B, R) bool: True for a ROI whose standard deviation over time is at most
        ``CONSTANT_RTOL`` times the scan's largest absolute value, or at most ``CONSTANT_ATOL``.
    """
    values, squeeze = _series_batch(series, None)
    constant = _centred(values)[2]
    return constant[0] if squeeze else constant


def functional_connectivity(series: np.ndarray, *, n_rois: int | None = None) -> np.ndarray:
    """Pearson correlation between every pair of ROIs.

    Args:
        series: (T, R) time series of one scan, or (B, T, R) for B scans of equal length. Any units
            (correlation is scale-free), any finite real dtype.
        n_rois: if given, the expected R; a mismatch is refused (with a hint when the array looks
            transposed).

    Returns:
        (R, R) or (B, R, R) float64, symmetric, with entries in [-1, 1] and a diagonal of exactly 1.
        A constant ROI gets correlation 0 with every other ROI (never NaN), and a
        :class:`ConstantSeriesWarning` lists the constant ROIs.

    Raises:
        ValueError: wrong shape, fewer than :data:`MIN_TIMEPOINTS` time points, NaN or infinite values.
    """
    values, squeeze = _series_batch(series, n_rois)
    centred, sum_squares, constant = _centred(values)
    norms = np.sqrt(sum_squares)
    inverse = np.divide(1.0, norms, out=np.zeros_like(norms), where=~constant)
    unit = centred
    unit *= inverse[:, None, :]  # unit-norm columns; constant ROIs become 0
    product = np.matmul(unit.transpose(0, 2, 1), unit)
    fc = product + product.transpose(0, 2, 1)  # exactly symmetric (BLAS need not be)
    fc *= 0.5
    np.clip(fc, -1.0, 1.0, out=fc)
    diagonal = np.arange(fc.shape[-1])
    fc[:, diagonal, diagonal] = 1.0
    if constant.any():
        scans, rois = np.nonzero(constant)
        listed = ", ".join(f"scan {b} ROI {r}" for b, r in zip(scans[:10].tolist(), rois[:10].tolist()))
        more = f" and {len(rois) - 10} more" if len(rois) > 10 else ""
        warnings.warn(
            f"{len(rois)} ROI series are constant ({listed}{more}); their correlation with every other ROI is set "
            "to 0. Check the parcellation (an ROI outside the brain mask?) or drop those ROIs.",
            ConstantSeriesWarning,
            stacklevel=2,
        )
    return fc[0] if squeeze else fc


def fisher_z(r: np.ndarray, clip: float = 1 - 1e-7) -> np.ndarray:
    """Fisher's z transform ``arctanh(r)`` of correlations, elementwise.

    Args:
        r: correlations of any shape, in [-1, 1] (values beyond that by less than 1e-6, from
            rounding, are accepted and clipped).
        clip: r is first clipped to [-clip, clip] so that r = +-1 maps to a finite value; must lie
            in (0, 1).

    Returns:
        float64 array of r's shape. Elementwise: the diagonal of an FC matrix (r = 1) becomes
        ``arctanh(clip)`` (about 8.4 for the default), not 0. :func:`network_pair_means` never reads
        the diagonal, so it does not matter there; zero it yourself if you average whole matrices.

    Raises:
        ValueError: NaN or infinite values, values outside [-1, 1], or a clip outside (0, 1).
    """
    if isinstance(clip, bool) or not isinstance(clip, (int, float, np.floating)) or not 0.0 < float(clip) < 1.0:
        raise ValueError(f"clip must be a number in (0, 1), e.g. 1 - 1e-7, got {clip!r}.")
    values = np.asarray(r)
    _check_finite_numeric(values, "r")
    values = values.astype(np.float64, copy=False)
    worst = float(np.max(np.abs(values)))
    if worst > 1.0 + _CORRELATION_SLACK:
        raise ValueError(
            f"r holds a value of magnitude {worst:.6g}, beyond [-1, 1]; fisher_z expects correlations "
            "(e.g. the output of functional_connectivity), not covariances or z-values."
        )
    return np.arctanh(np.clip(values, -float(clip), float(clip)))


def _check_symmetric(values: np.ndarray, name: str) -> None:
    asymmetry = float(np.max(np.abs(values - np.swapaxes(values, -1, -2))))
    scale = max(float(np.max(np.abs(values))), np.finfo(np.float64).tiny)
    if asymmetry > _SYMMETRY_RTOL * scale:
        raise ValueError(
            f"{name} is not symmetric (largest |m - m.T| = {asymmetry:.3g}); pass a connectivity matrix, or "
            "symmetrise it with (m + m.T) / 2."
        )


def network_pair_means(
    matrix: np.ndarray, network_indices: np.ndarray, n_networks: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mean of a symmetric ROI x ROI matrix over every pair of networks.

    For networks a != b the mean runs over all n_a * n_b ROI pairs between them; within network a it
    runs over its n_a * (n_a - 1) / 2 distinct ROI pairs (the strict upper triangle of the block), so
    the diagonal is never read.

    Args:
        matrix: (R, R) or (B, R, R) symmetric finite matrix (e.g. Fisher-z FC).
        network_indices: (R,) integers in [0, n_networks): each ROI's network
            (``AtlasSpec.network_indices()``).
        n_networks: K, the number of networks (``len(AtlasSpec.network_names)``).

    Returns:
        ``(means, valid)``: means (K, K) or (B, K, K) float64, symmetric; valid (K, K) bool, False
        where no ROI pair exists (within a one-ROI network, or any pair involving an empty network).
        Invalid means are 0.0.

    Raises:
        ValueError: wrong shapes, a non-symmetric matrix, NaN, or network indices out of range.
    """
    values = np.asarray(matrix)
    if values.ndim not in (2, 3) or values.shape[-1] != values.shape[-2]:
        raise ValueError(f"matrix must be (R, R) or (B, R, R) and square, got shape {values.shape}.")
    _check_finite_numeric(values, "matrix")
    values = values.astype(np.float64, copy=False)
    _check_symmetric(values, "matrix")
    n_rois = values.shape[-1]
    if isinstance(n_networks, bool) or not isinstance(n_networks, (int, np.integer)) or n_networks < 1:
        raise ValueError(f"n_networks must be a positive integer (len(atlas.network_names)), got {n_networks!r}.")
    indices = np.asarray(network_indices)
    if indices.shape != (n_rois,):
        raise ValueError(
            f"network_indices must have shape ({n_rois},), one network per ROI of the matrix, got {indices.shape}."
        )
    if indices.dtype == bool or not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(f"network_indices must be integers (atlas.network_indices()), got dtype {indices.dtype}.")
    if n_rois and (indices.min() < 0 or indices.max() >= n_networks):
        raise ValueError(
            f"network_indices must lie in [0, {n_networks}), got values from {indices.min()} to {indices.max()}."
        )
    off_diagonal = values.copy()
    rois = np.arange(n_rois)
    off_diagonal[..., rois, rois] = 0.0
    membership = np.zeros((n_rois, int(n_networks)))
    membership[rois, indices] = 1.0
    block_sums = membership.T @ off_diagonal @ membership
    block_sums = 0.5 * (block_sums + np.swapaxes(block_sums, -1, -2))  # exactly symmetric
    within = np.arange(int(n_networks))
    block_sums[..., within, within] *= 0.5  # a within block holds each distinct ROI pair twice
    sizes = membership.sum(axis=0)
    counts = np.outer(sizes, sizes)
    counts[within, within] = sizes * (sizes - 1) / 2
    valid = counts > 0
    means = np.divide(block_sums, counts, out=np.zeros_like(block_sums), where=valid)
    return means, valid
