"""Which model a file holds, from its key names and tensor shapes alone.

Single-file checkpoints carry no config. ComfyUI matches exact sizes (context_dim 768, 320
channels...); Loom instead keys on *structure*, which holds for real and for tiny test models alike:

- SDXL base/refiner: the UNet has a class-embedding MLP (`label_emb`, the pooled-text + size/crop
  conditioning of Podell et al. 2023) and no attention at the first resolution level; the base has
  3 levels, the refiner 4.
- SD2.x: no `label_emb`, linear `proj_in` in the transformers (`use_linear_in_transformer`, every
  `v2-inference*.yaml`). SD1.x: convolutional 1x1 `proj_in` (`v1-inference.yaml`).
- SD2.1 unCLIP has `label_emb` *and* attention at level 0 (an SD2 UNet with an image embedding).
- Prediction type: SDXL files announce it with marker keys (`v_pred`, `edm_mean`/`edm_std`); SD2 files
  do not, and the SD2 v-models are told apart by a weight statistic (below).

- SD3 / SD3.5 (MMDiT, `joint_blocks.*`) and FLUX.1 (`double_blocks.*`) are the rectified-flow
  transformers, found with or without the `model.diffusion_model.` prefix (standalone files in
  `diffusion_models/` have none); their latents have 16 channels.

Text encoders are recognised by their key layout: Hugging Face CLIP (`...embeddings.token_embedding`)
or OpenCLIP (`...token_embedding` + `transformer.resblocks`), at the prefixes the LDM/SGM training code
used (`cond_stage_model.transformer.`, `cond_stage_model.model.`, `conditioner.embedders.N.`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..unet_config import CheckpointLayoutError, UNetConfig, detect_unet_config
from .errors import UnknownModelError, UnsupportedModelError
from .files import LazyStateDict

__all__ = [
    "CheckpointInfo",
    "ComponentSource",
    "ModelFamily",
    "Prediction",
    "UNET_PREFIX",
    "VAE_PREFIX",
    "detect_state_dict",
    "key_sample",
]

Prediction = Literal["eps", "v", "edm", "flow"]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."

# Latent scale factors of the original configs (`scale_factor` in the LDM yamls; the 16-channel VAEs'
# `scaling_factor` in their diffusers configs).
_SD_LATENT_SCALE = 0.18215
_SDXL_LATENT_SCALE = 0.13025
_TRANSFORMER_LATENT_SCALES = {"sd3": 1.5305, "flux": 0.3611, "zimage": 0.3611, "chroma": 0.3611}
# A key only each transformer family has, and the layout name `load_checkpoint` builds it by.
_TRANSFORMER_SIGNATURES = (
    ("joint_blocks.0.x_block.attn.qkv.weight", "sd3"),
    # Chroma keeps FLUX's blocks, so it is told apart first, by the approximator FLUX lacks.
    ("distilled_guidance_layer.in_proj.weight", "chroma"),
    ("double_blocks.0.img_attn.qkv.weight", "flux"),
    # Z-Image's caption embedder into its single stream (Lumina 2 has no learned pad tokens).
    ("cap_pad_token", "zimage"),
)
_TRANSFORMER_LATENT_CHANNELS = 16

# The SD2 v-prediction heuristic used by ComfyUI's model detection (docs/compatibility.md §6.1): SD2 files carry no
# prediction marker, but the LayerNorm bias of the first transformer in the last output block has a
# standard deviation above 0.09 in the v-models. Only 4-channel models are tested (inpainting is eps).
_V_PRED_STD_THRESHOLD = 0.09


class ModelFamily(str, enum.Enum):
    """Model families Loom runs; the value is the spelling used in the API and on the CLI."""

    SD15 = "sd15"
    SD2 = "sd2"
    SDXL = "sdxl"
    SDXL_REFINER = "sdxl_refiner"
    SD3 = "sd3"
    FLUX = "flux"
    ZIMAGE = "zimage"
    CHROMA = "chroma"

    @property
    def latent_scale_factor(self) -> float:
        if self.is_flow_transformer:
            return _TRANSFORMER_LATENT_SCALES[self.value]
        return _SDXL_LATENT_SCALE if self in (ModelFamily.SDXL, ModelFamily.SDXL_REFINER) else _SD_LATENT_SCALE

    @property
    def is_flow_transformer(self) -> bool:
        """A rectified-flow transformer (SD3, FLUX, Z-Image, Chroma) rather than a discrete-time UNet."""
        return self.value in _TRANSFORMER_LATENT_SCALES


@dataclass(frozen=True)
class ComponentSource:
    """Where one component's weights live: a key prefix, in a file (None: the checkpoint itself).

    `layout` names the key convention: "ldm" (original SD repos), "diffusers", "hf" (transformers
    CLIP), "openclip", or for a transformer its family's original layout ("sd3", "flux").
    """

    prefix: str
    layout: str
    file: Path | None = None


@dataclass(frozen=True)
class CheckpointInfo:
    """What a model file holds. Components are named unet, vae, clip_l, clip_h, clip_g."""

    family: ModelFamily | None
    prediction: Prediction | None
    is_inpaint: bool
    latent_channels: int
    latent_scale_factor: float | None
    components: Mapping[str, ComponentSource] = field(default_factory=dict)
    path: Path | None = None
    unet_config: UNetConfig | None = None


# Key fragments that identify families Loom does not run, matched at a dot boundary; checked before
# anything else so that a Flux or SD3 file is named as such instead of reported as "unknown".
_FOREIGN_SIGNATURES: tuple[tuple[str, str], ...] = (
    ("double_layers.0.attn.", "AuraFlow"),
    ("mlp_t5.0.weight", "Hunyuan-DiT"),
    ("t_block.1.weight", "PixArt"),
    ("clf.1.weight", "Stable Cascade"),
    ("time_stack.", "Stable Video Diffusion"),
    ("input_hint_block.", "ControlNet (load it with a ControlNet loader)"),
    ("lora_down.", "LoRA (load it with a LoRA loader)"),
    ("lora_A.", "LoRA (load it with a LoRA loader)"),
    ("string_to_param", "textual-inversion embedding (place it in models/embeddings)"),
)


def detect_state_dict(sd: LazyStateDict) -> CheckpointInfo:
    """Classify a single-file checkpoint, a diffusion-model-only file or a standalone VAE."""
    transformer = _detect_transformer(sd)
    if transformer is not None:
        return transformer
    _reject_foreign(sd)
    unet_prefix = UNET_PREFIX if f"{UNET_PREFIX}input_blocks.0.0.weight" in sd else None
    if unet_prefix is None and "input_blocks.0.0.weight" in sd:
        unet_prefix = ""
    vae = _find_vae(sd)
    if unet_prefix is None:
        if vae is None:
            raise UnknownModelError(sd.path, f"no Stable Diffusion UNet or VAE found; {key_sample(sd)}")
        return CheckpointInfo(
            family=None,
            prediction=None,
            is_inpaint=False,
            latent_channels=_vae_latent_channels(sd, vae),
            latent_scale_factor=None,
            components={"vae": vae},
            path=sd.path,
        )

    unet = sd.view(unet_prefix)
    try:
        config = detect_unet_config(unet)
    except CheckpointLayoutError as exc:
        raise UnknownModelError(sd.path, f"UNet at {unet_prefix or 'top level'!r} is not an LDM UNet: {exc}") from exc
    family = _unet_family(sd, config)
    components: dict[str, ComponentSource] = {"unet": ComponentSource(unet_prefix, "ldm")}
    if vae is not None and unet_prefix:
        components["vae"] = vae
    if unet_prefix:
        components.update(_find_text_encoders(sd, family))
    return CheckpointInfo(
        family=family,
        prediction=_prediction(sd, unet, family, config),
        is_inpaint=_is_inpaint(sd, config),
        latent_channels=config.out_channels,
        latent_scale_factor=family.latent_scale_factor,
        components=components,
        path=sd.path,
        unet_config=config,
    )


def _detect_transformer(sd: LazyStateDict) -> CheckpointInfo | None:
    """An SD3 or FLUX transformer, alone (as in `diffusion_models/`) or with a VAE under `first_stage_model.`.

    All-in-one files also hold their text encoders under `text_encoders.<name>.transformer.` (CLIP-L/G in
    transformers' layout, T5-XXL in its own).
    """
    for prefix in (UNET_PREFIX, ""):
        for key, layout in _TRANSFORMER_SIGNATURES:
            if prefix + key in sd:
                family = ModelFamily(layout)
                components = {"unet": ComponentSource(prefix, layout)}
                # ComfyUI's all-in-one files keep SD3's VAE under `first_stage_model.`, FLUX's under `vae.`.
                vae = _find_vae(sd, (VAE_PREFIX, "vae.")) if prefix else None
                if vae is not None:
                    components["vae"] = vae
                if prefix:
                    components.update(_find_t5_family_text_encoders(sd))
                return CheckpointInfo(
                    family=family,
                    prediction="flow",
                    is_inpaint=False,
                    latent_channels=_TRANSFORMER_LATENT_CHANNELS,
                    latent_scale_factor=family.latent_scale_factor,
                    components=components,
                    path=sd.path,
                )
    return None


def _find_t5_family_text_encoders(sd: LazyStateDict) -> dict[str, ComponentSource]:
    found: dict[str, ComponentSource] = {}
    for name in ("clip_l", "clip_g", "t5xxl"):
        prefix = f"text_encoders.{name}.transformer."
        if name == "t5xxl":
            layout = "t5" if f"{prefix}encoder.block.0.layer.0.SelfAttention.q.weight" in sd else None
        else:
            layout = _text_encoder_layout(sd, prefix)
        if layout is not None:
            found[name] = ComponentSource(prefix, layout)
    return found


def _reject_foreign(sd: LazyStateDict) -> None:
    dotted = [f".{key}" for key in sd]
    for fragment, family in _FOREIGN_SIGNATURES:
        if any(f".{fragment}" in key for key in dotted):
            raise UnsupportedModelError(sd.path, family, f"holds a {family} model, which Loom does not run")


def key_sample(sd: LazyStateDict) -> str:
    """What a file holds, for an error: its tensor count and top-level key prefixes."""
    heads = sorted({key.split(".", 1)[0] for key in sd})
    shown = ", ".join(heads[:8]) + (", ..." if len(heads) > 8 else "")
    return f"{len(sd)} tensors with top-level key prefixes: {shown or '(none)'}"


def _unet_family(sd: LazyStateDict, config: UNetConfig) -> ModelFamily:
    levels = len(config.channel_mult)
    if config.adm_in_channels is not None:
        if config.transformer_depth[0] > 0:
            raise UnsupportedModelError(sd.path, "SD2.1 unCLIP")
        if levels == 3:
            return ModelFamily.SDXL
        if levels == 4:
            return ModelFamily.SDXL_REFINER
        raise UnknownModelError(
            sd.path, f"SDXL-style UNet (label_emb) with {levels} resolution levels (3 or 4 expected)"
        )
    return ModelFamily.SD2 if config.use_linear_in_transformer else ModelFamily.SD15


def _is_inpaint(sd: LazyStateDict, config: UNetConfig) -> bool:
    if config.in_channels == config.out_channels:
        return False
    # Inpainting UNets take the noisy latent, the masked image's latent and the mask (Rombach et al. 2022).
    if config.in_channels == 2 * config.out_channels + 1:
        return True
    raise UnsupportedModelError(
        sd.path,
        f"{config.in_channels}-channel-input UNet",
        f"UNet takes {config.in_channels} input channels for {config.out_channels} latent channels: "
        "neither a plain nor an inpainting model (instruct-pix2pix-style models are not supported)",
    )


def _prediction(sd: LazyStateDict, unet: LazyStateDict, family: ModelFamily, config: UNetConfig) -> Prediction:
    if family in (ModelFamily.SDXL, ModelFamily.SDXL_REFINER):
        if "edm_mean" in sd and "edm_std" in sd:
            return "edm"
        return "v" if "v_pred" in sd else "eps"
    if family is ModelFamily.SD2 and config.in_channels == 4:
        last = len(config.transformer_depth_output) - 1
        key = f"output_blocks.{last}.1.transformer_blocks.0.norm1.bias"
        if key in unet and float(unet[key].float().std()) > _V_PRED_STD_THRESHOLD:
            return "v"
    return "eps"


def _find_vae(sd: LazyStateDict, prefixes: tuple[str, ...] = (VAE_PREFIX, "")) -> ComponentSource | None:
    for prefix in prefixes:
        if f"{prefix}encoder.conv_in.weight" in sd or f"{prefix}decoder.conv_in.weight" in sd:
            if sd.has_prefix(f"{prefix}decoder.up_blocks.") or sd.has_prefix(f"{prefix}encoder.down_blocks."):
                return ComponentSource(prefix, "diffusers")
            return ComponentSource(prefix, "ldm")
    return None


def _vae_latent_channels(sd: LazyStateDict, vae: ComponentSource) -> int:
    key = f"{vae.prefix}decoder.conv_in.weight"
    if key not in sd:
        raise UnknownModelError(sd.path, f"VAE without a decoder ({key} missing)")
    return sd.shape(key)[1]


# (container prefix, component name when it holds an OpenCLIP model, name when it holds HF CLIP)
def _text_encoder_slots(family: ModelFamily) -> tuple[tuple[str, str], ...]:
    openclip_name = "clip_h" if family in (ModelFamily.SD15, ModelFamily.SD2) else "clip_g"
    return (
        ("cond_stage_model.transformer.", "clip_l"),
        ("cond_stage_model.model.", openclip_name),
        ("conditioner.embedders.0.transformer.", "clip_l"),
        ("conditioner.embedders.0.model.", openclip_name),
        ("conditioner.embedders.1.model.", "clip_g"),
    )


def _find_text_encoders(sd: LazyStateDict, family: ModelFamily) -> dict[str, ComponentSource]:
    found: dict[str, ComponentSource] = {}
    for prefix, name in _text_encoder_slots(family):
        layout = _text_encoder_layout(sd, prefix)
        if layout is not None:
            found[name] = ComponentSource(prefix, layout)
    return found


def _text_encoder_layout(sd: LazyStateDict, prefix: str) -> str | None:
    """ "hf" for transformers CLIP (with or without its `text_model.` level), "openclip", or None."""
    if (
        f"{prefix}text_model.embeddings.token_embedding.weight" in sd
        or f"{prefix}embeddings.token_embedding.weight" in sd
    ):
        return "hf"
    if f"{prefix}token_embedding.weight" in sd and sd.has_prefix(f"{prefix}transformer.resblocks."):
        return "openclip"
    return None
