"""Configurations of fmri-lm's models.

``FmriTokenizerConfig`` describes the stage-1 fMRI tokenizer (ViT encoder over time patches of each
ROI, a vector quantizer, a ViT decoder). The feature extractor is registered against it, so
``AutoFeatureExtractor`` resolves ``FmriFeatureExtractor`` by name.

``FmriLMConfig`` describes the stage-2/3 language model: any causal LM (``text_config``) that reads
discrete fMRI codes through its own embeddings and predicts them with an fMRI head.

This file imports nothing from the rest of the package, so ``save_pretrained`` can ship it as
remote code.
"""

from __future__ import annotations

import math
import numbers
from typing import ClassVar, Literal

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

__all__ = ["FmriLMConfig", "FmriTokenizerConfig"]

#: Architecture presets: (hidden_size, num_hidden_layers, num_attention_heads) of the encoder.
_TOKENIZER_PRESETS: dict[str, dict] = {
    "tiny": dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        decoder_hidden_size=32, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
        codebook_size=64, codebook_dim=16, contrastive_dim=16, domain_hidden_size=16,
    ),
    "small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}  # fmt: skip

POOLINGS = ("mean", "cls", "attention")
QUANTIZERS = ("vq", "fsq")


@strict
class FmriTokenizerConfig(PreTrainedConfig):
    r"""Configuration of the stage-1 fMRI tokenizer (``FmriTokenizerModel``).

    One token is one ROI x ``patch_size`` TRs (patches run along time only). A scan of
    ``max_timepoints`` TRs over ``n_rois`` ROIs therefore gives ``n_rois * max_timepoints // patch_size``
    tokens, ordered time-major: token ``t * n_rois + r`` is time patch ``t`` of ROI ``r``.

    Args:
        n_rois: number of ROIs (atlas regions) per scan.
        max_timepoints: scan length in TRs after resampling to the target TR.
        patch_size: TRs per token; must divide ``max_timepoints`` (16, 32, 80 or 160 in the paper).
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size: encoder ViT shape.
        decoder_hidden_size, decoder_num_hidden_layers, decoder_num_attention_heads: decoder ViT
            shape; ``None`` copies the encoder's (decoder intermediate size is 4x its width).
        quantizer: ``"vq"`` (cosine NormEMA vector quantizer) or ``"fsq"`` (finite scalar quantizer).
        codebook_size, codebook_dim: VQ codebook shape (ignored by FSQ, whose size is the product of
            ``fsq_levels``).
        fsq_levels: levels per FSQ dimension.
        ema_decay: EMA decay of the VQ codebook update.
        commitment_weight: weight of the commitment loss.
        kmeans_init: initialise the codebook with k-means on the first batch.
        dead_code_steps: a code unused for this many training steps is re-seeded from recent encoder
            outputs (0 disables restarts).
        layer_norm_eps, initializer_range: usual ViT settings.
        drop_path_rate: stochastic depth of the last encoder/decoder layer (rising linearly from 0 at
            the first layer).
        attention_dropout, hidden_dropout: dropout on the attention weights and on the outputs of
            the attention and MLP sub-layers (0 in the paper).
        decoder_intermediate_size: MLP width of the decoder; ``None`` is 4x ``decoder_hidden_size``.
        vq_chunk_size: rows per chunk when the VQ computes nearest codes (bounds its memory).
        kmeans_iters: iterations of the codebook's k-means initialisation (0: random valid vectors).
        pooling: how the encoder tokens become one scan vector for text alignment: ``"mean"`` over
            real tokens, ``"cls"`` (adds a CLS token to the encoder) or ``"attention"`` (a learned
            query attending to the tokens, as SigLIP's MAP head).
        text_embedding_dim: width of the precomputed text embeddings the scans are aligned to;
            ``None`` builds no contrastive head (no text alignment).
        contrastive_dim: width of the shared fMRI/text space of the contrastive head.
        init_logit_scale: initial **log** of the SigLIP logit scale (``log(10)``, as Zhai et al.
            2023 and open_clip); the scale is learned as its log and used as ``exp(log_scale)``.
        init_logit_bias: initial SigLIP logit bias (-10, learned).
        max_logit_scale: the exponentiated logit scale is clamped to at most this value.
        llm_embedding_dim: width of the language model's word embeddings that the domain-adversarial
            term aligns the encoder tokens with; needed when ``domain_weight > 0``.
        domain_hidden_size: hidden width of the domain classifier.
        reconstruction_weight, contrastive_weight, domain_weight: loss weights. The total loss is
            ``reconstruction_weight * reconstruction + commitment + contrastive_weight * contrastive
            + domain_weight * domain``; ``domain_weight = 0`` builds no domain classifier.

    Example:

    ```python
    >>> from fmrilm import FmriTokenizerConfig
    >>> config = FmriTokenizerConfig.preset("small", n_rois=94, patch_size=16)
    >>> config.num_tokens
    940
    ```
    """

    model_type = "fmri_tokenizer"

    n_rois: int = 450
    max_timepoints: int = 160
    patch_size: int = 16
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    decoder_hidden_size: int | None = None
    decoder_num_hidden_layers: int | None = None
    decoder_num_attention_heads: int | None = None
    quantizer: Literal["vq", "fsq"] = "vq"
    codebook_size: int = 8192
    codebook_dim: int = 128
    fsq_levels: list[int] | tuple[int, ...] = (8, 8, 8, 6, 5)
    ema_decay: float = 0.99
    commitment_weight: float = 1.0
    kmeans_init: bool = True
    dead_code_steps: int = 100
    layer_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    drop_path_rate: float = 0.0
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0
    decoder_intermediate_size: int | None = None
    vq_chunk_size: int = 4096
    kmeans_iters: int = 10
    pooling: Literal["mean", "cls", "attention"] = "mean"
    text_embedding_dim: int | None = None
    contrastive_dim: int = 512
    init_logit_scale: float = math.log(10.0)
    init_logit_bias: float = -10.0
    max_logit_scale: float = 100.0
    llm_embedding_dim: int | None = None
    domain_hidden_size: int = 256
    reconstruction_weight: float = 1.0
    contrastive_weight: float = 1.0
    domain_weight: float = 0.0

    def __post_init__(self, **kwargs):
        self.decoder_hidden_size = self.decoder_hidden_size or self.hidden_size
        self.decoder_num_hidden_layers = self.decoder_num_hidden_layers or self.num_hidden_layers
        self.decoder_num_attention_heads = self.decoder_num_attention_heads or self.num_attention_heads
        self.decoder_intermediate_size = self.decoder_intermediate_size or 4 * self.decoder_hidden_size
        self.fsq_levels = list(self.fsq_levels)
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Refuse shapes the tokenizer cannot build, saying which setting to change."""
        super().validate_architecture()
        for name in ("n_rois", "max_timepoints", "patch_size", "hidden_size", "num_hidden_layers",
                     "num_attention_heads", "codebook_size", "codebook_dim"):  # fmt: skip
            if getattr(self, name) <= 0:
                raise ValueError(f"FmriTokenizerConfig.{name} must be positive, got {getattr(self, name)}.")
        if self.max_timepoints % self.patch_size:
            raise ValueError(
                f"patch_size={self.patch_size} does not divide max_timepoints={self.max_timepoints}; "
                "choose a patch size that divides the scan length (e.g. 16, 32, 80 or 160 for 160 TRs)."
            )
        for prefix, width, heads in (
            ("", self.hidden_size, self.num_attention_heads),
            ("decoder_", self.decoder_hidden_size, self.decoder_num_attention_heads),
        ):
            if width % heads:
                raise ValueError(
                    f"{prefix}hidden_size={width} is not a multiple of {prefix}num_attention_heads={heads}."
                )
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in (0, 1), got {self.ema_decay}.")

    def validate_training_options(self):
        """Refuse quantizer, pooling, dropout, text-alignment and loss settings that cannot work."""
        for name in ("n_rois", "max_timepoints", "patch_size", "hidden_size", "num_hidden_layers",
                     "num_attention_heads", "intermediate_size", "decoder_hidden_size",
                     "decoder_num_hidden_layers", "decoder_num_attention_heads", "decoder_intermediate_size",
                     "codebook_size", "codebook_dim", "vq_chunk_size", "contrastive_dim",
                     "domain_hidden_size"):  # fmt: skip
            _require_positive_int(self, name)
        kmeans_iters = self.kmeans_iters
        if isinstance(kmeans_iters, bool) or not isinstance(kmeans_iters, numbers.Integral) or kmeans_iters < 0:
            raise ValueError(f"kmeans_iters must be a non-negative integer, got {self.kmeans_iters!r}.")
        for name in ("text_embedding_dim", "llm_embedding_dim"):
            if getattr(self, name) is not None:
                _require_positive_int(self, name)
        if isinstance(self.dead_code_steps, bool) or not isinstance(self.dead_code_steps, numbers.Integral) or self.dead_code_steps < 0:
            raise ValueError(
                f"dead_code_steps must be a non-negative integer (0 disables restarts), got {self.dead_code_steps!r}."
            )
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer must be one of {QUANTIZERS}, got {self.quantizer!r}.")
        if not self.fsq_levels or any(
            isinstance(level, bool) or not isinstance(level, numbers.Integral) or level < 2 for level in self.fsq_levels
        ):
            raise ValueError(f"fsq_levels must be a non-empty list of integers >= 2, got {self.fsq_levels!r}.")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}.")
        for name in ("drop_path_rate", "attention_dropout", "hidden_dropout"):
            value = getattr(self, name)
            if not _is_real(value) or not 0.0 <= value < 1.0:
                raise ValueError(f"{name} is a probability and must lie in [0, 1), got {value!r}.")
        for name in ("reconstruction_weight", "contrastive_weight", "domain_weight", "commitment_weight"):
            value = getattr(self, name)
            if not _is_real(value) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} is a loss weight and must be a finite number >= 0, got {value!r}.")
        if not _is_real(self.max_logit_scale) or not math.isfinite(self.max_logit_scale) or self.max_logit_scale <= 0:
            raise ValueError(f"max_logit_scale must be a finite positive number, got {self.max_logit_scale!r}.")
        if not _is_real(self.init_logit_scale) or not -math.inf < self.init_logit_scale <= math.log(self.max_logit_scale):
            raise ValueError(
                f"init_logit_scale is the LOG of the initial logit scale and must be finite and at most "
                f"log(max_logit_scale) = {math.log(self.max_logit_scale):.4g}, got {self.init_logit_scale!r} "
                "(e.g. math.log(10) for a scale of 10)."
            )
        if not _is_real(self.init_logit_bias) or not math.isfinite(self.init_logit_bias):
            raise ValueError(f"init_logit_bias must be a finite number, got {self.init_logit_bias!r}.")
        if self.domain_weight > 0 and self.llm_embedding_dim is None:
            raise ValueError(
                f"domain_weight={self.domain_weight} turns on the domain-adversarial loss, which needs "
                "llm_embedding_dim (the width of the language model's word embeddings, e.g. 768 for GPT-2); "
                "set it, or set domain_weight=0."
            )

    @property
    def num_time_patches(self) -> int:
        """Time patches per scan, ``max_timepoints // patch_size``."""
        return self.max_timepoints // self.patch_size

    @property
    def num_codes(self) -> int:
        """Distinct token ids: ``codebook_size`` for the VQ, the product of ``fsq_levels`` for FSQ."""
        return math.prod(self.fsq_levels) if self.quantizer == "fsq" else self.codebook_size

    @property
    def num_tokens(self) -> int:
        """Tokens per scan, ``n_rois * num_time_patches`` (time-major)."""
        return self.n_rois * self.num_time_patches

    def to_dict(self) -> dict:
        """Serialise to a dict, with ``auto_map`` entries written as plain class references.

        transformers' ``custom_object_save`` treats every class whose name contains "Tokenizer" as a
        text tokenizer and records it as a ``(slow, fast)`` pair, e.g. ``AutoModel:
        ["modeling_fmri_tokenizer.FmriTokenizerModel", None]``, which ``AutoConfig`` and
        ``AutoModel`` cannot load as remote code. Our classes are not text tokenizers, so each such
        pair is written as its single reference.
        """
        output = super().to_dict()
        auto_map = output.get("auto_map")
        if isinstance(auto_map, dict):
            output["auto_map"] = {
                auto_class: _single_class_reference(reference) for auto_class, reference in auto_map.items()
            }
        return output

    @classmethod
    def preset(cls, name: str, **overrides) -> FmriTokenizerConfig:
        """Build a config from a named preset (``tiny``, ``small``, ``base``, ``large``) plus overrides."""
        if name not in _TOKENIZER_PRESETS:
            raise ValueError(f"Unknown preset {name!r}; choose from {sorted(_TOKENIZER_PRESETS)}.")
        return cls(**{**_TOKENIZER_PRESETS[name], **overrides})


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _single_class_reference(reference):
    """``"module.Class"`` from a ``("module.Class", None)`` pair; other references unchanged."""
    if isinstance(reference, (list, tuple)) and len(reference) == 2 and reference[1] is None:
        return reference[0]
    return reference


def _require_positive_int(config: FmriTokenizerConfig, name: str) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"FmriTokenizerConfig.{name} must be a positive integer, got {value!r}.")


FmriTokenizerConfig.register_for_auto_class()


#: The three fMRI special-token id fields of ``FmriLMConfig``.
FMRI_TOKEN_ID_FIELDS = ("fmri_token_id", "fmri_start_token_id", "fmri_end_token_id")


class FmriLMConfig(PreTrainedConfig):
    r"""Configuration of ``FmriLMForCausalLM``: a causal language model that reads and predicts fMRI codes.

    The language model is any ``AutoModelForCausalLM`` (GPT-2, Llama, Qwen3 ...) described by
    ``text_config``; it is wrapped, not modified. A scan enters the text as one block
    ``<fmri_start> <fmri> x N <fmri_end>`` with ``N = n_time_patches * n_rois`` placeholders in
    time-major order (placeholder ``k`` = time patch ``k // n_rois``, ROI ``k % n_rois``); the model
    replaces each placeholder's embedding by the embedding of its code plus the embedding of its ROI.

    Args:
        text_config: the language model's config (a config object or a dict with ``model_type``);
            default: GPT-2's.
        n_rois: ROIs per time patch (the stage-1 tokenizer's ``n_rois``).
        n_time_patches: time patches per scan (the stage-1 tokenizer's ``num_time_patches``).
        codebook_size: number of distinct fMRI codes (the stage-1 tokenizer's ``num_codes``); codes
            lie in ``[0, codebook_size)``, and ``-1`` (``PAD_CODE``) marks padded time patches.
        codebook_dim: width of the stage-1 code vectors (used once, to initialise the code
            embeddings from the codebook in ``FmriLMForCausalLM.from_text_model``).
        fmri_token_id, fmri_start_token_id, fmri_end_token_id: ids of ``<fmri>``, ``<fmri_start>``
            and ``<fmri_end>`` in the language model's vocabulary (set by ``from_text_model``; all
            three or none; ``None`` allows text only).
        f2t_weight, f2f_weight, t2t_weight: loss weights (paper v1: 1, 0.1, 0.5). A batch with fMRI
            blocks has loss ``f2t_weight * F2T + f2f_weight * F2F``; a text-only batch
            ``t2t_weight * T2T``.

    Example:

    ```python
    >>> from transformers import LlamaConfig
    >>> from fmrilm.configuration_fmrilm import FmriLMConfig
    >>> config = FmriLMConfig(
    ...     text_config=LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    ...                             num_attention_heads=4, vocab_size=1000),
    ...     n_rois=94, n_time_patches=10, codebook_size=8192, codebook_dim=128,
    ...     fmri_token_id=997, fmri_start_token_id=998, fmri_end_token_id=999,
    ... )
    >>> config.num_fmri_tokens  # placeholders per scan
    940
    ```

    Settings are checked when the config is built or loaded (``ValueError`` naming the setting);
    the class is not ``@strict``, so that every refusal is a ``ValueError``.
    """

    model_type = "fmri_lm"
    sub_configs_defaults: ClassVar[dict[str, SubConfigSpec]] = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="gpt2")
    }

    text_config: dict | PreTrainedConfig | None = None
    n_rois: int = 450
    n_time_patches: int = 10
    codebook_size: int = 8192
    codebook_dim: int = 128
    fmri_token_id: int | None = None
    fmri_start_token_id: int | None = None
    fmri_end_token_id: int | None = None
    f2t_weight: float = 1.0
    f2f_weight: float = 0.1
    t2t_weight: float = 0.5

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self._check_settings()

    def _check_settings(self) -> None:
        """Refuse settings the model cannot use, with a ``ValueError`` that names the setting."""
        if not isinstance(self.text_config, PreTrainedConfig):
            raise ValueError(f"text_config must be a causal-LM config, got {type(self.text_config).__name__}.")
        if getattr(self.text_config, "is_encoder_decoder", False):
            raise ValueError(
                f"text_config is an encoder-decoder config ({self.text_config.model_type}); FmriLMForCausalLM wraps "
                "decoder-only causal language models (GPT-2, Llama, Qwen3, ...)."
            )
        for name in ("n_rois", "n_time_patches", "codebook_size", "codebook_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
                raise ValueError(f"FmriLMConfig.{name} must be a positive integer, got {value!r}.")
        for name in ("f2t_weight", "f2f_weight", "t2t_weight"):
            value = getattr(self, name)
            if not _is_real(value) or not math.isfinite(value) or value < 0:
                raise ValueError(
                    f"FmriLMConfig.{name} is a loss weight and must be a finite number >= 0, got {value!r}."
                )
        ids = {name: getattr(self, name) for name in FMRI_TOKEN_ID_FIELDS}
        given = {name: value for name, value in ids.items() if value is not None}
        if not given:
            return
        if len(given) != len(ids):
            raise ValueError(
                f"Set all of {FMRI_TOKEN_ID_FIELDS} or none of them, got {ids}; "
                "FmriLMForCausalLM.from_text_model sets them from the processor's tokenizer."
            )
        for name, value in given.items():
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
                raise ValueError(f"FmriLMConfig.{name} must be a token id (an integer >= 0), got {value!r}.")
        if len(set(given.values())) != len(given):
            raise ValueError(f"The fMRI special tokens need three different ids, got {ids}.")
        vocab_size = getattr(self.text_config, "vocab_size", None)
        if isinstance(vocab_size, int) and max(given.values()) >= vocab_size:
            raise ValueError(
                f"fMRI token ids {ids} do not fit the language model's vocabulary of {vocab_size} tokens: add the "
                "tokens to the tokenizer and resize the model's embeddings first (FmriLMForCausalLM.from_text_model "
                "does both)."
            )

    @property
    def num_fmri_tokens(self) -> int:
        """Placeholders per scan, ``n_time_patches * n_rois`` (time-major)."""
        return self.n_time_patches * self.n_rois

    @property
    def has_fmri_tokens(self) -> bool:
        """Whether the fMRI special-token ids are set (without them the model reads text only)."""
        return self.fmri_token_id is not None

    def to_dict(self) -> dict:
        """Serialise to a dict; a saved ``AutoModelForCausalLM`` entry of ``auto_map`` is also offered to
        ``AutoModel``, so both Auto classes load the folder as remote code."""
        output = super().to_dict()
        auto_map = output.get("auto_map")
        if isinstance(auto_map, dict) and "AutoModelForCausalLM" in auto_map:
            output["auto_map"] = {"AutoModel": auto_map["AutoModelForCausalLM"], **auto_map}
        return output


FmriLMConfig.register_for_auto_class()
