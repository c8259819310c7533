"""How LiteMedSAM's image encoder's arithmetic splits over its stages (torch's flop counter, one slice).

Which part of the encoder could be fine-tuned on a CPU from cached features: training a stage
costs about three times its forward arithmetic per slice, and everything before it runs once into
the cache. Prints a Markdown table. Usage: ``python benchmarks/encoder_flops.py``.
"""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from samhw.models import load_model


def stage_flops() -> list[tuple[str, int, int]]:
    """(stage, forward FLOPs, parameters) of the encoder's stages, in order, for one 256x256 slice."""
    encoder = load_model("litemedsam", device="cpu", plain=True).image_encoder.eval()
    x = torch.zeros(1, 3, 256, 256)
    stages = [("patch_embed", encoder.patch_embed)] + [(f"layers[{i}]", layer) for i, layer in enumerate(encoder.layers)]
    rows = []
    with torch.no_grad():
        for name, module in stages:
            counter = FlopCounterMode(display=False)
            with counter:
                x = module(x)
            rows.append((name, counter.get_total_flops(), sum(p.numel() for p in module.parameters())))
        side = int(x.shape[1] ** 0.5)
        x = x.view(1, side, side, x.shape[-1]).permute(0, 3, 1, 2)
        counter = FlopCounterMode(display=False)
        with counter:
            encoder.neck(x)
        rows.append(("neck", counter.get_total_flops(), sum(p.numel() for p in encoder.neck.parameters())))
    return rows


def main() -> None:
    rows = stage_flops()
    total = sum(f for _, f, _ in rows)
    print("| stage | forward GFLOP per slice | share | parameters |\n|---|---|---|---|")
    for name, flops, params in rows:
        print(f"| {name} | {flops / 1e9:.2f} | {flops / total:.1%} | {params:,} |")
    print(f"| total | {total / 1e9:.2f} | 100% | {sum(p for _, _, p in rows):,} |")


if __name__ == "__main__":
    main()
