"""samhw.architecture: SAM's parts traced with live shapes (a toy network, SAM ViT-B on the meta
device, LiteMedSAM on a real slice)."""
import numpy as np
import pytest
import torch

from samhw import architecture
from samhw.prompts import PromptSpec, Target


def test_trace_records_live_shapes_in_call_order():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU(), torch.nn.Flatten())
    table = architecture.trace(net, lambda: net(torch.zeros(1, 3, 16, 16)), ["2", "0"], {"0": "stride-2 conv"})
    assert list(table["module"]) == ["0", "2"]
    assert table.loc[0, "output"] == "1x8x8x8" and table.loc[1, "output"] == "1x512"
    assert table.loc[0, "parameters"] == 3 * 8 * 9 + 8 and table.loc[0, "what it does"] == "stride-2 conv"
    assert not net[0]._forward_hooks  # hooks removed


def test_vit_b_without_weights_traces_1024_to_64x64x256_with_its_neck():
    vit = architecture.vit_b_without_weights()
    table = architecture.encoder_trace(vit).set_index("module")
    assert table.loc["patch_embed", "input"] == "1x3x1024x1024" and table.loc["patch_embed", "output"] == "1x64x64x768"
    assert table.loc["neck.0", "what it does"].startswith("1x1 conv, 768 -> 256")
    assert table.loc["neck.2", "what it does"].startswith("3x3 conv, 256 -> 256")
    assert table.loc["neck.3", "output"] == "1x256x64x64"
    assert sum(table.index.str.startswith("blocks.")) == 12
    assert "global" in table.loc["blocks.2", "what it does"] and "14x14" in table.loc["blocks.0", "what it does"]
    params = architecture.parameter_table({"vit_b": vit})
    assert params.loc["image_encoder", "vit_b"] == "89.671 M"


@pytest.mark.slow
def test_model_anatomy_on_litemedsam(lite_model, real_slices, cache_dir):
    from samhw.cache import EmbeddingCache

    item = real_slices.slices[1]
    target = Target(item.mask, item.image, item.slice_id)
    embedding = EmbeddingCache(lite_model, cache_dir).get(item.image)
    tokens = architecture.sparse_tokens(lite_model, target)
    assert tokens["= PE + learned embedding"].all() and list(tokens["sparse shape"]) == ["1x2x256"] * 4
    table, dense, no_mask = architecture.mask_path(lite_model, item.mask)
    assert no_mask and dense.shape == (256, 64, 64)
    assert table["input"].iloc[0] == "1x1x256x256" and table["output"].iloc[-1] == "1x256x64x64"
    prompt = PromptSpec.parse("box:0").draw(target, 0)
    steps = architecture.decoder_trace(lite_model, embedding, prompt, item.mask.shape).set_index("module")
    assert steps.loc["transformer.layers.1.cross_attn_image_to_token", "output"] == "1x4096x256"
    assert steps.loc["output_upscaling.3", "output"] == "1x32x256x256" and steps.loc["iou_prediction_head", "output"] == "1x4"
    masks, scores = architecture.all_masks(lite_model, embedding, prompt, item.mask.shape)
    single, single_score = lite_model.predict(embedding, [prompt], item.mask.shape, False)
    multi, multi_score = lite_model.predict(embedding, [prompt], item.mask.shape, True)
    np.testing.assert_array_equal(masks[0], single[0])
    np.testing.assert_array_equal(masks[1 + int(np.argmax(scores[1:]))], multi[0])
    assert scores[0] == pytest.approx(single_score[0]) and max(scores[1:]) == pytest.approx(multi_score[0])
    shapes = architecture.dataflow_shapes(lite_model, item.image, prompt)
    assert shapes["embedding"] == "1x256x64x64" and shapes["masks"] == "1x4x256x256" and shapes["tokens"] == "1x7x256"
    picture = architecture.embedding_pca(embedding)
    assert picture.shape == (64, 64, 3) and picture.min() >= 0 and picture.max() <= 1

