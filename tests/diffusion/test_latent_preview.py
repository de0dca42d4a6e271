"""Latent previews: the published linear latent-to-RGB factors applied per family."""

from __future__ import annotations

import pytest
import torch

from diffusion.latent_preview import LATENT_RGB_FACTORS, UnknownLatentFamilyError, latent_to_rgb


def test_each_latent_channel_maps_to_its_published_colour_row():
    latent = torch.zeros(1, 4, 2, 2)
    latent[0, 3] = 1.0  # SD1's fourth channel is the blue-yellow axis: (-0.2120, -0.2616, -0.7177)
    pixel = latent_to_rgb(latent, "sd1")[0, 0].astype("float32")
    expected = (torch.tensor([-0.2120, -0.2616, -0.7177]) + 1) * 127.5
    assert torch.allclose(torch.tensor(pixel), expected.round(), atol=0.5)


def test_sdxl_adds_its_bias_and_sd2_shares_sd1():
    zeros = torch.zeros(1, 4, 1, 1)
    assert tuple(latent_to_rgb(zeros, "sdxl")[0, 0]) == tuple(
        round((b + 1) * 127.5) for b in (0.1084, -0.0175, -0.0011)
    )
    assert LATENT_RGB_FACTORS["sd2"] == LATENT_RGB_FACTORS["sd1"]


def test_previews_are_clamped_uint8_and_can_be_shrunk():
    image = latent_to_rgb(torch.full((2, 4, 64, 32), 50.0), "sd1", max_size=16)
    assert image.shape == (16, 8, 3) and image.dtype.name == "uint8"
    assert set(image.reshape(-1).tolist()) <= {0, 255}


def test_the_16_channel_families_preview_through_their_own_factors():
    latent = torch.zeros(1, 16, 2, 2)
    sd3, flux = latent_to_rgb(latent, "sd3"), latent_to_rgb(latent, "flux")
    assert sd3.shape == flux.shape == (2, 2, 3)
    assert (sd3 > flux).all()  # a zero latent shows each family's bias: SD3's is positive, FLUX's negative


def test_unknown_family_and_wrong_channels_are_errors():
    with pytest.raises(UnknownLatentFamilyError, match="'hunyuan'"):
        latent_to_rgb(torch.zeros(1, 16, 2, 2), "hunyuan")
    with pytest.raises(ValueError, match="need 4 latent channels, got 16"):
        latent_to_rgb(torch.zeros(1, 16, 2, 2), "sd1")
