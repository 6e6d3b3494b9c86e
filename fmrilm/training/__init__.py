"""Training: the shared Accelerate loop (:mod:`.loop`), its schedule, YAML configs, and the stage trainers.

fmrilm train tokenizer --config fmrilm/training/configs/stage1_tiny.yaml training.max_steps=50
accelerate launch -m fmrilm.training.stage1 --config CONFIG.yaml [key=value ...]
"""

from .config import load_config, save_config
from .loop import (
    EpochShuffleSampler,
    LoopConfig,
    TrainingLoop,
    TrainResult,
    build_accelerator,
    find_latest_checkpoint,
    make_dataloader,
    parameter_groups,
)
from .schedule import WarmupCosineSchedule, warmup_cosine_scheduler

__all__ = [
    "EpochShuffleSampler",
    "LoopConfig",
    "TrainResult",
    "TrainingLoop",
    "WarmupCosineSchedule",
    "build_accelerator",
    "find_latest_checkpoint",
    "load_config",
    "make_dataloader",
    "parameter_groups",
    "save_config",
    "warmup_cosine_scheduler",
]
