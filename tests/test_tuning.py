"""Notebook 05's views: parameter counts, a training batch and its loss, the side-by-side explorer."""
from pathlib import Path

import numpy as np
import pytest
import torch
from stand_ins import StandInDecoder

from samhw import train, tuning, widgets
from samhw.data import Slice, SliceRecord
from samhw.metrics import iou
from samhw.prompts import PromptSpec, Target


class BoxModel(StandInDecoder):
    """Predicts the prompt's box shrunk by ``shrink`` px per side (or a disc around the last point)."""

    def __init__(self, shrink: int, encoder_key: str = "same"):
        self.shrink, self.encoder_key, self.calls, self.embeddings = shrink, encoder_key, [], []

    def predict(self, embedding, prompts, shape, multimask):
        self.calls.append(prompts[0])
        self.embeddings.append(float(embedding.flatten()[0]))
        masks = np.zeros((1, *shape), bool)
        p, s = prompts[0], self.shrink
        if p.box is not None:
            x0, y0, x1, y1 = (int(v) for v in p.box)
            masks[0, y0 + s:y1 + 1 - s, x0 + s:x1 + 1 - s] = True
        else:
            rows, cols = np.mgrid[:shape[0], :shape[1]]
            x, y = p.points[-1]
            masks[0] = (cols - x) ** 2 + (rows - y) ** 2 <= (8 - s) ** 2
        return masks, np.array([0.5])


class ConstantCache:
    """The embeddings of ``model``'s image encoder: ``value`` everywhere."""

    def __init__(self, model, value: float = 0.0):
        self.model, self.value = model, value

    def get(self, image):
        return torch.full((1, 256, 64, 64), self.value)


def _slice(name: str, y0: int, y1: int, x0: int, x1: int) -> Slice:
    mask = np.zeros((96, 128), bool)
    mask[y0:y1, x0:x1] = True  # wide and off-centre: an x/y swap misses it
    image = np.full((96, 128, 3), 50, np.uint8)
    image[mask] = 140
    record = SliceRecord(name, "TCGA_XX_0001", "TCGA_XX_0001_19990101", 1, Path(name + ".tif"), Path(name + "_mask.tif"))
    return Slice(record, image, mask)


def test_compare_explorer_decodes_one_prompt_with_each_model():
    slices = [_slice("TCGA_XX_0001_19990101_1", 20, 40, 60, 110), _slice("TCGA_XX_0001_19990101_2", 50, 80, 10, 40)]
    left, right = BoxModel(0), BoxModel(3)
    ex = widgets.CompareExplorer({"pretrained": (left, ConstantCache(left)), "tuned": (right, ConstantCache(right, 1.0))},
                                 slices, ["box:0", "box:20"])
    assert ex.renders == 1 and ex.error is None
    assert left.calls[-1] is right.calls[-1]  # one drawn prompt, both models
    assert (left.embeddings[-1], right.embeddings[-1]) == (0.0, 1.0)  # each from its own encoder's cache
    assert ex.state["models"]["pretrained"]["iou"] == 1.0  # the tight box itself
    truth = slices[0].mask
    shrunk = np.zeros_like(truth)
    shrunk[23:37, 63:107] = True
    assert ex.state["models"]["tuned"]["iou"] == pytest.approx(iou(shrunk, truth))
    first = bytes(ex.image.value)
    ex.prompt.value = "box:20"
    expected = PromptSpec.parse("box:20").draw(Target(truth, slices[0].image, slices[0].slice_id), 0)
    assert np.array_equal(left.calls[-1].box, expected.box) and right.calls[-1] is left.calls[-1]
    assert ex.state["models"]["pretrained"]["iou"] < 1.0 and bytes(ex.image.value) != first
    assert "pretrained IoU" in ex.summary() and "tuned IoU" in ex.summary() and "box:20" in ex.summary()
    ex.prompt.value = "box:0"
    ex.slice.value = 1
    assert ex.state["slice"] == slices[1].slice_id and ex.state["models"]["pretrained"]["iou"] == 1.0
    with pytest.raises(ValueError, match="cache of 'b' holds another image encoder's embeddings"):
        widgets.CompareExplorer({"a": (left, ConstantCache(left)), "b": (BoxModel(0, "other"), ConstantCache(left))},
                                slices, ["box:0"])
    for wrong in (left, (left, None)):
        with pytest.raises(TypeError, match=r"models\['a'\] must be a \(model, embedding cache\) pair"):
            widgets.CompareExplorer({"a": wrong}, slices, ["box:0"])


def test_trainable_table_counts_the_models_parts(lite_model):
    table = tuning.trainable_table(lite_model, ("decoder",))
    decoder = sum(p.numel() for p in lite_model.mask_decoder.parameters())
    assert table.loc["mask_decoder", "parameters"] == decoder and table.loc["mask_decoder", "trained"] == "trained"
    assert table.loc["image_encoder", "trained"] == table.loc["prompt_encoder", "trained"] == "frozen"
    assert table.loc["total", "parameters"] == sum(p.numel() for p in lite_model.parameters())
    assert table.loc["total", "trained"] == f"{decoder:,} trained"


@pytest.mark.slow
def test_the_batch_and_its_loss_are_the_training_codes(lite_model, real_slices, cache_dir):
    """draw_batch picks the slices and prompts finetune's first step picks, and loss_table's batch
    mean is the loss that step trains on (samhw.train's own batch loss)."""
    from samhw.cache import EmbeddingCache

    config = train.FinetuneConfig(batch_size=3, parts=("decoder", "prompt_encoder"))
    batch = tuning.draw_batch(config, real_slices, epoch=0, step=0)
    order = np.random.default_rng(np.random.SeedSequence([config.seed, 0])).permutation(len(real_slices))
    assert [e["slice"].slice_id for e in batch] == [real_slices.slices[j].slice_id for j in order[:3]]
    cache = EmbeddingCache(lite_model, cache_dir)
    table = tuning.loss_table(lite_model, cache, batch)
    with torch.no_grad():
        inputs = train.training_batch(lite_model, config, cache, [e["slice"] for e in batch], 0)
        loss, _, iou_loss = train.batch_loss(lite_model, *inputs, config.iou_loss_weight)
    assert table.loc["batch mean", "loss"] == pytest.approx(float(loss), abs=1e-4)
    assert table.loc["batch mean", "IoU-head MSE"] == pytest.approx(iou_loss, abs=1e-4)
    assert (table.drop(index="batch mean")["masks"] == [3 if e["spec"].multimask else 1 for e in batch]).all()
