"""Data-driven group ICA on ROI series, dual regression, and per-scan FNC and fALFF of ICA domains.

The paper used the NeuroMark 1.0 templates (53 voxel-wise components from GIFT), which are not
available here; this module fits its own group ICA on the reference cohort's ROI series instead.

Temporal ICA, not spatial ICA
-----------------------------
Voxel-wise ICA (GIFT, MELODIC) is *spatial*: the ~10^5 voxels are the samples and the components
are independent spatial maps. On parcellated data there are only R = 100-450 ROIs, far too few
samples to estimate independent spatial maps, while the reference cohort has tens of thousands of
time points. So the ICA here is *temporal*: the samples are the time points of all reference scans
(concatenated), the observed signals are the R ROI series, and the model is

    X (time, R) = S (time, C) @ maps (C, R)

with temporally independent, unit-variance source time courses ``S``. A row of ``maps`` (the FastICA
mixing matrix, transposed) says how strongly each ROI expresses a component: its "spatial map" in
ROI space, in z units of the ROI signal per unit of the source.

Fitting (:func:`fit_group_ica`)
-------------------------------
1. Each reference scan is linearly detrended and z-scored per ROI (sample SD; constant ROIs become
   0), as :func:`fmrilm.nifti.clean_roi_signals` does, then the scans are concatenated over time
   (optionally a seeded random subset of at most ``max_samples`` time points, drawn in proportion to
   each scan's length).
2. ``sklearn.decomposition.FastICA`` with PCA whitening to ``n_components`` (``whiten="unit-variance"``),
   the parallel algorithm, the log-cosh contrast and ``random_state=seed``.
3. Deterministic order and sign: components are sorted by the variance they explain in the
   z-scored data (the squared norm of their map, since the sources have unit variance), largest
   first; each map (and its source) is multiplied by -1 if needed so that its largest-magnitude
   loading is positive.
4. Each component is assigned to the network in which its mean squared loading is largest. This is
   the network that holds the largest share of the component's energy *relative to its share of
   the ROIs* (mean squared loading in network k / mean over all ROIs = energy share / ROI share),
   so small networks are not drowned by large ones. Networks that receive no component are listed
   in :attr:`GroupICA.networks_without_components` (and a warning says so at fit time).

Per scan (:func:`dual_regression`, :func:`ica_features`)
---------------------------------------------------------
The first stage of dual regression: the scan, detrended and z-scored the same way, is regressed on
the group maps by least squares, ``TC = Z @ pinv(maps)`` (one pseudo-inverse per group model,
cached). The second stage (subject-specific maps) is not needed for the features. Then a *domain*
(a network) time course is the mean of its components' z-scored time courses, and

- ``fnc`` (K, K): off the diagonal, the Fisher-z correlation between domain time courses; on the
  diagonal, the mean Fisher-z correlation between distinct components of the domain (within-domain
  FNC), 0.0 for a domain with a single component (``within_valid`` False);
- ``falff`` (K,): fALFF of each domain time course with the scan's real TR
  (:func:`fmrilm.descriptors.temporal.falff`);
- ``valid`` (K,): False for a network without components; its fALFF and its FNC row and column are
  0.0, never NaN.

Correlations are clipped to [-1 + 1e-7, 1 - 1e-7] before the Fisher transform (|z| <= 8.4), and a
constant time course correlates 0.0 with everything.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..nifti import clean_roi_signals
from .temporal import falff

__all__ = [
    "GroupICA",
    "assign_components",
    "dual_regression",
    "fit_group_ica",
    "ica_features",
]

#: Correlations are clipped to +-(1 - this) before the Fisher transform.
CORRELATION_CLIP = 1e-7
# Eigenvalues of the data's scatter matrix below this fraction of the largest count as zero (rank).
_RANK_TOLERANCE = 1e-10


def _standardised(scan: np.ndarray) -> np.ndarray:
    """(T, R) series detrended and z-scored per ROI (sample SD), constant ROIs 0."""
    return clean_roi_signals(scan, detrend=True, standardize=True)


def _checked_scan(scan: object, n_rois: int, what: str) -> np.ndarray:
    values = np.asarray(scan, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"{what} must be a (time, rois) array, got shape {values.shape}.")
    if values.shape[1] != n_rois:
        hint = " It looks like (rois, time): transpose it." if values.shape[0] == n_rois else ""
        raise ValueError(
            f"{what} has shape {values.shape}; expected (time, {n_rois}) for this {n_rois}-ROI model.{hint}"
        )
    if values.shape[0] < 3:
        raise ValueError(f"{what} has {values.shape[0]} time point(s); ICA needs at least 3 to detrend and z-score.")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{what} contains NaN or infinite values; fill or drop them before ICA.")
    return values


def _checked_networks(
    network_indices: object, network_names: Sequence[str], n_rois: int | None
) -> tuple[np.ndarray, tuple[str, ...]]:
    if isinstance(network_names, str):
        raise ValueError("network_names must be a sequence of names, not one string.")
    names = tuple(str(name) for name in network_names)
    if not names:
        raise ValueError("network_names is empty; give the atlas's network names (AtlasSpec.network_names).")
    indices = np.asarray(network_indices)
    if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(
            f"network_indices must be a 1-D integer array (AtlasSpec.network_indices()), got {indices.dtype} {indices.shape}."
        )
    if n_rois is not None and indices.shape[0] != n_rois:
        raise ValueError(
            f"network_indices has {indices.shape[0]} entries but the scans have {n_rois} ROIs; give one per ROI."
        )
    if indices.size and (indices.min() < 0 or indices.max() >= len(names)):
        raise ValueError(
            f"network_indices range from {indices.min()} to {indices.max()}, outside 0..{len(names) - 1} for the "
            f"{len(names)} network_names."
        )
    return indices.astype(np.int64), names


# ============================================================================ the group model
@dataclass(frozen=True, eq=False)
class GroupICA:
    """A group ICA model in ROI space.

    Attributes:
        maps: (C, R) component loadings over ROIs (z units of ROI signal per unit source).
        component_network: (C,) index into ``network_names`` of the network each component belongs to.
        network_names: the K network names, in atlas order.
    """

    maps: np.ndarray
    component_network: np.ndarray
    network_names: tuple[str, ...]

    def __post_init__(self) -> None:
        maps = np.array(self.maps, dtype=np.float64)
        if maps.ndim != 2 or 0 in maps.shape:
            raise ValueError(f"GroupICA.maps must be a non-empty (components, rois) array, got shape {maps.shape}.")
        if not np.all(np.isfinite(maps)):
            raise ValueError("GroupICA.maps contains NaN or infinite values.")
        network = np.array(self.component_network)
        if network.shape != (maps.shape[0],) or not np.issubdtype(network.dtype, np.integer):
            raise ValueError(
                f"GroupICA.component_network must hold {maps.shape[0]} integers (one per component), got {network.dtype} "
                f"{network.shape}."
            )
        _, names = _checked_networks(network, self.network_names, None)
        maps.flags.writeable = False
        network = network.astype(np.int64)
        network.flags.writeable = False
        object.__setattr__(self, "maps", maps)
        object.__setattr__(self, "component_network", network)
        object.__setattr__(self, "network_names", names)

    @property
    def n_components(self) -> int:
        return self.maps.shape[0]

    @property
    def n_rois(self) -> int:
        return self.maps.shape[1]

    @property
    def networks_without_components(self) -> tuple[str, ...]:
        """Names of the networks that no component was assigned to (their ICA features are invalid)."""
        present = set(self.component_network.tolist())
        return tuple(name for index, name in enumerate(self.network_names) if index not in present)

    @cached_property
    def unmixing(self) -> np.ndarray:
        """(R, C) least-squares regressor ``pinv(maps)``: ``TC = Z @ unmixing``. Computed once."""
        return np.linalg.pinv(self.maps)

    @cached_property
    def domain_average(self) -> np.ndarray:
        """(C, K) matrix averaging component time courses into domain time courses (0 columns for empty domains)."""
        n_networks = len(self.network_names)
        onehot = np.zeros((self.n_components, n_networks))
        onehot[np.arange(self.n_components), self.component_network] = 1.0
        counts = onehot.sum(axis=0)
        return np.divide(onehot, counts, out=np.zeros_like(onehot), where=counts > 0)

    def to_dict(self) -> dict:
        """JSON-serialisable form (lists of Python floats/ints); :meth:`from_dict` restores it exactly."""
        return {
            "maps": self.maps.tolist(),
            "component_network": self.component_network.tolist(),
            "network_names": list(self.network_names),
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> GroupICA:
        if not isinstance(d, Mapping):
            raise ValueError(f"GroupICA.from_dict expects the dict written by to_dict(), got {type(d).__name__}.")
        missing = {"maps", "component_network", "network_names"} - set(d)
        if missing:
            raise ValueError(
                f"GroupICA.from_dict: missing keys {sorted(missing)}; expected the dict written by to_dict()."
            )
        return cls(
            maps=np.asarray(d["maps"], dtype=np.float64),
            component_network=np.asarray(d["component_network"], dtype=np.int64),
            network_names=tuple(d["network_names"]),
        )


def assign_components(maps: np.ndarray, network_indices: np.ndarray, n_networks: int) -> np.ndarray:
    """(C,) network of each component: the network with the largest mean squared loading (first on ties).

    Args:
        maps: (C, R) loadings.
        network_indices: (R,) int network of each ROI.
        n_networks: K. A network without ROIs never receives a component.
    """
    loadings = np.asarray(maps, dtype=np.float64)
    indices = np.asarray(network_indices, dtype=np.int64)
    onehot = np.zeros((indices.shape[0], n_networks))
    onehot[np.arange(indices.shape[0]), indices] = 1.0
    counts = onehot.sum(axis=0)
    mean_squared = np.divide(
        loadings**2 @ onehot, counts, out=np.full((loadings.shape[0], n_networks), -np.inf), where=counts > 0
    )
    return np.argmax(mean_squared, axis=1).astype(np.int64)


def _concatenated(scans: Sequence[np.ndarray], max_samples: int | None, seed: int) -> np.ndarray:
    lengths = np.array([scan.shape[0] for scan in scans])
    total = int(lengths.sum())
    if max_samples is None or total <= max_samples:
        return np.concatenate([_standardised(scan) for scan in scans], axis=0)
    rng = np.random.default_rng(seed)
    quota = np.maximum(1, np.floor(lengths * (max_samples / total))).astype(int)
    parts = []
    for scan, count in zip(scans, quota):
        rows = np.sort(rng.choice(scan.shape[0], size=min(int(count), scan.shape[0]), replace=False))
        parts.append(_standardised(scan)[rows])
    return np.concatenate(parts, axis=0)


def fit_group_ica(
    scans: Sequence[np.ndarray],
    network_indices: np.ndarray,
    network_names: Sequence[str],
    n_components: int = 20,
    seed: int = 0,
    *,
    max_samples: int | None = 200_000,
    max_iter: int = 500,
) -> GroupICA:
    """Fit a temporal group ICA on a reference cohort (see the module docstring for the method).

    Args:
        scans: reference scans, each (T_i, R) with the same R ROIs (lengths and TRs may differ).
        network_indices: (R,) int, the network of each ROI (``AtlasSpec.network_indices()``).
        network_names: the K network names (``AtlasSpec.network_names``).
        n_components: C, at most R and at most the rank of the concatenated data.
        seed: FastICA ``random_state`` and the seed of the time-point subset.
        max_samples: at most this many time points enter the ICA (a seeded random subset, in
            proportion to each scan's length); None uses all.
        max_iter: FastICA iteration limit. ROI data close to Gaussian (e.g. simulated cohorts) may not
            converge within any limit; the result is still deterministic for a seed, and 500 keeps
            fitting a cohort to seconds.

    Returns:
        The fitted :class:`GroupICA`.
    """
    from sklearn.decomposition import FastICA
    from sklearn.exceptions import ConvergenceWarning

    if isinstance(scans, np.ndarray) or not isinstance(scans, Sequence) or len(scans) == 0:
        raise ValueError("scans must be a non-empty list of (time, rois) arrays (one per reference scan).")
    first = np.asarray(scans[0])
    if first.ndim != 2:
        raise ValueError(f"scans[0] must be a (time, rois) array, got shape {first.shape}.")
    n_rois = first.shape[1]
    checked = [_checked_scan(scan, n_rois, f"scans[{i}]") for i, scan in enumerate(scans)]
    indices, names = _checked_networks(network_indices, network_names, n_rois)
    if (
        isinstance(n_components, bool)
        or not isinstance(n_components, (int, np.integer))
        or not 1 <= n_components <= n_rois
    ):
        raise ValueError(f"n_components={n_components!r} must be an integer from 1 to the number of ROIs ({n_rois}).")
    if max_samples is not None and (
        isinstance(max_samples, bool) or not isinstance(max_samples, (int, np.integer)) or max_samples < n_components
    ):
        raise ValueError(f"max_samples={max_samples!r} must be None or an integer >= n_components ({n_components}).")

    data = _concatenated(checked, max_samples, seed)
    if data.shape[0] <= n_components:
        raise ValueError(
            f"The reference scans give {data.shape[0]} time points for {n_components} components; ICA needs more time "
            "points than components. Add scans or lower n_components."
        )
    covariance_eigenvalues = np.linalg.eigvalsh(data.T @ data)
    rank = int((covariance_eigenvalues > _RANK_TOLERANCE * max(covariance_eigenvalues[-1], 0.0)).sum())
    if rank < n_components:
        raise ValueError(
            f"The z-scored reference data have rank {rank} (e.g. constant or duplicated ROIs), fewer than n_components="
            f"{n_components}; lower n_components to at most {rank}."
        )

    model = FastICA(
        n_components=int(n_components),
        algorithm="parallel",
        whiten="unit-variance",
        fun="logcosh",
        max_iter=max_iter,
        tol=1e-4,
        whiten_solver="eigh",
        random_state=seed,
    )
    with warnings.catch_warnings():
        # ROI series close to Gaussian (simulated cohorts especially) leave FastICA short of its
        # tolerance at any iteration limit; the fit is still deterministic for the seed (see max_iter).
        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        model.fit(data)
    maps = model.mixing_.T.copy()  # (C, R)
    order = np.argsort(-(maps**2).sum(axis=1), kind="stable")
    maps = maps[order]
    largest = np.argmax(np.abs(maps), axis=1)
    maps *= np.where(maps[np.arange(maps.shape[0]), largest] < 0, -1.0, 1.0)[:, None]

    group = GroupICA(maps=maps, component_network=assign_components(maps, indices, len(names)), network_names=names)
    if group.networks_without_components:
        warnings.warn(
            f"Group ICA with {n_components} components assigned none to the networks "
            f"{list(group.networks_without_components)}; their ICA features are marked invalid (0.0). Use more components "
            "to cover every network.",
            UserWarning,
            stacklevel=2,
        )
    return group


# ============================================================================ per scan
def dual_regression(scan: np.ndarray, group: GroupICA, *, standardize: bool = True) -> np.ndarray:
    """Component time courses of one scan: least-squares regression of the scan on the group maps.

    Args:
        scan: (T, R) series of the group model's R ROIs.
        group: the fitted :class:`GroupICA`.
        standardize: detrend and z-score each ROI first, as the group ICA's inputs were (default).
            False regresses the series as given (a noise-free ``S @ maps`` then gives back ``S``).

    Returns:
        (T, C) component time courses.
    """
    values = _checked_scan(scan, group.n_rois, "scan")
    if standardize:
        values = _standardised(values)
    return values @ group.unmixing


def _fisher_z(correlation: np.ndarray) -> np.ndarray:
    return np.arctanh(np.clip(correlation, -1.0 + CORRELATION_CLIP, 1.0 - CORRELATION_CLIP))


def _correlation(time_courses: np.ndarray) -> np.ndarray:
    """(N, N) Pearson correlation of (T, N) columns; constant columns correlate 0 (1 with themselves)."""
    centred = time_courses - time_courses.mean(axis=0)
    norms = np.linalg.norm(centred, axis=0)
    unit = np.divide(centred, norms, out=np.zeros_like(centred), where=norms > 0)
    correlation = unit.T @ unit
    np.fill_diagonal(correlation, 1.0)
    return correlation


def ica_features(scan: np.ndarray, tr: float, group: GroupICA) -> dict[str, np.ndarray]:
    """Domain-level FNC and fALFF of one scan from its dual-regression time courses.

    Args:
        scan: (T, R) native-TR series (at least 100 s long: fALFF needs it).
        tr: the scan's repetition time in seconds.
        group: the fitted :class:`GroupICA`.

    Returns:
        ``{"fnc": (K, K) Fisher z, "falff": (K,) fraction, "valid": (K,) bool, "within_valid": (K,)
        bool}``; see the module docstring. Invalid entries are 0.0.
    """
    components = dual_regression(scan, group)
    sd = components.std(axis=0, ddof=1)
    z_scored = np.divide(components - components.mean(axis=0), sd, out=np.zeros_like(components), where=sd > 0)
    average = group.domain_average  # (C, K)
    valid = average.sum(axis=0) > 0
    domains = z_scored @ average  # (T, K)

    fnc = _fisher_z(_correlation(domains))
    component_fnc = _fisher_z(_correlation(z_scored))
    np.fill_diagonal(component_fnc, 0.0)
    membership = (average > 0).astype(np.float64)  # (C, K)
    pair_sums = np.einsum("ck,cd,dk->k", membership, component_fnc, membership)
    sizes = membership.sum(axis=0)
    pairs = sizes * (sizes - 1)
    within_valid = pairs > 0
    np.fill_diagonal(fnc, np.divide(pair_sums, pairs, out=np.zeros_like(pair_sums), where=within_valid))
    fnc[~valid, :] = 0.0
    fnc[:, ~valid] = 0.0

    domain_falff = np.zeros(len(group.network_names))
    if valid.any():
        domain_falff[valid] = falff(domains[:, valid], tr)
    return {"fnc": fnc, "falff": domain_falff, "valid": valid, "within_valid": within_valid}
