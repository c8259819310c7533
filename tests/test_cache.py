"""The embedding cache: reuse, invalidation by weights, damaged files, atomic writes, float16 storage."""
import numpy as np
import pytest
import torch

from samhw.cache import EmbeddingCache
from samhw.models import build_model


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(5)
    return [rng.integers(0, 255, (256, 256, 3), dtype=np.uint8) for _ in range(2)]


def test_encode_once_then_reuse(lite_model, images, tmp_path):
    cache = EmbeddingCache(lite_model, tmp_path)
    first = cache.ensure(images, progress=False)
    assert (first.cached, first.computed) == (0, 2)
    again = cache.ensure(images, progress=False)
    assert (again.cached, again.computed) == (2, 0)
    stored = cache.get(images[0])
    assert stored.shape == (1, 256, 64, 64) and stored.dtype == torch.float32
    direct = lite_model.encode(images[:1])
    torch.testing.assert_close(stored, direct, atol=2e-3 * direct.abs().max().item(), rtol=1e-3)
    assert len(list(cache.folder.glob("*/*.npy"))) == 2 and not list(cache.folder.glob("*/*.tmp"))


def test_repeated_images_are_encoded_once_and_every_batch_is_written(lite_model, images, tmp_path, monkeypatch):
    encoded = []
    encode = lite_model.encode
    monkeypatch.setattr(lite_model, "encode", lambda batch: encoded.append(len(batch)) or encode(batch))
    cache = EmbeddingCache(lite_model, tmp_path)
    stats = cache.ensure([images[0], images[1], images[0], images[1], images[0]], batch_size=1, progress=False)
    assert (stats.cached, stats.computed) == (3, 2) and encoded == [1, 1]
    assert all(cache.load(image) is not None for image in images)
    assert len(list(cache.folder.glob("*/*.npy"))) == 2 and not list(cache.folder.glob("*/*.tmp"))


def test_changed_encoder_weights_never_reuse_old_embeddings(lite_model, images, tmp_path):
    cache = EmbeddingCache(lite_model, tmp_path)
    cache.ensure(images[:1], progress=False)
    changed = build_model("litemedsam")
    state = lite_model.state_dict()
    state["image_encoder.neck.0.weight"] = state["image_encoder.neck.0.weight"] * 1.01
    changed.load_state_dict(state)
    other = EmbeddingCache(changed, tmp_path)
    assert other.folder != cache.folder and other.load(images[0]) is None
    decoder_only = build_model("litemedsam")
    state = lite_model.state_dict()
    state["mask_decoder.iou_token.weight"] = state["mask_decoder.iou_token.weight"] + 1
    decoder_only.load_state_dict(state)
    assert EmbeddingCache(decoder_only, tmp_path).folder == cache.folder  # a new decoder reuses embeddings


def test_truncated_file_is_recomputed_and_counted(lite_model, images, tmp_path):
    cache = EmbeddingCache(lite_model, tmp_path)
    cache.ensure(images, progress=False)
    path = cache.path(images[0])
    path.write_bytes(path.read_bytes()[:1000])
    stats = cache.ensure(images, progress=False)
    assert (stats.cached, stats.computed, stats.damaged) == (1, 1, 1)
    assert "1 damaged cache files recomputed" in str(stats)
    assert cache.load(images[0]) is not None
    # a file damaged after the check is caught when loaded, and recomputed by get()
    path.write_bytes(b"\x93NUMPY garbage")
    assert cache.load(images[0]) is None and cache.damaged >= 1
    assert cache.get(images[0]).shape == (1, 256, 64, 64)


def test_leftover_temporary_files_are_never_read(lite_model, images, tmp_path):
    cache = EmbeddingCache(lite_model, tmp_path)
    path = cache.path(images[1])
    path.parent.mkdir(parents=True)
    path.with_name(f"{path.stem}.1234.tmp").write_bytes(b"half a file")
    assert cache.load(images[1]) is None
    assert cache.ensure(images[1:], progress=False).computed == 1


def test_storage_dtype_is_part_of_the_key(lite_model, tmp_path):
    assert EmbeddingCache(lite_model, tmp_path, "float32").folder != EmbeddingCache(lite_model, tmp_path).folder
    with pytest.raises(ValueError):
        EmbeddingCache(lite_model, tmp_path, "int8")
