"""Markdown tables of a study's committed results, and the README block they fill."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["results_markdown", "update_readme", "replace_block", "START", "END"]

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
        header += [f"{split} IoU (slices)", f"{split} IoU (patients)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (experiment, prompt), group in summary.groupby(["experiment", "prompt"], sort=False):
        group = group.set_index("split")
        cells = [experiment, f"`{prompt}`", "best of 3" if group["mask_choice"].iloc[0].startswith("best") else "single"]
        for split in splits:
            if split in group.index:
                r = group.loc[split]
                cells += [_cell(r["iou"], r["iou_lo"], r["iou_hi"]),
                          _cell(r["iou_patient"], r["iou_patient_lo"], r["iou_patient_hi"])]
            else:
                cells += ["", ""]
        lines.append("| " + " | ".join(cells) + " |")
    counts = "; ".join(f"{s}: {v['slices']} slices of {v['patients']} patients" for s, v in meta["splits"].items())
    return "\n".join([
        f"Model `{meta['model']}` (weights sha256 `{meta['weights_sha256'][:12]}`), seeds {meta['seeds']}, {counts}. "
        f"Mean IoU; ± is the half-width of the 95% interval over seeds (none for prompts that do not depend on "
        f"the seed). Made by `{meta.get('command') or 'python -m samhw study'}` in {meta['elapsed_s']:.0f} s on "
        f"{meta['device']}; files in `{results_dir.as_posix()}/`.",
        "",
        *lines,
    ])


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


def update_readme(readme: str | Path, results_dir: str | Path) -> bool:
    """Replace the README's results block with the tables of ``results_dir``; True if it changed."""
    return replace_block(readme, START, END, results_markdown(results_dir))
