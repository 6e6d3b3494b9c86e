"""FmriLMForCausalLM on tiny random GPT-2, Llama and Qwen3: attention by perturbation, positions, losses,
eager/SDPA, generation parity, gradient checkpointing, save/load (new process, remote code), from_text_model."""

import copy
import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
import torch.nn.functional as F
from lm_fixtures import LM_KINDS, tiny_causal_lm, tiny_tokenizer
from transformers import AutoConfig, AutoModelForCausalLM

import fmrilm  # noqa: F401  (registers the package's Auto classes)
from fmrilm.configuration_fmrilm import FmriLMConfig
from fmrilm.modeling_fmrilm import IGNORE_INDEX, PAD_CODE, FmriLMForCausalLM, FmriLMOutput, projected_codebook

# Until fmrilm/__init__.py registers them (the lead's file), register here.
AutoConfig.register(FmriLMConfig.model_type, FmriLMConfig, exist_ok=True)
AutoModelForCausalLM.register(FmriLMConfig, FmriLMForCausalLM, exist_ok=True)

R, T_PATCHES, CODES = 3, 3, 16
N = R * T_PATCHES
TEXT_VOCAB = 300  # tiny_tokenizer's vocabulary; the three fMRI tokens follow it
FMRI, START, END = TEXT_VOCAB, TEXT_VOCAB + 1, TEXT_VOCAB + 2
PAD_ID = 0
BLOCK = [START] + [FMRI] * N + [END]


def build_model(kind: str, attn_implementation: str = "sdpa", seed: int = 0, **overrides) -> FmriLMForCausalLM:
    language_model = tiny_causal_lm(kind, TEXT_VOCAB + 3, seed=seed, attn_implementation=attn_implementation)
    config = FmriLMConfig(
        text_config=language_model.config, n_rois=R, n_time_patches=T_PATCHES, codebook_size=CODES, codebook_dim=8,
        fmri_token_id=FMRI, fmri_start_token_id=START, fmri_end_token_id=END, **overrides,
    )  # fmt: skip
    torch.manual_seed(seed + 1)
    model = FmriLMForCausalLM(config, language_model=language_model).eval()
    model.generation_config.eos_token_id = None  # generate exactly max_new_tokens
    return model


def text_ids(count: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(5, TEXT_VOCAB, (count,), generator=generator).tolist()


def random_codes(rows: int, seed: int) -> torch.Tensor:
    return torch.randint(0, CODES, (rows, N), generator=torch.Generator().manual_seed(seed))


def left_padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(map(len, rows))
    ids = torch.tensor([[PAD_ID] * (length - len(row)) + row for row in rows])
    mask = torch.tensor([[0] * (length - len(row)) + [1] * len(row) for row in rows])
    return ids, mask


# Two blocks between text: positions of each part in the sequence.
PREFIX, MIDDLE, SUFFIX = text_ids(3, 1), text_ids(3, 2), text_ids(3, 3)
SEQUENCE = PREFIX + BLOCK + MIDDLE + BLOCK + SUFFIX
FIRST = len(PREFIX) + 1  # first placeholder of block 0
SECOND = FIRST + N + 1 + len(MIDDLE) + 1  # first placeholder of block 1
MIDDLE_AT = FIRST + N + 1


def hidden(model: FmriLMForCausalLM, ids: list[int], codes: torch.Tensor) -> torch.Tensor:
    """All layers' hidden states (layers, L, H) of one sequence."""
    with torch.no_grad():
        out = model(torch.tensor([ids]), fmri_codes=codes, output_hidden_states=True)
    return torch.stack(out.hidden_states)[:, 0]


def moved(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """bool (L,): which positions changed in any layer."""
    return (before - after).abs().amax(dim=(0, 2)) > 1e-5


# --------------------------------------------------------------------------------------------------
# Attention structure, shown by perturbation
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", LM_KINDS)
@pytest.mark.parametrize("time", [0, 1])
def test_a_code_at_time_t_plus_1_changes_nothing_at_or_before_time_t(kind, time):
    model = build_model(kind)
    codes = random_codes(2, seed=4)
    changed = codes.clone()
    changed[0, (time + 1) * R] = (changed[0, (time + 1) * R] + 1) % CODES  # ROI 0 at time t+1 of block 0
    difference = moved(hidden(model, SEQUENCE, codes), hidden(model, SEQUENCE, changed))
    block0 = difference[FIRST : FIRST + N].reshape(T_PATCHES, R)
    assert not bool(block0[: time + 1].any()), "a token at time <= t saw time t+1"
    assert bool(block0[time + 1].all()), "every ROI of time t+1 sees the changed token (bidirectional in a patch)"
    assert bool(block0[time + 1 :].all())
    assert not bool(difference[:FIRST].any())  # text before and <fmri_start>
    assert not bool(difference[SECOND - 1 : SECOND + N].any()), "block 1 saw block 0"
    assert bool(difference[MIDDLE_AT:].sum() > 0) and bool(difference[-len(SUFFIX) :].all()), "text after the block"


@pytest.mark.parametrize("kind", LM_KINDS)
def test_blocks_do_not_see_each_other(kind):
    model = build_model(kind)
    codes = random_codes(2, seed=5)
    changed = codes.clone()
    changed[1] = (changed[1] + 1) % CODES  # all of block 1
    difference = moved(hidden(model, SEQUENCE, codes), hidden(model, SEQUENCE, changed))
    assert not bool(difference[: SECOND - 1].any())
    assert bool(difference[SECOND : SECOND + N].all())


@pytest.mark.parametrize("kind", LM_KINDS)
def test_fmri_tokens_do_not_see_text_and_start_sees_only_itself(kind):
    model = build_model(kind)
    codes = random_codes(2, seed=6)
    edited = list(SEQUENCE)
    edited[0] = (edited[0] + 1) % TEXT_VOCAB  # the first text token, before both blocks
    edited[MIDDLE_AT] = (edited[MIDDLE_AT] + 1) % TEXT_VOCAB  # text between the blocks
    difference = moved(hidden(model, SEQUENCE, codes), hidden(model, edited, codes))
    assert not bool(difference[FIRST - 1 : FIRST + N].any())  # <fmri_start> and block 0
    assert not bool(difference[SECOND - 1 : SECOND + N].any())  # <fmri_start> and block 1
    assert bool(difference[1 : FIRST - 1].all()) and bool(difference[MIDDLE_AT : SECOND - 1].all())


@pytest.mark.parametrize("kind", LM_KINDS)
def test_text_does_not_see_later_text(kind):
    model = build_model(kind)
    codes = random_codes(2, seed=7)
    edited = list(SEQUENCE)
    edited[-1] = (edited[-1] + 1) % TEXT_VOCAB
    difference = moved(hidden(model, SEQUENCE, codes), hidden(model, edited, codes))
    assert difference.nonzero().flatten().tolist() == [len(SEQUENCE) - 1]


@pytest.mark.parametrize("kind", LM_KINDS)
def test_text_sees_every_fmri_token(kind):
    model = build_model(kind)
    codes = random_codes(2, seed=8)
    reference = hidden(model, SEQUENCE, codes)
    for k in range(N):
        changed = codes.clone()
        changed[0, k] = (changed[0, k] + 1) % CODES
        difference = moved(reference, hidden(model, SEQUENCE, changed))
        assert bool(difference[FIRST + N]), f"<fmri_end> does not see placeholder {k}"
        later_text = torch.cat([difference[MIDDLE_AT : SECOND - 1], difference[SECOND + N :]])
        assert bool(later_text.all()), f"later text does not see placeholder {k}"


@pytest.mark.parametrize("kind", LM_KINDS)
def test_padding_changes_nothing(kind):
    model = build_model(kind)
    codes = random_codes(2, seed=9)
    alone = model(torch.tensor([SEQUENCE]), fmri_codes=codes)
    length = len(SEQUENCE)
    for side in ("left", "right"):
        for filler in (PAD_ID, 17):
            pad = [filler] * 4
            ids = torch.tensor([pad + SEQUENCE if side == "left" else SEQUENCE + pad])
            mask = torch.tensor([[0] * 4 + [1] * length if side == "left" else [1] * length + [0] * 4])
            out = model(ids, attention_mask=mask, fmri_codes=codes)
            real = mask[0].bool()
            torch.testing.assert_close(out.logits[0, real], alone.logits[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(out.fmri_logits[0, real], alone.fmri_logits[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", LM_KINDS)
def test_a_batch_equals_its_sequences_one_at_a_time(kind):
    model = build_model(kind)
    short = text_ids(2, 10) + BLOCK + text_ids(5, 11)
    ids, mask = left_padded([SEQUENCE, short])
    codes = random_codes(3, seed=12)  # rows 0-1: SEQUENCE's blocks, row 2: short's block
    batch = model(ids, attention_mask=mask, fmri_codes=codes)
    for row, (sequence, rows) in enumerate([(SEQUENCE, codes[:2]), (short, codes[2:])]):
        single = model(torch.tensor([sequence]), fmri_codes=rows)
        real = mask[row].bool()
        torch.testing.assert_close(batch.logits[row, real], single.logits[0], atol=1e-5, rtol=1e-5)


def test_padded_time_patches_get_zero_input_and_are_never_keys():
    model = build_model("llama")
    codes = random_codes(1, seed=13)
    codes[0, 2 * R :] = PAD_CODE  # the last time patch is padding
    embeddings = model.fmri_embeddings(codes)
    assert bool((embeddings[0, 2 * R :] == 0).all()) and bool((embeddings[0, : 2 * R] != 0).any())
    ids = torch.tensor([PREFIX + BLOCK + SUFFIX])
    mask = model.fmri_attention_mask(ids, fmri_codes=codes)[0, 0]
    padded_keys = torch.arange(FIRST + 2 * R, FIRST + N)
    assert bool((mask[:, padded_keys] == torch.finfo(torch.float32).min).all())
    without = model.fmri_attention_mask(ids)[0, 0]
    assert bool((without[-1, padded_keys] == 0).all())  # without codes they would be keys of the text


# --------------------------------------------------------------------------------------------------
# Position ids
# --------------------------------------------------------------------------------------------------


def test_position_ids_share_one_per_time_patch_with_left_padding_and_two_blocks():
    model = build_model("gpt2")
    ids, mask = left_padded([SEQUENCE, PREFIX + BLOCK + SUFFIX])
    positions = model.fmri_position_ids(ids, mask)
    prefix = [0, 1, 2, 3]  # PREFIX and <fmri_start>
    block = [4, 4, 4, 5, 5, 5, 6, 6, 6]
    first = prefix + block + [7, 8, 9, 10, 11] + [12] * 3 + [13] * 3 + [14] * 3 + [15, 16, 17, 18]
    pad = len(SEQUENCE) - len(PREFIX + BLOCK + SUFFIX)
    second = [0] * pad + prefix + block + [7, 8, 9, 10]
    assert positions.tolist() == [first, second]


@pytest.mark.parametrize("kind", LM_KINDS)
def test_forward_uses_the_fmri_position_ids(kind):
    model = build_model(kind)
    ids, codes = torch.tensor([SEQUENCE]), random_codes(2, seed=14)
    implicit = model(ids, fmri_codes=codes).logits
    explicit = model(ids, fmri_codes=codes, position_ids=model.fmri_position_ids(ids)).logits
    assert torch.equal(implicit, explicit)
    shifted = model(ids, fmri_codes=codes, position_ids=torch.arange(len(SEQUENCE))[None]).logits
    assert not torch.allclose(implicit, shifted)


# --------------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------------


def test_f2f_predicts_the_same_roi_at_the_next_time_patch_ignoring_the_last_patch_and_padding():
    model = build_model("qwen3")
    ids, mask = left_padded([SEQUENCE, PREFIX + BLOCK + SUFFIX])
    codes = random_codes(3, seed=15)
    codes[2, 2 * R :] = PAD_CODE  # block 2 has a padded last patch
    labels = torch.full_like(ids, IGNORE_INDEX)
    out = model(ids, attention_mask=mask, fmri_codes=codes, labels=labels)
    terms = []
    # (row, position of the block's first placeholder, row of fmri_codes), in reading order
    placements = [(0, FIRST, 0), (0, SECOND, 1), (1, FIRST + ids.shape[1] - len(PREFIX + BLOCK + SUFFIX), 2)]
    for row, start, block in placements:
        for k in range(N - R):  # ROI r at time t -> ROI r at time t+1
            source, target = codes[block, k], codes[block, k + R]
            if source == PAD_CODE or target == PAD_CODE:
                continue
            terms.append(F.cross_entropy(out.fmri_logits[row, start + k][None], target[None]))
    assert len(terms) == 3 * (N - R) - R
    torch.testing.assert_close(out.f2f_loss, torch.stack(terms).mean())
    assert out.f2t_loss.item() == 0.0  # nothing labelled
    torch.testing.assert_close(out.loss, model.config.f2f_weight * out.f2f_loss)


def test_f2f_is_zero_without_a_next_time_patch():
    language_model = tiny_causal_lm("llama", TEXT_VOCAB + 3)
    config = FmriLMConfig(
        text_config=language_model.config, n_rois=R, n_time_patches=1, codebook_size=CODES, codebook_dim=8,
        fmri_token_id=FMRI, fmri_start_token_id=START, fmri_end_token_id=END,
    )  # fmt: skip
    model = FmriLMForCausalLM(config, language_model=language_model)
    ids = torch.tensor([[7, START] + [FMRI] * R + [END, 9]])
    out = model(ids, fmri_codes=torch.zeros(1, R, dtype=torch.long), labels=ids)
    assert out.f2f_loss.item() == 0.0 and torch.isfinite(out.loss)


@pytest.mark.parametrize("kind", LM_KINDS)
def test_f2t_counts_only_the_labelled_tokens(kind):
    model = build_model(kind, f2t_weight=0.7, f2f_weight=0.2)
    target = text_ids(4, 16) + [2]  # descriptor tokens + EOS
    row = PREFIX + BLOCK + MIDDLE + target
    ids = torch.tensor([row])
    labels = torch.tensor([[IGNORE_INDEX] * (len(row) - len(target)) + target])
    codes = random_codes(1, seed=17)
    out = model(ids, fmri_codes=codes, labels=labels)
    first_target = len(row) - len(target)
    manual = F.cross_entropy(out.logits[0, first_target - 1 : -1], torch.tensor(target))
    torch.testing.assert_close(out.f2t_loss, manual)
    torch.testing.assert_close(out.loss, 0.7 * out.f2t_loss + 0.2 * out.f2f_loss)
    # Labels on the fMRI special tokens never count, even when the caller labels everything.
    everything = model(ids, fmri_codes=codes, labels=ids)
    counted = [i for i in range(1, len(row)) if row[i] not in (FMRI, START, END)]
    manual_all = F.cross_entropy(everything.logits[0, [i - 1 for i in counted]], ids[0, counted])
    torch.testing.assert_close(everything.f2t_loss, manual_all)


@pytest.mark.parametrize("kind", LM_KINDS)
def test_text_only_batch_gives_t2t_and_equals_the_wrapped_language_model(kind):
    model = build_model(kind)
    ids = torch.tensor([text_ids(12, 18), text_ids(12, 19)])
    labels = ids.clone()
    labels[:, :3] = IGNORE_INDEX
    out = model(ids, labels=labels)
    assert out.f2t_loss is None and out.f2f_loss is None and out.fmri_logits is None
    bare = model.language_model(ids).logits
    torch.testing.assert_close(out.logits, bare)
    manual = F.cross_entropy(bare[:, 2:-1].reshape(-1, bare.shape[-1]), ids[:, 3:].reshape(-1))
    torch.testing.assert_close(out.t2t_loss, manual)
    torch.testing.assert_close(out.loss, model.config.t2t_weight * manual)
    assert isinstance(out, FmriLMOutput)


def test_losses_backpropagate_into_the_fmri_modules_and_the_language_model():
    model = build_model("llama").train()
    ids = torch.tensor([SEQUENCE])
    out = model(ids, fmri_codes=random_codes(2, seed=20), labels=ids)
    out.loss.backward()
    for name in ("fmri_embed.weight", "roi_embed.weight", "fmri_head.weight"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name
    assert model.get_input_embeddings().weight.grad.abs().sum() > 0


def test_a_cached_decode_step_equals_the_full_forward_and_accepts_the_old_cache_name():
    model = build_model("llama")
    codes = random_codes(2, seed=35)
    extended = torch.tensor([SEQUENCE + [7]])
    full = model(extended, fmri_codes=codes).logits[:, -1]
    position = model.fmri_position_ids(extended)[:, -1:]
    mask = torch.ones_like(extended)
    for name in ("cache", "past_key_values"):
        prefill = model(torch.tensor([SEQUENCE]), fmri_codes=codes, use_cache=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step = model(torch.tensor([[7]]), attention_mask=mask, position_ids=position, **{name: prefill.cache})
        assert any("past_key_values" in str(w.message) for w in caught) == (name == "past_key_values")
        torch.testing.assert_close(step.logits[:, -1], full, atol=1e-5, rtol=1e-5)
    as_tuple = model(extended, fmri_codes=codes, return_dict=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0][:, -1], full)


# --------------------------------------------------------------------------------------------------
# Attention implementations, gradient checkpointing, dtype
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", LM_KINDS)
def test_eager_and_sdpa_give_the_same_outputs(kind):
    sdpa = build_model(kind, "sdpa")
    eager = copy.deepcopy(sdpa)
    eager.set_attn_implementation("eager")
    assert eager.language_model.config._attn_implementation == "eager"
    ids, mask = left_padded([SEQUENCE, PREFIX + BLOCK + SUFFIX])
    codes = random_codes(3, seed=21)
    a = sdpa(ids, attention_mask=mask, fmri_codes=codes)
    b = eager(ids, attention_mask=mask, fmri_codes=codes)
    real = mask.bool()
    torch.testing.assert_close(a.logits[real], b.logits[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.fmri_logits[real], b.fmri_logits[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", LM_KINDS)
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(kind):
    plain = build_model(kind).train()
    for module in plain.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    checkpointed = copy.deepcopy(plain)
    checkpointed.activation_checkpointing_enable()
    assert any(getattr(m, "gradient_checkpointing", False) for m in checkpointed.language_model.modules())
    ids, mask = left_padded([SEQUENCE, PREFIX + BLOCK + SUFFIX])
    codes = random_codes(3, seed=22)
    losses = []
    for model in (plain, checkpointed):
        out = model(ids, attention_mask=mask, fmri_codes=codes, labels=ids.masked_fill(mask == 0, IGNORE_INDEX))
        out.loss.backward()
        losses.append(out.loss.detach())
    torch.testing.assert_close(losses[0], losses[1])
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters()):
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_bfloat16_forward_is_finite():
    model = build_model("qwen3").to(torch.bfloat16)
    ids, mask = left_padded([SEQUENCE, PREFIX + BLOCK + SUFFIX])
    out = model(ids, attention_mask=mask, fmri_codes=random_codes(3, seed=23), labels=ids.masked_fill(mask == 0, -100))
    real = mask.bool()
    assert bool(torch.isfinite(out.logits[real]).all()) and bool(torch.isfinite(out.loss))


# --------------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------------

GREEDY = dict(max_new_tokens=6, do_sample=False, return_dict_in_generate=True, output_scores=True)


def assert_same_scores(first, second, row_first: int = 0, row_second: int = 0):
    for a, b in zip(first.scores, second.scores):
        a, b = a[row_first], b[row_second]
        assert torch.equal(torch.isfinite(a), torch.isfinite(b))
        torch.testing.assert_close(a[torch.isfinite(a)], b[torch.isfinite(b)], atol=1e-4, rtol=1e-4)


def manual_greedy(model: FmriLMForCausalLM, ids: torch.Tensor, codes: torch.Tensor, steps: int) -> torch.Tensor:
    """Greedy decoding by full recompute: every step runs the whole sequence with the 4-D fMRI mask."""
    suppressed = torch.tensor(model.generation_config.suppress_tokens)
    with torch.no_grad():
        for _ in range(steps):
            logits = model(ids, fmri_codes=codes).logits[:, -1]
            logits[:, suppressed] = -torch.inf
            ids = torch.cat([ids, logits.argmax(dim=-1, keepdim=True)], dim=1)
    return ids


@pytest.mark.parametrize("kind", LM_KINDS)
def test_greedy_generation_is_the_same_with_and_without_cache_and_equals_full_recompute(kind):
    model = build_model(kind)
    ids = torch.tensor([SEQUENCE])
    codes = random_codes(2, seed=24)
    cached = model.generate(ids, attention_mask=torch.ones_like(ids), fmri_codes=codes, **GREEDY)
    recomputed = model.generate(ids, attention_mask=torch.ones_like(ids), fmri_codes=codes, use_cache=False, **GREEDY)
    assert torch.equal(cached.sequences, recomputed.sequences)
    assert_same_scores(cached, recomputed)
    assert torch.equal(cached.sequences, manual_greedy(model, ids, codes, GREEDY["max_new_tokens"]))
    generated = cached.sequences[0, len(SEQUENCE) :]
    assert not bool(torch.isin(generated, torch.tensor([FMRI, START, END])).any())


@pytest.mark.parametrize("kind", LM_KINDS)
def test_left_padded_batch_generates_what_each_item_generates_alone(kind):
    model = build_model(kind)
    short = text_ids(2, 25) + BLOCK + text_ids(1, 26)
    codes = random_codes(3, seed=27)
    ids, mask = left_padded([SEQUENCE, short])
    batch = model.generate(ids, attention_mask=mask, fmri_codes=codes, **GREEDY)
    # Other padding ids change nothing: generated tokens never attend to padding (SPEC B17).
    other_padding = model.generate(ids.masked_fill(mask == 0, 42), attention_mask=mask, fmri_codes=codes, **GREEDY)
    width = ids.shape[1]
    assert torch.equal(batch.sequences[:, width:], other_padding.sequences[:, width:])
    assert_same_scores(batch, other_padding, row_first=1, row_second=1)
    for row, (sequence, rows) in enumerate([(SEQUENCE, codes[:2]), (short, codes[2:])]):
        single_ids = torch.tensor([sequence])
        single = model.generate(single_ids, attention_mask=torch.ones_like(single_ids), fmri_codes=rows, **GREEDY)
        assert torch.equal(batch.sequences[row, width:], single.sequences[0, len(sequence) :])
        assert_same_scores(batch, single, row_first=row)


def test_beam_search_repeats_the_code_rows_of_each_sequence():
    model = build_model("llama")
    short = text_ids(2, 28) + BLOCK + text_ids(1, 29)
    codes = random_codes(3, seed=30)
    ids, mask = left_padded([SEQUENCE, short])
    options = dict(max_new_tokens=4, do_sample=False, num_beams=2, num_return_sequences=2)
    batch = model.generate(ids, attention_mask=mask, fmri_codes=codes, **options)
    width = ids.shape[1]
    for row, (sequence, rows) in enumerate([(SEQUENCE, codes[:2]), (short, codes[2:])]):
        single_ids = torch.tensor([sequence])
        single = model.generate(single_ids, attention_mask=torch.ones_like(single_ids), fmri_codes=rows, **options)
        assert torch.equal(batch[2 * row : 2 * row + 2, width:], single[:, len(sequence) :])


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------


def test_count_and_range_errors_are_explicit():
    model = build_model("gpt2")
    ids = torch.tensor([SEQUENCE])
    codes = random_codes(2, seed=31)
    with pytest.raises(ValueError, match="2 fMRI block.* but fmri_codes has 1 row"):
        model(ids, fmri_codes=codes[:1])
    with pytest.raises(ValueError, match="no fmri_codes were given"):
        model(ids)
    with pytest.raises(ValueError, match="no '<fmri>' placeholders"):
        model(torch.tensor([PREFIX]), fmri_codes=codes)
    with pytest.raises(ValueError, match=rf"must lie in \[0, {CODES}\).*\[-3, "):
        model(ids, fmri_codes=codes.masked_fill(codes == codes[0, 0], -3))
    with pytest.raises(ValueError, match=rf"must lie in \[0, {CODES}\)"):
        model(ids, fmri_codes=codes + CODES)
    with pytest.raises(ValueError, match="integer codes"):
        model(ids, fmri_codes=codes.float())
    with pytest.raises(ValueError, match=rf"\(S, {N}\)"):
        model(ids, fmri_codes=codes[:, :-1])
    with pytest.raises(ValueError, match=f"has {N - 1} '<fmri>' placeholders"):
        model(torch.tensor([PREFIX + [START] + [FMRI] * (N - 1) + [END]]), fmri_codes=codes[:1, :])


def test_other_bad_inputs_are_refused():
    model = build_model("llama")
    ids = torch.tensor([SEQUENCE])
    codes = random_codes(2, seed=32)
    with pytest.raises(ValueError, match="2-D padding mask"):
        model(ids, attention_mask=model.fmri_attention_mask(ids), fmri_codes=codes)
    with pytest.raises(ValueError, match="only 1 .* and 0"):
        model(ids, attention_mask=torch.full_like(ids, 2), fmri_codes=codes)
    with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds"):
        model(ids, inputs_embeds=torch.zeros(1, len(SEQUENCE), 32))
    with pytest.raises(ValueError, match="labels must be shaped like input_ids"):
        model(ids, fmri_codes=codes, labels=ids[:, 1:])
    with pytest.raises(ValueError, match="labels must be token ids"):
        model(ids, fmri_codes=codes, labels=ids.masked_fill(ids == FMRI, 10_000))
    with pytest.raises(ValueError, match="logits_to_keep"):
        model(ids, fmri_codes=codes, labels=ids, logits_to_keep=1)
    prefill = model(ids, fmri_codes=codes, use_cache=True)
    step = torch.tensor([[7]])
    mask = torch.ones(1, len(SEQUENCE) + 1, dtype=torch.long)
    with pytest.raises(ValueError, match="prefill only"):
        model(step, attention_mask=mask, fmri_codes=codes, cache=prefill.cache, position_ids=torch.tensor([[19]]))
    with pytest.raises(ValueError, match="position_ids are required"):
        model(step, attention_mask=mask, cache=prefill.cache)
    with pytest.raises(ValueError, match="fMRI special tokens"):
        model(torch.tensor([[FMRI]]), attention_mask=mask, cache=prefill.cache, position_ids=torch.tensor([[19]]))
    model.language_model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="ignores the 4-D fMRI attention mask"):
        model(ids, fmri_codes=codes)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"n_rois": 0}, "n_rois must be a positive integer"),
        ({"codebook_size": 2.5}, "codebook_size must be a positive integer"),
        ({"f2f_weight": -1.0}, "loss weight"),
        ({"t2t_weight": float("nan")}, "loss weight"),
        ({"fmri_token_id": None}, "all of"),
        ({"fmri_end_token_id": FMRI}, "three different ids"),
        ({"fmri_end_token_id": 10_000}, "do not fit"),
    ],
)
def test_invalid_config_settings_are_refused_with_value_errors(overrides, message):
    settings = dict(
        text_config=tiny_causal_lm("llama", TEXT_VOCAB + 3).config, n_rois=R, n_time_patches=T_PATCHES,
        codebook_size=CODES, codebook_dim=8, fmri_token_id=FMRI, fmri_start_token_id=START, fmri_end_token_id=END,
    )  # fmt: skip
    with pytest.raises(ValueError, match=message):
        FmriLMConfig(**{**settings, **overrides})


def test_config_defaults_and_round_trip():
    config = FmriLMConfig()
    assert config.text_config.model_type == "gpt2" and config.num_fmri_tokens == 4500
    assert (config.f2t_weight, config.f2f_weight, config.t2t_weight) == (1.0, 0.1, 0.5)
    assert not config.has_fmri_tokens
    model = build_model("qwen3")
    restored = FmriLMConfig.from_dict(model.config.to_dict())
    assert restored.text_config.model_type == "qwen3" and restored.fmri_token_id == FMRI
    assert restored.num_fmri_tokens == N


# --------------------------------------------------------------------------------------------------
# Save / load, remote code
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", LM_KINDS)
def test_save_and_load_in_process_keeps_weights_ties_and_generation_config(kind, tmp_path):
    model = build_model(kind)
    model.save_pretrained(tmp_path)
    loaded = FmriLMForCausalLM.from_pretrained(tmp_path).eval()
    for key, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert (loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight) == tied
    assert loaded.generation_config.suppress_tokens == [FMRI, START, END]
    ids, codes = torch.tensor([SEQUENCE]), random_codes(2, seed=33)
    assert torch.equal(loaded(ids, fmri_codes=codes).logits, model(ids, fmri_codes=codes).logits)


_LOAD_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch

    folders, inputs_path = sys.argv[1:-1], sys.argv[-1]
    inputs = torch.load(inputs_path)

    class BlockFmrilm:
        '''Make `import fmrilm` fail, to prove the saved folders are self-contained remote code.'''
        def find_spec(self, name, path=None, target=None):
            if name == "fmrilm" or name.startswith("fmrilm."):
                raise ImportError(f"{name} is blocked in this test")

    def run(model):
        with torch.no_grad():
            out = model(inputs["ids"], fmri_codes=inputs["codes"])
            generated = model.generate(inputs["ids"], attention_mask=torch.ones_like(inputs["ids"]),
                                       fmri_codes=inputs["codes"], max_new_tokens=4, do_sample=False)
        return {"logits": out.logits.tolist(), "fmri_logits": out.fmri_logits.tolist(), "generated": generated.tolist()}

    sys.meta_path.insert(0, BlockFmrilm())
    from transformers import AutoModel, AutoModelForCausalLM
    results = {}
    for folder in folders:
        remote = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
        also = AutoModel.from_pretrained(folder, trust_remote_code=True)
        assert type(also).__name__ == "FmriLMForCausalLM"
        results[folder] = {"remote": run(remote), "remote_module": type(remote).__module__}
    assert "fmrilm" not in sys.modules
    sys.meta_path.pop(0)

    import fmrilm
    from fmrilm.configuration_fmrilm import FmriLMConfig
    from fmrilm.modeling_fmrilm import FmriLMForCausalLM
    from transformers import AutoConfig
    AutoConfig.register("fmri_lm", FmriLMConfig, exist_ok=True)
    AutoModelForCausalLM.register(FmriLMConfig, FmriLMForCausalLM, exist_ok=True)
    for folder in folders:
        local = AutoModelForCausalLM.from_pretrained(folder).eval()
        results[folder]["local_class"] = type(local).__module__ + "." + type(local).__name__
        results[folder]["local"] = run(local)
    print(json.dumps(results))
    """
)


def test_logits_identical_after_loading_in_a_new_process_and_as_remote_code(tmp_path):
    ids, codes = torch.tensor([SEQUENCE]), random_codes(2, seed=34)
    expected, folders = {}, []
    for kind in LM_KINDS:
        model = build_model(kind)
        model.generation_config.eos_token_id = None
        folder = tmp_path / kind
        model.save_pretrained(folder)
        saved = json.loads((folder / "config.json").read_text())
        assert saved["auto_map"] == {
            "AutoModel": "modeling_fmrilm.FmriLMForCausalLM",
            "AutoConfig": "configuration_fmrilm.FmriLMConfig",
            "AutoModelForCausalLM": "modeling_fmrilm.FmriLMForCausalLM",
        }
        for name in ("configuration_fmrilm.py", "modeling_fmrilm.py", "masking_fmrilm.py"):
            assert (folder / name).is_file(), name
        with torch.no_grad():
            out = model(ids, fmri_codes=codes)
            generated = model.generate(ids, attention_mask=torch.ones_like(ids), fmri_codes=codes, max_new_tokens=4)
        expected[str(folder)] = (out.logits, out.fmri_logits, generated)
        folders.append(str(folder))
    torch.save({"ids": ids, "codes": codes}, tmp_path / "inputs.pt")
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, "-c", _LOAD_SCRIPT, *folders, str(tmp_path / "inputs.pt")],
        capture_output=True, text=True, env=environment, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    for folder, (logits, fmri_logits, generated) in expected.items():
        entry = loaded[folder]
        assert entry["remote_module"].startswith("transformers_modules.")
        assert entry["local_class"] == "fmrilm.modeling_fmrilm.FmriLMForCausalLM"
        for source in ("remote", "local"):
            torch.testing.assert_close(torch.tensor(entry[source]["logits"]), logits, atol=1e-6, rtol=1e-6)
            torch.testing.assert_close(torch.tensor(entry[source]["fmri_logits"]), fmri_logits, atol=1e-6, rtol=1e-6)
            assert entry[source]["generated"] == generated.tolist()


# --------------------------------------------------------------------------------------------------
# from_text_model with a real processor
# --------------------------------------------------------------------------------------------------


def tiny_processor():
    from fmrilm import FmriFeatureExtractor, FmriTokenizerConfig
    from fmrilm.modeling_fmri_tokenizer import FmriTokenizerModel
    from fmrilm.processing_fmrilm import FmriLMProcessor

    config = FmriTokenizerConfig.preset("tiny", n_rois=4, max_timepoints=24, patch_size=8, codebook_dim=16)
    torch.manual_seed(0)
    fmri_tokenizer = FmriTokenizerModel(config).eval()
    feature_extractor = FmriFeatureExtractor(n_rois=4, max_timepoints=24, patch_size=8)
    return FmriLMProcessor(
        feature_extractor=feature_extractor, tokenizer=tiny_tokenizer(), fmri_tokenizer=fmri_tokenizer
    )


@pytest.mark.parametrize("kind", LM_KINDS)
def test_from_text_model_adds_tokens_resizes_and_projects_the_codebook(kind):
    processor = tiny_processor()
    vocabulary = len(processor.tokenizer)
    language_model = tiny_causal_lm(kind, vocabulary)
    before = {name: tensor.clone() for name, tensor in language_model.state_dict().items()}
    word_norm = before[_embedding_key(language_model)].norm(dim=1).mean()

    model = FmriLMForCausalLM.from_text_model(language_model, processor, f2f_weight=0.3)

    tokenizer = processor.tokenizer
    ids = [tokenizer.convert_tokens_to_ids(token) for token in ("<fmri>", "<fmri_start>", "<fmri_end>")]
    assert len(tokenizer) == vocabulary + 3 and sorted(ids) == list(range(vocabulary, vocabulary + 3))
    config = model.config
    assert [config.fmri_token_id, config.fmri_start_token_id, config.fmri_end_token_id] == ids
    assert (config.n_rois, config.n_time_patches, config.codebook_size, config.codebook_dim) == (4, 3, 64, 16)
    assert config.f2f_weight == 0.3 and config.text_config.vocab_size == vocabulary + 3
    assert model.get_input_embeddings().weight.shape[0] == vocabulary + 3
    assert model.get_output_embeddings().weight.shape[0] == vocabulary + 3
    assert model.language_model is language_model
    for name, tensor in language_model.state_dict().items():  # the LM's weights are kept (new rows only added)
        assert torch.equal(tensor[: before[name].shape[0]], before[name]), name

    codebook = processor.fmri_tokenizer.quantizer.codebook.double()
    embedded = model.fmri_embed.weight.double()
    scale = word_norm.double() / codebook.norm(dim=1).mean()
    torch.testing.assert_close(embedded @ embedded.T, scale**2 * codebook @ codebook.T, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(embedded.norm(dim=1).mean(), word_norm.double(), atol=1e-4, rtol=1e-4)
    assert set(ids) <= set(model.generation_config.suppress_tokens)

    again = processor.add_fmri_special_tokens()  # idempotent: nothing new to add
    assert sorted(again.values()) == sorted(ids) and len(tokenizer) == vocabulary + 3


def _embedding_key(language_model) -> str:
    weight = language_model.get_input_embeddings().weight
    return next(name for name, tensor in language_model.state_dict(keep_vars=True).items() if tensor is weight)


def test_from_text_model_reads_a_saved_language_model_and_runs_processor_outputs(tmp_path):
    processor = tiny_processor()
    tiny_causal_lm("llama", len(processor.tokenizer)).save_pretrained(tmp_path / "lm")
    model = FmriLMForCausalLM.from_text_model(str(tmp_path / "lm"), processor).eval()
    codes = torch.randint(0, 64, (2, processor.num_fmri_tokens), generator=torch.Generator().manual_seed(0))
    codes[1, -4:] = PAD_CODE  # a padded last time patch
    inputs = processor(
        text=["<fmri> Describe the brain activity in this scan.", "Coupling <fmri> is"],
        fmri_codes=codes, text_target=[" Modularity is reduced.", " low"], padding_side="left",
    )  # fmt: skip
    out = model(**inputs)
    assert torch.isfinite(out.loss) and out.f2t_loss > 0 and out.f2f_loss > 0
    prompt = processor(text=["<fmri> Describe the brain activity in this scan."], fmri_codes=codes[:1])
    generated = model.generate(**prompt, max_new_tokens=3, do_sample=False)
    assert generated.shape == (1, prompt["input_ids"].shape[1] + 3)


def test_from_text_model_refuses_bad_arguments():
    processor = tiny_processor()
    language_model = tiny_causal_lm("gpt2", len(processor.tokenizer))
    with pytest.raises(ValueError, match="come from the language model"):
        FmriLMForCausalLM.from_text_model(language_model, processor, n_rois=5)
    with pytest.raises(TypeError, match="causal language model"):
        FmriLMForCausalLM.from_text_model(torch.nn.Linear(2, 2), processor)
    processor.fmri_tokenizer = None
    with pytest.raises(ValueError, match="stage-1 fMRI tokenizer"):
        FmriLMForCausalLM.from_text_model(language_model, processor)


def test_projection_of_wider_code_vectors_keeps_the_target_norm():
    torch.manual_seed(0)
    codebook = torch.nn.functional.normalize(torch.randn(10, 64), dim=1)
    projected = projected_codebook(codebook, 16, target_norm=3.0)
    assert projected.shape == (10, 16)
    torch.testing.assert_close(projected.norm(dim=1).mean(), torch.tensor(3.0))
    with pytest.raises(ValueError, match="no non-zero"):
        projected_codebook(torch.zeros(4, 8), 16, target_norm=1.0)
