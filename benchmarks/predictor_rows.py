"""The Predictor against the study: every row of a few slices of a committed study recomputed
through ``samhw.Predictor`` (the study's call, ``predict_prompts``, and SAM's interface,
``predict``) and through the study's own code, and compared (IoU, predicted area, predicted IoU)
with each other and with the committed rows, value for value.

    SAMHW_DATA=... python benchmarks/predictor_rows.py --results results/litemedsam --split test --limit 5

Embeddings come from ``--cache`` (default: the default cache; float16, as the study stores them);
ones missing there are computed and stored, with one thread as the study's workers compute them
(``--threads``). Exit status 1 if the Predictor differs from the study's code in any row.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from samhw import Predictor
from samhw.data import load_dataset
from samhw.evaluate import evaluate_slice
from samhw.metrics import iou
from samhw.prompts import PromptSpec, Target


def compare(results: Path, split: str, limit: int, checkpoint: str | None, cache: str | bool = True) -> dict:
    """For the rows of the first ``limit`` slices: how many differ between the Predictor's study
    call and the study's own code now (``samhw.evaluate.evaluate_slice``), between each of them and
    the committed rows, and between SAM's interface (best of ``predict``'s masks) and the study's code."""
    meta = json.loads((results / f"rows_{split}.json").read_text())
    rows = pd.read_csv(results / f"rows_{split}.csv", float_precision="round_trip", keep_default_na=False)
    wanted = set(list(dict.fromkeys(rows["slice"]))[:limit])
    data = load_dataset(meta["data"], split)
    predictor = Predictor.from_name(meta["config"]["model"], checkpoint, device="cpu", cache=cache)
    counts = dict.fromkeys(["rows", "predictor_vs_study_code", "study_code_vs_committed", "predictor_vs_committed",
                            "predictor_vs_committed_masks", "sam_interface_vs_study_code"], 0)
    examples = []
    for item in (s for s in data.slices if s.slice_id in wanted):
        predictor.set_image(item.image)
        target = Target(item.mask, item.image, item.slice_id)
        committed = rows[rows["slice"] == item.slice_id]
        pairs = [(PromptSpec.parse(r.prompt), int(r.seed)) for r in committed.itertuples()]
        now = evaluate_slice(predictor.model, predictor.cache.get(item.image), item, pairs, split)
        for (spec, seed), row, study in zip(pairs, committed.itertuples(), now, strict=True):
            prompt = spec.draw(target, seed)
            masks, scores = predictor.predict_prompts([prompt], spec.multimask)
            ours = (float(round(iou(masks[0], item.mask), 8)), int(masks[0].sum()), round(float(scores[0]), 7))
            theirs = (study["iou"], study["area_pred"], study["pred_iou"])
            kept = (row.iou, row.area_pred, row.pred_iou)
            sam_masks, sam_scores, _ = predictor.predict_prompt(prompt, multimask_output=spec.multimask)
            chosen = sam_masks[int(np.argmax(sam_scores))]
            counts["rows"] += 1
            counts["predictor_vs_study_code"] += ours != theirs
            counts["study_code_vs_committed"] += theirs != kept
            counts["predictor_vs_committed"] += ours != kept
            counts["predictor_vs_committed_masks"] += ours[:2] != kept[:2]  # IoU or area, not only predicted IoU
            counts["sam_interface_vs_study_code"] += (float(round(iou(chosen, item.mask), 8)), int(chosen.sum())) != theirs[:2]
            if ours != kept:
                examples.append(f"{item.slice_id} {row.prompt} seed {seed}: predictor {ours}, study code {theirs}, "
                                f"committed {kept}")
    return {"counts": counts, "examples": examples}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", default="results/litemedsam", type=Path, help="a study's results folder")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=5, help="slices (the first of the rows)")
    parser.add_argument("--checkpoint", help="the weights of a fine-tuned study")
    parser.add_argument("--cache", help="embedding cache folder (default: the default cache)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (the study's workers use one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = compare(args.results, args.split, args.limit, args.checkpoint, args.cache or True)
    print(json.dumps(out["counts"]))
    for line in out["examples"][:10]:
        print(line)
    return 1 if out["counts"]["predictor_vs_study_code"] else 0


if __name__ == "__main__":
    sys.exit(main())
