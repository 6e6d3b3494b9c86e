"""What every stage's command line shares: ``--config CONFIG.yaml [key=value ...]``, the run, the report.

A stage module defines its config class, its ``train_*`` function and a ``report(result) -> lines``
function, and gets ``add_arguments`` / ``run_from_args`` / ``main`` from :class:`StageCommand`:

    COMMAND = StageCommand("align", 2, Stage2Config, train_alignment, report, example="model.text_model=gpt2")
    add_arguments, run_from_args, main = COMMAND.add_arguments, COMMAND.run_from_args, COMMAND.main
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .config import load_config

__all__ = ["StageCommand", "best_line"]


def best_line(result: Any, prefix: str = "Best") -> str:
    """``"Best <metric> = <value> at step <step>."`` of a stage result (``best_metric``, ``best_value``, ``best_step``)."""
    best = "n/a" if result.best_value is None else f"{result.best_value:.4g}"
    return f"{prefix} {result.best_metric} = {best} at step {result.best_step}."


@dataclass(frozen=True)
class StageCommand:
    """The command line of one training stage.

    Attributes:
        name: the ``fmrilm train`` subcommand (``tokenizer``, ``align``, ``instruct``).
        stage: the stage number (module ``fmrilm.training.stage{stage}``).
        config_class: the stage's config dataclass, read by :func:`~fmrilm.training.config.load_config`.
        train: ``train(config) -> result``.
        report: ``report(result) -> lines`` printed by the main process after a run.
        description: one line for ``python -m fmrilm.training.stageN --help``.
        example: example ``key=value`` overrides for the help text.
    """

    name: str
    stage: int
    config_class: type
    train: Callable[[Any], Any]
    report: Callable[[Any], Sequence[str]]
    description: str
    example: str = "training.max_steps=100"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """``--config CONFIG.yaml`` and ``key=value`` overrides."""
        parser.add_argument(
            "--config", required=True, help=f"stage-{self.stage} YAML config (see fmrilm/training/configs/)"
        )
        parser.add_argument(
            "overrides", nargs="*", metavar="KEY=VALUE", help=f"override config values, e.g. {self.example}"
        )

    def run_from_args(self, args: argparse.Namespace) -> int:
        """Load the config, train, print the report; errors in the config or data -> exit 2."""
        try:
            config = load_config(self.config_class, args.config, args.overrides)
            result = self.train(config)
        except (ValueError, FileNotFoundError, FileExistsError) as error:
            print(f"fmrilm train {self.name}: error: {error}", file=sys.stderr)
            return 2
        from accelerate import PartialState

        if PartialState().is_main_process:
            for line in self.report(result):
                print(line)
        return 0

    def main(self, argv: list[str] | None = None) -> int:
        """``python -m fmrilm.training.stageN --config ...`` (also under ``accelerate launch``)."""
        parser = argparse.ArgumentParser(prog=f"python -m fmrilm.training.stage{self.stage}", description=self.description)
        self.add_arguments(parser)
        return self.run_from_args(parser.parse_args(argv))
