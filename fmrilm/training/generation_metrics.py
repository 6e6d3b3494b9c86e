"""Scores for generated descriptor text: faithfulness to the scan's facts, ROUGE-L and BLEU.

    report = faithfulness(generated_text, facts)   # facts: DescriptorFacts or its JSON string
    report["share"]                                # correct / stated, None when nothing is stated
    rouge_l(predictions, references)               # mean ROUGE-L F1 in [0, 1] (rouge-score)
    bleu(predictions, references)                  # corpus BLEU in [0, 100] (sacrebleu)

Faithfulness reads a text the way :func:`fmrilm.descriptors.verify_text` does, with the same
sentence splitter, network-name matcher, metric words and bin-phrase lexicon (imported from
:mod:`fmrilm.descriptors.text`, so the two can never disagree on what a phrase means). What it
counts differs: ``verify_text`` wants every number to be a feature's exact z, while a language model
that writes "Default-Limbic connectivity is elevated (z=+1.37)" for a feature whose true z is +1.42
(bin ``high``) has still stated the right bin for the right networks. So:

- **A statement** is one quoted number (every statement the descriptor generator makes about a
  feature quotes that feature's z, so a text from :func:`~fmrilm.descriptors.describe` has exactly
  one statement per :class:`~fmrilm.descriptors.Mention`). Sentences without a number ("every network
  is typical") state nothing checkable and are not counted.
- **Which feature it is about**: the networks named in its clause (the text between the previous
  number and this one; the whole sentence when the sentence quotes one number only), the metric
  words of that clause (else of the sentence), the gradient named ("principal", "second" ...) for
  gradient metrics, and the metric of the bin phrase when that phrase belongs to one metric only.
  The candidates are the record's features with that metric and exactly that set of networks
  (whole-brain metrics: no network named); among several candidates the one whose z is nearest the
  quoted number is taken (the exact z when it is quoted).
- **It is correct** when such a feature exists, has a cohort z, and the bin phrase next to the
  number (the verifier's rule) agrees with the feature's bin. ``z_exact`` counts the correct
  statements that also quote the exact z.
- **share** = correct / stated; ``None`` when the text states nothing (empty or garbage text), so an
  empty answer is never mistaken for a perfect or a worthless one. Averages over many texts should
  pool counts (:func:`pooled_faithfulness`), which treats a text that states nothing as contributing
  nothing.

ROUGE-L and BLEU come from the maintained reference implementations (``rouge-score``, Google's
package used by the ROUGE literature; ``sacrebleu``, the WMT standard) rather than being re-written.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

from ..descriptors.facts import DescriptorFacts, FeatureFact
from ..descriptors.text import (
    _COMPONENT_PATTERNS,
    _LEXICON,
    _LEXICON_PATTERN,
    _METRIC_PATTERNS,
    _NUMBER,
    _bin_phrase_of,
    _network_pattern,
    _phrase_agrees,
    _sentences,
    format_z,
)

__all__ = ["Statement", "bleu", "faithfulness", "pooled_faithfulness", "rouge_l"]

_SIGNED_NUMBER = re.compile(r"^([+\-\u2212]?)(\d+(?:\.\d+)?)$")
#: The unit of a quoted z, "(+1.42 SD)": not the temporal-SD metric.
_Z_UNIT = re.compile(r"(?:(?<=\d)|^)\s*SDs?\b")


@dataclass(frozen=True)
class Statement:
    """One statement of a generated text (one quoted number).

    Attributes:
        clause: the text the statement was read from (the number's clause).
        quoted: the number as written.
        phrase: the bin phrase read next to it, or None.
        fact_key: the feature it was attributed to, or None when no feature fits.
        fact_bin: that feature's bin, or None.
        correct: the feature exists, is rated, and the phrase agrees with its bin.
        z_exact: correct and the quoted number is the feature's canonical z.
        reason: why the statement is wrong ("" when correct).
    """

    clause: str
    quoted: str
    phrase: str | None
    fact_key: str | None
    fact_bin: str | None
    correct: bool
    z_exact: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _as_facts(facts: DescriptorFacts | str | Mapping) -> DescriptorFacts:
    if isinstance(facts, DescriptorFacts):
        return facts
    if isinstance(facts, str):
        try:
            return DescriptorFacts.from_json(facts)
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(
                f"facts is a string but not a DescriptorFacts JSON record (the `descriptor_facts` column): {error}"
            ) from error
    if isinstance(facts, Mapping):
        return DescriptorFacts.from_dict(facts)
    raise TypeError(f"facts must be a DescriptorFacts, its JSON string or its dict, got {type(facts).__name__}.")


def _number_value(quoted: str) -> float | None:
    match = _SIGNED_NUMBER.match(quoted.replace(",", "."))
    if match is None:
        return None
    value = float(match.group(2))
    return -value if match.group(1) in ("-", "\u2212") else value


def _index(facts: DescriptorFacts) -> dict[tuple[str, frozenset[str]], list[FeatureFact]]:
    """(metric, set of networks) -> features; gradient features of every component share a key."""
    index: dict[tuple[str, frozenset[str]], list[FeatureFact]] = {}
    for fact in facts.features:
        index.setdefault((fact.metric, frozenset(fact.networks)), []).append(fact)
    return index


def _metrics_named(text: str) -> list[str]:
    text = _Z_UNIT.sub("", text)
    return [metric for metric, pattern in _METRIC_PATTERNS.items() if pattern.search(text)]


def _components_named(text: str) -> set[int]:
    return {component for component, pattern in _COMPONENT_PATTERNS.items() if pattern.search(text)}


def _candidates(
    facts: DescriptorFacts, metrics: Iterable[str], networks: frozenset[str], components: set[int]
) -> list[FeatureFact]:
    index = _index(facts)
    found: list[FeatureFact] = []
    for metric in metrics:
        for fact in index.get((metric, networks), []):
            if fact.component is not None and components and fact.component not in components:
                continue
            found.append(fact)
    return found


def _judge(
    facts: DescriptorFacts,
    quoted: str,
    phrase: str | None,
    clause: str,
    sentence: str,
    networks: frozenset[str],
) -> Statement:
    metrics = _metrics_named(clause) or _metrics_named(sentence)
    if phrase is not None:
        # A generator phrase that belongs to one metric only ("spans a wider range ...") fixes the metric.
        own = {metric for metric, _ in _LEXICON[phrase.lower()] if metric is not None}
        if own and own & set(metrics):
            metrics = [m for m in metrics if m in own]
    components = _components_named(clause) or _components_named(sentence)
    candidates = _candidates(facts, metrics, networks, components)

    def wrong(reason: str, fact: FeatureFact | None = None) -> Statement:
        return Statement(clause.strip(), quoted, phrase, fact.key if fact else None, fact.bin if fact else None,
                         False, False, reason)  # fmt: skip

    if not metrics:
        return wrong("the sentence names no metric the record describes")
    if not candidates:
        named = ", ".join(sorted(networks)) or "no network"
        return wrong(f"the record has no {'/'.join(metrics)} feature for {named}")
    rated = [f for f in candidates if f.z is not None]
    if not rated:
        return wrong("the feature has no cohort z (not comparable), so no bin can be stated", candidates[0])
    value = _number_value(quoted)
    fact = rated[0] if value is None else min(rated, key=lambda f: abs(f.z - value))
    if phrase is None:
        return wrong("no bin phrase (such as 'elevated' or 'typical') next to the number", fact)
    if not _phrase_agrees(phrase, fact):
        return wrong(f"'{phrase}' contradicts the feature's bin {fact.bin!r}", fact)
    return Statement(clause.strip(), quoted, phrase, fact.key, fact.bin, True, format_z(fact.z) == quoted, "")


def _statements(text: str, facts: DescriptorFacts) -> list[Statement]:
    network_spans: list[tuple[int, int, str]] = []
    pattern = _network_pattern(facts.networks)
    if pattern is not None:
        network_spans = [(m.start(), m.end(), m.group()) for m in pattern.finditer(text)]
    # Digits inside network names are not numbers and lexicon words inside them are not phrases.
    masked = list(text)
    for start, end, _ in network_spans:
        masked[start:end] = ["N"] * (end - start)
    masked_text = "".join(masked)

    statements: list[Statement] = []
    for bounds in _sentences(text):
        numbers = list(_NUMBER.finditer(masked_text, *bounds))
        if not numbers:
            continue
        sentence = text[bounds[0] : bounds[1]]
        phrases = [m for m in _LEXICON_PATTERN.finditer(masked_text, *bounds) if _LEXICON[m.group().lower()]]
        phrase_first = not phrases or phrases[0].start() < numbers[0].start()
        for index, number in enumerate(numbers):
            if len(numbers) == 1:
                clause_bounds = bounds
            else:
                start = numbers[index - 1].end() if index else bounds[0]
                clause_bounds = (start, number.end())
                if not any(start <= s and e <= number.end() for s, e, _ in network_spans):
                    # No network before the number: a rewriter may name it after ("... (z=+1.2) in Default").
                    end = numbers[index + 1].start() if index + 1 < len(numbers) else bounds[1]
                    if any(number.end() <= s and e <= end for s, e, _ in network_spans):
                        clause_bounds = (number.start(), end)
            networks = frozenset(
                name for s, e, name in network_spans if clause_bounds[0] <= s and e <= clause_bounds[1]
            )
            phrase = _bin_phrase_of(index, numbers, phrases, bounds, phrase_first)
            clause = text[clause_bounds[0] : clause_bounds[1]]
            statements.append(_judge(facts, number.group(), phrase, clause, sentence, networks))
    return statements


def faithfulness(generated_text: str, facts: DescriptorFacts | str | Mapping) -> dict[str, Any]:
    """How many of the bins and networks that ``generated_text`` states are right for ``facts``.

    Args:
        generated_text: a generated descriptor text (any string).
        facts: the scan's :class:`DescriptorFacts`, or its JSON (the ``descriptor_facts`` column).

    Returns:
        ``{"stated": int, "correct": int, "share": float | None, "z_exact": int,
        "fact_keys": sorted keys of the features stated correctly, "details": [Statement.to_dict()]}``;
        ``share`` is ``correct / stated``, or None when nothing is stated (see the module docstring).

    Raises:
        TypeError: ``generated_text`` is not a str, or ``facts`` is of another type.
        ValueError: ``facts`` is a string that is not a facts record.
    """
    if not isinstance(generated_text, str):
        raise TypeError(f"generated_text must be a str, got {type(generated_text).__name__}.")
    record = _as_facts(facts)
    statements = _statements(generated_text, record)
    correct = [s for s in statements if s.correct]
    return {
        "stated": len(statements),
        "correct": len(correct),
        "share": len(correct) / len(statements) if statements else None,
        "z_exact": sum(s.z_exact for s in statements),
        "fact_keys": sorted({s.fact_key for s in correct}),
        "details": [s.to_dict() for s in statements],
    }


def pooled_faithfulness(reports: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Pool :func:`faithfulness` reports of many texts.

    Returns:
        ``share`` (all correct / all stated; 0.0 when no text states anything, so that a model that
        says nothing checkable scores as badly as possible), ``stated_per_text`` (mean statements per
        text), ``texts_stating`` (fraction of texts that state anything) and ``z_exact_share`` (exact
        z quotes / all stated; 0.0 likewise).
    """
    if not reports:
        raise ValueError("pooled_faithfulness needs at least one faithfulness report.")
    stated = sum(int(r["stated"]) for r in reports)
    correct = sum(int(r["correct"]) for r in reports)
    exact = sum(int(r["z_exact"]) for r in reports)
    return {
        "share": correct / stated if stated else 0.0,
        "stated_per_text": stated / len(reports),
        "texts_stating": sum(1 for r in reports if r["stated"]) / len(reports),
        "z_exact_share": exact / stated if stated else 0.0,
    }


def _check_pairs(predictions: Sequence[str], references: Sequence[str]) -> tuple[list[str], list[str]]:
    if isinstance(predictions, str) or isinstance(references, str):
        raise TypeError("predictions and references must be sequences of strings (wrap a single text in a list).")
    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references):
        raise ValueError(
            f"Got {len(predictions)} predictions but {len(references)} references; give one reference per prediction."
        )
    if not predictions:
        raise ValueError("predictions is empty: there is nothing to score.")
    for name, texts in (("predictions", predictions), ("references", references)):
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise TypeError(f"{name}[{bad[0]}] is {type(texts[bad[0]]).__name__}; every item must be a str.")
    return predictions, references


@lru_cache(maxsize=2)
def _rouge_scorer(use_stemmer: bool):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)


def rouge_l(predictions: Sequence[str], references: Sequence[str], *, use_stemmer: bool = True) -> float:
    """Mean ROUGE-L F1 over (prediction, reference) pairs, in [0, 1], from ``rouge-score``.

    ``rouge-score`` lower-cases and keeps alphanumeric tokens (so "+1.42" reads as "1 42");
    ``use_stemmer`` applies its Porter stemmer.
    """
    predictions, references = _check_pairs(predictions, references)
    scorer = _rouge_scorer(bool(use_stemmer))
    scores = [
        scorer.score(reference, prediction)["rougeL"].fmeasure for prediction, reference in zip(predictions, references)
    ]
    return float(sum(scores) / len(scores))


def bleu(predictions: Sequence[str], references: Sequence[str], *, tokenize: str = "13a") -> float:
    """Corpus BLEU (one reference per prediction), in [0, 100], from ``sacrebleu`` (``tokenize`` as there)."""
    import sacrebleu

    predictions, references = _check_pairs(predictions, references)
    return float(sacrebleu.corpus_bleu(predictions, [references], tokenize=tokenize).score)
