"""Figures of the study: IoU against box margin, strategies side by side, a gallery of prompts.

Images are drawn with ``imshow`` so that pixel (x, y) has its centre at data coordinates (x, y),
the convention of ``samhw.prompts``: points are plotted as they are, boxes as the pixels they span.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .prompts import Prompt

__all__ = ["draw_prediction", "margin_curves", "strategy_bars", "gallery", "save"]

FG, BG, TRUTH, PRED = "#2ecc40", "#ff4136", "#ffdc00", "#0074d9"


def save(fig: Figure, path: str | Path) -> None:
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


def draw_prediction(ax, image: np.ndarray, truth: np.ndarray, pred: np.ndarray | None, prompt: Prompt | None,
                    title: str = "") -> None:
    """The slice with the true outline (yellow), the predicted mask (blue), and the prompt:
    foreground points as green stars, background points as red crosses, the box in green."""
    ax.imshow(image)
    if pred is not None and pred.any():
        overlay = np.zeros((*pred.shape, 4))
        overlay[pred] = matplotlib.colors.to_rgba(PRED, 0.45)
        ax.imshow(overlay)
    ax.contour(truth.astype(float), levels=[0.5], colors=[TRUTH], linewidths=0.9)
    if prompt is not None:
        if prompt.box is not None:
            x0, y0, x1, y1 = prompt.box
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False, ec=FG, lw=1.2))
        for (x, y), label in zip(prompt.points, prompt.labels):
            if label:
                ax.plot(x, y, marker="*", ms=11, mfc=FG, mec="black", mew=0.6)
            else:
                ax.plot(x, y, marker="X", ms=9, mfc=BG, mec="black", mew=0.6)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def _margin(prompt: str) -> int:
    return int(prompt.split(":")[1])


def margin_curves(summary: pd.DataFrame, by: Sequence[str] = ("split",)) -> Figure:
    """E1: mean IoU (95% interval over seeds) against the box's max margin, one line per group."""
    boxes = summary[summary["prompt"].str.fullmatch(r"box:-?\d+")].copy()
    boxes["margin"] = boxes["prompt"].map(_margin)
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, group in boxes.groupby(list(by), sort=False):
        group = group.sort_values("margin")
        label = " / ".join(str(k) for k in (key if isinstance(key, tuple) else (key,)))
        err = np.nan_to_num(np.vstack([group["iou"] - group["iou_lo"], group["iou_hi"] - group["iou"]]))
        line = ax.errorbar(group["margin"], group["iou"], yerr=err, marker="o", capsize=3, label=f"{label} (slices)")
        ax.plot(group["margin"], group["iou_patient"], ls="--", marker=".", color=line[0].get_color(),
                label=f"{label} (patients)")
    ax.set_xlabel("max margin M (px): each side moves by U{0..|M|}, outward if M > 0")
    ax.set_ylabel("mean IoU")
    ax.set_title("E1: box prompts with random margins")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def strategy_bars(summary: pd.DataFrame, by: Sequence[str] = ("split",)) -> Figure:
    """E2 and E3: mean IoU of each point strategy and combination, with 95% intervals over seeds."""
    rows = summary[~summary["prompt"].str.fullmatch(r"box:-?\d+")]
    prompts = list(dict.fromkeys(rows["prompt"]))
    groups = list(rows.groupby(list(by), sort=False))
    height = 0.8 / max(len(groups), 1)
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(prompts) * max(len(groups), 1) + 1.2))
    for k, (key, group) in enumerate(groups):
        group = group.set_index("prompt").reindex(prompts)
        ypos = np.arange(len(prompts)) + k * height
        err = np.nan_to_num(np.vstack([group["iou"] - group["iou_lo"], group["iou_hi"] - group["iou"]]))
        label = " / ".join(str(v) for v in (key if isinstance(key, tuple) else (key,)))
        ax.barh(ypos, group["iou"], height=height, xerr=err, capsize=2, label=label)
    ax.set_yticks(np.arange(len(prompts)) + 0.4 - height / 2, prompts, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("mean IoU over slices (95% interval over seeds)")
    ax.set_title("E2/E3: point strategies and combinations")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def gallery(grid: Sequence[Sequence[dict]]) -> Figure:
    """Slices (rows) by prompts (columns): each prompt drawn with its predicted mask and IoU."""
    n_rows, n_cols = len(grid), len(grid[0])
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.7 * n_cols, 1.85 * n_rows), squeeze=False)
    for r, row in enumerate(grid):
        for c, cell in enumerate(row):
            item = cell["slice"]
            title = f"{cell['prompt']}\nIoU {cell['iou']:.2f}" if r == 0 else f"IoU {cell['iou']:.2f}"
            draw_prediction(axes[r, c], item.image, item.mask, cell["mask"], cell["drawn"], title)
        axes[r, 0].set_ylabel(row[0]["slice"].slice_id.replace("TCGA_", ""), fontsize=7)
    fig.suptitle("Prompts (green) and predicted masks (blue) against the true outline (yellow)", fontsize=9)
    fig.tight_layout()
    return fig
