"""Stability's SD3.5 Large ControlNets (`sd3.5_large_controlnet_blur/canny/depth.safetensors`) in plain torch.

Unlike the UNet ControlNets, these are not a copy of the model they steer. The latent is embedded by the
**MMDiT's own** patch embedding and stored positions (`x_embedder`, `pos_embed` cropped to the latent: the files
hold neither), the hint enters through its own patch embedding (`pos_embed_input`, no positions), and a stack of
plain self-attention DiT blocks (`transformer_blocks.N`: adaLN shift/scale/gate for attention and MLP, no text
stream, no qk-norm) turns the image tokens into one residual per block through a linear "zero" layer
(`controlnet_blocks.N`). The conditioning vector is the timestep's embedding plus the pooled text's, both in
diffusers' names (`time_text_embed.timestep_embedder.linear_1` ...). The text tokens are not used.

The released files have 19 blocks for SD3.5 Large's 38 joint blocks, 2432 wide (38 heads of 64, which is how
the head count is read: width / 64, as ComfyUI reads it). Each residual serves ``ceil(38 / 19)`` consecutive
joint blocks, the last block included, as Stability's reference (`sd3_impls.py`, ``i // interval``) and
ComfyUI (`cldm/dit_embedder.py`, each output repeated) add them; diffusers' `SD3Transformer2DModel` leaves the
last, pre-only block without one (``block.context_pre_only``), the only difference between the three.

The hint is the control image's **VAE latent** ([B, 16, H, W], like the noisy latent): ComfyUI's
ControlNetApplyAdvanced takes the `vae` input, fits the image to 8x the latent's size (centre crop,
nearest-exact), applies the file's preprocessing (`prepare_hint_image`), encodes it, and applies SD3's latent
format `process_in`, ``(z - 0.0609) * 1.5305``; diffusers' pipeline does the same with the VAE's
``shift_factor`` and ``scaling_factor`` (these files set `force_zeros_for_pooled_projection` False, so the shift
stays and the real pooled text is used). The file says which preprocessing it wants in its `control_type`
scalar: 0 blur (image as is), 1 canny (``image * 255 * 0.5 + 0.5``), 2 depth (``1 - image``).

ComfyUI differs from Stability and diffusers in one more place: it adds a sin-cos grid spread over the latent
(`get_2d_sincos_pos_embed_torch`, centre 7.5) instead of the MMDiT's stored positions. Loom follows the reference
code of the files' authors and diffusers, which agree.

Stability's earlier 2B ControlNet design (a square `text_embedder.linear_1` on top of the MMDiT's `y_embedder`,
its own patch embedding, blocks that do not chain) and InstantX's diffusers-layout SD3 ControlNets are refused
by name: no released file Loom knows of needs them.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.attention import merge_heads
from diffusion.flux_controlnet import BlockResiduals, spread_over_blocks
from diffusion.fused_linear import FusedLinear
from diffusion.mmdit import TIMESTEP_CHANNELS, TIMESTEP_SCALE, MMDiT, MMDiTConfig, PatchEmbedder, StreamBlock
from diffusion.unet import timestep_embedding
from diffusion.unet_config import CheckpointLayoutError, load_exact, require_key

__all__ = [
    "SD3ControlNet",
    "SD3ControlNetConfig",
    "SD3ControlType",
    "is_sd3_controlnet",
    "load_sd3_controlnet",
    "prepare_hint_image",
    "sd3_controlnet_config_from_state_dict",
    "tiny_sd3_controlnet_tensors",
]

SD3ControlType = Literal["blur", "canny", "depth"]

_COMPONENT = "SD3 ControlNet"
HEAD_WIDTH = 64  # every SD3 model's heads, which is how the ControlNet's head count is known
CONTROL_TYPE_KEY = "control_type"
_CONTROL_TYPES: dict[int, SD3ControlType] = {0: "blur", 1: "canny", 2: "depth"}
_BLOCK = re.compile(r"^transformer_blocks\.(\d+)\.")
_require = functools.partial(
    require_key, component=_COMPONENT, layout="one of Stability's SD3.5 ControlNets (sd3.5_large_controlnet_*)"
)


@dataclass(frozen=True)
class SD3ControlNetConfig:
    """Constructor arguments: `depth` self-attention blocks of `hidden_size` in `num_heads` heads, `pooled_dim`
    for the pooled text (CLIP-L + CLIP-G, 2048), the hint's latent channels and patch size (the MMDiT's), and
    the preprocessing the file asks of its hint image (`control_type`; None when it does not say)."""

    hidden_size: int
    num_heads: int
    depth: int
    pooled_dim: int = 2048
    hint_channels: int = 16
    patch_size: int = 2
    control_type: SD3ControlType | None = None

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} does not split into {self.num_heads} heads")
        if self.depth < 1:
            raise ValueError(f"an SD3 ControlNet needs at least one block, not {self.depth}")


def prepare_hint_image(image: torch.Tensor, control_type: SD3ControlType | None) -> torch.Tensor:
    """A control image in 0..1, channels first, as the ControlNet of `control_type` wants it before the VAE
    encodes it (ComfyUI's `load_controlnet_sd35`): canny edges at ``image * 255 * 0.5 + 0.5`` (far outside
    0..1: the files were trained on 0..255 edges), depth maps inverted (near is dark), blur (and an unnamed
    type) as they are."""
    if control_type == "canny":
        return image * 255 * 0.5 + 0.5
    if control_type == "depth":
        return 1.0 - image
    return image


class _EmbeddingMLP(nn.Module):
    """Linear, SiLU, linear under diffusers' names (`linear_1`, `linear_2`), as these files store them."""

    def __init__(self, in_features: int, hidden: int) -> None:
        super().__init__()
        self.linear_1 = FusedLinear(in_features, hidden)
        self.linear_2 = FusedLinear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class _TimeTextEmbedding(nn.Module):
    """The conditioning vector: the timestep's sinusoid (`timestep_embedder`) plus the pooled text
    (`text_embedder`), each through its MLP."""

    def __init__(self, hidden: int, pooled_dim: int) -> None:
        super().__init__()
        self.timestep_embedder = _EmbeddingMLP(TIMESTEP_CHANNELS, hidden)
        self.text_embedder = _EmbeddingMLP(pooled_dim, hidden)

    def forward(self, sigmas: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        dtype = self.timestep_embedder.linear_1.computes_in
        sinusoid = timestep_embedding(sigmas * TIMESTEP_SCALE, TIMESTEP_CHANNELS).to(dtype)
        return self.timestep_embedder(sinusoid) + self.text_embedder(pooled.to(dtype))


class _ControlBlock(StreamBlock):
    """One ControlNet block: an MMDiT image stream attending to itself alone (Stability's `DismantledBlock`),
    under the same key names (`adaLN_modulation.1`, `attn.qkv`, `attn.proj`, `mlp.fc1`, `mlp.fc2`)."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__(hidden, heads, qk_norm=False)

    def forward(self, tokens: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        (q, k, v), state = self.pre_attention(tokens, c)
        return self.post_attention(tokens, merge_heads(F.scaled_dot_product_attention(q, k, v)), state)


class SD3ControlNet(nn.Module):
    """`controlnet(x, hint, timesteps, context, y, transformer=mmdit)` -> `BlockResiduals` for `mmdit`.

    Computes in its parameters' dtype (the MMDiT's patch embedding in the MMDiT's); the residuals come back in
    x's dtype.
    """

    def __init__(self, config: SD3ControlNetConfig) -> None:
        super().__init__()
        self.config = config
        hidden = config.hidden_size
        self.time_text_embed = _TimeTextEmbedding(hidden, config.pooled_dim)
        self.pos_embed_input = PatchEmbedder(config.hint_channels, hidden, config.patch_size)
        self.transformer_blocks = nn.ModuleList(_ControlBlock(hidden, config.num_heads) for _ in range(config.depth))
        self.controlnet_blocks = nn.ModuleList(FusedLinear(hidden, hidden) for _ in range(config.depth))

    @property
    def dtype(self) -> torch.dtype:
        return self.time_text_embed.timestep_embedder.linear_1.computes_in

    def forward(
        self,
        x: torch.Tensor,
        hint: torch.Tensor,
        timesteps: torch.Tensor | float,
        context: torch.Tensor | None,
        y: torch.Tensor,
        guidance: torch.Tensor | float | None = None,
        *,
        transformer: MMDiT,
    ) -> BlockResiduals:
        """The residuals this ControlNet adds to `transformer`'s joint blocks at this step.

        x: [B, 16, H, W], the latent `transformer` receives (odd sides wrapped as it wraps them); timesteps: [B]
        or scalar sigma in [0, 1]; y: [B, pooled_dim] pooled text, the same the MMDiT gets; hint: [1 or B, 16, H,
        W], the control image's VAE latent after SD3's `process_in` (module docstring). context and guidance are
        taken for the common ControlNet signature and not used: these ControlNets read no text tokens and SD3
        has no distilled guidance.
        """
        hint = self._checked(x, hint, y, transformer)
        out_dtype, dtype = x.dtype, self.dtype
        batch, _, height, width = x.shape
        p = self.config.patch_size
        pad = (0, -width % p, 0, -height % p)
        if any(pad):
            x, hint = F.pad(x, pad, mode="circular"), F.pad(hint, pad, mode="circular")
        grid_h, grid_w = x.shape[-2] // p, x.shape[-1] // p

        positions = transformer.cropped_pos_embed(grid_h, grid_w).to(transformer.dtype)
        embedded = transformer.x_embedder(x.to(transformer.dtype)) + positions
        tokens = embedded.to(dtype) + self.pos_embed_input(hint.to(dtype))
        sigmas = torch.as_tensor(timesteps, device=x.device).to(torch.float32).expand(batch)
        c = self.time_text_embed(sigmas, y)

        outputs = []
        for block, zero in zip(self.transformer_blocks, self.controlnet_blocks):
            tokens = block(tokens, c)
            outputs.append(zero(tokens).to(out_dtype))
        return BlockResiduals(spread_over_blocks(outputs, transformer.config.depth))

    def _checked(self, x: torch.Tensor, hint: torch.Tensor, y: torch.Tensor, transformer: MMDiT) -> torch.Tensor:
        """The hint expanded to x's batch, after checking the inputs and the MMDiT against this ControlNet."""
        config, target = self.config, transformer.config
        if (target.hidden_size, target.patch_size) != (config.hidden_size, config.patch_size):
            raise ValueError(
                f"this ControlNet is {config.hidden_size} wide with {config.patch_size}-pixel patches, the MMDiT "
                f"{target.hidden_size} with {target.patch_size} (made for another SD3 model?)"
            )
        if x.ndim != 4 or x.shape[1] != target.in_channels:
            raise ValueError(f"x must be [B, {target.in_channels}, H, W], got {tuple(x.shape)}")
        if y.ndim != 2 or y.shape[-1] != config.pooled_dim:
            raise ValueError(f"y must be [B, {config.pooled_dim}] (pooled CLIP-L and CLIP-G), got {tuple(y.shape)}")
        expected = (config.hint_channels, *x.shape[-2:])
        if hint.ndim != 4 or tuple(hint.shape[1:]) != expected or hint.shape[0] not in (1, x.shape[0]):
            raise ValueError(
                f"the hint (the control image's VAE latent) must be [1 or {x.shape[0]}, {expected[0]}, "
                f"{expected[1]}, {expected[2]}] for latents {tuple(x.shape)}, got {tuple(hint.shape)}"
            )
        return hint.expand(x.shape[0], -1, -1, -1)


# ---------------------------------------------------------------- detection and loading


def is_sd3_controlnet(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether the weights are one of Stability's SD3.5 ControlNets (ComfyUI's markers: `controlnet_blocks`,
    `pos_embed_input.proj` and blocks with an original-layout `adaLN_modulation`)."""
    return all(
        key in state_dict
        for key in (
            "controlnet_blocks.0.weight",
            "pos_embed_input.proj.weight",
            "transformer_blocks.0.adaLN_modulation.1.bias",
        )
    )


def _control_type(state_dict: Mapping[str, torch.Tensor]) -> SD3ControlType | None:
    stored = state_dict.get(CONTROL_TYPE_KEY)
    if stored is None:
        return None
    code = round(float(stored.float().reshape(-1)[0]))
    if code not in _CONTROL_TYPES:
        raise CheckpointLayoutError(_COMPONENT, CONTROL_TYPE_KEY, f"{code} is not 0 (blur), 1 (canny) or 2 (depth)")
    return _CONTROL_TYPES[code]


def sd3_controlnet_config_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> SD3ControlNetConfig:
    """The config of an SD3.5 ControlNet file; refuses the layouts the module docstring names."""
    if "pos_embed_input.proj.weight" in state_dict and "transformer_blocks.0.norm1.linear.weight" in state_dict:
        raise CheckpointLayoutError(
            _COMPONENT,
            "transformer_blocks.0.norm1.linear.weight",
            "an SD3 ControlNet in diffusers' layout (InstantX), which Loom does not load yet",
        )
    patch = _require(state_dict, "pos_embed_input.proj.weight")
    pooled = _require(state_dict, "time_text_embed.text_embedder.linear_1.weight")
    hidden = int(patch.shape[0])
    if int(pooled.shape[1]) == hidden:
        raise CheckpointLayoutError(
            _COMPONENT,
            "time_text_embed.text_embedder.linear_1.weight",
            "square: an SD3 ControlNet of the 2B design (on top of the MMDiT's y_embedder), which Loom does not load",
        )
    if hidden % HEAD_WIDTH:
        raise CheckpointLayoutError(_COMPONENT, "pos_embed_input.proj.weight", f"width {hidden} is not 64-wide heads")
    blocks = {int(m.group(1)) for m in map(_BLOCK.match, state_dict) if m}
    if not blocks or blocks != set(range(max(blocks) + 1)):
        raise CheckpointLayoutError(_COMPONENT, "transformer_blocks.0.*", f"blocks {sorted(blocks)} are not 0..n-1")
    return SD3ControlNetConfig(
        hidden_size=hidden,
        num_heads=hidden // HEAD_WIDTH,
        depth=len(blocks),
        pooled_dim=int(pooled.shape[1]),
        hint_channels=int(patch.shape[1]),
        patch_size=int(patch.shape[2]),
        control_type=_control_type(state_dict),
    )


def load_sd3_controlnet(state_dict: Mapping[str, torch.Tensor]) -> SD3ControlNet:
    """An SD3.5 ControlNet around the weights of its file; the module adopts the tensors as they are (dtype
    included). Raises `CheckpointLayoutError` naming the first key at fault."""
    config = sd3_controlnet_config_from_state_dict(state_dict)
    with torch.device("meta"):
        model = SD3ControlNet(config)
    load_exact(model, {k: v for k, v in state_dict.items() if k != CONTROL_TYPE_KEY}, _COMPONENT)
    return model


def tiny_sd3_controlnet_tensors(
    mmdit_config: MMDiTConfig, seed: int = 0, control_type: SD3ControlType | None = "canny"
) -> dict[str, torch.Tensor]:
    """A random SD3.5 ControlNet for the MMDiT of `mmdit_config`, in the key layout of Stability's files.

    Half as many blocks as the MMDiT has joint blocks (19 of 38 in the release), so each residual serves two;
    64-wide heads, as the loader reads them; the `control_type` scalar of the given type (none for None).
    """
    # Imported here: diffusion.tiny pulls in the checkpoint and text-encoder packages.
    from diffusion.tiny import seeded_rng

    hidden = mmdit_config.hidden_size
    if hidden % HEAD_WIDTH:
        raise ValueError(f"an SD3 ControlNet needs 64-wide heads; width {hidden} has none")
    config = SD3ControlNetConfig(
        hidden_size=hidden,
        num_heads=hidden // HEAD_WIDTH,
        depth=max(1, mmdit_config.depth // 2),
        pooled_dim=mmdit_config.pooled_dim,
        hint_channels=mmdit_config.in_channels,
        patch_size=mmdit_config.patch_size,
        control_type=control_type,
    )
    with seeded_rng(seed):
        model = SD3ControlNet(config)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name.startswith(("controlnet_blocks", "pos_embed_input")):
                    parameter.normal_(0.0, 0.05)
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if control_type is not None:
        codes = {name: code for code, name in _CONTROL_TYPES.items()}
        tensors[CONTROL_TYPE_KEY] = torch.tensor(float(codes[control_type]))
    return tensors
