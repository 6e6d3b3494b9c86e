"""Functional gradients: cosine affinity, diffusion-map embedding and Procrustes alignment.

The method follows BrainSpace's ``GradientMaps(kernel="cosine", approach="dm")`` (Vos de Wael et al.
2020, Commun. Biol. 3:103) and the diffusion maps of Coifman & Lafon (2006, Appl. Comput. Harmon.
Anal. 21:5); the code is our own and works on stacks of B matrices at once.

Pipeline for one (R, R) functional connectivity matrix:

1. :func:`cosine_affinity`: keep the largest ``ceil((1 - sparsity) * R)`` values of each row (others
   become 0), take the cosine similarity between the sparsified rows, set negative similarities to 0.
2. :func:`diffusion_embedding`: alpha-normalise the affinity, form the Markov matrix, keep its
   leading non-trivial right eigenvectors, scaled by ``lambda / (1 - lambda)`` (or ``lambda ** t``).
3. :func:`procrustes_align`: rotate/reflect each subject's gradients onto the reference cohort's
   group gradients (:func:`group_gradients`), since eigenvectors are defined only up to sign (and up
   to rotation within repeated eigenvalues).

:func:`gradient_summary` then gives per gradient its range, variance over ROIs and per-network means.
Gradient values are unitless ("gradient units"): the diffusion coordinates of each ROI.

Input FC: Pearson correlations with the diagonal equal to 1 (BrainSpace's convention; the diagonal
takes part in the row-wise sparsification and the cosine similarity as given). Non-finite values
(e.g. a Fisher-z matrix with an infinite diagonal) are refused.
"""

from __future__ import annotations

import math

import numpy as np

from .temporal import network_average_matrix

__all__ = [
    "cosine_affinity",
    "diffusion_embedding",
    "gradient_summary",
    "group_gradients",
    "kept_per_row",
    "procrustes_align",
    "subject_gradients",
]

# A non-trivial eigenvalue this close to 1 means the affinity graph is (nearly) disconnected.
_DISCONNECTED_TOLERANCE = 1e-8
# Up to this many ROIs one batched full eigendecomposition is cheaper than per-matrix Lanczos runs.
_FULL_EIGH_MAX_ROIS = 64


def _checked_matrices(matrices: object, what: str) -> np.ndarray:
    """(R, R) or (B, R, R) finite float64 array."""
    values = np.asarray(matrices, dtype=np.float64)
    if values.ndim not in (2, 3) or values.shape[-1] != values.shape[-2]:
        raise ValueError(f"{what} must be an (R, R) matrix or a (B, R, R) stack of them, got shape {values.shape}.")
    if values.shape[-1] < 2:
        raise ValueError(f"{what} has {values.shape[-1]} ROI(s); gradients need at least 2.")
    if not np.all(np.isfinite(values)):
        raise ValueError(
            f"{what} contains NaN or infinite values; pass finite matrices (Pearson r with a diagonal of 1, not Fisher z "
            "with an infinite diagonal)."
        )
    return values


def _check_fraction(value: object, name: str, *, upper_open: bool) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.integer, np.floating))
        or not math.isfinite(value)
    ):
        raise ValueError(f"{name}={value!r} must be a number.")
    if value < 0 or (value >= 1 if upper_open else value > 1):
        interval = "[0, 1)" if upper_open else "[0, 1]"
        raise ValueError(f"{name}={value!r} must lie in {interval}.")
    return float(value)


def _check_n_components(n_components: object, n_rois: int) -> int:
    if isinstance(n_components, bool) or not isinstance(n_components, (int, np.integer)) or n_components < 1:
        raise ValueError(f"n_components={n_components!r} must be a positive integer.")
    if n_components > n_rois - 1:
        raise ValueError(
            f"n_components={n_components} is too many for {n_rois} ROIs: the diffusion map has at most {n_rois - 1} "
            "non-trivial components."
        )
    return int(n_components)


# ============================================================================ affinity
def kept_per_row(n_rois: int, sparsity: float) -> int:
    """How many values each row keeps: ``ceil((1 - sparsity) * R)``, at least 1.

    The product is rounded to 9 decimals first, so that e.g. ``(1 - 0.9) * 100`` (which is
    10.000000000000002 in floating point) keeps 10 values, not 11.
    """
    return max(1, math.ceil(round((1.0 - sparsity) * n_rois, 9)))


def _top_values_mask(values: np.ndarray, keep: int) -> np.ndarray:
    """Boolean mask of the ``keep`` largest entries of each row; ties at the cut-off go to lower columns."""
    n_columns = values.shape[-1]
    cutoff = np.partition(values, n_columns - keep, axis=-1)[..., n_columns - keep, None]  # keep-th largest
    above = values > cutoff
    at_cutoff = values == cutoff
    still_needed = keep - above.sum(axis=-1, keepdims=True)
    return above | (at_cutoff & (np.cumsum(at_cutoff, axis=-1) <= still_needed))


def cosine_affinity(fc: np.ndarray, sparsity: float = 0.9) -> np.ndarray:
    """Row-sparsified cosine-similarity affinity of FC matrices.

    Args:
        fc: (R, R) or (B, R, R) finite connectivity matrices (Pearson r, diagonal 1).
        sparsity: fraction of each row set to 0, in [0, 1): each row keeps its
            :func:`kept_per_row` ``(R, sparsity)`` largest values (the diagonal competes like any
            other entry).

    Returns:
        (R, R) or (B, R, R) symmetric affinity in [0, 1]: the cosine similarity between the
        sparsified rows, negative similarities set to 0.

    Ties: when values tie at a row's cut-off, the ones in the lower-numbered columns are kept, so
    every row keeps exactly the same number of values and the result is deterministic.

    All-zero rows: a row whose kept values are all 0 (only possible when the whole FC row is 0) has
    no direction, so its cosine similarity is 0 with every row, itself included: its row and column
    of the affinity are 0. :func:`diffusion_embedding` refuses such an isolated ROI.
    """
    values = _checked_matrices(fc, "fc")
    sparsity = _check_fraction(sparsity, "sparsity", upper_open=True)
    n_rois = values.shape[-1]
    keep = kept_per_row(n_rois, sparsity)
    sparse = np.where(_top_values_mask(values, keep), values, 0.0) if keep < n_rois else values
    norms = np.linalg.norm(sparse, axis=-1)
    unit = np.divide(sparse, norms[..., None], out=np.zeros_like(sparse), where=norms[..., None] > 0)
    similarity = unit @ np.swapaxes(unit, -1, -2)
    similarity = (similarity + np.swapaxes(similarity, -1, -2)) / 2.0  # exact symmetry despite rounding
    return np.clip(similarity, 0.0, 1.0)


# ============================================================================ embedding
def diffusion_embedding(
    affinity: np.ndarray, n_components: int = 3, alpha: float = 0.5, diffusion_time: float = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Diffusion-map embedding (Coifman & Lafon 2006) of symmetric non-negative affinities.

    Steps, with ``W`` the affinity and ``d = W 1`` its degrees:

    1. alpha normalisation: ``L = D^-alpha W D^-alpha`` (alpha = 0.5 as in BrainSpace; 0 gives the
       plain normalised graph Laplacian, 1 the Laplace-Beltrami operator);
    2. Markov matrix ``P = D_L^-1 L`` with ``D_L`` the degrees of ``L``; its eigenvalues
       ``1 = lambda_0 >= lambda_1 >= ...`` are found through the symmetric matrix
       ``D_L^-1/2 L D_L^-1/2`` (same eigenvalues): one batched ``np.linalg.eigh`` for R <= 64, else
       ARPACK Lanczos (``eigsh``) per matrix for the k + 1 leading pairs only;
    3. right eigenvectors ``psi_j = D_L^-1/2 v_j`` scaled so that the trivial ``psi_0`` is all ones
       (``sum_i d_L,i psi_j,i^2 = sum_i d_L,i``); ``psi_0`` is dropped;
    4. ``gradient_j = psi_j * lambda_j / (1 - lambda_j)`` when ``diffusion_time == 0`` (BrainSpace's
       multi-scale embedding), else ``psi_j * lambda_j ** diffusion_time``.

    Sign convention: each gradient is multiplied by -1 if needed so that its entry of largest
    absolute value is positive (the first such ROI when several tie).

    Args:
        affinity: (R, R) or (B, R, R) symmetric, non-negative affinities (:func:`cosine_affinity`).
        n_components: k, the number of gradients (at most R - 1).
        alpha: anisotropic diffusion parameter in [0, 1].
        diffusion_time: t >= 0 (0: multi-scale ``lambda / (1 - lambda)`` scaling).

    Returns:
        gradients (R, k) or (B, R, k), and the Markov eigenvalues ``lambda_1 .. lambda_k`` (k,) or
        (B, k) in decreasing order (unscaled).

    Raises:
        ValueError: an ROI has no affinity to any ROI (isolated node), or, with diffusion_time = 0,
        the graph is disconnected (a second eigenvalue equal to 1 would make the scaling infinite).
    """
    values = _checked_matrices(affinity, "affinity")
    n_rois = values.shape[-1]
    n_components = _check_n_components(n_components, n_rois)
    alpha = _check_fraction(alpha, "alpha", upper_open=False)
    if (
        isinstance(diffusion_time, bool)
        or not isinstance(diffusion_time, (int, float, np.integer, np.floating))
        or not math.isfinite(diffusion_time)
        or diffusion_time < 0
    ):
        raise ValueError(f"diffusion_time={diffusion_time!r} must be a number >= 0.")
    if np.any(values < 0):
        raise ValueError("affinity has negative entries; a diffusion map needs non-negative affinities.")
    scale = max(float(values.max()), 1.0)
    if float(np.abs(values - np.swapaxes(values, -1, -2)).max()) > 1e-10 * scale:
        raise ValueError("affinity is not symmetric; use a symmetric kernel such as cosine_affinity().")

    batched = values if values.ndim == 3 else values[None]
    degree = batched.sum(axis=-1)
    isolated = np.argwhere(degree <= 0)
    if isolated.size:
        scans, rois = isolated[:, 0], isolated[:, 1]
        where = f"ROIs {sorted(set(rois.tolist()))[:10]}" + (
            f" (in scans {sorted(set(scans.tolist()))[:10]})" if values.ndim == 3 else ""
        )
        raise ValueError(
            f"{where} have no affinity to any ROI (an all-zero row), so the diffusion map is undefined for them. This "
            "happens when an ROI's FC row is all zeros (e.g. a constant ROI); remove such ROIs or set the FC diagonal to 1."
        )
    if alpha > 0:
        factor = degree**-alpha
        batched = batched * factor[:, :, None] * factor[:, None, :]
        degree = batched.sum(axis=-1)
    inv_sqrt = 1.0 / np.sqrt(degree)
    symmetric = batched * inv_sqrt[:, :, None] * inv_sqrt[:, None, :]
    connected = _is_connected(batched)
    if diffusion_time == 0 and not connected.all():
        scans = np.flatnonzero(~connected).tolist()
        where = f" (scans {scans[:10]})" if values.ndim == 3 else ""
        raise ValueError(
            f"The affinity graph has several connected components{where}: a non-trivial eigenvalue equals 1, so the "
            "scaling lambda / (1 - lambda) is infinite. Lower the sparsity so the graph is connected, or pass "
            "diffusion_time > 0."
        )
    eigenvalues, eigenvectors = _leading_eigenpairs(symmetric, n_components + 1, connected)
    eigenvalues, eigenvectors = eigenvalues[:, 1:], eigenvectors[:, :, 1:]

    if diffusion_time == 0:
        if np.any(eigenvalues >= 1.0 - _DISCONNECTED_TOLERANCE):
            raise ValueError(
                "The affinity graph is nearly disconnected: a non-trivial eigenvalue is within "
                f"{_DISCONNECTED_TOLERANCE:g} of 1, so the scaling lambda / (1 - lambda) is unstable. Lower the "
                "sparsity, or pass diffusion_time > 0."
            )
        weights = eigenvalues / (1.0 - eigenvalues)
    else:
        weights = eigenvalues**diffusion_time

    volume = degree.sum(axis=-1)
    psi = eigenvectors * np.sqrt(volume[:, None, None] / degree[:, :, None])
    gradients = psi * weights[:, None, :]
    gradients = _fix_signs(gradients)
    if values.ndim == 2:
        return gradients[0], eigenvalues[0]
    return gradients, eigenvalues


def _is_connected(affinity: np.ndarray) -> np.ndarray:
    """(B,) bool: whether the graph of each (R, R) affinity (edges where > 0) is connected."""
    from scipy.sparse import csr_array
    from scipy.sparse.csgraph import connected_components

    return np.array([connected_components(csr_array(matrix > 0), directed=False)[0] == 1 for matrix in affinity])


def _leading_eigenpairs(symmetric: np.ndarray, count: int, connected: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ``count`` largest eigenvalues (B, count), decreasing, and eigenvectors (B, R, count) of (B, R, R).

    Small matrices (R <= 64) go through one batched ``np.linalg.eigh``. Larger ones go one at a
    time through ARPACK's Lanczos solver (``scipy.sparse.linalg.eigsh``, ``tol=0``: machine
    precision, a fixed start vector: deterministic), about 5-10x faster than a full decomposition at
    R = 450, as BrainSpace does. A disconnected graph (eigenvalue 1 repeated, which Lanczos may not
    resolve) or a Lanczos run that does not converge uses LAPACK's solver for selected eigenpairs
    instead (``scipy.linalg.eigh(subset_by_index=...)``).
    """
    n_rois = symmetric.shape[-1]
    if n_rois <= _FULL_EIGH_MAX_ROIS:
        eigenvalues, eigenvectors = np.linalg.eigh(symmetric)
        return eigenvalues[:, ::-1][:, :count], eigenvectors[:, :, ::-1][:, :, :count]

    from scipy.linalg import eigh
    from scipy.sparse.linalg import ArpackNoConvergence, eigsh

    start = np.linspace(1.0, 2.0, n_rois)
    values_out = np.empty((symmetric.shape[0], count))
    vectors_out = np.empty((symmetric.shape[0], n_rois, count))
    for index, matrix in enumerate(symmetric):
        values = vectors = None
        if connected[index]:
            try:
                values, vectors = eigsh(matrix, k=count, which="LA", v0=start, tol=0)
            except ArpackNoConvergence:
                values = None
        if values is None:
            values, vectors = eigh(matrix, subset_by_index=(n_rois - count, n_rois - 1), driver="evx")
        order = np.argsort(-values, kind="stable")
        values_out[index], vectors_out[index] = values[order], vectors[:, order]
    return values_out, vectors_out


def _fix_signs(gradients: np.ndarray) -> np.ndarray:
    """Flip each column of (B, R, k) so that its largest-magnitude entry (first on ties) is positive."""
    largest = np.argmax(np.abs(gradients), axis=-2)  # (B, k): argmax returns the first on ties
    signs = np.sign(np.take_along_axis(gradients, largest[:, None, :], axis=-2))
    signs[signs == 0] = 1.0
    return gradients * signs


# ============================================================================ alignment
def procrustes_align(gradients: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Orthogonal Procrustes: rotate/reflect gradients onto a reference.

    Finds the orthogonal (k, k) matrix ``Q`` minimising ``||gradients @ Q - reference||_F`` (from the
    SVD ``U S V^T`` of ``gradients^T reference``: ``Q = U V^T``), without centring or scaling, as
    BrainSpace's ``ProcrustesAlignment`` does per subject.

    Args:
        gradients: (R, k) or (B, R, k).
        reference: (R, k) reference gradients (:func:`group_gradients`).

    Returns:
        ``gradients @ Q``, same shape as ``gradients``.
    """
    values = np.asarray(gradients, dtype=np.float64)
    target = np.asarray(reference, dtype=np.float64)
    if values.ndim not in (2, 3):
        raise ValueError(f"gradients must be (R, k) or (B, R, k), got shape {values.shape}.")
    if target.ndim != 2 or target.shape != values.shape[-2:]:
        raise ValueError(
            f"reference has shape {target.shape} but gradients are {values.shape}; the reference must be (R, k) with the "
            "same ROIs and number of components."
        )
    if not (np.all(np.isfinite(values)) and np.all(np.isfinite(target))):
        raise ValueError("gradients or reference contain NaN or infinite values.")
    cross = np.swapaxes(values, -1, -2) @ target  # (..., k, k)
    left, _, right = np.linalg.svd(cross)
    return values @ (left @ right)


# ============================================================================ pipelines
def group_gradients(fc: np.ndarray, *, sparsity: float = 0.9, n_components: int = 3, alpha: float = 0.5) -> np.ndarray:
    """Reference gradients of a cohort: the embedding of the mean FC matrix.

    Args:
        fc: (B, R, R) FC matrices of the reference cohort (or one (R, R) group matrix).

    Returns:
        (R, k) group gradients, with the sign convention of :func:`diffusion_embedding`.
    """
    values = _checked_matrices(fc, "fc")
    mean_fc = values.mean(axis=0) if values.ndim == 3 else values
    gradients, _ = diffusion_embedding(cosine_affinity(mean_fc, sparsity), n_components, alpha)
    return gradients


def subject_gradients(
    fc: np.ndarray,
    reference: np.ndarray | None,
    *,
    sparsity: float = 0.9,
    n_components: int = 3,
    alpha: float = 0.5,
) -> np.ndarray:
    """Gradients of each scan, Procrustes-aligned to ``reference`` when one is given.

    Args:
        fc: (B, R, R) FC matrices (an (R, R) matrix gives an (R, k) result).
        reference: (R, k) group gradients (:func:`group_gradients`) or None (no alignment: only the
            sign convention of :func:`diffusion_embedding` applies).

    Returns:
        (B, R, k) gradients.
    """
    values = _checked_matrices(fc, "fc")
    if reference is not None:
        reference = np.asarray(reference, dtype=np.float64)
        expected = (values.shape[-1], n_components)
        if reference.shape != expected:
            raise ValueError(
                f"reference has shape {reference.shape}; expected {expected} (R ROIs x n_components). Fit the reference "
                "with the same atlas and n_components."
            )
    gradients, _ = diffusion_embedding(cosine_affinity(values, sparsity), n_components, alpha)
    return gradients if reference is None else procrustes_align(gradients, reference)


def gradient_summary(gradients: np.ndarray, network_indices: np.ndarray, n_networks: int) -> dict[str, np.ndarray]:
    """Per-gradient range, variance over ROIs and per-network mean.

    Args:
        gradients: (B, R, k) (or (R, k)) gradients.
        network_indices: (R,) int, the network of each ROI (``AtlasSpec.network_indices()``).
        n_networks: K; every network must have at least one ROI.

    Returns:
        ``{"range": (B, k) max - min over ROIs, "variance": (B, k) population variance (ddof=0)
        over ROIs, "network_means": (B, k, K)}`` (without the B axis for an (R, k) input), in
        gradient units (variance in gradient units squared).
    """
    values = np.asarray(gradients, dtype=np.float64)
    if values.ndim not in (2, 3):
        raise ValueError(f"gradients must be (B, R, k) or (R, k), got shape {values.shape}.")
    if not np.all(np.isfinite(values)):
        raise ValueError("gradients contain NaN or infinite values.")
    average = network_average_matrix(network_indices, n_networks, values.shape[-2])
    return {
        "range": values.max(axis=-2) - values.min(axis=-2),
        "variance": values.var(axis=-2),
        "network_means": np.swapaxes(values, -1, -2) @ average,
    }
