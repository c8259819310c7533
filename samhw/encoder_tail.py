"""Training the image encoder's tail on a CPU from cached intermediate features.

LiteMedSAM's TinyViT encoder is ``patch_embed -> layers[0..3] -> neck``; the neck (two
convolutions and two LayerNorms, 256 channels at 64x64) holds 7.3% of the encoder's arithmetic and
the last stage (``layers[3]``, two transformer blocks at 64x64 with 320 channels) 29.5%
(``benchmarks/encoder_flops.py``). Everything before the trained tail is frozen, so its output, the
features (B, 320, 64, 64), is computed once per slice and cached (:class:`FeatureCache`); each training
step runs only the tail (the neck, or the last stage and the neck) -> embeddings (B, 256, 64, 64) ->
decoder. A cut is named by the first trained module: :data:`CUTS`.

The features are a pure function of the encoder's weights before the cut, so the cache folder is
keyed by their fingerprint (the tail's own weights are not part of it).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .cache import EmbeddingCache
from .errors import ModelError
from .models import SamModel

__all__ = ["TAIL", "LAST_STAGE", "CUTS", "FEATURE_SHAPE", "FeatureCache", "check_tail", "encoder_features",
           "tail_embeddings", "tail_embedding_cache"]

#: The encoder's neck, trained from cached features: a submodule of :class:`SamModel`.
TAIL = "image_encoder.neck"
#: The encoder's last stage (``layers[3]``), trained with the neck from cached features.
LAST_STAGE = "image_encoder.layers.3"
#: Where the cached features are taken: the cut's name -> the first trained submodule (everything
#: from it on is the tail; everything before it is frozen and cached).
CUTS = {"neck": TAIL, "last_stage": LAST_STAGE}
#: One slice's features, the input of the neck and of the last stage alike: (channels, height, width).
FEATURE_SHAPE = (320, 64, 64)


def check_tail(model: SamModel) -> None:
    """Refuse (:class:`ModelError`) a model whose encoder has no TinyViT neck to train from cached features."""
    if not hasattr(model.image_encoder, "neck") or not hasattr(model.image_encoder, "layers"):
        raise ModelError(f"model {model.name}: training the neck from cached features needs LiteMedSAM's TinyViT "
                         "encoder; train image_encoder instead")


def _tail_prefixes(cut: str) -> tuple[str, ...]:
    return (LAST_STAGE + ".", TAIL + ".") if cut == "last_stage" else (TAIL + ".",)


def _check_cut(cut: str) -> None:
    if cut not in CUTS:
        raise ValueError(f"cut must be one of {', '.join(CUTS)}, got {cut!r}")


def frozen_fingerprint(model: SamModel, cut: str = "neck") -> str:
    """SHA-256 (hex) of the image encoder's weights before ``cut``: what the features depend on."""
    _check_cut(cut)
    digest = hashlib.sha256(model.name.encode())
    for key, value in sorted(model.state_dict().items()):
        if key.startswith("image_encoder.") and not key.startswith(_tail_prefixes(cut)):
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _to_grid(tokens: torch.Tensor) -> torch.Tensor:
    """(B, N, C) tokens -> (B, C, side, side)."""
    side = int(round(tokens.shape[1] ** 0.5))
    return tokens.view(tokens.shape[0], side, side, tokens.shape[-1]).permute(0, 3, 1, 2)


def encoder_features(model: SamModel, images: np.ndarray | Sequence[np.ndarray], cut: str = "neck") -> torch.Tensor:
    """(B, H, W, 3) uint8 slices -> (B, 320, 64, 64) float32 features: the encoder up to ``cut``
    (its neck, or its last stage), in fp32 and without gradients (the encoder must be in eval mode,
    as for inference)."""
    check_tail(model)
    _check_cut(cut)
    encoder = model.image_encoder
    layers = encoder.layers[:-1] if cut == "last_stage" else encoder.layers
    with torch.inference_mode(), model.fp32():
        x = encoder.patch_embed(model.preprocess(images))
        for layer in layers:
            x = layer(x)
        return _to_grid(x).contiguous()


def tail_embeddings(model: SamModel, features: torch.Tensor, cut: str = "neck") -> torch.Tensor:
    """(B, 320, 64, 64) features taken at ``cut`` -> (B, 256, 64, 64) embeddings through the tail (the
    last stage if ``cut`` is ``last_stage``, then the neck), in fp32, differentiably (the encoder's
    output, as :meth:`SamModel.encode` gives it)."""
    _check_cut(cut)
    encoder = model.image_encoder
    with model.fp32():
        x = features.to(model.device).float()
        if cut == "last_stage":
            x = _to_grid(encoder.layers[-1](x.flatten(2).transpose(1, 2)))
        return encoder.neck(x)


class FeatureCache(EmbeddingCache):
    """Disk cache of the features before ``cut`` (fp16 by default), checksummed like embeddings.

    Folder: ``ROOT/features-<model>-<input size>-<normalisation>-before-<neck or last-stage>-<fingerprint
    of the encoder's weights before the cut>-torch-fp32-<device type>-<storage>``.
    """

    shape = FEATURE_SHAPE

    def __init__(self, model: SamModel, root: str | os.PathLike | None = None, storage: str = "float16",
                 cut: str = "neck"):
        check_tail(model)
        _check_cut(cut)
        self.cut = cut
        super().__init__(model, root, storage)

    def folder_name(self) -> str:
        model = self.model
        return (f"features-{model.name}-{model.input_size}-{model.normalization}-before-{self.cut.replace('_', '-')}-"
                f"{frozen_fingerprint(model, self.cut)[:16]}-torch-fp32-{model.device.type}-{self.storage.name}")

    def compute(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        return encoder_features(self.model, images, self.cut)


def tail_embedding_cache(model: SamModel, features: FeatureCache, images: Sequence[np.ndarray],
                         root: str | os.PathLike, batch_size: int = 8) -> EmbeddingCache:
    """An embedding cache under ``root`` for ``model``'s current weights, filled for ``images`` from
    their cached features through the (trained) tail, so that evaluation runs without encoding.

    Call :meth:`SamModel.weights_changed` after changing the tail, so that the cache key is new.
    """
    cache = EmbeddingCache(model, Path(root))
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            embeddings = tail_embeddings(model, torch.cat([features.get(image) for image in chunk]), features.cut)
            for image, embedding in zip(chunk, embeddings.cpu().numpy()):
                cache.store(image, embedding)
    return cache
