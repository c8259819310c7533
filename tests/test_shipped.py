"""Shipped weights: export a checkpoint, load it by name (offline, hash-checked), refuse damage."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from samhw import shipped
from samhw.cli import main
from samhw.models import CHECKPOINT_FORMAT, ModelError, load_model
from samhw.prompts import Prompt
from samhw.train import FinetuneConfig

NAME = "litemedsam-lgg"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A samhw checkpoint whose decoder and prompt-encoder weights moved by 2% of each tensor's spread
    (drawn from a seeded generator), as a short fine-tuning run leaves them."""
    model = load_model("litemedsam", device="cpu")
    rng = np.random.default_rng(15)
    state = model.state_dict()
    for key in [k for k in state if k.startswith(("mask_decoder.", "prompt_encoder.point_embeddings"))]:
        value = state[key]
        spread = float(value.std()) if value.numel() > 1 else 0.1
        state[key] = value + torch.from_numpy(rng.normal(0, 0.02 * spread, value.shape).astype(np.float32))
    config = FinetuneConfig(parts=("decoder", "prompt_encoder"), epochs=2)
    log = [{"epoch": 1, "val_mean": 0.5, "device": "cpu"}, {"epoch": 2, "val_mean": 0.6, "device": "cpu"}]
    record = {"format": CHECKPOINT_FORMAT, "model": "litemedsam", "state_dict": state, "options": config.to_dict(),
              "base_weights": model.fingerprint(), "base_checkpoint": None, "command": "python -m samhw finetune --epochs 2",
              "split": {"train": ["TCGA_CS_4941", "TCGA_CS_4942"], "val": ["TCGA_CS_4944"], "data": "somewhere"},
              "epoch": 1, "log": log, "best": {"epoch": 2, "val_mean": 0.6, "val": {"box:0": 0.6}}, "samhw": "0.2.0"}
    path = tmp_path_factory.mktemp("run") / "best.pt"
    torch.save(record, path)
    return path


@pytest.fixture()
def weights(tmp_path, monkeypatch) -> Path:
    """An empty weights folder in place of samhw/weights."""
    folder = tmp_path / "weights"
    monkeypatch.setenv("SAMHW_WEIGHTS", str(folder))
    return folder


def test_export_writes_the_trained_parts_and_a_sidecar_that_describes_them(checkpoint, weights, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    tuned = load_model("litemedsam", checkpoint, device="cpu")
    (results / "summary.json").write_text(json.dumps({
        "weights_sha256": tuned.fingerprint(), "command": "python -m samhw study", "splits": {"test": {"slices": 3}},
        "summary": [{"split": "test", "prompt": "box:0", "iou": 0.81, "iou_patient": 0.79},
                    {"split": "train", "prompt": "box:0", "iou": 0.9, "iou_patient": 0.88}]}))
    record = shipped.export(checkpoint, NAME, results=results)
    data = (weights / f"{NAME}.safetensors").read_bytes()
    side = json.loads((weights / f"{NAME}.json").read_text())
    assert side == record and side["sha256"] == shipped.sha256_hex(data) and side["bytes"] == len(data)
    assert side["parts"] == ["prompt_encoder", "mask_decoder"]  # the image encoder comes from the base
    assert side["parameters"]["mask_decoder"] == sum(p.numel() for p in tuned.mask_decoder.parameters())
    assert side["parameters"]["prompt_encoder"] == tuned.prompt_encoder.point_embeddings[0].weight.numel() * 4
    assert len(data) < 2 * side["parameters"]["mask_decoder"] + 100_000  # fp16: two bytes a number
    assert side["validation"] == {"epoch": 2, "mean": 0.6, "per_prompt": {"box:0": 0.6}}
    assert side["command"] == "python -m samhw finetune --epochs 2" and side["device"] == "cpu"
    assert side["started_from"] is None  # trained from the base model itself
    assert side["split"]["patients"] == {"train": 2, "val": 1}
    assert side["test"]["of"] == "checkpoint" and side["test"]["iou"] == {"box:0": 0.81}
    assert side["test"]["iou_patient"] == {"box:0": 0.79}
    assert "validation IoU 0.6000 at epoch 2, test IoU box:0 0.810)" in shipped.origin(side)
    # the same export again is allowed (same bytes); other weights only with replace
    assert shipped.export(checkpoint, NAME)["sha256"] == side["sha256"]
    assert shipped.export(checkpoint, NAME)["test"] == {"absent": "no results folder given"}
    with pytest.raises(ModelError, match="--replace"):
        shipped.export(checkpoint, NAME, dtype="fp32")
    assert shipped.export(checkpoint, NAME, dtype="fp32", replace=True)["bytes"] > 1.9 * len(data)


def test_export_refuses_base_names_and_files_over_the_limit(checkpoint, weights, monkeypatch):
    with pytest.raises(ModelError, match="base model"):
        shipped.export(checkpoint, "litemedsam")
    monkeypatch.setattr(shipped, "MAX_BYTES", 1_000_000)
    with pytest.raises(ModelError, match="over the 1 MB"):
        shipped.export(checkpoint, NAME)
    assert not weights.exists()


def _prompts(item) -> list[list[Prompt]]:
    ys, xs = np.nonzero(item.mask)
    box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=float)
    centre = np.array([[xs.mean(), ys.mean()]])
    none, no_labels = np.zeros((0, 2)), np.zeros(0, dtype=np.int64)
    return [[Prompt(none, no_labels, box)], [Prompt(none, no_labels, box + [-15, -10, 20, 5])],
            [Prompt(centre, np.array([1]))]]


@pytest.mark.slow
def test_shipped_model_loads_by_name_with_the_checkpoints_masks(checkpoint, weights, real_slices, cache_dir):
    """fp16 storage moves each weight by at most 2^-11 of itself: the logits move by a little, and a
    pixel can flip only where its fp32 logit lies within that move; masks stay within IoU 0.999."""
    shipped.export(checkpoint, NAME)
    tuned = load_model("litemedsam", checkpoint, device="cpu")
    by_name = load_model(NAME, device="cpu")
    as_checkpoint = load_model("litemedsam", NAME, device="cpu")  # what the study's workers load again
    base = load_model("litemedsam", device="cpu")
    assert by_name.name == "litemedsam" and by_name.checkpoint == NAME
    assert by_name.fingerprint() == as_checkpoint.fingerprint() != tuned.fingerprint()
    assert by_name.encoder_key == base.encoder_key  # the embedding cache is shared with LiteMedSAM
    assert by_name.meta["origin"].startswith(f"{NAME}: litemedsam with its prompt_encoder and mask_decoder")
    assert "python -m samhw finetune --epochs 2" in by_name.meta["origin"]
    assert all(p.dtype == torch.float32 for p in by_name.parameters())
    from samhw.cache import EmbeddingCache

    cache = EmbeddingCache(base, cache_dir)
    worst_logit, worst_iou, moved_from_base = 0.0, 1.0, 0
    for item in real_slices.slices:
        embedding = cache.get(item.image)
        for prompts in _prompts(item):
            multimask = prompts[0].box is None
            logits = []
            for model in (tuned, by_name, base):
                points, boxes = model.prompt_tensors(prompts, item.mask.shape)
                with torch.inference_mode():
                    low, _ = model.decode(embedding, points, boxes, multimask)
                    logits.append(model.postprocess(low, item.mask.shape)[0])
            a, b, c = (x > 0 for x in logits)
            worst_logit = max(worst_logit, float((logits[0] - logits[1]).abs().max()))
            union = int((a | b).sum())
            worst_iou = min(worst_iou, int((a & b).sum()) / union if union else 1.0)
            moved_from_base += int((a != c).sum())
            assert torch.all(logits[0].abs()[a != b] <= worst_logit)
    assert worst_logit < 0.05 and worst_iou >= 0.999, (worst_logit, worst_iou)
    assert moved_from_base > 100  # the shipped tensors are in use: masks differ from the base model's


def test_damaged_or_missing_files_are_refused_with_the_fix(checkpoint, weights):
    with pytest.raises(ModelError, match=f"{NAME}.json is missing: the model {NAME} was not shipped"):
        load_model(NAME, device="cpu")
    shipped.export(checkpoint, NAME)
    file = weights / f"{NAME}.safetensors"
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one weight
    file.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=f"{NAME}.safetensors: sha256 .* differs from its sidecar.*git checkout"):
        load_model(NAME, device="cpu")
    file.unlink()
    with pytest.raises(ModelError, match=f"{NAME}.safetensors is missing: the model {NAME} was not shipped"):
        load_model(NAME, device="cpu")
    with pytest.raises(ModelError, match="fine-tuned litemedsam, not vit_b"):
        load_model("vit_b", NAME, device="cpu")
    with pytest.raises(ModelError, match="unknown model 'litemedsam-xyz'; known: litemedsam, .*litemedsam-lgg"):
        load_model("litemedsam-xyz", device="cpu")


def test_the_cli_exports_names_the_origin_and_fails_cleanly(checkpoint, weights, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no results folder here: test scores absent
    assert main(["evaluate", "--model", NAME, "--prompts", "box:0", "--limit", "1"]) == 2
    assert f"{NAME}.json is missing" in capsys.readouterr().err
    assert main(["export", str(checkpoint), "--name", NAME]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"{NAME}.safetensors \(\d+\.\d MB, fp16: prompt_encoder, mask_decoder\)", out), out
    assert "summary.json not found" in out
    parser_err = main(["finetune", "--checkpoint", NAME, "--epochs", "1", "--lr", "-1"])
    err = capsys.readouterr().err
    assert parser_err == 2 and err.startswith(f"{NAME}: litemedsam with its prompt_encoder and mask_decoder fine-tuned")


def test_a_checkpoint_with_a_trained_neck_ships_and_loads_with_its_neck(checkpoint, weights, tmp_path):
    """The neck (``finetune --train neck ...``) ships beside the decoder; loaded by name, it gives the
    model its own embedding cache key (the base's embeddings are not reused)."""
    record = torch.load(checkpoint, weights_only=True)
    rng = np.random.default_rng(16)
    state = record["state_dict"]
    for key in [k for k in state if k.startswith("image_encoder.neck.")]:
        state[key] = state[key] + torch.from_numpy(rng.normal(0, 0.02 * float(state[key].std()) + 1e-3,
                                                              state[key].shape).astype(np.float32))
    record["options"]["parts"] = ["neck", "decoder", "prompt_encoder"]
    record["base_checkpoint"], record["base_weights"] = "litemedsam-lgg", "ab" * 32  # a run from an earlier shipped model
    path = tmp_path / "neck.pt"
    torch.save(record, path)
    side = shipped.export(path, NAME)
    assert side["parts"] == ["image_encoder.neck", "prompt_encoder", "mask_decoder"]
    assert side["started_from"] == {"checkpoint": "litemedsam-lgg", "weights_sha256": "ab" * 32}
    assert f"--epochs 2` from litemedsam-lgg (weights sha256 {'ab' * 6}) on cpu" in shipped.origin(side)
    tuned = load_model("litemedsam", path, device="cpu")
    assert side["parameters"]["image_encoder.neck"] == sum(p.numel() for p in tuned.image_encoder.neck.parameters())
    assert side["bytes"] <= shipped.MAX_BYTES
    by_name = load_model(NAME, device="cpu")
    base = load_model("litemedsam", device="cpu")
    assert by_name.encoder_key != base.encoder_key
    assert by_name.meta["origin"].startswith(f"{NAME}: litemedsam with its image_encoder.neck and prompt_encoder")
    for key, value in tuned.state_dict().items():
        shipped_value = by_name.state_dict()[key]
        if key.startswith("image_encoder.") and not key.startswith("image_encoder.neck."):
            assert torch.equal(shipped_value, base.state_dict()[key]), key
        else:  # fp16 storage: each number within 2^-11 of itself
            assert torch.all((shipped_value - value).abs() <= value.abs() * 2.0**-11 + 1e-7), key


def test_changed_parts_name_an_encoder_stage_by_its_index():
    from samhw.shipped import _changed_parts

    one = torch.zeros(1)
    base = {k: one for k in ("image_encoder.layers.2.w", "image_encoder.layers.3.blocks.0.w",
                             "image_encoder.layers.3.blocks.1.w", "image_encoder.neck.0.w", "mask_decoder.w")}
    tensors = {k: one for k in ("image_encoder.layers.3.blocks.0.w", "image_encoder.layers.3.blocks.1.w",
                                "image_encoder.neck.0.w", "mask_decoder.w")}
    assert _changed_parts(tensors, base) == ["image_encoder.layers.3", "image_encoder.neck", "mask_decoder"]


def test_the_committed_sidecar_is_the_committed_run_and_study():
    """The shipped sidecar names the run of ``training.json`` (command, score, the weights it started
    from) and the weights of the committed fine-tuned study."""
    repo = Path(__file__).resolve().parents[1]
    side = json.loads((repo / "samhw" / "weights" / f"{NAME}.json").read_text())
    record = json.loads((repo / "results" / "litemedsam-finetuned" / "training.json").read_text())
    study = json.loads((repo / "results" / "litemedsam-finetuned" / "summary.json").read_text())
    assert side["command"] == record["command"] and side["validation"]["mean"] == record["best"]["val_mean"]
    assert side["trained"] == record["options"]["parts"]
    expected = ({"checkpoint": record["base_checkpoint"], "weights_sha256": record["base_weights"]}
                if record["base_checkpoint"] else None)
    assert side["started_from"] == expected
    assert study["weights_sha256"] == side["weights_sha256"] and side["test"]["of"] == "shipped"
