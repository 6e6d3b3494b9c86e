"""Writing a built dataset as a Hub-style folder, and publishing that folder.

Layout (what ``Dataset.push_to_hub`` produces, so ``load_dataset(DIR)`` and, once uploaded,
``load_dataset(REPO)`` read it without a loading script)::

    DIR/data/{split}-{i:05d}-of-{n:05d}.parquet   shards of at most about ``shard_size_mb`` (Arrow size)
    DIR/README.md                                 dataset card: YAML configs + dataset_info, body
    DIR/build_info.json                           builder, options, counts, skipped inputs, versions
"""

from __future__ import annotations

import json
import math
import platform
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np

from .card import make_dataset_card
from .common import SPLIT_ORDER, BuildResult

__all__ = [
    "WrittenDataset",
    "build_info",
    "check_output_folder",
    "derived_build_result",
    "push_dataset_folder",
    "shard_bounds",
    "write_dataset",
]

DATA_FOLDER = "data"
CARD_FILE = "README.md"
BUILD_INFO_FILE = "build_info.json"
#: Target size of one Parquet row group, in uncompressed bytes.
_ROW_GROUP_BYTES = 64 << 20


@dataclass
class WrittenDataset:
    """Where a dataset was written.

    Attributes:
        path: the dataset folder.
        shards: split -> shard paths relative to ``path`` (posix), in row order.
        split_num_bytes: split -> Arrow (uncompressed) size in bytes.
        download_size: total bytes of the Parquet files.
    """

    path: Path
    shards: dict[str, list[str]]
    split_num_bytes: dict[str, int]
    download_size: int


@contextmanager
def _quiet_datasets_progress():
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def check_output_folder(out_dir: str | Path, overwrite: bool = False) -> list[Path]:
    """The files of an earlier dataset in ``out_dir`` (README.md, build_info.json, data/*.parquet).

    Raises:
        NotADirectoryError: ``out_dir`` is a file.
        FileExistsError: there are such files and ``overwrite`` is False.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir} exists and is not a folder; choose another --out.")
    data_dir = out_dir / DATA_FOLDER
    previous = [p for p in (out_dir / CARD_FILE, out_dir / BUILD_INFO_FILE) if p.exists()]
    previous += sorted(data_dir.glob("*.parquet")) if data_dir.is_dir() else []
    if previous and not overwrite:
        raise FileExistsError(
            f"{out_dir} already holds a dataset ({', '.join(p.name for p in previous[:5])}"
            f"{' ...' if len(previous) > 5 else ''}); pass overwrite=True (--overwrite) to replace it or choose another folder."
        )
    return previous


def _prepare_folder(out_dir: Path, overwrite: bool) -> None:
    for path in check_output_folder(out_dir, overwrite):
        path.unlink()
    (out_dir / DATA_FOLDER).mkdir(parents=True, exist_ok=True)


def _row_bytes(split) -> np.ndarray:
    """(rows,) approximate Arrow bytes of each row: its ``bold`` values plus an equal share of the rest."""
    bold = split.data.table["n_timepoints"].to_numpy().astype(np.int64) * split.features["bold"].shape[1] * 4
    other = max(0, int(split.data.nbytes) - int(bold.sum()))
    return bold + other // max(1, split.num_rows)


def shard_bounds(row_bytes: np.ndarray, max_shard_bytes: float) -> list[tuple[int, int]]:
    """Contiguous ``(start, stop)`` row ranges, each at most ``max_shard_bytes`` unless one row alone is larger.

    Greedy: a shard takes rows until the next one would exceed the limit, so shards follow the real
    row sizes (scans of different lengths) rather than equal row counts.
    """
    bounds, start, size = [], 0, 0
    for index, nbytes in enumerate(row_bytes.tolist()):
        if index > start and size + nbytes > max_shard_bytes:
            bounds.append((start, index))
            start, size = index, 0
        size += nbytes
    bounds.append((start, len(row_bytes)))
    return bounds


def write_dataset(
    result: BuildResult,
    out_dir: str | Path,
    *,
    shard_size_mb: float = 500.0,
    overwrite: bool = False,
    repo_id: str | None = None,
) -> WrittenDataset:
    """Write ``result`` as Parquet shards, a dataset card and ``build_info.json``.

    Args:
        result: a build from any builder.
        out_dir: the dataset folder (created if missing).
        shard_size_mb: upper bound of one shard's uncompressed (Arrow) size in MiB; Parquet
            compression makes the files smaller still. A single scan larger than this gets a shard
            of its own.
        overwrite: replace a dataset already written in ``out_dir`` (only its README.md,
            build_info.json and data/*.parquet are deleted).
        repo_id: the Hub repository it will be pushed to, for the card's loading example.

    Raises:
        ValueError: ``shard_size_mb`` is not a positive number.
        FileExistsError: ``out_dir`` already holds a dataset and ``overwrite`` is False.
    """
    if (
        isinstance(shard_size_mb, bool)
        or not isinstance(shard_size_mb, (int, float))
        or not math.isfinite(shard_size_mb)
        or shard_size_mb <= 0
    ):
        raise ValueError(f"shard_size_mb must be a positive number of MiB, got {shard_size_mb!r}.")
    result.check_invariant()
    out_dir = Path(out_dir)
    _prepare_folder(out_dir, overwrite)

    max_shard_bytes = shard_size_mb * (1 << 20)
    shards: dict[str, list[str]] = {}
    split_num_bytes: dict[str, int] = {}
    download_size = 0
    with _quiet_datasets_progress():
        for name in SPLIT_ORDER:
            if name not in result.dataset:
                continue
            split = result.dataset[name]
            num_bytes = int(split.data.nbytes)
            bounds = shard_bounds(_row_bytes(split), max_shard_bytes)
            rows_per_group = max(1, int(_ROW_GROUP_BYTES / max(1.0, num_bytes / split.num_rows)))
            shards[name] = []
            for index, (start, stop) in enumerate(bounds):
                relative = f"{DATA_FOLDER}/{name}-{index:05d}-of-{len(bounds):05d}.parquet"
                split.select(range(start, stop)).to_parquet(str(out_dir / relative), batch_size=rows_per_group)
                download_size += (out_dir / relative).stat().st_size
                shards[name].append(relative)
            split_num_bytes[name] = num_bytes

    written = WrittenDataset(out_dir, shards, split_num_bytes, download_size)
    card = make_dataset_card(result, shards, split_num_bytes, download_size, repo_id=repo_id, load_path=str(out_dir))
    card.save(out_dir / CARD_FILE)
    (out_dir / BUILD_INFO_FILE).write_text(
        json.dumps(build_info(result, written), indent=2, default=str) + "\n", encoding="utf-8"
    )
    return written


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def build_info(result: BuildResult, written: WrittenDataset) -> dict[str, object]:
    """The machine-readable record of a build (what ``build_info.json`` holds)."""
    counts = result.split_counts()
    return {
        "builder": result.provenance.builder,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seed": result.seed,
        "options": result.provenance.options,
        "provenance": {k: v for k, v in result.provenance.to_dict().items() if k != "options"},
        "n_inputs": result.n_inputs,
        "n_rows": result.n_rows,
        "n_skipped": len(result.skipped),
        "splits": {
            name: {
                **counts[name],
                "shards": written.shards.get(name, []),
                "num_bytes": written.split_num_bytes.get(name, 0),
            }
            for name in SPLIT_ORDER
        },
        "empty_splits": result.empty_splits,
        "download_size": written.download_size,
        "features": next(iter(result.dataset.values())).features.to_dict(),
        "skipped": [{"input": s.input, "reason": s.reason} for s in result.skipped],
        "versions": {
            "python": platform.python_version(),
            **{name: _version(name) for name in ("fmri-lm", "datasets", "huggingface-hub", "pyarrow", "numpy")},
        },
    }


def push_dataset_folder(
    folder: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str | None = None,
) -> str:
    """Upload a dataset folder written by :func:`write_dataset` to the Hub as a dataset repository.

    Creates the repository if needed and replaces any Parquet shards of an earlier upload (so a
    rebuild with fewer shards leaves no stale files). The endpoint and token come from the usual
    ``HF_ENDPOINT`` / ``HF_TOKEN`` settings unless ``token`` is given.

    Returns:
        The URL of the commit.

    Raises:
        FileNotFoundError: ``folder`` holds no written dataset.
    """
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not (folder / CARD_FILE).is_file() or not any((folder / DATA_FOLDER).glob("*.parquet")):
        raise FileNotFoundError(
            f"{folder} does not hold a written dataset ({CARD_FILE} and {DATA_FOLDER}/*.parquet); run "
            "`fmrilm dataset build ... --out` first."
        )
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", exist_ok=True, private=private)
    commit = api.upload_folder(
        repo_id=repo_id,
        repo_type="dataset",
        folder_path=str(folder),
        allow_patterns=[CARD_FILE, BUILD_INFO_FILE, f"{DATA_FOLDER}/*.parquet"],
        delete_patterns=[f"{DATA_FOLDER}/*.parquet"],
        commit_message=commit_message or "Upload dataset built with fmri-lm",
    )
    return str(getattr(commit, "commit_url", commit))


def derived_build_result(
    dataset, source_folder: str | Path, *, note: str, options: dict[str, object] | None = None
) -> BuildResult:
    """A :class:`BuildResult` for ``dataset``, derived from the dataset folder ``source_folder``.

    Commands that add columns to an existing dataset (``fmrilm describe``, ``fmrilm tokenize``) use
    this so the written folder keeps the source's provenance, skipped inputs and split seed (from its
    ``build_info.json``), plus ``note`` in the card and ``options`` merged into the provenance
    options. Without a ``build_info.json`` the provenance says only where the data were read from.
    """
    from dataclasses import replace

    from .common import Provenance, SkippedInput

    info_path = Path(source_folder) / BUILD_INFO_FILE
    if info_path.exists():
        source = json.loads(info_path.read_text(encoding="utf-8"))
        provenance = Provenance(**{**source["provenance"], "options": source.get("options", {})})
        skipped = [SkippedInput(**item) for item in source.get("skipped", [])]
        n_inputs, seed = int(source["n_inputs"]), int(source.get("seed", 0))
    else:
        columns = set.intersection(*(set(split.column_names) for split in dataset.values()))
        atlases = sorted({a for split in dataset.values() for a in split.unique("atlas")}) if "atlas" in columns else []
        provenance = Provenance(
            builder="unknown",
            source=f"Read from {source_folder} (no build_info.json).",
            license="other",
            terms="Unknown: see the source dataset.",
            atlas=", ".join(atlases) or "unknown",
            tr_source="as stored in the source dataset",
            synthetic="synthetic" in columns and all(all(split["synthetic"]) for split in dataset.values()),
            options={},
        )
        skipped, seed = [], 0
        n_inputs = sum(split.num_rows for split in dataset.values())
    provenance = replace(provenance, notes=[*provenance.notes, note], options={**provenance.options, **(options or {})})
    return BuildResult(dataset, skipped, provenance, n_inputs, seed)
