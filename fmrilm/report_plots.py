"""The figures of ``fmrilm report``, drawn with matplotlib's Agg backend (no display needed).

Each function takes arrays already computed by :mod:`fmrilm.report`, draws one figure, writes it
as a PNG to ``path`` and returns ``path``. Conventions: a scan is (time, rois); ROIs are shown in
atlas-network order (:func:`network_order`), networks separated by lines and named at their centre.
"""

from __future__ import annotations

import colorsys
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: reports are written on headless machines

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.ticker import MaxNLocator

__all__ = [
    "DPI",
    "code_colours",
    "network_order",
    "plot_codebook_usage",
    "plot_fc_matrix",
    "plot_reconstruction",
    "plot_token_map",
    "plot_training_curves",
]

#: Resolution of every PNG (dots per inch).
DPI = 110
_PAD_COLOUR = (0.85, 0.85, 0.85)
_GOLDEN = 0.6180339887498949


def network_order(networks: Sequence[str]) -> tuple[np.ndarray, list[tuple[str, int, int]]]:
    """The ROI permutation that makes each network contiguous, and the blocks it forms.

    Args:
        networks: (R,) the network of each ROI, in ROI (atlas) order.

    Returns:
        ``(order, blocks)``: ``order`` (R,) int64 such that ``networks[order]`` groups the networks in
        order of first appearance, ROIs within a network keeping their atlas order (a stable sort);
        ``blocks`` lists ``(network, start, stop)`` positions in the reordered axis.
    """
    names = np.asarray(list(networks), dtype=object)
    if names.ndim != 1 or names.size == 0:
        raise ValueError(f"networks must be a non-empty sequence of one name per ROI, got shape {names.shape}.")
    first_seen = {name: index for index, name in enumerate(dict.fromkeys(names.tolist()))}
    rank = np.fromiter((first_seen[name] for name in names.tolist()), dtype=np.int64, count=names.size)
    order = np.argsort(rank, kind="stable")
    sorted_rank = rank[order]
    starts = np.flatnonzero(np.r_[True, sorted_rank[1:] != sorted_rank[:-1]])
    stops = np.r_[starts[1:], names.size]
    blocks = [(str(names[order[start]]), int(start), int(stop)) for start, stop in zip(starts, stops)]
    return order, blocks


def _network_axis(ax, blocks: Sequence[tuple[str, int, int]], axis: str, *, lines: bool = True) -> None:
    """Network names at block centres and boundary lines along ``axis`` ("x" or "y") of an image."""
    centres = [(start + stop - 1) / 2 for _, start, stop in blocks]
    labels = [f"{name} ({stop - start})" for name, start, stop in blocks]
    if axis == "y":
        ax.set_yticks(centres, labels)
    else:
        ax.set_xticks(centres, labels, rotation=45, ha="right", rotation_mode="anchor")
    ax.tick_params(length=0)
    if lines:
        for _, start, _ in blocks[1:]:
            (ax.axhline if axis == "y" else ax.axvline)(start - 0.5, color="black", linewidth=0.8)


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return path


def plot_fc_matrix(fc: np.ndarray, networks: Sequence[str], path: Path, *, title: str) -> Path:
    """(R, R) correlation matrix, ROIs in network order, on a fixed -1..1 diverging scale."""
    order, blocks = network_order(networks)
    ordered = np.asarray(fc, dtype=np.float64)[np.ix_(order, order)].copy()
    np.fill_diagonal(ordered, np.nan)  # the trivial r = 1 would only hide the scale
    fig, ax = plt.subplots(figsize=(7.4, 6.4))
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="white")
    image = ax.imshow(ordered, cmap=cmap, vmin=-1.0, vmax=1.0, interpolation="nearest")
    _network_axis(ax, blocks, "x")
    _network_axis(ax, blocks, "y")
    colourbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
    colourbar.set_label("Pearson r")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def code_colours(num_codes: int) -> np.ndarray:
    """(num_codes + 1, 3) RGB: a distinct colour per code id (index ``c + 1``), light grey for padding (index 0).

    Hues follow the golden-ratio sequence, so neighbouring ids get unrelated colours: the colour
    identifies a code, it is not a scale.
    """
    ids = np.arange(num_codes)
    hue = (ids * _GOLDEN) % 1.0
    saturation = 0.55 + 0.45 * ((ids * 0.7548776662) % 1.0)
    value = 0.6 + 0.4 * ((ids * 0.5698402910) % 1.0)
    rgb = np.array([colorsys.hsv_to_rgb(h, s, v) for h, s, v in zip(hue, saturation, value)]).reshape(-1, 3)
    return np.vstack([_PAD_COLOUR, rgb])


def plot_token_map(
    values: np.ndarray,
    valid: np.ndarray,
    codes: np.ndarray,
    networks: Sequence[str],
    *,
    target_tr: float,
    patch_size: int,
    num_codes: int,
    path: Path,
    title: str,
) -> Path:
    """The model input (ROI x time, normalised) beside its tokens (ROI x time patch, one colour per code).

    Args:
        values: (T, R) normalised model input.
        valid: (T,) bool, real time points (padding is drawn blank).
        codes: (P, R) integer codes per time patch and ROI; -1 marks padding.
        networks: (R,) network of each ROI (rows are drawn in network order).
        target_tr: seconds per time point of ``values``; patch_size: time points per patch.
    """
    order, blocks = network_order(networks)
    signal = np.where(np.asarray(valid, bool)[:, None], values, np.nan)[:, order].T  # (R, T)
    grid = np.asarray(codes, dtype=np.int64)[:, order].T  # (R, P)
    n_time, n_patches = signal.shape[1], grid.shape[1]
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(12.0, 7.6), sharey=True, gridspec_kw={"width_ratios": [1.6, 1.0], "wspace": 0.05}
    )
    limit = float(np.nanpercentile(np.abs(signal), 99)) if np.isfinite(signal).any() else 1.0
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad=_PAD_COLOUR)
    span = n_time * target_tr
    image = left.imshow(signal, aspect="auto", cmap=cmap, vmin=-limit, vmax=limit, interpolation="nearest",
                        extent=(0, span, len(order) - 0.5, -0.5))  # fmt: skip
    for patch in range(1, n_patches):
        left.axvline(patch * patch_size * target_tr, color="black", linewidth=0.4, alpha=0.5)
    left.set_xlabel(f"time (s; {target_tr:g} s per point, a line every patch of {patch_size})")
    left.set_title("model input (normalised)", fontsize=10)
    colourbar = fig.colorbar(image, ax=[left, right], fraction=0.035, pad=0.09, location="bottom", shrink=0.5,
                             anchor=(0.0, 1.0))  # fmt: skip
    colourbar.set_label("normalised signal (left panel)")
    _network_axis(left, blocks, "y", lines=False)

    palette = ListedColormap(code_colours(num_codes))
    right.imshow(grid + 1, aspect="auto", cmap=palette, vmin=0, vmax=num_codes, interpolation="nearest",
                 extent=(-0.5, n_patches - 0.5, len(order) - 0.5, -0.5))  # fmt: skip
    for _, start, _ in blocks[1:]:
        left.axhline(start - 0.5, color="black", linewidth=0.8)
        right.axhline(start - 0.5, color="black", linewidth=0.8)
    right.set_xticks(np.arange(n_patches))
    right.set_xlabel("time patch")
    real = grid[grid >= 0]
    distinct = np.unique(real).size
    right.set_title(
        f"fMRI tokens: {grid.size} = {n_patches} patches x {grid.shape[0]} ROIs\n"
        f"colour = code id (categorical), {distinct} distinct of {num_codes}", fontsize=10,
    )  # fmt: skip
    right.tick_params(length=0)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def plot_reconstruction(
    time_s: np.ndarray,
    original: np.ndarray,
    reconstruction: np.ndarray,
    rois: Sequence[int],
    labels: Sequence[str],
    r2: np.ndarray,
    path: Path,
    *,
    title: str,
) -> Path:
    """Input and reconstruction of a few ROIs over time, one row each, R^2 in each title.

    Args:
        time_s: (T,) seconds of the real time points; original, reconstruction: (T, R) normalised.
        rois: the ROI indices to draw; labels: a name per drawn ROI; r2: (R,) R^2 of every ROI.
    """
    fig, axes = plt.subplots(len(rois), 1, figsize=(10.0, 1.9 * len(rois) + 0.6), sharex=True, squeeze=False)
    for ax, roi, label in zip(axes[:, 0], rois, labels):
        ax.plot(time_s, original[:, roi], color="black", linewidth=1.1, label="input")
        ax.plot(time_s, reconstruction[:, roi], color="tab:orange", linewidth=1.1, label="reconstruction")
        ax.set_title(f"{label}: R\u00b2 = {r2[roi]:.2f}", fontsize=9, loc="left")
        ax.set_ylabel("normalised")
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("time (s)")
    fig.suptitle(title, fontsize=11)
    axes[0, 0].legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), fontsize=8, ncols=2, frameon=False,
                      borderaxespad=0.1)  # fmt: skip
    fig.tight_layout()
    return _save(fig, path)


def plot_codebook_usage(counts: np.ndarray, statistics: Mapping[str, float], path: Path, *, title: str) -> Path:
    """Code frequencies sorted from the most to the least used (log scale), with the usage statistics.

    Args:
        counts: (num_codes,) how often each code occurs.
        statistics: ``perplexity``, ``share_used``, ``used``, ``num_codes``, ``tokens`` (see
            :func:`fmrilm.report.codebook_statistics`).
    """
    counts = np.asarray(counts, dtype=np.float64)
    frequencies = np.sort(counts)[::-1] / max(counts.sum(), 1.0)
    used = int(statistics["used"])
    rank = np.arange(1, frequencies.size + 1)
    fig, ax = plt.subplots(figsize=(8.0, 4.2))
    ax.bar(rank[:used], frequencies[:used], width=1.0, color="tab:blue", linewidth=0)
    uniform = 1.0 / frequencies.size
    ax.axhline(uniform, color="tab:red", linestyle="--", linewidth=1)
    ax.annotate(f"uniform use (1/{frequencies.size})", (0.99, uniform), xycoords=("axes fraction", "data"),
                xytext=(0, 3), textcoords="offset points", ha="right", va="bottom", fontsize=8, color="tab:red")  # fmt: skip
    if used < frequencies.size:
        ax.axvspan(used + 0.5, frequencies.size + 0.5, color="0.93", zorder=0)
        ax.text((used + frequencies.size) / 2 + 0.5, 0.5, f"{frequencies.size - used} unused codes", ha="center",
                va="center", transform=ax.get_xaxis_transform(), fontsize=9, color="0.4")  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlim(0.5, frequencies.size + 0.5)
    ax.set_xlabel("code rank (most to least used)")
    ax.set_ylabel("share of tokens")
    ax.grid(alpha=0.3, which="both", axis="y")
    text = (
        f"tokens: {int(statistics['tokens']):,}\n"
        f"codes used: {used} / {int(statistics['num_codes'])} ({statistics['share_used']:.1%})\n"
        f"perplexity: {statistics['perplexity']:.1f}"
    )
    ax.text(0.98, 0.95, text, transform=ax.transAxes, ha="right", va="top", fontsize=9,
            bbox={"facecolor": "white", "edgecolor": "0.7", "boxstyle": "round"})  # fmt: skip
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_training_curves(
    train: Mapping[str, tuple[np.ndarray, np.ndarray]],
    validation: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: Path,
    *,
    title: str,
    best_step: int | None = None,
) -> Path:
    """Training losses in one panel, then one panel per other training metric and per validation metric.

    Args:
        train: ``{name: (steps, values)}`` of the training records; names with "loss" share the first
            panel (``"loss"`` drawn thickest, log scale when they span more than 30x).
        validation: ``{name: (steps, values)}`` of the validation records.
        best_step: the step of the chosen checkpoint, marked in every panel.
    """
    losses = {name: series for name, series in train.items() if "loss" in name}
    others = {f"training: {name}": series for name, series in train.items() if "loss" not in name}
    panels_by_title = others | {f"validation: {name}": series for name, series in validation.items()}
    panels = (1 if losses else 0) + len(panels_by_title)
    columns = min(4, max(panels, 1))
    rows = -(-max(panels, 1) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 2.9 * rows), squeeze=False)
    flat = list(axes.ravel())
    index = 0
    if losses:
        ax = flat[0]
        for name, (steps, values) in losses.items():
            ax.plot(
                steps,
                values,
                linewidth=2.0 if name == "loss" else 1.0,
                label=name,
                marker="." if len(steps) < 12 else None,
            )
        positive = all(np.all(np.asarray(v) > 0) for _, v in losses.values())
        if positive and max(np.max(v) for _, v in losses.values()) / min(np.min(v) for _, v in losses.values()) > 30:
            ax.set_yscale("log")
        ax.set_title("training losses", fontsize=9)
        ax.legend(fontsize=7, frameon=False, loc="best")
        index = 1
    for heading, (steps, values) in panels_by_title.items():
        ax = flat[index]
        colour = "tab:green" if heading.startswith("validation") else "tab:blue"
        ax.plot(steps, values, marker="o" if len(steps) < 40 else None, markersize=3, color=colour)
        ax.set_title(heading, fontsize=9)
        index += 1
    for ax in flat[:index]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
        if best_step is not None:
            ax.axvline(best_step, color="0.4", linestyle=":", linewidth=1)
    for ax in flat[index:]:
        ax.axis("off")
    suffix = f" (dotted: best step {best_step})" if best_step is not None else ""
    fig.suptitle(title + suffix, fontsize=11)
    fig.tight_layout()
    return _save(fig, path)
