"""Learning-rate schedule: linear warm-up, then ONE cosine decay over all optimisation steps.

The official code restarts its cosine every epoch (``CosineAnnealingWarmRestarts`` with T0 = steps
per epoch, SPEC B5). Here the schedule is a function of the global optimisation step only: it
rises linearly for ``warmup_steps``, decays once along half a cosine to ``min_lr_ratio`` x the peak
at the last step, and stays there if training runs past ``total_steps``. Epoch boundaries play no
part, so it can never restart.
"""

from __future__ import annotations

import math

import torch

__all__ = ["WarmupCosineSchedule", "warmup_cosine_scheduler"]


class WarmupCosineSchedule:
    """Learning-rate factor (relative to each group's peak LR) for a 0-based optimisation step.

    * ``step < warmup_steps``: ``(step + 1) / warmup_steps`` (the first step is not wasted at LR 0,
      step ``warmup_steps - 1`` runs at the peak);
    * then ``min_lr_ratio + (1 - min_lr_ratio) * (1 + cos(pi * p)) / 2`` with
      ``p = (step - warmup_steps) / (total_steps - warmup_steps - 1)``: the first step after warm-up
      runs at the peak and the last step (``total_steps - 1``) at exactly ``min_lr_ratio``;
    * ``step >= total_steps``: ``min_lr_ratio`` (never a restart).

    A plain callable object (not a closure), so ``LambdaLR.state_dict`` saves its settings.

    Args:
        total_steps: optimisation steps of the whole run (all epochs), >= 1.
        warmup_steps: steps of linear warm-up, 0 <= warmup_steps < total_steps (or 0).
        min_lr_ratio: final LR as a fraction of the peak, in [0, 1].
    """

    def __init__(self, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.0) -> None:
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps must be a positive integer (optimisation steps), got {total_steps!r}.")
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be a non-negative integer, got {warmup_steps!r}.")
        if warmup_steps >= total_steps and warmup_steps > 0:
            raise ValueError(
                f"warmup_steps ({warmup_steps}) must be smaller than total_steps ({total_steps}); "
                "shorten the warm-up (e.g. warmup_ratio=0.05) or train for more steps."
            )
        if not isinstance(min_lr_ratio, (int, float)) or not 0.0 <= float(min_lr_ratio) <= 1.0:
            raise ValueError(f"min_lr_ratio must lie in [0, 1] (final LR / peak LR), got {min_lr_ratio!r}.")
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.min_lr_ratio = float(min_lr_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if step >= self.total_steps:
            return self.min_lr_ratio
        decay_steps = self.total_steps - self.warmup_steps - 1
        progress = 1.0 if decay_steps <= 0 else (step - self.warmup_steps) / decay_steps
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def __repr__(self) -> str:
        return (
            f"WarmupCosineSchedule(total_steps={self.total_steps}, warmup_steps={self.warmup_steps}, "
            f"min_lr_ratio={self.min_lr_ratio})"
        )


def warmup_cosine_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` applying :class:`WarmupCosineSchedule` to every parameter group's peak LR.

    Call ``scheduler.step()`` once after every optimisation step (not per micro-batch, not per
    process): the optimiser's LR for step ``s`` (0-based) is then ``peak * schedule(s)``.
    """
    schedule = WarmupCosineSchedule(total_steps, warmup_steps, min_lr_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
