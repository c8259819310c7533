"""Interactive segmentation with a SAM model: a per-image session that decodes prompts with an
optional ``mask_input``, and the E5 runner (SPEC E5; the click protocol is in ``samhw.refine``).

A :class:`Session` prepares the image's decoder context once; each decode after that costs the
decoder only. With a ``mask_input`` (the previous output's low-resolution logits, (1, 1, 256, 256))
the prompt encoder's mask embedding replaces the no-mask embedding on the image tokens
(``FastDecoder.with_mask`` adds its share to the per-image tensors, a small fraction of a decode).

E5 writes, into its output folder: ``e5_rows_<split>.csv`` (one row per slice, start, mask_input,
seed and k), ``e5_rows_<split>.json`` (what made them), ``e5_curve.csv`` (mIoU after k clicks),
``e5_noc.csv`` (NoC@80/85/90), ``e5_tables.md`` and the figure ``fig_e5_clicks.png``.
"""
from __future__ import annotations

import csv
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .cache import EmbeddingCache
from .data import DataError, Slice, load_dataset
from .fileio import atomic_write_text
from .metrics import scores_from_counts
from .models import SamModel, load_model, single_thread
from .predictor import Predictor
from .prompts import Prompt, PromptSpec, Target, parse_prompts
from .refine import MAX_CLICKS, curve_table, format_tables, next_click, noc_table

__all__ = ["Decoded", "Session", "E5_STARTS", "E5_ALL_STARTS", "E5_FIELDS", "refine_slice", "trace_refinement", "run_e5",
           "summarize_e5", "read_e5_rows"]

#: First prompts of the default E5 run (the one timed against the 5-minute target).
E5_STARTS = ["center_inside", "box:0", "box:20"]
#: Every first prompt of SPEC E5: the literature's first click, each E2/E3 single point, the two boxes.
E5_ALL_STARTS = ["center_inside", "random_box", "random_mask", "random_gaussian", "center_box", "center_mask",
                 "center_gaussian", "background", "center_box_snapped", "center_mask_snapped",
                 "center_gaussian_snapped", "random_bilateral", "center_bilateral", "center_bilateral_snapped",
                 "box:0", "box:20"]
E5_FIELDS = ["split", "patient", "slice", "start", "mask_input", "seed", "k", "iou", "dice", "pred_iou",
             "area_true", "area_pred", "click_x", "click_y", "click_label", "error_area"]
IOU_DECIMALS = 8


@dataclass(frozen=True)
class Decoded:
    """One decode: ``mask`` (H, W) bool on the slice, SAM's predicted IoU ``score``, and ``low_res``,
    the chosen mask's (1, 1, 256, 256) logits (the next decode's ``mask_input``)."""

    mask: np.ndarray
    score: float
    low_res: torch.Tensor


class Session:
    """One image's decoder state, on a :class:`samhw.predictor.Predictor`: the context is made
    once, every :meth:`decode` reuses it.

    ``embedding``: (1, 256, 64, 64) from the encoder or the cache; ``shape``: the slice's (H, W).
    """

    def __init__(self, model: SamModel, embedding: torch.Tensor, shape: tuple[int, int]):
        self.model = model
        self.shape = tuple(shape)
        self.predictor = Predictor(model)
        self.predictor.set_embedding(embedding, self.shape)

    def decode(self, prompt: Prompt, mask_input: torch.Tensor | None = None, multimask: bool = False) -> Decoded:
        """Decode ``prompt`` (slice pixel coordinates, XY points, XYXY box) with an optional
        ``mask_input`` (1, 1, 256, 256) of logits. With ``multimask`` SAM's three masks are made and
        the one of highest predicted IoU is kept; otherwise the single-mask output."""
        return Decoded(*self.predictor.refine(prompt, mask_input, multimask))


def _row(item: Slice, split: str, start: str, mask_input: bool, seed: int, k: int, decoded: Decoded,
         click=None) -> dict:
    inter = int(np.count_nonzero(decoded.mask & item.mask))
    area_pred, area_true = int(np.count_nonzero(decoded.mask)), int(np.count_nonzero(item.mask))
    iou, dice = scores_from_counts(inter, area_pred, area_true)
    return {"split": split, "patient": item.patient, "slice": item.slice_id, "start": start,
            "mask_input": int(mask_input), "seed": seed, "k": k, "iou": round(iou, IOU_DECIMALS),
            "dice": round(dice, IOU_DECIMALS), "pred_iou": round(decoded.score, 7), "area_true": area_true,
            "area_pred": area_pred, "click_x": "" if click is None else click.x,
            "click_y": "" if click is None else click.y, "click_label": "" if click is None else click.label,
            "error_area": "" if click is None else click.area}


def refine_slice(model: SamModel, embedding: torch.Tensor, item: Slice, specs: Sequence[PromptSpec],
                 seeds: Sequence[int], split: str = "", variants: Sequence[bool] = (True, False),
                 max_clicks: int = MAX_CLICKS) -> list[dict]:
    """E5 rows of one slice: for each start (every seed of a random one) and each ``mask_input``
    variant, the first prompt (k = 0, multimask best by predicted IoU for a lone point, single mask
    for a box) and ``max_clicks`` correction clicks, each added to the earlier ones and decoded as a
    single mask (with the previous low-resolution logits as ``mask_input`` in the ``True`` variant).

    A prediction equal to the truth gets no click; its row is repeated for the remaining k.
    """
    rows = []
    target = Target(item.mask, item.image, item.slice_id)
    with single_thread(model.device):
        session = Session(model, embedding, item.mask.shape)
        for spec in specs:
            for seed in (seeds if spec.random else seeds[:1]):
                first = spec.draw(target, seed)
                start = session.decode(first, None, multimask=spec.multimask)
                for variant in variants:
                    decoded, points, labels = start, list(first.points), list(first.labels)
                    rows.append(_row(item, split, spec.name, variant, seed, 0, decoded))
                    for k in range(1, max_clicks + 1):
                        click = next_click(item.mask, decoded.mask)
                        if click is not None:
                            points.append(click.point)
                            labels.append(click.label)
                            prompt = Prompt(np.array(points, dtype=np.float64), np.array(labels, dtype=np.int64),
                                            first.box)
                            decoded = session.decode(prompt, decoded.low_res if variant else None, multimask=False)
                        rows.append(_row(item, split, spec.name, variant, seed, k, decoded, click))
    return rows


def trace_refinement(model: SamModel, embedding: torch.Tensor, item: Slice, start: str, seed: int = 0,
                     mask_input: bool = True, max_clicks: int = MAX_CLICKS) -> list[dict]:
    """One E5 run on one slice, kept for display: per k the ``prompt`` (every point so far, the box),
    the predicted ``mask``, its ``iou``, SAM's ``pred_iou`` and the ``click`` added (None at k = 0).
    The same decodes as :func:`refine_slice`."""
    spec = PromptSpec.parse(start)
    first = spec.draw(Target(item.mask, item.image, item.slice_id), seed)
    with single_thread(model.device):
        session = Session(model, embedding, item.mask.shape)
        decoded, prompt, click = session.decode(first, None, multimask=spec.multimask), first, None
        steps = []
        for k in range(max_clicks + 1):
            if k:
                click = next_click(item.mask, decoded.mask)
                if click is not None:
                    prompt = Prompt(np.vstack([prompt.points, click.point[None]]), np.append(prompt.labels, click.label),
                                    first.box)
                    decoded = session.decode(prompt, decoded.low_res if mask_input else None, multimask=False)
            inter = int(np.count_nonzero(decoded.mask & item.mask))
            steps.append({"k": k, "prompt": prompt, "mask": decoded.mask, "click": click, "pred_iou": decoded.score,
                          "iou": scores_from_counts(inter, int(decoded.mask.sum()), int(item.mask.sum()))[0]})
    return steps


_WORKER: dict = {}


def _worker_setup(name: str, checkpoint: str | None, plain: bool, onnx_dir: str, cache_root: str,
                  fingerprint: str) -> None:
    torch.set_num_threads(1)
    model = load_model(name, checkpoint, "cpu", plain=plain)
    model.onnx_dir = Path(onnx_dir)
    if model.fingerprint() != fingerprint:
        raise RuntimeError(f"a worker loaded different weights for {name} from {checkpoint}; use workers=1")
    _WORKER.update(model=model, cache=EmbeddingCache(model, cache_root))


def _worker_slice(task) -> list[dict]:
    item, specs, seeds, split, variants, max_clicks = task
    model, cache = _WORKER["model"], _WORKER["cache"]
    return refine_slice(model, cache.get(item.image), item, specs, seeds, split, variants, max_clicks)


def _rows_of(model: SamModel, cache: EmbeddingCache, slices: Sequence[Slice], specs, seeds, split, variants,
             max_clicks, workers: int, progress: bool):
    bar = dict(desc=f"E5 {split}", unit="slice", disable=not progress, total=len(slices))
    tasks = [(item, specs, seeds, split, variants, max_clicks) for item in slices]
    if workers <= 1 or len(slices) <= 1 or model.device.type != "cpu":
        cache.ensure([s.image for s in slices], progress=progress)
        for task in tqdm(tasks, **bar):
            yield refine_slice(model, cache.get(task[0].image), *task)
        return
    model.export_encoder()
    setup = (model.name, model.checkpoint, model.plain, str(model.onnx_dir), str(cache.root), model.fingerprint())
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_setup,
                             initargs=setup) as pool:
        yield from tqdm(pool.map(_worker_slice, tasks), **bar)


def read_e5_rows(path: str | os.PathLike) -> pd.DataFrame:
    """E5 rows as written by :func:`run_e5` (click columns empty at k = 0)."""
    return pd.read_csv(path, keep_default_na=False, na_values={c: [""] for c in ("click_x", "click_y",
                                                                                "click_label", "error_area")})


def run_e5(out: str | os.PathLike, data: str | None = None, splits: Sequence[str] = ("test",),
           model_name: str = "litemedsam", checkpoint: str | None = None, starts: Sequence[str] = tuple(E5_STARTS),
           seeds: int = 1, variants: Sequence[bool] = (True, False), max_clicks: int = MAX_CLICKS,
           device: str = "auto", cache_dir: str | None = None, limit: int | None = None, workers: int | None = None,
           plain: bool = False, progress: bool = True, command: str | None = None,
           compare: str | os.PathLike | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run E5 on ``splits`` and write its files under ``out``; returns (curve, NoC) tables.

    ``compare``: another model's E5 folder (the pretrained one beside a fine-tuned run) whose
    curves are drawn with these in ``fig_e5_clicks_compare.png``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    specs = parse_prompts(list(starts))
    model = load_model(model_name, checkpoint, device, plain=plain, cache_dir=cache_dir)
    cache = EmbeddingCache(model, cache_dir)
    seed_list = list(range(seeds))
    workers = workers or min(os.cpu_count() or 1, 8)
    for split in splits:
        started = time.time()
        dataset = load_dataset(data, split, limit=limit)
        tqdm.write(dataset.report(), file=sys.stderr)
        path = out / f"e5_rows_{split}.csv"
        tmp = path.with_name(path.name + ".part")  # ignored by git until complete
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=E5_FIELDS, lineterminator="\n")
            writer.writeheader()
            for rows in _rows_of(model, cache, dataset.slices, specs, seed_list, split, list(variants), max_clicks,
                                 min(workers, len(dataset)), progress):
                writer.writerows(rows)
        os.replace(tmp, path)
        record = {"command": command, "model": model.name, "checkpoint": model.checkpoint,
                  "weights_sha256": model.fingerprint(), "encoder_backend": model.encoder_backend, "plain": plain,
                  "data": str(dataset.root), "split": split, "slices": len(dataset),
                  "patients": len(dataset.patients), "limit": limit, "starts": [s.name for s in specs],
                  "seeds": seed_list, "mask_input": [bool(v) for v in variants], "max_clicks": max_clicks,
                  "workers": workers, "elapsed_s": round(time.time() - started, 1)}
        atomic_write_text(out / f"e5_rows_{split}.json", json.dumps(record, indent=1) + "\n")
    return summarize_e5(out, compare, max_clicks)


def summarize_e5(out: str | os.PathLike, compare: str | os.PathLike | None = None,
                 max_clicks: int = MAX_CLICKS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """From the ``e5_rows_<split>.csv`` in ``out``: ``e5_curve.csv``, ``e5_noc.csv``, ``e5_tables.md``
    and ``fig_e5_clicks.png`` (and ``fig_e5_clicks_compare.png`` with ``compare``, another E5 folder);
    returns (curve, NoC) tables."""
    from . import plots

    out = Path(out)
    paths = sorted(out.glob("e5_rows_*.csv"))
    if not paths:
        raise DataError(out, "no e5_rows_<split>.csv here: run `python -m samhw refine` first")
    rows = pd.concat([read_e5_rows(p) for p in paths], ignore_index=True)
    curve, noc = curve_table(rows), noc_table(rows, max_clicks)
    curve.to_csv(out / "e5_curve.csv", index=False, float_format="%.6f")
    noc.to_csv(out / "e5_noc.csv", index=False, float_format="%.6f")
    atomic_write_text(out / "e5_tables.md", format_tables(curve, noc))
    label = out.resolve().name
    plots.save(plots.refinement_curves({label: curve}), out / "fig_e5_clicks.png")
    if compare is not None:
        other = pd.read_csv(Path(compare) / "e5_curve.csv")
        plots.save(plots.refinement_curves({Path(compare).resolve().name: other, label: curve}),
                   out / "fig_e5_clicks_compare.png")
    print(format_tables(curve, noc))
    return curve, noc
