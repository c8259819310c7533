"""The explorers (samhw.widgets) driven from Python, and the notebook extra they need (which the
library and the command line do not).

Most tests use synthetic slices and a stand-in model whose mask is the box (or a disc around the
last point), so they are fast and their expected IoU is known; the slow ones use LiteMedSAM.
"""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tomllib
from stand_ins import FakeCache, FakeModel, make_slice, rect_mask, two_colour_slice

from samhw import widgets
from samhw.data import Dataset
from samhw.metrics import iou
from samhw.notebook import NOTEBOOK_EXTRA
from samhw.prompts import PromptSpec, Target

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def slices():
    return [make_slice("TCGA_XX_0001_19990101_1", rect_mask(40, 80, 30, 90)),
            make_slice("TCGA_XX_0002_19990101_7", rect_mask(20, 50, 60, 100), patient="TCGA_XX_0002")]


# ----------------------------------------------------------------------------- the notebook extra

#: Run in a subprocess: the notebook extra's packages cannot be imported, then ``CODE`` runs.
BLOCK = ("import sys\n"
         "class Block:\n"
         "    def find_spec(self, name, path=None, target=None):\n"
         "        if name.split('.')[0] in {blocked!r}:\n"
         "            raise ModuleNotFoundError(f'No module named {{name!r}} (blocked)', name=name)\n"
         "sys.meta_path.insert(0, Block())\n")


def without_extra(code: str) -> subprocess.CompletedProcess:
    blocked = set(NOTEBOOK_EXTRA) | {"traitlets"}
    return subprocess.run([sys.executable, "-c", BLOCK.format(blocked=blocked) + code], capture_output=True, text=True,
                          cwd=REPO, timeout=600)


def test_the_notebook_extra_is_declared_in_pyproject():
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["notebook"]
    assert sorted(re.split(r"[=<>]", r)[0] for r in extra) == sorted(NOTEBOOK_EXTRA)


def test_the_library_and_the_cli_work_without_the_notebook_extra():
    """Every module but the two widget modules imports without ipywidgets and anywidget, and
    ``python -m samhw --help`` runs; the widgets say which extra to install."""
    modules = sorted(p.stem for p in (REPO / "samhw").glob("*.py") if p.stem not in {"widgets", "click_widget", "__main__"})
    done = without_extra("import importlib\n"
                         f"for m in {modules!r}: importlib.import_module('samhw.' + m)\n"
                         "import runpy; sys.argv = ['samhw', '--help']; runpy.run_module('samhw', run_name='__main__')\n")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "usage:" in done.stdout and "study" in done.stdout
    done = without_extra("import importlib\n"
                         "for m in ('samhw.widgets', 'samhw.click_widget'):\n"
                         "    try:\n"
                         "        importlib.import_module(m)\n"
                         "    except ModuleNotFoundError as err:\n"
                         "        print(m, err)\n")
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["samhw.widgets", "samhw.click_widget"], done.stdout + done.stderr[-3000:]
    assert all("pip install -e '.[notebook]'" in line for line in lines)


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












































# ----------------------------------------------------------------------------- with LiteMedSAM




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


