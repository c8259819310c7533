"""Tables of the study's results: the checks of the original report's readings (E1's margin
curve, Table I), paired comparisons of prompts, the off-target centre points, thin boxes, the
multimask pick; and the weight maps behind the Gaussian and bilateral point strategies.

Inputs are the study's rows (one per split, patient, slice, prompt and seed, with a ``model``
column naming the results folder or live model) or summaries (one per model, split and prompt,
:func:`samhw.evaluate.summarize` or :func:`samhw.stats.summarize`); outputs are DataFrames or
numpy arrays. Torch-free (numpy, scipy, pandas, :mod:`samhw.prompts`, :mod:`samhw.stats`) and
imports no view: the notebooks show these tables (:mod:`samhw.notebook` loads the rows), the
report (:mod:`samhw.report`) reads the report's Table I from here; nothing here draws.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
import pandas as pd

from .prompts import PromptSpec, Target, bilateral_log_weights, dominant_color, gaussian_log_weights, normalize_log_weights
from .stats import compare_prompts, format_bounds, format_interval, format_p, summarize, verdict

if TYPE_CHECKING:
    from .data import Dataset

__all__ = [
    "REPORT_E1", "TABLE_I_STRATEGIES", "REPORT_TABLE_I",
    "margin_table", "margin_observation", "thin_boxes", "interval_summary", "prompt_table", "table_one",
    "off_target_table", "paired_difference", "multimask_summary",
    "weight_map", "off_target_slices", "weight_panels", "dominant_colors",
]

#: The report's reading of its figures 4 and 5 (section III).
REPORT_E1 = ("tight boxes (M = 0) give the best IoU; IoU rises as M grows towards 0 from below "
             "and falls as M grows past 0")

#: The report's Table I: IoU of SAM ViT-B with one point, slice-level split (SPEC.md).
TABLE_I_STRATEGIES = ["random_box", "random_mask", "random_gaussian", "center_box", "center_mask",
                      "center_gaussian", "background"]
REPORT_TABLE_I = pd.DataFrame(
    {
        "report test origin": [0.4612, 0.5308, 0.5703, 0.5827, 0.5905, 0.5911, 0.0815],
        "report test finetuned": [0.4773, 0.4841, 0.4795, 0.6309, 0.6302, 0.6313, 0.0753],
        "report train origin": [0.6183, 0.7284, 0.7259, 0.7629, 0.7634, 0.7637, 0.1856],
        "report train finetuned": [0.6560, 0.7614, 0.7623, 0.7766, 0.7750, 0.7751, 0.2386],
    },
    index=pd.Index(TABLE_I_STRATEGIES, name="strategy"),
)


# ----------------------------------------------------------------------------- result tables


def _margin_rows(summary: pd.DataFrame) -> pd.DataFrame:
    boxes = summary[summary["prompt"].str.fullmatch(r"box:-?\d+")].copy()
    boxes["margin"] = boxes["prompt"].str.split(":").str[1].astype(int)
    return boxes.sort_values(["model", "split", "margin"], kind="stable")


def margin_table(summary: pd.DataFrame) -> pd.DataFrame:
    """E1: mean IoU (± 95% interval over seeds) by max margin (rows) for each model and split (columns)."""
    boxes = _margin_rows(summary)
    boxes["cell"] = [format_interval(m, lo, hi) for m, lo, hi in boxes[["iou", "iou_lo", "iou_hi"]].to_numpy()]
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
    return summarize(rows if "model" in rows else rows.assign(model="live"))


def prompt_table(summary: pd.DataFrame, prompts: Sequence[str], level: str = "iou") -> pd.DataFrame:
    """Mean IoU of ``prompts`` (rows), one column per model and split: ``mean ± half-width of the 95%
    interval over seeds [95% interval over patients]`` (the patient interval where the summary has it,
    :func:`interval_summary`); ``level="iou_patient"`` for the per-patient means instead of the per-slice ones."""
    rows = summary[summary["prompt"].isin(prompts)].copy()
    cols = [level, f"{level}_lo", f"{level}_hi"]
    boot = [f"{level}_boot_lo", f"{level}_boot_hi"]
    if set(boot) <= set(rows.columns):
        rows["cell"] = [format_interval(m, lo, hi, bounds=(b_lo, b_hi)) for m, lo, hi, b_lo, b_hi in rows[cols + boot].to_numpy()]
    else:
        rows["cell"] = [format_interval(m, lo, hi) for m, lo, hi in rows[cols].to_numpy()]
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


def multimask_summary(table: pd.DataFrame) -> pd.DataFrame:
    """One line from :func:`multimask_table`: mean IoU of the mask the predicted IoU picks, of the
    best of the three, and of the single-mask output; how often the pick is the best."""
    return pd.DataFrame([{
        "slices": len(table), "IoU picked (best predicted)": round(table["IoU chosen"].mean(), 3),
        "IoU best of 3 (oracle)": round(table["IoU best"].mean(), 3),
        "IoU single output": round(table["IoU single"].mean(), 3),
        "pick is the best": f"{int((table['chosen'] == table['best']).sum())}/{len(table)}",
    }])


# ----------------------------------------------------------------------------- point strategies' weights


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
