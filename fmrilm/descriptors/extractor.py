"""``DescriptorExtractor``: a scan's imaging features, z-scored against a reference cohort.

    dx = DescriptorExtractor(atlas=aal2())
    dx.fit(train_scans, train_trs)            # reference: feature means/SDs, group gradients, group ICA
    dx.save_pretrained("reference/")          # one JSON file; DescriptorExtractor.from_pretrained("reference/")
    facts = dx.compute(scan, tr=0.72)         # DescriptorFacts: value, cohort z and bin of every feature
    text = dx.describe(facts, seed=0)         # the descriptor paragraphs

Every feature is computed from the scan at its native TR (never the cropped model input):

- connectivity: Pearson FC of the detrended, band-passed (0.01-0.1 Hz) series, Fisher z, averaged
  over every pair of networks (within a network over its distinct ROI pairs);
- graph: modularity (seeded Louvain), weighted global efficiency, average weighted clustering and
  per-network mean node strength, on the top 10% of |FC| edges;
- gradients: diffusion-map gradients of the cosine affinity of FC (90% row sparsity), Procrustes-
  aligned to the reference's group gradients; range, variance and per-network means of each;
- temporal: temporal SD, ALFF, fALFF, band power ratio, lag-1 autocorrelation and outlier fraction of
  the unfiltered series, with the scan's real TR, over the whole brain and per network;
- ica: per scan, dual regression onto the reference's group ICA maps; between-domain FNC and
  per-domain fALFF, a domain being the components assigned to one network.

A z-score is ``(value - reference mean) / reference SD`` (sample SD over the reference scans). The
reference is fitted on training scans only; a new site is described against a stored reference.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..atlases import AtlasSpec, load_atlas
from ..nifti import clean_roi_signals
from .connectivity import fisher_z, functional_connectivity, network_pair_means
from .facts import DescriptorFacts, FeatureFact, feature_key, round_z
from .gradients import cosine_affinity, diffusion_embedding, gradient_summary, subject_gradients
from .graph import graph_metrics
from .ica import GroupICA, fit_group_ica, ica_features
from .temporal import network_means, temporal_features

__all__ = ["DescriptorExtractor", "DescriptorSettings"]

CONFIG_NAME = "descriptor_extractor.json"
FORMAT_VERSION = 1
#: Fewest reference scans that give a usable SD for every feature.
MIN_REFERENCE_SCANS = 3
#: Temporal metrics whose values depend on the signal's units (see temporal.temporal_features).
UNIT_DEPENDENT_METRICS = ("temporal_sd", "alff")
TEMPORAL_METRICS = ("temporal_sd", "alff", "falff", "band_power_ratio", "lag1_autocorrelation", "outlier_fraction")


@dataclass(frozen=True)
class DescriptorSettings:
    """How the features are computed (saved with the reference).

    Attributes:
        detrend: remove each ROI's linear trend before FC.
        high_pass, low_pass: band-pass before FC, in Hz (None: no filter on that side).
        graph_density: fraction of the strongest |FC| edges kept for the graph metrics.
        louvain_resolution: resolution of the modularity (1.0 = Newman's).
        gradient_sparsity: fraction of each FC row zeroed before the cosine affinity.
        n_gradients: number of gradients.
        diffusion_alpha: anisotropic diffusion parameter of the embedding.
        n_ica_components: number of group ICA components.
        seed: seed of Louvain and of the group ICA.
    """

    detrend: bool = True
    high_pass: float | None = 0.01
    low_pass: float | None = 0.1
    graph_density: float = 0.1
    louvain_resolution: float = 1.0
    gradient_sparsity: float = 0.9
    n_gradients: int = 3
    diffusion_alpha: float = 0.5
    n_ica_components: int = 20
    seed: int = 0


@dataclass
class _Reference:
    """What :meth:`DescriptorExtractor.fit` learns from the reference cohort."""

    n_scans: int
    feature_stats: dict[str, tuple[float, float]]  # feature key -> (mean, sample SD)
    group_gradients: np.ndarray  # (R, n_gradients)
    group_ica: GroupICA
    temporal_scale: str  # the units of temporal_sd/alff in the reference ("percent" or "as_given")
    description: str = ""


def _add_feature(features: dict, metric: str, networks: tuple[str, ...], component: int | None, value: float) -> None:
    features[feature_key(metric, networks, component)] = (metric, networks, component, float(value))


class DescriptorExtractor:
    """Imaging features of (time, rois) scans as :class:`DescriptorFacts` and descriptor text.

    Args:
        atlas: the scans' atlas (an :class:`AtlasSpec`, ``"aal2"`` or a table path): ROI count and
            each ROI's network.
        settings: how features are computed; keyword overrides of :class:`DescriptorSettings` may be
            passed directly (``DescriptorExtractor(atlas, graph_density=0.15)``).
        rewriter: optional ``(text, facts) -> text`` callable that :meth:`describe` applies (its
            output is checked against the facts).
    """

    def __init__(
        self,
        atlas: AtlasSpec | str | os.PathLike = "aal2",
        settings: DescriptorSettings | None = None,
        *,
        rewriter: Callable[[str, DescriptorFacts], str] | None = None,
        **overrides,
    ) -> None:
        self.atlas = load_atlas(atlas)
        try:
            self.settings = DescriptorSettings(**{**asdict(settings or DescriptorSettings()), **overrides})
        except TypeError as error:
            known = ", ".join(DescriptorSettings.__dataclass_fields__)
            raise TypeError(f"Unknown descriptor setting ({error}); the settings are: {known}.") from None
        self._check_settings()
        self.rewriter = rewriter
        self.reference: _Reference | None = None
        self._network_indices = self.atlas.network_indices()
        self._networks = self.atlas.network_names

    # ------------------------------------------------------------------------------- validation
    def _check_settings(self) -> None:
        s = self.settings
        if not 0.0 < s.graph_density <= 1.0:
            raise ValueError(f"graph_density must lie in (0, 1], got {s.graph_density}.")
        if not 0.0 <= s.gradient_sparsity < 1.0:
            raise ValueError(f"gradient_sparsity must lie in [0, 1), got {s.gradient_sparsity}.")
        if s.n_gradients < 1 or s.n_gradients >= self.atlas.n_rois:
            raise ValueError(f"n_gradients must lie in [1, n_rois), got {s.n_gradients}.")
        if s.n_ica_components < 1 or s.n_ica_components > self.atlas.n_rois:
            raise ValueError(f"n_ica_components must lie in [1, n_rois={self.atlas.n_rois}], got {s.n_ica_components}.")

    def _validated(self, scan: object, tr: object, position: int | None = None) -> tuple[np.ndarray, float]:
        where = "" if position is None else f" (scan {position})"
        if isinstance(tr, bool) or not isinstance(tr, (int, float, np.integer, np.floating)) or not math.isfinite(tr) or tr <= 0:
            raise ValueError(f"tr{where} must be the repetition time in seconds (a positive number), got {tr!r}.")
        array = np.asarray(scan)
        if array.dtype.kind not in "fiu":
            raise ValueError(f"Scan{where} must hold real numbers, got dtype {array.dtype}.")
        if array.ndim != 2:
            raise ValueError(f"Scan{where} must be a (time, rois) array, got shape {array.shape}.")
        n_rois = self.atlas.n_rois
        if array.shape[1] != n_rois:
            if array.shape[0] == n_rois:
                raise ValueError(
                    f"Scan{where} has shape {array.shape}: it looks stored as (rois, time); transpose it to (time, rois)."
                )
            raise ValueError(f"Scan{where} has {array.shape[1]} ROIs but the atlas {self.atlas.name} has {n_rois}.")
        values = array.astype(np.float64)
        if not np.isfinite(values).all():
            bad = int(values.size - np.isfinite(values).sum())
            raise ValueError(
                f"Scan{where} contains {bad} NaN or infinite value(s); descriptors need finite series. "
                "Fill or drop them first (e.g. FmriFeatureExtractor's nan_policy='interpolate' logic)."
            )
        return values, float(tr)

    # ------------------------------------------------------------------------------- features
    def _connectivity(self, scans: Sequence[np.ndarray], trs: Sequence[float]) -> np.ndarray:
        """(B, R, R) Pearson FC of the detrended, band-passed scans."""
        s = self.settings
        return np.stack(
            [
                functional_connectivity(
                    clean_roi_signals(x, tr, detrend=s.detrend, low_pass=s.low_pass, high_pass=s.high_pass)
                )
                for x, tr in zip(scans, trs)
            ]
        )

    def _raw_features(
        self, scans: Sequence[np.ndarray], trs: Sequence[float], fc: np.ndarray
    ) -> list[tuple[dict, list[str], str]]:
        """Per scan: ({feature key: (metric, networks, component, value)}, notes, temporal scale).

        ``fc`` is :meth:`_connectivity` of the same scans; the gradients are aligned to the
        reference's group gradients and the ICA features use its group maps.
        """
        s, reference = self.settings, self._require_reference()
        networks, indices, n_networks = self._networks, self._network_indices, len(self._networks)
        pair_means, pair_valid = network_pair_means(fisher_z(fc), indices, n_networks)
        graphs = graph_metrics(fc, density=s.graph_density, seed=s.seed, resolution=s.louvain_resolution)
        strength = network_means(graphs["strength"], indices, n_networks)
        aligned = subject_gradients(
            fc, reference.group_gradients, sparsity=s.gradient_sparsity, n_components=s.n_gradients, alpha=s.diffusion_alpha
        )
        gradients = gradient_summary(aligned, indices, n_networks)
        results = []
        for b, (scan, tr) in enumerate(zip(scans, trs)):
            features: dict[str, tuple[str, tuple[str, ...], int | None, float]] = {}
            notes: list[str] = []
            add = functools.partial(_add_feature, features)

            for i in range(n_networks):
                for j in range(i, n_networks):
                    if pair_valid[i, j]:
                        add("fc", (networks[i], networks[j]), None, pair_means[b, i, j])
                    elif i == j:
                        notes.append(f"No within-network FC for {networks[i]}: it has a single ROI.")
            for g in range(s.n_gradients):
                add("gradient_range", (), g + 1, gradients["range"][b, g])
                add("gradient_variance", (), g + 1, gradients["variance"][b, g])
                for k in range(n_networks):
                    add("gradient_network_mean", (networks[k],), g + 1, gradients["network_means"][b, g, k])
            add("modularity", (), None, graphs["modularity"][b])
            add("global_efficiency", (), None, graphs["global_efficiency"][b])
            add("clustering", (), None, graphs["clustering"][b])
            for k in range(n_networks):
                add("strength", (networks[k],), None, strength[b, k])

            per_roi, scale = temporal_features(scan, tr)
            for metric in TEMPORAL_METRICS:
                add(metric, (), None, float(np.mean(per_roi[metric])))
                per_network = network_means(per_roi[metric], indices, n_networks)
                for k in range(n_networks):
                    add(metric, (networks[k],), None, per_network[k])

            ica = ica_features(scan, tr, reference.group_ica)
            valid = ica["valid"]
            for i in range(n_networks):
                for j in range(i + 1, n_networks):
                    if valid[i] and valid[j]:
                        add("fnc", (networks[i], networks[j]), None, ica["fnc"][i, j])
                if valid[i]:
                    add("ica_falff", (networks[i],), None, ica["falff"][i])
            missing = [networks[k] for k in range(n_networks) if not valid[k]]
            if missing:
                notes.append(f"No ICA domain for {', '.join(missing)}: no group component was assigned to it.")
            results.append((features, notes, scale))
        return results

    # ------------------------------------------------------------------------------- fitting
    def fit(self, scans: Sequence[np.ndarray], trs: float | Sequence[float], *, description: str = "") -> DescriptorExtractor:
        """Fit the reference cohort: group gradients, group ICA, and every feature's mean and SD.

        Args:
            scans: the reference (training) scans, each (time, rois).
            trs: one repetition time in seconds, or one per scan.
            description: a sentence saying what the reference cohort is (saved with it).

        Returns:
            self.
        """
        scans, trs = self._validated_batch(scans, trs)
        if len(scans) < MIN_REFERENCE_SCANS:
            raise ValueError(
                f"A reference cohort needs at least {MIN_REFERENCE_SCANS} scans to give feature SDs, got {len(scans)}."
            )
        s = self.settings
        self.reference = None
        fc = self._connectivity(scans, trs)
        mean_fc = np.tanh(np.mean(fisher_z(fc), axis=0))
        np.fill_diagonal(mean_fc, 1.0)
        group_gradients, _ = diffusion_embedding(
            cosine_affinity(mean_fc, sparsity=s.gradient_sparsity), n_components=s.n_gradients, alpha=s.diffusion_alpha
        )
        group_ica = fit_group_ica(
            list(scans), self._network_indices, self._networks, n_components=s.n_ica_components, seed=s.seed
        )
        reference = _Reference(
            n_scans=len(scans),
            feature_stats={},
            group_gradients=group_gradients,
            group_ica=group_ica,
            temporal_scale="",
            description=description,
        )
        self.reference = reference  # the features below are aligned to it and include ICA
        raw = self._raw_features(scans, trs, fc)
        scales = [scale for _, _, scale in raw]
        reference.temporal_scale = max(sorted(set(scales)), key=scales.count)
        for key in sorted({key for features, _, _ in raw for key in features}):
            unit_dependent = key.split("/")[1] in UNIT_DEPENDENT_METRICS
            values = np.array(
                [
                    features[key][3]
                    for features, _, scale in raw
                    if key in features and (not unit_dependent or scale == reference.temporal_scale)
                ]
            )
            if len(values) >= 2:
                reference.feature_stats[key] = (float(values.mean()), float(values.std(ddof=1)))
        return self

    def _validated_batch(self, scans, trs) -> tuple[list[np.ndarray], list[float]]:
        if isinstance(scans, np.ndarray) and scans.ndim == 2:
            scans = [scans]
        scans = list(scans)
        if not scans:
            raise ValueError("No scans given: pass a list of (time, rois) arrays.")
        if trs is None:
            raise ValueError("tr is required: the repetition time in seconds (one value or one per scan).")
        if isinstance(trs, (int, float, np.integer, np.floating)):
            trs = [trs] * len(scans)
        trs = list(trs)
        if len(trs) != len(scans):
            raise ValueError(f"Got {len(trs)} TRs for {len(scans)} scans; pass one TR or one per scan.")
        pairs = [self._validated(x, tr, i if len(scans) > 1 else None) for i, (x, tr) in enumerate(zip(scans, trs))]
        return [x for x, _ in pairs], [tr for _, tr in pairs]

    @property
    def is_fitted(self) -> bool:
        return self.reference is not None

    def _require_reference(self) -> _Reference:
        if self.reference is None:
            raise ValueError(
                "This DescriptorExtractor has no reference cohort: call fit(train_scans, trs) or load one with "
                "DescriptorExtractor.from_pretrained(path) before computing descriptors."
            )
        return self.reference

    # ------------------------------------------------------------------------------- computing
    def compute_batch(self, scans: Sequence[np.ndarray], trs: float | Sequence[float]) -> list[DescriptorFacts]:
        """:class:`DescriptorFacts` of several scans (batched where the computation allows)."""
        reference = self._require_reference()
        scans, trs = self._validated_batch(scans, trs)
        records = []
        raw = self._raw_features(scans, trs, self._connectivity(scans, trs))
        for (features, notes, scale), scan, tr in zip(raw, scans, trs):
            unit_mismatch = scale != reference.temporal_scale
            if unit_mismatch:
                notes = [
                    *notes,
                    f"temporal SD and ALFF are in {scale!r} units but the reference's are in "
                    f"{reference.temporal_scale!r}: their z-scores are left out.",
                ]
            facts = []
            for key, (metric, nets, component, value) in features.items():
                z = None
                stat = reference.feature_stats.get(key)
                if stat is not None and not (unit_mismatch and metric in UNIT_DEPENDENT_METRICS):
                    mean, sd = stat
                    if sd > 1e-12 * max(1.0, abs(mean)):
                        z = round_z((value - mean) / sd)
                facts.append(FeatureFact(metric=metric, networks=nets, component=component, value=value, z=z))
            scan_info = {
                "tr": tr,
                "n_timepoints": int(scan.shape[0]),
                "n_rois": int(scan.shape[1]),
                "duration_s": round(scan.shape[0] * tr, 3),
                "atlas": self.atlas.name,
                "temporal_scale": scale,
                "reference_scans": reference.n_scans,
            }
            records.append(DescriptorFacts(tuple(facts), self._networks, scan_info, tuple(notes)))
        return records

    def compute(self, scan: np.ndarray, tr: float) -> DescriptorFacts:
        """The :class:`DescriptorFacts` of one (time, rois) scan with repetition time ``tr`` (s)."""
        return self.compute_batch([scan], [tr])[0]

    def describe(self, facts: DescriptorFacts, seed: int = 0, **options) -> str:
        """The descriptor text of ``facts`` (see :func:`fmrilm.descriptors.text.describe` for options)."""
        from .text import describe

        if self.rewriter is not None and "rewriter" not in options:
            options["rewriter"] = self.rewriter
        return describe(facts, seed=seed, **options)

    # ------------------------------------------------------------------------------- persistence
    def to_dict(self) -> dict:
        reference = self._require_reference()
        return {
            "format_version": FORMAT_VERSION,
            "atlas": self.atlas.to_dict(),
            "settings": asdict(self.settings),
            "reference": {
                "n_scans": reference.n_scans,
                "description": reference.description,
                "temporal_scale": reference.temporal_scale,
                "group_gradients": reference.group_gradients.tolist(),
                "group_ica": reference.group_ica.to_dict(),
                "feature_stats": {key: list(value) for key, value in reference.feature_stats.items()},
            },
        }

    @classmethod
    def from_dict(cls, d: dict) -> DescriptorExtractor:
        if d.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"Unsupported descriptor reference format {d.get('format_version')!r} (this fmri-lm reads {FORMAT_VERSION})."
            )
        extractor = cls(AtlasSpec.from_dict(d["atlas"]), DescriptorSettings(**d["settings"]))
        ref = d["reference"]
        extractor.reference = _Reference(
            n_scans=int(ref["n_scans"]),
            feature_stats={key: (float(m), float(sd)) for key, (m, sd) in ref["feature_stats"].items()},
            group_gradients=np.asarray(ref["group_gradients"], dtype=np.float64),
            group_ica=GroupICA.from_dict(ref["group_ica"]),
            temporal_scale=ref["temporal_scale"],
            description=ref.get("description", ""),
        )
        return extractor

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write the settings, atlas and fitted reference to ``save_directory/descriptor_extractor.json``."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / CONFIG_NAME
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")
        return path

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> DescriptorExtractor:
        """Load an extractor saved with :meth:`save_pretrained`."""
        path = Path(directory)
        if path.is_dir():
            path = path / CONFIG_NAME
        if not path.exists():
            raise FileNotFoundError(
                f"No {CONFIG_NAME} in {directory}: fit a reference and save it with save_pretrained (or "
                "`fmrilm describe DATASET --reference DIR --fit`)."
            )
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))

    def __repr__(self) -> str:
        fitted = f"fitted on {self.reference.n_scans} scans" if self.reference else "not fitted"
        return f"DescriptorExtractor(atlas={self.atlas.name!r}, {self.atlas.n_rois} ROIs, {fitted})"
