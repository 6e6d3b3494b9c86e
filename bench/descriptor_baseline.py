"""The descriptor features computed the straightforward way: one scan at a time, loops, NetworkX.

This is the baseline of ``bench/bench_descriptors.py``. It follows the style of the official
fMRI-LM scripts (``nbs_data/get_functional_connectivity.py``, ``get_fmri_discriptor.py``): per scan
``np.corrcoef``, Python loops over network pairs, a NetworkX graph with NetworkX's algorithms, a
BrainSpace-like gradient pipeline with a full eigendecomposition, per-ROI spectra with
``scipy.signal.periodogram``, and ICA dual regression with ``np.linalg.lstsq`` and loops over
domains. It computes the SAME definitions as :mod:`fmrilm.descriptors` (the official scripts'
errors, SPEC R6-R8, are not reproduced), so the benchmark can check that both give equal outputs:

- connectivity: the band-pass and detrend are the very same code in both
  (:func:`fmrilm.nifti.clean_roi_signals`); then ``np.corrcoef`` (NaN from a constant ROI -> 0,
  diagonal 1), Fisher z with r clipped to +-(1 - 1e-7), and per network pair the mean over the
  block (within a network: its strict upper triangle, ``np.triu_indices``).
- graph: the top ``density`` fraction of upper-triangle ``|FC|`` pairs (a stable sort: ties go to
  the pair first in row-major order; ``round half up(density * E)`` pairs kept), a ``networkx.Graph``
  with ``weight = |FC|`` and ``distance = 1 / |FC|``; weighted global efficiency from
  ``nx.all_pairs_dijkstra_path_length`` on the distances, ``nx.community.louvain_communities`` (seeded)
  and ``nx.community.modularity``, ``nx.average_clustering(weight="weight")``, strength from
  ``G.degree(weight="weight")``. NetworkX's Louvain visits nodes in another random order than ours,
  so its partition, and hence Q, differ slightly from ours by construction.
- gradients: per row, values below the row's ``100 * sparsity`` percentile are zeroed (BrainSpace's
  rule; for sparsity 0.9 it keeps ``ceil(0.1 R)`` values per row, as ours does, when the row has no
  ties); ``sklearn.metrics.pairwise.cosine_similarity``, negatives set to 0; the diffusion map from
  a full ``np.linalg.eigh`` of the symmetric conjugate of the Markov matrix, eigenvectors divided by
  the trivial one, scaled by ``lambda / (1 - lambda)``; ``scipy.linalg.orthogonal_procrustes`` onto
  the reference's group gradients; range, variance and per-network means in loops.
- temporal: raw intensities (every ROI mean > 0 and >= 10 x its SD) become percent signal change;
  then per ROI ``scipy.signal.detrend`` and ``scipy.signal.periodogram(fs=1/tr)``; ALFF, fALFF, band
  power ratio, lag-1 autocorrelation and outlier fraction per ROI; network means in a loop.
- ICA: per scan detrend and z-score (``scipy.signal.detrend``, sample SD), component time courses by
  ``np.linalg.lstsq`` on the reference's group maps, a loop over domains for their mean time courses,
  ``np.corrcoef`` for between- and within-domain FNC, a periodogram per domain for fALFF.

The fitted reference (group gradients, group ICA maps, settings, feature means and SDs) is taken
from our :class:`~fmrilm.descriptors.DescriptorExtractor` (:meth:`BaselineReference.from_extractor`),
so that both describe a scan against the same cohort.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import networkx as nx
import numpy as np
from scipy import signal
from scipy.linalg import orthogonal_procrustes
from sklearn.metrics.pairwise import cosine_similarity

from fmrilm.descriptors.facts import DescriptorFacts, feature_key, round_z
from fmrilm.descriptors.graph import louvain_communities, proportional_threshold
from fmrilm.nifti import clean_roi_signals

__all__ = [
    "BaselineReference",
    "baseline_connectivity",
    "baseline_descriptors",
    "baseline_gradient_features",
    "baseline_graph_features",
    "baseline_ica_features",
    "baseline_network_fc",
    "baseline_scan_features",
    "baseline_temporal_features",
    "modularity_agreement",
    "thresholded_graph",
    "value_agreement",
]

#: Correlations are clipped to +-(1 - FISHER_CLIP) before arctanh (as fmrilm.descriptors does).
FISHER_CLIP = 1e-7
#: Relative tolerance of "a frequency lies on a band edge" (rfftfreq may miss 0.01 Hz by one ulp).
BAND_EDGE_TOLERANCE = 1e-9
ALFF_BAND_HZ = (0.01, 0.08)
RATIO_LOW_BAND_HZ = (0.01, 0.1)
RATIO_HIGH_BAND_HZ = (0.1, 0.25)
RATIO_FLOOR = 1e-12
OUTLIER_Z = 3.0
RAW_MEAN_OVER_SD = 10.0
UNIT_DEPENDENT_METRICS = ("temporal_sd", "alff")
#: How many seeds of NetworkX's Louvain give the scale of its own seed-to-seed spread of Q.
LOUVAIN_SPREAD_SEEDS = 5
TEMPORAL_METRICS = ("temporal_sd", "alff", "falff", "band_power_ratio", "lag1_autocorrelation", "outlier_fraction")


@dataclass
class BaselineReference:
    """What the baseline needs from a fitted extractor: networks, settings and the fitted reference.

    Attributes:
        network_names: the K network names, atlas order.
        network_indices: (R,) network of each ROI.
        detrend, high_pass, low_pass: FC preprocessing (Hz).
        graph_density, louvain_resolution, seed: graph settings.
        gradient_sparsity, n_gradients, diffusion_alpha: gradient settings.
        group_gradients: (R, k) the reference cohort's gradients.
        ica_maps: (C, R) group ICA maps; ica_component_network: (C,) network of each component.
        feature_stats: feature key -> (reference mean, reference SD).
        temporal_scale: units of temporal_sd and ALFF in the reference ("percent" or "as_given").
    """

    network_names: tuple[str, ...]
    network_indices: np.ndarray
    detrend: bool
    high_pass: float | None
    low_pass: float | None
    graph_density: float
    louvain_resolution: float
    seed: int
    gradient_sparsity: float
    n_gradients: int
    diffusion_alpha: float
    group_gradients: np.ndarray
    ica_maps: np.ndarray
    ica_component_network: np.ndarray
    feature_stats: dict[str, tuple[float, float]]
    temporal_scale: str

    @classmethod
    def from_extractor(cls, extractor) -> BaselineReference:
        """Copy the settings and the fitted reference of a fitted ``DescriptorExtractor``."""
        if extractor.reference is None:
            raise ValueError("The extractor has no reference cohort: call extractor.fit(scans, trs) first.")
        s, reference = extractor.settings, extractor.reference
        return cls(
            network_names=tuple(extractor.atlas.network_names),
            network_indices=np.asarray(extractor.atlas.network_indices()),
            detrend=s.detrend,
            high_pass=s.high_pass,
            low_pass=s.low_pass,
            graph_density=s.graph_density,
            louvain_resolution=s.louvain_resolution,
            seed=s.seed,
            gradient_sparsity=s.gradient_sparsity,
            n_gradients=s.n_gradients,
            diffusion_alpha=s.diffusion_alpha,
            group_gradients=np.array(reference.group_gradients),
            ica_maps=np.array(reference.group_ica.maps),
            ica_component_network=np.array(reference.group_ica.component_network),
            feature_stats=dict(reference.feature_stats),
            temporal_scale=reference.temporal_scale,
        )


def _fisher(r: np.ndarray | float) -> np.ndarray:
    return np.arctanh(np.clip(r, -1.0 + FISHER_CLIP, 1.0 - FISHER_CLIP))


def _network_mean(per_roi: np.ndarray, reference: BaselineReference) -> list[float]:
    return [float(np.mean(per_roi[reference.network_indices == k])) for k in range(len(reference.network_names))]


# ----------------------------------------------------------------------------------- connectivity
def baseline_connectivity(scan: np.ndarray, tr: float, reference: BaselineReference) -> np.ndarray:
    """(R, R) Pearson FC of one detrended, band-passed (T, R) scan (np.corrcoef; NaN -> 0, diagonal 1)."""
    cleaned = clean_roi_signals(
        scan, tr, detrend=reference.detrend, low_pass=reference.low_pass, high_pass=reference.high_pass
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        fc = np.corrcoef(cleaned.T)
    fc = np.nan_to_num(fc, nan=0.0)
    np.fill_diagonal(fc, 1.0)
    return fc


def baseline_network_fc(fc: np.ndarray, reference: BaselineReference) -> dict[tuple[str, str], float]:
    """Mean Fisher-z FC of every network pair (a <= b); within a network over the strict upper triangle."""
    z = _fisher(fc)
    names = reference.network_names
    pairs = {}
    for a in range(len(names)):
        rois_a = np.flatnonzero(reference.network_indices == a)
        for b in range(a, len(names)):
            rois_b = np.flatnonzero(reference.network_indices == b)
            if a == b:
                if len(rois_a) < 2:
                    continue
                block = z[np.ix_(rois_a, rois_a)]
                pairs[(names[a], names[b])] = float(block[np.triu_indices(len(rois_a), 1)].mean())
            elif len(rois_a) and len(rois_b):
                pairs[(names[a], names[b])] = float(z[np.ix_(rois_a, rois_b)].mean())
    return pairs


# ----------------------------------------------------------------------------------- graph
def thresholded_graph(fc: np.ndarray, density: float) -> nx.Graph:
    """NetworkX graph of the strongest ``density`` fraction of |FC| pairs (weight |FC|, distance 1/|FC|)."""
    weights = np.abs(fc)
    np.fill_diagonal(weights, 0.0)
    n_nodes = weights.shape[0]
    rows, cols = np.triu_indices(n_nodes, 1)
    edges = weights[rows, cols]
    n_keep = min(edges.size, max(1, math.floor(density * edges.size + 0.5)))
    graph = nx.Graph()
    graph.add_nodes_from(range(n_nodes))
    for edge in np.argsort(-edges, kind="stable")[:n_keep].tolist():
        weight = float(edges[edge])
        if weight > 0:
            graph.add_edge(int(rows[edge]), int(cols[edge]), weight=weight, distance=1.0 / weight)
    return graph


def baseline_graph_features(fc: np.ndarray, reference: BaselineReference) -> dict:
    """Graph metrics of one scan with NetworkX.

    Returns:
        ``{"modularity", "global_efficiency", "clustering": float, "strength": (R,) node strength,
        "network_strength": [K network means], "communities": NetworkX's partition}``.
    """
    graph = thresholded_graph(fc, reference.graph_density)
    n_nodes = graph.number_of_nodes()
    inverse_lengths = 0.0
    for source, lengths in nx.all_pairs_dijkstra_path_length(graph, weight="distance"):
        for target, length in lengths.items():
            if target != source:
                inverse_lengths += 1.0 / length
    communities = nx.community.louvain_communities(
        graph, weight="weight", resolution=reference.louvain_resolution, seed=reference.seed
    )
    degree = dict(graph.degree(weight="weight"))
    strength = np.array([degree[node] for node in range(n_nodes)], dtype=np.float64)
    return {
        "modularity": nx.community.modularity(
            graph, communities, weight="weight", resolution=reference.louvain_resolution
        ),
        "global_efficiency": inverse_lengths / (n_nodes * (n_nodes - 1)),
        "clustering": nx.average_clustering(graph, weight="weight"),
        "strength": strength,
        "network_strength": _network_mean(strength, reference),
        "communities": communities,
    }


# ----------------------------------------------------------------------------------- gradients
def baseline_gradient_features(fc: np.ndarray, reference: BaselineReference) -> dict:
    """Aligned gradients of one scan and their summary.

    Returns:
        ``{"gradients": (R, k) aligned gradients, "range": (k,), "variance": (k,),
        "network_means": (k, K)}``.
    """
    sparse = np.array(fc, dtype=np.float64)
    for row in sparse:
        row[row < np.percentile(row, 100.0 * reference.gradient_sparsity)] = 0.0
    affinity = cosine_similarity(sparse)
    affinity[affinity < 0] = 0.0

    degree = affinity.sum(axis=1)
    normalised = affinity / np.outer(degree**reference.diffusion_alpha, degree**reference.diffusion_alpha)
    markov_degree = normalised.sum(axis=1)
    symmetric = normalised / np.sqrt(np.outer(markov_degree, markov_degree))
    eigenvalues, eigenvectors = np.linalg.eigh(symmetric)
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, eigenvectors = eigenvalues[order], eigenvectors[:, order]
    right = eigenvectors / np.sqrt(markov_degree)[:, None]  # right eigenvectors of the Markov matrix
    psi = right / right[:, [0]]
    k = reference.n_gradients
    lambdas = eigenvalues[1 : k + 1]
    gradients = psi[:, 1 : k + 1] * (lambdas / (1.0 - lambdas))

    rotation, _ = orthogonal_procrustes(gradients, reference.group_gradients)
    aligned = gradients @ rotation
    network_means = np.zeros((k, len(reference.network_names)))
    for g in range(k):
        network_means[g] = _network_mean(aligned[:, g], reference)
    return {
        "gradients": aligned,
        "range": np.ptp(aligned, axis=0),
        "variance": np.var(aligned, axis=0),
        "network_means": network_means,
    }


# ----------------------------------------------------------------------------------- temporal
def _band(frequencies: np.ndarray, low: float, high: float, include_low: bool = True) -> np.ndarray:
    lower = (
        frequencies >= low * (1 - BAND_EDGE_TOLERANCE) if include_low else frequencies > low * (1 + BAND_EDGE_TOLERANCE)
    )
    return lower & (frequencies <= high * (1 + BAND_EDGE_TOLERANCE))


def baseline_temporal_features(scan: np.ndarray, tr: float) -> tuple[dict[str, np.ndarray], str]:
    """Per-ROI temporal features of one (T, R) scan, one ROI at a time: ({metric: (R,)}, scale)."""
    values = np.asarray(scan, dtype=np.float64)
    n_rois = values.shape[1]
    mean, sd = values.mean(axis=0), values.std(axis=0, ddof=1)
    scale = "percent" if np.all((mean > 0) & (mean >= RAW_MEAN_OVER_SD * sd)) else "as_given"
    if scale == "percent":
        values = 100.0 * (values - mean) / mean
    features = {metric: np.zeros(n_rois) for metric in TEMPORAL_METRICS}
    nyquist = 0.5 / tr
    for roi in range(n_rois):
        series = signal.detrend(values[:, roi])
        if np.sqrt(np.mean(series**2)) <= 1e-10 * np.abs(values[:, roi]).max():
            continue  # constant or exactly linear: every feature 0
        frequencies, power = signal.periodogram(series, fs=1.0 / tr)
        frequencies, power = frequencies[1:], power[1:]
        amplitude = np.sqrt(power)
        alff_band = _band(frequencies, *ALFF_BAND_HZ)
        roi_sd = np.std(series, ddof=1)
        features["temporal_sd"][roi] = roi_sd
        features["alff"][roi] = amplitude[alff_band].mean()
        features["falff"][roi] = amplitude[alff_band].sum() / amplitude.sum()
        high = power[_band(frequencies, RATIO_HIGH_BAND_HZ[0], min(RATIO_HIGH_BAND_HZ[1], nyquist), include_low=False)]
        low = power[_band(frequencies, *RATIO_LOW_BAND_HZ)]
        features["band_power_ratio"][roi] = low.sum() / max(high.sum(), RATIO_FLOOR * power.sum())
        features["lag1_autocorrelation"][roi] = np.sum(series[1:] * series[:-1]) / np.sum(series**2)
        features["outlier_fraction"][roi] = np.mean(np.abs(series) > OUTLIER_Z * roi_sd)
    return features, scale


# ----------------------------------------------------------------------------------- ICA
def _falff_of(series: np.ndarray, tr: float) -> float:
    frequencies, power = signal.periodogram(signal.detrend(series), fs=1.0 / tr)
    amplitude = np.sqrt(power[1:])
    total = amplitude.sum()
    return float(amplitude[_band(frequencies[1:], *ALFF_BAND_HZ)].sum() / total) if total > 0 else 0.0


def baseline_ica_features(scan: np.ndarray, tr: float, reference: BaselineReference) -> dict:
    """Dual-regression FNC and fALFF of one scan, one domain at a time.

    Returns:
        ``{"fnc": (K, K) Fisher z (diagonal: mean within-domain FNC), "falff": (K,), "valid": (K,) bool}``.
    """
    z = signal.detrend(np.asarray(scan, dtype=np.float64), axis=0)
    sd = z.std(axis=0, ddof=1)
    sd[sd < np.finfo(np.float64).eps] = 1.0
    z = (z - z.mean(axis=0)) / sd
    components = np.linalg.lstsq(reference.ica_maps.T, z.T, rcond=None)[0].T  # (T, C)
    components = (components - components.mean(axis=0)) / components.std(axis=0, ddof=1)

    n_networks = len(reference.network_names)
    domains = np.zeros((components.shape[0], n_networks))
    valid = np.zeros(n_networks, dtype=bool)
    fnc = np.zeros((n_networks, n_networks))
    falff = np.zeros(n_networks)
    for k in range(n_networks):
        members = np.flatnonzero(reference.ica_component_network == k)
        if len(members) == 0:
            continue
        valid[k] = True
        domains[:, k] = components[:, members].mean(axis=1)
        if len(members) > 1:
            within = _fisher(np.corrcoef(components[:, members].T))
            fnc[k, k] = within[np.triu_indices(len(members), 1)].mean()
        falff[k] = _falff_of(domains[:, k], tr)
    for a in range(n_networks):
        for b in range(a + 1, n_networks):
            if valid[a] and valid[b]:
                fnc[a, b] = fnc[b, a] = _fisher(np.corrcoef(domains[:, a], domains[:, b])[0, 1])
    return {"fnc": fnc, "falff": falff, "valid": valid}


# ----------------------------------------------------------------------------------- everything
def baseline_scan_features(
    scan: np.ndarray, tr: float, reference: BaselineReference
) -> tuple[dict[str, float], dict, str]:
    """Every feature of one scan, keyed as :class:`DescriptorFacts` keys them (``feature_key``).

    Returns:
        ({feature key: raw value}, the graph metrics dict (for the modularity checks), the temporal
        scale ("percent" or "as_given")).
    """
    names = reference.network_names
    features: dict[str, float] = {}
    fc = baseline_connectivity(scan, tr, reference)
    for pair, value in baseline_network_fc(fc, reference).items():
        features[feature_key("fc", pair)] = value

    gradients = baseline_gradient_features(fc, reference)
    for g in range(reference.n_gradients):
        features[feature_key("gradient_range", (), g + 1)] = float(gradients["range"][g])
        features[feature_key("gradient_variance", (), g + 1)] = float(gradients["variance"][g])
        for k, name in enumerate(names):
            features[feature_key("gradient_network_mean", (name,), g + 1)] = float(gradients["network_means"][g, k])

    graph = baseline_graph_features(fc, reference)
    for metric in ("modularity", "global_efficiency", "clustering"):
        features[feature_key(metric)] = float(graph[metric])
    for name, value in zip(names, graph["network_strength"]):
        features[feature_key("strength", (name,))] = value

    per_roi, scale = baseline_temporal_features(scan, tr)
    for metric in TEMPORAL_METRICS:
        features[feature_key(metric)] = float(np.mean(per_roi[metric]))
        for name, value in zip(names, _network_mean(per_roi[metric], reference)):
            features[feature_key(metric, (name,))] = value

    ica = baseline_ica_features(scan, tr, reference)
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            if ica["valid"][a] and ica["valid"][b]:
                features[feature_key("fnc", (names[a], names[b]))] = float(ica["fnc"][a, b])
        if ica["valid"][a]:
            features[feature_key("ica_falff", (names[a],))] = float(ica["falff"][a])
    return features, graph, scale


def baseline_descriptors(
    scans: Sequence[np.ndarray], trs: Sequence[float], reference: BaselineReference
) -> list[dict[str, tuple[float, float | None]]]:
    """Per scan: {feature key: (raw value, cohort z rounded as in the facts, or None)}.

    As in the extractor, z is None where the reference has no spread, and for temporal SD and ALFF
    when the scan's units (percent change or as given) differ from the reference's.
    """
    results = []
    for scan, tr in zip(scans, trs):
        features, _, scale = baseline_scan_features(scan, tr, reference)
        described = {}
        for key, value in features.items():
            z = None
            unit_mismatch = scale != reference.temporal_scale and key.split("/")[1] in UNIT_DEPENDENT_METRICS
            if key in reference.feature_stats and not unit_mismatch:
                mean, sd = reference.feature_stats[key]
                if sd > 1e-12 * max(1.0, abs(mean)):
                    z = round_z((value - mean) / sd)
            described[key] = (value, z)
        results.append(described)
    return results


# ----------------------------------------------------------------------------------- equal outputs
def value_agreement(
    facts: Sequence[DescriptorFacts], baseline: Sequence[dict[str, tuple[float, float | None]]]
) -> dict[str, tuple[float, int]]:
    """How closely our records and the baseline's agree, per feature family (modularity left out).

    Args:
        facts: our records of some scans (``DescriptorExtractor.compute_batch``).
        baseline: :func:`baseline_descriptors` of the same scans.

    Returns:
        {family: (max relative difference of the raw values, number of rounded z-scores that
        differ)}. The relative difference of a and b is ``|a - b| / max(|a|, |b|)`` (0 when both
        are 0).

    Raises:
        ValueError: different numbers of scans, or a scan whose two records name different features.
    """
    if len(facts) != len(baseline):
        raise ValueError(
            f"Got {len(facts)} records of ours but {len(baseline)} of the baseline; describe the same scans."
        )
    worst: dict[str, tuple[float, int]] = {}
    for record, described in zip(facts, baseline):
        by_key = record.by_key()
        if set(by_key) != set(described):
            missing, extra = sorted(set(by_key) - set(described)), sorted(set(described) - set(by_key))
            raise ValueError(
                f"The baseline describes other features than ours: it lacks {missing[:5]} and adds {extra[:5]}; "
                "both must be computed with the same fitted reference."
            )
        for key, fact in by_key.items():
            if fact.metric == "modularity":
                continue
            value, z = described[key]
            scale = max(abs(fact.value), abs(value))
            relative = abs(fact.value - value) / scale if scale > 0 else 0.0
            previous, mismatches = worst.get(fact.family, (0.0, 0))
            worst[fact.family] = (max(previous, relative), mismatches + (z != fact.z))
    return worst


def modularity_agreement(fc: np.ndarray, reference: BaselineReference, ours_q: np.ndarray) -> dict[str, float]:
    """Checks of our modularity against NetworkX (the two Louvain searches differ by construction).

    Args:
        fc: (B, R, R) Pearson FC of the scans.
        reference: the settings (density, resolution, seed).
        ours_q: (B,) our modularity of each scan.

    Returns:
        ``partition_error``: max over scans of |NetworkX's ``modularity()`` of OUR Louvain partition
        - our Q| (same partition, so rounding only); ``mean_gap``, ``max_gap``: |Q_ours -
        Q_networkx| of the two seeded searches; ``networkx_seed_sd``: the SD of NetworkX's own Q over
        :data:`LOUVAIN_SPREAD_SEEDS` seeds, averaged over scans (the scale of Louvain's own spread);
        ``mean_q``: our mean Q.
    """
    partition_error, algorithm_gap, networkx_spread = 0.0, [], []
    for matrix, q in zip(fc, ours_q):
        graph = thresholded_graph(matrix, reference.graph_density)
        weights = np.abs(matrix)
        np.fill_diagonal(weights, 0.0)
        labels = louvain_communities(
            proportional_threshold(weights, reference.graph_density),
            seed=reference.seed,
            resolution=reference.louvain_resolution,
        )
        ours_partition = [set(np.flatnonzero(labels == label).tolist()) for label in np.unique(labels)]
        q_of_ours = nx.community.modularity(
            graph, ours_partition, weight="weight", resolution=reference.louvain_resolution
        )
        partition_error = max(partition_error, abs(q_of_ours - q))
        networkx_q = [
            nx.community.modularity(
                graph,
                nx.community.louvain_communities(
                    graph, weight="weight", resolution=reference.louvain_resolution, seed=seed
                ),
                weight="weight",
                resolution=reference.louvain_resolution,
            )
            for seed in range(reference.seed, reference.seed + LOUVAIN_SPREAD_SEEDS)
        ]
        algorithm_gap.append(abs(q - networkx_q[0]))
        networkx_spread.append(float(np.std(networkx_q, ddof=1)))
    return {
        "partition_error": partition_error,
        "mean_gap": float(np.mean(algorithm_gap)),
        "max_gap": float(np.max(algorithm_gap)),
        "networkx_seed_sd": float(np.mean(networkx_spread)),
        "mean_q": float(np.mean(ours_q)),
    }
