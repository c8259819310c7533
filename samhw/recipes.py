"""The fine-tuning recipes tried, kept and dropped alike, as one table (no torch).

Each recipe is a training record in a folder (``<folder>/<name>.json``: the run's
command, options and per-epoch validation scores, as ``finetune`` writes them in ``log.json``).
Validation prompt sets changed between recipes, so the table compares them on the prompts they
share, besides each one's own mean.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .analysis import TABLE_I_STRATEGIES
from .stats import format_interval, summarize

__all__ = ["TEST_PROMPTS", "read_recipes", "recipes_markdown", "started_from", "test_scores"]

#: Prompts of a recipe's test scores: the tight box, the report's margin, and Table I's single points.
TEST_PROMPTS = ("box:0", "box:20", *(s for s in TABLE_I_STRATEGIES if s != "background"))
CENTRE_POINTS = ("center_box", "center_mask", "center_gaussian")


def read_recipes(folder: str | Path) -> list[dict]:
    """Every ``*.json`` training record in ``folder``, sorted by name, with its name added."""
    records = []
    for path in sorted(Path(folder).glob("*.json")):
        record = json.loads(path.read_text())
        if "epochs" not in record or "options" not in record:
            raise ValueError(f"{path}: not a training record (needs 'options' and 'epochs', as finetune's log.json)")
        records.append({"name": path.stem, **record})
    return records


def test_scores(rows: pd.DataFrame) -> dict[str, list[float]]:
    """Per prompt of evaluation ``rows`` (seeds averaged per slice): [mean IoU over slices, and the
    lower and upper end of its patient-level 95% bootstrap interval], rounded to 4 decimals."""
    summary = summarize(rows)
    return {row.prompt: [round(float(row.iou), 4), round(float(row.iou_boot_lo), 4), round(float(row.iou_boot_hi), 4)]
            for row in summary.itertuples()}


def _test_cells(record: dict) -> list[str]:
    """The tight box and the best centre point on the test split, or blanks for a record without them."""
    scores = record.get("test", {}).get("iou")
    if not scores:
        return ["", ""]
    centre = max(CENTRE_POINTS, key=lambda p: scores[p][0])
    cell = {p: format_interval(v[0], bounds=(v[1], v[2])) for p, v in scores.items()}
    return [cell["box:0"], f"{cell[centre]} (`{centre}`)"]


def _best(record: dict) -> dict:
    """The epoch the run chose (its ``best``), as logged."""
    chosen = record["best"]["epoch"]
    return next(e for e in record["epochs"] if e["epoch"] == chosen)


def started_from(record: dict) -> dict | None:
    """The fine-tuned weights a run started from, as its checkpoint, ``log.json`` or record holds them
    (``base_checkpoint``, ``base_weights``): ``{"checkpoint", "weights_sha256"}``, or None for a run
    from the base model. A shipped name such as ``litemedsam-lgg`` meant other weights at other times;
    the sha256 says which."""
    checkpoint = record.get("base_checkpoint")
    return {"checkpoint": checkpoint, "weights_sha256": record.get("base_weights")} if checkpoint else None


def _start(record: dict) -> str:
    """The table's "from": ``base``, or the checkpoint with its weights' sha256 prefix where recorded."""
    start = started_from(record)
    if start is None:
        return "base"
    sha = start["weights_sha256"]
    return f"{start['checkpoint']} (`{sha[:8]}`)" if sha else start["checkpoint"]


def recipes_markdown(folder: str | Path, kept: str | None = None) -> str:
    """A Markdown table of the recipes in ``folder``: parts trained, starting weights (the base model's,
    or a checkpoint's such as a shipped model, with its weights' sha256 prefix), epochs, learning rate, mask loss, augmentations, the
    share of boxes in the prompt mix, negatives in the mix,
    the chosen epoch's validation mean, the mean over the validation prompts all recipes share, and,
    where the record has them, the test split's tight box and best centre point with their
    patient-level intervals. ``kept`` names the recipe whose weights are shipped."""
    records = read_recipes(folder)
    if not records:
        raise ValueError(f"{folder}: no training records")
    shared = sorted(set.intersection(*(set(_best(r)["val"]) for r in records)))
    rows = []
    for record in records:
        best, options = _best(record), record["options"]
        negatives = sorted({part for name, weight in options["mix"] if weight > 0
                            for part in name.split("+") if part.startswith("background")})
        boxes = sum(w for name, w in options["mix"] if name.startswith("box:")) / sum(w for _, w in options["mix"])
        rows.append({
            "recipe": f"`{record['name']}`" + (" (shipped)" if record["name"] == kept else ""),
            "parts": ", ".join(options["parts"]),
            "from": _start(record),
            "epochs": options["epochs"],
            "lr": f"{options.get('lr', 1e-4):g}",
            "loss": options.get("mask_loss", "dice_bce"),
            "augment": ", ".join(options.get("augment", ())) or "none",
            "boxes in mix": f"{boxes:.0%}",
            "device": best.get("device", ""),
            "negatives": ", ".join(negatives) or "none",
            "chosen epoch": best["epoch"],
            "val mean (own prompts)": f"{best['val_mean']:.3f}",
            f"val mean ({', '.join(shared)})": f"{sum(best['val'][p] for p in shared) / len(shared):.3f}",
            **dict(zip(("test box:0", "test best centre point"), _test_cells(record))),
        })
    table = pd.DataFrame(rows)
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)
