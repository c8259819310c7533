"""E5's decoding (mask_input through the fast decoder) and runner (samhw.interactive)."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from samhw.cache import EmbeddingCache
from samhw.cli import main
from samhw.fast_decoder import FastDecoder
from samhw.interactive import Session, refine_slice
from samhw.models import build_model, load_model
from samhw.prompts import Prompt, Target, parse_prompts
from samhw.refine import next_click


def test_fast_decoder_with_a_mask_input_matches_sams_decoder():
    torch.manual_seed(3)
    model = build_model("litemedsam")
    for p in list(model.mask_decoder.parameters()) + list(model.prompt_encoder.parameters()):
        p.data.add_(torch.randn_like(p) * 0.02)  # away from the pretrained regime, the mask path included
    embedding = torch.randn(1, 256, 64, 64)
    mask_input = torch.randn(1, 1, 256, 256) * 4
    prompt = Prompt(np.array([[60.0, 70.0], [90.0, 30.0]]), np.array([1, 0]), np.array([30.0, 20.0, 140.0, 90.0]))
    fast = FastDecoder(model.prompt_encoder, model.mask_decoder)
    with torch.inference_mode():
        points, boxes = model.prompt_tensors([prompt], (256, 256))
        sparse, dense = model.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        low, scores = model.mask_decoder(image_embeddings=embedding, image_pe=model.prompt_encoder.get_dense_pe(),
                                         sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                         multimask_output=False)
        context = fast.with_mask(fast.prepare(embedding), mask_input)
        low_fast, scores_fast = fast.decode(context, points, boxes, False)
        plain_fast, _ = fast.decode(fast.prepare(embedding), points, boxes, False)
    torch.testing.assert_close(low_fast, low, atol=5e-4, rtol=1e-4)
    torch.testing.assert_close(scores_fast, scores, atol=1e-5, rtol=1e-5)
    assert (plain_fast - low).abs().max() > 1e-2  # the mask input does change the answer


def test_session_fast_and_plain_agree_with_a_mask_input(lite_model, real_slices, cache_dir):
    item = real_slices.slices[0]
    embedding = EmbeddingCache(lite_model, cache_dir).get(item.image)
    fast = Session(lite_model, embedding, item.mask.shape)
    first = parse_prompts(["box:0"])[0].draw(Target(item.mask), 0)
    start = fast.decode(first)
    click = next_click(item.mask, start.mask)
    prompt = Prompt(np.vstack([first.points, click.point[None]]), np.append(first.labels, click.label), first.box)
    a = fast.decode(prompt, start.low_res)
    plain = load_model("litemedsam", device="cpu", plain=True)
    b = Session(plain, embedding, item.mask.shape).decode(prompt, start.low_res)
    assert np.mean(a.mask == b.mask) > 0.999
    assert a.score == pytest.approx(b.score, abs=1e-4)


@pytest.mark.slow
def test_refine_slice_clicks_follow_the_protocol(lite_model, real_slices, cache_dir):
    item = real_slices.slices[1]
    embedding = EmbeddingCache(lite_model, cache_dir).get(item.image)
    specs = parse_prompts(["box:0", "random_mask"])
    rows = pd.DataFrame(refine_slice(lite_model, embedding, item, specs, [0, 1], "test", (True, False), max_clicks=3))
    # box:0 once (deterministic), random_mask for both seeds; two variants; k = 0..3
    assert len(rows) == (1 + 2) * 2 * 4
    assert (rows.groupby(["start", "seed", "mask_input"]).size() == 4).all()
    k0 = rows[rows["k"] == 0]
    assert k0["click_x"].eq("").all()
    # both variants share the first output
    assert k0.groupby(["start", "seed"])["iou"].nunique().eq(1).all()
    clicked = rows[rows["k"] > 0]
    for _, r in clicked.iterrows():  # a click lies in the error region its label names: FN for 1, FP for 0
        assert item.mask[r["click_y"], r["click_x"]] == bool(r["click_label"])
    again = pd.DataFrame(refine_slice(lite_model, embedding, item, specs, [0, 1], "test", (True, False), max_clicks=3))
    pd.testing.assert_frame_equal(rows, again)


@pytest.mark.slow
def test_cli_refine_is_deterministic_and_writes_its_tables(data_dir, cache_dir, tmp_path):
    args = ["refine", "--data", str(data_dir), "--limit", "3", "--starts", "box:0", "center_mask", "--clicks", "4",
            "--device", "cpu", "--cache", str(cache_dir), "--quiet"]
    assert main(args + ["--out", str(tmp_path / "a"), "--workers", "2"]) == 0
    assert main(args + ["--out", str(tmp_path / "b"), "--workers", "1"]) == 0
    a, b = (tmp_path / "a" / "e5_rows_test.csv").read_bytes(), (tmp_path / "b" / "e5_rows_test.csv").read_bytes()
    assert a == b  # byte-identical, whatever the number of workers
    rows = pd.read_csv(tmp_path / "a" / "e5_rows_test.csv")
    assert len(rows) == 3 * 2 * 2 * 5
    noc = pd.read_csv(tmp_path / "a" / "e5_noc.csv")
    assert set(noc["start"]) == {"box:0", "center_mask"} and set(noc["mask_input"]) == {0, 1}
    assert noc["noc90"].between(0, 4).all()
    curve = pd.read_csv(tmp_path / "a" / "e5_curve.csv")
    assert sorted(curve["k"].unique()) == [0, 1, 2, 3, 4]
    record = json.loads((tmp_path / "a" / "e5_rows_test.json").read_text())
    assert record["starts"] == ["box:0", "center_mask"] and record["max_clicks"] == 4
    assert (tmp_path / "a" / "fig_e5_clicks.png").stat().st_size > 0


def test_cli_refine_unknown_start_is_a_clear_error(capsys):
    assert main(["refine", "--starts", "nowhere", "--limit", "1"]) == 2
    assert "error: unknown prompt 'nowhere'" in capsys.readouterr().err


@pytest.mark.slow
def test_trace_gives_the_rows_decodes(lite_model, real_slices, cache_dir):
    from samhw.interactive import trace_refinement

    item = real_slices.slices[3]
    embedding = EmbeddingCache(lite_model, cache_dir).get(item.image)
    rows = refine_slice(lite_model, embedding, item, parse_prompts(["center_mask"]), [0], "test", (True,), max_clicks=3)
    steps = trace_refinement(lite_model, embedding, item, "center_mask", 0, True, max_clicks=3)
    assert [round(s["iou"], 8) for s in steps] == [r["iou"] for r in rows]
    assert [len(s["prompt"].labels) for s in steps] == [1, 2, 3, 4]
    assert [(s["click"].x, s["click"].y) for s in steps[1:]] == [(r["click_x"], r["click_y"]) for r in rows[1:]]
