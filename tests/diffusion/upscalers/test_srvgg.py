"""SRVGGNetCompact: hyper-parameters read back from weights, and the structure proven against the
graph that Real-ESRGAN's animevideov3 ncnn export describes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from diffusion.upscalers.ncnn import map_ncnn, read_ncnn
from diffusion.upscalers.srvgg import SRVGGConfig, SRVGGNetCompact, is_srvgg_state_dict, srvgg_config_from_state_dict
from tests.diffusion.upscalers.ncnn_reference import run_ncnn_graph
from tests.diffusion.upscalers.tiny_upscalers import ANIMEVIDEO, tiny_rrdb, tiny_srvgg


@pytest.mark.parametrize("upscale", [1, 2, 3, 4])
def test_config_is_read_back_from_the_body_keys(upscale):
    config = SRVGGConfig(in_channels=3, out_channels=3, num_feat=12, num_conv=5, upscale=upscale)
    state_dict = SRVGGNetCompact(config).state_dict()
    assert is_srvgg_state_dict(state_dict)
    assert srvgg_config_from_state_dict(state_dict) == config


def test_an_rrdbnet_state_dict_is_not_taken_for_srvgg():
    assert not is_srvgg_state_dict(tiny_rrdb().state_dict())


def test_the_body_predicts_a_residual_over_nearest_upscaling():
    model = tiny_srvgg(upscale=3)
    with torch.no_grad():
        model.body[-1].weight.zero_()
        model.body[-1].bias.zero_()
    x = torch.rand(1, 3, 5, 7)
    assert torch.equal(model(x), F.interpolate(x, scale_factor=3, mode="nearest"))


def test_matches_the_graph_of_the_real_animevideov3_export(real_models):
    stem = ANIMEVIDEO[4]
    network = read_ncnn(real_models / f"{stem}.param", real_models / f"{stem}.bin")
    state_dict = map_ncnn(network, real_models / f"{stem}.param").state_dict
    model = SRVGGNetCompact(srvgg_config_from_state_dict(state_dict)).eval()
    model.load_state_dict(state_dict, strict=True)
    assert model.config == SRVGGConfig(num_feat=64, num_conv=16, upscale=4)
    x = torch.rand(1, 3, 16, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(x), run_ncnn_graph(network, x), rtol=0, atol=1e-5)
