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

from .fileio import atomic_path
from .prompts import Prompt

__all__ = ["draw_prediction", "margin_curves", "strategy_bars", "gallery", "save", "draw_weights", "weight_grid",
           "mask_outputs", "positional_encoding", "sam_dataflow", "zoom_to",
           "embedding_picture", "refinement_curves", "refinement_steps"]

FG, BG, TRUTH, PRED = "#2ecc40", "#ff4136", "#ffdc00", "#0074d9"


def save(fig: Figure, path: str | Path) -> None:
    """Write ``fig`` to ``path`` (its format from the suffix) atomically, and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix[1:], dpi=110, bbox_inches="tight", metadata={"Software": None})
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
    if groups:  # none when the study ran E1 only
        ax.legend(fontsize=8)
    return fig


def refinement_curves(curves: dict[str, pd.DataFrame], level: str = "patient") -> Figure:
    """E5: mean IoU against the number of correction clicks k, one panel per split and one curve per
    start and model (``curves``: model label -> ``samhw.refine.curve_table``); solid with the previous
    logits as ``mask_input``, dashed without; a band for the patient-level 95% interval."""
    suffix = "_patient" if level == "patient" else ""
    splits = list(dict.fromkeys(s for c in curves.values() for s in c["split"]))
    fig, axes = plt.subplots(1, len(splits), figsize=(7 * len(splits), 4.8), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, split in zip(axes[0], splits):
        n, color_of = 0, {}
        for model, curve in curves.items():
            for (start, with_mask), group in curve[curve["split"] == split].groupby(["start", "mask_input"], sort=False):
                color = color_of.setdefault((model, start), colors[len(color_of) % len(colors)])
                group = group.sort_values("k")
                line, = ax.plot(group["k"], group[f"miou{suffix}"], ls="-" if with_mask else "--", color=color,
                                marker="." if with_mask else None,
                                label=f"{model}: {start}" + ("" if with_mask else " (no mask_input)"))
                ax.fill_between(group["k"], group[f"miou{suffix}_lo"], group[f"miou{suffix}_hi"],
                                color=line.get_color(), alpha=0.08)
                n += 1
        ax.set_xlabel("correction clicks k (k = 0: the first prompt alone)")
        ax.set_ylabel(f"mean IoU ({'over patients' if level == 'patient' else 'over slices'})")
        ax.set_title(f"E5: interactive refinement, {split} split")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2 if n > 8 else 1)
    return fig


def refinement_steps(image: np.ndarray, truth: np.ndarray, steps: Sequence[dict], columns: int = 5) -> Figure:
    """E5 click by click on one slice: ``steps`` holds per k the ``prompt`` (all points so far, box),
    the predicted ``mask`` and its ``iou``; the newest click is ringed."""
    rows = -(-len(steps) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.7 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for k, (ax, step) in enumerate(zip(axes.ravel(), steps)):
        draw_prediction(ax, image, truth, step["mask"], step["prompt"], f"k={k}: IoU {step['iou']:.3f}")
        if k and len(step["prompt"].points):
            x, y = step["prompt"].points[-1]
            ax.plot(x, y, marker="o", ms=16, mfc="none", mec="white", mew=1.2)
    return fig


def training_curves(log: Sequence[dict]) -> Figure:
    """Fine-tuning: training losses and validation IoU per prompt against the epoch."""
    epochs = [e["epoch"] for e in log]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for key, label in (("loss", "total"), ("mask_loss", "mask (Dice + BCE)"), ("iou_loss", "IoU head (MSE)")):
        left.plot(epochs, [e[key] for e in log], marker="o", label=label)
    left.set_xlabel("epoch")
    left.set_ylabel("training loss (mean over steps)")
    left.legend(fontsize=8)
    for prompt in log[0]["val"]:
        right.plot(epochs, [e["val"][prompt] for e in log], marker="o", label=prompt)
    right.plot(epochs, [e["val_mean"] for e in log], color="black", lw=2, label="mean (model selection)")
    right.set_xlabel("epoch")
    right.set_ylabel("validation IoU (seed 0)")
    right.legend(fontsize=7)
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    return fig


def gallery(grid: Sequence[Sequence[dict]], zoom_pad: int | None = None) -> Figure:
    """Slices (rows) by prompts (columns): each prompt drawn with its predicted mask and IoU.
    With ``zoom_pad``, each row shows only its tumour's box widened by that many pixels."""
    n_rows, n_cols = len(grid), len(grid[0])
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.7 * n_cols, 1.85 * n_rows), squeeze=False)
    for r, row in enumerate(grid):
        for c, cell in enumerate(row):
            item = cell["slice"]
            title = f"{cell['prompt']}\nIoU {cell['iou']:.2f}" if r == 0 else f"IoU {cell['iou']:.2f}"
            draw_prediction(axes[r, c], item.image, item.mask, cell["mask"], cell["drawn"], title)
            if zoom_pad is not None:
                rows, cols = np.nonzero(item.mask)
                zoom_to(axes[r, c], (cols.min(), rows.min(), cols.max(), rows.max()), item.mask.shape, zoom_pad)
        axes[r, 0].set_ylabel(row[0]["slice"].slice_id.replace("TCGA_", ""), fontsize=7)
    fig.suptitle("Prompts (green) and predicted masks (blue) against the true outline (yellow)", fontsize=9)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- notebook figures


def zoom_to(ax, box, shape, pad: int) -> None:
    """Show only ``box`` (x0, y0, x1, y1, inclusive pixels) widened by ``pad`` px, clipped to ``shape``."""
    x0, y0, x1, y1 = box
    h, w = shape
    ax.set_xlim(max(x0 - pad, 0) - 0.5, min(x1 + pad, w - 1) + 0.5)
    ax.set_ylim(min(y1 + pad, h - 1) + 0.5, max(y0 - pad, 0) - 0.5)


def draw_weights(ax, image: np.ndarray, weights: np.ndarray, point=None, center=None, title: str = "",
                 points: Sequence = (), zoom_pad: int | None = 20) -> None:
    """A weight map over the mask (NaN elsewhere) on the slice's FLAIR channel, relative to its
    largest weight; ``point`` (star) is the chosen point, ``center`` (white +) the box centre,
    ``points`` more points (small dots, e.g. random draws). Zoomed on the mask unless ``zoom_pad`` is None."""
    ax.imshow(image[..., 1], cmap="gray")
    rel = weights / np.nanmax(weights)
    shown = ax.imshow(np.ma.masked_invalid(rel), cmap="magma", vmin=0, vmax=1, alpha=0.9)
    for x, y in points:
        ax.plot(x, y, marker="o", ms=3, mfc="#7fdbff", mec="black", mew=0.3, ls="")
    if center is not None:
        ax.plot(center[0], center[1], marker="+", ms=10, mew=1.5, color="white")
    if point is not None:
        ax.plot(point[0], point[1], marker="*", ms=13, mfc=FG, mec="black", mew=0.6)
    if zoom_pad is not None:
        rows, cols = np.nonzero(np.isfinite(weights))
        zoom_to(ax, (cols.min(), rows.min(), cols.max(), rows.max()), weights.shape, zoom_pad)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    return shown


def weight_grid(panels: Sequence[Sequence[dict]], title: str = "") -> Figure:
    """Rows of panels; each panel is a dict of :func:`draw_weights` arguments (``image``, ``weights``,
    ``point``, ``center``, ``points``, ``title``), or with ``truth`` and no ``weights`` the slice with its outline."""
    n_rows, n_cols = len(panels), max(len(r) for r in panels)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.6 * n_cols, 2.6 * n_rows), squeeze=False)
    shown = None
    for r, row in enumerate(panels):
        for c in range(n_cols):
            ax = axes[r, c]
            if c >= len(row):
                ax.axis("off")
                continue
            panel = dict(row[c])
            if panel.get("weights") is None:
                truth = panel.pop("truth")
                draw_prediction(ax, panel["image"], truth, None, None, panel.get("title", ""))
                rows_, cols_ = np.nonzero(truth)
                zoom_to(ax, (cols_.min(), rows_.min(), cols_.max(), rows_.max()), truth.shape, 20)
            else:
                shown = draw_weights(ax, **panel)
    if shown is not None:
        fig.colorbar(shown, ax=axes, shrink=0.6, label="weight / largest weight")
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def mask_outputs(image: np.ndarray, truth: np.ndarray, masks: np.ndarray, scores: np.ndarray, prompt: Prompt,
                 title: str = "", zoom_pad: int | None = 40) -> Figure:
    """SAM's four outputs for one prompt: output 0 (the single-mask answer) and outputs 1-3 (the
    multimask set), each with its predicted and true IoU; the multimask pick is marked."""
    from .metrics import iou

    chosen = 1 + int(np.argmax(scores[1:]))
    fig, axes = plt.subplots(1, len(masks), figsize=(2.3 * len(masks), 2.6), squeeze=False)
    for k, mask in enumerate(masks):
        label = "single" if k == 0 else f"multi {k}" + (" (picked)" if k == chosen else "")
        draw_prediction(axes[0, k], image, truth, mask, prompt,
                        f"output {k}: {label}\npredicted IoU {scores[k]:.2f}, IoU {iou(mask, truth):.2f}")
        if zoom_pad is not None:
            rows, cols = np.nonzero(truth)
            zoom_to(axes[0, k], (cols.min(), rows.min(), cols.max(), rows.max()), truth.shape, zoom_pad)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def positional_encoding(gaussian_matrix: np.ndarray, dense_pe: np.ndarray, channels: Sequence[int] = (0, 1, 128, 129)) -> Figure:
    """SAM's random-Fourier positional encoding: the 2-D frequencies (columns of the Gaussian
    matrix, in cycles per image side after the 2*pi) and a few channels of the 64x64 grid encoding
    (channel k < C/2 is sin of frequency k, channel C/2 + k its cos)."""
    fig, axes = plt.subplots(1, 1 + len(channels), figsize=(2.5 * (1 + len(channels)), 2.7))
    freq = np.asarray(gaussian_matrix)
    axes[0].scatter(freq[0], freq[1], s=6)
    axes[0].set_aspect("equal")
    axes[0].set_title(f"{freq.shape[1]} random frequencies G_k ~ N(0, I)\nPE(p) = sin, cos of 2pi (2p - 1) . G_k",
                      fontsize=8)
    axes[0].set_xlabel("x", fontsize=8)
    axes[0].set_ylabel("y", fontsize=8)
    for ax, ch in zip(axes[1:], channels):
        ax.imshow(dense_pe[ch], cmap="RdBu", vmin=-1, vmax=1)
        kind = "sin" if ch < dense_pe.shape[0] // 2 else "cos"
        ax.set_title(f"channel {ch}: {kind} of freq {ch % (dense_pe.shape[0] // 2)}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def embedding_picture(image: np.ndarray, truth: np.ndarray, picture: np.ndarray) -> Figure:
    """The slice with its outline beside an (h, w, 3) picture of its embedding (e.g. three principal
    components scaled to [0, 1]), stretched over the same area."""
    fig, axes = plt.subplots(1, 2, figsize=(6, 3.2))
    draw_prediction(axes[0], image, truth, None, None, "the slice and its tumour outline")
    h, w = image.shape[:2]
    axes[1].imshow(picture, extent=(-0.5, w - 0.5, h - 0.5, -0.5))
    axes[1].contour(truth.astype(float), levels=[0.5], colors=[TRUTH], linewidths=0.9)
    axes[1].set_title(f"embedding {picture.shape[0]}x{picture.shape[1]}: first 3 principal\ncomponents of its "
                      "256 channels as RGB", fontsize=8)
    axes[1].set_xticks([])
    axes[1].set_yticks([])
    fig.tight_layout()
    return fig


def sam_dataflow(shapes: dict[str, str], title: str = "") -> Figure:
    """A diagram of SAM's data flow, labelled with measured shapes (see :func:`samhw.architecture.dataflow_shapes`)."""
    fig, ax = plt.subplots(figsize=(11, 5.2))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")
    module = dict(boxstyle="round,pad=0.4", fc="#dbeafe", ec="#1d4ed8")
    data = dict(boxstyle="round,pad=0.3", fc="white", ec="#555555")
    nodes = {
        "slice": (0.07, 0.86, f"slice\n{shapes['image']} uint8", data),
        "pre": (0.22, 0.86, "preprocess\n(resize, normalise, pad)", module),
        "input": (0.38, 0.86, f"input\n{shapes['input']}", data),
        "encoder": (0.55, 0.86, "image encoder\n(runs once per image; cached)", module),
        "embedding": (0.55, 0.62, f"image embedding\n{shapes['embedding']}", data),
        "prompts": (0.07, 0.38, "points (x, y) + labels,\nbox corners", data),
        "penc": (0.24, 0.38, "prompt encoder\nrandom-Fourier PE\n+ learned type embeddings", module),
        "sparse": (0.42, 0.44, f"sparse tokens\n{shapes['sparse']}", data),
        "dense": (0.42, 0.24, f"dense: no-mask embedding\n{shapes['dense']}", data),
        "pe": (0.42, 0.07, f"image PE\n{shapes['pe']}", data),
        "decoder": (0.68, 0.34, f"mask decoder\ntokens {shapes['tokens']}\n(IoU + 4 mask + prompt tokens)\n"
                                 f"two-way transformer x2\nupscaled {shapes['upscaled']}\n"
                                 f"hypernetwork MLPs 4 x {shapes['hyper']}", module),
        "masks": (0.9, 0.5, f"mask logits\n{shapes['masks']}", data),
        "iou": (0.9, 0.2, f"predicted IoU\n{shapes['iou']}", data),
        "post": (0.9, 0.8, f"postprocess\n-> {shapes['output']} mask", module),
    }
    texts = {key: ax.text(x, y, text, ha="center", va="center", fontsize=8, bbox=style)
             for key, (x, y, text, style) in nodes.items()}
    edges = [("slice", "pre"), ("pre", "input"), ("input", "encoder"), ("encoder", "embedding"),
             ("prompts", "penc"), ("penc", "sparse"), ("penc", "dense"), ("penc", "pe"),
             ("embedding", "decoder"), ("sparse", "decoder"), ("dense", "decoder"), ("pe", "decoder"),
             ("decoder", "masks"), ("decoder", "iou"), ("masks", "post")]
    for a, b in edges:  # from box edge to box edge
        ax.annotate("", xy=(0.5, 0.5), xycoords=texts[b], xytext=(0.5, 0.5), textcoords=texts[a],
                    arrowprops=dict(arrowstyle="-|>", color="#333333", lw=1, shrinkA=3, shrinkB=3,
                                    patchA=texts[a].get_bbox_patch(), patchB=texts[b].get_bbox_patch()))
    ax.set_title(title or "SAM's data flow, shapes measured on a real slice", fontsize=10)
    return fig
