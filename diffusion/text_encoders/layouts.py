"""Checkpoint key layouts of CLIP text encoders, mapped onto `ClipTextModel` without copying weights.

Two layouts exist in Stable Diffusion files, both given here with the container prefix already stripped
(`cond_stage_model.transformer.`, `cond_stage_model.model.`, `conditioner.embedders.N.transformer.|model.`):

- transformers ("hf"): `text_model.embeddings.token_embedding.weight`, `text_model.encoder.layers.N.self_attn.
  q_proj.weight` ..., `text_model.final_layer_norm.*`, and `text_projection.weight` beside `text_model`.
  SD1 and SDXL's CLIP-L use it; old SD1 files lack the `text_model.` level.
- OpenCLIP ("openclip"): `token_embedding.weight`, `positional_embedding` (a bare tensor),
  `transformer.resblocks.N.attn.in_proj_weight` (q, k, v stacked along dim 0), `ln_1`/`ln_2`, `mlp.c_fc`/
  `mlp.c_proj`, `ln_final`, and `text_projection` stored as [width, dim] and applied as ``x @ P``.
  SD2's ViT-H and SDXL's ViT-bigG use it.

The module is built on the meta device and the mapped tensors are assigned into it: OpenCLIP's stacked
projection is split into views and its projection matrix transposed as a view, so no weight is duplicated.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from diffusion.text_encoders.clip_model import Activation, ClipTextConfig, ClipTextModel

__all__ = ["TextEncoderLayoutError", "detect_layout", "to_module_keys", "load_clip_text_model"]

# Present in some files, not weights of the text tower: HF's position-id buffer, OpenCLIP's contrastive
# temperature and causal-mask buffer.
_IGNORED = re.compile(r"^(text_model\.)?embeddings\.position_ids$|^logit_scale$|^attn_mask$")
_OPENCLIP_BLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")
_OPENCLIP_BLOCK_PARTS = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
_OPENCLIP_TOP = {
    "token_embedding.weight": "embeddings.token_embedding.weight",
    "positional_embedding": "embeddings.position_embedding.weight",
    "ln_final.weight": "final_layer_norm.weight",
    "ln_final.bias": "final_layer_norm.bias",
}
_LAYER_KEY = re.compile(r"^encoder\.layers\.(\d+)\.")


class TextEncoderLayoutError(ValueError):
    """A text-encoder state dict that does not fit the CLIP text transformer."""

    def __init__(self, reason: str, keys: list[str] | None = None) -> None:
        shown = "" if not keys else f" (keys: {', '.join(sorted(keys)[:8])}{' ...' if len(keys) > 8 else ''})"
        super().__init__(f"CLIP text encoder state dict: {reason}{shown}")
        self.reason = reason
        self.keys = keys or []


def detect_layout(state_dict: Mapping[str, torch.Tensor]) -> str:
    """ "hf" or "openclip", from the token-embedding key."""
    if "token_embedding.weight" in state_dict:
        return "openclip"
    if any(f"{level}embeddings.token_embedding.weight" in state_dict for level in ("text_model.", "")):
        return "hf"
    raise TextEncoderLayoutError("no token embedding in the transformers or the OpenCLIP layout", list(state_dict))


def _openclip_to_module(key: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    if key in _OPENCLIP_TOP:
        return {_OPENCLIP_TOP[key]: tensor}
    if key == "text_projection":
        return {"text_projection.weight": tensor.t()}
    block = _OPENCLIP_BLOCK.match(key)
    if block is None:
        raise TextEncoderLayoutError(f"unexpected OpenCLIP key {key!r}")
    index, part = block.groups()
    prefix = f"encoder.layers.{index}."
    if part in ("attn.in_proj_weight", "attn.in_proj_bias"):
        kind = part.rsplit("_", 1)[1]
        if tensor.shape[0] % 3:
            raise TextEncoderLayoutError(f"{key} has {tensor.shape[0]} rows, not three stacked projections")
        q, k, v = tensor.chunk(3, dim=0)
        return {f"{prefix}self_attn.{name}_proj.{kind}": t for name, t in zip("qkv", (q, k, v))}
    module, _, kind = part.rpartition(".")
    if module not in _OPENCLIP_BLOCK_PARTS:
        raise TextEncoderLayoutError(f"unexpected OpenCLIP key {key!r}")
    return {f"{prefix}{_OPENCLIP_BLOCK_PARTS[module]}.{kind}": tensor}


def to_module_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename (and for OpenCLIP split/transpose, as views) a text-encoder state dict to `ClipTextModel` keys."""
    layout = detect_layout(state_dict)
    mapped: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if _IGNORED.match(key):
            continue
        if layout == "openclip":
            mapped.update(_openclip_to_module(key, tensor))
        else:
            mapped[key.removeprefix("text_model.")] = tensor
    return mapped


def _config(mapped: Mapping[str, torch.Tensor], activation: Activation, head_width: int) -> ClipTextConfig:
    try:
        vocab_size, width = mapped["embeddings.token_embedding.weight"].shape
        positions = mapped["embeddings.position_embedding.weight"].shape[0]
        intermediate = mapped["encoder.layers.0.mlp.fc1.weight"].shape[0]
    except KeyError as missing:
        raise TextEncoderLayoutError(f"missing {missing.args[0]}", list(mapped)) from None
    if width % head_width:
        raise TextEncoderLayoutError(f"width {width} is not a multiple of the head width {head_width}")
    layers = {int(m.group(1)) for key in mapped if (m := _LAYER_KEY.match(key))}
    projection = mapped.get("text_projection.weight")
    return ClipTextConfig(
        width=width,
        layers=len(layers),
        heads=width // head_width,
        intermediate=intermediate,
        vocab_size=vocab_size,
        positions=positions,
        activation=activation,
        projection_dim=None if projection is None else projection.shape[0],
    )


def _check_against(model: ClipTextModel, mapped: Mapping[str, torch.Tensor]) -> None:
    expected = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    missing = sorted(set(expected) - set(mapped))
    unexpected = sorted(set(mapped) - set(expected))
    if missing or unexpected:
        problems = [f"missing {', '.join(missing[:8])}"] if missing else []
        problems += [f"unexpected {', '.join(unexpected[:8])}"] if unexpected else []
        layers = model.config.layers
        raise TextEncoderLayoutError(f"keys do not match a {layers}-layer CLIP text transformer: {'; '.join(problems)}")
    wrong = [
        f"{name} {tuple(mapped[name].shape)} != {shape}"
        for name, shape in expected.items()
        if tuple(mapped[name].shape) != shape
    ]
    if wrong:
        raise TextEncoderLayoutError("inconsistent shapes: " + "; ".join(wrong[:4]))


def load_clip_text_model(
    state_dict: Mapping[str, torch.Tensor], activation: Activation, head_width: int = 64
) -> ClipTextModel:
    """Build a `ClipTextModel` whose parameters are the given tensors (or views of them), in their dtype.

    Every released CLIP uses 64-wide attention heads, so heads = width / `head_width`; the activation is a
    property of the model family (QuickGELU for OpenAI CLIP-L, GELU for OpenCLIP), not of the layout.
    """
    mapped = to_module_keys(state_dict)
    config = _config(mapped, activation, head_width)
    with torch.device("meta"):
        model = ClipTextModel(config)
    _check_against(model, mapped)
    model.load_state_dict(mapped, strict=True, assign=True)
    return model.requires_grad_(False).eval()
