"""Pre-tokenization: add each scan's fMRI token codes to a dataset as an int16 ``fmri_codes`` column.

    fmrilm tokenize DATASET --processor DIR --out DIR [--batch-size N] [--num-proc N]
                    [--crop-strategy start|center] [--device DEVICE] [--overwrite]

Stages 2 and 3 read the codes instead of running the fMRI tokenizer at every step. The column is
``List(Value("int16"), length=N)``, ``N = num_time_patches * n_rois``, time-major (token
``t * n_rois + r``), with :data:`~fmrilm.processing_fmrilm.PAD_CODE` (-1) for the tokens of padded
time patches (scans shorter than ``max_timepoints`` after resampling). int16 holds codebooks of up to
32767 codes; larger ones are refused.

:func:`pretokenize_dataset` runs ``processor.tokenize_fmri`` through ``Dataset.map(batched=True)``
reading only ``bold`` and ``tr``, one batch at a time into the split's cache file, so memory does
not grow with the dataset. :func:`write_pretokenized_dataset` writes the result like every other
dataset folder, with a provenance note and a ``build_info.json`` entry naming the processor and its
fingerprint (a SHA-256 of its settings and the fMRI tokenizer's weights).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .cli_types import positive_int

__all__ = [
    "CODES_COLUMN",
    "MAX_INT16_CODEBOOK",
    "PretokenizationInfo",
    "add_tokenize_command",
    "pretokenization_info",
    "pretokenize_dataset",
    "processor_fingerprint",
    "write_pretokenized_dataset",
]

CODES_COLUMN = "fmri_codes"
#: Largest codebook whose codes fit int16 (codes 0..32766, and -1 for padding).
MAX_INT16_CODEBOOK = int(np.iinfo(np.int16).max)
#: Crop strategies that give one deterministic window per scan, whatever the batch it is in.
DETERMINISTIC_CROPS = ("start", "center")


def processor_fingerprint(processor) -> str:
    """SHA-256 (hex, 16 characters) of what decides the codes: the feature extractor's settings, the
    fMRI tokenizer's config and every one of its parameters and buffers."""
    from .text_embeddings import hash_state_dict

    digest = hashlib.sha256()
    settings = {
        k: v for k, v in processor.feature_extractor.to_dict().items() if k not in ("auto_map", "processor_class")
    }
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    model = processor.fmri_tokenizer
    config = {
        k: v
        for k, v in model.config.to_dict().items()
        if not k.startswith("_") and k not in ("transformers_version", "auto_map", "architectures")
    }
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    hash_state_dict(digest, model)
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class PretokenizationInfo:
    """Which processor produced an ``fmri_codes`` column, and the layout of the codes.

    Attributes:
        processor: where the processor was loaded from (a folder or Hub id; ``""`` if built in memory).
        fingerprint: :func:`processor_fingerprint`.
        num_tokens: N, codes per scan.
        num_time_patches, n_rois: N = num_time_patches * n_rois, time-major.
        num_codes: codebook size (codes lie in ``[0, num_codes)``; -1 marks padding).
        crop_strategy: how scans longer than ``max_timepoints`` were cropped.
        feature_extractor: the feature extractor's settings (target TR, length, normalisation ...).
    """

    processor: str
    fingerprint: str
    num_tokens: int
    num_time_patches: int
    n_rois: int
    num_codes: int
    crop_strategy: str
    feature_extractor: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pretokenization_info(processor, crop_strategy: str | None = None, source: str = "") -> PretokenizationInfo:
    """The :class:`PretokenizationInfo` of tokenizing with ``processor``; checks that it can be done.

    Raises:
        ValueError: no fMRI tokenizer, a codebook too large for int16, or a crop strategy that does
            not give one deterministic window per scan.
    """
    model = processor._require_fmri_tokenizer("Pre-tokenization")
    config = model.config
    if config.num_codes > MAX_INT16_CODEBOOK:
        raise ValueError(
            f"The fMRI tokenizer has {config.num_codes} codes, more than int16 holds ({MAX_INT16_CODEBOOK}); the "
            "fmri_codes column is int16. Use a codebook of at most 32767 codes (the default 8192 fits)."
        )
    strategy = crop_strategy if crop_strategy is not None else processor.feature_extractor.crop_strategy
    if strategy not in DETERMINISTIC_CROPS:
        raise ValueError(
            f"Crop strategy {strategy!r} does not give one fixed window per scan; pre-tokenization needs one of "
            f"{DETERMINISTIC_CROPS}: pass crop_strategy='start' (--crop-strategy start) or 'center'."
        )
    settings = {
        k: v for k, v in processor.feature_extractor.to_dict().items() if k not in ("auto_map", "processor_class")
    }
    return PretokenizationInfo(
        processor=source,
        fingerprint=processor_fingerprint(processor),
        num_tokens=config.num_tokens,
        num_time_patches=config.num_time_patches,
        n_rois=config.n_rois,
        num_codes=config.num_codes,
        crop_strategy=strategy,
        feature_extractor=settings,
    )


def _tokenize_batch(bold: list, tr: list, *, processor, crop_strategy: str, column: str, threads: int | None) -> dict:
    if threads is not None:  # inside a Dataset.map worker process: share the cores
        import torch

        torch.set_num_threads(threads)
    scans = [np.asarray(scan, dtype=np.float32) for scan in bold]
    codes = processor.tokenize_fmri(
        scans, tr=[float(value) for value in tr], batch_size=max(1, len(scans)), crop_strategy=crop_strategy
    )
    return {column: codes.numpy().astype(np.int16)}


def pretokenize_dataset(
    dataset,
    processor,
    *,
    batch_size: int = 32,
    num_proc: int | None = None,
    crop_strategy: str | None = None,
    column: str = CODES_COLUMN,
    overwrite: bool = False,
    source: str = "",
):
    """Add ``column`` (int16 codes, length N, time-major, -1 = padding) to every split.

    Args:
        dataset: ``DatasetDict`` or ``Dataset`` with the fmri-lm schema (``bold`` (time, rois), ``tr``).
        processor: an :class:`~fmrilm.processing_fmrilm.FmriLMProcessor` with an fMRI tokenizer.
        batch_size: scans per map batch and per forward pass.
        num_proc: worker processes for ``Dataset.map`` (CPU only; each uses its share of the cores).
        crop_strategy: ``"start"`` or ``"center"``; default: the feature extractor's own (which must be one of them).
        column: name of the new column.
        overwrite: replace an existing ``column``.
        source: where the processor came from, recorded in the returned info.

    Returns:
        (the dataset with the new column, its :class:`PretokenizationInfo`).

    Raises:
        ValueError: see :func:`pretokenization_info`; a split without ``bold``/``tr``, whose ROI count or
            atlas differs from the processor's, or that already has ``column``.
    """
    from datasets import DatasetDict, List, Value
    from datasets.fingerprint import Hasher

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if num_proc is not None and (isinstance(num_proc, bool) or not isinstance(num_proc, int) or num_proc < 1):
        raise ValueError(f"num_proc must be a positive integer or None, got {num_proc!r}.")
    info = pretokenization_info(processor, crop_strategy, source)
    if num_proc is not None and num_proc > 1 and processor.fmri_tokenizer.device.type != "cpu":
        raise ValueError("num_proc > 1 runs the model in CPU worker processes; on an accelerator use num_proc=None.")
    is_dict = isinstance(dataset, DatasetDict)
    splits = dict(dataset) if is_dict else {"dataset": dataset}
    feature_extractor = processor.feature_extractor
    for name, split in splits.items():
        missing = [c for c in ("bold", "tr") if c not in split.column_names]
        if missing:
            raise ValueError(
                f"Split {name!r} has no column(s) {missing}: pre-tokenization reads `bold` (time, rois) and `tr`."
            )
        n_rois = split.features["bold"].shape[1]
        if n_rois != feature_extractor.n_rois:
            raise ValueError(
                f"Split {name!r} has {n_rois} ROIs but the processor expects {feature_extractor.n_rois}: tokenize it with "
                "a processor trained on the same atlas."
            )
        if feature_extractor.atlas is not None and "atlas" in split.column_names:
            atlases = sorted(set(split.unique("atlas")) - {feature_extractor.atlas})
            if atlases:
                raise ValueError(
                    f"Split {name!r} holds scans on atlas(es) {atlases}, but the processor's feature extractor is for "
                    f"{feature_extractor.atlas!r}: the ROI order would not match."
                )
        if column in split.column_names and not overwrite:
            raise ValueError(
                f"Split {name!r} already has a {column!r} column; pass overwrite=True (--overwrite) to replace it."
            )

    threads = max(1, (os.cpu_count() or 1) // num_proc) if num_proc is not None and num_proc > 1 else None
    results = {}
    for name, split in splits.items():
        if column in split.column_names:
            split = split.remove_columns(column)
        features = split.features.copy()
        features[column] = List(Value("int16"), length=info.num_tokens)
        results[name] = (
            split.with_format("numpy", columns=["bold"], output_all_columns=True)
            .map(
                _tokenize_batch,
                batched=True,
                batch_size=batch_size,
                writer_batch_size=batch_size,
                input_columns=["bold", "tr"],
                num_proc=num_proc,
                features=features,
                fn_kwargs={
                    "processor": processor,
                    "crop_strategy": info.crop_strategy,
                    "column": column,
                    "threads": threads,
                },
                new_fingerprint=Hasher.hash((split._fingerprint, info.fingerprint, info.crop_strategy, column)),
                desc=f"tokenize {name}",
            )
            .with_format(None)
        )
    return (DatasetDict(results) if is_dict else results["dataset"]), info


def write_pretokenized_dataset(
    tokenized, source_folder: str | Path, out_dir: str | Path, info: PretokenizationInfo, *, overwrite: bool = False
):
    """Write ``tokenized`` like the source dataset folder, noting which processor made the codes.

    The source's ``build_info.json`` supplies provenance, skipped inputs and split seed (without
    one, the provenance says only where the data were read from). The card gets a note on the
    codes; ``build_info.json`` gets ``options["fmri_codes"]`` = :meth:`PretokenizationInfo.to_dict`.
    """
    from .datasets_scripts.writer import derived_build_result, write_dataset

    note = (
        f"Column `{CODES_COLUMN}` was added by `fmrilm tokenize` with the processor {info.processor or '(in memory)'} "
        f"(fingerprint {info.fingerprint}): int16 codes of a {info.num_codes}-code fMRI tokenizer, {info.num_tokens} per "
        f"scan = {info.num_time_patches} time patch(es) x {info.n_rois} ROIs, time-major (token t * {info.n_rois} + r), "
        f"-1 for padded time patches; scans resampled to TR {info.feature_extractor.get('target_tr')} s, "
        f"{info.feature_extractor.get('max_timepoints')} TRs ({info.crop_strategy} crop), "
        f"{info.feature_extractor.get('normalization')} normalisation."
    )
    result = derived_build_result(tokenized, source_folder, note=note, options={CODES_COLUMN: info.to_dict()})
    return write_dataset(result, out_dir, overwrite=overwrite)


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def _tokenize(args: argparse.Namespace) -> int:
    from datasets import load_dataset

    from .datasets_scripts.writer import check_output_folder
    from .processing_fmrilm import FmriLMProcessor

    try:
        check_output_folder(args.out, args.overwrite)
        processor = FmriLMProcessor.from_pretrained(args.processor)
        if args.device is not None:
            processor.fmri_tokenizer.to(args.device)
        with tempfile.TemporaryDirectory(prefix="fmrilm-tokenize-") as cache:
            dataset = load_dataset(str(args.dataset), cache_dir=cache)
            tokenized, info = pretokenize_dataset(
                dataset,
                processor,
                batch_size=args.batch_size,
                num_proc=args.num_proc,
                crop_strategy=args.crop_strategy,
                overwrite=args.overwrite,
                source=str(args.processor),
            )
            written = write_pretokenized_dataset(tokenized, args.dataset, args.out, info, overwrite=args.overwrite)
            del tokenized, dataset
    except (ValueError, OSError) as error:
        print(f"fmrilm tokenize: error: {error}", file=sys.stderr)
        return 2
    print(
        f"Wrote {written.path}: {CODES_COLUMN} (int16, {info.num_tokens} codes per scan) for splits {sorted(written.shards)}, "
        f"processor fingerprint {info.fingerprint}."
    )
    return 0


def add_tokenize_command(subparsers: argparse._SubParsersAction) -> None:
    """Register ``fmrilm tokenize`` on the top-level sub-parsers."""
    parser = subparsers.add_parser(
        "tokenize",
        help="add an int16 fmri_codes column (the scans' fMRI token codes) to a dataset",
        description="Run every scan through a processor's feature extractor and fMRI tokenizer and store the codes "
        "(time-major, -1 for padded time patches) as an int16 column, so that later stages need not run the tokenizer.",
    )
    parser.add_argument("dataset", help="dataset folder written by `fmrilm dataset build` (or any with its schema)")
    parser.add_argument("--processor", required=True, help="processor folder (the output of stage-1 training)")
    parser.add_argument("--out", required=True, help="output dataset folder")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="scans per batch (default: 32)")
    parser.add_argument("--num-proc", type=positive_int, default=None, help="worker processes for Dataset.map (CPU)")
    parser.add_argument(
        "--crop-strategy", choices=DETERMINISTIC_CROPS, default=None,
        help="window of scans longer than the model's length (default: the feature extractor's)",
    )  # fmt: skip
    parser.add_argument("--device", default=None, help="torch device for the fMRI tokenizer, e.g. cuda (default: cpu)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing output folder or fmri_codes column"
    )
    parser.set_defaults(handler=_tokenize)
