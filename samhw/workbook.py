"""What the notebooks under ``notebooks/`` call: where the checkout, the data and the study's
results are; live experiments on a few slices; the tables that compare ours with the report;
the model's parts traced with live tensor shapes.

The notebooks stay thin: a code cell calls one function here, in :mod:`samhw.plots` or in
:mod:`samhw.widgets`, and the logic is tested in ``tests/``. Nothing in the core imports this module.

``python -m samhw.workbook execute`` pairs, executes and saves every notebook (see ``main``).
"""
from __future__ import annotations

import json
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from .data import DataError, Dataset, load_dataset, resolve_data_dir
from .metrics import iou
from .prompts import (
    Prompt,
    PromptSpec,
    Target,
    bilateral_log_weights,
    dominant_color,
    gaussian_log_weights,
    normalize_log_weights,
    parse_prompts,
)
from .report import REPORT_TABLE_I, TABLE_I_STRATEGIES, interval_cell, leak_sentences
from .stats import compare_prompts, format_bounds, format_interval, format_p, verdict

__all__ = [
    "DATA_HELP", "QUICK_STUDY", "FULL_STUDY", "REPORT_TABLE_I", "REPORT_E1", "TABLE_I_STRATEGIES",
    "setup", "repo_root", "find_data", "results_dir", "StudyResults", "load_results", "combined_summary",
    "live_model", "live_slices", "combined_rows", "prompt_table", "multimask_summary", "run_prompts", "live_summary", "full_study",
    "margin_table", "margin_observation", "thin_boxes", "table_one", "off_target_table", "paired_difference",
    "interval_summary", "leak_passage",
    "all_masks", "multimask_table", "weight_map", "off_target_slices",
    "trace", "parameter_table", "vit_b_without_weights", "dataflow_shapes", "interval", "live_rows",
    "encoder_trace", "positional_encoding", "sparse_tokens", "mask_path", "decoder_trace", "embedding_pca",
    "weight_panels", "dominant_colors",
]

#: Where to get the data, shown whenever it cannot be found.
DATA_HELP = """\
The LGG MRI slices were not found. Get them once from Kaggle (dataset mateuszbuda/lgg-mri-segmentation,
free account; licence CC BY-NC-SA 4.0):
  * by hand: download the archive from https://www.kaggle.com/datasets/mateuszbuda/lgg-mri-segmentation,
    unzip it and put its kaggle_3m folder at data/kaggle_3m in this checkout;
  * or with the Kaggle client (in Colab too): upload your kaggle.json API token, then
      pip install kaggle
      mkdir -p ~/.kaggle && cp kaggle.json ~/.kaggle/ && chmod 600 ~/.kaggle/kaggle.json
      kaggle datasets download -d mateuszbuda/lgg-mri-segmentation
      unzip -q lgg-mri-segmentation.zip -d data/lgg
    and point SAMHW_DATA at data/lgg/kaggle_3m (os.environ["SAMHW_DATA"] = "..." in a notebook).
Then run this cell again."""

#: The commands that write the results folders the notebooks read.
QUICK_STUDY = "python -m samhw study --splits train test --limit 8 --seeds 2"
FULL_STUDY = "python -m samhw study --splits train test"

#: The report's reading of its figures 4 and 5 (section III).
REPORT_E1 = ("tight boxes (M = 0) give the best IoU; IoU rises as M grows towards 0 from below "
             "and falls as M grows past 0")


# ----------------------------------------------------------------------------- environment


def setup() -> None:
    """Once per notebook: quiet third-party warnings, figures at 80 dpi (the executed notebooks are
    committed: smaller images), and in Colab the widget manager that ipywidgets 8 needs."""
    import matplotlib

    matplotlib.rcParams["figure.dpi"] = 80
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"timm\..*")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"timm\..*")
    if "google.colab" in sys.modules:
        from google.colab import output  # type: ignore[import-not-found]

        output.enable_custom_widget_manager()


def repo_root() -> Path:
    """The checkout: the folder above the ``samhw`` package if it holds ``pyproject.toml``, else the
    nearest such folder above the working directory, else the working directory."""
    here = Path(__file__).resolve().parents[1]
    cwd = Path.cwd().resolve()
    for candidate in (here, cwd, *cwd.parents):
        if (candidate / "pyproject.toml").is_file() and (candidate / "samhw").is_dir():
            return candidate
    return cwd


def find_data(data: str | os.PathLike | None = None) -> Path:
    """The ``kaggle_3m`` folder: ``data`` if given, else ``$SAMHW_DATA``, else ``data/kaggle_3m`` in
    the checkout, else a ``shared/datasets/lgg/kaggle_3m`` beside a folder above it. Raises
    :class:`DataError` with the download instructions (:data:`DATA_HELP`) if there is none."""
    root = repo_root()
    candidates = [data, os.environ.get("SAMHW_DATA"), root / "data" / "kaggle_3m"]
    candidates += [p / "shared" / "datasets" / "lgg" / "kaggle_3m" for p in root.parents]
    for candidate in candidates:
        if candidate and Path(candidate).expanduser().is_dir():
            return resolve_data_dir(Path(candidate).expanduser())
    raise DataError(data or os.environ.get("SAMHW_DATA") or root / "data" / "kaggle_3m", "no data here.\n" + DATA_HELP)


def results_dir() -> Path:
    return repo_root() / "results"


# ----------------------------------------------------------------------------- committed results


@dataclass
class StudyResults:
    """One folder written by ``python -m samhw study``: its summary, metadata and rows."""

    name: str
    folder: Path
    meta: dict
    summary: pd.DataFrame

    @property
    def splits(self) -> list[str]:
        return list(dict.fromkeys(self.summary["split"]))

    @property
    def command(self) -> str:
        return self.meta.get("command") or "python -m samhw study"

    def rows(self) -> pd.DataFrame:
        """Every (slice, prompt, seed) row of every split, with a ``model`` column."""
        from .evaluate import read_rows

        frames = [read_rows(self.folder / f"rows_{s}.csv") for s in self.splits
                  if (self.folder / f"rows_{s}.csv").is_file()]
        if not frames:  # a folder of summaries only
            return pd.DataFrame(columns=["model"])
        rows = pd.concat(frames, ignore_index=True)
        rows.insert(0, "model", self.name)
        return rows

    def describe(self) -> str:
        try:
            where = self.folder.relative_to(repo_root()).as_posix()
        except ValueError:
            where = self.folder.as_posix()
        splits = "; ".join(f"{s} {v['slices']} slices of {v['patients']} patients, made by "
                           f"`{v.get('command') or self.command}` ({v.get('elapsed_s', self.meta.get('elapsed_s', 0)):.0f} s)"
                           for s, v in self.meta.get("splits", {}).items())
        return f"{where}/: model {self.meta.get('model')}, seeds {self.meta.get('seeds')}, on {self.meta.get('device')}: {splits}"


def _missing(root: Path) -> str:
    return (f"No study results under {root.name}/ yet: the tables and figures below need them. Make them with\n"
            f"    {FULL_STUDY}\n(writes results/litemedsam/; add --limit 8 --seeds 2 for a quick look), then rerun "
            "this notebook. A fine-tuned model's results (results/<name>-finetuned/) come from `python -m samhw "
            "finetune` and then `python -m samhw study --finetuned runs/<name>-finetuned/best.pt`.")


def load_results(folder: str | os.PathLike | None = None, verbose: bool = True) -> list[StudyResults]:
    """Every results folder (``<folder>/<name>/summary.csv``, default ``results/``), the pretrained
    model first. Prints what was found and the command that made it, or how to make it."""
    root = Path(folder) if folder is not None else results_dir()
    found = []
    for summary in sorted(root.glob("*/summary.csv")) if root.is_dir() else []:
        meta_file = summary.with_name("summary.json")
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        table = pd.read_csv(summary)
        table.insert(0, "model", summary.parent.name)
        found.append(StudyResults(summary.parent.name, summary.parent, meta, table))
    found.sort(key=lambda r: (r.name != "litemedsam", r.name))
    if verbose:
        print("\n".join(r.describe() for r in found) if found else _missing(root))
        for r in found:
            if not {"train", "test"} <= set(r.splits):
                missing = " ".join(s for s in ("train", "test") if s not in r.splits)
                print(f"{r.name}: splits {', '.join(r.splits)} only; `python -m samhw study --splits {missing}` "
                      f"adds {missing} to {r.folder.name}/.")
        if found and len(found) == 1:
            print("Only the pretrained model so far: `python -m samhw finetune`, then `python -m samhw study "
                  "--splits test train --finetuned runs/litemedsam-finetuned/best.pt` adds the fine-tuned one.")
    return found


def combined_rows(results: Sequence[StudyResults]) -> pd.DataFrame:
    """The rows of several results folders in one table (``model`` column = folder name)."""
    if not results:
        return pd.DataFrame()
    return pd.concat([r.rows() for r in results], ignore_index=True)


def combined_summary(results: Sequence[StudyResults]) -> pd.DataFrame:
    """The summaries of several results folders in one table (``model`` column = folder name)."""
    if not results:
        return pd.DataFrame()
    return pd.concat([r.summary for r in results], ignore_index=True)


# ----------------------------------------------------------------------------- live computation


def live_model(name: str = "litemedsam", checkpoint: str | None = None, device: str = "auto", cache: str | None = None):
    """``(model, embedding cache)``: the model loaded strictly, the cache at ``cache`` or the default
    (``$SAMHW_CACHE``, else ``~/.cache/samhw``)."""
    from .cache import EmbeddingCache
    from .models import load_model

    setup()
    model = load_model(name, checkpoint, device)
    return model, EmbeddingCache(model, cache)


def live_slices(split: str = "test", n: int | None = 6, data: str | None = None) -> Dataset:
    """``n`` tumor slices of ``split`` spread evenly over its patients (all of them if ``n`` is None)."""
    return load_dataset(find_data(data), split, limit=n)


def run_prompts(model, cache, dataset: Dataset, prompts: Sequence[str], seeds: Sequence[int]) -> pd.DataFrame:
    """Rows like the study's (one per slice, prompt and seed) for a few slices, computed here with
    the study's own :func:`samhw.evaluate.evaluate_slice`, quietly (no progress bars or cache
    messages, so that the notebooks' outputs stay reproducible)."""
    from .evaluate import evaluate_slice, plan

    pairs = plan(parse_prompts(list(prompts)), list(seeds))
    rows = [row for item in dataset.slices
            for row in evaluate_slice(model, cache.get(item.image), item, pairs, dataset.split)]
    return pd.DataFrame(rows)


def live_rows(model, cache, datasets: dict[str, Dataset], prompts: Sequence[str], seeds: Sequence[int],
              label: str = "live") -> pd.DataFrame:
    """:func:`run_prompts` on each split's slices, in one table with a ``model`` column (``label``)."""
    rows = pd.concat([run_prompts(model, cache, ds, prompts, seeds) for ds in datasets.values()], ignore_index=True)
    rows.insert(0, "model", label)
    return rows


def live_summary(rows: pd.DataFrame, model: str = "live") -> pd.DataFrame:
    """The study's summary of live rows, with a ``model`` column (the rows' own, else ``model``),
    each model summarised on its own."""
    from .evaluate import summarize

    if "model" not in rows:
        rows = rows.assign(model=model)
    parts = []
    for name, group in rows.groupby("model", sort=False):
        summary = summarize(group.drop(columns="model"))
        summary.insert(0, "model", name)
        parts.append(summary)
    return pd.concat(parts, ignore_index=True)


def full_study(model: str = "litemedsam", checkpoint: str | None = None, experiments: Sequence[str] = ("E1", "E2", "E3"),
               seeds: int = 3, out: str | os.PathLike | None = None, limit: int | None = None) -> list[StudyResults]:
    """The notebooks' ``FULL = True`` path: run the study here on every slice of train and test
    (hours on a CPU, minutes on a GPU; ``limit`` slices per split for a try) into
    ``runs/notebook/<model>`` (for a checkpoint, its folder's name, e.g. ``litemedsam-finetuned``,
    prefixed with the model's where it lacks it) and load it like committed results."""
    from .study import StudyConfig, run_study

    name = model
    if checkpoint is not None:
        folder = Path(checkpoint).resolve().parent.name
        name = folder if folder.startswith(model) else f"{model}-{folder}"
    out = Path(out) if out is not None else repo_root() / "runs" / "notebook" / name
    run_study(StudyConfig(out, data=str(find_data()), splits=("train", "test"), model=model, checkpoint=checkpoint,
                          seeds=seeds, experiments=experiments, limit=limit,
                          command=f"samhw.workbook.full_study({model!r}, {checkpoint!r}, experiments={list(experiments)}, "
                                  f"seeds={seeds}, limit={limit})"))
    return [r for r in load_results(out.parent, verbose=True) if r.name == out.name]


# ----------------------------------------------------------------------------- tables


#: ``mean ± half-width`` of a 95% interval (the package's one formatter, :func:`samhw.stats.format_interval`).
interval = format_interval


def _margin_rows(summary: pd.DataFrame) -> pd.DataFrame:
    boxes = summary[summary["prompt"].str.fullmatch(r"box:-?\d+")].copy()
    boxes["margin"] = boxes["prompt"].str.split(":").str[1].astype(int)
    return boxes.sort_values(["model", "split", "margin"], kind="stable")


def margin_table(summary: pd.DataFrame) -> pd.DataFrame:
    """E1: mean IoU (± 95% interval over seeds) by max margin (rows) for each model and split (columns)."""
    boxes = _margin_rows(summary)
    boxes["cell"] = [interval(m, lo, hi) for m, lo, hi in boxes[["iou", "iou_lo", "iou_hi"]].to_numpy()]
    table = boxes.pivot_table(index="margin", columns=["model", "split"], values="cell", aggfunc="first", sort=False)
    return table.sort_index()


def margin_observation(summary: pd.DataFrame) -> pd.DataFrame:
    """The report's reading of E1 checked on each model and split: where IoU peaks, and whether it
    rises at every step from M = -20 to 0 and falls at every step from 0 to 40 (slice-level means)."""
    out = []
    for (model, split), group in _margin_rows(summary).groupby(["model", "split"], sort=False):
        curve = group.set_index("margin")["iou"]
        below, above = curve[curve.index <= 0], curve[curve.index >= 0]
        rises, falls = np.diff(below.to_numpy()) > 0, np.diff(above.to_numpy()) < 0
        best = int(curve.idxmax())
        holds = best == 0 and rises.all() and falls.all()
        out.append({"model": model, "split": split, "best margin": best,
                    "IoU at best": round(float(curve.max()), 3), "IoU at M=0": round(float(curve.get(0, np.nan)), 3),
                    "rising steps below 0": f"{rises.sum()}/{rises.size}",
                    "falling steps above 0": f"{falls.sum()}/{falls.size}",
                    "report's observation": "holds" if holds else ("peak at 0, not monotone" if best == 0 else
                                                                   f"does not hold (peak at M={best})")})
    return pd.DataFrame(out)


def thin_boxes(rows: pd.DataFrame) -> pd.DataFrame:
    """E1's boxes of margin <= 0 that are one pixel thin: with inclusive pixel indices a box
    ``[x0, y0, x1, y1]`` with ``x0 == x1`` or ``y0 == y1`` keeps a row or column of pixels (SPEC: never
    collapse), but as SAM reads its two corners it has no width or no height. Per model, split and
    margin: how many, and the mean IoU of those boxes and of the others."""
    out = []
    boxes = rows[rows["prompt"].str.fullmatch(r"box:(-\d+|0)")]
    for (model, split, prompt), group in boxes.groupby(["model", "split", "prompt"], sort=False):
        corners = np.array([[int(v) for v in box.split()] for box in group["box"]])
        thin = (corners[:, 0] == corners[:, 2]) | (corners[:, 1] == corners[:, 3])
        ious = group["iou"].to_numpy()
        out.append({"model": model, "split": split, "prompt": prompt,
                    "one pixel thin": f"{thin.sum()} of {len(group)} boxes", "share": round(float(thin.mean()), 3),
                    "IoU, thin boxes": round(float(ious[thin].mean()), 3) if thin.any() else np.nan,
                    "IoU, the others": round(float(ious[~thin].mean()), 3) if (~thin).any() else np.nan})
    return pd.DataFrame(out)


def interval_summary(rows: pd.DataFrame) -> pd.DataFrame:
    """The study's summary of ``rows`` (committed or live) per model, split and prompt, with both
    intervals of each mean: over prompt seeds (``iou_lo``, ``iou_hi``) and over patients (bootstrap,
    ``iou_boot_lo``, ``iou_boot_hi``; the same for ``iou_patient``), :func:`samhw.stats.summarize`."""
    from .stats import summarize

    return summarize(rows if "model" in rows else rows.assign(model="live"))


def prompt_table(summary: pd.DataFrame, prompts: Sequence[str], level: str = "iou") -> pd.DataFrame:
    """Mean IoU of ``prompts`` (rows), one column per model and split: ``mean ± half-width of the 95%
    interval over seeds [95% interval over patients]`` (the patient interval where the summary has it,
    :func:`interval_summary`); ``level="iou_patient"`` for the per-patient means instead of the per-slice ones."""
    rows = summary[summary["prompt"].isin(prompts)].copy()
    cols = [level, f"{level}_lo", f"{level}_hi"]
    boot = [f"{level}_boot_lo", f"{level}_boot_hi"]
    if set(boot) <= set(rows.columns):
        rows["cell"] = [interval_cell(*v) for v in rows[cols + boot].to_numpy()]
    else:
        rows["cell"] = [interval(m, lo, hi) for m, lo, hi in rows[cols].to_numpy()]
    rows["column"] = rows["model"] + " " + rows["split"]
    table = rows.pivot_table(index="prompt", columns="column", values="cell", aggfunc="first", sort=False)
    table = table.reindex([p for p in prompts if p in set(rows["prompt"])])
    table.columns.name = None
    return table


def table_one(summary: pd.DataFrame, with_report: bool = True) -> pd.DataFrame:
    """Table I's counterpart: IoU of the seven one-point strategies (mask: the best of three by
    predicted IoU), one column per model and split, each ``mean ± seeds [patients]`` as in
    :func:`prompt_table`, the report's SAM ViT-B numbers beside them."""
    table = prompt_table(summary, TABLE_I_STRATEGIES)
    table.index.name = "strategy"
    if with_report:
        table = table.join(REPORT_TABLE_I.map(lambda v: f"{v:.4f}"))
    return table


def off_target_table(rows: pd.DataFrame, strategies: Iterable[str] = ("center_box", "center_mask", "center_gaussian",
                                                                      "center_bilateral")) -> pd.DataFrame:
    """How often each centre strategy's point falls outside the mask, and the IoU with the point as
    drawn against the point snapped to the nearest mask pixel (``<name>_snapped``)."""
    out = []
    for (model, split), group in rows.groupby(["model", "split"], sort=False):
        by_prompt = dict(list(group.groupby("prompt")))
        for name in strategies:
            if name not in by_prompt:
                continue
            plain = by_prompt[name]
            snapped = by_prompt.get(f"{name}_snapped")
            outside = plain[plain["off_target"] > 0]
            out.append({"model": model, "split": split, "strategy": name,
                        "outside the mask": f"{len(outside)} of {plain['slice'].nunique()} slices",
                        "share": round(len(outside) / max(len(plain), 1), 3),
                        "IoU as drawn": round(plain["iou"].mean(), 3),
                        "IoU snapped": round(snapped["iou"].mean(), 3) if snapped is not None else np.nan,
                        "IoU as drawn, outside slices only": round(outside["iou"].mean(), 3) if len(outside) else np.nan,
                        "IoU snapped, outside slices only": round(
                            snapped[snapped["slice"].isin(outside["slice"])]["iou"].mean(), 3)
                        if snapped is not None and len(outside) else np.nan})
    return pd.DataFrame(out)


def paired_difference(rows: pd.DataFrame, pairs: Sequence[tuple[str, str]]) -> pd.DataFrame:
    """IoU of prompt ``a`` against prompt ``b`` on the same slices, per model and split, paired per
    patient (:func:`samhw.stats.compare_prompts`): each prompt averaged over its seeds on each slice,
    each patient's mean over its slices; ``IoU a``, ``IoU b`` and ``a - b`` are means over patients
    (so they subtract), the 95% interval is a bootstrap over patients, the p-value Wilcoxon's
    signed-rank over patients. The verdict names a side only where the interval excludes 0 and p < 0.05.
    """
    out = []
    for (model, split), group in rows.groupby(["model", "split"], sort=False):
        for a, b in pairs:
            left, right = group[group["prompt"] == a], group[group["prompt"] == b]
            if left.empty or right.empty:
                continue
            c = compare_prompts(left, right)
            out.append({"model": model, "split": split, "a": a, "b": b, "IoU a": round(c.mean_a, 4),
                        "IoU b": round(c.mean_b, 4), "a - b": round(c.diff, 4),
                        "95% interval (patients)": format_bounds(c.lo, c.hi, 4, signed=True),
                        "Wilcoxon p": format_p(c.p).removeprefix("p="), "patients": c.patients,
                        "patients a > b": f"{c.a_wins}/{c.patients}",
                        "verdict": verdict(c, f"{a} higher", f"{b} higher")})
    return pd.DataFrame(out)


def leak_passage(rows: pd.DataFrame, split: str = "test") -> str:
    """E6 in words for rows of one or more models (``model`` column, the pretrained model first):
    :func:`samhw.report.leak_sentences`; "not run" while a model has no ``background_far`` rows."""
    models = {m: m for m in dict.fromkeys(rows["model"])} if len(rows) else {}
    if not models:
        return "E6: no results loaded."
    return leak_sentences(rows, split, models)


# ----------------------------------------------------------------------------- masks, points, weights


def all_masks(model, embedding, prompt: Prompt, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """All four of SAM's outputs for one prompt: masks (4, H, W) bool and predicted IoU (4,).

    Output 0 is the single-mask answer (``multimask_output=False``), outputs 1-3 the multimask set
    that :meth:`samhw.Predictor.predict_prompts` chooses from (SAM's own decoder, ``plain``).
    """
    from .predictor import Predictor

    predictor = Predictor(model, decoder="plain")
    predictor.set_embedding(embedding, shape)
    single, single_iou, _ = predictor.predict_prompt(prompt, multimask_output=False)
    multi, multi_iou, _ = predictor.predict_prompt(prompt, multimask_output=True)
    return np.concatenate([single, multi]), np.concatenate([single_iou, multi_iou])


def multimask_table(model, cache, dataset: Dataset, prompt: str = "center_gaussian", seed: int = 0) -> pd.DataFrame:
    """For one point prompt on each slice: the IoU of the three multimask outputs and of the single
    output, which one the predicted IoU picks, and the best one (an oracle that knows the truth)."""
    spec = PromptSpec.parse(prompt)
    out = []
    for item in dataset.slices:
        drawn = spec.draw(Target(item.mask, item.image, item.slice_id), seed)
        masks, scores = all_masks(model, cache.get(item.image), drawn, item.mask.shape)
        ious = np.array([iou(m, item.mask) for m in masks])
        chosen = 1 + int(np.argmax(scores[1:]))
        oracle = 1 + int(np.argmax(ious[1:]))
        out.append({"slice": item.slice_id, "area": int(item.mask.sum()),
                    **{f"IoU {k}": round(ious[k], 3) for k in (1, 2, 3)},
                    **{f"pred {k}": round(float(scores[k]), 3) for k in (1, 2, 3)},
                    "chosen": chosen, "best": oracle, "IoU chosen": round(ious[chosen], 3),
                    "IoU best": round(ious[oracle], 3), "IoU single": round(ious[0], 3)})
    return pd.DataFrame(out)


def multimask_summary(table: pd.DataFrame) -> pd.DataFrame:
    """One line from :func:`multimask_table`: mean IoU of the mask the predicted IoU picks, of the
    best of the three, and of the single-mask output; how often the pick is the best."""
    return pd.DataFrame([{
        "slices": len(table), "IoU picked (best predicted)": round(table["IoU chosen"].mean(), 3),
        "IoU best of 3 (oracle)": round(table["IoU best"].mean(), 3),
        "IoU single output": round(table["IoU single"].mean(), 3),
        "pick is the best": f"{int((table['chosen'] == table['best']).sum())}/{len(table)}",
    }])


def weight_map(target: Target, method: str = "gaussian", sigma: float = 100.0, sigma_s: float = 100.0,
               sigma_r: float = 40.0, bin_width: int = 16) -> np.ndarray:
    """(H, W) probabilities the ``random_<method>`` strategy draws mask pixels with (NaN off the
    mask); ``center_<method>`` is their weighted mean. Uses the same functions as the strategies."""
    if method == "gaussian":
        log_w = gaussian_log_weights(target.coords, target.center, sigma)
    elif method == "bilateral":
        colors = target.colors()
        log_w = bilateral_log_weights(target.coords, colors, target.center, dominant_color(colors, bin_width),
                                      sigma_s, sigma_r)
    else:
        raise ValueError(f"method must be gaussian or bilateral, got {method!r}")
    out = np.full(target.shape, np.nan)
    out[target.coords[:, 1], target.coords[:, 0]] = normalize_log_weights(log_w)
    return out


def off_target_slices(dataset: Dataset, strategy: str = "center_box") -> list:
    """The slices where a deterministic centre strategy's point lies off the mask, farthest first
    (by the distance from the point to the nearest mask pixel)."""
    spec = PromptSpec.parse(strategy)
    found = []
    for item in dataset.slices:
        target = Target(item.mask, item.image, item.slice_id)
        prompt = spec.draw(target, 0)
        if prompt.off_target:
            point = prompt.points[0]
            found.append((-float(np.linalg.norm(target.snap(point) - point)), item.slice_id, item))
    return [item for *_, item in sorted(found, key=lambda f: f[:2])]


def weight_panels(slices: Sequence, sigma: float = 100.0, sigma_s: float = 100.0, sigma_r: float = 40.0,
                  draws: int = 20) -> list[list[dict]]:
    """For :func:`samhw.plots.weight_grid`: per slice, the slice with its outline, then the Gaussian
    and the bilateral weight maps, each with its centre point (star) and ``draws`` random draws
    (seeds 0..draws-1, dots) of the matching ``random_`` strategy."""
    panels = []
    params = {"gaussian": f"sigma={sigma:g}", "bilateral": f"sigma_s={sigma_s:g},sigma_r={sigma_r:g}"}
    for item in slices:
        target = Target(item.mask, item.image, item.slice_id)
        row = [{"image": item.image, "truth": item.mask, "weights": None, "title": item.slice_id.replace("TCGA_", "")}]
        for method in ("gaussian", "bilateral"):
            center = PromptSpec.parse(f"center_{method}:{params[method]}").draw(target, 0).points[0]
            random_spec = PromptSpec.parse(f"random_{method}:{params[method]}")
            dots = [random_spec.draw(target, seed).points[0] for seed in range(draws)]
            row.append({"image": item.image, "weights": weight_map(target, method, sigma, sigma_s, sigma_r),
                        "point": center, "center": target.center, "points": dots,
                        "title": f"{method}\n({params[method]})"})
        panels.append(row)
    return panels


def dominant_colors(slices: Sequence, bin_width: int = 16) -> pd.DataFrame:
    """The bilateral reference colour M of each slice (mode of the mask's quantised colours) against
    the mask's mean colour, and the share of mask pixels in M's histogram bin."""
    out = []
    for item in slices:
        target = Target(item.mask, item.image, item.slice_id)
        colors = target.colors()
        mode = dominant_color(colors, bin_width)
        in_bin = np.all(colors.astype(int) // bin_width == mode.astype(int) // bin_width, axis=1)
        out.append({"slice": item.slice_id, "mask pixels": len(colors),
                    "M (pre, FLAIR, post)": " ".join(f"{v:.0f}" for v in mode),
                    "mean colour": " ".join(f"{v:.0f}" for v in colors.mean(axis=0)),
                    "share in M's bin": round(float(in_bin.mean()), 3)})
    return pd.DataFrame(out)


# ----------------------------------------------------------------------------- architecture


def _shape(value) -> str:
    import torch

    if isinstance(value, torch.Tensor):
        return "x".join(str(d) for d in value.shape)
    if isinstance(value, (tuple, list)):
        shapes = [_shape(v) for v in value]
        return ", ".join(s for s in shapes if s)
    return ""


def trace(module, run: Callable[[], object], names: Sequence[str], notes: dict[str, str] | None = None) -> pd.DataFrame:
    """Run ``run()`` with forward hooks on ``module``'s submodules ``names`` and tabulate, in call
    order, each call's input and output shapes, the submodule's type and parameter count."""
    import torch

    notes = notes or {}
    calls: list[dict] = []
    handles = []
    modules = dict(module.named_modules())
    for name in names:
        sub = modules[name]

        def hook(mod, args, kwargs, output, name=name):
            inputs = [_shape(a) for a in args] + [_shape(v) for v in kwargs.values()]
            calls.append({"module": name, "type": type(mod).__name__, "input": " | ".join(s for s in inputs if s),
                          "output": _shape(output), "parameters": sum(p.numel() for p in mod.parameters()),
                          "what it does": notes.get(name, "")})

        handles.append(sub.register_forward_hook(hook, with_kwargs=True))
    try:
        with torch.inference_mode():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return pd.DataFrame(calls)


def parameter_table(models: dict) -> pd.DataFrame:
    """Parameters of the image encoder, prompt encoder and mask decoder of each model (millions)."""
    parts = ["image_encoder", "prompt_encoder", "mask_decoder"]
    out = {}
    for label, model in models.items():
        counts = {p: sum(t.numel() for t in getattr(model, p).parameters()) for p in parts}
        counts["total"] = sum(counts.values())
        out[label] = counts
    return pd.DataFrame(out).map(lambda n: f"{n / 1e6:.3f} M")


def vit_b_without_weights(meta: bool = True):
    """SAM ViT-B without its trained weights. On PyTorch's ``meta`` device (default) the modules and
    shapes are real but there are no numbers, so a forward pass only propagates shapes and costs
    nothing; with ``meta=False`` it is built on the CPU with random weights (seed 0) and computes."""
    import torch

    from .models import build_model

    if not meta:
        torch.manual_seed(0)
        return build_model("vit_b")
    with torch.device("meta"):
        return build_model("vit_b")


def dataflow_shapes(model, image: np.ndarray, prompt: Prompt, embedding=None) -> dict[str, str]:
    """The shapes along SAM's data flow for one slice and prompt, measured with hooks while a
    :class:`samhw.Predictor` (SAM's own decoder) predicts (the image encoder runs unless the
    slice's ``embedding`` is given, e.g. from the cache)."""
    import torch

    from .predictor import Predictor

    shapes: dict[str, str] = {}
    x = model.preprocess([image])
    shapes["image"] = "x".join(str(d) for d in image.shape)
    shapes["input"] = _shape(x)
    with torch.inference_mode():
        embedding = model.image_encoder(x) if embedding is None else embedding.to(model.device)
    shapes["embedding"] = _shape(embedding)
    predictor = Predictor(model, decoder="plain")
    predictor.set_embedding(embedding, image.shape[:2])
    seen = trace(model, lambda: predictor.predict_prompt(prompt, multimask_output=True),
                 ["prompt_encoder", "mask_decoder.transformer", "mask_decoder.output_upscaling",
                  "mask_decoder.output_hypernetworks_mlps.0", "mask_decoder.iou_prediction_head"])
    by = dict(zip(seen["module"], seen["output"]))
    shapes["sparse"], shapes["dense"] = by["prompt_encoder"].split(", ")
    shapes["pe"] = _shape(model.prompt_encoder.get_dense_pe())
    shapes["tokens"] = seen.set_index("module").loc["mask_decoder.transformer", "input"].split(" | ")[-1]
    shapes["transformer"] = by["mask_decoder.transformer"]
    shapes["upscaled"] = by["mask_decoder.output_upscaling"]
    shapes["hyper"] = by["mask_decoder.output_hypernetworks_mlps.0"]
    shapes["iou"] = by["mask_decoder.iou_prediction_head"]
    # SAM's decoder makes one mask per IoU output (hypernetwork weights . upscaled features), before
    # the predictor keeps masks 1-3 (multimask) or mask 0.
    batch, n_masks = shapes["iou"].split("x")
    shapes["masks"] = "x".join([batch, n_masks, *shapes["upscaled"].split("x")[-2:]])
    shapes["output"] = f"{image.shape[0]}x{image.shape[1]}"
    return shapes


def _conv_note(conv) -> str:
    k = "x".join(str(v) for v in conv.kernel_size)
    return f"{k} conv, {conv.in_channels} -> {conv.out_channels} channels, stride {conv.stride[0]}"


def encoder_trace(model, image: np.ndarray | None = None) -> pd.DataFrame:
    """The image encoder's stages with live shapes: SAM's ViT (patch embedding, 12-32 transformer
    blocks, the neck) or LiteMedSAM's TinyViT (patch embedding, four stages, the same neck).
    A model on the ``meta`` device (:func:`vit_b_without_weights`) gets a shape-only input."""
    import torch

    enc = model.image_encoder
    size = model.input_size
    if model.device.type == "meta":
        x = torch.empty(1, 3, size, size, device="meta")
    else:
        x = model.preprocess([image])
    notes = {"patch_embed": "patches -> tokens" if hasattr(enc, "blocks") else "two stride-2 convs: 1/4 resolution"}
    names = ["patch_embed"]
    if hasattr(enc, "blocks"):  # SAM ViT
        for i, block in enumerate(enc.blocks):
            names.append(f"blocks.{i}")
            notes[f"blocks.{i}"] = (f"attention in {block.window_size}x{block.window_size} windows" if block.window_size
                                    else "global attention over all 64x64 tokens")
    else:  # TinyViT
        for i, layer in enumerate(enc.layers):
            names.append(f"layers.{i}")
            kinds = sorted({type(b).__name__ for b in layer.blocks})
            down = "" if getattr(layer, "downsample", None) is None else " + patch merging"
            notes[f"layers.{i}"] = f"{len(layer.blocks)} x {'/'.join(kinds)}{down}"
    for i, part in enumerate(enc.neck):
        names.append(f"neck.{i}")
        notes[f"neck.{i}"] = _conv_note(part) if hasattr(part, "kernel_size") else "LayerNorm over channels"
    return trace(enc, lambda: enc(x), names, notes)


def positional_encoding(model) -> tuple[np.ndarray, np.ndarray]:
    """The prompt encoder's random Fourier features: the (2, C/2) Gaussian frequency matrix and the
    (C, 64, 64) encoding of the embedding grid's cell centres (``get_dense_pe``)."""
    import torch

    with torch.inference_mode():
        pe = model.prompt_encoder.pe_layer
        return (pe.positional_encoding_gaussian_matrix.cpu().numpy(),
                model.prompt_encoder.get_dense_pe()[0].cpu().numpy())


def sparse_tokens(model, target: Target, point: str = "center_mask") -> pd.DataFrame:
    """How points and boxes become tokens: for one point and for the tight box, each token's shape
    and the check that it equals the positional encoding of its (pixel-centred, normalised)
    coordinates plus the learned embedding of its kind (max abs difference ~1e-7)."""
    import torch

    enc = model.prompt_encoder
    kinds = {-1: "padding ('not a point')", 0: "background point", 1: "foreground point", 2: "box top-left corner",
             3: "box bottom-right corner"}
    out = []
    with torch.inference_mode():
        for name in (point, "box:0"):
            prompt = PromptSpec.parse(name).draw(target, 0)
            points, boxes = model.prompt_tensors([prompt], target.shape)
            sparse, _ = enc(points=points, boxes=boxes, masks=None)
            if boxes is None:  # a point alone is followed by a padding token
                coords = torch.cat([points[0], torch.zeros(1, 1, 2, device=points[0].device)], dim=1)
                labels = [int(v) for v in points[1][0]] + [-1]
            else:
                coords, labels = boxes.reshape(1, 2, 2), [2, 3]
            pe = enc.pe_layer.forward_with_coords(coords + 0.5, enc.input_image_size)[0]
            for k, label in enumerate(labels):
                learned = enc.not_a_point_embed.weight[0] if label == -1 else enc.point_embeddings[label].weight[0]
                expected = (learned if label == -1 else pe[k] + learned)
                out.append({"prompt": name, "token": k, "kind": kinds[label],
                            "at (model frame)": "" if label == -1 else ", ".join(f"{v:.0f}" for v in coords[0, k].tolist()),
                            "sparse shape": _shape(sparse), "= PE + learned embedding":
                                bool(torch.allclose(sparse[0, k], expected, atol=1e-5))})
    return pd.DataFrame(out)


def mask_path(model, mask: np.ndarray) -> tuple[pd.DataFrame, np.ndarray, bool]:
    """The dense path: a mask prompt at 4x the embedding's resolution through ``mask_downscaling``
    (table of live shapes), its (256, 64, 64) output, and whether the prompt encoder's dense output
    without a mask is the learned no-mask embedding broadcast over the grid."""
    import torch

    enc = model.prompt_encoder
    x = torch.as_tensor(np.asarray(mask, dtype=np.float32)[None, None], device=model.device)
    x = torch.nn.functional.interpolate(x, enc.mask_input_size, mode="bilinear", align_corners=False)
    notes = {f"mask_downscaling.{i}": (_conv_note(m) if hasattr(m, "kernel_size") else type(m).__name__)
             for i, m in enumerate(enc.mask_downscaling)}
    out: dict = {}
    table = trace(enc, lambda: out.setdefault("dense", enc.mask_downscaling(x)), list(notes), notes)
    with torch.inference_mode():
        _, dense = enc(points=None, boxes=None, masks=None)
        no_mask = bool(torch.equal(dense[0], enc.no_mask_embed.weight[0][:, None, None].expand_as(dense[0])))
    return table, out["dense"][0].cpu().numpy(), no_mask


DECODER_NOTES = {
    "self_attn": "step 1: self-attention among the tokens",
    "cross_attn_token_to_image": "step 2: tokens (queries) attend to the image embedding",
    "mlp": "step 3: MLP on each token",
    "cross_attn_image_to_token": "step 4: image embedding (queries) attends to the tokens",
    "final_attn_token_to_image": "last token -> image attention",
    "output_upscaling.0": "transposed conv: 64 -> 128 px",
    "output_upscaling.3": "transposed conv: 128 -> 256 px",
    "iou_prediction_head": "IoU head: IoU token -> quality of each of the 4 masks",
}


def decoder_trace(model, embedding, prompt: Prompt, shape: tuple[int, int]) -> pd.DataFrame:
    """The mask decoder's steps with live shapes for one prompt (a :class:`samhw.Predictor` with
    SAM's own decoder predicts it): the two-way transformer's two blocks of four steps, the final
    attention, upscaling, the hypernetwork MLPs and the IoU head."""
    from .predictor import Predictor

    dec = model.mask_decoder
    names, notes = [], {}
    for i, _ in enumerate(dec.transformer.layers):
        for step in ("self_attn", "cross_attn_token_to_image", "mlp", "cross_attn_image_to_token"):
            names.append(f"transformer.layers.{i}.{step}")
            notes[names[-1]] = f"block {i + 1}, {DECODER_NOTES[step]}"
    names += ["transformer.final_attn_token_to_image", "output_upscaling.0", "output_upscaling.3"]
    notes["transformer.final_attn_token_to_image"] = DECODER_NOTES["final_attn_token_to_image"]
    notes["output_upscaling.0"], notes["output_upscaling.3"] = DECODER_NOTES["output_upscaling.0"], DECODER_NOTES["output_upscaling.3"]
    for k in range(len(dec.output_hypernetworks_mlps)):
        names.append(f"output_hypernetworks_mlps.{k}")
        notes[names[-1]] = f"hypernetwork MLP: mask token {k} -> 32 weights; mask {k} = weights . upscaled features"
    names.append("iou_prediction_head")
    notes["iou_prediction_head"] = DECODER_NOTES["iou_prediction_head"]
    predictor = Predictor(model, decoder="plain")
    predictor.set_embedding(embedding, shape)
    return trace(dec, lambda: predictor.predict_prompt(prompt, multimask_output=True), names, notes)


def embedding_pca(embedding) -> np.ndarray:
    """The (64, 64, 3) first three principal components of a (1, 256, 64, 64) embedding, scaled to
    [0, 1]: a picture of what the encoder hands the decoder."""
    e = np.asarray(embedding.detach().cpu().float().numpy())[0].reshape(embedding.shape[1], -1).T
    e = e - e.mean(axis=0)
    _, _, vt = np.linalg.svd(e, full_matrices=False)
    pcs = e @ vt[:3].T
    pcs = (pcs - pcs.min(axis=0)) / np.ptp(pcs, axis=0).clip(min=1e-12)
    return pcs.reshape(embedding.shape[2], embedding.shape[3], 3)


# ----------------------------------------------------------------------------- executing the notebooks


def main(argv: list[str] | None = None) -> int:
    """``python -m samhw.workbook execute [notebooks/NAME.py ...]``: for each notebook (default: all
    of ``notebooks/[0-9]*.py``) update the ``.ipynb`` from its ``.py`` (``jupytext --sync``), run it
    top to bottom in a fresh kernel whose working directory is ``notebooks/``, and save it with its
    outputs: the executed notebooks that ``pytest --nbval notebooks/`` checks."""
    import argparse
    import subprocess

    parser = argparse.ArgumentParser(prog="python -m samhw.workbook")
    parser.add_argument("command", choices=["execute"])
    parser.add_argument("notebooks", nargs="*", help="notebooks/*.py sources (default: all)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell (default 1800)")
    args = parser.parse_args(argv)
    import nbformat
    from nbclient import NotebookClient

    sources = [Path(p).resolve().with_suffix(".py") for p in args.notebooks] or sorted((repo_root() / "notebooks").glob("[0-9]*.py"))
    for source in sources:
        started = time.time()
        subprocess.run([sys.executable, "-m", "jupytext", "--sync", "--quiet", str(source)], check=True)
        target = source.with_suffix(".ipynb")
        notebook = nbformat.read(target, as_version=4)
        notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
        NotebookClient(notebook, timeout=args.timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(source.parent.resolve())}}).execute()
        nbformat.write(notebook, target)
        print(f"executed {target} in {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
