"""Classify a diffusers pipeline folder (`model_index.json` + one subfolder per component).

Unlike single files, these folders carry configs, so the family comes from `unet/config.json` with the
same structural rules as single files (SDXL: `addition_embed_type: text_time`, 3 levels for the base,
4 for the refiner; SD2: linear transformer projections), the prediction type from the scheduler
config and the latent scale from the VAE config. Weights stay where they are: each component is
pointed at its own file. Text encoders are saved by transformers with or without the `text_model.`
key level (5.x flattened it); the "hf" layout covers both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .detect import CheckpointInfo, ComponentSource, ModelFamily, Prediction
from .errors import CheckpointFormatError, UnsupportedModelError
from .files import open_state_dict

__all__ = ["detect_diffusers_folder", "is_diffusers_folder"]

# Preferred weight file names per subfolder, best first (diffusers' own preference order).
_WEIGHT_NAMES = {
    "unet": (
        "diffusion_pytorch_model.safetensors",
        "diffusion_pytorch_model.fp16.safetensors",
        "diffusion_pytorch_model.bin",
    ),
    "vae": (
        "diffusion_pytorch_model.safetensors",
        "diffusion_pytorch_model.fp16.safetensors",
        "diffusion_pytorch_model.bin",
    ),
    "text_encoder": ("model.safetensors", "model.fp16.safetensors", "pytorch_model.bin"),
    "text_encoder_2": ("model.safetensors", "model.fp16.safetensors", "pytorch_model.bin"),
}


def is_diffusers_folder(path: Path) -> bool:
    """A diffusers pipeline is recognised by its `model_index.json`, which lists the components."""
    return path.is_dir() and (path / "model_index.json").is_file()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CheckpointFormatError(path, "missing from the diffusers folder") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointFormatError(path, f"is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointFormatError(path, "is not a JSON object")
    return data


def _weights_file(folder: Path, sub: str) -> Path | None:
    directory = folder / sub
    if not directory.is_dir():
        return None
    for name in _WEIGHT_NAMES[sub]:
        if (directory / name).is_file():
            return directory / name
    sharded = sorted(p.name for p in directory.glob("*.index.json"))
    if sharded:
        raise CheckpointFormatError(
            directory / sharded[0], "sharded weights are not supported; merge them into one file"
        )
    raise CheckpointFormatError(directory, f"holds no weights file (looked for {', '.join(_WEIGHT_NAMES[sub])})")


def _family(folder: Path, unet: dict[str, Any]) -> ModelFamily:
    levels = len(unet.get("block_out_channels", ()))
    if unet.get("addition_embed_type") == "text_time":
        if levels in (3, 4):
            return ModelFamily.SDXL if levels == 3 else ModelFamily.SDXL_REFINER
        raise UnsupportedModelError(folder, f"SDXL-style UNet with {levels} levels")
    if unet.get("class_embed_type") is not None:
        raise UnsupportedModelError(folder, "SD2.1 unCLIP")
    return ModelFamily.SD2 if unet.get("use_linear_projection") else ModelFamily.SD15


def _prediction(folder: Path) -> Prediction:
    path = folder / "scheduler" / "scheduler_config.json"
    if not path.is_file():
        return "eps"
    scheduler = _read_json(path)
    if str(scheduler.get("_class_name", "")).startswith("EDM"):
        return "edm"
    return "v" if scheduler.get("prediction_type") == "v_prediction" else "eps"


def detect_diffusers_folder(folder: Path) -> CheckpointInfo:
    """Classify a pipeline folder from its configs; each component points at its own weights file."""
    index = _read_json(folder / "model_index.json")
    pipeline = str(index.get("_class_name", "unknown pipeline"))
    if not (folder / "unet").is_dir():
        found = "transformer/" if (folder / "transformer").is_dir() else "no unet/"
        raise UnsupportedModelError(folder, pipeline, f"{pipeline} folder ({found}): Loom runs UNet pipelines only")
    unet_config = _read_json(folder / "unet" / "config.json")
    family = _family(folder, unet_config)
    components: dict[str, ComponentSource] = {}
    components["unet"] = ComponentSource("", "diffusers", _weights_file(folder, "unet"))
    vae_file = _weights_file(folder, "vae")
    scale = family.latent_scale_factor
    if vae_file is not None:
        components["vae"] = ComponentSource("", "diffusers", vae_file)
        scale = float(_read_json(folder / "vae" / "config.json").get("scaling_factor", scale))
    first = _weights_file(folder, "text_encoder")
    second = _weights_file(folder, "text_encoder_2")
    if family is ModelFamily.SDXL_REFINER:
        # The refiner's only encoder is bigG, and diffusers stores it as text_encoder_2.
        second = second or first
        first = None
    if first is not None:
        components["clip_h" if family is ModelFamily.SD2 else "clip_l"] = ComponentSource("", "hf", first)
    if second is not None:
        components["clip_g"] = ComponentSource("", "hf", second)
    out_channels = int(unet_config.get("out_channels", 4))
    in_channels = int(unet_config.get("in_channels", 4))
    if in_channels not in (out_channels, 2 * out_channels + 1):
        raise UnsupportedModelError(folder, f"{in_channels}-channel-input UNet")
    for source in components.values():
        assert source.file is not None  # unet/ was checked to exist; the others are added only with a file
        open_state_dict(source.file)  # fail here, naming the file, rather than halfway through loading
    return CheckpointInfo(
        family=family,
        prediction=_prediction(folder),
        is_inpaint=in_channels == 2 * out_channels + 1,
        latent_channels=out_channels,
        latent_scale_factor=scale,
        components=components,
        path=folder,
    )
