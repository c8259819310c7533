"""The fast paths (ONNX encoder, fast decoder, float16 cache) give the plain path's masks.

Criteria (issue: speed): mean IoU within 0.001 and at least 99.9% of pixels agreeing, on real slices.
"""
import dataclasses

import numpy as np
import pytest
import torch

from samhw.bench import compare_paths
from samhw.cache import EmbeddingCache
from samhw.fast_decoder import FastDecoder
from samhw.metrics import iou
from samhw.models import build_model, load_model
from samhw.prompts import Prompt, Target, parse_prompts
from samhw.study import EXPERIMENTS

PROMPTS = [p for e in ("E1", "E2", "E3") for p in EXPERIMENTS[e]]


def test_fast_decoder_matches_the_reference_on_random_weights():
    torch.manual_seed(1)
    model = build_model("litemedsam")
    for p in model.mask_decoder.parameters():  # away from the pretrained weights' regime
        p.data.add_(torch.randn_like(p) * 0.02)
    embedding = torch.randn(1, 256, 64, 64)
    prompts = {
        "box": [Prompt(np.zeros((0, 2)), np.zeros(0, np.int64), np.array([30.0, 40.0, 120.0, 90.0]))] * 2,
        "point": [Prompt(np.array([[60.0, 70.0]]), np.array([1])), Prompt(np.array([[10.0, 200.0]]), np.array([0]))],
        "two points and a box": [Prompt(np.array([[60.0, 70.0], [5.0, 5.0]]), np.array([1, 0]),
                                        np.array([30.0, 40.0, 120.0, 90.0]))],
    }
    fast = FastDecoder(model.prompt_encoder, model.mask_decoder)
    with torch.inference_mode():
        context = fast.prepare(embedding)
        for name, batch in prompts.items():
            points, boxes = model.prompt_tensors(batch, (256, 256))
            for multimask in (False, True):
                low, scores = model.decode(embedding, points, boxes, multimask)
                best = scores.argmax(dim=1)
                rows = torch.arange(len(batch))
                low_fast, scores_fast = fast.decode(context, points, boxes, multimask)
                torch.testing.assert_close(low_fast[:, 0], low[rows, best], atol=2e-4, rtol=1e-4, msg=name)
                torch.testing.assert_close(scores_fast[:, 0], scores[rows, best], atol=1e-5, rtol=1e-5, msg=name)
                low_all, scores_all = fast.decode_all(context, points, boxes, multimask)  # every mask (training)
                torch.testing.assert_close(low_all, low, atol=2e-4, rtol=1e-4, msg=name)
                torch.testing.assert_close(scores_all, scores, atol=1e-5, rtol=1e-5, msg=name)


def test_image_tokens_are_stored_token_major_and_the_layout_changes_no_bit():
    """The context keeps the image tokens (N, C)-contiguous (each prompt reads them token by token);
    the layout is a speed matter only: decoding from the embedding's (C, N) order gives the same bits."""
    torch.manual_seed(2)
    model = build_model("litemedsam")
    fast = FastDecoder(model.prompt_encoder, model.mask_decoder)
    batches = [[Prompt(np.zeros((0, 2)), np.zeros(0, np.int64), np.array([30.0, 40.0, 120.0, 90.0]))] * 2,
               [Prompt(np.array([[60.0, 70.0]]), np.array([1]), np.array([20.0, 50.0, 100.0, 140.0]))]]
    with torch.inference_mode():
        context = fast.prepare(torch.randn(1, 256, 64, 64))
        assert context.keys.is_contiguous()
        channels_first = context.keys.transpose(1, 2).contiguous().transpose(1, 2)
        assert not channels_first.is_contiguous()
        other = dataclasses.replace(context, keys=channels_first)
        for prompts in batches:
            points, boxes = model.prompt_tensors(prompts, (256, 256))
            for multimask in (False, True):
                low, scores = fast.decode(context, points, boxes, multimask)
                low_other, scores_other = fast.decode(other, points, boxes, multimask)
                assert torch.equal(low, low_other) and torch.equal(scores, scores_other)


@pytest.mark.parametrize("plain", [False, True])
def test_decoding_stays_fp32_inside_an_autocast_region(plain):
    """Inference decodes in fp32 on every device (bf16 is for fine-tuning the image encoder), also
    when called from inside an autocast region: the bits are those of a call outside it."""
    torch.manual_seed(3)
    model = build_model("litemedsam", plain=plain)
    embedding = torch.randn(1, 256, 64, 64)
    prompts = [Prompt(np.array([[60.0, 70.0]]), np.array([1]), np.array([20.0, 50.0, 100.0, 140.0]))] * 2
    masks, scores = model.predict(embedding, prompts, (256, 256), True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        masks_ac, scores_ac = model.predict(embedding, prompts, (256, 256), True)
    assert scores.dtype == np.float32 and np.array_equal(scores, scores_ac) and np.array_equal(masks, masks_ac)


def test_encoding_stays_fp32_inside_an_autocast_region():
    """The torch encoder (CUDA's, and the CPU's plain path) computes in fp32 even inside autocast."""
    torch.manual_seed(4)
    model = build_model("litemedsam", plain=True)
    image = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    embedding = model.encode([image])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = model.encode([image])
    assert inside.dtype == torch.float32 and torch.equal(embedding, inside)
    assert model.encoder_backend == "torch-fp32"


@pytest.mark.slow
def test_fast_path_gives_the_plain_path_masks_on_real_slices(real_slices, tmp_path):
    plain = load_model("litemedsam", device="cpu", plain=True, cache_dir=tmp_path)
    fast = load_model("litemedsam", device="cpu", cache_dir=tmp_path)
    assert (plain.encoder_backend, fast.encoder_backend) == ("torch-fp32", "onnx-fp32")
    result = compare_paths(plain, fast, real_slices, PROMPTS, tmp_path)  # float16 cache, as the study uses
    assert result["pixel_agreement"] >= 0.999, result
    assert abs(result["iou_plain"] - result["iou_fast"]) <= 0.001, result
    assert result["iou_plain"] > 0.05 and result["prompts"] == len(PROMPTS) * len(real_slices)


@pytest.mark.slow
def test_float16_storage_changes_no_iou_by_more_than_0_001(lite_model, real_slices, tmp_path):
    half = EmbeddingCache(lite_model, tmp_path, "float16")
    full = EmbeddingCache(lite_model, tmp_path, "float32")
    specs = parse_prompts(["box:0", "box:20", "center_gaussian", "random_mask", "center_mask+background"])
    worst = 0.0
    for item in real_slices.slices:
        target = Target(item.mask, item.image, item.slice_id)
        for spec in specs:
            prompt = spec.draw(target, 1)
            a = lite_model.predict(half.get(item.image), [prompt], item.mask.shape, spec.multimask)[0][0]
            b = lite_model.predict(full.get(item.image), [prompt], item.mask.shape, spec.multimask)[0][0]
            worst = max(worst, abs(iou(a, item.mask) - iou(b, item.mask)))
    assert worst <= 0.001, worst
    size = lambda c: sum(f.stat().st_size for f in c.folder.glob("*/*.npy"))  # noqa: E731
    assert size(half) < 0.51 * size(full)


def test_fast_decoder_gradients_match_the_reference():
    """Decoder-only training may use the fast path: its gradients are the reference's."""
    torch.manual_seed(2)
    model = build_model("litemedsam")
    embedding = torch.randn(1, 256, 64, 64) * 0.5
    prompt = Prompt(np.zeros((0, 2)), np.zeros(0, np.int64), np.array([80.0, 90.0, 140.0, 160.0]))
    points, boxes = model.prompt_tensors([prompt], (256, 256))
    grads = []
    for fast in (False, True):
        model.zero_grad()
        if fast:
            logits, _ = model.fast_decoder.decode(model.fast_decoder.prepare(embedding), points, boxes, False)
        else:
            logits, _ = model.decode(embedding, points, boxes, False)
        logits.sigmoid().mean().backward()
        grads.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                                for p in model.mask_decoder.parameters()]))
    assert grads[0].norm() > 0
    assert (grads[0] - grads[1]).norm() / grads[0].norm() < 1e-3
