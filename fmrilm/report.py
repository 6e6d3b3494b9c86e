"""``fmrilm report``: PNG figures and one self-contained HTML page about a model and a scan.

    fmrilm report --model outputs/demo/stage3/model --dataset outputs/demo/tokenized/simulated --scan SCAN_ID \
        --run outputs/demo/stage1 outputs/demo/stage2 outputs/demo/stage3 --evaluation gain_class.json --out report/

    from fmrilm.report import build_report
    html = build_report("report/", model="outputs/demo/stage3/model", dataset="...", scan_id="...")

Panels (each written as a PNG, all embedded in ``report.html`` as base64, so the page is one file):

a. **Functional connectivity** of the scan (detrended, 0.01-0.1 Hz band-passed Pearson FC at its
   native TR, the descriptor corpus's FC), ROIs ordered by atlas network, networks labelled.
b. **Token map**: the model input (ROI x time, normalised) beside its fMRI tokens
   (``processor.tokenize_fmri``: ROI x time patch, one colour per code id), same ROI order.
c. **Input vs reconstruction** (``processor.decode_fmri`` of those codes) for four ROIs, the ROIs
   whose R^2 are the best, the worst and two between (so the figure shows the spread), R^2 each.
d. **Codebook usage** over all codes of the dataset split that holds the scan: frequencies sorted,
   perplexity (exp of the entropy of the code histogram), share of the codebook used.
e. **Training curves** of each run's ``metrics.jsonl`` (training losses, every validation metric,
   the best step marked).
f. **Evaluation table**: :func:`fmrilm.evaluation.results_table` of each ``fmrilm evaluate`` JSON.
g. **Generated description** (greedy, through the ``fmri-to-text`` pipeline) beside the facts it
   should state (the mentions of :func:`fmrilm.descriptors.describe_with_mentions` of the scan's
   ``descriptor_facts``), each statement of the generation marked right or wrong by
   :func:`fmrilm.training.generation_metrics.faithfulness`.

A panel whose input is absent is replaced by a note that says what to pass. ``report.json`` holds
the numbers behind the figures (R^2 per ROI, codebook statistics, faithfulness ...).
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "REPORT_FILE",
    "SUMMARY_FILE",
    "Panel",
    "ReportScan",
    "add_report_command",
    "build_report",
    "codebook_statistics",
    "load_run_metrics",
    "markdown_table_to_html",
    "roi_r2",
    "run_report_command",
    "scan_connectivity",
]

REPORT_FILE = "report.html"
SUMMARY_FILE = "report.json"
METRICS_FILE = "metrics.jsonl"
#: ROIs drawn in the reconstruction panel.
N_RECONSTRUCTED_ROIS = 4
_FACTS_COLUMN = "descriptor_facts"
_CODES_COLUMN = "fmri_codes"
#: Keys of a metrics.jsonl record that are bookkeeping, not curves.
_RECORD_KEYS = frozenset({"split", "step", "epoch"})
_TRAIN_SKIPPED = frozenset({"lr", "grad_norm"})
#: Panels per training-curve figure at most (losses, other training metrics, validation metrics).
_MAX_PANELS = 16


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------


@dataclass
class ReportScan:
    """The scan a report is about.

    Attributes:
        bold: (time, rois) float32 series at ``tr`` seconds.
        tr: repetition time in seconds.
        scan_id: its id (dataset) or file name.
        facts: its descriptor facts (a ``DescriptorFacts``) or None.
        split: the dataset split that holds it, or None for a file.
        source: where it came from, for the page.
    """

    bold: np.ndarray
    tr: float
    scan_id: str
    facts: Any = None
    split: str | None = None
    source: str = ""


@dataclass
class Panel:
    """One section of the report: its figures, HTML body, a note when it could not be drawn, its numbers."""

    key: str
    title: str
    images: list[Path] = field(default_factory=list)
    body: str = ""
    note: str | None = None
    numbers: dict[str, Any] = field(default_factory=dict)


def _checked_tr(tr: Any) -> float:
    if isinstance(tr, bool) or not isinstance(tr, (int, float, np.integer, np.floating)):
        raise ValueError(f"tr must be the repetition time in seconds (a positive number), got {tr!r}.")
    value = float(tr)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"tr must be a positive, finite number of seconds, got {tr!r}.")
    return value


def _checked_bold(bold: Any, n_rois: int, where: str) -> np.ndarray:
    """A finite (time, n_rois) float32 array; (rois, time) is refused with the fix named."""
    array = np.asarray(bold)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{where}: a scan must be a numeric (time, rois) array, got shape {array.shape}.")
    if array.shape[1] != n_rois:
        hint = " It looks transposed: pass (time, rois), e.g. bold.T." if array.shape[0] == n_rois else ""
        raise ValueError(f"{where}: the scan has {array.shape[1]} ROIs (shape {array.shape}) but the processor "
                         f"expects {n_rois}.{hint}")  # fmt: skip
    if not np.isfinite(array).all():
        raise ValueError(f"{where}: the scan holds NaN or infinite values; fill or drop them first.")
    return array.astype(np.float32, copy=False)


def _load_processor(processor: Any, model_dir: Path | None) -> Any:
    from .processing_fmrilm import FmriLMProcessor

    if processor is None and model_dir is None:
        return None
    if processor is None or isinstance(processor, (str, os.PathLike)):
        folder = Path(processor) if processor is not None else model_dir
        if not folder.is_dir():
            raise FileNotFoundError(f"Processor folder {folder} does not exist; pass the folder of a saved processor.")
        processor = FmriLMProcessor.from_pretrained(str(folder))
    if not hasattr(processor, "tokenize_fmri"):
        raise TypeError(f"processor must be an FmriLMProcessor or its folder, got {type(processor).__name__}.")
    if processor.fmri_tokenizer is None:
        raise ValueError(
            "The processor has no fMRI tokenizer, so no token map, reconstruction or codebook usage can be drawn; "
            "pass a stage-1 (or later) processor folder, which holds an fmri_tokenizer/ subfolder."
        )
    return processor


def _load_model(model: Any, adapter: Any) -> tuple[Any, Path | None]:
    """The language model (or None) and the folder it came from."""
    if model is None:
        if adapter is not None:
            raise ValueError("adapter was given without model: pass the base model the adapter was trained on.")
        return None, None
    folder = None
    if isinstance(model, (str, os.PathLike)):
        folder = Path(model)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"Model folder {folder} has no config.json; pass a folder written by model.save_pretrained (e.g. "
                "a stage-2 or stage-3 OUTPUT/model)."
            )
        from transformers import AutoModelForCausalLM

        from . import FmriLMForCausalLM  # noqa: F401  (registers the Auto classes)

        model = AutoModelForCausalLM.from_pretrained(str(folder))
    if adapter is not None:
        from peft import PeftModel

        if not Path(adapter).is_dir():
            raise FileNotFoundError(f"Adapter folder {adapter} does not exist.")
        model = PeftModel.from_pretrained(model, str(adapter))
    return model.eval(), folder


def _load_facts(value: Any) -> Any:
    from .descriptors import DescriptorFacts

    if value is None or isinstance(value, DescriptorFacts):
        return value
    try:
        return DescriptorFacts.from_json(value)
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"The scan's descriptor_facts is not a DescriptorFacts JSON record ({error}).") from error


def _dataset_scan(splits: Any, scan_id: str, dataset_dir: Path) -> ReportScan:
    for name, split in splits.items():
        if "scan_id" not in split.column_names or "bold" not in split.column_names:
            raise ValueError(f"Dataset {dataset_dir} (split {name!r}) has no 'scan_id' and 'bold' columns; build it "
                             "with `fmrilm dataset build` (and optionally describe/tokenize it).")  # fmt: skip
        ids = [str(value) for value in split["scan_id"]]
        if scan_id in ids:
            index = ids.index(scan_id)
            bold = split.with_format("numpy", columns=["bold"])[index]["bold"]
            row = split.select_columns([c for c in ("tr", _FACTS_COLUMN) if c in split.column_names])[index]
            return ReportScan(
                bold=np.asarray(bold), tr=float(row["tr"]), scan_id=scan_id, facts=_load_facts(row.get(_FACTS_COLUMN)),
                split=name, source=f"{dataset_dir} (split {name}, row {index})",
            )  # fmt: skip
    examples = [str(v) for split in splits.values() for v in split["scan_id"][:3]]
    raise ValueError(f"No scan {scan_id!r} in dataset {dataset_dir} (splits {list(splits)}); its ids look like "
                     f"{examples}. Run `fmrilm dataset info {dataset_dir}` to list them.")  # fmt: skip


def _file_scan(scan: Any, tr: Any) -> ReportScan:
    if isinstance(scan, (str, os.PathLike)):
        path = Path(scan)
        if not path.is_file():
            raise FileNotFoundError(f"Scan file {path} does not exist.")
        if path.suffix != ".npy":
            raise ValueError(f"Scan file {path} is not a .npy file; save the (time, rois) array with numpy.save.")
        if tr is None:
            raise ValueError(f"A scan file needs its repetition time: pass tr (seconds) for {path}.")
        return ReportScan(bold=np.load(path), tr=_checked_tr(tr), scan_id=path.stem, source=str(path))
    if tr is None:
        raise ValueError("A scan array needs its repetition time: pass tr (seconds).")
    return ReportScan(bold=np.asarray(scan), tr=_checked_tr(tr), scan_id="scan", source="array")


def load_run_metrics(run: str | os.PathLike) -> tuple[str, list[dict[str, Any]], dict[str, Any]]:
    """A training run's log.

    Args:
        run: a run's output folder (holding ``metrics.jsonl``) or the ``metrics.jsonl`` file.

    Returns:
        ``(name, records, config)``: the folder's name, the JSON records in order, and the run's resolved
        ``config.yaml`` as a dict (empty when the folder has none).

    Raises:
        FileNotFoundError: no such folder or log. ValueError: a line that is not a JSON object with a step.
    """
    path = Path(run)
    log = path / METRICS_FILE if path.is_dir() else path
    if not log.is_file():
        raise FileNotFoundError(f"Run {path} has no {METRICS_FILE}; pass a training output folder (e.g. "
                                "outputs/stage1_tiny) or its metrics.jsonl.")  # fmt: skip
    records = []
    for number, line in enumerate(log.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{log}, line {number}: not JSON ({error.msg}); the log is damaged.") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise ValueError(f"{log}, line {number}: a record must be a JSON object with an integer 'step'.")
        records.append(record)
    config: dict[str, Any] = {}
    config_file = log.parent / "config.yaml"
    if config_file.is_file():
        import yaml

        loaded = yaml.safe_load(config_file.read_text(encoding="utf-8"))
        config = loaded if isinstance(loaded, dict) else {}
    name = log.parent.name if log.name == METRICS_FILE else log.stem
    return name, records, config


def _evaluation(path: str | os.PathLike) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"Evaluation file {file} does not exist; write one with `fmrilm evaluate ... --out`.")
    try:
        results = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"Evaluation file {file} is not JSON ({error.msg}).") from None
    missing = [
        k for k in ("task", "kind", "method", "metrics", "rows", "splits", "n_test", "n_train") if k not in results
    ]
    if not isinstance(results, dict) or missing:
        raise ValueError(f"Evaluation file {file} is not an `fmrilm evaluate` result (missing {missing}).")
    return results


# --------------------------------------------------------------------------------------------------
# Numbers behind the figures
# --------------------------------------------------------------------------------------------------


def scan_connectivity(bold: np.ndarray, tr: float) -> tuple[np.ndarray, str]:
    """(R, R) Pearson FC of a (time, rois) scan as the descriptor corpus computes it, and how it was cleaned.

    Detrend, then band-pass 0.01-0.1 Hz at the scan's own TR (seconds); where the scan is too short
    or its Nyquist frequency too low for that filter, detrending only, and the returned text says so.
    """
    from .descriptors.connectivity import functional_connectivity
    from .descriptors.extractor import DescriptorSettings
    from .nifti import clean_roi_signals

    settings = DescriptorSettings()
    values = np.asarray(bold, dtype=np.float64)
    try:
        cleaned = clean_roi_signals(values, tr, detrend=True, high_pass=settings.high_pass, low_pass=settings.low_pass)
        how = f"detrended, band-passed {settings.high_pass}-{settings.low_pass} Hz"
    except ValueError as error:
        cleaned = clean_roi_signals(values, tr, detrend=True)
        how = f"detrended only (the {settings.high_pass}-{settings.low_pass} Hz band-pass does not apply: {error})"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fc = functional_connectivity(cleaned)
    if caught:
        how += "; " + str(caught[0].message)
    return fc, how


def roi_r2(original: np.ndarray, reconstruction: np.ndarray) -> np.ndarray:
    """(R,) R^2 of each ROI's reconstruction: ``1 - SSE / SST`` over the given (T, R) time points.

    The total sum of squares is about the input ROI's mean (0 for a reconstruction that outputs that
    mean, 1 for a perfect one). A ROI whose input is constant has no R^2: NaN, which callers show as
    "undefined" and never average.
    """
    original = np.asarray(original, dtype=np.float64)
    reconstruction = np.asarray(reconstruction, dtype=np.float64)
    if original.shape != reconstruction.shape or original.ndim != 2:
        raise ValueError(f"original and reconstruction must be equal (time, rois) arrays, got {original.shape} and "
                         f"{reconstruction.shape}.")  # fmt: skip
    error = ((reconstruction - original) ** 2).sum(axis=0)
    total = ((original - original.mean(axis=0)) ** 2).sum(axis=0)
    defined = total > 1e-12 * max(float(total.max(initial=0.0)), 1.0)
    return np.where(defined, 1.0 - error / np.where(defined, total, 1.0), np.nan)


def codebook_statistics(codes: Any, num_codes: int) -> dict[str, Any]:
    """Histogram and usage of fMRI codes.

    Args:
        codes: integer codes of any shape; -1 (padding) is ignored.
        num_codes: the codebook size; codes must lie in ``[0, num_codes)``.

    Returns:
        ``counts`` (num_codes,) int64, ``tokens`` (real codes counted), ``used`` (distinct codes),
        ``share_used`` (used / num_codes), ``dead`` (num_codes - used), ``perplexity`` (exp of the
        entropy of the histogram, in [1, num_codes]).
    """
    values = np.asarray(codes).reshape(-1).astype(np.int64)
    values = values[values >= 0]
    if values.size == 0:
        raise ValueError("No real codes to count (all are padding, -1); tokenize some scans first.")
    if values.max() >= num_codes:
        raise ValueError(f"Code {int(values.max())} is outside the codebook of {num_codes} codes: these codes were "
                         "made by another fMRI tokenizer; tokenize the dataset with this processor.")  # fmt: skip
    counts = np.bincount(values, minlength=num_codes)
    probabilities = counts[counts > 0] / values.size
    used = int((counts > 0).sum())
    return {
        "counts": counts,
        "tokens": int(values.size),
        "used": used,
        "num_codes": int(num_codes),
        "share_used": used / num_codes,
        "dead": int(num_codes - used),
        "perplexity": float(np.exp(-(probabilities * np.log(probabilities)).sum())),
    }


def markdown_table_to_html(markdown: str) -> str:
    """The text and pipe table of :func:`fmrilm.evaluation.results_table` as HTML (every cell escaped)."""
    parts, rows = [], []
    for line in markdown.splitlines():
        stripped = line.strip()
        if stripped.startswith("|"):
            cells = [cell.strip() for cell in stripped.strip("|").split("|")]
            if all(set(cell) <= {"-", ":"} and cell for cell in cells):
                continue  # the header rule
            rows.append(cells)
        elif stripped:
            parts.append(f"<p>{_inline_code(stripped)}</p>")
    if rows:
        header = "".join(f"<th>{html.escape(cell)}</th>" for cell in rows[0])
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows[1:])
        parts.append(f'<table class="results"><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>')
    return "\n".join(parts)


def _inline_code(text: str) -> str:
    pieces = html.escape(text).split("`")
    return "".join(f"<code>{piece}</code>" if index % 2 else piece for index, piece in enumerate(pieces))


# --------------------------------------------------------------------------------------------------
# Panels
# --------------------------------------------------------------------------------------------------


@dataclass
class _Context:
    out_dir: Path
    processor: Any
    model: Any
    scan: ReportScan | None
    splits: Any
    dataset_dir: Path | None
    split: str | None
    roi_names: tuple[str, ...]
    networks: tuple[str, ...]
    atlas_note: str | None
    families: tuple[str, ...] | None
    max_new_tokens: int
    prompt: str | None
    model_inputs: dict[str, Any] | None = None


def _fc_panel(context: _Context) -> Panel:
    panel = Panel("fc", "a. Functional connectivity")
    scan = context.scan
    if scan is None:
        panel.note = "No scan given: pass --dataset DIR --scan SCAN_ID, or --scan-file X.npy --tr S."
        return panel
    from .report_plots import plot_fc_matrix

    fc, how = scan_connectivity(scan.bold, scan.tr)
    title = f"FC of {scan.scan_id} ({scan.bold.shape[0]} TRs at {scan.tr:g} s, {how.split(' (')[0]})"
    panel.images.append(plot_fc_matrix(fc, context.networks, context.out_dir / "fc_matrix.png", title=title))
    upper = fc[np.triu_indices_from(fc, k=1)]
    panel.numbers = {"cleaning": how, "mean_r": float(upper.mean()), "sd_r": float(upper.std())}
    panel.body = (f"<p>Pearson correlation of every ROI pair, {html.escape(how)}; ROIs grouped by network "
                  "(number of ROIs in brackets), diagonal left blank.</p>")  # fmt: skip
    if context.atlas_note:
        panel.body += f'<p class="note">{html.escape(context.atlas_note)}</p>'
    return panel


def _scan_model_inputs(context: _Context) -> dict[str, Any]:
    """Feature-extractor output, codes and reconstruction of the scan (computed once for panels b, c, g)."""
    if context.model_inputs is None:
        processor, scan = context.processor, context.scan
        inputs = processor.extract_features([scan.bold], scan.tr)
        codes = processor.tokenize_fmri(inputs)
        reconstruction = processor.decode_fmri(codes)
        extractor = processor.feature_extractor
        mask = inputs["fmri_mask"][0].numpy().astype(bool)
        patch = extractor.patch_size
        whole_patches = mask.reshape(-1, patch).all(axis=1).repeat(patch)
        context.model_inputs = {
            "values": inputs["fmri_values"][0].numpy(),
            "valid": mask & whole_patches,
            "codes": codes[0].numpy(),
            "reconstruction": reconstruction[0].numpy(),
        }
    return context.model_inputs


def _token_map_panel(context: _Context) -> Panel:
    panel = Panel("token_map", "b. Token map")
    if context.scan is None or context.processor is None:
        panel.note = "Needs a scan and a processor with an fMRI tokenizer (--model or --processor, and a scan)."
        return panel
    from .report_plots import plot_token_map

    data = _scan_model_inputs(context)
    config = context.processor.fmri_tokenizer.config
    extractor = context.processor.feature_extractor
    grid = data["codes"].reshape(config.num_time_patches, config.n_rois)
    panel.images.append(plot_token_map(
        data["values"], data["valid"], grid, context.networks, target_tr=extractor.target_tr,
        patch_size=extractor.patch_size, num_codes=config.num_codes, path=context.out_dir / "token_map.png",
        title=f"{context.scan.scan_id}: processor.tokenize_fmri (time-major: token t * {config.n_rois} + r)",
    ))  # fmt: skip
    real = grid[grid >= 0]
    panel.numbers = {"tokens": int(grid.size), "padded_tokens": int((grid < 0).sum()),
                     "distinct_codes": int(np.unique(real).size)}  # fmt: skip
    panel.body = (
        f"<p>Left: the model input after the feature extractor (resampled to {extractor.target_tr:g} s, "
        f"{html.escape(str(extractor.normalization))} normalisation, crop {html.escape(str(extractor.crop_strategy))}). "
        f"Right: the {grid.size} tokens, one per ROI and patch of {extractor.patch_size} time points; "
        "equal colours are equal codes. Grey: padding.</p>"
    )
    return panel


def _reconstruction_panel(context: _Context) -> Panel:
    panel = Panel("reconstruction", "c. Input vs reconstruction")
    if context.scan is None or context.processor is None:
        panel.note = "Needs a scan and a processor with an fMRI tokenizer (--model or --processor, and a scan)."
        return panel
    from .report_plots import plot_reconstruction

    data = _scan_model_inputs(context)
    valid = data["valid"]
    if not valid.any():
        panel.note = "The scan is shorter than one time patch after resampling: nothing is reconstructed."
        return panel
    original, reconstruction = data["values"][valid], data["reconstruction"][valid]
    r2 = roi_r2(original, reconstruction)
    defined = np.flatnonzero(np.isfinite(r2))
    if defined.size == 0:
        panel.note = "Every ROI of the model input is constant: R^2 is undefined."
        return panel
    ranked = defined[np.argsort(-r2[defined], kind="stable")]
    picks = ranked[
        np.unique(np.linspace(0, ranked.size - 1, min(N_RECONSTRUCTED_ROIS, ranked.size)).round().astype(int))
    ]
    ranks = {int(roi): position + 1 for position, roi in enumerate(ranked)}
    labels = [f"{context.roi_names[r]} ({context.networks[r]}; rank {ranks[int(r)]} of {ranked.size})" for r in picks]
    extractor = context.processor.feature_extractor
    time_s = np.flatnonzero(valid) * extractor.target_tr
    pooled = 1.0 - ((reconstruction - original) ** 2).sum() / ((original - original.mean(axis=0)) ** 2).sum()
    title = (f"{context.scan.scan_id}: processor.decode_fmri(codes) vs input; R\u00b2 over all ROIs {pooled:.2f}, "
             f"median ROI {np.median(r2[defined]):.2f}")  # fmt: skip
    panel.images.append(plot_reconstruction(time_s, original, reconstruction, picks.tolist(), labels, r2,
                                            context.out_dir / "reconstruction.png", title=title))  # fmt: skip
    panel.numbers = {
        "r2_all_rois": float(pooled), "r2_median_roi": float(np.median(r2[defined])),
        "shown_rois": [context.roi_names[r] for r in picks], "r2_per_roi": {
            context.roi_names[r]: (None if not np.isfinite(r2[r]) else float(r2[r])) for r in range(r2.size)
        },
    }  # fmt: skip
    panel.body = ("<p>The ROIs with the best, the worst and two intermediate R\u00b2 (normalised units, real time "
                  "points of whole patches).</p>")  # fmt: skip
    return panel


def _split_codes(context: _Context) -> tuple[np.ndarray, str]:
    """All codes of the report's split and where they came from (the stored column, or tokenized here)."""
    from .pretokenize import processor_fingerprint, recorded_fingerprint

    split = context.splits[context.split]
    processor = context.processor
    if _CODES_COLUMN in split.column_names:
        recorded = recorded_fingerprint(context.dataset_dir)
        codes = np.asarray(split.with_format("numpy", columns=[_CODES_COLUMN])[_CODES_COLUMN])
        if recorded is not None and recorded == processor_fingerprint(processor):
            return codes, f"the stored {_CODES_COLUMN} column (made by this processor)"
        if recorded is None and codes.ndim == 2 and codes.shape[1] == processor.num_fmri_tokens:
            return codes, f"the stored {_CODES_COLUMN} column (no record of the processor that made it)"
    bold = split.with_format("numpy", columns=["bold"])["bold"]
    codes = processor.tokenize_fmri(list(bold), tr=[float(t) for t in split["tr"]]).numpy()
    return codes, "the split's scans, tokenized here with this processor"


def _codebook_panel(context: _Context) -> Panel:
    panel = Panel("codebook", "d. Codebook usage")
    if context.splits is None or context.processor is None:
        panel.note = "Needs a dataset (--dataset DIR, raw or pre-tokenized) and a processor with an fMRI tokenizer."
        return panel
    from .report_plots import plot_codebook_usage

    codes, origin = _split_codes(context)
    statistics = codebook_statistics(codes, context.processor.fmri_tokenizer.config.num_codes)
    title = f"{context.dataset_dir.name}, split {context.split}: {len(codes)} scan{'s' if len(codes) != 1 else ''}"
    panel.images.append(plot_codebook_usage(statistics["counts"], statistics, context.out_dir / "codebook_usage.png",
                                            title=title))  # fmt: skip
    panel.numbers = {k: v for k, v in statistics.items() if k != "counts"} | {"scans": len(codes), "codes_from": origin}
    panel.body = (f"<p>Codes of {len(codes)} scans of split <code>{html.escape(context.split)}</code> ({html.escape(origin)}): "
                  f"perplexity {statistics['perplexity']:.1f}, {statistics['used']} of {statistics['num_codes']} codes "
                  f"used ({statistics['share_used']:.1%}), {statistics['dead']} never used.</p>")  # fmt: skip
    return panel


def _curves(records: Sequence[Mapping[str, Any]], split: str, skipped: frozenset[str]) -> dict[str, tuple]:
    series: dict[str, tuple[list, list]] = {}
    for record in records:
        if record.get("split") != split:
            continue
        for name, value in record.items():
            if name in _RECORD_KEYS or name in skipped or name.startswith("best_"):
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                steps, values = series.setdefault(name, ([], []))
                steps.append(record["step"])
                values.append(float(value))
    return {name: (np.asarray(s), np.asarray(v)) for name, (s, v) in series.items()}


def _best_step(run: Path, records: Sequence[Mapping[str, Any]], config: Mapping[str, Any]) -> int | None:
    """The step of the run's chosen checkpoint: ``best/best_metric.json`` when present, else read off the log."""
    folder = run if run.is_dir() else run.parent
    recorded = folder / "best" / "best_metric.json"
    if recorded.is_file():
        step = json.loads(recorded.read_text(encoding="utf-8")).get("step")
        if isinstance(step, int):
            return step
    training = config.get("training") if isinstance(config.get("training"), Mapping) else {}
    name = training.get("best_metric")
    mode = training.get("best_mode", "max" if name and "loss" not in name else "min")
    scored = [
        (r[name], r["step"])
        for r in records
        if r.get("split") == "validation" and isinstance(r.get(name), (int, float))
    ]
    if not scored:
        return None
    return (max if mode == "max" else min)(scored)[1]


def _curves_panel(context: _Context, runs: Sequence[Any]) -> Panel:
    panel = Panel("curves", "e. Training curves")
    if not runs:
        panel.note = "No training runs given: pass --run OUTPUT_DIR for each stage (folders with metrics.jsonl)."
        return panel
    from .report_plots import plot_training_curves

    items = []
    for index, run in enumerate(runs):
        name, records, config = load_run_metrics(run)
        train = _curves(records, "train", _TRAIN_SKIPPED)
        room = max(_MAX_PANELS - 1 - sum("loss" not in name for name in train), 0)
        validation = dict(list(_curves(records, "validation", frozenset()).items())[:room])
        if not train and not validation:
            items.append(f'<p class="note">Run {html.escape(name)}: its {METRICS_FILE} holds no records yet.</p>')
            continue
        best = _best_step(Path(run), records, config)
        steps = max((int(s.max()) for s, _ in (*train.values(), *validation.values())), default=0)
        path = plot_training_curves(train, validation, context.out_dir / f"training_curves_{index + 1}_{_safe(name)}.png",
                                    title=f"run {name}: {steps} steps", best_step=best)  # fmt: skip
        panel.images.append(path)
        panel.numbers[name] = {"steps": steps, "best_step": best,
                               "last_validation": {k: float(v[-1]) for k, (_, v) in validation.items()}}  # fmt: skip
    panel.body = "\n".join(items)
    return panel


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:60] or "run"


def _evaluation_panel(evaluations: Sequence[Any]) -> Panel:
    panel = Panel("evaluation", "f. Evaluation")
    if not evaluations:
        panel.note = "No evaluation given: pass --evaluation FILE.json (the output of `fmrilm evaluate --out`)."
        return panel
    from .evaluation import results_table

    parts = []
    for path in evaluations:
        results = _evaluation(path)
        parts.append(markdown_table_to_html(results_table(results)))
        panel.numbers[str(results["task"])] = {
            f"{row['name']} k={row['shots']}": {name: entry.get("mean") for name, entry in row["metrics"].items()}
            for row in results["rows"]
        }
    panel.body = "\n".join(parts)
    return panel


def _generate(context: _Context) -> str:
    from .pipeline_fmrilm import DEFAULT_DESCRIBE_PROMPT, FmriToTextPipeline

    data = _scan_model_inputs(context)
    describe = FmriToTextPipeline(model=context.model, processor=context.processor)
    output = describe({"fmri_codes": data["codes"]}, prompt=context.prompt or DEFAULT_DESCRIBE_PROMPT,
                      max_new_tokens=context.max_new_tokens, do_sample=False)  # fmt: skip
    return str(output[0]["generated_text"])


def _highlighted(text: str, details: Sequence[Mapping[str, Any]]) -> str:
    """The generated text, escaped, with each judged statement's clause marked right or wrong."""
    marks, cursor = [], 0
    for detail in details:
        clause = detail["clause"]
        start = text.find(clause, cursor) if clause else -1
        if start < 0:
            continue
        marks.append((start, start + len(clause), detail))
        cursor = start + len(clause)
    pieces, position = [], 0
    for start, end, detail in marks:
        pieces.append(html.escape(text[position:start]))
        css = "right" if detail["correct"] else "wrong"
        tip = detail["fact_key"] or "no matching feature"
        if not detail["correct"] and detail["reason"]:
            tip += f": {detail['reason']}"
        pieces.append(f'<span class="{css}" title="{html.escape(tip)}">{html.escape(text[start:end])}</span>')
        position = end
    pieces.append(html.escape(text[position:]))
    return "".join(pieces)


def _generation_panel(context: _Context) -> Panel:
    panel = Panel("generation", "g. Generated description vs facts")
    if context.scan is None or context.model is None or context.processor is None:
        panel.note = "Needs a language model with its processor (--model, a stage-2/3 model folder) and a scan."
        return panel
    if context.processor.tokenizer is None:
        panel.note = "The processor has no text tokenizer (a stage-1 processor): pass the model's own processor."
        return panel
    from .descriptors import describe_with_mentions
    from .training.generation_metrics import faithfulness

    generated = _generate(context)
    facts = context.scan.facts
    panel.numbers["generated_text"] = generated
    if facts is None:
        panel.body = f'<div class="generated">{html.escape(generated) or "<em>(empty)</em>"}</div>'
        panel.note = ("The scan has no descriptor facts, so the text cannot be checked: use a described dataset "
                      "(`fmrilm describe`) or, with --scan-file, --reference DIR (a fitted descriptor reference).")  # fmt: skip
        return panel
    present = {f.family for f in facts.features}
    families = [f for f in (context.families or sorted(present)) if f in present]
    if not families:
        panel.note = f"The scan's facts hold none of the families {list(context.families)}; it holds {sorted(present)}."
        return panel
    reference, mentions = describe_with_mentions(facts, seed=0, families=families)
    report = faithfulness(generated, facts)
    stated_right = set(report["fact_keys"])
    stated_wrong = {d["fact_key"] for d in report["details"] if d["fact_key"] and not d["correct"]} - stated_right
    by_key = facts.by_key()
    rows = []
    for mention in dict((m.fact_key, m) for m in mentions).values():
        fact = by_key[mention.fact_key]
        z = "n/a" if fact.z is None else f"{fact.z:+.2f}"
        if mention.fact_key in stated_right:
            mark = '<span class="right">stated correctly</span>'
        elif mention.fact_key in stated_wrong:
            mark = '<span class="wrong">stated wrongly</span>'
        else:
            mark = "not stated"
        rows.append(f"<tr><td>{html.escape(mention.fact_key)}</td><td>{fact.value:.4g}</td><td>{z}</td>"
                    f"<td>{html.escape(fact.bin)}</td><td>{mark}</td></tr>")  # fmt: skip
    statements = "".join(
        f"<tr><td>{'&#10003;' if d['correct'] else '&#10007;'}</td><td>{html.escape(d['clause'].strip())}</td>"
        f"<td>{html.escape(d['fact_key'] or '')}</td><td>{html.escape(d['fact_bin'] or '')}</td>"
        f"<td>{html.escape(d['reason'])}</td></tr>"
        for d in report["details"]
    )
    share = "n/a (it states no checkable number)" if report["share"] is None else f"{report['share']:.0%}"
    covered = sum(m.fact_key in stated_right for m in dict((m.fact_key, m) for m in mentions).values())
    n_facts = len({m.fact_key for m in mentions})
    panel.numbers |= {"stated": report["stated"], "correct": report["correct"], "share": report["share"],
                      "facts_to_state": n_facts, "facts_stated_correctly": covered, "families": families}  # fmt: skip
    generated_html = _highlighted(generated, report["details"]) or "<em>(empty)</em>"
    statements_html = (
        "<table><thead><tr><th></th><th>clause</th><th>attributed to</th><th>true bin</th><th>why wrong</th></tr>"
        f"</thead><tbody>{statements}</tbody></table>"
        if statements
        else "<p>The generation quotes no number, so it states nothing checkable.</p>"
    )
    panel.body = "\n".join([
        f"<p>Greedy generation ({context.max_new_tokens} new tokens at most) through the <code>fmri-to-text</code> "
        f"pipeline. Faithfulness: {report['correct']} of {report['stated']} statements right ({share}); {covered} of "
        f"the {n_facts} facts of the reference ({html.escape(', '.join(families))}) stated correctly. Green: a right "
        "statement, red: a wrong one (hover for the feature and the reason).</p>",
        '<div class="columns">',
        f'<div><h3>Generated</h3><div class="generated">{generated_html}</div></div>',
        "<div><h3>Reference (the facts as the descriptor corpus writes them)</h3>"
        f'<div class="generated">{html.escape(reference)}</div></div>',
        "</div>",
        "<h3>Facts it should state</h3>",
        "<table><thead><tr><th>feature</th><th>value</th><th>cohort z</th><th>bin</th><th>in the generation</th></tr>"
        f"</thead><tbody>{''.join(rows)}</tbody></table>",
        "<h3>Statements of the generation</h3>",
        statements_html,
    ])  # fmt: skip
    return panel


# --------------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------------

_STYLE = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; line-height: 1.4; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.8em; }
h3 { font-size: 1.05em; margin-bottom: .3em; }
img { max-width: 100%; border: 1px solid #eee; margin: .5em 0; }
table { border-collapse: collapse; font-size: .9em; margin: .5em 0; }
td, th { border: 1px solid #ccc; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } table.results td:nth-child(n+2) { text-align: right; }
.note { background: #fff6db; border-left: 4px solid #e0b000; padding: .5em .8em; }
.meta td:first-child { font-weight: 600; }
.columns { display: flex; gap: 1.5em; } .columns > div { flex: 1; min-width: 0; }
.generated { white-space: pre-wrap; background: #fafafa; border: 1px solid #ddd; padding: .6em; font-size: .92em; }
.right { background: #d9f2d9; } .wrong { background: #f8d4d4; }
"""


def _image_tag(path: Path) -> str:
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{encoded}" alt="{html.escape(path.stem)}" data-file="{html.escape(path.name)}">'


def _page(panels: Sequence[Panel], meta: Sequence[tuple[str, str]]) -> str:
    sections = []
    for panel in panels:
        parts = [f'<section id="{panel.key}"><h2>{html.escape(panel.title)}</h2>']
        if panel.note:
            parts.append(f'<p class="note">{html.escape(panel.note)}</p>')
        parts.append(panel.body)
        parts.extend(_image_tag(image) for image in panel.images)
        parts.append("</section>")
        sections.append("\n".join(parts))
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in meta)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>fMRI-LM report</title>"
            f"<style>{_STYLE}</style></head><body>\n<h1>fMRI-LM report</h1>\n<table class=\"meta\">{rows}</table>\n"
            + "\n".join(sections) + "\n</body></html>\n")  # fmt: skip


def _atlas_axes(processor: Any, atlas: Any, n_rois: int | None) -> tuple[tuple[str, ...], tuple[str, ...], str | None]:
    """ROI names and networks for the figures, and a note when no atlas is known."""
    from .atlases import load_atlas

    name = atlas if atlas is not None else getattr(getattr(processor, "feature_extractor", None), "atlas", None)
    if name is not None:
        spec = load_atlas(name)
        if n_rois is not None and spec.n_rois != n_rois:
            raise ValueError(f"Atlas {spec.name} has {spec.n_rois} ROIs but the scans have {n_rois}; pass the atlas "
                             "the data were parcellated with.")  # fmt: skip
        return spec.roi_names, spec.networks, None
    if n_rois is None:
        return (), (), None
    names = getattr(getattr(processor, "feature_extractor", None), "roi_names", None)
    names = tuple(names) if names else tuple(f"ROI {i}" for i in range(n_rois))
    return names, ("all ROIs",) * n_rois, ("No atlas is known (the processor records none and no --atlas was given): "
                                          "ROIs are in column order, without networks.")  # fmt: skip


def _families_from_runs(configs: Sequence[Mapping[str, Any]]) -> tuple[str, ...] | None:
    for config in reversed(configs):
        data = config.get("data") if isinstance(config.get("data"), Mapping) else {}
        if isinstance(data.get("families"), (list, tuple)) and data["families"]:
            return tuple(str(f) for f in data["families"])
    return None


def build_report(
    out_dir: str | os.PathLike,
    *,
    model: Any = None,
    processor: Any = None,
    adapter: str | os.PathLike | None = None,
    dataset: str | os.PathLike | None = None,
    scan_id: str | None = None,
    scan: Any = None,
    tr: float | None = None,
    runs: Sequence[str | os.PathLike] = (),
    evaluations: Sequence[str | os.PathLike] = (),
    reference: str | os.PathLike | None = None,
    families: Sequence[str] | None = None,
    atlas: Any = None,
    split: str | None = None,
    max_new_tokens: int = 128,
    prompt: str | None = None,
) -> Path:
    """Write the report's PNGs, ``report.json`` and ``report.html`` into ``out_dir``; returns the HTML path.

    Args:
        out_dir: output folder (created).
        model: a stage-2/3 model folder (``model.save_pretrained``) or a loaded ``FmriLMForCausalLM``; None
            for a tokenizer-only report.
        processor: the processor folder or object (default: the one saved in the model folder).
        adapter: a PEFT adapter folder loaded on top of ``model``.
        dataset, scan_id: a dataset folder (raw, described or pre-tokenized) and the ``scan_id`` of the
            report's scan; ``dataset`` alone gives the model-level panels.
        scan, tr: instead, a (time, rois) array or ``.npy`` path and its repetition time in seconds.
        runs: training output folders (or their ``metrics.jsonl``), one per stage.
        evaluations: ``fmrilm evaluate`` JSON files.
        reference: a fitted descriptor reference folder, to compute the facts of a ``scan`` file.
        families: descriptor families the generation is checked against (default: ``data.families`` of
            the last run whose config names them, else every family of the facts).
        atlas: the atlas of the ROIs (default: the one the feature extractor records).
        split: the split of the codebook panel (default: the scan's, else validation, test or train).
        max_new_tokens, prompt: generation settings (greedy; the ``fmri-to-text`` prompt by default).

    Raises:
        ValueError / FileNotFoundError: inconsistent or missing inputs, with the fix named.
    """
    if scan_id is not None and scan is not None:
        raise ValueError("Give the scan either as dataset + scan_id or as scan (+ tr), not both.")
    if scan_id is not None and dataset is None:
        raise ValueError("scan_id needs the dataset that holds it: pass dataset=DIR (--dataset).")
    if scan is None and tr is not None:
        raise ValueError("tr applies to a scan file or array only (dataset scans carry their own tr).")
    if reference is not None and scan is None:
        raise ValueError("reference computes the facts of a scan file; dataset scans use their descriptor_facts.")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}.")
    if isinstance(runs, (str, os.PathLike)) or isinstance(evaluations, (str, os.PathLike)):
        raise TypeError("runs and evaluations are lists of paths; wrap a single path in a list.")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"Output {out} is a file; give a folder for the report.")
    for path in [*runs, *evaluations]:
        if not Path(path).exists():
            raise FileNotFoundError(f"{path} does not exist.")

    model, model_dir = _load_model(model, adapter)
    processor = _load_processor(processor, model_dir)
    if processor is None and model is not None:
        raise ValueError("A loaded model needs its processor: pass processor= (folder or FmriLMProcessor).")
    n_rois = processor.feature_extractor.n_rois if processor is not None else None

    splits = dataset_dir = None
    report_scan = None
    if dataset is not None:
        dataset_dir = Path(dataset)
        if not dataset_dir.is_dir():
            raise FileNotFoundError(f"Dataset folder {dataset_dir} does not exist.")
        from datasets import load_dataset

        splits = load_dataset(str(dataset_dir))
        if scan_id is not None:
            report_scan = _dataset_scan(splits, str(scan_id), dataset_dir)
    if scan is not None:
        report_scan = _file_scan(scan, tr)
    if report_scan is not None:
        expected = n_rois if n_rois is not None else np.asarray(report_scan.bold).shape[-1]
        report_scan.bold = _checked_bold(report_scan.bold, expected, f"scan {report_scan.scan_id}")
        n_rois = expected
    if reference is not None:
        from .descriptors import DescriptorExtractor

        report_scan.facts = DescriptorExtractor.from_pretrained(reference).compute(report_scan.bold, report_scan.tr)
    if splits is not None:
        if split is None:
            split = report_scan.split if report_scan is not None else next(
                (s for s in ("validation", "test", "train") if s in splits), next(iter(splits)))  # fmt: skip
        elif split not in splits:
            raise ValueError(f"The dataset has no split {split!r}; its splits are {list(splits)}.")
    elif split is not None:
        raise ValueError("split selects a split of the dataset: pass dataset=DIR too.")

    run_configs = [load_run_metrics(run)[2] for run in runs]
    chosen_families = tuple(families) if families is not None else _families_from_runs(run_configs)
    roi_names, networks, atlas_note = _atlas_axes(processor, atlas, n_rois)
    out.mkdir(parents=True, exist_ok=True)
    context = _Context(
        out_dir=out, processor=processor, model=model, scan=report_scan, splits=splits, dataset_dir=dataset_dir,
        split=split, roi_names=roi_names, networks=networks, atlas_note=atlas_note, families=chosen_families,
        max_new_tokens=max_new_tokens, prompt=prompt,
    )  # fmt: skip
    panels = [
        _fc_panel(context), _token_map_panel(context), _reconstruction_panel(context), _codebook_panel(context),
        _curves_panel(context, runs), _evaluation_panel(evaluations), _generation_panel(context),
    ]  # fmt: skip

    meta = [
        ("model", str(model_dir) if model_dir else ("in memory" if model is not None else "none")),
        ("processor", str(processor if isinstance(processor, (str, os.PathLike)) else
                          (model_dir or "in memory") if processor is not None else "none")),
        ("scan", "none" if report_scan is None else
         f"{report_scan.scan_id}: {report_scan.bold.shape[0]} TRs x {report_scan.bold.shape[1]} ROIs at "
         f"{report_scan.tr:g} s, from {report_scan.source}"),
        ("dataset", str(dataset_dir) if dataset_dir else "none"),
    ]  # fmt: skip
    if adapter is not None:
        meta.insert(1, ("adapter", str(adapter)))
    page = out / REPORT_FILE
    page.write_text(_page(panels, meta), encoding="utf-8")
    summary = {
        "meta": dict(meta),
        "panels": {p.key: {"title": p.title, "images": [i.name for i in p.images], "note": p.note, **p.numbers}
                   for p in panels},
    }  # fmt: skip
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=_json_default) + "\n", encoding="utf-8")
    return page


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def add_report_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``report`` to the ``fmrilm`` sub-parsers."""
    parser = subparsers.add_parser(
        "report",
        help="PNG figures and one HTML page about a model and a scan",
        description=(
            "Draw the scan's FC by network, its token map, input vs reconstruction, the codebook usage of its split, "
            "the training curves, the evaluation table and the generated description beside the facts it should "
            "state. Panels whose inputs are not given become notes."
        ),
    )
    parser.add_argument("--model", default=None, help="stage-2/3 model folder (with its processor)")
    parser.add_argument("--processor", default=None, help="processor folder (default: --model; alone: stage 1)")
    parser.add_argument("--adapter", default=None, help="a PEFT adapter folder to load on top of --model")
    parser.add_argument("--dataset", default=None, help="dataset folder (raw, described or pre-tokenized)")
    parser.add_argument("--scan", default=None, metavar="SCAN_ID", help="scan_id of the report's scan in --dataset")
    parser.add_argument("--scan-file", default=None, help="a (time, rois) .npy scan instead of --dataset/--scan")
    parser.add_argument("--tr", type=float, default=None, help="repetition time of --scan-file in seconds")
    parser.add_argument("--reference", default=None, help="descriptor reference folder: facts of --scan-file")
    parser.add_argument("--run", nargs="+", default=[], help="training output folders (metrics.jsonl), any stages")
    parser.add_argument("--evaluation", nargs="+", default=[], help="`fmrilm evaluate` JSON files")
    parser.add_argument("--families", nargs="+", default=None, help="descriptor families to check the text against")
    parser.add_argument("--split", default=None, help="split of the codebook panel (default: the scan's)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--out", required=True, help="output folder")
    parser.set_defaults(handler=run_report_command)
    return parser


def run_report_command(args: argparse.Namespace) -> int:
    """``fmrilm report``: build the report, print where it is."""
    if args.model is None and args.processor is None:
        raise ValueError("fmrilm report needs --model (a stage-2/3 model folder) or --processor (stage 1).")
    if args.scan_file is not None and args.scan is not None:
        raise ValueError("Give either --dataset DIR --scan SCAN_ID or --scan-file X.npy --tr S, not both.")
    if args.scan_file is not None and args.tr is None:
        raise ValueError("--scan-file needs --tr (its repetition time in seconds).")
    page = build_report(
        args.out, model=args.model, processor=args.processor, adapter=args.adapter,
        dataset=args.dataset, scan_id=args.scan,
        scan=args.scan_file, tr=args.tr, runs=args.run, evaluations=args.evaluation, reference=args.reference,
        families=args.families, split=args.split, max_new_tokens=args.max_new_tokens,
    )  # fmt: skip
    summary = json.loads((page.parent / SUMMARY_FILE).read_text(encoding="utf-8"))
    for panel in summary["panels"].values():
        state = ", ".join(panel["images"]) or ("note: " + panel["note"] if panel["note"] else "html")
        print(f"{panel['title']}: {state}")
    print(f"report: {page}")
    return 0
