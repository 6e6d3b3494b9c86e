"""``FmriLMForCausalLM``: any Hugging Face causal LM that reads, predicts and describes fMRI tokens.

The language model (GPT-2, Llama, Qwen3 ... any ``AutoModelForCausalLM``) is wrapped untouched as
``self.language_model``. Three modules are added (DESIGN 5):

- ``fmri_embed`` (codebook_size x H): the input embedding of each discrete stage-1 code (SPEC B2: the
  LM reads the codes), initialised from the projected stage-1 codebook by :meth:`from_text_model`;
- ``roi_embed`` (n_rois x H): added to the code embedding of every placeholder of ROI ``r``;
- ``fmri_head`` (H -> codebook_size, no bias): predicts codes from the LM's last hidden state.

Inputs. The processor writes each scan as ``<fmri_start> <fmri> x N <fmri_end>`` (N = n_time_patches
x n_rois, time-major: placeholder ``k`` is time patch ``k // n_rois`` of ROI ``k % n_rois``) and
returns ``fmri_codes`` (S, N): one row per block, in reading order over the batch. The model swaps
each placeholder's embedding for ``fmri_embed(code) + roi_embed(roi)`` (the LLaVA pattern). Codes
equal to ``PAD_CODE`` (-1, padded time patches) get a zero input embedding, are never attention keys
and are ignored by every loss; the outputs at their own positions are meaningless.

Attention and positions (:mod:`.masking_fmrilm`). At prefill the model builds a 4-D additive mask
(B, 1, L, L) from the placeholder positions and the 2-D padding mask: an fMRI token sees its block's
``<fmri_start>`` and the tokens of its block up to its own time patch (block-causal over time,
bidirectional within a patch), never text or other blocks; ``<fmri_start>`` sees itself; text and
``<fmri_end>`` are ordinary causal over every earlier real token. All placeholders of one time patch
share a position id, so text continues after the block's last patch. Callers (and ``generate()``)
only ever pass the 2-D mask; after a prefill, decode steps use the 2-D mask and the KV cache. Text-only
batches go to the language model with the plain 2-D mask.

Losses (computed when ``labels`` are given; losses are means over the counted targets and 0 when
there is none):

- F2T, batches with fMRI blocks: causal LM cross-entropy on ``labels`` (the processor labels only
  descriptor/answer tokens and EOS, SPEC B8); targets at the fMRI special tokens are always ignored;
- F2F, batches with fMRI blocks: ``fmri_head`` at the placeholder of ROI r, time patch t predicts the
  code of ROI r at time patch t + 1, i.e. placeholder ``k`` predicts the code of placeholder ``k + R``
  of the same block (time-major order makes it a shift by R); the last time patch and pairs with a
  ``PAD_CODE`` on either side are ignored;
- T2T, text-only batches: the same causal LM cross-entropy on ``labels`` (text tokenized with the LM's
  own tokenizer, SPEC B7).

``loss = f2t_weight * F2T + f2f_weight * F2F`` for a batch with fMRI blocks (a batch that has any
block counts as one), ``t2t_weight * T2T`` for a text-only batch; the trainer adds the two kinds.

This module imports only torch, transformers and its siblings (relatively), so ``save_pretrained``
can ship it as remote code (``trust_remote_code=True``).
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.utils import ModelOutput
from transformers.utils.deprecation import deprecate_kwarg

from .configuration_fmrilm import FMRI_TOKEN_ID_FIELDS, FmriLMConfig
from .masking_fmrilm import FmriLayout, allowed_attention, find_fmri_layout, to_additive_mask
from .masking_fmrilm import fmri_position_ids as layout_position_ids

__all__ = ["IGNORE_INDEX", "PAD_CODE", "FmriLMForCausalLM", "FmriLMOutput", "projected_codebook"]

#: Code of a placeholder whose time patch is padding (the same value as ``processing_fmrilm.PAD_CODE``).
PAD_CODE = -1
#: Label value that no loss counts (the Hugging Face convention).
IGNORE_INDEX = -100
#: Attention implementations that honour an arbitrary 4-D additive mask (transformers 5.x).
_MASK_AWARE_ATTENTION = ("eager", "sdpa")
#: An id that no token has: stands in for the fMRI token ids of a config that has none (text only).
_NO_TOKEN = -1


@dataclass
class FmriLMOutput(ModelOutput):
    r"""Output of :class:`FmriLMForCausalLM`.

    Args:
        loss: () weighted total: ``f2t_weight * f2t_loss + f2f_weight * f2f_loss`` for a batch with
            fMRI blocks, ``t2t_weight * t2t_loss`` for a text-only batch; only when ``labels`` are given.
        f2t_loss: () fMRI-to-text cross-entropy over the labelled tokens (batches with fMRI blocks).
        f2f_loss: () next-time-patch code cross-entropy over the placeholders (batches with fMRI blocks).
        t2t_loss: () text-only causal LM cross-entropy (text-only batches).
        logits: (B, L, V) the language model's next-token scores (only the last ``logits_to_keep``
            positions when that is set).
        fmri_logits: (B, L, codebook_size) ``fmri_head`` scores, meaningful at the ``<fmri>``
            placeholders only (placeholder ``k`` of a block scores the code of placeholder ``k + R``);
            None for text-only inputs and when ``logits_to_keep`` is set.
        cache: the key/value cache (``output.past_key_values`` also returns it, with transformers'
            deprecation warning).
        hidden_states: the language model's hidden states, when ``output_hidden_states=True``.
        attentions: the language model's attention weights, when ``output_attentions=True``.
    """

    loss: torch.FloatTensor | None = None
    f2t_loss: torch.FloatTensor | None = None
    f2f_loss: torch.FloatTensor | None = None
    t2t_loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    fmri_logits: torch.FloatTensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


def projected_codebook(codebook: torch.Tensor, width: int, target_norm: float) -> torch.Tensor:
    """Map stage-1 code vectors (K, D) to (K, ``width``) language-model embeddings.

    ``codebook @ Q`` with a random ``Q`` (D, width) drawn from torch's generator: orthonormal rows
    when ``D <= width`` (an isometry: every inner product, hence the codes' cosine geometry, is kept),
    orthonormal columns otherwise (a projection onto a random ``width``-dimensional subspace). The
    result is scaled so that its mean row norm equals ``target_norm`` (the language model's mean
    input-embedding norm), so code embeddings start at the scale of word embeddings.

    Returns:
        float32 (K, width). With ``D <= width``: ``out @ out.T == s**2 * codebook @ codebook.T`` for
        ``s = target_norm / mean_row_norm(codebook)``.
    """
    if codebook.ndim != 2 or codebook.shape[0] == 0:
        raise ValueError(f"codebook must be shaped (codes, dim) with at least one code, got {tuple(codebook.shape)}.")
    vectors = codebook.detach().to(torch.float64).cpu()
    dim = vectors.shape[1]
    gaussian = torch.randn(max(dim, width), min(dim, width), dtype=torch.float64)
    orthonormal_columns, _ = torch.linalg.qr(gaussian)  # (max, min), Q^T Q = I
    projection = orthonormal_columns.T if dim <= width else orthonormal_columns  # (dim, width)
    projected = vectors @ projection
    mean_norm = projected.norm(dim=1).mean()
    if not torch.isfinite(mean_norm) or mean_norm <= 0:
        raise ValueError("The stage-1 codebook has no non-zero finite code vector; was the fMRI tokenizer trained?")
    return (projected * (target_norm / mean_norm)).float()


class FmriLMForCausalLM(PreTrainedModel, GenerationMixin):
    r"""A causal language model that reads, predicts and describes fMRI tokens.

    Build one from a pretrained LM and a stage-1 processor with :meth:`from_text_model`; load a saved
    one with ``from_pretrained`` / ``AutoModelForCausalLM.from_pretrained``. See the module docstring
    for inputs, attention, positions and losses.

    Args:
        config: an :class:`FmriLMConfig`.
        language_model: an already built causal LM to wrap (its config becomes
            ``config.text_config``); default: ``AutoModelForCausalLM.from_config(config.text_config)``.

    Example:

    ```python
    >>> model = FmriLMForCausalLM.from_text_model("path/to/causal-lm", processor)  # doctest: +SKIP
    >>> inputs = processor(text="<fmri> Describe the brain activity in this scan.", fmri_codes=codes,
    ...                    return_tensors="pt")  # doctest: +SKIP
    >>> out = model.generate(**inputs, max_new_tokens=64)  # doctest: +SKIP
    ```
    """

    config_class = FmriLMConfig
    config: FmriLMConfig
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    # The model passes its own 4-D additive mask: eager and SDPA honour it; flash/flex kernels do not.
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _can_compile_fullgraph = False
    # F2T/F2F are means over this batch's targets; a trainer must not pass num_items_in_batch.
    accepts_loss_kwargs = False
    _no_split_modules: ClassVar[list[str]] = []

    def __init__(self, config: FmriLMConfig, language_model: PreTrainedModel | None = None):
        super().__init__(config)
        if language_model is None:
            language_model = AutoModelForCausalLM.from_config(config.text_config)
        elif language_model.config._attn_implementation is None:
            # Building a config around the LM's own config resets the LM's attention implementation to
            # None (transformers passes the composite's setting down); use the one resolved for this model.
            language_model.set_attn_implementation(self.config._attn_implementation or "sdpa")
        self.language_model = language_model
        # One config object for both, so resizing the embeddings updates config.text_config.vocab_size.
        config.text_config = language_model.config
        config._check_settings()
        width = language_model.get_input_embeddings().embedding_dim
        self.fmri_embed = nn.Embedding(config.codebook_size, width)
        self.roi_embed = nn.Embedding(config.n_rois, width)
        self.fmri_head = nn.Linear(width, config.codebook_size, bias=False)
        self.post_init()
        self._suppress_fmri_tokens_in_generation()

    # ---- weights ---------------------------------------------------------------------------------

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Normal(0, the LM's ``initializer_range``) for the fMRI modules (the LM initialises its own)."""
        std = getattr(self.config.text_config, "initializer_range", None) or 0.02
        if isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module | None:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.language_model.set_output_embeddings(new_embeddings)

    def get_decoder(self) -> nn.Module:
        return self.language_model.get_decoder()

    def resize_token_embeddings(
        self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None, mean_resizing: bool = True
    ) -> nn.Embedding:
        """Resize the language model's token embeddings (and its LM head); ``config.text_config`` follows."""
        embeddings = self.language_model.resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        self.config.text_config = self.language_model.config
        return embeddings

    def _suppress_fmri_tokens_in_generation(self) -> None:
        """Never generate the fMRI special tokens: they stand for codes that generated text cannot carry."""
        if not self.config.has_fmri_tokens or self.generation_config is None:
            return
        fmri_ids = {self.config.fmri_token_id, self.config.fmri_start_token_id, self.config.fmri_end_token_id}
        suppressed = set(self.generation_config.suppress_tokens or [])
        self.generation_config.suppress_tokens = sorted(suppressed | fmri_ids)

    # ---- building from a pretrained LM -------------------------------------------------------------

    @classmethod
    def from_text_model(
        cls, text_model: PreTrainedModel | str | os.PathLike, processor: Any, **config_overrides: Any
    ) -> FmriLMForCausalLM:
        """Wrap a causal LM so that it reads the codes of the processor's stage-1 fMRI tokenizer.

        1. ``processor.add_fmri_special_tokens()`` adds ``<fmri>``, ``<fmri_start>``, ``<fmri_end>``
           to the processor's text tokenizer (idempotent); the LM's embeddings (and head) are resized
           to ``len(processor.tokenizer)`` when that is larger (transformers' mean resizing);
        2. the config takes ``n_rois``, ``n_time_patches``, ``codebook_size`` (= ``num_codes``) and
           ``codebook_dim`` from the fMRI tokenizer, the token ids from the tokenizer, and any other
           :class:`FmriLMConfig` field from ``config_overrides`` (e.g. loss weights);
        3. ``fmri_embed`` is initialised from the stage-1 codebook by :func:`projected_codebook`: a
           random isometry (or projection, when the code vectors are wider than the LM) to the LM's
           width, scaled to the LM's mean input-embedding norm. ``roi_embed`` and ``fmri_head`` start
           from Normal(0, ``initializer_range``). Draws use torch's generator: seed it to reproduce;
        4. the generation config is the LM's, with the fMRI tokens suppressed.

        The LM's own weights are kept as they are (only the added vocabulary rows are new). The new
        modules are placed on the LM's device and in its dtype.

        Args:
            text_model: a causal LM (``PreTrainedModel``) or a name/path for
                ``AutoModelForCausalLM.from_pretrained``.
            processor: an ``FmriLMProcessor`` with a text ``tokenizer`` (the LM's) and the stage-1
                ``fmri_tokenizer``.
            config_overrides: other ``FmriLMConfig`` fields (``f2t_weight``, ``f2f_weight``, ``t2t_weight``).
        """
        if isinstance(text_model, (str, os.PathLike)):
            text_model = AutoModelForCausalLM.from_pretrained(text_model)
        if isinstance(text_model, FmriLMForCausalLM) or not isinstance(text_model, PreTrainedModel):
            raise TypeError(
                "text_model must be a causal language model (a transformers PreTrainedModel such as GPT2LMHeadModel or "
                f"LlamaForCausalLM) or its name/path, got {type(text_model).__name__}."
            )
        tokenizer = getattr(processor, "tokenizer", None)
        fmri_tokenizer = getattr(processor, "fmri_tokenizer", None)
        if tokenizer is None or fmri_tokenizer is None or not hasattr(processor, "add_fmri_special_tokens"):
            raise ValueError(
                "processor must be an FmriLMProcessor with the language model's text tokenizer and the stage-1 fMRI "
                "tokenizer: FmriLMProcessor.from_pretrained(stage1_folder) and set processor.tokenizer = "
                "AutoTokenizer.from_pretrained(<the LM>)."
            )
        fmri_config = fmri_tokenizer.config
        derived = {
            "n_rois": fmri_config.n_rois,
            "n_time_patches": fmri_config.num_time_patches,
            "codebook_size": fmri_config.num_codes,
            "codebook_dim": fmri_config.codebook_dim,
        }
        clashes = sorted((set(derived) | set(FMRI_TOKEN_ID_FIELDS) | {"text_config"}) & set(config_overrides))
        if clashes:
            raise ValueError(
                f"{clashes} come from the language model, the processor's tokenizer and its fMRI tokenizer; pass only "
                "other FmriLMConfig fields (e.g. f2t_weight, f2f_weight, t2t_weight)."
            )
        codebook = fmri_tokenizer.quantizer.codebook
        if tuple(codebook.shape) != (fmri_config.num_codes, fmri_config.codebook_dim):
            raise ValueError(
                f"The fMRI tokenizer's codebook is shaped {tuple(codebook.shape)}, but its config says "
                f"({fmri_config.num_codes}, {fmri_config.codebook_dim}); the processor's fMRI tokenizer is inconsistent."
            )

        embeddings = text_model.get_input_embeddings()
        word_norm = float(embeddings.weight.detach().float().norm(dim=1).mean())
        token_ids = processor.add_fmri_special_tokens()
        if len(tokenizer) > embeddings.num_embeddings:
            text_model.resize_token_embeddings(len(tokenizer))
        # Building the config below resets the LM's attention implementation: pass it on explicitly.
        attention = config_overrides.pop("attn_implementation", text_model.config._attn_implementation)
        config = cls.config_class(
            text_config=text_model.config, attn_implementation=attention, **derived, **token_ids, **config_overrides
        )
        model = cls(config, language_model=text_model)
        weight = text_model.get_input_embeddings().weight
        with torch.no_grad():
            model.fmri_embed.weight.copy_(projected_codebook(codebook, weight.shape[1], word_norm))
        for module in (model.fmri_embed, model.roi_embed, model.fmri_head):
            module.to(device=weight.device, dtype=weight.dtype)
        if text_model.generation_config is not None:
            model.generation_config = copy.deepcopy(text_model.generation_config)
        model._suppress_fmri_tokens_in_generation()
        return model

    # ---- fMRI inputs -------------------------------------------------------------------------------

    def fmri_embeddings(self, fmri_codes: torch.Tensor) -> torch.Tensor:
        """Input embeddings of fMRI codes: (S, N) integer codes -> (S, N, H).

        ``fmri_embed(code) + roi_embed(k % n_rois)`` at placeholder ``k``; a ``PAD_CODE`` gets a zero vector.
        """
        codes = self._checked_codes(fmri_codes)
        rois = torch.arange(codes.shape[1], device=codes.device) % self.config.n_rois
        embeddings = self.fmri_embed(codes.clamp(min=0)) + self.roi_embed(rois)[None]
        return embeddings * (codes != PAD_CODE)[..., None].to(embeddings.dtype)

    def fmri_position_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Position ids (B, L) int64: all placeholders of a time patch share one, padding gets 0.

        See :mod:`.masking_fmrilm`: every real token advances the position by one, except that a
        block of T' time patches advances it by T'.
        """
        input_ids = self._checked_input_ids(input_ids)
        layout = self._layout(input_ids, self._checked_padding_mask(attention_mask, input_ids.shape, input_ids.device))
        return layout_position_ids(layout, self.config.n_rois)

    def fmri_attention_mask(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        dtype: torch.dtype = torch.float32,
        fmri_codes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The 4-D additive attention mask (B, 1, L, L) of these inputs: 0 allowed, ``finfo(dtype).min`` blocked.

        With ``fmri_codes``, placeholders whose code is ``PAD_CODE`` are never keys either.
        """
        input_ids = self._checked_input_ids(input_ids)
        layout = self._layout(input_ids, self._checked_padding_mask(attention_mask, input_ids.shape, input_ids.device))
        missing = None
        if fmri_codes is not None:
            missing = self._missing_keys(layout, self._checked_codes(fmri_codes, layout.num_blocks))
        return to_additive_mask(allowed_attention(layout, missing), dtype)

    def _layout(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> FmriLayout:
        config = self.config
        has_tokens = config.has_fmri_tokens
        return find_fmri_layout(
            input_ids,
            attention_mask,
            fmri_token_id=config.fmri_token_id if has_tokens else _NO_TOKEN,
            fmri_start_token_id=config.fmri_start_token_id if has_tokens else _NO_TOKEN,
            fmri_end_token_id=config.fmri_end_token_id if has_tokens else _NO_TOKEN,
            n_rois=config.n_rois,
            num_fmri_tokens=config.num_fmri_tokens,
        )

    @staticmethod
    def _missing_keys(layout: FmriLayout, codes: torch.Tensor) -> torch.Tensor:
        """bool (B, L): the placeholders whose code is ``PAD_CODE``."""
        missing = torch.zeros_like(layout.is_placeholder)
        missing[layout.is_placeholder] = codes.reshape(-1).to(missing.device) == PAD_CODE
        return missing

    def _checked_codes(self, fmri_codes: Any, num_blocks: int | None = None) -> torch.Tensor:
        """``fmri_codes`` as an int64 (S, N) tensor on the model's device, after every check."""
        config = self.config
        codes = fmri_codes if isinstance(fmri_codes, torch.Tensor) else torch.as_tensor(fmri_codes)
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise ValueError(f"fmri_codes must be integer codes, got dtype {codes.dtype}.")
        if codes.ndim != 2 or codes.shape[1] != config.num_fmri_tokens:
            raise ValueError(
                f"fmri_codes must be shaped (scans, num_fmri_tokens) = (S, {config.num_fmri_tokens}) "
                f"({config.n_time_patches} time patches x {config.n_rois} ROIs, time-major), got {tuple(codes.shape)}."
            )
        if num_blocks is not None and codes.shape[0] != num_blocks:
            raise ValueError(
                f"input_ids hold {num_blocks} fMRI block(s) but fmri_codes has {codes.shape[0]} row(s): pass exactly one "
                "row of codes per '<fmri>' block, in reading order over the batch."
            )
        if codes.numel():
            low, high = int(codes.min()), int(codes.max())
            if low < PAD_CODE or high >= config.codebook_size:
                raise ValueError(
                    f"fmri_codes must lie in [0, {config.codebook_size}) (or be PAD_CODE = {PAD_CODE} for padded time "
                    f"patches), got values in [{low}, {high}]; were they made by a different fMRI tokenizer?"
                )
        return codes.to(device=self.fmri_embed.weight.device, dtype=torch.long)

    @staticmethod
    def _checked_input_ids(input_ids: torch.Tensor) -> torch.Tensor:
        if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2:
            shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            raise ValueError(f"input_ids must be a (batch, length) tensor of token ids, got {shape}.")
        return input_ids

    @staticmethod
    def _checked_padding_mask(
        attention_mask: torch.Tensor | None, shape: tuple[int, ...] | torch.Size, device: torch.device
    ) -> torch.Tensor | None:
        """The 2-D padding mask (B, K) as int64 0/1 on ``device``; K is the cached plus the new length."""
        if attention_mask is None:
            return None
        if not isinstance(attention_mask, torch.Tensor):
            attention_mask = torch.as_tensor(attention_mask)
        if attention_mask.ndim != 2:
            raise ValueError(
                f"attention_mask must be the 2-D padding mask (batch, length) of 1s and 0s, got shape "
                f"{tuple(attention_mask.shape)}: FmriLMForCausalLM builds the 4-D fMRI attention mask itself."
            )
        if tuple(attention_mask.shape) != tuple(shape):
            raise ValueError(
                f"attention_mask is shaped {tuple(attention_mask.shape)}, expected {tuple(shape)} (batch, cached + new "
                "tokens)."
            )
        if attention_mask.numel() and not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
            raise ValueError("attention_mask must hold only 1 (real token) and 0 (padding).")
        return attention_mask.to(device=device, dtype=torch.long)

    # ---- forward -----------------------------------------------------------------------------------

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        fmri_codes: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ) -> FmriLMOutput | tuple:
        r"""Run the language model on text with fMRI blocks spliced in; losses when ``labels`` are given.

        Args:
            input_ids: (B, L) token ids with ``<fmri_start> <fmri> x N <fmri_end>`` blocks (needed to
                place fMRI codes; ``inputs_embeds`` alone means plain text).
            attention_mask: (B, L) 2-D padding mask (1 real, 0 padding); after a cache, (B, cached + L).
            fmri_codes: (S, N) integer codes, one row per block in reading order; ``PAD_CODE`` (-1)
                for padded time patches. Only without a filled cache (prefill or full forward).
            labels: (B, L) target ids, ``IGNORE_INDEX`` (-100) where no loss is wanted; unshifted
                (the model shifts them).
            position_ids: (B, L); computed from ``input_ids`` when None (required after a cache).
            cache: a key/value cache (``past_key_values`` is the deprecated name); dynamic caches only.
            inputs_embeds: (B, L, H) instead of ``input_ids`` for text-only inputs.
            use_cache, output_hidden_states, output_attentions: as in transformers' causal LMs.
            return_dict: False returns ``FmriLMOutput.to_tuple()``.
            logits_to_keep: compute logits for the last this-many positions only (0: all); no losses
                and no ``fmri_logits`` then (``generate()`` sets it to 1).
            kwargs: passed on to the language model.

        Returns:
            :class:`FmriLMOutput`.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids and inputs_embeds.")
        if input_ids is not None:
            input_ids = self._checked_input_ids(input_ids)
        if cache is not None and getattr(cache, "is_compileable", False):
            raise ValueError(
                "FmriLMForCausalLM builds its own attention mask and supports dynamic key/value caches only; drop "
                "cache_implementation='static' (or the static cache you passed)."
            )
        reference = input_ids if input_ids is not None else inputs_embeds[..., 0]
        batch, length = reference.shape
        past_length = cache.get_seq_length() if cache is not None else 0
        attention_mask = self._checked_padding_mask(attention_mask, (batch, past_length + length), reference.device)
        full_logits = isinstance(logits_to_keep, int) and logits_to_keep == 0

        layout: FmriLayout | None = None
        codes = None
        if past_length == 0:
            if input_ids is not None:
                layout = self._layout(input_ids, attention_mask)
            if layout is not None and layout.num_blocks:
                if fmri_codes is None:
                    raise ValueError(
                        f"input_ids hold {layout.num_blocks} fMRI block(s) but no fmri_codes were given: pass one row of "
                        "codes per block (the processor returns them as 'fmri_codes')."
                    )
                codes = self._checked_codes(fmri_codes, layout.num_blocks)
            else:
                layout = None
                if fmri_codes is not None:
                    raise ValueError(
                        "fmri_codes were given but the inputs have no '<fmri>' placeholders to put them in: build the "
                        "input_ids with the processor (each '<fmri>' marker becomes a block), and pass input_ids, not "
                        "inputs_embeds."
                    )
        else:
            self._check_continuation(input_ids, fmri_codes, position_ids)

        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        if position_ids is None:
            position_ids = (
                layout_position_ids(layout, self.config.n_rois)
                if layout is not None
                else _text_position_ids(attention_mask, batch, length, reference.device)
            )
        language_mask = attention_mask
        if layout is not None:
            self._check_attention_implementation()
            code_embeddings = self.fmri_embeddings(codes).to(inputs_embeds.dtype)
            placeholder = layout.is_placeholder[..., None].expand_as(inputs_embeds)
            inputs_embeds = inputs_embeds.masked_scatter(placeholder, code_embeddings)
            allowed = allowed_attention(layout, self._missing_keys(layout, codes))
            language_mask = to_additive_mask(allowed, inputs_embeds.dtype)

        language_kwargs = dict(kwargs)
        for name, value in (("output_hidden_states", output_hidden_states), ("output_attentions", output_attentions)):
            if value is not None:
                language_kwargs[name] = value
        with _captured_input(self.language_model.get_output_embeddings(), layout is not None and full_logits) as last:
            outputs = self.language_model(
                inputs_embeds=inputs_embeds,
                attention_mask=language_mask,
                position_ids=position_ids,
                cache=cache,
                use_cache=use_cache,
                logits_to_keep=logits_to_keep,
                return_dict=True,
                **language_kwargs,
            )
        fmri_logits = self.fmri_head(last["hidden_states"]) if "hidden_states" in last else None

        losses: dict[str, torch.Tensor | None] = {}
        if labels is not None:
            if not full_logits:
                raise ValueError("labels need the logits of every position: leave logits_to_keep at 0 to get losses.")
            text_loss = self._text_loss(outputs.logits, labels, input_ids, batch, length)
            if layout is not None:
                f2f_loss = self._f2f_loss(fmri_logits, layout, codes)
                losses = {"f2t_loss": text_loss, "f2f_loss": f2f_loss}
                losses["loss"] = self.config.f2t_weight * text_loss + self.config.f2f_weight * f2f_loss
            else:
                losses = {"t2t_loss": text_loss, "loss": self.config.t2t_weight * text_loss}

        output = FmriLMOutput(
            **losses,
            logits=outputs.logits,
            fmri_logits=fmri_logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        use_return_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if use_return_dict else output.to_tuple()

    def _check_attention_implementation(self) -> None:
        """The fMRI mask is an arbitrary 4-D additive mask: only eager and SDPA attention honour it."""
        implementation = self.language_model.config._attn_implementation
        if implementation not in _MASK_AWARE_ATTENTION:
            raise ValueError(
                f"The language model runs {implementation!r} attention, which ignores the 4-D fMRI attention mask; "
                "call model.set_attn_implementation('sdpa') (or 'eager') before passing fMRI blocks."
            )

    def _check_continuation(
        self, input_ids: torch.Tensor | None, fmri_codes: torch.Tensor | None, position_ids: torch.Tensor | None
    ) -> None:
        """Refuse what a step after a filled cache cannot do: new fMRI blocks or unknown positions."""
        if fmri_codes is not None:
            raise ValueError(
                "fmri_codes enter at prefill only: this call continues from a filled cache. Start generation (or the "
                "forward) from the whole prompt with its fMRI blocks and an empty cache."
            )
        if input_ids is not None and self.config.has_fmri_tokens:
            special = torch.tensor(
                [self.config.fmri_token_id, self.config.fmri_start_token_id, self.config.fmri_end_token_id],
                device=input_ids.device,
            )
            if bool(torch.isin(input_ids, special).any()):
                raise ValueError(
                    "Tokens after a filled cache contain fMRI special tokens; fMRI blocks must be in the prefill. (A "
                    "generation config without the fMRI tokens in suppress_tokens can produce them: keep them suppressed.)"
                )
        if position_ids is None:
            raise ValueError(
                "position_ids are required when continuing from a cache (fMRI blocks shift every later position); "
                "generate() computes them, or call model.fmri_position_ids(full_input_ids, full_attention_mask) and "
                "take the new columns."
            )

    def _text_loss(
        self, logits: torch.Tensor, labels: torch.Tensor, input_ids: torch.Tensor | None, batch: int, length: int
    ) -> torch.Tensor:
        """Mean next-token cross-entropy over labelled targets (0 when there is none); fMRI tokens never count."""
        if not isinstance(labels, torch.Tensor) or tuple(labels.shape) != (batch, length):
            shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise ValueError(
                f"labels must be shaped like input_ids, (batch, length) = ({batch}, {length}), got {shape}."
            )
        labels = labels.to(device=logits.device, dtype=torch.long)
        vocab_size = logits.shape[-1]
        counted = labels != IGNORE_INDEX
        if bool(((labels < 0) | (labels >= vocab_size))[counted].any()):
            raise ValueError(
                f"labels must be token ids in [0, {vocab_size}) or {IGNORE_INDEX} (ignored), got values in "
                f"[{int(labels.min())}, {int(labels.max())}]."
            )
        if input_ids is not None and self.config.has_fmri_tokens:
            special = torch.tensor(
                [self.config.fmri_token_id, self.config.fmri_start_token_id, self.config.fmri_end_token_id],
                device=labels.device,
            )
            labels = labels.masked_fill(torch.isin(input_ids.to(labels.device), special), IGNORE_INDEX)
        targets = labels[:, 1:]
        scores = logits[:, :-1].float()
        total = F.cross_entropy(
            scores.reshape(-1, vocab_size), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        return total / (targets != IGNORE_INDEX).sum().clamp(min=1)

    def _f2f_loss(self, fmri_logits: torch.Tensor, layout: FmriLayout, codes: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of placeholder k's scores against the code of placeholder k + R of its block."""
        num_scans, num_tokens = codes.shape
        rois = self.config.n_rois
        scores = fmri_logits[layout.is_placeholder].reshape(num_scans, num_tokens, -1)[:, : num_tokens - rois]
        sources, targets = codes[:, : num_tokens - rois], codes[:, rois:]
        counted = (sources != PAD_CODE) & (targets != PAD_CODE)
        targets = targets.masked_fill(~counted, IGNORE_INDEX).to(scores.device)
        total = F.cross_entropy(
            scores.float().reshape(-1, scores.shape[-1]),
            targets.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        return total / counted.sum().clamp(min=1).to(total.device)

    # ---- generation --------------------------------------------------------------------------------

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        next_sequence_length: int | None = None,
        cache: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        is_first_iteration: bool | None = False,
        fmri_codes: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Inputs of one generation step: fMRI codes at prefill only, fMRI position ids every step.

        Position ids are recomputed from the whole sequence so far (``input_ids`` and the 2-D
        ``attention_mask``) and the new columns taken, so they continue correctly after the fMRI
        blocks, with left padding and after reordering (beam search); ``position_ids`` that
        ``generate()`` tracks itself are ignored. The attention mask stays 2-D: :meth:`forward`
        builds the 4-D fMRI mask at prefill, and decode steps use the 2-D mask with the cache.
        """
        model_inputs = super().prepare_inputs_for_generation(
            input_ids,
            next_sequence_length=next_sequence_length,
            cache=cache,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            is_first_iteration=is_first_iteration,
            **kwargs,
        )
        if attention_mask is not None:
            model_inputs["attention_mask"] = attention_mask
        step_ids = model_inputs.get("input_ids")
        new_length = step_ids.shape[1] if step_ids is not None else model_inputs["inputs_embeds"].shape[1]
        if attention_mask is not None and attention_mask.shape[1] != input_ids.shape[1]:
            # The prompt came as inputs_embeds (text only): positions follow the 2-D mask.
            positions = _text_position_ids(attention_mask, *attention_mask.shape, attention_mask.device)
        else:
            positions = self.fmri_position_ids(input_ids, attention_mask)
        model_inputs["position_ids"] = positions[:, -new_length:]
        prefill = cache is None or cache.get_seq_length() == 0
        if prefill and fmri_codes is not None:
            model_inputs["fmri_codes"] = fmri_codes
        return model_inputs

    def _expand_inputs_for_generation(
        self,
        expand_size: int = 1,
        is_encoder_decoder: bool = False,
        input_ids: torch.LongTensor | None = None,
        **model_kwargs: Any,
    ) -> tuple[torch.LongTensor, dict[str, Any]]:
        """Repeat each sequence ``expand_size`` times (beams, ``num_return_sequences``), its fMRI code rows with it.

        ``fmri_codes`` has one row per block, not per sequence, so its rows are repeated per
        sequence (all blocks of sequence 0, again for each copy, then sequence 1 ...).
        """
        fmri_codes = model_kwargs.pop("fmri_codes", None)
        if fmri_codes is not None and expand_size > 1 and input_ids is not None and self.config.has_fmri_tokens:
            layout = self._layout(input_ids, model_kwargs.get("attention_mask"))
            fmri_codes = _repeat_rows_per_sequence(fmri_codes, layout, expand_size)
        expanded_ids, model_kwargs = super()._expand_inputs_for_generation(
            expand_size=expand_size, is_encoder_decoder=is_encoder_decoder, input_ids=input_ids, **model_kwargs
        )
        if fmri_codes is not None:
            model_kwargs["fmri_codes"] = fmri_codes
        return expanded_ids, model_kwargs


def _text_position_ids(
    attention_mask: torch.Tensor | None, batch: int, length: int, device: torch.device
) -> torch.Tensor:
    """Positions of plain text (B, L): count of real tokens before each token; padding gets 0."""
    if attention_mask is None:
        return torch.arange(length, device=device).expand(batch, length)
    positions = attention_mask.long().cumsum(dim=1) - 1
    return torch.where(attention_mask.bool(), positions, torch.zeros_like(positions))


def _repeat_rows_per_sequence(fmri_codes: torch.Tensor, layout: FmriLayout, expand_size: int) -> torch.Tensor:
    """Rows of ``fmri_codes`` (one per block, reading order) for every sequence repeated ``expand_size`` times."""
    run_starts = layout.is_placeholder & (layout.index_in_block == 0)
    blocks_per_sequence = run_starts.sum(dim=1).to(fmri_codes.device)
    first_row = blocks_per_sequence.cumsum(0) - blocks_per_sequence
    sequence_of_copy = torch.arange(len(blocks_per_sequence), device=fmri_codes.device).repeat_interleave(expand_size)
    counts, starts = blocks_per_sequence[sequence_of_copy], first_row[sequence_of_copy]
    offsets = torch.arange(int(counts.sum()), device=fmri_codes.device) - (counts.cumsum(0) - counts).repeat_interleave(
        counts
    )
    return fmri_codes[starts.repeat_interleave(counts) + offsets]


@contextlib.contextmanager
def _captured_input(module: nn.Module | None, enabled: bool) -> Iterator[dict[str, torch.Tensor]]:
    """While active, store the input of ``module`` (the LM head) as ``["hidden_states"]``.

    The LM head reads the language model's final hidden state (after its last norm, whatever the
    architecture), which is what ``fmri_head`` reads too; capturing it costs no extra memory,
    unlike ``output_hidden_states=True``.
    """
    captured: dict[str, torch.Tensor] = {}
    if not enabled or module is None:
        yield captured
        return

    def keep_input(_module: nn.Module, args: tuple[Any, ...]) -> None:
        captured["hidden_states"] = args[0]

    handle = module.register_forward_pre_hook(keep_input)
    try:
        yield captured
    finally:
        handle.remove()


FmriLMForCausalLM.register_for_auto_class("AutoModelForCausalLM")
