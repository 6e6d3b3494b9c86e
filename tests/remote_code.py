"""Loading saved folders in fresh Python processes, with the package and with every import of it blocked.

    with_package, without = run_with_and_without_package(load_code, tmp_path)

``load_code`` reads ``TRUST`` (False with the package, True without it: only the remote code saved in the
folder can work then); ``extra`` adds per-process lines (e.g. where each writes its output).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BLOCK_PACKAGE = "import sys\nsys.modules['fmrilm'] = None  # any import of the package fails\n"


def run_with_and_without_package(load: str, cwd: Path, *, extra: tuple[str, str] = ("", "")) -> tuple[str, str]:
    """Run ``load`` in two fresh processes at once (offline, own transformers modules cache under ``cwd``);
    both must exit 0. Returns (stdout with the package, stdout without it)."""
    preambles = ("import fmrilm\nTRUST = False\n", BLOCK_PACKAGE + "TRUST = True\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(cwd / "modules"), TOKENIZERS_PARALLELISM="false")
    options = dict(cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runs = [subprocess.Popen([sys.executable, "-c", head + lines + load], **options) for head, lines in zip(preambles, extra)]
    outputs = [run.communicate(timeout=240) for run in runs]
    for run, (_, stderr) in zip(runs, outputs):
        assert run.returncode == 0, stderr[-3000:]
    return outputs[0][0], outputs[1][0]
