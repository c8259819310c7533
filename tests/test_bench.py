"""The benchmark's latency measurement: both paths timed in alternating rounds, medians with quartiles."""
import pytest

from samhw import bench


def test_spread_gives_the_median_and_quartiles():
    spread = bench._spread([4.0, 1.0, 3.0, 2.0, 5.0])
    assert spread == {"ms": 3.0, "q25_ms": 2.0, "q75_ms": 4.0, "calls": 5}


def test_quartiles_are_written_beside_the_median():
    spread = {"ms": 25.5, "q25_ms": 24.25, "q75_ms": 27.0, "calls": 3}
    assert bench._with_quartiles(spread, 2) == "25.50 [24.25-27.00]"
    assert bench._with_quartiles(spread, 1) == "25.5 [24.2-27.0]"


@pytest.mark.slow
def test_latencies_alternate_between_two_live_processes(data_dir, tmp_path, monkeypatch):
    """Each round times every slice once through the encoder and the decoder ``decoder_calls`` times,
    in the plain process then the fast one; both stay alive between rounds (the models load once)."""
    order = []
    submit = bench.ProcessPoolExecutor.submit

    def recording_submit(pool, fn, *args):
        order.append(id(pool))
        return submit(pool, fn, *args)

    monkeypatch.setattr(bench.ProcessPoolExecutor, "submit", recording_submit)
    out = bench._latencies("litemedsam", None, "cpu", str(data_dir), "test", 2, rounds=2, decoder_calls=3,
                           cache_root=str(tmp_path))
    assert len(set(order)) == 2 and order[0] == order[2] != order[1] == order[3]
    for name in ("plain", "fast"):
        assert len(out[name]["encoder"]) == 2 * 2 and len(out[name]["decoder"]) == 2 * 3
        assert all(ms > 0 for ms in out[name]["encoder"] + out[name]["decoder"])
    assert list((tmp_path / "onnx").glob("*.onnx")), "the fast path's encoder is exported into the given cache"
