"""Schema, validation, the shared collector (splits, skipped inputs, invariant) and participants tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from datasets import Array2D, Value

from fmrilm.datasets_scripts.common import BuildResult, Provenance, collect_scans
from fmrilm.datasets_scripts.participants import participants_from_frame, read_participants_tsv
from fmrilm.datasets_scripts.schema import (
    CORE_COLUMNS,
    ScanRecord,
    ScanSkipped,
    label_feature_for_values,
    label_features_from_frame,
    make_scan_id,
    scan_features,
    validated_bold,
    validated_tr,
)
from fmrilm.splits import subject_split


def _provenance() -> Provenance:
    return Provenance("test", "unit test", "other", "none", "toy", "given", False, {})


# ----------------------------------------------------------------------------------- schema
def test_scan_features_core_columns_then_labels():
    features = scan_features(7, {"age": Value("int64")})
    assert list(features) == [*CORE_COLUMNS, "age"]
    assert features["bold"] == Array2D(shape=(None, 7), dtype="float32")
    assert features["tr"] == Value("float32") and features["n_timepoints"] == Value("int32")
    assert features["synthetic"] == Value("bool")


@pytest.mark.parametrize("n_rois", [0, -3, 2.5, True, "94"])
def test_scan_features_refuses_bad_roi_count(n_rois):
    with pytest.raises(ValueError, match="n_rois must be a positive integer"):
        scan_features(n_rois)


@pytest.mark.parametrize("name", ["tr", "bold", "subject_id", ""])
def test_label_names_cannot_shadow_core_columns(name):
    with pytest.raises(ValueError, match="Label column|core column"):
        scan_features(3, {name: Value("string")})


def test_make_scan_id():
    assert make_scan_id("hcp", "101309", "", "run-1") == "hcp/sub-101309/ses-none/run-1"
    assert make_scan_id("ds", "01", "2", "x.npy") == "ds/sub-01/ses-2/x.npy"


def test_validated_bold_casts_to_contiguous_float32():
    array = np.asfortranarray(np.arange(12, dtype=np.int64).reshape(4, 3))
    out = validated_bold(array, n_rois=3)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, array)


@pytest.mark.parametrize(
    ("array", "reason"),
    [
        (np.zeros(5), "2-D"),
        (np.zeros((2, 3, 4)), "2-D"),
        (np.zeros((3, 10)), "stored (rois, time): use --transpose"),
        (np.zeros((10, 4)), "has 4 ROI columns, expected 3"),
        (np.array([[np.nan, 0, 0]] * 4), "contains 4 NaN or infinite"),
        (np.array([[np.inf, 0, 0]] * 4), "NaN or infinite"),
        (np.array([[1e39, 0, 0]] * 4), "also after conversion to float32"),
        (np.zeros((4, 3), dtype=complex), "real numbers"),
        (np.array([["a", "b", "c"]] * 4), "real numbers"),
    ],
)
def test_validated_bold_reasons(array, reason):
    with pytest.raises(ScanSkipped, match=reason.replace("(", r"\(").replace(")", r"\)")):
        validated_bold(array, n_rois=3)


def test_validated_bold_minimum_length():
    with pytest.raises(ScanSkipped, match="fewer than the minimum of 5"):
        validated_bold(np.zeros((4, 3)), n_rois=3, min_timepoints=5)


@pytest.mark.parametrize("tr", [0, -2.0, float("nan"), float("inf"), True, "2", None])
def test_validated_tr_refuses(tr):
    with pytest.raises(ScanSkipped, match="repetition time"):
        validated_tr(tr)


def test_label_feature_for_values():
    assert label_feature_for_values("a", [True, None, False]) == Value("bool")
    assert label_feature_for_values("a", [1, np.int32(2), None]) == Value("int64")
    assert label_feature_for_values("a", [1, 2.5]) == Value("float64")
    assert label_feature_for_values("a", ["x", None]) == Value("string")
    assert label_feature_for_values("a", [None]) == Value("string")
    with pytest.raises(ValueError, match="mixes value types"):
        label_feature_for_values("a", ["x", 1])
    with pytest.raises(ValueError, match="bool, int, float or str"):
        label_feature_for_values("a", [[1, 2]])


def test_label_features_from_frame():
    frame = pd.DataFrame({"i": [1, None], "f": [0.5, None], "b": [True, False], "s": ["x", None]}).convert_dtypes()
    assert label_features_from_frame(frame) == {
        "i": Value("int64"),
        "f": Value("float64"),
        "b": Value("bool"),
        "s": Value("string"),
    }


# ----------------------------------------------------------------------------------- collector
def _records(rng, subjects, n_rois=4):
    return [
        ScanRecord(s, "", "toy", f"run-{i}", rng.standard_normal((6 + i, n_rois)), 2.0, {"x": i})
        for i, s in enumerate(subjects)
    ]


def test_collect_scans_keeps_inputs_equal_rows_plus_skipped(rng, tmp_path):
    good = _records(rng, [f"s{i}" for i in range(30)])
    bad = [
        ScanRecord("bad1", "", "toy", "r", np.zeros((5, 3)), 2.0),  # wrong ROI count
        ScanRecord("bad2", "", "toy", "r", np.full((5, 4), np.nan), 2.0),
        ScanRecord("bad3", "", "toy", "r", np.zeros((5, 4)), 0.0),  # bad TR
        ScanRecord("", "", "toy", "r", np.zeros((5, 4)), 2.0),  # no subject
        good[0],  # duplicate scan id
    ]
    inputs = good + bad

    def load(record):
        if record.subject_id == "explode":
            raise ScanSkipped("never happens")
        return record

    collected = collect_scans(
        inputs, load, n_rois=4, atlas="toy", synthetic=False, label_features={"x": Value("int64")},
        describe=lambda r: f"{r.subject_id}/{r.run}", cache_dir=tmp_path, progress=False,
    )  # fmt: skip
    result = BuildResult.from_collected(collected, _provenance(), seed=0)
    assert result.n_inputs == len(inputs) == result.n_rows + len(result.skipped)
    assert result.n_rows == 30
    reasons = [s.reason for s in result.skipped]
    assert "expected 4" in reasons[0] and "NaN" in reasons[1] and "repetition time" in reasons[2]
    assert "subject_id must be a non-empty string" in reasons[3] and "duplicate scan_id" in reasons[4]

    # subject-grouped, deterministic splits (seed 0)
    for name, split in result.dataset.items():
        for subject in split["subject_id"]:
            assert subject_split("toy", subject, 0) == name
    counts = result.split_counts()
    assert sum(c["scans"] for c in counts.values()) == 30
    assert sum(c["subjects"] for c in counts.values()) == 30

    # rows keep values and metadata
    rows = {r["scan_id"]: r for split in result.dataset.values() for r in split.with_format("numpy")}
    for record in good:
        row = rows[record.scan_id]
        np.testing.assert_array_equal(row["bold"], record.bold.astype(np.float32))
        assert row["n_timepoints"] == record.bold.shape[0] and row["n_rois"] == 4 and row["x"] == record.labels["x"]
        assert row["atlas"] == "toy" and not row["synthetic"] and row["tr"] == np.float32(2.0)
    assert (result.cache_dir / "train.arrow").is_file()

    result.skipped.pop()
    with pytest.raises(RuntimeError, match="bookkeeping"):
        result.check_invariant()


def test_collect_scans_in_memory_removes_arrow_files(rng, tmp_path):
    collected = collect_scans(_records(rng, ["a", "b"]), lambda r: r, n_rois=4, atlas="toy", synthetic=True,
                              label_features={"x": Value("int64")}, cache_dir=tmp_path, keep_in_memory=True, progress=False)  # fmt: skip
    assert collected.cache_dir is None
    assert not list(tmp_path.rglob("*.arrow"))
    assert all(all(split["synthetic"]) for split in collected.dataset.values())


def test_collect_scans_without_rows_lists_reasons(tmp_path):
    def load(index):
        raise ScanSkipped(f"broken {index}")

    with pytest.raises(ValueError, match=r"every one was skipped:\n  0: broken 0\n  1: broken 1"):
        collect_scans([0, 1], load, n_rois=2, atlas="toy", synthetic=False, cache_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="there were no inputs"):
        collect_scans([], load, n_rois=2, atlas="toy", synthetic=False, cache_dir=tmp_path, progress=False)
    assert not list(tmp_path.rglob("*.arrow"))


def test_collect_scans_refuses_undeclared_labels_and_bad_options(rng, tmp_path):
    records = _records(rng, ["a"])
    with pytest.raises(ValueError, match="not among the declared label columns"):
        collect_scans(records, lambda r: r, n_rois=4, atlas="toy", synthetic=False, cache_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="min_timepoints"):
        collect_scans(
            records, lambda r: r, n_rois=4, atlas="toy", synthetic=False, min_timepoints=0, cache_dir=tmp_path
        )
    with pytest.raises(ValueError, match="atlas must name"):
        collect_scans(records, lambda r: r, n_rois=4, atlas=" ", synthetic=False, cache_dir=tmp_path)


# ----------------------------------------------------------------------------------- participants
def test_read_participants_tsv_types_missing_values_and_tr(tmp_path):
    path = tmp_path / "participants.tsv"
    path.write_text(
        "participant_id\tage\tsex\tscore\tpatient\ttr\n"
        "sub-001\t30\tF\t1.5\ttrue\t2.0\n"
        "sub-002\tn/a\tM\tn/a\tfalse\tn/a\n"
        "sub-003\t41\tn/a\t2\ttrue\t0.8\n"
    )
    table = read_participants_tsv(path)
    assert table.features == {
        "age": Value("int64"),
        "sex": Value("string"),
        "score": Value("float64"),
        "patient": Value("bool"),
    }
    assert table.labels["001"] == {"age": 30, "sex": "F", "score": 1.5, "patient": True}  # leading zeros kept
    assert table.labels["002"] == {"age": None, "sex": "M", "score": None, "patient": False}
    assert table.tr == {"001": 2.0, "003": 0.8}
    assert table.labels_for("999") == {"age": None, "sex": None, "score": None, "patient": None}
    assert table.missing_subjects(["001", "999"]) == ["999"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("name\tage\nsub-01\t3\n", "no subject column"),
        ("participant_id\tage\nsub-01\t3\nsub-01\t4\n", "more than once"),
        ("participant_id\tage\n\t3\n", "without a subject id"),
        ("participant_id\ttr\nsub-01\tfast\n", "must hold repetition times"),
        ("participant_id\tdataset\nsub-01\tx\n", "name of a core column"),
    ],
)
def test_read_participants_tsv_refuses(tmp_path, content, message):
    path = tmp_path / "participants.tsv"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_participants_tsv(path)


def test_read_participants_tsv_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_participants_tsv(tmp_path / "nope.tsv")


def test_participants_from_frame_prefers_subject_id():
    frame = pd.DataFrame({"participant_id": ["sub-a", "sub-b"], "subject_id": ["a", "b"], "group": ["x", "y"]})
    table = participants_from_frame(frame)
    assert table.labels == {"a": {"group": "x"}, "b": {"group": "y"}}
