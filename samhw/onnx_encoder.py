"""The image encoder through ONNX Runtime on the CPU (faster there than eager PyTorch: README, "Speed").

The encoder is exported once per weights to ``<cache>/onnx/<encoder key>.onnx``
and loaded from there afterwards. Embeddings agree with eager fp32 to about 1e-5.

Beside the file, ``<encoder key>.onnx.blake2b`` holds its digest (hex). A file whose digest is
missing or does not match (truncated, damaged, or exported by an earlier samhw), or that ONNX Runtime
cannot load, is exported again instead of being used.
"""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .fileio import atomic_path, atomic_write_text

__all__ = ["OnnxEncoder", "onnx_available"]

#: Encoders larger than this are kept in PyTorch (ONNX files over 2 GB need external data).
MAX_PARAM_BYTES = 1_500_000_000
OPSET = 20


def onnx_available() -> bool:
    try:
        import onnx  # noqa: F401  (the exporter needs it)
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".blake2b")


def _file_digest(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verified(path: Path) -> bool:
    """Whether ``path`` exists and matches the digest recorded beside it when it was exported."""
    try:
        return _digest_path(path).read_text().strip() == _file_digest(path)
    except OSError:
        return False


def _export(encoder: nn.Module, input_size: int, path: Path) -> None:
    """Trace the encoder for a batch of one into an ONNX file, written atomically, then its digest."""
    example = torch.zeros(1, 3, input_size, input_size)
    flags = [p.requires_grad for p in encoder.parameters()]
    for p in encoder.parameters():
        p.requires_grad_(False)
    try:
        with atomic_path(path) as tmp, warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(encoder, (example,), str(tmp), input_names=["image"], output_names=["embedding"],
                              opset_version=OPSET, dynamo=False)
    finally:
        for p, flag in zip(encoder.parameters(), flags):
            p.requires_grad_(flag)
    atomic_write_text(_digest_path(path), _file_digest(path) + "\n")


def remove(path: Path) -> None:
    """Delete an exported encoder file and its digest."""
    path.unlink(missing_ok=True)
    _digest_path(path).unlink(missing_ok=True)


class OnnxEncoder:
    """An ONNX Runtime session for one image encoder (its weights at construction time)."""

    def __init__(self, encoder: nn.Module, input_size: int, path: Path, threads: int | None = None):
        import onnxruntime as ort

        self.export(encoder, input_size, path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception:  # damaged after the check (ONNX Runtime raises its own classes): export once more
            _export(encoder, input_size, path)
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.path = path
        # ONNX Runtime plans a memory pattern from its first run and allocates it, from the second
        # run on, beside that run's arena chunks, which would lie unused (about 250 MB of each
        # process): the first run hands its chunks back when it ends.
        self._release = ort.RunOptions()
        self._release.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        self._first_run = True

    @staticmethod
    def export(encoder: nn.Module, input_size: int, path: Path) -> None:
        """Export the encoder to ``path`` unless it is there already and matches its digest."""
        if not verified(path):
            _export(encoder, input_size, path)

    @staticmethod
    def suitable(encoder: nn.Module) -> bool:
        size = sum(p.numel() * p.element_size() for p in encoder.parameters())
        return size < MAX_PARAM_BYTES and onnx_available()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) float32 CPU input -> (B, 256, 64, 64) float32 embedding, one image at a time
        (TinyViT's reshapes are traced with a fixed batch of one)."""
        array = np.ascontiguousarray(x.numpy(), dtype=np.float32)
        return torch.from_numpy(np.concatenate([self._run(a[None]) for a in array]))

    def _run(self, image: np.ndarray) -> np.ndarray:
        options, self._first_run = (self._release if self._first_run else None), False
        return self.session.run(None, {"image": image}, options)[0]
