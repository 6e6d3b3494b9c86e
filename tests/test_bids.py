"""find_bids_runs and read_participants on a small fake BIDS tree (raw + fMRIPrep-style derivatives)."""

import json
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fmrilm.nifti import find_bids_runs, parcellate, read_participants

MNI = "MNI152NLin2009cAsym"


def write_bold(path: Path, tr: float = 2.0, n_volumes: int = 10) -> None:
    """A tiny 4-D image whose header says ``tr`` seconds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (
        np.random.default_rng(zlib.crc32(path.name.encode())).standard_normal((4, 4, 3, n_volumes)).astype(np.float32)
    )
    image = nib.Nifti1Image(data, np.diag([3.0, 3.0, 3.0, 1.0]))
    image.header.set_xyzt_units("mm", "sec")
    image.header["pixdim"][4] = tr
    nib.save(image, path)


def write_json(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))


@pytest.fixture
def bids_root(tmp_path) -> Path:
    root = tmp_path / "ds"
    write_json(root / "dataset_description.json", {"Name": "fake", "BIDSVersion": "1.9.0"})
    (root / "participants.tsv").write_text("participant_id\tage\tsex\nsub-01\t25\tF\nsub-02\tn/a\tM\nsub-03\t31\tF\n")
    write_json(root / "task-rest_bold.json", {"RepetitionTime": 2.0, "TaskName": "rest", "EchoTime": 0.03})
    write_bold(root / "sub-01/func/sub-01_task-rest_run-1_bold.nii.gz")
    write_json(root / "sub-01/func/sub-01_task-rest_run-1_bold.json", {"EchoTime": 0.025})
    write_bold(root / "sub-01/func/sub-01_task-rest_run-2_bold.nii.gz")
    write_bold(root / "sub-01/anat/sub-01_T1w_bold.nii.gz")  # not in func/: ignored
    write_json(root / "sub-02/sub-02_task-rest_bold.json", {"SliceTiming": [0.0, 1.0]})
    write_bold(root / "sub-02/ses-A/func/sub-02_ses-A_task-rest_acq-mb4_bold.nii")
    write_bold(root / "sub-03/func/sub-03_task-motor_bold.nii.gz", tr=1.5)
    write_bold(root / ".git/annex/sub-09/func/sub-09_task-rest_bold.nii.gz")  # hidden: ignored
    write_bold(root / "sourcedata/sub-05_task-rest_bold.nii.gz")  # not a BIDS func folder: ignored
    fmriprep = root / "derivatives" / "fmriprep"
    write_json(fmriprep / "dataset_description.json", {"Name": "fMRIPrep outputs", "DatasetType": "derivative"})
    for space in (MNI, "T1w"):
        stem = f"sub-01_task-rest_run-1_space-{space}_desc-preproc_bold"
        write_bold(fmriprep / f"sub-01/func/{stem}.nii.gz")
        write_json(fmriprep / f"sub-01/func/{stem}.json", {"RepetitionTime": 2.0, "SkullStripped": True})
    (fmriprep / "sub-01/func/sub-01_task-rest_run-1_desc-confounds_timeseries.tsv").write_text("trans_x\n0\n")
    return root


def test_all_runs_with_entities_sidecars_and_tr(bids_root):
    runs = find_bids_runs(bids_root)
    names = [r.path.name for r in runs]
    assert names == [  # sorted by subject, session, task, run, then path (derivatives/ < sub-01/)
        f"sub-01_task-rest_run-1_space-{MNI}_desc-preproc_bold.nii.gz",
        "sub-01_task-rest_run-1_space-T1w_desc-preproc_bold.nii.gz",
        "sub-01_task-rest_run-1_bold.nii.gz",
        "sub-01_task-rest_run-2_bold.nii.gz",
        "sub-02_ses-A_task-rest_acq-mb4_bold.nii",
        "sub-03_task-motor_bold.nii.gz",
    ]
    first = runs[2]
    assert (first.subject, first.session, first.task, first.run, first.space, first.desc) == (
        "01",
        None,
        "rest",
        "1",
        None,
        None,
    )
    assert first.entities == {"sub": "01", "task": "rest", "run": "1"}
    # The root's task-rest_bold.json is inherited; the run's own sidecar overrides EchoTime.
    assert first.sidecar == {"RepetitionTime": 2.0, "TaskName": "rest", "EchoTime": 0.025} and first.tr == 2.0
    assert runs[3].sidecar["EchoTime"] == 0.03  # run 2 has no own sidecar

    session_run = runs[4]
    assert session_run.session == "A" and session_run.entities["acq"] == "mb4"
    assert session_run.sidecar == {
        "RepetitionTime": 2.0,
        "TaskName": "rest",
        "EchoTime": 0.03,
        "SliceTiming": [0.0, 1.0],
    }

    motor = runs[5]
    assert motor.sidecar == {} and motor.tr == 1.5  # no sidecar applies: TR from the header

    derived = runs[0]
    assert (derived.space, derived.desc) == (MNI, "preproc")
    assert derived.sidecar == {"RepetitionTime": 2.0, "SkullStripped": True}  # the raw root is another dataset


def test_filters(bids_root):
    assert [r.subject for r in find_bids_runs(bids_root, task="motor")] == ["03"]
    preproc = find_bids_runs(bids_root, desc="preproc")
    assert [r.space for r in preproc] == [MNI, "T1w"]
    mni = find_bids_runs(bids_root, task="rest", space=MNI, desc="preproc")
    assert len(mni) == 1 and mni[0].path.parent == bids_root / "derivatives/fmriprep/sub-01/func"


def test_filters_that_match_nothing_list_the_available_values(bids_root):
    with pytest.raises(
        ValueError,
        match=r"none with task='nback', space='MNI'.*'task': \['motor', 'rest'\].*'space': \['MNI152\w+', 'T1w'\]",
    ):
        find_bids_runs(bids_root, task="nback", space="MNI")


def test_empty_or_missing_roots(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_bids_runs(tmp_path / "absent")
    (tmp_path / "sub-01" / "anat").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="No BOLD runs.*sub-01/func/sub-01_task-rest_bold.nii.gz"):
        find_bids_runs(tmp_path)


def test_misnamed_files_are_skipped_with_a_warning(bids_root):
    write_bold(bids_root / "sub-04/func/sub-07_task-rest_bold.nii.gz")
    write_bold(bids_root / "sub-04/func/sub-04_task-rest_oops_bold.nii.gz")
    with pytest.warns(UserWarning) as caught:
        runs = find_bids_runs(bids_root)
    messages = " ".join(str(w.message) for w in caught)
    assert "sub entity '07' does not match the folder sub-04" in messages
    assert "not a sequence of key-value entities" in messages
    assert all(r.subject != "04" for r in runs)


def test_sidecar_and_header_disagreement_warns_and_sidecar_wins(bids_root):
    write_bold(bids_root / "sub-06/func/sub-06_task-rest_bold.nii.gz", tr=2.5)
    with pytest.warns(UserWarning, match=r"\(2 s\) disagrees with the NIfTI header \(2.5 s\)"):
        runs = find_bids_runs(bids_root, task="rest")
    assert [r.tr for r in runs if r.subject == "06"] == [2.0]


def test_invalid_sidecar_is_reported(bids_root):
    (bids_root / "sub-03/func/sub-03_task-motor_bold.json").write_text('{"RepetitionTime": "fast"}')
    with pytest.raises(ValueError, match="RepetitionTime in the sidecar of sub-03_task-motor_bold.nii.gz is 'fast'"):
        find_bids_runs(bids_root)


def test_a_found_run_parcellates_with_its_tr(bids_root):
    run = find_bids_runs(bids_root, task="motor")[0]
    labels = np.zeros((4, 4, 3), dtype=np.int16)
    labels[:2], labels[2:] = 1, 2
    atlas = nib.Nifti1Image(labels, np.diag([3.0, 3.0, 3.0, 1.0]))
    result = parcellate(run.path, atlas, tr=run.tr, detrend=True)
    assert result.time_series.shape == (10, 2) and result.tr == 1.5


def test_read_participants(bids_root):
    table = read_participants(bids_root)
    assert table["subject_id"].tolist() == ["01", "02", "03"]
    assert table["participant_id"].tolist() == ["sub-01", "sub-02", "sub-03"]
    assert np.isnan(table.loc[1, "age"]) and table.loc[0, "age"] == 25
    assert read_participants(bids_root / "participants.tsv").equals(table)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("subject\tage\n01\t3\n", "no participant_id column"),
        ("participant_id\n01\n", r"must look like 'sub-<label>'; found \['01'\]"),
        ("participant_id\nsub-01\nsub-01\n", r"\['sub-01'\] appear more than once"),
    ],
)
def test_read_participants_refuses_malformed_tables(tmp_path, content, message):
    (tmp_path / "participants.tsv").write_text(content)
    with pytest.raises(ValueError, match=message):
        read_participants(tmp_path)


def test_read_participants_without_a_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="participants.tsv"):
        read_participants(tmp_path)
