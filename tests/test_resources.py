"""The process's allocator keeps freed memory, so that new tensors do not fault their pages in again."""
import resource

import pytest
import torch

from samhw.resources import PeakMemory, _tree_pss_mb, keep_freed_memory


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


def _resident_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


@pytest.mark.slow
def test_onnx_encoder_hands_back_the_memory_of_its_first_run(lite_model, tmp_path):
    """ONNX Runtime's first run leaves about 250 MB of arena chunks that its memory pattern never
    reuses; the encoder releases them after that run, with the same embeddings on every run."""
    from samhw.onnx_encoder import OnnxEncoder

    encoder = OnnxEncoder(lite_model.image_encoder, lite_model.input_size, tmp_path / "encoder.onnx", threads=1)
    x = torch.rand(1, 3, lite_model.input_size, lite_model.input_size, generator=torch.Generator().manual_seed(0))
    before = _resident_mb()
    first, *later = [encoder(x) for _ in range(3)]
    grown = _resident_mb() - before
    assert all(torch.equal(first, e) for e in later)
    assert grown < 350, f"the encoder's runs kept {grown:.0f} MB (400-530 without the release, about 270 with it)"


def test_peak_memory_samples_the_end_of_a_block_shorter_than_its_interval():
    before = _tree_pss_mb()
    if before is None:
        pytest.skip("no /proc smaps here")
    with PeakMemory(torch.device("cpu"), interval_s=60) as memory:
        block = torch.ones(50_000_000, dtype=torch.float64)  # 400 MB, touched
        inside = _tree_pss_mb()  # the block's end (children left by earlier tests may exit meanwhile)
    # the sampler's one interval sample came before the allocation (400 MB less): only the exit sample holds it
    assert memory.peak_mb >= inside - 50
    del block
