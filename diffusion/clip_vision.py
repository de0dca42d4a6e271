"""Image encoders of image prompts: the CLIP and SigLIP vision towers users keep in `models/clip_vision/`.

Three towers, one pre-LayerNorm ViT (Dosovitskiy et al. 2021) with different sizes and details:

- OpenCLIP ViT-H/14 (`clip_vision_h.safetensors`, `CLIP-ViT-H-14-laion2B-s32B-b79K`; IP-Adapter, SD unCLIP): 32
  layers of width 1280, a class token, a LayerNorm before the encoder, a 1024-wide projection of the class token.
- OpenCLIP ViT-bigG/14 (`clip_vision_g.safetensors`; SDXL revision): 48 layers of width 1664, projection 1280.
- SigLIP so400m patch14 384 (`sigclip_vision_patch14_384.safetensors`; FLUX Redux; Zhai et al. 2023): 27 layers of
  width 1152 over 27 x 27 patches of a 384-pixel picture, no class token, a biased patch convolution, the tanh
  GELU and a LayerNorm after the encoder applied to every token.

Files are in transformers' layout (`vision_model.embeddings.*`, `vision_model.encoder.layers.N.*`,
`vision_model.post_layernorm.*`, `visual_projection.weight`), as ComfyUI's files and the Hugging Face releases have
them; other keys of a file (a whole CLIP model's `text_model.*`, SigLIP's attention-pooling `vision_model.head.*`,
old files' `position_ids` buffer) are not part of the tower and are left alone, as ComfyUI leaves them. The kind is
read from structure, as ComfyUI reads it: no class embedding is SigLIP, 48 layers or more ViT-bigG, 31 or more ViT-H.
Every tower has 16 heads, so the head count needs no table; the picture size follows from the positions stored.

The output is ComfyUI's CLIP_VISION_OUTPUT (`ClipVisionOutput`): for CLIP, `last_hidden_state` is the encoder's
output before the final LayerNorm and `image_embeds` the projected, normalised class token; for SigLIP both are the
normalised token states (ComfyUI's SigLIP has no projection and pools nothing). `penultimate_hidden_states` is the
output of the second-to-last layer, before any final norm, for both.

LayerNorm eps is 1e-5 for CLIP and 1e-6 for SigLIP, the values the towers were trained with (transformers'
configs); ComfyUI uses 1e-5 for both, which moves SigLIP's states by far less than their fp16 rounding.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.devices import compute_device
from diffusion.fused_linear import FusedLinear
from diffusion.text_encoders.clip_model import Activation, ClipEncoderLayer
from diffusion.tiny import randomize_norms, seeded_rng
from diffusion.unet_config import CheckpointLayoutError, load_exact

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "CLIP_VISION_KINDS",
    "ClipVisionConfig",
    "ClipVisionKind",
    "ClipVisionModel",
    "ClipVisionOutput",
    "SIGLIP_MEAN",
    "SIGLIP_STD",
    "clip_preprocess",
    "clip_vision_config_from_state_dict",
    "load_clip_vision",
    "tiny_clip_vision_config",
    "tiny_clip_vision_tensors",
]

ClipVisionKind = Literal["clip_vision_h", "clip_vision_g", "siglip_vision"]
CLIP_VISION_KINDS: tuple[ClipVisionKind, ...] = ("clip_vision_h", "clip_vision_g", "siglip_vision")

#: OpenAI CLIP's pixel statistics, which the OpenCLIP towers kept.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: SigLIP maps [0, 1] to [-1, 1].
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

_COMPONENT = "CLIP vision"
_PREFIX = "vision_model."
_PROJECTION = "visual_projection.weight"
_PATCH = f"{_PREFIX}embeddings.patch_embedding.weight"
_POSITIONS = f"{_PREFIX}embeddings.position_embedding.weight"
_CLASS = f"{_PREFIX}embeddings.class_embedding"
_NOT_THE_TOWER = (f"{_PREFIX}head.", f"{_PREFIX}embeddings.position_ids")
_LAYER = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.")
_HEADS = 16
#: (patch size, patches per side) -> picture size, where the patches do not tile the picture: SigLIP so400m's
#: 384 pixels make 27 patches of 14, its convolution dropping the last 6 rows and columns.
_UNTILED_SIZES = {(14, 27): 384}
_BIGG_LAYERS = 48  # ComfyUI: `layers.47` present is ViT-bigG
_VIT_H_LAYERS = 31  # `layers.30` present is ViT-H


@dataclass(frozen=True)
class ClipVisionConfig:
    kind: ClipVisionKind
    width: int
    layers: int
    intermediate: int
    patch_size: int
    image_size: int
    projection_dim: int | None
    heads: int = _HEADS

    @property
    def siglip(self) -> bool:
        return self.kind == "siglip_vision"

    @property
    def positions(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + (0 if self.siglip else 1)  # SigLIP has no class token

    @property
    def layer_norm_eps(self) -> float:
        return 1e-6 if self.siglip else 1e-5

    @property
    def image_mean(self) -> tuple[float, float, float]:
        return SIGLIP_MEAN if self.siglip else CLIP_MEAN

    @property
    def image_std(self) -> tuple[float, float, float]:
        return SIGLIP_STD if self.siglip else CLIP_STD


@dataclass(frozen=True)
class ClipVisionOutput:
    """CLIP_VISION_OUTPUT. Read by name as attributes or items: ComfyUI's object answers both, and packs use both."""

    last_hidden_state: torch.Tensor  # [B, tokens, width]
    image_embeds: torch.Tensor  # CLIP: [B, projection_dim]; SigLIP: [B, tokens, width]
    penultimate_hidden_states: torch.Tensor  # [B, tokens, width]

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in ("last_hidden_state", "image_embeds", "penultimate_hidden_states"):
            raise KeyError(key)
        value: torch.Tensor = getattr(self, key)
        return value


def clip_preprocess(
    image: torch.Tensor,
    size: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    crop: bool = True,
) -> torch.Tensor:
    """An IMAGE ``[B, H, W, C]`` in [0, 1] as a tower's input ``[B, 3, size, size]``, as ComfyUI's ``clip_preprocess``.

    Channels past the third (alpha) are dropped. A picture that is not already ``size`` square is resized with
    antialiased bicubic: with ``crop`` its short side to ``size`` (sides rounded half to even, as Python rounds) and
    the centre cut out, without it squashed to ``size`` x ``size``. The result is clamped and quantised to 8 bits,
    the pixels the towers were trained on, then normalised with the tower's mean and std.
    """
    pixels = image[..., :3].movedim(-1, 1)
    height, width = pixels.shape[-2:]
    if (height, width) != (size, size):
        if crop:
            scale = size / min(height, width)
            target = (round(scale * height), round(scale * width))
        else:
            target = (size, size)
        pixels = F.interpolate(pixels, size=target, mode="bicubic", antialias=True)
        top, left = (pixels.shape[-2] - size) // 2, (pixels.shape[-1] - size) // 2
        pixels = pixels[..., top : top + size, left : left + size]
    pixels = torch.clamp(255.0 * pixels, 0.0, 255.0).round() / 255.0
    shape = (3, 1, 1)
    mean_t = torch.tensor(mean, dtype=pixels.dtype, device=pixels.device).view(shape)
    std_t = torch.tensor(std, dtype=pixels.dtype, device=pixels.device).view(shape)
    return (pixels - mean_t) / std_t


class VisionEmbeddings(nn.Module):
    """Patches (plus CLIP's class token) with learned positions."""

    def __init__(self, config: ClipVisionConfig) -> None:
        super().__init__()
        self.class_embedding = None if config.siglip else nn.Parameter(torch.empty(config.width))
        self.patch_embedding = nn.Conv2d(
            3, config.width, config.patch_size, stride=config.patch_size, bias=config.siglip
        )
        self.position_embedding = nn.Embedding(config.positions, config.width)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        weight = self.patch_embedding.weight
        tokens = self.patch_embedding(pixels.to(weight.dtype)).flatten(2).transpose(1, 2)
        if self.class_embedding is not None:
            token = self.class_embedding.to(tokens.dtype).expand(tokens.shape[0], 1, -1)
            tokens = torch.cat((token, tokens), dim=1)
        return tokens + self.position_embedding.weight.to(tokens.dtype)


class VisionEncoder(nn.Module):
    def __init__(self, config: ClipVisionConfig) -> None:
        super().__init__()
        activation: Activation = "gelu_tanh" if config.siglip else "gelu"
        self.layers = nn.ModuleList(
            ClipEncoderLayer(
                config.width, config.heads, config.intermediate, activation, config.layer_norm_eps, causal=False
            )
            for _ in range(config.layers)
        )


class VisionTransformer(nn.Module):
    """transformers' `vision_model` level (its misspelt `pre_layrnorm` included: it is the file's key)."""

    def __init__(self, config: ClipVisionConfig) -> None:
        super().__init__()
        self.embeddings = VisionEmbeddings(config)
        self.pre_layrnorm = None if config.siglip else nn.LayerNorm(config.width, eps=config.layer_norm_eps)
        self.encoder = VisionEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.width, eps=config.layer_norm_eps)


class ClipVisionModel(nn.Module):
    """A vision tower with its projection (CLIP) in transformers' module names, so files load key for key."""

    def __init__(self, config: ClipVisionConfig) -> None:
        super().__init__()
        self.config = config
        self.vision_model = VisionTransformer(config)
        self.visual_projection = (
            FusedLinear(config.width, config.projection_dim, bias=False) if config.projection_dim is not None else None
        )

    def forward(self, pixels: torch.Tensor) -> ClipVisionOutput:
        """Encode preprocessed pixels ``[B, 3, image_size, image_size]``; the outputs are float32."""
        tower = self.vision_model
        x = tower.embeddings(pixels)
        if tower.pre_layrnorm is not None:
            x = tower.pre_layrnorm(x)
        layers = tower.encoder.layers
        penultimate = x
        for index, layer in enumerate(layers):
            x = layer(x)
            if index == len(layers) - 2:
                penultimate = x
        if self.config.siglip:
            last = pooled = tower.post_layernorm(x)
        else:
            last, pooled = x, tower.post_layernorm(x[:, 0])
        embeds = pooled if self.visual_projection is None else self.visual_projection(pooled)
        return ClipVisionOutput(last.float(), embeds.float(), penultimate.float())

    def encode_image(self, image: torch.Tensor, crop: bool = True) -> ClipVisionOutput:
        """An IMAGE ``[B, H, W, C]`` preprocessed as ComfyUI does (``clip_preprocess``) and encoded, on the device
        the tower sits on; the outputs are float32 on the CPU, as ComfyUI hands them to the next node."""
        config = self.config
        device = compute_device(self)
        pixels = clip_preprocess(image.to(device).float(), config.image_size, config.image_mean, config.image_std, crop)
        with torch.no_grad():
            out = self(pixels)
        return ClipVisionOutput(
            out.last_hidden_state.cpu(), out.image_embeds.cpu(), out.penultimate_hidden_states.cpu()
        )


def _layer_count(keys: list[str]) -> int:
    indices = {int(match.group(1)) for key in keys if (match := _LAYER.match(key))}
    return max(indices) + 1 if indices else 0


def clip_vision_config_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> ClipVisionConfig:
    """The tower a file holds, read from its keys and shapes; raises `CheckpointLayoutError` for a file that holds
    no tower in transformers' layout, or one Loom does not build (ViT-L and smaller CLIP towers)."""
    keys = list(state_dict.keys())
    if _PATCH not in state_dict:
        if any(key.startswith("visual.transformer.resblocks.") for key in keys):
            raise CheckpointLayoutError(
                _COMPONENT, "visual.transformer.resblocks.0", "an OpenCLIP-layout file: Loom reads CLIP vision files "
                "in transformers' layout (vision_model.*), as ComfyUI's clip_vision_h / clip_vision_g files are",
            )  # fmt: skip
        raise CheckpointLayoutError(_COMPONENT, _PATCH, "missing: the file holds no CLIP or SigLIP vision tower")
    width, _, patch, _ = state_dict[_PATCH].shape
    layers = _layer_count(keys)
    siglip = _CLASS not in state_dict
    if siglip:
        kind: ClipVisionKind = "siglip_vision"
    elif layers >= _BIGG_LAYERS:
        kind = "clip_vision_g"
    elif layers >= _VIT_H_LAYERS:
        kind = "clip_vision_h"
    else:
        raise CheckpointLayoutError(
            _COMPONENT, f"{_PREFIX}encoder.layers", f"a CLIP vision tower of {layers} layers (ViT-L or smaller): Loom "
            "loads ViT-H (clip_vision_h), ViT-bigG (clip_vision_g) and SigLIP (sigclip_vision_patch14_384)",
        )  # fmt: skip
    if layers < 2 or width % _HEADS:
        raise CheckpointLayoutError(
            _COMPONENT, _PATCH, f"a tower {width} wide with {layers} layers: {_HEADS} heads need a width they divide "
            "and the penultimate states need two layers",
        )  # fmt: skip
    grid = state_dict[_POSITIONS].shape[0] - (0 if siglip else 1)
    side = math.isqrt(grid)
    if side * side != grid:
        raise CheckpointLayoutError(_COMPONENT, _POSITIONS, f"{grid} patch positions are not a square grid")
    projection = state_dict[_PROJECTION].shape[0] if _PROJECTION in state_dict else None
    intermediate = state_dict[f"{_PREFIX}encoder.layers.0.mlp.fc1.weight"].shape[0]
    size = _UNTILED_SIZES.get((patch, side), side * patch)
    return ClipVisionConfig(kind, width, layers, intermediate, patch, size, projection)


def _tower_keys(key: str) -> bool:
    return (key.startswith(_PREFIX) and not key.startswith(_NOT_THE_TOWER)) or key == _PROJECTION


def load_clip_vision(state_dict: Mapping[str, torch.Tensor]) -> ClipVisionModel:
    """The tower of a file (`clip_vision_config_from_state_dict`), adopting its tensors as they are."""
    config = clip_vision_config_from_state_dict(state_dict)
    tensors = {key: state_dict[key] for key in state_dict.keys() if _tower_keys(key)}
    with torch.device("meta"):
        model = ClipVisionModel(config)
    load_exact(model, tensors, _COMPONENT)
    return model


# ---------------------------------------------------------------- tiny files


def tiny_clip_vision_config(kind: ClipVisionKind) -> ClipVisionConfig:
    """The tower of a tiny file of ``kind``: 32 wide (16 two-wide heads; SigLIP 48, so that its states are told
    from a CLIP tower's as 1152 is from 1280), with what a loader or a caller relies on kept real: the layer counts
    that tell the CLIP kinds apart, the patch size and positions (so pictures are preprocessed to the real 224 / 384
    pixels) and the projection widths (SDXL revision reads ViT-bigG's 1280)."""
    if kind == "siglip_vision":
        return ClipVisionConfig(kind, 48, 27, 96, 14, 384, None)
    if kind == "clip_vision_g":
        return ClipVisionConfig(kind, 32, 48, 64, 14, 224, 1280)
    if kind == "clip_vision_h":
        return ClipVisionConfig(kind, 32, 32, 64, 14, 224, 1024)
    raise ValueError(f"no tiny CLIP vision tower {kind!r}: one of {', '.join(CLIP_VISION_KINDS)}")


def tiny_clip_vision_tensors(kind: ClipVisionKind, seed: int = 0) -> dict[str, torch.Tensor]:
    """A tiny random file of ``kind`` in its release's layout (fp32, deterministic for a torch version and seed)."""
    config = tiny_clip_vision_config(kind)
    with seeded_rng(seed):
        model = ClipVisionModel(config)
        randomize_norms(model)
        class_embedding = model.vision_model.embeddings.class_embedding
        if class_embedding is not None:
            with torch.no_grad():
                class_embedding.normal_()  # made with torch.empty, as the files' loader replaces it
    return {key: tensor.detach().contiguous() for key, tensor in model.state_dict().items()}
