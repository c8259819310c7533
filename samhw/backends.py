"""How a :class:`samhw.models.SamModel` computes: its backend, chosen once when the model is built.

* :data:`FAST` (the default): on the CPU the image encoder runs through ONNX Runtime where it can
  (:mod:`samhw.onnx_encoder`), and the mask decoder as :class:`samhw.fast_decoder.FastDecoder`
  rearranges it, with a per-image context made once for all prompts of the image.
* :data:`PLAIN` (``load_model(..., plain=True)``): the reference, eager PyTorch with SAM's own
  modules; the per-image context is the embedding itself.

The two agree to float rounding. A backend holds no state: it is given the model whose weights
it runs. Shapes: an embedding is (1, 256, 64, 64); ``points`` ((B, N, 2) XY, (B, N) labels) and
``boxes`` (B, 4) XYXY are in the model's input frame (:meth:`SamModel.prompt_tensors`); low-resolution
logits are (B, K, 256, 256).
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Sequence

import torch

from .fast_decoder import ImageContext
from .onnx_encoder import OnnxEncoder
from .prompts import Prompt

if TYPE_CHECKING:
    from .models import SamModel

__all__ = ["Backend", "FAST", "PLAIN", "backend_named"]


class Backend:
    """One way to run a model's encoder and decoder; :data:`FAST` and :data:`PLAIN` are the two."""

    #: ``fast`` or ``plain`` (what ``Predictor(decoder=...)`` names it).
    name = ""
    #: True for the reference eager path (what run records write as ``plain``).
    plain = False

    def __repr__(self) -> str:
        return f"<{self.name} backend>"

    # -- encoder

    def encoder_name(self, model: SamModel) -> str:
        """``onnx-fp32``, ``torch-fp32`` (the CPU) or ``torch-fp32-<device type>`` (CUDA, MPS)."""
        if model.device.type != "cpu":
            return f"torch-fp32-{model.device.type}"
        return "torch-fp32"

    def embed(self, model: SamModel, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) preprocessed input -> (B, 256, 64, 64) embeddings (no grad, fp32 asked by the caller)."""
        return model.image_encoder(x)

    def autocast(self, model: SamModel) -> AbstractContextManager:
        """The precision of a trained image encoder: fp32."""
        return model.fp32()

    # -- decoder

    def context(self, model: SamModel, embedding: torch.Tensor) -> torch.Tensor | ImageContext:
        """What the decoder needs of one image, made once for all its prompts."""
        raise NotImplementedError

    def decode_best(self, model: SamModel, context, points, boxes, multimask: bool,
                    mask_input: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, 1, 256, 256) of the chosen mask and its predicted IoU (B,): the best of SAM's
        masks 1-3 by predicted IoU with ``multimask``, else mask 0. ``mask_input``: (1, 1, 256, 256)
        logits of an earlier prediction, or None."""
        raise NotImplementedError

    def decode_all(self, model: SamModel, context, points, boxes,
                   multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Every mask as SAM's ``MaskDecoder`` returns them: logits (B, K, 256, 256), predicted IoU (B, K)."""
        raise NotImplementedError

    def predict(self, model: SamModel, context, prompts: Sequence[Prompt], shape: tuple[int, int], multimask: bool,
                mask_input: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Binary masks (B, H, W) on the image of ``shape`` (H, W), predicted IoU (B,) and the chosen
        masks' logits (B, 1, 256, 256), for B ``prompts`` of one image and of equal structure (see
        :meth:`decode_best`); tensors on the model's device."""
        with torch.inference_mode(), model.fp32():
            points, boxes = model.prompt_tensors(prompts, shape)
            low_res, scores = self.decode_best(model, context, points, boxes, multimask, mask_input)
            low_res = low_res.float()
            return model.postprocess(low_res, shape)[:, 0] > 0, scores.float(), low_res


class _Fast(Backend):
    name = "fast"

    def encoder_name(self, model: SamModel) -> str:
        if model.device.type == "cpu" and OnnxEncoder.suitable(model.image_encoder):
            return "onnx-fp32"
        return super().encoder_name(model)

    def embed(self, model: SamModel, x: torch.Tensor) -> torch.Tensor:
        encoder = model.ready_encoder()
        return encoder(x) if encoder is not None else model.image_encoder(x)

    def autocast(self, model: SamModel) -> AbstractContextManager:
        """bf16 on CUDA, fp32 elsewhere."""
        if model.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return model.fp32()

    def context(self, model: SamModel, embedding: torch.Tensor) -> ImageContext:
        with torch.inference_mode(), model.fp32():
            return model.fast_decoder.prepare(embedding.to(model.device))

    def decode_best(self, model, context, points, boxes, multimask, mask_input=None):
        if mask_input is not None:
            context = model.fast_decoder.with_mask(context, mask_input.to(model.device))
        low_res, scores = model.fast_decoder.decode(context, points, boxes, multimask)
        return low_res, scores[:, 0]

    def decode_all(self, model, context, points, boxes, multimask):
        return model.fast_decoder.decode_all(context, points, boxes, multimask)


class _Plain(Backend):
    name = "plain"
    plain = True

    def context(self, model: SamModel, embedding: torch.Tensor) -> torch.Tensor:
        return embedding.to(model.device)

    def decode_best(self, model, context, points, boxes, multimask, mask_input=None):
        low_res, scores = model.decode(context, points, boxes, multimask, masks=mask_input)
        best = scores.argmax(dim=1)
        rows = torch.arange(len(scores), device=low_res.device)
        return low_res[rows, best][:, None], scores[rows, best]

    def decode_all(self, model, context, points, boxes, multimask):
        return model.decode(context, points, boxes, multimask)


FAST: Backend = _Fast()
PLAIN: Backend = _Plain()


def backend_named(name: str) -> Backend:
    """:data:`FAST` or :data:`PLAIN` by name (``fast`` or ``plain``)."""
    for backend in (FAST, PLAIN):
        if backend.name == name:
            return backend
    raise ValueError(f"unknown backend {name!r}: use fast or plain")
