"""`fmrilm describe` and describe_dataset: descriptor columns for whole datasets."""

import json

import numpy as np
import pytest
from datasets import load_dataset

from fmrilm.cli import main
from fmrilm.datasets_scripts import build_simulated, write_dataset
from fmrilm.descriptors import DescriptorExtractor, DescriptorFacts
from fmrilm.descriptors.corpus import describe_dataset, scan_text_seed
from fmrilm.descriptors.text import verify_text


@pytest.fixture(scope="module")
def simulated_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("simulated")
    result = build_simulated(n_subjects=16, duration_s=240.0, tr=2.0, simulation_seed=1, cache_dir=folder / ".cache", progress=False)
    write_dataset(result, folder / "dataset")
    return folder / "dataset"


def test_cli_fits_a_reference_and_describes_every_split(simulated_folder, tmp_path, capsys):
    reference, out = tmp_path / "reference", tmp_path / "described"
    args = ["describe", str(simulated_folder), "--reference", str(reference), "--out", str(out), "--fit"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "Fitting the reference on" in printed and "## Functional Connectivity:" in printed
    source = load_dataset(str(simulated_folder), cache_dir=str(tmp_path / "c1"))
    described = load_dataset(str(out), cache_dir=str(tmp_path / "c2"))
    assert sorted(described) == sorted(source)
    extractor = DescriptorExtractor.from_pretrained(reference)
    assert extractor.reference.n_scans == source["train"].num_rows
    for name in described:
        assert described[name]["scan_id"] == source[name]["scan_id"]
        row = described[name][0]
        facts = DescriptorFacts.from_json(row["descriptor_facts"])
        assert verify_text(row["descriptor_text"], facts) == []
        # The text is reproducible from the stored facts and the scan's phrasing seed.
        assert extractor.describe(facts, seed=scan_text_seed(row["scan_id"])) == row["descriptor_text"]
        np.testing.assert_array_equal(np.asarray(row["bold"]), np.asarray(source[name][0]["bold"]))
    card = (out / "README.md").read_text()
    assert "descriptor_text" in card and "reference cohort" in card
    info = json.loads((out / "build_info.json").read_text())
    assert info["provenance"]["synthetic"] is True  # provenance of the source travels with it

    # A second dataset described against the stored reference (no --fit) gives the same facts.
    again = tmp_path / "again"
    assert main(["describe", str(simulated_folder), "--reference", str(reference), "--out", str(again)]) == 0
    assert load_dataset(str(again), cache_dir=str(tmp_path / "c3"))["train"]["descriptor_facts"] == described["train"]["descriptor_facts"]


def test_cli_errors_are_clear(simulated_folder, tmp_path, capsys):
    code = main(["describe", str(simulated_folder), "--reference", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "--fit" in capsys.readouterr().err


def test_describe_dataset_refuses_unfitted_or_mismatched_extractors(simulated_folder, tmp_path):
    from fmrilm.atlases import AtlasSpec

    dataset = load_dataset(str(simulated_folder), cache_dir=str(tmp_path / "c"))
    atlas = AtlasSpec(name="tiny", roi_names=("a", "b", "c", "d"), networks=("x", "x", "y", "y"))
    extractor = DescriptorExtractor(atlas, n_gradients=1, n_ica_components=2, gradient_sparsity=0.5)
    with pytest.raises(ValueError, match="no reference cohort"):
        describe_dataset(dataset, extractor)
    rng = np.random.default_rng(0)
    extractor.fit([rng.normal(size=(120, 4)) for _ in range(3)], 2.0)
    with pytest.raises(ValueError, match="94 ROIs but the reference's atlas tiny has 4"):
        describe_dataset(dataset, extractor)
