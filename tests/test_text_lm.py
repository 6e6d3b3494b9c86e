"""The from-scratch text LM (fmrilm.text_lm): a BPE tokenizer that encodes any text and a seeded Llama-style LM
that stage 2 accepts by folder, like any Hub LM."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from fmrilm.text_lm import LM_PRESETS, save_text_lm, scratch_causal_lm, train_text_tokenizer

TEXTS = [
    "Louvain modularity is typical for the cohort (-0.88 SD).",
    "Connectivity within Subcortical is modestly higher than average (z=+1.14).",
    "### Question: Is global coupling low or high?\n### Answer: high",
] * 5


def test_tokenizer_round_trips_any_text_and_has_the_special_tokens():
    tokenizer = train_text_tokenizer(TEXTS, vocab_size=300)
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    for text in [*TEXTS[:3], "unseen wörds ✓ 12345"]:  # byte-level: nothing is unknown
        ids = tokenizer(text)["input_ids"]
        assert ids[-1] != tokenizer.eos_token_id  # no special tokens added by itself
        assert tokenizer.decode(ids) == text
    assert len(tokenizer("modularity is typical")["input_ids"]) < len("modularity is typical")  # merges learned


def test_tokenizer_refuses_empty_corpora_and_tiny_vocabularies():
    with pytest.raises(ValueError, match="non-empty text"):
        train_text_tokenizer(["", "  "])
    with pytest.raises(ValueError, match="vocab_size"):
        train_text_tokenizer(TEXTS, vocab_size=100)


@pytest.mark.parametrize("preset", ["tiny", "mini"])
def test_scratch_lm_is_seeded_sized_and_saves_as_an_auto_folder(preset, tmp_path):
    tokenizer = train_text_tokenizer(TEXTS, vocab_size=300)
    torch.manual_seed(123)
    before = torch.rand(1)
    model = scratch_causal_lm(tokenizer, preset=preset, seed=0)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), before)  # the global generator is left as it was
    layers, width, _, _ = LM_PRESETS[preset]
    assert (model.config.num_hidden_layers, model.config.hidden_size, model.config.vocab_size) == (
        layers, width, len(tokenizer))  # fmt: skip
    again = scratch_causal_lm(tokenizer, preset=preset, seed=0)
    other = scratch_causal_lm(tokenizer, preset=preset, seed=1)
    first = next(iter(model.state_dict()))
    assert torch.equal(model.state_dict()[first], again.state_dict()[first])
    assert not torch.equal(model.state_dict()[first], other.state_dict()[first])

    folder = save_text_lm(model, tokenizer, tmp_path / "lm")
    loaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    loaded_tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = torch.tensor([loaded_tokenizer(TEXTS[0])["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model.eval()(ids).logits)


def test_unknown_preset_is_refused():
    with pytest.raises(ValueError, match="Unknown LM preset"):
        scratch_causal_lm(train_text_tokenizer(TEXTS, vocab_size=300), preset="huge")
