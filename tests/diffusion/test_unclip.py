"""unCLIP noise augmentation as ComfyUI's SDXL applies it: the squaredcos_cap_v2 schedule, one image embedding
noised with the sampler's seed minus 10 and weighted by its strength, several summed and noised again."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers.schedulers.scheduling_ddpm import betas_for_alpha_bar

from diffusion.clip_vision import ClipVisionOutput
from diffusion.unclip import ClipEmbeddingNoiseAugmentor, squaredcos_cap_v2_alphas_cumprod, unclip_adm
from diffusion.unet import timestep_embedding

WIDTH = 1280


def _prompt(embeds: torch.Tensor, strength: float, augmentation: float) -> dict[str, object]:
    output = ClipVisionOutput(torch.zeros(1), embeds, torch.zeros(1))
    return {"clip_vision_output": output, "strength": strength, "noise_augmentation": augmentation}


def _alpha_bar(step: int) -> float:
    """alpha-bar of the discrete cosine schedule, from its definition: the product of (1 - beta) up to ``step``."""

    def f(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return math.prod(1 - min(1 - f((i + 1) / 1000) / f(i / 1000), 0.999) for i in range(step + 1))


def test_the_schedule_is_diffusers_squaredcos_cap_v2() -> None:
    ours = squaredcos_cap_v2_alphas_cumprod(1000)
    reference = torch.cumprod(1 - betas_for_alpha_bar(1000, alpha_transform_type="cosine"), dim=0)
    torch.testing.assert_close(ours.float(), reference, rtol=1e-5, atol=1e-6)
    assert float(ours[0]) == pytest.approx(_alpha_bar(0), rel=1e-12)


@pytest.mark.parametrize(("augmentation", "level"), [(0.0, 0), (0.5, 500), (0.25, 250), (1.0, 999)])
def test_noise_augmentation_picks_the_rounded_step(augmentation: float, level: int) -> None:
    assert ClipEmbeddingNoiseAugmentor().noise_level(augmentation) == level


def test_one_embedding_is_noised_with_the_seed_minus_10_and_weighted() -> None:
    embedding = torch.randn(1, WIDTH, generator=torch.Generator().manual_seed(0))
    strength, seed, level = 0.7, 12345, 300
    got = unclip_adm([_prompt(embedding, strength, 0.3)], ClipEmbeddingNoiseAugmentor(), seed)
    noise = torch.randn(1, WIDTH, generator=torch.Generator().manual_seed(seed - 10))
    alpha_bar = _alpha_bar(level)
    noised = math.sqrt(alpha_bar) * embedding + math.sqrt(1 - alpha_bar) * noise
    expected = torch.cat((noised, timestep_embedding(torch.tensor([level]), WIDTH)), dim=1) * strength
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_several_embeddings_are_summed_and_noised_again_at_level_0_with_the_next_draw() -> None:
    generator = torch.Generator().manual_seed(1)
    first, second = torch.randn(2, WIDTH, generator=generator), torch.randn(1, WIDTH, generator=generator)
    seed = 3  # below 10: ComfyUI's seed minus 10 is negative, which torch maps into its range
    got = unclip_adm([_prompt(first, 1.0, 0.0), _prompt(second, -0.5, 0.1)], ClipEmbeddingNoiseAugmentor(), seed)
    rows = []
    for embedding, strength, level in ((first[0], 1.0, 0), (first[1], 1.0, 0), (second[0], -0.5, 100)):
        noise = torch.randn(1, WIDTH, generator=torch.Generator().manual_seed(seed - 10))
        a = _alpha_bar(level)
        noised = math.sqrt(a) * embedding[None] + math.sqrt(1 - a) * noise
        rows.append(torch.cat((noised, timestep_embedding(torch.tensor([level]), WIDTH)), dim=1) * strength)
    summed = torch.stack(rows).sum(0)
    last = torch.Generator().manual_seed(seed - 10)
    torch.randn(1, WIDTH, generator=last)
    a = _alpha_bar(0)
    merged = math.sqrt(a) * summed[:, :WIDTH] + math.sqrt(1 - a) * torch.randn(1, WIDTH, generator=last)
    expected = torch.cat((merged, timestep_embedding(torch.tensor([0]), WIDTH)), dim=1)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_embeddings_of_another_width_or_siglip_token_states_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="clip_vision_g"):
        unclip_adm([_prompt(torch.zeros(1, 1024), 1.0, 0.0)], ClipEmbeddingNoiseAugmentor(), 0)
    with pytest.raises(ValueError, match="style models"):
        unclip_adm([_prompt(torch.zeros(1, 729, 1152), 1.0, 0.0)], ClipEmbeddingNoiseAugmentor(), 0)
