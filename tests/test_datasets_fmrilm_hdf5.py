"""The fmrilm_hdf5 builder on small files written with h5py in the official fMRI-LM layout."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from fmrilm.datasets_scripts.fmrilm_hdf5 import OFFICIAL_ATLAS, build_fmrilm_hdf5


def _write_official(path, samples: list[np.ndarray], subjects, sessions, dataset="ukb", shapes=None, extra=None):
    """The layout of SPEC.md 1.2: time_series/sample_NNNNNN (rois, time) + aligned metadata byte strings."""
    with h5py.File(path, "w") as handle:
        for index, array in enumerate(samples):
            handle[f"time_series/sample_{index:06d}"] = array
        metadata = handle.create_group("metadata")
        metadata["subjects"] = np.array([s.encode() for s in subjects])
        metadata["sessions"] = np.array([s.encode() for s in sessions])
        metadata["file_ids"] = np.array([f"file{i}".encode() for i in range(len(subjects))])
        metadata["file_paths"] = np.array([f"/data/{s}/rest.nii.gz".encode() for s in subjects])
        metadata["dataset_names"] = np.array([dataset.encode()] * len(subjects))
        metadata["shapes"] = np.array(shapes if shapes is not None else [a.shape for a in samples])
        for key, value in (extra or {}).items():
            handle[key] = value
    return path


def test_official_layout_is_transposed_and_described(tmp_path, rng):
    samples = [rng.standard_normal((450, 12 + i)).astype(np.float32) for i in range(4)]
    path = _write_official(tmp_path / "ukb.h5", samples, ["1001", "1001", "1002", "1003"], ["2", "3", "2", ""])
    result = build_fmrilm_hdf5(path, cache_dir=tmp_path / "c", progress=False)
    assert result.skipped == [] and result.n_rows == 4
    rows = {r["scan_id"]: r for split in result.dataset.values() for r in split.with_format("numpy")}
    expected_ids = ["ukb/sub-1001/ses-2/sample_000000", "ukb/sub-1001/ses-3/sample_000001",
                    "ukb/sub-1002/ses-2/sample_000002", "ukb/sub-1003/ses-none/sample_000003"]  # fmt: skip
    assert sorted(rows) == expected_ids
    for scan_id, array in zip(expected_ids, samples):
        np.testing.assert_array_equal(rows[scan_id]["bold"], array.T)
        assert rows[scan_id]["tr"] == np.float32(2.0) and rows[scan_id]["atlas"] == OFFICIAL_ATLAS
        assert rows[scan_id]["dataset"] == "ukb" and rows[scan_id]["n_rois"] == 450
    assert rows[expected_ids[3]]["session_id"] == ""
    # both scans of subject 1001 share a split
    assert len({name for name, split in result.dataset.items() if "1001" in split["subject_id"]}) == 1
    assert "2 s for every sample" in result.provenance.tr_source


def test_skips_and_overrides(tmp_path, rng):
    good = [rng.standard_normal((8, 20)).astype(np.float32) for _ in range(3)]
    samples = good + [rng.standard_normal((20, 8)).astype(np.float32), rng.standard_normal((8, 15)).astype(np.float32)]
    shapes = [a.shape for a in samples]
    shapes[4] = (8, 16)  # metadata disagrees with the stored array
    path = _write_official(
        tmp_path / "x.h5", samples, ["a", "b", "c", "d", "e"], [""] * 5, dataset="abcd", shapes=shapes,
        extra={"time_series/sample_000009": np.zeros((8, 20), np.float32), "time_series/extra": np.zeros((8, 20))},
    )  # fmt: skip
    result = build_fmrilm_hdf5(
        path, tr=0.8, atlas="toy8", dataset_name="renamed", cache_dir=tmp_path / "c", progress=False
    )
    assert result.n_inputs == 7 == result.n_rows + len(result.skipped)
    skips = {s.input: s.reason for s in result.skipped}
    assert "stored (time, rois)" in skips["x.h5:time_series/sample_000003"]
    assert "differs from metadata/shapes" in skips["x.h5:time_series/sample_000004"]
    assert "no metadata entry" in skips["x.h5:time_series/sample_000009"]
    assert "not a sample_NNNNNN key" in skips["x.h5:time_series/extra"]
    for split in result.dataset.values():
        assert set(split["dataset"]) == {"renamed"} and set(split["atlas"]) == {"toy8"}
        assert np.allclose(split["tr"], 0.8)


def test_layout_errors(tmp_path, rng):
    with pytest.raises(FileNotFoundError):
        build_fmrilm_hdf5(tmp_path / "missing.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(ValueError, match="not a readable HDF5 file"):
        build_fmrilm_hdf5(tmp_path / "text.h5")
    with h5py.File(tmp_path / "flat.h5", "w") as handle:
        handle["x"] = np.zeros((3, 3))
    with pytest.raises(ValueError, match="no 'time_series' group"):
        build_fmrilm_hdf5(tmp_path / "flat.h5")
    samples = [rng.standard_normal((8, 10)).astype(np.float32)] * 2
    path = _write_official(tmp_path / "small.h5", samples, ["a", "b"], ["", ""])
    with pytest.raises(ValueError, match="name their atlas"):
        build_fmrilm_hdf5(path)
    with pytest.raises(ValueError, match="tr must be a positive number"):
        build_fmrilm_hdf5(path, tr=0)
    with h5py.File(path, "a") as handle:
        del handle["metadata/dataset_names"]
        handle["metadata/sessions_extra"] = np.zeros(1)
    with pytest.raises(ValueError, match="lacks metadata/dataset_names"):
        build_fmrilm_hdf5(path, atlas="toy")
    with h5py.File(path, "a") as handle:
        del handle["metadata/sessions"]
        handle["metadata/sessions"] = np.array([b"1"])
    with pytest.raises(ValueError, match="different lengths"):
        build_fmrilm_hdf5(path, atlas="toy", dataset_name="d")
