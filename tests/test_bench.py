"""The benchmark: its validated config, the phases' record and table, the latency rounds and the training step."""
import dataclasses
import json

import numpy as np
import pytest
import torch

from samhw import bench, cli
from samhw.bench import BenchConfig, BenchError
from samhw.models import ModelError, load_model
from samhw.prompts import PromptSpec, Target


def test_spread_gives_the_median_and_quartiles():
    spread = bench.spread([4.0, 1.0, 3.0, 2.0, 5.0])
    assert spread == {"ms": 3.0, "q25_ms": 2.0, "q75_ms": 4.0, "calls": 5}


def test_quartiles_are_written_beside_the_median():
    spread = {"ms": 25.5, "q25_ms": 24.25, "q75_ms": 27.0, "calls": 3}
    assert bench._with_quartiles(spread, 2) == "25.50 [24.25-27.00]"
    assert bench._with_quartiles(spread, 1) == "25.5 [24.2-27.0]"


def test_bench_config_is_validated_and_frozen():
    config = BenchConfig(device="cpu", slices=3, repeat=2)
    assert config.device == "cpu" and config.decoder_calls == 16
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.slices = 4
    for bad, match in (({"split": "validation"}, "split"), ({"slices": 0}, "slices"), ({"seeds": -1}, "seeds"),
                       ({"repeat": 2.5}, "repeat"), ({"repeat": True}, "repeat"), ({"model": ""}, "unknown model"),
                       ({"model": "litemedsam-lgh"}, "known: litemedsam, .*litemedsam-lgg")):
        with pytest.raises(BenchError, match=match):
            BenchConfig(device="cpu", **bad)
    with pytest.raises(ModelError, match="--device gpu"):
        BenchConfig(device="gpu")


def test_the_command_line_builds_the_config_from_its_flags(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(bench, "run_bench", lambda config, out, study_record=None: seen.append((config, out)))
    assert cli.main(["bench", "--split", "val", "--slices", "3", "--seeds", "2", "--repeat", "4", "--device", "cpu",
                     "--model", "litemedsam", "--out", str(tmp_path / "b")]) == 0
    assert seen == [(BenchConfig(split="val", slices=3, seeds=2, repeat=4, device="cpu"), str(tmp_path / "b"))]
    assert cli.main(["bench", "--device", "gpu"]) == 2


def _phases(config: BenchConfig) -> tuple:
    """Made-up results of the phases, shaped as they return them (milliseconds and GFLOP)."""
    latency = {"plain": {"encoder": [1200.0, 1300.0], "decoder": [70.0, 66.0, 68.0]},
               "fast": {"encoder": [700.0, 760.0], "decoder": [27.0, 26.0, 30.0]}}
    study = {"seconds": 50.0, "ms_per_prompt": 80.0, "steady_ms_per_prompt": 60.0, "peak_mb": 3500, "prompts": 416,
             "mean_iou": 0.22, "cache_bytes_per_slice": 2_097_280,
             "warm": {"seconds": 40.0, "ms_per_prompt": 60.0, "steady_ms_per_prompt": 50.0, "peak_mb": 3000}}
    path = {"encoder_backend": "torch-fp32", "decoder_batched_ms": 120.0, "decoder_batch": 16, "train_step_ms": 1400.0,
            "train_step_prompts": ["box:0"] * 8, "study": study}
    paths = {"plain": path, "fast": {**path, "encoder_backend": "onnx-fp32", "decoder_batched_ms": 28.0,
                                     "train_step_ms": 560.0, "study": {**study, "seconds": 25.0}}}
    equivalence = {"pixel_agreement": 0.9999, "iou_plain": 0.2010, "iou_fast": 0.2011, "prompts": 100}
    arithmetic = {"encoder_gflop": 75.0, "plain_decoder_gflop": 3.6, "fast_decoder_gflop": 1.7, "matmul_gflops": 170.0}
    return latency, paths, equivalence, arithmetic


def test_the_record_and_table_come_from_the_phases(tmp_path):
    config = BenchConfig(device="cpu", slices=8, seeds=3, repeat=2)
    result = bench.summarize(config, 8, *_phases(config))
    assert result["train_step_batch8"]["plain_ms"] == 1400.0 and result["train_step_batch8"]["fast_ms"] == 560.0
    assert result["ratios"]["train_step"] == 2.5 and result["ratios"]["study"] == 2.0
    assert result["encoder_per_slice"]["fast"]["calls"] == 2 and result["decoder_per_prompt"]["fast_ms"] == 27.0
    assert result["latency_rounds"] == 2 and result["encoder_backend"] == "onnx-fp32"
    json_path, md_path = bench.write_bench(result, tmp_path / "sub" / "cpu")
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(result))
    table = md_path.read_text()
    assert "| decoder-only training step, batch 8 (prompts of the default training mix), ms | 1400 | 560 | 2.5x |" in table
    assert "27.00 [26.50-28.50]" in table  # the fast decoder's median [quartiles]


@pytest.mark.slow
def test_the_training_step_is_timed_and_the_weights_put_back():
    model = load_model("litemedsam", device="cpu")
    before = {k: v.clone() for k, v in model.mask_decoder.state_dict().items()}
    mask = np.zeros((256, 256), bool)
    mask[60:90, 100:150] = True
    specs = [PromptSpec.parse(n) for n in ("box:0", "center_mask")]
    drawn = [(spec, spec.draw(Target(mask, slice_id=f"s{i}"), 0)) for i, spec in enumerate(specs)]
    embeddings = torch.randn(2, 256, 64, 64, generator=torch.Generator().manual_seed(0))
    for plain in (False, True):
        ms = bench.train_step_ms(model, embeddings, drawn, [torch.from_numpy(mask)] * 2, repeat=2, plain=plain)
        assert ms > 0
        assert all(torch.equal(v, before[k]) for k, v in model.mask_decoder.state_dict().items())
        assert all(p.requires_grad for p in model.parameters())  # as loaded: nothing frozen


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
    config = BenchConfig(data=str(data_dir), device="cpu", slices=2, repeat=2)
    out = bench.measure_latency(config, tmp_path)
    assert len(set(order)) == 2 and order[0] == order[2] != order[1] == order[3]
    for name in ("plain", "fast"):
        assert len(out[name]["encoder"]) == 2 * 2 and len(out[name]["decoder"]) == 2 * config.decoder_calls
        assert all(ms > 0 for ms in out[name]["encoder"] + out[name]["decoder"])
    assert list((tmp_path / "onnx").glob("*.onnx")), "the fast path's encoder is exported into the given cache"
