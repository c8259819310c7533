"""The click-to-segment widget's logic, driven from Python (the browser test clicks the real picture)."""
import base64
import io

import numpy as np
import pytest
from PIL import Image

from samhw.cache import EmbeddingCache
from samhw.click_widget import ClickSegmenter, render_png
from samhw.models import build_model
from samhw.prompts import Prompt
from samhw.refine import next_click


@pytest.fixture
def segmenter(lite_model, real_slices, cache_dir):
    item = real_slices.slices[2]
    embedding = EmbeddingCache(lite_model, cache_dir).get(item.image)
    other = build_model("litemedsam")  # random weights: a second model that answers differently
    seg = ClickSegmenter({"pretrained": (lite_model, embedding), "random": (other, embedding)}, item.image, item.mask)
    return seg, item


def _tumor_pixel(mask: np.ndarray) -> tuple[int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs[len(xs) // 2]), int(ys[len(ys) // 2])


def test_browser_coordinates_map_to_slice_pixels_as_xy(segmenter):
    seg, item = segmenter
    seg._message(None, {"kind": "click", "x": 2 * 150 + 1.7, "y": 2 * 40 + 0.2, "negative": False}, [])
    assert seg.state()["points"] == [(150, 40, 1)]  # (x, y) = (column, row), zoom 2
    seg._message(None, {"kind": "drag", "x0": 2 * 120, "y0": 2 * 90, "x1": 2 * 60 + 1, "y1": 2 * 30}, [])
    assert seg.state()["box"] == (60, 30, 120, 90)  # sorted corners
    seg._message(None, {"kind": "click", "x": 20, "y": 30, "negative": True}, [])
    assert seg.state()["points"][-1] == (10, 15, 0)
    seg.negative.value = True
    seg.click(5, 6)
    assert seg.state()["points"][-1] == (5, 6, 0)  # the toggle makes a plain click negative
    seg.click(400, 3)  # outside the 256x256 slice: ignored
    assert len(seg.state()["points"]) == 3


def test_each_action_decodes_and_undo_reset_restore(segmenter):
    seg, item = segmenter
    assert seg.state()["area"] is None and seg.mask is None
    ys, xs = np.nonzero(item.mask)
    seg.drag(xs.min(), ys.min(), xs.max(), ys.max())
    after_box = seg.mask.copy()
    state = seg.state()
    assert state["iou"] > 0.3 and 0 <= state["pred_iou"] <= 1.5 and seg.last_update_s is not None
    seg.click(*_tumor_pixel(item.mask))
    assert len(seg.state()["points"]) == 1
    seg.undo()
    np.testing.assert_array_equal(seg.mask, after_box)
    assert seg.state()["points"] == []
    seg.reset()
    assert seg.mask is None and seg.state()["box"] is None


def test_suggestion_is_the_protocols_next_click_and_is_drawn(segmenter):
    seg, item = segmenter
    seg.click(*_tumor_pixel(item.mask))
    expected = next_click(item.mask, seg.mask)
    assert seg.suggest() == expected
    assert "suggested" in seg.status.value
    png = Image.open(io.BytesIO(base64.b64decode(seg.canvas.png)))
    assert png.size == (512, 512)
    ring = np.asarray(png)[2 * expected.y + 1, 2 * expected.x + 1 + 4 + 4]  # on the ring, right of the centre
    assert ring.tolist() == [255, 255, 255]


def test_switching_models_decodes_the_same_prompt_again(segmenter):
    seg, item = segmenter
    ys, xs = np.nonzero(item.mask)
    seg.drag(xs.min(), ys.min(), xs.max(), ys.max())
    pretrained = seg.mask.copy()
    seg.model.value = "random"
    assert seg.state()["model"] == "random" and seg.state()["box"] is not None
    assert not np.array_equal(seg.mask, pretrained)
    seg.model.value = "pretrained"
    np.testing.assert_array_equal(seg.mask, pretrained)


def test_render_png_puts_points_at_their_pixels():
    image = np.zeros((20, 30, 3), np.uint8)
    prompt = Prompt(np.array([[25.0, 4.0], [3.0, 15.0]]), np.array([1, 0]))
    picture = np.asarray(Image.open(io.BytesIO(render_png(image, None, prompt, zoom=3))))
    assert picture.shape == (60, 90, 3)
    assert picture[3 * 4 + 1, 3 * 25 + 1].tolist() == [46, 204, 64]  # positive at x=25, y=4
    assert picture[3 * 15 + 1, 3 * 3 + 1].tolist() == [255, 65, 54]  # negative at x=3, y=15
