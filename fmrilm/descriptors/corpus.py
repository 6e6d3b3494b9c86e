"""Descriptors for whole datasets: add ``descriptor_text`` and ``descriptor_facts`` columns.

``describe_dataset`` maps a :class:`DescriptorExtractor` over every split with
``Dataset.map(batched=True, num_proc=...)``; ``write_described_dataset`` writes the result as a
Hub-style folder (Parquet shards + card) with the source dataset's provenance and skipped inputs,
plus a note saying which reference cohort the z-scores are relative to.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from datasets import DatasetDict, Value

from .extractor import DescriptorExtractor
from .facts import FAMILIES

__all__ = ["describe_dataset", "reference_scans", "scan_text_seed", "write_described_dataset"]

TEXT_COLUMN = "descriptor_text"
FACTS_COLUMN = "descriptor_facts"


def scan_text_seed(scan_id: str, seed: int = 0) -> int:
    """A phrasing seed fixed by ``(scan_id, seed)``: scans get varied wording, reproducibly."""
    digest = hashlib.sha256(f"{seed}\x1f{scan_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def _describe_batch(batch: dict, extractor: DescriptorExtractor, seed: int, families: Sequence[str]) -> dict:
    scans = [np.asarray(bold, dtype=np.float64) for bold in batch["bold"]]
    records = extractor.compute_batch(scans, [float(tr) for tr in batch["tr"]])
    return {
        TEXT_COLUMN: [
            extractor.describe(facts, seed=scan_text_seed(scan_id, seed), families=families)
            for facts, scan_id in zip(records, batch["scan_id"])
        ],
        FACTS_COLUMN: [facts.to_json() for facts in records],
    }


def describe_dataset(
    dataset: DatasetDict,
    extractor: DescriptorExtractor,
    *,
    seed: int = 0,
    families: Sequence[str] = FAMILIES,
    num_proc: int | None = None,
    batch_size: int = 16,
) -> DatasetDict:
    """Add ``descriptor_text`` (string) and ``descriptor_facts`` (JSON string) to every split.

    Args:
        dataset: splits with the fmri-lm schema (``bold`` (time, rois), ``tr``, ``scan_id``).
        extractor: a fitted extractor whose atlas matches the dataset's ROIs.
        seed: phrasing seed (each scan's wording is fixed by ``scan_id`` and this seed).
        families: feature families written into the text (the facts keep all of them).
        num_proc: worker processes for ``Dataset.map``.
        batch_size: scans per map batch.
    """
    if not extractor.is_fitted:
        raise ValueError("The extractor has no reference cohort: fit it or load a saved reference first.")
    features = next(iter(dataset.values())).features
    n_rois = features["bold"].shape[1]
    if n_rois != extractor.atlas.n_rois:
        raise ValueError(
            f"The dataset has {n_rois} ROIs but the reference's atlas {extractor.atlas.name} has "
            f"{extractor.atlas.n_rois}: describe it against a reference fitted on the same atlas."
        )
    new_features = features.copy()
    new_features[TEXT_COLUMN] = Value("string")
    new_features[FACTS_COLUMN] = Value("string")
    return DatasetDict(
        {
            name: split.with_format("numpy", columns=["bold"], output_all_columns=True).map(
                _describe_batch,
                batched=True,
                batch_size=batch_size,
                num_proc=num_proc,
                features=new_features,
                fn_kwargs={"extractor": extractor, "seed": seed, "families": tuple(families)},
                desc=f"describe {name}",
            ).with_format(None)
            for name, split in dataset.items()
        }
    )


def reference_scans(dataset: DatasetDict, split: str = "train", max_scans: int | None = None) -> tuple[list[np.ndarray], list[float], list[str]]:
    """The scans (float64 arrays), TRs and atlas names of ``split``, for fitting a reference.

    With ``max_scans`` the scans with the smallest ``scan_text_seed(scan_id)`` are taken: a
    deterministic subsample that does not depend on row order.
    """
    if split not in dataset:
        raise ValueError(f"The dataset has no {split!r} split (it has {sorted(dataset)}); fit the reference on its training split.")
    rows = dataset[split]
    order = range(rows.num_rows)
    if max_scans is not None and max_scans < rows.num_rows:
        ids = rows["scan_id"]
        order = sorted(order, key=lambda i: scan_text_seed(ids[i]))[:max_scans]
    selected = rows.select(list(order)).with_format("numpy")
    return (
        [np.asarray(bold, dtype=np.float64) for bold in selected["bold"]],
        [float(tr) for tr in selected["tr"]],
        [str(atlas) for atlas in selected["atlas"]],
    )


def write_described_dataset(
    described: DatasetDict, source_folder: str | Path, out_dir: str | Path, extractor: DescriptorExtractor, *, overwrite: bool = False
):
    """Write ``described`` like the source dataset, with provenance noting the descriptor reference.

    The source folder's ``build_info.json`` (written by ``fmrilm dataset build``) supplies
    provenance, the skipped inputs and the split seed; without one, the provenance says only where
    the data were read from.
    """
    from ..datasets_scripts.writer import derived_build_result, write_dataset

    reference = extractor.reference
    note = (
        f"Columns `{TEXT_COLUMN}` and `{FACTS_COLUMN}` were added by `fmrilm describe`: imaging features (FC, "
        f"gradients, graph metrics, temporal dynamics, group ICA) z-scored against a reference cohort of "
        f"{reference.n_scans} scans ({reference.description or 'no description'}), atlas {extractor.atlas.name}."
    )
    return write_dataset(derived_build_result(described, source_folder, note=note), out_dir, overwrite=overwrite)
