"""The bids builder: a tiny BIDS tree with a known atlas (exact means), bad runs, and the real MNI image."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fmrilm.datasets_scripts.bids import build_bids

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
LABELS = {10: "A", 20: "B", 30: "C"}


def _label_volume() -> np.ndarray:
    volume = np.zeros((4, 4, 2), dtype=np.int16)
    volume[:2, :, 0] = 10
    volume[2:, :3, 0] = 20
    volume[:, :, 1] = 30
    return volume


def _save_run(path: Path, data: np.ndarray, tr: float | None) -> None:
    image = nib.Nifti1Image(data, AFFINE)
    image.header.set_xyzt_units("mm", "sec")
    if data.ndim == 4:
        image.header.set_zooms((2.0, 2.0, 2.0, tr or 0.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)


@pytest.fixture
def bids_tree(tmp_path, rng):
    root = tmp_path / "ds001"
    atlas_image = tmp_path / "atlas.nii.gz"
    nib.save(nib.Nifti1Image(_label_volume(), AFFINE), atlas_image)
    atlas_table = tmp_path / "atlas.tsv"
    atlas_table.write_text("index\tname\tnetwork\n" + "".join(f"{v}\t{n}\tnet{v // 20}\n" for v, n in LABELS.items()))
    data = {}
    for subject, n_time in (("01", 15), ("02", 12)):
        data[subject] = rng.standard_normal((4, 4, 2, n_time)).astype(np.float32) + 100
        _save_run(root / f"sub-{subject}/ses-a/func/sub-{subject}_ses-a_task-rest_bold.nii.gz", data[subject], tr=1.5)
    (root / "sub-01/ses-a/func/sub-01_ses-a_task-rest_bold.json").write_text(json.dumps({"RepetitionTime": 1.5}))
    # a run without any TR (header pixdim[4] = 0, no sidecar)
    data["03"] = rng.standard_normal((4, 4, 2, 10)).astype(np.float32)
    _save_run(root / "sub-03/func/sub-03_task-rest_bold.nii.gz", data["03"], tr=None)
    # a "run" that is a 3-D volume: parcellation fails
    _save_run(
        root / "sub-04/func/sub-04_task-rest_bold.nii.gz", rng.standard_normal((4, 4, 2)).astype(np.float32), tr=None
    )
    (root / "sub-04/func/sub-04_task-rest_bold.json").write_text(json.dumps({"RepetitionTime": 2.0}))
    (root / "participants.tsv").write_text("participant_id\tage\tgroup\nsub-01\t25\tpatient\nsub-02\t31\tcontrol\n")
    return root, atlas_image, atlas_table, data


def _expected_means(data: np.ndarray) -> np.ndarray:
    volume = _label_volume()
    return np.stack([data[volume == value].mean(axis=0) for value in LABELS], axis=1)


def test_runs_are_parcellated_in_atlas_order(bids_tree, tmp_path):
    root, atlas_image, atlas_table, data = bids_tree
    result = build_bids(root, atlas=atlas_table, atlas_image=atlas_image, cache_dir=tmp_path / "c", progress=False)
    assert result.n_inputs == 4 == result.n_rows + len(result.skipped)
    skips = {s.input: s.reason for s in result.skipped}
    assert "pass --tr" in skips["sub-03/func/sub-03_task-rest_bold.nii.gz"]
    assert "4-D" in skips["sub-04/func/sub-04_task-rest_bold.nii.gz"]
    rows = {r["subject_id"]: r for split in result.dataset.values() for r in split.with_format("numpy")}
    assert sorted(rows) == ["01", "02"]
    for subject in ("01", "02"):
        row = rows[subject]
        np.testing.assert_allclose(row["bold"], _expected_means(data[subject]), rtol=1e-6)
        assert row["session_id"] == "a" and row["tr"] == np.float32(1.5) and row["atlas"] == "atlas"
        assert row["scan_id"] == f"ds001/sub-{subject}/ses-a/sub-{subject}_ses-a_task-rest_bold"
    assert (rows["01"]["age"], rows["01"]["group"]) == (25, "patient")
    assert (rows["02"]["age"], rows["02"]["group"]) == (31, "control")

    # --tr rescues the run without a repetition time
    result = build_bids(
        root, atlas=atlas_table, atlas_image=atlas_image, tr=2.5, cache_dir=tmp_path / "c", progress=False
    )
    rows = {r["subject_id"]: r for split in result.dataset.values() for r in split.with_format("numpy")}
    assert rows["03"]["tr"] == np.float32(2.5) and rows["01"]["tr"] == np.float32(1.5)
    np.testing.assert_allclose(rows["03"]["bold"], _expected_means(data["03"]), rtol=1e-5, atol=1e-6)
    assert any("2 subject(s) have no row" in note and "['03', '04']" in note for note in result.provenance.notes)
    assert (
        result.provenance.tr_source
        == "--tr: 1 run(s); BIDS sidecar RepetitionTime: 1 run(s); NIfTI header (pixdim[4]): 1 run(s)"
    )


def test_cleaning_and_confounds(bids_tree, tmp_path):
    root, atlas_image, atlas_table, _ = bids_tree
    confounds = root / "sub-01/ses-a/func/sub-01_ses-a_task-rest_desc-confounds_timeseries.tsv"
    confounds.write_text("trans_x\n" + "".join(f"{np.sin(i)}\n" for i in range(15)))
    result = build_bids(
        root, atlas=atlas_table, atlas_image=atlas_image, task="rest", detrend=True, standardize=True,
        confound_columns=["trans_x"], cache_dir=tmp_path / "c", progress=False,
    )  # fmt: skip
    skips = {s.input: s.reason for s in result.skipped}
    assert (
        "no confounds table sub-02_ses-a_task-rest_desc-confounds_timeseries.tsv"
        in skips["sub-02/ses-a/func/sub-02_ses-a_task-rest_bold.nii.gz"]
    )
    (row,) = [r for split in result.dataset.values() for r in split.with_format("numpy")]
    bold = row["bold"]
    np.testing.assert_allclose(bold.mean(axis=0), 0, atol=1e-5)  # standardized
    residual_correlation = np.corrcoef(bold[:, 0], np.sin(np.arange(15)))[0, 1]
    assert abs(residual_correlation) < 1e-4  # the confound was regressed out
    assert "Cleaning of the ROI series: detrend, standardize, confound regression" in result.provenance.source


def test_option_errors(bids_tree, tmp_path):
    root, atlas_image, atlas_table, _ = bids_tree
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_bids(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="without atlas"):
        build_bids(root, atlas_image=atlas_image)
    with pytest.raises(ValueError, match="on_missing_labels"):
        build_bids(root, atlas=atlas_table, atlas_image=atlas_image, on_missing_labels="drop")
    with pytest.raises(ValueError, match="Give the label image"):
        build_bids(root, atlas=atlas_table)
    with pytest.raises(ValueError, match="none with task='memory'"):
        build_bids(root, atlas=atlas_table, atlas_image=atlas_image, task="memory")
    with pytest.raises(ValueError, match="min_overlap must be a fraction"):
        build_bids(root, atlas=atlas_table, atlas_image=atlas_image, min_overlap=1.5)
    with pytest.raises(ValueError, match="tr must be a positive"):
        build_bids(root, atlas=atlas_table, atlas_image=atlas_image, tr=0)


def test_real_mni_image_with_the_aal2_atlas(tmp_path, aal2_atlas_files):
    """nibabel's real 4-D MNI image covers 3 slices: AAL2 regions outside it are zero columns only on request."""
    root = tmp_path / "real"
    func = root / "sub-r1/func/sub-r1_task-rest_bold.nii"
    func.parent.mkdir(parents=True)
    shutil.copy(Path(nib.__file__).parent / "tests/data/functional.nii", func)
    with pytest.raises(ValueError, match="No scan could be built") as refused:
        build_bids(root, download=False, min_overlap=0.0, cache_dir=tmp_path / "c", progress=False)
    assert "no voxel inside the image" in str(refused.value)
    result = build_bids(
        root, download=False, min_overlap=0.0, on_missing_labels="warn", cache_dir=tmp_path / "c", progress=False
    )
    (row,) = [r for split in result.dataset.values() for r in split.with_format("numpy")]
    assert row["bold"].shape == (20, 94) and row["atlas"] == "AAL2" and row["tr"] == np.float32(2.0)
    assert (row["bold"] == 0).all(axis=0).any() and not (row["bold"] == 0).all()
    assert any("zeros" in note for note in result.provenance.notes)
