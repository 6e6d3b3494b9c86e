"""The roi_folder builder: every file format, orientation, subjects/sessions, TRs, participants, bad files."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from datasets import Value
from scipy.io import savemat

from fmrilm.datasets_scripts.roi_folder import build_roi_folder, infer_n_rois
from fmrilm.splits import subject_split

R = 6


def _rows(result) -> dict[str, dict]:
    return {row["scan_id"]: row for split in result.dataset.values() for row in split.with_format("numpy")}


def _skips(result) -> dict[str, str]:
    return {s.input: s.reason for s in result.skipped}


def _write_mat73(path: Path, name: str, matrix: np.ndarray) -> None:
    """A MATLAB v7.3 file: HDF5 with a 512-byte MATLAB header; MATLAB stores arrays column-major."""
    with h5py.File(path, "w", userblock_size=512) as handle:
        handle[name] = matrix.T
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    with open(path, "r+b") as handle:
        handle.write(header.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02IM")


@pytest.fixture
def formats_folder(tmp_path, rng):
    """One scan per supported format, each with a known (time, rois) array."""
    root = tmp_path / "study"
    arrays = {}

    def add(relative: str, n_time: int) -> np.ndarray:
        arrays[relative] = rng.standard_normal((n_time, R)).astype(np.float32)
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        return arrays[relative]

    np.save(root / "sub-01/ses-1/sub-01_ses-1_bold.npy", add("sub-01/ses-1/sub-01_ses-1_bold.npy", 30))
    a = add("sub-01/ses-2/sub-01_ses-2_bold.csv", 25)
    np.savetxt(
        root / "sub-01/ses-2/sub-01_ses-2_bold.csv",
        a,
        delimiter=",",
        header=",".join(f"roi{i}" for i in range(R)),
        comments="",
        fmt="%.9g",
    )
    a = add("sub-02_bold.tsv", 21)
    np.savetxt(root / "sub-02_bold.tsv", a, delimiter="\t", fmt="%.9g")
    a = add("sub-03_bold.mat", 22)
    savemat(root / "sub-03_bold.mat", {"tc": a, "note": np.array([1.0])})
    a = add("sub-04_bold.mat", 23)
    _write_mat73(root / "sub-04_bold.mat", "roi_ts", a)
    a = add("sub-05_bold.h5", 24)
    with h5py.File(root / "sub-05_bold.h5", "w") as handle:
        handle["group/series"] = a
        handle["labels"] = np.arange(R)
    return root, arrays


def test_every_format_round_trips(formats_folder, tmp_path):
    root, arrays = formats_folder
    result = build_roi_folder(root, atlas="toy", tr=2.0, cache_dir=tmp_path / "cache", progress=False)
    assert result.skipped == []
    assert result.n_inputs == result.n_rows == len(arrays)
    rows = _rows(result)
    for relative, array in arrays.items():
        subject = relative.split("sub-")[1][:2]
        session = relative.split("ses-")[1][0] if "ses-" in relative else ""
        row = rows[f"study/sub-{subject}/ses-{session or 'none'}/{relative}"]
        np.testing.assert_array_equal(row["bold"], array)
        assert row["subject_id"] == subject and row["session_id"] == session
        assert row["dataset"] == "study" and row["atlas"] == "toy" and row["tr"] == np.float32(2.0)
        assert row["n_timepoints"] == array.shape[0] and row["n_rois"] == R
    assert result.provenance.options["n_rois"] == R and result.provenance.options["n_rois_inferred"]
    assert result.provenance.tr_source == "--tr: 6 scan(s)"


def test_bad_files_are_skipped_with_reasons(tmp_path, rng):
    root = tmp_path / "bad"
    root.mkdir()
    good = rng.standard_normal((20, R))
    for i in range(3):
        np.save(root / f"sub-{i}_bold.npy", good)
    (root / "sub-a_bold.npy").write_bytes(b"not an npy file at all")
    np.save(root / "sub-b_bold.npy", np.zeros((4, 5, R)))
    np.save(root / "sub-c_bold.npy", rng.standard_normal((R, 40)))
    bad = good.copy()
    bad[3, 2] = np.nan
    np.savetxt(root / "sub-d_bold.csv", bad, delimiter=",")
    (root / "sub-e_bold.csv").write_text("a,b\nx,y\n")
    (root / "sub-f_bold.csv").write_text("")
    savemat(root / "sub-g_bold.mat", {"one": good, "two": good})
    (root / "sub-h_bold.mat").write_bytes(b"MATLAB 5.0 broken" * 3)
    with h5py.File(root / "sub-i_bold.h5", "w") as handle:
        handle["time_series/sample_000000"] = good.T
        handle["time_series/sample_000001"] = good.T
    (root / "notes.txt").write_text("ignored")

    result = build_roi_folder(root, atlas="toy", tr=1.5, cache_dir=tmp_path / "cache", progress=False)
    skips = _skips(result)
    assert result.n_inputs == 12 == result.n_rows + len(result.skipped)
    assert result.n_rows == 3
    assert "unreadable .npy" in skips["sub-a_bold.npy"]
    assert "2-D" in skips["sub-b_bold.npy"]
    assert skips["sub-c_bold.npy"].startswith("stored (rois, time): use --transpose")
    assert "1 NaN" in skips["sub-d_bold.csv"]
    assert "non-numeric" in skips["sub-e_bold.csv"]
    assert "empty file" in skips["sub-f_bold.csv"]
    assert "--mat-variable" in skips["sub-g_bold.mat"]
    assert "unreadable .mat" in skips["sub-h_bold.mat"]
    assert "--h5-key" in skips["sub-i_bold.h5"] and "fmrilm_hdf5 builder" in skips["sub-i_bold.h5"]
    assert any("notes.txt" in note for note in result.provenance.notes)


def test_mat_variable_and_h5_key_choose_the_matrix(tmp_path, rng):
    root = tmp_path / "choose"
    root.mkdir()
    one, two = rng.standard_normal((12, R)), rng.standard_normal((13, R))
    savemat(root / "sub-1_bold.mat", {"one": one, "two": two})
    result = build_roi_folder(root, atlas="toy", tr=2.0, mat_variable="two", cache_dir=tmp_path / "c", progress=False)
    np.testing.assert_allclose(next(iter(_rows(result).values()))["bold"], two.astype(np.float32))
    with h5py.File(root / "sub-2_bold.h5", "w") as handle:
        handle["a"], handle["b"] = one, two
    result = build_roi_folder(
        root, atlas="toy", tr=2.0, h5_key="a", glob="*.h5", cache_dir=tmp_path / "c", progress=False
    )
    np.testing.assert_allclose(next(iter(_rows(result).values()))["bold"], one.astype(np.float32))


def test_mat_variable_missing_everywhere_means_no_rows(tmp_path, rng):
    root = tmp_path / "m"
    root.mkdir()
    savemat(root / "sub-1_bold.mat", {"one": rng.standard_normal((12, R))})
    with pytest.raises(ValueError, match="has no variable 'three'"):
        build_roi_folder(
            root, atlas="toy", tr=2.0, mat_variable="three", n_rois=R, cache_dir=tmp_path / "c", progress=False
        )


def test_transpose(tmp_path, rng):
    root = tmp_path / "t"
    root.mkdir()
    stored = {f"sub-{i}_bold.npy": rng.standard_normal((R, 15 + i)).astype(np.float32) for i in range(3)}
    for name, array in stored.items():
        np.save(root / name, array)
    np.save(root / "sub-x_bold.npy", rng.standard_normal((40, R)))  # (time, rois) among (rois, time) files
    result = build_roi_folder(root, atlas="toy", tr=2.0, transpose=True, cache_dir=tmp_path / "c", progress=False)
    rows = _rows(result)
    for name, array in stored.items():
        np.testing.assert_array_equal(rows[f"t/sub-{name[4]}/ses-none/{name}"]["bold"], array.T)
    assert "although --transpose was given" in _skips(result)["sub-x_bold.npy"]


def test_n_rois_inference_and_override(tmp_path, rng):
    assert infer_n_rois([(10, 4), (12, 4), (9, 5)]) == 4
    with pytest.raises(ValueError, match="disagree"):
        infer_n_rois([(10, 4), (9, 5)])
    with pytest.raises(ValueError, match="no file holds"):
        infer_n_rois([])
    root = tmp_path / "n"
    root.mkdir()
    np.save(root / "sub-a_bold.npy", rng.standard_normal((10, 4)))
    np.save(root / "sub-b_bold.npy", rng.standard_normal((10, 5)))
    with pytest.raises(ValueError, match="pass n_rois"):
        build_roi_folder(root, atlas="toy", tr=2.0, cache_dir=tmp_path / "c", progress=False)
    result = build_roi_folder(root, atlas="toy", tr=2.0, n_rois=5, cache_dir=tmp_path / "c", progress=False)
    assert result.n_rows == 1 and "has 4 ROI columns, expected 5" in _skips(result)["sub-a_bold.npy"]


def test_subject_and_session_patterns(tmp_path, rng):
    root = tmp_path / "p"
    (root / "site1").mkdir(parents=True)
    array = rng.standard_normal((10, R))
    np.save(root / "site1" / "patient17_visit2.npy", array)
    np.save(root / "control3.npy", array)
    # no sub- in the names: the stem is the subject, no session
    result = build_roi_folder(root, atlas="toy", tr=2.0, cache_dir=tmp_path / "c", progress=False)
    assert sorted(r["subject_id"] for r in _rows(result).values()) == ["control3", "patient17_visit2"]
    # custom patterns; a file the subject pattern does not match is skipped
    result = build_roi_folder(
        root, atlas="toy", tr=2.0, subject_pattern=r"patient(\d+)", session_pattern=r"visit(\d+)",
        cache_dir=tmp_path / "c", progress=False,
    )  # fmt: skip
    (row,) = _rows(result).values()
    assert (row["subject_id"], row["session_id"]) == ("17", "2")
    assert "does not match" in _skips(result)["control3.npy"]
    with pytest.raises(ValueError, match="not a valid regular expression"):
        build_roi_folder(root, atlas="toy", tr=2.0, subject_pattern="(unclosed", progress=False)
    with pytest.raises(ValueError, match="at most one"):
        build_roi_folder(root, atlas="toy", tr=2.0, subject_pattern=r"(a)(b)", progress=False)


def test_repetition_time_sources(tmp_path, rng):
    root = tmp_path / "tr"
    root.mkdir()
    array = rng.standard_normal((10, R))
    for subject in ("01", "02", "03", "04", "05"):
        np.save(root / f"sub-{subject}_bold.npy", array)
    (root / "sub-01_bold.json").write_text(json.dumps({"RepetitionTime": 0.8}))
    (root / "sub-02_bold.json").write_text(json.dumps({"RepetitionTime": 0.8}))  # disagrees with participants
    (root / "sub-05_bold.json").write_text("{not json")
    (root / "participants.tsv").write_text("participant_id\ttr\tgroup\nsub-02\t2.0\tA\nsub-03\t1.5\tB\n")
    # no --tr: sub-04 has no TR at all
    result = build_roi_folder(root, atlas="toy", cache_dir=tmp_path / "c", progress=False)
    rows, skips = _rows(result), _skips(result)
    assert rows["tr/sub-01/ses-none/sub-01_bold.npy"]["tr"] == np.float32(0.8)
    assert rows["tr/sub-03/ses-none/sub-03_bold.npy"]["tr"] == np.float32(1.5)
    assert "conflicting repetition times: 0.8 s" in skips["sub-02_bold.npy"]
    assert "no repetition time" in skips["sub-04_bold.npy"]
    assert "unreadable JSON sidecar" in skips["sub-05_bold.npy"]
    # --tr is the fallback only
    result = build_roi_folder(root, atlas="toy", tr=3.0, cache_dir=tmp_path / "c", progress=False)
    rows = _rows(result)
    assert rows["tr/sub-04/ses-none/sub-04_bold.npy"]["tr"] == np.float32(3.0)
    assert rows["tr/sub-01/ses-none/sub-01_bold.npy"]["tr"] == np.float32(0.8)
    assert "--tr: 1 scan(s)" in result.provenance.tr_source and "JSON sidecar: 1 scan(s)" in result.provenance.tr_source


def test_participants_become_label_columns(tmp_path, rng):
    root = tmp_path / "lab"
    root.mkdir()
    for subject in ("01", "02", "03"):
        np.save(root / f"sub-{subject}_bold.npy", rng.standard_normal((10, R)))
    (root / "participants.tsv").write_text("participant_id\tage\tsex\nsub-01\t30\tF\nsub-02\tn/a\tM\n")
    result = build_roi_folder(root, atlas="toy", tr=2.0, cache_dir=tmp_path / "c", progress=False)
    split = next(iter(result.dataset.values()))
    assert split.features["age"] == Value("int64") and split.features["sex"] == Value("string")
    labels = {r["subject_id"]: (r["age"], r["sex"]) for s in result.dataset.values() for r in s.remove_columns("bold")}
    assert labels == {"01": (30, "F"), "02": (None, "M"), "03": (None, None)}
    assert any("1 subject(s) have no row" in note and "03" in note for note in result.provenance.notes)


def test_splits_are_subject_grouped_and_stable(tmp_path, rng):
    root = tmp_path / "cohort"
    root.mkdir()
    for subject in range(40):
        for run in (1, 2):
            np.save(root / f"sub-{subject:02d}_run-{run}_bold.npy", rng.standard_normal((8, R)))
    first = build_roi_folder(root, atlas="toy", tr=2.0, seed=3, cache_dir=tmp_path / "c", progress=False)
    splits = {name: set(split["subject_id"]) for name, split in first.dataset.items()}
    assert set(splits) == {"train", "validation", "test"}
    assert not (splits["train"] & splits["validation"]) and not (splits["train"] & splits["test"])
    assert not (splits["validation"] & splits["test"])
    for name, subjects in splits.items():
        assert all(subject_split("cohort", s, 3) == name for s in subjects)
    # adding subjects never moves existing ones
    for subject in range(40, 50):
        np.save(root / f"sub-{subject:02d}_run-1_bold.npy", rng.standard_normal((8, R)))
    second = build_roi_folder(root, atlas="toy", tr=2.0, seed=3, cache_dir=tmp_path / "c", progress=False)
    for name, subjects in splits.items():
        assert subjects <= set(second.dataset[name]["subject_id"])


def test_folder_level_errors(tmp_path, rng):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_roi_folder(tmp_path / "missing", atlas="toy", tr=2.0)
    (tmp_path / "file.npy").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        build_roi_folder(tmp_path / "file.npy", atlas="toy", tr=2.0)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("x")
    with pytest.raises(ValueError, match="No ROI time-series files"):
        build_roi_folder(empty, atlas="toy", tr=2.0)
    with pytest.raises(ValueError, match="tr must be a positive number"):
        build_roi_folder(empty, atlas="toy", tr=-1)
    with pytest.raises(ValueError, match="n_rois must be a positive integer"):
        build_roi_folder(empty, atlas="toy", tr=2.0, n_rois=0)
    with pytest.raises(FileNotFoundError, match="Participants table"):
        build_roi_folder(empty, atlas="toy", tr=2.0, participants=tmp_path / "none.tsv")
