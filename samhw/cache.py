"""Image embeddings cached on disk: the encoder runs once per (weights, preprocessing, image).

Layout: ``ROOT/<encoder key>-<backend>-<storage dtype>/<ab>/<sha256 of the image>.npy``,
where the encoder key holds the model name, input size, normalisation and a fingerprint of the
image encoder's weights, so a changed checkpoint never reuses old embeddings (a fine-tuned
decoder does reuse them: its encoder is unchanged). Each file is the ``.npy`` array followed by a
32-byte blake2b digest of it (``np.load`` still reads it), checked on every load. Files are written
through :mod:`samhw.fileio` (a temporary name and a rename, the temporary removed on failure), so a
killed run leaves no half file under a real name; a file that fails to load, has the wrong size or
shape, or does not match its digest is treated as missing, recomputed and counted. A file of the
earlier format (no digest) cannot be verified: it is recomputed and rewritten, not counted.
"""
from __future__ import annotations

import hashlib
import io
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .fileio import atomic_write, sweep_temporaries

if TYPE_CHECKING:
    from .models import SamModel

__all__ = ["EmbeddingCache", "CacheStats", "default_cache_dir"]

EMBEDDING_SHAPE = (256, 64, 64)
#: Bytes of the blake2b digest that ends each embedding file.
DIGEST_SIZE = 32
#: Threads writing embedding files while the encoder runs (each file is synced to disk).
WRITER_THREADS = 4


def default_cache_dir() -> Path:
    """``$SAMHW_CACHE``, else ``$XDG_CACHE_HOME/samhw``, else ``~/.cache/samhw``."""
    if os.environ.get("SAMHW_CACHE"):
        return Path(os.environ["SAMHW_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "samhw"


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=DIGEST_SIZE).digest()


def image_key(image: np.ndarray) -> str:
    """SHA-256 of an image's shape, dtype and bytes."""
    image = np.ascontiguousarray(image)
    digest = hashlib.sha256(f"{image.shape}{image.dtype}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def cache_serves(cache: object, model: object) -> bool:
    """Whether ``cache`` (an :class:`EmbeddingCache`, or anything with the ``model`` it encodes
    for) holds ``model``'s embeddings: the same model, or the same image encoder key and backend."""
    owner = getattr(cache, "model", model)
    return owner is model or ((getattr(owner, "encoder_key", None), getattr(owner, "encoder_backend", None))
                              == (getattr(model, "encoder_key", None), getattr(model, "encoder_backend", None)))


@dataclass
class CacheStats:
    """What :meth:`EmbeddingCache.ensure` found and did."""

    cached: int = 0
    computed: int = 0
    damaged: int = 0  # files that failed to load or to match their digest, recomputed
    seconds: float | None = None  # spent computing and writing

    def __str__(self) -> str:
        text = f"embeddings: {self.cached} reused from the cache, {self.computed} computed"
        if self.computed and self.seconds is not None:
            text += f" in {self.seconds:.1f} s"
        return text + (f", {self.damaged} damaged cache files recomputed" if self.damaged else "")


class EmbeddingCache:
    """Disk cache of image embeddings for one model. ``storage`` is ``float16`` or ``float32``.

    Subclasses cache other per-image arrays of the encoder (``samhw.encoder_tail``): they set
    :attr:`shape` and override :meth:`folder_name` and :meth:`compute`.
    """

    #: Shape of one image's stored array.
    shape: tuple[int, ...] = EMBEDDING_SHAPE

    def __init__(self, model: SamModel, root: str | os.PathLike | None = None, storage: str = "float16"):
        if storage not in ("float16", "float32"):
            raise ValueError(f"storage must be float16 or float32, got {storage!r}")
        self.model = model
        self.storage = np.dtype(storage)
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()
        self.folder = self.root / self.folder_name()
        self.damaged = 0
        buffer = io.BytesIO()
        np.save(buffer, np.zeros(self.shape, self.storage))
        self._array_size = buffer.tell()  # the earlier format: the array alone
        self.file_size = self._array_size + DIGEST_SIZE

    def folder_name(self) -> str:
        """The cache folder's name: what computes the arrays (encoder key, backend) and the storage dtype."""
        return f"{self.model.encoder_key}-{self.model.encoder_backend}-{self.storage.name}"

    def compute(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """(B, *shape) arrays of (B, H, W, 3) uint8 slices: the model's embeddings."""
        return self.model.encode(images)

    def path(self, image: np.ndarray) -> Path:
        key = image_key(image)
        return self.folder / key[:2] / f"{key}.npy"

    def load(self, image: np.ndarray) -> torch.Tensor | None:
        """The cached (1, *shape) float32 array of ``image`` (an embedding (1, 256, 64, 64)), or None if absent or damaged
        (a damaged file is removed and counted in ``damaged``)."""
        path = self.path(image)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError:
            data = b""
        if len(data) == self._array_size:  # the earlier format, without a digest: recomputed
            return None
        try:
            body, digest = data[:-DIGEST_SIZE], data[-DIGEST_SIZE:]
            if len(data) != self.file_size or _digest(body) != digest:
                raise ValueError("size or digest does not match")
            array = np.load(io.BytesIO(body), allow_pickle=False)
            if array.shape != self.shape or array.dtype != self.storage:
                raise ValueError(f"shape {array.shape} {array.dtype}")
        except (ValueError, OSError, EOFError):
            self.damaged += 1
            with suppress(OSError):
                path.unlink(missing_ok=True)
            return None
        return torch.from_numpy(array.astype(np.float32))[None]

    def _write(self, path: Path, embedding: np.ndarray) -> None:
        """Write one array of :attr:`shape` to ``path`` (:meth:`path` of its image) atomically, with its digest."""
        buffer = io.BytesIO()
        np.save(buffer, embedding.astype(self.storage).reshape(self.shape))
        body = buffer.getvalue()
        atomic_write(path, lambda handle: handle.write(body + _digest(body)))

    def store(self, image: np.ndarray, array: np.ndarray) -> None:
        """Store ``array`` (of :attr:`shape`) as ``image``'s, computed elsewhere (e.g. by a trained encoder tail)."""
        self._write(self.path(image), array)

    def count(self) -> int:
        """How many embeddings this cache folder holds."""
        return sum(1 for _ in self.folder.glob("*/*.npy")) if self.folder.exists() else 0

    def ensure(self, images: Sequence[np.ndarray], batch_size: int | None = None, progress: bool = True) -> CacheStats:
        """Encode and store every image not yet cached, ``batch_size`` at a time (default 4 on
        the CPU, 32 on CUDA); returns what was reused and computed."""
        batch_size = batch_size or (32 if self.model.device.type == "cuda" else 4)
        sweep_temporaries(self.folder, "*/*.tmp")
        damaged_before = self.damaged
        missing: dict[Path, np.ndarray] = {}  # an image that occurs twice is encoded once
        for image in images:
            path = self.path(image)
            size = path.stat().st_size if path.exists() else None
            if size == self.file_size:
                continue  # its digest is checked when it is loaded
            if size is not None and size != self._array_size:
                self.damaged += 1
            missing.setdefault(path, image)
        todo = list(missing.items())
        started = time.perf_counter()
        stats = CacheStats(cached=len(images) - len(todo), computed=len(todo), damaged=self.damaged - damaged_before)
        # Files are written (and synced) by a few threads while the next batch is encoded: on a GPU
        # the writes, not the encoder, would otherwise set the pace. At most one batch waits.
        with tqdm(total=len(todo), desc="encoding images", unit="image", disable=not progress or not todo) as bar, \
                ThreadPoolExecutor(WRITER_THREADS) as writers:
            pending: list = []
            for start in range(0, len(todo), batch_size):
                paths, chunk = zip(*todo[start:start + batch_size])
                embeddings = self.compute(chunk).cpu().numpy()
                for done in pending:
                    done.result()
                pending = [writers.submit(self._write, path, embedding) for path, embedding in zip(paths, embeddings)]
                bar.update(len(chunk))
            for done in pending:
                done.result()
        stats.seconds = time.perf_counter() - started
        return stats

    def get(self, image: np.ndarray) -> torch.Tensor:
        """The (1, *shape) array of ``image`` (an embedding (1, 256, 64, 64)), computed and stored if needed."""
        embedding = self.load(image)
        if embedding is None:
            self.ensure([image], progress=False)
            embedding = self.load(image)
        return embedding
