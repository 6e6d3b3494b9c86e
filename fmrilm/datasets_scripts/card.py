"""The dataset card (README.md) of a written dataset: Hub YAML metadata plus a human-readable body.

The YAML carries what ``datasets.load_dataset(DIR_or_REPO)`` needs without a loading script:
``configs`` (the default config's Parquet shards per split) and ``dataset_info`` (features, so that
``bold`` comes back as ``Array2D(shape=(None, R), dtype='float32')``, and split sizes). The body
states provenance, licence and terms, whether the data are synthetic, atlas, repetition times,
counts per split, every skipped input with its reason, and how to load the dataset.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping

from datasets import DatasetInfo
from datasets.info import DatasetInfosDict
from datasets.splits import SplitDict, SplitInfo
from huggingface_hub import DatasetCard, DatasetCardData

from .common import SPLIT_ORDER, BuildResult
from .schema import CORE_COLUMNS

__all__ = ["make_dataset_card", "size_category"]

#: Skipped inputs listed in the card body; the rest are in build_info.json.
MAX_SKIPPED_IN_CARD = 200

_COLUMN_MEANINGS = {
    "scan_id": "unique scan identifier `dataset/sub-<subject>/ses-<session or none>/<run>`",
    "subject_id": "subject label (splits are grouped by subject)",
    "session_id": 'session label, `""` when there is none',
    "dataset": "cohort name",
    "atlas": "parcellation of the ROIs",
    "tr": "repetition time in seconds",
    "n_timepoints": "number of time points T",
    "n_rois": "number of ROIs R",
    "bold": "ROI time series, shape (time, rois), ROIs in atlas order",
    "synthetic": "true for simulated data",
}


def size_category(n_rows: int) -> str:
    """The Hub's ``size_categories`` bucket for ``n_rows`` examples."""
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n_rows < limit:
            return name
    return "1M<n<10M" if n_rows < 10_000_000 else "n>10M"


def _escape_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _format_counts(counts: Counter, unit: str = "") -> str:
    return ", ".join(
        f"{value:g}{unit} ({count} scans)" if isinstance(value, float) else f"{value} ({count} scans)"
        for value, count in sorted(counts.items())
    )


def _column_counts(result: BuildResult, column: str) -> Counter:
    counts: Counter = Counter()
    for split in result.dataset.values():
        values, frequencies = split.data.table[column].value_counts().flatten()
        for value, frequency in zip(values.to_pylist(), frequencies.to_pylist()):
            counts[round(value, 6) if isinstance(value, float) else value] += frequency
    return counts


def _dtype_text(feature) -> str:
    if hasattr(feature, "dtype") and hasattr(feature, "shape"):
        return f"{type(feature).__name__}(shape={feature.shape}, dtype={feature.dtype})"
    return getattr(feature, "dtype", type(feature).__name__)


def make_dataset_card(
    result: BuildResult,
    shards: Mapping[str, list[str]],
    split_num_bytes: Mapping[str, int],
    download_size: int,
    repo_id: str | None = None,
    load_path: str | None = None,
) -> DatasetCard:
    """Render the card of a dataset written as Parquet shards.

    Args:
        result: the build.
        shards: split -> shard paths relative to the dataset folder (posix), in order.
        split_num_bytes: split -> size of the split in Arrow (uncompressed) bytes.
        download_size: total size of the Parquet files in bytes.
        repo_id: Hub repository the dataset is published to, if any (used in the loading example).
        load_path: what to pass to ``load_dataset`` when there is no ``repo_id`` (a folder).
    """
    provenance = result.provenance
    features = next(iter(result.dataset.values())).features
    n_rois = features["bold"].shape[1]
    counts = result.split_counts()

    splits = SplitDict()
    for name in SPLIT_ORDER:
        if name in result.dataset:
            splits.add(
                SplitInfo(name=name, num_bytes=int(split_num_bytes[name]), num_examples=result.dataset[name].num_rows)
            )
    info = DatasetInfo(
        features=features,
        splits=splits,
        download_size=int(download_size),
        dataset_size=int(sum(split_num_bytes.values())),
    )
    atlas_tag = re.sub(r"[^a-z0-9]+", "-", provenance.atlas.lower()).strip("-")
    tags = ["fmri", "neuroscience", "brain", "time-series", "fmri-lm"] + ([f"atlas-{atlas_tag}"] if atlas_tag else [])
    if provenance.synthetic:
        tags.append("synthetic")
    dataset_names = sorted(_column_counts(result, "dataset"))
    pretty_name = f"{', '.join(dataset_names)}: fMRI ROI time series ({provenance.atlas}, {n_rois} ROIs)"
    extra = {
        k: v for k, v in (("license_name", provenance.license_name), ("license_link", provenance.license_link)) if v
    }
    card_data = DatasetCardData(
        license=provenance.license,
        pretty_name=pretty_name,
        tags=tags,
        size_categories=[size_category(result.n_rows)],
        configs=[
            {
                "config_name": "default",
                "data_files": [{"split": name, "path": list(shards[name])} for name in SPLIT_ORDER if name in shards],
            }
        ],
        **extra,
    )
    DatasetInfosDict({"default": info}).to_dataset_card_data(card_data)
    body = _card_body(result, pretty_name, dataset_names, counts, features, repo_id, load_path)
    return DatasetCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}")


def _card_body(result, pretty_name, dataset_names, counts, features, repo_id, load_path) -> str:
    from .. import __version__

    provenance = result.provenance
    n_rois = features["bold"].shape[1]
    lines = [f"# {pretty_name}", ""]
    if provenance.synthetic:
        lines += [
            "> [!WARNING]",
            "> **SYNTHETIC DATA.** Every scan in this dataset was generated by a simulator; none was recorded from a",
            "> person. Use it to test and develop methods, never as evidence about real brains.",
            "",
        ]
    lines += [
        (
            f"Resting-state fMRI ROI time series in the [fmri-lm](https://arxiv.org/abs/2511.21760) dataset schema, "
            f"built with `fmrilm dataset build {provenance.builder}` (fmri-lm {__version__}). One row is one scan: "
            "`bold` holds a (time, rois) float32 array."
        ),
        "",
        "## Provenance",
        "",
        provenance.source,
        "",
        f"- Builder: `{provenance.builder}`",
        f"- Synthetic: {'**yes** (simulated data)' if provenance.synthetic else 'no (recorded data)'}",
        f"- Datasets: {', '.join(f'`{name}`' for name in dataset_names)}",
        f"- Atlas: {provenance.atlas} ({n_rois} ROIs, columns of `bold` in atlas order)",
        f"- Repetition times: {_format_counts(_column_counts(result, 'tr'), ' s')}",
        f"- Source of the repetition times: {provenance.tr_source}",
    ]
    lines += [f"- {note}" for note in provenance.notes]
    lines += [
        "",
        "Builder options:",
        "",
        "```json",
        json.dumps(provenance.options, indent=2, sort_keys=True, default=str),
        "```",
        "",
        "## Licence and terms of use",
        "",
        f"Licence: `{provenance.license}`"
        + (f" ({provenance.license_name})" if provenance.license_name else "")
        + (f", <{provenance.license_link}>" if provenance.license_link else "")
        + ".",
        "",
        provenance.terms,
        "",
    ]
    if provenance.citation:
        lines += ["Please cite:", "", provenance.citation, ""]

    lines += ["## Splits", "", "| split | scans | subjects |", "|---|---:|---:|"]
    lines += [f"| {name} | {counts[name]['scans']} | {counts[name]['subjects']} |" for name in SPLIT_ORDER]
    lines += [
        "",
        (
            f"Subjects are assigned to splits by a hash of (dataset, subject_id, seed={result.seed}) "
            "(`fmrilm.splits.subject_split`, 80/10/10 in expectation), so all scans of a subject share one split "
            "and every fmri-lm training stage uses the same split."
        ),
    ]
    if result.empty_splits:
        lines += [
            "",
            (
                f"**Empty splits, left out of this dataset:** {', '.join(result.empty_splits)}. With few subjects "
                "the hash assignment can leave a split without subjects."
            ),
        ]

    lines += ["", "## Columns", "", "| column | type | meaning |", "|---|---|---|"]
    for name, feature in features.items():
        meaning = _COLUMN_MEANINGS.get(name, "label" if name not in CORE_COLUMNS else "")
        lines.append(f"| `{name}` | {_escape_cell(_dtype_text(feature))} | {meaning} |")

    lines += [
        "",
        "## Skipped inputs",
        "",
        f"{result.n_inputs} input(s) were considered: {result.n_rows} became rows and {len(result.skipped)} were skipped.",
    ]
    if result.skipped:
        lines += ["", "| input | reason |", "|---|---|"]
        lines += [
            f"| `{_escape_cell(s.input)}` | {_escape_cell(s.reason)} |" for s in result.skipped[:MAX_SKIPPED_IN_CARD]
        ]
        if len(result.skipped) > MAX_SKIPPED_IN_CARD:
            lines += ["", f"... and {len(result.skipped) - MAX_SKIPPED_IN_CARD} more: see `build_info.json`."]

    target = repo_id or load_path or "path/to/this/folder"
    lines += [
        "",
        "## How to load",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        f'dataset = load_dataset("{target}")',
        'scan = dataset["{split}"].with_format("numpy")[0]'.replace("{split}", next(iter(result.dataset))),
        'scan["bold"].shape  # (n_timepoints, n_rois), float32; scan["tr"] is in seconds',
        "```",
        "",
        "Command line summary: `fmrilm dataset info "
        + target
        + "`. Machine-readable build details: `build_info.json`.",
        "",
    ]
    return "\n".join(lines)
