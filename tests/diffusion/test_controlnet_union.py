"""Union ControlNets: parity with diffusers' ControlNetUnionModel on identical weights (one row per call, where its
attention over the batch axis agrees with ComfyUI's), and "auto" as ComfyUI computes it."""

from __future__ import annotations

import pytest
import torch
from diffusers import ControlNetUnionModel

from diffusion.controlnet import ControlNet, is_difference_controlnet
from diffusion.controlnet_union import (
    UNION_CONTROLNET_TYPES,
    UnionControlNet,
    is_union_controlnet,
    load_union_controlnet,
    tiny_controlnet_union_tensors,
)
from diffusion.tiny import tiny_unet_config
from diffusion.unet import timestep_embedding
from diffusion.unet_config import load_exact

TOLERANCE = 1e-4
UNET = tiny_unet_config("sdxl")
# diffusers' kwargs for the tiny SDXL UNet's encoder with xinsir's hint widths and ProMax's eight types.
DIFFUSERS_CONFIG = dict(
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    cross_attention_dim=UNET.context_dim,
    attention_head_dim=1,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=UNET.adm_in_channels,
    conditioning_embedding_out_channels=(48, 96, 192, 384),
    num_control_type=8,
    num_trans_channel=32,
    num_proj_channel=32,
)


@pytest.fixture(scope="module")
def pair():
    weights = tiny_controlnet_union_tensors(UNET, seed=1)
    reference = ControlNetUnionModel(**DIFFUSERS_CONFIG).eval()
    reference.load_state_dict(weights, strict=True)  # the tiny file is in xinsir's (diffusers') layout, key for key
    return reference, load_union_controlnet(weights), weights


def inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 8, 8, generator=g)
    context = torch.randn(1, 5, UNET.context_dim, generator=g)
    pooled = torch.randn(1, 64, generator=g)
    time_ids = torch.rand(1, 6, generator=g) * 1024
    y = torch.cat([pooled, timestep_embedding(time_ids.flatten(), 256).reshape(1, -1)], dim=-1)
    hint = torch.rand(1, 3, 64, 64, generator=g)
    return x, torch.tensor([400.0]), context, y, hint, {"text_embeds": pooled, "time_ids": time_ids}


@pytest.mark.parametrize("name", ["canny/lineart/anime_lineart/mlsd", "tile"])
def test_every_residual_matches_diffusers_for_a_chosen_type(pair, name: str) -> None:
    reference, union, _ = pair
    index = UNION_CONTROLNET_TYPES[name]
    flags = torch.zeros(1, 8)
    flags[0, index] = 1.0
    for seed in (0, 1):
        x, t, context, y, hint, added = inputs(seed)
        with torch.no_grad():
            down, mid = reference(x, t, context, [hint], flags, [index], added_cond_kwargs=added, return_dict=False)
            actual = union(x, hint, t, context, y, union_type=index)
        for ours, theirs in zip([*actual.input, actual.middle], [*down, mid]):
            assert ours is not None and theirs.abs().max() > 0.01
            assert (ours - theirs).abs().max() <= TOLERANCE


def test_the_type_changes_the_residuals(pair) -> None:
    _, union, _ = pair
    x, t, context, y, hint, _ = inputs()
    with torch.no_grad():
        results = [union(x, hint, t, context, y, union_type=index).middle for index in (None, 0, 3)]
    for i, a in enumerate(results):
        for b in results[i + 1 :]:
            assert a is not None and b is not None and (a - b).abs().max() > 1e-3


def test_auto_embeds_no_type_and_leaves_the_hint_unmixed(pair) -> None:
    """With the type embedding's output zeroed, "auto" is exactly the plain ControlNet of the same weights."""
    _, union, _ = pair
    silenced = {k: v.clone() for k, v in union.state_dict().items()}
    for key in ("control_add_embedding.linear_2.weight", "control_add_embedding.linear_2.bias"):
        silenced[key].zero_()
    with torch.device("meta"):
        plain = ControlNet(union.config)
    load_exact(plain, {k: v for k, v in silenced.items() if k in plain.state_dict()}, "ControlNet")
    with torch.device("meta"):
        quiet = UnionControlNet(union.config, union.union)
    load_exact(quiet, silenced, "union ControlNet")
    x, t, context, y, hint, _ = inputs()
    with torch.no_grad():
        expected = plain(x, hint, t, context, y)
        actual = quiet(x, hint, t, context, y, union_type=None)
        typed = quiet(x, hint, t, context, y, union_type=1)
    for ours, theirs in zip([*actual.input, actual.middle], [*expected.input, expected.middle]):
        assert ours is not None and theirs is not None
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    assert typed.middle is not None and expected.middle is not None
    assert (typed.middle - expected.middle).abs().max() > 1e-3


def test_a_type_the_model_does_not_know_is_refused(pair) -> None:
    _, union, weights = pair
    assert is_union_controlnet(weights) and not is_difference_controlnet(weights)
    x, t, context, y, hint, _ = inputs()
    with pytest.raises(ValueError, match=r"knows 8 control types \(0 to 7\), got type 8"):
        union(x, hint, t, context, y, union_type=8)
