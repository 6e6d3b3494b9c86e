"""Scores of generated descriptor text: faithfulness to the facts, ROUGE-L and BLEU."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from fmrilm.atlases import aal2
from fmrilm.descriptors.facts import FAMILIES, facts_from_values
from fmrilm.descriptors.text import bin_phrases, describe, describe_with_mentions, format_z
from fmrilm.training.generation_metrics import bleu, faithfulness, pooled_faithfulness, rouge_l

SCHAEFER7 = ("Vis", "SomMot", "DorsAttn", "SalVentAttn", "Limbic", "Cont", "Default")
AAL2 = aal2().network_names
TEMPORAL = ("temporal_sd", "alff", "falff", "band_power_ratio", "lag1_autocorrelation", "outlier_fraction")
OPPOSITE = {"high": "low", "low": "high", "typical": "high"}


def record(seed: int, networks=SCHAEFER7, scale: float = 1.8):
    """A random DescriptorFacts with every feature the extractor produces (some without a cohort z)."""
    rng = random.Random(seed)

    def z():
        return None if rng.random() < 0.08 else rng.gauss(0.0, scale)

    specs = [("fc", (a, b), None) for i, a in enumerate(networks) for b in networks[i:]]
    for c in (1, 2, 3):
        specs += [("gradient_range", (), c), ("gradient_variance", (), c)]
        specs += [("gradient_network_mean", (n,), c) for n in networks]
    specs += [(m, (), None) for m in ("modularity", "global_efficiency", "clustering")]
    specs += [("strength", (n,), None) for n in networks]
    for m in TEMPORAL:
        specs += [(m, (), None)] + [(m, (n,), None) for n in networks]
    specs += [("fnc", (a, b), None) for i, a in enumerate(networks) for b in networks[i + 1 :]]
    specs += [("ica_falff", (n,), None) for n in networks]
    return facts_from_values([(m, nets, c, rng.uniform(-1, 1), z()) for m, nets, c in specs], networks)


def direction(bin_name: str) -> str:
    return "high" if bin_name.endswith("high") else "low" if bin_name.endswith("low") else "typical"


def opposite_phrase(metric: str, bin_name: str) -> str:
    """A phrase of ``metric`` whose direction contradicts ``bin_name``."""
    wanted = OPPOSITE[direction(bin_name)]
    schemes = {"high": ("high", "moderately_high"), "low": ("low", "moderately_low")}[wanted]
    for candidate in schemes:
        try:
            return bin_phrases(metric, candidate)[0]
        except ValueError:
            continue
    raise AssertionError(metric)


def own_phrase(span: str, metric: str, bin_name: str) -> str:
    return max((p for p in bin_phrases(metric, bin_name) if p.lower() in span.lower()), key=len)


# ---- faithfulness ---------------------------------------------------------------------------------


@pytest.mark.parametrize("networks", [SCHAEFER7, AAL2], ids=["schaefer7", "aal2"])
def test_text_generated_from_the_facts_states_every_mention_and_all_are_right(networks):
    for seed in range(40):
        facts = record(seed, networks)
        for wording in (0, 1, 2):
            text, mentions = describe_with_mentions(facts, seed=wording)
            report = faithfulness(text, facts)
            assert report["stated"] == len(mentions) > 0
            assert report["correct"] == report["stated"] and report["share"] == 1.0
            assert report["z_exact"] == report["stated"]
            assert report["fact_keys"] == sorted({m.fact_key for m in mentions})


def test_facts_may_be_given_as_the_json_column():
    facts = record(3)
    text = describe(facts, seed=4, families=("graph",))
    assert faithfulness(text, facts.to_json()) == faithfulness(text, facts)
    assert faithfulness(text, facts.to_dict()) == faithfulness(text, facts)


@pytest.mark.parametrize("n_wrong", [1, 3, 6])
def test_each_contradicted_bin_lowers_the_correct_count_by_one(n_wrong):
    facts = record(11)
    text, mentions = describe_with_mentions(facts, seed=2)
    by_key = facts.by_key()
    chosen = random.Random(n_wrong).sample(range(len(mentions)), n_wrong)
    # Edit from the end so earlier spans keep their offsets.
    for index in sorted(chosen, reverse=True):
        mention = mentions[index]
        fact = by_key[mention.fact_key]
        span = text[mention.start : mention.end]
        phrase = own_phrase(span, fact.metric, fact.bin)
        edited = span.replace(phrase, opposite_phrase(fact.metric, fact.bin), 1)
        text = text[: mention.start] + edited + text[mention.end :]
    report = faithfulness(text, facts)
    assert report["stated"] == len(mentions)
    assert report["correct"] == len(mentions) - n_wrong
    assert report["share"] == pytest.approx((len(mentions) - n_wrong) / len(mentions))
    wrong = {d["fact_key"] for d in report["details"] if not d["correct"]}
    assert wrong == {mentions[i].fact_key for i in chosen}
    assert all("contradicts" in d["reason"] for d in report["details"] if not d["correct"])


def test_statements_about_the_wrong_network_count_as_wrong():
    """Swapping the network of a per-network statement for one whose bin differs makes it wrong."""
    facts = record(5)
    text, mentions = describe_with_mentions(facts, seed=0, families=("graph",))
    strength = {f.networks[0]: f for f in facts.select(metric="strength")}
    swaps = 0
    for mention in sorted((m for m in mentions if m.fact_key.startswith("graph/strength/")), key=lambda m: -m.start):
        network = mention.fact_key.rsplit("/", 1)[1]
        others = [n for n, f in strength.items() if f.z is not None and direction(f.bin) != direction(mention.bin)
                  and n not in text[mention.start : mention.end]]  # fmt: skip
        span = text[mention.start : mention.end]
        text = text[: mention.start] + span.replace(network, others[0], 1) + text[mention.end :]
        swaps += 1
    assert swaps >= 2
    report = faithfulness(text, facts)
    assert report["stated"] == len(mentions)
    assert report["correct"] == len(mentions) - swaps


def test_an_approximate_z_with_the_right_bin_is_correct_but_not_exact():
    facts = facts_from_values(
        [("fc", ("Default", "Limbic"), None, 0.3, 1.42), ("modularity", (), None, 0.4, -2.5)], SCHAEFER7
    )
    text = (
        "Connectivity between Default and Limbic is somewhat elevated (z=+1.37). "
        "Modularity is strongly reduced (z=-2.61), indicating less segregated networks."
    )
    report = faithfulness(text, facts)
    assert (report["stated"], report["correct"], report["z_exact"]) == (2, 2, 0)
    exact = text.replace("+1.37", format_z(1.42))
    assert faithfulness(exact, facts)["z_exact"] == 1


def test_invented_features_and_missing_phrases_are_wrong():
    facts = facts_from_values([("fc", ("Default", "Limbic"), None, 0.3, 1.42)], SCHAEFER7)
    text = (
        "Connectivity between Vis and Cont is somewhat elevated (z=+1.42). "  # no such feature in the record
        "Connectivity between Default and Limbic (z=+1.42)."  # no bin phrase
    )
    report = faithfulness(text, facts)
    assert (report["stated"], report["correct"]) == (2, 0)
    reasons = [d["reason"] for d in report["details"]]
    assert "no fc feature for Cont, Vis" in reasons[0] and "no bin phrase" in reasons[1]


@pytest.mark.parametrize("text", ["", "   ", "<eos> ## ##", "Modularity is reduced.", "the the the"])
def test_text_that_states_nothing_has_no_share(text):
    report = faithfulness(text, record(1))
    assert report == {"stated": 0, "correct": 0, "share": None, "z_exact": 0, "fact_keys": [], "details": []}


def test_pooled_faithfulness_pools_counts_and_scores_silence_as_zero():
    reports = [
        {"stated": 4, "correct": 3, "z_exact": 1},
        {"stated": 0, "correct": 0, "z_exact": 0},
        {"stated": 6, "correct": 2, "z_exact": 2},
    ]
    pooled = pooled_faithfulness(reports)
    assert pooled == {"share": 0.5, "stated_per_text": 10 / 3, "texts_stating": 2 / 3, "z_exact_share": 0.3}
    assert pooled_faithfulness([reports[1]])["share"] == 0.0
    with pytest.raises(ValueError, match="at least one"):
        pooled_faithfulness([])


def test_faithfulness_rejects_bad_inputs():
    with pytest.raises(TypeError, match="generated_text must be a str"):
        faithfulness(None, record(0))
    with pytest.raises(TypeError, match="DescriptorFacts"):
        faithfulness("text", 3)
    with pytest.raises(ValueError, match="not a DescriptorFacts JSON"):
        faithfulness("text", "{not json")


def test_faithfulness_covers_every_family():
    facts = record(21)
    for family in FAMILIES:
        text, mentions = describe_with_mentions(facts, seed=1, families=(family,))
        report = faithfulness(text, facts)
        assert report["stated"] == len(mentions) and report["share"] == 1.0, family


# ---- ROUGE-L and BLEU -----------------------------------------------------------------------------


def lcs(a: list[str], b: list[str]) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def reference_bleu(hypothesis: str, reference: str) -> float:
    """Sentence BLEU-4 with brevity penalty and no smoothing (all n-gram precisions must be > 0)."""
    hyp, ref = hypothesis.split(), reference.split()
    logs = []
    for n in range(1, 5):
        h = Counter(tuple(hyp[i : i + n]) for i in range(len(hyp) - n + 1))
        r = Counter(tuple(ref[i : i + n]) for i in range(len(ref) - n + 1))
        logs.append(math.log(sum(min(c, r[g]) for g, c in h.items()) / sum(h.values())))
    penalty = 1.0 if len(hyp) > len(ref) else math.exp(1 - len(ref) / len(hyp))
    return 100 * penalty * math.exp(sum(logs) / 4)


def test_rouge_l_equals_the_longest_common_subsequence_f1_and_the_library():
    from rouge_score import rouge_scorer

    pairs = [("the cat sat on the mat", "the cat is on the mat"), ("a b c d", "d c b a"), ("x y", "x y")]
    for prediction, reference in pairs:
        p, r = prediction.split(), reference.split()
        common = lcs(p, r)
        precision, recall = common / len(p), common / len(r)
        expected = 2 * precision * recall / (precision + recall)
        assert rouge_l([prediction], [reference]) == pytest.approx(expected)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    library = sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in pairs) / len(pairs)
    assert rouge_l([p for p, _ in pairs], [r for _, r in pairs]) == pytest.approx(library)
    assert rouge_l([""], ["something"]) == 0.0


def test_bleu_equals_an_independent_computation_and_sacrebleu():
    import sacrebleu

    hypothesis, reference = "the cat sat on the mat today", "the cat sat on a mat today"
    assert bleu([hypothesis], [reference]) == pytest.approx(reference_bleu(hypothesis, reference))
    assert bleu([reference], [reference]) == pytest.approx(100.0)
    predictions = ["Modularity is reduced (z=-1.50).", "Connectivity within Default is typical."]
    references = ["Modularity is moderately reduced (z=-1.50).", "Connectivity within Limbic is typical."]
    assert bleu(predictions, references) == pytest.approx(sacrebleu.corpus_bleu(predictions, [references]).score)


def test_rouge_and_bleu_reject_mismatched_or_empty_inputs():
    for score in (rouge_l, bleu):
        with pytest.raises(ValueError, match="one reference per prediction"):
            score(["a"], ["a", "b"])
        with pytest.raises(ValueError, match="nothing to score"):
            score([], [])
        with pytest.raises(TypeError, match="sequences of strings"):
            score("a b", "a b")
        with pytest.raises(TypeError, match=r"predictions\[1\]"):
            score(["a", None], ["a", "b"])
