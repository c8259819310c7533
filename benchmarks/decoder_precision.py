"""The fast decoder in fp32 (samhw's inference everywhere) and in bf16 autocast (forced here; it
was the CUDA default before), each against SAM's plain fp32 decoder, from the same fp32
embeddings of test slices: pixel agreement, mean IoU, and time per prompt one at a time and in a
batch of 64. Run by benchmarks/device_check.sh (stage bench).

    python benchmarks/decoder_precision.py DATA [--slices 32] [--device cuda] [--repeat 20]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from samhw.bench import decoder_ms  # noqa: E402
from samhw.data import load_dataset  # noqa: E402
from samhw.metrics import iou  # noqa: E402
from samhw.models import load_model  # noqa: E402
from samhw.prompts import Target, parse_prompts  # noqa: E402
from samhw.study import EXPERIMENTS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("--slices", type=int, default=32)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--repeat", type=int, default=20, help="timed calls per measure (median)")
    args = parser.parse_args()
    plain = load_model("litemedsam", device=args.device, plain=True)
    models = {"bf16": load_model("litemedsam", device=args.device), "fp32": load_model("litemedsam", device=args.device)}
    models["bf16"].fp32 = lambda: torch.autocast(plain.device.type, dtype=torch.bfloat16)  # decode in bf16
    dataset = load_dataset(args.data, "test", limit=args.slices)
    specs = parse_prompts([p for e in EXPERIMENTS.values() for p in e])
    agree = {k: 0 for k in models}
    ious: dict[str, list[float]] = {k: [] for k in ("plain", *models)}
    total = 0
    for item in dataset.slices:
        target = Target(item.mask, item.image, item.slice_id)
        embedding = plain.encode([item.image])
        contexts = {k: m.image_context(embedding) for k, m in models.items()}
        groups: dict[tuple, list] = {}
        for spec in specs:
            prompt = spec.draw(target, 0)
            groups.setdefault((prompt.structure, spec.multimask), []).append(prompt)
        for (_, multimask), prompts in groups.items():
            reference = plain.predict(embedding, prompts, item.mask.shape, multimask)[0]
            ious["plain"] += [iou(m, item.mask) for m in reference]
            total += reference.size
            for k, m in models.items():
                masks = m.predict(contexts[k], prompts, item.mask.shape, multimask)[0]
                agree[k] += int((masks == reference).sum())
                ious[k] += [iou(x, item.mask) for x in masks]
    item = dataset.slices[0]
    embedding = plain.encode([item.image])
    box = parse_prompts(["box:10"])[0].draw(Target(item.mask, None, item.slice_id), 0)
    timing = {}
    for batch in (1, 64):
        for k, m in {"plain": plain, **{f"fast_{k}": m for k, m in models.items()}}.items():
            timing[f"{k}_ms_batch{batch}"] = decoder_ms(m, embedding, [box], item.mask.shape, batch, args.repeat)
    result = {"slices": len(dataset), "prompts": len(ious["plain"]), "mean_iou": {k: float(np.mean(v)) for k, v in ious.items()},
              "pixel_agreement_with_plain": {k: agree[k] / total for k in models},
              "timing": {k: round(v, 4) for k, v in timing.items()}}
    print("decoder precision:", json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
