"""Evaluation: every (prompt, seed) on every slice, one row each, and the study's summary.

A deterministic prompt (a centre point, the tight box) is the same for every seed, so it is
evaluated once, with the first seed; its interval over seeds is undefined and reported empty.
"""
from __future__ import annotations

import csv
import io
import json
import os
import sys
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeVar

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .cache import CacheStats, EmbeddingCache
from .data import Dataset, Slice
from .fileio import atomic_write, atomic_write_text, storage_errors
from .metrics import mean_interval, scores_from_counts
from .models import SamModel, single_thread
from .predictor import Predictor
from .prompts import Prompt, PromptSpec, draw_prompts
from .stats import format_interval
from .workers import WorkerPool

__all__ = ["ROW_FIELDS", "plan", "evaluate_slice", "score_prompts", "evaluate", "evaluate_to_csv", "run_config", "summarize", "format_summary"]

T = TypeVar("T")

#: Decimals kept of IoU and Dice in the rows: rounding moves any mean by less than 5e-9, far below
#: the tables' 3 decimals, and keeps the committed CSVs small. The predicted IoU (a float32) keeps 7.
IOU_DECIMALS = 8
ROW_FIELDS = ["split", "patient", "slice", "prompt", "seed", "iou", "dice", "pred_iou", "off_target",
              "area_true", "area_pred", "points", "box"]


def plan(specs: Sequence[PromptSpec], seeds: Sequence[int]) -> list[tuple[PromptSpec, int]]:
    """The (prompt, seed) pairs to evaluate: every seed for random prompts, the first for the rest."""
    if not seeds:
        raise ValueError("at least one seed is needed")
    return [(spec, seed) for spec in specs for seed in (seeds if spec.random else seeds[:1])]


def _format_points(prompt: Prompt) -> str:
    return ";".join(f"{x:g} {y:g} {label}" for (x, y), label in zip(prompt.points, prompt.labels))


def _format_box(prompt: Prompt) -> str:
    return "" if prompt.box is None else " ".join(f"{v:g}" for v in prompt.box)


def evaluate_slice(model: SamModel, embedding, item: Slice, pairs: Sequence[tuple[PromptSpec, int]],
                   split: str = "", batch_size: int = 1) -> list[dict]:
    """Rows for one slice: draw each (prompt, seed), then :func:`score_prompts`."""
    prompts = draw_prompts(item.mask, item.image, item.slice_id, pairs)
    return score_prompts(model, embedding, item, pairs, prompts, split, batch_size)


def score_prompts(model: SamModel, embedding, item: Slice, pairs: Sequence[tuple[PromptSpec, int]],
                  prompts: Sequence[Prompt], split: str = "", batch_size: int = 1) -> list[dict]:
    """Rows for one slice from its drawn ``prompts`` (one per pair): decode them in batches of
    equal structure and score.

    Overlaps are counted on the model's device and only the counts come back, once per slice. On
    the CPU the slice is computed with one thread (:func:`samhw.models.single_thread`), so rows do
    not depend on the number of cores or workers.
    """
    groups: dict[tuple, list[int]] = {}
    for i, ((spec, _), prompt) in enumerate(zip(pairs, prompts, strict=True)):
        groups.setdefault((prompt.structure, spec.multimask), []).append(i)
    with single_thread(model.device):
        counts, scores = _count_overlaps(model, embedding, item, prompts, groups, batch_size)
    area_true = int(item.mask.sum())
    rows = []
    for (spec, seed), prompt, (inter, area_pred), score in zip(pairs, prompts, counts.tolist(), scores.tolist()):
        iou, dice = scores_from_counts(inter, area_pred, area_true)
        rows.append({
            "split": split, "patient": item.patient, "slice": item.slice_id, "prompt": spec.name, "seed": seed,
            "iou": round(iou, IOU_DECIMALS), "dice": round(dice, IOU_DECIMALS), "pred_iou": round(score, 7),
            "off_target": prompt.off_target, "area_true": area_true,
            "area_pred": area_pred, "points": _format_points(prompt), "box": _format_box(prompt),
        })
    return rows


def _count_overlaps(model: SamModel, embedding, item: Slice, prompts: Sequence[Prompt], groups: dict,
                    batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(intersection with the truth, predicted area) per prompt, int64 (N, 2), and the predicted IoU (N,)."""
    predictor = Predictor(model)
    predictor.set_embedding(embedding, item.mask.shape)
    truth = torch.from_numpy(item.mask).to(model.device)
    order, counts, scores = [], [], []
    for (_, multimask), idx in groups.items():
        for start in range(0, len(idx), batch_size):
            chunk = idx[start:start + batch_size]
            masks, predicted = predictor.predict_prompts_torch([prompts[i] for i in chunk], multimask)
            counts.append(torch.stack([(masks & truth).flatten(1).sum(1), masks.flatten(1).sum(1)], 1))
            scores.append(predicted)
            order.extend(chunk)
    by_prompt = np.argsort(order)
    return torch.cat(counts).cpu().numpy()[by_prompt], torch.cat(scores).cpu().numpy()[by_prompt]


def default_batch_size(model: SamModel) -> int:
    """Prompts decoded together: one on the CPU (larger batches only add memory traffic), 64 on CUDA."""
    return 64 if model.device.type == "cuda" else 1


def default_workers(model: SamModel) -> int:
    """Worker processes: on the CPU one per core (up to 8), each evaluating whole slices; on a GPU
    up to 4, leaving a core to the main process, that draw prompts while the main process decodes.

    Whole-slice workers on one GPU measured no faster: each initialises CUDA and loads the model,
    and their kernels take turns on the device.
    """
    cores = os.cpu_count() or 1
    return min(cores, 8) if model.device.type == "cpu" else min(max(cores - 1, 1), 4)


def evaluate(model: SamModel, cache: EmbeddingCache, dataset: Dataset, specs: Sequence[PromptSpec],
             seeds: Sequence[int], batch_size: int | None = None, progress: bool = True,
             done: set[str] | frozenset[str] = frozenset(), workers: int | None = None) -> Iterator[list[dict]]:
    """Yield the rows of each slice in turn (slices in ``done`` are passed over).

    With ``workers`` > 1 (the default on a machine of several cores): on the CPU, slices are
    spread over that many processes, each encoding (through the shared cache) and decoding its
    slices with one thread; on a GPU the images are encoded first, in batches, then that many
    processes draw the prompts while this one decodes. Rows are the same either way.
    """
    pairs = plan(specs, seeds)
    batch_size = batch_size or default_batch_size(model)
    todo = [s for s in dataset.slices if s.slice_id not in done]
    workers = min(workers or default_workers(model), len(todo))
    bar = dict(desc=f"prompting {dataset.split}", unit="slice", disable=not progress)
    on_cpu = model.device.type == "cpu"
    if workers <= 1 or len(todo) <= 1 or not on_cpu:
        stats = cache.ensure([s.image for s in todo], progress=progress)
        tqdm.write(f"{stats} (cache: {cache.folder})", file=sys.stderr)
    if workers <= 1 or len(todo) <= 1:
        damaged_before = cache.damaged
        for item in tqdm(todo, **bar):
            yield evaluate_slice(model, cache.get(item.image), item, pairs, dataset.split, batch_size)
        if cache.damaged > damaged_before:
            tqdm.write(f"embeddings: {cache.damaged - damaged_before} damaged cache files recomputed "
                       f"(cache: {cache.folder})", file=sys.stderr)
    elif on_cpu:
        yield from _slices_in_workers(model, cache, todo, pairs, dataset.split, batch_size, workers, bar)
    else:
        yield from _prompts_in_workers(model, cache, todo, pairs, dataset.split, batch_size, workers, bar)


def _in_order(submit: Callable[[T], Future], items: Sequence[T], ahead: int) -> Iterator:
    """The results of ``submit(item)`` for each item, in order, with at most ``ahead`` submitted early."""
    pending: deque[Future] = deque()
    for item in items:
        pending.append(submit(item))
        if len(pending) > ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _prompts_in_workers(model: SamModel, cache: EmbeddingCache, todo: list[Slice], pairs: list, split: str,
                        batch_size: int, workers: int, bar: dict) -> Iterator[list[dict]]:
    """Prompts drawn by ``workers`` CPU processes (numpy only) and embeddings read by a thread while
    this process decodes: on a GPU decoding a slice takes milliseconds, so drawing would set the pace."""
    with WorkerPool(workers) as drawers, ThreadPoolExecutor(1) as reader:
        drawn = drawers.imap(draw_prompts, ((s.mask, s.image, s.slice_id, pairs) for s in todo), 4 * workers)
        embeddings = _in_order(lambda s: reader.submit(lambda: cache.get(s.image).to(model.device)), todo, 2)
        for item, prompts, embedding in tqdm(zip(todo, drawn, embeddings), total=len(todo), **bar):
            yield score_prompts(model, embedding, item, pairs, prompts, split, batch_size)


def _slices_in_workers(model: SamModel, cache: EmbeddingCache, todo: list[Slice], pairs: list, split: str,
                       batch_size: int, workers: int, bar: dict) -> Iterator[list[dict]]:
    """Whole slices (encode if not cached, draw, decode) in ``workers`` processes of one thread (the CPU path).

    The workers stop with this generator: at its end, on an error or interruption (they are
    terminated), and with this process however it ends (:mod:`samhw.workers`)."""
    model.export_encoder()  # once, before the workers look for it
    setup = (model.name, model.checkpoint, model.plain, str(model.onnx_dir), str(cache.root), cache.storage.name,
             model.fingerprint())
    computed = damaged = 0
    with WorkerPool(workers, initializer=_worker_setup, initargs=setup) as pool:
        tasks = ((item, pairs, split, batch_size) for item in todo)
        for rows, encoded, found_damaged in tqdm(pool.imap(_worker_slice, tasks), total=len(todo), **bar):
            computed += encoded
            damaged += found_damaged
            yield rows
    tqdm.write(f"{CacheStats(cached=len(todo) - computed, computed=computed, damaged=damaged)} by {workers} "
               f"workers (cache: {cache.folder})", file=sys.stderr)


_WORKER: dict = {}


def _worker_setup(name, checkpoint, plain, onnx_dir, cache_root, storage, fingerprint) -> None:
    torch.set_num_threads(1)
    # No progress bars here: a thread lock keeps tqdm from making a multiprocessing semaphore, which a
    # worker stopped at once (samhw.workers) would leave to the resource tracker to complain about.
    tqdm.set_lock(threading.RLock())
    from .models import load_model

    model = load_model(name, checkpoint, "cpu", plain=plain)
    model.onnx_dir = Path(onnx_dir)
    if model.fingerprint() != fingerprint:
        raise RuntimeError(f"a worker loaded different weights for {name} from {checkpoint}; evaluate in-process "
                           "(workers=1) a model that was changed in memory")
    _WORKER.update(model=model, cache=EmbeddingCache(model, cache_root, storage))


def _worker_slice(item: Slice, pairs: list, split: str, batch_size: int) -> tuple[list[dict], bool, int]:
    """One slice in a worker: its rows, whether its embedding was computed, and how many damaged
    cache files were found (and recomputed) on the way."""
    model, cache = _WORKER["model"], _WORKER["cache"]
    damaged_before = cache.damaged
    embedding = cache.load(item.image)
    encoded = embedding is None
    if encoded:
        embedding = cache.get(item.image)
    rows = evaluate_slice(model, embedding, item, pairs, split, batch_size)
    return rows, encoded, cache.damaged - damaged_before


def run_config(model: SamModel, dataset: Dataset, specs: Sequence[PromptSpec], seeds: Sequence[int]) -> dict:
    """What determines a run's rows: a resumed run must match it exactly."""
    from . import __version__

    return {"model": model.name, "weights": model.fingerprint(), "encoder": model.encoder_backend,
            "plain": model.plain, "data": str(dataset.root), "split": dataset.split,
            "slices": [s.slice_id for s in dataset.slices], "prompts": [s.name for s in specs],
            "seeds": list(seeds), "samhw": __version__}


def evaluate_to_csv(path: str | os.PathLike, config: dict, model: SamModel, cache: EmbeddingCache,
                    dataset: Dataset, specs: Sequence[PromptSpec], seeds: Sequence[int],
                    batch_size: int | None = None, progress: bool = True, workers: int | None = None) -> pd.DataFrame:
    """Evaluate into the CSV ``path``, resumably.

    Rows are appended to ``path.part`` slice by slice; an interrupted run with the same
    ``config`` continues where it stopped and says so. On completion the file is renamed to ``path``.
    """
    path = Path(path)
    part, part_config = path.with_name(path.name + ".part"), path.with_name(path.name + ".part.json")
    config_text = json.dumps(config, sort_keys=True, default=str)
    done: set[str] = set()
    if part.exists() and part_config.exists() and part_config.read_text() == config_text:
        previous = _read_complete_slices(part, len(plan(specs, seeds)))
        done = {r["slice"] for r in previous}
        _write_rows(part, previous)
        if done:
            tqdm.write(f"resuming {path.name}: {len(done)} of {len(dataset)} slices already done in {part}",
                       file=sys.stderr)
    else:
        _write_rows(part, [])
        atomic_write_text(part_config, config_text)
    with storage_errors(part):
        handle = open(part, "a", newline="")
    results = evaluate(model, cache, dataset, specs, seeds, batch_size, progress, done=done, workers=workers)
    try:  # closing the generator on an error stops its workers at once
        writer = csv.DictWriter(handle, fieldnames=ROW_FIELDS)
        for rows in results:
            with storage_errors(part):  # only the writes: an error of the evaluation keeps its own name
                writer.writerows(rows)
                handle.flush()
    finally:
        results.close()
        with suppress(OSError):  # every row was flushed; a full disk has been reported already
            handle.close()
    with storage_errors(path):
        os.replace(part, path)
        part_config.unlink(missing_ok=True)
    return read_rows(path)


def read_rows(path: str | os.PathLike) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False, na_values={"iou": [""], "dice": [""]},
                       dtype={"points": str, "box": str, "split": str})


def _read_complete_slices(part: Path, rows_per_slice: int) -> list[dict]:
    """Rows of the slices that were written completely (a kill can cut the last slice short)."""
    with open(part, newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if None not in r.values() and None not in r]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["slice"]] = counts.get(r["slice"], 0) + 1
    return [r for r in rows if counts[r["slice"]] == rows_per_slice]


def _write_rows(path: Path, rows: list[dict]) -> None:
    """Write ``rows`` (with the header) to the CSV ``path`` atomically."""
    def write(handle) -> None:
        text = io.TextIOWrapper(handle, newline="")
        writer = csv.DictWriter(text, fieldnames=ROW_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
        text.flush()
        text.detach()

    atomic_write(path, write)


# ----------------------------------------------------------------------------- summary


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (split, prompt): mean IoU and Dice over slices and over patients, each with a 95%
    interval over seeds, how many slices, patients and seeds, and how often a point was off target."""
    out = []
    for (split, prompt), group in rows.groupby(["split", "prompt"], sort=False):
        per_seed = group.groupby("seed")
        slice_iou = per_seed["iou"].mean()
        patient_iou = group.groupby(["seed", "patient"])["iou"].mean().groupby("seed").mean()
        patient_dice = group.groupby(["seed", "patient"])["dice"].mean().groupby("seed").mean()
        iou_mean, iou_lo, iou_hi = mean_interval(slice_iou)
        pat_mean, pat_lo, pat_hi = mean_interval(patient_iou)
        dice_mean, dice_lo, dice_hi = mean_interval(per_seed["dice"].mean())
        out.append({
            "split": split, "prompt": prompt,
            "slices": group["slice"].nunique(), "patients": group["patient"].nunique(), "seeds": len(slice_iou),
            "iou": iou_mean, "iou_lo": iou_lo, "iou_hi": iou_hi,
            "iou_patient": pat_mean, "iou_patient_lo": pat_lo, "iou_patient_hi": pat_hi,
            "dice": dice_mean, "dice_lo": dice_lo, "dice_hi": dice_hi, "dice_patient": patient_dice.mean(),
            "off_target": float((group["off_target"] > 0).mean()),
        })
    return pd.DataFrame(out)


def format_summary(summary: pd.DataFrame) -> str:
    """A plain-text table of a summary (one block per split)."""
    blocks = []
    for split, group in summary.groupby("split", sort=False):
        table = pd.DataFrame({
            "prompt": group["prompt"],
            "IoU (slices) ±95% seeds": [format_interval(*v, digits=4) for v in group[["iou", "iou_lo", "iou_hi"]].to_numpy()],
            "IoU (patients) ±95% seeds": [format_interval(*v, digits=4)
                                          for v in group[["iou_patient", "iou_patient_lo", "iou_patient_hi"]].to_numpy()],
            "Dice": group["dice"].map("{:.4f}".format),
            "off target": group["off_target"].map("{:.1%}".format),
            "slices": group["slices"], "patients": group["patients"], "seeds": group["seeds"],
        })
        blocks.append(f"[{split}]\n" + table.to_string(index=False))
    return "\n\n".join(blocks)
