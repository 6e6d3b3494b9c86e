"""Where the fMRI blocks of a token sequence are, and the position ids and attention mask they imply.

A multimodal sequence holds text tokens and fMRI blocks. One block is what the processor writes
for one scan::

    <fmri_start>  <fmri> x N  <fmri_end>        N = n_time_patches * n_rois

The N placeholders are TIME-MAJOR (DESIGN 3, SPEC B1): placeholder ``k`` of a block is time patch
``k // n_rois`` of ROI ``k % n_rois``. Every maximal run of placeholders is one block, and blocks are
numbered in reading order over the batch (row 0 left to right, then row 1, ...), which is also the
order of the rows of ``fmri_codes``.

Rules built here (DESIGN 5):

- position ids: every real token advances the position by one, except that all placeholders of one
  time patch share a position, so a block of T' patches advances it by T'; padding advances nothing
  and gets position 0. fMRI tokens therefore take their time-patch index, offset by what precedes the
  block, and the text after a block continues after its last patch.
- attention (``allowed[b, query, key]``):

  * a placeholder of block ``j`` at time patch ``t`` sees block ``j``'s ``<fmri_start>`` and every
    placeholder of block ``j`` at a time patch ``<= t`` (block-causal over time patches,
    bidirectional within one); never text, never another block;
  * ``<fmri_start>`` sees itself only;
  * every other real token (text, ``<fmri_end>``) is ordinary causal over all earlier real tokens, so
    text sees every earlier fMRI token;
  * padding (2-D mask 0) and keys flagged as missing (placeholders whose code is ``PAD_CODE``) are
    never keys for any query. A padding query sees itself only, so no row of the mask is empty (its
    output is meaningless and is ignored everywhere).

This module imports only torch, so ``save_pretrained`` can ship it as remote code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["FmriLayout", "allowed_attention", "find_fmri_layout", "fmri_position_ids", "to_additive_mask"]


@dataclass(frozen=True)
class FmriLayout:
    """The fMRI blocks of a batch of token sequences, every tensor shaped (batch, length).

    Attributes:
        real: bool, the 2-D padding mask (True for real tokens).
        is_placeholder: bool, ``<fmri>`` tokens.
        is_start: bool, ``<fmri_start>`` tokens.
        block: int64, reading-order index of the block a placeholder or a ``<fmri_start>`` belongs
            to; -1 for every other token.
        index_in_block: int64, ``k`` (0..N-1) of a placeholder inside its block; -1 elsewhere.
        time_patch: int64, ``k // n_rois`` for placeholders, -1 for ``<fmri_start>`` (so it counts
            as "earlier" than every time patch of its block) and for every other token.
        num_blocks: total number of blocks in the batch.
    """

    real: torch.Tensor
    is_placeholder: torch.Tensor
    is_start: torch.Tensor
    block: torch.Tensor
    index_in_block: torch.Tensor
    time_patch: torch.Tensor
    num_blocks: int


def find_fmri_layout(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    fmri_token_id: int,
    fmri_start_token_id: int,
    fmri_end_token_id: int,
    n_rois: int,
    num_fmri_tokens: int,
) -> FmriLayout:
    """Locate and check the fMRI blocks of ``input_ids`` (B, L).

    Args:
        input_ids: (B, L) token ids.
        attention_mask: (B, L) 2-D padding mask (1 real, 0 padding), or None (no padding).
        fmri_token_id, fmri_start_token_id, fmri_end_token_id: ids of the three fMRI special tokens.
        n_rois: ROIs per time patch (R).
        num_fmri_tokens: placeholders per block (N = n_time_patches * R).

    Raises:
        ValueError: a run of placeholders is not exactly N long, is not preceded by
            ``<fmri_start>`` and followed by ``<fmri_end>``, a start/end token stands outside a
            block, or an fMRI special token lies under padding.
    """
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be shaped (batch, length), got {tuple(input_ids.shape)}.")
    real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    is_placeholder = input_ids == fmri_token_id
    is_start = input_ids == fmri_start_token_id
    is_end = input_ids == fmri_end_token_id
    special = is_placeholder | is_start | is_end
    if bool((special & ~real).any()):
        row, column = (special & ~real).nonzero()[0].tolist()
        raise ValueError(
            f"Sequence {row} has an fMRI special token (id {int(input_ids[row, column])}) at position {column}, where "
            "attention_mask is 0: fMRI blocks must be real tokens. Pad around them, never over them."
        )

    batch, length = input_ids.shape
    not_placeholder = torch.zeros((batch, 1), dtype=torch.bool, device=input_ids.device)
    before = torch.cat([not_placeholder, is_placeholder[:, :-1]], dim=1)
    after = torch.cat([is_placeholder[:, 1:], not_placeholder], dim=1)
    run_start = is_placeholder & ~before
    run_end = is_placeholder & ~after
    num_blocks = int(run_start.sum())

    # Block number in reading order: the count of run starts up to here, over the flattened batch.
    block = run_start.reshape(-1).cumsum(0).reshape(batch, length) - 1
    block = torch.where(is_placeholder, block, torch.full_like(block, -1))
    column = torch.arange(length, device=input_ids.device).expand(batch, length)
    last_run_start = torch.where(run_start, column, torch.full_like(column, -1)).cummax(dim=1).values
    index_in_block = torch.where(is_placeholder, column - last_run_start, torch.full_like(column, -1))

    lengths = torch.bincount(block[is_placeholder], minlength=num_blocks)
    wrong = (lengths != num_fmri_tokens).nonzero()
    if wrong.numel():
        first = int(wrong[0])
        raise ValueError(
            f"fMRI block {first} (in reading order) has {int(lengths[first])} '<fmri>' placeholders, expected "
            f"{num_fmri_tokens} (n_time_patches x n_rois). Build the inputs with the processor, which expands each "
            "'<fmri>' marker into <fmri_start> + N placeholders + <fmri_end>, and never truncate inside a block."
        )
    token_before_run = torch.cat([torch.zeros_like(is_start[:, :1]), is_start[:, :-1]], dim=1)
    token_after_run = torch.cat([is_end[:, 1:], torch.zeros_like(is_end[:, :1])], dim=1)
    if bool((run_start & ~token_before_run).any()) or bool((run_end & ~token_after_run).any()):
        raise ValueError(
            "Every run of '<fmri>' placeholders must be preceded by '<fmri_start>' and followed by '<fmri_end>' "
            "(the layout the processor writes); these input_ids have a block without them."
        )
    num_starts, num_ends = int(is_start.sum()), int(is_end.sum())
    if num_starts != num_blocks or num_ends != num_blocks:
        raise ValueError(
            f"input_ids hold {num_blocks} fMRI block(s) but {num_starts} '<fmri_start>' and {num_ends} '<fmri_end>' "
            "token(s): each of these tokens must open or close exactly one block of '<fmri>' placeholders."
        )

    # A start token belongs to the block that follows it.
    block_after = torch.cat([block[:, 1:], torch.full_like(block[:, :1], -1)], dim=1)
    block = torch.where(is_start, block_after, block)
    time_patch = torch.where(is_placeholder, index_in_block // n_rois, torch.full_like(index_in_block, -1))
    return FmriLayout(
        real=real,
        is_placeholder=is_placeholder,
        is_start=is_start,
        block=block,
        index_in_block=index_in_block,
        time_patch=time_patch,
        num_blocks=num_blocks,
    )


def fmri_position_ids(layout: FmriLayout, n_rois: int) -> torch.Tensor:
    """Position ids (B, L) int64 of the layout (see the module docstring): padding gets 0."""
    starts_a_step = layout.real & (~layout.is_placeholder | (layout.index_in_block % n_rois == 0))
    positions = starts_a_step.long().cumsum(dim=1) - 1
    return torch.where(layout.real, positions, torch.zeros_like(positions))


def allowed_attention(layout: FmriLayout, missing_keys: torch.Tensor | None = None) -> torch.Tensor:
    """Which key each query may attend to: bool (B, L, L), ``[b, query, key]``.

    Args:
        layout: from :func:`find_fmri_layout`.
        missing_keys: optional bool (B, L), True for real tokens that must never be keys (the
            placeholders of padded time patches, code ``PAD_CODE``).
    """
    length = layout.real.shape[1]
    device = layout.real.device
    keys = layout.real if missing_keys is None else layout.real & ~missing_keys
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    # A placeholder query has block >= 0, so equal blocks also exclude every key outside a block; a
    # block's <fmri_start> has time patch -1, earlier than every patch of its block.
    same_block = layout.block[:, :, None] == layout.block[:, None, :]
    fmri_rule = same_block & (layout.time_patch[:, None, :] <= layout.time_patch[:, :, None])
    allowed = torch.where(layout.is_placeholder[:, :, None], fmri_rule, causal) & keys[:, None, :]
    itself = torch.eye(length, dtype=torch.bool, device=device)
    return torch.where((layout.is_start | ~layout.real)[:, :, None], itself, allowed)


def to_additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bool (B, L, L) -> additive float mask (B, 1, L, L): 0 where allowed, the dtype's minimum elsewhere."""
    blocked = torch.finfo(dtype).min
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, torch.full((), blocked, dtype=dtype, device=allowed.device))[:, None]
