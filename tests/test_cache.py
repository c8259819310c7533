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


def _flip(path, start: int, count: int = 64) -> None:
    data = bytearray(path.read_bytes())
    data[start:start + count] = bytes(255 - b for b in data[start:start + count])
    path.write_bytes(bytes(data))


def test_flipped_bytes_fail_the_digest_and_are_recomputed_and_counted(lite_model, images, tmp_path):
    cache = EmbeddingCache(lite_model, tmp_path)
    cache.ensure(images, progress=False)
    good = cache.get(images[0])
    path = cache.path(images[0])
    _flip(path, 100_000)  # inside the array: the file keeps its size, shape and dtype
    assert path.stat().st_size == cache.file_size
    assert np.load(path).shape == (256, 64, 64)  # still a valid .npy: only the digest tells
    assert cache.load(images[0]) is None and cache.damaged == 1
    assert torch.equal(cache.get(images[0]), good)  # recomputed
    assert cache.load(images[0]) is not None and cache.damaged == 1


def test_an_embedding_of_the_earlier_format_is_recomputed_not_counted(lite_model, images, tmp_path):
    cache = EmbeddingCache(lite_model, tmp_path)
    path = cache.path(images[0])
    path.parent.mkdir(parents=True)
    np.save(path, np.zeros((256, 64, 64), np.float16))  # no digest: cannot be trusted
    assert cache.load(images[0]) is None and cache.damaged == 0
    stats = cache.ensure(images[:1], progress=False)
    assert (stats.cached, stats.computed, stats.damaged) == (0, 1, 0)
    assert cache.load(images[0]).abs().sum() > 0


@pytest.fixture
def small_disk(tmp_path):
    """A folder on a 3 MB tmpfs, room for one embedding (mounting needs root: else skipped)."""
    import os
    import subprocess

    folder = tmp_path / "disk"
    folder.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(folder)],
                                           capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=True)


def test_a_full_cache_disk_is_a_clear_error_and_leaves_no_temporary(lite_model, images, small_disk):
    from samhw.fileio import StorageError

    cache = EmbeddingCache(lite_model, small_disk)
    for _ in range(2):  # a second run fails the same way and leaves nothing more
        with pytest.raises(StorageError, match="no space left on the device") as caught:
            cache.ensure(images, batch_size=1, progress=False)
        assert str(cache.folder) in str(caught.value)
        assert not list(cache.folder.glob("*/*.tmp"))
    assert sum(cache.load(image) is not None for image in images) == 1  # the one that fitted is whole


def test_a_failed_write_removes_its_temporary_at_once(lite_model, images, tmp_path, monkeypatch):
    import errno
    import os

    from samhw.fileio import StorageError

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    cache = EmbeddingCache(lite_model, tmp_path)
    monkeypatch.setattr(os, "fsync", no_space)  # a disk that fills while the file is written
    with pytest.raises(StorageError, match="no space left"):
        cache.ensure(images[:1], progress=False)
    assert not list(cache.folder.glob("*/*"))  # neither a file nor its temporary


def test_temporaries_of_dead_writers_are_swept(lite_model, images, tmp_path):
    import os
    import time

    cache = EmbeddingCache(lite_model, tmp_path)
    path = cache.path(images[1])
    path.parent.mkdir(parents=True)
    # 999999999 is above any pid limit; this test's parent process is alive (and writes nothing here)
    dead, alive = path.with_name(f"{path.name}.999999999.tmp"), path.with_name(f"{path.name}.{os.getppid()}.tmp")
    for tmp in (dead, alive):
        tmp.write_bytes(b"half a file")
        os.utime(tmp, (time.time() - 120,) * 2)
    cache.ensure(images[1:], progress=False)
    assert not dead.exists() and alive.exists()  # a live writer's temporary is left to it


def test_a_damaged_onnx_encoder_file_is_exported_again(lite_model, images, tmp_path, monkeypatch):
    monkeypatch.setattr(lite_model, "onnx_dir", tmp_path / "onnx")
    expected = lite_model.encode(images[:1])
    path = lite_model.onnx_path
    for damage in (lambda: path.write_bytes(path.read_bytes()[:100_000]), lambda: _flip(path, path.stat().st_size // 2)):
        damage()
        lite_model.onnx_dir = tmp_path / "onnx"  # a new session, as in a later run
        torch.testing.assert_close(lite_model.encode(images[:1]), expected, rtol=0, atol=0)
    assert not list(path.parent.glob("*.tmp"))


def test_a_cache_serves_only_a_model_with_its_encoder_and_backend():
    from types import SimpleNamespace

    from samhw.cache import cache_serves
    from samhw.predictor import Predictor

    def model(key, backend="onnx-fp32"):
        return SimpleNamespace(encoder_key=key, encoder_backend=backend)

    a = model("a")
    assert cache_serves(SimpleNamespace(model=a), a) and cache_serves(SimpleNamespace(model=model("a")), a)
    assert not cache_serves(SimpleNamespace(model=model("b")), a)  # another encoder (a trained tail)
    assert not cache_serves(SimpleNamespace(model=model("a", "eager")), a)  # another backend
    with pytest.raises(ValueError, match="the cache holds another image encoder's embeddings"):
        Predictor(model("b"), SimpleNamespace(model=a))
