"""The LDM UNet: config detection from weights alone, and output parity with diffusers on identical weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.embeddings import Timesteps, get_timestep_embedding

from diffusion.diffusers_layout import unet_to_ldm
from diffusion.unet import (
    UNetModel,
    sdxl_adm_vector,
    sdxl_refiner_adm_vector,
    timestep_embedding,
    unet_from_state_dict,
)
from diffusion.unet_config import CheckpointLayoutError, detect_unet_config
from tests.diffusion.reference_models import (
    CONTEXT_DIM,
    FAMILIES,
    POOLED_DIM,
    REAL_FAMILIES,
    TIME_EMBED_DIM,
    tiny_unet,
)

TOLERANCE = 1e-4
ORIGINAL, CROP, TARGET, AESTHETIC = (1024, 768), (16, 32), (1024, 1024), 6.0


def _size_conditioning(pooled: torch.Tensor, adm_numbers: int, embed_dim: int) -> tuple[torch.Tensor, dict]:
    """SDXL's ``y`` for Loom and the same size numbers as diffusers' ``added_cond_kwargs``."""
    if adm_numbers == 6:
        y = sdxl_adm_vector(pooled, ORIGINAL, CROP, TARGET, embed_dim=embed_dim)
        numbers = [*ORIGINAL, *CROP, *TARGET]
    else:
        y = sdxl_refiner_adm_vector(pooled, ORIGINAL, CROP, AESTHETIC, embed_dim=embed_dim)
        numbers = [*ORIGINAL, *CROP, AESTHETIC]
    time_ids = torch.tensor([numbers] * pooled.shape[0], dtype=torch.float32)
    return y, {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}


def _inputs(family: str, height: int = 8, width: int = 8, batch: int = 2):
    """Latents, distinct fractional timesteps, context, plus (y, diffusers added_cond_kwargs) for SDXL."""
    spec = FAMILIES[family]
    g = torch.Generator().manual_seed(7)
    x = torch.randn(batch, spec.expected.in_channels, height, width, generator=g)
    t = torch.linspace(3.5, 900.0, batch)
    context = torch.randn(batch, 5, CONTEXT_DIM, generator=g)
    if not spec.adm_numbers:
        return x, t, context, None, {}
    pooled = torch.randn(batch, POOLED_DIM, generator=g)
    return x, t, context, *_size_conditioning(pooled, spec.adm_numbers, TIME_EMBED_DIM)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    reference, weights = tiny_unet(request.param)
    return request.param, reference, weights


def test_detected_config_is_the_one_built(family):
    name, _, weights = family
    assert detect_unet_config(weights) == FAMILIES[name].expected


def test_output_matches_diffusers(family):
    name, reference, weights = family
    unet = unet_from_state_dict(weights)
    x, t, context, y, extra = _inputs(name)
    with torch.no_grad():
        expected = reference(x, t, context, **extra).sample
        actual = unet(x, t, context, y)
    assert expected.abs().max() > 0.1
    assert (actual - expected).abs().max() <= TOLERANCE


def test_latent_sides_not_divisible_by_the_total_downscale_come_back_unchanged():
    reference, weights = tiny_unet("sdxl_refiner")
    x, t, context, y, extra = _inputs("sdxl_refiner", height=12, width=10)
    with torch.no_grad():
        expected = reference(x, t, context, **extra).sample
        actual = unet_from_state_dict(weights)(x, t, context, y)
    assert actual.shape == x.shape
    assert (actual - expected).abs().max() <= TOLERANCE


def test_scalar_timestep_applies_to_the_whole_batch():
    _, weights = tiny_unet("sd1")
    unet = unet_from_state_dict(weights)
    x, _, context, _, _ = _inputs("sd1")
    with torch.no_grad():
        assert torch.equal(unet(x, torch.tensor(500.0), context), unet(x, torch.full((2,), 500.0), context))


def test_timestep_embedding_is_cos_first_with_no_frequency_shift():
    t = torch.tensor([0.0, 1.0, 250.5, 999.0])
    expected = get_timestep_embedding(t, 320, flip_sin_to_cos=True, downscale_freq_shift=0)
    assert torch.allclose(timestep_embedding(t, 320), expected, atol=1e-6)


def test_sdxl_adm_vector_matches_diffusers_text_time_embedding_at_full_size():
    pooled = torch.randn(2, 1280)
    time_proj = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)
    base_ids = torch.tensor([[*ORIGINAL, *CROP, *TARGET]] * 2, dtype=torch.float32)
    refiner_ids = torch.tensor([[*ORIGINAL, *CROP, AESTHETIC]] * 2, dtype=torch.float32)
    base = torch.cat([pooled, time_proj(base_ids.flatten()).reshape(2, -1)], dim=-1)
    refiner = torch.cat([pooled, time_proj(refiner_ids.flatten()).reshape(2, -1)], dim=-1)
    assert base.shape[1] == 2816 and refiner.shape[1] == 2560
    assert torch.allclose(sdxl_adm_vector(pooled, ORIGINAL, CROP, TARGET), base, atol=1e-6)
    assert torch.allclose(sdxl_refiner_adm_vector(pooled, ORIGINAL, CROP, AESTHETIC), refiner, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_bf16_weights_and_channels_last_take_fp32_inputs_and_return_fp32(dtype, cpu_path):
    reference, weights = tiny_unet("sdxl")
    x, t, context, y, extra = _inputs("sdxl")
    unet = unet_from_state_dict({k: v.clone() for k, v in weights.items()})
    unet = unet.to(dtype).to(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = reference(x, t, context, **extra).sample
        actual = unet(x, t, context, y)
    assert actual.dtype == torch.float32
    assert (actual - expected).abs().max() / expected.abs().max() < 0.05


def test_channels_last_fp32_keeps_parity(cpu_path):
    reference, weights = tiny_unet("sd1")
    x, t, context, _, _ = _inputs("sd1")
    unet = unet_from_state_dict({k: v.clone() for k, v in weights.items()}).to(memory_format=torch.channels_last)
    with torch.no_grad():
        assert (unet(x, t, context) - reference(x, t, context).sample).abs().max() <= TOLERANCE


def test_loading_adopts_the_stored_tensors_and_their_dtype():
    _, weights = tiny_unet("sd1")
    half = {k: v.to(torch.float16) for k, v in weights.items()}
    unet = unet_from_state_dict(half)
    assert unet.dtype == torch.float16
    assert unet.input_blocks[0][0].weight.data_ptr() == half["input_blocks.0.0.weight"].data_ptr()


def test_sdxl_requires_y_and_sd1_refuses_it():
    _, sdxl = tiny_unet("sdxl")
    _, sd1 = tiny_unet("sd1")
    x, t, context, _, _ = _inputs("sd1")
    with pytest.raises(ValueError, match="needs y"):
        unet_from_state_dict(sdxl)(x, t, context)
    with pytest.raises(ValueError, match="takes no y"):
        unet_from_state_dict(sd1)(x, t, context, torch.zeros(2, 80))


def test_detection_names_the_missing_key():
    with pytest.raises(CheckpointLayoutError, match="input_blocks.0.0.weight") as error:
        detect_unet_config({"encoder.conv_in.weight": torch.zeros(1)})
    assert error.value.component == "UNet"


def test_loading_names_a_missing_and_a_misshapen_key():
    _, weights = tiny_unet("sd1")
    incomplete = dict(weights)
    del incomplete["middle_block.1.proj_out.bias"]
    config = FAMILIES["sd1"].expected
    with pytest.raises(CheckpointLayoutError, match="middle_block.1.proj_out.bias"):
        unet_from_state_dict(incomplete, config)
    misshapen = dict(weights, **{"out.2.bias": torch.zeros(5)})
    with pytest.raises(CheckpointLayoutError, match=r"out\.2\.bias: shape \(5,\)"):
        unet_from_state_dict(misshapen, config)


def _full_size_inputs(family: str) -> tuple[object, ...]:
    """One 32x32 latent (a 256² image) with the family's real context width and, for SDXL, its
    real pooled width and 256-wide size sinusoids."""
    config = REAL_FAMILIES[family][1]
    g = torch.Generator().manual_seed(11)
    x, t = torch.randn(1, config.in_channels, 32, 32, generator=g), torch.tensor([421.0])
    context = torch.randn(1, 77, config.context_dim, generator=g)
    if config.adm_in_channels is None:
        return x, t, context, None, {}
    pooled = torch.randn(1, 1280, generator=g)
    return x, t, context, *_size_conditioning(pooled, 6 if family == "sdxl" else 5, 256)


def _available_gb() -> float:
    meminfo = Path("/proc/meminfo")
    if not meminfo.exists():
        return float("inf")
    fields = dict(line.split(":", 1) for line in meminfo.read_text().splitlines() if ":" in line)
    return int(fields["MemAvailable"].split()[0]) / 2**20


@pytest.mark.slow
@pytest.mark.parametrize("family, gigabytes", [("sd15", 5), ("sd21", 5), ("sdxl", 14), ("sdxl_refiner", 13)])
def test_full_size_unet_matches_diffusers(family, gigabytes):
    """Each family at its published size (SDXL: 2.6 G parameters, 10 GB in fp32; Loom adopts the
    reference's tensors, so the weights exist once; peak RSS of the SDXL case is about 13 GB)."""
    available = _available_gb()
    if available < gigabytes:
        pytest.skip(f"the full-size {family} UNet needs {gigabytes} GB of free memory, {available:.1f} GB available")
    diffusers_config, expected_config = REAL_FAMILIES[family]
    torch.manual_seed(0)
    reference = UNet2DConditionModel(**diffusers_config).eval()
    weights = unet_to_ldm(reference.state_dict(), reference.config)
    assert detect_unet_config(weights) == expected_config
    unet = unet_from_state_dict(weights)
    x, t, context, y, extra = _full_size_inputs(family)
    with torch.no_grad():
        expected = reference(x, t, context, **extra).sample
        actual = unet(x, t, context, y)
    assert expected.abs().max() > 0.1
    assert (actual - expected).abs().max() <= TOLERANCE


@pytest.mark.parametrize("family", sorted(REAL_FAMILIES))
def test_published_unet_layouts_are_detected_and_built_key_for_key(family):
    # Shapes only: both models live on the meta device, so full-size layouts cost no memory.
    diffusers_config, expected = REAL_FAMILIES[family]
    with torch.device("meta"):
        reference = UNet2DConditionModel(**diffusers_config)
        ours = UNetModel(expected).state_dict()
    weights = unet_to_ldm(reference.state_dict(), reference.config)
    assert detect_unet_config(weights) == expected
    assert {k: v.shape for k, v in weights.items()} == {k: v.shape for k, v in ours.items()}
