"""E5, interactive refinement: the correction-click protocol, NoC and the tables. numpy, scipy, pandas.

Protocol (SPEC E5, the interactive segmentation literature's: Xu et al. 2016, RITM, SAM):
after a first prompt, each correction click is computed from the truth and the current
prediction alone. Error regions FN = truth & ~pred and FP = pred & ~truth; the larger by pixel
count is corrected (an equal count goes to FN); the click is the pixel of that region farthest
from the region's own boundary, the image border counting as boundary (:func:`farthest_pixel`),
labelled 1 in FN and 0 in FP. No randomness: the same prediction gives the same click.

Counting: ``k`` is the number of correction clicks after the first prompt, 0..``MAX_CLICKS``
(k = 0 is the first prompt alone; for a point start, k + 1 points in all). NoC@t is the least
k whose IoU reaches t, ``MAX_CLICKS`` when none does (the literature's convention).

Coordinates: points are ``(x, y)`` = (column, row) pixel indices of the slice, as in
``samhw.prompts``. This module imports neither torch nor any view.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

__all__ = [
    "MAX_CLICKS",
    "NOC_THRESHOLDS",
    "BOOTSTRAP_RESAMPLES",
    "Click",
    "farthest_pixel",
    "next_click",
    "clicks_to_reach",
    "bootstrap_patients",
    "noc_table",
    "curve_table",
    "summary_table",
    "format_tables",
]

#: Correction clicks after the first prompt.
MAX_CLICKS = 20
#: IoU targets of NoC@80, NoC@85, NoC@90.
NOC_THRESHOLDS = (0.80, 0.85, 0.90)
#: Patient-level percentile bootstrap: resamples and seed (SPEC, Intervals).
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class Click:
    """A correction click: pixel ``(x, y)`` (column, row), ``label`` 1 (add: in FN) or 0 (remove: in FP),
    and the pixel count of the error region it corrects."""

    x: int
    y: int
    label: int
    area: int

    @property
    def point(self) -> np.ndarray:
        """``(x, y)`` as float64, the prompt convention."""
        return np.array([self.x, self.y], dtype=np.float64)


def farthest_pixel(region: np.ndarray) -> tuple[int, int]:
    """``(x, y)`` of the pixel of a non-empty (H, W) boolean region farthest (Euclidean) from the
    region's boundary, the image border counting as boundary.

    The region is padded with a ring of zeros before ``scipy.ndimage.distance_transform_edt``, so
    a pixel on the image edge is 1 px from the boundary. Ties go to the first pixel in row-major
    order (smallest row, then smallest column).
    """
    region = np.asarray(region, dtype=bool)
    if region.ndim != 2:
        raise ValueError(f"region must be 2-D (H, W), got shape {region.shape}")
    if not region.any():
        raise ValueError("region is empty: no pixel to click")
    distance = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(distance)), distance.shape)  # argmax: first maximum
    return int(col), int(row)


def next_click(truth: np.ndarray, pred: np.ndarray) -> Click | None:
    """The next correction click for a prediction, or None when the prediction equals the truth.

    ``truth`` and ``pred``: (H, W) boolean. The larger error region (FN wins a tie) is clicked at
    :func:`farthest_pixel`.
    """
    truth, pred = np.asarray(truth, dtype=bool), np.asarray(pred, dtype=bool)
    if truth.shape != pred.shape:
        raise ValueError(f"prediction shape {pred.shape} does not match truth shape {truth.shape}")
    fn, fp = truth & ~pred, pred & ~truth
    n_fn, n_fp = int(fn.sum()), int(fp.sum())
    if n_fn == 0 and n_fp == 0:
        return None
    region, label, area = (fn, 1, n_fn) if n_fn >= n_fp else (fp, 0, n_fp)
    x, y = farthest_pixel(region)
    return Click(x, y, label, area)


def clicks_to_reach(ious: Sequence[float], threshold: float, max_clicks: int = MAX_CLICKS) -> int:
    """NoC: the least k (``ious[k]`` is the IoU after k correction clicks) with IoU >= ``threshold``,
    ``max_clicks`` if none reaches it."""
    ious = np.asarray(ious, dtype=np.float64)[: max_clicks + 1]
    reached = np.flatnonzero(ious >= threshold)
    return int(reached[0]) if reached.size else max_clicks


def bootstrap_patients(values: Sequence[float], patients: Sequence[str], level: str = "patient",
                       resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                       confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap interval ``(mean, low, high)`` over patients.

    Patients are resampled with replacement, all of a patient's slices along.
    ``level="patient"``: the mean of per-patient means; ``"slice"``: the mean over the slices of the
    resampled patients. Draws come from ``numpy.random.default_rng(seed)``; one patient gives NaN bounds.
    """
    frame = pd.DataFrame({"v": np.asarray(values, dtype=np.float64), "p": list(patients)})
    if frame.empty:
        raise ValueError("no values to summarise")
    per = frame.groupby("p", sort=True)["v"].agg(["sum", "count"])
    sums, counts = per["sum"].to_numpy(), per["count"].to_numpy()
    if level == "patient":
        means = sums / counts
        mean = float(means.mean())
    elif level == "slice":
        mean = float(sums.sum() / counts.sum())
    else:
        raise ValueError(f"level must be 'patient' or 'slice', got {level!r}")
    if len(sums) < 2:
        return mean, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(sums), size=(resamples, len(sums)))
    stats = means[idx].mean(axis=1) if level == "patient" else sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(stats, [alpha, 1 - alpha])
    return mean, float(lo), float(hi)


_RUN = ["split", "start", "mask_input"]


def _per_slice_noc(rows: pd.DataFrame, max_clicks: int) -> pd.DataFrame:
    """One row per (split, start, mask_input, seed, slice): NoC at each threshold."""
    out = []
    keys = [*_RUN, "seed", "patient", "slice"]
    for key, group in rows.sort_values("k", kind="stable").groupby(keys, sort=False):
        ious = group["iou"].to_numpy()
        out.append({**dict(zip(keys, key)),
                    **{f"noc{round(t * 100)}": clicks_to_reach(ious, t, max_clicks) for t in NOC_THRESHOLDS},
                    **{f"reached{round(t * 100)}": bool((ious[: max_clicks + 1] >= t).any()) for t in NOC_THRESHOLDS}})
    return pd.DataFrame(out)


def noc_table(rows: pd.DataFrame, max_clicks: int = MAX_CLICKS) -> pd.DataFrame:
    """Per (split, start, mask_input): NoC@80/85/90 as means over slices and over patients, each
    with its patient-level bootstrap interval, and the share of slices that reach the target.

    ``rows``: the E5 rows (columns split, patient, slice, start, mask_input, seed, k, iou); seeds
    of a random start are pooled (each (seed, slice) counts as a slice).
    """
    per_slice = _per_slice_noc(rows, max_clicks)
    out = []
    for key, group in per_slice.groupby(_RUN, sort=False):
        record = {**dict(zip(_RUN, key)), "slices": group["slice"].nunique(), "patients": group["patient"].nunique(),
                  "seeds": group["seed"].nunique()}
        for t in NOC_THRESHOLDS:
            col = f"noc{round(t * 100)}"
            for level in ("slice", "patient"):
                mean, lo, hi = bootstrap_patients(group[col], group["patient"], level)
                suffix = "" if level == "slice" else "_patient"
                record.update({f"{col}{suffix}": mean, f"{col}{suffix}_lo": lo, f"{col}{suffix}_hi": hi})
            # NoC is max_clicks both when reached at the last click and when never reached
            record[f"reached{round(t * 100)}"] = float(group[f"reached{round(t * 100)}"].mean())
        out.append(record)
    return pd.DataFrame(out)


def curve_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (split, start, mask_input, k): mean IoU over slices and over patients, each with its
    patient-level bootstrap interval, and mean Dice over slices."""
    out = []
    for key, group in rows.groupby([*_RUN, "k"], sort=False):
        record = dict(zip([*_RUN, "k"], key))
        for level in ("slice", "patient"):
            mean, lo, hi = bootstrap_patients(group["iou"], group["patient"], level)
            suffix = "" if level == "slice" else "_patient"
            record.update({f"miou{suffix}": mean, f"miou{suffix}_lo": lo, f"miou{suffix}_hi": hi})
        record["dice"] = float(group["dice"].mean())
        out.append(record)
    return pd.DataFrame(out).sort_values([*_RUN, "k"], kind="stable").reset_index(drop=True)


def _cell(mean: float, lo: float, hi: float, digits: int) -> str:
    return f"{mean:.{digits}f}" + ("" if np.isnan(lo) else f" [{lo:.{digits}f}, {hi:.{digits}f}]")


def summary_table(curve: pd.DataFrame, noc: pd.DataFrame, ks: Sequence[int] = (0, 1, 3, 5, 10, 20)) -> pd.DataFrame:
    """One row per (split, start, mask_input): mIoU after each k in ``ks`` and NoC@80/85/90, patient
    level, as text ``mean [low, high]`` (95% bootstrap interval over patients), and the share of
    slices that reach 90% IoU within the clicks."""
    out = []
    for _, r in noc.iterrows():
        run = curve[(curve["split"] == r["split"]) & (curve["start"] == r["start"])
                    & (curve["mask_input"] == r["mask_input"])].set_index("k")
        row = {"split": r["split"], "start": r["start"], "mask_input": "yes" if r["mask_input"] else "no"}
        row.update({f"mIoU k={k}": _cell(*run.loc[k, ["miou_patient", "miou_patient_lo", "miou_patient_hi"]], 3)
                    for k in ks if k in run.index})
        for t in NOC_THRESHOLDS:
            c = f"noc{round(t * 100)}"
            row[f"NoC@{round(t * 100)}"] = _cell(r[f"{c}_patient"], r[f"{c}_patient_lo"], r[f"{c}_patient_hi"], 1)
        row["reached 90%"] = f"{r['reached90']:.0%}"
        row["slices"], row["patients"] = int(r["slices"]), int(r["patients"])
        out.append(row)
    return pd.DataFrame(out)


def format_tables(curve: pd.DataFrame, noc: pd.DataFrame, ks: Sequence[int] = (0, 1, 3, 5, 10, 20)) -> str:
    """:func:`summary_table` as Markdown, one table per split."""
    table = summary_table(curve, noc, ks)
    lines = []
    for split, group in table.groupby("split", sort=False):
        group = group.drop(columns="split")
        lines += [f"**{split} split**: means over patients, 95% bootstrap interval over patients in brackets", "",
                  "| " + " | ".join(group.columns) + " |", "|" + "---|" * len(group.columns)]
        lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in group.itertuples(index=False)]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
