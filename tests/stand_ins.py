"""Stand-ins shared by the tests of the notebooks' modules (widgets, notebook, analysis): synthetic
slices with small asymmetric masks and a model whose mask is the box (or a disc around the last
point), so that the expected IoU is known without SAM."""
from pathlib import Path

import numpy as np
import torch

from samhw.data import Slice, SliceRecord


class StandInDecoder:
    """The decoding interface a Predictor needs, on the CPU: subclasses define ``predict``
    (embedding, prompts, shape, multimask) -> (masks (N, H, W) bool, scores (N,)) in numpy."""

    device = torch.device("cpu")

    def image_context(self, embedding, plain=None):
        return embedding

    def predict_masks(self, context, prompts, shape, multimask, plain=None):
        masks, scores = self.predict(context, prompts, shape, multimask)
        return torch.from_numpy(masks), torch.from_numpy(scores)


class FakeModel(StandInDecoder):
    """Predicts the box's pixels (or a disc of radius 8 around the last point); counts calls."""

    def __init__(self, fail: bool = False):
        self.calls = 0
        self.fail = fail

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


def two_colour_slice() -> Slice:
    """A 60x40 mask whose left 40 columns are one colour and right 20 another: the bilateral
    weights favour the majority (left) colour, so their centroid lies left of the mask's centre."""
    mask = rect_mask(30, 70, 20, 80)
    image = np.full((128, 128, 3), 30, np.uint8)
    image[30:70, 20:60] = (100, 100, 100)
    image[30:70, 60:80] = (220, 40, 40)
    return make_slice("TCGA_XX_0003_19990101_3", mask, image)


