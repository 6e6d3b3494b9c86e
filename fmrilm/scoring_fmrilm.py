"""Scoring answers of an ``FmriLMForCausalLM``: candidate log-likelihoods and constrained greedy generation.

Zero-shot classification (SPEC B13) compares the log-likelihood of each candidate answer given the
prompt, so that every class gets a probability (a real AUROC) and nothing is sampled.

:func:`candidate_log_likelihoods` runs ONE prefill per prompt (the model builds the 4-D fMRI mask
there), then repeats the key/value cache for the C candidates and scores every candidate's tokens in
one continuation pass: exactly what one full forward pass over ``prompt + candidate`` per candidate
gives (the model's own decode-step rules: the 2-D mask with the cache, position ids from
``model.fmri_position_ids`` over the whole sequence). The prefill (the long fMRI part) is paid once
per prompt instead of once per candidate.

:func:`score_candidates` does the same from strings; :func:`constrained_generate` greedily decodes
restricted to a prefix trie of the candidates' token sequences (EOS allowed once a candidate is
complete), so its output is always one of the candidates.

Remote-code safe: imports only torch, numpy, transformers and its remote-code-safe siblings.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
import torch

from .processing_fmrilm import FMRI_TOKEN

__all__ = ["candidate_log_likelihoods", "constrained_generate", "score_candidates", "tokenize_candidates"]

Normalization = Literal["sum", "mean"]


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _fmri_model(model: Any) -> Any:
    """The ``FmriLMForCausalLM`` itself, or the one inside a PEFT wrapper."""
    if hasattr(model, "fmri_position_ids"):
        return model
    get_base = getattr(model, "get_base_model", None)
    if get_base is not None and hasattr(get_base(), "fmri_position_ids"):
        return get_base()
    raise TypeError(f"model must be an FmriLMForCausalLM (or a PEFT model around one), got {type(model).__name__}.")


def _model_device(model: Any) -> torch.device:
    return next(model.parameters()).device


def _checked_normalize(normalize: str) -> str:
    if normalize not in ("sum", "mean"):
        raise ValueError(
            f"normalize must be 'sum' (total log-probability of the candidate's tokens) or 'mean' (per token), "
            f"got {normalize!r}."
        )
    return normalize


def _checked_candidate_ids(candidate_ids: Sequence[Sequence[int]], vocab_size: int) -> list[list[int]]:
    """The candidates as lists of ints; ValueError for none, an empty one or ids outside the vocabulary."""
    if isinstance(candidate_ids, (str, bytes)) or not isinstance(candidate_ids, Sequence) or len(candidate_ids) == 0:
        raise ValueError(
            "candidate_ids must be a non-empty list of token-id lists, one per candidate answer (e.g. from "
            "tokenize_candidates(tokenizer, ['low', 'high']))."
        )
    checked = []
    for index, ids in enumerate(candidate_ids):
        row = [int(i) for i in (ids.tolist() if isinstance(ids, (torch.Tensor, np.ndarray)) else ids)]
        if not row:
            raise ValueError(f"Candidate {index} has no tokens; every candidate answer needs at least one token.")
        if min(row) < 0 or max(row) >= vocab_size:
            raise ValueError(
                f"Candidate {index} has token ids outside [0, {vocab_size}) (the language model's vocabulary): {row}; "
                "tokenize the candidates with the model's own tokenizer."
            )
        checked.append(row)
    return checked


def _checked_prompt_batch(
    input_ids: Any, attention_mask: Any, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) as int64 (B, L) on ``device``; refuses right padding."""
    input_ids = torch.as_tensor(input_ids)
    if input_ids.ndim != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise ValueError(
            f"input_ids must be a non-empty (batch, length) tensor of prompt ids, got {tuple(input_ids.shape)}."
        )
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    attention_mask = torch.as_tensor(attention_mask)
    if tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ValueError(
            f"attention_mask is shaped {tuple(attention_mask.shape)}, expected the shape of input_ids "
            f"{tuple(input_ids.shape)}."
        )
    if not bool((attention_mask[:, -1] == 1).all()):
        rows = (attention_mask[:, -1] != 1).nonzero().flatten().tolist()
        raise ValueError(
            f"Prompts {rows} do not end with a real token: the candidates are appended after the last column, so the "
            "prompts must be LEFT-padded (processor(..., padding_side='left'))."
        )
    return input_ids.to(device=device, dtype=torch.long), attention_mask.to(device=device, dtype=torch.long)


def tokenize_candidates(tokenizer: Any, candidates: Sequence[str], *, append_eos: bool = True) -> list[list[int]]:
    """Token ids of each answer as the model sees it after a prompt: ``" " + text`` (+ EOS).

    The same tokenization as a training target (``processor(text_target=...)``: no special tokens,
    the answer's own leading space, then EOS).
    """
    if isinstance(candidates, str) or len(candidates) == 0:
        raise ValueError("candidates must be a non-empty list of answer strings, e.g. ['Female', 'Male'].")
    for index, text in enumerate(candidates):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"Candidate {index} is {text!r}; every candidate must be a non-empty string.")
    if len(set(candidates)) != len(candidates):
        raise ValueError(f"candidates must be distinct, got {list(candidates)}.")
    eos = tokenizer.eos_token_id
    if append_eos and eos is None:
        raise ValueError("append_eos=True but the tokenizer has no EOS token; set one or pass append_eos=False.")
    encoded = tokenizer([" " + text for text in candidates], add_special_tokens=False)["input_ids"]
    return [list(ids) + ([eos] if append_eos else []) for ids in encoded]


# --------------------------------------------------------------------------------------------------
# Log-likelihoods
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def candidate_log_likelihoods(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    fmri_codes: torch.Tensor | None,
    candidate_ids: Sequence[Sequence[int]],
    *,
    normalize: Normalization = "sum",
    candidates_per_pass: int | None = None,
) -> torch.Tensor:
    """log P(candidate c | prompt b) for every prompt and candidate: float32 (B, C).

    Exactly the sum (``normalize="sum"``) or mean (``"mean"``, per token) over the candidate's
    tokens of the log-softmax of one forward pass over ``prompt + candidate``, computed with one
    prefill per prompt whose key/value cache is repeated for the candidates.

    Args:
        model: an ``FmriLMForCausalLM`` (or a PEFT model around one), in eval mode.
        input_ids: (B, L) LEFT-padded prompts, with their ``<fmri_start> <fmri> x N <fmri_end>`` blocks.
        attention_mask: (B, L) 2-D padding mask (1 real, 0 padding); None means no padding.
        fmri_codes: (S, N) codes, one row per block in reading order (None for text-only prompts).
        candidate_ids: C token-id sequences (lengths may differ), e.g. from :func:`tokenize_candidates`.
        normalize: ``"sum"`` (log-likelihood) or ``"mean"`` (per-token average; length-fair).
        candidates_per_pass: how many candidates share one continuation pass (the repeated cache
            holds B x this many rows); None = all C. Lower it to bound memory.

    Returns:
        float32 (B, C) on the CPU. ``softmax`` over C gives the probability of each candidate.
    """
    _checked_normalize(normalize)
    fmri_model = _fmri_model(model)
    device = _model_device(model)
    vocab_size = fmri_model.get_input_embeddings().weight.shape[0]  # PEFT token wrappers have no num_embeddings
    candidates = _checked_candidate_ids(candidate_ids, vocab_size)
    input_ids, attention_mask = _checked_prompt_batch(input_ids, attention_mask, device)
    if candidates_per_pass is not None and (not isinstance(candidates_per_pass, int) or candidates_per_pass < 1):
        raise ValueError(f"candidates_per_pass must be a positive integer or None, got {candidates_per_pass!r}.")

    batch = input_ids.shape[0]
    count = len(candidates)
    longest = max(map(len, candidates))
    # Right-pad each candidate with its own last token: padding is masked out, and never an fMRI token.
    tokens = torch.tensor([row + [row[-1]] * (longest - len(row)) for row in candidates], device=device)
    real = torch.tensor([[1] * len(row) + [0] * (longest - len(row)) for row in candidates], device=device)

    was_training = model.training
    model.eval()
    try:
        prefill = model(
            input_ids=input_ids, attention_mask=attention_mask, fmri_codes=fmri_codes, use_cache=True, logits_to_keep=1
        )
        first = torch.log_softmax(prefill.logits[:, -1].float(), dim=-1)  # (B, V): the candidates' first tokens
        token_scores = torch.zeros(batch, count, longest, dtype=torch.float32, device=device)
        token_scores[:, :, 0] = first[:, tokens[:, 0]]
        if longest > 1:
            cache = prefill.cache if prefill.cache is not None else prefill.past_key_values
            step = candidates_per_pass or count
            for start in range(0, count, step):
                chunk = slice(start, min(start + step, count))
                # The prefill cache is reused by the next chunk: repeat a copy unless this is the only chunk.
                chunk_cache = cache if step >= count else copy.deepcopy(cache)
                token_scores[:, chunk, 1:] = _continuation_scores(
                    model, fmri_model, chunk_cache, input_ids, attention_mask, tokens[chunk], real[chunk]
                )
    finally:
        model.train(was_training)

    token_scores = token_scores * real[None].float()
    totals = token_scores.sum(dim=-1)
    if normalize == "mean":
        totals = totals / real.sum(dim=1)[None].float()
    return totals.cpu()


def _continuation_scores(
    model: Any,
    fmri_model: Any,
    cache: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    tokens: torch.Tensor,
    real: torch.Tensor,
) -> torch.Tensor:
    """log P(token j | prompt, tokens < j) for j >= 1 of each candidate: (B, c, M - 1).

    ``cache`` (the prompts' prefill) is repeated c times per prompt (in place); the candidates'
    tokens but the last go through one forward pass with the 2-D mask and the position ids that
    the model computes for the whole ``prompt + candidate`` sequences.
    """
    batch, prompt_length = input_ids.shape
    count, longest = tokens.shape
    cache.batch_repeat_interleave(count)
    full_ids = torch.cat([input_ids.repeat_interleave(count, dim=0), tokens.repeat(batch, 1)], dim=1)
    full_mask = torch.cat([attention_mask.repeat_interleave(count, dim=0), real.repeat(batch, 1)], dim=1)
    positions = fmri_model.fmri_position_ids(full_ids, full_mask)
    step_columns = slice(prompt_length, prompt_length + longest - 1)  # feed tokens 0..M-2, predict 1..M-1
    output = model(
        input_ids=full_ids[:, step_columns],
        attention_mask=full_mask[:, : prompt_length + longest - 1],
        position_ids=positions[:, step_columns],
        cache=cache,
        use_cache=True,
    )
    log_probs = torch.log_softmax(output.logits.float(), dim=-1)  # (B*c, M-1, V)
    targets = tokens[:, 1:].repeat(batch, 1)
    picked = log_probs.gather(-1, targets[..., None])[..., 0]
    return picked.reshape(batch, count, longest - 1)


# --------------------------------------------------------------------------------------------------
# From strings
# --------------------------------------------------------------------------------------------------


def _prompt_batches(
    prompts: Sequence[str], fmri_codes: Any, batch_size: int
) -> list[tuple[list[str], torch.Tensor | None]]:
    """Split prompts (and their code rows, reading order) into batches of ``batch_size`` prompts."""
    if isinstance(prompts, str) or len(prompts) == 0 or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompts must be a non-empty list of strings with one '<fmri>' marker per scan.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    markers = [prompt.count(FMRI_TOKEN) for prompt in prompts]
    total = sum(markers)
    codes = None
    if fmri_codes is not None:
        codes = torch.as_tensor(np.asarray(fmri_codes) if not isinstance(fmri_codes, torch.Tensor) else fmri_codes)
        if codes.ndim == 1:
            codes = codes[None]
        if codes.ndim != 2:
            raise ValueError(f"fmri_codes must be shaped (scans, N), got {tuple(codes.shape)}.")
    rows = 0 if codes is None else codes.shape[0]
    if rows != total:
        raise ValueError(
            f"The prompts hold {total} '{FMRI_TOKEN}' marker(s) but fmri_codes has {rows} row(s): pass one row of codes "
            "per marker, in reading order over the prompts."
        )
    offsets = np.concatenate([[0], np.cumsum(markers)])
    batches = []
    for start in range(0, len(prompts), batch_size):
        stop = min(start + batch_size, len(prompts))
        chunk_codes = None if codes is None or total == 0 else codes[offsets[start] : offsets[stop]]
        batches.append((list(prompts[start:stop]), chunk_codes))
    return batches


def _encoded_batches(
    processor: Any, prompts: Sequence[str], fmri_codes: Any, batch_size: int, add_special_tokens: bool
) -> Iterator[Any]:
    """The prompts with their code rows, ``batch_size`` prompts at a time, through the processor (left padding):
    per batch ``input_ids`` and ``attention_mask`` (B, L), and ``fmri_codes`` when the batch holds scans."""
    for prompts_chunk, codes in _prompt_batches(prompts, fmri_codes, batch_size):
        options = {"fmri_codes": codes} if codes is not None and codes.shape[0] else {}
        yield processor(
            text=prompts_chunk, return_tensors="pt", padding=True, padding_side="left",
            add_special_tokens=add_special_tokens, **options,
        )  # fmt: skip


def score_candidates(
    model: Any,
    processor: Any,
    prompts: Sequence[str],
    fmri_codes: Any,
    candidates: Sequence[str],
    *,
    add_special_tokens: bool = True,
    append_eos: bool = True,
    batch_size: int = 8,
    normalize: Normalization = "sum",
    candidates_per_pass: int | None = None,
) -> np.ndarray:
    """Log-likelihood of each candidate answer after each prompt: float32 (B, C).

    Args:
        model: an ``FmriLMForCausalLM`` (or PEFT model around one).
        processor: its ``FmriLMProcessor`` (text tokenizer with the fMRI tokens).
        prompts: B prompt strings, each with its ``<fmri>`` marker(s) (one per scan).
        fmri_codes: (S, N) codes, one row per marker in reading order over the prompts.
        candidates: C answer strings without a leading space (``"Female"``); each is scored as
            ``" " + text`` (+ EOS when ``append_eos``), the form of a training target.
        add_special_tokens: whether the tokenizer adds its special tokens (BOS) to the prompts
            (False for a prompt already rendered by a chat template).
        batch_size: prompts per prefill.
        normalize, candidates_per_pass: see :func:`candidate_log_likelihoods`.

    Returns:
        float32 (B, C); ``scipy.special.softmax(scores, axis=1)`` are the candidates' probabilities.
    """
    _checked_normalize(normalize)
    candidate_ids = tokenize_candidates(processor.tokenizer, candidates, append_eos=append_eos)
    scores = []
    for inputs in _encoded_batches(processor, prompts, fmri_codes, batch_size, add_special_tokens):
        batch_scores = candidate_log_likelihoods(
            model, inputs["input_ids"], inputs["attention_mask"], inputs.get("fmri_codes"), candidate_ids,
            normalize=normalize, candidates_per_pass=candidates_per_pass,
        )  # fmt: skip
        scores.append(batch_scores)
    return torch.cat(scores).numpy().astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Constrained greedy generation
# --------------------------------------------------------------------------------------------------


class _CandidateTrie:
    """Prefix trie of candidate token sequences: which tokens may follow a generated prefix."""

    def __init__(self, sequences: list[list[int]], eos_token_id: int) -> None:
        self.eos_token_id = eos_token_id
        self.children: dict[tuple[int, ...], set[int]] = {}
        self.complete: dict[tuple[int, ...], int] = {}
        for index, sequence in enumerate(sequences):
            for cut in range(len(sequence)):
                self.children.setdefault(tuple(sequence[:cut]), set()).add(sequence[cut])
            self.complete[tuple(sequence)] = index

    def allowed(self, prefix: tuple[int, ...]) -> list[int]:
        """Tokens allowed after ``prefix``: its children, plus EOS when ``prefix`` is a whole candidate."""
        tokens = set(self.children.get(prefix, ()))
        if prefix in self.complete:
            tokens.add(self.eos_token_id)
        # A prefix outside the trie cannot happen under the constraint; EOS ends it if it ever does.
        return sorted(tokens) or [self.eos_token_id]

    def candidate_of(self, generated: list[int]) -> int:
        """Index of the candidate that ``generated`` spells (up to EOS); the longest complete prefix otherwise."""
        if self.eos_token_id in generated:
            generated = generated[: generated.index(self.eos_token_id)]
        for cut in range(len(generated), 0, -1):
            index = self.complete.get(tuple(generated[:cut]))
            if index is not None:
                return index
        raise RuntimeError(
            f"Constrained generation produced {generated}, which spells no candidate; this is a bug in the trie."
        )


@torch.no_grad()
def constrained_generate(
    model: Any,
    processor: Any,
    prompts: Sequence[str],
    fmri_codes: Any,
    candidates: Sequence[str],
    *,
    add_special_tokens: bool = True,
    max_new_tokens: int | None = None,
    batch_size: int = 8,
) -> list[str]:
    """Greedy answers restricted to the candidates: one candidate string per prompt.

    At each step only the tokens that continue some candidate's ``" " + text`` token sequence are
    allowed, plus EOS once the tokens so far spell a whole candidate; generation stops at EOS. The
    answer is therefore always one of ``candidates`` (SPEC B13/B14: no parsing, no fallback class).

    Args:
        model, processor, prompts, fmri_codes, add_special_tokens, batch_size: as :func:`score_candidates`.
        candidates: C distinct answer strings (no leading space).
        max_new_tokens: the most tokens to generate (default: the longest candidate plus EOS). A
            smaller value that cuts a candidate is refused.

    Returns:
        B strings, each an element of ``candidates``.
    """
    tokenizer = processor.tokenizer
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(
            "constrained_generate needs the tokenizer's EOS token to end an answer; set tokenizer.eos_token."
        )
    sequences = tokenize_candidates(tokenizer, candidates, append_eos=False)
    if any(eos in sequence for sequence in sequences):
        raise ValueError("A candidate tokenizes to the EOS token; candidates must be plain answer text.")
    needed = max(map(len, sequences)) + 1
    if max_new_tokens is None:
        max_new_tokens = needed
    elif not isinstance(max_new_tokens, int) or max_new_tokens < needed:
        raise ValueError(
            f"max_new_tokens={max_new_tokens!r} cannot fit the longest candidate ({needed - 1} tokens) and EOS; use at "
            f"least {needed} or leave it None."
        )
    trie = _CandidateTrie(sequences, eos)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    device = _model_device(model)
    was_training = model.training
    model.eval()
    answers: list[str] = []
    try:
        for encoded in _encoded_batches(processor, prompts, fmri_codes, batch_size, add_special_tokens):
            inputs = {name: tensor.to(device) for name, tensor in encoded.items()}
            prompt_length = inputs["input_ids"].shape[1]

            def allowed_tokens(_row: int, sequence: torch.Tensor, start: int = prompt_length) -> list[int]:
                return trie.allowed(tuple(sequence[start:].tolist()))

            generated = model.generate(
                **inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                prefix_allowed_tokens_fn=allowed_tokens, eos_token_id=eos, pad_token_id=pad,
            )  # fmt: skip
            for row in generated[:, prompt_length:].tolist():
                answers.append(candidates[trie.candidate_of(row)])
    finally:
        model.train(was_training)
    return answers
