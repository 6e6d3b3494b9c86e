"""``FmriTokenizerModel``: the stage-1 fMRI tokenizer (ViT encoder, vector quantizer, ViT decoder).

A scan enters as the feature extractor's output: ``fmri_values`` (B, T, R) float, the normalised
signal of ``T = config.max_timepoints`` TRs over ``R = config.n_rois`` ROIs, and ``fmri_mask``
(B, T), 1 for real time points and 0 for padding.

Token layout (time-major everywhere, SPEC B1). The scan is cut along time only into
``T' = T // patch_size`` patches; one token is one ROI x ``patch_size`` consecutive TRs, and token
``n = t * R + r`` holds time patch ``t`` of ROI ``r``. ``N = T' * R`` tokens per scan.

Padding. A time patch is padding if **any** of its TRs is padding, so a token never mixes real and
padded samples: its TRs are either all real or it is excluded. Padded time points are set to 0
before anything reads them (NaN there is harmless), padded tokens are excluded as attention keys
in the encoder and the decoder, and from every loss and statistic (reconstruction, commitment,
codebook updates, pooling, domain loss). The reconstruction loss therefore covers the time points
of valid patches, i.e. the real time points except a trailing partial patch.

Architecture (DESIGN 4; fixes SPEC R3, B3, B4):

- encoder: ``Linear(patch_size -> D)`` per token, plus a learned ROI embedding (R, D) and a
  learned time-patch embedding (T', D), both initialised with std 0.02; an optional CLS token
  (``pooling="cls"``); pre-LN transformer layers on ``scaled_dot_product_attention`` with a
  key-padding mask, stochastic depth and a final LayerNorm.
- quantizer head ``Linear(D, D) -> Tanh -> Linear(D, codebook_dim)``, then the quantizer
  (``quantization_fmri_tokenizer``: cosine NormEMA VQ or FSQ).
- decoder: ``Linear(codebook_dim -> D_dec)`` plus its own ROI and time-patch embeddings, a ViT,
  and ``Linear(D_dec -> patch_size)`` per token, reassembled to (B, T, R).
- text alignment (``config.text_embedding_dim`` set): pooled encoder output (mean over real
  tokens, CLS, or a learned-query attention pool) -> bias-free Linear -> L2 normalisation, against
  bias-free ``Linear(E -> contrastive_dim)`` of precomputed frozen text embeddings, normalised;
  SigLIP loss with a learnable log logit scale (exponentiated, clamped) and a learnable bias.
- domain-adversarial alignment (``config.domain_weight > 0``): encoder token features ->
  ``Linear(D -> llm_embedding_dim)`` -> gradient reversal -> classifier
  ``Linear(H, domain_hidden_size) -> GELU -> Linear(.., 2)``, fMRI tokens labelled 0 and the LLM's
  word-embedding vectors labelled 1. The reversed gradient reaches the encoder (fixes B3).

Total loss = ``reconstruction_weight * reconstruction + commitment + contrastive_weight *
contrastive + domain_weight * domain``.

Attention goes through transformers' attention interface: ``attn_implementation="sdpa"`` (the
default) runs ``torch.nn.functional.scaled_dot_product_attention``; ``"eager"`` runs the
hand-written ``softmax(q k^T / sqrt(d)) v`` of the official code (the reference, and the
benchmark's baseline). Choose with ``attn_implementation=`` in ``from_pretrained``/``from_config``
or ``model.set_attn_implementation(...)``.

This module imports only torch, transformers and (relatively) the configuration and quantizer
files, so ``save_pretrained`` can ship all three as remote code.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput

from .configuration_fmrilm import FmriTokenizerConfig
from .quantization_fmri_tokenizer import build_quantizer

__all__ = [
    "FmriTokenizerModel",
    "FmriTokenizerOutput",
    "dann_alpha",
    "eager_attention_forward",
    "reverse_gradient",
    "siglip_loss",
]

#: At most this many scan indices are listed in an error message.
_MAX_LISTED = 10


# --------------------------------------------------------------------------------------------------
# Functions
# --------------------------------------------------------------------------------------------------


def dann_alpha(progress: float, gamma: float = 10.0) -> float:
    """Gradient-reversal coefficient of the DANN schedule: ``2 / (1 + exp(-gamma * progress)) - 1``.

    Ganin et al. 2016: it rises from 0 at the start of training (``progress = 0``) to nearly 1 at
    the end (``progress = 1``; 0.9999 for ``gamma = 10``). ``progress`` is the fraction of all
    optimisation steps done, in [0, 1].
    """
    if isinstance(progress, bool) or not isinstance(progress, numbers.Real) or not 0.0 <= progress <= 1.0:
        raise ValueError(
            f"progress is the fraction of training done and must lie in [0, 1], got {progress!r}; "
            "pass step / total_steps."
        )
    if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real) or not (math.isfinite(gamma) and gamma > 0):
        raise ValueError(f"gamma must be a finite positive number (10 in DANN), got {gamma!r}.")
    return 2.0 / (1.0 + math.exp(-gamma * float(progress))) - 1.0


class _GradientReversal(torch.autograd.Function):
    """Identity forward; the backward pass multiplies the gradient by ``-alpha``."""

    @staticmethod
    def forward(ctx, inputs: torch.Tensor, alpha: float) -> torch.Tensor:
        ctx.alpha = alpha
        return inputs.view_as(inputs)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.alpha * grad_output, None


def reverse_gradient(inputs: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Gradient-reversal layer (Ganin & Lempitsky 2015): ``inputs`` unchanged, gradient times ``-alpha``."""
    return _GradientReversal.apply(inputs, alpha)


def siglip_loss(
    fmri_embeddings: torch.Tensor, text_embeddings: torch.Tensor, logit_scale: torch.Tensor, logit_bias: torch.Tensor
) -> torch.Tensor:
    """Pairwise sigmoid loss of Zhai et al. 2023 (SigLIP), the mean over scans of a sum over texts.

    ``-1/B * sum_i sum_j log sigmoid(label_ij * (logit_scale * x_i . y_j + logit_bias))`` with
    ``label_ij = +1`` for ``i == j`` (a scan and its own text) and -1 otherwise.

    Args:
        fmri_embeddings: (B, C) L2-normalised scan embeddings ``x``.
        text_embeddings: (B, C) L2-normalised text embeddings ``y`` (row ``i`` describes scan ``i``).
        logit_scale: scalar, the (already exponentiated) positive scale.
        logit_bias: scalar bias.
    """
    logits = logit_scale * fmri_embeddings @ text_embeddings.transpose(0, 1) + logit_bias
    labels = 2.0 * torch.eye(logits.shape[0], device=logits.device, dtype=logits.dtype) - 1.0
    return -F.logsigmoid(labels * logits).sum(dim=1).mean()


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hand-written ``softmax(q k^T * scaling) v`` (``attn_implementation="eager"``, the reference).

    ``query``, ``key``, ``value`` (B, H, N, d); ``attention_mask`` (B, 1, 1 or N, N) bool, True
    where a key may be attended, or None. Returns the output (B, N, H, d) and the attention
    weights (B, H, N, N), following transformers' attention-function interface.
    """
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    scores = query @ key.transpose(-2, -1) * scaling
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    weights = scores.softmax(dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return (weights @ value).transpose(1, 2).contiguous(), weights


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------


@dataclass
class FmriTokenizerOutput(ModelOutput):
    r"""Output of ``FmriTokenizerModel.forward``.

    Args:
        loss: scalar, ``reconstruction_weight * reconstruction_loss + commitment_loss +
            contrastive_weight * contrastive_loss + domain_weight * domain_loss`` (absent terms are 0).
        reconstruction_loss: scalar, mean squared error between ``reconstruction`` and the input over
            the time points of valid patches (all ROIs).
        commitment_loss: scalar, the quantizer's commitment loss, already weighted (0 for FSQ).
        contrastive_loss: scalar SigLIP loss; None without ``text_embeddings``.
        domain_loss: scalar, class-balanced domain cross-entropy (mean of the fMRI-token and the
            text-vector mean cross-entropies); None without ``domain_text_embeddings``.
        reconstruction: (B, T, R) the decoded normalised signal.
        codes: (B, N) int64 code of each token, time-major (padded tokens carry codes too; ignore
            them with ``model.token_mask(fmri_mask)``).
        perplexity: scalar, ``exp(entropy)`` of the code usage of this batch's valid tokens.
        used_codes: scalar int, distinct codes among this batch's valid tokens.
        fmri_embeddings: (B, contrastive_dim) projected, L2-normalised pooled scan features; None
            when the model has no contrastive head.
        text_projections: (B, contrastive_dim) projected, L2-normalised text embeddings; None
            without ``text_embeddings``.
        logit_scale: scalar, the exponentiated (clamped) SigLIP logit scale in use (detached);
            None without a contrastive head.
        logit_bias: scalar SigLIP logit bias (detached); None without a contrastive head.
    """

    loss: torch.Tensor | None = None
    reconstruction_loss: torch.Tensor | None = None
    commitment_loss: torch.Tensor | None = None
    contrastive_loss: torch.Tensor | None = None
    domain_loss: torch.Tensor | None = None
    reconstruction: torch.Tensor | None = None
    codes: torch.LongTensor | None = None
    perplexity: torch.Tensor | None = None
    used_codes: torch.Tensor | None = None
    fmri_embeddings: torch.Tensor | None = None
    text_projections: torch.Tensor | None = None
    logit_scale: torch.Tensor | None = None
    logit_bias: torch.Tensor | None = None


# --------------------------------------------------------------------------------------------------
# Transformer building blocks
# --------------------------------------------------------------------------------------------------


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a residual branch for a random subset of samples.

    Each sample's branch is kept with probability ``1 - drop_prob`` and then scaled by
    ``1 / (1 - drop_prob)`` so its expectation is unchanged; identity in eval mode.
    """

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return hidden_states
        keep_prob = 1.0 - self.drop_prob
        shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)
        keep = hidden_states.new_empty(shape).bernoulli_(keep_prob)
        return hidden_states * keep / keep_prob

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class FmriSelfAttention(nn.Module):
    """Multi-head self-attention on (B, N, D) with an optional key-padding mask."""

    def __init__(self, config: FmriTokenizerConfig, hidden_size: int, num_heads: int):
        super().__init__()
        self.config = config
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.output = nn.Linear(hidden_size, hidden_size)
        self.output_dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``attention_mask`` (B, 1, 1, N) bool, True for keys that may be attended; None: all."""
        batch, length, width = hidden_states.shape
        qkv = self.qkv(hidden_states).view(batch, length, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attention_function = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        context, _ = attention_function(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.config.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            is_causal=False,
        )
        return self.output_dropout(self.output(context.reshape(batch, length, width)))


class FmriMLP(nn.Module):
    """``Linear(D, I) -> GELU -> Linear(I, D)`` with dropout on the output."""

    def __init__(self, hidden_size: int, intermediate_size: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.activation = nn.GELU()
        self.fc2 = nn.Linear(intermediate_size, hidden_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.activation(self.fc1(hidden_states))))


class FmriTransformerLayer(GradientCheckpointingLayer):
    """Pre-LN transformer layer: ``x + DropPath(Attn(LN(x)))``, then ``x + DropPath(MLP(LN(x)))``."""

    def __init__(
        self,
        config: FmriTokenizerConfig,
        hidden_size: int,
        num_heads: int,
        intermediate_size: int,
        drop_path: float,
    ):
        super().__init__()
        self.attention_norm = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.attention = FmriSelfAttention(config, hidden_size, num_heads)
        self.mlp_norm = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.mlp = FmriMLP(hidden_size, intermediate_size, config.hidden_dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        hidden_states = hidden_states + self.drop_path(
            self.attention(self.attention_norm(hidden_states), attention_mask)
        )
        return hidden_states + self.drop_path(self.mlp(self.mlp_norm(hidden_states)))


class FmriTransformer(nn.Module):
    """A stack of pre-LN layers with stochastic depth rising linearly from 0, then a final LayerNorm."""

    def __init__(
        self, config: FmriTokenizerConfig, hidden_size: int, num_layers: int, num_heads: int, intermediate_size: int
    ):
        super().__init__()
        drop_paths = np.linspace(0.0, config.drop_path_rate, num_layers) if num_layers > 1 else [config.drop_path_rate]
        self.layers = nn.ModuleList(
            [
                FmriTransformerLayer(config, hidden_size, num_heads, intermediate_size, float(rate))
                for rate in drop_paths
            ]
        )
        self.norm = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, D) -> (B, N, D); ``attention_mask`` (B, 1, 1, N) bool or None."""
        for layer in self.layers:
            hidden_states = layer(hidden_states, attention_mask=attention_mask)
        return self.norm(hidden_states)


# --------------------------------------------------------------------------------------------------
# Encoder, decoder, heads
# --------------------------------------------------------------------------------------------------


class FmriPatchEmbedding(nn.Module):
    """(B, T, R) signal -> (B, T' * R, D) time-major tokens.

    Token ``t * R + r`` = ``Linear(patch_size -> D)`` of TRs ``t * P .. t * P + P - 1`` of ROI
    ``r``, plus ROI embedding ``r`` and time-patch embedding ``t``.
    """

    def __init__(self, config: FmriTokenizerConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.num_time_patches = config.num_time_patches
        self.n_rois = config.n_rois
        self.projection = nn.Linear(config.patch_size, config.hidden_size)
        self.roi_embedding = nn.Parameter(torch.empty(config.n_rois, config.hidden_size))
        self.time_embedding = nn.Parameter(torch.empty(config.num_time_patches, config.hidden_size))

    def forward(self, fmri_values: torch.Tensor) -> torch.Tensor:
        batch = fmri_values.shape[0]
        patches = fmri_values.reshape(batch, self.num_time_patches, self.patch_size, self.n_rois).transpose(2, 3)
        tokens = self.projection(patches) + self.roi_embedding + self.time_embedding[:, None, :]
        return tokens.reshape(batch, self.num_time_patches * self.n_rois, -1)


class FmriEncoder(nn.Module):
    """Patch embedding, optional CLS token, transformer: (B, T, R) -> (B, [1 +] N, D)."""

    def __init__(self, config: FmriTokenizerConfig):
        super().__init__()
        self.patch_embedding = FmriPatchEmbedding(config)
        self.cls_token = nn.Parameter(torch.empty(1, 1, config.hidden_size)) if config.pooling == "cls" else None
        self.transformer = FmriTransformer(
            config, config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size
        )

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the first signal token (1 with a CLS token, else 0)."""
        return 0 if self.cls_token is None else 1

    def forward(self, fmri_values: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
        """``token_mask`` (B, N) bool (True = real token) or None when every token is real."""
        hidden_states = self.patch_embedding(fmri_values)
        if self.cls_token is not None:
            hidden_states = torch.cat([self.cls_token.expand(hidden_states.shape[0], -1, -1), hidden_states], dim=1)
            if token_mask is not None:
                token_mask = F.pad(token_mask, (1, 0), value=True)
        return self.transformer(hidden_states, _key_padding_mask(token_mask))


class FmriDecoder(nn.Module):
    """Quantized tokens (B, N, codebook_dim) -> reconstructed signal (B, T, R)."""

    def __init__(self, config: FmriTokenizerConfig):
        super().__init__()
        width = config.decoder_hidden_size
        self.patch_size = config.patch_size
        self.num_time_patches = config.num_time_patches
        self.n_rois = config.n_rois
        self.input_projection = nn.Linear(config.codebook_dim, width)
        self.roi_embedding = nn.Parameter(torch.empty(config.n_rois, width))
        self.time_embedding = nn.Parameter(torch.empty(config.num_time_patches, width))
        self.transformer = FmriTransformer(
            config,
            width,
            config.decoder_num_hidden_layers,
            config.decoder_num_attention_heads,
            config.decoder_intermediate_size,
        )
        self.head = nn.Linear(width, config.patch_size)

    def forward(self, quantized: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
        batch = quantized.shape[0]
        grid = (batch, self.num_time_patches, self.n_rois)
        hidden_states = self.input_projection(quantized).view(*grid, -1)
        hidden_states = hidden_states + self.roi_embedding + self.time_embedding[:, None, :]
        hidden_states = self.transformer(
            hidden_states.view(batch, -1, hidden_states.shape[-1]), _key_padding_mask(token_mask)
        )
        patches = self.head(hidden_states).view(*grid, self.patch_size)  # (B, T', R, P)
        return patches.transpose(2, 3).reshape(batch, self.num_time_patches * self.patch_size, self.n_rois)


class FmriAttentionPooling(nn.Module):
    """Learned-query attention pooling (SigLIP's MAP head): (B, N, D) tokens -> (B, D).

    A learned probe attends to the real tokens (multi-head), then ``y + MLP(LN(y))``.
    """

    def __init__(self, config: FmriTokenizerConfig):
        super().__init__()
        width = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.probe = nn.Parameter(torch.empty(1, 1, width))
        self.query = nn.Linear(width, width)
        self.key_value = nn.Linear(width, 2 * width)
        self.output = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.mlp = FmriMLP(width, config.intermediate_size, config.hidden_dropout)

    def forward(self, tokens: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
        batch, length, width = tokens.shape
        head_dim = width // self.num_heads
        query = self.query(self.probe).view(1, 1, self.num_heads, head_dim).transpose(1, 2).expand(batch, -1, -1, -1)
        key, value = self.key_value(tokens).view(batch, length, 2, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        pooled = F.scaled_dot_product_attention(query, key, value, attn_mask=_key_padding_mask(token_mask))
        pooled = self.output(pooled.transpose(1, 2).reshape(batch, width))
        return pooled + self.mlp(self.norm(pooled))


class FmriTextAlignmentHead(nn.Module):
    """Pooling and projections of the SigLIP text alignment, with the learnable scale and bias.

    ``logit_scale`` holds the **log** of the scale; ``scale()`` exponentiates and clamps it to
    ``config.max_logit_scale`` (SPEC B4: the temperature is learned and used as ``exp``).
    """

    def __init__(self, config: FmriTokenizerConfig):
        super().__init__()
        self.pooling = config.pooling
        self.max_logit_scale = config.max_logit_scale
        self.attention_pooling = FmriAttentionPooling(config) if config.pooling == "attention" else None
        self.fmri_projection = nn.Linear(config.hidden_size, config.contrastive_dim, bias=False)
        self.text_projection = nn.Linear(config.text_embedding_dim, config.contrastive_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.empty(()))
        self.logit_bias = nn.Parameter(torch.empty(()))

    def scale(self) -> torch.Tensor:
        """The positive logit scale ``min(exp(logit_scale), max_logit_scale)``."""
        return self.logit_scale.exp().clamp(max=self.max_logit_scale)

    def pool(
        self, hidden_states: torch.Tensor, token_mask: torch.Tensor | None, num_prefix_tokens: int
    ) -> torch.Tensor:
        """Encoder output (B, [1 +] N, D) -> (B, D) by the configured pooling."""
        if self.pooling == "cls":
            return hidden_states[:, 0]
        tokens = hidden_states[:, num_prefix_tokens:]
        if self.pooling == "attention":
            return self.attention_pooling(tokens, token_mask)
        if token_mask is None:
            return tokens.mean(dim=1)
        weights = token_mask.to(tokens.dtype)[..., None]
        return (tokens * weights).sum(dim=1) / weights.sum(dim=1)

    def embed_fmri(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, D) pooled features -> (B, contrastive_dim), L2-normalised."""
        return F.normalize(self.fmri_projection(pooled), dim=-1)

    def embed_text(self, text_embeddings: torch.Tensor) -> torch.Tensor:
        """(B, E) frozen text embeddings -> (B, contrastive_dim), L2-normalised."""
        return F.normalize(self.text_projection(text_embeddings), dim=-1)


class FmriDomainClassifier(nn.Module):
    """Domain-adversarial head: is a vector an fMRI token (class 0) or an LLM word embedding (class 1)?

    fMRI token features go through ``Linear(D -> H_llm)`` and the gradient-reversal layer, text
    vectors enter the classifier directly; the classifier is ``Linear(H, hidden) -> GELU ->
    Linear(hidden, 2)``.
    """

    def __init__(self, config: FmriTokenizerConfig):
        super().__init__()
        self.token_projection = nn.Linear(config.hidden_size, config.llm_embedding_dim)
        self.classifier = nn.Sequential(
            nn.Linear(config.llm_embedding_dim, config.domain_hidden_size),
            nn.GELU(),
            nn.Linear(config.domain_hidden_size, 2),
        )

    def forward(self, fmri_tokens: torch.Tensor, text_vectors: torch.Tensor, alpha: float) -> torch.Tensor:
        """Class-balanced cross-entropy: mean of the fMRI tokens' (n, D) and text vectors' (M, H) means."""
        fmri_logits = self.classifier(reverse_gradient(self.token_projection(fmri_tokens), alpha))
        text_logits = self.classifier(text_vectors)
        fmri_loss = F.cross_entropy(fmri_logits, fmri_logits.new_zeros(fmri_logits.shape[0], dtype=torch.long))
        text_loss = F.cross_entropy(text_logits, text_logits.new_ones(text_logits.shape[0], dtype=torch.long))
        return 0.5 * (fmri_loss + text_loss)


def _key_padding_mask(token_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, N) bool -> (B, 1, 1, N) bool attention mask for SDPA (None stays None)."""
    return None if token_mask is None else token_mask[:, None, None, :]


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------


class FmriTokenizerModel(PreTrainedModel):
    r"""The stage-1 fMRI tokenizer: scans in, discrete time-major tokens out, and back.

    Methods: ``embed`` (continuous encoder features), ``encode`` (codes), ``decode`` (codes ->
    signal), ``pooled_features`` (text-aligned scan embedding), ``token_mask`` (which tokens are
    real), ``forward`` (losses for training). See the module docstring for the architecture and
    the padding rules.

    Example:

    ```python
    >>> import torch
    >>> from fmrilm import FmriTokenizerConfig
    >>> from fmrilm.modeling_fmri_tokenizer import FmriTokenizerModel
    >>> config = FmriTokenizerConfig.preset("tiny", n_rois=6, max_timepoints=32, patch_size=8)
    >>> model = FmriTokenizerModel(config).eval()
    >>> codes = model.encode(torch.randn(2, 32, 6))
    >>> codes.shape  # (batch, num_time_patches * n_rois), token t * 6 + r
    torch.Size([2, 24])
    >>> model.decode(codes).shape
    torch.Size([2, 32, 6])
    ```
    """

    config_class = FmriTokenizerConfig
    config: FmriTokenizerConfig
    main_input_name = "fmri_values"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules: ClassVar[list[str]] = ["FmriTransformerLayer"]

    def __init__(self, config: FmriTokenizerConfig):
        super().__init__(config)
        self.encoder = FmriEncoder(config)
        self.quantizer_head = nn.Sequential(
            nn.Linear(config.hidden_size, config.hidden_size),
            nn.Tanh(),
            nn.Linear(config.hidden_size, config.codebook_dim),
        )
        self.quantizer = build_quantizer(config)
        self.decoder = FmriDecoder(config)
        self.text_alignment = FmriTextAlignmentHead(config) if config.text_embedding_dim is not None else None
        self.domain_classifier = FmriDomainClassifier(config) if config.domain_weight > 0 else None
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Truncated normal (std ``initializer_range``, cut at 2 std) for Linear weights and learned
        embeddings (LeCun normal for the quantizer bottleneck, see
        ``_variance_preserving_linears``), zero biases, LayerNorm (1, 0), SigLIP scale and bias
        from the config."""
        std = self.config.initializer_range

        def truncated_normal(tensor: torch.Tensor, std: float = std) -> None:
            init.trunc_normal_(tensor, mean=0.0, std=std, a=-2.0 * std, b=2.0 * std)

        if isinstance(module, nn.Linear):
            if any(module is bottleneck for bottleneck in self._variance_preserving_linears()):
                truncated_normal(module.weight, std=module.in_features**-0.5)
            else:
                truncated_normal(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, (FmriPatchEmbedding, FmriDecoder)):
            truncated_normal(module.roi_embedding)
            truncated_normal(module.time_embedding)
        elif isinstance(module, FmriEncoder) and module.cls_token is not None:
            truncated_normal(module.cls_token)
        elif isinstance(module, FmriAttentionPooling):
            truncated_normal(module.probe)
        elif isinstance(module, FmriTextAlignmentHead):
            init.constant_(module.logit_scale, self.config.init_logit_scale)
            init.constant_(module.logit_bias, self.config.init_logit_bias)

    def _variance_preserving_linears(self) -> list[nn.Linear]:
        """The quantizer head's and the quantizer's own linear layers.

        They get LeCun-normal weights (std ``1 / sqrt(fan_in)``) instead of ``initializer_range``:
        with std 0.02 the features reaching FSQ are about 1e-3 wide and every token falls on the
        same FSQ code at initialisation. (The VQ normalises its inputs, so there the scale is
        harmless.)
        """
        return [layer for layer in (*self.quantizer_head, *self.quantizer.modules()) if isinstance(layer, nn.Linear)]

    # --- inputs -------------------------------------------------------------------------------

    def token_mask(self, fmri_mask: torch.Tensor) -> torch.Tensor:
        """Which tokens are real: (B, T) time mask -> (B, N) bool, time-major.

        A time patch is real only if all its ``patch_size`` TRs are real; all ROIs of a time patch
        share its flag.
        """
        return self._tokens_of_time_mask(self._checked_time_mask(fmri_mask))

    def _tokens_of_time_mask(self, time_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) bool -> (B, N) bool, for a mask already checked."""
        batch = time_mask.shape[0]
        config = self.config
        patch_valid = time_mask.reshape(batch, config.num_time_patches, config.patch_size).all(dim=-1)
        return patch_valid[:, :, None].expand(-1, -1, config.n_rois).reshape(batch, config.num_tokens)

    def _prepare_inputs(
        self, fmri_values: torch.Tensor, fmri_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Validate inputs; return (values with padding set to 0, time-point loss weights (B, T) or
        None, token mask (B, N) bool or None); the masks are None when every time point is real."""
        config = self.config
        expected = (config.max_timepoints, config.n_rois)
        if isinstance(fmri_values, np.ndarray):
            fmri_values = torch.from_numpy(fmri_values)
        if not isinstance(fmri_values, torch.Tensor):
            raise TypeError(
                f"fmri_values must be a torch.Tensor shaped (batch, time, rois) = (B, {expected[0]}, {expected[1]}), "
                f"got {type(fmri_values).__name__}; run the scans through FmriFeatureExtractor(return_tensors='pt')."
            )
        if fmri_values.ndim != 3 or tuple(fmri_values.shape[1:]) != expected:
            shape = tuple(fmri_values.shape)
            if fmri_values.ndim == 3 and tuple(fmri_values.shape[1:]) == expected[::-1] and expected[0] != expected[1]:
                hint = "it looks like (batch, rois, time): transpose to (batch, time, rois) with x.transpose(1, 2)"
            elif fmri_values.ndim == 2:
                hint = "for a single scan add the batch axis with x[None]"
            else:
                hint = (
                    f"run the scans through FmriFeatureExtractor (max_timepoints={expected[0]}, n_rois={expected[1]}), "
                    "which crops or pads them to the model's length"
                )
            raise ValueError(
                f"fmri_values must be shaped (batch, time, rois) = (B, {expected[0]}, {expected[1]}) for this "
                f"model, got {shape}; {hint}."
            )
        if not fmri_values.is_floating_point():
            raise ValueError(
                f"fmri_values must be floating point (the normalised signal), got dtype {fmri_values.dtype}; "
                "run the scans through FmriFeatureExtractor."
            )
        if fmri_values.shape[0] == 0:
            raise ValueError("fmri_values holds no scan (batch size 0); pass at least one scan.")
        fmri_values = fmri_values.to(device=self.device, dtype=self.encoder.patch_embedding.projection.weight.dtype)
        if fmri_mask is None:
            time_mask = None
        else:
            time_mask = self._checked_time_mask(fmri_mask, fmri_values.shape[0])
            if bool(time_mask.all()):
                time_mask = None
        if time_mask is None:
            if not bool(torch.isfinite(fmri_values).all()):
                raise ValueError(
                    "fmri_values contains NaN or infinite values at real time points; fill them first "
                    "(FmriFeatureExtractor(nan_policy='interpolate')) or mark them as padding in fmri_mask."
                )
            return fmri_values, None, None

        token_mask = self._tokens_of_time_mask(time_mask)
        patch_valid = token_mask.view(-1, config.num_time_patches, config.n_rois)[:, :, 0]
        empty = (~patch_valid.any(dim=1)).nonzero().flatten().tolist()
        if empty:
            raise ValueError(
                f"Scan(s) {empty[:_MAX_LISTED]} have no time patch whose {config.patch_size} TRs are all real "
                f"(fmri_mask), so they have no token to encode; every scan needs at least {config.patch_size} "
                "consecutive real TRs inside one patch. Drop these scans or pad less."
            )
        fmri_values = torch.where(
            time_mask[:, :, None], fmri_values, torch.zeros((), dtype=fmri_values.dtype, device=fmri_values.device)
        )
        if not bool(torch.isfinite(fmri_values).all()):
            raise ValueError(
                "fmri_values contains NaN or infinite values at real time points; fill them first "
                "(FmriFeatureExtractor(nan_policy='interpolate')) or mark them as padding in fmri_mask."
            )
        time_weights = patch_valid.repeat_interleave(config.patch_size, dim=1)
        return fmri_values, time_weights, token_mask

    def _checked_time_mask(self, fmri_mask: torch.Tensor, batch: int | None = None) -> torch.Tensor:
        """Validate a (batch, T) 0/1 time mask (any batch size when ``batch`` is None); return it as
        bool on the model's device."""
        if isinstance(fmri_mask, np.ndarray):
            fmri_mask = torch.from_numpy(fmri_mask)
        length = self.config.max_timepoints
        if (
            not isinstance(fmri_mask, torch.Tensor)
            or fmri_mask.ndim != 2
            or fmri_mask.shape[1] != length
            or (batch is not None and fmri_mask.shape[0] != batch)
        ):
            got = tuple(fmri_mask.shape) if isinstance(fmri_mask, torch.Tensor) else type(fmri_mask).__name__
            raise ValueError(
                f"fmri_mask must be a tensor shaped (batch, time) = ({'B' if batch is None else batch}, {length}) "
                f"(1 = real time point, 0 = padding), got {got}; pass the feature extractor's fmri_mask."
            )
        if fmri_mask.is_complex():
            raise ValueError(f"fmri_mask must hold 0/1 or booleans, got dtype {fmri_mask.dtype}.")
        fmri_mask = fmri_mask.to(self.device)
        if fmri_mask.dtype != torch.bool and not bool(((fmri_mask == 0) | (fmri_mask == 1)).all()):
            raise ValueError("fmri_mask must contain only 0 (padding) and 1 (real time point).")
        return fmri_mask.bool()

    # --- public methods -----------------------------------------------------------------------

    def _encode_hidden(
        self, fmri_values: torch.Tensor, fmri_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(encoder output (B, [1 +] N, D), values, time weights, token mask) after validation."""
        values, time_weights, token_mask = self._prepare_inputs(fmri_values, fmri_mask)
        return self.encoder(values, token_mask), values, time_weights, token_mask

    def embed(self, fmri_values: torch.Tensor, fmri_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Continuous encoder features (B, N, D) after the final LayerNorm, time-major, CLS excluded.

        Args:
            fmri_values: (B, T, R) normalised signal (the feature extractor's ``fmri_values``).
            fmri_mask: (B, T) 1 = real time point, 0 = padding; None = all real.
        """
        hidden_states, *_ = self._encode_hidden(fmri_values, fmri_mask)
        return hidden_states[:, self.encoder.num_prefix_tokens :]

    @torch.no_grad()
    def encode(self, fmri_values: torch.Tensor, fmri_mask: torch.Tensor | None = None) -> torch.LongTensor:
        """Codes (B, N) int64 of the tokens, time-major (token ``t * n_rois + r``).

        Padded tokens (see ``token_mask``) get codes too; they depend only on the real TRs of
        their patch and should be ignored. Never updates the codebook.
        """
        return self.quantizer.assign(self.quantizer_head(self.embed(fmri_values, fmri_mask)))

    def decode(self, codes: torch.Tensor, fmri_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruct the normalised signal (B, T, R) from codes (B, N) (time-major).

        ``fmri_mask`` (B, T), optional: the tokens of padded patches are then excluded as attention
        keys, as in ``forward``; without it every token is used.
        """
        config = self.config
        if not isinstance(codes, torch.Tensor) or codes.is_floating_point() or codes.dtype == torch.bool:
            raise ValueError(
                f"codes must be an integer tensor shaped (batch, {config.num_tokens}), got "
                f"{getattr(codes, 'dtype', type(codes).__name__)}."
            )
        if codes.ndim != 2 or codes.shape[1] != config.num_tokens:
            raise ValueError(
                f"codes must be shaped (batch, num_tokens) = (B, {config.num_tokens}) "
                f"({config.num_time_patches} time patches x {config.n_rois} ROIs, time-major), got {tuple(codes.shape)}."
            )
        num_codes = config.num_codes
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= num_codes):
            raise ValueError(
                f"codes must lie in [0, {num_codes}) for this tokenizer, got values in "
                f"[{int(codes.min())}, {int(codes.max())}]; were they produced by another tokenizer?"
            )
        codes = codes.to(self.device)
        token_mask = None
        if fmri_mask is not None:
            time_mask = self._checked_time_mask(fmri_mask, codes.shape[0])
            token_mask = None if bool(time_mask.all()) else self._tokens_of_time_mask(time_mask)
        quantized = self.quantizer.lookup(codes).to(self.decoder.input_projection.weight.dtype)
        return self.decoder(quantized, token_mask)

    def pooled_features(self, fmri_values: torch.Tensor, fmri_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Text-aligned scan embeddings (B, contrastive_dim): pooled, projected, L2-normalised."""
        head = self._require_text_alignment("pooled_features")
        hidden_states, _, _, token_mask = self._encode_hidden(fmri_values, fmri_mask)
        return head.embed_fmri(head.pool(hidden_states, token_mask, self.encoder.num_prefix_tokens))

    def _require_text_alignment(self, caller: str) -> FmriTextAlignmentHead:
        if self.text_alignment is None:
            raise ValueError(
                f"{caller} needs the contrastive text-alignment head, which this model does not have "
                "(config.text_embedding_dim is None); build the model with text_embedding_dim set to the "
                "width of the text embeddings."
            )
        return self.text_alignment

    def _checked_text_embeddings(self, text_embeddings: torch.Tensor, batch: int) -> torch.Tensor:
        head = self._require_text_alignment("text_embeddings")
        expected = (batch, self.config.text_embedding_dim)
        if isinstance(text_embeddings, np.ndarray):
            text_embeddings = torch.from_numpy(text_embeddings)
        if not isinstance(text_embeddings, torch.Tensor) or tuple(text_embeddings.shape) != expected:
            got = (
                tuple(text_embeddings.shape)
                if isinstance(text_embeddings, torch.Tensor)
                else type(text_embeddings).__name__
            )
            raise ValueError(
                f"text_embeddings must be shaped (batch, text_embedding_dim) = {expected} (one precomputed text "
                f"embedding per scan), got {got}."
            )
        if not text_embeddings.is_floating_point() or not bool(torch.isfinite(text_embeddings).all()):
            raise ValueError("text_embeddings must be finite floating-point vectors.")
        return text_embeddings.to(device=self.device, dtype=head.text_projection.weight.dtype)

    def _checked_domain_vectors(self, domain_text_embeddings: torch.Tensor) -> torch.Tensor:
        if self.domain_classifier is None:
            raise ValueError(
                "domain_text_embeddings were given but this model has no domain classifier "
                "(config.domain_weight is 0); build it with domain_weight > 0 and llm_embedding_dim set."
            )
        width = self.config.llm_embedding_dim
        if isinstance(domain_text_embeddings, np.ndarray):
            domain_text_embeddings = torch.from_numpy(domain_text_embeddings)
        if (
            not isinstance(domain_text_embeddings, torch.Tensor)
            or domain_text_embeddings.ndim < 2
            or domain_text_embeddings.shape[-1] != width
            or domain_text_embeddings.numel() == 0
        ):
            got = (
                tuple(domain_text_embeddings.shape)
                if isinstance(domain_text_embeddings, torch.Tensor)
                else type(domain_text_embeddings).__name__
            )
            raise ValueError(
                f"domain_text_embeddings must be the language model's word-embedding vectors shaped (M, {width}) "
                f"(or (..., {width}), flattened), with M >= 1, got {got}."
            )
        if not domain_text_embeddings.is_floating_point() or not bool(torch.isfinite(domain_text_embeddings).all()):
            raise ValueError("domain_text_embeddings must be finite floating-point vectors.")
        weight = self.domain_classifier.token_projection.weight
        return domain_text_embeddings.reshape(-1, width).to(device=weight.device, dtype=weight.dtype)

    def forward(
        self,
        fmri_values: torch.Tensor,
        fmri_mask: torch.Tensor | None = None,
        text_embeddings: torch.Tensor | None = None,
        domain_text_embeddings: torch.Tensor | None = None,
        domain_alpha: float = 1.0,
        return_dict: bool = True,
    ) -> FmriTokenizerOutput | tuple:
        r"""Encode, quantize, decode and compute the stage-1 losses.

        In training mode the VQ codebook is initialised (first batch) and updated from the valid
        tokens; in eval mode no buffer changes.

        Args:
            fmri_values: (B, T, R) normalised signal (the feature extractor's ``fmri_values``).
            fmri_mask: (B, T) 1 = real time point, 0 = padding; None = all real.
            text_embeddings: (B, E) precomputed frozen text embeddings of each scan's descriptor
                (``E = config.text_embedding_dim``): adds the SigLIP contrastive loss.
            domain_text_embeddings: (M, H_llm) frozen word-embedding vectors of the language model
                (``H_llm = config.llm_embedding_dim``): adds the domain-adversarial loss.
            domain_alpha: gradient-reversal coefficient (see ``dann_alpha``), >= 0.
            return_dict: return a ``FmriTokenizerOutput`` (True) or a tuple of its non-None fields.
        """
        config = self.config
        if (
            isinstance(domain_alpha, bool)
            or not isinstance(domain_alpha, numbers.Real)
            or not (math.isfinite(domain_alpha) and domain_alpha >= 0)
        ):
            raise ValueError(f"domain_alpha must be a finite number >= 0 (see dann_alpha), got {domain_alpha!r}.")
        hidden_states, values, time_weights, token_mask = self._encode_hidden(fmri_values, fmri_mask)
        batch = values.shape[0]
        if text_embeddings is not None:
            text_embeddings = self._checked_text_embeddings(text_embeddings, batch)
        if domain_text_embeddings is not None:
            domain_text_embeddings = self._checked_domain_vectors(domain_text_embeddings)

        tokens = hidden_states[:, self.encoder.num_prefix_tokens :]
        quantizer_output = self.quantizer(self.quantizer_head(tokens), mask=token_mask)
        reconstruction = self.decoder(quantizer_output.quantized, token_mask)

        squared_error = (reconstruction.float() - values.float()).pow(2)
        if time_weights is None:
            reconstruction_loss = squared_error.mean()
        else:
            weights = time_weights.to(squared_error.dtype)[:, :, None]
            reconstruction_loss = (squared_error * weights).sum() / (weights.sum() * config.n_rois)
        loss = config.reconstruction_weight * reconstruction_loss + quantizer_output.commitment_loss

        contrastive_loss = fmri_embeddings = text_projections = logit_scale = logit_bias = None
        if self.text_alignment is not None:
            head = self.text_alignment
            fmri_embeddings = head.embed_fmri(head.pool(hidden_states, token_mask, self.encoder.num_prefix_tokens))
            scale = head.scale()
            logit_scale, logit_bias = scale.detach(), head.logit_bias.detach()
            if text_embeddings is not None:
                text_projections = head.embed_text(text_embeddings)
                contrastive_loss = siglip_loss(
                    fmri_embeddings.float(), text_projections.float(), scale, head.logit_bias
                )
                loss = loss + config.contrastive_weight * contrastive_loss

        domain_loss = None
        if domain_text_embeddings is not None:
            fmri_tokens = tokens.reshape(-1, tokens.shape[-1])
            if token_mask is not None:
                fmri_tokens = fmri_tokens[token_mask.reshape(-1)]
            domain_loss = self.domain_classifier(fmri_tokens, domain_text_embeddings, float(domain_alpha))
            loss = loss + config.domain_weight * domain_loss

        output = FmriTokenizerOutput(
            loss=loss,
            reconstruction_loss=reconstruction_loss,
            commitment_loss=quantizer_output.commitment_loss,
            contrastive_loss=contrastive_loss,
            domain_loss=domain_loss,
            reconstruction=reconstruction,
            codes=quantizer_output.codes,
            perplexity=quantizer_output.perplexity,
            used_codes=quantizer_output.used_codes,
            fmri_embeddings=fmri_embeddings,
            text_projections=text_projections,
            logit_scale=logit_scale,
            logit_bias=logit_bias,
        )
        return output if return_dict else output.to_tuple()


FmriTokenizerModel.register_for_auto_class("AutoModel")
