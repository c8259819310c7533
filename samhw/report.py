"""Markdown tables of a study's committed results, the paired comparisons behind its claims, the
README blocks they fill (results table, reading, fine-tuning targets) and the original report's
numbers they are compared with.

Every number is computed from the rows (``<folder>/rows_<split>.csv``) by :mod:`samhw.stats`:
each mean gets its interval over prompt seeds and its patient-level bootstrap interval, and every
claim word in the generated prose comes from a paired comparison (:func:`samhw.stats.claim`).
``summary.json`` is read for what made the rows (commands, seeds, weights) only.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from . import stats
from .analysis import REPORT_TABLE_I, TABLE_I_STRATEGIES
from .fileio import atomic_write_text
from .prompts import PromptSpec
from .recipes import started_from

__all__ = ["Results", "results_markdown", "tables_markdown", "comparison_markdown", "write_comparison",
           "report_markdown", "comparisons", "report_comparisons",
           "comparisons_markdown", "reading_markdown", "targets_markdown", "leak_sentences", "results_block",
           "update_readme", "replace_block", "mask_label",
           "START", "END", "READING_START", "READING_END", "TARGETS_START", "TARGETS_END"]

START = "<!-- results:start (written by `python -m samhw report`; do not edit by hand) -->"
END = "<!-- results:end -->"
READING_START = "<!-- reading:start (written by `python -m samhw report` from the paired comparisons) -->"
READING_END = "<!-- reading:end -->"
TARGETS_START = "<!-- targets:start (written by `python -m samhw report`) -->"
TARGETS_END = "<!-- targets:end -->"

#: Prompt pairs compared within each model: (group, a, b).
PROMPT_PAIRS = [
    ("tight box against its neighbours (E1)", "box:0", "box:-10"),
    ("tight box against its neighbours (E1)", "box:0", "box:10"),
    ("centre against random (E2)", "center_box", "random_box"),
    ("centre against random (E2)", "center_mask", "random_mask"),
    ("centre against random (E2)", "center_gaussian", "random_gaussian"),
    ("bilateral against Gaussian (E3)", "random_bilateral", "random_gaussian"),
    ("bilateral against Gaussian (E3)", "center_bilateral", "center_gaussian"),
    ("a second prompt added (E2)", "center_gaussian+background", "center_gaussian"),
    ("a second prompt added (E2)", "random_gaussian+background", "random_gaussian"),
    ("a second prompt added (E2)", "box:0+center_gaussian", "box:0"),
    ("centre point snapped to the tumor (E2)", "center_box_snapped", "center_box"),
    ("leak control: box corner against far background (E6)", "background", "background_far"),
]
LEAK = ("background", "background_far")
MODEL_LABELS = ("pretrained", "fine-tuned")


def _split_order() -> tuple[str, ...]:
    from .study import SPLIT_ORDER

    return SPLIT_ORDER


def _experiment(prompt: str) -> str:
    from .study import experiment_of

    return experiment_of(prompt)


def mask_label(prompt: str) -> str:
    """The mask choice of a prompt, as every table states it."""
    return "best of 3 by predicted IoU" if PromptSpec.parse(prompt).multimask else "single"


def _cell(mean: float, lo: float, hi: float, boot_lo: float, boot_hi: float) -> str:
    """A table cell ``mean ± seed half-width [patient lo, patient hi]``."""
    return stats.format_interval(mean, lo, hi, bounds=(boot_lo, boot_hi))


@dataclass
class Results:
    """One results folder: what made it (``summary.json``), its rows and their summary (:func:`samhw.stats.summarize`)."""

    folder: Path
    meta: dict
    rows: pd.DataFrame
    summary: pd.DataFrame

    @classmethod
    def load(cls, folder: str | Path) -> "Results":
        folder = Path(folder)
        meta_file = folder / "summary.json"
        if not meta_file.is_file():
            raise FileNotFoundError(f"{meta_file}: no study results here; make them with `python -m samhw study`")
        meta = json.loads(meta_file.read_text())
        splits = [s for s in _split_order() if s in meta.get("splits", {}) and (folder / f"rows_{s}.csv").is_file()]
        if not splits:
            raise FileNotFoundError(f"{folder}: no rows_<split>.csv; the tables are computed from the rows, so run "
                                    f"`python -m samhw study --out {folder.as_posix()}` again")
        rows = pd.concat([stats.read_rows(folder / f"rows_{s}.csv") for s in splits], ignore_index=True)
        return cls(folder, meta, rows, stats.summarize(rows))

    @property
    def splits(self) -> list[str]:
        return list(dict.fromkeys(self.summary["split"]))

    @property
    def prompts(self) -> list[str]:
        return list(dict.fromkeys(self.summary["prompt"]))

    def select(self, split: str, prompt: str) -> pd.DataFrame:
        return self.rows[(self.rows["split"] == split) & (self.rows["prompt"] == prompt)]

    def has(self, split: str, prompt: str) -> bool:
        return bool(((self.summary["split"] == split) & (self.summary["prompt"] == prompt)).any())


def _load(folder: str | Path | Results) -> Results:
    return folder if isinstance(folder, Results) else Results.load(folder)


def _where(folder: Path) -> str:
    return folder.as_posix()


INTERVALS_CAPTION = ("Mean IoU; ± is the half-width of the 95% interval over prompt seeds (none for prompts that do not "
                     "depend on the seed); " + stats.INTERVALS_NOTE + ".")


# ----------------------------------------------------------------------------- one folder


def results_markdown(results_dir: str | Path | Results) -> str:
    """The study's summary as Markdown: one row per prompt, IoU per split (slices and patients)."""
    res = _load(results_dir)
    meta, summary = res.meta, res.summary
    splits = res.splits
    header = ["experiment", "prompt", "mask"]
    for split in splits:
        header += [f"{split} IoU (slices)", f"{split} IoU (patients)", f"{split} off target"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    table = summary.set_index(["prompt", "split"])
    for prompt in res.prompts:
        cells = [_experiment(prompt), f"`{prompt}`", mask_label(prompt)]
        for split in splits:
            if (prompt, split) in table.index:
                r = table.loc[(prompt, split)]
                cells += [_cell(r["iou"], r["iou_lo"], r["iou_hi"], r["iou_boot_lo"], r["iou_boot_hi"]),
                          _cell(r["iou_patient"], r["iou_patient_lo"], r["iou_patient_hi"],
                                        r["iou_patient_boot_lo"], r["iou_patient_boot_hi"]),
                          f"{r['off_target']:.1%}" if r["off_target"] else ""]
            else:
                cells += ["", "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    made = "; ".join(f"{s}: {v['slices']} slices of {v['patients']} patients, made by `{v['command']}` in "
                     f"{v['elapsed_s']:.0f} s ({v['embeddings_computed']} images encoded"
                     + (f", peak memory {v['peak_memory_mb']} MB" if v.get("peak_memory_mb") else "") + ")"
                     for s, v in meta["splits"].items())
    return "\n".join([
        f"Model `{meta['model']}` (weights sha256 `{meta['weights_sha256'][:12]}`), seeds {meta['seeds']}, on "
        f"{meta['device']} ({meta.get('encoder_backend', '')} encoder). {made}. {INTERVALS_CAPTION} Off target: the "
        f"share of prompts with a foreground point off the tumor (or a background point on it). Computed from the "
        f"rows in `{_where(res.folder)}/`.",
        "",
        *lines,
    ])


# ----------------------------------------------------------------------------- two folders


def _seeds(metas: dict) -> str:
    """The seeds of both studies: one list where they agree, else each model's."""
    origin, tuned = metas["origin"]["seeds"], metas["fine-tuned"]["seeds"]
    return str(origin) if origin == tuned else f"{origin} (pretrained) and {tuned} (fine-tuned)"


def _made(meta: dict) -> str:
    """Which command made which splits, each command once."""
    by_command: dict[str, list] = {}
    for split, v in meta["splits"].items():
        by_command.setdefault(v["command"], []).append((split, v))
    return "; ".join(" and ".join(s for s, _ in group) + f" by `{command}` ("
                     + ", ".join(f"{s}: {v['slices']} slices, {v['elapsed_s']:.0f} s" for s, v in group) + ")"
                     for command, group in by_command.items())


def _training(tuned: Results) -> dict | None:
    path = tuned.folder / "training.json"
    return json.loads(path.read_text()) if path.is_file() else None


def tables_markdown(origin_dir: str | Path | Results, tuned_dir: str | Path | Results) -> str:
    """Pretrained ("origin") against fine-tuned, the counterpart of the report's Table I: mean IoU
    over slices, then over patients, each with both intervals (the README's results block)."""
    results = {"origin": _load(origin_dir), "fine-tuned": _load(tuned_dir)}
    metas = {k: r.meta for k, r in results.items()}
    common = set(results["origin"].splits) & set(results["fine-tuned"].splits)
    splits = [s for s in _split_order() if s in common]
    prompts = list(dict.fromkeys(results["origin"].prompts + results["fine-tuned"].prompts))
    tuned = metas["fine-tuned"]
    record = _training(results["fine-tuned"])
    trained = ""
    if record is not None:
        best = record.get("best") or {}
        start = started_from(record)
        started = f" from `{start['checkpoint']}` (weights sha256 `{str(start['weights_sha256'])[:12]}`)" if start else ""
        trained = (f"; trained by `{record.get('command')}`{started}, chosen on the validation patients: epoch "
                   f"{best.get('epoch')} of {record['options']['epochs']} (`training.json`)")
    out = [
        f"Pretrained (`{metas['origin']['model']}`, weights sha256 `{metas['origin']['weights_sha256'][:12]}`) against "
        f"fine-tuned (`{Path(tuned['checkpoint']).as_posix() if tuned.get('checkpoint') else '?'}`, sha256 "
        f"`{tuned['weights_sha256'][:12]}`), seeds {_seeds(metas)}, on {metas['origin']['device']}. "
        f"Origin: {_made(metas['origin'])}. Fine-tuned: {_made(tuned)}{trained}. {INTERVALS_CAPTION} Computed from "
        f"the rows in `{_where(results['origin'].folder)}/` and `{_where(results['fine-tuned'].folder)}/`; the paired "
        f"comparisons are in `{_where(results['fine-tuned'].folder)}/comparison.md`.",
    ]
    tables = {k: r.summary.set_index(["prompt", "split"]) for k, r in results.items()}
    for level, cols in (("slices", ("iou", "iou_lo", "iou_hi", "iou_boot_lo", "iou_boot_hi")),
                        ("patients", ("iou_patient", "iou_patient_lo", "iou_patient_hi", "iou_patient_boot_lo",
                                      "iou_patient_boot_hi"))):
        header = ["experiment", "prompt", "mask"] + [f"{s} {k}" for s in splits for k in results]
        if level == "slices":
            header.append("report, test fine-tuned")
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for prompt in prompts:
            cells = [_experiment(prompt), f"`{prompt}`", mask_label(prompt)]
            for split in splits:
                for k in results:
                    row = tables[k].loc[(prompt, split)] if (prompt, split) in tables[k].index else None
                    cells.append("" if row is None else _cell(*(row[c] for c in cols)))
            if level == "slices":
                known = prompt in REPORT_TABLE_I.index
                cells.append(f"{REPORT_TABLE_I.loc[prompt, 'report test finetuned']:.3f}" if known else "")
            lines.append("| " + " | ".join(cells) + " |")
        out += ["", f"Mean IoU over {level}" + (" (the report's value: SAM ViT-B, its own split)" if level == "slices" else "")
                + ":", "", *lines]
    return "\n".join(out)


#: The columns of a comparison table (also of an empty one).
_COMPARISON_COLUMNS = ["group", "split", "model", "a", "b", "IoU a", "IoU b", "a - b", "lo", "hi", "p", "patients",
                       "a > b", "verdict", "comparison"]


def _comparison_row(group: str, split: str, model: str, a: str, b: str, c: stats.Comparison, verdict: str) -> dict:
    return {"group": group, "split": split, "model": model, "a": a, "b": b, "IoU a": c.mean_a, "IoU b": c.mean_b,
            "a - b": c.diff, "lo": c.lo, "hi": c.hi, "p": c.p, "patients": c.patients, "a > b": c.a_wins,
            "verdict": verdict, "comparison": c}


def comparisons(origin_dir: str | Path | Results, tuned_dir: str | Path | Results | None = None) -> pd.DataFrame:
    """Every paired comparison (per patient, :func:`samhw.stats.compare_prompts`) that the prose
    rests on: fine-tuned against pretrained for every prompt, and within each model the pairs of
    :data:`PROMPT_PAIRS` present in its rows; one row each, with the :class:`Comparison`."""
    models = {"pretrained": _load(origin_dir)}
    if tuned_dir is not None:
        models["fine-tuned"] = _load(tuned_dir)
    out = []
    if len(models) == 2:
        origin, tuned = models["pretrained"], models["fine-tuned"]
        for split in [s for s in origin.splits if s in tuned.splits]:
            for prompt in [p for p in tuned.prompts if origin.has(split, p) and tuned.has(split, p)]:
                c = stats.compare_prompts(tuned.select(split, prompt), origin.select(split, prompt))
                out.append(_comparison_row("fine-tuned against pretrained", split, "fine-tuned - pretrained",
                                           prompt, prompt, c, stats.verdict(c, "fine-tuned higher", "pretrained higher")))
    for label, res in models.items():
        for split in res.splits:
            for group, a, b in PROMPT_PAIRS:
                if res.has(split, a) and res.has(split, b):
                    c = stats.compare_prompts(res.select(split, a), res.select(split, b))
                    out.append(_comparison_row(group, split, label, a, b, c,
                                               stats.verdict(c, f"`{a}` higher", f"`{b}` higher")))
    return pd.DataFrame(out, columns=_COMPARISON_COLUMNS)


def report_comparisons(origin_dir: str | Path | Results, tuned_dir: str | Path | Results | None = None) -> pd.DataFrame:
    """Each Table I strategy of each model and split against the report's number for that model
    and split (one sample, :func:`samhw.stats.compare_to_value`)."""
    models = {"pretrained": (_load(origin_dir), "origin")}
    if tuned_dir is not None:
        models["fine-tuned"] = (_load(tuned_dir), "finetuned")
    out = []
    for label, (res, column) in models.items():
        for split in [s for s in res.splits if f"report {s} {column}" in REPORT_TABLE_I]:
            for strategy in TABLE_I_STRATEGIES:
                if res.has(split, strategy):
                    value = float(REPORT_TABLE_I.loc[strategy, f"report {split} {column}"])
                    c = stats.compare_to_value(res.select(split, strategy), value)
                    out.append(_comparison_row("against the report (one sample)", split, label, strategy,
                                               f"report {split} {column}", c,
                                               stats.verdict(c, "above the report", "below the report",
                                                             "not distinguishable from the report")))
    return pd.DataFrame(out, columns=_COMPARISON_COLUMNS)


def comparisons_markdown(table: pd.DataFrame, one_sample: bool = False) -> str:
    """A table of :func:`comparisons` (or :func:`report_comparisons` with ``one_sample``)."""
    if one_sample:
        header = ["split", "model", "strategy", "ours, over slices [95% patients]", "report", "ours - report [95%]",
                  "Wilcoxon p", "patients above", "verdict"]
    else:
        header = ["comparison", "split", "model", "a", "b", "IoU a (patients)", "IoU b (patients)",
                  "a - b [95%]", "Wilcoxon p", "patients a > b", "verdict"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, r in table.iterrows():
        diff = stats.format_interval(r["a - b"], bounds=(r["lo"], r["hi"]), signed=True)
        p = stats.format_p(r["p"]).removeprefix("p=")
        wins = f"{r['a > b']}/{r['patients']}"
        if one_sample:
            ours = stats.format_interval(r["IoU a"], bounds=(r["lo"] + r["IoU b"], r["hi"] + r["IoU b"]))
            cells = [r["split"], r["model"], f"`{r['a']}`", ours, f"{r['IoU b']:.4f}", diff, p, wins, r["verdict"]]
        else:
            cells = [r["group"], r["split"], r["model"], f"`{r['a']}`", f"`{r['b']}`", f"{r['IoU a']:.3f}",
                     f"{r['IoU b']:.3f}", diff, p, wins, r["verdict"]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


COMPARISONS_CAPTION = (
    "Paired per patient: each patient's mean over the slices both sides have (a random prompt averaged over its seeds "
    "on each slice first), a - b the mean of those per-patient differences over patients (so IoU a and b are means "
    f"over patients and subtract), [95%] its percentile bootstrap interval over patients ({stats.N_RESAMPLES} "
    f"resamples, seed {stats.SEED}), Wilcoxon p the two-sided signed-rank p-value over patients (scipy; patients with "
    f"no difference dropped). A verdict names a side only where the interval excludes 0 and p < {stats.ALPHA}.")
ONE_SAMPLE_CAPTION = (
    "Each Table I strategy against the report's value for the same model and split (pretrained against the report's "
    "origin, fine-tuned against its fine-tuned; SAM ViT-B on a slice-level split, so a loose yardstick): our mean "
    f"over slices with its patient-level bootstrap interval; Wilcoxon p: signed-rank test of the per-patient means "
    f"minus the report's value. A verdict names a side only where the interval excludes the report's value and "
    f"p < {stats.ALPHA}.")


def comparison_markdown(origin_dir: str | Path | Results, tuned_dir: str | Path | Results) -> str:
    """``comparison.md`` and ``python -m samhw report`` of two folders: the tables with both
    intervals, every paired comparison, each Table I strategy against the report, and the reading."""
    origin, tuned = _load(origin_dir), _load(tuned_dir)
    return "\n".join([
        tables_markdown(origin, tuned), "",
        "### Paired comparisons", "", COMPARISONS_CAPTION, "", comparisons_markdown(comparisons(origin, tuned)), "",
        "### Against the report's Table I", "", ONE_SAMPLE_CAPTION, "",
        comparisons_markdown(report_comparisons(origin, tuned), one_sample=True), "",
        "### Reading", "", reading_markdown(origin, tuned), "",
        "### Fine-tuning targets", "", targets_markdown(origin, tuned),
    ])


# ----------------------------------------------------------------------------- prose


def _find(table: pd.DataFrame, **where) -> pd.Series | None:
    mask = np.ones(len(table), bool)
    for k, v in where.items():
        mask &= (table[k] == v).to_numpy()
    hits = table[mask]
    return None if hits.empty else hits.iloc[0]


def _said(row: pd.Series, higher: str, lower: str, neither: str = "no difference shown") -> str:
    return stats.claim(row["comparison"], higher, lower, neither)


def _pairs_sentence(table: pd.DataFrame, group: str, model: str, split: str) -> str:
    parts = []
    for _, r in table[(table["group"] == group) & (table["model"] == model) & (table["split"] == split)].iterrows():
        parts.append(f"`{r['a']}` - `{r['b']}`: " + _said(r, f"`{r['a']}` higher", f"`{r['b']}` higher"))
    return "; ".join(parts)


def leak_sentences(rows: pd.DataFrame, split: str, models: dict[str, str]) -> str:
    """E6 in words, from rows with a ``model`` column (``models``: model -> label, the pretrained
    model first): each model's IoU with the box-corner ``background`` point alone and with
    ``background_far`` alone, the corner against the far point per patient, and the fine-tuned
    against the pretrained model on the far point. "Not run" when a model has no ``background_far`` rows."""
    here = rows[rows["split"] == split]
    missing = [label for model, label in models.items()
               if here[(here["model"] == model) & (here["prompt"] == LEAK[1])].empty]
    if missing:
        return (f"**E6, leak control** ({split}): not run: no `background_far` rows for the {' and '.join(missing)} "
                f"model (SPEC E6); `python -m samhw study` with the E6 prompts writes them.")
    parts = []
    for model, label in models.items():
        cells = []
        for prompt in LEAK:
            slices = stats.slice_values(here[(here["model"] == model) & (here["prompt"] == prompt)][["patient", "slice", "iou"]])
            mean, lo, hi = stats.bootstrap_mean(slices, "patients")
            cells.append(f"`{prompt}` {stats.format_interval(mean, bounds=(lo, hi))}")
        corner = stats.compare_prompts(here[(here["model"] == model) & (here["prompt"] == LEAK[0])],
                                       here[(here["model"] == model) & (here["prompt"] == LEAK[1])])
        parts.append(f"{label}: " + ", ".join(cells) + "; corner - far: "
                     + stats.claim(corner, "the corner point gives more tumor", "the far point gives more tumor"))
    sentence = (f"**E6, leak control** ({split}, mean IoU over patients [95% patients] of a lone negative point): "
                + "; ".join(parts) + ".")
    names = list(models)
    if len(names) == 2:
        far = {m: here[(here["model"] == m) & (here["prompt"] == LEAK[1])] for m in names}
        c = stats.compare_prompts(far[names[1]], far[names[0]])
        sentence += (f" A lone background point far from the tumor should give no tumor; {models[names[1]]} - "
                     f"{models[names[0]]} on `background_far`: "
                     + stats.claim(c, "higher", "lower") + ". ")
        if c.sign > 0:
            sentence += (f"The {models[names[1]]} model segments the tumor without following the prompt: its "
                         f"`background` row is this leak, not a better prompt.")
        else:
            sentence += (f"No sign that the {models[names[1]]} model segments the tumor from a far negative point; "
                         f"what its `background` row adds over `background_far` is the corner's position.")
    return sentence


def _with_model(res: Results, label: str) -> pd.DataFrame:
    return res.rows.assign(model=label)


def reading_markdown(origin_dir: str | Path | Results, tuned_dir: str | Path | Results | None = None,
                     split: str = "test") -> str:
    """The README's "How to read it" claims, each with its paired comparison on ``split`` (means
    over patients, [95%] bootstrap interval over patients, Wilcoxon p): a claim word appears only
    where the comparison carries it (:func:`samhw.stats.verdict`)."""
    origin = _load(origin_dir)
    tuned = _load(tuned_dir) if tuned_dir is not None else None
    table = comparisons(origin, tuned)
    labels = ["pretrained"] + (["fine-tuned"] if tuned is not None else [])
    out = [f"Each claim below is a paired comparison on the {split} split, per patient: a - b averaged over "
           f"patients, its 95% bootstrap interval over patients and the Wilcoxon signed-rank p "
           f"(all in `comparison.md`); a side is named only where the interval excludes 0 and p < {stats.ALPHA}.", ""]
    for label in labels:
        out.append(f"* **E1, {label}, the tight box against boxes 10 px smaller or larger**: "
                   + _pairs_sentence(table, "tight box against its neighbours (E1)", label, split) + ".")
    if tuned is not None:
        boxes = [p for p in origin.prompts if re.fullmatch(r"box:-?\d+", p)]
        parts = [f"`{p}` " + _said(r, "fine-tuned higher", "pretrained higher") for p in boxes
                 if (r := _find(table, group="fine-tuned against pretrained", split=split, a=p)) is not None]
        out.append("* **E1, fine-tuned - pretrained at each margin**: " + "; ".join(parts) + ".")
    points = [p for p in TABLE_I_STRATEGIES[:-1] if origin.has(split, p)]
    if points:
        low = origin.summary[(origin.summary["split"] == split) & origin.summary["prompt"].isin(points)]["iou"]
        out.append(f"* **E2 and E3, pretrained**: LiteMedSAM was trained with boxes only; with one foreground point its "
                   f"mean IoU over slices is {low.min():.3f}-{low.max():.3f} whatever the strategy, so its "
                   f"strategy comparisons are at the floor.")
    last = labels[-1]
    out.append(f"* **E2, {last}, centre against random points**: "
               + _pairs_sentence(table, "centre against random (E2)", last, split) + ".")
    bilateral = f"* **E3, {last}, bilateral against Gaussian weighting**: " + _pairs_sentence(
        table, "bilateral against Gaussian (E3)", last, split) + "."
    record = _training(tuned) if tuned is not None else None
    if record is not None and record.get("options", {}).get("mix"):  # a hand-made checkpoint may not say
        mix = [name for name, _ in record["options"]["mix"]]
        def seen(kind: str) -> list[str]:
            return [n for n in mix if any(part.split(":")[0] in (f"random_{kind}", f"center_{kind}")
                                          for part in n.split("+"))]
        gaussian, bilateral_mix = seen("gaussian"), seen("bilateral")
        if gaussian and not bilateral_mix:
            bilateral += (f" Not like for like: the training mix (`training.json`) holds Gaussian points "
                          f"({', '.join(f'`{n}`' for n in gaussian)}) and no bilateral ones.")
    out.append(bilateral)
    out.append(f"* **E2, {last}, a second prompt added**: "
               + _pairs_sentence(table, "a second prompt added (E2)", last, split) + ".")
    res = tuned if tuned is not None else origin
    center = res.rows[(res.rows["split"] == split) & (res.rows["prompt"] == "center_box")]
    if not center.empty:
        out.append(f"* **Centre points off the tumor ({last})**: the box centre is off the tumor on "
                   f"{(center['off_target'] > 0).mean():.1%} of the {split} slices; snapped to the nearest tumor pixel - "
                   f"as drawn: " + _pairs_sentence(table, "centre point snapped to the tumor (E2)", last, split) + ".")
    one = report_comparisons(origin, tuned)
    for label in labels:
        rows = one[(one["model"] == label) & (one["split"] == split)]
        if rows.empty:
            continue
        kinds = {}
        for _, r in rows.iterrows():
            kinds.setdefault(r["verdict"], []).append(
                f"`{r['a']}` {stats.format_interval(r['a - b'], bounds=(r['lo'], r['hi']), signed=True)}")
        out.append(f"* **Table I, {label} against the report's {split} {'fine-tuned' if label == 'fine-tuned' else 'origin'} "
                   f"values** (ours - report over slices [95% patients]): "
                   + "; ".join(f"{k}: {', '.join(v)}" for k, v in kinds.items())
                   + ". `background` is a lone negative point: E6 below says whether its IoU follows the prompt.")
    models = {"pretrained": "pretrained"} | ({"fine-tuned": "fine-tuned"} if tuned is not None else {})
    rows = pd.concat([_with_model(origin, "pretrained")] + ([_with_model(tuned, "fine-tuned")] if tuned is not None else []),
                     ignore_index=True)
    out.append("* " + leak_sentences(rows, split, models))
    return "\n".join(out)


def _leak_status(origin: Results, tuned: Results, split: str) -> str:
    """Whether E6 shows the fine-tuned model segmenting the tumor from a far negative point."""
    if not (origin.has(split, LEAK[1]) and tuned.has(split, LEAK[1])):
        return "E6 (`background_far`) has not run, so whether that is the corner's leak is not shown"
    c = stats.compare_prompts(tuned.select(split, LEAK[1]), origin.select(split, LEAK[1]))
    return ("E6 shows the leak: the fine-tuned model segments the tumor from a far negative point too" if c.sign > 0
            else "E6 shows no leak from a far negative point")


def _target(mean: float, lo: float, hi: float, goal: float) -> str:
    if np.isnan(lo):
        return "not shown"
    return "yes" if lo >= goal else ("no" if hi < goal else "not shown (the interval straddles it)")


#: The fine-tuning issue's targets for the CPU recipe (test split, fine-tuned).
TARGET_TIGHT_BOX = 0.75
TARGET_CENTRE_POINT = 0.66


def targets_markdown(origin_dir: str | Path | Results, tuned_dir: str | Path | Results, split: str = "test") -> str:
    """The fine-tuning issue's targets on ``split``, judged on the patient-level intervals."""
    origin, tuned = _load(origin_dir), _load(tuned_dir)
    summary = tuned.summary[tuned.summary["split"] == split].set_index("prompt")
    lines = [f"Targets of the fine-tuning issue, {split} split, fine-tuned: mean IoU over slices "
             "[95% patient-level interval]; a target is met or missed only where the interval lies on one side of it.", "",
             "| target | measured | met |", "|---|---|---|"]
    tight = summary.loc["box:0"]
    lines.append(f"| tight box IoU at least {TARGET_TIGHT_BOX:.2f} | "
                 f"{stats.format_interval(tight['iou'], bounds=(tight['iou_boot_lo'], tight['iou_boot_hi']))} "
                 f"| {_target(tight['iou'], tight['iou_boot_lo'], tight['iou_boot_hi'], TARGET_TIGHT_BOX)} |")
    centres = [p for p in ("center_box", "center_mask", "center_gaussian") if p in summary.index]
    if centres:
        best = summary.loc[centres, "iou"].max()
        tops = [p for p in centres if round(summary.loc[p, "iou"], 3) == round(best, 3)]
        top = summary.loc[tops[0]]
        lines.append(f"| best centre point (Table I) at least {TARGET_CENTRE_POINT:.2f} | "
                     f"{stats.format_interval(best, bounds=(top['iou_boot_lo'], top['iou_boot_hi']))} "
                     f"({', '.join(f'`{p}`' for p in tops)}) "
                     f"| {_target(best, top['iou_boot_lo'], top['iou_boot_hi'], TARGET_CENTRE_POINT)} |")
    else:
        lines.append(f"| best centre point (Table I) at least {TARGET_CENTRE_POINT:.2f} | not run | not shown |")
    one = report_comparisons(origin, tuned)
    one = one[(one["model"] == "fine-tuned") & (one["split"] == split)]
    foreground = one[one["a"] != "background"]
    above = [f"`{a}`" for a in foreground[foreground["verdict"] == "above the report"]["a"]]
    below = [f"`{a}`" for a in foreground[foreground["verdict"] == "below the report"]["a"]]
    unclear = [f"`{a}`" for a in foreground[foreground["verdict"].str.startswith("not")]["a"]]
    leak = one[one["a"] == "background"]
    leak_note = (f"; `background` (a lone negative point, left out) {leak.iloc[0]['verdict']}: {_leak_status(origin, tuned, split)}"
                 if not leak.empty else "")
    lines.append(f"| each Table I strategy above the report's {split} fine-tuned value | above: {', '.join(above) or 'none'}; "
                 f"below: {', '.join(below) or 'none'}; not distinguishable: {', '.join(unclear) or 'none'}{leak_note} | "
                 f"{'yes' if len(above) == len(foreground) and len(foreground) == 6 else 'no'} |")
    c = stats.compare_prompts(tuned.select(split, "box:0"), origin.select(split, "box:0"))
    met = {1: "yes", -1: "no", 0: "not shown: no non-inferiority margin was set, and the interval includes 0"}[c.sign]
    lines.append(f"| fine-tuned not worse than pretrained on the tight box (per patient) | "
                 f"{stats.claim(c, 'fine-tuned higher', 'pretrained higher')} | {met} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- README


def results_block(dirs: Sequence[str | Path | Results]) -> str:
    """The README's results: one folder's tables, or pretrained against fine-tuned for two."""
    if len(dirs) == 1:
        return results_markdown(dirs[0])
    if len(dirs) == 2:
        return tables_markdown(*dirs)
    raise ValueError(f"give one results folder, or two (pretrained, fine-tuned); got {len(dirs)}")


def report_markdown(dirs: Sequence[str | Path]) -> str:
    """What ``python -m samhw report`` prints: one folder's tables with the reading, or for two the
    whole comparison (:func:`comparison_markdown`)."""
    if len(dirs) == 2:
        return comparison_markdown(*dirs)
    if len(dirs) == 1:
        res = _load(dirs[0])
        return "\n".join([results_markdown(res), "", "### Paired comparisons", "", COMPARISONS_CAPTION, "",
                          comparisons_markdown(comparisons(res)), "", "### Against the report's Table I", "",
                          ONE_SAMPLE_CAPTION, "", comparisons_markdown(report_comparisons(res), one_sample=True), "",
                          "### Reading", "", reading_markdown(res)])
    raise ValueError(f"give one results folder, or two (pretrained, fine-tuned); got {len(dirs)}")


def replace_block(readme: str | Path, start: str, end: str, body: str) -> bool:
    """Replace what lies between the marker lines ``start`` and ``end``; True if it changed."""
    readme = Path(readme)
    text = readme.read_text()
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise ValueError(f"{readme}: no block to fill; add the two marker lines {start!r} and {end!r}")
    new = pattern.sub(lambda _: f"{start}\n{body}\n{end}", text)
    atomic_write_text(readme, new)
    return new != text


def update_readme(readme: str | Path, *results_dirs: str | Path) -> bool:
    """Rewrite the README's results block (:func:`results_block`) and, where the README has their
    marker lines, its reading block (:func:`reading_markdown`) and, for two folders, its targets
    block (:func:`targets_markdown`); True if anything changed."""
    loaded = [_load(d) for d in results_dirs]
    changed = replace_block(readme, START, END, results_block(loaded))
    text = Path(readme).read_text()
    if READING_START in text:
        changed |= replace_block(readme, READING_START, READING_END, reading_markdown(*loaded))
    if len(loaded) == 2 and TARGETS_START in text:
        changed |= replace_block(readme, TARGETS_START, TARGETS_END, targets_markdown(*loaded))
    return changed


def write_comparison(origin_dir: str | Path, tuned_dir: str | Path, checkpoint: str | Path | None = None) -> Path:
    """Pretrained against fine-tuned: ``comparison.md`` (the Table I counterpart) and the E1 and
    E2/E3 figures of both models on every split, written into ``tuned_dir``; returns that path.

    With the fine-tuned ``checkpoint``, also its training record (``training.json``: command,
    options, split, per-epoch log) and curves (``fig_training.png``).
    """
    from . import plots
    from .models import read_checkpoint

    tuned_dir = Path(tuned_dir)
    if checkpoint is not None:
        _, meta = read_checkpoint(Path(checkpoint))
        run_log = Path(checkpoint).with_name("log.json")  # the whole run's epochs, past the best one
        epochs = json.loads(run_log.read_text())["epochs"] if run_log.is_file() else meta.get("log")
        if epochs:
            keep = ("command", "model", "base_weights", "base_checkpoint", "options", "split", "best", "samhw")
            record = {"checkpoint": Path(checkpoint).as_posix(), **{k: meta.get(k) for k in keep}, "epochs": epochs}
            (tuned_dir / "training.json").write_text(json.dumps(record, indent=1) + "\n")
            plots.save(plots.training_curves(epochs), tuned_dir / "fig_training.png")
    frames = []
    for label, folder in (("origin", Path(origin_dir)), ("fine-tuned", tuned_dir)):
        frame = pd.read_csv(folder / "summary.csv")
        frame.insert(0, "model", label)
        frames.append(frame)
    summary = pd.concat(frames, ignore_index=True)
    plots.save(plots.margin_curves(summary, by=("model", "split")), tuned_dir / "fig_compare_e1_margins.png")
    plots.save(plots.strategy_bars(summary, by=("model", "split")), tuned_dir / "fig_compare_e2_strategies.png")
    (tuned_dir / "comparison.md").write_text(comparison_markdown(origin_dir, tuned_dir) + "\n")
    return tuned_dir / "comparison.md"
