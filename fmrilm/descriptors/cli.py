"""``fmrilm describe DATASET --reference DIR --out DIR [--fit]``: add the descriptor columns to a dataset."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from ..cli_types import positive_int

__all__ = ["add_describe_command"]


def _describe(args: argparse.Namespace) -> int:
    from datasets import load_dataset

    from ..atlases import load_atlas
    from .corpus import describe_dataset, reference_scans, write_described_dataset
    from .extractor import CONFIG_NAME, DescriptorExtractor

    reference_dir = Path(args.reference)
    try:
        with tempfile.TemporaryDirectory(prefix="fmrilm-describe-") as cache:
            dataset = load_dataset(str(args.dataset), cache_dir=cache)
            if args.fit:
                if (reference_dir / CONFIG_NAME).exists() and not args.overwrite:
                    raise FileExistsError(
                        f"{reference_dir / CONFIG_NAME} exists; pass --overwrite to refit it, or drop --fit to use it."
                    )
                scans, trs, atlases = reference_scans(dataset, args.fit_split, args.fit_max_scans)
                atlas_names = sorted(set(atlases))
                atlas = args.atlas or (atlas_names[0] if len(atlas_names) == 1 else None)
                if atlas is None:
                    raise ValueError(f"The {args.fit_split} split mixes atlases {atlas_names}; pass --atlas.")
                extractor = DescriptorExtractor(load_atlas(atlas), seed=args.seed)
                print(f"Fitting the reference on {len(scans)} {args.fit_split} scans ...", flush=True)
                extractor.fit(scans, trs, description=f"{args.fit_split} split of {args.dataset}")
                extractor.save_pretrained(reference_dir)
                print(f"Saved the reference to {reference_dir / CONFIG_NAME}")
            else:
                extractor = DescriptorExtractor.from_pretrained(reference_dir)
            described = describe_dataset(dataset, extractor, seed=args.seed, num_proc=args.num_proc)
            written = write_described_dataset(described, args.dataset, args.out, extractor, overwrite=args.overwrite)
            del described, dataset
    except (ValueError, OSError) as error:
        print(f"fmrilm describe: error: {error}", file=sys.stderr)
        return 2
    print(f"Wrote {written.path} with descriptor_text and descriptor_facts columns.")
    first_split = next(iter(written.shards))
    sample = load_dataset(str(written.path), split=first_split, columns=["scan_id", "descriptor_text"])[0]
    print(f"\nExample ({sample['scan_id']}):\n{sample['descriptor_text']}")
    return 0


def add_describe_command(subparsers: argparse._SubParsersAction) -> None:
    """Register ``fmrilm describe`` on the top-level sub-parsers."""
    parser = subparsers.add_parser(
        "describe",
        help="add descriptor_text and descriptor_facts columns to a dataset",
        description="Compute each scan's imaging features, z-score them against a reference cohort and write them "
        "as text (descriptor_text) and as a JSON record (descriptor_facts).",
    )
    parser.add_argument("dataset", help="dataset folder written by `fmrilm dataset build` (or any with its schema)")
    parser.add_argument(
        "--reference", required=True, help="folder of the descriptor reference (read, or written with --fit)"
    )
    parser.add_argument("--out", required=True, help="output dataset folder")
    parser.add_argument("--fit", action="store_true", help="fit the reference on --fit-split of DATASET first")
    parser.add_argument("--fit-split", default="train", help="split the reference is fitted on (default: train)")
    parser.add_argument("--fit-max-scans", type=positive_int, default=None, help="fit on at most this many scans")
    parser.add_argument("--atlas", default=None, help="atlas name or table (default: the dataset's atlas column)")
    parser.add_argument("--num-proc", type=positive_int, default=None, help="worker processes for Dataset.map")
    parser.add_argument("--seed", type=int, default=0, help="Louvain/ICA seed and phrasing seed")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.set_defaults(handler=_describe)
