"""E5's click protocol, NoC and bootstrap on small hand-made masks (samhw.refine, torch-free)."""
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from samhw.refine import MAX_CLICKS, bootstrap_patients, clicks_to_reach, curve_table, farthest_pixel, format_tables, next_click, noc_table


def test_farthest_pixel_is_xy_of_the_region_centre():
    region = np.zeros((9, 12), bool)
    region[1:6, 5:10] = True  # rows 1-5, columns 5-9: a 5x5 square, centre row 3, column 7
    region[7:9, 0:12] = True  # a thin band below, 2 px: nowhere as deep
    assert farthest_pixel(region) == (7, 3)  # (x, y) = (column, row): a swap gives (3, 7)


def test_image_border_counts_as_boundary():
    region = np.zeros((9, 14), bool)
    region[:, 3:10] = True  # columns 3-9, every row: touches the top and bottom borders
    # the border is boundary: the deepest pixels are 4 px from it (column 6, rows 3-5), the first in row-major
    # order is row 3; without the padding every row of column 6 would be as deep, and row 0 would be chosen
    assert farthest_pixel(region) == (6, 3)


def test_ties_go_to_the_first_pixel_in_row_major_order():
    region = np.zeros((6, 6), bool)
    region[1, 4] = True
    region[3, 1] = True
    assert farthest_pixel(region) == (4, 1)


def test_empty_region_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        farthest_pixel(np.zeros((4, 4), bool))


def test_next_click_corrects_the_larger_error_with_its_label():
    truth = np.zeros((10, 14), bool)
    truth[2:7, 3:12] = True  # rows 2-6, columns 3-11
    pred = np.zeros_like(truth)
    pred[2:7, 3:6] = True  # only the left part: FN = columns 6-11 (30 px), no FP
    click = next_click(truth, pred)
    assert (click.label, click.area) == (1, 30)
    assert truth[click.y, click.x] and not pred[click.y, click.x]
    assert (click.x, click.y) == (8, 4)  # FN columns 6-11, rows 2-6: centre row 4, first of columns 8, 9

    pred = truth.copy()
    pred[0:2, 0:13] = True  # a false-positive band of 26 px above the tumor, no FN
    click = next_click(truth, pred)
    assert (click.label, click.area) == (0, 26)
    assert pred[click.y, click.x] and not truth[click.y, click.x]


def test_fn_wins_an_equal_area_and_a_perfect_prediction_gets_no_click():
    truth = np.zeros((6, 6), bool)
    truth[0, 0] = True
    pred = np.zeros_like(truth)
    pred[5, 5] = True
    assert next_click(truth, pred).label == 1
    assert next_click(truth, truth) is None


def test_noc_is_the_first_k_reaching_the_target_else_max():
    ious = [0.5, 0.79, 0.8, 0.95] + [0.95] * (MAX_CLICKS - 3)
    assert clicks_to_reach(ious, 0.80) == 2
    assert clicks_to_reach(ious, 0.90) == 3
    assert clicks_to_reach(ious, 0.99) == MAX_CLICKS
    assert clicks_to_reach([0.9] + [0.0] * MAX_CLICKS, 0.85) == 0


def test_bootstrap_resamples_patients_not_slices():
    # patient a: 3 slices of 1.0; patient b: one slice of 0.0
    values, patients = [1.0, 1.0, 1.0, 0.0], ["a", "a", "a", "b"]
    mean_p, lo_p, hi_p = bootstrap_patients(values, patients, "patient")
    mean_s, lo_s, hi_s = bootstrap_patients(values, patients, "slice")
    assert mean_p == 0.5 and mean_s == 0.75
    assert lo_p == 0.0 and hi_p == 1.0 and lo_s == 0.0 and hi_s == 1.0
    assert bootstrap_patients(values, patients, "patient") == (mean_p, lo_p, hi_p)  # fixed seed
    assert np.isnan(bootstrap_patients([0.3, 0.4], ["a", "a"])[1])


def _rows() -> pd.DataFrame:
    out = []
    for patient, slices in (("p1", ["s1", "s2"]), ("p2", ["s3"])):
        for s in slices:
            for mask_input in (1, 0):
                base = {"s1": 0.5, "s2": 0.75, "s3": 0.875}[s] - 0.125 * (1 - mask_input)  # exact in binary
                for k in range(MAX_CLICKS + 1):
                    out.append({"split": "test", "patient": patient, "slice": s, "start": "box:0",
                                "mask_input": mask_input, "seed": 0, "k": k, "iou": min(base + 0.0625 * k, 1.0),
                                "dice": 0.0})
    return pd.DataFrame(out)


def test_tables_count_clicks_per_slice_and_average_over_patients():
    rows = _rows()
    noc = noc_table(rows).set_index("mask_input")
    # with mask_input: s1 0.5 + k/16 reaches 0.8 at k=5, s2 0.75 at k=1, s3 0.875 at k=0 (patients p1: s1, s2; p2: s3)
    assert noc.loc[1, "noc80"] == pytest.approx((5 + 1 + 0) / 3)
    assert noc.loc[1, "noc80_patient"] == pytest.approx(((5 + 1) / 2 + 0) / 2)
    assert noc.loc[1, "reached90"] == 1.0
    assert noc.loc[0, "noc80"] > noc.loc[1, "noc80"]
    curve = curve_table(rows)
    first = curve[(curve["mask_input"] == 1) & (curve["k"] == 0)].iloc[0]
    assert first["miou"] == pytest.approx((0.5 + 0.75 + 0.875) / 3)
    assert first["miou_patient"] == pytest.approx((0.625 + 0.875) / 2)
    text = format_tables(curve, noc_table(rows))
    assert "| box:0 | yes |" in text and "NoC@90" in text and "| 100% |" in text


def test_refine_imports_neither_torch_nor_views():
    code = ("import sys, samhw.refine; bad = [m for m in ('torch', 'samhw.plots', 'samhw.widgets', 'samhw.notebook',"
            " 'matplotlib') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_the_readme_e5_tables_are_the_committed_ones():
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    block = (repo / "README.md").read_text().split("<!-- e5:start", 1)[1].split("<!-- e5:end -->", 1)[0]
    for folder in ("litemedsam", "litemedsam-finetuned"):
        assert (repo / "results" / folder / "e5_tables.md").read_text().strip() in block, folder


def test_a_slice_that_reaches_the_target_at_the_last_click_counts_as_reached():
    rows = pd.DataFrame([{"split": "test", "patient": p, "slice": p, "start": "box:0", "mask_input": 1, "seed": 0,
                          "k": k, "iou": 0.95 if (p == "late" and k == MAX_CLICKS) else 0.5, "dice": 0.0}
                         for p in ("late", "never") for k in range(MAX_CLICKS + 1)])
    noc = noc_table(rows).iloc[0]
    assert noc["noc90"] == MAX_CLICKS and noc["reached90"] == 0.5


def test_the_readme_literature_rows_are_the_committed_curves():
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    readme = (repo / "README.md").read_text()
    for folder, label in (("litemedsam", "LiteMedSAM pretrained, LGG test slices, with mask_input"),
                          ("litemedsam-finetuned", "shipped fine-tuned (`litemedsam-lgg`), with mask_input")):
        dice = pd.read_csv(repo / "results" / folder / "e5_curve.csv").set_index(["start", "mask_input", "k"])["dice"]
        cells = [dice[("box:0", 1, 0)], *(dice[("center_inside", 1, k)] for k in (0, 2, 4))]
        assert f"| **ours**: {label} | " + " | ".join(f"{100 * v:.2f}" for v in cells) + " |" in readme, folder
