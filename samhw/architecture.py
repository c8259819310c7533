"""SAM's parts traced with live tensor shapes, for the architecture notebook
(``notebooks/01_sam_architecture``): forward hooks on the image encoder, prompt encoder and mask
decoder of a loaded model (or of SAM ViT-B without weights on PyTorch's ``meta`` device), the
parameter counts, the positional encoding, the prompt tokens and the decoder's four outputs.
Predictions go through :class:`samhw.Predictor` (SAM's own decoder, ``plain``).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pandas as pd

from .prompts import Prompt, PromptSpec, Target

__all__ = ["trace", "parameter_table", "vit_b_without_weights", "dataflow_shapes", "encoder_trace",
           "positional_encoding", "sparse_tokens", "mask_path", "DECODER_NOTES", "decoder_trace", "all_masks",
           "embedding_pca"]


def _shape(value) -> str:
    import torch

    if isinstance(value, torch.Tensor):
        return "x".join(str(d) for d in value.shape)
    if isinstance(value, (tuple, list)):
        shapes = [_shape(v) for v in value]
        return ", ".join(s for s in shapes if s)
    return ""


def trace(module, run: Callable[[], object], names: Sequence[str], notes: dict[str, str] | None = None) -> pd.DataFrame:
    """Run ``run()`` with forward hooks on ``module``'s submodules ``names`` and tabulate, in call
    order, each call's input and output shapes, the submodule's type and parameter count."""
    import torch

    notes = notes or {}
    calls: list[dict] = []
    handles = []
    modules = dict(module.named_modules())
    for name in names:
        sub = modules[name]

        def hook(mod, args, kwargs, output, name=name):
            inputs = [_shape(a) for a in args] + [_shape(v) for v in kwargs.values()]
            calls.append({"module": name, "type": type(mod).__name__, "input": " | ".join(s for s in inputs if s),
                          "output": _shape(output), "parameters": sum(p.numel() for p in mod.parameters()),
                          "what it does": notes.get(name, "")})

        handles.append(sub.register_forward_hook(hook, with_kwargs=True))
    try:
        with torch.inference_mode():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return pd.DataFrame(calls)


def parameter_table(models: dict) -> pd.DataFrame:
    """Parameters of the image encoder, prompt encoder and mask decoder of each model (millions)."""
    parts = ["image_encoder", "prompt_encoder", "mask_decoder"]
    out = {}
    for label, model in models.items():
        counts = {p: sum(t.numel() for t in getattr(model, p).parameters()) for p in parts}
        counts["total"] = sum(counts.values())
        out[label] = counts
    return pd.DataFrame(out).map(lambda n: f"{n / 1e6:.3f} M")


def vit_b_without_weights(meta: bool = True):
    """SAM ViT-B without its trained weights. On PyTorch's ``meta`` device (default) the modules and
    shapes are real but there are no numbers, so a forward pass only propagates shapes and costs
    nothing; with ``meta=False`` it is built on the CPU with random weights (seed 0) and computes."""
    import torch

    from .models import build_model

    if not meta:
        torch.manual_seed(0)
        return build_model("vit_b")
    with torch.device("meta"):
        return build_model("vit_b")


def dataflow_shapes(model, image: np.ndarray, prompt: Prompt, embedding=None) -> dict[str, str]:
    """The shapes along SAM's data flow for one slice and prompt, measured with hooks while a
    :class:`samhw.Predictor` (SAM's own decoder) predicts (the image encoder runs unless the
    slice's ``embedding`` is given, e.g. from the cache)."""
    import torch

    from .predictor import Predictor

    shapes: dict[str, str] = {}
    x = model.preprocess([image])
    shapes["image"] = "x".join(str(d) for d in image.shape)
    shapes["input"] = _shape(x)
    with torch.inference_mode():
        embedding = model.image_encoder(x) if embedding is None else embedding.to(model.device)
    shapes["embedding"] = _shape(embedding)
    predictor = Predictor(model, decoder="plain")
    predictor.set_embedding(embedding, image.shape[:2])
    seen = trace(model, lambda: predictor.predict_prompt(prompt, multimask_output=True),
                 ["prompt_encoder", "mask_decoder.transformer", "mask_decoder.output_upscaling",
                  "mask_decoder.output_hypernetworks_mlps.0", "mask_decoder.iou_prediction_head"])
    by = dict(zip(seen["module"], seen["output"]))
    shapes["sparse"], shapes["dense"] = by["prompt_encoder"].split(", ")
    shapes["pe"] = _shape(model.prompt_encoder.get_dense_pe())
    shapes["tokens"] = seen.set_index("module").loc["mask_decoder.transformer", "input"].split(" | ")[-1]
    shapes["transformer"] = by["mask_decoder.transformer"]
    shapes["upscaled"] = by["mask_decoder.output_upscaling"]
    shapes["hyper"] = by["mask_decoder.output_hypernetworks_mlps.0"]
    shapes["iou"] = by["mask_decoder.iou_prediction_head"]
    # SAM's decoder makes one mask per IoU output (hypernetwork weights . upscaled features), before
    # the predictor keeps masks 1-3 (multimask) or mask 0.
    batch, n_masks = shapes["iou"].split("x")
    shapes["masks"] = "x".join([batch, n_masks, *shapes["upscaled"].split("x")[-2:]])
    shapes["output"] = f"{image.shape[0]}x{image.shape[1]}"
    return shapes


def _conv_note(conv) -> str:
    k = "x".join(str(v) for v in conv.kernel_size)
    return f"{k} conv, {conv.in_channels} -> {conv.out_channels} channels, stride {conv.stride[0]}"


def encoder_trace(model, image: np.ndarray | None = None) -> pd.DataFrame:
    """The image encoder's stages with live shapes: SAM's ViT (patch embedding, 12-32 transformer
    blocks, the neck) or LiteMedSAM's TinyViT (patch embedding, four stages, the same neck).
    A model on the ``meta`` device (:func:`vit_b_without_weights`) gets a shape-only input."""
    import torch

    enc = model.image_encoder
    size = model.input_size
    if model.device.type == "meta":
        x = torch.empty(1, 3, size, size, device="meta")
    else:
        x = model.preprocess([image])
    notes = {"patch_embed": "patches -> tokens" if hasattr(enc, "blocks") else "two stride-2 convs: 1/4 resolution"}
    names = ["patch_embed"]
    if hasattr(enc, "blocks"):  # SAM ViT
        for i, block in enumerate(enc.blocks):
            names.append(f"blocks.{i}")
            notes[f"blocks.{i}"] = (f"attention in {block.window_size}x{block.window_size} windows" if block.window_size
                                    else "global attention over all 64x64 tokens")
    else:  # TinyViT
        for i, layer in enumerate(enc.layers):
            names.append(f"layers.{i}")
            kinds = sorted({type(b).__name__ for b in layer.blocks})
            down = "" if getattr(layer, "downsample", None) is None else " + patch merging"
            notes[f"layers.{i}"] = f"{len(layer.blocks)} x {'/'.join(kinds)}{down}"
    for i, part in enumerate(enc.neck):
        names.append(f"neck.{i}")
        notes[f"neck.{i}"] = _conv_note(part) if hasattr(part, "kernel_size") else "LayerNorm over channels"
    return trace(enc, lambda: enc(x), names, notes)


def positional_encoding(model) -> tuple[np.ndarray, np.ndarray]:
    """The prompt encoder's random Fourier features: the (2, C/2) Gaussian frequency matrix and the
    (C, 64, 64) encoding of the embedding grid's cell centres (``get_dense_pe``)."""
    import torch

    with torch.inference_mode():
        pe = model.prompt_encoder.pe_layer
        return (pe.positional_encoding_gaussian_matrix.cpu().numpy(),
                model.prompt_encoder.get_dense_pe()[0].cpu().numpy())


def sparse_tokens(model, target: Target, point: str = "center_mask") -> pd.DataFrame:
    """How points and boxes become tokens: for one point and for the tight box, each token's shape
    and the check that it equals the positional encoding of its (pixel-centred, normalised)
    coordinates plus the learned embedding of its kind (max abs difference ~1e-7)."""
    import torch

    enc = model.prompt_encoder
    kinds = {-1: "padding ('not a point')", 0: "background point", 1: "foreground point", 2: "box top-left corner",
             3: "box bottom-right corner"}
    out = []
    with torch.inference_mode():
        for name in (point, "box:0"):
            prompt = PromptSpec.parse(name).draw(target, 0)
            points, boxes = model.prompt_tensors([prompt], target.shape)
            sparse, _ = enc(points=points, boxes=boxes, masks=None)
            if boxes is None:  # a point alone is followed by a padding token
                coords = torch.cat([points[0], torch.zeros(1, 1, 2, device=points[0].device)], dim=1)
                labels = [int(v) for v in points[1][0]] + [-1]
            else:
                coords, labels = boxes.reshape(1, 2, 2), [2, 3]
            pe = enc.pe_layer.forward_with_coords(coords + 0.5, enc.input_image_size)[0]
            for k, label in enumerate(labels):
                learned = enc.not_a_point_embed.weight[0] if label == -1 else enc.point_embeddings[label].weight[0]
                expected = (learned if label == -1 else pe[k] + learned)
                out.append({"prompt": name, "token": k, "kind": kinds[label],
                            "at (model frame)": "" if label == -1 else ", ".join(f"{v:.0f}" for v in coords[0, k].tolist()),
                            "sparse shape": _shape(sparse), "= PE + learned embedding":
                                bool(torch.allclose(sparse[0, k], expected, atol=1e-5))})
    return pd.DataFrame(out)


def mask_path(model, mask: np.ndarray) -> tuple[pd.DataFrame, np.ndarray, bool]:
    """The dense path: a mask prompt at 4x the embedding's resolution through ``mask_downscaling``
    (table of live shapes), its (256, 64, 64) output, and whether the prompt encoder's dense output
    without a mask is the learned no-mask embedding broadcast over the grid."""
    import torch

    enc = model.prompt_encoder
    x = torch.as_tensor(np.asarray(mask, dtype=np.float32)[None, None], device=model.device)
    x = torch.nn.functional.interpolate(x, enc.mask_input_size, mode="bilinear", align_corners=False)
    notes = {f"mask_downscaling.{i}": (_conv_note(m) if hasattr(m, "kernel_size") else type(m).__name__)
             for i, m in enumerate(enc.mask_downscaling)}
    out: dict = {}
    table = trace(enc, lambda: out.setdefault("dense", enc.mask_downscaling(x)), list(notes), notes)
    with torch.inference_mode():
        _, dense = enc(points=None, boxes=None, masks=None)
        no_mask = bool(torch.equal(dense[0], enc.no_mask_embed.weight[0][:, None, None].expand_as(dense[0])))
    return table, out["dense"][0].cpu().numpy(), no_mask


DECODER_NOTES = {
    "self_attn": "step 1: self-attention among the tokens",
    "cross_attn_token_to_image": "step 2: tokens (queries) attend to the image embedding",
    "mlp": "step 3: MLP on each token",
    "cross_attn_image_to_token": "step 4: image embedding (queries) attends to the tokens",
    "final_attn_token_to_image": "last token -> image attention",
    "output_upscaling.0": "transposed conv: 64 -> 128 px",
    "output_upscaling.3": "transposed conv: 128 -> 256 px",
    "iou_prediction_head": "IoU head: IoU token -> quality of each of the 4 masks",
}


def decoder_trace(model, embedding, prompt: Prompt, shape: tuple[int, int]) -> pd.DataFrame:
    """The mask decoder's steps with live shapes for one prompt (a :class:`samhw.Predictor` with
    SAM's own decoder predicts it): the two-way transformer's two blocks of four steps, the final
    attention, upscaling, the hypernetwork MLPs and the IoU head."""
    from .predictor import Predictor

    dec = model.mask_decoder
    names, notes = [], {}
    for i, _ in enumerate(dec.transformer.layers):
        for step in ("self_attn", "cross_attn_token_to_image", "mlp", "cross_attn_image_to_token"):
            names.append(f"transformer.layers.{i}.{step}")
            notes[names[-1]] = f"block {i + 1}, {DECODER_NOTES[step]}"
    names += ["transformer.final_attn_token_to_image", "output_upscaling.0", "output_upscaling.3"]
    notes["transformer.final_attn_token_to_image"] = DECODER_NOTES["final_attn_token_to_image"]
    notes["output_upscaling.0"], notes["output_upscaling.3"] = DECODER_NOTES["output_upscaling.0"], DECODER_NOTES["output_upscaling.3"]
    for k in range(len(dec.output_hypernetworks_mlps)):
        names.append(f"output_hypernetworks_mlps.{k}")
        notes[names[-1]] = f"hypernetwork MLP: mask token {k} -> 32 weights; mask {k} = weights . upscaled features"
    names.append("iou_prediction_head")
    notes["iou_prediction_head"] = DECODER_NOTES["iou_prediction_head"]
    predictor = Predictor(model, decoder="plain")
    predictor.set_embedding(embedding, shape)
    return trace(dec, lambda: predictor.predict_prompt(prompt, multimask_output=True), names, notes)


def all_masks(model, embedding, prompt: Prompt, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """All four of SAM's outputs for one prompt: masks (4, H, W) bool and predicted IoU (4,).

    Output 0 is the single-mask answer (``multimask_output=False``), outputs 1-3 the multimask set
    that :meth:`samhw.Predictor.predict_prompts` chooses from (SAM's own decoder, ``plain``).
    """
    from .predictor import Predictor

    predictor = Predictor(model, decoder="plain")
    predictor.set_embedding(embedding, shape)
    single, single_iou, _ = predictor.predict_prompt(prompt, multimask_output=False)
    multi, multi_iou, _ = predictor.predict_prompt(prompt, multimask_output=True)
    return np.concatenate([single, multi]), np.concatenate([single_iou, multi_iou])


def embedding_pca(embedding) -> np.ndarray:
    """The (64, 64, 3) first three principal components of a (1, 256, 64, 64) embedding, scaled to
    [0, 1]: a picture of what the encoder hands the decoder."""
    e = np.asarray(embedding.detach().cpu().float().numpy())[0].reshape(embedding.shape[1], -1).T
    e = e - e.mean(axis=0)
    _, _, vt = np.linalg.svd(e, full_matrices=False)
    pcs = e @ vt[:3].T
    pcs = (pcs - pcs.min(axis=0)) / np.ptp(pcs, axis=0).clip(min=1e-12)
    return pcs.reshape(embedding.shape[2], embedding.shape[3], 3)
