"""Configurations of fmri-lm's models.

``FmriTokenizerConfig`` describes the stage-1 fMRI tokenizer (ViT encoder over time patches of each
ROI, a vector quantizer, a ViT decoder). The feature extractor is registered against it, so
``AutoFeatureExtractor`` resolves ``FmriFeatureExtractor`` by name.

This file imports nothing from the rest of the package, so ``save_pretrained`` can ship it as
remote code.
"""

from __future__ import annotations

from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

__all__ = ["FmriTokenizerConfig"]

#: Architecture presets: (hidden_size, num_hidden_layers, num_attention_heads) of the encoder.
_TOKENIZER_PRESETS: dict[str, dict] = {
    "tiny": dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        decoder_hidden_size=32, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
        codebook_size=64, codebook_dim=16,
    ),
    "small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}  # fmt: skip


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
        layer_norm_eps, initializer_range, drop_path_rate: usual ViT settings.

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

    def __post_init__(self, **kwargs):
        self.decoder_hidden_size = self.decoder_hidden_size or self.hidden_size
        self.decoder_num_hidden_layers = self.decoder_num_hidden_layers or self.num_hidden_layers
        self.decoder_num_attention_heads = self.decoder_num_attention_heads or self.num_attention_heads
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

    @property
    def num_time_patches(self) -> int:
        """Time patches per scan, ``max_timepoints // patch_size``."""
        return self.max_timepoints // self.patch_size

    @property
    def num_tokens(self) -> int:
        """Tokens per scan, ``n_rois * num_time_patches`` (time-major)."""
        return self.n_rois * self.num_time_patches

    @classmethod
    def preset(cls, name: str, **overrides) -> FmriTokenizerConfig:
        """Build a config from a named preset (``tiny``, ``small``, ``base``, ``large``) plus overrides."""
        if name not in _TOKENIZER_PRESETS:
            raise ValueError(f"Unknown preset {name!r}; choose from {sorted(_TOKENIZER_PRESETS)}.")
        return cls(**{**_TOKENIZER_PRESETS[name], **overrides})
