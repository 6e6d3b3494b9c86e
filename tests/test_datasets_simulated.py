"""The simulated builder: rows equal fmrilm.simulate's own output, labels typed, data flagged synthetic."""

from __future__ import annotations

import numpy as np
import pytest
from datasets import Value

from fmrilm.datasets_scripts.card import make_dataset_card
from fmrilm.datasets_scripts.simulated import build_simulated
from fmrilm.simulate import SUBJECT_BLOCK_SIZE, simulate_cohort

SETTINGS = {"duration_s": 40.0, "tr": 2.0, "coupling_effect": 1.5}


@pytest.fixture(scope="module")
def simulated_build(tmp_path_factory):
    # More subjects than one simulation block, so the block-by-block path is exercised.
    return build_simulated(
        n_subjects=SUBJECT_BLOCK_SIZE + 2,
        simulation_seed=5,
        cache_dir=tmp_path_factory.mktemp("sim"),
        progress=False,
        **SETTINGS,
    )


def test_rows_equal_a_direct_simulation(simulated_build):
    reference = {s.subject_id: s for s in simulate_cohort(SUBJECT_BLOCK_SIZE + 2, seed=5, **SETTINGS)}
    result = simulated_build
    assert result.n_rows == len(reference) and result.skipped == []
    features = next(iter(result.dataset.values())).features
    assert features["coupling_class"] == Value("int64") and features["gain_class"] == Value("int64")
    assert features["noise_level"] == Value("float64") and features["sim_coupling"] == Value("float64")
    for split in result.dataset.values():
        for row in split.with_format("numpy"):
            scan = reference[row["subject_id"]]
            np.testing.assert_array_equal(row["bold"], scan.bold)
            assert row["synthetic"] and row["dataset"] == "simulated" and row["atlas"] == "AAL2"
            assert row["tr"] == np.float32(2.0) and row["n_timepoints"] == 20
            for name, value in scan.labels.items():
                assert row[name] == pytest.approx(value)
            assert row["sim_coupling"] == pytest.approx(scan.parameters["coupling"])


def test_card_says_loudly_that_the_data_are_synthetic(simulated_build):
    result = simulated_build
    assert result.provenance.synthetic and "SYNTHETIC" in result.provenance.source
    shards = {name: [f"data/{name}-00000-of-00001.parquet"] for name in result.dataset}
    card = make_dataset_card(result, shards, dict.fromkeys(result.dataset, 1), 1)
    assert "synthetic" in card.data.tags
    assert "**SYNTHETIC DATA.**" in card.text and "never as evidence about real brains" in card.text


def test_invalid_settings():
    with pytest.raises(ValueError, match="Unknown simulation setting"):
        build_simulated(n_subject=3)
    with pytest.raises(ValueError, match="n_subjects"):
        build_simulated(n_subjects=0)
