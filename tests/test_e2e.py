"""End to end on real slices of the shared LGG copy with the real LiteMedSAM weights."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from samhw.cache import EmbeddingCache
from samhw.cli import main
from samhw.data import Dataset
from samhw.evaluate import evaluate
from samhw.metrics import iou
from samhw.models import CHECKPOINT_FORMAT
from samhw.prompts import PromptSpec, Target, parse_prompts
from samhw.study import EXPERIMENTS

pytestmark = pytest.mark.slow


def test_tight_box_is_far_above_chance(lite_model, real_slices, cache_dir):
    cache = EmbeddingCache(lite_model, cache_dir)
    spec = PromptSpec.parse("box:0")
    ious, wrong = [], []
    for k, item in enumerate(real_slices.slices):
        prompt = spec.draw(Target(item.mask, item.image, item.slice_id), 0)
        mask = lite_model.predict(cache.get(item.image), [prompt], item.mask.shape, spec.multimask)[0][0]
        ious.append(iou(mask, item.mask))
        wrong.append(iou(mask, real_slices.slices[k - 1].mask))  # chance: the same mask against another slice
    assert np.mean(ious) > 0.5, ious
    assert np.mean(ious) > np.mean(wrong) + 0.4, (ious, wrong)


def test_results_do_not_depend_on_slice_order(lite_model, real_slices, cache_dir):
    cache = EmbeddingCache(lite_model, cache_dir)
    specs = parse_prompts(["box:10", "random_gaussian", "center_mask+background"])
    forward = [r for rows in evaluate(lite_model, cache, real_slices, specs, [3, 4], progress=False) for r in rows]
    backward_set = Dataset(real_slices.root, real_slices.split, list(reversed(real_slices.slices)))
    backward = [r for rows in evaluate(lite_model, cache, backward_set, specs, [3, 4], progress=False) for r in rows]
    key = ["slice", "prompt", "seed"]
    a = pd.DataFrame(forward).sort_values(key).reset_index(drop=True)
    b = pd.DataFrame(backward).sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


def test_cli_evaluate_writes_rows_and_reuses_the_cache(data_dir, cache_dir, tmp_path, capsys):
    args = ["evaluate", "--data", str(data_dir), "--split", "test", "--limit", "2", "--seeds", "2", "--device", "cpu",
            "--prompts", "box:0", "center_mask", "box:-20+background", "--cache", str(cache_dir), "--quiet"]
    assert main(args + ["--out", str(tmp_path / "a.csv")]) == 0
    rows = pd.read_csv(tmp_path / "a.csv")
    assert {"patient", "slice", "prompt", "seed", "iou", "dice"} <= set(rows.columns)
    assert len(rows) == 2 * (1 + 1 + 2)
    assert sorted(rows.groupby("prompt")["seed"].nunique().items()) == [("box:-20+background", 2), ("box:0", 1),
                                                                      ("center_mask", 1)]
    out = capsys.readouterr()
    assert "box:-20+background" in out.out and "IoU (patients)" in out.out
    assert main(args + ["--out", str(tmp_path / "b.csv")]) == 0
    assert "2 reused from the cache, 0 computed" in capsys.readouterr().err
    pd.testing.assert_frame_equal(rows, pd.read_csv(tmp_path / "b.csv"))


@pytest.mark.parametrize("args, words", [
    (["--prompts", "centre_mask"], "unknown prompt 'centre_mask'"),
    (["--prompts", "random_gaussian:sigma=-5"], "sigma must be a positive"),
    (["--prompts", "box:0", "--model", "vit_b"], "pass --checkpoint"),
    (["--prompts", "box:0", "--data", "/nonexistent/kaggle_3m"], "/nonexistent/kaggle_3m: not a folder"),
])
def test_cli_errors_are_one_clear_line(data_dir, tmp_path, capsys, args, words):
    base = ["evaluate", "--data", str(data_dir), "--limit", "1", "--out", str(tmp_path / "x.csv"), "--device", "cpu"]
    assert main(base + args) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_quick_study_writes_every_result_and_reruns_identically(data_dir, cache_dir, tmp_path, capsys):
    out = tmp_path / "study"
    args = ["study", "--data", str(data_dir), "--limit", "2", "--seeds", "2", "--out", str(out), "--device", "cpu",
            "--cache", str(cache_dir), "--quiet"]
    assert main(args) == 0
    for name in ["rows_test.csv", "summary.csv", "summary.json", "fig_e1_margins.png", "fig_e2_strategies.png",
                 "fig_gallery.png"]:
        assert (out / name).stat().st_size > 0, name
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["prompt"]) == [p for e in ("E1", "E2", "E3", "E6") for p in EXPERIMENTS[e]]
    meta = json.loads((out / "summary.json").read_text())
    assert meta["splits"]["test"]["slices"] == 2 and meta["seeds"] == [0, 1]
    first = (out / "summary.csv").read_bytes()
    (out / "rows_test.csv").unlink()
    capsys.readouterr()
    assert main(args) == 0
    assert "0 computed" in capsys.readouterr().err
    assert (out / "summary.csv").read_bytes() == first


def test_study_compares_a_finetuned_checkpoint_and_reuses_the_pretrained_rows(data_dir, cache_dir, lite_model,
                                                                               tmp_path, capsys):
    """``study --finetuned``: both models on the same slices, the pretrained rows kept when up to date."""
    state = {k: v.clone() for k, v in lite_model.state_dict().items()}
    state["mask_decoder.iou_prediction_head.layers.0.bias"] += 0.5  # another decoder: other weights, same encoder
    log = [{"epoch": 1, "loss": 0.5, "mask_loss": 0.4, "iou_loss": 0.1, "val": {"box:0": 0.7}, "val_mean": 0.7}]
    checkpoint = tmp_path / "tuned.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "model": "litemedsam", "state_dict": state, "log": log,
                "best": {"epoch": 1, "val_mean": 0.7}, "options": {"epochs": 1}, "command": "python -m samhw finetune"},
               checkpoint)
    out = tmp_path / "lite"
    args = ["study", "--data", str(data_dir), "--limit", "2", "--seeds", "2", "--experiments", "E1", "--out", str(out),
            "--device", "cpu", "--cache", str(cache_dir), "--quiet"]
    assert main(args) == 0
    made = (out / "rows_test.csv").read_bytes()
    capsys.readouterr()
    assert main(args + ["--finetuned", str(checkpoint)]) == 0
    assert "rows_test.csv is up to date" in capsys.readouterr().err
    assert (out / "rows_test.csv").read_bytes() == made
    tuned = tmp_path / "lite-finetuned"
    for name in ["comparison.md", "fig_compare_e1_margins.png", "fig_compare_e2_strategies.png", "training.json",
                 "fig_training.png", "summary.json"]:
        assert (tuned / name).stat().st_size > 0, name
    table = (tuned / "comparison.md").read_text()
    assert "| test origin | test fine-tuned |" in table and "chosen on the validation patients: epoch 1 of 1" in table
    origin = pd.read_csv(out / "summary.csv").set_index("prompt")
    row = next(line for line in table.splitlines() if line.startswith("| E1 | `box:0` |"))
    # the origin column is the pretrained study (its mean, then its patient-level interval)
    assert row.split(" | ")[3].startswith(f"{origin.loc['box:0', 'iou']:.3f} [")
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- results:start (written by `python -m samhw report`; do not edit by hand) -->\n"
                      "<!-- results:end -->\n")
    assert main(args + ["--readme", str(readme)]) == 0  # the pretrained study alone still shows the comparison
    assert "| test origin | test fine-tuned |" in readme.read_text()


def test_study_with_a_new_experiment_evaluates_only_its_prompts_and_matches_a_full_run(data_dir, cache_dir, tmp_path,
                                                                                       capsys):
    base = ["study", "--data", str(data_dir), "--limit", "2", "--seeds", "2", "--device", "cpu",
            "--cache", str(cache_dir), "--quiet"]
    extended, full = tmp_path / "extended", tmp_path / "full"
    assert main(base + ["--out", str(extended), "--experiments", "E1"]) == 0
    capsys.readouterr()
    assert main(base + ["--out", str(extended), "--experiments", "E1", "E6", "--reuse"]) == 0
    assert "lacks background_far, center_gaussian+background_far: evaluating those only" in capsys.readouterr().err
    assert main(base + ["--out", str(full), "--experiments", "E1", "E6"]) == 0
    assert (extended / "rows_test.csv").read_bytes() == (full / "rows_test.csv").read_bytes()
    assert (extended / "summary.csv").read_bytes() == (full / "summary.csv").read_bytes()
    assert not (extended / "rows_test.extra.csv").exists()
    record = json.loads((extended / "rows_test.json").read_text())
    assert record["config"]["prompts"] == [*EXPERIMENTS["E1"], *EXPERIMENTS["E6"]]
    assert record["command"].endswith("--experiments E1") and record["extensions"][0]["prompts"] == EXPERIMENTS["E6"]
