"""The structured record of one scan's imaging features: what the descriptor text may say.

:class:`DescriptorFacts` holds every feature computed for a scan as a :class:`FeatureFact`: its raw
value, its z-score against the reference cohort, and the bin that z falls in. The text generator
(:mod:`fmrilm.descriptors.text`) reads only this record, so every number or bin in the text can be
checked against it, and the record travels with the dataset as JSON (column ``descriptor_facts``).

Conventions:

- ``z`` is rounded to :data:`Z_DECIMALS` decimals *before* binning, so a quoted "z=+1.00" is never
  called elevated while a quoted "+1.01" is; ``z`` is None when the reference cohort has no spread
  for that feature (then the bin is ``"unavailable"`` and the text does not quote it).
- Bins follow SPEC.md section 3.2. Each metric uses one of three schemes (:data:`METRIC_SCHEME`):
  ``five`` (FC, FNC, temporal and spectral metrics): z < -2 ``markedly_low``; -2 <= z < -1 ``low``;
  -1 <= z <= 1 ``typical``; 1 < z <= 2 ``high``; z > 2 ``markedly_high``.
  ``seven`` (global graph metrics): cut points at +-1, +-2, +-3: ``extremely_low`` (z < -3),
  ``strongly_low`` (-3 <= z < -2), ``moderately_low`` (-2 <= z < -1), ``typical``,
  ``moderately_high`` (1 < z <= 2), ``strongly_high`` (2 < z <= 3), ``extremely_high`` (z > 3).
  ``three`` (gradient metrics and per-network graph strength): z < -1 ``low``, typical, z > 1 ``high``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "BIN_SCHEMES",
    "FAMILIES",
    "METRIC_FAMILY",
    "METRIC_SCHEME",
    "METRIC_UNITS",
    "Z_DECIMALS",
    "DescriptorFacts",
    "FeatureFact",
    "bin_for",
    "feature_key",
    "round_z",
]

#: Feature families, in the order the text presents them.
FAMILIES = ("connectivity", "gradients", "graph", "temporal", "ica")

#: metric -> family. Every FeatureFact.metric is one of these keys.
METRIC_FAMILY: dict[str, str] = {
    # Functional connectivity: mean Fisher-z FC over a network pair (within: strict upper triangle).
    "fc": "connectivity",
    # Functional gradients (diffusion map of the cosine affinity, aligned to the reference).
    "gradient_range": "gradients",
    "gradient_variance": "gradients",
    "gradient_network_mean": "gradients",
    # Graph metrics on the proportionally thresholded |FC|.
    "modularity": "graph",
    "global_efficiency": "graph",
    "clustering": "graph",
    "strength": "graph",
    # Temporal and spectral, per network (mean over the network's ROIs) and overall.
    "temporal_sd": "temporal",
    "alff": "temporal",
    "falff": "temporal",
    "band_power_ratio": "temporal",
    "lag1_autocorrelation": "temporal",
    "outlier_fraction": "temporal",
    # Data-driven group ICA: between-domain FNC and per-domain fALFF of the component time courses.
    "fnc": "ica",
    "ica_falff": "ica",
}

#: metric -> units of FeatureFact.value (z is always in SDs of the reference cohort).
METRIC_UNITS: dict[str, str] = {
    "fc": "Fisher z",
    "gradient_range": "gradient units",
    "gradient_variance": "gradient units squared",
    "gradient_network_mean": "gradient units",
    "modularity": "Newman Q",
    "global_efficiency": "1 / path length in 1/|FC| units",
    "clustering": "Onnela weighted clustering",
    "strength": "sum of thresholded |FC|",
    "temporal_sd": "signal units (percent signal change for raw intensities)",
    "alff": "signal units / sqrt(Hz) (percent signal change / sqrt(Hz) for raw intensities)",
    "falff": "fraction",
    "band_power_ratio": "ratio",
    "lag1_autocorrelation": "correlation",
    "outlier_fraction": "fraction",
    "fnc": "Fisher z",
    "ica_falff": "fraction",
}

BIN_SCHEMES: dict[str, tuple[str, ...]] = {
    "five": ("markedly_low", "low", "typical", "high", "markedly_high"),
    "seven": (
        "extremely_low", "strongly_low", "moderately_low", "typical",
        "moderately_high", "strongly_high", "extremely_high",
    ),
    "three": ("low", "typical", "high"),
}  # fmt: skip

METRIC_SCHEME: dict[str, str] = {
    "fc": "five",
    "fnc": "five",
    "ica_falff": "five",
    "temporal_sd": "five",
    "alff": "five",
    "falff": "five",
    "band_power_ratio": "five",
    "lag1_autocorrelation": "five",
    "outlier_fraction": "five",
    "modularity": "seven",
    "global_efficiency": "seven",
    "clustering": "seven",
    "strength": "three",
    "gradient_range": "three",
    "gradient_variance": "three",
    "gradient_network_mean": "three",
}

#: Decimals of every z-score in the record and in the text.
Z_DECIMALS = 2

UNAVAILABLE = "unavailable"


def round_z(z: float | None) -> float | None:
    """``z`` rounded to :data:`Z_DECIMALS` decimals (``-0.0`` becomes ``0.0``); None stays None."""
    if z is None:
        return None
    if not math.isfinite(z):
        raise ValueError(f"A z-score must be finite, got {z}.")
    return round(z, Z_DECIMALS) + 0.0


def bin_for(metric: str, z: float | None) -> str:
    """The bin of an (already rounded) z-score under ``metric``'s scheme; ``"unavailable"`` for None."""
    if metric not in METRIC_SCHEME:
        raise ValueError(f"Unknown metric {metric!r}; known metrics: {sorted(METRIC_SCHEME)}.")
    if z is None:
        return UNAVAILABLE
    scheme = METRIC_SCHEME[metric]
    if scheme == "three":
        return "low" if z < -1 else "high" if z > 1 else "typical"
    if scheme == "five":
        if z < -2:
            return "markedly_low"
        if z < -1:
            return "low"
        if z <= 1:
            return "typical"
        return "high" if z <= 2 else "markedly_high"
    magnitude = abs(z)
    if magnitude <= 1:
        return "typical"
    level = "moderately" if magnitude <= 2 else "strongly" if magnitude <= 3 else "extremely"
    return f"{level}_{'high' if z > 0 else 'low'}"


def feature_key(metric: str, networks: Sequence[str] = (), component: int | None = None) -> str:
    """The unique name of a feature: ``family/metric[/g<component>][/A|B]``."""
    parts = [METRIC_FAMILY[metric], metric]
    if component is not None:
        parts.append(f"g{component}")
    if networks:
        parts.append("|".join(networks))
    return "/".join(parts)


@dataclass(frozen=True)
class FeatureFact:
    """One feature of one scan.

    Attributes:
        metric: a key of :data:`METRIC_FAMILY` (the family follows from it).
        networks: ``()`` for a whole-brain metric, ``(A,)`` for a per-network one, ``(A, B)`` for a
            network pair (``(A, A)`` within network A). ICA "domains" are networks too.
        component: the gradient (1, 2, 3) for gradient metrics, else None.
        value: the raw value, in :data:`METRIC_UNITS` ``[metric]``.
        z: cohort z-score rounded to :data:`Z_DECIMALS`, or None when the reference has no spread.
        bin: :func:`bin_for` ``(metric, z)``; filled in automatically.
    """

    metric: str
    networks: tuple[str, ...]
    value: float
    z: float | None
    component: int | None = None
    bin: str = field(default="", compare=True)

    def __post_init__(self) -> None:
        if self.metric not in METRIC_FAMILY:
            raise ValueError(f"Unknown metric {self.metric!r}; known metrics: {sorted(METRIC_FAMILY)}.")
        if not math.isfinite(self.value):
            raise ValueError(f"Feature {self.key} has a non-finite value {self.value}; it must be finite.")
        object.__setattr__(self, "networks", tuple(self.networks))
        object.__setattr__(self, "z", round_z(self.z))
        expected = bin_for(self.metric, self.z)
        if self.bin and self.bin != expected:
            raise ValueError(f"Feature {self.key}: bin {self.bin!r} does not match z={self.z} (expected {expected!r}).")
        object.__setattr__(self, "bin", expected)

    @property
    def family(self) -> str:
        return METRIC_FAMILY[self.metric]

    @property
    def key(self) -> str:
        """A unique name such as ``"connectivity/fc/Default|Limbic"`` or ``"gradients/gradient_range/g1"``."""
        return feature_key(self.metric, self.networks, self.component)

    def to_dict(self) -> dict:
        return {
            "metric": self.metric,
            "networks": list(self.networks),
            "component": self.component,
            "value": self.value,
            "z": self.z,
            "bin": self.bin,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> FeatureFact:
        return cls(
            metric=d["metric"],
            networks=tuple(d.get("networks", ())),
            value=float(d["value"]),
            z=None if d.get("z") is None else float(d["z"]),
            component=d.get("component"),
            bin=d.get("bin", ""),
        )


@dataclass(frozen=True)
class DescriptorFacts:
    """Every feature of one scan, plus what the text needs to know about the scan.

    Attributes:
        features: the feature facts, unique by :attr:`FeatureFact.key`.
        networks: the atlas's network names, in atlas order (the text lists networks in this order).
        scan: scan metadata (``tr`` in s, ``n_timepoints``, ``n_rois``, ``duration_s``, ``atlas``).
        notes: documented fallbacks taken for this scan (e.g. a metric left out and why).
    """

    features: tuple[FeatureFact, ...]
    networks: tuple[str, ...]
    scan: Mapping[str, object] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(self.features))
        object.__setattr__(self, "networks", tuple(self.networks))
        object.__setattr__(self, "notes", tuple(self.notes))
        keys = [f.key for f in self.features]
        if len(set(keys)) != len(keys):
            duplicates = sorted({k for k in keys if keys.count(k) > 1})
            raise ValueError(f"Duplicate features in a DescriptorFacts record: {duplicates}.")
        unknown = {n for f in self.features for n in f.networks} - set(self.networks)
        if unknown:
            raise ValueError(f"Features name networks {sorted(unknown)} that are not in networks={self.networks}.")

    def select(self, family: str | None = None, metric: str | None = None, component: int | None = None) -> list[FeatureFact]:
        """Features of ``family`` and/or ``metric`` (and gradient ``component``), in record order."""
        return [
            f
            for f in self.features
            if (family is None or f.family == family)
            and (metric is None or f.metric == metric)
            and (component is None or f.component == component)
        ]

    def get(self, metric: str, networks: Sequence[str] = (), component: int | None = None) -> FeatureFact:
        """The one feature with this metric, networks and component; KeyError if absent."""
        wanted = tuple(networks)
        for fact in self.features:
            if fact.metric == metric and fact.networks == wanted and fact.component == component:
                return fact
        raise KeyError(f"No feature {metric!r} for networks {wanted} component {component} in this record.")

    def by_key(self) -> dict[str, FeatureFact]:
        return {f.key: f for f in self.features}

    def to_dict(self) -> dict:
        return {
            "features": [f.to_dict() for f in self.features],
            "networks": list(self.networks),
            "scan": dict(self.scan),
            "notes": list(self.notes),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=False)

    @classmethod
    def from_dict(cls, d: Mapping) -> DescriptorFacts:
        return cls(
            features=tuple(FeatureFact.from_dict(f) for f in d["features"]),
            networks=tuple(d["networks"]),
            scan=dict(d.get("scan", {})),
            notes=tuple(d.get("notes", ())),
        )

    @classmethod
    def from_json(cls, text: str) -> DescriptorFacts:
        return cls.from_dict(json.loads(text))


def facts_from_values(
    values: Iterable[tuple[str, tuple[str, ...], int | None, float, float | None]],
    networks: Sequence[str],
    scan: Mapping[str, object] | None = None,
    notes: Sequence[str] = (),
) -> DescriptorFacts:
    """Build a record from ``(metric, networks, component, value, z)`` tuples (z unrounded or None)."""
    features = [
        FeatureFact(metric=metric, networks=nets, component=component, value=float(value), z=z)
        for metric, nets, component, value, z in values
    ]
    return DescriptorFacts(features=tuple(features), networks=tuple(networks), scan=dict(scan or {}), notes=tuple(notes))
