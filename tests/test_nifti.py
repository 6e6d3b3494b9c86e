"""parcellate, read_tr and clean_roi_signals: exact means, agreement with nilearn, every refusal."""

import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from fmrilm.atlases import AtlasSpec, aal2
from fmrilm.nifti import clean_roi_signals, clear_parcellation_cache, parcellate, read_tr

FUNCTIONAL_NII = Path(nib.__file__).parent / "tests" / "data" / "functional.nii"
ATLAS_LABELS = (3, 7, 12, 20, 21, 30, 44, 45)


def make_atlas(shape=(24, 28, 24), voxel_mm=2.0, origin=(-24.0, -28.0, -24.0)) -> nib.Nifti1Image:
    """Eight box-shaped regions (labels ATLAS_LABELS) filling the centre of a 2 mm grid."""
    labels = np.zeros(shape, dtype=np.int16)
    nx, ny, nz = shape
    x_halves = (slice(2, nx // 2), slice(nx // 2, nx - 2))
    y_halves = (slice(2, ny // 2), slice(ny // 2, ny - 2))
    z_halves = (slice(2, nz // 2), slice(nz // 2, nz - 2))
    regions = iter(ATLAS_LABELS)
    for xs in x_halves:
        for ys in y_halves:
            for zs in z_halves:
                labels[xs, ys, zs] = next(regions)
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    affine[:3, 3] = origin
    return nib.Nifti1Image(labels, affine)


def make_image(rng, shape=(17, 19, 16), voxel_mm=3.0, origin=(-25.3, -29.1, -23.6), n_volumes=100, tr=2.0,
               mean=5.0, dtype=np.float32) -> nib.Nifti1Image:  # fmt: skip
    """Smooth random signals plus voxel noise and a drift, on a 3 mm grid shifted against the atlas grid."""
    slow = rng.standard_normal((n_volumes, 4)).cumsum(axis=0) / 5
    mixing = rng.standard_normal((4, *shape))
    data = np.einsum("tk,kxyz->xyzt", slow, mixing) + rng.standard_normal((*shape, n_volumes))
    data += mean + np.linspace(0.0, 2.0, n_volumes)
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    affine[:3, 3] = origin
    image = nib.Nifti1Image(np.asfortranarray(data.astype(dtype)), affine)
    image.header.set_xyzt_units("mm", "sec")
    image.header["pixdim"][4] = tr
    return image


def nilearn_signals(image, atlas_img, confounds=None, **options) -> tuple[np.ndarray, list[int]]:
    from nilearn.maskers import NiftiLabelsMasker

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nilearn's FutureWarnings and resampling notes
        masker = NiftiLabelsMasker(atlas_img, **options)
        signals = masker.fit_transform(image, confounds=confounds)
    return signals, [int(v) for k, v in masker.region_ids_.items() if k != "background"]


@pytest.fixture
def atlas_img():
    return make_atlas()


@pytest.fixture
def image(rng):
    return make_image(rng)


# ---------------------------------------------------------------------------- exact means
def test_means_on_the_atlas_grid_equal_a_direct_average(rng, atlas_img):
    labels = np.asarray(atlas_img.dataobj)
    data = rng.standard_normal((*labels.shape, 12)).astype(np.float32)
    image = nib.Nifti1Image(data, atlas_img.affine)
    result = parcellate(image, atlas_img, tr=1.5)
    assert result.label_values == ATLAS_LABELS and result.missing_labels == ()
    assert result.time_series.dtype == np.float32 and result.time_series.shape == (12, len(ATLAS_LABELS))
    assert result.tr == 1.5 and result.overlap_fraction == pytest.approx(1.0) and result.roi_names is None
    for column, label in enumerate(ATLAS_LABELS):
        inside = labels == label
        np.testing.assert_allclose(result.time_series[:, column], data[inside].mean(axis=0), rtol=1e-6, atol=1e-6)
        assert result.voxel_counts[column] == inside.sum()


def test_atlas_spec_sets_column_order_and_names(rng, atlas_img):
    spec = AtlasSpec("boxes", ["r45", "r3", "r20"], ["A", "B", "A"], [45, 3, 20])
    data = rng.standard_normal((*atlas_img.shape, 5)).astype(np.float32)
    image = nib.Nifti1Image(data, atlas_img.affine)
    everything = parcellate(image, atlas_img)
    chosen = parcellate(image, atlas_img, spec)
    assert chosen.label_values == (45, 3, 20) and chosen.roi_names == ("r45", "r3", "r20")
    np.testing.assert_array_equal(chosen.time_series, everything.time_series[:, [7, 0, 3]])


# ---------------------------------------------------------------------------- agreement with nilearn
def test_plain_averaging_agrees_with_nilearn_across_grids(image, atlas_img):
    assert image.shape[:3] != atlas_img.shape  # the atlas really is resampled
    ours = parcellate(image, atlas_img)
    reference, ids = nilearn_signals(image, atlas_img)
    assert list(ours.label_values) == ids
    np.testing.assert_allclose(ours.time_series, reference, rtol=1e-5, atol=1e-5)
    assert ours.overlap_fraction > 0.8


def test_detrend_and_standardize_agree_with_nilearn_zscore_sample(image, atlas_img):
    ours = parcellate(image, atlas_img, detrend=True, standardize=True)
    reference, _ = nilearn_signals(image, atlas_img, detrend=True, standardize="zscore_sample")
    np.testing.assert_allclose(ours.time_series, reference, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours.time_series.std(axis=0, ddof=1), 1.0, atol=1e-5)


def test_band_pass_and_confounds_agree_with_nilearn(rng, image, atlas_img):
    # Agreement is at float32 precision: nilearn runs its cleaning in the data's float32, we in float64.
    confounds = rng.standard_normal((image.shape[3], 3))
    options = {"detrend": True, "low_pass": 0.1, "high_pass": 0.01}
    ours = parcellate(image, atlas_img, standardize=True, confounds=confounds, **options)
    reference, _ = nilearn_signals(
        image, atlas_img, confounds=confounds, standardize="zscore_sample", t_r=2.0, **options
    )
    np.testing.assert_allclose(ours.time_series, reference, rtol=1e-5, atol=1e-5)
    low_only = parcellate(image, atlas_img, low_pass=0.08)
    reference, _ = nilearn_signals(image, atlas_img, low_pass=0.08, t_r=2.0)
    np.testing.assert_allclose(low_only.time_series, reference, rtol=1e-6)


def test_real_aal2_atlas_on_nibabels_functional_image(aal2_atlas_files):
    atlas_path, _ = aal2_atlas_files
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "drop" removes the absent labels without a warning
        ours = parcellate(FUNCTIONAL_NII, atlas_path, min_overlap=0, on_missing_labels="drop")
    reference, ids = nilearn_signals(str(FUNCTIONAL_NII), str(atlas_path))
    assert list(ours.label_values) == ids and ours.tr == 2.0
    np.testing.assert_allclose(ours.time_series, reference, rtol=1e-5)
    assert 0 < ours.overlap_fraction < 0.1  # the image covers a thin slab of the brain

    with pytest.warns(UserWarning, match=r"2001 \(Precentral_L\)"):
        spec_result = parcellate(FUNCTIONAL_NII, atlas_path, aal2(), min_overlap=0)
    assert spec_result.time_series.shape == (20, 94) and spec_result.roi_names == aal2().roi_names
    present = [aal2().label_values.index(v) for v in ids if v in aal2().label_values]
    np.testing.assert_array_equal(spec_result.time_series[:, present], ours.time_series[:, : len(present)])
    missing = np.setdiff1d(np.arange(94), present)
    assert not spec_result.time_series[:, missing].any() and len(spec_result.missing_labels) == len(missing)


def test_default_min_overlap_refuses_the_tiny_field_of_view(aal2_atlas_files):
    atlas_path, _ = aal2_atlas_files
    with pytest.raises(
        ValueError, match=r"Only \d+\.\d% of the atlas's labelled voxels .*Register it to the atlas space"
    ):
        parcellate(FUNCTIONAL_NII, atlas_path, aal2())


def test_overlap_counts_only_voxels_with_signal(rng, atlas_img):
    data = rng.standard_normal((*atlas_img.shape, 6)).astype(np.float32)
    data[: atlas_img.shape[0] // 2] = 0.0  # a brain mask that cut away half of the atlas
    image = nib.Nifti1Image(data, atlas_img.affine)
    result = parcellate(image, atlas_img, min_overlap=0.4)
    assert result.overlap_fraction == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"Only 50\.0% .* on voxels with signal"):
        parcellate(image, atlas_img, min_overlap=0.6)


# ---------------------------------------------------------------------------- missing labels
@pytest.fixture
def cropped_image(rng, atlas_img):
    """The atlas grid cut to y < 14 and z < 12: only the two low-y, low-z boxes (labels 3 and 21) remain."""
    data = rng.standard_normal((24, 14, 12, 8)).astype(np.float32)
    return nib.Nifti1Image(data, atlas_img.affine)


def test_missing_labels_warn_drop_raise(cropped_image, atlas_img):
    spec = AtlasSpec("boxes", [f"r{v}" for v in ATLAS_LABELS], ["N"] * 8, ATLAS_LABELS)
    with pytest.warns(UserWarning, match=r"columns are zeros: outside the image's field of view: 7 \(r7\), 12 \(r12\)"):
        warned = parcellate(cropped_image, atlas_img, spec, min_overlap=0)
    kept = [0, 4]  # labels 3 and 21: the low-y, low-z boxes
    assert warned.missing_labels == (7, 12, 20, 30, 44, 45)
    assert warned.label_values == ATLAS_LABELS and not warned.time_series[:, [1, 2, 3, 5, 6, 7]].any()
    np.testing.assert_array_equal(warned.voxel_counts[[1, 2, 3, 5, 6, 7]], 0)

    dropped = parcellate(cropped_image, atlas_img, spec, min_overlap=0, on_missing_labels="drop")
    assert dropped.label_values == (3, 21) and dropped.roi_names == ("r3", "r21")
    np.testing.assert_array_equal(dropped.time_series, warned.time_series[:, kept])
    assert dropped.missing_labels == warned.missing_labels

    with pytest.raises(ValueError, match=r"6 requested label\(s\) have no voxel inside the image.*on_missing_labels"):
        parcellate(cropped_image, atlas_img, spec, min_overlap=0, on_missing_labels="raise")


def test_label_absent_from_the_atlas_image_is_reported_as_such(image, atlas_img):
    spec = AtlasSpec("boxes", ["r3", "r99"], ["N", "N"], [3, 99])
    with pytest.warns(UserWarning, match=r"not in the atlas image at all: 99 \(r99\)"):
        result = parcellate(image, atlas_img, spec)
    assert result.missing_labels == (99,) and not result.time_series[:, 1].any()


def test_spec_for_another_atlas_is_refused(image, atlas_img):
    with pytest.raises(
        ValueError, match=r"None of the requested label values \(2001, 2002, .*\(94 in all\)\).*3, 7, 12"
    ):
        parcellate(image, atlas_img, aal2())


# ---------------------------------------------------------------------------- TR
@pytest.mark.parametrize(("unit", "pixdim", "seconds"), [("sec", 2.0, 2.0), ("msec", 720.0, 0.72), ("usec", 8e5, 0.8)])
def test_header_tr_is_converted_to_seconds(rng, atlas_img, unit, pixdim, seconds):
    image = make_image(rng, n_volumes=4)
    image.header.set_xyzt_units("mm", unit)
    image.header["pixdim"][4] = pixdim
    assert read_tr(image) == pytest.approx(seconds)
    assert parcellate(image, atlas_img).tr == pytest.approx(seconds)
    assert parcellate(image, atlas_img, tr=3.0).tr == 3.0


def test_tr_is_none_without_header_and_filtering_then_asks_for_it(rng, atlas_img):
    image = make_image(rng, n_volumes=60, tr=0.0)
    assert parcellate(image, atlas_img).tr is None
    with pytest.raises(ValueError, match="Pass tr="):
        parcellate(image, atlas_img, low_pass=0.1)
    with pytest.raises(ValueError, match="No repetition time found: the NIfTI header's pixdim.4. is 0, .*Pass tr="):
        read_tr(image)


def test_unknown_time_unit_gives_no_tr(rng, atlas_img):
    untouched = nib.Nifti1Image(np.zeros((2, 2, 2, 4), dtype=np.float32), np.eye(4))  # nibabel's default pixdim[4] = 1
    assert untouched.header.get_xyzt_units()[1] == "unknown" and untouched.header.get_zooms()[3] == 1.0
    with pytest.raises(ValueError, match="pixdim.4. is 1 with time unit 'unknown'"):
        read_tr(untouched)
    assert read_tr(untouched, {"RepetitionTime": 0.8}) == 0.8
    image = make_image(rng, n_volumes=4)
    image.header.set_xyzt_units("mm", "unknown")
    assert parcellate(image, atlas_img).tr is None


def test_sidecar_wins_and_disagreement_warns(rng, tmp_path):
    image = make_image(rng, n_volumes=4, tr=2.5)
    with pytest.warns(UserWarning, match=r"sidecar \(2 s\) disagrees with the NIfTI header \(2.5 s\)"):
        assert read_tr(image, {"RepetitionTime": 2.0}) == 2.0
    sidecar = tmp_path / "bold.json"
    sidecar.write_text(json.dumps({"RepetitionTime": 2.5, "TaskName": "rest"}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_tr(image, sidecar) == 2.5
    assert read_tr(image, {"TaskName": "rest"}) == 2.5  # no RepetitionTime: the header decides


def test_bad_tr_inputs_are_refused(rng, tmp_path, atlas_img):
    image = make_image(rng, n_volumes=4)
    with pytest.raises(ValueError, match="RepetitionTime in the sidecar is '2'"):
        read_tr(image, {"RepetitionTime": "2"})
    with pytest.raises(FileNotFoundError):
        read_tr(image, tmp_path / "absent.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{RepetitionTime: 2")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_tr(image, broken)
    with pytest.raises(ValueError, match="positive number of seconds"):
        parcellate(image, atlas_img, tr=-1.0)


# ---------------------------------------------------------------------------- inputs and refusals
def test_three_dimensional_image_is_refused(image, atlas_img):
    first_volume = nib.Nifti1Image(np.asarray(image.dataobj)[..., 0], image.affine)
    with pytest.raises(ValueError, match=r"a 4-D \(x, y, z, time\) image is expected"):
        parcellate(first_volume, atlas_img)


def test_probabilistic_or_continuous_atlases_are_refused(image, atlas_img):
    maps = nib.Nifti1Image(np.zeros((*atlas_img.shape, 3), dtype=np.float32), atlas_img.affine)
    with pytest.raises(ValueError, match="Probabilistic"):
        parcellate(image, maps)
    continuous = nib.Nifti1Image(np.asarray(atlas_img.dataobj) * 0.5, atlas_img.affine)
    with pytest.raises(ValueError, match="non-integer values"):
        parcellate(image, continuous)
    empty = nib.Nifti1Image(np.zeros(atlas_img.shape, dtype=np.int16), atlas_img.affine)
    with pytest.raises(ValueError, match="no non-zero label"):
        parcellate(image, empty)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"on_missing_labels": "ignore"}, "choose one of"),
        ({"min_overlap": 1.5}, "between 0 and 1"),
        ({"chunk_volumes": 0}, "positive integer"),
        ({"low_pass": 0.3}, r"at or above the Nyquist frequency 0.25 Hz"),
        ({"low_pass": 0.05, "high_pass": 0.1}, "must be below low_pass"),
        ({"high_pass": -0.01}, "positive number of Hz"),
        ({"standardize": "psc"}, "use True"),
        ({"detrend": "yes"}, "True or False"),
        ({"atlas": "aal2"}, None),
    ],
)
def test_bad_options_are_refused(image, atlas_img, options, message):
    if message is None:
        with pytest.raises(TypeError, match="AtlasSpec or None"):
            parcellate(image, atlas_img, **options)
    else:
        with pytest.raises(ValueError, match=message):
            parcellate(image, atlas_img, **options)


def test_bad_paths_and_types(tmp_path, atlas_img, image):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        parcellate(tmp_path / "none.nii.gz", atlas_img)
    with pytest.raises(TypeError, match="file path or a nibabel image"):
        parcellate(np.zeros((2, 2, 2, 2)), atlas_img)
    not_nifti = tmp_path / "x.nii"
    not_nifti.write_text("hello")
    with pytest.raises(ValueError, match="Could not read"):
        parcellate(not_nifti, atlas_img)


def test_short_series_cannot_be_filtered(rng, atlas_img):
    with pytest.raises(ValueError, match="has 15 volumes; the order-5 Butterworth filter needs more than 18"):
        parcellate(make_image(rng, n_volumes=15), atlas_img, low_pass=0.1)


def test_non_finite_voxels_become_zero_with_a_warning(image, atlas_img):
    data = np.asarray(image.dataobj).copy()
    data[8, 9, 8, :5] = np.nan
    data[5, 5, 5, 3] = np.inf
    broken = nib.Nifti1Image(data, image.affine, image.header)
    with pytest.warns(UserWarning, match="6 NaN or infinite values"):
        ours = parcellate(broken, atlas_img, detrend=True)
    assert np.all(np.isfinite(ours.time_series))
    reference, _ = nilearn_signals(broken, atlas_img, detrend=True)
    np.testing.assert_allclose(ours.time_series, reference, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- files, chunks, cache
def test_files_chunks_and_cache_give_identical_results(tmp_path, image, atlas_img):
    image_path, atlas_path = tmp_path / "bold.nii.gz", tmp_path / "atlas.nii.gz"
    nib.save(image, image_path)
    nib.save(atlas_img, atlas_path)
    in_memory = parcellate(image, atlas_img)
    from_files = parcellate(image_path, atlas_path)
    np.testing.assert_array_equal(from_files.time_series, in_memory.time_series)
    assert from_files.tr == in_memory.tr == 2.0
    chunked = parcellate(image_path, atlas_path, chunk_volumes=7)
    np.testing.assert_allclose(chunked.time_series, in_memory.time_series, rtol=1e-6)
    clear_parcellation_cache()
    again = parcellate(str(image_path), str(atlas_path), chunk_volumes=100)
    np.testing.assert_array_equal(again.time_series, from_files.time_series)


def test_integer_images_with_scaling_are_read_in_physical_units(rng, atlas_img):
    raw = rng.integers(0, 1000, size=(*atlas_img.shape, 5)).astype(np.int16)
    image = nib.Nifti1Image(raw, atlas_img.affine)
    image.header.set_slope_inter(0.5, 10.0)
    image = nib.Nifti1Image.from_bytes(image.to_bytes())
    labels = np.asarray(atlas_img.dataobj)
    result = parcellate(image, atlas_img)
    np.testing.assert_allclose(result.time_series[:, 0], raw[labels == 3].mean(axis=0) * 0.5 + 10.0, rtol=1e-6)


# ---------------------------------------------------------------------------- confounds
def test_confounds_from_a_tsv_file_with_chosen_columns(tmp_path, rng, image, atlas_img):
    n = image.shape[3]
    table = pd.DataFrame(
        {"trans_x": rng.standard_normal(n), "rot_z": rng.standard_normal(n), "csf": rng.standard_normal(n)}
    )
    table["framewise_displacement"] = np.r_[np.nan, rng.random(n - 1)]
    path = tmp_path / "confounds.tsv"
    table.to_csv(path, sep="\t", index=False, na_rep="n/a")
    from_file = parcellate(image, atlas_img, confounds=path, confound_columns=["trans_x", "rot_z"])
    from_array = parcellate(image, atlas_img, confounds=table[["trans_x", "rot_z"]].to_numpy())
    np.testing.assert_allclose(from_file.time_series, from_array.time_series, rtol=1e-6)
    from_frame = parcellate(image, atlas_img, confounds=table, confound_columns=["trans_x", "rot_z"])
    np.testing.assert_array_equal(from_frame.time_series, from_file.time_series)

    with pytest.raises(ValueError, match=r"\['framewise_displacement'\] contain missing values"):
        parcellate(image, atlas_img, confounds=path, confound_columns=["trans_x", "framewise_displacement"])
    with pytest.raises(ValueError, match=r"\['motion'\] not found"):
        parcellate(image, atlas_img, confounds=path, confound_columns=["motion"])
    with pytest.raises(ValueError, match="confound_columns"):
        parcellate(image, atlas_img, confounds=path)
    with pytest.raises(ValueError, match=r"shape \(99, 2\) but the image has 100 volumes"):
        parcellate(image, atlas_img, confounds=np.zeros((99, 2)))
    with pytest.raises(ValueError, match="without confounds"):
        parcellate(image, atlas_img, confound_columns=["trans_x"])


# ---------------------------------------------------------------------------- clean_roi_signals
def test_clean_agrees_with_nilearn_in_float64(rng):
    from nilearn.signal import clean

    signals = rng.standard_normal((150, 6)).cumsum(axis=0) + 50.0
    confounds = rng.standard_normal((150, 2))
    options = {"detrend": True, "low_pass": 0.2, "high_pass": 0.02}
    ours = clean_roi_signals(signals, 1.0, standardize=True, confounds=confounds, **options)
    reference = clean(signals, t_r=1.0, standardize="zscore_sample", confounds=confounds, **options)
    np.testing.assert_allclose(ours, reference, rtol=1e-9, atol=1e-9)


def test_clean_steps_do_what_they_say(rng):
    from scipy.signal import detrend as scipy_detrend

    signals = rng.standard_normal((80, 3)) + np.arange(80)[:, None] * [0.1, -2.0, 0.0]
    np.testing.assert_allclose(clean_roi_signals(signals, detrend=True), scipy_detrend(signals, axis=0), atol=1e-10)
    standardized = clean_roi_signals(signals, standardize=True)
    np.testing.assert_allclose(standardized.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(standardized.std(axis=0, ddof=1), 1.0)
    confound = rng.standard_normal(80)
    residual = clean_roi_signals(signals + 3.0 * confound[:, None], confounds=confound)
    np.testing.assert_allclose((residual - residual.mean(axis=0)).T @ (confound - confound.mean()), 0.0, atol=1e-9)
    constant = clean_roi_signals(np.ones((10, 2)), standardize=True)
    np.testing.assert_array_equal(constant, 0.0)


def test_clean_refusals(rng):
    with pytest.raises(ValueError, match=r"\(time, rois\) array"):
        clean_roi_signals(np.zeros(10))
    with pytest.raises(ValueError, match="NaN"):
        clean_roi_signals(np.full((10, 2), np.nan))
    with pytest.raises(ValueError, match="span 9 dimensions for 10 volumes"):
        clean_roi_signals(rng.standard_normal((10, 2)), confounds=rng.standard_normal((10, 9)))
    with pytest.raises(ValueError, match="at least 3 volumes"):
        clean_roi_signals(np.zeros((2, 2)), standardize=True)
