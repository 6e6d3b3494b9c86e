"""Tests of the data-driven group ICA, dual regression and ICA features (fmrilm/descriptors/ica.py).

Known answers: independent non-Gaussian sources mixed by known maps (recovered up to sign/order,
which the module fixes deterministically), noise-free dual regression, hand-built loadings for the
network assignment, numpy's corrcoef for FNC and temporal.falff for the domain fALFF.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from fmrilm.atlases import aal2
from fmrilm.descriptors.ica import (
    GroupICA,
    _concatenated,
    assign_components,
    dual_regression,
    fit_group_ica,
    ica_features,
)
from fmrilm.descriptors.temporal import falff
from fmrilm.nifti import clean_roi_signals

NAMES = ("A", "B", "C")
# 12 ROIs: network A = ROIs 0-3, B = 4-7, C = 8-11.
INDICES = np.repeat([0, 1, 2], 4)


def _sources(rng: np.random.Generator, n_timepoints: int) -> np.ndarray:
    """Four unit-variance, independent, non-Gaussian sources (T, 4)."""
    t = np.arange(n_timepoints)
    sources = np.column_stack(
        [
            rng.laplace(size=n_timepoints),
            rng.uniform(-1, 1, size=n_timepoints),
            np.sign(np.sin(2 * np.pi * t / 37.0)) + 0.05 * rng.normal(size=n_timepoints),
            rng.exponential(size=n_timepoints),
        ]
    )
    return (sources - sources.mean(axis=0)) / sources.std(axis=0)


def _network_maps(rng: np.random.Generator) -> np.ndarray:
    """(4, 12) maps: components 0, 1 live in network A, component 2 in B, component 3 in C (plus small spill)."""
    maps = 0.05 * rng.normal(size=(4, 12))
    maps[0, 0:4] += [2.0, 1.5, 1.0, 0.5]
    maps[1, 2:4] += [1.2, 1.4]
    maps[2, 4:8] += [1.0, 0.8, 1.3, 0.9]
    maps[3, 8:12] += [0.6, 0.7, 0.5, 0.9]
    return maps


@pytest.fixture(scope="module")
def mixture():
    rng = np.random.default_rng(7)
    sources = _sources(rng, 6000)
    maps = _network_maps(rng)
    data = sources @ maps + 0.01 * rng.normal(size=(6000, 12))
    scans = [data[:3000], data[3000:]]
    return sources, maps, scans


@pytest.fixture(scope="module")
def fitted(mixture):
    _, _, scans = mixture
    return fit_group_ica(scans, INDICES, NAMES, n_components=4, seed=0)


# ============================================================================ fitting
def test_recovers_known_sources_and_maps(mixture, fitted):
    sources, maps, scans = mixture
    time_courses = np.concatenate([dual_regression(scan, fitted) for scan in scans])
    correlation = np.abs(np.corrcoef(time_courses.T, sources.T)[:4, 4:])
    assert np.all(correlation.max(axis=1) > 0.98)
    assert sorted(correlation.argmax(axis=1).tolist()) == [0, 1, 2, 3]  # one recovered component per source
    # maps, up to sign and scale (the per-ROI z-scoring rescales each ROI)
    scale = np.concatenate(scans).std(axis=0)
    true_maps = maps / scale
    cosine = np.abs(fitted.maps @ true_maps.T) / np.outer(
        np.linalg.norm(fitted.maps, axis=1), np.linalg.norm(true_maps, axis=1)
    )
    assert np.all(cosine.max(axis=1) > 0.98)


def test_deterministic_order_sign_and_result(mixture, fitted):
    _, _, scans = mixture
    again = fit_group_ica(scans, INDICES, NAMES, n_components=4, seed=0)
    np.testing.assert_array_equal(again.maps, fitted.maps)
    np.testing.assert_array_equal(again.component_network, fitted.component_network)
    energy = (fitted.maps**2).sum(axis=1)
    assert np.all(np.diff(energy) <= 0)  # largest explained variance first
    largest = np.argmax(np.abs(fitted.maps), axis=1)
    assert np.all(fitted.maps[np.arange(4), largest] > 0)  # largest loading positive
    other_seed = fit_group_ica(scans, INDICES, NAMES, n_components=4, seed=3)
    # a different FastICA start converges to the same components, fixed to the same order and sign
    np.testing.assert_allclose(other_seed.maps, fitted.maps, atol=0.05)


def test_components_are_assigned_to_their_networks(mixture, fitted):
    _, maps, _ = mixture
    matched = np.abs(fitted.maps @ maps.T).argmax(axis=1)  # which true component each fitted one is
    expected_network = np.array([0, 0, 1, 2])[matched]
    np.testing.assert_array_equal(fitted.component_network, expected_network)
    assert fitted.networks_without_components == ()


def test_assignment_rule_on_constructed_loadings():
    indices = np.array([0, 0, 0, 0, 1, 2, 2])
    maps = np.array(
        [
            [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0],  # all in network 0
            [0.5, 0.5, 0.5, 0.5, 0.9, 0.0, 0.0],  # larger total in 0, larger mean square in the 1-ROI network 1
            [0.0, 0.0, 0.0, 0.0, 0.0, -1.0, 1.0],  # sign does not matter
            [1.0, 0.0, 0.0, 0.0, 0.5, 0.0, 0.0],  # tie (mean square 0.25 in networks 0 and 1): the first wins
        ]
    )
    np.testing.assert_array_equal(assign_components(maps, indices, 3), [0, 1, 2, 0])
    # a network without ROIs never receives a component
    np.testing.assert_array_equal(assign_components(np.ones((1, 3)), np.array([0, 0, 2]), 3), [0])


def test_fit_warns_about_networks_without_components(mixture):
    _, _, scans = mixture
    with pytest.warns(UserWarning, match=r"assigned none to the networks \['[ABC]', '[ABC]'\]"):
        group = fit_group_ica(scans, INDICES, NAMES, n_components=1, seed=0)
    assert len(group.networks_without_components) == 2
    assert NAMES[group.component_network[0]] not in group.networks_without_components


def test_subsampling_takes_a_seeded_subset_of_standardised_rows(rng):
    scans = [rng.normal(size=(300, 5)), rng.normal(size=(100, 5))]
    full = np.concatenate([clean_roi_signals(scan, detrend=True, standardize=True) for scan in scans])
    subset = _concatenated(scans, 200, seed=0)
    assert subset.shape == (200, 5)
    full_rows = {row.tobytes() for row in full}
    assert all(row.tobytes() in full_rows for row in subset)
    np.testing.assert_array_equal(subset, _concatenated(scans, 200, seed=0))
    np.testing.assert_array_equal(_concatenated(scans, None, seed=0), full)


# ============================================================================ dual regression
def test_dual_regression_is_exact_on_noise_free_data(rng):
    maps = rng.normal(size=(4, 12))
    group = GroupICA(maps=maps, component_network=np.array([0, 1, 2, 2]), network_names=NAMES)
    sources = rng.normal(size=(200, 4))
    np.testing.assert_allclose(dual_regression(sources @ maps, group, standardize=False), sources, atol=1e-10)
    scan = sources @ maps + rng.normal(size=(200, 12))
    expected = clean_roi_signals(scan, detrend=True, standardize=True) @ np.linalg.pinv(maps)
    np.testing.assert_allclose(dual_regression(scan, group), expected, atol=1e-12)


def test_dual_regression_bad_input(fitted, rng):
    with pytest.raises(ValueError, match="transpose"):
        dual_regression(rng.normal(size=(12, 300)), fitted)
    scan = rng.normal(size=(300, 12))
    scan[5, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        dual_regression(scan, fitted)
    with pytest.raises(ValueError, match="at least 3"):
        dual_regression(rng.normal(size=(2, 12)), fitted)


# ============================================================================ features
def test_ica_features_equal_independent_computation(mixture, fitted):
    _, _, scans = mixture
    scan, tr = scans[0], 1.0
    features = ica_features(scan, tr, fitted)
    time_courses = dual_regression(scan, fitted)
    z = (time_courses - time_courses.mean(axis=0)) / time_courses.std(axis=0, ddof=1)
    domains = np.column_stack([z[:, fitted.component_network == k].mean(axis=1) for k in range(3)])
    off_diagonal = ~np.eye(3, dtype=bool)
    expected_fnc = np.arctanh(np.corrcoef(domains.T)[off_diagonal])
    np.testing.assert_allclose(features["fnc"][off_diagonal], expected_fnc, atol=1e-10)
    np.testing.assert_allclose(features["fnc"], features["fnc"].T)
    # within network A (two components): the Fisher z of their correlation; B and C have one component
    pair = np.flatnonzero(fitted.component_network == 0)
    assert features["fnc"][0, 0] == pytest.approx(np.arctanh(np.corrcoef(z[:, pair].T)[0, 1]))
    np.testing.assert_array_equal(features["within_valid"], [True, False, False])
    assert features["fnc"][1, 1] == 0.0 and features["fnc"][2, 2] == 0.0
    np.testing.assert_allclose(features["falff"], falff(domains, tr), atol=1e-12)
    np.testing.assert_array_equal(features["valid"], [True, True, True])


def test_missing_network_gives_zero_features_never_nan(rng):
    maps = rng.normal(size=(3, 12))
    group = GroupICA(maps=maps, component_network=np.array([0, 0, 1]), network_names=NAMES)
    assert group.networks_without_components == ("C",)
    features = ica_features(rng.normal(size=(300, 12)), 0.8, group)
    np.testing.assert_array_equal(features["valid"], [True, True, False])
    assert np.all(features["fnc"][2] == 0.0) and np.all(features["fnc"][:, 2] == 0.0)
    assert features["falff"][2] == 0.0
    assert all(np.isfinite(np.asarray(value, dtype=float)).all() for value in features.values())


def test_constant_scan_gives_finite_features():
    maps = np.eye(3, 12) + 0.1
    group = GroupICA(maps=maps, component_network=np.array([0, 1, 2]), network_names=NAMES)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        features = ica_features(np.ones((300, 12)), 2.0, group)
    assert np.all(features["fnc"] == 0.0) and np.all(features["falff"] == 0.0)


def test_too_short_scan_for_falff(fitted, rng):
    with pytest.raises(ValueError, match="at least 100 s"):
        ica_features(rng.normal(size=(40, 12)), 2.0, fitted)


# ============================================================================ save / load
def test_round_trip_through_json_is_exact(mixture, fitted):
    _, _, scans = mixture
    restored = GroupICA.from_dict(json.loads(json.dumps(fitted.to_dict())))
    np.testing.assert_array_equal(restored.maps, fitted.maps)
    np.testing.assert_array_equal(restored.component_network, fitted.component_network)
    assert restored.network_names == fitted.network_names
    first, second = ica_features(scans[1], 1.0, fitted), ica_features(scans[1], 1.0, restored)
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])


def test_group_ica_validation():
    with pytest.raises(ValueError, match="missing keys"):
        GroupICA.from_dict({"maps": [[1.0]]})
    with pytest.raises(ValueError, match="one per component"):
        GroupICA(maps=np.ones((2, 4)), component_network=np.array([0]), network_names=("A",))
    with pytest.raises(ValueError, match=r"outside 0..0"):
        GroupICA(maps=np.ones((1, 4)), component_network=np.array([1]), network_names=("A",))
    with pytest.raises(ValueError, match="NaN"):
        GroupICA(maps=np.full((1, 4), np.nan), component_network=np.array([0]), network_names=("A",))


def test_fit_bad_input(mixture, rng):
    _, _, scans = mixture
    with pytest.raises(ValueError, match="non-empty list"):
        fit_group_ica([], INDICES, NAMES)
    with pytest.raises(ValueError, match="from 1 to the number of ROIs"):
        fit_group_ica(scans, INDICES, NAMES, n_components=13)
    with pytest.raises(ValueError, match="one per ROI"):
        fit_group_ica(scans, INDICES[:10], NAMES, n_components=3)
    with pytest.raises(ValueError, match=r"scans\[1\] has shape"):
        fit_group_ica([scans[0], scans[1][:, :10]], INDICES, NAMES, n_components=3)
    duplicated = rng.normal(size=(500, 3))[:, [0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2]]
    with pytest.raises(ValueError, match="rank 3"):
        fit_group_ica([duplicated], INDICES, NAMES, n_components=4)


# ============================================================================ realistic data
def test_simulated_cohort_smoke():
    from fmrilm.simulate import simulate_cohort

    atlas = aal2()
    cohort = simulate_cohort(4, duration_s=200.0, tr=2.0, burn_in_s=20.0, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a network may be left without a component
        group = fit_group_ica([scan.bold for scan in cohort[:3]], atlas.network_indices(), atlas.network_names, 8)
    assert group.maps.shape == (8, 94)
    features = ica_features(cohort[3].bold, 2.0, group)
    n_networks = len(atlas.network_names)
    assert features["fnc"].shape == (n_networks, n_networks)
    assert features["falff"].shape == (n_networks,)
    assert np.isfinite(features["fnc"]).all() and np.isfinite(features["falff"]).all()
    np.testing.assert_allclose(features["fnc"], features["fnc"].T)
    assert np.all(features["falff"][features["valid"]] > 0)
