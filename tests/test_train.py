"""Fine-tuning: prompts, loss, schedule, and short real runs (loss falls, resume, checkpoints)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from samhw import train
from samhw.data import Slice, SliceRecord
from samhw.models import ModelError, load_model
from samhw.prompts import PromptError, PromptSpec, Target
from samhw.train import FinetuneConfig, FinetuneError, finetune, parse_mix, prompt_loss, training_prompt


def _slice(name: str = "TCGA_AA_0001_20000101_7") -> Slice:
    mask = np.zeros((32, 48), dtype=bool)
    mask[5:12, 30:44] = True  # wide, off-centre: a transposed point or box misses it
    image = np.full((32, 48, 3), 40, np.uint8)
    image[mask] = 200
    study = name.rsplit("_", 1)[0]
    record = SliceRecord(name, "TCGA_AA_0001", study, 7, Path(f"{name}.tif"), Path(f"{name}_mask.tif"))
    return Slice(record, image, mask)


def test_training_prompts_are_a_pure_function_of_seed_epoch_and_slice():
    config = FinetuneConfig()
    item = _slice()
    draws = [training_prompt(config, item, epoch) for epoch in range(12)]
    again = [training_prompt(config, item, epoch) for epoch in reversed(range(12))][::-1]
    for (spec_a, a), (spec_b, b) in zip(draws, again):
        assert spec_a == spec_b and np.array_equal(a.points, b.points)
    assert len({spec.name for spec, _ in draws}) > 2  # the mix varies over epochs
    other_seed = [training_prompt(FinetuneConfig(seed=1), item, e)[0].name for e in range(12)]
    assert other_seed != [spec.name for spec, _ in draws]


def test_training_prompts_follow_the_mix_and_lie_on_the_slice():
    item = _slice()
    only_points = FinetuneConfig(mix=parse_mix(["center_mask"]))
    spec, prompt = training_prompt(only_points, item, 0)
    assert spec.name == "center_mask" and spec.multimask
    x, y = prompt.points[0]
    assert 30 <= x <= 43 and 5 <= y <= 11  # (x, y) = (column, row) inside the wide mask
    boxes = FinetuneConfig(mix=parse_mix(["box:20"]))
    for epoch in range(5):
        _, prompt = training_prompt(boxes, item, epoch)
        x0, y0, x1, y1 = prompt.box
        assert x0 <= 30 and y0 <= 5 and x1 >= 43 and y1 >= 11  # grows only, by 0..20 px per side
        assert x0 >= 10 and y0 >= 0 and x1 <= 47 and y1 <= 31


def test_parse_mix_and_bad_options():
    assert parse_mix(["box:20@2", "center_gaussian:sigma=50@0.5", "random_mask"]) == (
        ("box:20", 2.0), ("center_gaussian:sigma=50", 0.5), ("random_mask", 1.0))
    with pytest.raises(PromptError, match="NAME@WEIGHT"):
        parse_mix(["box:20@lots"])
    with pytest.raises(PromptError):
        parse_mix(["centre_mask"])
    with pytest.raises(PromptError, match="not all zero"):
        FinetuneConfig(mix=(("box:0", 0.0),))
    with pytest.raises(FinetuneError, match="parts"):
        FinetuneConfig(parts=("encoder",))
    with pytest.raises(FinetuneError):
        FinetuneConfig(epochs=0)
    for bad in ({"lr": float("inf")}, {"lr": float("nan")}, {"weight_decay": -1.0}, {"seed": -1}):
        with pytest.raises(FinetuneError):
            FinetuneConfig(**bad)
    # validation prompts keep the names their rows will carry (else no row matches and best.pt stays at epoch 1)
    assert FinetuneConfig(val_prompts=("center_gaussian:sigma=100", "box:020")).val_prompts == ("center_gaussian", "box:20")


def test_resume_refuses_a_run_of_other_data(tmp_path):
    config = _quick()
    split = {"train": ["P1", "P2"], "val": ["P3"], "data": "/one/kaggle_3m"}
    torch.save({"options": config.to_dict(), "split": split}, tmp_path / "last.pt")
    now = {"split": {"train": ["P1"], "val": ["P3"], "data": "/two/kaggle_3m"}}
    with pytest.raises(FinetuneError, match="other data"):
        train._resume(tmp_path / "last.pt", config, now, None, None)


def test_prompt_loss_prefers_the_right_mask_and_trains_the_iou_head():
    truth = torch.zeros(8, 12)
    truth[1:4, 7:11] = 1
    right = torch.where(truth > 0, 10.0, -10.0)
    transposed = torch.where(truth.T.reshape(8, 12) > 0, 10.0, -10.0)
    empty = torch.full((8, 12), -10.0)
    logits = torch.stack([empty, transposed, right])
    total, mask, iou = prompt_loss(logits, torch.tensor([0.0, 0.0, 1.0]), truth, multimask=True, iou_loss_weight=1.0)
    assert mask < 0.01 and iou < 1e-6 and abs(float(total) - float(mask) - float(iou)) < 1e-6
    _, single, _ = prompt_loss(logits, torch.tensor([0.0, 0.0, 1.0]), truth, multimask=False, iou_loss_weight=1.0)
    assert single > 0.9  # without multimask, mask 0 (empty) is the one trained
    _, _, wrong_head = prompt_loss(logits, torch.tensor([1.0, 1.0, 0.0]), truth, multimask=True, iou_loss_weight=1.0)
    assert wrong_head > 0.3


def test_learning_rate_warms_up_then_decays_to_zero():
    config = FinetuneConfig(lr=1e-3, warmup_steps=4)
    rates = [train._learning_rate(config, step, 20) for step in range(20)]
    assert rates[0] == pytest.approx(2.5e-4) and rates[3] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(rates[3:], rates[4:])) and rates[-1] < 2e-5


def _quick(**kw) -> FinetuneConfig:
    return FinetuneConfig(**{"epochs": 2, "batch_size": 4, "limit": 8, "val_limit": 3,
                             "val_prompts": ("box:0", "center_gaussian"), **kw})


@pytest.mark.slow
def test_training_lowers_the_loss_and_the_checkpoint_round_trips(data_dir, cache_dir, tmp_path):
    config = _quick(epochs=3, lr=3e-4, warmup_steps=0, mix=(("box:0", 1.0),))
    seen = []
    best = finetune(config, tmp_path, data=str(data_dir), device="cpu", cache_dir=str(cache_dir), progress=False,
                    on_epoch=lambda folder, log: seen.append((folder, len(log), (folder / "log.json").is_file())))
    log = json.loads((tmp_path / "log.json").read_text())
    losses = [e["loss"] for e in log["epochs"]]
    assert losses[-1] < losses[0], losses
    assert seen == [(tmp_path, 1, True), (tmp_path, 2, True), (tmp_path, 3, True)]
    assert best["epoch"] == max(log["epochs"], key=lambda e: e["val_mean"])["epoch"]
    tuned = load_model("litemedsam", tmp_path / "best.pt", device="cpu")
    base = load_model("litemedsam", device="cpu")
    assert tuned.meta["options"]["mix"] == [["box:0", 1.0]] and tuned.meta["base_weights"] == base.fingerprint()
    assert tuned.fingerprint() != base.fingerprint()
    assert tuned.fingerprint("image_encoder") == base.fingerprint("image_encoder")  # decoder-only: cache reused
    assert tuned.encoder_key == base.encoder_key
    with pytest.raises(ModelError, match="litemedsam"):
        load_model("vit_b", tmp_path / "best.pt", device="cpu")


@pytest.mark.slow
def test_resume_after_an_interruption_gives_the_uninterrupted_weights(data_dir, cache_dir, tmp_path, monkeypatch):
    config = _quick()
    common = dict(data=str(data_dir), device="cpu", cache_dir=str(cache_dir), progress=False)
    finetune(config, tmp_path / "whole", **common)

    real_loss, calls = train._batch_loss, []

    def interrupted(*args, **kw):
        calls.append(1)
        if len(calls) == 3:  # the first step of epoch 2
            raise KeyboardInterrupt
        return real_loss(*args, **kw)

    monkeypatch.setattr(train, "_batch_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        finetune(config, tmp_path / "cut", **common)
    monkeypatch.setattr(train, "_batch_loss", real_loss)
    with pytest.raises(FinetuneError, match="--resume"):
        finetune(config, tmp_path / "cut", **common)
    with pytest.raises(FinetuneError, match="other options"):
        finetune(_quick(lr=1e-3), tmp_path / "cut", resume=True, **common)
    finetune(config, tmp_path / "cut", resume=True, **common)
    whole = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    cut = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert whole["epoch"] == cut["epoch"] == 1
    for key, value in whole["state_dict"].items():
        assert torch.equal(value, cut["state_dict"][key]), key
    assert [e["loss"] for e in whole["log"]] == [e["loss"] for e in cut["log"]]


def test_training_forward_stays_fp32_inside_an_autocast_region():
    """The decoder trains in fp32 (a trained image encoder may run under bf16 autocast before it)."""
    model = load_model("litemedsam", device="cpu")
    mask = np.zeros((256, 256), bool)
    mask[60:90, 100:150] = True
    embedding = torch.randn(256, 64, 64, generator=torch.Generator().manual_seed(0))
    prompt = PromptSpec.parse("box:0+center_gaussian").draw(Target(mask, slice_id="s"), 0)
    with torch.no_grad():
        logits, scores = train.training_forward(model, embedding, prompt, mask.shape, False)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            inside = train.training_forward(model, embedding, prompt, mask.shape, False)
    assert inside[0].dtype == torch.float32 and logits.shape == (1, 256, 256)
    assert torch.equal(inside[0], logits) and torch.equal(inside[1], scores)


def test_an_unusable_device_is_refused_before_the_run_folder_is_made(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ModelError, match="--device gpu"):
        finetune(_quick(), out, device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="CUDA is not available"):
            finetune(_quick(), out, device="cuda")
    assert not out.exists()
