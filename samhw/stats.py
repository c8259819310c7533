"""Patient-level intervals and paired comparisons of the study's rows (numpy, scipy, pandas only).

The input is the study's rows (``rows_<split>.csv``): one row per (split, patient, slice, prompt,
seed) with an ``iou`` column. Every function here first averages a prompt's IoU over its seeds on
each slice (a random prompt has one row per seed, a deterministic one a single row), so that each
slice counts once; the patients are then the sample:

* a mean's patient-level 95% interval is a percentile bootstrap that resamples patients with
  replacement, each resampled patient bringing all its slices (:data:`N_RESAMPLES` resamples from
  ``numpy.random.default_rng(SEED)``, through :func:`scipy.stats.bootstrap`); the mean over slices
  of a resample is its slices' mean (patients with many slices weigh more), the mean over patients
  the mean of its patients' means;
* a comparison of two prompts or two models is paired per patient: each patient's mean difference
  over the slices both have, the mean of those differences, its bootstrap interval, and the
  two-sided Wilcoxon signed-rank p-value over patients (:func:`scipy.stats.wilcoxon`; patients with
  a difference of exactly 0 are dropped, and all-zero differences give p = 1);
* a comparison with a fixed number (the report's) takes our mean over slices with its patient
  interval, and the Wilcoxon signed-rank p of the per-patient means minus that number.

A claim ("higher", "lower") needs both the interval to exclude 0 and p < :data:`ALPHA`; otherwise
the verdict says that no difference is shown.

The interval over prompt seeds (Student t over per-seed means) stays in :func:`samhw.metrics.mean_interval`;
:func:`summarize` puts both beside each mean. :func:`format_interval` is the package's one interval
formatter (``mean ± half-width``, ``mean [lo, hi]`` or both).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from .metrics import mean_interval

__all__ = ["N_RESAMPLES", "SEED", "CONFIDENCE", "ALPHA", "ROW_COLUMNS", "format_interval", "format_bounds",
           "format_p", "read_rows", "slice_values", "bootstrap_mean", "Comparison", "paired_comparison",
           "compare_prompts", "compare_to_value", "verdict", "claim", "summarize", "INTERVALS_NOTE"]

N_RESAMPLES = 2000
SEED = 0
CONFIDENCE = 0.95
ALPHA = 0.05
#: The rows' columns this module reads.
ROW_COLUMNS = ["split", "patient", "slice", "prompt", "seed", "iou", "off_target"]
#: How the intervals are made, for captions.
INTERVALS_NOTE = (f"[lo, hi] is the 95% patient-level interval: a percentile bootstrap that resamples the patients "
                  f"with replacement, all of a patient's slices together ({N_RESAMPLES} resamples, seed {SEED}; a "
                  f"random prompt is first averaged over its seeds on each slice)")


# ----------------------------------------------------------------------------- formatting


def format_interval(mean: float, lo: float | None = None, hi: float | None = None, digits: int = 3, *,
                    bounds: tuple[float, float] | None = None, signed: bool = False) -> str:
    """The package's one interval formatter: ``mean ± half-width`` of an interval ``[lo, hi]`` (the
    seeds' interval; the mean alone when ``lo`` is None or NaN), then `` [b_lo, b_hi]`` for ``bounds``
    (the patients' interval; left out when undefined), with signs when ``signed`` (differences).

    ``format_interval(0.5, 0.4, 0.6)`` is ``"0.500 ± 0.100"``, ``format_interval(0.5, bounds=(0.4, 0.6))``
    is ``"0.500 [0.400, 0.600]"``, ``format_interval(0.5, 0.45, 0.55, bounds=(0.4, 0.6))`` both.
    """
    sign = "+" if signed else ""
    out = f"{mean:{sign}.{digits}f}"
    if lo is not None and not (isinstance(lo, (float, np.floating)) and np.isnan(lo)):
        out += f" ± {(hi - lo) / 2:.{digits}f}"
    if bounds is not None and (text := format_bounds(*bounds, digits, signed=signed)):
        out += f" {text}"
    return out


def format_bounds(lo: float, hi: float, digits: int = 3, signed: bool = False) -> str:
    """``[lo, hi]`` alone, with signs when ``signed``; empty when the interval is undefined (NaN).
    :func:`format_interval` writes it after a mean."""
    if np.isnan(lo) or np.isnan(hi):
        return ""
    fmt = f"{{:{'+' if signed else ''}.{digits}f}}"
    return f"[{fmt.format(lo)}, {fmt.format(hi)}]"


def format_p(p: float) -> str:
    """A p-value as ``p=0.012`` (3 decimals), ``p<0.001`` below that, ``p=n/a`` when undefined."""
    if np.isnan(p):
        return "p=n/a"
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


# ----------------------------------------------------------------------------- rows


def read_rows(path: str | Path) -> pd.DataFrame:
    """The columns :data:`ROW_COLUMNS` of a study's ``rows_<split>.csv``."""
    return pd.read_csv(path, usecols=ROW_COLUMNS, dtype={"split": str, "patient": str, "slice": str, "prompt": str})


def slice_values(rows: pd.DataFrame, value: str = "iou") -> pd.DataFrame:
    """``value`` averaged over seeds: one row per slice and whatever of ``model``, ``split`` and
    ``prompt`` the rows have, with the columns ``patient``, ``slice`` and ``value``."""
    keys = [c for c in ("model", "split", "prompt") if c in rows] + ["patient", "slice"]
    return rows.groupby(keys, sort=False, as_index=False)[value].mean()


def _patients(slices: pd.DataFrame, value: str) -> pd.DataFrame:
    """Per patient: the sum and count of its slices' values and their mean."""
    grouped = slices.groupby("patient", sort=True)[value]
    return pd.DataFrame({"sum": grouped.sum(), "n": grouped.count(), "mean": grouped.mean()})


def _ratio(sums: np.ndarray, counts: np.ndarray, axis: int = -1) -> np.ndarray:
    return sums.sum(axis=axis) / counts.sum(axis=axis)


def _mean(values: np.ndarray, axis: int = -1) -> np.ndarray:
    return values.mean(axis=axis)


def _percentile_interval(data: tuple[np.ndarray, ...], statistic, seed: int, n_resamples: int) -> tuple[float, float]:
    """The percentile bootstrap interval of ``statistic`` over the rows (patients) of ``data``."""
    if len(data[0]) < 2:
        return math.nan, math.nan
    result = scipy_stats.bootstrap(data, statistic, n_resamples=n_resamples, paired=True, vectorized=True,
                                   confidence_level=CONFIDENCE, method="percentile", rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def bootstrap_mean(slices: pd.DataFrame, level: str = "slices", value: str = "iou", seed: int = SEED,
                   n_resamples: int = N_RESAMPLES) -> tuple[float, float, float]:
    """``(mean, lo, hi)``: the mean of ``value`` over the slices of ``slices`` (one row per slice,
    with ``patient``; :func:`slice_values`) or, with ``level="patients"``, over its patients'
    means, and the patient-level percentile bootstrap interval (NaN with fewer than 2 patients)."""
    per = _patients(slices, value)
    if level == "slices":
        data, statistic = (per["sum"].to_numpy(), per["n"].to_numpy(float)), _ratio
        mean = float(per["sum"].sum() / per["n"].sum())
    elif level == "patients":
        data, statistic = (per["mean"].to_numpy(),), _mean
        mean = float(per["mean"].mean())
    else:
        raise ValueError(f"level must be 'slices' or 'patients', got {level!r}")
    return (mean, *_percentile_interval(data, statistic, seed, n_resamples))


# ----------------------------------------------------------------------------- comparisons


@dataclass(frozen=True)
class Comparison:
    """``a`` against ``b`` over ``patients`` patients: their means, the mean difference ``a - b``
    with its 95% interval ``[lo, hi]``, the Wilcoxon signed-rank ``p`` and how many patients have
    ``a > b``. Against a fixed number, ``mean_b`` is that number."""

    mean_a: float
    mean_b: float
    diff: float
    lo: float
    hi: float
    p: float
    patients: int
    a_wins: int

    @property
    def sign(self) -> int:
        """+1 if ``a`` is shown higher, -1 if lower, 0 if no difference is shown."""
        if np.isnan(self.lo) or np.isnan(self.p) or self.p >= ALPHA:
            return 0
        return 1 if self.lo > 0 else (-1 if self.hi < 0 else 0)


def _wilcoxon(differences: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p of ``differences`` (zeros dropped; 1.0 if all are zero)."""
    if np.count_nonzero(differences) == 0:
        return 1.0
    return float(scipy_stats.wilcoxon(differences, zero_method="wilcox").pvalue)


def paired_comparison(a: pd.Series, b: pd.Series, seed: int = SEED, n_resamples: int = N_RESAMPLES) -> Comparison:
    """Per-patient values ``a`` and ``b`` (Series indexed by patient; only shared patients count)."""
    both = pd.concat({"a": a, "b": b}, axis=1, join="inner").sort_index()
    d = (both["a"] - both["b"]).to_numpy()
    lo, hi = _percentile_interval((d,), _mean, seed, n_resamples)
    return Comparison(float(both["a"].mean()), float(both["b"].mean()), float(d.mean()) if len(d) else math.nan,
                      lo, hi, _wilcoxon(d) if len(d) else math.nan, len(d), int((d > 0).sum()))


def compare_prompts(a: pd.DataFrame, b: pd.DataFrame, value: str = "iou", seed: int = SEED,
                    n_resamples: int = N_RESAMPLES) -> Comparison:
    """Two sets of rows of one split (two prompts, or one prompt of two models) paired per patient:
    each is averaged over seeds per slice, only the slices both have count, and each patient's
    values are the mean over those slices."""
    left, right = slice_values(a[["patient", "slice", value]], value), slice_values(b[["patient", "slice", value]], value)
    both = left.merge(right, on=["patient", "slice"], suffixes=("_a", "_b"))
    per = both.groupby("patient")[[f"{value}_a", f"{value}_b"]].mean()
    return paired_comparison(per[f"{value}_a"], per[f"{value}_b"], seed, n_resamples)


def compare_to_value(rows: pd.DataFrame, reference: float, value: str = "iou", seed: int = SEED,
                     n_resamples: int = N_RESAMPLES) -> Comparison:
    """Rows of one prompt and split against a fixed ``reference``: ``mean_a`` is our mean over
    slices with its patient-level interval shifted by ``reference`` as ``[lo, hi]`` of the
    difference; ``p`` is the Wilcoxon signed-rank p of the per-patient means minus ``reference``."""
    slices = slice_values(rows[["patient", "slice", value]], value)
    mean, lo, hi = bootstrap_mean(slices, "slices", value, seed, n_resamples)
    per_patient = slices.groupby("patient")[value].mean().to_numpy() - reference
    return Comparison(mean, reference, mean - reference, lo - reference, hi - reference, _wilcoxon(per_patient),
                      len(per_patient), int((per_patient > 0).sum()))


def verdict(c: Comparison, higher: str, lower: str, neither: str = "no difference shown") -> str:
    """``higher`` if ``a`` is shown higher (interval above 0 and p < ALPHA), ``lower`` if shown
    lower, else ``neither``."""
    return {1: higher, -1: lower, 0: neither}[c.sign]


def claim(c: Comparison, higher: str, lower: str, neither: str = "no difference shown", digits: int = 3) -> str:
    """A verdict with its numbers: ``"fine-tuned higher: +0.080 [+0.050, +0.110], p<0.001"``."""
    return f"{verdict(c, higher, lower, neither)}: {format_interval(c.diff, digits=digits, bounds=(c.lo, c.hi), signed=True)}, {format_p(c.p)}"


# ----------------------------------------------------------------------------- summary


def summarize(rows: pd.DataFrame, seed: int = SEED, n_resamples: int = N_RESAMPLES) -> pd.DataFrame:
    """Per (model if present, split, prompt), in the rows' order: slices, patients, seeds; mean IoU
    over slices (``iou``) and over patients (``iou_patient``), each with its 95% interval over seeds
    (``*_lo``, ``*_hi``: Student t of the per-seed means, NaN for one seed, as in
    :func:`samhw.evaluate.summarize`) and its patient-level bootstrap interval (``*_boot_lo``,
    ``*_boot_hi``); and the share of prompts off target."""
    keys = [c for c in ("model", "split", "prompt") if c in rows]
    out = []
    for key, group in rows.groupby(keys, sort=False):
        per_seed_slices = group.groupby("seed")["iou"].mean()
        per_seed_patients = group.groupby(["seed", "patient"])["iou"].mean().groupby("seed").mean()
        iou, iou_lo, iou_hi = mean_interval(per_seed_slices)
        pat, pat_lo, pat_hi = mean_interval(per_seed_patients)
        slices = slice_values(group[["patient", "slice", "iou"]])
        _, boot_lo, boot_hi = bootstrap_mean(slices, "slices", seed=seed, n_resamples=n_resamples)
        _, pboot_lo, pboot_hi = bootstrap_mean(slices, "patients", seed=seed, n_resamples=n_resamples)
        out.append({**dict(zip(keys, key)), "slices": len(slices), "patients": slices["patient"].nunique(),
                    "seeds": len(per_seed_slices), "iou": iou, "iou_lo": iou_lo, "iou_hi": iou_hi,
                    "iou_boot_lo": boot_lo, "iou_boot_hi": boot_hi, "iou_patient": pat, "iou_patient_lo": pat_lo,
                    "iou_patient_hi": pat_hi, "iou_patient_boot_lo": pboot_lo, "iou_patient_boot_hi": pboot_hi,
                    "off_target": float((group["off_target"] > 0).mean()) if "off_target" in group else math.nan})
    return pd.DataFrame(out)
