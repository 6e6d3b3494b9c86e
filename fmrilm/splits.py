"""Subject-grouped, deterministic train/validation/test splits shared by every stage.

A subject's split depends only on ``(dataset, subject_id, seed)`` through a SHA-256 hash, never on
which other subjects are present or on row order. So all scans (sessions, runs, sliding windows) of
one subject land in one split, the three training stages agree without exchanging files, and adding
subjects to a cohort never moves existing ones (SPEC B16).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

__all__ = ["DEFAULT_SPLIT_FRACTIONS", "split_fraction_of", "subject_split"]

DEFAULT_SPLIT_FRACTIONS: Mapping[str, float] = {"train": 0.8, "validation": 0.1, "test": 0.1}


def split_fraction_of(dataset: str, subject_id: str, seed: int = 0) -> float:
    """A uniform number in [0, 1) fixed by ``(dataset, subject_id, seed)``."""
    digest = hashlib.sha256(f"{seed}\x1f{dataset}\x1f{subject_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def subject_split(
    dataset: str,
    subject_id: str,
    seed: int = 0,
    fractions: Mapping[str, float] = DEFAULT_SPLIT_FRACTIONS,
) -> str:
    """Name of the split that ``subject_id`` of ``dataset`` belongs to.

    Args:
        dataset: dataset name (subjects are only unique within a dataset).
        subject_id: the subject's identifier.
        seed: changes the assignment of every subject at once.
        fractions: split name -> expected fraction of subjects; must be positive and sum to 1.

    Returns:
        One key of ``fractions``. With few subjects a split may be empty: the fractions are
        expectations, which is the price of an assignment that never depends on the cohort.
    """
    total = sum(fractions.values())
    if not fractions or any(v < 0 for v in fractions.values()) or abs(total - 1.0) > 1e-6:
        raise ValueError(f"Split fractions must be non-negative and sum to 1, got {dict(fractions)}.")
    u = split_fraction_of(dataset, str(subject_id), seed)
    cumulative = 0.0
    for name, fraction in fractions.items():
        cumulative += fraction
        if u < cumulative:
            return name
    return list(fractions)[-1]
