"""Notebook 05's views of fine-tuning: what is trained, a real batch and its loss, short live runs,
and pretrained against fine-tuned masks. Every number is computed here from the model and the
training code (``samhw.train``), nothing from tables.
"""
from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib import pyplot as plt
from matplotlib.figure import Figure

from . import plots
from .data import Dataset, Slice
from .models import ModelError, SamModel, load_model
from .train import PARTS, FinetuneConfig, finetune, prompt_loss, training_forward, training_prompt

__all__ = ["trainable_table", "mix_table", "draw_batch", "batch_figure", "loss_table", "mini_run", "validation_iou",
           "load_shipped", "before_after"]


def trainable_table(model: SamModel, parts: Sequence[str]) -> pd.DataFrame:
    """Parameters per part of ``model`` (image encoder, prompt encoder, mask decoder), whether
    ``parts`` (``samhw.train.PARTS`` names, e.g. ``decoder``) train it, and its share of the model."""
    trained = {PARTS[p] for p in parts}
    counts = {name: sum(t.numel() for t in getattr(model, name).parameters())
              for name in ("image_encoder", "prompt_encoder", "mask_decoder")}
    total = sum(counts.values())
    table = pd.DataFrame({"parameters": counts, "share": {k: f"{v / total:.1%}" for k, v in counts.items()},
                          "trained": {k: "trained" if k in trained else "frozen" for k in counts}})
    table.loc["total"] = [total, "100.0%", f"{sum(counts[k] for k in trained):,} trained"]
    return table


def mix_table(config: FinetuneConfig) -> pd.DataFrame:
    """The training prompt mix: each prompt's probability and how many masks SAM makes for it."""
    from .prompts import PromptSpec

    weights = np.array([w for _, w in config.mix])
    return pd.DataFrame([{"prompt": name, "probability": round(float(w / weights.sum()), 4),
                          "masks": 3 if PromptSpec.parse(name).multimask else 1}
                         for (name, _), w in zip(config.mix, weights)]).set_index("prompt")


def draw_batch(config: FinetuneConfig, dataset: Dataset, epoch: int = 0, step: int = 0) -> list[dict]:
    """The slices and prompts of one training step, exactly as ``finetune`` draws them: the epoch's
    order of slices, then each slice's prompt from generators of (seed, epoch, slice)."""
    order = np.random.default_rng(np.random.SeedSequence([config.seed, epoch])).permutation(len(dataset))
    picked = order[step * config.batch_size:(step + 1) * config.batch_size]
    batch = []
    for j in picked:
        item = dataset.slices[j]
        spec, prompt = training_prompt(config, item, epoch)
        batch.append({"slice": item, "spec": spec, "prompt": prompt})
    return batch


def batch_figure(batch: Sequence[dict], zoom_pad: int = 40) -> Figure:
    """The batch's prompts on their slices (green box or stars, red background crosses; yellow: the truth)."""
    cols = min(4, len(batch))
    rows = -(-len(batch) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.45 * rows), squeeze=False)
    axes = axes.ravel()
    for ax, entry in zip(axes, batch):
        item: Slice = entry["slice"]
        plots.draw_prediction(ax, item.image, item.mask, None, entry["prompt"],
                              f"{entry['spec'].name}\n{item.slice_id.replace('TCGA_', '')}")
        ys, xs = np.nonzero(item.mask)
        plots.zoom_to(ax, (xs.min(), ys.min(), xs.max(), ys.max()), item.mask.shape, zoom_pad)
    for ax in axes[len(batch):]:
        ax.axis("off")
    fig.suptitle("One training batch: the prompt each slice got (yellow: the true outline)", fontsize=9)
    fig.tight_layout()
    return fig


def loss_table(model: SamModel, cache, batch: Sequence[dict], iou_loss_weight: float = 1.0) -> pd.DataFrame:
    """The loss of each prompt of ``batch``, term by term, computed here and checked against
    :func:`samhw.train.prompt_loss`: per mask k the Dice loss ``1 - (2|P.T| + 1) / (|P| + |T| + 1)``
    (P the sigmoid of the logits, soft) and the mean BCE; the mask loss is Dice + BCE of the
    best-fitting mask (of the three for a point, of the one for a box); the IoU head's loss is the
    mean squared error between its predicted IoU and each mask's actual IoU (logits > 0)."""
    rows = []
    for entry in batch:
        item, spec, prompt = entry["slice"], entry["spec"], entry["prompt"]
        embedding = cache.get(item.image)[0].to(model.device)
        with torch.no_grad():
            logits, scores = training_forward(model, embedding, prompt, item.mask.shape, spec.multimask)
        truth = torch.from_numpy(item.mask).float()
        probs = logits.sigmoid().flatten(1)
        target = truth.flatten()[None]
        dice = 1 - (2 * (probs * target).sum(1) + 1) / (probs.sum(1) + target.sum(1) + 1)
        bce = F.binary_cross_entropy_with_logits(logits.flatten(1), target.expand_as(probs), reduction="none").mean(1)
        hard = logits.flatten(1) > 0
        actual = (hard & (target > 0)).sum(1) / (hard | (target > 0)).sum(1).clamp(min=1)
        best = int((dice + bce).argmin()) if spec.multimask else 0
        mse = float(((scores - actual) ** 2).mean())
        total = float(dice[best] + bce[best]) + iou_loss_weight * mse
        reference, mask_ref, iou_ref = prompt_loss(logits, scores, truth, spec.multimask, iou_loss_weight)
        if not np.allclose([total, float(dice[best] + bce[best]), mse],
                           [float(reference), float(mask_ref), float(iou_ref)], rtol=1e-4, atol=1e-6):
            raise AssertionError(f"{item.slice_id}: the loss by hand differs from samhw.train.prompt_loss")
        rows.append({"slice": item.slice_id.replace("TCGA_", ""), "prompt": spec.name, "masks": len(dice),
                     "best mask": best, "Dice": float(dice[best]), "BCE": float(bce[best]),
                     "actual IoU": float(actual[best]), "predicted IoU": float(scores[best]),
                     "IoU-head MSE": mse, "loss": total})
    table = pd.DataFrame(rows)
    table.loc["batch mean"] = ["", "", "", "", *table[["Dice", "BCE", "actual IoU", "predicted IoU",
                                                               "IoU-head MSE", "loss"]].mean()]
    return table.round(4)


def mini_run(config: FinetuneConfig, out: str | Path, data: str | None = None, cache_dir: str | None = None) -> dict:
    """A short real ``finetune`` run into ``out`` (emptied first), quietly; returns its log.json.

    Its messages (which include timings) are dropped so that the notebook's output is reproducible.
    """
    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)
    with contextlib.redirect_stderr(io.StringIO()):
        finetune(config, out, data=data, device="cpu", cache_dir=cache_dir, progress=False,
                 command="samhw.tuning.mini_run")
    return json.loads((out / "log.json").read_text())


def validation_iou(model: SamModel, cache, dataset: Dataset, prompts: Sequence[str]) -> float:
    """Mean validation IoU over ``prompts`` (seed 0), as ``finetune`` scores an epoch, quietly."""
    from .train import validate

    with contextlib.redirect_stderr(io.StringIO()):
        scores = validate(model, cache, dataset, prompts)
    return float(np.mean(list(scores.values())))


def load_shipped(name: str = "litemedsam-lgg", device: str = "cpu") -> tuple[SamModel | None, str]:
    """``(model, where it came from)``, or ``(None, why not)`` when this copy has no such weights."""
    try:
        model = load_model(name, device=device)
    except ModelError as err:
        return None, str(err)
    return model, model.meta["origin"]


def before_after(grids: dict[str, list[list[dict]]], zoom_pad: int = 40) -> Figure:
    """Masks of several models (``label -> samhw.study.predict_gallery`` grid, same slices and
    prompts): one row per slice and model, one column per prompt."""
    labels = list(grids)
    n_slices, n_prompts = len(grids[labels[0]]), len(grids[labels[0]][0])
    fig, axes = plt.subplots(n_slices * len(labels), n_prompts, figsize=(1.8 * n_prompts, 1.9 * n_slices * len(labels)),
                             squeeze=False)
    for s in range(n_slices):
        for m, label in enumerate(labels):
            r = s * len(labels) + m
            for c, cell in enumerate(grids[label][s]):
                item = cell["slice"]
                title = f"{cell['prompt']}\nIoU {cell['iou']:.2f}" if r == 0 else f"IoU {cell['iou']:.2f}"
                plots.draw_prediction(axes[r, c], item.image, item.mask, cell["mask"], cell["drawn"], title)
                ys, xs = np.nonzero(item.mask)
                plots.zoom_to(axes[r, c], (xs.min(), ys.min(), xs.max(), ys.max()), item.mask.shape, zoom_pad)
            axes[r, 0].set_ylabel(f"{label}\n{cell['slice'].slice_id.replace('TCGA_', '')}", fontsize=7)
    fig.suptitle("The same prompts (green) on the same slices: masks (blue) against the truth (yellow)", fontsize=9)
    fig.tight_layout()
    return fig
