"""Training the image encoder's neck on a CPU from cached intermediate features.

LiteMedSAM's TinyViT encoder is ``patch_embed -> layers[0..3] -> neck``; the neck (two
convolutions and two LayerNorms, 256 channels at 64x64) holds 7.3% of the encoder's arithmetic
(``benchmarks/encoder_flops.py``). Everything before it is frozen, so its output, the features
(B, 320, 64, 64), is computed once per slice and cached (:class:`FeatureCache`); each training step
runs only ``neck(features)`` -> embeddings (B, 256, 64, 64) -> decoder. The last stage
(``layers[3]``, 29.5% of the arithmetic, four times the neck's) is not trained this way.

The features are a pure function of the encoder's weights before the neck, so the cache folder is
keyed by their fingerprint (the neck's own weights are not part of it).
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

__all__ = ["TAIL", "FEATURE_SHAPE", "FeatureCache", "check_tail", "encoder_features", "tail_embeddings", "tail_embedding_cache"]

#: The encoder's trainable tail: the submodule of :class:`SamModel` trained from cached features.
TAIL = "image_encoder.neck"
#: One slice's features, the input of the neck: (channels, height, width).
FEATURE_SHAPE = (320, 64, 64)


def check_tail(model: SamModel) -> None:
    """Refuse (:class:`ModelError`) a model whose encoder has no TinyViT neck to train from cached features."""
    if not hasattr(model.image_encoder, "neck") or not hasattr(model.image_encoder, "layers"):
        raise ModelError(f"model {model.name}: training the neck from cached features needs LiteMedSAM's TinyViT "
                         "encoder; train image_encoder instead")


def frozen_fingerprint(model: SamModel) -> str:
    """SHA-256 (hex) of the image encoder's weights before the neck: what the features depend on."""
    digest = hashlib.sha256(model.name.encode())
    for key, value in sorted(model.state_dict().items()):
        if key.startswith("image_encoder.") and not key.startswith(TAIL + "."):
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def encoder_features(model: SamModel, images: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
    """(B, H, W, 3) uint8 slices -> (B, 320, 64, 64) float32 features: the encoder up to its neck,
    in fp32 and without gradients (the encoder must be in eval mode, as for inference)."""
    check_tail(model)
    encoder = model.image_encoder
    with torch.inference_mode(), model.fp32():
        x = encoder.patch_embed(model.preprocess(images))
        for layer in encoder.layers:
            x = layer(x)
        side = int(round(x.shape[1] ** 0.5))
        return x.view(x.shape[0], side, side, x.shape[-1]).permute(0, 3, 1, 2).contiguous()


def tail_embeddings(model: SamModel, features: torch.Tensor) -> torch.Tensor:
    """(B, 320, 64, 64) features -> (B, 256, 64, 64) embeddings through the neck, in fp32,
    differentiably (the encoder's output, as :meth:`SamModel.encode` gives it)."""
    with model.fp32():
        return model.image_encoder.neck(features.to(model.device).float())


class FeatureCache(EmbeddingCache):
    """Disk cache of the features before the neck (fp16 by default), checksummed like embeddings.

    Folder: ``ROOT/features-<model>-<input size>-<normalisation>-before-neck-<fingerprint of the
    encoder's weights before the neck>-torch-fp32-<device type>-<storage>``.
    """

    shape = FEATURE_SHAPE

    def __init__(self, model: SamModel, root: str | os.PathLike | None = None, storage: str = "float16"):
        check_tail(model)
        super().__init__(model, root, storage)

    def folder_name(self) -> str:
        model = self.model
        return (f"features-{model.name}-{model.input_size}-{model.normalization}-before-neck-"
                f"{frozen_fingerprint(model)[:16]}-torch-fp32-{model.device.type}-{self.storage.name}")

    def compute(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        return encoder_features(self.model, images)


def tail_embedding_cache(model: SamModel, features: FeatureCache, images: Sequence[np.ndarray],
                         root: str | os.PathLike, batch_size: int = 8) -> EmbeddingCache:
    """An embedding cache under ``root`` for ``model``'s current weights, filled for ``images`` from
    their cached features through the (trained) neck, so that evaluation runs without encoding.

    Call :meth:`SamModel.weights_changed` after changing the neck, so that the cache key is new.
    """
    cache = EmbeddingCache(model, Path(root))
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            embeddings = tail_embeddings(model, torch.cat([features.get(image) for image in chunk]))
            for image, embedding in zip(chunk, embeddings.cpu().numpy()):
                cache.store(image, embedding)
    return cache
