"""Tiny random files of every family and part, in the key layout of the files users download.

`diffusion.tiny` makes the all-in-one SD1/SD2/SDXL checkpoints. This module adds the flow-matching
families and the single parts people download one by one for them:

- `diffusion_model`: the transformer with no prefix, as in `diffusion_models/`: SD3/SD3.5's MMDiT in
  Stability's keys (`joint_blocks.*`, `x_embedder`, `pos_embed` ...), FLUX.1's in Black Forest Labs' keys
  (`double_blocks.*`, `single_blocks.*`, `img_in` ...; `flux1-dev.safetensors`).
- `vae`: the 16-channel LDM autoencoder without quant convs, no prefix (FLUX's `ae.safetensors`).
- `clip_l`, `clip_g`: transformers' `CLIPTextModel` keys (`text_model.*`), CLIP-G with `text_projection.weight`
  beside them, as ComfyUI's `clip_l.safetensors` and `clip_g.safetensors`; FLUX has no CLIP-G.
- `t5xxl`: transformers' `T5EncoderModel` keys (`shared.weight`, `encoder.block.N.*`), as `t5xxl_fp16.safetensors`.
- `qwen3_4b`: Z-Image's text encoder in its file's keys (`model.embed_tokens.weight`, `model.layers.N.*`).
- `lora`: ComfyUI's own LoRA layout, `diffusion_model.<module>.lora_down.weight`, `.lora_up.weight` and
  `.alpha`, on the attention and MLP linears of the transformer's blocks.
- `checkpoint`: all in one.
- `controlnet` (SD1.5, SD2, SDXL, SD3.5 Large and FLUX.1 dev): a ControlNet for the transformer or UNet of the
  family's tiny files, in the layout its published files have: the original `control_model.` layout for the UNets
  (`diffusion.controlnet`; SDXL's has the UNet's `label_emb`), Stability's SD3.5 ControlNet layout (canny,
  `diffusion.sd3_controlnet`), InstantX's diffusers layout for FLUX (`diffusion.flux_controlnet`).
- `t2i_adapter` (SD1.5: TencentARC's full adapter; SDXL: the XL adapter in diffusers' layout) and
  `controlnet_union` (SDXL: xinsir's ProMax layout), `diffusion.t2i_adapter` and `diffusion.controlnet_union`.
- `clip_vision_h`, `clip_vision_g`, `siglip_vision` (any family: the towers are the same for all): CLIP-ViT-H,
  CLIP-ViT-bigG and SigLIP vision towers in transformers' layout, as `models/clip_vision/` holds them
  (`diffusion.clip_vision`); `style_model` (FLUX.1 dev): a Redux image encoder (`diffusion.style_model`) that
  reads the tiny SigLIP's states and writes tokens of the tiny FLUX's context width.

All-in-one prefixes, as ComfyUI reads and writes them (`supported_models.py`: SD3 keeps the default VAE prefix,
FLUX sets `vae.`; both set `text_encoders.`): the transformer under `model.diffusion_model.`, the VAE under
`first_stage_model.` (SD3) or `vae.` (FLUX), each text encoder under `text_encoders.<name>.transformer.`, beside
the `text_encoders.<name>.logit_scale` scalar that ComfyUI's encoder wrappers save (seen in its FLUX fp8 file).
SD3 has clip_l, clip_g and t5xxl; FLUX has clip_l and t5xxl. Z-Image (`diffusion_model`, `vae`, `qwen3_4b`, `lora`)
and Chroma (`diffusion_model`, `vae`, `t5xxl`, `lora`) ship as split files only, and share FLUX's VAE.

Sizes. Widths are tiny except where the real value is part of what a loader or a caller relies on:

- The transformers keep the real text-input widths, which cost one linear layer each: context 4096 (T5-XXL's
  width) for both, pooled 768 (CLIP-L) for FLUX and 2048 (CLIP-L 768 + CLIP-G 1280) for SD3. The tiny encoders
  are narrower (CLIP 64, T5 64), so a stack feeding a tiny transformer from tiny encoders zero-pads each output
  to the width the transformer reads, as ComfyUI's SD3 stack already pads the CLIP pair to 4096; on real files
  that padding is a no-op. CLIP-G's projection keeps its real 1280 outputs.
- FLUX heads are 128 wide, one head: `flux_config_from_state_dict` reads the head width from the QK-norm scale
  and knows RoPE axes only for 128 (the release's (16, 56, 56)), so these files load with no `axes_dim`.
- The MMDiT is 128 wide with two blocks, so it keeps SD3's rule of 64-wide heads and one head per block (the
  loader's rule when there is no qk-norm). qk-norm marks SD3.5; `sd35_medium` has dual attention
  (`x_block.attn2`) in its first block. Its stored positions cover a 64 x 64 patch grid (latents up to 128,
  images up to 1024 pixels), where the releases store 192 (384 for SD3.5 Medium).
- CLIP-G has its real 32 layers (64 wide: cheap) because ComfyUI tells a standalone CLIP-G file from a CLIP-L by
  `text_model.encoder.layers.30.*`; CLIP-L has 2. Vocabularies are real: 49,408 CLIP tokens and T5's 32,128-row
  table, so the real tokenizers' ids (up to 49,407 and 32,099) are rows of the tiny embeddings.
- The VAE has four levels (8x per side) as every SD3/FLUX VAE, at widths 32-64, `z_channels` 16.
- Z-Image is 256 wide (two 128-wide heads for the release's RoPE split), one block of each kind, caption width
  2560 (Qwen3-4B's; the 64-wide tiny Qwen3 is zero-padded to it like the tiny T5). Its learned pad tokens are
  random. Chroma is FLUX's tiny shape without modulations, with a 64-wide two-layer approximator. The tiny
  Qwen3 has three layers (Z-Image reads the second-to-last) and the real 151,936-row table.

Dtypes (`--dtype`):

- `fp32`: as built. `fp16`, `bf16`: every floating tensor cast but the `logit_scale` scalars, fp32 in every dtype
  (ComfyUI's fp8 FLUX checkpoint keeps them so beside its fp16 CLIP).
- `fp8`: as ComfyUI's all-in-one FLUX fp8 checkpoint stores them, every floating tensor of the transformer and
  of T5 (biases and norm scales included) in float8_e4m3fn, CLIP in fp16 and the VAE in fp32.
- `fp8_scaled`: the weights of the linear layers of the transformer and of T5 in float8_e4m3fn, divided by a
  per-tensor scale ``amax / 448`` (the e4m3 range) stored beside them as `<layer>.scale_weight` (fp32 scalar),
  with `<layer>.scale_input` (fp32 1.0) and a `scaled_fp8` marker (an empty float8_e4m3fn tensor) under the
  component's prefix; their other tensors (the patch convolution, embeddings, norms, biases) in bf16. CLIP in
  fp16, the VAE in fp32, as in the fp8 files.
- `fp8_mixed`: per-tensor dtypes in one file, as Chroma1-HD-fp8mixed: the linear layers' weights in float8_e4m3fn
  (no scales), every other floating tensor in bf16. For diffusion models and T5.
- fp8 files exist for diffusion models, T5 and whole checkpoints only; a VAE, CLIP, Qwen3, LoRA, control or
  image-encoder part, and the SD1/SD2/SDXL checkpoints, come in fp32, fp16 and bf16.

Every component is drawn from its own stream of the seed, so a part equals the same component of the all-in-one
file, and the text encoders (like the real files) are the same for every family.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import cast

import torch
from safetensors.torch import save_file
from torch import nn

from diffusion.chroma import ChromaConfig, ChromaTransformer
from diffusion.clip_vision import ClipVisionKind, tiny_clip_vision_tensors
from diffusion.controlnet import tiny_controlnet_tensors
from diffusion.controlnet_union import tiny_controlnet_union_tensors
from diffusion.flux import FluxConfig, FluxTransformer
from diffusion.flux import RMSNorm as FluxRMSNorm
from diffusion.flux_controlnet import tiny_flux_controlnet_tensors
from diffusion.mmdit import MMDiT, MMDiTConfig
from diffusion.mmdit import RMSNorm as MMDiTRMSNorm
from diffusion.sd3_controlnet import tiny_sd3_controlnet_tensors
from diffusion.style_model import tiny_redux_tensors
from diffusion.t2i_adapter import tiny_t2i_adapter_tensors
from diffusion.text_encoders import ClipTextConfig, ClipTextModel
from diffusion.text_encoders.qwen3 import Qwen3Config, Qwen3Encoder, Qwen3RmsNorm
from diffusion.text_encoders.t5 import T5Encoder, T5EncoderConfig, T5RmsNorm
from diffusion.tiny import (
    TINY_TEXT_WIDTH,
    randomize_norms,
    seeded_rng,
    tiny_checkpoint_tensors,
    tiny_unet_config,
    write_tiny_checkpoint,
)
from diffusion.tokenizer import VOCAB_SIZE as CLIP_VOCAB_SIZE
from diffusion.vae import AutoencoderKL, VAEConfig
from diffusion.zimage import RMSNorm as ZImageRMSNorm
from diffusion.zimage import ZImageConfig, ZImageTransformer

__all__ = [
    "DTYPES",
    "FAMILIES",
    "FLOW_FAMILIES",
    "PARTS",
    "SD_FAMILIES",
    "T5_EMBEDDING_ROWS",
    "TINY_CLIP_G",
    "TINY_CLIP_L",
    "TINY_QWEN3",
    "TINY_T5",
    "TINY_VAE",
    "TinyFileError",
    "checkpoint_prefixes",
    "tiny_chroma_config",
    "tiny_file_tensors",
    "tiny_flux_config",
    "tiny_mmdit_config",
    "tiny_zimage_config",
    "valid_dtypes",
    "valid_parts",
    "write_tiny_file",
]

SD_FAMILIES = ("sd15", "sd2", "sdxl", "sdxl_refiner")
_SD3_FAMILIES = ("sd3", "sd35_medium", "sd35_large")
_FLUX_FAMILIES = ("flux_dev", "flux_schnell", "flux_fill", "flux_canny", "flux_depth")
FLOW_FAMILIES = (*_SD3_FAMILIES, *_FLUX_FAMILIES, "zimage", "chroma")
FAMILIES = (*SD_FAMILIES, *FLOW_FAMILIES)
_MODEL_PARTS = ("checkpoint", "diffusion_model", "vae", "clip_l", "clip_g", "t5xxl", "qwen3_4b", "lora")
#: The control and image-prompt models published for each family (none for the SDXL refiner).
_CONTROL_PARTS = {
    "sd15": ("controlnet", "t2i_adapter"),
    "sd2": ("controlnet",),
    "sdxl": ("controlnet", "t2i_adapter", "controlnet_union"),
    "sd35_large": ("controlnet",),
    "flux_dev": ("controlnet", "style_model"),
}
_VISION_PARTS = ("clip_vision_h", "clip_vision_g", "siglip_vision")
PARTS = (*_MODEL_PARTS, "controlnet", "t2i_adapter", "controlnet_union", "style_model", *_VISION_PARTS)
DTYPES = ("fp32", "fp16", "bf16", "fp8", "fp8_scaled", "fp8_mixed")
_PLAIN_DTYPES = DTYPES[:3]
_FP8_PARTS = ("checkpoint", "diffusion_model", "t5xxl")
#: The parts of the families that ship as split files only (no all-in-one checkpoint).
_SPLIT_PARTS = {
    "zimage": ("diffusion_model", "vae", "qwen3_4b", "lora"),
    "chroma": ("diffusion_model", "vae", "t5xxl", "lora"),
}

# T5 v1.1's embedding table: the tokenizer's 32,100 ids, rounded up to a multiple of 128.
T5_EMBEDDING_ROWS = 32128
_T5_WIDTH = 4096  # T5-XXL's d_model: the context width of both transformers
_CLIP_L_POOLED = 768
_CLIP_G_POOLED = 1280
_LOGIT_SCALE = 4.6052  # ln 100, the trained CLIP temperature ComfyUI's encoder wrappers keep beside each encoder
_E4M3_MAX = 448.0
_LORA_RANK = 4
_LORA_ALPHA = 2.0  # alpha / rank = 0.5, so a loader that ignores alpha is visibly off

TINY_VAE = VAEConfig(
    base_channels=32, channel_mult=(1, 2, 2, 2), num_res_blocks=1, z_channels=16, embed_dim=16, use_quant_conv=False
)
TINY_CLIP_L = ClipTextConfig(
    width=TINY_TEXT_WIDTH,
    layers=2,
    heads=1,
    intermediate=2 * TINY_TEXT_WIDTH,
    vocab_size=CLIP_VOCAB_SIZE,
    positions=77,
    activation="quick_gelu",
)
TINY_CLIP_G = ClipTextConfig(
    width=TINY_TEXT_WIDTH,
    layers=32,
    heads=1,
    intermediate=2 * TINY_TEXT_WIDTH,
    vocab_size=CLIP_VOCAB_SIZE,
    positions=77,
    activation="gelu",
    projection_dim=_CLIP_G_POOLED,
)
TINY_T5 = T5EncoderConfig(d_model=64, layers=2, heads=2, d_kv=32, d_ff=128, vocab_size=T5_EMBEDDING_ROWS)
# Three layers, so the second-to-last one Z-Image reads is not the first; the real 151,936-row table.
TINY_QWEN3 = Qwen3Config(
    hidden_size=64, layers=3, heads=2, kv_heads=1, head_dim=32, intermediate_size=128, vocab_size=151936
)
_QWEN3_WIDTH = 2560  # Qwen3-4B's hidden size: the caption width of Z-Image

_TEXT_ENCODERS = {"sd3": ("clip_l", "clip_g", "t5xxl"), "flux": ("clip_l", "t5xxl")}
_VAE_PREFIXES = {"sd3": "first_stage_model.", "flux": "vae."}
_DIFFUSION_MODEL_PREFIX = "model.diffusion_model."
_LORA_PREFIX = "diffusion_model."
_BLOCK = re.compile(r"^(joint_blocks|double_blocks|single_blocks|layers|noise_refiner|context_refiner)\.")
_MODULATION = re.compile(r"(_mod\.lin|modulation\.lin|adaLN_modulation\.[01])$")


_PLURALS = {"family": "families", "part": "parts", "dtype": "dtypes"}


class TinyFileError(ValueError):
    """A family, part or dtype with no tiny file; `valid` lists what would be accepted in its place.

    `context` is empty for a name that is unknown altogether, or says what the name does not exist for
    ("flux_dev" for CLIP-G, which FLUX has not).
    """

    def __init__(self, field: str, value: str, valid: tuple[str, ...], context: str = "") -> None:
        problem = f"no {field} {value!r} for {context}" if context else f"unknown {field} {value!r}"
        super().__init__(f"{problem}; valid {_PLURALS[field]}: {', '.join(valid)}")
        self.field = field
        self.value = value
        self.valid = valid
        self.context = context


def _kind(family: str) -> str:
    return "sd3" if family in _SD3_FAMILIES else "flux" if family in _FLUX_FAMILIES else family


def valid_parts(family: str) -> tuple[str, ...]:
    """The parts `family` has a tiny file of (raises `TinyFileError` for an unknown family)."""
    if family not in FAMILIES:
        raise TinyFileError("family", family, FAMILIES)
    if family in SD_FAMILIES:
        models: tuple[str, ...] = ("checkpoint",)
    elif family in _SPLIT_PARTS:
        models = _SPLIT_PARTS[family]
    else:
        excluded = {"qwen3_4b"} | ({"clip_g"} if _kind(family) == "flux" else set())
        models = tuple(part for part in _MODEL_PARTS if part not in excluded)
    return (*models, *_CONTROL_PARTS.get(family, ()), *_VISION_PARTS)


def _control_tensors(family: str, part: str, seed: int) -> dict[str, torch.Tensor]:
    """A control or image-prompt part (module docstring) for the tiny models of ``family``."""
    if part in _VISION_PARTS:
        return tiny_clip_vision_tensors(cast(ClipVisionKind, part), seed)
    if part == "style_model":
        return tiny_redux_tensors(seed)
    if family == "sd35_large":
        return tiny_sd3_controlnet_tensors(tiny_mmdit_config(family), seed)
    if family == "flux_dev":
        return tiny_flux_controlnet_tensors(tiny_flux_config(family), seed)
    unet = tiny_unet_config(family)
    if part == "t2i_adapter":
        return tiny_t2i_adapter_tensors(unet, seed)
    if part == "controlnet_union":
        return tiny_controlnet_union_tensors(unet, seed)
    return tiny_controlnet_tensors(unet, seed)


def valid_dtypes(family: str, part: str) -> tuple[str, ...]:
    """The dtypes `part` of `family` comes in (raises `TinyFileError` for an unknown family or part)."""
    parts = valid_parts(family)
    if part not in PARTS:
        raise TinyFileError("part", part, PARTS)
    if part not in parts:
        raise TinyFileError("part", part, parts, family)
    if family in FLOW_FAMILIES and part in _FP8_PARTS:
        return DTYPES if part != "checkpoint" else tuple(dtype for dtype in DTYPES if dtype != "fp8_mixed")
    return _PLAIN_DTYPES


def _check(family: str, part: str, dtype: str) -> None:
    dtypes = valid_dtypes(family, part)
    if dtype not in DTYPES:
        raise TinyFileError("dtype", dtype, DTYPES)
    if dtype not in dtypes:
        raise TinyFileError("dtype", dtype, dtypes, f"the {part} of {family}")


def tiny_flux_config(family: str) -> FluxConfig:
    """The tiny FLUX.1 transformer of `family`: Fill takes 384 token features, Canny/Depth 128, schnell no guidance."""
    if family not in _FLUX_FAMILIES:
        raise TinyFileError("family", family, _FLUX_FAMILIES, "a FLUX.1 transformer")
    in_channels = {"flux_fill": 384, "flux_canny": 128, "flux_depth": 128}.get(family, 64)
    return FluxConfig(
        in_channels=in_channels,
        out_channels=64,
        hidden_size=128,
        num_heads=1,
        depth=1,
        depth_single_blocks=2,
        context_dim=_T5_WIDTH,
        vec_dim=_CLIP_L_POOLED,
        guidance_embed=family != "flux_schnell",
    )


def tiny_mmdit_config(family: str) -> MMDiTConfig:
    """The tiny MMDiT of `family`: SD3.5 has qk-norm, SD3.5 Medium dual attention in its first block."""
    if family not in _SD3_FAMILIES:
        raise TinyFileError("family", family, _SD3_FAMILIES, "an MMDiT")
    return MMDiTConfig(
        depth=2,
        hidden_size=128,
        num_heads=2,
        pos_embed_max_size=64,
        pooled_dim=_CLIP_L_POOLED + _CLIP_G_POOLED,
        context_dim=_T5_WIDTH,
        qk_norm=family != "sd3",
        dual_attention_blocks=(0,) if family == "sd35_medium" else (),
    )


def tiny_zimage_config() -> ZImageConfig:
    """The tiny Z-Image transformer: two 128-wide heads (the release's RoPE split fits them), one block of each
    kind, the real caption width of Qwen3-4B."""
    return ZImageConfig(
        hidden_size=256,
        num_heads=2,
        depth=1,
        noise_refiner_depth=1,
        context_refiner_depth=1,
        context_dim=_QWEN3_WIDTH,
        mlp_hidden_size=512,
        adaln_dim=256,
        time_hidden_size=256,
    )


def tiny_chroma_config() -> ChromaConfig:
    """The tiny Chroma transformer: FLUX's tiny shape (one 128-wide head) with a small approximator."""
    return ChromaConfig(
        hidden_size=128,
        num_heads=1,
        depth=1,
        depth_single_blocks=2,
        context_dim=_T5_WIDTH,
        approximator_hidden=64,
        approximator_depth=2,
    )


def checkpoint_prefixes(family: str) -> tuple[str, ...]:
    """The key prefixes of the tiny all-in-one checkpoint of a flow-matching `family` (its only other keys are
    the `text_encoders.<name>.logit_scale` scalars)."""
    with_checkpoint = tuple(family for family in FLOW_FAMILIES if family not in _SPLIT_PARTS)
    if family not in with_checkpoint:
        raise TinyFileError("family", family, with_checkpoint, "a flow-matching checkpoint")
    kind = _kind(family)
    encoders = tuple(f"text_encoders.{name}.transformer." for name in _TEXT_ENCODERS[kind])
    return (_DIFFUSION_MODEL_PREFIX, _VAE_PREFIXES[kind], *encoders)


def _checkpoint_components(family: str) -> tuple[str, ...]:
    """The parts of an all-in-one file, in the order of `checkpoint_prefixes`."""
    return ("diffusion_model", "vae", *_TEXT_ENCODERS[_kind(family)])


# ---------------------------------------------------------------- components, in fp32


def _stream(seed: int, component: str) -> int:
    """A seed of its own for each component, so that a part does not depend on what else the file holds."""
    return (seed * 2**32 + zlib.crc32(component.encode())) % 2**63


def _randomize_rms_norms(model: nn.Module) -> None:
    """Random RMS-norm scales: a scale of ones would hide a swapped or misplaced norm."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (FluxRMSNorm, MMDiTRMSNorm, T5RmsNorm, ZImageRMSNorm, Qwen3RmsNorm)):
                for parameter in module.parameters(recurse=False):
                    parameter.uniform_(0.5, 1.5)


def _transformer(family: str) -> nn.Module:
    if _kind(family) == "flux":
        return FluxTransformer(tiny_flux_config(family))
    if family == "zimage":
        model: nn.Module = ZImageTransformer(tiny_zimage_config())
        with torch.no_grad():  # learned pad tokens, initialised to zeros, which would hide a misplaced one
            for name, parameter in model.named_parameters():
                if name.endswith("pad_token"):
                    parameter.normal_()
        return model
    if family == "chroma":
        return ChromaTransformer(tiny_chroma_config())
    model = MMDiT(tiny_mmdit_config(family))
    with torch.no_grad():
        model.pos_embed.uniform_(-1.0, 1.0)  # fixed sin/cos positions in the releases, all in [-1, 1]
    return model


def _clip_keys(model: ClipTextModel) -> dict[str, torch.Tensor]:
    """transformers' layout: the tower under `text_model.`, the projection (CLIP-G) beside it."""
    return {
        name if name.startswith("text_projection.") else f"text_model.{name}": tensor
        for name, tensor in model.state_dict().items()
    }


def _component(family: str, name: str, seed: int) -> tuple[dict[str, torch.Tensor], frozenset[str]]:
    """(its fp32 tensors in the file's layout without prefix, the keys of its linear layers' weights)."""
    # FLUX's VAE serves Z-Image and Chroma too: one `ae.safetensors` for the three.
    vae = "sd3_vae" if _kind(family) == "sd3" else "flux_vae"
    stream = {"diffusion_model": family, "vae": vae}.get(name, name)
    with seeded_rng(_stream(seed, stream)):
        model: nn.Module
        if name == "diffusion_model":
            model = _transformer(family)
        elif name == "vae":
            model = AutoencoderKL(TINY_VAE)
        elif name == "t5xxl":
            model = T5Encoder(TINY_T5)
        elif name == "qwen3_4b":
            model = Qwen3Encoder(TINY_QWEN3)
        else:
            model = ClipTextModel(TINY_CLIP_L if name == "clip_l" else TINY_CLIP_G)
        randomize_norms(model)
        _randomize_rms_norms(model)
    tensors = _clip_keys(model) if isinstance(model, ClipTextModel) else model.state_dict()
    # The file keys are the module's own for the two components whose linears fp8_scaled quantises.
    linear = frozenset(f"{path}.weight" for path, layer in model.named_modules() if isinstance(layer, nn.Linear))
    return {key: tensor.detach().contiguous() for key, tensor in tensors.items()}, linear


def _lora(family: str, seed: int) -> dict[str, torch.Tensor]:
    """A rank-4 LoRA on every attention and MLP linear of the transformer's blocks, in ComfyUI's layout."""
    with torch.device("meta"):
        shapes = _transformer(family)
    targets = [
        (name, module)
        for name, module in shapes.named_modules()
        if isinstance(module, nn.Linear) and _BLOCK.match(name) and not _MODULATION.search(name)
    ]
    tensors: dict[str, torch.Tensor] = {}
    with seeded_rng(_stream(seed, f"{family}_lora")):
        for name, module in targets:
            stem = _LORA_PREFIX + name
            tensors[f"{stem}.lora_down.weight"] = torch.randn(_LORA_RANK, module.in_features) / module.in_features**0.5
            tensors[f"{stem}.lora_up.weight"] = torch.randn(module.out_features, _LORA_RANK) * 0.05
            tensors[f"{stem}.alpha"] = torch.tensor(_LORA_ALPHA)
    return tensors


# ---------------------------------------------------------------- dtypes


def _cast(tensors: Mapping[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {key: tensor.to(dtype) if tensor.is_floating_point() else tensor for key, tensor in tensors.items()}


def _to_e4m3(tensor: torch.Tensor) -> torch.Tensor:
    # e4m3fn has no infinity: a value past its range would become NaN, so saturate first.
    return tensor.clamp(-_E4M3_MAX, _E4M3_MAX).to(torch.float8_e4m3fn)


def _scaled_fp8(tensors: Mapping[str, torch.Tensor], linear: frozenset[str]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        if key not in linear:
            out[key] = tensor.to(torch.bfloat16) if tensor.is_floating_point() else tensor
            continue
        amax = tensor.abs().amax().float()
        scale = amax / _E4M3_MAX if amax > 0 else torch.ones((), dtype=torch.float32)
        layer = key.removesuffix(".weight")
        out[key] = _to_e4m3(tensor / scale)
        out[f"{layer}.scale_weight"] = scale.reshape(())
        out[f"{layer}.scale_input"] = torch.ones((), dtype=torch.float32)
    out["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    return out


def _fp8_mixed(tensors: Mapping[str, torch.Tensor], linear: frozenset[str]) -> dict[str, torch.Tensor]:
    """The linear layers' weights in float8_e4m3fn, unscaled; every other floating tensor in bf16."""
    return {
        key: _to_e4m3(tensor) if key in linear else tensor.to(torch.bfloat16) if tensor.is_floating_point() else tensor
        for key, tensor in tensors.items()
    }


def _stored(
    name: str, tensors: Mapping[str, torch.Tensor], dtype: str, linear: frozenset[str] = frozenset()
) -> dict[str, torch.Tensor]:
    """Component `name`'s tensors as a `dtype` file stores them (module docstring); `linear` names the weights
    of its linear layers."""
    if dtype in ("fp16", "bf16"):
        return _cast(tensors, torch.float16 if dtype == "fp16" else torch.bfloat16)
    if dtype == "fp8_mixed" and name in ("diffusion_model", "t5xxl"):
        return _fp8_mixed(tensors, linear)
    if dtype in ("fp8", "fp8_scaled"):
        if name in ("clip_l", "clip_g"):
            return _cast(tensors, torch.float16)
        if name in ("diffusion_model", "t5xxl"):
            if dtype == "fp8":
                return {key: _to_e4m3(t) if t.is_floating_point() else t for key, t in tensors.items()}
            return _scaled_fp8(tensors, linear)
    return dict(tensors)


def _part(family: str, name: str, dtype: str, seed: int) -> dict[str, torch.Tensor]:
    tensors, linear = _component(family, name, seed)
    return _stored(name, tensors, dtype, linear)


def _checkpoint(family: str, dtype: str, seed: int) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, prefix in zip(_checkpoint_components(family), checkpoint_prefixes(family)):
        out.update({prefix + key: tensor for key, tensor in _part(family, name, dtype, seed).items()})
    for name in _TEXT_ENCODERS[_kind(family)]:
        out[f"text_encoders.{name}.logit_scale"] = torch.tensor(_LOGIT_SCALE)
    return out


# ---------------------------------------------------------------- entry points


def tiny_file_tensors(
    family: str, part: str = "checkpoint", dtype: str = "fp32", seed: int = 0
) -> dict[str, torch.Tensor]:
    """The tensors of the tiny `part` file of `family` stored as `dtype` (module docstring), deterministic for a
    given torch version and seed. Raises `TinyFileError` for a family, part or dtype with no tiny file."""
    _check(family, part, dtype)
    if part not in _MODEL_PARTS:
        return _stored(part, _control_tensors(family, part, _stream(seed, part)), dtype)
    if family in SD_FAMILIES:
        tensors = tiny_checkpoint_tensors(family, seed=seed)
        return _stored("checkpoint", tensors, dtype)
    if part == "checkpoint":
        return _checkpoint(family, dtype, seed)
    if part == "lora":
        return _stored("lora", _lora(family, seed), dtype)
    return _part(family, part, dtype, seed)


def write_tiny_file(
    path: str | Path, family: str, part: str = "checkpoint", dtype: str = "fp32", seed: int = 0
) -> Path:
    """Write `tiny_file_tensors(...)` as one `.safetensors` file; returns the path.

    An fp32 SD1/SD2/SDXL checkpoint is exactly `diffusion.tiny.write_tiny_checkpoint`'s file.
    """
    _check(family, part, dtype)
    path = Path(path)
    if family in SD_FAMILIES and part == "checkpoint" and dtype == "fp32":
        return write_tiny_checkpoint(path, family, seed=seed)
    tensors = tiny_file_tensors(family, part, dtype, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    # One metadata entry: safetensors writes its metadata map in hash order, which varies between calls.
    save_file(tensors, path, metadata={"loom.tiny": f"{family} part={part} dtype={dtype} seed={seed}"})
    return path
