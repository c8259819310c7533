"""The README's tables are the committed results, written by the commands that made them."""
import json
import re
from pathlib import Path

import pandas as pd
import pytest

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
    record = json.loads((FINETUNED / "training.json").read_text()) if (FINETUNED / "training.json").is_file() else {}
    if record.get("base_checkpoint"):  # a run from other fine-tuned weights names them by their sha256
        assert f"from `{record['base_checkpoint']}` (weights sha256 `{record['base_weights'][:12]}`)" in block


def test_committed_study_is_the_default_run_and_complete():
    meta = json.loads((RESULTS / "summary.json").read_text())
    test = meta["splits"]["test"]
    assert test["command"] == "python -m samhw study --readme README.md"  # the README's main job, on the defaults
    assert test["limit"] is None and meta["seeds"] == [0, 1, 2]
    assert test["slices"] == 253 and test["skipped"] == []
    # E6 came later: its prompts were added by a --reuse run that evaluated them alone
    assert [e["prompts"] for e in test.get("extensions", [])] == [EXPERIMENTS["E6"]]
    summary = pd.read_csv(RESULTS / "summary.csv")
    assert list(dict.fromkeys(summary["prompt"])) == [p for e in ("E1", "E2", "E3", "E6") for p in EXPERIMENTS[e]]
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
    from samhw import analysis

    section = (REPO / "README.md").read_text().split("**E1, shrunken boxes that end as a line**", 1)[1].split("\n* ", 1)[0]
    rows = pd.concat([pd.read_csv(d / "rows_test.csv").assign(model=d.name) for d in (RESULTS, FINETUNED)])
    table = analysis.thin_boxes(rows).set_index(["model", "prompt"])
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


# ----------------------------------------------------------------------------- intervals, comparisons, prose


def _block(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0].strip()


def test_readme_prose_and_comparison_are_generated_from_the_committed_rows(monkeypatch):
    """The reading (every claim word), the targets and comparison.md are what the report command
    writes from the committed rows: none of them can drift from the intervals."""
    from samhw.report import READING_END, READING_START, TARGETS_END, TARGETS_START, Results, comparison_markdown, reading_markdown, targets_markdown

    monkeypatch.chdir(REPO)
    origin, tuned = Results.load(RESULTS.relative_to(REPO)), Results.load(FINETUNED.relative_to(REPO))
    readme = (REPO / "README.md").read_text()
    assert _block(readme, READING_START, READING_END) == reading_markdown(origin, tuned).strip()
    assert _block(readme, TARGETS_START, TARGETS_END) == targets_markdown(origin, tuned).strip()
    assert (FINETUNED / "comparison.md").read_text().strip() == comparison_markdown(origin, tuned).strip()


def test_handwritten_reading_makes_no_claim_of_its_own():
    """Outside the generated block, "How to read it" states facts and figures only (claim words come
    from the paired comparisons), and every table says how the mask of one point was chosen."""
    from samhw.report import READING_END

    readme = (REPO / "README.md").read_text()
    rest = readme.split("How to read it", 1)[1].split("## Notebooks", 1)[0].split(READING_END, 1)[1]
    for word in ("better", "beats", "level with", "helps", "barely", "not worse", "worse"):
        assert word not in rest.lower(), word
    results = readme.split(START, 1)[1].split(END, 1)[0]
    assert "| best of 3 |" not in results and "| best of 3 by predicted IoU |" in results


def test_committed_intervals_of_a_random_prompt_recomputed_from_its_rows():
    """random_gaussian, fine-tuned, test: the interval over seeds (Student t of the per-seed means) is
    the committed summary's, and the patient-level interval in the README's table is the documented
    bootstrap (patients resampled with all their slices, seeds averaged per slice first, 2000 draws of
    default_rng(0), 2.5 and 97.5 percentiles), recomputed here in plain numpy."""
    import numpy as np
    from scipy import stats as scipy_stats

    rows = pd.read_csv(FINETUNED / "rows_test.csv")
    rows = rows[rows["prompt"] == "random_gaussian"]
    per_seed = rows.groupby("seed")["iou"].mean()
    assert len(per_seed) == 3
    half = scipy_stats.t.ppf(0.975, len(per_seed) - 1) * per_seed.std(ddof=1) / np.sqrt(len(per_seed))
    summary = pd.read_csv(FINETUNED / "summary.csv").set_index(["split", "prompt"]).loc[("test", "random_gaussian")]
    assert summary["iou"] == pytest.approx(per_seed.mean(), abs=1e-6)
    assert (summary["iou_lo"], summary["iou_hi"]) == pytest.approx((per_seed.mean() - half, per_seed.mean() + half), abs=1e-6)

    per_slice = rows.groupby(["patient", "slice"])["iou"].mean().groupby("patient")
    sums, counts = per_slice.sum().to_numpy(), per_slice.count().to_numpy()
    idx = np.random.default_rng(0).integers(0, len(sums), (2000, len(sums)))
    lo, hi = np.percentile(sums[idx].sum(1) / counts[idx].sum(1), [2.5, 97.5])
    cell = f"{per_seed.mean():.3f} ± {half:.3f} [{lo:.3f}, {hi:.3f}]"
    table = (REPO / "README.md").read_text().split(START, 1)[1].split("Mean IoU over patients", 1)[0]
    line = next(line for line in table.splitlines() if line.startswith("| E2 | `random_gaussian` |"))
    assert line.split(" | ")[4] == cell  # test fine-tuned column


def _study(folder: Path, prompts: dict[str, list[float]], model: str = "litemedsam") -> None:
    """A results folder of one split with rows: per prompt, one IoU per patient (two slices each, 2 seeds)."""
    folder.mkdir(parents=True)
    rows = [{"split": "test", "patient": f"P{k}", "slice": f"P{k}_{s}", "prompt": prompt, "seed": seed,
             "iou": iou + 0.01 * s, "dice": iou, "pred_iou": 0.5, "off_target": 0, "area_true": 10, "area_pred": 10,
             "points": "", "box": ""}
            for prompt, ious in prompts.items() for k, iou in enumerate(ious) for s in range(2) for seed in range(2)]
    pd.DataFrame(rows).to_csv(folder / "rows_test.csv", index=False)
    (folder / "summary.json").write_text(json.dumps({
        "model": model, "weights_sha256": "0" * 64, "checkpoint": str(folder / "best.pt"), "device": "cpu",
        "seeds": [0, 1], "splits": {"test": {"slices": 2 * len(next(iter(prompts.values()))), "patients": 8,
                                              "command": "python -m samhw study", "elapsed_s": 1.0,
                                              "embeddings_computed": 0}}}))


NEAR_ZERO = [0.0, 0.01, 0.0, 0.02, 0.01, 0.0, 0.01, 0.0]
HIGH = [0.30, 0.40, 0.35, 0.32, 0.38, 0.41, 0.29, 0.36]


def test_e6_is_not_run_without_background_far_rows(tmp_path):
    from samhw.report import reading_markdown

    _study(tmp_path / "a", {"background": NEAR_ZERO})
    _study(tmp_path / "b", {"background": HIGH})
    text = reading_markdown(tmp_path / "a", tmp_path / "b")
    assert "**E6, leak control** (test): not run: no `background_far` rows" in text


def test_e6_reports_a_model_that_segments_from_a_far_negative_point(tmp_path):
    from samhw.report import reading_markdown

    _study(tmp_path / "a", {"background": NEAR_ZERO, "background_far": NEAR_ZERO})
    _study(tmp_path / "b", {"background": HIGH, "background_far": [v - 0.05 for v in HIGH]})
    text = reading_markdown(tmp_path / "a", tmp_path / "b")
    assert "fine-tuned - pretrained on `background_far`: higher: +0." in text
    assert "The fine-tuned model segments the tumor without following the prompt" in text
    _study(tmp_path / "c", {"background": HIGH, "background_far": [v + 0.002 * (-1) ** k for k, v in enumerate(NEAR_ZERO)]})
    text = reading_markdown(tmp_path / "a", tmp_path / "c")
    assert "No sign that the fine-tuned model segments the tumor from a far negative point" in text
    assert "the corner point gives more tumor: +0." in text


def test_readme_figures_are_those_of_the_committed_files():
    """The default study's time, the training's peak memory and the decoder-only figures quoted beside
    the GPU run are read from the committed files."""
    readme = (REPO / "README.md").read_text()
    elapsed = json.loads((RESULTS / "summary.json").read_text())["splits"]["test"]["elapsed_s"]
    timing = readme.split("The default study is the test split", 1)[1].split("\n\n", 1)[0]
    assert f"about\n{round(elapsed / 60)} minutes" in timing and f"({elapsed:.0f} s in the committed run" in timing
    peak = max(e["peak_memory_mb"] for e in json.loads((FINETUNED / "training.json").read_text())["epochs"])
    assert f"with a peak of {peak / 1000:.1f} GB" in readme
    assert "0.64 against 0.73" not in readme  # a box:20-only run that left no log

    gpu = readme.split("**With the image encoder, on a GPU.**", 1)[1].split("\n\n", 1)[0]
    summary = pd.read_csv(FINETUNED / "summary.csv")
    test = summary[summary["split"] == "test"].set_index("prompt")["iou"]
    randoms = test[["random_box", "random_mask", "random_gaussian", "random_bilateral"]]
    centres = test[[p for p in test.index if p.startswith("center_") and "+" not in p]]
    for figure in (f"CPU table above: {test['box:0']:.3f})",
                   f"({centres.min():.3f}-{centres.max():.3f})", f"({randoms.min():.3f}-{randoms.max():.3f})",
                   f"`background` 0.633 ({test['background']:.3f})"):
        assert figure in gpu, figure
    encoder = (REPO / "results" / "gpu-h200" / "finetune-encoder" / "comparison.md").read_text()
    cells = {line.split(" | ")[1].strip("`"): float(line.split(" | ")[4].split()[0])
             for line in encoder.split("Mean IoU over patients", 1)[0].splitlines() if line.startswith("| E")}
    assert f"reached {cells['box:0']:.3f} with the tight box" in gpu and f"`background` {cells['background']:.3f}" in gpu
