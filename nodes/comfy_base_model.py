"""``MODEL.model`` for ComfyUI packs: what they read of ComfyUI's ``BaseModel``, answered from a ``ModelHandle``.

Packs reach through ``ModelPatcher.model`` (and ``get_model_object``) for the model sampling, the latent
format, the diffusion model and its dtype. ``ComfyBaseModel`` answers these live from the handle, so a
handle patched after the view was taken is what the view shows; ``ComfyLatentFormat`` gives Loom's latent
format ComfyUI's names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from diffusion.prediction import ModelSampling
from diffusion.vae import LatentFormat

if TYPE_CHECKING:
    from nodes.model_handles import ModelHandle

__all__ = ["ComfyBaseModel", "ComfyLatentFormat"]


@dataclass(frozen=True)
class ComfyLatentFormat:
    """A MODEL's latent format under ComfyUI's names: ``process_in`` takes a VAE latent into the diffusion
    model's space, ``process_out`` back (Loom's ``LatentFormat.to_model`` / ``from_model``)."""

    loom: LatentFormat
    latent_channels: int

    @property
    def name(self) -> str:
        return self.loom.name

    @property
    def scale_factor(self) -> float:
        return self.loom.scale_factor

    @property
    def shift_factor(self) -> float:
        return self.loom.shift_factor

    def process_in(self, latent: torch.Tensor) -> torch.Tensor:
        return self.loom.to_model(latent)

    def process_out(self, latent: torch.Tensor) -> torch.Tensor:
        return self.loom.from_model(latent)


class ComfyBaseModel:
    """``MODEL.model``: what packs read of ComfyUI's ``BaseModel``, answered live from the handle."""

    def __init__(self, handle: ModelHandle) -> None:
        self._handle = handle

    @property
    def model_sampling(self) -> ModelSampling:
        return self._handle.sampling

    @property
    def latent_format(self) -> ComfyLatentFormat:
        return ComfyLatentFormat(self._handle.latent_format, self._handle.latent_channels)

    @property
    def diffusion_model(self) -> nn.Module:
        """The loaded module, without the handle's LoRA patches (they are bound only while it samples)."""
        return self._handle.unet

    @property
    def device(self) -> torch.device:
        return self._handle.device

    def get_dtype(self) -> torch.dtype:
        return self._handle.unet.dtype
