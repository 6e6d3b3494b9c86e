"""A small causal language model made from scratch, for machines without a pretrained LM.

    tokenizer = train_text_tokenizer(texts, vocab_size=2000)          # byte-level BPE, <pad>/<bos>/<eos>
    model = scratch_causal_lm(tokenizer, preset="tiny", seed=0)      # random Llama-style LM
    save_text_lm(model, tokenizer, "outputs/scratch_lm")             # AutoModelForCausalLM + AutoTokenizer folder

Stage 2 accepts any causal LM by name or folder; where the Hub cannot be reached (tests, CPU demos,
benchmarks) this module makes one that stage 2 then trains on the descriptor corpus (its T2T loss
is what teaches it the language). It is a real LM of the Llama architecture with random weights:
any Hub LM (GPT-2, Qwen3 ...) replaces it with one config value (``model.text_model``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

__all__ = ["LM_PRESETS", "save_text_lm", "scratch_causal_lm", "train_text_tokenizer"]

#: preset -> (layers, width, attention heads, MLP width)
LM_PRESETS: dict[str, tuple[int, int, int, int]] = {
    "tiny": (2, 64, 4, 256),
    "mini": (4, 128, 4, 512),
    "small": (6, 256, 8, 1024),
}
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")


def train_text_tokenizer(texts: Iterable[str], vocab_size: int = 2000):
    """A byte-level BPE tokenizer trained on ``texts`` (every byte encodable; no token is unknown).

    Returns a ``PreTrainedTokenizerFast`` with ``<pad>`` (id 0), ``<bos>`` (1) and ``<eos>`` (2); it
    adds no special tokens by itself (the processor appends EOS to targets), like GPT-2's.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [text for text in texts if text and text.strip()]
    if not texts:
        raise ValueError("train_text_tokenizer needs at least one non-empty text to learn merges from.")
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)} (bytes + specials), got {vocab_size}.")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )  # fmt: skip
    backend.train_from_iterator(texts, trainer=trainer)
    pad, bos, eos = SPECIAL_TOKENS
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=pad, bos_token=bos, eos_token=eos)


def scratch_causal_lm(tokenizer, *, preset: str = "tiny", max_positions: int = 2048, seed: int = 0):
    """A randomly initialised Llama-style ``LlamaForCausalLM`` sized by ``preset`` (see :data:`LM_PRESETS`)
    for ``tokenizer``'s vocabulary; seeded, so the same call gives the same weights."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    if preset not in LM_PRESETS:
        raise ValueError(f"Unknown LM preset {preset!r}; choose one of {sorted(LM_PRESETS)}.")
    layers, width, heads, mlp = LM_PRESETS[preset]
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=heads, intermediate_size=mlp, max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )  # fmt: skip
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    finally:
        torch.random.set_rng_state(generator_state)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def save_text_lm(model, tokenizer, folder: str | Path) -> Path:
    """Save model and tokenizer in one folder that ``AutoModelForCausalLM`` and ``AutoTokenizer`` load."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
