"""The decoder-only training step of batch 8 (the default training mix, epoch 0's prompts of the first
eight train slices, cached fp32 embeddings), four ways, timed in interleaved rounds so that a shared
machine's changing speed reaches each alike:

  plain         SAM's decoder slice by slice, torch's default AdamW (``samhw.train.train_step`` on a plain model)
  slice         the fast decoder slice by slice, torch's default AdamW (the step before it was batched)
  batched       ``samhw.train.train_step``: the fast decoder once per group of prompts, torch's default AdamW
  samhw         ``samhw.train.train_step`` with ``samhw.train.adamw`` (fused): what ``finetune`` runs

    python benchmarks/train_step.py [--data DATA] [--rounds 5] [--steps 3]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from samhw.data import load_dataset  # noqa: E402
from samhw.models import SamModel, load_model  # noqa: E402
from samhw.train import FinetuneConfig, adamw, prompt_loss, train_step, trainable_parameters, training_prompt  # noqa: E402


def slice_by_slice_step(model: SamModel, optimizer: torch.optim.Optimizer, embeddings, prompts, truths) -> None:
    """The step before batching: one fast-decoder call per slice, then the mean of the slices' losses."""
    optimizer.zero_grad(set_to_none=True)
    losses = []
    for embedding, (spec, prompt), truth in zip(embeddings, prompts, truths):
        points, boxes = model.prompt_tensors([prompt], tuple(truth.shape))
        low, scores = model.fast_decoder.decode_all(model.fast_decoder.prepare(embedding[None]), points, boxes,
                                                    spec.multimask)
        losses.append(prompt_loss(model.postprocess(low, tuple(truth.shape))[0], scores[0], truth, spec.multimask, 1.0)[0])
    torch.stack(losses).mean().backward()
    optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", help="kaggle_3m folder (default: $SAMHW_DATA, else data/kaggle_3m)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="steps of each way per round")
    args = parser.parse_args()
    slices = load_dataset(args.data, "train", limit=8).slices
    fast, plain = load_model("litemedsam", device="cpu"), load_model("litemedsam", device="cpu", plain=True)
    embeddings = fast.encode([s.image for s in slices])
    prompts = [training_prompt(FinetuneConfig(), s, 0) for s in slices]
    truths = [torch.from_numpy(s.mask) for s in slices]
    plain_params, fast_params = trainable_parameters(plain, ("decoder",)), trainable_parameters(fast, ("decoder",))
    optimizers = {"plain": torch.optim.AdamW(plain_params, lr=1e-6), "slice": torch.optim.AdamW(fast_params, lr=1e-6),
                  "batched": torch.optim.AdamW(fast_params, lr=1e-6), "samhw": adamw(fast_params, fast.device, 1e-6, 0.01)}
    ways = {"plain": lambda: train_step(plain, optimizers["plain"], embeddings, prompts, truths),
            "slice": lambda: slice_by_slice_step(fast, optimizers["slice"], embeddings, prompts, truths),
            "batched": lambda: train_step(fast, optimizers["batched"], embeddings, prompts, truths),
            "samhw": lambda: train_step(fast, optimizers["samhw"], embeddings, prompts, truths)}
    print(f"prompts: {', '.join(spec.name for spec, _ in prompts)}; {torch.get_num_threads()} torch threads")
    for way in ways.values():
        way()  # warm-up
    ms: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, way in ways.items():
            for _ in range(args.steps):
                start = time.perf_counter()
                way()
                ms[name].append(1000 * (time.perf_counter() - start))
    for name, samples in ms.items():
        q25, q50, q75 = np.percentile(samples, [25, 50, 75])
        print(f"{name:8s} {q50:8.0f} ms [{q25:.0f}-{q75:.0f}] over {len(samples)} steps; "
              f"{np.median(ms['plain']) / q50:.2f}x plain, {np.median(ms['slice']) / q50:.2f}x slice by slice")


if __name__ == "__main__":
    main()
