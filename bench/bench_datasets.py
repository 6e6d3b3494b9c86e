"""Dataset storage and ``fmrilm dataset info`` against the straightforward alternatives.

1. ``info``: :func:`fmrilm.datasets_scripts.summarize_dataset` streams only the scalar columns of the
   Parquet shards. Baseline: what one would write first, ``load_dataset(DIR)`` (which converts every
   shard, ``bold`` included, into an Arrow cache; a fresh cache each call, as for a first look at a
   dataset) and the same statistics from its scalar columns.
2. ``read bold``: reading every scan's (time, rois) array from our ``Array2D(shape=(None, R))``
   column against the same data stored as nested lists (``List(List(float32))``), both already in
   the Arrow cache, numpy format.

Ratio = baseline seconds / our seconds. Run: ``.venv/bin/python bench/bench_datasets.py [--quick]``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BenchResult, best_time, machine_description


def _write_dataset(folder: Path, n_scans: int, n_time: int, n_rois: int):
    """A written fmri-lm dataset of random scans (2 per subject, one label) and its build result."""
    from datasets import Value

    from fmrilm.datasets_scripts.common import BuildResult, Provenance, collect_scans
    from fmrilm.datasets_scripts.schema import ScanRecord
    from fmrilm.datasets_scripts.writer import write_dataset

    rng = np.random.default_rng(0)

    def load(index: int) -> ScanRecord:
        bold = rng.standard_normal((n_time, n_rois), dtype=np.float32)
        return ScanRecord(f"s{index // 2}", str(index % 2), "bench", "run-1", bold, 0.8, {"group": "AB"[index % 3 % 2]})

    collected = collect_scans(
        range(n_scans), load, n_rois=n_rois, atlas="bench", synthetic=True,
        label_features={"group": Value("string")}, cache_dir=folder / "cache", progress=False,
    )  # fmt: skip
    result = BuildResult.from_collected(
        collected, Provenance("bench", "random", "other", "-", "bench", "-", True, {}), 0
    )
    write_dataset(result, folder / "dataset")
    return result, folder / "dataset"


def _baseline_info(folder: Path) -> None:
    from datasets import load_dataset

    from fmrilm.datasets_scripts.info import label_kinds, summarize_split

    with tempfile.TemporaryDirectory() as cache:
        loaded = load_dataset(str(folder), cache_dir=cache)
        frames = {name: split.remove_columns("bold").to_pandas() for name, split in loaded.items()}
        features = next(iter(loaded.values())).features
        kinds = label_kinds({"group": features["group"]}, list(frames.values()))
        {name: summarize_split(frame, kinds) for name, frame in frames.items()}


def run(quick: bool = False) -> list[BenchResult]:
    import datasets
    from datasets import Array2D, Features, List, Value

    from fmrilm.datasets_scripts.info import summarize_dataset

    n_scans, n_time, n_rois = (24, 300, 100) if quick else (120, 490, 450)
    repeats = 2 if quick else 3
    results = []
    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory() as tmp:
        result, folder = _write_dataset(Path(tmp), n_scans, n_time, n_rois)
        case = f"{n_scans} scans x {n_time} TRs x {n_rois} ROIs"
        ours = best_time(lambda: summarize_dataset(folder), repeats=repeats)
        baseline = best_time(lambda: _baseline_info(folder), repeats=repeats)
        results.append(
            BenchResult("dataset info", case, "stream scalar columns", "load_dataset + pandas", ours, baseline)
        )

        train = result.dataset["train"]
        nested = train.cast(Features({**train.features, "bold": List(List(Value("float32")))}))
        assert nested.features["bold"] != Array2D(shape=(None, n_rois), dtype="float32")

        def read_all(split) -> None:
            formatted = split.with_format("numpy")
            for index in range(len(formatted)):
                np.asarray(formatted[index]["bold"], dtype=np.float32)

        ours = best_time(lambda: read_all(train), repeats=repeats)
        baseline = best_time(lambda: read_all(nested), repeats=repeats)
        results.append(
            BenchResult("dataset read bold", f"{len(train)} train scans", "Array2D", "nested lists", ours, baseline)
        )
    return results


if __name__ == "__main__":
    print(machine_description())
    for row in run(quick="--quick" in sys.argv):
        print(row.line())
