"""The table of fine-tuning recipes: read from training records, the chosen epoch's scores."""
import json

import pytest

from samhw.recipes import read_recipes, recipes_markdown


def record(parts, val_by_epoch, best, mix, start=None):
    epochs = [{"epoch": i + 1, "val": val, "val_mean": sum(val.values()) / len(val), "device": "cpu"}
              for i, val in enumerate(val_by_epoch)]
    return {"command": "python -m samhw finetune", "options": {"parts": parts, "epochs": len(epochs), "mix": mix,
                                                               "checkpoint": start},
            "base_checkpoint": start, "best": {"epoch": best}, "epochs": epochs}


def test_recipes_compare_on_the_shared_prompts_at_the_chosen_epoch(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(record(
        ["decoder"], [{"box:0": 0.5, "p+background": 0.1}, {"box:0": 0.7, "p+background": 0.3}], 2,
        [["box:0", 1.0], ["p+background", 0.5]])))
    (tmp_path / "b.json").write_text(json.dumps(record(
        ["decoder", "image_encoder"], [{"box:0": 0.9, "p+background_far": 0.5}, {"box:0": 0.6, "p+background_far": 0.8}],
        1, [["box:0", 1.0], ["p+background", 0.2], ["p+background_far", 0.0]], start="litemedsam-lgg")))
    options = json.loads((tmp_path / "b.json").read_text())
    options["options"].update(lr=3e-4, mask_loss="focal_dice", augment=["flip", "gamma"])
    options["base_weights"] = "abcdef12" + "0" * 56
    options["test"] = {"iou": {"box:0": [0.7, 0.65, 0.75], "center_box": [0.5, 0.4, 0.6], "center_mask": [0.61, 0.5, 0.7],
                               "center_gaussian": [0.6, 0.5, 0.7]}}
    (tmp_path / "b.json").write_text(json.dumps(options))
    table = recipes_markdown(tmp_path, kept="b").splitlines()
    assert table[0].endswith("| val mean (own prompts) | val mean (box:0) | test box:0 | test best centre point |")
    # a: epoch 2 chosen, mean 0.5, box:0 0.7; b: epoch 1 chosen (not its highest-mean epoch 2), 0.7 and 0.9;
    # a mix weight of 0 is not in the mix; b started from a shipped model's weights; a record without
    # lr, loss or augmentations (written before those options) has the defaults
    assert table[2] == ("| `a` | decoder | base | 2 | 0.0001 | dice_bce | none | 67% | cpu | background | 2 | 0.500 "
                        "| 0.700 |  |  |")  # no test scores recorded
    assert table[3] == ("| `b` (shipped) | decoder, image_encoder | litemedsam-lgg (`abcdef12`) | 2 | 0.0003 | focal_dice | flip, gamma "
                        "| 83% | cpu | background | 1 | 0.700 | 0.900 | 0.700 [0.650, 0.750] | 0.610 [0.500, 0.700] "
                        "(`center_mask`) |")


def test_test_scores_are_slice_means_with_a_patient_interval():
    import pandas as pd

    from samhw.recipes import test_scores

    rows = pd.DataFrame({"split": "test", "prompt": ["box:0"] * 6 + ["center_mask"] * 6,
                         "patient": ["P1", "P1", "P2", "P2", "P3", "P3"] * 2,
                         "slice": ["a", "a", "b", "b", "c", "c"] * 2, "seed": [0, 1] * 6,
                         "iou": [0.9, 0.7, 0.5, 0.5, 0.2, 0.4, 0.1, 0.1, 0.2, 0.2, 0.3, 0.3], "off_target": 0})
    scores = test_scores(rows)
    assert scores["box:0"][0] == pytest.approx((0.8 + 0.5 + 0.3) / 3, abs=1e-4) and scores["center_mask"][0] == pytest.approx(0.2)
    assert scores["box:0"][1] < 0.53 < scores["box:0"][2]  # the interval over patients holds the mean


def test_a_file_that_is_no_training_record_is_named(tmp_path):
    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(ValueError, match="summary.json: not a training record"):
        read_recipes(tmp_path)


def test_the_readme_table_is_the_committed_records():
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    readme = (repo / "README.md").read_text()
    block = readme.split("<!-- recipes:start")[1].split("-->", 1)[1].split("<!-- recipes:end -->")[0].strip()
    shipped = json.loads((repo / "samhw" / "weights" / "litemedsam-lgg.json").read_text())
    kept = next(r["name"] for r in read_recipes(repo / "results" / "finetune-recipes")
                if r["command"] == shipped["command"] and r["best"]["val_mean"] == shipped["validation"]["mean"])
    assert block == recipes_markdown(repo / "results" / "finetune-recipes", kept=kept)


def test_the_starting_weights_are_named_with_their_sha_where_recorded():
    from samhw.recipes import _start

    assert _start({"base_checkpoint": None, "base_weights": "0123456789ab" * 5}) == "base"
    assert _start({"base_checkpoint": "runs/a/best.pt"}) == "runs/a/best.pt"  # no weights' sha256 recorded
    assert _start({"base_checkpoint": "litemedsam-lgg", "base_weights": "0123456789ab" * 5}) == "litemedsam-lgg (`01234567`)"
