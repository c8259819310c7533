"""Markdown tables of a study's committed results, the README block they fill, and the original
report's numbers they are compared with."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

__all__ = ["results_markdown", "comparison_markdown", "results_block", "update_readme", "replace_block",
           "REPORT_TABLE_I", "TABLE_I_STRATEGIES", "START", "END"]

START = "<!-- results:start (written by `python -m samhw report`; do not edit by hand) -->"
END = "<!-- results:end -->"


def _cell(mean: float, lo: float, hi: float) -> str:
    return f"{mean:.3f}" if np.isnan(lo) else f"{mean:.3f} ± {(hi - lo) / 2:.3f}"


def results_markdown(results_dir: str | Path) -> str:
    """The study's summary as Markdown: one row per prompt, IoU per split (slices and patients)."""
    results_dir = Path(results_dir)
    meta = json.loads((results_dir / "summary.json").read_text())
    summary = pd.read_csv(results_dir / "summary.csv", keep_default_na=True)
    splits = list(dict.fromkeys(summary["split"]))
    header = ["experiment", "prompt", "mask"]
    for split in splits:
        header += [f"{split} IoU (slices)", f"{split} IoU (patients)", f"{split} off target"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (experiment, prompt), group in summary.groupby(["experiment", "prompt"], sort=False):
        group = group.set_index("split")
        cells = [experiment, f"`{prompt}`", "best of 3" if group["mask_choice"].iloc[0].startswith("best") else "single"]
        for split in splits:
            if split in group.index:
                r = group.loc[split]
                cells += [_cell(r["iou"], r["iou_lo"], r["iou_hi"]),
                          _cell(r["iou_patient"], r["iou_patient_lo"], r["iou_patient_hi"]),
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
        f"{meta['device']} ({meta.get('encoder_backend', '')} encoder). {made}. Mean IoU; ± is the half-width of the "
        f"95% interval over seeds (none for prompts that do not depend on the seed); off target: the share of "
        f"prompts with a foreground point off the tumor (or a background point on it). Files in "
        f"`{results_dir.as_posix()}/`.",
        "",
        *lines,
    ])


#: The report's Table I: IoU of SAM ViT-B with one point, slice-level split (SPEC.md).
TABLE_I_STRATEGIES = ["random_box", "random_mask", "random_gaussian", "center_box", "center_mask",
                      "center_gaussian", "background"]
REPORT_TABLE_I = pd.DataFrame(
    {
        "report test origin": [0.4612, 0.5308, 0.5703, 0.5827, 0.5905, 0.5911, 0.0815],
        "report test finetuned": [0.4773, 0.4841, 0.4795, 0.6309, 0.6302, 0.6313, 0.0753],
        "report train origin": [0.6183, 0.7284, 0.7259, 0.7629, 0.7634, 0.7637, 0.1856],
        "report train finetuned": [0.6560, 0.7614, 0.7623, 0.7766, 0.7750, 0.7751, 0.2386],
    },
    index=pd.Index(TABLE_I_STRATEGIES, name="strategy"),
)

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


def comparison_markdown(origin_dir: str | Path, tuned_dir: str | Path) -> str:
    """Pretrained ("origin") against fine-tuned, the counterpart of the report's Table I: mean IoU
    over slices (± 95% interval over seeds), then the same over patients."""
    from .study import SPLIT_ORDER

    dirs = {"origin": Path(origin_dir), "fine-tuned": Path(tuned_dir)}
    metas = {k: json.loads((d / "summary.json").read_text()) for k, d in dirs.items()}
    tables = {k: pd.read_csv(d / "summary.csv").set_index(["prompt", "split"]) for k, d in dirs.items()}
    common = set.intersection(*({s for _, s in t.index} for t in tables.values()))
    splits = [s for s in SPLIT_ORDER if s in common]
    order = tables["origin"].reset_index()[["experiment", "prompt", "mask_choice"]].drop_duplicates("prompt")
    tuned = metas["fine-tuned"]
    training = dirs["fine-tuned"] / "training.json"
    trained = ""
    if training.is_file():
        record = json.loads(training.read_text())
        best = record.get("best") or {}
        trained = (f"; trained by `{record.get('command')}`, chosen on the validation patients: epoch "
                   f"{best.get('epoch')} of {record['options']['epochs']} (`training.json`)")
    out = [
        f"Pretrained (`{metas['origin']['model']}`, weights sha256 `{metas['origin']['weights_sha256'][:12]}`) against "
        f"fine-tuned (`{Path(tuned['checkpoint']).as_posix() if tuned.get('checkpoint') else '?'}`, sha256 "
        f"`{tuned['weights_sha256'][:12]}`), seeds {_seeds(metas)}, on {metas['origin']['device']}. "
        f"Origin: {_made(metas['origin'])}. Fine-tuned: {_made(tuned)}{trained}. Mean IoU; ± is the half-width of the 95% "
        f"interval over seeds (none for prompts that do not depend on the seed). Files in "
        f"`{dirs['origin'].as_posix()}/` and `{dirs['fine-tuned'].as_posix()}/`.",
    ]
    for level, (col, lo, hi) in (("slices", ("iou", "iou_lo", "iou_hi")),
                                 ("patients", ("iou_patient", "iou_patient_lo", "iou_patient_hi"))):
        header = ["experiment", "prompt", "mask"] + [f"{s} {k}" for s in splits for k in dirs]
        if level == "slices":
            header.append("report, test fine-tuned")
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for _, r in order.iterrows():
            cells = [r["experiment"], f"`{r['prompt']}`", "best of 3" if r["mask_choice"].startswith("best") else "single"]
            for split in splits:
                for k in dirs:
                    row = tables[k].loc[(r["prompt"], split)] if (r["prompt"], split) in tables[k].index else None
                    cells.append("" if row is None else _cell(row[col], row[lo], row[hi]))
            if level == "slices":
                known = r["prompt"] in REPORT_TABLE_I.index
                cells.append(f"{REPORT_TABLE_I.loc[r['prompt'], 'report test finetuned']:.3f}" if known else "")
            lines.append("| " + " | ".join(cells) + " |")
        out += ["", f"Mean IoU over {level}" + (" (the report's value: SAM ViT-B, its own split)" if level == "slices" else "")
                + ":", "", *lines]
    return "\n".join(out)


def results_block(dirs: Sequence[str | Path]) -> str:
    """The README's results: one folder's tables, or pretrained against fine-tuned for two."""
    if len(dirs) == 1:
        return results_markdown(dirs[0])
    if len(dirs) == 2:
        return comparison_markdown(*dirs)
    raise ValueError(f"give one results folder, or two (pretrained, fine-tuned); got {len(dirs)}")


def replace_block(readme: str | Path, start: str, end: str, body: str) -> bool:
    """Replace what lies between the marker lines ``start`` and ``end``; True if it changed."""
    readme = Path(readme)
    text = readme.read_text()
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise ValueError(f"{readme}: no block to fill; add the two marker lines {start!r} and {end!r}")
    new = pattern.sub(lambda _: f"{start}\n{body}\n{end}", text)
    readme.write_text(new)
    return new != text


def update_readme(readme: str | Path, *results_dirs: str | Path) -> bool:
    """Replace the README's results block with :func:`results_block`; True if it changed."""
    return replace_block(readme, START, END, results_block(results_dirs))
