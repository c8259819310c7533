"""The LGG brain-MRI slices in the Kaggle ``kaggle_3m`` layout: finding, reading, checking, splitting.

Layout: ``ROOT/TCGA_<inst>_<id>_<date>/TCGA_<inst>_<id>_<date>_<n>.tif`` (H, W, 3) uint8 images
(pre-contrast, FLAIR, post-contrast) and ``..._<n>_mask.tif`` (H, W) masks of 0/255.
The patient is ``TCGA_<inst>_<id>``; splits are by patient, never by slice.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import tifffile

__all__ = [
    "DataError",
    "SliceRecord",
    "Slice",
    "Dataset",
    "SPLITS",
    "TEST_FRACTION",
    "VAL_FRACTION",
    "resolve_data_dir",
    "discover",
    "split_of",
    "read_image",
    "read_mask",
    "load_dataset",
]

#: Share of patients in the test and validation splits (the rest is train); see data/README.md.
TEST_FRACTION = 0.2
VAL_FRACTION = 0.1
SPLITS = ("train", "val", "test", "all")

_NAME = re.compile(r"^(?P<study>(?P<patient>TCGA_[A-Za-z0-9]+_[A-Za-z0-9]+)_\d+)_(?P<n>\d+)(?P<mask>_mask)?\.tiff?$")
_SKIP_HINT = "or pass --skip-bad to skip such slices and have them counted in the report"


class DataError(Exception):
    """A problem with the input data; the message names the file and the fix."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


@dataclass(frozen=True)
class SliceRecord:
    """Where one slice lives. ``slice_id`` is ``<study>_<n>``, unique across the dataset."""

    slice_id: str
    patient: str
    study: str
    index: int
    image_path: Path
    mask_path: Path


@dataclass(frozen=True)
class Slice:
    """A loaded slice: ``image`` (H, W, 3) uint8 and ``mask`` (H, W) bool."""

    record: SliceRecord
    image: np.ndarray
    mask: np.ndarray

    @property
    def slice_id(self) -> str:
        return self.record.slice_id

    @property
    def patient(self) -> str:
        return self.record.patient


@dataclass
class Dataset:
    """Slices of one split, with what was left out and why."""

    root: Path
    split: str
    slices: list[Slice]
    empty: int = 0  # slices without tumor, left out because a prompt needs one
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # bad files, with --skip-bad

    def __len__(self) -> int:
        return len(self.slices)

    @property
    def patients(self) -> list[str]:
        return sorted({s.patient for s in self.slices})

    def report(self) -> str:
        """One paragraph on what was read and what was left out."""
        lines = [f"{len(self.slices)} tumor slices of {len(self.patients)} patients ({self.split} split) from {self.root}"]
        if self.empty:
            lines.append(f"left out {self.empty} slices with an empty mask (no tumor to prompt)")
        if self.skipped:
            lines.append(f"SKIPPED {len(self.skipped)} bad slices (--skip-bad):")
            lines += [f"  {path}: {why}" for path, why in self.skipped]
        return "\n".join(lines)


def resolve_data_dir(data: str | os.PathLike | None = None) -> Path:
    """The data folder: ``data`` if given, else ``$SAMHW_DATA``, else ``data/kaggle_3m``.

    A folder holding a single ``kaggle_3m`` folder (the unzipped Kaggle archive) is accepted too.
    """
    if data is not None:
        root, origin = Path(data), "--data"
    elif os.environ.get("SAMHW_DATA"):
        root, origin = Path(os.environ["SAMHW_DATA"]), "$SAMHW_DATA"
    else:
        root, origin = Path("data/kaggle_3m"), "the default data/kaggle_3m"
    root = root.expanduser()
    if not root.is_dir():
        raise DataError(root, f"not a folder (from {origin}). Download the Kaggle dataset "
                              "mateuszbuda/lgg-mri-segmentation and unzip its kaggle_3m folder to data/kaggle_3m, "
                              "or point --data or $SAMHW_DATA at it (see data/README.md).")
    if not any(_is_study_dir(p) for p in root.iterdir()) and (root / "kaggle_3m").is_dir():
        root = root / "kaggle_3m"
    return root


def _is_study_dir(path: Path) -> bool:
    return path.is_dir() and path.name.startswith("TCGA_")


def discover(root: str | os.PathLike) -> tuple[list[SliceRecord], list[tuple[str, DataError]]]:
    """Every (image, mask) pair under ``root``, sorted by study and slice number, and the
    orphans: ``(patient, DataError)`` for each image without its mask or mask without its image.
    """
    root = Path(root)
    images: dict[str, Path] = {}
    masks: dict[str, Path] = {}
    meta: dict[str, tuple[str, str, int]] = {}
    for study_dir in sorted(p for p in root.iterdir() if _is_study_dir(p)):
        for path in study_dir.iterdir():
            m = _NAME.match(path.name)
            if m is None:
                continue
            slice_id = f"{m['study']}_{m['n']}"
            (masks if m["mask"] else images)[slice_id] = path
            meta[slice_id] = (m["patient"], m["study"], int(m["n"]))
    if not meta:
        raise DataError(root, "no TCGA_*/TCGA_*_<n>.tif slices found. Point --data at the kaggle_3m folder "
                              "of the LGG dataset (see data/README.md).")
    orphans = []
    for slice_id in sorted(set(images) ^ set(masks)):
        if slice_id in images:
            path = images[slice_id]
            err = DataError(path, f"image has no mask (expected {path.with_name(slice_id + '_mask' + path.suffix).name}); "
                                  f"restore the mask file, {_SKIP_HINT}")
        else:
            path = masks[slice_id]
            err = DataError(path, f"mask has no image (expected {path.with_name(slice_id + path.suffix).name}); "
                                  f"restore the image file, {_SKIP_HINT}")
        orphans.append((meta[slice_id][0], err))
    records = [SliceRecord(sid, *meta[sid], image_path=images[sid], mask_path=masks[sid])
               for sid in meta if sid in images and sid in masks]
    return sorted(records, key=lambda r: (r.study, r.index)), orphans


def split_of(patient: str) -> str:
    """``"train"``, ``"val"`` or ``"test"`` for a patient id, from its SHA-256 alone.

    The first 8 bytes of ``sha256("samhw:" + patient)``, big-endian, read as a fraction u in
    [0, 1): test if u < TEST_FRACTION, val if u < TEST_FRACTION + VAL_FRACTION, else train.
    Any subset of patients therefore splits the same way.
    """
    u = int.from_bytes(hashlib.sha256(f"samhw:{patient}".encode()).digest()[:8], "big") / 2**64
    if u < TEST_FRACTION:
        return "test"
    return "val" if u < TEST_FRACTION + VAL_FRACTION else "train"


def _read_tiff(path: Path) -> np.ndarray:
    try:
        return tifffile.imread(path)
    except Exception as err:  # tifffile raises many types for damaged files
        raise DataError(path, f"cannot read this TIFF ({type(err).__name__}: {err}); it may be truncated or "
                              f"damaged: download it again, {_SKIP_HINT}") from err


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An (H, W, 3) uint8 slice image."""
    path = Path(path)
    image = _read_tiff(path)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise DataError(path, f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}; {_SKIP_HINT}")
    return image


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """An (H, W) bool mask from a 0/255 (or 0/1) file."""
    path = Path(path)
    mask = _read_tiff(path)
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise DataError(path, f"expected an (H, W) mask, got shape {mask.shape}; {_SKIP_HINT}")
    values = np.unique(mask)
    if not (set(values.tolist()) <= {0, 255} or set(values.tolist()) <= {0, 1}):
        shown = ", ".join(str(v) for v in values[:6]) + (", ..." if values.size > 6 else "")
        raise DataError(path, f"mask is not binary (values {shown}; expected 0 and 255); {_SKIP_HINT}")
    if mask.all():  # no background at all: no background point, and a box that is the whole image
        raise DataError(path, f"mask covers the whole image: an inverted mask? (expected 255 on the tumor only); {_SKIP_HINT}")
    return mask > 0


def _load(record: SliceRecord, mask: np.ndarray) -> Slice:
    image = read_image(record.image_path)
    if image.shape[:2] != mask.shape:
        raise DataError(record.image_path, f"image is {image.shape[:2]} but its mask {record.mask_path.name} is "
                                           f"{mask.shape}; {_SKIP_HINT}")
    return Slice(record, image, mask)


def load_dataset(
    data: str | os.PathLike | None = None,
    split: str = "test",
    skip_bad: bool = False,
    patients: Iterable[str] | None = None,
    limit: int | None = None,
) -> Dataset:
    """Read and check the tumor slices of one split (``train``, ``val``, ``test`` or ``all``).

    Slices with an empty mask are left out and counted. A bad file raises :class:`DataError`,
    or with ``skip_bad`` is left out and listed in ``Dataset.skipped``. ``patients`` restricts
    to those patients; ``limit`` keeps that many slices evenly spread over the sorted list
    (for quick runs that still see several patients).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    root = resolve_data_dir(data)
    keep = None if patients is None else set(patients)

    def wanted(patient: str) -> bool:
        return (split == "all" or split_of(patient) == split) and (keep is None or patient in keep)

    records, orphans = discover(root)
    records = [r for r in records if wanted(r.patient)]
    dataset = Dataset(root=root, split=split, slices=[])
    for patient, err in orphans:
        if wanted(patient):
            if not skip_bad:
                raise err
            dataset.skipped.append((err.path, err.reason))
    tumor: list[tuple[SliceRecord, np.ndarray]] = []
    for record in records:
        try:
            mask = read_mask(record.mask_path)
        except DataError as err:
            if not skip_bad:
                raise
            dataset.skipped.append((err.path, err.reason))
            continue
        if mask.any():
            tumor.append((record, mask))
        else:
            dataset.empty += 1
    if limit is not None and limit < len(tumor):
        tumor = [tumor[i] for i in np.unique(np.linspace(0, len(tumor) - 1, limit).round().astype(int))]
    for record, mask in tumor:
        try:
            dataset.slices.append(_load(record, mask))
        except DataError as err:
            if not skip_bad:
                raise
            dataset.skipped.append((err.path, err.reason))
    if not dataset.slices:
        raise DataError(root, f"no tumor slices in the {split} split" + (f" for patients {sorted(keep)}" if keep else ""))
    return dataset
