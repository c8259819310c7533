"""Peak memory of a block of work: its processes' proportional set size (CPU) or GPU memory."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import torch

__all__ = ["PeakMemory"]


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
            pss = _tree_pss_mb()
            if pss is not None:
                self.peak_mb = max(self.peak_mb or 0.0, pss)
            self._stop.wait(self.interval_s)

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
