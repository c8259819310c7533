"""Process resources: peak memory of a block of work (its processes' proportional set size on the
CPU, or GPU memory), and how the process's allocator keeps freed memory."""
from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path

import torch

__all__ = ["PeakMemory", "keep_freed_memory"]

#: glibc's mallopt parameters (malloc.h) and the values samhw sets: blocks up to 64 MB come from
#: the heap, and up to 512 MB of freed heap is kept for reuse.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 64 << 20
_TRIM_THRESHOLD = 512 << 20
_KEPT = False


def keep_freed_memory() -> bool:
    """Let this process reuse freed memory instead of handing it back to the system at once.

    PyTorch's CPU tensors come from malloc, which by default maps large blocks afresh and hands
    freed memory back to the system, so the decoder's tensors of a few MB keep paying a page fault
    per 4 kB on first touch.
    Process-wide and idempotent; False where the C library is not glibc (nothing changes there).
    """
    global _KEPT
    if _KEPT:
        return True
    try:
        glibc = os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (ValueError, OSError, AttributeError):  # not a glibc system, or not POSIX
        glibc = False
    if not glibc:
        return False
    libc = ctypes.CDLL(None)
    _KEPT = bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    return _KEPT


def _tree_pids(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux /proc)."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            pids += _tree_pids(int(child))
    return pids


def _tree_pss_mb() -> float | None:
    """Proportional set size of this process and its workers, MB: shared pages (the libraries
    every worker maps) count once in total, not once per process as in RSS."""
    total = 0.0
    for pid in _tree_pids(os.getpid()):
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) / 1024
                    break
        except OSError:
            continue
    return total or None


class PeakMemory:
    """Peak memory of a block, MB: on the CPU the proportional set size of this process and its
    workers, sampled every ``interval_s`` (Linux); on CUDA the peak allocated GPU memory."""

    def __init__(self, device: torch.device, interval_s: float = 1.0):
        self.device = device
        self.interval_s = interval_s  # reading smaps costs CPU: sample sparingly
        self.peak_mb: float | None = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._record()
            self._stop.wait(self.interval_s)

    def _record(self) -> None:
        pss = _tree_pss_mb()
        if pss is not None:
            self.peak_mb = max(self.peak_mb or 0.0, pss)

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self._record()  # the block's end too: a block shorter than the interval has one sample only
