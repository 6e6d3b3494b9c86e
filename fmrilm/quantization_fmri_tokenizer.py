"""Quantizers of the stage-1 fMRI tokenizer: cosine NormEMA vector quantization and FSQ.

Both quantizers map continuous encoder features ``z`` shaped ``(..., dim)`` to integer codes
shaped ``(...)`` and to code vectors shaped ``(..., dim)`` that the decoder reads, and return a
:class:`QuantizerOutput`. An optional boolean ``mask`` shaped ``(...)`` marks the valid positions:
padding never updates a codebook and never counts in losses or statistics.

- :class:`NormEMAVectorQuantizer` (BEiT-v2 / NeuroLM, SPEC 2.2a): a spherical codebook of
  unit vectors, nearest code by cosine similarity computed in row chunks (memory bounded by
  ``chunk_size x codebook_size``, never by the number of tokens), cosine k-means initialisation on
  the first training batch, EMA updates instead of codebook gradients, dead-code restarts, and
  statistics summed across processes when ``torch.distributed`` is initialised.
- :class:`FiniteScalarQuantizer` (Mentzer et al. 2023, "Finite Scalar Quantization"): project to
  a few dimensions, bound each with a scaled tanh, round with a straight-through gradient, project
  back. There is no codebook to learn and no commitment loss.

This file imports only torch, the standard library and (relatively, for type hints) the
configuration, so ``save_pretrained`` can ship it as remote code.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from .configuration_fmrilm import FmriTokenizerConfig

__all__ = ["FiniteScalarQuantizer", "NormEMAVectorQuantizer", "QuantizerOutput", "build_quantizer"]

#: Standard deviation, relative to a unit vector, of the noise added to re-seeded dead codes, so
#: that several dead codes re-seeded from the same encoder output still differ (the noise vector's
#: expected norm is this value, whatever ``dim``).
RESTART_NOISE = 0.01

#: FSQ bounds each dimension to ``(levels - 1) / 2 * (1 - FSQ_BOUND_EPS)`` so rounding never
#: reaches a level outside ``[0, levels)``.
FSQ_BOUND_EPS = 1e-3


@dataclass
class QuantizerOutput:
    """What both quantizers return.

    Attributes:
        quantized: ``(..., dim)`` in the input's dtype. Forward: the code vectors. Backward:
            straight-through (VQ: identity to the L2-normalised input; FSQ: identity through the
            rounding, then the output projection).
        codes: ``(...)`` int64 code indices in ``[0, codebook_size)``; computed for padding
            positions too, which callers ignore.
        commitment_loss: scalar float32, already multiplied by the commitment weight; mean squared
            error over valid positions and feature dimensions (always 0 for FSQ).
        perplexity: scalar float32, ``exp(entropy)`` of the code histogram of this batch's valid
            positions on this process (1 when there are none).
        used_codes: scalar int64, number of distinct codes among this batch's valid positions.
    """

    quantized: torch.Tensor
    codes: torch.LongTensor
    commitment_loss: torch.Tensor
    perplexity: torch.Tensor
    used_codes: torch.Tensor


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def _autocast_disabled(device: torch.device):
    """A context that turns autocast off on ``device`` (the quantizers compute in float32)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def _check_features(z: torch.Tensor, dim: int, owner: str) -> None:
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"{owner} expects a torch.Tensor shaped (..., {dim}), got {type(z).__name__}.")
    if not z.is_floating_point():
        raise ValueError(
            f"{owner} expects floating-point features shaped (..., {dim}), got dtype {z.dtype}; "
            "pass encoder outputs (e.g. z.float())."
        )
    if z.ndim == 0 or z.shape[-1] != dim:
        raise ValueError(
            f"{owner} expects features shaped (..., {dim}) (last axis = feature dimension), got "
            f"{tuple(z.shape)}; project the encoder output to {dim} features first."
        )
    if not bool(torch.isfinite(z).all()):
        raise ValueError(
            f"{owner} received NaN or infinite features; check the encoder (learning rate, "
            "normalisation of the input signal) before quantizing."
        )


def _flatten_mask(
    mask: torch.Tensor | None, leading_shape: torch.Size, device: torch.device, owner: str
) -> torch.Tensor:
    """Validate ``mask`` (shaped like ``z.shape[:-1]``) and return it as a flat bool tensor."""
    n_rows = math.prod(leading_shape)
    if mask is None:
        return torch.ones(n_rows, dtype=torch.bool, device=device)
    if not isinstance(mask, torch.Tensor):
        raise TypeError(
            f"{owner}: mask must be a torch.Tensor shaped {tuple(leading_shape)}, got {type(mask).__name__}."
        )
    if mask.is_floating_point() or mask.is_complex():
        raise ValueError(
            f"{owner}: mask must be boolean (True = valid position) or integer 0/1, got dtype "
            f"{mask.dtype}; pass mask.bool()."
        )
    if mask.shape != leading_shape:
        raise ValueError(
            f"{owner}: mask shape {tuple(mask.shape)} must equal the features' leading shape "
            f"{tuple(leading_shape)} (one flag per token); expand the time mask to tokens first."
        )
    return mask.reshape(-1).to(device=device, dtype=torch.bool)


def _check_codes(codes: torch.Tensor, codebook_size: int, owner: str) -> None:
    if not isinstance(codes, torch.Tensor) or codes.is_floating_point() or codes.dtype == torch.bool:
        raise ValueError(
            f"{owner}.lookup expects an integer tensor of codes, got {getattr(codes, 'dtype', type(codes))}."
        )
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= codebook_size):
        raise ValueError(
            f"{owner}.lookup: codes must lie in [0, {codebook_size}), got values in "
            f"[{int(codes.min())}, {int(codes.max())}]; were they produced by a different codebook?"
        )


def _usage_statistics(valid_codes: torch.Tensor, codebook_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(perplexity, used_codes) of a 1-D tensor of codes: exp(entropy) and number of distinct codes."""
    counts = torch.bincount(valid_codes, minlength=codebook_size).float()
    probabilities = counts / counts.sum().clamp(min=1.0)
    entropy = -(probabilities * torch.log(probabilities.clamp(min=1e-12))).sum()
    return torch.exp(entropy), (counts > 0).sum()


def _is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce_sum_(*tensors: torch.Tensor) -> None:
    """Sum tensors in place across processes (a no-op without an initialised process group)."""
    if _is_distributed():
        for tensor in tensors:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)


def _sample_unit_rows(rows: torch.Tensor, count: int, noise: float) -> torch.Tensor | None:
    """``count`` rows drawn from ``rows`` (M, dim), optionally perturbed and re-normalised.

    Without replacement when ``M >= count``, with replacement otherwise. In a multi-process run
    every process draws its own candidates, they are all-gathered, and candidate ``j`` is taken
    from the ``j % P``-th of the ``P`` processes that have rows, so the result is identical on every
    rank. Returns ``None`` when no process has a row.
    """
    n_rows, dim = rows.shape
    candidates = torch.zeros(count, dim, dtype=rows.dtype, device=rows.device)
    if n_rows:
        if n_rows >= count:
            index = torch.randperm(n_rows, device=rows.device)[:count]
        else:
            index = torch.randint(n_rows, (count,), device=rows.device)
        candidates = rows[index]
        if noise > 0:
            candidates = candidates + torch.randn_like(candidates) * (noise / math.sqrt(dim))
        candidates = F.normalize(candidates, dim=-1)
    if not _is_distributed():
        return candidates if n_rows else None
    world_size = dist.get_world_size()
    has_rows = torch.tensor([int(n_rows > 0)], device=rows.device)
    all_has_rows = [torch.zeros_like(has_rows) for _ in range(world_size)]
    dist.all_gather(all_has_rows, has_rows)
    all_candidates = [torch.empty_like(candidates) for _ in range(world_size)]
    dist.all_gather(all_candidates, candidates.contiguous())
    donors = torch.cat(all_has_rows).nonzero().flatten()
    if donors.numel() == 0:
        return None
    slot = torch.arange(count, device=rows.device)
    return torch.stack(all_candidates)[donors[slot % donors.numel()], slot]


# --------------------------------------------------------------------------------------------
# Cosine NormEMA vector quantizer
# --------------------------------------------------------------------------------------------


class NormEMAVectorQuantizer(nn.Module):
    """Cosine vector quantizer with an EMA-updated spherical codebook and dead-code restarts.

    Inputs are L2-normalised; the codebook holds ``codebook_size`` unit vectors of size ``dim``;
    the nearest code is the one of largest cosine similarity. The codebook receives no gradient:

    - **k-means init** (``kmeans_init=True``): on the first training batch, ``kmeans_iters``
      iterations of cosine k-means over the batch's valid vectors (all processes' vectors in a
      multi-process run). The initial centroids are valid vectors drawn at random; when the batch
      holds fewer vectors than codes they are drawn *with replacement*, so some codes start as
      duplicates, stay unused and are re-seeded by the dead-code restart. Deterministic given
      torch's RNG state. Until then (or with ``kmeans_init=False``) the codebook holds random unit
      vectors drawn at construction.
    - **EMA update** (training mode only): per-code counts and sums of the normalised valid
      inputs, summed across processes; each code used in the batch becomes
      ``normalise(decay * old + (1 - decay) * normalise(mean of its inputs))``; unused codes keep
      their value.
    - **Dead-code restart** (``dead_code_steps > 0``): ``steps_since_used`` counts training steps
      since each code was last used; a code unused for ``dead_code_steps`` consecutive steps is
      re-seeded from a random valid encoder output of the current batch, plus noise of relative
      size :data:`RESTART_NOISE`, normalised. In a multi-process run the new vectors are identical
      on every rank. A step in which no process has a valid position changes nothing.

    Buffers (all in the state dict, always float32 even after ``.to(torch.bfloat16)``):
    ``code_vectors`` (codebook_size, dim), ``initialized`` (bool), ``steps_since_used``
    (codebook_size,) int64, ``usage_ema`` (codebook_size,) EMA of each code's share of assignments.

    Args:
        codebook_size: number of codes K.
        dim: feature dimension of inputs and codes.
        decay: EMA decay in (0, 1).
        commitment_weight: weight of ``MSE(normalise(z), stopgrad(code))``.
        kmeans_init: initialise the codebook by k-means on the first training batch.
        kmeans_iters: k-means iterations (0 = the random draw of valid vectors only).
        dead_code_steps: training steps without use before a code is re-seeded (0 = never).
        chunk_size: rows per block of the similarity matrix; peak extra memory of an assignment is
            ``chunk_size * codebook_size * 4`` bytes, whatever the number of rows.
        eps: floor of the norm in L2 normalisation.
    """

    def __init__(
        self,
        codebook_size: int,
        dim: int,
        *,
        decay: float = 0.99,
        commitment_weight: float = 1.0,
        kmeans_init: bool = True,
        kmeans_iters: int = 10,
        dead_code_steps: int = 100,
        chunk_size: int = 4096,
        eps: float = 1e-5,
    ):
        super().__init__()
        for name, value, minimum in (
            ("codebook_size", codebook_size, 1), ("dim", dim, 1), ("kmeans_iters", kmeans_iters, 0),
            ("dead_code_steps", dead_code_steps, 0), ("chunk_size", chunk_size, 1),
        ):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
                raise ValueError(f"NormEMAVectorQuantizer: {name} must be an integer >= {minimum}, got {value!r}.")
        if not 0.0 < decay < 1.0:
            raise ValueError(f"NormEMAVectorQuantizer: decay must lie in (0, 1) (e.g. 0.99), got {decay!r}.")
        if commitment_weight < 0:
            raise ValueError(f"NormEMAVectorQuantizer: commitment_weight must be >= 0, got {commitment_weight!r}.")
        if not eps > 0:
            raise ValueError(f"NormEMAVectorQuantizer: eps must be > 0, got {eps!r}.")
        self.codebook_size = int(codebook_size)
        self.dim = int(dim)
        self.decay = float(decay)
        self.commitment_weight = float(commitment_weight)
        self.kmeans_init = bool(kmeans_init)
        self.kmeans_iters = int(kmeans_iters)
        self.dead_code_steps = int(dead_code_steps)
        self.chunk_size = int(chunk_size)
        self.eps = float(eps)
        initial = F.normalize(torch.randn(self.codebook_size, self.dim, dtype=torch.float32), dim=-1, eps=self.eps)
        self.register_buffer("code_vectors", initial)
        self.register_buffer("initialized", torch.tensor(not self.kmeans_init))
        self.register_buffer("steps_since_used", torch.zeros(self.codebook_size, dtype=torch.long))
        self.register_buffer("usage_ema", torch.zeros(self.codebook_size, dtype=torch.float32))

    def extra_repr(self) -> str:
        return (
            f"codebook_size={self.codebook_size}, dim={self.dim}, decay={self.decay}, "
            f"commitment_weight={self.commitment_weight}, kmeans_init={self.kmeans_init}, "
            f"dead_code_steps={self.dead_code_steps}, chunk_size={self.chunk_size}"
        )

    def _apply(self, fn, recurse: bool = True):
        """Move like any module, but keep the codebook and statistics float32 (no precision loss)."""
        before = {name: buffer for name, buffer in self._buffers.items() if buffer is not None}
        super()._apply(fn, recurse)
        for name, old in before.items():
            new = self._buffers[name]
            if old.dtype == torch.float32 and new.dtype != torch.float32:
                self._buffers[name] = old.to(device=new.device)
        return self

    @property
    def codebook(self) -> torch.Tensor:
        """The unit code vectors, ``(codebook_size, dim)`` float32 (a buffer: no gradient)."""
        return self.code_vectors

    @property
    def ema_perplexity(self) -> torch.Tensor:
        """``exp(entropy)`` of the EMA code-usage distribution (0 before any training step)."""
        total = self.usage_ema.sum()
        if total <= 0:
            return torch.zeros((), device=self.usage_ema.device)
        probabilities = self.usage_ema / total
        return torch.exp(-(probabilities * torch.log(probabilities.clamp(min=1e-12))).sum())

    # --- assignment -----------------------------------------------------------------------

    def _normalise(self, z: torch.Tensor) -> torch.Tensor:
        return F.normalize(z.float(), dim=-1, eps=self.eps)

    @torch.no_grad()
    def _nearest(self, unit_rows: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        """Index of the most similar row of ``codebook`` for each of ``unit_rows`` (M, dim), in chunks.

        One (chunk_size, K) float32 block is allocated once and reused, so the extra memory is
        bounded by ``chunk_size * K`` whatever M.
        """
        n_rows = unit_rows.shape[0]
        codes = torch.empty(n_rows, dtype=torch.long, device=unit_rows.device)
        if n_rows == 0:
            return codes
        chunk = min(self.chunk_size, n_rows)
        block = torch.empty(chunk, codebook.shape[0], dtype=torch.float32, device=unit_rows.device)
        codebook_t = codebook.t()
        for start in range(0, n_rows, chunk):
            stop = min(start + chunk, n_rows)
            similarities = torch.mm(unit_rows[start:stop], codebook_t, out=block[: stop - start])
            torch.argmax(similarities, dim=1, out=codes[start:stop])
        return codes

    @torch.no_grad()
    def assign(self, z: torch.Tensor) -> torch.LongTensor:
        """Nearest code (largest cosine similarity) of each vector: ``(..., dim) -> (...)`` int64."""
        _check_features(z, self.dim, "NormEMAVectorQuantizer.assign")
        with _autocast_disabled(z.device):
            unit = self._normalise(z.detach()).reshape(-1, self.dim)
            return self._nearest(unit, self.code_vectors).reshape(z.shape[:-1])

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Unit code vectors of ``codes`` ``(...)``: ``(..., dim)`` float32."""
        _check_codes(codes, self.codebook_size, "NormEMAVectorQuantizer")
        return F.embedding(codes.long(), self.code_vectors)

    # --- training-time updates ------------------------------------------------------------

    @torch.no_grad()
    def _kmeans_initialise(self, valid_rows: torch.Tensor) -> None:
        """Cosine k-means on ``valid_rows`` (M, dim) unit vectors of all processes; sets ``code_vectors``."""
        centroids = _sample_unit_rows(valid_rows, self.codebook_size, noise=0.0)
        if centroids is None:  # no process has a valid row yet: try again on the next batch
            return
        for _ in range(self.kmeans_iters):
            assignment = self._nearest(valid_rows, centroids)
            sums = torch.zeros_like(centroids).index_add_(0, assignment, valid_rows)
            counts = torch.bincount(assignment, minlength=self.codebook_size).float()
            _all_reduce_sum_(sums, counts)
            centroids = torch.where((counts > 0)[:, None], F.normalize(sums, dim=-1, eps=self.eps), centroids)
        self.code_vectors.copy_(centroids)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _ema_update(self, valid_rows: torch.Tensor, valid_codes: torch.Tensor) -> None:
        """EMA update, usage statistics and dead-code restart from one batch of valid unit rows."""
        counts = torch.bincount(valid_codes, minlength=self.codebook_size).float()
        sums = torch.zeros_like(self.code_vectors).index_add_(0, valid_codes, valid_rows)
        _all_reduce_sum_(counts, sums)
        total = counts.sum()
        if total <= 0:  # no valid position on any process: not a step
            return
        used = counts > 0
        batch_directions = F.normalize(sums, dim=-1, eps=self.eps)
        blended = F.normalize(
            self.decay * self.code_vectors + (1.0 - self.decay) * batch_directions, dim=-1, eps=self.eps
        )
        self.code_vectors.copy_(torch.where(used[:, None], blended, self.code_vectors))
        self.usage_ema.mul_(self.decay).add_(counts / total, alpha=1.0 - self.decay)
        self.steps_since_used.add_(1).masked_fill_(used, 0)
        if self.dead_code_steps:
            dead = (self.steps_since_used >= self.dead_code_steps).nonzero().flatten()
            if dead.numel():
                replacements = _sample_unit_rows(valid_rows, dead.numel(), noise=RESTART_NOISE)
                if replacements is not None:
                    self.code_vectors[dead] = replacements
                    self.steps_since_used[dead] = 0

    # --- forward --------------------------------------------------------------------------

    def forward(self, z: torch.Tensor, mask: torch.Tensor | None = None) -> QuantizerOutput:
        """Quantize ``z`` ``(..., dim)``; ``mask`` ``(...)`` bool marks valid positions (None = all).

        In training mode this also initialises (first batch) and updates the codebook from the
        valid positions; in eval mode no buffer changes.
        """
        _check_features(z, self.dim, "NormEMAVectorQuantizer")
        leading_shape = z.shape[:-1]
        valid = _flatten_mask(mask, leading_shape, z.device, "NormEMAVectorQuantizer")
        with _autocast_disabled(z.device):
            unit = self._normalise(z)
            unit_rows = unit.reshape(-1, self.dim)
            if self.training and not bool(self.initialized):
                self._kmeans_initialise(unit_rows.detach()[valid])
            codes = self._nearest(unit_rows.detach(), self.code_vectors)
            code_vectors = self.code_vectors[codes].reshape(unit.shape)
            quantized = unit + (code_vectors - unit).detach()
            weights = valid.reshape(leading_shape).float()
            squared_error = (unit - code_vectors).pow(2).mean(dim=-1)
            commitment = self.commitment_weight * (squared_error * weights).sum() / weights.sum().clamp(min=1.0)
            valid_codes = codes[valid]
            perplexity, used_codes = _usage_statistics(valid_codes, self.codebook_size)
            if self.training:
                self._ema_update(unit_rows.detach()[valid], valid_codes)
        return QuantizerOutput(
            quantized=quantized.to(z.dtype),
            codes=codes.reshape(leading_shape),
            commitment_loss=commitment,
            perplexity=perplexity,
            used_codes=used_codes,
        )


# --------------------------------------------------------------------------------------------
# Finite scalar quantization
# --------------------------------------------------------------------------------------------


class FiniteScalarQuantizer(nn.Module):
    """Finite scalar quantization (Mentzer et al. 2023) between two linear projections.

    ``z`` (..., dim) -> Linear(dim, d) with ``d = len(levels)`` -> per dimension ``i``, bound to
    ``tanh(h + shift_i) * (L_i - 1) / 2 * (1 - eps) - offset_i`` (``offset_i`` = 0.5 for even
    ``L_i``, 0 for odd, and ``shift_i = atanh(offset_i / half_width_i)`` so that 0 maps to 0;
    with 2 levels no shift can do that and ``shift_i = 0``) ->
    round (straight-through) to one of ``L_i`` integers -> scale to [-1, 1] -> Linear(d, dim).
    The code is the mixed-radix number of the per-dimension digits (digit ``i`` in ``[0, L_i)``,
    first dimension least significant); ``codebook_size = prod(levels)``. No codebook is learned
    and ``commitment_loss`` is 0. Rounding runs in float32 even under autocast.

    Args:
        levels: number of levels per scalar dimension, each >= 2 (e.g. ``[8, 8, 8, 6, 5]``).
        dim: feature dimension of inputs and outputs.
    """

    def __init__(self, levels: Sequence[int], dim: int):
        super().__init__()
        levels = list(levels)
        if not levels or any(isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 2 for n in levels):
            raise ValueError(
                f"FiniteScalarQuantizer: levels must be a non-empty list of integers >= 2 (e.g. [8, 8, 8, 6, 5]), got {levels!r}."
            )
        if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim < 1:
            raise ValueError(f"FiniteScalarQuantizer: dim must be an integer >= 1, got {dim!r}.")
        self.levels = [int(n) for n in levels]
        self.dim = int(dim)
        self.codebook_size = math.prod(self.levels)
        self.project_in = nn.Linear(dim, len(levels))
        self.project_out = nn.Linear(len(levels), dim)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, dim={self.dim}, codebook_size={self.codebook_size}"

    def _constants(self, device: torch.device) -> dict[str, torch.Tensor]:
        """Rounding constants, rebuilt from ``levels`` (tiny; not buffers, so loading and dtype
        casts can never alter them): ``levels``, ``radix`` (int64); ``half_width``, ``offset``,
        ``shift``, ``digit_shift`` (float32)."""
        levels = torch.tensor(self.levels, dtype=torch.long, device=device)
        as_float = levels.float()
        half_width = (as_float - 1) * (1 - FSQ_BOUND_EPS) / 2
        offset = (levels % 2 == 0).float() * 0.5
        # atanh(offset / half_width) maps 0 to level 0; for 2 levels that ratio exceeds 1 and the
        # shift is 0 (0 then sits on the boundary between the two levels, the symmetric choice).
        ratio = offset / half_width
        shift = torch.atanh(torch.where(ratio < 1, ratio, torch.zeros_like(ratio)))
        radix = torch.cumprod(torch.cat([levels.new_ones(1), levels[:-1]]), dim=0)
        digit_shift = torch.div(levels, 2, rounding_mode="floor").float()
        return dict(
            levels=levels, radix=radix, half_width=half_width, offset=offset, shift=shift, digit_shift=digit_shift
        )

    def _scalar_levels(self, z: torch.Tensor, constants: dict[str, torch.Tensor]) -> torch.Tensor:
        """Rounded centred integer levels ``(..., len(levels))`` float32, straight-through."""
        h = self.project_in(z.to(self.project_in.weight.dtype)).float()
        bounded = torch.tanh(h + constants["shift"]) * constants["half_width"] - constants["offset"]
        return bounded + (torch.round(bounded) - bounded).detach()

    @staticmethod
    def _levels_to_codes(scalar_levels: torch.Tensor, constants: dict[str, torch.Tensor]) -> torch.LongTensor:
        digits = (scalar_levels.detach() + constants["digit_shift"]).round().long()
        return (digits * constants["radix"]).sum(dim=-1)

    @staticmethod
    def _codes_to_levels(codes: torch.Tensor, constants: dict[str, torch.Tensor]) -> torch.Tensor:
        digits = torch.div(codes.long()[..., None], constants["radix"], rounding_mode="floor") % constants["levels"]
        return digits.float() - constants["digit_shift"]

    def _project_out(self, scalar_levels: torch.Tensor, constants: dict[str, torch.Tensor]) -> torch.Tensor:
        normalised = scalar_levels / constants["digit_shift"]
        return self.project_out(normalised.to(self.project_out.weight.dtype))

    @property
    def codebook(self) -> torch.Tensor:
        """All ``prod(levels)`` code vectors after the output projection, ``(codebook_size, dim)`` (detached)."""
        with torch.no_grad():
            return self.lookup(torch.arange(self.codebook_size, device=self.project_out.weight.device))

    @torch.no_grad()
    def assign(self, z: torch.Tensor) -> torch.LongTensor:
        """Code of each vector: ``(..., dim) -> (...)`` int64 in ``[0, prod(levels))``."""
        _check_features(z, self.dim, "FiniteScalarQuantizer.assign")
        constants = self._constants(z.device)
        with _autocast_disabled(z.device):
            return self._levels_to_codes(self._scalar_levels(z, constants), constants)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Code vectors (after the output projection) of ``codes`` ``(...)``: ``(..., dim)``."""
        _check_codes(codes, self.codebook_size, "FiniteScalarQuantizer")
        constants = self._constants(codes.device)
        return self._project_out(self._codes_to_levels(codes, constants), constants)

    def forward(self, z: torch.Tensor, mask: torch.Tensor | None = None) -> QuantizerOutput:
        """Quantize ``z`` ``(..., dim)``; ``mask`` ``(...)`` bool limits the statistics to valid positions."""
        _check_features(z, self.dim, "FiniteScalarQuantizer")
        valid = _flatten_mask(mask, z.shape[:-1], z.device, "FiniteScalarQuantizer")
        constants = self._constants(z.device)
        with _autocast_disabled(z.device):
            scalar_levels = self._scalar_levels(z, constants)
            codes = self._levels_to_codes(scalar_levels, constants)
            quantized = self._project_out(scalar_levels, constants)
        perplexity, used_codes = _usage_statistics(codes.reshape(-1)[valid], self.codebook_size)
        return QuantizerOutput(
            quantized=quantized.to(z.dtype),
            codes=codes,
            commitment_loss=torch.zeros((), device=z.device),
            perplexity=perplexity,
            used_codes=used_codes,
        )


def build_quantizer(config: FmriTokenizerConfig) -> nn.Module:
    """The quantizer that ``config.quantizer`` names, with its settings.

    ``"vq"``: :class:`NormEMAVectorQuantizer` (``codebook_size`` x ``codebook_dim``, ``ema_decay``,
    ``commitment_weight``, ``kmeans_init``, ``kmeans_iters`` (default 10), ``dead_code_steps``,
    ``vq_chunk_size`` (default 4096)). ``"fsq"``: :class:`FiniteScalarQuantizer` over
    ``fsq_levels`` with ``dim = codebook_dim``; its ``codebook_size`` is ``prod(fsq_levels)``,
    not ``config.codebook_size``.
    """
    kind = getattr(config, "quantizer", None)
    if kind == "vq":
        return NormEMAVectorQuantizer(
            config.codebook_size,
            config.codebook_dim,
            decay=config.ema_decay,
            commitment_weight=config.commitment_weight,
            kmeans_init=config.kmeans_init,
            kmeans_iters=getattr(config, "kmeans_iters", 10),
            dead_code_steps=config.dead_code_steps,
            chunk_size=getattr(config, "vq_chunk_size", 4096),
        )
    if kind == "fsq":
        return FiniteScalarQuantizer(config.fsq_levels, config.codebook_dim)
    raise ValueError(f"Unknown quantizer {kind!r}; set config.quantizer to 'vq' or 'fsq'.")
