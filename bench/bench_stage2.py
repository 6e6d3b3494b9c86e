"""Stage-2 costs: pre-tokenized codes against the encoder in the step, the fMRI wrapper against its plain LM.

Three figures, each timed against a baseline in the same run on the same machine:

1. ``pretokenized``: one stage-2 training step (collation with the processor, forward with F2T + F2F,
   backward, AdamW step) on a batch whose ``fmri_codes`` come from the dataset (``fmrilm tokenize``
   ran once, before training), against the same step when the raw scans go through the stage-1 feature
   extractor and the frozen stage-1 encoder + quantizer inside the step (``processor.tokenize_fmri``),
   as the official code runs its frozen encoder every step. Ratio = encoder-in-step seconds /
   pre-tokenized seconds.
2. ``train_tokens_per_s`` (tiny: 2 layers x 64 wide; small: 6 layers x 256 wide; Llama-style configs built
   locally, random weights): the training step of ``FmriLMForCausalLM`` on multimodal batches against
   the same step of its untouched language model (``model.language_model``) on text batches of the
   same length, i.e. the cost of the fMRI wrapper (code embeddings, the 4-D block-causal mask, the F2F
   head). Ratio = plain LM seconds / FmriLM seconds (1.0 = no overhead); tokens/s in the notes.
3. ``generation``: greedy description of one scan, 64 new tokens (forced with ``min_new_tokens``), with
   the 4-D mask at prefill and the KV cache after, against the plain LM generating 64 tokens after a
   text prompt of the same length. Ratio = plain seconds / FmriLM seconds; ms per scan in the notes.

Shapes: 94 ROIs (AAL2) x 160 TRs at TR 2 s, patch 16 -> 10 time patches, 940 fMRI tokens per scan,
followed by a graph-family descriptor of a random DescriptorFacts record (about 120 tokens with the
bench's byte-level BPE of 1000 tokens). The stage-1 tokenizer is the ``small`` preset (ViT-S, 12
layers x 384; the paper's is ViT-B); scans are random normal (timings do not depend on the values).
``--quick``: 64 TRs (376 fMRI tokens), the ``tiny`` stage-1 preset, batch 2, fewer repeats.

Run: ``.venv/bin/python bench/bench_stage2.py [--quick]``.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BenchResult, best_time, machine_description

N_ROIS, PATCH_SIZE, TR = 94, 16, 2.0
NEW_TOKENS = 64
#: Untimed calls before timing: the first steps of a model allocate memory and pick kernels (several times slower).
WARMUP = 3
PROMPT = "<fmri> Describe the brain activity in this scan."
LM_SIZES = {  # name -> (layers, width, heads, MLP width)
    "tiny": (2, 64, 4, 256),
    "small": (6, 256, 8, 1024),
}


def _descriptor_texts(count: int, seed: int = 0) -> list[str]:
    """Graph-family descriptors of random records (the targets of the batch)."""
    from fmrilm.atlases import aal2
    from fmrilm.descriptors import describe
    from fmrilm.descriptors.facts import facts_from_values

    networks = aal2().network_names
    texts = []
    for index in range(count):
        rng = random.Random(seed + index)
        values = [(m, (), None, 0.5, rng.gauss(0, 1.5)) for m in ("modularity", "global_efficiency", "clustering")]
        values += [("strength", (n,), None, 0.5, rng.gauss(0, 1.5)) for n in networks]
        texts.append(describe(facts_from_values(values, networks), seed=index, families=("graph",)))
    return texts


def _tokenizer():
    """A byte-level BPE (1000 tokens) trained in memory on descriptor texts, with pad/bos/eos."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=["<pad>", "<bos>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)  # fmt: skip
    backend.train_from_iterator(_descriptor_texts(200, seed=1000) + [PROMPT], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")


def _language_model(size: str, vocab_size: int):
    from transformers import AutoModelForCausalLM, LlamaConfig

    layers, width, heads, mlp = LM_SIZES[size]
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=heads, intermediate_size=mlp, max_position_embeddings=4096, pad_token_id=0,
        bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


def _setup(size: str, stage1_preset: str, max_timepoints: int):
    """(FmriLM model, processor) with a random stage-1 tokenizer of ``stage1_preset``."""
    from fmrilm import FmriFeatureExtractor, FmriTokenizerConfig
    from fmrilm.modeling_fmri_tokenizer import FmriTokenizerModel
    from fmrilm.modeling_fmrilm import FmriLMForCausalLM
    from fmrilm.processing_fmrilm import FmriLMProcessor

    shape = dict(n_rois=N_ROIS, max_timepoints=max_timepoints, patch_size=PATCH_SIZE)
    torch.manual_seed(0)
    stage1 = FmriTokenizerModel(FmriTokenizerConfig.preset(stage1_preset, **shape)).eval()
    processor = FmriLMProcessor(feature_extractor=FmriFeatureExtractor(**shape), tokenizer=_tokenizer(),
                                fmri_tokenizer=stage1)  # fmt: skip
    tokenizer_length = len(processor.tokenizer) + 3  # the fMRI special tokens are added by from_text_model
    model = FmriLMForCausalLM.from_text_model(_language_model(size, tokenizer_length), processor)
    return model, processor


def _step(model, optimizer) -> Callable[[dict], float]:
    def run(batch: dict) -> float:
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return run


def _pretokenized_case(quick: bool) -> BenchResult:
    max_timepoints, batch_size, repeats = (64, 2, 3) if quick else (160, 4, 5)
    model, processor = _setup("small", "tiny" if quick else "small", max_timepoints)
    model.train()
    step = _step(model, torch.optim.AdamW(model.parameters(), lr=1e-5))
    rng = np.random.default_rng(0)
    scans = [rng.normal(size=(max_timepoints + 20, N_ROIS)).astype(np.float32) for _ in range(batch_size)]
    targets = [" " + t for t in _descriptor_texts(batch_size)]
    codes = processor.tokenize_fmri(scans, tr=TR)  # what `fmrilm tokenize` stores once

    def collate(fmri_codes) -> dict:
        return dict(
            processor(text=[PROMPT] * batch_size, fmri_codes=fmri_codes, text_target=targets, return_tensors="pt")
        )

    pretokenized = best_time(lambda: step(collate(codes)), repeats=repeats, warmup=WARMUP)
    in_step = best_time(lambda: step(collate(processor.tokenize_fmri(scans, tr=TR))), repeats=repeats, warmup=WARMUP)
    encoder = best_time(lambda: processor.tokenize_fmri(scans, tr=TR), repeats=repeats, warmup=WARMUP)
    length = collate(codes)["input_ids"].shape[1]
    preset = "tiny" if quick else "small"
    return BenchResult(
        benchmark="stage2_step",
        case=f"small LM, batch {batch_size} x {length} tok ({codes.shape[1]} fMRI), stage-1 {preset} encoder",
        ours="pre-tokenized fmri_codes",
        baseline="stage-1 encoder inside the step",
        ours_seconds=pretokenized,
        baseline_seconds=in_step,
        notes=f"stage-1 feature extraction + encoder alone: {encoder * 1e3:.0f} ms per batch",
    )


def _throughput_case(size: str, quick: bool) -> BenchResult:
    max_timepoints, batch_size, repeats = (64, 2, 3) if quick else (160, 4, 5)
    model, processor = _setup(size, "tiny", max_timepoints)
    model.train()
    step = _step(model, torch.optim.AdamW(model.parameters(), lr=1e-5))
    rng = np.random.default_rng(0)
    codes = torch.from_numpy(rng.integers(0, model.config.codebook_size, size=(batch_size, processor.num_fmri_tokens)))
    targets = [" " + t for t in _descriptor_texts(batch_size)]
    batch = dict(processor(text=[PROMPT] * batch_size, fmri_codes=codes, text_target=targets, return_tensors="pt"))
    length = batch["input_ids"].shape[1]
    text_ids = torch.from_numpy(rng.integers(3, len(processor.tokenizer) - 3, size=(batch_size, length)))
    text_batch = {"input_ids": text_ids, "attention_mask": torch.ones_like(text_ids), "labels": text_ids}
    plain_step = _step(model.language_model, torch.optim.AdamW(model.language_model.parameters(), lr=1e-5))
    ours = best_time(lambda: step(batch), repeats=repeats, warmup=WARMUP)
    plain = best_time(lambda: plain_step(text_batch), repeats=repeats, warmup=WARMUP)
    tokens = batch_size * length
    layers, width, _, _ = LM_SIZES[size]
    return BenchResult(
        benchmark="stage2_train_tokens",
        case=f"{size} LM ({layers} x {width}), batch {batch_size} x {length} tok",
        ours="FmriLMForCausalLM step (F2T + F2F)",
        baseline="the plain LM step, text of equal length",
        ours_seconds=ours,
        baseline_seconds=plain,
        notes=f"{tokens / ours:.0f} training tokens/s (plain LM {tokens / plain:.0f} tokens/s)",
    )


def _generation_case(size: str, quick: bool) -> BenchResult:
    max_timepoints, repeats = (64, 3) if quick else (160, 5)
    model, processor = _setup(size, "tiny", max_timepoints)
    model.eval()
    rng = np.random.default_rng(0)
    codes = torch.from_numpy(rng.integers(0, model.config.codebook_size, size=(1, processor.num_fmri_tokens)))
    inputs = dict(processor(text=PROMPT, fmri_codes=codes, return_tensors="pt"))
    length = inputs["input_ids"].shape[1]
    text_ids = torch.from_numpy(rng.integers(3, len(processor.tokenizer) - 3, size=(1, length)))
    options = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)

    with torch.inference_mode():
        produced = model.generate(**inputs, **options).shape[1] - length
        ours = best_time(lambda: model.generate(**inputs, **options), repeats=repeats, warmup=WARMUP)
        plain = best_time(
            lambda: model.language_model.generate(
                input_ids=text_ids, attention_mask=torch.ones_like(text_ids), **options
            ),
            repeats=repeats,
            warmup=WARMUP,
        )
    layers, width, _, _ = LM_SIZES[size]
    return BenchResult(
        benchmark="stage2_generation",
        case=f"{size} LM ({layers} x {width}), 1 scan, {length}-tok prompt, {produced} new tok",
        ours="FmriLM greedy (4-D prefill + KV cache)",
        baseline="plain LM greedy, text prompt of equal length",
        ours_seconds=ours,
        baseline_seconds=plain,
        notes=f"{ours * 1e3:.0f} ms per scan ({ours / produced * 1e3:.1f} ms per new token)",
    )


def run(quick: bool = False) -> list[BenchResult]:
    """The three stage-2 figures (see the module docstring); CPU, float32."""
    results = [_pretokenized_case(quick)]
    results += [_throughput_case(size, quick) for size in LM_SIZES]
    results += [_generation_case(size, quick) for size in LM_SIZES]
    return results


if __name__ == "__main__":
    print(machine_description())
    for result in run(quick="--quick" in sys.argv):
        print(result.line(), " ", result.notes)
