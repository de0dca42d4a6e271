"""T2I-Adapters: parity with diffusers' T2IAdapter (full, light, full XL) on identical weights in both layouts, and the
UNet's encoder additions against diffusers' `down_intrablock_additional_residuals`."""

from __future__ import annotations

import pytest
import torch
from diffusers import T2IAdapter as DiffusersT2IAdapter

from diffusion.controlnet import ControlResiduals
from diffusion.t2i_adapter import (
    T2IAdapter,
    T2IAdapterConfig,
    _halved,
    adapter_mismatch,
    fit_adapter_hint,
    is_t2i_adapter,
    load_t2i_adapter,
    t2i_adapter_to_original,
    tiny_t2i_adapter_tensors,
)
from diffusion.tiny import tiny_checkpoint_tensors, tiny_unet_config
from diffusion.unet import unet_from_state_dict
from diffusion.unet_config import CheckpointLayoutError
from tests.diffusion.reference_models import tiny_unet
from tests.diffusion.test_unet import _inputs

TOLERANCE = 1e-4
# diffusers adapter type, its widths, residual blocks per level, unshuffle factor
KINDS = {
    "full_adapter": ([32, 64], 2, 8),
    "light_adapter": ([32, 64], 4, 8),
    "full_adapter_xl": ([64, 128, 128, 128], 2, 16),
}


def reference(kind: str, seed: int = 0) -> DiffusersT2IAdapter:
    """A diffusers adapter with every weight and bias random (zero biases would hide a bias mix-up)."""
    channels, blocks, factor = KINDS[kind]
    torch.manual_seed(seed)
    model = DiffusersT2IAdapter(3, channels, blocks, factor, kind).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return model


def hint(factor: int, size: int = 4, batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, factor * size, factor * size, generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_feature_matches_diffusers_from_either_layout(kind: str) -> None:
    model = reference(kind)
    weights = model.state_dict()
    original = t2i_adapter_to_original(weights)
    assert is_t2i_adapter(weights) and is_t2i_adapter(original)
    assert not any(key.startswith("adapter.") for key in original)
    image = hint(KINDS[kind][2])
    with torch.no_grad():
        expected = model(image)
        from_diffusers = load_t2i_adapter(weights).features(image)
        from_original = load_t2i_adapter(original).features(image)
    assert len(from_diffusers) == len(expected)
    for ours, again, theirs in zip(from_diffusers, from_original, expected):
        assert theirs.abs().max() > 0.01
        assert (ours - theirs).abs().max() <= TOLERANCE
        assert torch.equal(ours, again)


def test_the_kind_is_read_from_the_weights() -> None:
    configs = {kind: load_t2i_adapter(reference(kind).state_dict()).config for kind in KINDS}
    assert configs["full_adapter"] == T2IAdapterConfig("full", 3, (32, 64), 2)
    assert configs["light_adapter"] == T2IAdapterConfig("light", 3, (32, 64, 64), 4)
    assert configs["full_adapter_xl"] == T2IAdapterConfig("full_xl", 3, (64, 128, 128, 128), 2)
    assert configs["full_adapter_xl"].unshuffle == 16 and configs["full_adapter"].unshuffle == 8


@pytest.mark.parametrize(("kind", "family"), [("full_adapter", "sd1"), ("full_adapter_xl", "sdxl_refiner")])
def test_unet_with_adapter_features_matches_diffusers_intrablock_residuals(kind: str, family: str) -> None:
    """SD: each level's feature after its last ResBlock. XL: after level 0's Downsample, levels 1 and 2, the middle."""
    model = reference(kind)
    adapter = load_t2i_adapter(model.state_dict())
    reference_unet, unet_weights = tiny_unet(family)
    unet = unet_from_state_dict(unet_weights)
    x, t, context, y, extra = _inputs(family)
    image = hint(8, size=x.shape[-1], batch=x.shape[0])  # 8x the latent; XL features come out half its size
    with torch.no_grad():
        features = model(image)
        expected = reference_unet(x, t, context, down_intrablock_additional_residuals=list(features), **extra).sample
        residuals = adapter(image)
        actual = unet(x, t, context, y, control=residuals)
        uncontrolled = unet(x, t, context, y)
    assert (residuals.middle is None) is (kind == "full_adapter")
    assert (actual - uncontrolled).abs().max() > 0.1
    assert (actual - expected).abs().max() <= TOLERANCE


def test_encoder_additions_for_another_unet_are_refused() -> None:
    _, weights = tiny_unet("sd1")
    unet = unet_from_state_dict(weights)
    x, t, context, _, _ = _inputs("sd1")
    with pytest.raises(ValueError, match="2 encoder additions, this UNet has 3 stages"):
        unet(x, t, context, control=ControlResiduals((), None, (None, None)))
    wrong = ControlResiduals((), None, (torch.zeros(2, 32, 3, 3), None, None))
    with pytest.raises(ValueError, match=r"encoder stage 0\) has shape \(2, 32, 3, 3\)"):
        unet(x, t, context, control=wrong)


def test_odd_sizes_halve_as_comfyui_does_padding_both_sides_and_counting_the_padding() -> None:
    adapter = T2IAdapter(T2IAdapterConfig("light", 1, (4, 4), 1))
    features = adapter.features(torch.rand(1, 1, 8 * 5, 8 * 3))
    assert [tuple(f.shape[-2:]) for f in features] == [(5, 3), (3, 2)]  # ceil(n / 2), as the UNet halves
    rows = torch.tensor([1.0, 2.0, 3.0]).reshape(1, 1, 3, 1).expand(1, 1, 3, 2)
    # Rows (0, 1, 2, 3, 0) after padding, windows (0, 1) and (2, 3): diffusers' rounding up would give 1.5 and 3.
    assert _halved(rows)[0, 0, :, 0].tolist() == [0.5, 2.5]


def test_hints_are_sized_as_comfyui_sizes_them_and_averaged_for_one_channel_adapters() -> None:
    image = torch.rand(1, 3, 100, 60)
    xl = T2IAdapterConfig("full_xl", 3, (4, 4, 4, 4), 2)
    assert fit_adapter_hint(image, 9, 5, xl).shape == (1, 3, 80, 48)  # 72 x 40 rounded up to multiples of 16
    gray = T2IAdapterConfig("full", 1, (4, 4), 2)
    fitted = fit_adapter_hint(image, 9, 5, gray)
    assert fitted.shape == (1, 1, 72, 40)
    torch.testing.assert_close(
        fitted, fit_adapter_hint(image, 9, 5, T2IAdapterConfig("full", 3, (4,), 2)).mean(1, True)
    )


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_tiny_adapters_come_in_the_published_layouts_and_drive_the_tiny_checkpoints_unet(family: str) -> None:
    prefix = "model.diffusion_model."
    checkpoint = tiny_checkpoint_tensors(family)
    unet = unet_from_state_dict({k[len(prefix) :]: v for k, v in checkpoint.items() if k.startswith(prefix)})
    weights = tiny_t2i_adapter_tensors(tiny_unet_config(family), seed=2)
    assert ("adapter.conv_in.weight" in weights) is (family == "sdxl")  # SDXL adapters exist in diffusers' layout
    assert ("conv_in.weight" in weights) is (family == "sd15")  # SD1.5 ones in TencentARC's
    adapter = load_t2i_adapter(weights)
    assert adapter_mismatch(adapter.config, unet.config) is None
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 8, 8, generator=g)
    context = torch.randn(1, 7, unet.config.context_dim, generator=g)
    adm = unet.config.adm_in_channels
    y = None if adm is None else torch.randn(1, adm, generator=g)
    t = torch.tensor([500.0])
    with torch.no_grad():
        residuals = adapter(fit_adapter_hint(torch.rand(1, 3, 64, 64, generator=g), 8, 8, adapter.config))
        out = unet(x, t, context, y, control=residuals)
    assert out.isfinite().all() and not torch.equal(out, unet(x, t, context, y))


def test_a_light_tiny_adapter_loads_and_an_adapter_for_other_widths_is_named() -> None:
    light = load_t2i_adapter(tiny_t2i_adapter_tensors(tiny_unet_config("sd15"), light=True))
    assert light.config.kind == "light" and light.config.channels == (32, 64)
    assert adapter_mismatch(light.config, tiny_unet_config("sd2")) == (
        "its feature widths are (32, 64), the UNet's (64, 128)"
    )


def test_weights_that_are_no_adapter_are_named() -> None:
    with pytest.raises(CheckpointLayoutError, match="conv_in.weight: takes 100 channels"):
        load_t2i_adapter({"conv_in.weight": torch.zeros(8, 100, 3, 3), "body.0.block1.weight": torch.zeros(8, 8, 3, 3)})
    assert not is_t2i_adapter({"body.0.weight": torch.zeros(1)})  # an upscaler's body has no conv_in
