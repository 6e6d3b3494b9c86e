"""Run every benchmark in bench/ and write bench/results.json and bench/results.md.

Each module ``bench/bench_*.py`` exposes ``run(quick: bool = False) -> list[BenchResult]``: every
figure is a ratio against a baseline measured in the same run on the same machine (described in the
output). Each module ``bench/quality_*.py`` exposes ``run(quick) -> list[QualityResult]``: figures of
merit (e.g. R^2 after a fixed training budget), reported in a second table.

    python bench/run_all.py [--quick] [--only NAME ...]

With ``--only``, the other modules' rows of an existing results.json are kept, so one benchmark can
be refreshed without rerunning all of them.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import sys
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import machine_description  # noqa: E402


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _markdown(machine: dict, rows: list[dict], quality: list[dict], failures: dict[str, str]) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"Measured {machine['date']} on {machine['cpu']} ({machine['cores']} cores), "
        f"Python {machine['python']}, numpy {machine['numpy']}, torch {machine['torch']}"
        + (f", GPU {machine['cuda']}" if machine.get("cuda") else ", no GPU") + ".",
        "Ratio = baseline time / our time, both measured in this run (> 1: ours is faster).",
        "",
        "| benchmark | case | ours | baseline | ours (ms) | baseline (ms) | ratio | target |",
        "|---|---|---|---|---:|---:|---:|---|",
    ]
    for row in rows:
        target = row["target"] or ""
        if row["target_met"] is not None:
            target += " (met)" if row["target_met"] else " (missed)"
        lines.append(
            f"| {row['benchmark']} | {row['case']} | {row['ours']} | {row['baseline']} | "
            f"{row['ours_seconds'] * 1e3:.1f} | {row['baseline_seconds'] * 1e3:.1f} | {row['ratio']:.2f}x | {target} |"
        )
    if quality:
        lines += [
            "",
            "Quality figures (not times):",
            "",
            "| benchmark | case | metric | value | budget |",
            "|---|---|---|---:|---|",
        ]
        lines += [
            f"| {q['benchmark']} | {q['case']} | {q['metric']} | {q['value']:.4f} | {q['budget']} |" for q in quality
        ]
    for name, error in failures.items():
        lines.append(f"\n**{name} failed:**\n```\n{error}\n```")
    return "\n".join(lines) + "\n"


def _restore_global_state(module: str) -> None:
    """Undo process-wide torch settings a benchmark module left behind (all modules share this process)."""
    torch = sys.modules.get("torch")
    if torch is not None and not torch.is_grad_enabled():
        print(f"note: {module} left gradients disabled; re-enabled for the next modules", file=sys.stderr)
        torch.set_grad_enabled(True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller inputs, fewer repeats")
    parser.add_argument("--only", nargs="*", default=None, help="benchmark module names (e.g. bench_simulate)")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)

    machine = {**machine_description(), "date": datetime.date.today().isoformat()}
    modules = sorted([*HERE.glob("bench_*.py"), *HERE.glob("quality_*.py")])
    selected = [path for path in modules if not args.only or path.stem in args.only]
    results_file = args.out / "results.json"
    kept = {"results": [], "quality": []}
    if args.only and results_file.exists():
        previous = json.loads(results_file.read_text())
        kept = {
            key: [row for row in previous.get(key, []) if row.get("module") not in args.only] for key in kept
        }
    rows: list[dict] = list(kept["results"])
    quality: list[dict] = list(kept["quality"])
    failures: dict[str, str] = {}
    for path in selected:
        print(f"== {path.stem}", flush=True)
        try:
            for result in _load(path).run(quick=args.quick):
                print(result.line(), flush=True)
                target = quality if path.stem.startswith("quality_") else rows
                target.append({**result.to_dict(), "module": path.stem})
        except Exception:  # one failing benchmark must not hide the others' figures
            failures[path.stem] = traceback.format_exc()
            print(failures[path.stem], file=sys.stderr)
        _restore_global_state(path.stem)
    rows.sort(key=lambda row: row.get("module", ""))
    quality.sort(key=lambda row: row.get("module", ""))
    args.out.mkdir(parents=True, exist_ok=True)
    results_file.write_text(
        json.dumps({"machine": machine, "results": rows, "quality": quality, "failures": failures}, indent=2)
    )
    (args.out / "results.md").write_text(_markdown(machine, rows, quality, failures))
    print(f"wrote {args.out / 'results.json'} and {args.out / 'results.md'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
