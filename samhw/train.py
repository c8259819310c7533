"""Fine-tuning (the study's E4): ``python -m samhw finetune``.

The mask decoder (by default) is trained on the train split's patients with prompts drawn as
the study draws them, from cached embeddings, and selected on the validation patients. Every
epoch writes ``last.pt`` atomically; ``best.pt`` holds the epoch of highest validation IoU. A run
is a pure function of its options on the CPU: the order of slices and every prompt come from
generators seeded by (seed, epoch, slice), so ``--resume`` after a kill, even mid-epoch, ends
with the weights of an uninterrupted run.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import __version__, onnx_encoder
from .cache import EmbeddingCache
from .data import Dataset, Slice, load_dataset
from .encoder_tail import LAST_STAGE, TAIL, FeatureCache, check_tail, tail_embedding_cache, tail_embeddings
from .evaluate import evaluate
from .fileio import atomic_write, atomic_write_text, storage_errors
from .models import CHECKPOINT_FORMAT, ModelError, SamModel, load_model, resolve_device, tensors_digest, verify_checkpoint
from .prompts import Prompt, PromptError, PromptSpec, Target, parse_prompts, prompt_rng
from .resources import PeakMemory

__all__ = ["FinetuneConfig", "FinetuneError", "TRAIN_MIX", "VAL_PROMPTS", "PARTS", "AUGMENTATIONS", "MASK_LOSSES",
           "finetune", "training_prompt", "augmented", "augment_variants",
           "training_batch", "batch_embeddings", "training_mode", "batch_loss", "train_step", "trainable_parameters", "adamw", "training_forward",
           "prompt_loss", "prompt_losses", "parse_mix"]

#: Prompts drawn in training, with their probabilities: boxes with the report's random margins
#: (each side 0..M px outward, M = 20 as in the report, and M = 10 and 0 so that tight boxes are
#: seen too: trained on box:20 alone, a model learns to shrink every box), one foreground point by
#: each of the study's single-point strategies, the bilateral pair and ``center_inside`` included
#: (SAM's three masks, the best-fitting one trained), and a foreground point with a negative one.
#: Two thirds of the negatives are ``background_far`` (anywhere in the brain, 20 px or more from
#: the tumor) and one third the tight box's corner: trained on corners alone, a negative point says
#: where the tumor is, and the model learns to segment around it (SPEC E6).
TRAIN_MIX: dict[str, float] = {
    "box:0": 0.15,
    "box:10": 0.15,
    "box:20": 0.15,
    **{name: 0.43 / 9 for name in ("random_box", "random_mask", "random_gaussian", "random_bilateral",
                                    "center_box", "center_mask", "center_gaussian", "center_bilateral",
                                    "center_inside")},
    "random_mask+background": 0.02,
    "center_gaussian+background": 0.02,
    "random_mask+background_far": 0.04,
    "center_gaussian+background_far": 0.04,
}
#: Prompts of the validation score (seed 0); a checkpoint's score is their mean IoU.
VAL_PROMPTS = ("box:0", "box:20", "random_gaussian", "center_gaussian", "center_gaussian+background_far")
#: Trainable parts: option name -> submodule of :class:`SamModel`. ``neck`` (the image encoder's
#: last module) and ``last_stage`` (its last TinyViT stage) train from cached features of the frozen
#: encoder before them (``samhw.encoder_tail``).
PARTS = {"decoder": "mask_decoder", "prompt_encoder": "prompt_encoder", "image_encoder": "image_encoder",
         "neck": TAIL, "last_stage": LAST_STAGE}
#: Augmentations of a training slice, each applied with probability 1/2 per slice and epoch: ``flip``
#: mirrors image and mask left-right; ``gamma`` changes the contrast by one gamma per slice, drawn once
#: as exp(+-U(0.15, 0.4)) (0.67-0.86 or 1.16-1.49), so that each slice has a bounded number of variants
#: to encode and cache.
AUGMENTATIONS = ("flip", "gamma")
#: Mask losses: ``dice_bce`` (Dice + binary cross-entropy, the default) or ``focal_dice`` (SAM's own:
#: 20 x sigmoid focal loss (alpha 0.25, gamma 2) + Dice).
MASK_LOSSES = ("dice_bce", "focal_dice")


class FinetuneError(ValueError):
    """Options that cannot train (unknown part, zero epochs, ...) or a run folder in the wrong state."""


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything that determines a fine-tuning run's weights (``resume`` must find the same)."""

    model: str = "litemedsam"
    checkpoint: str | None = None
    parts: tuple[str, ...] = ("decoder", "prompt_encoder")
    epochs: int = 12
    batch_size: int = 8
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 20
    iou_loss_weight: float = 1.0
    mix: tuple[tuple[str, float], ...] = tuple(TRAIN_MIX.items())
    val_prompts: tuple[str, ...] = VAL_PROMPTS
    seed: int = 0
    limit: int | None = None
    val_limit: int | None = None
    augment: tuple[str, ...] = ()
    mask_loss: str = "dice_bce"

    def __post_init__(self) -> None:
        unknown = sorted(set(self.parts) - set(PARTS))
        if unknown or not self.parts:
            raise FinetuneError(f"parts to train must be among {', '.join(PARTS)}, got {list(self.parts)}")
        if set(self.augment) - set(AUGMENTATIONS) or len(set(self.augment)) != len(self.augment):
            raise FinetuneError(f"augmentations must be distinct names among {', '.join(AUGMENTATIONS)}, "
                                f"got {list(self.augment)}")
        if self.mask_loss not in MASK_LOSSES:
            raise FinetuneError(f"mask loss must be one of {', '.join(MASK_LOSSES)}, got {self.mask_loss!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.warmup_steps < 0 or self.seed < 0:
            raise FinetuneError("epochs and batch size must be at least 1, warmup and seed not negative")
        if not (math.isfinite(self.lr) and self.lr > 0 and math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise FinetuneError(f"lr must be a positive number and weight decay a number >= 0, "
                                f"got lr {self.lr} and weight decay {self.weight_decay}")
        parse_prompts([name for name, _ in self.mix])
        # validation rows carry each prompt's standard name: keep that one (sigma=100 is the default, box:020 is box:20)
        object.__setattr__(self, "val_prompts", tuple(spec.name for spec in parse_prompts(list(self.val_prompts))))
        if any(w < 0 for _, w in self.mix) or sum(w for _, w in self.mix) <= 0:
            raise PromptError("training prompt weights must be non-negative and not all zero")

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))  # tuples -> lists, as stored in checkpoints

    @classmethod
    def from_dict(cls, data: dict) -> "FinetuneConfig":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["parts"] = tuple(values["parts"])
        values["mix"] = tuple((str(n), float(w)) for n, w in values["mix"])
        values["val_prompts"] = tuple(values["val_prompts"])
        values["augment"] = tuple(values.get("augment", ()))
        return cls(**values)


def parse_mix(items: Sequence[str]) -> tuple[tuple[str, float], ...]:
    """``["box:20@2", "center_mask"]`` -> ``(("box:20", 2.0), ("center_mask", 1.0))``: a prompt
    name, optionally ``@WEIGHT`` (1 by default; weights are normalised)."""
    mix = []
    for item in items:
        name, at, weight = item.partition("@")
        try:
            mix.append((PromptSpec.parse(name).name, float(weight) if at else 1.0))
        except ValueError as err:
            raise PromptError(f"training prompt {item!r}: expected NAME or NAME@WEIGHT, e.g. box:20@0.5 ({err})") from None
    return tuple(mix)


# ----------------------------------------------------------------------------- prompts and loss


def _gamma_variant(config: FinetuneConfig, item: Slice) -> np.ndarray:
    """``item``'s image under its one gamma (a function of the seed and the slice)."""
    rng = prompt_rng(config.seed, item.slice_id, "finetune-gamma")
    gamma = math.exp(rng.choice([-1.0, 1.0]) * rng.uniform(0.15, 0.4))
    return np.round(255.0 * (item.image / 255.0) ** gamma).astype(np.uint8)


def _variant(config: FinetuneConfig, item: Slice, chosen: Sequence[str]) -> Slice:
    image, mask = item.image, item.mask
    if "gamma" in chosen:
        image = _gamma_variant(config, item)
    if "flip" in chosen:
        image, mask = np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(mask[:, ::-1])
    return Slice(item.record, image, mask)


def augmented(config: FinetuneConfig, item: Slice, epoch: int) -> Slice:
    """``item`` as trained in ``epoch``: each of ``config.augment`` applied with probability 1/2,
    drawn from a generator of (seed, epoch, slice); the slice itself without augmentations."""
    if not config.augment:
        return item
    rng = prompt_rng(config.seed, item.slice_id, f"finetune-augment-{epoch}")
    draws = rng.random(len(AUGMENTATIONS)) < 0.5  # one draw per known augmentation: adding one keeps the others'
    return _variant(config, item, [name for name, drawn in zip(AUGMENTATIONS, draws) if drawn and name in config.augment])


def augment_variants(config: FinetuneConfig, item: Slice) -> list[np.ndarray]:
    """Every image :func:`augmented` can give for ``item`` (the slice's own first): what the cache must hold."""
    subsets: list[list[str]] = [[]]
    for name in config.augment:
        subsets += [subset + [name] for subset in subsets]
    return [_variant(config, item, subset).image for subset in subsets]


def training_prompt(config: FinetuneConfig, item: Slice, epoch: int) -> tuple[PromptSpec, object]:
    """The prompt of ``item`` in ``epoch``: a spec drawn from the mix, then drawn on the slice,
    both from generators of (seed, epoch, slice)."""
    names = [PromptSpec.parse(n) for n, _ in config.mix]
    weights = np.array([w for _, w in config.mix], dtype=np.float64)
    rng = prompt_rng(config.seed, item.slice_id, f"finetune-mix-{epoch}")
    spec = names[int(rng.choice(len(names), p=weights / weights.sum()))]
    draw_seed = int(rng.integers(0, 2**31))
    return spec, spec.draw(Target(item.mask, item.image, item.slice_id), draw_seed)


def prompt_losses(logits: torch.Tensor, predicted_iou: torch.Tensor, truth: torch.Tensor, multimask: bool,
                  iou_loss_weight: float, mask_loss: str = "dice_bce") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, mask, IoU-head) loss of each of B prompts, each (B,).

    ``logits`` (B, K, H, W) and ``predicted_iou`` (B, K) for K masks per prompt, ``truth`` (B, H, W)
    in {0, 1}. The mask loss (``mask_loss``, one of :data:`MASK_LOSSES`) is Dice + BCE, or 20 x focal
    + Dice, of the best-fitting mask when ``multimask`` (SAM's rule for ambiguous prompts) else of
    mask 0; the IoU head learns every mask's actual IoU (mean squared error over the K masks).
    """
    logits = logits.float()
    flat = logits.flatten(2)
    target = truth.flatten(1).float()[:, None].expand_as(flat)  # a view: no copy per mask
    probs = flat.sigmoid()
    dice = 1 - (2 * (probs * target).sum(2) + 1) / (probs.sum(2) + target.sum(2) + 1)
    bce = F.binary_cross_entropy_with_logits(flat, target, reduction="none")
    if mask_loss == "focal_dice":  # sigmoid focal loss as in SAM and torchvision.ops.sigmoid_focal_loss
        p_true = probs * target + (1 - probs) * (1 - target)
        alpha = 0.25 * target + 0.75 * (1 - target)
        per_mask = dice + 20 * (alpha * (1 - p_true) ** 2 * bce).mean(2)  # (B, K)
    elif mask_loss == "dice_bce":
        per_mask = dice + bce.mean(2)
    else:
        raise FinetuneError(f"mask loss must be one of {', '.join(MASK_LOSSES)}, got {mask_loss!r}")
    chosen = per_mask.min(1).values if multimask else per_mask[:, 0]
    with torch.no_grad():
        hard, positive = flat > 0, target > 0
        inter = (hard & positive).sum(2).float()
        union = (hard | positive).sum(2).float()
        actual = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    iou_loss = (predicted_iou.float() - actual).square().mean(1)
    return chosen + iou_loss_weight * iou_loss, chosen.detach(), iou_loss.detach()


def prompt_loss(logits: torch.Tensor, predicted_iou: torch.Tensor, truth: torch.Tensor, multimask: bool,
                iou_loss_weight: float, mask_loss: str = "dice_bce") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, mask, IoU-head) loss of one prompt: :func:`prompt_losses` of ``logits`` (K, H, W),
    ``predicted_iou`` (K,) and ``truth`` (H, W)."""
    total, masks, iou_loss = prompt_losses(logits[None], predicted_iou[None], truth[None], multimask, iou_loss_weight,
                                           mask_loss)
    return total[0], masks[0], iou_loss[0]


# ----------------------------------------------------------------------------- the run


def _learning_rate(config: FinetuneConfig, step: int, total: int) -> float:
    """Linear warm-up, then cosine decay to zero: a pure function of the step (nothing to resume)."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
    return config.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def trainable_parameters(model: SamModel, parts: Sequence[str]) -> list[torch.nn.Parameter]:
    """Switch gradients on for the parameters of ``parts`` (keys of :data:`PARTS`) and off for every
    other; returns the trained parameters in the model's order."""
    prefixes = tuple(PARTS[part] + "." for part in parts)
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(prefixes))
        if p.requires_grad:
            params.append(p)
    return params


def adamw(params: Sequence[torch.nn.Parameter], device: torch.device, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """The fine-tuning optimizer: AdamW, fused into one kernel per parameter where torch has one
    (CPU, CUDA): the same update as the loop over its steps, to float rounding, in one pass over memory."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=device.type in ("cpu", "cuda"))


def _slice_by_slice(model: SamModel) -> bool:
    """Whether training runs SAM's own decoder, one slice at a time: on the plain path (the reference)
    and on CUDA, where the fast decoder's rearranging costs more kernel launches than it saves."""
    # Measured before the batched step (one slice at a time on both): a decoder-only step of batch 8 on
    # an H200 took 225 ms with the fast decoder against 151 ms with SAM's (results/gpu-h200/run1_bench_cuda.md),
    # and 221 ms under bf16 autocast against 138 ms in fp32 (results/bench/cuda-nvidia-h200.md); the batched
    # fast decoder on CUDA is not measured yet.
    return model.plain or model.device.type == "cuda"


def training_mode(model: SamModel) -> None:
    """Put ``model`` in training mode, its BatchNorm layers (in the TinyViT encoder's convolutions)
    excepted: they keep normalising with their pretrained statistics and do not update them, since
    batches of a few MRI slices would replace them with noisy ones (and training and evaluation would
    then compute different functions)."""
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


def _tail_cut(config: FinetuneConfig) -> str | None:
    """Where the cached features are taken when part of the encoder trains from them: ``last_stage``
    if it trains, else ``neck`` if that trains, else None (also when the whole encoder trains)."""
    if "image_encoder" in config.parts:
        return None
    return next((cut for cut in ("last_stage", "neck") if cut in config.parts), None)


def training_forward(model: SamModel, embedding: torch.Tensor, prompt: Prompt, shape: tuple[int, int],
                     multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Every mask of one prompt through SAM's decoder, differentiably: logits (K, H, W) on the slice
    of ``shape`` (H, W) and predicted IoU (K,), from an embedding (C, h, w); K = 3 with
    ``multimask`` else 1. In fp32, also inside an autocast region (see :func:`batch_loss`)."""
    with model.fp32():
        points, boxes = model.prompt_tensors([prompt], shape)
        low, scores = model.decode(embedding[None].float(), points, boxes, multimask)
        return model.postprocess(low, shape)[0], scores[0]


def _groups(prompts: Sequence[tuple[PromptSpec, Prompt]], shapes: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Indices of the prompts that share one decoder call: the same structure (hence the same sparse
    tokens: a lone point is padded with a not-a-point token), mask choice and slice shape; in order."""
    groups: dict[tuple, list[int]] = {}
    for i, ((spec, prompt), shape) in enumerate(zip(prompts, shapes)):
        groups.setdefault((prompt.structure, spec.multimask, tuple(shape)), []).append(i)
    return list(groups.values())


def _grouped_losses(model: SamModel, embeddings: torch.Tensor, prompts: Sequence[tuple[PromptSpec, Prompt]],
                    truths: Sequence[torch.Tensor], iou_loss_weight: float, mask_loss: str) -> torch.Tensor:
    """(3, B) total, mask and IoU-head loss of each prompt, the fast decoder run once per group of
    :func:`_groups` over that group's images (one prompt each)."""
    fast = model.fast_decoder
    out = torch.empty(3, len(prompts), device=model.device)
    for group in _groups(prompts, [t.shape for t in truths]):
        spec = prompts[group[0]][0]
        shape = tuple(truths[group[0]].shape)
        points, boxes = model.prompt_tensors([prompts[i][1] for i in group], shape)
        index = torch.tensor(group, device=model.device)
        ctx = fast.prepare(embeddings.index_select(0, index).float())
        low, scores = fast.decode_all(ctx, points, boxes, spec.multimask)
        truth = torch.stack([truths[i] for i in group])
        out[:, index] = torch.stack(prompt_losses(model.postprocess(low, shape), scores, truth, spec.multimask,
                                                  iou_loss_weight, mask_loss))
    return out


def batch_loss(model: SamModel, embeddings: torch.Tensor, prompts: Sequence[tuple[PromptSpec, Prompt]],
               truths: Sequence[torch.Tensor], iou_loss_weight: float = 1.0,
               mask_loss: str = "dice_bce") -> tuple[torch.Tensor, float, float]:
    """Mean loss of B prompts, prompt ``b`` on embedding ``b``: (total, differentiable; mask loss; IoU-head loss).

    ``embeddings`` (B, C, h, w); ``prompts`` B (spec, prompt) pairs as :func:`training_prompt` draws
    them; ``truths`` B masks (H, W) in {0, 1} on the model's device. On the CPU the fast decoder runs
    once per group of prompts with the same structure, over the group's images; on the plain path and
    on CUDA, SAM's decoder runs slice by slice. Both compute the same loss (to float rounding).
    The decoder and the loss run in fp32, also inside an autocast region (a trained image encoder's).
    """
    with model.fp32():
        if _slice_by_slice(model):
            rows = [torch.stack(prompt_loss(*training_forward(model, embedding, prompt, tuple(truth.shape), spec.multimask),
                                            truth, spec.multimask, iou_loss_weight, mask_loss))
                    for embedding, (spec, prompt), truth in zip(embeddings, prompts, truths)]
            losses = torch.stack(rows, dim=1)
        else:
            losses = _grouped_losses(model, embeddings, prompts, truths, iou_loss_weight, mask_loss)
    mask_mean, iou_mean = losses[1:].detach().mean(1).tolist()
    return losses[0].mean(), mask_mean, iou_mean


def train_step(model: SamModel, optimizer: torch.optim.Optimizer, embeddings: torch.Tensor,
               prompts: Sequence[tuple[PromptSpec, Prompt]], truths: Sequence[torch.Tensor],
               iou_loss_weight: float = 1.0, mask_loss: str = "dice_bce") -> tuple[float, float, float]:
    """One optimizer step on :func:`batch_loss`; returns its (total, mask, IoU-head) losses."""
    optimizer.zero_grad(set_to_none=True)
    loss, mask_mean, iou_mean = batch_loss(model, embeddings, prompts, truths, iou_loss_weight, mask_loss)
    loss.backward()
    optimizer.step()
    return float(loss.detach()), mask_mean, iou_mean


def batch_embeddings(model: SamModel, config: FinetuneConfig, cache: EmbeddingCache,
                     batch: Sequence[Slice]) -> torch.Tensor:
    """(B, 256, 64, 64) embeddings of the batch's slices on the model's device: from the image
    encoder (under :meth:`SamModel.autocast`, differentiable) when it is trained, from the trained neck
    on the cached features (``cache`` a :class:`FeatureCache`) when the neck trains alone, else from the cache."""
    if "image_encoder" in config.parts:
        with model.autocast():
            return model.image_encoder(model.preprocess([s.image for s in batch]))
    cached = torch.cat([cache.get(s.image) for s in batch]).to(model.device)
    cut = _tail_cut(config)
    return cached if cut is None else tail_embeddings(model, cached, cut)


def training_batch(model: SamModel, config: FinetuneConfig, cache: EmbeddingCache, batch: Sequence[Slice],
                   epoch: int) -> tuple[torch.Tensor, list[tuple[PromptSpec, Prompt]], list[torch.Tensor]]:
    """What :func:`train_step` needs for ``batch`` in ``epoch``: embeddings, drawn prompts and masks of
    the slices as :func:`augmented` gives them."""
    batch = [augmented(config, item, epoch) for item in batch]
    prompts = [training_prompt(config, item, epoch) for item in batch]
    truths = [torch.from_numpy(item.mask).to(model.device) for item in batch]
    return batch_embeddings(model, config, cache, batch), prompts, truths


def validate(model: SamModel, cache: EmbeddingCache, dataset: Dataset, prompts: Sequence[str]) -> dict[str, float]:
    """Mean IoU per prompt on ``dataset`` (seed 0), in this process (the weights live in memory)."""
    specs = parse_prompts(list(prompts))
    rows = [r for rows in evaluate(model, cache, dataset, specs, [0], progress=False, workers=1) for r in rows]
    frame = pd.DataFrame(rows)
    means = {spec.name: float(frame.loc[frame["prompt"] == spec.name, "iou"].mean()) for spec in specs}
    missing = [name for name, mean in means.items() if math.isnan(mean)]
    if missing:
        raise FinetuneError(f"validation gave no IoU for {', '.join(missing)}: no best checkpoint can be chosen")
    return means


def _checkpoint(model: SamModel, config: FinetuneConfig, run: dict, epoch: int, log: list, best: dict | None,
                optimizer: torch.optim.Optimizer | None) -> dict:
    state = model.state_dict()
    record = {"format": CHECKPOINT_FORMAT, "model": model.name, "state_dict": state, "tensors_sha256": tensors_digest(state),
              "options": config.to_dict(), **run, "epoch": epoch, "log": log, "best": best, "samhw": __version__}
    if optimizer is not None:
        record["optimizer"] = optimizer.state_dict()
    return record


def _resume(path: Path, config: FinetuneConfig, run: dict, model: SamModel, optimizer: torch.optim.Optimizer) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ModelError(f"{path}: cannot read this checkpoint to resume ({type(err).__name__}); "
                         "delete it to start over") from err
    verify_checkpoint(path, state)
    stored = FinetuneConfig.from_dict(state["options"])
    if stored != config:
        diff = {k: (v, getattr(config, k)) for k, v in asdict(stored).items() if getattr(config, k) != v}
        raise FinetuneError(f"{path}: was trained with other options; --resume needs the same ones. "
                         f"Differences (checkpoint, now): {diff}")
    if state["split"] != run["split"]:
        raise FinetuneError(f"{path}: was trained on other data ({state['split']['data']}, "
                            f"{len(state['split']['train'])} train patients) than now ({run['split']['data']}, "
                            f"{len(run['split']['train'])}); --resume needs the same --data and --skip-bad")
    model.load_state_dict(state["state_dict"])
    optimizer.load_state_dict(state["optimizer"])
    return state


def finetune(config: FinetuneConfig, out: str | os.PathLike, data: str | None = None, device: str = "auto",
             cache_dir: str | None = None, resume: bool = False, skip_bad: bool = False,
             progress: bool = True, command: str | None = None,
             on_epoch: Callable[[Path, list[dict]], object] | None = None) -> dict:
    """Run (or resume) a fine-tuning run into ``out``; returns the best epoch's record.

    Writes ``last.pt`` (every epoch, with the optimizer), ``best.pt`` (highest mean validation
    IoU) and ``log.json``. Both checkpoints load with ``load_model(config.model, path)``.
    ``on_epoch(out, log)`` is called after each epoch's files are written (the command line
    draws ``curves.png`` there).
    """
    out = Path(out)
    last, best_path = out / "last.pt", out / "best.pt"
    if last.exists() and not resume:
        raise FinetuneError(f"{last} exists: pass --resume to continue that run, or choose another --out")
    if resume and not last.exists():
        raise FinetuneError(f"{last} not found: nothing to resume (run without --resume to start)")
    resolve_device(device)  # an unusable --device is an error before anything is created
    with storage_errors(out / "last.pt"):
        out.mkdir(parents=True, exist_ok=True)
    model = load_model(config.model, config.checkpoint, device, cache_dir=cache_dir)
    cut = _tail_cut(config)
    if cut:
        check_tail(model)  # before any data is read
    base = model.fingerprint()
    train_set = load_dataset(data, "train", skip_bad=skip_bad, limit=config.limit)
    val_set = load_dataset(data, "val", skip_bad=skip_bad, limit=config.val_limit)
    for dataset in (train_set, val_set):
        tqdm.write(dataset.report(), file=sys.stderr)
    run = {"base_weights": base, "base_checkpoint": config.checkpoint, "command": command,
           "split": {"train": train_set.patients, "val": val_set.patients, "data": str(train_set.root)}}
    train_encoder = "image_encoder" in config.parts
    if train_encoder:  # embeddings change with the weights: validation encodes into a scratch cache
        model.onnx_dir = out / "scratch" / "onnx"
    train_tail = cut is not None  # the cache holds the features before the cut
    cache = FeatureCache(model, cache_dir, cut=cut) if train_tail else EmbeddingCache(model, cache_dir)
    if not train_encoder:
        images = [image for s in train_set.slices for image in augment_variants(config, s)]
        tqdm.write(f"{cache.ensure(images + [s.image for s in val_set.slices], progress=progress)} "
                   f"(cache: {cache.folder})", file=sys.stderr)
    params = trainable_parameters(model, config.parts)
    optimizer = adamw(params, model.device, config.lr, config.weight_decay)
    log: list[dict] = []
    best: dict | None = None
    start_epoch = 0
    if resume:
        state = _resume(last, config, run, model, optimizer)
        log, best, start_epoch = state["log"], state["best"], state["epoch"] + 1
        done = f"epochs 1-{start_epoch}" if start_epoch > 1 else "epoch 1"
        tqdm.write(f"resuming {last}: {done} done (best so far: epoch {best['epoch']}, validation "
                   f"IoU {best['val_mean']:.4f}); continuing with epoch {start_epoch + 1} of {config.epochs}",
                   file=sys.stderr)
    steps_per_epoch = math.ceil(len(train_set) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    for epoch in range(start_epoch, config.epochs):
        started = time.time()
        order = np.random.default_rng(np.random.SeedSequence([config.seed, epoch])).permutation(len(train_set))
        training_mode(model)
        sums = np.zeros(3)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}", unit="step",
                   disable=not progress)
        with PeakMemory(model.device, interval_s=2.0) as memory:
            for i in bar:
                batch = [train_set.slices[j] for j in order[i * config.batch_size:(i + 1) * config.batch_size]]
                lr = _learning_rate(config, epoch * steps_per_epoch + i, total_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                sums += train_step(model, optimizer, *training_batch(model, config, cache, batch, epoch),
                                   iou_loss_weight=config.iou_loss_weight, mask_loss=config.mask_loss)
                bar.set_postfix(loss=f"{sums[0] / (i + 1):.4f}", slices_s=f"{(i + 1) * config.batch_size / (time.time() - started):.1f}")
            model.eval()  # TinyViT recomputes its cached attention biases from the new weights
            train_s = time.time() - started
            if train_encoder or train_tail:
                model.weights_changed()  # a new encoder key: validation encodes afresh, or from the features
            if train_encoder:
                val_cache = EmbeddingCache(model, out / "scratch")
            elif train_tail:
                val_cache = tail_embedding_cache(model, cache, [s.image for s in val_set.slices], out / "scratch")
            else:
                val_cache = cache
            val = validate(model, val_cache, val_set, config.val_prompts)
            if train_tail:
                shutil.rmtree(out / "scratch" / val_cache.folder.name, ignore_errors=True)
            if train_encoder:
                shutil.rmtree(out / "scratch" / val_cache.folder.name, ignore_errors=True)
                onnx_encoder.remove(model.onnx_path)
        loss, mask_loss, iou_loss = (float(v) for v in sums / steps_per_epoch)  # plain floats: weights_only loads
        entry = {"epoch": epoch + 1, "loss": loss, "mask_loss": mask_loss, "iou_loss": iou_loss, "lr_end": lr, "val": val,
                 "val_mean": float(np.mean(list(val.values()))), "train_s": round(train_s, 1),
                 "epoch_s": round(time.time() - started, 1),
                 "peak_memory_mb": None if memory.peak_mb is None else round(memory.peak_mb),
                 "device": str(model.device)}
        log.append(entry)
        improved = best is None or entry["val_mean"] > best["val_mean"]
        if improved:
            best = {"epoch": epoch + 1, "val_mean": entry["val_mean"], "val": val}
            record = _checkpoint(model, config, run, epoch, log, best, None)
            atomic_write(best_path, lambda handle: torch.save(record, handle))
        record = _checkpoint(model, config, run, epoch, log, best, optimizer)
        atomic_write(last, lambda handle: torch.save(record, handle))
        text = json.dumps({"options": config.to_dict(), **run, "best": best, "epochs": log}, indent=1) + "\n"
        atomic_write_text(out / "log.json", text)
        if on_epoch is not None:
            on_epoch(out, log)
        tqdm.write(f"epoch {epoch + 1}: loss {entry['loss']:.4f}, validation IoU "
                   + ", ".join(f"{p} {v:.3f}" for p, v in val.items())
                   + f" (mean {entry['val_mean']:.4f}{', best so far: saved best.pt' if improved else ''}); "
                   f"{entry['epoch_s']:.0f} s", file=sys.stderr)
    return best
