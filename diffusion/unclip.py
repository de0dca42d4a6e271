"""Image embeddings as a UNet's class vector: unCLIP's noise augmentation (Ramesh et al. 2022), as SDXL revision
uses it.

unCLIP models were trained on CLIP image embeddings with Gaussian noise added at a random level of a diffusion
schedule, the level's sinusoid given beside them, so that at sampling time a chosen level trades fidelity to the
picture for freedom. ComfyUI's SDXL reuses the mechanism for "revision": the augmented ViT-bigG image embedding
replaces the pooled text vector at the head of SDXL's ``y`` (``nodes.sampling``).

What ComfyUI's ``CLIPEmbeddingNoiseAugmentation`` and ``unclip_adm`` do, and so what this module does:

- The schedule is ``squaredcos_cap_v2`` over 1000 steps, the level ``round((1000 - 1) * noise_augmentation)``;
  level 0 is the first step of the schedule, so even no augmentation scales the embedding by sqrt(alpha-bar_0)
  and adds a trace of noise.
- Embeddings are normalised by data statistics before the noise and restored after; SDXL's checkpoints carry none,
  so the statistics are mean 0 and std 1 over 1280 numbers (the sinusoid width, ``timestep_dim``).
- Every image of every unCLIP entry (each row of its ``image_embeds``) is augmented with noise drawn from a CPU
  generator seeded with the sampler's seed minus 10, the same noise for each, and weighted by its strength.
- One row is the result. Several are summed, and the first 1280 numbers of the sum augmented again at the merge
  level (0 for SDXL), with noise that ComfyUI draws unseeded from the generator the last row seeded: the draw after
  the last row's, which this module takes from the same generator (what ComfyUI computes on a CPU).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from diffusion.unet import timestep_embedding

__all__ = ["ClipEmbeddingNoiseAugmentor", "UNCLIP_SEED_OFFSET", "squaredcos_cap_v2_alphas_cumprod", "unclip_adm"]

#: ComfyUI seeds unCLIP's noise with the sampler's seed minus this.
UNCLIP_SEED_OFFSET = 10
_COSINE_OFFSET = 0.008  # Nichol & Dhariwal's s
_MAX_BETA = 0.999


def squaredcos_cap_v2_alphas_cumprod(steps: int) -> torch.Tensor:
    """The cumulative alpha products (float64) of the cosine schedule of Nichol & Dhariwal 2021 as discrete betas
    (``1 - alpha_bar(t2) / alpha_bar(t1)`` per step, each at most 0.999): diffusers' and ComfyUI's
    ``squaredcos_cap_v2``, which Karlo's unCLIP prior introduced."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + _COSINE_OFFSET) / (1 + _COSINE_OFFSET) * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), _MAX_BETA) for i in range(steps)]
    return torch.cumprod(1 - torch.tensor(betas, dtype=torch.float64), dim=0)


class ClipEmbeddingNoiseAugmentor:
    """Noise an image embedding to a level of the schedule and embed the level (ComfyUI's
    ``CLIPEmbeddingNoiseAugmentation`` with ``squaredcos_cap_v2`` over ``max_noise_level`` steps)."""

    def __init__(
        self,
        width: int = 1280,
        max_noise_level: int = 1000,
        data_mean: torch.Tensor | None = None,
        data_std: torch.Tensor | None = None,
    ) -> None:
        self.width = width
        self.max_noise_level = max_noise_level
        self.data_mean = torch.zeros(1, width) if data_mean is None else data_mean.reshape(1, width).float()
        self.data_std = torch.ones(1, width) if data_std is None else data_std.reshape(1, width).float()
        # float64 then float32, as ComfyUI registers them from numpy.
        alphas_cumprod = squaredcos_cap_v2_alphas_cumprod(max_noise_level)
        self.sqrt_alphas_cumprod = alphas_cumprod.sqrt().float()
        self.sqrt_one_minus_alphas_cumprod = (1 - alphas_cumprod).sqrt().float()

    def noise_level(self, augmentation: float) -> int:
        """The schedule step of a ``noise_augmentation`` in [0, 1]."""
        return round((self.max_noise_level - 1) * augmentation)

    def __call__(
        self, embedding: torch.Tensor, level: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(the embedding ``[1, width]`` noised to ``level`` with noise from ``generator``, the level's sinusoid
        ``[1, width]``), in float32 on the CPU."""
        if embedding.shape[-1] != self.width:
            raise ValueError(
                f"an image embedding {embedding.shape[-1]} wide cannot be noise-augmented for a model that takes "
                f"{self.width}: SDXL revision takes CLIP-ViT-bigG's embeddings (clip_vision_g)"
            )
        x = (embedding.reshape(1, self.width).float().cpu() - self.data_mean) / self.data_std
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        noised = self.sqrt_alphas_cumprod[level] * x + self.sqrt_one_minus_alphas_cumprod[level] * noise
        return noised * self.data_std + self.data_mean, timestep_embedding(torch.tensor([level]), self.width)


def _image_embeds(prompt: Mapping[str, Any]) -> torch.Tensor:
    output = prompt["clip_vision_output"]
    embeds: torch.Tensor = output["image_embeds"]
    if embeds.ndim != 2:
        raise ValueError(
            f"unCLIP conditioning takes one image embedding per picture ([B, width]); this CLIP vision output's "
            f"image_embeds are {tuple(embeds.shape)}: SigLIP's token states are for style models (FLUX Redux)"
        )
    return embeds


def unclip_adm(
    prompts: Sequence[Mapping[str, Any]],
    augmentor: ClipEmbeddingNoiseAugmentor,
    seed: int,
    merge_augmentation: float = 0.0,
) -> torch.Tensor:
    """The unCLIP class vector ``[1, 2 * width]`` (augmented embedding, level sinusoid) of a conditioning entry's
    ``unclip_conditioning`` list (``{"clip_vision_output", "strength", "noise_augmentation"}`` each), for a sampler
    seeded with ``seed`` (module docstring)."""
    rows: list[torch.Tensor] = []
    generator = torch.Generator()
    for prompt in prompts:
        level = augmentor.noise_level(float(prompt["noise_augmentation"]))
        for embedding in _image_embeds(prompt):
            generator.manual_seed(seed - UNCLIP_SEED_OFFSET)
            noised, level_embedding = augmentor(embedding, level, generator)
            rows.append(torch.cat((noised, level_embedding), dim=1) * float(prompt["strength"]))
    if not rows:
        raise ValueError("the unCLIP conditioning holds no image embedding")
    if len(rows) == 1:
        return rows[0]
    summed = torch.stack(rows).sum(0)
    noised, level_embedding = augmentor(
        summed[:, : augmentor.width], augmentor.noise_level(merge_augmentation), generator
    )
    return torch.cat((noised, level_embedding), dim=1)
