"""The descriptor text says exactly what the DescriptorFacts record holds, no more, no less."""

from __future__ import annotations

import random
import re

import pytest

from fmrilm.atlases import aal2
from fmrilm.descriptors.facts import BIN_SCHEMES, FAMILIES, METRIC_FAMILY, METRIC_SCHEME, facts_from_values
from fmrilm.descriptors.text import (
    SECTION_HEADERS,
    Mention,
    bin_phrases,
    describe,
    describe_with_mentions,
    format_z,
    verify_text,
)

SCHAEFER7 = ("Vis", "SomMot", "DorsAttn", "SalVentAttn", "Limbic", "Cont", "Default")
AAL2_NETWORKS = aal2().network_names
TEMPORAL = ("temporal_sd", "alff", "falff", "band_power_ratio", "lag1_autocorrelation", "outlier_fraction")
NUMBER = re.compile(r"[+\-\u2212]?\d+(?:[.,]\d+)*")


def record_values(networks, rng: random.Random, p_none=0.1, p_drop=0.08, scale=1.8, overrides=None):
    """(metric, networks, component, value, z) for every feature the extractor produces, random z."""
    overrides = overrides or {}
    lonely = rng.choice(networks)  # a one-ROI network: its within-network FC is missing

    def z():
        if rng.random() < p_none:
            return None
        if rng.random() < 0.05:
            return rng.choice((-1, 1)) * rng.uniform(3.0, 5.0)  # reach the extreme bins
        return rng.gauss(0.0, scale)

    specs = []
    for i, a in enumerate(networks):
        for b in networks[i:]:
            if not (a == b == lonely):
                specs.append(("fc", (a, b), None))
    for c in (1, 2, 3):
        specs += [("gradient_range", (), c), ("gradient_variance", (), c)]
        specs += [("gradient_network_mean", (n,), c) for n in networks]
    specs += [(m, (), None) for m in ("modularity", "global_efficiency", "clustering")]
    specs += [("strength", (n,), None) for n in networks]
    for m in TEMPORAL:
        specs += [(m, (), None)] + [(m, (n,), None) for n in networks]
    for i, a in enumerate(networks):
        specs += [("fnc", (a, b), None) for b in networks[i + 1 :]]
        if rng.random() < 0.3:
            specs.append(("fnc", (a, a), None))
        specs.append(("ica_falff", (a,), None))
    values = []
    for metric, nets, comp in specs:
        key = (metric, nets, comp)
        if key in overrides:
            values.append((metric, nets, comp, rng.uniform(-1, 1), overrides[key]))
        elif rng.random() >= p_drop:
            values.append((metric, nets, comp, rng.uniform(-1, 1), z()))
    return values


def random_record(seed: int, networks=None, **kwargs):
    rng = random.Random(seed)
    networks = networks or (AAL2_NETWORKS if seed % 2 else SCHAEFER7)
    return facts_from_values(record_values(networks, rng, **kwargs), networks)


def canonical_numbers(text: str) -> list[str]:
    return NUMBER.findall(text)


def own_phrase_in(span: str, metric: str, bin_name: str) -> str | None:
    """The longest phrase of this bin found in span (case-insensitive), or None."""
    found = [p for p in bin_phrases(metric, bin_name) if p.lower() in span.lower()]
    return max(found, key=len) if found else None


# --------------------------------------------------------------------------------------------------
# Phrase tables and formatting
# --------------------------------------------------------------------------------------------------


def test_format_z_is_signed_two_decimals_ascii_minus():
    assert format_z(1.4249) == "+1.42"
    assert format_z(-2.31) == "-2.31"
    assert format_z(0.0) == "+0.00"
    assert format_z(-0.0) == "+0.00"
    assert format_z(3.0) == "+3.00"


def test_phrase_tables_cover_every_bin_and_keep_bins_apart():
    for metric, scheme in METRIC_SCHEME.items():
        seen: dict[str, str] = {}
        for bin_name in BIN_SCHEMES[scheme]:
            phrases = bin_phrases(metric, bin_name)
            assert len(phrases) >= 2, (metric, bin_name)  # seeded synonyms
            for phrase in phrases:
                assert not re.search(r"\d", phrase)
                assert seen.setdefault(phrase.lower(), bin_name) == bin_name, (metric, phrase)
    assert bin_phrases("fc", "markedly_low")[0] == "markedly lower than average"
    assert bin_phrases("fc", "low")[0] == "somewhat reduced"
    assert bin_phrases("fc", "typical")[0] == "within typical range"
    assert bin_phrases("fc", "high")[0] == "somewhat elevated"
    assert bin_phrases("fc", "markedly_high")[0] == "markedly elevated"


def test_bin_phrases_rejects_unknown_metric_and_bin():
    with pytest.raises(ValueError, match="Unknown metric"):
        bin_phrases("fcc", "high")
    with pytest.raises(ValueError, match="seven"):
        bin_phrases("modularity", "markedly_high")


# One sentence per metric that names the metric and the fact's networks/gradient, for the verifier.
SENTENCE = {
    "fc": "Connectivity between {nets} is {p} {z}.",
    "fnc": "FNC between the {nets} domains is {p} {z}.",
    "gradient_range": "The principal gradient {p} {z}.",
    "gradient_variance": "The principal gradient variance is {p} {z}.",
    "gradient_network_mean": "Principal-gradient mean: {nets} is {p} {z}.",
    "modularity": "Modularity is {p} {z}.",
    "global_efficiency": "Global efficiency is {p} {z}.",
    "clustering": "Clustering is {p} {z}.",
    "strength": "Node strength: {nets} is {p} {z}.",
    "temporal_sd": "Signal variability: {nets} shows {p} {z}.",
    "alff": "ALFF: {nets} shows {p} {z}.",
    "falff": "fALFF: {nets} shows {p} {z}.",
    "band_power_ratio": "Power ratio: {nets} shows {p} {z}.",
    "lag1_autocorrelation": "Autocorrelation: {nets} shows {p} {z}.",
    "outlier_fraction": "Outliers: {nets} shows {p} {z}.",
    "ica_falff": "Component fALFF: the {nets} domain shows {p} {z}.",
}
Z_FOR_BIN = {
    "extremely_low": -3.5, "strongly_low": -2.5, "moderately_low": -1.5, "markedly_low": -2.5, "low": -1.5,
    "typical": 0.25, "high": 1.5, "markedly_high": 2.5, "moderately_high": 1.5, "strongly_high": 2.5,
    "extremely_high": 3.5,
}  # fmt: skip


@pytest.mark.parametrize("metric", sorted(METRIC_FAMILY))
def test_verifier_accepts_exactly_the_phrases_of_the_facts_bin(metric):
    """Every phrase of every bin is read back as that bin; a phrase of another bin is refused."""
    whole_brain = ("modularity", "global_efficiency", "clustering", "gradient_range", "gradient_variance")
    nets = () if metric in whole_brain else ("Vis", "Default") if metric in ("fc", "fnc") else ("Default",)
    component = 1 if metric.startswith("gradient_") else None
    bins = BIN_SCHEMES[METRIC_SCHEME[metric]]
    for fact_bin in bins:
        facts = facts_from_values([(metric, nets, component, 0.5, Z_FOR_BIN[fact_bin])], SCHAEFER7)
        assert facts.features[0].bin == fact_bin
        for phrase_bin in bins:
            for phrase in bin_phrases(metric, phrase_bin):
                text = SENTENCE[metric].format(
                    nets=" and ".join(nets), p=phrase, z=f"(z={format_z(Z_FOR_BIN[fact_bin])})"
                )
                problems = verify_text(text, facts)
                if phrase_bin == fact_bin:
                    assert problems == [], (text, problems)
                else:
                    assert problems and "contradicts" in problems[0], text


# --------------------------------------------------------------------------------------------------
# Text == facts on many random records
# --------------------------------------------------------------------------------------------------

N_RECORDS = 240
SEEDS = (0, 1, 7)


@pytest.fixture(scope="module")
def corpus():
    """(record, seed, text, mentions) for N_RECORDS random records x SEEDS."""
    out = []
    for r in range(N_RECORDS):
        facts = random_record(r)
        for seed in SEEDS:
            text, mentions = describe_with_mentions(facts, seed)
            out.append((facts, seed, text, mentions))
    return out


def test_every_mention_quotes_its_z_and_a_phrase_of_its_bin(corpus):
    phrases_used = set()
    for facts, _, text, mentions in corpus:
        by_key = facts.by_key()
        assert mentions
        for m in mentions:
            fact = by_key[m.fact_key]
            span = text[m.start : m.end]
            assert m.bin == fact.bin != "unavailable"
            assert canonical_numbers(span) == [format_z(fact.z)], span
            phrase = own_phrase_in(span, fact.metric, fact.bin)
            assert phrase is not None, (span, fact)
            phrases_used.add((fact.metric, fact.bin, phrase))
            for network in fact.networks:
                assert network in span
    # The corpus exercises many phrasings, not one per bin.
    assert len(phrases_used) > 150


def test_every_number_in_the_text_belongs_to_a_mention(corpus):
    for _, _, text, mentions in corpus:
        spans = [(m.start, m.end) for m in mentions]
        for match in NUMBER.finditer(text):
            assert any(s <= match.start() and match.end() <= e for s, e in spans), (match.group(), text)
        assert len(list(NUMBER.finditer(text))) == len(mentions)


def test_verify_text_finds_no_problem_in_generated_text(corpus):
    for facts, _, text, _ in corpus:
        assert verify_text(text, facts) == [], text


def test_no_unavailable_feature_is_quoted_and_no_typical_one_called_deviant(corpus):
    for facts, _, _, mentions in corpus:
        by_key = facts.by_key()
        quoted = {m.fact_key for m in mentions}
        assert all(by_key[k].z is not None for k in quoted)
        # Per-network bullets and top/bottom lists quote only deviant features.
        for key in quoted:
            fact = by_key[key]
            if fact.metric in ("strength", "gradient_network_mean", "ica_falff") or (
                fact.metric in TEMPORAL and fact.networks
            ):
                assert fact.bin != "typical", key
            if fact.metric == "fnc":
                assert fact.bin != "typical"


def test_same_seed_same_text_and_different_seeds_same_facts():
    for r in range(20):
        facts = random_record(1000 + r)
        texts = {}
        for seed in range(6):
            text, mentions = describe_with_mentions(facts, seed)
            assert describe(facts, seed) == text
            assert describe_with_mentions(facts, seed) == (text, mentions)
            texts[seed] = (text, [(m.fact_key, m.bin) for m in mentions])
        assert len({t for t, _ in texts.values()}) >= 4  # wording varies
        assert len({tuple(k) for _, k in texts.values()}) == 1  # the facts do not


def test_numpy_integer_seed_is_accepted():
    import numpy

    facts = random_record(3)
    assert describe(facts, numpy.int64(5)) == describe(facts, 5)


# --------------------------------------------------------------------------------------------------
# Tampering is caught
# --------------------------------------------------------------------------------------------------


def test_a_changed_z_is_caught():
    rng = random.Random(0)
    for r in range(60):
        facts = random_record(2000 + r)
        text, mentions = describe_with_mentions(facts, r)
        every_z = {format_z(f.z) for f in facts.features if f.z is not None}
        m = rng.choice(mentions)
        old = format_z(facts.by_key()[m.fact_key].z)
        new = next(z for z in (format_z(float(old) + k / 100) for k in range(37, 400)) if z not in every_z)
        tampered = text[: m.start] + text[m.start : m.end].replace(old, new) + text[m.end :]
        problems = verify_text(tampered, facts)
        assert any(new in p and "not the z-score of any feature" in p for p in problems), problems


def test_a_swapped_bin_phrase_is_caught():
    rng = random.Random(1)
    for r in range(80):
        facts = random_record(3000 + r)
        text, mentions = describe_with_mentions(facts, r)
        m = rng.choice(mentions)
        fact = facts.by_key()[m.fact_key]
        span = text[m.start : m.end]
        phrase = own_phrase_in(span, fact.metric, fact.bin)
        other_bin = rng.choice([b for b in BIN_SCHEMES[METRIC_SCHEME[fact.metric]] if b != fact.bin])
        replacement = rng.choice(bin_phrases(fact.metric, other_bin))
        start = m.start + span.lower().index(phrase.lower())
        tampered = text[:start] + replacement + text[start + len(phrase) :]
        problems = verify_text(tampered, facts)
        assert any("contradicts" in p for p in problems), (span, replacement, problems)


def test_invented_numbers_are_caught():
    facts = random_record(11)
    text = describe(facts, 0)
    a, b = facts.networks[:2]
    invented = text + f"\nConnectivity between {a} and {b} is markedly elevated (z=+9.87)."
    assert any("+9.87" in p and "invented" in p for p in verify_text(invented, facts))
    for extra in ("The scan lasted 600 seconds.", "About 3 networks deviate.", "Modularity is 0.41."):
        problems = verify_text(text + "\n" + extra, facts)
        assert len(problems) == 1 and "canonical form" in problems[0], problems
    # A right number placed in a sentence that does not name its networks.
    fc = next(f for f in facts.select(metric="fc") if f.z is not None and f.networks[0] != f.networks[1])
    others = [n for n in facts.networks if n not in fc.networks][:2]
    moved = text + f"\nConnectivity between {others[0]} and {others[1]} is elevated (z={format_z(fc.z)})."
    assert any("does not name its network" in p or "contradicts" in p for p in verify_text(moved, facts))


def test_non_canonical_z_forms_are_reported():
    facts = facts_from_values([("modularity", (), None, 0.4, 1.5)], SCHAEFER7)
    assert verify_text("Modularity is moderately elevated (z=+1.50).", facts) == []
    for bad in ("z=1.50", "z=+1.5", "z=\u22121.50", "z=+1.500"):
        problems = verify_text(f"Modularity is moderately elevated ({bad}).", facts)
        assert problems and "canonical form" in problems[0], bad
    assert "does not name that metric" in verify_text("Clustering is moderately elevated (z=+1.50).", facts)[0]
    assert "no bin phrase" in verify_text("Modularity: z=+1.50.", facts)[0]


def test_digits_inside_network_names_are_not_numbers():
    networks = ("Net1", "Net2", "Net10")
    facts = random_record(5, networks=networks, p_none=0.0, p_drop=0.0)
    text = describe(facts, 2)
    assert "Net10" in text
    assert verify_text(text, facts) == []


def test_verify_text_rejects_wrong_types():
    facts = random_record(1)
    with pytest.raises(TypeError, match="str"):
        verify_text(None, facts)
    with pytest.raises(TypeError, match="DescriptorFacts"):
        verify_text("text", facts.to_dict())


# --------------------------------------------------------------------------------------------------
# Content of each block
# --------------------------------------------------------------------------------------------------


def block(text: str, family: str) -> str:
    """The lines of one family's block (without its header)."""
    lines = text.split("\n")
    start = lines.index(SECTION_HEADERS[family]) + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "\n".join(lines[start:end])


def test_fc_quotes_the_three_highest_then_the_three_lowest_pairs():
    for r in range(60):
        facts = random_record(4000 + r, p_none=0.15)
        _, mentions = describe_with_mentions(facts, r, families=["connectivity"])
        rated = sorted((f.z for f in facts.select(metric="fc") if f.z is not None), reverse=True)
        quoted = [facts.by_key()[m.fact_key].z for m in mentions]
        assert quoted[:3] == rated[:3]
        assert quoted[3:] == sorted(rated[3:])[:3]
        assert all(facts.by_key()[m.fact_key].metric == "fc" for m in mentions)


def test_fc_with_few_pairs_quotes_each_pair_once():
    values = [
        ("fc", ("A", "A"), None, 0.1, 0.5),
        ("fc", ("A", "B"), None, 0.1, -1.5),
        ("fc", ("B", "B"), None, 0.1, 2.5),
    ]
    facts = facts_from_values(values, ("A", "B"))
    text, mentions = describe_with_mentions(facts, 0)
    assert [m.fact_key for m in mentions] == [
        "connectivity/fc/B|B",
        "connectivity/fc/A|A",
        "connectivity/fc/A|B",
    ]
    assert text.startswith("## Functional Connectivity:\n")


@pytest.mark.parametrize(
    ("z", "bin_name"),
    [(1.0, "typical"), (1.01, "high"), (-1.0, "typical"), (-1.01, "low"), (2.0, "high"), (2.004, "high"),
     (2.006, "markedly_high"), (-2.0, "low"), (-2.01, "markedly_low")],
)  # fmt: skip
def test_fc_bin_boundaries_follow_the_rounded_z(z, bin_name):
    facts = facts_from_values([("fc", ("Vis", "Default"), None, 0.2, z)], SCHAEFER7)
    for seed in range(4):
        text, (mention,) = describe_with_mentions(facts, seed)
        span = text[mention.start : mention.end]
        assert mention.bin == bin_name
        assert own_phrase_in(span, "fc", bin_name)
        assert format_z(round(z, 2)) in span


@pytest.mark.parametrize("seed", range(6))
def test_modularity_wording_is_the_right_way_round(seed):
    """R6: a positive modularity z means MORE segregated networks, a negative one more integrated."""
    for z in (1.2, 2.5, 3.7):
        facts = facts_from_values([("modularity", (), None, 0.5, z)], SCHAEFER7)
        sentence = describe(facts, seed, headers=False)
        assert "segregat" in sentence or "modular organisation" in sentence
        assert "integrat" not in sentence and "less" not in sentence
        assert "reduced" not in sentence and "below" not in sentence
        assert "elevated" in sentence or "above" in sentence
    for z in (-1.2, -2.5, -3.7):
        facts = facts_from_values([("modularity", (), None, 0.5, z)], SCHAEFER7)
        sentence = describe(facts, seed, headers=False)
        assert "integrat" in sentence
        assert "more segregated" not in sentence and "greater segregation" not in sentence
        assert "elevated" not in sentence and "above" not in sentence
        assert "reduced" in sentence or "below" in sentence


def test_graph_block_describes_each_global_metric_and_strength():
    overrides = {("modularity", (), None): 3.5, ("global_efficiency", (), None): -2.5, ("clustering", (), None): 0.3}
    overrides |= {("strength", (n,), None): 0.0 for n in SCHAEFER7}
    overrides[("strength", ("Default",), None)] = 1.8
    overrides[("strength", ("Vis",), None)] = -1.2
    facts = facts_from_values(record_values(SCHAEFER7, random.Random(0), overrides=overrides), SCHAEFER7)
    text = block(describe(facts, 3), "graph")
    lines = text.split("\n")
    assert len(lines) == 4
    assert own_phrase_in(lines[0], "modularity", "extremely_high") and "+3.50" in lines[0]
    assert own_phrase_in(lines[1], "global_efficiency", "strongly_low") and "-2.50" in lines[1]
    assert "efficien" in lines[1].lower()
    assert own_phrase_in(lines[2], "clustering", "typical") and "+0.30" in lines[2] and "cluster" in lines[2].lower()
    assert lines[3].startswith("- Node strength: Vis") and "+1.80" in lines[3] and "-1.20" in lines[3]
    assert "typical" in lines[3]

    overrides |= {("strength", (n,), None): 0.0 for n in SCHAEFER7}
    facts = facts_from_values(record_values(SCHAEFER7, random.Random(0), overrides=overrides), SCHAEFER7)
    strength_line = block(describe(facts, 3), "graph").split("\n")[3]
    assert not NUMBER.search(strength_line) and "typical" in strength_line


@pytest.mark.parametrize("seed", range(4))
def test_gradient_block_interprets_deviant_ranges(seed):
    words = {1: ("sensory", "transmodal"), 2: ("sensory modalities",), 3: ("control", "association")}
    for component, z in ((1, 1.6), (1, -1.6), (2, 2.2), (2, -1.3), (3, 1.4), (3, -3.0)):
        facts = facts_from_values([("gradient_range", (), component, 1.0, z)], SCHAEFER7)
        line = describe(facts, seed, headers=False)
        assert all(w in line for w in words[component]), line
        assert ("wider" in line or "higher" in line or "expanded" in line) == (z > 0)
    facts = facts_from_values([("gradient_range", (), 2, 1.0, 0.4)], SCHAEFER7)
    line = describe(facts, seed, headers=False)
    assert "sensory" not in line and ("typical" in line or "in line with" in line)


def test_gradient_network_bullet_lists_deviant_networks_in_atlas_order():
    values = [("gradient_network_mean", (n,), 1, 0.0, z) for n, z in zip(SCHAEFER7, (1.5, 0, 0, -2.0, 0, 0, 1.2))]
    values += [("gradient_network_mean", (n,), 2, 0.0, 3.0) for n in SCHAEFER7]  # not the principal gradient
    facts = facts_from_values(values, SCHAEFER7)
    text, mentions = describe_with_mentions(facts, 1)
    assert [m.fact_key.rsplit("/", 1)[1] for m in mentions] == ["Vis", "SalVentAttn", "Default"]
    assert "principal" in text.lower()
    facts = facts_from_values([(m, n, c, v, 0.3) for m, n, c, v, _ in values], SCHAEFER7)
    text, mentions = describe_with_mentions(facts, 1)
    assert mentions == [] and "typical" in text


def test_temporal_block_overall_sentence_and_top_bottom_networks():
    overrides = {(m, (n,), None): 0.0 for m in TEMPORAL for n in SCHAEFER7}
    overrides |= {(m, (), None): z for m, z in zip(TEMPORAL, (1.5, -2.5, 0.2, 1.1, 2.2, -0.7))}
    overrides[("temporal_sd", ("Default",), None)] = 1.7
    overrides[("temporal_sd", ("Limbic",), None)] = -2.4
    overrides[("lag1_autocorrelation", ("Vis",), None)] = -1.3
    values = [v for v in record_values(SCHAEFER7, random.Random(0), overrides=overrides) if v[0] in TEMPORAL]
    facts = facts_from_values(values, SCHAEFER7)
    lines = block(describe(facts, 4), "temporal").split("\n")
    overall = lines[0]
    assert "stronger signal fluctuations" in overall and "more persistent temporal structure" in overall
    assert canonical_numbers(overall) == ["+1.50", "-2.50", "+0.20", "+1.10", "+2.20", "-0.70"]
    assert lines[1].startswith("- Signal variability") and "Default" in lines[1] and "Limbic" in lines[1]
    assert lines[2].startswith("- Lag-one autocorrelation") and canonical_numbers(lines[2]) == ["-1.30"]
    assert len(lines) == 3
    # No per-network deviation: one sentence says so, without numbers.
    overrides |= {(m, (n,), None): 0.5 for m in TEMPORAL for n in SCHAEFER7}
    values = [v for v in record_values(SCHAEFER7, random.Random(0), overrides=overrides) if v[0] in TEMPORAL]
    lines = block(describe(facts_from_values(values, SCHAEFER7), 4), "temporal").split("\n")
    assert len(lines) == 2 and not NUMBER.search(lines[1])


def test_ica_block_states_data_driven_domains_and_limits_fnc_pairs():
    rng = random.Random(9)
    values = [("fnc", (a, b), None, 0.1, rng.choice((-1, 1)) * rng.uniform(1.2, 4.0))
              for i, a in enumerate(SCHAEFER7) for b in SCHAEFER7[i + 1 :]]  # fmt: skip
    values += [("ica_falff", (n,), None, 0.3, z) for n, z in zip(SCHAEFER7, (0.2, 2.5, 0.0, -1.4, 0.1, -1.2, 0.3))]
    facts = facts_from_values(values, SCHAEFER7)
    text, mentions = describe_with_mentions(facts, 2)
    body = block(text, "ica")
    assert "data-driven" in body and "ICA components" in body
    by_key = facts.by_key()
    fnc = [by_key[m.fact_key].z for m in mentions if by_key[m.fact_key].metric == "fnc"]
    zs = [f.z for f in facts.select(metric="fnc")]
    assert fnc == sorted(zs, reverse=True)[:3] + sorted(zs)[:3]
    falff = [by_key[m.fact_key].networks[0] for m in mentions if by_key[m.fact_key].metric == "ica_falff"]
    assert falff == ["SomMot", "SalVentAttn"]
    # Nothing deviant: no numbers in the FNC and fALFF bullets.
    facts = facts_from_values([(m, n, c, v, 0.5) for m, n, c, v, _ in values], SCHAEFER7)
    body = block(describe(facts, 2), "ica")
    assert not NUMBER.search(body) and "typical" in body


# --------------------------------------------------------------------------------------------------
# Missing features, z None, families, headers
# --------------------------------------------------------------------------------------------------


def test_all_z_none_gives_a_text_without_numbers():
    facts = random_record(21, p_none=1.0)
    text, mentions = describe_with_mentions(facts, 0)
    assert mentions == [] and not NUMBER.search(text)
    assert [h for h in SECTION_HEADERS.values() if h in text] == list(SECTION_HEADERS.values())
    assert "cannot be compared with the cohort" in text
    assert verify_text(text, facts) == []


def test_z_none_features_are_named_as_unavailable_not_quoted():
    values = [
        ("modularity", (), None, 0.4, None),
        ("global_efficiency", (), None, 0.4, 1.5),
        ("strength", ("Vis",), None, 1.0, None),
        ("strength", ("Default",), None, 1.0, 1.6),
        ("gradient_range", (), 2, 1.0, None),
        ("temporal_sd", (), None, 1.0, None),
        ("alff", (), None, 1.0, 0.3),
    ]
    facts = facts_from_values(values, SCHAEFER7)
    text, mentions = describe_with_mentions(facts, 0)
    assert "Modularity cannot be compared with the cohort" in text
    assert "second gradient cannot be compared" in text
    assert "whole-brain temporal SD cannot be compared" in text
    assert "for Vis" in text
    assert sorted(m.fact_key for m in mentions) == sorted(
        ["graph/global_efficiency", "graph/strength/Default", "temporal/alff"]
    )
    assert verify_text(text, facts) == []


def test_missing_families_and_features_are_left_out():
    values = [("fc", ("Vis", "Default"), None, 0.1, 1.3), ("clustering", (), None, 0.2, -1.1)]
    facts = facts_from_values(values, SCHAEFER7)
    text = describe(facts, 0)
    assert text.split("\n")[0] == SECTION_HEADERS["connectivity"]
    assert SECTION_HEADERS["graph"] in text
    for family in ("gradients", "temporal", "ica"):
        assert SECTION_HEADERS[family] not in text
    assert "odularity" not in text and "efficiency" not in text
    with pytest.raises(ValueError, match="no features of the requested families"):
        describe(facts, families=["ica"])


def test_typical_statements_say_which_networks_had_a_reference():
    values = [("strength", (n,), None, 1.0, 0.2) for n in SCHAEFER7[:-1]] + [
        ("strength", ("Default",), None, 1.0, None)
    ]
    values += [("ica_falff", (n,), None, 1.0, 0.2) for n in SCHAEFER7[:-1]] + [
        ("ica_falff", ("Default",), None, 1.0, None)
    ]
    values += [("fnc", ("Vis", "Default"), None, 1.0, 0.4), ("fnc", ("Vis", "Limbic"), None, 1.0, None)]
    text = describe(facts_from_values(values, SCHAEFER7), 0)
    assert "in every network with a cohort reference" in text
    assert "cannot be compared with the cohort for Default" in text
    assert "every domain with a cohort reference" in text
    assert "No domain pair with a cohort reference" in text
    assert not NUMBER.search(text)


def test_a_record_with_nothing_to_describe_is_refused():
    facts = facts_from_values([("gradient_variance", (), c, 1.0, 1.5) for c in (1, 2, 3)], SCHAEFER7)
    with pytest.raises(ValueError, match="none that the text describes"):
        describe(facts)


def test_families_selection_and_order():
    facts = random_record(31)
    full = describe(facts, 5)
    assert [h for h in SECTION_HEADERS.values() if h in full] == [SECTION_HEADERS[f] for f in FAMILIES]
    headers = [line for line in full.split("\n") if line.startswith("## ")]
    assert headers == [SECTION_HEADERS[f] for f in FAMILIES]
    # Each block reads the same alone as in the full text; order follows FAMILIES, not the argument.
    for family in FAMILIES:
        alone = describe(facts, 5, families=[family])
        assert alone == SECTION_HEADERS[family] + "\n" + block(full, family)
    pair = describe(facts, 5, families=("ica", "connectivity"))
    assert pair.index(SECTION_HEADERS["connectivity"]) < pair.index(SECTION_HEADERS["ica"])
    assert describe(facts, 5, families="graph") == describe(facts, 5, families=["graph"])


def test_headers_false_leaves_only_the_blocks():
    facts = random_record(32)
    with_headers, mentions = describe_with_mentions(facts, 1)
    without, mentions_without = describe_with_mentions(facts, 1, headers=False)
    assert "##" not in without
    assert without == "\n".join(line for line in with_headers.split("\n") if not line.startswith("## "))
    assert [(m.fact_key, without[m.start : m.end]) for m in mentions_without] == [
        (m.fact_key, with_headers[m.start : m.end]) for m in mentions
    ]


def test_bad_arguments_are_refused():
    facts = random_record(33)
    with pytest.raises(ValueError, match="Unknown descriptor families"):
        describe(facts, families=["fc"])
    with pytest.raises(ValueError, match="empty"):
        describe(facts, families=[])
    with pytest.raises(TypeError, match="DescriptorFacts"):
        describe(facts.to_json())
    with pytest.raises(TypeError, match="seed"):
        describe(facts, 1.5)
    with pytest.raises(TypeError, match="seed"):
        describe(facts, True)


def test_json_round_trip_gives_the_same_text():
    facts = random_record(34)
    assert describe(type(facts).from_json(facts.to_json()), 3) == describe(facts, 3)


def test_mention_is_a_plain_record():
    m = Mention("graph/modularity", "typical", 3, 10)
    assert (m.fact_key, m.bin, m.start, m.end) == ("graph/modularity", "typical", 3, 10)


# --------------------------------------------------------------------------------------------------
# Rewriter
# --------------------------------------------------------------------------------------------------

FC_SENTENCE = re.compile(r"Connectivity between (\w+) and (\w+) is ([^()]+?) \((z=|z = )?([+-]\d+\.\d\d)( SD)?\)\.")


def faithful_paraphrase(text: str, facts) -> str:
    """Reorder lines, change the z wrapper and move numbers in front of the FC statements."""
    text = FC_SENTENCE.sub(r"With z=\5, the \1 and \2 connectivity is \3.", text)
    text = text.replace("(z = ", "(z=")
    lines = text.split("\n")
    return "\n".join(lines[:1] + lines[1:][::-1])


def test_rewriter_pass_through_and_faithful_paraphrase_are_accepted():
    for r in range(10):
        facts = random_record(5000 + r)
        original = describe(facts, r)
        assert describe(facts, r, rewriter=lambda text, f: text) == original
        rewritten = describe(facts, r, rewriter=faithful_paraphrase)
        assert rewritten == faithful_paraphrase(original, facts) != original
        assert ("With z=" in rewritten) == bool(FC_SENTENCE.search(original))


def test_rewriter_that_moves_numbers_first_is_read_correctly():
    facts = facts_from_values(
        [("fc", ("Vis", "Default"), None, 0.1, 1.5), ("fc", ("Vis", "Limbic"), None, 0.1, -2.5)], SCHAEFER7
    )
    text = "z=+1.50 for Vis-Default connectivity, which is somewhat elevated, while z=-2.50 marks Vis-Limbic connectivity as markedly reduced."
    assert verify_text(text, facts) == []
    assert verify_text(text.replace("markedly reduced", "somewhat elevated"), facts)


def test_lossy_or_inventive_rewriters_are_rejected():
    facts = random_record(41, p_none=0.0)
    original, mentions = describe_with_mentions(facts, 0)

    def drop_last_fc_sentence(text, f):
        fc = [m for m in mentions if m.fact_key.startswith("connectivity/")][-1]
        return text[: fc.start] + text[fc.end :]

    with pytest.raises(ValueError, match="Lost: the statement that connectivity/fc/") as err:
        describe(facts, 0, rewriter=drop_last_fc_sentence)
    assert "1 problem" in str(err.value)

    def invent(text, f):
        return text + "\nGlobal efficiency is strongly elevated (z=+2.77), a remarkable 3 SD."

    with pytest.raises(ValueError, match=r"\+2\.77") as err:
        describe(facts, 0, rewriter=invent)
    assert "canonical form" in str(err.value)

    def flip_direction(text, f):
        """Call the first FC pair the opposite of what it is."""
        m = mentions[0]
        fact = facts.by_key()[m.fact_key]
        phrase = own_phrase_in(text[m.start : m.end], fact.metric, fact.bin)
        opposite = "markedly reduced" if fact.z > 0 else "markedly elevated"
        return text[: m.start] + text[m.start : m.end].replace(phrase, opposite) + text[m.end :]

    with pytest.raises(ValueError, match="contradicts"):
        describe(facts, 0, rewriter=flip_direction)

    def change_z(text, f):
        fact = facts.by_key()[mentions[0].fact_key]
        return text.replace(format_z(fact.z), format_z(fact.z + 0.01), 1)

    with pytest.raises(ValueError, match="Lost"):
        describe(facts, 0, rewriter=change_z)
    # check_rewrite=False trusts the rewriter.
    assert describe(facts, 0, rewriter=drop_last_fc_sentence, check_rewrite=False) == drop_last_fc_sentence(
        original, facts
    )


def test_rewriter_must_return_text():
    facts = random_record(42)
    with pytest.raises(TypeError, match="str"):
        describe(facts, rewriter=lambda text, f: None)
    with pytest.raises(TypeError, match="callable"):
        describe(facts, rewriter="not a function")


def test_verifier_reads_free_paraphrases():
    """Comparatives ("less modular than typical"), abbreviations and number-last clauses read correctly."""
    values = [
        ("fc", ("Default", "Default"), None, 0.0, 2.33),
        ("fc", ("Vis", "SomMot"), None, 0.0, -1.4),
        ("modularity", (), None, 0.0, -1.93),
        ("global_efficiency", (), None, 0.0, 1.65),
        ("gradient_range", (), 1, 0.0, -2.97),
    ]
    facts = facts_from_values(values, SCHAEFER7)
    accepted = (
        "Within-network connectivity of Default is markedly increased (z=+2.33), whereas Vis and SomMot are "
        "less coupled than usual, at z=-1.40.",
        "The network is less modular than typical (z=-1.93), i.e. more integrated, while global efficiency is "
        "higher (z=+1.65).",
        "The principal gradient's range is lower than the cohort average (z=-2.97).",
    )
    for text in accepted:
        assert verify_text(text, facts) == [], text
    rejected = (
        "The network is more modular than typical (z=-1.93).",
        "The principal gradient's range is higher than the cohort average (z=-2.97).",
        "The second gradient's range is lower than the cohort average (z=-2.97).",
        "Within-network connectivity of Vis is markedly increased (z=+2.33).",
    )
    for text in rejected:
        assert verify_text(text, facts), text
