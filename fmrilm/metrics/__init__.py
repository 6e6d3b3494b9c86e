"""Local ``evaluate`` metric modules (package data), loadable offline with ``evaluate.load(path)``."""

from pathlib import Path

#: Path of the fMRI-LM task metric script: ``evaluate.load(str(FMRI_TASK_METRICS))``.
FMRI_TASK_METRICS = Path(__file__).resolve().parent / "fmri_task_metrics" / "fmri_task_metrics.py"

__all__ = ["FMRI_TASK_METRICS"]
