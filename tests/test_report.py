"""The README's tables are the committed results, written by the commands that made them."""
import json
import re
from pathlib import Path

import pandas as pd

from samhw.report import END, START, _seeds, results_block
from samhw.study import EXPERIMENTS

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results" / "litemedsam"
FINETUNED = REPO / "results" / "litemedsam-finetuned"


def test_readme_results_block_is_the_committed_study(monkeypatch):
    """The pretrained study, or pretrained against fine-tuned once a fine-tuned study is committed."""
    monkeypatch.chdir(REPO)  # the block names its folders relative to the checkout
    readme = (REPO / "README.md").read_text()
    block = readme.split(START, 1)[1].split(END, 1)[0].strip()
    dirs = [RESULTS, FINETUNED] if (FINETUNED / "summary.json").is_file() else [RESULTS]
    assert block == results_block([d.relative_to(REPO) for d in dirs]).strip()


def test_committed_study_is_the_default_run_and_complete():
    meta = json.loads((RESULTS / "summary.json").read_text())
    test = meta["splits"]["test"]
    assert test["command"] == "python -m samhw study --readme README.md"  # the README's main job, on the defaults
    assert test["limit"] is None and meta["seeds"] == [0, 1, 2]
    assert test["slices"] == 253 and test["skipped"] == []
    summary = pd.read_csv(RESULTS / "summary.csv")
    assert list(dict.fromkeys(summary["prompt"])) == [p for e in ("E1", "E2", "E3") for p in EXPERIMENTS[e]]
    rows = pd.read_csv(RESULTS / "rows_test.csv")
    assert rows["slice"].nunique() == 253 and rows.groupby("prompt")["slice"].nunique().eq(253).all()
    # the summary is the rows' summary (nothing edited by hand)
    tight = rows[rows["prompt"] == "box:0"]["iou"].mean()
    test_summary = summary[summary["split"] == "test"].set_index("prompt")
    assert abs(test_summary.loc["box:0", "iou"] - tight) < 1e-6


def test_readme_bench_block_names_its_command_and_file():
    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- bench:start -->", 1)[1].split("<!-- bench:end -->", 1)[0]
    files = re.findall(r"`(results/bench/[^`]+\.md)`", block)
    assert files and "python -m samhw bench" in block
    committed = (REPO / files[0]).read_text().strip().replace("# Benchmark", "#### Benchmark", 1)
    assert committed in block


def test_readme_encoder_alternatives_are_the_committed_run():
    """The README's figures for the encoder's other runtimes are those of their committed file."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("#### The encoder's 2x on this CPU", 1)[1].split("####", 1)[0]
    assert "python benchmarks/encoder_alternatives.py" in section
    run = json.loads((REPO / "results" / "bench" / "encoder-alternatives-cpu.json").read_text())
    eager = run["time"]["eager"]["ms"]
    for name, time in run["time"].items():
        assert f"{time['ms']:.1f} ms" in section, name
        if name != "eager":
            assert f"({eager / time['ms']:.3f}x" in section, name
    assert f"{run['fidelity']['eager']['mean_iou']:.5f}" in section
    assert f"{run['fidelity']['onnx-int8']['mean_iou']:.5f}" in section


def test_readme_thin_box_figures_are_the_committed_rows():
    from samhw import workbook

    section = (REPO / "README.md").read_text().split("**E1, shrunken boxes that end as a line**", 1)[1].split("\n* ", 1)[0]
    rows = pd.concat([pd.read_csv(d / "rows_test.csv").assign(model=d.name) for d in (RESULTS, FINETUNED)])
    table = workbook.thin_boxes(rows).set_index(["model", "prompt"])
    pretrained, finetuned = table.loc["litemedsam"], table.loc["litemedsam-finetuned"]
    expected = [f"{100 * pretrained.loc['box:-20', 'share']:.1f}%", f"{100 * pretrained.loc['box:-10', 'share']:.1f}%",
                f"IoU {pretrained.loc['box:-20', 'IoU, thin boxes']:.3f}", f"{finetuned.loc['box:-20', 'IoU, thin boxes']:.3f}",
                f"{pretrained.loc['box:-20', 'IoU, the others']:.3f} at `box:-20`", f"{pretrained.loc['box:0', 'IoU, the others']:.3f}"]
    assert pretrained.loc["box:0", "share"] == 0 and "none at `box:0`" in section
    for figure in expected:
        assert figure in section, figure


def test_comparison_states_each_models_seeds_where_they_differ():
    same = {"origin": {"seeds": [0, 1, 2]}, "fine-tuned": {"seeds": [0, 1, 2]}}
    assert _seeds(same) == "[0, 1, 2]"
    other = {"origin": {"seeds": [0, 1, 2]}, "fine-tuned": {"seeds": [0, 1, 2, 3, 4]}}
    assert _seeds(other) == "[0, 1, 2] (pretrained) and [0, 1, 2, 3, 4] (fine-tuned)"
