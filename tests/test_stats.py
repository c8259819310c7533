"""Patient-level intervals and paired comparisons (samhw.stats) on small hand-made rows."""
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from samhw import stats


def numpy_bootstrap(values_by_patient: dict[str, list[float]], level: str, seed: int = 0, n: int = 2000):
    """The documented procedure written out in plain numpy: resample patients (indices drawn by
    ``default_rng(seed).integers``), all their slices along, and take the 2.5 and 97.5 percentiles."""
    patients = sorted(values_by_patient)
    sums = np.array([np.sum(values_by_patient[p]) for p in patients])
    counts = np.array([len(values_by_patient[p]) for p in patients], float)
    means = sums / counts
    idx = np.random.default_rng(seed).integers(0, len(patients), (n, len(patients)))
    draws = sums[idx].sum(1) / counts[idx].sum(1) if level == "slices" else means[idx].mean(1)
    return tuple(np.percentile(draws, [2.5, 97.5]))


def slices_of(values_by_patient: dict[str, list[float]]) -> pd.DataFrame:
    return pd.DataFrame([{"patient": p, "slice": f"{p}_{k}", "iou": v}
                         for p, vs in values_by_patient.items() for k, v in enumerate(vs)])


UNEVEN = {"P0": [0.9, 0.8, 0.85, 0.95], "P1": [0.2], "P2": [0.5, 0.4], "P3": [0.7, 0.6, 0.65], "P4": [0.1, 0.3]}


@pytest.mark.parametrize("level", ["slices", "patients"])
def test_bootstrap_mean_is_the_documented_patient_resampling(level):
    mean, lo, hi = stats.bootstrap_mean(slices_of(UNEVEN), level)
    values = [v for vs in UNEVEN.values() for v in vs]
    expected_mean = np.mean(values) if level == "slices" else np.mean([np.mean(v) for v in UNEVEN.values()])
    assert mean == pytest.approx(expected_mean)
    assert (lo, hi) == pytest.approx(numpy_bootstrap(UNEVEN, level))
    assert lo < mean < hi
    assert stats.bootstrap_mean(slices_of(UNEVEN), level) == (mean, lo, hi)  # fixed seed: the same every call


def test_a_patient_brings_all_its_slices():
    """One patient with ten slices at 1, nine with one slice at 0: a resample without that patient
    (probability 0.9**10 = 0.35) has mean 0, so the lower bound is 0; resampling slices one by one
    would put it near 0.3."""
    values = {"BIG": [1.0] * 10, **{f"P{k}": [0.0] for k in range(9)}}
    mean, lo, hi = stats.bootstrap_mean(slices_of(values), "slices")
    assert mean == pytest.approx(10 / 19) and lo == 0.0 and hi > 0.7


def test_one_patient_has_no_interval():
    mean, lo, hi = stats.bootstrap_mean(slices_of({"P0": [0.2, 0.4]}), "slices")
    assert mean == pytest.approx(0.3) and np.isnan(lo) and np.isnan(hi)


def test_random_prompts_are_averaged_over_seeds_per_slice_first():
    rows = pd.DataFrame([{"patient": "P0", "slice": "a", "seed": s, "iou": v} for s, v in ((0, 0.2), (1, 0.4))]
                        + [{"patient": "P1", "slice": "b", "seed": s, "iou": v} for s, v in ((0, 0.6), (1, 0.6))])
    per_slice = stats.slice_values(rows).set_index("slice")["iou"]
    assert per_slice.to_dict() == pytest.approx({"a": 0.3, "b": 0.6})


def paired(diffs: list[float]) -> stats.Comparison:
    b = pd.Series(0.5, index=[f"P{k}" for k in range(len(diffs))])
    return stats.paired_comparison(b + np.array(diffs), b)


def test_paired_comparison_mean_interval_and_wilcoxon():
    diffs = [0.10, 0.12, 0.08, 0.11, 0.09, 0.13, 0.07]
    c = paired(diffs)
    assert c.diff == pytest.approx(np.mean(diffs)) and c.mean_a - c.mean_b == pytest.approx(c.diff)
    assert c.p == pytest.approx(scipy_stats.wilcoxon(diffs).pvalue) and c.p == pytest.approx(2 / 2 ** 7)
    assert (c.lo, c.hi) == pytest.approx(numpy_bootstrap({f"P{k}": [d] for k, d in enumerate(diffs)}, "patients"))
    assert c.sign == 1 and c.a_wins == 7 and c.patients == 7
    assert stats.claim(c, "a higher", "b higher").startswith("a higher: +0.100 [+")
    assert paired([-d for d in diffs]).sign == -1


def test_no_claim_without_both_the_interval_and_the_p_value():
    straddles = paired([0.1, -0.1, 0.05, -0.06, 0.02, -0.01])
    assert straddles.lo < 0 < straddles.hi and straddles.sign == 0
    assert stats.claim(straddles, "a higher", "b higher").startswith("no difference shown: ")
    few = paired([0.1, 0.12, 0.11])  # the bootstrap interval excludes 0, but 3 patients give p = 0.25 at best
    assert few.lo > 0 and few.p == pytest.approx(0.25) and few.sign == 0


def test_all_zero_differences_give_p_one_and_no_claim():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no test on zero differences only (scipy warns, or raises in older versions)
        c = paired([0.0] * 5)
    assert c.p == 1.0 and c.diff == 0.0 and c.lo == c.hi == 0.0 and c.sign == 0


def test_compare_prompts_pairs_slices_and_patients():
    rows = [{"patient": p, "slice": f"{p}_{s}", "seed": seed, "prompt": prompt, "iou": iou}
            for p, n, a in (("P0", 1, 0.9), ("P1", 3, 0.3)) for s in range(n) for seed in (0, 1)
            for prompt, iou in (("a", a), ("b", 0.2))]
    rows = pd.DataFrame(rows)
    c = stats.compare_prompts(rows[rows["prompt"] == "a"], rows[rows["prompt"] == "b"])
    assert c.mean_a == pytest.approx(0.6) and c.mean_b == pytest.approx(0.2)  # patients weigh alike
    assert c.diff == pytest.approx(0.4) and c.patients == 2


def test_compare_to_value_uses_slices_for_the_mean_and_patients_for_the_test():
    values = {f"P{k}": [0.6 + 0.01 * k, 0.62] for k in range(8)}
    rows = slices_of(values)
    c = stats.compare_to_value(rows, 0.5)
    mean, lo, hi = stats.bootstrap_mean(rows, "slices")
    assert c.mean_a == pytest.approx(mean) and (c.lo, c.hi) == pytest.approx((lo - 0.5, hi - 0.5))
    assert c.p == pytest.approx(2 / 2 ** 8) and c.sign == 1
    assert stats.compare_to_value(rows, mean).sign == 0


def test_one_formatter_for_intervals():
    assert stats.format_interval(0.5, 0.4, 0.6) == "0.500 ± 0.100"
    assert stats.format_interval(0.5, np.nan, np.nan, digits=4) == "0.5000"
    # the patients' bounds after the mean (and after the seeds' half-width), signed for differences
    assert stats.format_interval(0.5, bounds=(0.25, 0.625)) == "0.500 [0.250, 0.625]"
    assert stats.format_interval(0.5, 0.45, 0.55, bounds=(0.25, 0.625)) == "0.500 ± 0.050 [0.250, 0.625]"
    assert stats.format_interval(-0.02, bounds=(-0.05, 0.0123), signed=True) == "-0.020 [-0.050, +0.012]"
    assert stats.format_interval(0.02, bounds=(np.nan, np.nan), signed=True) == "+0.020"
    assert stats.format_bounds(-0.0123, 0.02, signed=True) == "[-0.012, +0.020]"
    assert stats.format_bounds(np.nan, np.nan) == ""
    assert stats.format_p(0.0004) == "p<0.001" and stats.format_p(0.0431) == "p=0.043"


def test_summarize_gives_both_intervals():
    rows = pd.DataFrame([{"split": "test", "prompt": "r", "patient": f"P{k % 4}", "slice": f"s{k}", "seed": seed,
                          "iou": 0.1 * (k % 5) + 0.01 * seed, "off_target": 0} for k in range(12) for seed in range(3)])
    row = stats.summarize(rows).iloc[0]
    per_seed = rows.groupby("seed")["iou"].mean()
    half = scipy_stats.t.ppf(0.975, 2) * per_seed.std(ddof=1) / np.sqrt(3)
    assert row["iou"] == pytest.approx(per_seed.mean()) and row["iou_hi"] - row["iou"] == pytest.approx(half)
    by_patient = stats.slice_values(rows).groupby("patient")["iou"].apply(list).to_dict()
    assert (row["iou_boot_lo"], row["iou_boot_hi"]) == pytest.approx(numpy_bootstrap(by_patient, "slices"))
    assert (row["iou_patient_boot_lo"], row["iou_patient_boot_hi"]) == pytest.approx(numpy_bootstrap(by_patient, "patients"))
    assert row["slices"] == 12 and row["patients"] == 4 and row["seeds"] == 3
