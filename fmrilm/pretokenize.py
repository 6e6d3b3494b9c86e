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
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .cli_types import positive_int

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = [
    "CODES_COLUMN",
    "MAX_INT16_CODEBOOK",
    "PretokenizationInfo",
    "add_tokenize_command",
    "load_pretokenized_splits",
    "pretokenization_info",
    "pretokenize_dataset",
    "processor_fingerprint",
    "recorded_fingerprint",
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
# Reading pre-tokenized datasets (stages 2 and 3)
# --------------------------------------------------------------------------------------------------


def recorded_fingerprint(folder: str | Path, codes_column: str = CODES_COLUMN) -> str | None:
    """The processor fingerprint that ``fmrilm tokenize`` recorded for ``codes_column`` in the
    ``build_info.json`` of the dataset folder ``folder`` (see :func:`write_pretokenized_dataset`).

    Returns ``None`` when the folder has no ``build_info.json``, the file is not valid JSON, or it
    records no tokenization of that column (codes made by other means): the caller can then check
    only the number of codes per scan.
    """
    from .datasets_scripts.writer import BUILD_INFO_FILE

    info_file = Path(folder) / BUILD_INFO_FILE
    if not info_file.is_file():
        return None
    try:
        info = json.loads(info_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    options = info.get("options") if isinstance(info, Mapping) else None
    entry = options.get(codes_column) if isinstance(options, Mapping) else None
    fingerprint = entry.get("fingerprint") if isinstance(entry, Mapping) else None
    return fingerprint if isinstance(fingerprint, str) else None


def _names(values: Sequence[str] | str, what: str) -> list[str]:
    if isinstance(values, str) or not all(isinstance(value, str) and value for value in values):
        raise ValueError(f"{what} must be a sequence of non-empty names, got {values!r}.")
    return list(values)


def load_pretokenized_splits(
    folders: Sequence[str | Path],
    processor,
    *,
    splits: Sequence[str],
    optional_splits: Sequence[str] = (),
    required_columns: Sequence[str] = (),
    keep_columns: Sequence[str] | None = None,
    codes_column: str = CODES_COLUMN,
    cache_dir: str | Path | None = None,
    processor_source: str = "",
    column_hints: Mapping[str, str] | None = None,
    setting_names: Mapping[str, str] | None = None,
    needed_by: str = "training",
) -> dict[str, Dataset]:
    """Load the requested splits of several pre-tokenized dataset folders, checked against ``processor``,
    each split concatenated across the folders.

    Every folder must exist. When its ``build_info.json`` records a processor fingerprint for
    ``codes_column`` (:func:`recorded_fingerprint`), it must equal ``processor``'s
    (:func:`processor_fingerprint`): codes from another tokenizer would mean other things. Every
    requested split a folder holds must have ``codes_column`` and ``required_columns``, with exactly
    ``processor.num_fmri_tokens`` codes per scan. A folder may lack a split; the pieces of a split
    keep only the columns all of them share, then are concatenated in the order of ``folders``.

    Args:
        folders: dataset folders written by ``fmrilm tokenize`` (or with its schema).
        processor: the :class:`~fmrilm.processing_fmrilm.FmriLMProcessor` whose fMRI tokenizer must
            have made the codes.
        splits: split names that must have at least one scan, summed over the folders.
        optional_splits: split names loaded when some folder has scans in them, left out of the result otherwise.
        required_columns: columns besides ``codes_column`` that each loaded split must hold.
        keep_columns: ``None`` keeps every column; otherwise each split is cut down to ``codes_column``,
            ``required_columns`` and those of ``keep_columns`` it has.
        codes_column: the int16 codes column (:data:`CODES_COLUMN`).
        cache_dir: the ``datasets`` cache for ``load_dataset`` (default: its own).
        processor_source: where ``processor`` was loaded from; named in errors and in the
            ``fmrilm tokenize --processor`` command they suggest.
        column_hints: for columns of ``required_columns``, how to add one when it is missing, e.g.
            ``{"facts": "run `fmrilm describe` before `fmrilm tokenize`"}``.
        setting_names: the caller's names for its settings, offered as the alternative fix in errors:
            keys ``"folders"``, ``"splits"`` and ``"columns"`` (default: this function's parameter names).
        needed_by: who needs the splits, named in the error for an empty one (e.g. ``"stage 2"``).

    Returns:
        {split name: ``datasets.Dataset``} for every name of ``splits``, and every name of
        ``optional_splits`` with scans.

    Raises:
        FileNotFoundError: a folder does not exist.
        ValueError: empty or overlapping split names or no folders; a fingerprint that differs from
            the processor's; a missing column; another number of codes per scan; a required split
            without scans.
    """
    from datasets import concatenate_datasets, load_dataset

    if isinstance(folders, (str, Path)) or not folders:
        raise ValueError(f"folders must be a non-empty sequence of dataset folders, got {folders!r}.")
    required_splits = _names(splits, "splits")
    extra_splits = _names(optional_splits, "optional_splits")
    wanted_splits = required_splits + extra_splits
    if not required_splits or len(set(wanted_splits)) != len(wanted_splits):
        raise ValueError(
            f"splits must name at least one split and no split twice (with optional_splits), got splits="
            f"{list(splits)} and optional_splits={list(optional_splits)}."
        )
    required = [codes_column] + [c for c in _names(required_columns, "required_columns") if c != codes_column]
    settings = {"folders": "folders", "splits": "splits", "columns": "codes_column / required_columns"}
    settings.update(setting_names or {})
    hints = dict(column_hints or {})
    source = processor_source or "PROCESSOR"
    expected_fingerprint = processor_fingerprint(processor)
    n_tokens = processor.num_fmri_tokens

    parts: dict[str, list] = {name: [] for name in wanted_splits}
    for folder in folders:
        path = Path(folder)
        if not path.is_dir():
            steps = list(dict.fromkeys(hints[c] for c in required if c in hints))
            other_columns = f" (for its other columns: {'; '.join(steps)})" if steps else ""
            raise FileNotFoundError(
                f"Dataset folder {path} not found; make one with `fmrilm tokenize DATASET --processor {source} --out "
                f"{path}`{other_columns}, or fix {settings['folders']}."
            )
        recorded = recorded_fingerprint(path, codes_column)
        if recorded is not None and recorded != expected_fingerprint:
            raise ValueError(
                f"The {codes_column!r} codes of {path} were made by a processor with fingerprint {recorded}, but the "
                f"processor {source} has fingerprint {expected_fingerprint}: the code ids would mean other things. "
                f"Re-tokenize the dataset with `fmrilm tokenize --processor {source}`."
            )
        loaded = load_dataset(str(path), cache_dir=None if cache_dir is None else str(cache_dir))
        for name in wanted_splits:
            if name not in loaded:
                continue
            split = loaded[name]
            missing = [c for c in required if c not in split.column_names]
            if missing:
                fixes = [hints.get(c, "add it to the dataset") for c in missing if c != codes_column]
                if codes_column in missing:
                    fixes.append(f"run `fmrilm tokenize --processor {source}`")
                raise ValueError(
                    f"Split {name!r} of {path} has no column(s) {missing} (it has {split.column_names}): "
                    f"{'; '.join(dict.fromkeys(fixes))}, or set {settings['columns']}."
                )
            length = getattr(split.features[codes_column], "length", -1)
            if length != n_tokens:
                held = f"{length} codes" if length >= 0 else "a variable number of codes"
                raise ValueError(
                    f"{path} holds {held} per scan in {codes_column!r}, but the fMRI tokenizer of the processor "
                    f"{source} makes {n_tokens}: tokenize the dataset with `fmrilm tokenize --processor {source}`."
                )
            if keep_columns is not None:
                kept = required + [c for c in keep_columns if c in split.column_names and c not in required]
                split = split.select_columns(kept)
            parts[name].append(split)

    loaded_splits: dict[str, Dataset] = {}
    for name, pieces in parts.items():
        if sum(len(piece) for piece in pieces) == 0:
            if name in extra_splits:
                continue
            raise ValueError(
                f"No dataset in {[str(f) for f in folders]} has scans in a {name!r} split, which {needed_by} needs: "
                f"add subjects to that split, or set {settings['splits']}."
            )
        shared = set.intersection(*(set(piece.column_names) for piece in pieces))
        pieces = [piece.select_columns([c for c in piece.column_names if c in shared]) for piece in pieces]
        loaded_splits[name] = concatenate_datasets(pieces) if len(pieces) > 1 else pieces[0]
    return loaded_splits


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
