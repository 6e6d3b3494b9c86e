"""Descriptor text: a :class:`~fmrilm.descriptors.facts.DescriptorFacts` record written as paragraphs.

The generator reads only the record, so every statement can be traced back to one feature:
:func:`describe_with_mentions` returns, next to the text, a :class:`Mention` (fact key, bin,
character span) for every statement that quotes a feature. :func:`verify_text` works the other way
round, on any text (for instance the output of an LLM rewriter): every number must be the canonical
z-score of a feature whose networks and metric are named in the same sentence, and the bin phrase
next to it must agree with the feature's bin.

Rules (SPEC.md section 3.2, with rough edge R6 fixed):

- One block per feature family present in the record, in :data:`~fmrilm.descriptors.facts.FAMILIES`
  order, each under its header (:data:`SECTION_HEADERS`); blocks are joined by newlines.
- A z-score is always quoted signed with :data:`~fmrilm.descriptors.facts.Z_DECIMALS` decimals and
  an ASCII minus ("+1.42", "-2.31"); the wrapper around it varies ("(z=+1.42)", "(+1.42 SD)").
- A feature whose z is None (no spread in the reference cohort) is never quoted.
- A statement's wording comes from its bin's phrase set (:func:`bin_phrases`), so no feature is
  called elevated unless its bin is high.
- Modularity reads the right way round: a positive z means higher modularity, i.e. more segregated
  networks with more distinct communities; a negative z means a less segregated, more integrated
  organisation.
- Wording varies with ``seed`` (:class:`random.Random`, one stream per family); the facts do not.
  The same seed always gives the same text.

What each block says (features with z None are named as not comparable, never quoted):

- Functional Connectivity: an opening line, then the three highest-z network pairs (descending)
  and, among the rest, the three lowest (ascending), one sentence each.
- Functional Gradient: the range of each gradient, with an interpretive clause when it deviates;
  then the networks whose principal-gradient mean is high or low (or that all are typical).
  Gradient variances and the means along gradients two and three stay in the record only.
- Graph Metrics: modularity, global efficiency and clustering (seven bins) with a short
  interpretation; then the networks whose node strength is high or low (or that all are typical).
- Temporal Dynamics: one sentence with a phrase per whole-brain metric; then, per metric, the
  highest network if its bin is high and the lowest if its bin is low.
- Independent Component Analysis: that domains are data-driven ICA components grouped by network;
  up to three elevated and three reduced domain pairs of FNC; the highest and lowest domain of
  component fALFF when deviant.

No digit appears in the text other than the quoted z-scores (gradients are "principal", "second",
"third"; the autocorrelation is "lag-one"), so that :func:`verify_text` can hold every number to
account.
"""

from __future__ import annotations

import operator
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from .facts import FAMILIES, METRIC_SCHEME, Z_DECIMALS, DescriptorFacts, FeatureFact

__all__ = [
    "SECTION_HEADERS",
    "Mention",
    "bin_phrases",
    "describe",
    "describe_with_mentions",
    "format_z",
    "verify_text",
]

#: family -> the header line of its block.
SECTION_HEADERS: dict[str, str] = {
    "connectivity": "## Functional Connectivity:",
    "gradients": "## Functional Gradient:",
    "graph": "## Graph Metrics:",
    "temporal": "## Temporal Dynamics:",
    "ica": "## Independent Component Analysis:",
}

#: How many network pairs the connectivity paragraph (and the ICA FNC bullet) quotes per direction.
N_EXTREME_PAIRS = 3

TEMPORAL_METRICS = ("temporal_sd", "alff", "falff", "band_power_ratio", "lag1_autocorrelation", "outlier_fraction")
GRAPH_GLOBAL_METRICS = ("modularity", "global_efficiency", "clustering")
GRADIENT_ORDINALS = {1: "principal", 2: "second", 3: "third"}


# --------------------------------------------------------------------------------------------------
# Phrase sets: metric -> bin -> phrases. The first phrase of each bin is the canonical one.
# Within one metric no phrase belongs to two bins (tests check it).
# --------------------------------------------------------------------------------------------------

_FIVE_PAIR = {
    "markedly_low": ("markedly lower than average", "substantially below the cohort average", "markedly reduced"),
    "low": ("somewhat reduced", "mildly below the cohort average", "modestly lower than average"),
    "typical": ("within typical range", "within the typical range", "in line with the cohort"),
    "high": ("somewhat elevated", "mildly above the cohort average", "modestly higher than average"),
    "markedly_high": ("markedly elevated", "substantially above the cohort average", "markedly higher than average"),
}

_SEVEN_GLOBAL = {
    "extremely_low": ("extremely reduced", "far below the cohort average"),
    "strongly_low": ("strongly reduced", "well below the cohort average"),
    "moderately_low": ("moderately reduced", "moderately below the cohort average"),
    "typical": ("within the typical range", "typical for the cohort"),
    "moderately_high": ("moderately elevated", "moderately above the cohort average"),
    "strongly_high": ("strongly elevated", "well above the cohort average"),
    "extremely_high": ("extremely elevated", "far above the cohort average"),
}

_THREE_NETWORK = {
    "low": ("reduced", "lower than in the cohort", "below the cohort average"),
    "typical": ("typical", "in line with the cohort"),
    "high": ("elevated", "higher than in the cohort", "above the cohort average"),
}

_THREE_RANGE = {
    "low": (
        "spans a narrower range than the cohort average",
        "has a range lower than the cohort average",
        "is more compressed than in the cohort",
    ),
    "typical": ("spans a range typical of the cohort", "has a range in line with the cohort"),
    "high": (
        "spans a wider range than the cohort average",
        "has a range higher than the cohort average",
        "is more expanded than in the cohort",
    ),
}


def _five_temporal(noun: str, up: str, down: str, typical: tuple[str, ...], big_up: str, big_down: str) -> dict:
    """Five-bin noun phrases for a temporal metric, e.g. ``stronger signal fluctuations``."""
    return {
        "markedly_low": (f"markedly {down} {noun}", f"{big_down} {noun}"),
        "low": (f"{down} {noun}", f"somewhat {down} {noun}"),
        "typical": typical,
        "high": (f"{up} {noun}", f"somewhat {up} {noun}"),
        "markedly_high": (f"markedly {up} {noun}", f"{big_up} {noun}"),
    }


_TEMPORAL_PHRASES = {
    "temporal_sd": _five_temporal(
        "signal fluctuations", "stronger", "weaker",
        ("typical signal fluctuations", "signal fluctuations in the typical range"),
        "much stronger", "much weaker",
    ),
    "alff": _five_temporal("ALFF", "higher", "lower", ("typical ALFF", "ALFF in the typical range"), "much higher", "much lower"),
    "falff": _five_temporal("fALFF", "higher", "lower", ("typical fALFF", "fALFF in the typical range"), "much higher", "much lower"),
    "band_power_ratio": {
        "markedly_low": ("a markedly lower low-to-high-frequency power ratio", "a much lower low-to-high-frequency power ratio"),
        "low": ("a lower low-to-high-frequency power ratio", "a somewhat lower low-to-high-frequency power ratio"),
        "typical": ("a typical low-to-high-frequency power ratio", "a low-to-high-frequency power ratio in the typical range"),
        "high": ("a higher low-to-high-frequency power ratio", "a somewhat higher low-to-high-frequency power ratio"),
        "markedly_high": ("a markedly higher low-to-high-frequency power ratio", "a much higher low-to-high-frequency power ratio"),
    },
    "lag1_autocorrelation": _five_temporal(
        "persistent temporal structure", "more", "less",
        ("typical temporal persistence", "temporal persistence in the typical range"),
        "much more", "much less",
    ),
    "outlier_fraction": {
        "markedly_low": ("markedly fewer outlier time points", "far fewer outlier time points"),
        "low": ("fewer outlier time points", "somewhat fewer outlier time points"),
        "typical": ("a typical share of outlier time points", "a share of outlier time points in the typical range"),
        "high": ("more outlier time points", "somewhat more outlier time points"),
        "markedly_high": ("markedly more outlier time points", "far more outlier time points"),
    },
}  # fmt: skip

_PHRASES: dict[str, dict[str, tuple[str, ...]]] = {
    "fc": _FIVE_PAIR,
    "fnc": _FIVE_PAIR,
    "modularity": _SEVEN_GLOBAL,
    "global_efficiency": _SEVEN_GLOBAL,
    "clustering": _SEVEN_GLOBAL,
    "strength": _THREE_NETWORK,
    "gradient_network_mean": _THREE_NETWORK,
    "gradient_range": _THREE_RANGE,
    "gradient_variance": _THREE_NETWORK,
    **_TEMPORAL_PHRASES,
    "ica_falff": _TEMPORAL_PHRASES["falff"],
}

# Direction words that a rewriter may use instead of the generator's phrases (read by verify_text).
_GENERIC_WORDS = {
    +1: ("elevated", "increased", "higher", "stronger", "greater", "larger", "heightened", "enhanced", "above", "more"),
    -1: ("reduced", "decreased", "lower", "weaker", "smaller", "diminished", "below", "fewer", "less"),
    0: (
        "typical",
        "normal",
        "unremarkable",
        "within the typical range",
        "within typical range",
        "in line with the cohort",
    ),
}


# Comparisons that name no direction ("lower than typical" is low, not typical): read as no phrase.
_NEUTRAL_WORDS = (
    "than typical",
    "than usual",
    "than normal",
    "than average",
    "than the cohort average",
    "than the cohort",
    "than in the cohort",
    "than the typical range",
)


def _direction(bin_name: str) -> int:
    """+1 for a high bin, -1 for a low bin, 0 for ``typical``."""
    if bin_name.endswith("high"):
        return 1
    if bin_name.endswith("low"):
        return -1
    return 0


def bin_phrases(metric: str, bin_name: str) -> tuple[str, ...]:
    """The phrases the generator may use for ``metric`` in bin ``bin_name`` (first one canonical).

    Raises:
        ValueError: for an unknown metric, or a bin outside the metric's scheme.
    """
    if metric not in _PHRASES:
        raise ValueError(f"Unknown metric {metric!r}; known metrics: {sorted(_PHRASES)}.")
    table = _PHRASES[metric]
    if bin_name not in table:
        raise ValueError(
            f"Bin {bin_name!r} is not in the {METRIC_SCHEME[metric]!r} scheme of {metric!r}; "
            f"expected one of {list(table)}."
        )
    return table[bin_name]


def format_z(z: float) -> str:
    """The canonical text of a z-score: signed, :data:`Z_DECIMALS` decimals, ASCII minus ("+1.42")."""
    return f"{z + 0.0:+.{Z_DECIMALS}f}"


_Z_WRAPPERS = ("(z={})", "(z = {})", "({} SD)")


@dataclass(frozen=True)
class Mention:
    """One statement about one feature: ``text[start:end]`` quotes ``fact_key``'s z and bin phrase."""

    fact_key: str
    bin: str
    start: int
    end: int


# A line of the text is a list of segments: plain strings, or (statement, fact) pairs that become Mentions.
_Segment = str | tuple[str, FeatureFact]
_Line = list[_Segment]


class _Phrasing:
    """The seeded choices for one block: template variants, bin phrases and the z wrapper."""

    def __init__(self, seed: int, family: str) -> None:
        self._rng = random.Random(f"fmrilm-descriptor-text:{seed}:{family}")
        self._wrapper = self._rng.choice(_Z_WRAPPERS)

    def choice(self, options: Sequence[str]) -> str:
        return self._rng.choice(options)

    def phrase(self, fact: FeatureFact) -> str:
        return self._rng.choice(bin_phrases(fact.metric, fact.bin))

    def z(self, fact: FeatureFact) -> str:
        return self._wrapper.format(format_z(fact.z))


# --------------------------------------------------------------------------------------------------
# Small helpers shared by the blocks
# --------------------------------------------------------------------------------------------------


def _rated(facts: Iterable[FeatureFact]) -> list[FeatureFact]:
    return [f for f in facts if f.z is not None]


def _extremes(rated: Sequence[FeatureFact], k: int) -> tuple[list[FeatureFact], list[FeatureFact]]:
    """The ``k`` highest-z facts (descending) and, among the rest, the ``k`` lowest (ascending).

    Ties keep record order. With fewer than ``2k`` facts every fact appears exactly once.
    """
    order = sorted(range(len(rated)), key=lambda i: (-rated[i].z, i))
    top = [rated[i] for i in order[:k]]
    rest = sorted(order[k:], key=lambda i: (rated[i].z, i))
    return top, [rated[i] for i in rest[:k]]


def _join_items(items: list[_Segment], last_joiner: str = " and ") -> _Line:
    """Segments joined as "a, b and c"."""
    line: _Line = []
    for i, item in enumerate(items):
        if i:
            line.append(last_joiner if i == len(items) - 1 else ", ")
        line.append(item)
    return line


def _names(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _unavailable_sentence(subject: str, names: Sequence[str] = ()) -> str:
    """The sentence for a feature without a cohort z: "{Subject} cannot be compared with the cohort [for A]..."."""
    where = f" for {_names(names)}" if names else ""
    return f"{subject[0].upper()}{subject[1:]} cannot be compared with the cohort{where} (no reference spread)."


def _network_order(facts: DescriptorFacts, selected: Iterable[FeatureFact]) -> list[FeatureFact]:
    """Per-network facts sorted into atlas order."""
    rank = {name: i for i, name in enumerate(facts.networks)}
    return sorted(selected, key=lambda f: rank[f.networks[0]])


def _per_network_bullet(
    facts: DescriptorFacts,
    network_facts: Sequence[FeatureFact],
    phrasing: _Phrasing,
    label: str,
    all_typical: Sequence[str],
) -> _Line:
    """One bullet for three-bin per-network facts: "- {label}: A is elevated (z), B is reduced (z); ..."."""
    ordered = _network_order(facts, network_facts)
    rated = _rated(ordered)
    unrated = [f.networks[0] for f in ordered if f.z is None]
    deviant = [f for f in rated if f.bin != "typical"]
    if not rated:
        return ["- " + _unavailable_sentence(label, unrated)]
    if not deviant:
        every = "every network with a cohort reference" if unrated else "every network"
        line: _Line = ["- " + phrasing.choice(all_typical).format(every=every)]
    else:
        items: list[_Segment] = [(f"{f.networks[0]} is {phrasing.phrase(f)} {phrasing.z(f)}", f) for f in deviant]
        line = [f"- {label}: ", *_join_items(items, ", ")]
        if len(deviant) < len(rated):
            line.append(phrasing.choice(("; the other networks are typical.", "; the remaining networks are typical.")))
        else:
            line.append(".")
    if unrated:
        line.append(" " + _unavailable_sentence(label, unrated))
    return line


# --------------------------------------------------------------------------------------------------
# Functional connectivity
# --------------------------------------------------------------------------------------------------

_FC_OPENINGS = (
    "Compared with the reference cohort, the network pairs with the highest and the lowest connectivity z-scores are as follows.",
    "Relative to the cohort, this scan shows the following connectivity patterns.",
    "The following network pairs show the highest and the lowest connectivity relative to the reference cohort.",
)
_FC_BETWEEN = (
    "Connectivity between {a} and {b} is {p} {z}.",
    "{a}\u2013{b} connectivity is {p} {z}.",
    "Coupling between {a} and {b} is {p} {z}.",
)
_FC_WITHIN = (
    "Connectivity within {a} is {p} {z}.",
    "Within-{a} connectivity is {p} {z}.",
    "Coupling inside {a} is {p} {z}.",
)


def _pair_sentence(fact: FeatureFact, phrasing: _Phrasing, between: Sequence[str], within: Sequence[str]) -> str:
    a, b = fact.networks
    template = phrasing.choice(within if a == b else between)
    return template.format(a=a, b=b, p=phrasing.phrase(fact), z=phrasing.z(fact))


def _connectivity_lines(facts: DescriptorFacts, phrasing: _Phrasing) -> list[_Line]:
    rated = _rated(facts.select(metric="fc"))
    if not rated:
        return [["No cohort reference is available for this scan's connectivity, so no network pair is quoted."]]
    top, bottom = _extremes(rated, N_EXTREME_PAIRS)
    line: _Line = [phrasing.choice(_FC_OPENINGS)]
    for fact in top + bottom:
        line += [" ", (_pair_sentence(fact, phrasing, _FC_BETWEEN, _FC_WITHIN), fact)]
    return [line]


# --------------------------------------------------------------------------------------------------
# Functional gradients
# --------------------------------------------------------------------------------------------------

_GRADIENT_INTERPRETATION = {
    1: {
        +1: ("suggesting stronger sensory\u2013transmodal separation",
             "consistent with a stronger separation between sensory and transmodal systems"),
        -1: ("suggesting reduced sensory\u2013transmodal separation",
             "consistent with a weaker separation between sensory and transmodal systems"),
    },
    2: {
        +1: ("suggesting greater segregation among sensory modalities",
             "consistent with more distinct sensory modalities"),
        -1: ("suggesting less segregation among sensory modalities",
             "consistent with less distinct sensory modalities"),
    },
    3: {
        +1: ("suggesting sharper control/association distinctions",
             "consistent with more pronounced distinctions between control and association systems"),
        -1: ("suggesting blurred control/association distinctions",
             "consistent with weaker distinctions between control and association systems"),
    },
}  # fmt: skip

_GRADIENT_TYPICAL = (
    "Principal-gradient means are typical in {every}.",
    "The position along the principal gradient is typical in {every}.",
)


def _gradient_lines(facts: DescriptorFacts, phrasing: _Phrasing) -> list[_Line]:
    lines: list[_Line] = []
    for component, ordinal in GRADIENT_ORDINALS.items():
        ranges = facts.select(metric="gradient_range", component=component)
        if not ranges:
            continue
        fact = ranges[0]
        if fact.z is None:
            lines.append(["- " + _unavailable_sentence(f"the range of the {ordinal} gradient")])
            continue
        statement = f"The {ordinal} gradient {phrasing.phrase(fact)} {phrasing.z(fact)}"
        direction = _direction(fact.bin)
        if direction:
            statement += ", " + phrasing.choice(_GRADIENT_INTERPRETATION[component][direction])
        lines.append(["- ", (statement + ".", fact)])
    means = [f for f in facts.select(metric="gradient_network_mean", component=1) if len(f.networks) == 1]
    if means:
        lines.append(_per_network_bullet(facts, means, phrasing, "Principal-gradient network means", _GRADIENT_TYPICAL))
    return lines


# --------------------------------------------------------------------------------------------------
# Graph metrics
# --------------------------------------------------------------------------------------------------

_GRAPH_LABELS = {
    "modularity": ("Modularity", "Louvain modularity"),
    "global_efficiency": ("Global efficiency", "Weighted global efficiency"),
    "clustering": ("Average clustering", "The weighted clustering coefficient"),
}

# R6: positive modularity z = more segregated, more distinct communities; negative = more integrated.
_GRAPH_INTERPRETATION = {
    "modularity": {
        +1: ("indicating more segregated networks with more distinct communities",
             "pointing to greater segregation into distinct communities",
             "consistent with a more segregated, modular organisation"),
        0: ("indicating a typical balance of segregation and integration",
            "consistent with typical community structure"),
        -1: ("indicating less segregated, more integrated networks",
             "pointing to less distinct communities and greater integration",
             "consistent with a more integrated, less modular organisation"),
    },
    "global_efficiency": {
        +1: ("indicating more efficient global information transfer",
             "pointing to shorter weighted paths across the network"),
        0: ("indicating typical network-wide integration",
            "consistent with typical weighted path lengths"),
        -1: ("indicating less efficient global information transfer",
             "pointing to longer weighted paths across the network"),
    },
    "clustering": {
        +1: ("indicating denser local clustering",
             "pointing to more tightly knit local neighbourhoods"),
        0: ("indicating typical local clustering",
            "consistent with typical local neighbourhoods"),
        -1: ("indicating sparser local clustering",
             "pointing to less tightly knit local neighbourhoods"),
    },
}  # fmt: skip

_STRENGTH_TYPICAL = (
    "Node strength is typical in {every}.",
    "Node strength lies within the typical range in {every}.",
)


def _graph_lines(facts: DescriptorFacts, phrasing: _Phrasing) -> list[_Line]:
    lines: list[_Line] = []
    for metric in GRAPH_GLOBAL_METRICS:
        found = [f for f in facts.select(metric=metric) if not f.networks]
        if not found:
            continue
        fact = found[0]
        label = phrasing.choice(_GRAPH_LABELS[metric])
        if fact.z is None:
            lines.append(["- " + _unavailable_sentence(_GRAPH_LABELS[metric][0])])
            continue
        interpretation = phrasing.choice(_GRAPH_INTERPRETATION[metric][_direction(fact.bin)])
        lines.append(["- ", (f"{label} is {phrasing.phrase(fact)} {phrasing.z(fact)}, {interpretation}.", fact)])
    strength = [f for f in facts.select(metric="strength") if len(f.networks) == 1]
    if strength:
        lines.append(_per_network_bullet(facts, strength, phrasing, "Node strength", _STRENGTH_TYPICAL))
    return lines


# --------------------------------------------------------------------------------------------------
# Temporal dynamics
# --------------------------------------------------------------------------------------------------

_TEMPORAL_LABELS = {
    "temporal_sd": "Signal variability (temporal SD)",
    "alff": "ALFF",
    "falff": "fALFF",
    "band_power_ratio": "Low-to-high-frequency power ratio",
    "lag1_autocorrelation": "Lag-one autocorrelation",
    "outlier_fraction": "Outlier time points",
}
_TEMPORAL_OVERALL = (
    "Overall, the scan shows ",
    "Across the whole brain, this scan has ",
    "At the whole-brain level, the scan shows ",
)
_TEMPORAL_NOUNS = {
    "temporal_sd": "temporal SD",
    "alff": "ALFF",
    "falff": "fALFF",
    "band_power_ratio": "low-to-high-frequency power ratio",
    "lag1_autocorrelation": "lag-one autocorrelation",
    "outlier_fraction": "outlier fraction",
}
_TEMPORAL_ITEM = ("{p} in {net} {z}", "{net} shows {p} {z}")
_TEMPORAL_ALL_TYPICAL = (
    "No network deviates from the cohort on these temporal metrics.",
    "Every network's temporal metrics lie within the typical range.",
)


def _temporal_lines(facts: DescriptorFacts, phrasing: _Phrasing) -> list[_Line]:
    lines: list[_Line] = []
    whole = [f for m in TEMPORAL_METRICS for f in facts.select(metric=m) if not f.networks]
    rated_whole = _rated(whole)
    if rated_whole:
        items: list[_Segment] = [(f"{phrasing.phrase(f)} {phrasing.z(f)}", f) for f in rated_whole]
        lines.append([phrasing.choice(_TEMPORAL_OVERALL), *_join_items(items), "."])
    unrated = [_TEMPORAL_NOUNS[f.metric] for f in whole if f.z is None]
    if unrated:
        lines.append([_unavailable_sentence("the whole-brain " + _names(unrated))])

    has_network_facts = False
    deviant_lines: list[_Line] = []
    for metric in TEMPORAL_METRICS:
        rated = _rated(f for f in facts.select(metric=metric) if len(f.networks) == 1)
        has_network_facts |= bool(rated)
        top, bottom = _extremes(rated, 1)
        chosen = [f for f in top if _direction(f.bin) > 0] + [f for f in bottom if _direction(f.bin) < 0]
        if chosen:
            items = [
                (phrasing.choice(_TEMPORAL_ITEM).format(p=phrasing.phrase(f), net=f.networks[0], z=phrasing.z(f)), f)
                for f in chosen
            ]
            deviant_lines.append([f"- {_TEMPORAL_LABELS[metric]}: ", *_join_items(items, "; "), "."])
    lines.extend(deviant_lines)
    if has_network_facts and not deviant_lines:
        lines.append(["- " + phrasing.choice(_TEMPORAL_ALL_TYPICAL)])
    return lines


# --------------------------------------------------------------------------------------------------
# Independent component analysis
# --------------------------------------------------------------------------------------------------

_ICA_OPENINGS = (
    "Domains are data-driven group-ICA components grouped by network.",
    "Each domain is a set of data-driven group-ICA components, grouped by the network they load on.",
)
_FNC_BETWEEN = (
    "FNC between the {a} and {b} domains is {p} {z}.",
    "The {a}\u2013{b} domain FNC is {p} {z}.",
    "Functional network connectivity (FNC) between the {a} and {b} domains is {p} {z}.",
)
_FNC_WITHIN = (
    "FNC within the {a} domain is {p} {z}.",
    "Functional network connectivity (FNC) within the {a} domain is {p} {z}.",
)
_ICA_FALFF_ITEM = ("{p} in the {net} domain {z}", "the {net} domain shows {p} {z}")


def _ica_lines(facts: DescriptorFacts, phrasing: _Phrasing) -> list[_Line]:
    lines: list[_Line] = [["- " + phrasing.choice(_ICA_OPENINGS)]]
    fnc = facts.select(metric="fnc")
    rated = _rated(fnc)
    if fnc and not rated:
        lines.append(["- " + _unavailable_sentence("the between-domain FNC")])
    elif rated:
        elevated = sorted((f for f in rated if _direction(f.bin) > 0), key=lambda f: -f.z)[:N_EXTREME_PAIRS]
        reduced = sorted((f for f in rated if _direction(f.bin) < 0), key=lambda f: f.z)[:N_EXTREME_PAIRS]
        if elevated or reduced:
            line: _Line = ["-"]
            for fact in elevated + reduced:
                line += [" ", (_pair_sentence(fact, phrasing, _FNC_BETWEEN, _FNC_WITHIN), fact)]
            lines.append(line)
        else:
            scope = " with a cohort reference" if len(rated) < len(fnc) else ""
            lines.append([f"- No domain pair{scope} shows FNC outside the typical range."])
    falff = [f for f in facts.select(metric="ica_falff") if len(f.networks) == 1]
    rated = _rated(falff)
    if falff and not rated:
        lines.append(["- " + _unavailable_sentence("the component fALFF")])
    elif rated:
        top, bottom = _extremes(rated, 1)
        chosen = [f for f in top if _direction(f.bin) > 0] + [f for f in bottom if _direction(f.bin) < 0]
        if chosen:
            items: list[_Segment] = [
                (phrasing.choice(_ICA_FALFF_ITEM).format(p=phrasing.phrase(f), net=f.networks[0], z=phrasing.z(f)), f)
                for f in chosen
            ]
            lines.append(["- Component fALFF: ", *_join_items(items, "; "), "."])
        else:
            scope = " with a cohort reference" if len(rated) < len(falff) else ""
            lines.append([f"- Component fALFF is typical in every domain{scope}."])
    return lines


_BLOCKS: dict[str, Callable[[DescriptorFacts, _Phrasing], list[_Line]]] = {
    "connectivity": _connectivity_lines,
    "gradients": _gradient_lines,
    "graph": _graph_lines,
    "temporal": _temporal_lines,
    "ica": _ica_lines,
}


# --------------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------------


def _check_facts(facts: object) -> DescriptorFacts:
    if not isinstance(facts, DescriptorFacts):
        raise TypeError(
            f"facts must be a DescriptorFacts record, got {type(facts).__name__}; build one with "
            "DescriptorExtractor.compute(...), DescriptorFacts.from_json(...) or facts_from_values(...)."
        )
    return facts


def _check_families(families: Sequence[str] | str) -> list[str]:
    wanted = [families] if isinstance(families, str) else list(families)
    unknown = [f for f in wanted if f not in FAMILIES]
    if unknown:
        raise ValueError(f"Unknown descriptor families {unknown}; choose from {list(FAMILIES)}.")
    if not wanted:
        raise ValueError(f"families is empty; pass at least one of {list(FAMILIES)}.")
    return [f for f in FAMILIES if f in wanted]


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool):
        raise TypeError("seed must be an integer, got a bool.")
    try:
        return operator.index(seed)
    except TypeError:
        raise TypeError(f"seed must be an integer, got {type(seed).__name__} {seed!r}.") from None


def describe_with_mentions(
    facts: DescriptorFacts,
    seed: int = 0,
    *,
    families: Sequence[str] = FAMILIES,
    headers: bool = True,
) -> tuple[str, list[Mention]]:
    """The descriptor text of ``facts`` and the span of every statement that quotes a feature.

    Args:
        facts: the scan's record.
        seed: selects the wording (same seed, same text); the facts stated never depend on it.
        families: which feature families to describe (any of FAMILIES; presented in FAMILIES order).
            A family that the record does not hold is left out.
        headers: start each block with its :data:`SECTION_HEADERS` line.

    Returns:
        ``(text, mentions)``; ``text[m.start:m.end]`` holds the canonical z of ``m.fact_key`` and a
        phrase from ``bin_phrases(metric, m.bin)``.

    Raises:
        ValueError: unknown or empty ``families``, or none of them present in the record.
        TypeError: ``facts`` is not a DescriptorFacts, or ``seed`` is not an integer.
    """
    facts = _check_facts(facts)
    seed = _check_seed(seed)
    wanted = _check_families(families)
    present = {f.family for f in facts.features}
    chosen = [family for family in wanted if family in present]
    if not chosen:
        raise ValueError(
            f"The record holds no features of the requested families {wanted}; it holds {sorted(present) or 'none'}. "
            "Request families that the extractor computed for this scan."
        )

    lines: list[_Line] = []
    for family in chosen:
        block = _BLOCKS[family](facts, _Phrasing(seed, family))
        if block and headers:
            lines.append([SECTION_HEADERS[family]])
        lines.extend(block)  # empty only for a record with nothing to say (e.g. gradient variances alone)
    if not lines:
        raise ValueError(
            f"The record's {chosen} features include none that the text describes "
            f"(see the fmrilm.descriptors.text module docstring); nothing to write."
        )

    pieces: list[str] = []
    mentions: list[Mention] = []
    position = 0
    for index, line in enumerate(lines):
        if index:
            pieces.append("\n")
            position += 1
        for segment in line:
            if isinstance(segment, tuple):
                statement, fact = segment
                mentions.append(Mention(fact.key, fact.bin, position, position + len(statement)))
                segment = statement
            pieces.append(segment)
            position += len(segment)
    return "".join(pieces), mentions


def describe(
    facts: DescriptorFacts,
    seed: int = 0,
    *,
    families: Sequence[str] = FAMILIES,
    headers: bool = True,
    rewriter: Callable[[str, DescriptorFacts], str] | None = None,
    check_rewrite: bool = True,
) -> str:
    """The descriptor text of ``facts`` (see :func:`describe_with_mentions` for the arguments).

    Args:
        rewriter: optional ``rewriter(text, facts) -> str`` applied to the final text (e.g. an LLM
            paraphraser).
        check_rewrite: run the rewritten text through :func:`verify_text` and check that every
            quoted feature is still quoted; any problem raises.

    Raises:
        ValueError: with ``check_rewrite``, when the rewriter lost a quoted feature, changed a z,
            contradicted a bin or invented a number; the message lists every problem.
        TypeError: the rewriter is not callable or returned something other than a str.
    """
    text, mentions = describe_with_mentions(facts, seed, families=families, headers=headers)
    if rewriter is None:
        return text
    if not callable(rewriter):
        raise TypeError(f"rewriter must be a callable (text, facts) -> str, got {type(rewriter).__name__}.")
    rewritten = rewriter(text, facts)
    if not isinstance(rewritten, str):
        raise TypeError(
            f"The rewriter returned {type(rewritten).__name__}; it must return the rewritten text as a str."
        )
    if not check_rewrite:
        return rewritten
    problems, covered = _audit(rewritten, facts)
    by_key = facts.by_key()
    for key in dict.fromkeys(m.fact_key for m in mentions):
        if key not in covered:
            problems.append(
                f"Lost: the statement that {key} is {by_key[key].bin} (z={format_z(by_key[key].z)}) is missing "
                "from the rewritten text, or no longer names its networks, metric and bin phrase."
            )
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems)
        raise ValueError(
            f"The rewritten descriptor text does not match the facts ({len(problems)} problem(s)):\n{listing}\n"
            "Keep every z-value, network name and bin phrase, add no numbers, or pass check_rewrite=False."
        )
    return rewritten


# --------------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------------

_NUMBER = re.compile(r"[+\-\u2212]?\d+(?:[.,]\d+)*")
_CANONICAL = re.compile(rf"[+-]\d+\.\d{{{Z_DECIMALS}}}")
_SENTENCE_END = re.compile(r"\n|(?<!\be\.g)(?<!\bi\.e)(?<!\bvs)[.!?](?=\s|$)")  # "i.e." does not end a sentence

# Words that a sentence must contain for a number in it to be read as this metric.
_METRIC_WORDS: dict[str, str] = {
    "fc": r"connectivity|connected|coupl|connections?|\bFC\b|correlat|synchron",
    "fnc": r"\bFNC\b|functional network connectivity",
    "gradient_range": r"gradient",
    "gradient_variance": r"gradient",
    "gradient_network_mean": r"gradient",
    "modularity": r"modular",
    "global_efficiency": r"efficien",
    "clustering": r"cluster",
    "strength": r"strength",
    "temporal_sd": r"fluctuat|variab|\bSD\b|standard deviation",
    "alff": r"\bALFF\b|low-frequency amplitude|amplitude of low-frequency",
    "falff": r"\bfALFF\b|fractional",
    "band_power_ratio": r"power ratio|band power|spectral",
    "lag1_autocorrelation": r"autocorrelat|persisten",
    "outlier_fraction": r"outlier|spike",
    "ica_falff": r"\bfALFF\b|fractional",
}
_METRIC_PATTERNS = {metric: re.compile(words, re.IGNORECASE) for metric, words in _METRIC_WORDS.items()}
_COMPONENT_PATTERNS = {
    1: re.compile(r"principal|first|primary", re.IGNORECASE),
    2: re.compile(r"second", re.IGNORECASE),
    3: re.compile(r"third|tertiary", re.IGNORECASE),
}


def _build_lexicon() -> tuple[dict[str, list[tuple[str | None, str]]], re.Pattern]:
    """phrase (lower case) -> [(metric, bin)] for generator phrases, [(None, direction)] for generic words,
    [] for neutral comparisons; and the pattern that finds them, longest first."""
    lexicon: dict[str, list[tuple[str | None, str]]] = {}
    for metric, table in _PHRASES.items():
        for bin_name, phrases in table.items():
            for phrase in phrases:
                lexicon.setdefault(phrase.lower(), []).append((metric, bin_name))
    names = {+1: "high", -1: "low", 0: "typical"}
    for direction, words in _GENERIC_WORDS.items():
        for word in words:
            lexicon.setdefault(word.lower(), []).append((None, names[direction]))
    for words in _NEUTRAL_WORDS:
        lexicon.setdefault(words, [])
    alternation = "|".join(re.escape(p) for p in sorted(lexicon, key=len, reverse=True))
    return lexicon, re.compile(rf"(?<!\w)(?:{alternation})(?!\w)", re.IGNORECASE)


_LEXICON, _LEXICON_PATTERN = _build_lexicon()


@lru_cache(maxsize=64)
def _network_pattern(networks: tuple[str, ...]) -> re.Pattern | None:
    if not networks:
        return None
    alternation = "|".join(re.escape(n) for n in sorted(networks, key=len, reverse=True))
    return re.compile(rf"(?<![A-Za-z0-9])(?:{alternation})(?![A-Za-z0-9])")


def _sentences(text: str) -> list[tuple[int, int]]:
    spans, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        spans.append((start, match.end()))
        start = match.end()
    spans.append((start, len(text)))
    return [(s, e) for s, e in spans if text[s:e].strip()]


def _phrase_agrees(phrase: str, fact: FeatureFact) -> bool:
    """Whether a bin/direction phrase is a fair description of ``fact``'s bin."""
    entries = _LEXICON[phrase.lower()]
    own = [bin_name for metric, bin_name in entries if metric == fact.metric]
    if own:
        return fact.bin in own
    return _direction(fact.bin) in {_direction(bin_name) for _, bin_name in entries}


def _quote(text: str, limit: int = 140) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _bin_phrase_of(
    index: int, numbers: list[re.Match], phrases: list[re.Match], bounds: tuple[int, int], phrase_first: bool
) -> str | None:
    """The lexicon phrase that describes ``numbers[index]``, looking no further than the neighbouring numbers.

    A sentence that puts its first phrase before its first number ("X is elevated (z=+1.42)") is read
    phrase-first: the last phrase before the number, else the first after it; otherwise the reverse.
    """
    number = numbers[index]
    before_start = numbers[index - 1].end() if index else bounds[0]
    after_end = numbers[index + 1].start() if index + 1 < len(numbers) else bounds[1]
    before = [p.group() for p in phrases if p.start() >= before_start and p.end() <= number.start()]
    after = [p.group() for p in phrases if p.start() >= number.end() and p.end() <= after_end]
    if phrase_first:
        return before[-1] if before else after[0] if after else None
    return after[0] if after else before[-1] if before else None


def _judge_number(
    quoted: str, sentence: str, named: set[str], phrase: str | None, by_z: dict[str, list[FeatureFact]]
) -> tuple[str | None, list[FeatureFact]]:
    """(problem or None, the facts this number correctly quotes) for one number in one sentence."""
    where = f'in "{_quote(sentence)}"'
    if not _CANONICAL.fullmatch(quoted):
        return (
            f"'{quoted}' {where} is not a z-score in canonical form: every number in a descriptor text must be "
            f"a feature's z, signed with {Z_DECIMALS} decimals and an ASCII minus (e.g. z=+1.42).",
            [],
        )
    owners = by_z.get(quoted, [])
    if not owners:
        return f"z={quoted} {where} is not the z-score of any feature in the record (invented or altered).", []
    candidates = [f for f in owners if set(f.networks) <= named]
    if not candidates:
        keys = ", ".join(f.key for f in owners)
        return f"z={quoted} {where} belongs to {keys}, but the sentence does not name its network(s).", []
    on_topic = [
        f
        for f in candidates
        if _METRIC_PATTERNS[f.metric].search(sentence)
        and (f.component is None or _COMPONENT_PATTERNS[f.component].search(sentence))
    ]
    if not on_topic:
        keys = ", ".join(f.key for f in candidates)
        return f"z={quoted} {where} belongs to {keys}, but the sentence does not name that metric.", []
    if phrase is None:
        return (
            f"z={quoted} {where} has no bin phrase next to it (such as 'elevated', 'reduced' or "
            "'within the typical range'), so its direction is lost.",
            [],
        )
    agreeing = [f for f in on_topic if _phrase_agrees(phrase, f)]
    if not agreeing:
        bins = ", ".join(f"{f.key} is {f.bin}" for f in on_topic)
        return f"z={quoted} {where} is described as '{phrase}', which contradicts the record ({bins}).", []
    return None, agreeing


def _audit(text: str, facts: DescriptorFacts) -> tuple[list[str], set[str]]:
    """(problems, keys of the facts correctly quoted) for ``text`` against ``facts``."""
    by_z: dict[str, list[FeatureFact]] = {}
    for fact in facts.features:
        if fact.z is not None:
            by_z.setdefault(format_z(fact.z), []).append(fact)

    network_spans: list[tuple[int, int, str]] = []
    pattern = _network_pattern(facts.networks)
    if pattern is not None:
        network_spans = [(m.start(), m.end(), m.group()) for m in pattern.finditer(text)]
    # Digits inside network names ("Net7") are not numbers; lexicon words inside them are not phrases.
    masked = list(text)
    for start, end, _ in network_spans:
        masked[start:end] = ["N"] * (end - start)
    masked_text = "".join(masked)

    problems: list[str] = []
    covered: set[str] = set()
    for bounds in _sentences(text):
        numbers = list(_NUMBER.finditer(masked_text, *bounds))
        if not numbers:
            continue
        sentence = text[bounds[0] : bounds[1]]
        named = {name for start, end, name in network_spans if bounds[0] <= start and end <= bounds[1]}
        phrases = [m for m in _LEXICON_PATTERN.finditer(masked_text, *bounds) if _LEXICON[m.group().lower()]]
        phrase_first = not phrases or phrases[0].start() < numbers[0].start()
        for index, number in enumerate(numbers):
            phrase = _bin_phrase_of(index, numbers, phrases, bounds, phrase_first)
            problem, quoted_facts = _judge_number(number.group(), sentence, named, phrase, by_z)
            if problem:
                problems.append(problem)
            covered.update(f.key for f in quoted_facts)
    return problems, covered


def verify_text(text: str, facts: DescriptorFacts) -> list[str]:
    """The inconsistencies between a descriptor text and the record it claims to describe.

    Checks every number in ``text`` (digits inside network names excepted), sentence by sentence:

    - it is a z in canonical form (signed, :data:`Z_DECIMALS` decimals, ASCII minus);
    - it is the z of a feature of ``facts`` whose networks are all named in the sentence, whose metric
      is named there ("connectivity", "modularity", "ALFF", ...) and, for a gradient feature, whose
      gradient ("principal", "second", "third") is named too;
    - the bin phrase next to it (the nearest one on the side where the sentence puts its phrases) is
      one of that feature's bin phrases, or a direction word ("elevated", "lower", "typical", ...)
      that agrees with its bin.

    Statements without numbers (e.g. "all networks are typical") are not checked.

    Returns:
        One message per problem; an empty list means the text is consistent with ``facts``.

    Raises:
        TypeError: ``text`` is not a str or ``facts`` is not a DescriptorFacts.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}.")
    return _audit(text, _check_facts(facts))[0]
