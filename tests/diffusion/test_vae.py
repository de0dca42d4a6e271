"""The KL autoencoder: config detection, encode/decode parity with diffusers, and the scaled wrapper."""

from __future__ import annotations

import pytest
import torch

from diffusion.unet_config import CheckpointLayoutError
from diffusion.vae import (
    FLUX_LATENT,
    SD1_LATENT,
    SD2_LATENT,
    SD3_LATENT,
    SDXL_LATENT,
    LatentFormat,
    ScaledVAE,
    detect_vae_config,
    vae_from_state_dict,
)
from diffusion.vae_tiling import TileSpec
from tests.diffusion.reference_models import TINY_VAE_CONFIG, tiny_vae

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def pair():
    return tiny_vae()


@pytest.fixture(scope="module")
def pixels():
    return torch.rand(2, 3, 40, 24, generator=torch.Generator().manual_seed(3)) * 2 - 1


@pytest.fixture(scope="module")
def latent():
    return torch.randn(2, 4, 6, 5, generator=torch.Generator().manual_seed(4))


def test_detected_config_is_the_one_built(pair):
    assert detect_vae_config(pair[1]) == TINY_VAE_CONFIG


def test_encode_returns_the_posterior_mean_of_diffusers(pair, pixels):
    reference, weights = pair
    with torch.no_grad():
        expected = reference.encode(pixels).latent_dist
        actual = vae_from_state_dict(weights).encode_distribution(pixels)
    assert (actual.mean - expected.mean).abs().max() <= TOLERANCE
    assert (actual.logvar - expected.logvar).abs().max() <= TOLERANCE
    assert torch.equal(vae_from_state_dict(weights).encode(pixels), actual.mean)


def test_posterior_sample_draws_like_diffusers_for_the_same_seed(pair, pixels):
    reference, weights = pair
    with torch.no_grad():
        expected = reference.encode(pixels).latent_dist.sample(generator=torch.Generator().manual_seed(11))
        actual = vae_from_state_dict(weights).encode_distribution(pixels).sample(torch.Generator().manual_seed(11))
    assert (actual - expected).abs().max() <= TOLERANCE


def test_decode_matches_diffusers(pair, latent):
    reference, weights = pair
    with torch.no_grad():
        expected = reference.decode(latent).sample
        actual = vae_from_state_dict(weights).decode(latent)
    assert actual.shape == (2, 3, 12, 10)  # two levels: 2x per side
    assert expected.abs().max() > 0.1
    assert (actual - expected).abs().max() <= TOLERANCE


def test_attention_projections_stored_as_matrices_load_as_1x1_convolutions(pair, latent):
    _, weights = pair
    flat = {k: v[:, :, 0, 0] if ".attn_1." in k and v.ndim == 4 else v for k, v in weights.items()}
    assert flat["decoder.mid.attn_1.q.weight"].ndim == 2
    with torch.no_grad():
        assert torch.equal(vae_from_state_dict(flat).decode(latent), vae_from_state_dict(weights).decode(latent))


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_bf16_weights_take_fp32_inputs_and_return_fp32(pair, latent, dtype, cpu_path):
    reference, weights = pair
    vae = vae_from_state_dict({k: v.clone() for k, v in weights.items()}).to(dtype)
    with torch.no_grad():
        expected = reference.decode(latent).sample
        actual = vae.decode(latent)
    assert actual.dtype == torch.float32
    assert (actual - expected).abs().max() / expected.abs().max() < 0.05


def test_family_scale_factors_are_data():
    assert (SD1_LATENT.scale_factor, SD2_LATENT.scale_factor, SDXL_LATENT.scale_factor) == (0.18215, 0.18215, 0.13025)


def test_scaled_vae_applies_the_family_scale_factor(pair, pixels, latent):
    _, weights = pair
    vae = vae_from_state_dict(weights)
    scaled = ScaledVAE(vae, SDXL_LATENT)
    with torch.no_grad():
        assert torch.allclose(scaled.encode(pixels), vae.encode(pixels) * 0.13025)
        assert torch.allclose(scaled.decode(latent), vae.decode(latent / 0.13025))


def test_scaled_vae_decodes_in_tiles_when_memory_runs_out(pair):
    _, weights = pair
    vae = vae_from_state_dict(weights)
    tiles = TileSpec(tile=16, overlap=4)
    big = torch.randn(1, 4, 20, 20, generator=torch.Generator().manual_seed(5))
    whole_image_decode = vae.decode

    def decode_small_only(z: torch.Tensor) -> torch.Tensor:
        if z.shape[-1] > tiles.tile // vae.config.downscale:
            raise torch.OutOfMemoryError("simulated")
        return whole_image_decode(z)

    vae.decode = decode_small_only  # type: ignore[method-assign]
    scaled = ScaledVAE(vae, SD1_LATENT, tiles)
    with torch.no_grad():
        assert torch.equal(scaled.decode(big), scaled.decode_tiled(big, tiles))


def test_detection_names_the_missing_key():
    with pytest.raises(CheckpointLayoutError, match="encoder.conv_in.weight"):
        detect_vae_config({"input_blocks.0.0.weight": torch.zeros(1)})


def test_an_unexpected_key_is_named(pair):
    _, weights = pair
    extra = dict(weights, **{"encoder.down.0.attn.0.q.weight": torch.zeros(32, 32, 1, 1)})
    with pytest.raises(CheckpointLayoutError, match=r"encoder\.down\.0\.attn\.0\.q\.weight: unexpected"):
        vae_from_state_dict(extra)


@pytest.mark.parametrize("latent_format", [SD3_LATENT, FLUX_LATENT], ids=["sd3", "flux"])
def test_a_shifted_latent_format_centres_then_scales_and_restores_exactly(latent_format: LatentFormat) -> None:
    latent = torch.randn(1, 16, 4, 4)
    model_space = latent_format.to_model(latent)
    torch.testing.assert_close(model_space, (latent - latent_format.shift_factor) * latent_format.scale_factor)
    torch.testing.assert_close(latent_format.from_model(model_space), latent)
    assert not latent_format.to_model(torch.full((1, 16, 1, 1), latent_format.shift_factor)).any()
