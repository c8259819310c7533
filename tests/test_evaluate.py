"""Evaluation plan, summary statistics and resuming an interrupted run."""
import numpy as np
import pandas as pd
import pytest

import samhw.evaluate as ev
from samhw.cache import EmbeddingCache
from samhw.evaluate import evaluate_to_csv, format_summary, plan, read_rows, summarize
from samhw.prompts import parse_prompts


def test_plan_runs_random_prompts_per_seed_and_fixed_ones_once():
    specs = parse_prompts(["box:0", "box:10", "center_mask", "random_mask+background"])
    pairs = [(s.name, seed) for s, seed in plan(specs, [0, 1, 2])]
    assert pairs == [("box:0", 0), ("box:10", 0), ("box:10", 1), ("box:10", 2), ("center_mask", 0),
                     ("random_mask+background", 0), ("random_mask+background", 1), ("random_mask+background", 2)]


def test_summary_weighs_slices_and_patients_separately():
    # patient A: three slices at IoU 0.9; patient B: one slice at 0.1; two seeds agree.
    rows = []
    for seed in (0, 1):
        rows += [{"split": "test", "patient": "A", "slice": f"a{i}", "prompt": "p", "seed": seed, "iou": 0.9,
                  "dice": 0.9, "off_target": 0} for i in range(3)]
        rows.append({"split": "test", "patient": "B", "slice": "b0", "prompt": "p", "seed": seed, "iou": 0.1,
                     "dice": 0.2, "off_target": int(seed == 1)})
    s = summarize(pd.DataFrame(rows)).iloc[0]
    assert s["iou"] == pytest.approx(0.7) and s["iou_patient"] == pytest.approx(0.5)
    assert s["iou_lo"] == pytest.approx(0.7) and s["iou_hi"] == pytest.approx(0.7)  # no spread over seeds
    assert (s["slices"], s["patients"], s["seeds"]) == (4, 2, 2)
    assert s["off_target"] == pytest.approx(1 / 8)
    assert "0.7000" in format_summary(summarize(pd.DataFrame(rows)))


def test_summary_interval_comes_from_the_seeds():
    rows = [{"split": "s", "patient": "A", "slice": "a", "prompt": "p", "seed": k, "iou": v, "dice": v,
             "off_target": 0} for k, v in enumerate([0.2, 0.4, 0.6])]
    s = summarize(pd.DataFrame(rows)).iloc[0]
    assert s["iou"] == pytest.approx(0.4) and s["iou_hi"] - s["iou"] == pytest.approx(4.302652729911275 * 0.2 / 3 ** 0.5)


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_rows(lite_model, real_slices, cache_dir, tmp_path, monkeypatch, capsys):
    specs = parse_prompts(["box:0", "box:20", "random_mask", "center_gaussian+background"])
    cache = EmbeddingCache(lite_model, cache_dir)
    config = {"test": 1}
    whole = evaluate_to_csv(tmp_path / "whole.csv", config, lite_model, cache, real_slices, specs, [0, 1],
                            progress=False)
    assert len(whole) == len(real_slices) * len(plan(specs, [0, 1]))

    real = ev.evaluate_slice
    calls = {"n": 0}

    def dies_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(ev, "evaluate_slice", dies_on_third)
    out = tmp_path / "resumed.csv"
    with pytest.raises(KeyboardInterrupt):  # in-process, so that the patched function is the one called
        evaluate_to_csv(out, config, lite_model, cache, real_slices, specs, [0, 1], progress=False, workers=1)
    part = out.with_name("resumed.csv.part")
    assert not out.exists() and part.exists()
    with open(part, "a") as handle:  # a kill in the middle of a line
        handle.write("test,TCGA_X,TCGA_X_1,box:0,0,0.5")
    monkeypatch.setattr(ev, "evaluate_slice", real)
    resumed = evaluate_to_csv(out, config, lite_model, cache, real_slices, specs, [0, 1], progress=True, workers=2)
    captured = capsys.readouterr()
    assert "resuming resumed.csv: 2 of 4 slices already done" in captured.out + captured.err
    pd.testing.assert_frame_equal(resumed, whole)
    assert not part.exists() and read_rows(out).equals(resumed)


@pytest.mark.slow
def test_changed_config_starts_over(lite_model, real_slices, cache_dir, tmp_path):
    specs = parse_prompts(["box:0"])
    cache = EmbeddingCache(lite_model, cache_dir)
    out = tmp_path / "r.csv"
    part = out.with_name("r.csv.part")
    part.write_text("split,patient\nstale,row\n")
    out.with_name("r.csv.part.json").write_text('{"other": 1}')
    rows = evaluate_to_csv(out, {"this": 1}, lite_model, cache, real_slices, specs, [0], progress=False)
    assert len(rows) == len(real_slices) and "stale" not in set(rows["split"])
    assert np.all(rows["iou"] > 0)


@pytest.mark.slow
def test_prompts_drawn_in_worker_processes_give_the_same_rows(lite_model, real_slices, cache_dir):
    # The GPU path (processes draw, this one decodes), run here on the CPU model.
    specs = parse_prompts(["box:10", "random_bilateral", "center_gaussian+background", "box:20+center_gaussian"])
    pairs = plan(specs, [0, 1])
    cache = EmbeddingCache(lite_model, cache_dir)
    todo = list(real_slices.slices)
    cache.ensure([s.image for s in todo], progress=False)
    in_process = [ev.evaluate_slice(lite_model, cache.get(s.image), s, pairs, "test", 3) for s in todo]
    drawn_apart = list(ev._prompts_in_workers(lite_model, cache, todo, pairs, "test", 3, 2, {"disable": True}))
    assert drawn_apart == in_process
    assert [r["slice"] for rows in drawn_apart for r in rows[:1]] == [s.slice_id for s in todo]


def test_in_order_keeps_order_and_bounds_the_lookahead():
    from concurrent.futures import Future

    submitted = []

    def submit(item):
        submitted.append(item)
        future = Future()
        future.set_result(item * 10)
        return future

    results = ev._in_order(submit, range(6), ahead=2)
    assert next(results) == 0 and submitted == [0, 1, 2]
    assert list(results) == [10, 20, 30, 40, 50] and submitted == list(range(6))


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_a_damaged_cache_file_is_recomputed_and_reported(workers, lite_model, real_slices, cache_dir, tmp_path, capsys):
    specs = parse_prompts(["box:0"])
    cache = EmbeddingCache(lite_model, cache_dir)
    cache.ensure([s.image for s in real_slices.slices], progress=False)
    whole = evaluate_to_csv(tmp_path / "whole.csv", {}, lite_model, cache, real_slices, specs, [0], progress=False,
                            workers=1)
    path = cache.path(real_slices.slices[1].image)
    data = bytearray(path.read_bytes())
    data[200_000:200_064] = bytes(255 - b for b in data[200_000:200_064])  # same size, shape and dtype
    path.write_bytes(bytes(data))
    capsys.readouterr()
    rows = evaluate_to_csv(tmp_path / "again.csv", {}, lite_model, cache, real_slices, specs, [0], progress=False,
                           workers=workers)
    assert "1 damaged cache files recomputed" in capsys.readouterr().err
    pd.testing.assert_frame_equal(rows, whole)
