"""samhw.analysis: the tables of the study's results and the point strategies' weight maps, on
hand-made rows and slices whose answers are known."""
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from stand_ins import two_colour_slice

from samhw import analysis
from samhw.prompts import PromptSpec, Target


def test_analysis_imports_neither_torch_nor_a_view():
    code = ("import sys, samhw.analysis; bad = [m for m in ('torch', 'samhw.plots', 'samhw.report', 'samhw.widgets', "
            "'samhw.notebook', 'samhw.architecture') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_weight_map_matches_the_strategies_and_never_gives_nan():
    item = two_colour_slice()
    target = Target(item.mask, item.image, item.slice_id)
    for method, spec in [("gaussian", "center_gaussian:sigma=30"), ("bilateral", "center_bilateral:sigma_s=50,sigma_r=20")]:
        w = analysis.weight_map(target, method, sigma=30, sigma_s=50, sigma_r=20)
        assert np.isnan(w[~item.mask]).all() and np.nansum(w) == pytest.approx(1.0)
        ys, xs = np.nonzero(item.mask)
        centroid = np.array([(w[ys, xs] * xs).sum(), (w[ys, xs] * ys).sum()])
        np.testing.assert_allclose(centroid, PromptSpec.parse(spec).draw(target, 0).points[0], atol=1e-9)
    tiny = analysis.weight_map(target, "bilateral", sigma_s=1e-3, sigma_r=1e-3)
    assert np.isfinite(tiny[item.mask]).all() and np.nansum(tiny) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="gaussian or bilateral"):
        analysis.weight_map(target, "median")


def summary_with(curve: dict[int, float], model="m", split="test") -> pd.DataFrame:
    return pd.DataFrame([{"model": model, "split": split, "prompt": f"box:{m}", "iou": v, "iou_lo": v - 0.01,
                          "iou_hi": v + 0.01} for m, v in curve.items()])


def test_margin_observation_says_whether_the_report_holds():
    peak0 = summary_with({-20: 0.2, -10: 0.4, 0: 0.7, 10: 0.6, 20: 0.5, 30: 0.4, 40: 0.3})
    peak10 = summary_with({-20: 0.2, -10: 0.4, 0: 0.6, 10: 0.7, 20: 0.5, 30: 0.4, 40: 0.3}, split="train")
    table = analysis.margin_observation(pd.concat([peak0, peak10]))
    assert list(table["report's observation"]) == ["holds", "does not hold (peak at M=10)"]
    assert list(table["falling steps above 0"]) == ["4/4", "3/4"] and list(table["best margin"]) == [0, 10]
    margins = analysis.margin_table(peak0)
    assert list(margins.index) == [-20, -10, 0, 10, 20, 30, 40] and margins.iloc[2, 0] == "0.700 ± 0.010"


def test_table_one_lists_the_seven_strategies_beside_the_report():
    rows = [{"model": "m", "split": s, "prompt": p, "iou": 0.5, "iou_lo": np.nan, "iou_hi": np.nan}
            for s in ("train", "test") for p in analysis.TABLE_I_STRATEGIES + ["box:0"]]
    table = analysis.table_one(pd.DataFrame(rows))
    assert list(table.index) == analysis.TABLE_I_STRATEGIES
    assert list(table.columns[:2]) == ["m train", "m test"] and table.loc["random_box", "m test"] == "0.500"
    assert table.loc["center_gaussian", "report test origin"] == "0.5911"


def paired_rows(diff_per_patient):
    rows = []
    for k, d in enumerate(diff_per_patient):
        for s in range(2):
            for seed in (0, 1):
                base = 0.3 + 0.05 * s
                rows += [{"model": "m", "split": "test", "patient": f"P{k}", "slice": f"P{k}_{s}", "seed": seed,
                          "prompt": "a", "iou": base + d}, {"model": "m", "split": "test", "patient": f"P{k}",
                          "slice": f"P{k}_{s}", "seed": seed, "prompt": "b", "iou": base}]
    return pd.DataFrame(rows)


def test_paired_difference_gives_an_interval_over_patients_and_a_verdict():
    higher = analysis.paired_difference(paired_rows([0.10, 0.12, 0.08, 0.11, 0.09, 0.13]), [("a", "b")]).iloc[0]
    assert higher["verdict"] == "a higher" and higher["a - b"] == pytest.approx(0.105)
    assert higher["patients"] == 6 and higher["patients a > b"] == "6/6" and higher["Wilcoxon p"] == "0.031"
    lo, hi = (float(v) for v in higher["95% interval (patients)"].strip("[]").split(","))
    assert 0 < lo < 0.105 < hi
    mixed = analysis.paired_difference(paired_rows([0.1, -0.1, 0.05, -0.06]), [("a", "b")]).iloc[0]
    assert mixed["verdict"] == "no difference shown"
    few = analysis.paired_difference(paired_rows([0.10, 0.12, 0.08, 0.11]), [("a", "b")]).iloc[0]
    assert few["verdict"] == "no difference shown"  # 4 patients: Wilcoxon p >= 0.125 whatever the interval
    lower = analysis.paired_difference(paired_rows([-0.1, -0.12, -0.09, -0.11, -0.1, -0.13]), [("a", "b")]).iloc[0]
    assert lower["verdict"] == "b higher"
    assert analysis.paired_difference(paired_rows([0.1]), [("a", "c")]).empty  # no such prompt


def test_paired_difference_columns_are_means_over_patients_and_subtract():
    rows = [{"model": "m", "split": "test", "patient": patient, "slice": f"{patient}_{s}", "seed": 0, "prompt": prompt,
             "iou": iou}
            for patient, slices, a in (("P0", 1, 0.9), ("P1", 3, 0.3)) for s in range(slices)
            for prompt, iou in (("a", a), ("b", 0.2))]
    row = analysis.paired_difference(pd.DataFrame(rows), [("a", "b")]).iloc[0]
    assert row["IoU a"] == pytest.approx(0.6) and row["IoU b"] == pytest.approx(0.2)  # not 0.45: slices weigh alike
    assert row["IoU a"] - row["IoU b"] == pytest.approx(row["a - b"])


def test_off_target_table_counts_points_off_the_mask():
    rows = pd.DataFrame([
        {"model": "m", "split": "test", "slice": f"s{k}", "prompt": p, "seed": 0, "iou": v, "off_target": off}
        for k, (off, v_plain, v_snap) in enumerate([(1, 0.1, 0.5), (0, 0.6, 0.6), (0, 0.7, 0.7), (1, 0.2, 0.4)])
        for p, v, off in [("center_box", v_plain, off), ("center_box_snapped", v_snap, 0)]
    ])
    row = analysis.off_target_table(rows).iloc[0]
    assert row["strategy"] == "center_box" and row["outside the mask"] == "2 of 4 slices" and row["share"] == 0.5
    assert row["IoU as drawn, outside slices only"] == 0.15 and row["IoU snapped, outside slices only"] == 0.45


def test_thin_boxes_counts_boxes_of_one_row_or_column():
    boxes = {"box:-20": ["3 5 3 9", "2 4 8 4", "1 2 6 7", "1 2 6 8"], "box:0": ["0 0 5 6"] * 4, "box:10": ["2 2 2 2"] * 4}
    rows = pd.DataFrame([{"model": "m", "split": "test", "slice": f"s{k}", "prompt": p, "seed": 0, "iou": 0.1 * (k + 1),
                          "box": b} for p, bs in boxes.items() for k, b in enumerate(bs)])
    table = analysis.thin_boxes(rows).set_index("prompt")
    assert list(table.index) == ["box:-20", "box:0"]  # margins <= 0 only
    thin = table.loc["box:-20"]  # a column (x0 == x1), a row (y0 == y1), two boxes with area
    assert thin["one pixel thin"] == "2 of 4 boxes" and thin["share"] == 0.5
    assert thin["IoU, thin boxes"] == 0.15 and thin["IoU, the others"] == 0.35
    assert table.loc["box:0", "share"] == 0 and np.isnan(table.loc["box:0", "IoU, thin boxes"])


def test_weight_panels_and_dominant_colours():
    item = two_colour_slice()
    panels = analysis.weight_panels([item], sigma=40, draws=5)
    assert len(panels) == 1 and [p["weights"] is None for p in panels[0]] == [True, False, False]
    assert len(panels[0][2]["points"]) == 5 and "sigma_s=100,sigma_r=40" in panels[0][2]["title"]
    colours = analysis.dominant_colors([item]).iloc[0]
    assert colours["M (pre, FLAIR, post)"] == "100 100 100" and colours["share in M's bin"] == 0.667



def test_prompt_table_writes_both_intervals_where_the_summary_has_them():
    summary = pd.DataFrame([
        {"model": "m", "split": "test", "prompt": "b", "iou": 0.5, "iou_lo": 0.49, "iou_hi": 0.51, "iou_boot_lo": 0.4,
         "iou_boot_hi": 0.625, "iou_patient": 0.45, "iou_patient_lo": 0.44, "iou_patient_hi": 0.46,
         "iou_patient_boot_lo": 0.3, "iou_patient_boot_hi": 0.55},
        {"model": "m", "split": "test", "prompt": "a", "iou": 0.25, "iou_lo": np.nan, "iou_hi": np.nan,
         "iou_boot_lo": np.nan, "iou_boot_hi": np.nan, "iou_patient": 0.2, "iou_patient_lo": np.nan,
         "iou_patient_hi": np.nan, "iou_patient_boot_lo": 0.1, "iou_patient_boot_hi": 0.3}])
    table = analysis.prompt_table(summary, ["a", "b", "missing"])
    assert list(table.index) == ["a", "b"] and list(table.columns) == ["m test"]  # the order asked, known prompts only
    assert table.loc["b", "m test"] == "0.500 ± 0.010 [0.400, 0.625]" and table.loc["a", "m test"] == "0.250"
    patients = analysis.prompt_table(summary, ["a", "b"], level="iou_patient")
    assert list(patients["m test"]) == ["0.200 [0.100, 0.300]", "0.450 ± 0.010 [0.300, 0.550]"]
    seeds_only = analysis.prompt_table(summary.drop(columns=["iou_boot_lo", "iou_boot_hi"]), ["b"])
    assert seeds_only.loc["b", "m test"] == "0.500 ± 0.010"
