"""One image, many prompts: :class:`Predictor`, shaped like ``segment_anything.SamPredictor``.

``set_image`` computes (or reads from an :class:`samhw.cache.EmbeddingCache`) the embedding of one
2-D slice and prepares what the decoder needs of it once; ``predict`` then decodes prompts in
SAM's formats: XY points (N, 2) with labels (N,) (1 foreground, 0 background), an XYXY box (4,),
and optionally the low-resolution logits (1, 256, 256) of an earlier prediction. Coordinates are
pixels of the image as given (x = column, y = row), whatever its size.

The study's path is :meth:`Predictor.predict_prompts`: samhw prompts in batches, the mask of
highest predicted IoU with ``multimask_output``; ``samhw.evaluate`` and ``samhw.study`` decode
through it (an embedding from the cache goes in with :meth:`Predictor.set_embedding`), and
``samhw.interactive`` through :meth:`Predictor.refine`, so with the study's cache (float16
embeddings) its masks are the study's bit for bit.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .backends import Backend, backend_named
from .cache import EmbeddingCache, cache_serves
from .models import SamModel, load_model, single_thread
from .prompts import Prompt

__all__ = ["Predictor", "as_slice_image", "read_slice_image"]

#: Side of the low-resolution logits the mask decoder returns (and takes back as ``mask_input``).
LOW_RES = 256
DECODERS = ("auto", "fast", "plain")


def read_slice_image(path: str | os.PathLike) -> np.ndarray:
    """The image in a file: TIFF through tifffile, other formats (PNG, JPEG, ...) through Pillow;
    returned as stored (see :func:`as_slice_image` for what is accepted)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file; check the path given to set_image")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            return tifffile.imread(path)
        from PIL import Image

        with Image.open(path) as handle:
            return np.asarray(handle)
    except Exception as err:  # readers raise many types for damaged or unknown files
        raise ValueError(f"{path}: cannot read this image ({type(err).__name__}: {err}); "
                         "pass a TIFF, PNG or JPEG file, or the image as an array") from err


def as_slice_image(image: np.ndarray) -> np.ndarray:
    """A 2-D slice as the models take it: (H, W, 3) uint8.

    Accepts (H, W), (H, W, 1), (H, W, 3) and (H, W, 4) (alpha dropped). uint8 values are kept; any
    other numeric type (float, uint16, ...) is min-max scaled to 0..255 and rounded, since MRI
    intensities have no fixed range (a constant image becomes all zeros).
    """
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] in (1, 3, 4):
        image = image[..., :3] if image.shape[2] != 1 else image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"expected a 2-D slice (H, W) or (H, W, 3), got shape {image.shape}; pass one slice "
                         "of a volume (e.g. volume[k]) with channels last")
    if min(image.shape[:2]) < 1:
        raise ValueError(f"the image is empty: shape {image.shape}")
    if image.dtype == bool or not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise ValueError(f"expected a numeric image, got dtype {image.dtype} (a boolean array is a mask, not an image)")
    if image.dtype != np.uint8:
        values = image.astype(np.float64)
        if not np.isfinite(values).all():
            raise ValueError("the image has NaN or infinite values")
        lo, hi = values.min(), values.max()
        image = np.rint((values - lo) * (255.0 / (hi - lo) if hi > lo else 0.0)).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image)


class Predictor:
    """Embeds one image, then predicts masks for prompts on it, as ``SamPredictor`` does.

    ``model``: a :class:`samhw.models.SamModel` (any registered model or fine-tuned checkpoint, on
    any device). ``cache``: an :class:`samhw.cache.EmbeddingCache` of a model with the same image
    encoder (a fine-tuned decoder shares the pretrained model's), so an image is encoded once
    across runs (the study's cache stores float16). ``decoder``: ``fast`` (samhw's rearranged
    decoder), ``plain`` (SAM's own modules) or ``auto`` (plain if the model was loaded with
    ``plain=True``, else fast); the two agree to float rounding. The choice is made here, once
    (:attr:`backend`).
    """

    def __init__(self, model: SamModel, cache: EmbeddingCache | None = None, decoder: str = "auto"):
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
        if not cache_serves(cache, model):
            raise ValueError("the cache holds another image encoder's embeddings: make it with EmbeddingCache(model)")
        self.model = model
        self.cache = cache
        self._decoder: Backend | None = None if decoder == "auto" else backend_named(decoder)  # None: the model's
        self.reset_image()

    @classmethod
    def from_name(cls, name: str = "litemedsam", checkpoint: str | os.PathLike | None = None,
                  device: str | torch.device | None = "auto", cache: str | os.PathLike | bool | None = None,
                  decoder: str = "auto") -> Predictor:
        """Load model ``name`` (weights: ``checkpoint``, else its default) on ``device`` (``auto``:
        cuda, then mps, then cpu). ``cache``: a folder for an EmbeddingCache (the ONNX encoder goes
        there too), True for the default folder (``samhw.cache.default_cache_dir``), or None."""
        folder = cache if isinstance(cache, (str, os.PathLike)) else None
        model = load_model(name, checkpoint, device, plain=decoder == "plain", cache_dir=folder)
        embeddings = EmbeddingCache(model, folder) if cache is True or folder is not None else None
        return cls(model, embeddings, decoder)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def backend(self) -> Backend:
        """The decoder path (:mod:`samhw.backends`): the model's own with ``decoder="auto"``, else the one named."""
        return self._decoder or self.model.backend

    # -- the image

    def reset_image(self) -> None:
        """Forget the current image."""
        self.is_image_set = False
        self.image: np.ndarray | None = None
        self.features: torch.Tensor | None = None
        self.context = None
        self.original_size: tuple[int, int] | None = None

    def set_image(self, image: np.ndarray | str | os.PathLike) -> None:
        """Embed one slice, from an array or an image file (see :func:`as_slice_image` for the
        shapes and types taken); through the cache when the predictor has one."""
        if isinstance(image, (str, os.PathLike)):
            image = read_slice_image(image)
        image = as_slice_image(image)
        embedding = self.cache.get(image) if self.cache is not None else self.model.encode([image])
        self.set_embedding(embedding, image.shape[:2])
        self.image = image

    def set_embedding(self, embedding: torch.Tensor, original_size: tuple[int, int]) -> None:
        """Use a known (1, 256, 64, 64) embedding of an image of ``original_size`` (H, W), e.g. one
        from the cache (as ``SamPredictor.set_torch_image`` takes a prepared image)."""
        if embedding.ndim != 4 or embedding.shape[0] != 1:
            raise ValueError(f"expected one embedding (1, C, h, w), got {tuple(embedding.shape)}")
        h, w = (int(v) for v in original_size)
        if h < 1 or w < 1:
            raise ValueError(f"original_size must be (H, W) of the image, got {tuple(original_size)}")
        self.reset_image()
        self.features = embedding.to(self.device)
        self.context = self.model.image_context(self.features, self._decoder)
        self.original_size = (h, w)
        self.is_image_set = True

    def get_image_embedding(self) -> torch.Tensor:
        """The current image's (1, 256, 64, 64) embedding."""
        self._require_image()
        return self.features

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise RuntimeError("no image set: call predictor.set_image(image) before predicting")

    # -- SAM's interface

    def predict(self, point_coords: np.ndarray | None = None, point_labels: np.ndarray | None = None,
                box: np.ndarray | None = None, mask_input: np.ndarray | None = None,
                multimask_output: bool = True, return_logits: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for one prompt on the current image, in ``SamPredictor.predict``'s formats.

        ``point_coords`` (N, 2) XY pixels with ``point_labels`` (N,) (1 foreground, 0 background);
        ``box`` (4,) XYXY pixels; ``mask_input`` (1, 256, 256) low-resolution logits from an
        earlier call (e.g. ``low_res[np.argmax(scores)][None]``). Returns masks (C, H, W) bool at
        the image's size (float32 logits with ``return_logits``), predicted IoU (C,) and
        low-resolution logits (C, 256, 256): C = 3 with ``multimask_output``, else 1.
        """
        self._require_image()
        points, boxes = self._prompt_tensors(point_coords, point_labels, box)
        masks_in = self._mask_tensor(mask_input)
        if points is None and boxes is None and masks_in is None:
            raise ValueError("no prompt: give point_coords and point_labels, a box, or mask_input")
        with single_thread(self.device), torch.inference_mode(), self.model.fp32():
            if masks_in is not None:  # every mask with a mask input: SAM's own decoder, on either backend
                low_res, scores = self.model.decode(self.features, points, boxes, multimask_output, masks=masks_in)
            else:
                low_res, scores = self.backend.decode_all(self.model, self.context, points, boxes, multimask_output)
            logits = self.model.postprocess(low_res.float(), self.original_size)[0]
            masks = logits if return_logits else logits > 0
        return masks.cpu().numpy(), scores[0].float().cpu().numpy(), low_res[0].float().cpu().numpy()

    def predict_prompt(self, prompt: Prompt, multimask_output: bool = True, mask_input: np.ndarray | None = None,
                       return_logits: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`predict` for a samhw :class:`samhw.prompts.Prompt` (points, labels, box)."""
        has_points = len(prompt.labels) > 0
        return self.predict(prompt.points if has_points else None, prompt.labels if has_points else None,
                            prompt.box, mask_input, multimask_output, return_logits)

    def _prompt_tensors(self, point_coords, point_labels, box):
        """Points ((1, N, 2), (1, N)) and box (1, 4) in the model frame (or None), after checking them."""
        h, w = self.original_size
        points = boxes = None
        if (point_coords is None) != (point_labels is None):
            raise ValueError("point_coords and point_labels go together: give both or neither")
        if point_coords is not None:
            coords = np.asarray(point_coords, dtype=np.float64)
            labels = np.asarray(point_labels)
            if coords.ndim != 2 or coords.shape[1] != 2 or len(coords) == 0:
                raise ValueError(f"point_coords must be (N, 2) XY pixels with N >= 1, got shape {coords.shape}")
            if labels.shape != (len(coords),):
                raise ValueError(f"point_labels must be ({len(coords)},), one per point, got shape {labels.shape}")
            if not np.isin(labels, (0, 1)).all():
                raise ValueError(f"point_labels must be 1 (foreground) or 0 (background), got {np.unique(labels).tolist()}")
            outside = ~(np.isfinite(coords).all(1) & (coords[:, 0] >= 0) & (coords[:, 0] < w)
                        & (coords[:, 1] >= 0) & (coords[:, 1] < h))
            if outside.any():
                raise ValueError(f"points {coords[outside].tolist()} lie outside the {h}x{w} image (H x W); points "
                                 f"are (x, y) = (column, row) with 0 <= x < {w}, 0 <= y < {h}")
            points = (coords, labels.astype(np.int64))
        if box is not None:
            b = np.asarray(box, dtype=np.float64)
            if b.shape != (4,):
                raise ValueError(f"box must be (4,) XYXY pixels, got shape {b.shape}")
            if not (np.isfinite(b).all() and 0 <= b[0] <= b[2] <= w and 0 <= b[1] <= b[3] <= h):
                raise ValueError(f"box {b.tolist()} is not [x_min, y_min, x_max, y_max] inside the {h}x{w} image "
                                 f"(H x W): need 0 <= x_min <= x_max <= {w} and 0 <= y_min <= y_max <= {h}")
            boxes = b
        if points is None and boxes is None:
            return None, None
        coords, labels = points if points is not None else (np.zeros((0, 2)), np.zeros(0, np.int64))
        return self.model.prompt_tensors([Prompt(coords, labels, boxes)], self.original_size)

    def _mask_tensor(self, mask_input) -> torch.Tensor | None:
        if mask_input is None:
            return None
        m = np.asarray(mask_input, dtype=np.float32)
        if m.shape == (LOW_RES, LOW_RES):
            m = m[None]
        if m.shape != (1, LOW_RES, LOW_RES):
            raise ValueError(f"mask_input must be (1, {LOW_RES}, {LOW_RES}) low-resolution logits (one of the "
                             f"low_res_logits predict returned, e.g. low_res[np.argmax(scores)][None]), got shape {m.shape}")
        return torch.as_tensor(m[None], device=self.device)

    # -- the study's interface

    def predict_prompts_torch(self, prompts: Sequence[Prompt], multimask_output: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks (B, H, W) bool and predicted IoU (B,) as tensors on the model's device, for B prompts
        of equal structure (number of points, box or not): the mask of highest predicted IoU of
        three with ``multimask_output``, else the single mask. The study's decoding call."""
        self._require_image()
        with single_thread(self.device):
            return self.model.predict_masks(self.context, prompts, self.original_size, multimask_output, self._decoder)

    def predict_prompts(self, prompts: Sequence[Prompt], multimask_output: bool) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`predict_prompts_torch` as numpy arrays: masks (B, H, W) bool and predicted IoU (B,)."""
        masks, scores = self.predict_prompts_torch(prompts, multimask_output)
        return masks.cpu().numpy(), scores.cpu().numpy()

    def refine(self, prompt: Prompt, mask_input: torch.Tensor | None = None,
               multimask_output: bool = False) -> tuple[np.ndarray, float, torch.Tensor]:
        """One prompt decoded with an optional ``mask_input`` (1, 1, 256, 256) of logits (an earlier
        output's, as the third value returned here): the mask (H, W) bool, its predicted IoU and its
        low-resolution logits (1, 1, 256, 256) float32 on the model's device. With
        ``multimask_output`` the best of SAM's three masks by predicted IoU, else the single mask.
        Interactive refinement's decoding call (:mod:`samhw.interactive`)."""
        self._require_image()
        with single_thread(self.device):
            masks, scores, low_res = self.backend.predict(self.model, self.context, [prompt], self.original_size,
                                                          multimask_output, mask_input)
        return masks[0].cpu().numpy(), float(scores[0]), low_res
