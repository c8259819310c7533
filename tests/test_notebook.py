"""samhw.notebook: finding the checkout, the data and the results folders, live rows with the
study's own code (a stand-in model), and the command that executes the notebooks."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from stand_ins import FakeCache, FakeModel, make_slice, rect_mask

from samhw import notebook
from samhw.data import DataError, Dataset


@pytest.fixture
def slices():
    return [make_slice("TCGA_XX_0001_19990101_1", rect_mask(40, 80, 30, 90)),
            make_slice("TCGA_XX_0002_19990101_7", rect_mask(20, 50, 60, 100), patient="TCGA_XX_0002")]


def test_live_summary_summarises_each_model_on_its_own():
    results = notebook.load_results(verbose=False)
    rows = notebook.combined_rows(results)
    rows = rows[rows["prompt"].isin(["box:0", "center_mask"]) & (rows["split"] == "test")]
    summary = notebook.live_summary(rows).set_index(["model", "prompt"])
    committed = notebook.combined_summary(results)
    committed = committed[committed["split"] == "test"].set_index(["model", "prompt"])
    assert summary.index.get_level_values("model").nunique() == len(results) == 2
    for key in summary.index:
        assert summary.loc[key, "iou"] == pytest.approx(committed.loc[key, "iou"], abs=1e-6), key


def test_a_folder_of_summaries_only_has_no_rows(tmp_path):
    write_results(tmp_path / "litemedsam")
    (tmp_path / "litemedsam" / "rows_test.csv").unlink()
    assert notebook.combined_rows(notebook.load_results(tmp_path, verbose=False)).empty


def write_results(folder: Path, command: str = "python -m samhw study --limit 8") -> None:
    folder.mkdir(parents=True)
    pd.DataFrame([{"experiment": "E1", "split": "test", "prompt": "box:0", "iou": 0.8, "iou_lo": np.nan,
                   "iou_hi": np.nan}]).to_csv(folder / "summary.csv", index=False)
    (folder / "summary.json").write_text(json.dumps({"command": command, "model": "litemedsam", "seeds": [0, 1],
                                                     "device": "cpu", "elapsed_s": 12,
                                                     "splits": {"test": {"slices": 8, "patients": 8}}}))
    pd.DataFrame([{"split": "test", "patient": "P", "slice": "S", "prompt": "box:0", "seed": 0, "iou": 0.8,
                   "dice": 0.9, "points": "", "box": "1 2 3 4"}]).to_csv(folder / "rows_test.csv", index=False)


def test_load_results_finds_every_folder_and_says_how_it_was_made(tmp_path, capsys):
    write_results(tmp_path / "litemedsam")
    write_results(tmp_path / "a_finetuned", command="python -m samhw study --checkpoint ft.pth")
    found = notebook.load_results(tmp_path)
    assert [r.name for r in found] == ["litemedsam", "a_finetuned"]  # the pretrained model first
    out = capsys.readouterr().out
    assert "made by `python -m samhw study --limit 8`" in out and "--checkpoint ft.pth" in out
    assert "litemedsam: splits test only; `python -m samhw study --splits train` adds train to litemedsam/" in out
    summary = notebook.combined_summary(found)
    assert list(summary["model"]) == ["litemedsam", "a_finetuned"]
    rows = notebook.combined_rows(found)
    assert list(rows["model"]) == ["litemedsam", "a_finetuned"] and rows["points"].iloc[0] == ""


def test_missing_results_name_the_command_to_run(tmp_path, capsys):
    assert notebook.load_results(tmp_path / "results") == []
    out = capsys.readouterr().out
    assert "No study results" in out and notebook.FULL_STUDY in out
    assert notebook.combined_summary([]).empty


def test_find_data_follows_samhw_data_and_explains_the_download(tmp_path, monkeypatch, data_dir):
    monkeypatch.setenv("SAMHW_DATA", str(data_dir))
    assert notebook.find_data() == data_dir.resolve() or notebook.find_data() == data_dir
    assert notebook.find_data(tmp_path) == tmp_path  # an explicit folder wins
    monkeypatch.setenv("SAMHW_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setattr(notebook, "repo_root", lambda: tmp_path / "checkout")
    with pytest.raises(DataError, match="kaggle datasets download -d mateuszbuda/lgg-mri-segmentation"):
        notebook.find_data()


def test_repo_root_is_the_checkout_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = notebook.repo_root()
    assert (root / "samhw" / "notebook.py").is_file() and (root / "pyproject.toml").is_file()


def test_run_prompts_rows_follow_the_seed_plan(slices):
    dataset = Dataset(Path("."), "test", slices)
    rows = notebook.run_prompts(FakeModel(), FakeCache(), dataset, ["box:0", "box:20", "center_mask"], [0, 1, 2])
    assert len(rows) == 2 * (1 + 3 + 1)
    assert sorted(rows.groupby("prompt")["seed"].nunique().items()) == [("box:0", 1), ("box:20", 3), ("center_mask", 1)]
    assert (rows.loc[rows["prompt"] == "box:0", "iou"] == 1.0).all()
    summary = notebook.live_summary(notebook.live_rows(FakeModel(), FakeCache(), {"test": dataset}, ["box:0"], [0]))
    assert summary.loc[0, "model"] == "live" and summary.loc[0, "iou"] == 1.0


def test_main_refuses_unknown_commands():
    with pytest.raises(SystemExit):
        notebook.main(["build"])


def test_full_switch_runs_the_study_and_loads_it_like_committed_results(tmp_path, monkeypatch, capsys):
    import samhw.study

    calls = []

    def fake_run_study(config):  # the real one is tested end to end in test_e2e.py
        calls.append({k: getattr(config, k) for k in ("data", "splits", "model", "checkpoint", "seeds", "experiments",
                                                      "limit", "command")})
        write_results(Path(config.out), command=config.command)

    monkeypatch.setattr(samhw.study, "run_study", fake_run_study)
    monkeypatch.setattr(notebook, "find_data", lambda data=None: tmp_path / "kaggle_3m")
    found = notebook.full_study(experiments=["E1"], seeds=1, limit=1, out=tmp_path / "litemedsam")
    assert [r.name for r in found] == ["litemedsam"]
    assert calls == [{"data": str(tmp_path / "kaggle_3m"), "splits": ("train", "test"), "model": "litemedsam",
                      "checkpoint": None, "seeds": 1, "experiments": ("E1",), "limit": 1,
                      "command": "samhw.notebook.full_study('litemedsam', None, experiments=['E1'], seeds=1, limit=1)"}]
    assert "made by `samhw.notebook.full_study(" in capsys.readouterr().out
    # a checkpoint's study is filed under its own name, never as the pretrained model's
    monkeypatch.setattr(notebook, "repo_root", lambda: tmp_path)
    found = notebook.full_study(checkpoint=str(tmp_path / "runs" / "litemedsam-finetuned" / "best.pt"), limit=1)
    assert [r.name for r in found] == ["litemedsam-finetuned"]
    assert (tmp_path / "runs" / "notebook" / "litemedsam-finetuned" / "summary.json").is_file()



class EmptyModel(FakeModel):
    """Predicts nothing: a stand-in for a model that ignores the prompt."""

    def predict(self, embedding, prompts, shape, multimask):
        masks, scores = super().predict(embedding, prompts, shape, multimask)
        return np.zeros_like(masks), scores


def test_models_rows_put_each_model_on_the_same_slices_prompts_and_seeds(slices):
    dataset = Dataset(Path("."), "test", slices)
    models = {"pretrained": (FakeModel(), FakeCache()), "tuned": (EmptyModel(), FakeCache())}
    rows = notebook.models_rows(models, {"test": dataset}, ["box:0", "box:20"], [0, 1])
    assert list(dict.fromkeys(rows["model"])) == ["pretrained", "tuned"]
    by_model = {name: group.drop(columns="model").reset_index(drop=True) for name, group in rows.groupby("model")}
    assert by_model["pretrained"][["slice", "prompt", "seed", "box"]].equals(by_model["tuned"][["slice", "prompt", "seed", "box"]])
    summary = notebook.live_summary(rows).set_index(["model", "prompt"])["iou"]
    assert summary[("pretrained", "box:0")] == 1.0 and summary[("tuned", "box:0")] == 0.0
    counts = notebook.per_model(rows, lambda table: pd.DataFrame([{"rows": len(table)}]))
    assert counts.to_dict("records") == [{"model": "pretrained", "rows": 6}, {"model": "tuned", "rows": 6}]
    models["pretrained"][0].name, models["pretrained"][0].checkpoint, models["pretrained"][0].meta = "fake", "/a/fake.pth", {}
    models["tuned"][0].meta = {"origin": "tuned: a stand-in, fine-tuned"}  # a shipped model's sidecar summary
    assert notebook.describe_models(models) == "pretrained: fake with the weights of fake.pth\ntuned: a stand-in, fine-tuned"


def test_full_studies_run_each_model_under_its_own_name(monkeypatch):
    calls = []
    monkeypatch.setattr(notebook, "full_study", lambda name, checkpoint, **options: calls.append((name, checkpoint, options))
                        or [name])
    assert notebook.full_studies(experiments=["E1"]) == list(notebook.LIVE_MODELS)
    assert [c[:2] for c in calls] == list(notebook.LIVE_MODELS.values()) and calls[0][2] == {"experiments": ["E1"]}
