"""What fp16 storage does to a shipped model's masks: a fine-tuning checkpoint (fp32) against the
shipped weights exported from it (fp16 on disk, fp32 in memory), on the same validation slices and
prompts (seed 0), from the same cached embeddings: the largest logit change, the pixels whose mask
changed, the lowest IoU between the two masks of one prompt, and each model's mean IoU.

    python benchmarks/shipped_precision.py CHECKPOINT NAME [--data DIR] [--slices 32]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from samhw.cache import EmbeddingCache  # noqa: E402
from samhw.data import load_dataset  # noqa: E402
from samhw.metrics import iou  # noqa: E402
from samhw.models import load_model  # noqa: E402
from samhw.prompts import Target, parse_prompts  # noqa: E402
from samhw.study import EXPERIMENTS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("name", help="the shipped model exported from CHECKPOINT, e.g. litemedsam-lgg")
    parser.add_argument("--data")
    parser.add_argument("--slices", type=int, default=32, help="validation slices (spread over its patients)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    full = load_model("litemedsam", args.checkpoint, "cpu", plain=True)
    shipped = load_model(args.name, device="cpu", plain=True)
    cache = EmbeddingCache(full)
    dataset = load_dataset(args.data, "val", limit=args.slices)
    specs = parse_prompts([*EXPERIMENTS["E1"], *EXPERIMENTS["E2"]])
    worst_logit, worst_iou, changed, pixels, scores = 0.0, 1.0, 0, 0, {"fp32": [], "fp16": []}
    for item in dataset.slices:
        embedding = cache.get(item.image).float()
        target = Target(item.mask, item.image, item.slice_id)
        for spec in specs:
            prompt = spec.draw(target, 0)
            logits = []
            for model in (full, shipped):
                points, boxes = model.prompt_tensors([prompt], item.mask.shape)
                with torch.inference_mode():
                    low, predicted = model.decode(embedding, points, boxes, spec.multimask)
                    best = int(predicted[0].argmax())
                    logits.append(model.postprocess(low, item.mask.shape)[0, best])
            a, b = (x.numpy() > 0 for x in logits)
            worst_logit = max(worst_logit, float((logits[0] - logits[1]).abs().max()))
            union = int((a | b).sum())
            worst_iou = min(worst_iou, int((a & b).sum()) / union if union else 1.0)
            changed += int((a != b).sum())
            pixels += a.size
            scores["fp32"].append(iou(a, item.mask))
            scores["fp16"].append(iou(b, item.mask))
    print(f"{len(dataset)} validation slices x {len(specs)} prompts (seed 0), {args.checkpoint} against {args.name}:")
    print(f"largest logit change {worst_logit:.4f}; mask pixels changed {changed} of {pixels} "
          f"({changed / pixels:.2e}); lowest IoU between the two masks of a prompt {worst_iou:.4f}; "
          f"mean IoU fp32 {np.mean(scores['fp32']):.5f}, shipped {np.mean(scores['fp16']):.5f}")


if __name__ == "__main__":
    main()
