"""Prompts drawn from a ground-truth mask (and its image): boxes, points, combinations.

One coordinate convention everywhere, that of the original slice:

* a point is ``(x, y)`` = (column, row) in pixel units, a float; pixel ``(c, r)`` is the
  unit square centred on ``(c, r)``;
* a box is ``[x_min, y_min, x_max, y_max]`` of inclusive pixel indices, so the tight box of
  a mask has the extreme mask pixels on its edges (the convention of SAM and MedSAM);
* point labels are 1 (foreground) and 0 (background).

Every random choice draws from a :class:`numpy.random.Generator` made by :func:`prompt_rng`
from (seed, slice id, stream name), so a prompt depends on nothing else: not on the device,
the order of slices, or how many other prompts were drawn.

This module imports numpy and scipy only.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Callable, Mapping, Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "EmptyMaskError",
    "PromptError",
    "Prompt",
    "PromptSpec",
    "Target",
    "POINT_STRATEGIES",
    "DEFAULT_PARAMS",
    "MAX_MARGIN",
    "SIGMA_RANGE",
    "box_from_mask",
    "jitter_box",
    "box_center",
    "inner_distance",
    "farthest_inside",
    "background_level",
    "dominant_color",
    "gaussian_log_weights",
    "bilateral_log_weights",
    "normalize_log_weights",
    "prompt_rng",
    "parse_prompts",
    "draw_prompts",
]

#: Default strategy parameters: sigma (px) of the Gaussian strategies (report: sigma^2 = 1e4),
#: sigma_s (px) and sigma_r (grey levels, RGB distance) of the bilateral pair, and the bin
#: width (grey levels) of the colour histogram whose mode is the bilateral reference colour.
#: ``min_distance`` (px) is how far from the tumor a ``background_far`` point must be.
DEFAULT_PARAMS: Mapping[str, float] = {"sigma": 100.0, "sigma_s": 100.0, "sigma_r": 40.0, "bin_width": 16,
                                       "min_distance": 20.0}
#: Largest box margin (px) a prompt name may ask for: larger than any slice's side, so nothing is lost;
#: at draw time a margin is also clipped to the slice's longer side (moves beyond it end at the border).
MAX_MARGIN = 4096
#: Allowed range of the sigmas (px or grey levels): far beyond it the weights are all equal, or all on
#: the nearest pixels, to double precision.
SIGMA_RANGE = (1e-9, 1e9)
#: Largest histogram bin width (grey levels): one bin then holds every value.
MAX_BIN_WIDTH = 256


class EmptyMaskError(ValueError):
    """The mask has no foreground pixel, so no prompt can be drawn from it."""


class PromptError(ValueError):
    """A prompt name or parameter that does not make sense (unknown strategy, sigma <= 0, ...)."""


@lru_cache(maxsize=4096)
def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def prompt_rng(seed: int, slice_id: str, stream: str) -> np.random.Generator:
    """The generator for one random choice: a pure function of (seed, slice id, stream)."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise PromptError(f"seed must be a non-negative integer, got {seed!r}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), _stable_int(slice_id), _stable_int(stream)]))


# ----------------------------------------------------------------------------- boxes


def box_from_mask(mask: np.ndarray) -> np.ndarray:
    """Tight box ``[x_min, y_min, x_max, y_max]`` (int64, inclusive) of a 2-D mask."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise EmptyMaskError("mask is empty: no box or point can be drawn from it")
    return np.array([cols[0], rows[0], cols[-1], rows[-1]], dtype=np.int64)


def box_center(box: np.ndarray) -> np.ndarray:
    """Centre ``(x, y)`` of a box, float64."""
    box = np.asarray(box, dtype=np.float64)
    return np.array([(box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0])


def inner_distance(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance (px) of each pixel of a 2-D mask to the nearest pixel outside it, the image
    border counting as outside; 0 off the mask. Shape (H, W), float64."""
    padded = np.pad(np.asarray(mask, dtype=bool), 1)
    return ndimage.distance_transform_edt(padded)[1:-1, 1:-1]


def background_level(image: np.ndarray) -> int:
    """The grey level that separates a slice's background from the head: Otsu's threshold of the
    mean over channels (uint8 scale). Pixels above it are taken as the brain."""
    grey = np.asarray(image, dtype=np.float64)
    grey = grey.mean(axis=2) if grey.ndim == 3 else grey
    values = np.clip(np.rint(grey), 0, 255).astype(np.int64).ravel()
    p = np.bincount(values, minlength=256) / values.size
    w0 = np.cumsum(p)
    mu = np.cumsum(p * np.arange(256))
    between = np.zeros(256)
    inside = (w0 > 0) & (w0 < 1)
    between[inside] = (mu[-1] * w0[inside] - mu[inside]) ** 2 / (w0[inside] * (1 - w0[inside]))
    return int(np.argmax(between))


def _check_margin(max_margin: int) -> int:
    if isinstance(max_margin, bool) or not isinstance(max_margin, (int, np.integer)):
        raise PromptError(f"box margin must be an integer number of pixels, got {max_margin!r}")
    if abs(int(max_margin)) > MAX_MARGIN:
        raise PromptError(f"box margin must be from -{MAX_MARGIN} to {MAX_MARGIN} px, got {max_margin}")
    return int(max_margin)


def jitter_box(box: np.ndarray, max_margin: int, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Move each side of ``box`` by an independent integer drawn uniformly from ``[0, |max_margin|]``.

    Outward for ``max_margin > 0``, inward for ``max_margin < 0``; the result is clipped to the
    image of ``shape = (H, W)``. Sides that an inward move would make cross both stop at the
    tight box's centre pixel, so the box always keeps at least one pixel. Each side uses one
    uniform draw scaled by the margin, so with the same generator state a larger margin never
    gives a smaller move: a margin slider moves the edges monotonically (until inward edges cross).
    ``|max_margin|`` is at most :data:`MAX_MARGIN` and is clipped to the image's longer side.
    """
    h, w = shape
    m = _check_margin(max_margin)
    m = int(np.clip(m, -max(h, w), max(h, w)))
    box = np.asarray(box, dtype=np.int64)
    u = rng.random(4)
    moves = np.minimum(np.floor(u * (abs(m) + 1)), abs(m)).astype(np.int64)
    if m >= 0:
        x0, y0, x1, y1 = box[0] - moves[0], box[1] - moves[1], box[2] + moves[2], box[3] + moves[3]
        return np.array([max(x0, 0), max(y0, 0), min(x1, w - 1), min(y1, h - 1)], dtype=np.int64)
    x0, y0, x1, y1 = box[0] + moves[0], box[1] + moves[1], box[2] - moves[2], box[3] - moves[3]
    cx, cy = (box[0] + box[2]) // 2, (box[1] + box[3]) // 2
    if x0 > x1:
        x0 = x1 = cx
    if y0 > y1:
        y0 = y1 = cy
    return np.array([x0, y0, x1, y1], dtype=np.int64)


# ----------------------------------------------------------------------------- weights


def normalize_log_weights(log_w: np.ndarray) -> np.ndarray:
    """Probabilities from log-weights, computed relative to the largest weight.

    Weights that would all underflow in linear space (tiny sigma, far pixels) fall back to their
    limit instead of 0/0: the mass goes to the pixels of largest weight. Never returns NaN.
    """
    log_w = np.asarray(log_w, dtype=np.float64)
    if log_w.size == 0 or not np.all(np.isfinite(log_w) | (log_w == -np.inf)) or np.all(log_w == -np.inf):
        raise ValueError("log-weights must be finite or -inf with at least one finite value")
    w = np.exp(log_w - log_w.max())
    return w / w.sum()


def _check_sigma(name: str, sigma: float) -> float:
    sigma = float(sigma)
    low, high = SIGMA_RANGE
    if not low <= sigma <= high:  # also refuses nan and inf
        raise PromptError(f"{name} must be a positive number of pixels or grey levels from {low:g} to {high:g}, "
                          f"got {sigma!r}")
    return sigma


def gaussian_log_weights(coords: np.ndarray, center: np.ndarray, sigma: float) -> np.ndarray:
    """``log exp(-d^2 / (2 sigma^2))`` for (N, 2) XY coordinates, d the distance to ``center``."""
    sigma = _check_sigma("sigma", sigma)
    d2 = np.sum((np.asarray(coords, dtype=np.float64) - center) ** 2, axis=1)
    return -d2 / (2.0 * sigma * sigma)


def dominant_color(colors: np.ndarray, bin_width: int = 16) -> np.ndarray:
    """Most frequent colour of (N, 3) uint8 values: the mean colour of the fullest histogram bin.

    Each channel is quantised into bins of ``bin_width`` grey levels; ties go to the lowest bin.
    """
    colors = np.asarray(colors)
    if colors.ndim != 2 or colors.shape[0] == 0:
        raise ValueError(f"colors must be a non-empty (N, C) array, got shape {colors.shape}")
    bin_width = int(bin_width)
    if bin_width < 1:
        raise PromptError(f"bin_width must be >= 1, got {bin_width}")
    n_bins = 256 // bin_width + 1
    q = colors.astype(np.int64) // bin_width
    flat = np.ravel_multi_index(q.T, (n_bins,) * colors.shape[1])
    bins, counts = np.unique(flat, return_counts=True)
    mode = bins[np.argmax(counts)]
    return colors[flat == mode].astype(np.float64).mean(axis=0)


def bilateral_log_weights(
    coords: np.ndarray,
    colors: np.ndarray,
    center: np.ndarray,
    reference_color: np.ndarray,
    sigma_s: float,
    sigma_r: float,
) -> np.ndarray:
    """Log of ``exp(-|p - c|^2 / 2 sigma_s^2) * exp(-|I(p) - M|^2 / 2 sigma_r^2)`` per pixel."""
    sigma_r = _check_sigma("sigma_r", sigma_r)
    spatial = gaussian_log_weights(coords, center, sigma_s)
    dc2 = np.sum((np.asarray(colors, dtype=np.float64) - reference_color) ** 2, axis=1)
    return spatial - dc2 / (2.0 * sigma_r * sigma_r)


# ----------------------------------------------------------------------------- target


class Target:
    """A slice's ground truth, from which prompts are drawn.

    ``mask``: (H, W) array, non-zero is tumor. ``image``: optional (H, W, 3) uint8, needed by the
    bilateral strategies only. Per-slice quantities (pixel list, tight box) are computed once.
    """

    def __init__(self, mask: np.ndarray, image: np.ndarray | None = None, slice_id: str = "slice"):
        mask = np.asarray(mask)
        if mask.ndim != 2:
            raise ValueError(f"{slice_id}: mask must be 2-D (H, W), got shape {mask.shape}")
        if image is not None:
            image = np.asarray(image)
            if image.shape[:2] != mask.shape:
                raise ValueError(f"{slice_id}: image shape {image.shape} does not match mask shape {mask.shape}")
        self.mask = mask.astype(bool)
        if not self.mask.any():
            raise EmptyMaskError(f"{slice_id}: mask is empty: no prompt can be drawn from it")
        self.image = image
        self.slice_id = slice_id
        self._memo: dict = {}

    def memo(self, key: tuple, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """A per-slice quantity (a weight vector, say) computed once, reused by every seed."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    @property
    def shape(self) -> tuple[int, int]:
        return self.mask.shape

    @cached_property
    def coords(self) -> np.ndarray:
        """(N, 2) int64 XY coordinates of the mask pixels, in row-major order."""
        rows, cols = np.nonzero(self.mask)
        return np.stack([cols, rows], axis=1).astype(np.int64)

    @cached_property
    def box(self) -> np.ndarray:
        return box_from_mask(self.mask)

    @cached_property
    def center(self) -> np.ndarray:
        return box_center(self.box)

    def colors(self) -> np.ndarray:
        """(N, C) image values at the mask pixels."""
        if self.image is None:
            raise ValueError(f"{self.slice_id}: this strategy weighs pixels by colour and needs the image")
        img = self.image if self.image.ndim == 3 else self.image[..., None]
        return img[self.coords[:, 1], self.coords[:, 0]]

    def contains(self, point: np.ndarray) -> bool:
        """Whether the pixel under ``point`` (x, y) is a mask pixel."""
        c, r = (int(math.floor(v + 0.5)) for v in point)
        h, w = self.shape
        return 0 <= r < h and 0 <= c < w and bool(self.mask[r, c])

    def snap(self, point: np.ndarray) -> np.ndarray:
        """``point`` if it lies on the mask, else the nearest mask pixel (ties: first in row-major order)."""
        if self.contains(point):
            return np.asarray(point, dtype=np.float64)
        d2 = np.sum((self.coords - np.asarray(point, dtype=np.float64)) ** 2, axis=1)
        return self.coords[int(np.argmin(d2))].astype(np.float64)


# ----------------------------------------------------------------------------- point strategies


def _sample(coords: np.ndarray, probabilities: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """One pixel of ``coords`` by inverse CDF of a single uniform draw."""
    u = rng.random()
    if probabilities is None:
        idx = min(int(u * len(coords)), len(coords) - 1)
    else:
        cdf = np.cumsum(probabilities)
        idx = min(int(np.searchsorted(cdf, u * cdf[-1], side="right")), len(coords) - 1)
    return coords[idx].astype(np.float64)


def _weighted_mean(coords: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    return probabilities @ coords.astype(np.float64)


def _gaussian_p(t: Target, params: Mapping[str, float]) -> np.ndarray:
    sigma = params["sigma"]
    return t.memo(("gaussian", sigma),
                  lambda: normalize_log_weights(gaussian_log_weights(t.coords, t.center, sigma)))


def _bilateral_p(t: Target, params: Mapping[str, float]) -> np.ndarray:
    key = ("bilateral", params["sigma_s"], params["sigma_r"], params["bin_width"])

    def compute() -> np.ndarray:
        colors = t.colors()
        reference = dominant_color(colors, int(params["bin_width"]))
        log_w = bilateral_log_weights(t.coords, colors, t.center, reference, params["sigma_s"], params["sigma_r"])
        return normalize_log_weights(log_w)

    return t.memo(key, compute)


def _box_pixels(t: Target) -> np.ndarray:
    def compute() -> np.ndarray:
        x0, y0, x1, y1 = t.box
        xs, ys = np.meshgrid(np.arange(x0, x1 + 1), np.arange(y0, y1 + 1))
        return np.stack([xs.ravel(), ys.ravel()], axis=1)

    return t.memo(("box_pixels",), compute)


def _background_corner(t: Target, rng: np.random.Generator) -> np.ndarray:
    """A tight-box corner off the tumor, drawn uniformly from the usable corners: one that is a
    tumor pixel gives way to the pixel diagonally outside it, and one where both are tumor or off
    the image (a tumor at the image's border) is not usable."""
    x0, y0, x1, y1 = t.box
    h, w = t.shape
    usable = []
    for x, y, dx, dy in [(x0, y0, -1, -1), (x1, y0, 1, -1), (x1, y1, 1, 1), (x0, y1, -1, 1)]:
        for candidate in ((x, y), (x + dx, y + dy)):
            point = np.array(candidate, dtype=np.float64)
            if 0 <= candidate[0] < w and 0 <= candidate[1] < h and not t.contains(point):
                usable.append(point)
                break
    if not usable:
        raise EmptyMaskError(f"{t.slice_id}: no background pixel at or beside any corner of the tight box")
    return usable[min(int(rng.random() * len(usable)), len(usable) - 1)]


def farthest_inside(mask: np.ndarray) -> np.ndarray:
    """``(x, y)`` of the pixel of a non-empty 2-D mask farthest from the mask's boundary (the image
    border counts as boundary), float64. Ties, common on straight stretches, go to the tied pixel
    nearest the tied pixels' mean, then to the first in row-major order."""
    distance = inner_distance(mask)
    if distance.max() <= 0:
        raise EmptyMaskError("mask is empty: it has no inside pixel")
    rows, cols = np.nonzero(distance == distance.max())
    d2 = (cols - cols.mean()) ** 2 + (rows - rows.mean()) ** 2
    i = int(np.argmin(d2))
    return np.array([cols[i], rows[i]], dtype=np.float64)


def _farthest_inside(t: Target) -> np.ndarray:
    return t.memo(("inside",), lambda: farthest_inside(t.mask)).copy()


def _far_background_pixels(t: Target, min_distance: float) -> np.ndarray:
    """(N, 2) XY of the brain's non-tumor pixels at least ``min_distance`` px from the mask.

    The brain is the pixels above :func:`background_level`. Where no such pixel is far enough
    (a tumor filling the head), the brain pixels farthest from the mask are used; where the slice
    has no brain pixel off the tumor, the non-tumor pixels farthest from it."""
    def compute() -> np.ndarray:
        if t.image is None:
            raise ValueError(f"{t.slice_id}: background_far finds the brain by image intensity and needs the image")
        distance = ndimage.distance_transform_edt(~t.mask)
        brain = np.asarray(t.image).mean(axis=2) if np.asarray(t.image).ndim == 3 else np.asarray(t.image)
        brain = (brain > background_level(t.image)) & ~t.mask
        candidates = brain & (distance >= min_distance)
        if not candidates.any():
            pool = brain if brain.any() else ~t.mask
            candidates = pool & (distance == distance[pool].max())
        rows, cols = np.nonzero(candidates)
        return np.stack([cols, rows], axis=1).astype(np.int64)

    return t.memo(("background_far", min_distance), compute)


PointFn = Callable[[Target, np.random.Generator, Mapping[str, float]], np.ndarray]


@dataclass(frozen=True)
class PointStrategy:
    """One way to choose a single point. ``fn(target, rng, params) -> (x, y)``."""

    name: str
    fn: PointFn
    label: int = 1
    random: bool = False
    params: tuple[str, ...] = ()
    description: str = ""
    needs_image: bool = False


def _snapped(strategy: PointStrategy) -> PointStrategy:
    return PointStrategy(
        name=f"{strategy.name}_snapped",
        fn=lambda t, rng, p: t.snap(strategy.fn(t, rng, p)),
        label=strategy.label,
        random=strategy.random,
        params=strategy.params,
        needs_image=strategy.needs_image,
        description=f"{strategy.description}, moved to the nearest mask pixel when it falls outside",
    )


_BASE_STRATEGIES = [
    PointStrategy("random_box", lambda t, rng, p: _sample(_box_pixels(t), None, rng), random=True,
                  description="uniform over the tight box's pixels"),
    PointStrategy("random_mask", lambda t, rng, p: _sample(t.coords, None, rng), random=True,
                  description="uniform over the mask pixels"),
    PointStrategy("random_gaussian", lambda t, rng, p: _sample(t.coords, _gaussian_p(t, p), rng), random=True,
                  params=("sigma",), description="a mask pixel weighted by a Gaussian of its distance to the box centre"),
    PointStrategy("center_box", lambda t, rng, p: t.center.copy(), description="the tight box's centre"),
    PointStrategy("center_mask", lambda t, rng, p: t.coords.mean(axis=0), description="the mask centroid"),
    PointStrategy("center_gaussian", lambda t, rng, p: _weighted_mean(t.coords, _gaussian_p(t, p)),
                  params=("sigma",), description="the centroid under the Gaussian weights"),
    PointStrategy("background", lambda t, rng, p: _background_corner(t, rng), label=0, random=True,
                  description="a tight-box corner, labelled background"),
    PointStrategy("random_bilateral", lambda t, rng, p: _sample(t.coords, _bilateral_p(t, p), rng), random=True,
                  params=("sigma_s", "sigma_r", "bin_width"), needs_image=True,
                  description="a mask pixel weighted by distance to the box centre and colour distance to the mask's mode"),
    PointStrategy("center_bilateral", lambda t, rng, p: _weighted_mean(t.coords, _bilateral_p(t, p)),
                  params=("sigma_s", "sigma_r", "bin_width"), needs_image=True,
                  description="the centroid under the bilateral weights"),
    PointStrategy("center_inside", lambda t, rng, p: _farthest_inside(t),
                  description="the mask pixel farthest from the mask's boundary (the first click of E5)"),
    PointStrategy("background_far",
                  lambda t, rng, p: _sample(_far_background_pixels(t, p["min_distance"]), None, rng),
                  label=0, random=True, params=("min_distance",), needs_image=True,
                  description="a brain pixel at least min_distance px from the tumor, labelled background"),
]

#: Every single-point strategy by name, the centre strategies with their ``_snapped`` variant.
POINT_STRATEGIES: dict[str, PointStrategy] = {s.name: s for s in _BASE_STRATEGIES}
POINT_STRATEGIES.update({
    f"{name}_snapped": _snapped(POINT_STRATEGIES[name])
    for name in ("center_box", "center_mask", "center_gaussian", "center_bilateral")
})


# ----------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class Prompt:
    """A drawn prompt in slice pixel coordinates.

    ``points``: (N, 2) float64 XY; ``labels``: (N,) int64; ``box``: (4,) float64 XYXY or None.
    ``off_target``: how many points do not lie where their label says (a foreground point
    off the mask, a background point on it).
    """

    points: np.ndarray
    labels: np.ndarray
    box: np.ndarray | None = None
    off_target: int = 0

    @property
    def structure(self) -> tuple[int, bool]:
        """(number of points, has box): prompts of equal structure batch together."""
        return (len(self.labels), self.box is not None)


@dataclass(frozen=True)
class _Component:
    kind: str  # "box" or a point strategy name
    margin: int = 0
    params: Mapping[str, float] = field(default_factory=dict)

    @property
    def random(self) -> bool:
        return self.margin != 0 if self.kind == "box" else POINT_STRATEGIES[self.kind].random

    def __str__(self) -> str:
        if self.kind == "box":
            return f"box:{self.margin}"
        own = {k: v for k, v in self.params.items() if v != DEFAULT_PARAMS[k]}
        # positional and shortest-exact: the name parses back to the same numbers
        return self.kind + (":" + ",".join(f"{k}={np.format_float_positional(v, trim='-')}"
                                           for k, v in sorted(own.items())) if own else "")


@dataclass(frozen=True)
class PromptSpec:
    """A named prompt: one or more components joined by ``+`` (at most one box).

    Grammar: ``box:M`` (box with max margin M px), a point strategy name, or a strategy with
    parameters ``name:key=value,key=value``; e.g. ``box:0``, ``center_gaussian:sigma=50``,
    ``center_mask+background``, ``box:10+random_mask``.
    """

    components: tuple[_Component, ...]

    @property
    def name(self) -> str:
        return "+".join(str(c) for c in self.components)

    def __str__(self) -> str:
        return self.name

    @property
    def random(self) -> bool:
        """Whether the prompt changes with the seed (if not, one seed suffices)."""
        return any(c.random for c in self.components)

    @property
    def multimask(self) -> bool:
        """SAM's rule: a lone point is ambiguous, so ask for three masks and keep the best-scored."""
        return len(self.components) == 1 and self.components[0].kind != "box"

    @property
    def needs_image(self) -> bool:
        return any(POINT_STRATEGIES[c.kind].needs_image for c in self.components if c.kind != "box")

    def draw(self, target: Target, seed: int, slice_id: str | None = None) -> Prompt:
        """Draw this prompt for one slice; random parts use ``prompt_rng(seed, slice_id, part)``."""
        slice_id = target.slice_id if slice_id is None else slice_id
        points, labels, box, off = [], [], None, 0
        for c in self.components:
            if c.kind == "box":
                rng = prompt_rng(seed, slice_id, "box")
                box = jitter_box(target.box, c.margin, rng, target.shape).astype(np.float64)
                continue
            strategy = POINT_STRATEGIES[c.kind]
            rng = prompt_rng(seed, slice_id, strategy.name.removesuffix("_snapped"))
            params = {**DEFAULT_PARAMS, **c.params}
            point = np.asarray(strategy.fn(target, rng, params), dtype=np.float64)
            off += int(target.contains(point) != bool(strategy.label))
            points.append(point)
            labels.append(strategy.label)
        return Prompt(
            points=np.array(points, dtype=np.float64).reshape(-1, 2),
            labels=np.array(labels, dtype=np.int64),
            box=box,
            off_target=off,
        )

    @classmethod
    def parse(cls, text: str) -> "PromptSpec":
        parts = [p.strip() for p in text.split("+")]
        if not text.strip() or any(not p for p in parts):
            raise PromptError(f"empty prompt in {text!r}")
        components = tuple(_parse_component(p, text) for p in parts)
        if sum(c.kind == "box" for c in components) > 1:
            raise PromptError(f"prompt {text!r} has more than one box")
        return cls(components)


def _parse_component(part: str, whole: str) -> _Component:
    name, _, args = part.partition(":")
    if name == "box":
        try:
            margin = int(args)
        except ValueError:
            raise PromptError(f"in prompt {whole!r}: box needs an integer max margin, e.g. box:0 or box:-20, got {part!r}") from None
        if abs(margin) > MAX_MARGIN:
            raise PromptError(f"in prompt {whole!r}: the box margin must be from -{MAX_MARGIN} to {MAX_MARGIN} px "
                              f"(a margin beyond the slice's side changes nothing), got {args.strip()[:30]}")
        return _Component("box", margin=margin)
    if name not in POINT_STRATEGIES:
        known = ", ".join(["box:M", *POINT_STRATEGIES])
        raise PromptError(f"unknown prompt {name!r} in {whole!r}; known: {known}")
    allowed = POINT_STRATEGIES[name].params
    params: dict[str, float] = {}
    for item in filter(None, args.split(",")):
        key, eq, value = item.partition("=")
        if not eq or key not in allowed:
            raise PromptError(f"in prompt {whole!r}: {name} takes {', '.join(allowed) or 'no parameters'}, got {item!r}")
        try:
            params[key] = float(value)
        except ValueError:
            raise PromptError(f"in prompt {whole!r}: {key} must be a number, got {value!r}") from None
        if key == "bin_width":
            if not 1 <= params[key] <= MAX_BIN_WIDTH or params[key] != int(params[key]):
                raise PromptError(f"in prompt {whole!r}: bin_width must be a whole number from 1 to {MAX_BIN_WIDTH}")
        elif key == "min_distance":
            if not 0 <= params[key] <= 1024:
                raise PromptError(f"in prompt {whole!r}: min_distance must be between 0 and 1024 px")
        else:
            _check_sigma(key, params[key])
    return _Component(name, params=params)


def parse_prompts(texts: list[str] | tuple[str, ...]) -> list[PromptSpec]:
    """Parse prompt names, refusing duplicates."""
    specs = [PromptSpec.parse(t) for t in texts]
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise PromptError(f"prompt given twice: {', '.join(dupes)}")
    return specs


def draw_prompts(mask: np.ndarray, image: np.ndarray | None, slice_id: str,
                 pairs: Sequence[tuple[PromptSpec, int]]) -> list[Prompt]:
    """Draw each (prompt, seed) of ``pairs`` on one slice, in order.

    Arrays and specs in, prompts out: also the unit of work of a process pool, which then needs
    numpy only.
    """
    target = Target(mask, image, slice_id)
    return [spec.draw(target, seed) for spec, seed in pairs]
