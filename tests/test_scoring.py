"""Candidate log-likelihoods with one shared prefill, string-level scoring and constrained greedy generation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lm_fixtures import LM_KINDS, tiny_causal_lm, tiny_tokenizer
from scipy.special import softmax

from fmrilm.configuration_fmrilm import FmriLMConfig
from fmrilm.modeling_fmrilm import FmriLMForCausalLM
from fmrilm.scoring_fmrilm import (
    candidate_log_likelihoods,
    constrained_generate,
    score_candidates,
    tokenize_candidates,
)

R, T_PATCHES, CODES = 3, 2, 16
N = R * T_PATCHES
TEXT_VOCAB = 300
FMRI, START, END = TEXT_VOCAB, TEXT_VOCAB + 1, TEXT_VOCAB + 2
BLOCK = [START] + [FMRI] * N + [END]


def build_model(kind: str, seed: int = 0) -> FmriLMForCausalLM:
    language_model = tiny_causal_lm(kind, TEXT_VOCAB + 3, seed=seed)
    config = FmriLMConfig(
        text_config=language_model.config, n_rois=R, n_time_patches=T_PATCHES, codebook_size=CODES, codebook_dim=8,
        fmri_token_id=FMRI, fmri_start_token_id=START, fmri_end_token_id=END,
    )  # fmt: skip
    torch.manual_seed(seed + 1)
    return FmriLMForCausalLM(config, language_model=language_model).eval()


def ids(count: int, seed: int) -> list[int]:
    return torch.randint(5, TEXT_VOCAB, (count,), generator=torch.Generator().manual_seed(seed)).tolist()


def codes(rows: int, seed: int) -> torch.Tensor:
    return torch.randint(0, CODES, (rows, N), generator=torch.Generator().manual_seed(seed))


# Prompts of different lengths; the second holds two scans.
PROMPTS = [ids(2, 1) + BLOCK + ids(4, 2), ids(1, 3) + BLOCK + ids(2, 4) + BLOCK + ids(1, 5), BLOCK + ids(7, 6)]
BLOCKS_PER_PROMPT = [1, 2, 1]
CANDIDATES = [ids(1, 10), ids(3, 11), ids(2, 12), ids(4, 13)]


def left_padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(map(len, rows))
    input_ids = torch.tensor([[0] * (length - len(row)) + row for row in rows])
    mask = torch.tensor([[0] * (length - len(row)) + [1] * len(row) for row in rows])
    return input_ids, mask


def brute_force(model, prompts, prompt_codes, candidates) -> torch.Tensor:
    """One full forward pass over prompt + candidate per pair; sum of the candidate tokens' log-probabilities."""
    scores = torch.zeros(len(prompts), len(candidates), dtype=torch.float64)
    offsets = np.cumsum([0] + BLOCKS_PER_PROMPT)
    for b, prompt in enumerate(prompts):
        for c, candidate in enumerate(candidates):
            with torch.no_grad():
                logits = model(
                    torch.tensor([prompt + candidate]), fmri_codes=prompt_codes[offsets[b] : offsets[b + 1]]
                ).logits[0]
            log_probs = torch.log_softmax(logits.double(), dim=-1)
            scores[b, c] = sum(log_probs[len(prompt) - 1 + j, token] for j, token in enumerate(candidate))
    return scores


@pytest.mark.parametrize("kind", LM_KINDS)
def test_shared_prefill_equals_one_forward_per_candidate(kind):
    model = build_model(kind)
    prompt_codes = codes(4, 0)
    input_ids, mask = left_padded(PROMPTS)
    expected = brute_force(model, PROMPTS, prompt_codes, CANDIDATES)

    got = candidate_log_likelihoods(model, input_ids, mask, prompt_codes, CANDIDATES)
    assert got.shape == (3, 4) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, atol=1e-4, rtol=0)

    lengths = torch.tensor([len(c) for c in CANDIDATES], dtype=torch.float64)
    mean = candidate_log_likelihoods(model, input_ids, mask, prompt_codes, CANDIDATES, normalize="mean")
    torch.testing.assert_close(mean.double(), expected / lengths, atol=1e-4, rtol=0)

    chunked = candidate_log_likelihoods(model, input_ids, mask, prompt_codes, CANDIDATES, candidates_per_pass=3)
    torch.testing.assert_close(chunked, got, atol=1e-5, rtol=0)
    probabilities = softmax(got.numpy().astype(np.float64), axis=1)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-9)


def test_single_token_candidates_and_model_mode_restored():
    model = build_model("llama").train()
    input_ids, mask = left_padded(PROMPTS)
    prompt_codes = codes(4, 1)
    single = [[7], [42], [99]]
    got = candidate_log_likelihoods(model, input_ids, mask, prompt_codes, single)
    assert model.training  # restored
    model.eval()
    torch.testing.assert_close(got.double(), brute_force(model, PROMPTS, prompt_codes, single), atol=1e-4, rtol=0)


def test_bad_arguments_are_refused():
    model = build_model("gpt2")
    input_ids, mask = left_padded(PROMPTS)
    prompt_codes = codes(4, 0)
    with pytest.raises(ValueError, match="LEFT-padded"):
        right = torch.tensor([[1, 1, 0]] * 3)
        candidate_log_likelihoods(model, torch.tensor([[5, 6, 0]] * 3), right, None, [[5]])
    with pytest.raises(ValueError, match="non-empty list"):
        candidate_log_likelihoods(model, input_ids, mask, prompt_codes, [])
    with pytest.raises(ValueError, match="no tokens"):
        candidate_log_likelihoods(model, input_ids, mask, prompt_codes, [[5], []])
    with pytest.raises(ValueError, match="outside"):
        candidate_log_likelihoods(model, input_ids, mask, prompt_codes, [[5], [10_000]])
    with pytest.raises(ValueError, match="normalize"):
        candidate_log_likelihoods(model, input_ids, mask, prompt_codes, [[5]], normalize="max")
    with pytest.raises(ValueError, match="candidates_per_pass"):
        candidate_log_likelihoods(model, input_ids, mask, prompt_codes, [[5]], candidates_per_pass=0)
    with pytest.raises(ValueError, match="fmri_codes"):  # the model's own check: one code row per block
        candidate_log_likelihoods(model, input_ids, mask, prompt_codes[:2], [[5], [6, 7]])
    with pytest.raises(TypeError, match="FmriLMForCausalLM"):
        candidate_log_likelihoods(torch.nn.Linear(2, 2), input_ids, mask, prompt_codes, [[5]])


# --------------------------------------------------------------------------------------------------
# String level, with a real processor
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_and_processor():
    from fmrilm import FmriFeatureExtractor, FmriTokenizerConfig
    from fmrilm.modeling_fmri_tokenizer import FmriTokenizerModel
    from fmrilm.processing_fmrilm import FmriLMProcessor

    config = FmriTokenizerConfig.preset("tiny", n_rois=4, max_timepoints=16, patch_size=8, codebook_dim=16)
    torch.manual_seed(0)
    processor = FmriLMProcessor(
        feature_extractor=FmriFeatureExtractor(n_rois=4, max_timepoints=16, patch_size=8),
        tokenizer=tiny_tokenizer(),
        fmri_tokenizer=FmriTokenizerModel(config).eval(),
    )
    model = FmriLMForCausalLM.from_text_model(tiny_causal_lm("qwen3", len(processor.tokenizer)), processor).eval()
    return model, processor


STRING_PROMPTS = [
    "<fmri>\n### Question: Is the global coupling low or high?\n### Answer:",
    "Scan 1: <fmri>\nScan 2: <fmri>\n### Question: Same subject?\n### Answer:",
    "<fmri>\n### Question: What is the noise level?\n### Answer:",
]


def string_codes(model, rows: int, seed: int) -> np.ndarray:
    generator = np.random.default_rng(seed)
    return generator.integers(0, model.config.codebook_size, (rows, model.config.num_fmri_tokens)).astype(np.int16)


def test_score_candidates_equals_token_level_scoring_and_batches_agree(model_and_processor):
    model, processor = model_and_processor
    prompt_codes = string_codes(model, 4, 0)
    candidates = ["low", "high", "yes", "no", "0.25"]
    scores = score_candidates(model, processor, STRING_PROMPTS, prompt_codes, candidates, batch_size=2)
    assert scores.shape == (3, 5) and scores.dtype == np.float32 and np.isfinite(scores).all()

    inputs = processor(text=STRING_PROMPTS, fmri_codes=prompt_codes, padding_side="left")
    candidate_ids = tokenize_candidates(processor.tokenizer, candidates)
    eos = processor.tokenizer.eos_token_id
    assert all(row[-1] == eos for row in candidate_ids)
    assert candidate_ids[0][:-1] == processor.tokenizer(" low", add_special_tokens=False)["input_ids"]
    direct = candidate_log_likelihoods(
        model, inputs["input_ids"], inputs["attention_mask"], inputs["fmri_codes"], candidate_ids
    )
    np.testing.assert_allclose(scores, direct.numpy(), atol=1e-4)

    without_eos = score_candidates(model, processor, STRING_PROMPTS, prompt_codes, candidates, append_eos=False)
    assert (without_eos > scores).all()  # one token fewer, each with log-probability < 0


def test_score_candidates_refuses_bad_inputs(model_and_processor):
    model, processor = model_and_processor
    prompt_codes = string_codes(model, 4, 0)
    with pytest.raises(ValueError, match="4 '<fmri>' marker"):
        score_candidates(model, processor, STRING_PROMPTS, prompt_codes[:3], ["low", "high"])
    with pytest.raises(ValueError, match="distinct"):
        score_candidates(model, processor, STRING_PROMPTS, prompt_codes, ["low", "low"])
    with pytest.raises(ValueError, match="non-empty string"):
        score_candidates(model, processor, STRING_PROMPTS, prompt_codes, ["low", " "])
    with pytest.raises(ValueError, match="non-empty list of answer"):
        score_candidates(model, processor, STRING_PROMPTS, prompt_codes, [])
    with pytest.raises(ValueError, match="prompts"):
        score_candidates(model, processor, [], prompt_codes, ["low"])
    with pytest.raises(ValueError, match="batch_size"):
        score_candidates(model, processor, STRING_PROMPTS, prompt_codes, ["low"], batch_size=0)


def test_constrained_generation_returns_candidates_and_matches_argmax_for_single_tokens(model_and_processor):
    model, processor = model_and_processor
    tokenizer = processor.tokenizer
    prompt_codes = string_codes(model, 4, 1)
    # Multi-token candidates, one a prefix of another: the answer is always one of them.
    candidates = ["low", "low coupling", "high", "noise level 3"]
    answers = constrained_generate(model, processor, STRING_PROMPTS, prompt_codes, candidates, batch_size=2)
    assert len(answers) == 3 and set(answers) <= set(candidates)

    # The tiny BPE writes " 0" .. " 9" as the space token then one digit token: the candidates differ in one
    # token after a shared one, so greedy choice = argmax of the log-likelihoods (without EOS).
    single = [str(digit) for digit in range(10)]
    encoded = [tokenizer(" " + word, add_special_tokens=False)["input_ids"] for word in single]
    assert all(len(row) == 2 and row[0] == encoded[0][0] for row in encoded)
    for seed in range(3):
        seeded_codes = string_codes(model, 4, 10 + seed)
        scores = score_candidates(model, processor, STRING_PROMPTS, seeded_codes, single, append_eos=False)
        generated = constrained_generate(model, processor, STRING_PROMPTS, seeded_codes, single)
        assert generated == [single[i] for i in scores.argmax(axis=1)]


def test_constrained_generation_refuses_bad_settings(model_and_processor):
    model, processor = model_and_processor
    prompt_codes = string_codes(model, 4, 0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        constrained_generate(model, processor, STRING_PROMPTS, prompt_codes, ["noise level 3"], max_new_tokens=1)
    with pytest.raises(ValueError, match="distinct"):
        constrained_generate(model, processor, STRING_PROMPTS, prompt_codes, ["low", "low"])
