"""Stage-2 alignment trainer (fmrilm.training.stage2): tiny end-to-end runs through the command line (full
fine-tuning and LoRA), resume, label masking, the T2T corpus (SPEC B7), and configuration errors.

The workspace is built with the library itself: a simulated cohort, described (``descriptor_facts``) and
pre-tokenized (int16 ``fmri_codes``) by a tiny random stage-1 processor, plus tiny random causal LMs with
the offline test tokenizer saved to folders. Runs use ``training.cpu=true`` so that equality checks hold
bitwise on machines with a GPU too.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from datasets import load_dataset
from lm_fixtures import tiny_causal_lm, tiny_tokenizer
from safetensors.torch import load_file
from stage_workspace import N_TOKENS, build_tokenized_cohort, save_tiny_lms, stage1_processor
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoProcessor, PreTrainedTokenizerFast

import fmrilm  # noqa: F401  (registers the Auto classes)
from fmrilm.descriptors import DescriptorFacts
from fmrilm.processing_fmrilm import PAD_CODE, FmriLMProcessor
from fmrilm.training import load_config
from fmrilm.training.cli import add_train_command
from fmrilm.training.generation_metrics import faithfulness
from fmrilm.training.stage2 import (
    IGNORE_INDEX,
    AlignmentCollator,
    AlignmentDataset,
    AlignmentObjective,
    Stage2Config,
    f2f_token_losses,
    f2t_token_losses,
    load_causal_lm,
    lora_target_modules,
)
from fmrilm.training.text_corpus import TextWindows, load_documents, tokenize_documents

pytestmark = [
    pytest.mark.usefixtures("fresh_accelerate_state"),
    pytest.mark.filterwarnings("ignore:Group ICA with 4 components"),  # the tiny reference; only graph text is used
]

TINY_CONFIG = "fmrilm/training/configs/stage2_tiny.yaml"
PROMPT = "<fmri> Describe the brain activity in this scan."


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Simulated cohort (6 train, 1 validation, 1 test subject) described with the graph family and
    tokenized by a tiny stage-1 processor; tiny Llama and GPT-2 LMs with the test tokenizer; all on disk."""
    root = build_tokenized_cohort(tmp_path_factory.mktemp("stage2"))
    save_tiny_lms(root)
    return root


def overrides(workspace, output_dir, *extra, kind="llama"):
    return [
        f"data.datasets=[{workspace / 'tokenized'}]", f"output_dir={output_dir}", f"model.text_model={workspace / kind}",
        f"model.processor={workspace / 'processor'}", "data.families=[graph]", "data.batch_size=3",
        "data.max_length=320", "training.num_epochs=2", "training.eval_every=2", "training.log_every=1",
        "training.learning_rate=3.0e-3", "training.warmup_ratio=0.0", "training.progress_bar=false",
        "training.cpu=true", "generation.num_scans=1", "generation.max_new_tokens=8", "t2t.window_length=32",
        "t2t.batch_size=2", *extra,
    ]  # fmt: skip


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fmrilm")
    add_train_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def split_rows(workspace, split: str):
    return load_dataset(str(workspace / "tokenized"))[split]


def collator_for(processor, **options) -> AlignmentCollator:
    settings = dict(prompt=PROMPT, prompt_has_special_tokens=False, target_separator=" ", target_source="facts",
                    families=("graph",), seed=0)  # fmt: skip
    return AlignmentCollator(processor, **(settings | options))


def aligned_processor(workspace, kind="llama"):
    processor = FmriLMProcessor.from_pretrained(workspace / "processor")
    processor.tokenizer = tiny_tokenizer()
    return processor


# ---- end to end ---------------------------------------------------------------------------------


def test_full_fine_tuning_through_the_cli_learns_and_writes_a_loadable_model(workspace, tmp_path):
    output = tmp_path / "run"
    assert run_cli(["train", "align", "--config", TINY_CONFIG, *overrides(workspace, output)]) == 0

    records = read_jsonl(output / "metrics.jsonl")
    train = [r for r in records if r["split"] == "train"]
    validation = [r for r in records if r["split"] == "validation"]
    assert [r["step"] for r in train] == [1, 2, 3, 4] and [r["step"] for r in validation] == [2, 4]
    for record in train:
        assert {"f2t_loss", "f2f_loss", "t2t_loss"} <= set(record)
        assert all(np.isfinite(record[k]) for k in ("loss", "f2t_loss", "f2f_loss", "t2t_loss"))
        # The objective adds the weighted multimodal loss and the weighted text-only loss (paper v1 weights).
        assert record["loss"] == pytest.approx(record["f2t_loss"] + 0.1 * record["f2f_loss"] + 0.5 * record["t2t_loss"])
    assert validation[-1]["f2t_loss"] < validation[0]["f2t_loss"]  # it learns to describe
    assert {"faithfulness", "faithfulness_recall", "rouge_l", "bleu", "f2f_loss"} <= set(validation[0])
    generations = read_jsonl(output / "generations" / "step-00000004.jsonl")
    assert len(generations) == 1 and isinstance(generations[0]["generated"], str)

    summary = json.loads((output / "training_summary.json").read_text())
    assert summary["best_value"] == min(r["f2t_loss"] for r in validation) and summary["lora"] is False
    assert (summary["train_scans"], summary["validation_scans"], summary["fmri_tokens_per_scan"]) == (6, 1, N_TOKENS)

    model = AutoModelForCausalLM.from_pretrained(output / "model")
    assert type(model).__name__ == "FmriLMForCausalLM"
    best = load_file(output / "best" / "model.safetensors")
    state = model.state_dict()
    assert all(torch.equal(best[name], state[name]) for name in best)
    processor = AutoProcessor.from_pretrained(output / "model")
    assert type(processor).__name__ == "FmriLMProcessor"
    assert processor.tokenizer.convert_tokens_to_ids("<fmri>") == model.config.fmri_token_id
    test_codes = np.asarray(split_rows(workspace, "test")[0]["fmri_codes"], dtype=np.int64)
    inputs = processor.apply_chat_template(
        [{"role": "user", "content": PROMPT}], add_generation_prompt=True, tokenize=True, fmri_codes=test_codes
    )
    generated = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert generated.shape == (1, inputs["input_ids"].shape[1] + 5)
    assert isinstance(
        processor.batch_decode(generated[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0], str
    )


def test_lora_run_trains_adapters_and_the_fmri_modules_and_merges(workspace, tmp_path):
    from peft import PeftModel

    from fmrilm.modeling_fmrilm import FmriLMForCausalLM

    output = tmp_path / "lora"
    settings = overrides(workspace, output, "lora.enabled=true", "lora.r=4", kind="gpt2")
    assert run_cli(["train", "align", "--config", TINY_CONFIG, *settings]) == 0
    validation = [r for r in read_jsonl(output / "metrics.jsonl") if r["split"] == "validation"]
    assert validation[-1]["f2t_loss"] < validation[0]["f2t_loss"]
    summary = json.loads((output / "training_summary.json").read_text())
    assert summary["lora"] is True and summary["trainable_parameters"] < summary["parameters"] / 5

    adapter = load_file(output / "adapter" / "adapter_model.safetensors")
    assert {"fmri_embed", "roi_embed", "fmri_head"} <= {name.split(".")[2] for name in adapter}
    assert any("lora_A" in name and "c_attn" in name for name in adapter)
    assert any("trainable_tokens" in name for name in adapter)  # the <fmri_start>/<fmri_end> rows

    merged = AutoModelForCausalLM.from_pretrained(output / "model")
    original = AutoModelForCausalLM.from_pretrained(workspace / "gpt2")
    # Weights outside the adapters are the base LM's, untouched; the adapted projections moved.
    assert torch.equal(merged.language_model.transformer.wpe.weight, original.transformer.wpe.weight)
    assert not torch.equal(merged.language_model.transformer.h[0].attn.c_attn.weight,
                           original.transformer.h[0].attn.c_attn.weight)  # fmt: skip

    # The adapter applies to the reproducible base: from_text_model after set_seed(training.seed).
    from accelerate.utils import set_seed

    processor = AutoProcessor.from_pretrained(output / "model")
    base_processor = aligned_processor(workspace)
    set_seed(0)
    base = FmriLMForCausalLM.from_text_model(load_causal_lm(str(workspace / "gpt2")), base_processor)
    with_adapter = PeftModel.from_pretrained(base, output / "adapter").eval()
    codes = np.asarray(split_rows(workspace, "validation")[0]["fmri_codes"], dtype=np.int64)
    inputs = processor(text=PROMPT + " Modularity is", fmri_codes=codes, return_tensors="pt")
    with torch.no_grad():
        expected = with_adapter(**inputs).logits
        got = merged.eval()(**inputs).logits
    text_ids = [i for i in range(got.shape[-1]) if i < len(processor.tokenizer) - 3]  # the fMRI tokens are never scored
    torch.testing.assert_close(got[..., text_ids], expected[..., text_ids], atol=1e-4, rtol=1e-4)


class _Interrupt(Exception):
    pass


def test_resume_from_a_checkpoint_continues_identically(workspace, tmp_path, monkeypatch):
    settings = ["training.save_every=2", "training.eval_every=3", "generation.num_scans=0", "training.num_epochs=2"]
    assert run_cli(["train", "align", "--config", TINY_CONFIG, *overrides(workspace, tmp_path / "a", *settings)]) == 0

    original = AlignmentObjective.__call__
    calls = {"n": 0}

    def stop_during_step_three(self, model, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise _Interrupt
        return original(self, model, batch)

    monkeypatch.setattr(AlignmentObjective, "__call__", stop_during_step_three)
    with pytest.raises(_Interrupt):
        run_cli(["train", "align", "--config", TINY_CONFIG, *overrides(workspace, tmp_path / "b", *settings)])
    monkeypatch.setattr(AlignmentObjective, "__call__", original)
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == ["step-00000002"]
    resumed = overrides(workspace, tmp_path / "b", *settings, "resume_from=latest")
    assert run_cli(["train", "align", "--config", TINY_CONFIG, *resumed]) == 0

    assert read_jsonl(tmp_path / "b" / "metrics.jsonl") == read_jsonl(tmp_path / "a" / "metrics.jsonl")
    expected = load_file(tmp_path / "a" / "model" / "model.safetensors")
    got = load_file(tmp_path / "b" / "model" / "model.safetensors")
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)


# ---- data: targets, labels, T2T -------------------------------------------------------------------


def test_labels_cover_only_the_target_and_the_model_loss_reads_only_them(workspace):
    from accelerate.utils import set_seed

    from fmrilm.modeling_fmrilm import FmriLMForCausalLM

    processor = aligned_processor(workspace)
    set_seed(0)
    model = FmriLMForCausalLM.from_text_model(load_causal_lm(str(workspace / "llama")), processor).eval()
    rows = split_rows(workspace, "train")
    dataset = AlignmentDataset(rows, codes_column="fmri_codes", facts_column="descriptor_facts", text_column=None)
    collator = collator_for(processor)
    items = [dataset[0], dataset[1]]
    batch = collator(items)
    tokenizer = processor.tokenizer
    for row, item in enumerate(items):
        labelled = batch["labels"][row] != IGNORE_INDEX
        ids = batch["input_ids"][row][labelled].tolist()
        assert ids[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(ids[:-1]) == " " + collator.target_text(item)  # exactly the target, then EOS
        first = int(labelled.nonzero()[0])
        assert tokenizer.decode(batch["input_ids"][row][:first], skip_special_tokens=True) == PROMPT.replace(
            "<fmri>", ""
        )
        assert int((batch["input_ids"][row] == model.config.fmri_token_id).sum()) == N_TOKENS
    with torch.no_grad():
        output = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "fmri_codes", "labels")})
    total, count = f2t_token_losses(output.logits, batch["labels"])
    assert float(output.f2t_loss) == pytest.approx(float(total.sum() / count.sum()), rel=1e-5)
    # Labelling every real token instead (the official code's B8) would give another loss.
    everything = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
    total_all, count_all = f2t_token_losses(output.logits, everything)
    assert count_all.sum() > count.sum() and float(total_all.sum() / count_all.sum()) != pytest.approx(
        float(output.f2t_loss)
    )

    # The evaluator's per-token F2F equals the model's F2F, also with padded time patches.
    codes = batch["fmri_codes"].clone()
    codes[1, 94:] = PAD_CODE
    with torch.no_grad():
        padded = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], fmri_codes=codes,
                       labels=batch["labels"])  # fmt: skip
    f2f_total, f2f_count = f2f_token_losses(
        padded.fmri_logits, batch["input_ids"], codes, model.config.fmri_token_id, 94
    )
    assert f2f_count.tolist() == [94.0, 0.0]
    assert float(padded.f2f_loss) == pytest.approx(float(f2f_total.sum() / f2f_count.sum()), rel=1e-5)


def test_descriptor_wording_changes_with_the_epoch_but_not_the_facts(workspace):
    processor = aligned_processor(workspace)
    rows = split_rows(workspace, "train")
    dataset = AlignmentDataset(rows, codes_column="fmri_codes", facts_column="descriptor_facts", text_column=None)
    train, validation = collator_for(processor), collator_for(processor, fixed_wording=True)
    texts = {}
    for epoch in range(4):
        dataset.set_epoch(epoch)
        texts[epoch] = [train.target_text(dataset[i]) for i in range(len(dataset))]
        assert [validation.target_text(dataset[i]) for i in range(len(dataset))] == [
            validation.target_text({**dataset[i], "epoch": 0}) for i in range(len(dataset))
        ]
    assert texts[0] != texts[1] and texts[1] != texts[2]
    for i in range(len(dataset)):
        facts = DescriptorFacts.from_json(rows[i]["descriptor_facts"])
        for epoch in range(4):
            report = faithfulness(texts[epoch][i], facts)
            assert report["share"] == 1.0 and report["z_exact"] == report["stated"]
            assert texts[epoch][i].startswith("## Graph Metrics:")  # only the requested family


def other_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer: the same text gets other ids than with the byte-level BPE (SPEC B7)."""
    words = "## Graph Metrics : - Modularity is within the typical range ( z = ) , . Node strength".split()
    vocab = {"<unk>": 0, "<pad>": 1, "<eos>": 2, **{w: i + 3 for i, w in enumerate(dict.fromkeys(words))}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>")


def test_t2t_corpus_is_tokenized_by_the_lms_own_tokenizer(workspace, tmp_path):
    documents = load_documents(split_rows(workspace, "train")["descriptor_text"])
    bpe, words = tiny_tokenizer(), other_tokenizer()
    for tokenizer in (bpe, words):
        stream = tokenize_documents(documents, tokenizer)
        expected = [i for d in documents for i in [*tokenizer(d, add_special_tokens=False)["input_ids"],
                                                   tokenizer.eos_token_id]]  # fmt: skip
        assert stream.dtype == np.int32 and stream.tolist() == expected
    assert tokenize_documents(documents, bpe).tolist() != tokenize_documents(documents, words).tolist()
    # Ids of another model's vocabulary are refused (the official code fed GPT-2 ids to Qwen).
    with pytest.raises(ValueError, match="outside the model's vocabulary.*own tokenizer"):
        tokenize_documents(documents, bpe, vocab_size=len(words))
    # A special-token string written in a document is text, never a placeholder or a control token.
    bpe.add_special_tokens({"extra_special_tokens": ["<fmri>"]})
    marked = tokenize_documents(["Modularity <fmri> is <eos> typical."], bpe)
    assert bpe.convert_tokens_to_ids("<fmri>") not in marked.tolist() and marked.tolist().count(bpe.eos_token_id) == 1
    bpe = tiny_tokenizer()
    with pytest.raises(ValueError, match="uint16"):
        TextWindows(np.arange(100, dtype=np.uint16), 8)
    windows = TextWindows(tokenize_documents(documents, bpe), 16, seed=3)
    first, again = windows.sample(4, key=[0, 1, 2]), windows.sample(4, key=[0, 1, 2])
    assert first.dtype == torch.int64 and first.shape == (4, 16) and torch.equal(first, again)
    assert not torch.equal(first, windows.sample(4, key=[1, 1, 2]))  # another epoch, other windows

    # End to end: the trainer's cached corpus is the LM tokenizer's ids of the rendered training targets.
    output = tmp_path / "run"
    settings = overrides(workspace, output, "training.num_epochs=1", "generation.num_scans=0")
    assert run_cli(["train", "align", "--config", TINY_CONFIG, *settings]) == 0
    (cached,) = (output / "dataset_cache").glob("t2t-*.npy")
    processor = aligned_processor(workspace)
    dataset = AlignmentDataset(split_rows(workspace, "train"), codes_column="fmri_codes",
                               facts_column="descriptor_facts", text_column=None)  # fmt: skip
    rendered = [collator_for(processor, fixed_wording=True).target_text(dataset[i]) for i in range(len(dataset))]
    assert np.load(cached).tolist() == tokenize_documents(rendered, bpe).tolist()


def test_load_documents_reads_text_files_and_dataset_folders(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("first document\n\n  \nsecond one\n", encoding="utf-8")
    assert load_documents(path) == ["first document", "second one"]
    from datasets import Dataset

    Dataset.from_dict({"body": ["a b", "", "c"]}).to_parquet(str(tmp_path / "folder" / "train.parquet"))
    assert load_documents(tmp_path / "folder", text_column="body") == ["a b", "c"]
    with pytest.raises(ValueError, match="no 'text' column"):
        load_documents(tmp_path / "folder")
    with pytest.raises(FileNotFoundError, match="T2T corpus"):
        load_documents(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="no non-empty document"):
        load_documents(["", "  "])


# ---- model pieces -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "expected"),
    [("gpt2", ["c_attn", "c_fc", "c_proj"]),
     ("llama", ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]),
     ("qwen3", ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"])],
)  # fmt: skip
def test_lora_targets_are_the_attention_and_mlp_projections(workspace, kind, expected):
    from fmrilm.modeling_fmrilm import FmriLMForCausalLM

    processor = aligned_processor(workspace)
    model = FmriLMForCausalLM.from_text_model(tiny_causal_lm(kind, len(processor.tokenizer)), processor)
    assert lora_target_modules(model) == expected


def test_load_causal_lm_refuses_missing_or_unexpected_weights(workspace, tmp_path):
    from safetensors.torch import save_file

    weights = load_file(workspace / "llama" / "model.safetensors")
    for name, edit in (("missing", lambda w: w.pop(next(k for k in w if "q_proj" in k))),
                       ("unexpected", lambda w: w.__setitem__("model.extra.weight", torch.zeros(2)))):  # fmt: skip
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text((workspace / "llama" / "config.json").read_text())
        changed = dict(weights)
        edit(changed)
        save_file(changed, folder / "model.safetensors", metadata={"format": "pt"})
        with pytest.raises(ValueError, match=f"does not match its architecture.*{name}_keys"):
            load_causal_lm(str(folder))
    with pytest.raises(FileNotFoundError, match="Could not load the causal LM"):
        load_causal_lm(str(tmp_path / "nothing-here"))


# ---- configuration and data errors --------------------------------------------------------------


def test_codes_from_another_processor_are_refused(workspace, tmp_path, capsys):
    stage1_processor(seed=5).save_pretrained(tmp_path / "other")
    settings = overrides(workspace, tmp_path / "run", f"model.processor={tmp_path / 'other'}")
    assert run_cli(["train", "align", "--config", TINY_CONFIG, *settings]) == 2
    assert "fingerprint" in capsys.readouterr().err


def test_a_dataset_without_codes_or_facts_is_refused(workspace, tmp_path, capsys):
    settings = overrides(workspace, tmp_path / "run", f"data.datasets=[{workspace / 'described'}]")
    assert run_cli(["train", "align", "--config", TINY_CONFIG, *settings]) == 2
    assert "fmri_codes" in capsys.readouterr().err
    settings = overrides(workspace, tmp_path / "run2", "data.facts_column=facts")
    assert run_cli(["train", "align", "--config", TINY_CONFIG, *settings]) == 2
    assert "fmrilm describe" in capsys.readouterr().err


def test_a_generation_metric_as_best_metric_needs_generation(workspace, tmp_path, capsys):
    settings = overrides(workspace, tmp_path / "run", "training.best_metric=faithfulness", "training.best_mode=max",
                         "generation.num_scans=0")  # fmt: skip
    assert run_cli(["train", "align", "--config", TINY_CONFIG, *settings]) == 2
    assert "generation.num_scans" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("override", "message"),
    [("prompt.text=Describe.", "exactly one '<fmri>'"),
     ("data.families=[spectra]", "data.families must be a non-empty subset"),
     ("losses.f2t_weight=0 losses.f2f_weight=0", "both 0"),
     ("losses.t2t_weight=-1", "losses.t2t_weight"),
     ("data.validation_split=train", "must differ"),
     ("lora.r=0", "lora needs r >= 1"),
     ("data.target_source=summary", "not one of"),
     ("t2t.window_length=1", "t2t.window_length")],
)  # fmt: skip
def test_invalid_settings_are_refused_with_a_clear_message(override, message):
    base = ["data.datasets=[x]", "model.text_model=x", "model.processor=x"]
    with pytest.raises(ValueError, match=message):
        load_config(Stage2Config, TINY_CONFIG, [*base, *override.split(" ")])
