"""Stage 2: align a causal language model with the fMRI tokens (F2T + F2F + T2T).

    fmrilm train align --config fmrilm/training/configs/stage2_tiny.yaml [key=value ...]
    accelerate launch -m fmrilm.training.stage2 --config CONFIG.yaml [key=value ...]

What a run does, in order:

1. reads the pre-tokenized dataset folder(s) (``fmrilm tokenize``: an int16 ``fmri_codes`` column;
   ``fmrilm describe``: ``descriptor_facts`` / ``descriptor_text``), keeps the training and the
   subject-held-out validation split, and checks that the codes were made by the given stage-1
   processor (same number of tokens; same processor fingerprint when the dataset records one);
2. loads the language model (any ``AutoModelForCausalLM``, by Hub name or local folder, loaded
   strictly: missing or unexpected weights are an error, SPEC B12) and ITS tokenizer, puts that
   tokenizer into the stage-1 processor, and builds
   :meth:`FmriLMForCausalLM.from_text_model <fmrilm.modeling_fmrilm.FmriLMForCausalLM.from_text_model>`
   (adds ``<fmri>``, ``<fmri_start>``, ``<fmri_end>``, resizes the embeddings, initialises the fMRI
   code embeddings from the stage-1 codebook). The stage-1 tokenizer is not part of the model and
   is never run: the codes are pre-tokenized;
3. optionally wraps the model in LoRA with PEFT's own API (``get_peft_model``; adapters on the
   LM's attention and MLP projections, by default every linear layer of its decoder blocks).
   ``fmri_embed``, ``roi_embed`` and ``fmri_head`` are new, so they are trained in full
   (PEFT ``modules_to_save``), and so are the embedding rows of ``<fmri_start>`` and ``<fmri_end>``
   (PEFT ``trainable_token_indices``; the rest of the vocabulary stays frozen);
4. tokenizes the T2T corpus (a text file, a dataset folder, or by default the training descriptor
   texts) with the LM's own tokenizer into an int32 token stream (SPEC B7), cached on disk; a file or
   folder corpus is streamed in chunks to a memory-mapped ``.npy`` (corpora larger than memory);
5. trains with :class:`~fmrilm.training.loop.TrainingLoop`. Every batch MIXES both kinds of
   inputs: ``data.batch_size`` multimodal examples (loss ``f2t_weight * F2T + f2f_weight * F2F``)
   and ``t2t.batch_size`` text windows (loss ``t2t_weight * T2T``), two forward passes whose
   losses are added (paper v1 weights 1 / 0.1 / 0.5). A multimodal example is the prompt
   (default ``"<fmri> Describe the brain activity in this scan."``, rendered with the LM's chat
   template when it has one) followed by the descriptor text as the target; only the target and
   its EOS are labelled (SPEC B8). The target is rendered from the scan's ``descriptor_facts``
   with :func:`fmrilm.descriptors.describe` at a wording seed that depends on the scan and the
   epoch, so every epoch words the same facts differently (augmentation), restricted to
   ``data.families`` (e.g. ``["connectivity", "graph"]`` keeps CPU runs short);
6. validates every ``training.eval_every`` steps: F2T and F2F loss per token over the whole
   validation split (fixed wording), and greedy generation for ``generation.num_scans``
   validation scans scored for faithfulness against their facts
   (:func:`~fmrilm.training.generation_metrics.faithfulness`: share of stated bins and networks
   that are right, and recall of the facts the reference text states), ROUGE-L and BLEU against the
   reference text; the generations are written to ``OUTPUT/generations/step-XXXXXXXX.jsonl``. The
   best model is chosen on ``training.best_metric`` (default ``f2t_loss``, lower is better);
7. writes ``OUTPUT/model``: the best :class:`FmriLMForCausalLM` (``save_pretrained``, merged when
   LoRA was used) and, in the same folder, the processor with the LM tokenizer and the fMRI special
   tokens, so ``AutoModelForCausalLM.from_pretrained(OUTPUT/model)`` and
   ``AutoProcessor.from_pretrained(OUTPUT/model)`` load them; with LoRA also ``OUTPUT/adapter`` (the
   PEFT adapter of the best step; it applies to ``FmriLMForCausalLM.from_text_model(LM, processor)``
   built after ``set_seed(training.seed)``, which this trainer does, so the base is reproducible);
   plus ``OUTPUT/metrics.jsonl``, ``OUTPUT/training_summary.json`` and the resolved ``OUTPUT/config.yaml``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from ..descriptors.facts import FAMILIES
from .command import StageCommand, best_line
from .config import config_to_dict, save_config

# Shared with stage 3; re-exported here (stage-2 names kept).
from .language_model import (
    FMRI_MODULES,
    LoraSettings,
    describe_scans,
    load_causal_lm,
    lora_target_modules,
    render_prompt,
)
from .language_model import apply_lora as _apply_lora
from .language_model import export_best as _export_best
from .language_model import fmri_model as _fmri_model
from .language_model import parameter_counts as _parameter_counts
from .loop import LoopConfig, TrainingLoop, build_accelerator, make_dataloader, write_run_summary

__all__ = [
    "FMRI_MODULES",
    "AlignmentCollator",
    "AlignmentDataset",
    "AlignmentEvaluator",
    "AlignmentObjective",
    "GenerationConfig",
    "LoraSettings",
    "LossConfig",
    "PromptConfig",
    "Stage2Config",
    "Stage2DataConfig",
    "Stage2ModelConfig",
    "Stage2Result",
    "Stage2TrainingConfig",
    "T2TConfig",
    "describe_scans",
    "f2f_token_losses",
    "f2t_token_losses",
    "load_causal_lm",
    "lora_target_modules",
    "main",
    "train_alignment",
]

MODEL_FOLDER = "model"
ADAPTER_FOLDER = "adapter"
GENERATIONS_FOLDER = "generations"
SUMMARY_FILE = "training_summary.json"
CONFIG_FILE = "config.yaml"
IGNORE_INDEX = -100
#: Validation metrics that exist only when validation scans are described (generation.num_scans > 0).
GENERATION_METRICS = ("faithfulness", "faithfulness_recall", "statements_per_scan", "rouge_l", "bleu")


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


@dataclass
class Stage2DataConfig:
    """The pre-tokenized, described scans.

    Attributes:
        datasets: dataset folders with an ``fmri_codes`` column (``fmrilm tokenize``) made by
            ``model.processor``, and descriptor columns (``fmrilm describe``); several are concatenated.
        train_split, validation_split: split names (subject-grouped, shared by all stages).
        codes_column: the int16 code column.
        facts_column: the DescriptorFacts JSON column (targets and faithfulness).
        text_column: the stored descriptor text column (targets when ``target_source="text"``).
        target_source: ``"facts"`` renders each target from the facts with an epoch-dependent
            wording seed (augmentation) and ``families``; ``"text"`` uses the stored text as it is.
        families: descriptor families written into the targets (with ``target_source="facts"``).
        batch_size: multimodal examples per micro-batch and process.
        eval_batch_size: examples per validation batch (default ``batch_size``).
        max_length: longest multimodal row in tokens (prompt + fMRI block + target + EOS); longer
            targets are cut at the end. ``None`` = no limit.
        num_workers: data-loading worker processes.
        cache_dir: ``datasets`` cache and the tokenized T2T corpus; default ``OUTPUT/dataset_cache``.
    """

    datasets: list[str] = field(default_factory=list)
    train_split: str = "train"
    validation_split: str = "validation"
    codes_column: str = "fmri_codes"
    facts_column: str = "descriptor_facts"
    text_column: str = "descriptor_text"
    target_source: Literal["facts", "text"] = "facts"
    families: list[str] = field(default_factory=lambda: list(FAMILIES))
    batch_size: int = 8
    eval_batch_size: int | None = None
    max_length: int | None = None
    num_workers: int = 0
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if not self.datasets:
            raise ValueError(
                "data.datasets must list at least one pre-tokenized dataset folder (`fmrilm describe` then "
                "`fmrilm tokenize`)."
            )
        for name in ("batch_size", "eval_batch_size", "max_length"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"data.{name} must be a positive integer, got {value}.")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {self.num_workers}.")
        if self.train_split == self.validation_split:
            raise ValueError("data.train_split and data.validation_split must differ (validation is held out).")
        unknown = sorted(set(self.families) - set(FAMILIES))
        if unknown or not self.families:
            raise ValueError(f"data.families must be a non-empty subset of {list(FAMILIES)}, got {self.families}.")


@dataclass
class PromptConfig:
    """The instruction before each descriptor.

    Attributes:
        text: the user prompt; it must contain exactly one ``<fmri>`` (where the scan goes).
        chat_template: ``"auto"`` (use the LM tokenizer's chat template when it has one),
            ``"always"`` (error without one) or ``"never"``.
        chat_template_kwargs: extra template variables, e.g. ``{"enable_thinking": false}`` for Qwen3.
        system: an optional system message (chat template only).
        target_separator: inserted between the prompt and the target; ``None`` = a space when the
            rendered prompt does not end in whitespace, else nothing.
    """

    text: str = "<fmri> Describe the brain activity in this scan."
    chat_template: Literal["auto", "always", "never"] = "auto"
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    system: str | None = None
    target_separator: str | None = None

    def __post_init__(self) -> None:
        if self.text.count("<fmri>") != 1:
            raise ValueError(
                f"prompt.text must contain exactly one '<fmri>' marker (where the scan goes), got {self.text!r}."
            )


@dataclass
class Stage2ModelConfig:
    """The language model and the stage-1 processor.

    Attributes:
        text_model: Hub name or local folder of any causal LM (``AutoModelForCausalLM``).
        tokenizer: its tokenizer (default: ``text_model``); T2T and prompts use this tokenizer.
        processor: the stage-1 processor folder (``OUTPUT/processor`` of ``fmrilm train tokenizer``).
        dtype: weights' dtype when loading the LM (``float32`` for training with autocast).
        attn_implementation: ``"sdpa"``, ``"eager"`` ... (default: transformers' choice).
        gradient_checkpointing: recompute activations in the backward pass (less memory).
        overrides: extra :class:`FmriLMConfig` settings passed to ``from_text_model``.
    """

    text_model: str = ""
    tokenizer: str | None = None
    processor: str = ""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    attn_implementation: str | None = None
    gradient_checkpointing: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.text_model:
            raise ValueError("model.text_model must name a causal LM (a Hub name such as 'gpt2', or a local folder).")
        if not self.processor:
            raise ValueError("model.processor must be the stage-1 processor folder (OUTPUT/processor of stage 1).")


@dataclass
class LossConfig:
    """Weights of the three objectives (paper v1: F2T 1, F2F 0.1, T2T 0.5)."""

    f2t_weight: float = 1.0
    f2f_weight: float = 0.1
    t2t_weight: float = 0.5

    def __post_init__(self) -> None:
        for name in ("f2t_weight", "f2f_weight", "t2t_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"losses.{name} must be a finite number >= 0, got {value}.")
        if self.f2t_weight == 0 and self.f2f_weight == 0:
            raise ValueError(
                "losses.f2t_weight and losses.f2f_weight are both 0: the multimodal batches would train nothing."
            )


@dataclass
class T2TConfig:
    """Text-only batches (T2T), tokenized with the LM's own tokenizer.

    Attributes:
        corpus: a UTF-8 text file (one document per line), a dataset folder with ``text_column``,
            or ``None`` = the training split's descriptor texts (rendered with ``data.families``).
        text_column, split: for a dataset folder.
        window_length: tokens per window.
        batch_size: windows per training micro-batch; 0 (or ``losses.t2t_weight = 0``) = no T2T.
    """

    corpus: str | None = None
    text_column: str = "text"
    split: str = "train"
    window_length: int = 128
    batch_size: int = 1

    def __post_init__(self) -> None:
        if self.window_length < 2 or self.batch_size < 0:
            raise ValueError(
                f"t2t.window_length must be >= 2 and t2t.batch_size >= 0, got {self.window_length}, {self.batch_size}."
            )


@dataclass
class GenerationConfig:
    """Generation on held-out scans at each validation.

    Attributes:
        num_scans: validation scans described by the model (the first ones of the split); 0 = none.
        max_new_tokens: greedy decoding length.
        batch_size: scans per ``generate`` call (left-padded prompts).
    """

    num_scans: int = 8
    max_new_tokens: int = 128
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.num_scans < 0 or self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError(
                "generation.num_scans must be >= 0 and generation.max_new_tokens, generation.batch_size >= 1."
            )


@dataclass
class Stage2TrainingConfig(LoopConfig):
    """:class:`LoopConfig` with stage-2 defaults: the best model has the lowest validation F2T loss."""

    best_metric: str = "f2t_loss"
    best_mode: Literal["min", "max"] = "min"


@dataclass
class Stage2Config:
    """Everything a stage-2 run needs (one YAML file; see ``fmrilm/training/configs/stage2_*.yaml``)."""

    output_dir: str = "outputs/stage2"
    data: Stage2DataConfig = field(
        default_factory=lambda: Stage2DataConfig(datasets=["outputs/demo/tokenized/simulated"])
    )
    prompt: PromptConfig = field(default_factory=PromptConfig)
    model: Stage2ModelConfig = field(
        default_factory=lambda: Stage2ModelConfig(text_model="gpt2", processor="outputs/stage1_tiny/processor")
    )
    lora: LoraSettings = field(default_factory=LoraSettings)
    losses: LossConfig = field(default_factory=LossConfig)
    t2t: T2TConfig = field(default_factory=T2TConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    training: Stage2TrainingConfig = field(default_factory=Stage2TrainingConfig)
    resume_from: str | None = None


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


def wording_seed(scan_id: str, seed: int, epoch: int | None) -> int:
    """The descriptor wording seed of a scan: fixed by ``(scan_id, seed)`` when ``epoch`` is None
    (validation), else different every epoch (training augmentation)."""
    from ..descriptors.corpus import scan_text_seed

    if epoch is None:
        return scan_text_seed(scan_id, seed)
    mixed = int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)[0])
    return scan_text_seed(scan_id, mixed)


class AlignmentDataset(torch.utils.data.Dataset):
    """Rows of a split as ``{"fmri_codes" (N,) int16, "facts" str|None, "text" str|None, "scan_id", "index", "epoch"}``.

    ``epoch`` is the value of the last :meth:`set_epoch` (the training loop calls it before each
    epoch); the collator derives the descriptor wording from it.
    """

    def __init__(self, split, *, codes_column: str, facts_column: str | None, text_column: str | None) -> None:
        self.columns = {"fmri_codes": codes_column, "facts": facts_column, "text": text_column, "scan_id": "scan_id"}
        wanted = [c for c in self.columns.values() if c is not None]
        missing = [c for c in wanted if c not in split.column_names]
        if missing:
            raise ValueError(f"The dataset split has no column(s) {missing} (it has {split.column_names}).")
        # Rows are read from the memory-mapped Arrow table on demand (facts records can be large).
        self.rows = split.select_columns(wanted).with_format("numpy", columns=[codes_column], output_all_columns=True)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        row = self.rows[index]
        item = {key: (None if column is None else row[column]) for key, column in self.columns.items()}
        return {**item, "scan_id": str(item["scan_id"]), "index": index, "epoch": self.epoch}


class AlignmentCollator:
    """Collate function: scans + descriptor targets -> model inputs (plus T2T windows).

    Returns ``input_ids``, ``attention_mask``, ``labels`` (B, L) int64 (right-padded; labels only on
    the target and its EOS), ``fmri_codes`` (B, N) int64, and with T2T ``t2t_input_ids``
    (t2t_batch_size, window_length) int64. Wording seeds and T2T windows come from
    ``(seed, epoch, sample indices)``, never from a global RNG; with ``fixed_wording`` (validation)
    the wording ignores the epoch.

    Args:
        processor: the FmriLMProcessor with the LM tokenizer and the fMRI special tokens.
        prompt: the rendered prompt string (one ``<fmri>``; chat template already applied).
        prompt_has_special_tokens: the prompt was rendered by a chat template (which writes BOS and
            the like), so the tokenizer must not add its own.
        target_separator: text between the prompt and the target.
        target_source, families: see :class:`Stage2DataConfig`.
        seed: base seed of the wording and of the T2T windows.
        max_length: see :class:`Stage2DataConfig`.
        windows, t2t_batch_size: T2T windows (None / 0: no T2T).
        fixed_wording: validation wording (one per scan, independent of the epoch).
    """

    def __init__(
        self,
        processor,
        *,
        prompt: str,
        prompt_has_special_tokens: bool,
        target_separator: str,
        target_source: str,
        families: Sequence[str],
        seed: int,
        max_length: int | None = None,
        windows=None,
        t2t_batch_size: int = 0,
        fixed_wording: bool = False,
    ) -> None:
        self.processor = processor
        self.prompt = prompt
        self.add_special_tokens = not prompt_has_special_tokens
        self.target_separator = target_separator
        self.target_source = target_source
        self.families = tuple(families)
        self.seed = int(seed)
        self.max_length = max_length
        self.windows = windows
        self.t2t_batch_size = int(t2t_batch_size) if windows is not None else 0
        self.fixed_wording = fixed_wording

    def target_text(self, item: Mapping[str, Any]) -> str:
        """The descriptor of one item, as the model must write it."""
        from ..descriptors import DescriptorFacts, describe

        if self.target_source == "text":
            return str(item["text"])
        facts = DescriptorFacts.from_json(item["facts"])
        epoch = None if self.fixed_wording else int(item["epoch"])
        return describe(facts, seed=wording_seed(item["scan_id"], self.seed, epoch), families=self.families)

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        targets = [self.target_separator + self.target_text(item) for item in items]
        codes = np.stack([np.asarray(item["fmri_codes"]) for item in items]).astype(np.int64)
        inputs = self.processor(
            text=[self.prompt] * len(items), fmri_codes=codes, text_target=targets, return_tensors="pt",
            padding=True, padding_side="right", max_length=self.max_length, add_special_tokens=self.add_special_tokens,
        )  # fmt: skip
        batch = {name: inputs[name] for name in ("input_ids", "attention_mask", "labels", "fmri_codes")}
        if self.t2t_batch_size:
            batch["t2t_input_ids"] = self.windows.sample(
                self.t2t_batch_size, key=[int(items[0]["epoch"]), *(int(item["index"]) for item in items)]
            )
        return batch


def _load_splits(config: Stage2Config, processor, cache_dir: Path) -> tuple[Any, Any]:
    """(train split, validation split), checked against the processor and the target settings."""
    from ..pretokenize import load_pretokenized_splits

    data = config.data
    target_column = data.facts_column if data.target_source == "facts" else data.text_column
    describe = "run `fmrilm describe` before `fmrilm tokenize`"
    splits = load_pretokenized_splits(
        data.datasets,
        processor,
        splits=[data.train_split, data.validation_split],
        required_columns=["scan_id", target_column],
        keep_columns=[data.facts_column, data.text_column],
        codes_column=data.codes_column,
        cache_dir=cache_dir,
        processor_source=str(config.model.processor),
        column_hints={data.facts_column: describe, data.text_column: describe},
        setting_names={
            "folders": "data.datasets",
            "splits": "data.train_split / data.validation_split",
            "columns": "data.codes_column / data.facts_column / data.text_column / data.target_source",
        },
        needed_by="stage 2",
    )
    return splits[data.train_split], splits[data.validation_split]


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------


def _build_processor(config: Stage2Config):
    """The stage-1 processor with the LM's own tokenizer (and its chat template)."""
    from transformers import AutoTokenizer

    from ..processing_fmrilm import FmriLMProcessor

    processor_dir = Path(config.model.processor)
    if not processor_dir.is_dir():
        raise FileNotFoundError(
            f"Processor folder {processor_dir} not found; train stage 1 (`fmrilm train tokenizer`) and pass its "
            "OUTPUT/processor as model.processor."
        )
    stage1 = FmriLMProcessor.from_pretrained(processor_dir)
    if stage1.fmri_tokenizer is None:
        raise ValueError(f"{processor_dir} has no fMRI tokenizer (fmri_tokenizer/); it is not a stage-1 output.")
    tokenizer = AutoTokenizer.from_pretrained(config.model.tokenizer or config.model.text_model)
    if tokenizer.pad_token is None:
        # Padding is masked out and never labelled, so any token will do; EOS is what most LMs reuse.
        if tokenizer.eos_token is None:
            raise ValueError("The LM tokenizer has neither a pad nor an EOS token; set one in its tokenizer config.")
        tokenizer.pad_token = tokenizer.eos_token
    processor = FmriLMProcessor(
        feature_extractor=stage1.feature_extractor, tokenizer=tokenizer, fmri_tokenizer=stage1.fmri_tokenizer.eval(),
        chat_template=getattr(tokenizer, "chat_template", None),
    )  # fmt: skip
    return processor


def _render_prompt(config: PromptConfig, processor) -> tuple[str, bool]:
    """(prompt string with one ``<fmri>``, whether a chat template rendered it)."""
    return render_prompt(
        processor, config.text, chat_template=config.chat_template,
        chat_template_kwargs=config.chat_template_kwargs, system=config.system,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Losses and validation
# --------------------------------------------------------------------------------------------------


def f2t_token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: (sum of next-token cross-entropies over labelled positions, number of them), both (B,) float64.

    ``logits`` (B, L, V) predict token ``l + 1`` at position ``l``; ``labels`` (B, L) hold
    :data:`IGNORE_INDEX` where no loss is taken.
    """
    shifted = labels[:, 1:]
    losses = F.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]), shifted.reshape(-1), ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(shifted.shape)  # fmt: skip
    valid = shifted != IGNORE_INDEX
    return (losses * valid).sum(dim=1).double(), valid.sum(dim=1).double()


def f2f_token_losses(
    fmri_logits: torch.Tensor, input_ids: torch.Tensor, fmri_codes: torch.Tensor, fmri_token_id: int, n_rois: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: (sum of F2F cross-entropies, number of targets), both (B,) float64, for rows with one fMRI block.

    The output at placeholder ``k`` of a block (time patch ``k // R``, ROI ``k % R``) predicts the
    code at placeholder ``k + R`` (the same ROI one time patch later); the last time patch and pairs
    with a PAD (-1) code on either side take no loss.
    """
    batch = input_ids.shape[0]
    positions = input_ids == fmri_token_id
    counts = positions.sum(dim=1)
    n_tokens = fmri_codes.shape[1]
    if not bool((counts == n_tokens).all()):
        raise ValueError(
            f"f2f_token_losses expects one fMRI block of {n_tokens} placeholders per row, got {counts.tolist()}."
        )
    logits = fmri_logits[positions].view(batch, n_tokens, -1)[:, :-n_rois]  # (B, N - R, C)
    targets = fmri_codes[:, n_rois:].long()
    valid = (targets >= 0) & (fmri_codes[:, :-n_rois] >= 0)
    if logits.shape[1] == 0:
        zero = torch.zeros(batch, dtype=torch.float64, device=input_ids.device)
        return zero, zero.clone()
    losses = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.clamp(min=0).reshape(-1), reduction="none"
    ).view(targets.shape)
    return (losses * valid).sum(dim=1).double(), valid.sum(dim=1).double()


class AlignmentObjective:
    """``compute_loss`` of the loop: multimodal forward (F2T + F2F) plus, when the batch has windows,
    a text-only forward (T2T); the model weights each loss, the objective adds the two."""

    def __call__(self, model, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        output = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], fmri_codes=batch["fmri_codes"],
            labels=batch["labels"],
        )  # fmt: skip
        loss = output.loss
        metrics: dict[str, Any] = {"f2t_loss": output.f2t_loss}
        if output.f2f_loss is not None:
            metrics["f2f_loss"] = output.f2f_loss
        windows = batch.get("t2t_input_ids")
        if windows is not None:
            text_output = model(input_ids=windows, attention_mask=torch.ones_like(windows), labels=windows)
            loss = loss + text_output.loss
            metrics["t2t_loss"] = text_output.t2t_loss
        return loss, {name: value for name, value in metrics.items() if value is not None}


@dataclass
class GenerationItem:
    """A held-out scan to describe at validation: its codes, facts and reference text."""

    scan_id: str
    codes: np.ndarray
    facts: str | None
    reference: str
    reference_keys: tuple[str, ...]


class AlignmentEvaluator:
    """``evaluate`` of the loop.

    Returns ``f2t_loss`` and ``f2f_loss`` (cross-entropy per labelled token / per F2F target over the
    whole validation split, gathered across processes), ``loss`` (their weighted sum), and with
    generation ``faithfulness`` (pooled share of stated bins and networks that are right, 0 when
    nothing is stated), ``faithfulness_recall`` (share of the facts that the reference text states
    which the generation states correctly), ``statements_per_scan``, ``rouge_l`` ([0, 1]) and
    ``bleu`` ([0, 100]). Generation runs on the main process only (its metrics are the ones the loop
    keeps) and writes ``generations/step-XXXXXXXX.jsonl``.
    """

    def __init__(
        self,
        *,
        processor,
        prompt: str,
        prompt_has_special_tokens: bool,
        generation_items: Sequence[GenerationItem],
        generation: GenerationConfig,
        losses: LossConfig,
        output_dir: Path | None = None,
    ) -> None:
        self.processor = processor
        self.prompt = prompt
        self.add_special_tokens = not prompt_has_special_tokens
        self.items = list(generation_items)
        self.generation = generation
        self.losses = losses
        self.output_dir = output_dir
        self.step = lambda: 0

    def __call__(self, model, dataloader, accelerator) -> dict[str, float]:
        base = _fmri_model(accelerator.unwrap_model(model))
        config = base.config
        totals = torch.zeros(4, dtype=torch.float64)
        for batch in dataloader:
            output = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], fmri_codes=batch["fmri_codes"],
                labels=batch["labels"],
            )  # fmt: skip
            f2t = f2t_token_losses(output.logits, batch["labels"])
            f2f = f2f_token_losses(output.fmri_logits, batch["input_ids"], batch["fmri_codes"], config.fmri_token_id,
                                   config.n_rois)  # fmt: skip
            gathered = accelerator.gather_for_metrics((*f2t, *f2f))
            totals += torch.stack([g.sum().cpu() for g in gathered])
        if totals[1] == 0:
            raise ValueError("The validation split has no labelled target token: check the descriptor columns.")
        metrics = {"f2t_loss": float(totals[0] / totals[1])}
        metrics["f2f_loss"] = float(totals[2] / totals[3]) if totals[3] > 0 else 0.0
        metrics["loss"] = self.losses.f2t_weight * metrics["f2t_loss"] + self.losses.f2f_weight * metrics["f2f_loss"]
        if self.items and self.generation.num_scans > 0 and accelerator.is_main_process:
            metrics |= self._generate(accelerator.unwrap_model(model), accelerator.device)
        return metrics

    def _generate(self, model, device) -> dict[str, float]:
        from .generation_metrics import bleu, faithfulness, pooled_faithfulness, rouge_l

        texts = describe_scans(
            model, self.processor, [item.codes for item in self.items], prompt=self.prompt,
            add_special_tokens=self.add_special_tokens, max_new_tokens=self.generation.max_new_tokens,
            batch_size=self.generation.batch_size, device=device,
        )  # fmt: skip
        references = [item.reference for item in self.items]
        metrics = {"rouge_l": rouge_l(texts, references), "bleu": bleu(texts, references)}
        records = []
        scored = [(item, text) for item, text in zip(self.items, texts) if item.facts is not None]
        if scored:
            reports = [faithfulness(text, item.facts) for item, text in scored]
            pooled = pooled_faithfulness(reports)
            recalls = [
                len(set(report["fact_keys"]) & set(item.reference_keys)) / len(item.reference_keys)
                for (item, _), report in zip(scored, reports)
                if item.reference_keys
            ]
            metrics |= {
                "faithfulness": pooled["share"],
                "faithfulness_recall": float(np.mean(recalls)) if recalls else 0.0,
                "statements_per_scan": pooled["stated_per_text"],
            }
            by_id = {item.scan_id: report for (item, _), report in zip(scored, reports)}
        else:
            by_id = {}
        for item, text in zip(self.items, texts):
            report = by_id.get(item.scan_id)
            records.append({
                "scan_id": item.scan_id, "generated": text, "reference": item.reference,
                "stated": None if report is None else report["stated"],
                "correct": None if report is None else report["correct"],
            })  # fmt: skip
        if self.output_dir is not None:
            folder = self.output_dir / GENERATIONS_FOLDER
            folder.mkdir(parents=True, exist_ok=True)
            lines = "".join(json.dumps(record) + "\n" for record in records)
            (folder / f"step-{self.step():08d}.jsonl").write_text(lines, encoding="utf-8")
        return metrics


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


@dataclass
class Stage2Result:
    """Where a stage-2 run wrote its outputs, and how it went."""

    model_dir: Path
    adapter_dir: Path | None
    summary_file: Path
    metrics_file: Path
    best_step: int | None
    best_metric: str
    best_value: float | None
    best_validation: dict[str, float]
    final_validation: dict[str, float]


def _generation_items(validation, config: Stage2Config, seed: int) -> list[GenerationItem]:
    from ..descriptors import DescriptorFacts, describe_with_mentions

    count = min(config.generation.num_scans, len(validation))
    if count == 0:
        return []
    data = config.data
    rows = validation.select(range(count))
    codes = rows.with_format("numpy", columns=[data.codes_column])[data.codes_column]
    has_facts = data.facts_column in rows.column_names
    items = []
    for index in range(count):
        scan_id = str(rows[index]["scan_id"])
        facts_json = rows[index][data.facts_column] if has_facts else None
        keys: tuple[str, ...] = ()
        if data.target_source == "facts":
            facts = DescriptorFacts.from_json(facts_json)
            reference, mentions = describe_with_mentions(
                facts, seed=wording_seed(scan_id, seed, None), families=data.families
            )
            keys = tuple(dict.fromkeys(m.fact_key for m in mentions))
        else:
            reference = str(rows[index][data.text_column])
            if facts_json is not None:
                keys = tuple(
                    dict.fromkeys(m.fact_key for m in describe_with_mentions(DescriptorFacts.from_json(facts_json))[1])
                )
        items.append(GenerationItem(scan_id, np.asarray(codes[index]), facts_json, reference, keys))
    return items


def _t2t_windows(
    config: Stage2Config, train, collator_for_texts, tokenizer, vocab_size: int, cache_dir: Path, seed: int
):
    from .text_corpus import TextWindows, cached_token_memmap, cached_token_stream, load_documents

    t2t = config.t2t
    if t2t.batch_size == 0 or config.losses.t2t_weight == 0:
        return None
    if t2t.corpus is not None:  # streamed to a memory-mapped .npy: corpora larger than memory
        stream = cached_token_memmap(t2t.corpus, tokenizer, cache_dir, text_column=t2t.text_column, split=t2t.split,
                                     vocab_size=vocab_size)  # fmt: skip
        return TextWindows(stream, t2t.window_length, seed=seed)
    else:
        dataset = AlignmentDataset(
            train, codes_column=config.data.codes_column,
            facts_column=config.data.facts_column if config.data.target_source == "facts" else None,
            text_column=config.data.text_column if config.data.target_source == "text" else None,
        )  # fmt: skip
        documents = load_documents([collator_for_texts.target_text(dataset[i]) for i in range(len(dataset))])
    stream = cached_token_stream(documents, tokenizer, cache_dir, vocab_size=vocab_size)
    return TextWindows(stream, t2t.window_length, seed=seed)


def train_alignment(config: Stage2Config) -> Stage2Result:
    """Run stage 2 as configured (see the module docstring); returns where the outputs are."""
    from accelerate.utils import set_seed

    from ..modeling_fmrilm import FmriLMForCausalLM

    started = time.perf_counter()
    if config.training.best_metric in GENERATION_METRICS and config.generation.num_scans == 0:
        raise ValueError(
            f"training.best_metric={config.training.best_metric!r} is a generation metric, but generation.num_scans is "
            "0; describe some validation scans (generation.num_scans > 0) or choose f2t_loss, f2f_loss or loss."
        )
    output_dir = Path(config.output_dir)
    accelerator = build_accelerator(config.training, output_dir)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, output_dir / CONFIG_FILE)
    cache_dir = Path(config.data.cache_dir) if config.data.cache_dir else output_dir / "dataset_cache"
    seed = config.training.seed

    processor = _build_processor(config)
    with accelerator.main_process_first():
        train, validation = _load_splits(config, processor, cache_dir)

    language_model = load_causal_lm(
        config.model.text_model, dtype=config.model.dtype, attn_implementation=config.model.attn_implementation
    )
    set_seed(seed)  # the same initial fMRI embeddings and new token rows on every process and every run
    overrides = {**config.model.overrides, **config_to_dict(config.losses)}
    model = FmriLMForCausalLM.from_text_model(language_model, processor, **overrides)
    del language_model
    if config.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if config.lora.enabled:
        model = _apply_lora(model, config.lora)
    vocab_size = _fmri_model(model).get_input_embeddings().weight.shape[0]

    prompt, templated = _render_prompt(config.prompt, processor)
    separator = config.prompt.target_separator
    if separator is None:
        separator = "" if prompt[-1:].isspace() else " "
    data = config.data
    collator_options = dict(
        prompt=prompt, prompt_has_special_tokens=templated, target_separator=separator,
        target_source=data.target_source, families=data.families, seed=seed, max_length=data.max_length,
    )  # fmt: skip
    validation_collator = AlignmentCollator(processor, fixed_wording=True, **collator_options)
    with accelerator.main_process_first():
        windows = _t2t_windows(config, train, validation_collator, processor.tokenizer, vocab_size, cache_dir, seed)
    train_collator = AlignmentCollator(processor, windows=windows, t2t_batch_size=config.t2t.batch_size,
                                       **collator_options)  # fmt: skip

    dataset_options = dict(
        codes_column=data.codes_column,
        facts_column=data.facts_column if data.target_source == "facts" else None,
        text_column=data.text_column if data.target_source == "text" else None,
    )
    train_loader = make_dataloader(
        AlignmentDataset(train, **dataset_options), data.batch_size, shuffle=True, seed=seed,
        collate_fn=train_collator, num_workers=data.num_workers,
    )  # fmt: skip
    validation_loader = make_dataloader(
        AlignmentDataset(validation, **dataset_options), data.eval_batch_size or data.batch_size, shuffle=False,
        seed=seed, collate_fn=validation_collator, num_workers=data.num_workers,
    )  # fmt: skip
    evaluator = AlignmentEvaluator(
        processor=processor, prompt=prompt, prompt_has_special_tokens=templated,
        generation_items=_generation_items(validation, config, seed), generation=config.generation,
        losses=config.losses, output_dir=output_dir if accelerator.is_main_process else None,
    )  # fmt: skip
    loop = TrainingLoop(
        model, config.training, output_dir=output_dir, train_dataloader=train_loader,
        compute_loss=AlignmentObjective(), eval_dataloader=validation_loader, evaluate=evaluator,
        accelerator=accelerator, tracker_config=config_to_dict(config), project_name="fmrilm-stage2",
    )  # fmt: skip
    evaluator.step = lambda: loop.state.global_step
    result = loop.train(resume_from=config.resume_from)

    model_dir = output_dir / MODEL_FOLDER
    adapter_dir = output_dir / ADAPTER_FOLDER if config.lora.enabled else None
    summary_file = output_dir / SUMMARY_FILE
    best_validation: dict[str, float] = {}
    if accelerator.is_main_process:
        final = _export_best(loop.unwrapped_model, result.best_dir, model_dir, adapter_dir)
        processor.save_pretrained(model_dir)
        best_validation = json.loads((result.best_dir / "best_metric.json").read_text())["metrics"]
        summary = {
            "model_dir": str(model_dir),
            "adapter_dir": None if adapter_dir is None else str(adapter_dir),
            "best_step": result.best_step,
            "best_metric": result.best_metric,
            "best_value": result.best_value,
            "best_validation": best_validation,
            "final_validation": result.last_eval,
            "total_steps": result.total_steps,
            "epochs": result.epochs,
            "train_scans": len(train),
            "validation_scans": len(validation),
            "text_model": config.model.text_model,
            "fmri_tokens_per_scan": processor.num_fmri_tokens,
            "prompt": prompt,
            "lora": config.lora.enabled,
            **_parameter_counts(loop.unwrapped_model),
            "exported_parameters": sum(p.numel() for p in final.parameters()),
            "t2t_corpus_tokens": None if windows is None else int(windows.stream.size),
        }
        write_run_summary(summary_file, summary, accelerator, started)
    accelerator.wait_for_everyone()
    return Stage2Result(
        model_dir=model_dir, adapter_dir=adapter_dir, summary_file=summary_file, metrics_file=result.metrics_file,
        best_step=result.best_step, best_metric=result.best_metric, best_value=result.best_value,
        best_validation=best_validation, final_validation=result.last_eval,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def report(result: Stage2Result) -> list[str]:
    """What a finished stage-2 run prints: the best validation figure and where the outputs are."""
    adapter = f"; LoRA adapter: {result.adapter_dir}" if result.adapter_dir else ""
    return [
        best_line(result),
        f"Model + processor: {result.model_dir}{adapter}",
        f"Summary: {result.summary_file}; metrics log: {result.metrics_file}",
    ]


COMMAND = StageCommand(
    name="align", stage=2, config_class=Stage2Config, train=train_alignment, report=report,
    description="Stage 2: align a causal LM with the fMRI tokens.", example="training.max_steps=100 model.text_model=gpt2 lora.enabled=true",
)
add_arguments, run_from_args, main = COMMAND.add_arguments, COMMAND.run_from_args, COMMAND.main


if __name__ == "__main__":
    sys.exit(main())
