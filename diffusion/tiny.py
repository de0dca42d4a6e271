"""Tiny random checkpoints in the exact single-file layout of each family, for tests and demos.

No Stable Diffusion weights can be downloaded here, yet the whole path (file -> detection -> split ->
modules -> sampling -> image) must run in CI. These files are built from Loom's own modules at tiny
sizes and written under the real prefixes (`model.diffusion_model.`, `first_stage_model.`,
`cond_stage_model.transformer.text_model.` ...), so they exercise exactly what a real file does.

Sizes respect the conventions that cannot be read from weights and that loaders therefore assume:
attention heads are 64 wide in every linear-projection UNet (SD2/SDXL) and in every CLIP text encoder,
so those widths are 64 here (one head); SD1 UNets have 8 heads, so 32 channels work; GroupNorm has 32
groups, so every channel count is a multiple of 32. SDXL's size conditioning keeps its real 256-wide
sinusoids per number, so the tiny `adm_in_channels` is the pooled width + 6 x 256 (refiner: 5 x 256).
The vocabulary is the real 49,408 tokens so that the real tokenizer can drive the tiny encoders.

The flow-matching families (SD3/SD3.5, FLUX.1) and single parts (a diffusion model, a VAE, a text encoder,
a LoRA) in other dtypes are in `diffusion.tiny_parts`, which builds on the helpers here.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from diffusion.checkpoint.detect import ModelFamily, Prediction
from diffusion.text_encoders import ClipTextConfig, ClipTextModel
from diffusion.text_encoders.clip_model import Activation
from diffusion.tokenizer import VOCAB_SIZE
from diffusion.unet import UNetModel
from diffusion.unet_config import UNetConfig
from diffusion.vae import AutoencoderKL, VAEConfig

__all__ = [
    "TINY_TEXT_WIDTH",
    "randomize_norms",
    "seeded_rng",
    "tiny_checkpoint_tensors",
    "tiny_unet_config",
    "write_tiny_checkpoint",
]

TINY_TEXT_WIDTH = 64
_SIZE_EMBED = 256  # per-number sinusoid width of SDXL's micro-conditioning


def _unet_config(family: ModelFamily, inpaint: bool) -> UNetConfig:
    in_channels = 9 if inpaint else 4
    common = dict(in_channels=in_channels, out_channels=4)
    if family is ModelFamily.SD15:
        return UNetConfig(
            **common,
            model_channels=32,
            channel_mult=(1, 2),
            num_res_blocks=(1, 1),
            transformer_depth=(1, 0),
            transformer_depth_middle=1,
            transformer_depth_output=(0, 0, 1, 1),
            context_dim=TINY_TEXT_WIDTH,
            use_linear_in_transformer=False,
            num_heads=8,
        )
    if family is ModelFamily.SD2:
        # Level 0 keeps its transformer (as in SD2) because the v-prediction check reads it.
        return UNetConfig(
            **common,
            model_channels=64,
            channel_mult=(1, 2),
            num_res_blocks=(1, 1),
            transformer_depth=(1, 0),
            transformer_depth_middle=1,
            transformer_depth_output=(0, 0, 1, 1),
            context_dim=TINY_TEXT_WIDTH,
            use_linear_in_transformer=True,
            num_head_channels=64,
        )
    if family is ModelFamily.SDXL:
        return UNetConfig(
            **common,
            model_channels=32,
            channel_mult=(1, 2, 2),
            num_res_blocks=(1, 1, 1),
            transformer_depth=(0, 1, 1),
            transformer_depth_middle=1,
            transformer_depth_output=(1, 1, 1, 1, 0, 0),
            context_dim=2 * TINY_TEXT_WIDTH,
            use_linear_in_transformer=True,
            adm_in_channels=TINY_TEXT_WIDTH + 6 * _SIZE_EMBED,
            num_head_channels=64,
        )
    return UNetConfig(
        **common,
        model_channels=32,
        channel_mult=(1, 2, 2, 2),
        num_res_blocks=(1, 1, 1, 1),
        transformer_depth=(0, 1, 1, 0),
        transformer_depth_middle=1,
        transformer_depth_output=(0, 0, 1, 1, 1, 1, 0, 0),
        context_dim=TINY_TEXT_WIDTH,
        use_linear_in_transformer=True,
        adm_in_channels=TINY_TEXT_WIDTH + 5 * _SIZE_EMBED,
        num_head_channels=64,
    )


# Four levels, as in every SD VAE (multipliers 1, 2, 4, 4): three 2x stages give the real 8x factor,
# so a tiny workflow makes exactly the image size a real checkpoint makes; only the widths are small.
_VAE_CONFIG = VAEConfig(base_channels=32, channel_mult=(1, 2, 2, 2), num_res_blocks=1, z_channels=4, embed_dim=4)


def _clip(activation: Activation, projection: bool) -> ClipTextModel:
    return ClipTextModel(
        ClipTextConfig(
            width=TINY_TEXT_WIDTH,
            layers=2,
            heads=1,
            intermediate=2 * TINY_TEXT_WIDTH,
            vocab_size=VOCAB_SIZE,
            positions=77,
            activation=activation,
            projection_dim=TINY_TEXT_WIDTH if projection else None,
        )
    )


def _hf_keys(model: ClipTextModel) -> dict[str, torch.Tensor]:
    """transformers `CLIPTextModel` keys, as SD1 and SDXL's CLIP-L store them."""
    tensors = {f"text_model.{k}": v for k, v in model.state_dict().items()}
    tensors["text_model.embeddings.position_ids"] = torch.arange(model.config.positions)[None]
    return tensors


def _openclip_keys(model: ClipTextModel) -> dict[str, torch.Tensor]:
    """open_clip text-tower keys: q/k/v stacked into `in_proj`, projection stored as [width, dim]."""
    sd = model.state_dict()
    out = {
        "token_embedding.weight": sd["embeddings.token_embedding.weight"],
        "positional_embedding": sd["embeddings.position_embedding.weight"],
        "ln_final.weight": sd["final_layer_norm.weight"],
        "ln_final.bias": sd["final_layer_norm.bias"],
        "text_projection": sd["text_projection.weight"].t().contiguous(),
    }
    parts = {
        "layer_norm1": "ln_1",
        "layer_norm2": "ln_2",
        "self_attn.out_proj": "attn.out_proj",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
    }
    for i in range(model.config.layers):
        src, dst = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            qkv = [sd[f"{src}self_attn.{p}_proj.{kind}"] for p in "qkv"]
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(qkv)
            for name, target in parts.items():
                out[f"{dst}{target}.{kind}"] = sd[f"{src}{name}.{kind}"]
    return out


def _prefixed(prefix: str, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in tensors.items()}


def _text_encoders(family: ModelFamily) -> dict[str, torch.Tensor]:
    if family is ModelFamily.SD15:
        return _prefixed("cond_stage_model.transformer.", _hf_keys(_clip("quick_gelu", projection=False)))
    if family is ModelFamily.SD2:
        return _prefixed("cond_stage_model.model.", _openclip_keys(_clip("gelu", projection=True)))
    bigg = _openclip_keys(_clip("gelu", projection=True))
    if family is ModelFamily.SDXL_REFINER:
        return _prefixed("conditioner.embedders.0.model.", bigg)
    clip_l = _hf_keys(_clip("quick_gelu", projection=False))
    return {
        **_prefixed("conditioner.embedders.0.transformer.", clip_l),
        **_prefixed("conditioner.embedders.1.model.", bigg),
    }


@contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Run the block on torch's CPU generator seeded with `seed`; the caller's generator state is restored after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def randomize_norms(model: nn.Module) -> None:
    """Give norm layers random affine parameters: identity norms would hide layout mistakes."""
    for module in model.modules():
        if isinstance(module, (nn.LayerNorm, nn.GroupNorm)) and module.weight is not None:
            with torch.no_grad():
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.02)


def tiny_unet_config(family: ModelFamily | str, inpaint: bool = False) -> UNetConfig:
    """The config of the UNet in the tiny checkpoint of `family` (what its tiny ControlNet is made for)."""
    return _unet_config(ModelFamily(family), inpaint)


def tiny_checkpoint_tensors(
    family: ModelFamily | str, inpaint: bool = False, prediction: Prediction = "eps", seed: int = 0
) -> dict[str, torch.Tensor]:
    """The state dict of a tiny single-file checkpoint (deterministic for a given torch version and seed).

    `prediction` marks the file the way real files are marked: SDXL with the `v_pred` or
    `edm_mean`/`edm_std` keys, SD2 "v" by widening the LayerNorm bias the SD2 v-prediction check reads.
    """
    family = ModelFamily(family)
    if prediction != "eps" and not (family is ModelFamily.SDXL or (family is ModelFamily.SD2 and prediction == "v")):
        raise ValueError(f"{family.value} files cannot be marked as {prediction!r}-prediction models")
    with seeded_rng(seed):
        unet = UNetModel(_unet_config(family, inpaint))
        vae = AutoencoderKL(_VAE_CONFIG)
        for model in (unet, vae):
            randomize_norms(model)
        tensors = {
            **_prefixed("model.diffusion_model.", unet.state_dict()),
            **_prefixed("first_stage_model.", vae.state_dict()),
            **_text_encoders(family),
        }
        if family is ModelFamily.SD2 and prediction == "v":
            last = len(unet.config.transformer_depth_output) - 1
            tensors[f"model.diffusion_model.output_blocks.{last}.1.transformer_blocks.0.norm1.bias"].normal_(0.0, 0.2)
    if prediction == "v" and family is ModelFamily.SDXL:
        tensors["v_pred"] = torch.tensor([])
    if prediction == "edm":
        tensors["edm_mean"] = torch.zeros(1, 4, 1, 1)
        tensors["edm_std"] = torch.ones(1, 4, 1, 1)
    return {k: v.detach().contiguous() for k, v in tensors.items()}


def write_tiny_checkpoint(
    path: str | Path,
    family: ModelFamily | str,
    inpaint: bool = False,
    prediction: Prediction = "eps",
    seed: int = 0,
) -> Path:
    """Write `tiny_checkpoint_tensors(...)` as one `.safetensors` file; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    family = ModelFamily(family)
    # One metadata entry: safetensors writes its metadata map in hash order, which varies between calls.
    metadata = {"loom.tiny": f"{family.value} inpaint={inpaint} prediction={prediction} seed={seed}"}
    save_file(tiny_checkpoint_tensors(family, inpaint, prediction, seed), path, metadata=metadata)
    return path
