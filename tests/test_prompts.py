"""Prompt strategies on small hand-made masks whose expected prompts are worked out by hand.

The L mask below is not symmetric in x and y, so a swapped coordinate fails these tests.

      x: 0123456789012345
    y 0  ................
      1  ................
      2  ...########.....     bar 1: rows 2-4, columns 3-10 (24 px)
      3  ...########.....
      4  ...########.....
      5  ...###..........     bar 2: rows 5-8, columns 3-5 (12 px)
      6  ...###..........
      7  ...###..........
      8  ...###..........
      9  ................
     10  ................
     11  ................
"""
import math
import re

import numpy as np
import pytest

from samhw.prompts import (
    DEFAULT_PARAMS,
    MAX_MARGIN,
    POINT_STRATEGIES,
    SIGMA_RANGE,
    EmptyMaskError,
    PromptError,
    PromptSpec,
    Target,
    background_level,
    box_from_mask,
    dominant_color,
    gaussian_log_weights,
    inner_distance,
    jitter_box,
    normalize_log_weights,
    parse_prompts,
    prompt_rng,
)

H, W = 12, 16
BAR1 = [(x, y) for y in range(2, 5) for x in range(3, 11)]
BAR2 = [(x, y) for y in range(5, 9) for x in range(3, 6)]
L_BOX = [3, 2, 10, 8]
L_CENTROID = ((24 * 6.5 + 12 * 4.0) / 36, (24 * 3.0 + 12 * 6.5) / 36)  # (5.667, 4.167)


def l_mask() -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    for x, y in BAR1 + BAR2:
        mask[y, x] = True
    return mask


def l_image() -> np.ndarray:
    """Bar 1 is one colour (the mask's most frequent), bar 2 another."""
    image = np.zeros((H, W, 3), dtype=np.uint8)
    for x, y in BAR1:
        image[y, x] = (200, 120, 40)
    for x, y in BAR2:
        image[y, x] = (20, 60, 220)
    return image


def draw(name: str, seed: int = 0, mask=None, image=None):
    target = Target(l_mask() if mask is None else mask, l_image() if image is None else image, "L")
    return PromptSpec.parse(name).draw(target, seed)


def points(name: str, seeds=range(200), **kw) -> set[tuple[float, float]]:
    return {tuple(draw(name, s, **kw).points[0]) for s in seeds}


# ----------------------------------------------------------------------------- boxes


def test_tight_box_is_xyxy():
    assert box_from_mask(l_mask()).tolist() == L_BOX


def test_empty_mask_is_refused():
    with pytest.raises(EmptyMaskError):
        box_from_mask(np.zeros((4, 5), bool))
    with pytest.raises(EmptyMaskError):
        Target(np.zeros((4, 5), bool))


def test_margin_zero_is_the_tight_box():
    assert draw("box:0").box.tolist() == L_BOX
    assert not PromptSpec.parse("box:0").random


@pytest.mark.parametrize("margin", [1, 3, 7])
def test_positive_margin_grows_each_side_uniformly(margin):
    big = np.zeros((40, 48), bool)
    big[20:20 + H, 20:20 + W] = l_mask()  # far from the border: no clipping
    box = [23, 22, 30, 28]
    moves = []
    for seed in range(400):
        x0, y0, x1, y1 = draw(f"box:{margin}", seed, mask=big, image=np.zeros((40, 48, 3), np.uint8)).box
        moves.append((box[0] - x0, box[1] - y0, x1 - box[2], y1 - box[3]))
    moves = np.array(moves)
    for side in range(4):  # every value 0..M occurs on every side, about equally often
        counts = np.bincount(moves[:, side].astype(int), minlength=margin + 1)
        assert len(counts) == margin + 1 and counts.min() > 400 / (margin + 1) / 2


def test_positive_margin_is_clipped_to_the_image():
    for seed in range(50):
        x0, y0, x1, y1 = draw("box:40", seed).box
        assert x0 >= 0 and y0 >= 0 and x1 <= W - 1 and y1 <= H - 1


def test_negative_margin_shrinks_inside_the_tight_box():
    seen_shrink = False
    for seed in range(300):
        x0, y0, x1, y1 = draw("box:-3", seed).box
        assert L_BOX[0] <= x0 <= x1 <= L_BOX[2] and L_BOX[1] <= y0 <= y1 <= L_BOX[3]
        seen_shrink |= (x0, y0, x1, y1) != tuple(L_BOX)
    assert seen_shrink


def test_margin_that_would_invert_collapses_to_the_centre_pixel():
    crossed = 0
    for seed in range(100):
        x0, y0, x1, y1 = draw("box:-6", seed).box
        assert L_BOX[0] <= x0 <= x1 <= L_BOX[2] and L_BOX[1] <= y0 <= y1 <= L_BOX[3]
        u = prompt_rng(seed, "L", "box").random(4)  # the same draws jitter_box makes
        left, top, right, bottom = np.floor(u * 7).astype(int)
        if 3 + left > 10 - right:
            crossed += 1
            assert x0 == x1 == (3 + 10) // 2
        else:
            assert (x0, x1) == (3 + left, 10 - right)
        if 2 + top > 8 - bottom:
            assert y0 == y1 == (2 + 8) // 2
    assert crossed > 5


def test_larger_margin_never_gives_a_smaller_box_for_the_same_seed():
    shape = (H, W)
    for seed in range(30):
        boxes = [jitter_box(np.array(L_BOX), m, prompt_rng(seed, "L", "box"), shape) for m in range(-2, 9)]
        for small, large in zip(boxes, boxes[1:]):
            assert large[0] <= small[0] and large[1] <= small[1] and large[2] >= small[2] and large[3] >= small[3]


def test_margin_must_be_an_integer():
    for bad in ["box:1.5", "box:x", "box:"]:
        with pytest.raises(PromptError, match="integer"):
            PromptSpec.parse(bad)


def test_margins_beyond_the_bound_are_refused_and_large_ones_clipped_to_the_image():
    for bad in ["box:99999999999999999999999", "box:-99999999999999999999999", f"box:{MAX_MARGIN + 1}"]:
        with pytest.raises(PromptError, match=f"from -{MAX_MARGIN} to {MAX_MARGIN} px"):
            PromptSpec.parse(bad)
    with pytest.raises(PromptError, match="box margin"):  # callers of jitter_box too, before any arithmetic
        jitter_box(np.array(L_BOX), 2**63 - 1, prompt_rng(0, "L", "box"), (H, W))
    # the bound itself is allowed; a margin beyond the slice's side is drawn as that side: every box of
    # box:4096 is a box of box:16 (W = 16, the longer side), seed for seed, and stays on the image
    for seed in range(20):
        wide = draw(f"box:{MAX_MARGIN}", seed).box
        assert np.array_equal(wide, draw("box:16", seed).box)
        assert 0 <= wide[0] <= wide[2] <= W - 1 and 0 <= wide[1] <= wide[3] <= H - 1
        assert np.array_equal(draw(f"box:-{MAX_MARGIN}", seed).box, draw("box:-16", seed).box)


def test_margins_within_the_image_draw_as_before():
    # the draw-time clip changes nothing up to the slice's side: the moves are floor(u * (M + 1))
    for seed in range(20):
        u = prompt_rng(seed, "L", "box").random(4)
        for m in (1, 7, 15):
            left, top, right, bottom = np.floor(u * (m + 1)).astype(int)
            expected = [max(3 - left, 0), max(2 - top, 0), min(10 + right, W - 1), min(8 + bottom, H - 1)]
            assert draw(f"box:{m}", seed).box.tolist() == expected


# ----------------------------------------------------------------------------- point strategies


def test_random_box_covers_the_box_including_non_tumor_pixels():
    got = points("random_box", range(2000))
    box_pixels = {(x, y) for x in range(3, 11) for y in range(2, 9)}
    assert got <= {(float(x), float(y)) for x, y in box_pixels}
    assert len(got) == len(box_pixels)
    assert any(not l_mask()[int(y), int(x)] for x, y in got)


def test_random_mask_is_uniform_over_mask_pixels():
    draws = [tuple(draw("random_mask", s).points[0]) for s in range(3600)]
    assert set(draws) == {(float(x), float(y)) for x, y in BAR1 + BAR2}
    counts = np.array([draws.count((float(x), float(y))) for x, y in BAR1 + BAR2])
    assert counts.min() > 50 and counts.max() < 160  # 100 expected each


def test_random_gaussian_wide_sigma_is_uniform_and_tiny_sigma_picks_the_pixels_nearest_the_box_centre():
    assert len(points("random_gaussian:sigma=1e6", range(2000))) == 36
    # box centre (6.5, 5.0): nearest mask pixels are (6, 4) and (7, 4), at distance sqrt(1.25)
    assert points("random_gaussian:sigma=0.3", range(200)) == {(6.0, 4.0), (7.0, 4.0)}


def test_gaussian_weights_that_underflow_fall_back_without_nan():
    assert points("random_gaussian:sigma=1e-3", range(50)) == {(6.0, 4.0), (7.0, 4.0)}
    point = draw("center_gaussian:sigma=1e-3").points[0]
    assert np.all(np.isfinite(point)) and point.tolist() == [6.5, 4.0]
    # the project's weights themselves: exp(-d^2 / 2 sigma^2) underflows to 0 for every pixel (0/0 if
    # normalised naively); in log space the two nearest pixels share the mass and nothing is NaN
    target = Target(l_mask(), None, "L")
    p = normalize_log_weights(gaussian_log_weights(target.coords, target.center, 1e-3))
    assert np.all(np.isfinite(p)) and p.sum() == pytest.approx(1.0)
    assert {tuple(c): float(w) for c, w in zip(target.coords.tolist(), p) if w > 0} == {(6, 4): 0.5, (7, 4): 0.5}


def test_center_box_is_the_box_centre_and_lies_off_this_mask():
    prompt = draw("center_box")
    assert prompt.points[0].tolist() == [6.5, 5.0]
    assert prompt.labels.tolist() == [1]
    assert prompt.off_target == 1  # pixel (7, 5) is not tumor


def test_center_mask_is_the_centroid():
    prompt = draw("center_mask")
    np.testing.assert_allclose(prompt.points[0], L_CENTROID)
    assert prompt.off_target == 0


def test_center_gaussian_between_box_centre_and_centroid():
    wide = draw("center_gaussian:sigma=1e6").points[0]
    np.testing.assert_allclose(wide, L_CENTROID, atol=1e-6)
    default = draw("center_gaussian").points[0]  # sigma 100 on a 16 px mask: close to the centroid
    np.testing.assert_allclose(default, L_CENTROID, atol=0.01)
    mid = draw("center_gaussian:sigma=2").points[0]
    assert L_CENTROID[0] < mid[0] < 6.5 and L_CENTROID[1] < mid[1] < 5.0


def test_snapped_centre_moves_to_the_nearest_mask_pixel_only_when_off_the_mask():
    snapped = draw("center_box_snapped")
    assert snapped.points[0].tolist() == [6.0, 4.0]  # ties (6, 4) and (7, 4): first in row-major order
    assert snapped.off_target == 0
    np.testing.assert_allclose(draw("center_mask_snapped").points[0], L_CENTROID)


def test_background_is_a_box_corner_off_the_tumor():
    got = points("background", range(300))
    # corners (3, 2), (10, 2), (3, 8) are tumor pixels: their outward diagonal neighbours are used instead
    assert got == {(10.0, 8.0), (2.0, 1.0), (11.0, 1.0), (2.0, 9.0)}
    prompt = draw("background")
    assert prompt.labels.tolist() == [0] and prompt.off_target == 0


def test_one_pixel_mask_in_the_image_corner():
    mask = np.zeros((H, W), bool)
    mask[0, 0] = True
    image = np.zeros((H, W, 3), np.uint8)
    for name in ["random_box", "random_mask", "random_gaussian", "center_box", "center_mask", "center_gaussian",
                 "random_bilateral", "center_bilateral"]:
        assert draw(name, mask=mask, image=image).points[0].tolist() == [0.0, 0.0], name
    assert points("background", range(50), mask=mask, image=image) == {(1.0, 1.0)}
    assert draw("box:-20", mask=mask, image=image).box.tolist() == [0, 0, 0, 0]
    assert draw("box:20", 3, mask=mask, image=image).box[:2].tolist() == [0, 0]


def test_mask_on_the_right_and_bottom_border():
    mask = np.zeros((H, W), bool)
    mask[H - 3:, W - 2:] = True
    for seed in range(20):
        x0, y0, x1, y1 = draw("box:10", seed, mask=mask).box
        assert x1 == W - 1 and y1 == H - 1
        p = draw("background", seed, mask=mask)
        assert p.off_target == 0


def test_background_draws_uniformly_from_the_usable_corners():
    mask = np.zeros((H, W), bool)
    mask[H - 2:, 3:9] = True  # along the bottom border: its lower corners have no pixel below them
    got = [tuple(draw("background", seed, mask=mask).points[0]) for seed in range(2000)]
    upper_left = (2.0, H - 3.0)
    assert set(got) == {upper_left, (9.0, H - 3.0)}
    assert 0.45 < got.count(upper_left) / len(got) < 0.55


# ----------------------------------------------------------------------------- bilateral


def test_dominant_color_is_the_mean_of_the_fullest_bin():
    colors = np.array([[200, 120, 40]] * 5 + [[203, 121, 41]] + [[20, 60, 220]] * 4, dtype=np.uint8)
    np.testing.assert_allclose(dominant_color(colors, 16), [200.5, 120.1666667, 40.1666667])
    np.testing.assert_allclose(dominant_color(colors, 1), [200, 120, 40])


def test_bilateral_prefers_the_dominant_colour():
    got = points("random_bilateral:sigma_r=10", range(400))
    assert got == {(float(x), float(y)) for x, y in BAR1}  # bar 2's colour is far from the mode
    centre = draw("center_bilateral:sigma_r=10,sigma_s=1e6").points[0]
    np.testing.assert_allclose(centre, [6.5, 3.0], atol=1e-9)  # centroid of bar 1


def test_bilateral_with_wide_colour_sigma_is_the_gaussian_strategy():
    a = draw("center_bilateral:sigma_r=1e9,sigma_s=2").points[0]
    b = draw("center_gaussian:sigma=2").points[0]
    np.testing.assert_allclose(a, b, atol=1e-9)


def test_bilateral_needs_the_image():
    target = Target(l_mask(), None, "L")
    with pytest.raises(ValueError, match="needs the image"):
        PromptSpec.parse("center_bilateral").draw(target, 0)


def test_bilateral_weights_that_underflow_do_not_produce_nan():
    point = draw("center_bilateral:sigma_r=1e-3,sigma_s=1e-3").points[0]
    assert np.all(np.isfinite(point))
    assert tuple(point) in {(6.0, 4.0), (7.0, 4.0), (6.5, 4.0)}


def test_normalize_log_weights():
    p = normalize_log_weights(np.array([-1e6, -1e6 - math.log(3)]))
    np.testing.assert_allclose(p, [0.75, 0.25])
    with pytest.raises(ValueError):
        normalize_log_weights(np.array([np.nan, 0.0]))


# ----------------------------------------------------------------------------- specs, combinations, determinism


def test_every_strategy_is_registered_with_its_label():
    for name in ["random_box", "random_mask", "random_gaussian", "center_box", "center_mask", "center_gaussian",
                 "background", "random_bilateral", "center_bilateral"]:
        assert name in POINT_STRATEGIES
    assert POINT_STRATEGIES["background"].label == 0
    assert {n for n, s in POINT_STRATEGIES.items() if not s.random} == {
        "center_box", "center_mask", "center_gaussian", "center_bilateral", "center_box_snapped",
        "center_mask_snapped", "center_gaussian_snapped", "center_bilateral_snapped", "center_inside"}
    assert POINT_STRATEGIES["background_far"].label == 0 and POINT_STRATEGIES["background_far"].random


def test_combination_reuses_the_single_prompts_draws():
    combo = draw("random_mask+background", 7)
    assert combo.labels.tolist() == [1, 0]
    assert combo.points[0].tolist() == draw("random_mask", 7).points[0].tolist()
    assert combo.points[1].tolist() == draw("background", 7).points[0].tolist()
    boxed = draw("box:10+center_mask", 3)
    assert boxed.box.tolist() == draw("box:10", 3).box.tolist()
    assert boxed.structure == (1, True)
    assert not PromptSpec.parse("box:0+center_mask").multimask
    assert PromptSpec.parse("center_mask").multimask


def test_same_seed_same_prompt_whatever_else_was_drawn():
    first = draw("random_gaussian", 11).points.tolist()
    for s in range(5):
        draw("random_mask", s)
        draw("box:20", s)
    assert draw("random_gaussian", 11).points.tolist() == first
    assert len(points("random_mask", range(20))) > 5  # seeds do change it
    a = PromptSpec.parse("random_mask").draw(Target(l_mask(), None, "slice_a"), 0).points
    b = PromptSpec.parse("random_mask").draw(Target(l_mask(), None, "slice_b"), 0).points
    c = [PromptSpec.parse("random_mask").draw(Target(l_mask(), None, f"slice_{i}"), 0).points[0].tolist()
         for i in range(20)]
    # the slice id is part of the seed: same seed, other slices, other points (fixed draws: (3, 5) and (3, 3))
    assert a.tolist() == [[3.0, 5.0]] and b.tolist() == [[3.0, 3.0]]
    assert len({tuple(p) for p in c}) > 5
    assert PromptSpec.parse("random_mask").draw(Target(l_mask(), None, "slice_a"), 0).points.tolist() == a.tolist()


def test_parse_names_and_errors():
    assert PromptSpec.parse("center_gaussian:sigma=100").name == "center_gaussian"  # the default is left out
    assert PromptSpec.parse("center_gaussian:sigma=50").name == "center_gaussian:sigma=50"
    assert PromptSpec.parse(" box:-20 + center_mask ").name == "box:-20+center_mask"
    # a name is exact and parses back to itself: no rounding, no exponent whose "+" would split it
    for sigma in (12.345678, 1e6, 2.5e-7, 150.000012):
        name = PromptSpec.parse(f"random_gaussian:sigma={sigma!r}").name
        assert PromptSpec.parse(name).name == name and float(name.split("=")[1]) == sigma
    assert len(parse_prompts(["random_gaussian:sigma=150.00001", "random_gaussian:sigma=150.000012"])) == 2
    assert DEFAULT_PARAMS["sigma"] == 100.0  # report: sigma^2 = 1e4
    for bad, message in [("nope", "unknown prompt"), ("center_mask:sigma=3", "takes no parameters"),
                         ("random_gaussian:sigma=-1", "positive"), ("random_gaussian:sigma=0", "positive"),
                         ("random_gaussian:sigma=nan", "positive"), ("box:0+box:10", "more than one box"),
                         ("center_bilateral:bin_width=0", "bin_width"), ("", "empty")]:
        with pytest.raises(PromptError, match=message):
            PromptSpec.parse(bad)
    with pytest.raises(PromptError, match="given twice"):
        parse_prompts(["box:0", "box:0"])


def test_sigmas_outside_their_range_are_refused_saying_the_range():
    low, high = SIGMA_RANGE
    for bad in ["random_gaussian:sigma=1e300", "random_gaussian:sigma=inf", "center_gaussian:sigma=-inf",
                "random_gaussian:sigma=nan", "center_gaussian:sigma=1e-300", "random_bilateral:sigma_r=inf",
                "center_bilateral:sigma_s=1e10"]:
        with pytest.raises(PromptError, match=re.escape(f"from {low:g} to {high:g}")):
            PromptSpec.parse(bad)
    for good in [low, high, 100.0]:
        assert PromptSpec.parse(f"random_gaussian:sigma={good!r}").components[0].params.get("sigma", 100.0) == good
    with pytest.raises(PromptError, match="from 1 to 256"):
        PromptSpec.parse("center_bilateral:bin_width=1e300")
    assert len(PromptSpec.parse(f"random_gaussian:sigma={high!r}").name) < 40
    with pytest.raises(PromptError, match="seed"):
        prompt_rng(-1, "x", "y")


# ----------------------------------------------------------------------------- E5 first click, E6 far negative


def test_center_inside_is_the_mask_pixel_farthest_from_the_boundary():
    # the L's bars are 3 pixels thick: the pixels at distance 2 from a non-mask pixel are the bars'
    # middle lines, (4..9, 3) and (4, 4..7); their mean is (5.5, 4.0), and of the two tied nearest
    # to it, (5, 3) and (6, 3), the first in row-major order wins
    distance = inner_distance(l_mask())
    assert distance.max() == 2.0 and distance[l_mask() == 0].max() == 0.0
    assert distance[3, 9] == 2.0 and distance[7, 4] == 2.0 and distance[4, 7] == 1.0
    prompt = draw("center_inside")
    assert prompt.points.tolist() == [[5.0, 3.0]] and prompt.labels.tolist() == [1] and prompt.off_target == 0
    # an asymmetric block: 3 rows by 7 columns at rows 1-3, columns 8-14 -> its centre (x=11, y=2)
    block = np.zeros((H, W), bool)
    block[1:4, 8:15] = True
    assert draw("center_inside", mask=block).points.tolist() == [[11.0, 2.0]]


def test_center_inside_counts_the_image_border_as_boundary():
    mask = np.zeros((H, W), bool)
    mask[:, :6] = True  # the left six columns: without the border rule the farthest pixel would sit at x=0
    assert draw("center_inside", mask=mask).points[0].tolist() == [2.0, 5.0]


def head_image(bright: tuple[slice, slice]) -> np.ndarray:
    image = np.full((H, W, 3), 3, np.uint8)
    image[bright] = 150
    return image


def test_background_level_separates_a_dark_background_from_the_head():
    image = head_image((slice(0, 12), slice(0, 10)))
    level = background_level(image)
    assert 3 <= level < 150
    assert ((image.mean(axis=2) > level) == (np.arange(W)[None, :] < 10)).all()


def test_background_far_is_a_brain_pixel_far_from_the_tumor():
    mask = np.zeros((H, W), bool)
    mask[1:3, 1:3] = True  # tumor in the upper left of a head filling columns 0-9
    image = head_image((slice(0, 12), slice(0, 10)))
    got = [tuple(draw("background_far:min_distance=6", seed, mask=mask, image=image).points[0]) for seed in range(400)]
    for x, y in got:
        assert x < 10, "only head pixels (the bright columns)"
        assert min(math.hypot(x - c, y - r) for r, c in zip(*np.nonzero(mask))) >= 6
    expected = {(float(c), float(r)) for r in range(H) for c in range(10)
                if min(math.hypot(c - cc, r - rr) for rr, cc in zip(*np.nonzero(mask))) >= 6}
    assert set(got) == expected  # uniform over all of them: every candidate is drawn
    prompt = draw("background_far:min_distance=6", mask=mask, image=image)
    assert prompt.labels.tolist() == [0] and prompt.off_target == 0


def test_background_far_falls_back_to_the_farthest_brain_pixels():
    mask = np.zeros((H, W), bool)
    mask[:, :8] = True
    image = head_image((slice(0, 12), slice(0, 11)))  # head columns 0-10: none of them 20 px from the tumor
    got = points("background_far", range(100), mask=mask, image=image)
    assert got == {(10.0, float(y)) for y in range(H)}


def test_background_far_needs_the_image_and_names_a_distance():
    with pytest.raises(ValueError, match="needs the image"):
        PromptSpec.parse("background_far").draw(Target(l_mask(), None, "L"), 0)
    assert PromptSpec.parse("background_far").needs_image and not PromptSpec.parse("background").needs_image
    assert PromptSpec.parse("background_far:min_distance=20").name == "background_far"
    with pytest.raises(PromptError, match="min_distance"):
        PromptSpec.parse("background_far:min_distance=-1")
