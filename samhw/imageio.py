"""Your own slice: read a PNG, JPEG, TIFF, ``.npy`` or NIfTI slice as an (H, W, 3) uint8 image, check
prompts against it, write a mask and an overlay. numpy, Pillow, tifffile and nibabel only.

Images of any size are accepted (the model resizes them); grey images are repeated over the three
channels, an alpha channel is dropped, and values that are not uint8 are min-max scaled to 0..255.
A NIfTI volume needs a slice index K along its third axis; the slice ``data[:, :, K]`` is shown
with the first voxel axis as x (columns) and the second as y (rows), i.e. transposed, unflipped.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .data import DataError
from .prompts import Prompt, PromptError

__all__ = ["IMAGE_SUFFIXES", "read_slice", "to_rgb8", "make_prompt", "write_mask", "overlay"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy", ".nii", ".nii.gz")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def to_rgb8(array: np.ndarray, source: str = "image") -> np.ndarray:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) values -> (H, W, 3) uint8 (alpha dropped; other
    dtypes min-max scaled, a constant image to zeros)."""
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] in (1, 3, 4):
        a = a[..., :3] if a.shape[2] != 1 else a[..., 0]
    if a.ndim not in (2, 3) or min(a.shape[:2]) < 2:
        raise DataError(source, f"expected a 2-D grey or colour image, got an array of shape {array.shape}; "
                                "pass one slice (for a volume, a NIfTI file with --slice K)")
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    if a.dtype != np.uint8:
        a = a.astype(np.float64)
        if not np.isfinite(a).all():
            raise DataError(source, "the image has NaN or infinite values; clean it before segmenting")
        lo, hi = a.min(), a.max()
        a = np.zeros(a.shape, np.uint8) if hi == lo else np.round((a - lo) / (hi - lo) * 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return np.ascontiguousarray(a)


def read_slice(path: str | os.PathLike, slice_index: int | None = None) -> np.ndarray:
    """An (H, W, 3) uint8 image from a PNG, JPEG, TIFF or ``.npy`` file, or slice ``slice_index`` of
    a NIfTI volume (``.nii``, ``.nii.gz``). Raises :class:`samhw.data.DataError` naming the file."""
    path = Path(path)
    kind = _suffix(path)
    if not path.is_file():
        raise DataError(path, "no such file; check the path")
    if kind not in IMAGE_SUFFIXES:
        raise DataError(path, f"unknown image type {kind or '(no suffix)'}; use one of {', '.join(IMAGE_SUFFIXES)}")
    if slice_index is not None and kind not in (".nii", ".nii.gz"):
        raise DataError(path, "--slice is for NIfTI volumes only; leave it out for a single image")
    try:
        if kind == ".npy":
            array = np.load(path, allow_pickle=False)
        elif kind in (".tif", ".tiff"):
            import tifffile

            array = tifffile.imread(path)
        elif kind in (".nii", ".nii.gz"):
            return _nifti_slice(path, slice_index)
        else:
            from PIL import Image

            with Image.open(path) as img:
                array = np.asarray(img.convert("RGB") if img.mode in ("P", "CMYK", "YCbCr", "LA", "PA") else img)
    except DataError:
        raise
    except Exception as err:  # readers raise many types for a damaged or mislabelled file
        raise DataError(path, f"cannot read this {kind} file ({type(err).__name__}: {str(err)[:200]}); it may be "
                              "damaged or of another type than its name says") from err
    return to_rgb8(array, str(path))


def _nifti_slice(path: Path, slice_index: int | None) -> np.ndarray:
    import nibabel

    volume = nibabel.load(str(path))
    shape = volume.shape
    if len(shape) == 2:
        if slice_index not in (None, 0):
            raise DataError(path, f"this NIfTI image is 2-D {shape}: leave --slice out")
        return to_rgb8(np.asarray(volume.dataobj).T, str(path))
    if len(shape) != 3:
        raise DataError(path, f"expected a 3-D volume, got shape {shape}; extract one 3-D volume first")
    if slice_index is None:
        raise DataError(path, f"a volume of shape {shape}: pass --slice K with K in 0..{shape[2] - 1} (third axis)")
    if not 0 <= slice_index < shape[2]:
        raise DataError(path, f"--slice {slice_index} is outside the volume: K must be in 0..{shape[2] - 1}")
    return to_rgb8(np.asarray(volume.dataobj[:, :, slice_index]).T, str(path))


def make_prompt(shape: tuple[int, int], points: Sequence[Sequence[float]] = (),
                negatives: Sequence[Sequence[float]] = (), box: Sequence[float] | None = None) -> Prompt:
    """A prompt from user coordinates on an image of ``shape`` (H, W): positive and negative ``(x, y)``
    points and an ``[x0, y0, x1, y1]`` box, in pixel indices. Raises :class:`PromptError` for an empty
    prompt or a point or box outside the image."""
    h, w = shape
    if not len(points) and not len(negatives) and box is None:
        raise PromptError("no prompt: give at least one --point X Y, --negative X Y or --box X0 Y0 X1 Y1")
    where = f"the {w}x{h} image (x in 0..{w - 1}, y in 0..{h - 1})"
    for flag, group in (("--point", points), ("--negative", negatives)):
        for x, y in group:
            if not (0 <= x <= w - 1 and 0 <= y <= h - 1):
                raise PromptError(f"{flag} {x:g} {y:g} is outside {where}")
    if box is not None:
        x0, y0, x1, y1 = box
        if not (0 <= x0 <= x1 <= w - 1 and 0 <= y0 <= y1 <= h - 1):
            raise PromptError(f"--box {x0:g} {y0:g} {x1:g} {y1:g} must lie inside {where} with x0 <= x1 and y0 <= y1")
    coords = [*points, *negatives]
    return Prompt(points=np.array(coords, dtype=np.float64).reshape(-1, 2),
                  labels=np.array([1] * len(points) + [0] * len(negatives), dtype=np.int64),
                  box=None if box is None else np.array(box, dtype=np.float64))


def write_mask(path: str | os.PathLike, mask: np.ndarray) -> None:
    """An (H, W) boolean mask as an 8-bit PNG, 255 on the mask."""
    from PIL import Image

    Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255).save(path)


def overlay(image: np.ndarray, mask: np.ndarray, prompt: Prompt | None = None) -> np.ndarray:
    """(H, W, 3) uint8: ``image`` with the mask tinted blue, positive points green, negative red, the box
    green (one pixel wide on the box's edge pixels)."""
    out = image.astype(np.float64).copy()
    out[mask] = 0.55 * out[mask] + 0.45 * np.array([0, 116, 217])
    out = out.round().astype(np.uint8)
    if prompt is None:
        return out
    h, w = mask.shape
    if prompt.box is not None:
        x0, y0, x1, y1 = (int(round(v)) for v in prompt.box)
        out[y0, x0:x1 + 1] = out[y1, x0:x1 + 1] = (46, 204, 64)
        out[y0:y1 + 1, x0] = out[y0:y1 + 1, x1] = (46, 204, 64)
    r = max(1, min(h, w) // 128)
    for (x, y), label in zip(prompt.points, prompt.labels):
        c, rr = int(round(x)), int(round(y))
        out[max(rr - r, 0):rr + r + 1, max(c - r, 0):c + r + 1] = (46, 204, 64) if label else (255, 65, 54)
    return out
