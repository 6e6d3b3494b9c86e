"""Tiny text tokenizers and tiny random causal LMs, built offline, for the stage-2/3 tests.

    from lm_fixtures import tiny_tokenizer, tiny_causal_lm, LM_KINDS

``tiny_tokenizer()`` is a byte-level BPE trained in memory on a small descriptor-like corpus (vocabulary
about 300), with ``<pad>``, ``<bos>``, ``<eos>`` and a simple chat template; ``tiny_causal_lm(kind, vocab_size)``
builds a randomly initialised GPT-2, Llama or Qwen3 with hidden size 32 and 2 layers. Nothing touches
the Hub.
"""

from __future__ import annotations

import functools

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, PreTrainedTokenizerFast, Qwen3Config

LM_KINDS = ("gpt2", "llama", "qwen3")

CORPUS = [
    "Connectivity between Default and Limbic is somewhat elevated (z=+1.42).",
    "Coupling inside Occipital is within the typical range (z=-0.89).",
    "Modularity is moderately above the cohort average, a more segregated organisation.",
    "Global efficiency is reduced, pointing to longer weighted paths across the network.",
    "The principal gradient spans a range typical of the cohort.",
    "Describe the brain activity in this scan. Is this subject male or female? Answer: Male Female",
    "low high coupling gain noise level frontal temporal parietal insula subcortical",
    "0 1 2 3 4 5 6 7 8 9 . , : ; ( ) + - = yes no",
]

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|> {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


@functools.lru_cache(maxsize=1)
def _trained_tokenizer_json() -> str:
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<bos>", "<eos>", "<|user|>", "<|assistant|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS * 4, trainer=trainer)
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer.to_str()


def tiny_tokenizer(padding_side: str = "right") -> PreTrainedTokenizerFast:
    """A fresh tiny BPE tokenizer (a new object each call; training is cached)."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_trained_tokenizer_json()),
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        padding_side=padding_side,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_causal_lm(kind: str, vocab_size: int, *, seed: int = 0, attn_implementation: str = "sdpa"):
    """A randomly initialised causal LM of ``kind`` ("gpt2", "llama", "qwen3"): hidden 32, 2 layers, 4 heads."""
    common = dict(vocab_size=vocab_size, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if kind == "gpt2":
        config = GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=2048, **common)
    elif kind == "llama":
        config = LlamaConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=2048, **common,
        )  # fmt: skip
    elif kind == "qwen3":
        config = Qwen3Config(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=8, max_position_embeddings=2048, **common,
        )  # fmt: skip
    else:
        raise ValueError(f"Unknown LM kind {kind!r}; choose from {LM_KINDS}.")
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation).eval()
