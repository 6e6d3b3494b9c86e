"""Stage-1 trainer (fmrilm.training.stage1): tiny end-to-end runs through the command line, resume,
validation metrics against independent computations, and configuration errors.

Runs use ``training.cpu=true`` so that equality checks hold bitwise on machines with a GPU too.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from datasets import DatasetDict
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import AutoModel, AutoProcessor, BertConfig, GPT2Config, PreTrainedTokenizerFast

import fmrilm  # noqa: F401  (registers the Auto classes)
from fmrilm.datasets_scripts import build_simulated, write_dataset
from fmrilm.training import load_config
from fmrilm.training.cli import add_train_command
from fmrilm.training.stage1 import (
    ScanCollator,
    ScanDataset,
    Stage1Config,
    Stage1Objective,
    reconstruction_r2_terms,
    retrieval_accuracy,
    train_tokenizer,
    valid_time_points,
)

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

TINY_CONFIG = "fmrilm/training/configs/stage1_tiny.yaml"
WORDS = "low high coupling gain and".split()


def word_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        eos_token="[SEP]",
    )  # fmt: skip


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny simulated cohort (6 train, 1 validation, 1 test subject; 100 TRs of 2 s) with descriptor
    texts, a tiny random BERT as the text model and a tiny random GPT-2 as the domain LM, on disk."""
    root = tmp_path_factory.mktemp("stage1")
    result = build_simulated(n_subjects=8, duration_s=200, seed=1, progress=False)

    def describe(row):
        return {"descriptor_text": f"{WORDS[row['coupling_class']]} coupling and {WORDS[row['gain_class']]} gain"}

    result.dataset = DatasetDict({name: split.map(describe) for name, split in result.dataset.items()})
    write_dataset(result, root / "data")
    tokenizer = word_tokenizer()
    torch.manual_seed(0)
    bert = AutoModel.from_config(BertConfig(vocab_size=9, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                            intermediate_size=32, max_position_embeddings=32))  # fmt: skip
    bert.save_pretrained(root / "bert")
    tokenizer.save_pretrained(root / "bert")
    gpt2 = AutoModel.from_config(GPT2Config(vocab_size=9, n_embd=24, n_layer=1, n_head=2, n_positions=64))
    gpt2.save_pretrained(root / "gpt2")
    tokenizer.save_pretrained(root / "gpt2")
    return root


def overrides(workspace, output_dir, *extra):
    return [
        f"data.datasets=[{workspace / 'data'}]", f"output_dir={output_dir}", "data.batch_size=4",
        "features.max_timepoints=32", "training.num_epochs=3", "training.eval_every=2", "training.log_every=1",
        "training.progress_bar=false", "training.cpu=true", f"text.model={workspace / 'bert'}", "domain.weight=0.5",
        f"domain.llm={workspace / 'gpt2'}", "domain.num_windows=2", "domain.window_length=16", *extra,
    ]  # fmt: skip


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fmrilm")
    add_train_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---- end to end ---------------------------------------------------------------------------------


def test_tiny_run_through_the_cli_writes_a_processor_that_tokenizes_scans(workspace, tmp_path):
    output = tmp_path / "run"
    assert run_cli(["train", "tokenizer", "--config", TINY_CONFIG, *overrides(workspace, output)]) == 0

    records = read_jsonl(output / "metrics.jsonl")
    validation = [r for r in records if r["split"] == "validation"]
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in validation] == [2, 4, 6] and [r["step"] for r in train] == list(range(1, 7))
    expected = {"reconstruction_r2", "reconstruction_mse", "codebook_usage", "used_codes", "dead_codes",
                "perplexity", "retrieval_top1", "retrieval_top5", "contrastive_loss"}  # fmt: skip
    assert expected <= set(validation[0])
    assert validation[-1]["reconstruction_r2"] > validation[0]["reconstruction_r2"]  # it learns
    assert all(0 < r["codebook_usage"] <= 1 and r["used_codes"] + r["dead_codes"] == 256 for r in validation)
    assert {"contrastive_loss", "domain_loss", "reconstruction_loss", "commitment_loss"} <= set(train[0])
    alphas = [r["domain_alpha"] for r in train]
    assert alphas[0] == 0.0 and np.all(np.diff(alphas) > 0)  # the DANN schedule rises with progress

    summary = json.loads((output / "training_summary.json").read_text())
    assert summary["best_metric"] == "reconstruction_r2"
    assert summary["best_value"] == max(r["reconstruction_r2"] for r in validation)
    assert summary["best_validation"]["reconstruction_r2"] == summary["best_value"]
    assert summary["final_validation"] == {k: validation[-1][k] for k in summary["final_validation"]}
    assert (summary["train_scans"], summary["validation_scans"], summary["tokens_per_scan"]) == (6, 1, 188)
    assert load_config(Stage1Config, output / "config.yaml").text.model == str(workspace / "bert")

    processor = AutoProcessor.from_pretrained(output / "processor")
    assert type(processor).__name__ == "FmriLMProcessor"
    assert processor.feature_extractor.max_timepoints == 32 and processor.feature_extractor.crop_strategy == "start"
    assert processor.tokenizer("low gain")["input_ids"] == word_tokenizer()("low gain")["input_ids"]
    best = load_file(output / "best" / "model.safetensors")
    saved = processor.fmri_tokenizer.state_dict()
    assert all(torch.equal(best[name], saved[name]) for name in best)
    scan = np.random.default_rng(0).normal(size=(150, 94)).astype(np.float32)
    codes = processor.tokenize_fmri([scan], tr=2.0)
    assert codes.shape == (1, 188) and codes.dtype == torch.int64
    assert 0 <= int(codes.min()) and int(codes.max()) < 256


class _Interrupt(Exception):
    pass


def test_resume_from_a_checkpoint_continues_identically(workspace, tmp_path, monkeypatch):
    settings = ["training.save_every=2", "training.eval_every=3"]
    assert (
        run_cli(["train", "tokenizer", "--config", TINY_CONFIG, *overrides(workspace, tmp_path / "a", *settings)]) == 0
    )

    original = Stage1Objective.__call__
    calls = {"n": 0}

    def stop_during_step_four(self, model, batch):
        calls["n"] += 1
        if calls["n"] == 4:
            raise _Interrupt
        return original(self, model, batch)

    monkeypatch.setattr(Stage1Objective, "__call__", stop_during_step_four)
    with pytest.raises(_Interrupt):
        run_cli(["train", "tokenizer", "--config", TINY_CONFIG, *overrides(workspace, tmp_path / "b", *settings)])
    monkeypatch.setattr(Stage1Objective, "__call__", original)
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == ["step-00000002"]
    resumed = overrides(workspace, tmp_path / "b", *settings, "resume_from=latest")
    assert run_cli(["train", "tokenizer", "--config", TINY_CONFIG, *resumed]) == 0

    assert read_jsonl(tmp_path / "b" / "metrics.jsonl") == read_jsonl(tmp_path / "a" / "metrics.jsonl")
    expected = load_file(tmp_path / "a" / "best" / "model.safetensors")
    got = load_file(tmp_path / "b" / "best" / "model.safetensors")
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    for folder in ("a", "b"):  # the VQ codebook (a buffer, EMA-updated) went the same way too
        assert any("code_vectors" in name for name in load_file(tmp_path / folder / "best" / "model.safetensors"))


def test_reconstruction_only_run_on_two_concatenated_datasets(workspace, tmp_path):
    config = load_config(Stage1Config, TINY_CONFIG, [
        f"data.datasets=[{workspace / 'data'}, {workspace / 'data'}]", f"output_dir={tmp_path}", "data.batch_size=3",
        "features.max_timepoints=32", "features.normalization=cohort", "training.max_steps=2",
        "training.progress_bar=false", "training.cpu=true", "model.overrides.codebook_size=32",
    ])  # fmt: skip
    result = train_tokenizer(config)
    assert set(result.final_validation) == {"reconstruction_r2", "reconstruction_mse", "codebook_usage", "used_codes",
                                            "dead_codes", "perplexity"}  # fmt: skip
    processor = AutoProcessor.from_pretrained(result.processor_dir)
    assert processor.tokenizer is None and processor.feature_extractor.normalization == "cohort"
    assert processor.feature_extractor.cohort_iqr > 0  # fitted on the training split
    assert processor.fmri_tokenizer.config.text_embedding_dim is None
    summary = json.loads(result.summary_file.read_text())
    assert (summary["train_scans"], summary["validation_scans"]) == (12, 2)


# ---- pieces checked against independent computations --------------------------------------------


def test_reconstruction_r2_terms_match_a_direct_computation(rng):
    target = torch.from_numpy(rng.normal(size=(3, 8, 5)))
    reconstruction = target + 0.5 * torch.from_numpy(rng.normal(size=(3, 8, 5)))
    mask = torch.ones(3, 8, dtype=torch.long)
    mask[1, 6:] = 0
    valid = valid_time_points(mask, patch_size=4)
    assert valid[1].tolist() == [True] * 4 + [False] * 4  # a patch with a padded TR is not reconstructed
    error, total, count = reconstruction_r2_terms(reconstruction, target, valid)
    sse = sst = n = 0.0
    for scan in range(3):
        x = target[scan].numpy()[valid[scan].numpy()]
        y = reconstruction[scan].numpy()[valid[scan].numpy()]
        sse += ((y - x) ** 2).sum()
        sst += ((x - x.mean(axis=0)) ** 2).sum()
        n += x.size
    assert float(error.sum()) == pytest.approx(sse) and float(total.sum()) == pytest.approx(sst)
    assert float(count.sum()) == n
    means = torch.where(valid[:, :, None], target, 0).sum(1, keepdim=True) / valid.sum(1)[:, None, None]
    assert float(reconstruction_r2_terms(means.expand_as(target), target, valid)[0].sum()) == pytest.approx(sst)


def test_retrieval_accuracy_matches_ranking_by_argsort(rng):
    fmri = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(50, 8))), dim=1)
    text = torch.nn.functional.normalize(fmri + 0.8 * torch.from_numpy(rng.normal(size=(50, 8))), dim=1)
    order = torch.argsort(fmri @ text.T, dim=1, descending=True)
    rank = (order == torch.arange(50)[:, None]).float().argmax(dim=1)
    accuracy = retrieval_accuracy(fmri, text, ks=(1, 5), chunk_size=7)
    assert accuracy[1] == pytest.approx(float((rank < 1).float().mean()))
    assert accuracy[5] == pytest.approx(float((rank < 5).float().mean()))
    assert 0 < accuracy[1] < accuracy[5] < 1


def test_collator_crops_are_reproducible_and_change_with_the_epoch(workspace):
    from datasets import load_dataset

    from fmrilm import FmriFeatureExtractor

    split = load_dataset(str(workspace / "data"), split="train")
    dataset = ScanDataset(split)
    extractor = FmriFeatureExtractor(n_rois=94, max_timepoints=32, patch_size=16)
    corpus = np.arange(100)
    collate = ScanCollator(
        extractor, crop_strategy="random", seed=0, domain_corpus=corpus, num_windows=3, window_length=5
    )
    first = collate([dataset[0], dataset[1]])
    assert torch.equal(first["fmri_values"], collate([dataset[0], dataset[1]])["fmri_values"])
    dataset.set_epoch(1)
    later = collate([dataset[0], dataset[1]])
    assert not torch.equal(first["fmri_values"], later["fmri_values"])
    assert first["domain_token_ids"].shape == (3, 5)
    assert torch.equal(
        first["domain_token_ids"][:, 1:] - first["domain_token_ids"][:, :-1], torch.ones(3, 4, dtype=torch.long)
    )
    start = ScanCollator(extractor, crop_strategy="start", seed=0)([dataset[0]])
    direct = extractor([split.with_format("numpy")[0]["bold"]], tr=2.0, return_tensors="pt", crop_strategy="start")
    assert torch.equal(start["fmri_values"], direct["fmri_values"])


# ---- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, error, message",
    [
        (["data.datasets=[/nonexistent/folder]"], FileNotFoundError, "Dataset folder /nonexistent/folder not found"),
        (["data.validation_split=holdout"], ValueError, "No dataset in .* has scans in a 'holdout' split"),
        (["model.overrides.patch_size=8"], ValueError, "model.overrides.patch_size=8 disagrees with the data"),
        (["model.overrides.domain_weight=1.0"], ValueError, "set by the text and domain sections"),
        (
            ["model.overrides.hidden_sise=8"],
            ValueError,
            "unknown setting\\(s\\) hidden_sise; FmriTokenizerConfig fields are: .*hidden_size",
        ),
        (["model.preset=huge"], ValueError, "Unknown preset .huge."),
        (["text.model=precomputed"], ValueError, "no column 'text_embedding'"),
    ],
)
def test_bad_settings_are_refused_with_a_clear_message(workspace, tmp_path, extra, error, message):
    settings = [f"data.datasets=[{workspace / 'data'}]", f"output_dir={tmp_path}", "features.max_timepoints=32",
                "training.max_steps=1", "training.progress_bar=false", "training.cpu=true", *extra]  # fmt: skip
    with pytest.raises(error, match=message):
        train_tokenizer(load_config(Stage1Config, TINY_CONFIG, settings))


def test_config_validation_and_cli_exit_code(workspace, tmp_path, capsys):
    with pytest.raises(ValueError, match="domain.weight > 0 needs domain.llm"):
        load_config(Stage1Config, TINY_CONFIG, ["domain.weight=0.5"])
    with pytest.raises(ValueError, match="data.datasets must list at least one dataset folder"):
        load_config(Stage1Config, None, ["data.batch_size=2"])
    assert run_cli(["train", "tokenizer", "--config", TINY_CONFIG, "training.best_mode=up"]) == 2
    assert "training.best_mode: 'up' is not one of 'min', 'max'" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["stage1_tiny", "stage1_small", "stage1_base"])
def test_shipped_configs_are_valid(name):
    from pathlib import Path

    import fmrilm.training

    config = load_config(Stage1Config, Path(fmrilm.training.__file__).parent / "configs" / f"{name}.yaml")
    assert config.training.best_metric == "reconstruction_r2" and config.training.best_mode == "max"
    assert config.features.max_timepoints % config.features.patch_size == 0
