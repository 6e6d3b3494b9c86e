"""``fmrilm train STAGE --config CONFIG.yaml [key=value ...]``: the training command line.

    fmrilm train tokenizer --config fmrilm/training/configs/stage1_tiny.yaml training.max_steps=50
    fmrilm train align --config fmrilm/training/configs/stage2_tiny.yaml training.max_steps=50
    fmrilm train instruct --config fmrilm/training/configs/stage3_tiny.yaml training.max_steps=50

Each stage module provides ``add_arguments(parser)`` and ``run_from_args(args) -> exit code``. The
same modules run under ``accelerate launch -m fmrilm.training.stageN --config ...`` for several
processes or GPUs.
"""

from __future__ import annotations

import argparse
import importlib

__all__ = ["STAGES", "add_train_command"]

#: command -> (module under fmrilm.training, help)
STAGES: dict[str, tuple[str, str]] = {
    "tokenizer": ("stage1", "stage 1: train the text-aligned fMRI tokenizer and write a processor folder"),
    "align": ("stage2", "stage 2: align a causal LM with the fMRI tokens (F2T + F2F + T2T) and write the model"),
    "instruct": (
        "stage3",
        "stage 3: instruction-tune the stage-2 model on labelled tasks (LoRA, answer-only loss) and write the model",
    ),
}


def _run(args: argparse.Namespace) -> int:
    module = importlib.import_module(f"fmrilm.training.{STAGES[args.stage][0]}")
    return module.run_from_args(args)


def add_train_command(subparsers) -> argparse.ArgumentParser:
    """Add ``train`` with one sub-command per stage to the ``fmrilm`` sub-parsers."""
    train = subparsers.add_parser("train", help="train a stage of fMRI-LM from a YAML config")
    stages = train.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, (module_name, help_text) in STAGES.items():
        stage = stages.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(f"fmrilm.training.{module_name}").add_arguments(stage)
        stage.set_defaults(handler=_run)
    return train
