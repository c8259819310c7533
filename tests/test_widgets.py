"""The notebooks' logic: the explorers (samhw.widgets) driven from Python, and samhw.workbook.

Most tests use synthetic slices and a stand-in model whose mask is the box (or a disc around the
last point), so they are fast and their expected IoU is known; the slow ones use LiteMedSAM.
"""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from samhw import widgets, workbook
from samhw.data import DataError, Dataset, Slice, SliceRecord
from samhw.metrics import iou
from samhw.prompts import PromptSpec, Target

# ----------------------------------------------------------------------------- stand-ins


class FakeModel:
    """Predicts the box's pixels (or a disc of radius 8 around the last point); counts calls."""

    device = torch.device("cpu")

    def __init__(self, fail: bool = False):
        self.calls = 0
        self.fail = fail

    def image_context(self, embedding, plain=None):
        return embedding

    def predict_masks(self, context, prompts, shape, multimask, plain=None):
        masks, scores = self.predict(context, prompts, shape, multimask)
        return torch.from_numpy(masks), torch.from_numpy(scores)

    def predict(self, embedding, prompts, shape, multimask):
        self.calls += 1
        if self.fail:
            raise RuntimeError("decoder exploded")
        masks = np.zeros((len(prompts), *shape), bool)
        rows, cols = np.mgrid[:shape[0], :shape[1]]
        for k, p in enumerate(prompts):
            if p.box is not None:
                x0, y0, x1, y1 = (int(v) for v in p.box)
                masks[k, y0:y1 + 1, x0:x1 + 1] = True
            else:
                x, y = p.points[-1]
                masks[k] = (cols - x) ** 2 + (rows - y) ** 2 <= 64
        return masks, np.full(len(prompts), 0.5)


class FakeCache:
    def __init__(self):
        self.gets = []

    def get(self, image):
        self.gets.append(image.sum())
        return torch.zeros(1, 256, 64, 64)


def make_slice(name: str, mask: np.ndarray, image: np.ndarray | None = None, patient: str = "TCGA_XX_0001") -> Slice:
    if image is None:
        image = np.full((*mask.shape, 3), 60, np.uint8)
        image[mask] = 120
    record = SliceRecord(name, patient, patient + "_19990101", 1, Path(name + ".tif"), Path(name + "_mask.tif"))
    return Slice(record, image, mask)


def rect_mask(y0, y1, x0, x1, shape=(128, 128)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[y0:y1, x0:x1] = True
    return mask


@pytest.fixture
def slices():
    return [make_slice("TCGA_XX_0001_19990101_1", rect_mask(40, 80, 30, 90)),
            make_slice("TCGA_XX_0002_19990101_7", rect_mask(20, 50, 60, 100), patient="TCGA_XX_0002")]


# ----------------------------------------------------------------------------- the margin explorer


def test_margin_slider_redraws_the_box_the_mask_and_its_iou(slices):
    model = FakeModel()
    ex = widgets.MarginExplorer(model, FakeCache(), slices, margin=0)
    tight = [30, 40, 89, 79]
    assert ex.renders == 1 and ex.error is None
    assert ex.state["box"] == tight and ex.state["tight"] == tight and ex.state["iou"] == 1.0
    first_png, first_status = bytes(ex.image.value), ex.status.value
    assert first_png.startswith(b"\x89PNG") and "max margin 0" in first_status and "IoU 1.000" in first_status

    ex.margin.value = 40
    assert ex.renders == 2 and model.calls == 2
    box = ex.state["box"]
    assert box[0] <= tight[0] and box[1] <= tight[1] and box[2] >= tight[2] and box[3] >= tight[3] and box != tight
    expected = PromptSpec.parse("box:40").draw(Target(slices[0].mask, slices[0].image, slices[0].slice_id), 0)
    assert box == [int(v) for v in expected.box]  # the same draw as the study's
    truth = slices[0].mask
    drawn = np.zeros_like(truth)
    drawn[box[1]:box[3] + 1, box[0]:box[2] + 1] = True
    assert ex.state["iou"] == pytest.approx(iou(drawn, truth)) and ex.state["iou"] < 1.0
    assert bytes(ex.image.value) != first_png and ex.status.value != first_status
    assert "max margin 40" in ex.status.value and f"IoU {ex.state['iou']:.3f}" in ex.status.value

    ex.margin.value = -20
    box = ex.state["box"]
    assert box[0] >= tight[0] and box[1] >= tight[1] and box[2] <= tight[2] and box[3] <= tight[3]
    assert box[0] <= box[2] and box[1] <= box[3]

    renders = ex.renders
    ex.margin.value = -20  # the same value: nothing to redraw
    assert ex.renders == renders
    assert ex.margin.min == -20 and ex.margin.max == 40


def test_seed_and_slice_choosers(slices):
    cache = FakeCache()
    ex = widgets.MarginExplorer(FakeModel(), cache, Dataset(Path("."), "test", slices), margin=20)
    box_seed0 = ex.state["box"]
    ex.seed.value = 1
    assert ex.state["seed"] == 1 and ex.state["box"] != box_seed0
    ex.seed.value = 0
    assert ex.state["box"] == box_seed0  # reproducible
    ex.slice.value = 1
    assert ex.state["slice"] == slices[1].slice_id and slices[1].slice_id in ex.status.value
    assert ex.state["tight"] == [60, 20, 99, 49]
    ex.slice.value = 0
    ex.margin.value = 10
    assert len(cache.gets) == 2  # one embedding per slice, however many redraws


def test_an_error_is_shown_in_the_widget_not_lost(slices):
    ex = widgets.MarginExplorer(FakeModel(fail=True), FakeCache(), slices)
    assert isinstance(ex.error, RuntimeError) and ex.renders == 0
    assert "error" in ex.status.value and "decoder exploded" in ex.status.value


def test_plain_text_of_an_explorer_is_its_summary_not_a_model_id(slices):
    ex = widgets.MarginExplorer(FakeModel(), FakeCache(), slices, margin=0)
    bundle = ex._repr_mimebundle_()
    assert bundle["text/plain"] == ex.summary() and slices[0].slice_id in bundle["text/plain"]
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == ex.widget.model_id
    assert ex.widget.model_id not in bundle["text/plain"]


# ----------------------------------------------------------------------------- the weight explorer


def two_colour_slice() -> Slice:
    """A 60x40 mask whose left 40 columns are one colour and right 20 another: the bilateral
    weights favour the majority (left) colour, so their centroid lies left of the mask's centre."""
    mask = rect_mask(30, 70, 20, 80)
    image = np.full((128, 128, 3), 30, np.uint8)
    image[30:70, 20:60] = (100, 100, 100)
    image[30:70, 60:80] = (220, 40, 40)
    return make_slice("TCGA_XX_0003_19990101_3", mask, image)


def test_sigma_slider_redraws_the_weight_map_the_point_and_the_mask():
    item = two_colour_slice()
    ex = widgets.WeightExplorer(FakeModel(), FakeCache(), [item], method="gaussian", point="center", sigma=100)
    assert ex.sigma_s.disabled and ex.sigma_r.disabled and not ex.sigma.disabled and ex.seed.disabled
    before = ex.state
    assert np.nansum(before["weights"]) == pytest.approx(1.0) and np.isnan(before["weights"][0, 0])
    ex.sigma.value = 10
    after = ex.state
    assert after["spec"] == "center_gaussian:sigma=10" and ex.renders == 2
    assert np.nanmax(after["weights"]) > np.nanmax(before["weights"])  # narrower: more peaked
    expected = PromptSpec.parse("center_gaussian:sigma=10").draw(Target(item.mask, item.image, item.slice_id), 0)
    np.testing.assert_allclose(after["point"], expected.points[0])
    assert len(ex.image.value) > 1000 and "center_gaussian:sigma=10" in ex.status.value


def test_bilateral_sliders_move_the_point_towards_the_dominant_colour():
    item = two_colour_slice()
    ex = widgets.WeightExplorer(FakeModel(), FakeCache(), [item], method="bilateral", sigma_s=200, sigma_r=150)
    assert ex.sigma.disabled and not ex.sigma_r.disabled and not ex.sigma_s.disabled
    wide = ex.state["point"][0]
    ex.sigma_r.value = 10
    narrow = ex.state["point"][0]
    assert narrow < wide - 5  # pulled into the majority colour's columns (20..59)
    assert narrow < 60 and ex.state["on_mask"]
    png = bytes(ex.image.value)
    ex.point.value = "random"
    assert not ex.seed.disabled and ex.state["spec"].startswith("random_bilateral")
    ex.with_box.value = True
    assert ex.state["spec"].startswith("box:0+random_bilateral") and ex.state["prompt"].box is not None
    assert bytes(ex.image.value) != png


def test_weight_map_matches_the_strategies_and_never_gives_nan():
    item = two_colour_slice()
    target = Target(item.mask, item.image, item.slice_id)
    for method, spec in [("gaussian", "center_gaussian:sigma=30"), ("bilateral", "center_bilateral:sigma_s=50,sigma_r=20")]:
        w = workbook.weight_map(target, method, sigma=30, sigma_s=50, sigma_r=20)
        assert np.isnan(w[~item.mask]).all() and np.nansum(w) == pytest.approx(1.0)
        ys, xs = np.nonzero(item.mask)
        centroid = np.array([(w[ys, xs] * xs).sum(), (w[ys, xs] * ys).sum()])
        np.testing.assert_allclose(centroid, PromptSpec.parse(spec).draw(target, 0).points[0], atol=1e-9)
    tiny = workbook.weight_map(target, "bilateral", sigma_s=1e-3, sigma_r=1e-3)
    assert np.isfinite(tiny[item.mask]).all() and np.nansum(tiny) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="gaussian or bilateral"):
        workbook.weight_map(target, "median")


# ----------------------------------------------------------------------------- workbook tables


def summary_with(curve: dict[int, float], model="m", split="test") -> pd.DataFrame:
    return pd.DataFrame([{"model": model, "split": split, "prompt": f"box:{m}", "iou": v, "iou_lo": v - 0.01,
                          "iou_hi": v + 0.01} for m, v in curve.items()])


def test_margin_observation_says_whether_the_report_holds():
    peak0 = summary_with({-20: 0.2, -10: 0.4, 0: 0.7, 10: 0.6, 20: 0.5, 30: 0.4, 40: 0.3})
    peak10 = summary_with({-20: 0.2, -10: 0.4, 0: 0.6, 10: 0.7, 20: 0.5, 30: 0.4, 40: 0.3}, split="train")
    table = workbook.margin_observation(pd.concat([peak0, peak10]))
    assert list(table["report's observation"]) == ["holds", "does not hold (peak at M=10)"]
    assert list(table["falling steps above 0"]) == ["4/4", "3/4"] and list(table["best margin"]) == [0, 10]
    margins = workbook.margin_table(peak0)
    assert list(margins.index) == [-20, -10, 0, 10, 20, 30, 40] and margins.iloc[2, 0] == "0.700 ± 0.010"


def test_table_one_lists_the_seven_strategies_beside_the_report():
    rows = [{"model": "m", "split": s, "prompt": p, "iou": 0.5, "iou_lo": np.nan, "iou_hi": np.nan}
            for s in ("train", "test") for p in workbook.TABLE_I_STRATEGIES + ["box:0"]]
    table = workbook.table_one(pd.DataFrame(rows))
    assert list(table.index) == workbook.TABLE_I_STRATEGIES
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
    higher = workbook.paired_difference(paired_rows([0.10, 0.12, 0.08, 0.11, 0.09, 0.13]), [("a", "b")]).iloc[0]
    assert higher["verdict"] == "a higher" and higher["a - b"] == pytest.approx(0.105)
    assert higher["patients"] == 6 and higher["patients a > b"] == "6/6" and higher["Wilcoxon p"] == "0.031"
    lo, hi = (float(v) for v in higher["95% interval (patients)"].strip("[]").split(","))
    assert 0 < lo < 0.105 < hi
    mixed = workbook.paired_difference(paired_rows([0.1, -0.1, 0.05, -0.06]), [("a", "b")]).iloc[0]
    assert mixed["verdict"] == "no difference shown"
    few = workbook.paired_difference(paired_rows([0.10, 0.12, 0.08, 0.11]), [("a", "b")]).iloc[0]
    assert few["verdict"] == "no difference shown"  # 4 patients: Wilcoxon p >= 0.125 whatever the interval
    lower = workbook.paired_difference(paired_rows([-0.1, -0.12, -0.09, -0.11, -0.1, -0.13]), [("a", "b")]).iloc[0]
    assert lower["verdict"] == "b higher"
    assert workbook.paired_difference(paired_rows([0.1]), [("a", "c")]).empty  # no such prompt


def test_paired_difference_columns_are_means_over_patients_and_subtract():
    rows = [{"model": "m", "split": "test", "patient": patient, "slice": f"{patient}_{s}", "seed": 0, "prompt": prompt,
             "iou": iou}
            for patient, slices, a in (("P0", 1, 0.9), ("P1", 3, 0.3)) for s in range(slices)
            for prompt, iou in (("a", a), ("b", 0.2))]
    row = workbook.paired_difference(pd.DataFrame(rows), [("a", "b")]).iloc[0]
    assert row["IoU a"] == pytest.approx(0.6) and row["IoU b"] == pytest.approx(0.2)  # not 0.45: slices weigh alike
    assert row["IoU a"] - row["IoU b"] == pytest.approx(row["a - b"])


def test_live_summary_summarises_each_model_on_its_own():
    results = workbook.load_results(verbose=False)
    rows = workbook.combined_rows(results)
    rows = rows[rows["prompt"].isin(["box:0", "center_mask"]) & (rows["split"] == "test")]
    summary = workbook.live_summary(rows).set_index(["model", "prompt"])
    committed = workbook.combined_summary(results)
    committed = committed[committed["split"] == "test"].set_index(["model", "prompt"])
    assert summary.index.get_level_values("model").nunique() == len(results) == 2
    for key in summary.index:
        assert summary.loc[key, "iou"] == pytest.approx(committed.loc[key, "iou"], abs=1e-6), key


def test_a_folder_of_summaries_only_has_no_rows(tmp_path):
    write_results(tmp_path / "litemedsam")
    (tmp_path / "litemedsam" / "rows_test.csv").unlink()
    assert workbook.combined_rows(workbook.load_results(tmp_path, verbose=False)).empty


def test_off_target_table_counts_points_off_the_mask():
    rows = pd.DataFrame([
        {"model": "m", "split": "test", "slice": f"s{k}", "prompt": p, "seed": 0, "iou": v, "off_target": off}
        for k, (off, v_plain, v_snap) in enumerate([(1, 0.1, 0.5), (0, 0.6, 0.6), (0, 0.7, 0.7), (1, 0.2, 0.4)])
        for p, v, off in [("center_box", v_plain, off), ("center_box_snapped", v_snap, 0)]
    ])
    row = workbook.off_target_table(rows).iloc[0]
    assert row["strategy"] == "center_box" and row["outside the mask"] == "2 of 4 slices" and row["share"] == 0.5
    assert row["IoU as drawn, outside slices only"] == 0.15 and row["IoU snapped, outside slices only"] == 0.45


def test_thin_boxes_counts_boxes_of_one_row_or_column():
    boxes = {"box:-20": ["3 5 3 9", "2 4 8 4", "1 2 6 7", "1 2 6 8"], "box:0": ["0 0 5 6"] * 4, "box:10": ["2 2 2 2"] * 4}
    rows = pd.DataFrame([{"model": "m", "split": "test", "slice": f"s{k}", "prompt": p, "seed": 0, "iou": 0.1 * (k + 1),
                          "box": b} for p, bs in boxes.items() for k, b in enumerate(bs)])
    table = workbook.thin_boxes(rows).set_index("prompt")
    assert list(table.index) == ["box:-20", "box:0"]  # margins <= 0 only
    thin = table.loc["box:-20"]  # a column (x0 == x1), a row (y0 == y1), two boxes with area
    assert thin["one pixel thin"] == "2 of 4 boxes" and thin["share"] == 0.5
    assert thin["IoU, thin boxes"] == 0.15 and thin["IoU, the others"] == 0.35
    assert table.loc["box:0", "share"] == 0 and np.isnan(table.loc["box:0", "IoU, thin boxes"])


def write_results(folder: Path, command: str = "python -m samhw study --limit 8") -> None:
    folder.mkdir(parents=True)
    pd.DataFrame([{"experiment": "E1", "split": "test", "prompt": "box:0", "iou": 0.8, "iou_lo": np.nan,
                   "iou_hi": np.nan}]).to_csv(folder / "summary.csv", index=False)
    (folder / "summary.json").write_text(json.dumps({"command": command, "model": "litemedsam", "seeds": [0, 1],
                                                     "device": "cpu", "elapsed_s": 12,
                                                     "splits": {"test": {"slices": 8, "patients": 8}}}))
    pd.DataFrame([{"split": "test", "patient": "P", "slice": "S", "prompt": "box:0", "seed": 0, "iou": 0.8,
                   "dice": 0.9, "points": "", "box": "1 2 3 4"}]).to_csv(folder / "rows_test.csv", index=False)


def test_load_results_finds_every_folder_and_says_how_it_was_made(tmp_path, capsys):
    write_results(tmp_path / "litemedsam")
    write_results(tmp_path / "a_finetuned", command="python -m samhw study --checkpoint ft.pth")
    found = workbook.load_results(tmp_path)
    assert [r.name for r in found] == ["litemedsam", "a_finetuned"]  # the pretrained model first
    out = capsys.readouterr().out
    assert "made by `python -m samhw study --limit 8`" in out and "--checkpoint ft.pth" in out
    assert "litemedsam: splits test only; `python -m samhw study --splits train` adds train to litemedsam/" in out
    summary = workbook.combined_summary(found)
    assert list(summary["model"]) == ["litemedsam", "a_finetuned"]
    rows = workbook.combined_rows(found)
    assert list(rows["model"]) == ["litemedsam", "a_finetuned"] and rows["points"].iloc[0] == ""


def test_missing_results_name_the_command_to_run(tmp_path, capsys):
    assert workbook.load_results(tmp_path / "results") == []
    out = capsys.readouterr().out
    assert "No study results" in out and workbook.FULL_STUDY in out
    assert workbook.combined_summary([]).empty


def test_find_data_follows_samhw_data_and_explains_the_download(tmp_path, monkeypatch, data_dir):
    monkeypatch.setenv("SAMHW_DATA", str(data_dir))
    assert workbook.find_data() == data_dir.resolve() or workbook.find_data() == data_dir
    assert workbook.find_data(tmp_path) == tmp_path  # an explicit folder wins
    monkeypatch.setenv("SAMHW_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setattr(workbook, "repo_root", lambda: tmp_path / "checkout")
    with pytest.raises(DataError, match="kaggle datasets download -d mateuszbuda/lgg-mri-segmentation"):
        workbook.find_data()


def test_repo_root_is_the_checkout_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = workbook.repo_root()
    assert (root / "samhw" / "workbook.py").is_file() and (root / "pyproject.toml").is_file()


def test_run_prompts_rows_follow_the_seed_plan(slices):
    dataset = Dataset(Path("."), "test", slices)
    rows = workbook.run_prompts(FakeModel(), FakeCache(), dataset, ["box:0", "box:20", "center_mask"], [0, 1, 2])
    assert len(rows) == 2 * (1 + 3 + 1)
    assert sorted(rows.groupby("prompt")["seed"].nunique().items()) == [("box:0", 1), ("box:20", 3), ("center_mask", 1)]
    assert (rows.loc[rows["prompt"] == "box:0", "iou"] == 1.0).all()
    summary = workbook.live_summary(workbook.live_rows(FakeModel(), FakeCache(), {"test": dataset}, ["box:0"], [0]))
    assert summary.loc[0, "model"] == "live" and summary.loc[0, "iou"] == 1.0


def test_weight_panels_and_dominant_colours():
    item = two_colour_slice()
    panels = workbook.weight_panels([item], sigma=40, draws=5)
    assert len(panels) == 1 and [p["weights"] is None for p in panels[0]] == [True, False, False]
    assert len(panels[0][2]["points"]) == 5 and "sigma_s=100,sigma_r=40" in panels[0][2]["title"]
    colours = workbook.dominant_colors([item]).iloc[0]
    assert colours["M (pre, FLAIR, post)"] == "100 100 100" and colours["share in M's bin"] == 0.667


def test_trace_records_live_shapes_in_call_order():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU(), torch.nn.Flatten())
    table = workbook.trace(net, lambda: net(torch.zeros(1, 3, 16, 16)), ["2", "0"], {"0": "stride-2 conv"})
    assert list(table["module"]) == ["0", "2"]
    assert table.loc[0, "output"] == "1x8x8x8" and table.loc[1, "output"] == "1x512"
    assert table.loc[0, "parameters"] == 3 * 8 * 9 + 8 and table.loc[0, "what it does"] == "stride-2 conv"
    assert not net[0]._forward_hooks  # hooks removed


def test_vit_b_without_weights_traces_1024_to_64x64x256_with_its_neck():
    vit = workbook.vit_b_without_weights()
    table = workbook.encoder_trace(vit).set_index("module")
    assert table.loc["patch_embed", "input"] == "1x3x1024x1024" and table.loc["patch_embed", "output"] == "1x64x64x768"
    assert table.loc["neck.0", "what it does"].startswith("1x1 conv, 768 -> 256")
    assert table.loc["neck.2", "what it does"].startswith("3x3 conv, 256 -> 256")
    assert table.loc["neck.3", "output"] == "1x256x64x64"
    assert sum(table.index.str.startswith("blocks.")) == 12
    assert "global" in table.loc["blocks.2", "what it does"] and "14x14" in table.loc["blocks.0", "what it does"]
    params = workbook.parameter_table({"vit_b": vit})
    assert params.loc["image_encoder", "vit_b"] == "89.671 M"


def test_main_refuses_unknown_commands():
    with pytest.raises(SystemExit):
        workbook.main(["build"])


# ----------------------------------------------------------------------------- with LiteMedSAM


def test_full_switch_runs_the_study_and_loads_it_like_committed_results(tmp_path, monkeypatch, capsys):
    import samhw.study

    calls = []

    def fake_run_study(config):  # the real one is tested end to end in test_e2e.py
        calls.append({k: getattr(config, k) for k in ("data", "splits", "model", "checkpoint", "seeds", "experiments",
                                                      "limit", "command")})
        write_results(config.out, command=config.command)

    monkeypatch.setattr(samhw.study, "run_study", fake_run_study)
    monkeypatch.setattr(workbook, "find_data", lambda data=None: tmp_path / "kaggle_3m")
    found = workbook.full_study(experiments=["E1"], seeds=1, limit=1, out=tmp_path / "litemedsam")
    assert [r.name for r in found] == ["litemedsam"]
    assert calls == [{"data": str(tmp_path / "kaggle_3m"), "splits": ("train", "test"), "model": "litemedsam",
                      "checkpoint": None, "seeds": 1, "experiments": ("E1",), "limit": 1,
                      "command": "samhw.workbook.full_study('litemedsam', None, experiments=['E1'], seeds=1, limit=1)"}]
    assert "made by `samhw.workbook.full_study(" in capsys.readouterr().out
    # a checkpoint's study is filed under its own name, never as the pretrained model's
    monkeypatch.setattr(workbook, "repo_root", lambda: tmp_path)
    found = workbook.full_study(checkpoint=str(tmp_path / "runs" / "litemedsam-finetuned" / "best.pt"), limit=1)
    assert [r.name for r in found] == ["litemedsam-finetuned"]
    assert (tmp_path / "runs" / "notebook" / "litemedsam-finetuned" / "summary.json").is_file()


@pytest.mark.slow
def test_explorers_on_litemedsam_redraw_well_under_a_second(lite_model, real_slices, cache_dir):
    from samhw.cache import EmbeddingCache

    cache = EmbeddingCache(lite_model, cache_dir)
    ex = widgets.MarginExplorer(lite_model, cache, real_slices, margin=0)
    item = real_slices.slices[0]
    prompt = PromptSpec.parse("box:0").draw(Target(item.mask, item.image, item.slice_id), 0)
    mask, score = lite_model.predict(cache.get(item.image), [prompt], item.mask.shape, False)
    assert ex.state["iou"] == pytest.approx(iou(mask[0], item.mask)) and ex.state["pred_iou"] == pytest.approx(score[0])
    times = []
    for margin in (10, 20, 30):
        ex.margin.value = margin
        times.append(ex.last_update_s)
    assert ex.renders == 4 and ex.error is None and max(times) < 1.0, times
    we = widgets.WeightExplorer(lite_model, cache, real_slices, method="bilateral")
    times = []
    for sigma_r in (10, 80):
        we.sigma_r.value = sigma_r
        times.append(we.last_update_s)
    assert we.error is None and max(times) < 1.0, times


@pytest.mark.slow
def test_model_anatomy_on_litemedsam(lite_model, real_slices, cache_dir):
    from samhw.cache import EmbeddingCache

    item = real_slices.slices[1]
    target = Target(item.mask, item.image, item.slice_id)
    embedding = EmbeddingCache(lite_model, cache_dir).get(item.image)
    tokens = workbook.sparse_tokens(lite_model, target)
    assert tokens["= PE + learned embedding"].all() and list(tokens["sparse shape"]) == ["1x2x256"] * 4
    table, dense, no_mask = workbook.mask_path(lite_model, item.mask)
    assert no_mask and dense.shape == (256, 64, 64)
    assert table["input"].iloc[0] == "1x1x256x256" and table["output"].iloc[-1] == "1x256x64x64"
    prompt = PromptSpec.parse("box:0").draw(target, 0)
    steps = workbook.decoder_trace(lite_model, embedding, prompt, item.mask.shape).set_index("module")
    assert steps.loc["transformer.layers.1.cross_attn_image_to_token", "output"] == "1x4096x256"
    assert steps.loc["output_upscaling.3", "output"] == "1x32x256x256" and steps.loc["iou_prediction_head", "output"] == "1x4"
    masks, scores = workbook.all_masks(lite_model, embedding, prompt, item.mask.shape)
    single, single_score = lite_model.predict(embedding, [prompt], item.mask.shape, False)
    multi, multi_score = lite_model.predict(embedding, [prompt], item.mask.shape, True)
    np.testing.assert_array_equal(masks[0], single[0])
    np.testing.assert_array_equal(masks[1 + int(np.argmax(scores[1:]))], multi[0])
    assert scores[0] == pytest.approx(single_score[0]) and max(scores[1:]) == pytest.approx(multi_score[0])
    shapes = workbook.dataflow_shapes(lite_model, item.image, prompt)
    assert shapes["embedding"] == "1x256x64x64" and shapes["masks"] == "1x4x256x256" and shapes["tokens"] == "1x7x256"
    picture = workbook.embedding_pca(embedding)
    assert picture.shape == (64, 64, 3) and picture.min() >= 0 and picture.max() <= 1
