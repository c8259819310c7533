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

    real_step, calls = train.train_step, []

    def interrupted(*args, **kw):
        calls.append(1)
        if len(calls) == 3:  # the first step of epoch 2
            raise KeyboardInterrupt
        return real_step(*args, **kw)

    monkeypatch.setattr(train, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        finetune(config, tmp_path / "cut", **common)
    monkeypatch.setattr(train, "train_step", real_step)
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


def test_the_decoder_and_loss_stay_fp32_inside_an_autocast_region():
    """The decoder trains in fp32 on both paths (a trained image encoder may run under bf16 autocast before it)."""
    mask = np.zeros((256, 256), bool)
    mask[60:90, 100:150] = True
    embedding = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(0))
    spec = PromptSpec.parse("box:0+center_gaussian")
    drawn = [(spec, spec.draw(Target(mask, slice_id="s"), 0))]
    truth = [torch.from_numpy(mask)]
    for plain in (False, True):
        model = load_model("litemedsam", device="cpu", plain=plain)
        with torch.no_grad():
            outside = train.batch_loss(model, embedding, drawn, truth)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                inside = train.batch_loss(model, embedding, drawn, truth)
        assert inside[0].dtype == torch.float32 and torch.equal(inside[0], outside[0]) and inside[1:] == outside[1:]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits, scores = train.training_forward(model, embedding[0], drawn[0][1], mask.shape, False)
    assert logits.dtype == scores.dtype == torch.float32 and logits.shape == (1, 256, 256)


def test_an_unusable_device_is_refused_before_the_run_folder_is_made(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ModelError, match="--device gpu"):
        finetune(_quick(), out, device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="CUDA is not available"):
            finetune(_quick(), out, device="cuda")
    assert not out.exists()


def test_prompt_losses_of_a_batch_are_each_prompts_loss():
    generator = torch.Generator().manual_seed(1)
    truth = torch.zeros(3, 8, 12)
    truth[0, 1:4, 7:11] = truth[1, 5:8, 0:3] = 1  # prompt 2's mask is empty
    logits, scores = torch.randn(3, 3, 8, 12, generator=generator) * 4, torch.rand(3, 3, generator=generator)
    for multimask in (True, False):
        batched = train.prompt_losses(logits, scores, truth, multimask, 0.5)
        for b in range(3):
            one = prompt_loss(logits[b], scores[b], truth[b], multimask, 0.5)
            assert all(float(x[b]) == pytest.approx(float(y), rel=1e-6) for x, y in zip(batched, one))
    assert len({round(float(x), 4) for x in train.prompt_losses(logits, scores, truth, True, 0.5)[0]}) == 3


def _drawn(names: list[str], slices) -> list[tuple[PromptSpec, object]]:
    specs = [PromptSpec.parse(n) for n in names]
    return [(spec, spec.draw(Target(s.mask, s.image, s.slice_id), 0)) for spec, s in zip(specs, slices)]


def test_groups_share_structure_mask_choice_and_shape_in_order():
    items = [_slice(f"TCGA_AA_0001_20000101_{i}") for i in range(6)]
    drawn = _drawn(["box:0", "center_mask", "box:20", "random_mask+background", "center_box", "box:0+center_box"], items)
    assert train._groups(drawn, [(32, 48)] * 6) == [[0, 2], [1, 4], [3], [5]]
    assert train._groups(drawn, [(32, 48), (32, 48), (40, 40), (32, 48), (32, 48), (32, 48)]) == [[0], [1, 4], [2], [3], [5]]


def test_trainable_parameters_switch_gradients_by_part(lite_model):
    decoder = train.trainable_parameters(lite_model, ("decoder",))
    assert len(decoder) == len(list(lite_model.mask_decoder.parameters()))
    assert not any(p.requires_grad for p in lite_model.prompt_encoder.parameters())
    assert not any(p.requires_grad for p in lite_model.image_encoder.parameters())
    both = train.trainable_parameters(lite_model, ("prompt_encoder", "decoder"))
    names = [n for n, p in lite_model.named_parameters() if p.requires_grad]
    assert len(both) == len(names) and names[0].startswith("prompt_encoder.") and names[-1].startswith("mask_decoder.")
    train.trainable_parameters(lite_model, ("decoder",))


#: Prompts of every structure, interleaved, so that each group gathers images from across the batch.
MIXED = ["box:10", "center_mask", "random_mask+background_far", "box:0", "random_gaussian",
         "center_gaussian+background", "box:20", "center_inside"]


@pytest.fixture(scope="module")
def step_batch(data_dir):
    """Eight test slices' fp32 embeddings, MIXED's prompts drawn on them, and their masks."""
    from samhw.data import load_dataset

    slices = load_dataset(data_dir, "test", limit=8).slices
    model = load_model("litemedsam", device="cpu")
    return model.encode([s.image for s in slices]), _drawn(MIXED, slices), [torch.from_numpy(s.mask) for s in slices]


def _sgd_update(model, step, batch) -> tuple[torch.Tensor, float]:
    """What one plain SGD step (lr 1, so minus the gradient) changes in the decoder and the prompt
    encoder, and the loss; the weights are put back."""
    params = train.trainable_parameters(model, ("decoder", "prompt_encoder"))
    before = [p.detach().clone() for p in params]
    loss = step(model, torch.optim.SGD(params, lr=1.0), *batch)
    change = torch.cat([(p.detach() - b).flatten() for p, b in zip(params, before)])
    with torch.no_grad():
        for p, b in zip(params, before):
            p.copy_(b)
    return change, loss


def _slice_by_slice_step(model, optimizer, embeddings, prompts, truths) -> tuple[float]:
    """The step as it was: the loss of each slice on its own (batches of one), then their mean."""
    optimizer.zero_grad(set_to_none=True)
    loss = torch.stack([train.batch_loss(model, embeddings[i:i + 1], prompts[i:i + 1], truths[i:i + 1])[0]
                        for i in range(len(prompts))]).mean()
    loss.backward()
    optimizer.step()
    return (float(loss.detach()),)


@pytest.mark.slow
def test_a_batched_step_changes_the_weights_as_the_slice_by_slice_step(step_batch):
    """The trained weights (decoder and prompt encoder) after one step of the batched path equal the
    slice-by-slice loop's (the fast decoder one slice at a time, and SAM's own decoder on the plain path)."""
    fast = load_model("litemedsam", device="cpu")
    plain = load_model("litemedsam", device="cpu", plain=True)
    assert [len(g) for g in train._groups(step_batch[1], [t.shape for t in step_batch[2]])] == [3, 3, 2]
    batched, losses = _sgd_update(fast, train.train_step, step_batch)
    for model in (fast, plain):
        reference, (reference_loss,) = _sgd_update(model, _slice_by_slice_step, step_batch)
        assert losses[0] == pytest.approx(reference_loss, rel=1e-5)
        assert float((batched - reference).norm()) <= 1e-4 * float(reference.norm()), model.plain
        assert torch.allclose(batched, reference, rtol=1e-3, atol=1e-5), model.plain


@pytest.mark.slow
def test_a_training_step_is_deterministic(step_batch):
    """The same weights, batch and optimizer give bit-identical weights after two steps (finetune's AdamW)."""
    results = []
    for _ in range(2):
        model = load_model("litemedsam", device="cpu")
        optimizer = train.adamw(train.trainable_parameters(model, ("decoder",)), model.device, 1e-4, 0.01)
        for _ in range(2):
            losses = train.train_step(model, optimizer, *step_batch)
        results.append((losses, model.mask_decoder.state_dict()))
    (loss_a, a), (loss_b, b) = results
    assert loss_a == loss_b and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["iou_token.weight"], load_model("litemedsam", device="cpu").mask_decoder.iou_token.weight)


def test_finetune_s_adamw_takes_torch_s_default_step():
    generator = torch.Generator().manual_seed(2)
    weights = [torch.randn(64, 32, generator=generator), torch.randn(32, generator=generator)]
    grads = [torch.randn_like(w) * 10 ** -k for k, w in enumerate(weights)]
    steps = []
    for make in (lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.01),
                 lambda ps: train.adamw(ps, torch.device("cpu"), 1e-2, 0.01)):
        params = [torch.nn.Parameter(w.clone()) for w in weights]
        optimizer = make(params)
        for _ in range(3):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            optimizer.step()
        steps.append([p.detach() for p in params])
    for a, b, w in zip(*steps, weights):
        assert not torch.equal(a, w) and torch.allclose(a, b, rtol=1e-6, atol=1e-7)


def test_augmentations_flip_image_and_mask_together_and_are_drawn_per_epoch():
    item = _slice()
    assert train.augmented(FinetuneConfig(), item, 0) is item  # no augmentation: the slice itself
    config = FinetuneConfig(augment=("flip",))
    seen = [train.augmented(config, item, epoch) for epoch in range(16)]
    flipped = [np.array_equal(s.mask, item.mask[:, ::-1]) for s in seen]
    assert 2 <= sum(flipped) <= 14  # about half the epochs
    for s, was_flipped in zip(seen, flipped):
        assert was_flipped or np.array_equal(s.mask, item.mask)
        assert np.array_equal(s.image, item.image[:, ::-1] if was_flipped else item.image)  # image follows mask
        assert s.mask[5:12, 4:18].all() if was_flipped else s.mask[5:12, 30:44].all()  # columns mirror, rows stay
    again = [train.augmented(config, item, epoch) for epoch in reversed(range(16))][::-1]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(seen, again))  # a pure function of (seed, epoch, slice)
    # the prompt is drawn on the slice as trained: a point inside the mirrored mask
    point_config = FinetuneConfig(augment=("flip",), mix=parse_mix(["center_mask"]))
    epoch = flipped.index(True)
    spec, prompt = training_prompt(point_config, train.augmented(point_config, item, epoch), epoch)
    x, y = prompt.points[0]
    assert 9.5 <= x <= 11.5 and 7 <= y <= 9  # the mirrored mask's centre (x, y) = (10.5, 8): a swap fails


def test_gamma_is_one_variant_per_slice_and_the_cache_holds_every_variant():
    item = _slice()
    config = FinetuneConfig(augment=("gamma", "flip"))
    variants = train.augment_variants(config, item)
    assert len(variants) == 4 and variants[0] is item.image
    assert len({v.tobytes() for v in variants}) == 4
    gammas = {train.augmented(FinetuneConfig(augment=("gamma",)), item, e).image.tobytes() for e in range(16)}
    assert gammas == {item.image.tobytes(), variants[1].tobytes()}  # the slice, or its one gamma variant
    trained = {train.augmented(config, item, e).image.tobytes() for e in range(32)}
    assert trained <= {v.tobytes() for v in variants}  # nothing trained that the cache does not hold
    with pytest.raises(FinetuneError, match="augmentations"):
        FinetuneConfig(augment=("rotate",))
    with pytest.raises(FinetuneError, match="augmentations"):
        FinetuneConfig(augment=("flip", "flip"))
    old = FinetuneConfig().to_dict()
    del old["augment"], old["mask_loss"]  # a record written before these options
    assert FinetuneConfig.from_dict(old) == FinetuneConfig()


def test_focal_dice_loss_is_sams_20_to_1_focal_and_dice():
    torchvision_ops = pytest.importorskip("torchvision.ops")
    truth = torch.zeros(8, 12)
    truth[1:4, 7:11] = 1
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 8, 12, generator=generator) * 3
    _, chosen, _ = prompt_loss(logits, torch.zeros(3), truth, multimask=True, iou_loss_weight=1.0, mask_loss="focal_dice")
    probs = logits.sigmoid().flatten(1)
    dice = 1 - (2 * (probs * truth.flatten()).sum(1) + 1) / (probs.sum(1) + truth.sum() + 1)
    focal = torch.stack([torchvision_ops.sigmoid_focal_loss(m, truth, alpha=0.25, gamma=2, reduction="mean")
                         for m in logits])
    assert float(chosen) == pytest.approx(float((20 * focal + dice).min()), rel=1e-5)
    _, default, _ = prompt_loss(logits, torch.zeros(3), truth, multimask=True, iou_loss_weight=1.0)
    assert float(default) != pytest.approx(float(chosen), rel=1e-3)
    with pytest.raises(FinetuneError, match="mask loss"):
        FinetuneConfig(mask_loss="hinge")


def test_the_command_lines_choices_are_the_trainings_own():
    """The CLI lists parts, augmentations and losses without importing torch: the lists must agree."""
    from samhw.cli import build_parser

    finetune_parser = build_parser()._subparsers._group_actions[0].choices["finetune"]
    choices = {action.dest: action.choices for action in finetune_parser._actions if action.choices}
    assert choices["train"] == list(train.PARTS)
    assert choices["augment"] == list(train.AUGMENTATIONS)
    assert choices["loss"] == list(train.MASK_LOSSES)
