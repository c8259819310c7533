"""The process's allocator keeps freed memory, so that new tensors do not fault their pages in again."""
import resource

import pytest
import torch

from samhw.resources import keep_freed_memory


def _faults_of_new_tensors(rounds: int = 5) -> int:
    """Page faults of a decoder-like pattern: several 4 MB tensors alive at once, then all freed."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        alive = [torch.empty(1 << 20).fill_(1.0) for _ in range(8)]
        del alive
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_kept_memory_spares_the_page_faults_of_new_tensors():
    if not keep_freed_memory():
        pytest.skip("the C library is not glibc: the allocator is left as it is")
    assert keep_freed_memory()  # idempotent
    _faults_of_new_tensors()  # the heap grows once
    assert _faults_of_new_tensors() < 400  # handed back, each round would fault in 8 * 1,024 pages again
