"""samhw.Predictor against segment_anything.SamPredictor, the fast path against the plain one, and
against the study's rows.

SAM ViT-B's encoder at 1024x1024 takes about a minute on a busy 2-core CPU, so the ViT-B tests
encode once: a memo around the (shared) encoder returns the first output when it is called again
with a bit-identical input, and counts the calls, so that SamPredictor's and samhw's inputs are
checked equal bit for bit rather than assumed.
"""
import numpy as np
import pytest
import torch
from segment_anything import SamPredictor, sam_model_registry
from segment_anything.modeling import Sam

from samhw import Predictor
from samhw.cache import EmbeddingCache
from samhw.evaluate import evaluate
from samhw.models import build_model, load_model, single_thread
from samhw.predictor import as_slice_image
from samhw.prompts import Prompt, Target, parse_prompts


class MemoEncoder(torch.nn.Module):
    """An image encoder that computes once per distinct input (compared bit for bit)."""

    def __init__(self, encoder: torch.nn.Module):
        super().__init__()
        self.encoder = encoder
        self.img_size = encoder.img_size
        self.inputs: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor] = []
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        for seen, out in zip(self.inputs, self.outputs):
            if seen.shape == x.shape and torch.equal(seen, x):
                return out.clone()
        self.inputs.append(x.clone())
        self.outputs.append(self.encoder(x))
        return self.outputs[-1].clone()


def blob_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A bright asymmetric blob (an L shape) on a ramp, with noise: x and y are told apart."""
    rng = np.random.default_rng(seed)
    image = np.zeros((h, w, 3), np.float64)
    image[..., 0] = np.linspace(0, 80, w)[None, :]
    image[..., 1] = np.linspace(0, 60, h)[:, None]
    image[h // 4:h // 2, w // 5:w // 2] += 150
    image[h // 4:3 * h // 4, w // 5:w // 3] += 150
    image += rng.normal(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def prompt_cases(h: int, w: int) -> dict[str, dict]:
    """SAM-format prompts for an (h, w) image: one point, two points, a box, a point and a box."""
    return {
        "point": dict(point_coords=np.array([[w * 0.3, h * 0.4]]), point_labels=np.array([1])),
        "two points": dict(point_coords=np.array([[w * 0.3, h * 0.4], [w * 0.8, h * 0.85]]),
                           point_labels=np.array([1, 0])),
        "box": dict(box=np.array([w * 0.15, h * 0.2, w * 0.55, h * 0.8])),
        "point and box": dict(point_coords=np.array([[w * 0.25, h * 0.6]]), point_labels=np.array([1]),
                              box=np.array([w * 0.15, h * 0.2, w * 0.55, h * 0.8])),
    }


@pytest.fixture(scope="module")
def vit_b_pair():
    """A seeded random-weight SAM ViT-B from segment_anything's registry (no checkpoint), its
    SamPredictor, and samhw's vit_b with the same weights and the same (memoised) encoder."""
    torch.manual_seed(0)
    sam = sam_model_registry["vit_b"](checkpoint=None).eval()
    model = build_model("vit_b", plain=True)  # the torch encoder (no ONNX export of a random ViT-B)
    model.load_state_dict(sam.state_dict(), strict=True)
    memo = MemoEncoder(sam.image_encoder)
    sam.image_encoder = memo
    model.image_encoder = memo
    return sam, SamPredictor(sam), model, memo


def sam_predict(sam_predictor: SamPredictor, **kwargs):
    """SamPredictor.predict with one CPU thread, as samhw decodes (a convolution's bits, e.g. of
    the mask input's, depend on the thread count)."""
    with single_thread(torch.device("cpu")):
        return sam_predictor.predict(**kwargs)


def assert_same_outputs(ours, theirs, exact: bool = True):
    """(masks, iou, low_res) of a Predictor against SamPredictor's."""
    masks, scores, low = ours
    sam_masks, sam_scores, sam_low = theirs
    assert masks.shape == sam_masks.shape and masks.dtype == bool
    assert scores.shape == sam_scores.shape and low.shape == sam_low.shape
    if exact:
        np.testing.assert_array_equal(masks, sam_masks)
        np.testing.assert_array_equal(scores, sam_scores)
        np.testing.assert_array_equal(low, sam_low)
    else:
        np.testing.assert_allclose(low, sam_low, atol=5e-4, rtol=1e-4)
        np.testing.assert_allclose(scores, sam_scores, atol=1e-5, rtol=1e-5)
        assert (masks == sam_masks).mean() >= 0.999


# ----------------------------------------------------------------------------- SAM ViT-B (1024)


def test_vit_b_predictor_equals_sam_predictor_from_the_image(vit_b_pair):
    """A non-square image of long side 1024 (SAM's resize is then the identity): SAM's whole
    pipeline, preprocessing included, against samhw's, for every prompt kind and both outputs."""
    sam, sam_predictor, model, memo = vit_b_pair
    h, w = 640, 1024
    image = blob_image(h, w)
    sam_predictor.set_image(image)
    calls = memo.calls
    plain = Predictor(model, decoder="plain")
    plain.set_image(image)
    assert memo.calls == calls + 1 and len(memo.inputs) == 1, "samhw's encoder input differs from SAM's"
    torch.testing.assert_close(plain.get_image_embedding(), sam_predictor.get_image_embedding(), rtol=0, atol=0)
    fast = Predictor(model, decoder="fast")
    fast.set_embedding(plain.get_image_embedding(), (h, w))
    for name, case in prompt_cases(h, w).items():
        for multimask in (True, False):
            theirs = sam_predict(sam_predictor, **case, multimask_output=multimask)
            assert len(theirs[1]) == (3 if multimask else 1), name
            assert_same_outputs(plain.predict(**case, multimask_output=multimask), theirs)
            assert_same_outputs(fast.predict(**case, multimask_output=multimask), theirs, exact=False)


def _give_embedding(sam_predictor, seed: int, h: int, w: int) -> torch.Tensor:
    """A seeded random (1, 256, 64, 64) embedding set into ``sam_predictor`` as that of an H x W image."""
    embedding = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(seed))
    sam_predictor.reset_image()
    sam_predictor.features, sam_predictor.original_size = embedding, (h, w)
    sam_predictor.input_size = sam_predictor.transform.get_preprocess_shape(h, w, 1024)
    sam_predictor.is_image_set = True
    return embedding


def test_vit_b_predictor_equals_sam_predictor_on_a_small_non_square_slice(vit_b_pair):
    """A 150x200 slice: prompts mapped into the 1024 frame and masks mapped back (crop, resize),
    from one embedding given to both (SAM resizes the image with PIL, samhw with torch: the inputs
    differ by rounding, so the embedding is shared here; the whole pipeline is the test above)."""
    sam, sam_predictor, model, _ = vit_b_pair
    h, w = 150, 200
    embedding = _give_embedding(sam_predictor, 5, h, w)
    plain = Predictor(model, decoder="plain")
    plain.set_embedding(embedding, (h, w))
    for name, case in prompt_cases(h, w).items():
        for multimask in (True, False):
            ours = plain.predict(**case, multimask_output=multimask)
            assert ours[0].shape[1:] == (h, w), name
            assert_same_outputs(ours, sam_predict(sam_predictor, **case, multimask_output=multimask))
    logits = plain.predict(**prompt_cases(h, w)["box"], multimask_output=False, return_logits=True)[0]
    np.testing.assert_array_equal(logits > 0, plain.predict(**prompt_cases(h, w)["box"], multimask_output=False)[0])
    assert logits.dtype == np.float32


def test_vit_b_mask_input_round_trip(vit_b_pair):
    """The low-resolution logits of one prediction go back in as mask_input, as in SAM's examples;
    the fast predictor takes the plain path for it and gives SAM's answer too."""
    sam, sam_predictor, model, _ = vit_b_pair
    h, w = 120, 90
    embedding = _give_embedding(sam_predictor, 6, h, w)
    first = dict(point_coords=np.array([[30.0, 50.0]]), point_labels=np.array([1]))
    for decoder in ("plain", "fast"):
        predictor = Predictor(model, decoder=decoder)
        predictor.set_embedding(embedding, (h, w))
        _, scores, low = predictor.predict(**first)
        mask_input = low[np.argmax(scores)][None]
        second = dict(point_coords=np.array([[30.0, 50.0], [70.0, 100.0]]), point_labels=np.array([1, 0]))
        ours = predictor.predict(**second, mask_input=mask_input, multimask_output=False)
        theirs = sam_predict(sam_predictor, **second, mask_input=mask_input, multimask_output=False)
        assert_same_outputs(ours, theirs)
        without = predictor.predict(**second, multimask_output=False)
        assert not np.array_equal(without[2], ours[2])  # the mask input changed the answer


# ----------------------------------------------------------------------------- LiteMedSAM (256)


@pytest.fixture(scope="module")
def lite_pair():
    """LiteMedSAM loaded plain (torch encoder), and a segment_anything Sam over the same modules
    that takes the min-max scaled image as it is (mean 0, std 1): LiteMedSAM's SamPredictor."""
    model = load_model("litemedsam", device="cpu", plain=True)
    sam = Sam(model.image_encoder, model.prompt_encoder, model.mask_decoder, [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]).eval()
    return model, SamPredictor(sam)


@pytest.mark.parametrize("shape", [(256, 256), (200, 256)])
def test_litemedsam_predictor_equals_sam_predictor(lite_pair, shape):
    model, sam_predictor = lite_pair
    h, w = shape
    image = blob_image(h, w, seed=1)
    x = model.preprocess([image])[..., :h, :w]  # min-max scaled, unpadded: what SAM pads and encodes
    sam_predictor.set_torch_image(x, (h, w))
    plain = Predictor(model, decoder="plain")
    plain.set_image(image)
    torch.testing.assert_close(plain.get_image_embedding(), sam_predictor.get_image_embedding(), rtol=0, atol=0)
    fast = Predictor(model, decoder="fast")
    fast.set_embedding(plain.get_image_embedding(), (h, w))
    for name, case in prompt_cases(h, w).items():
        for multimask in (True, False):
            theirs = sam_predict(sam_predictor, **case, multimask_output=multimask)
            assert_same_outputs(plain.predict(**case, multimask_output=multimask), theirs)
            assert_same_outputs(fast.predict(**case, multimask_output=multimask), theirs, exact=False)


def test_predict_prompts_is_the_best_of_predict(lite_pair):
    """The study's call (best of three by predicted IoU) picks predict's mask of highest IoU."""
    model, _ = lite_pair
    image = blob_image(256, 256, seed=2)
    predictor = Predictor(model, decoder="plain")
    predictor.set_image(image)
    prompt = Prompt(np.array([[70.0, 100.0]]), np.array([1]), np.array([50.0, 60.0, 130.0, 190.0]))
    masks, scores, _ = predictor.predict_prompt(prompt)
    best, best_score = predictor.predict_prompts([prompt, prompt], True)
    assert best.shape == (2, 256, 256) and best_score.shape == (2,)
    np.testing.assert_array_equal(best[0], masks[np.argmax(scores)])
    assert best_score[0] == scores.max()


# ----------------------------------------------------------------------------- inputs and errors


def test_images_of_any_kind_become_uint8_slices(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert as_slice_image(gray).shape == (3, 4, 3) and (as_slice_image(gray)[..., 2] == gray).all()
    floats = np.array([[0.0, 0.5], [1.0, 0.25]])
    np.testing.assert_array_equal(as_slice_image(floats)[..., 0], [[0, 128], [255, 64]])
    rgba = np.zeros((5, 6, 4), np.uint8)
    rgba[..., 1] = 9
    assert as_slice_image(rgba).shape == (5, 6, 3) and as_slice_image(rgba)[0, 0, 1] == 9
    for bad, match in [(np.zeros((2, 3, 4, 3)), "2-D slice"), (np.zeros((4, 4), bool), "mask, not an image"),
                       (np.array([[np.nan, 1.0]]), "NaN"), (np.zeros((0, 4)), "empty")]:
        with pytest.raises(ValueError, match=match):
            as_slice_image(bad)


def test_set_image_from_a_file_and_the_cache(lite_model, tmp_path):
    from PIL import Image

    image = blob_image(96, 128, seed=3)
    Image.fromarray(image).save(tmp_path / "slice.png")
    cache = EmbeddingCache(lite_model, tmp_path / "cache")
    predictor = Predictor(lite_model, cache)
    predictor.set_image(tmp_path / "slice.png")
    assert cache.count() == 1 and predictor.original_size == (96, 128)
    np.testing.assert_array_equal(predictor.image, image)
    masks, scores, low = predictor.predict(box=np.array([20.0, 20.0, 60.0, 70.0]), multimask_output=False)
    assert masks.shape == (1, 96, 128) and scores.shape == (1,) and low.shape == (1, 256, 256)
    with pytest.raises(FileNotFoundError, match="nope.png"):
        predictor.set_image(tmp_path / "nope.png")


def test_clear_errors(lite_model):
    predictor = Predictor(lite_model)
    with pytest.raises(RuntimeError, match="no image set"):
        predictor.predict(box=np.array([1.0, 1.0, 5.0, 5.0]))
    predictor.set_embedding(torch.zeros(1, 256, 64, 64), (100, 60))  # H=100, W=60
    with pytest.raises(ValueError, match="outside the 100x60"):
        predictor.predict(point_coords=np.array([[80.0, 10.0]]), point_labels=np.array([1]))  # x=80 >= W
    with pytest.raises(ValueError, match="outside the 100x60"):
        predictor.predict(point_coords=np.array([[60.0, 10.0]]), point_labels=np.array([1]))  # x=W: past the last pixel
    predictor.predict(point_coords=np.array([[10.0, 80.0]]), point_labels=np.array([1]))  # y=80 < H: fine
    cases = [
        (dict(point_coords=np.array([10.0, 20.0]), point_labels=np.array([1])), r"\(N, 2\)"),
        (dict(point_coords=np.array([[10.0, 20.0]])), "go together"),
        (dict(point_coords=np.array([[10.0, 20.0]]), point_labels=np.array([1, 0])), "one per point"),
        (dict(point_coords=np.array([[10.0, 20.0]]), point_labels=np.array([2])), "1 \\(foreground\\)"),
        (dict(box=np.array([[1.0, 2.0, 3.0, 4.0]])), r"\(4,\) XYXY"),
        (dict(box=np.array([30.0, 2.0, 10.0, 4.0])), "x_min <= x_max"),
        (dict(box=np.array([1.0, 2.0, 10.0, 140.0])), "inside the 100x60"),
        (dict(box=np.array([1.0, 2.0, 10.0, 40.0]), mask_input=np.zeros((3, 256, 256))), "mask_input must be"),
        (dict(), "no prompt"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            predictor.predict(**kwargs)
    with pytest.raises(ValueError, match="decoder must be"):
        Predictor(lite_model, decoder="quick")


# ----------------------------------------------------------------------------- the study's rows


@pytest.mark.slow
def test_predictor_gives_the_study_rows_on_real_slices(lite_model, data_dir, tmp_path):
    """``evaluate`` (the study's loop) and the Predictor, over one float16 cache: the same IoU and
    predicted area for every prompt of three test slices, single and best-of-three masks."""
    from samhw.data import load_dataset
    from samhw.metrics import iou

    data = load_dataset(data_dir, "test", limit=3)
    specs = parse_prompts(["box:0", "box:20", "center_gaussian", "center_mask+background"])
    cache = EmbeddingCache(lite_model, tmp_path)
    rows = [r for batch in evaluate(lite_model, cache, data, specs, [0, 1], progress=False, workers=1) for r in batch]
    predictor = Predictor(lite_model, cache)
    by_key = {(r["slice"], r["prompt"], r["seed"]): r for r in rows}
    checked = 0
    for item in data.slices:
        predictor.set_image(item.image)
        target = Target(item.mask, item.image, item.slice_id)
        for spec in specs:
            for seed in ([0, 1] if spec.random else [0]):
                row = by_key[(item.slice_id, spec.name, seed)]
                prompt = spec.draw(target, seed)
                masks, scores = predictor.predict_prompts([prompt], spec.multimask)
                assert row["iou"] == round(iou(masks[0], item.mask), 8) and row["area_pred"] == int(masks[0].sum())
                assert row["pred_iou"] == round(float(scores[0]), 7)
                if not spec.multimask:  # SAM's interface: the single mask is the same call
                    single = predictor.predict_prompt(prompt, multimask_output=False)[0][0]
                    np.testing.assert_array_equal(single, masks[0])
                checked += 1
    assert checked == len(rows) and any(r["iou"] > 0.3 for r in rows if r["prompt"] == "box:0")


@pytest.mark.slow
def test_the_readme_library_example_runs(data_dir, tmp_path, monkeypatch, capsys):
    """The README's "As a library" block, as written (its cache in a temporary folder)."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = readme.split("## As a library", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert "Predictor" in code and "model.predict(" not in code
    monkeypatch.setenv("SAMHW_DATA", str(data_dir))
    monkeypatch.setenv("SAMHW_CACHE", str(tmp_path))
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["masks"].shape == (1, *namespace["item"].mask.shape)
    assert 0.0 <= float(capsys.readouterr().out.strip().splitlines()[-1]) <= 1.0


def test_a_predictor_from_a_cached_embedding_equals_set_image(lite_model, real_slices, tmp_path):
    """set_embedding (what study, evaluate and interactive do with the cache's embedding) gives
    set_image's masks, scores and logits bit for bit, on both decoders."""
    cache = EmbeddingCache(lite_model, tmp_path)
    item = real_slices.slices[0]
    prompt = Prompt(np.array([[60.0, 70.0], [90.0, 30.0]]), np.array([1, 0]), None)
    box = np.array([30.0, 20.0, 140.0, 90.0])
    for decoder in ("fast", "plain"):
        from_image, from_embedding = Predictor(lite_model, cache, decoder), Predictor(lite_model, decoder=decoder)
        from_image.set_image(item.image)
        from_embedding.set_embedding(cache.get(item.image), item.mask.shape)
        for a, b in zip(from_image.predict_prompts([prompt], True), from_embedding.predict_prompts([prompt], True)):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(from_image.predict(box=box), from_embedding.predict(box=box)):
            np.testing.assert_array_equal(a, b)
