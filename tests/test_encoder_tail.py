"""The neck trained from cached features: same embeddings as the encoder, a step that moves only the
neck, determinism, and a run whose validation and saved checkpoint use the trained neck."""
import json

import numpy as np
import pytest
import torch

from samhw import train
from samhw.cache import EmbeddingCache
from samhw.data import load_dataset
from samhw.encoder_tail import FEATURE_SHAPE, LAST_STAGE, TAIL, FeatureCache, encoder_features, tail_embeddings
from samhw.models import load_model
from samhw.train import FinetuneConfig, finetune, validate


@pytest.fixture(scope="module")
def plain_model():
    """LiteMedSAM on the reference eager path (the encoder in torch, fp32)."""
    return load_model("litemedsam", device="cpu", plain=True)


@pytest.mark.slow
def test_cached_features_through_the_neck_give_the_encoders_embeddings(plain_model, real_slices, tmp_path):
    """Features are stored in fp16 (relative rounding 2^-11); through the neck (a 1x1 and a 3x3
    convolution, each followed by a LayerNorm) the embedding moves by a small share of its spread."""
    images = [s.image for s in real_slices.slices[:2]]
    cache = FeatureCache(plain_model, tmp_path)
    cache.ensure(images, progress=False)
    stored = torch.cat([cache.get(image) for image in images])
    exact = encoder_features(plain_model, images)
    assert stored.shape == (2, *FEATURE_SHAPE)
    assert torch.all((stored - exact).abs() <= exact.abs() * 2.0**-11 + 1e-7)  # fp16 rounding, nothing more
    with torch.inference_mode():
        from_tail = tail_embeddings(plain_model, stored)
        full = plain_model.image_encoder(plain_model.preprocess(images))
    error = (from_tail - full).abs()
    assert float(error.max()) < 0.02 * float(full.std()), (float(error.max()), float(full.std()))
    assert float(error.mean()) < 1e-3 * float(full.std())
    # the folder is keyed by the weights before the neck: a new neck keeps it, a new layer before it does not
    moved = load_model("litemedsam", device="cpu", plain=True)
    with torch.no_grad():
        moved.image_encoder.neck[0].weight.mul_(1.01)
    moved.weights_changed()
    assert FeatureCache(moved, tmp_path).folder == cache.folder
    assert moved.encoder_key != plain_model.encoder_key  # embeddings (study, evaluate) are not reused
    assert EmbeddingCache(moved, tmp_path).folder != EmbeddingCache(plain_model, tmp_path).folder
    with torch.no_grad():
        moved.image_encoder.layers[3].blocks[1].mlp.fc2.bias.add_(0.01)
    assert FeatureCache(moved, tmp_path).folder != cache.folder


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _neck_step(slices, cache: FeatureCache) -> dict[str, torch.Tensor]:
    """The weights after one training step of the neck alone (lr 1e-3, batch of ``slices``)."""
    model = load_model("litemedsam", device="cpu", plain=True)
    config = FinetuneConfig(parts=("neck",), lr=1e-3, warmup_steps=0)
    params = train.trainable_parameters(model, config.parts)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    model.train()
    train.train_step(model, optimizer, *train.training_batch(model, config, cache, slices, 0))
    return _state(model)


@pytest.mark.slow
def test_a_neck_step_moves_the_neck_alone_and_is_deterministic(plain_model, real_slices, tmp_path):
    slices = real_slices.slices[:2]
    cache = FeatureCache(plain_model, tmp_path)
    before = _state(plain_model)
    after = _neck_step(slices, cache)
    neck = [k for k in before if k.startswith(TAIL + ".")]
    assert len(neck) == 6  # two convolutions' weights, two LayerNorms' weight and bias
    assert all(not torch.equal(before[k], after[k]) for k in neck)
    frozen = [k for k in before if not k.startswith(TAIL + ".")]
    assert all(torch.equal(before[k], after[k]) for k in frozen), [k for k in frozen if not torch.equal(before[k], after[k])]
    again = _neck_step(slices, cache)
    assert all(torch.equal(after[k], again[k]) for k in after)
    assert torch.equal(encoder_features(plain_model, [slices[0].image]), encoder_features(plain_model, [slices[0].image]))


@pytest.mark.slow
@pytest.mark.parametrize("tail", [TAIL, LAST_STAGE])
def test_a_tail_run_validates_and_saves_with_the_trained_tail(data_dir, tmp_path, tail):
    """A run's validation scores are those of its checkpoint evaluated through the whole encoder."""
    part = next(name for name, module in train.PARTS.items() if module == tail)
    config = FinetuneConfig(parts=(part, "decoder"), epochs=1, batch_size=4, limit=4, val_limit=2, lr=2e-3,
                            warmup_steps=0, val_prompts=("box:0", "center_gaussian"))
    cache_dir = tmp_path / "cache"
    finetune(config, tmp_path / "run", data=str(data_dir), device="cpu", cache_dir=str(cache_dir), progress=False)
    logged = json.loads((tmp_path / "run" / "log.json").read_text())["epochs"][0]["val"]
    assert not list((tmp_path / "run" / "scratch").glob("*/*/*.npy"))  # validation's embeddings removed
    tuned = load_model("litemedsam", tmp_path / "run" / "best.pt", device="cpu", plain=True)
    base = load_model("litemedsam", device="cpu", plain=True)
    changed = {k for k, v in base.state_dict().items() if not torch.equal(v, tuned.state_dict()[k])}
    assert changed and all(k.startswith((tail + ".", "mask_decoder.")) for k in changed)
    assert any(k.startswith(tail + ".") for k in changed)
    assert tuned.encoder_key != base.encoder_key
    val_set = load_dataset(data_dir, "val", limit=2)
    through_encoder = validate(tuned, EmbeddingCache(tuned, tmp_path / "fresh"), val_set, config.val_prompts)
    assert through_encoder == pytest.approx(logged, abs=0.01)
    base_embeddings = validate(tuned, EmbeddingCache(base, tmp_path / "fresh"), val_set, config.val_prompts)
    assert max(abs(base_embeddings[p] - logged[p]) for p in logged) > 0.01  # the neck's change matters
    assert np.isfinite(list(logged.values())).all()


def test_only_a_tinyvit_encoder_has_a_neck_to_train_from_features():
    from samhw.encoder_tail import check_tail
    from samhw.models import ModelError, build_model

    check_tail(build_model("litemedsam"))  # LiteMedSAM: the neck follows TinyViT's stages
    with pytest.raises(ModelError, match="train image_encoder instead"):
        check_tail(build_model("vit_b"))


@pytest.mark.slow
def test_features_before_the_last_stage_give_the_encoders_embeddings_and_a_step_moves_that_stage(
        plain_model, real_slices, tmp_path):
    images = [s.image for s in real_slices.slices[:2]]
    cache = FeatureCache(plain_model, tmp_path, cut="last_stage")
    assert "before-last-stage" in cache.folder.name and cache.folder != FeatureCache(plain_model, tmp_path).folder
    cache.ensure(images, progress=False)
    stored = torch.cat([cache.get(image) for image in images])
    with torch.inference_mode():
        from_tail = tail_embeddings(plain_model, stored, "last_stage")
        full = plain_model.image_encoder(plain_model.preprocess(images))
        neck_only = tail_embeddings(plain_model, stored, "neck")  # features at the wrong cut
    error = (from_tail - full).abs()
    assert float(error.max()) < 0.02 * float(full.std()) and float(error.mean()) < 1e-3 * float(full.std())
    assert float((neck_only - full).abs().mean()) > 0.05 * float(full.std())
    # keyed by the weights before the last stage: a change in it keeps the folder, one before it does not
    moved = load_model("litemedsam", device="cpu", plain=True)
    with torch.no_grad():
        moved.image_encoder.layers[3].blocks[1].mlp.fc2.bias.add_(0.01)
    assert FeatureCache(moved, tmp_path, cut="last_stage").folder == cache.folder
    with torch.no_grad():
        moved.image_encoder.layers[2].blocks[0].mlp.fc2.bias.add_(0.01)
    assert FeatureCache(moved, tmp_path, cut="last_stage").folder != cache.folder

    def step() -> dict[str, torch.Tensor]:
        model = load_model("litemedsam", device="cpu", plain=True)
        config = FinetuneConfig(parts=("last_stage", "decoder"), lr=1e-3, warmup_steps=0)
        optimizer = torch.optim.AdamW(train.trainable_parameters(model, config.parts), lr=config.lr)
        train.training_mode(model)
        train.train_step(model, optimizer, *train.training_batch(model, config, cache, real_slices.slices[:2], 0))
        return _state(model)

    before, after = _state(plain_model), step()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith(LAST_STAGE + ".") for k in changed) and any(k.startswith("mask_decoder.") for k in changed)
    assert all(k.startswith((LAST_STAGE + ".", "mask_decoder.")) for k in changed), changed  # the neck stays frozen
    statistics = [k for k in before if k.startswith(LAST_STAGE + ".") and ".bn.running_" in k]
    assert len(statistics) == 4 and not changed & set(statistics)  # BatchNorm keeps its pretrained statistics
    again = step()
    assert all(torch.equal(after[k], again[k]) for k in after)
