"""LATENT nodes: empty latents, VAE encode/decode (whole, tiled, for inpainting) and latent editing.

A LATENT is ComfyUI's dict: ``samples`` (unscaled VAE latents ``[B, C, h, w]``), and optionally
``noise_mask`` (``[B, 1, H, W]``, 1 = repaint; any resolution, resized when used) and ``batch_index``
(which item of an original batch each sample is, so per-item noise stays the same when a batch is
split). Nodes return new dicts and never modify their input's tensors (cached values are shared).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from diffusion.vae_tiling import TileSpec
from graph.declare import Combo, Float, Int, Output, Socket, node
from nodes.conditioning import masked_for_inpaint, pixel_mask
from nodes.image import CROP_METHODS, MAX_RESOLUTION, center_crop_to_aspect, resample
from nodes.vae_handles import VaeHandle

__all__ = [
    "EmptyLatentImage", "EmptySD3LatentImage", "LatentBlend", "LatentComposite", "LatentFromBatch", "LatentUpscale",
    "LatentUpscaleBy", "RepeatLatentBatch", "SetLatentNoiseMask", "VAEDecode", "VAEDecodeTiled", "VAEEncode",
    "VAEEncodeForInpaint", "VAEEncodeTiled", "bislerp",
]  # fmt: skip

Latent = dict[str, Any]
LATENT_UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"]


@node(category="latent", display_name="Empty Latent Image", outputs=[Output("LATENT")])
def EmptyLatentImage(
    width=Int(512, min=16, max=MAX_RESOLUTION, step=8),
    height=Int(512, min=16, max=MAX_RESOLUTION, step=8),
    batch_size=Int(1, min=1, max=4096),
):
    """A batch of blank latents for text-to-image; the sampler fills it with noise."""
    return {"samples": torch.zeros([batch_size, 4, height // 8, width // 8])}


@node(category="latent/sd3", outputs=[Output("LATENT")])
def EmptySD3LatentImage(
    width=Int(1024, min=16, max=MAX_RESOLUTION, step=16),
    height=Int(1024, min=16, max=MAX_RESOLUTION, step=16),
    batch_size=Int(1, min=1, max=4096),
):
    """Blank 16-channel latents, the width of the SD3 and FLUX VAEs."""
    return {"samples": torch.zeros([batch_size, 16, height // 8, width // 8])}


@node(category="latent", display_name="VAE Decode", outputs=[Output("IMAGE")])
def VAEDecode(samples=Socket("LATENT"), vae=Socket("VAE")):
    """Turn latents into pictures."""
    return vae.decode(samples["samples"])


@node(category="latent", display_name="VAE Encode", outputs=[Output("LATENT")])
def VAEEncode(pixels=Socket("IMAGE"), vae=Socket("VAE")):
    """Turn pictures into latents (sides are trimmed to multiples of 8, centred)."""
    return {"samples": vae.encode(pixels)}


def _tiles(tile_size: int, overlap: int) -> TileSpec:
    # An overlap of a quarter tile at most, as ComfyUI clamps it, keeps every tile mostly new pixels.
    return TileSpec(tile_size, min(overlap, tile_size // 4))


@node(category="_for_testing", display_name="VAE Decode (Tiled)", outputs=[Output("IMAGE")])
def VAEDecodeTiled(
    samples=Socket("LATENT"),
    vae=Socket("VAE"),
    tile_size=Int(512, min=64, max=4096, step=32),
    overlap=Int(64, min=0, max=4096, step=32, optional=True),
):
    """Decode in overlapping tiles (sizes in pixels), for pictures too large to decode at once."""
    return vae.decode(samples["samples"], _tiles(tile_size, 64 if overlap is None else overlap))


@node(category="_for_testing", display_name="VAE Encode (Tiled)", outputs=[Output("LATENT")])
def VAEEncodeTiled(
    pixels=Socket("IMAGE"),
    vae=Socket("VAE"),
    tile_size=Int(512, min=64, max=4096, step=64),
    overlap=Int(64, min=0, max=4096, step=32, optional=True),
):
    """Encode in overlapping tiles (sizes in pixels), for pictures too large to encode at once."""
    return {"samples": vae.encode(pixels, _tiles(tile_size, 64 if overlap is None else overlap))}


def _grow(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Dilate a ``[B, 1, H, W]`` mask by a ``pixels``-square box, so the repainted area blends at its edge."""
    if pixels == 0:
        return mask
    kernel = torch.ones(1, 1, pixels, pixels)
    padding = math.ceil((pixels - 1) / 2)
    grown = F.conv2d(mask.round(), kernel, padding=padding)
    return grown[..., : mask.shape[-2], : mask.shape[-1]].clamp(0.0, 1.0)


@node(category="latent/inpaint", display_name="VAE Encode (for Inpainting)", outputs=[Output("LATENT")])
def VAEEncodeForInpaint(
    pixels=Socket("IMAGE"),
    vae=Socket("VAE"),
    mask=Socket("MASK"),
    grow_mask_by=Int(6, min=0, max=64, step=1),
):
    """Encode a picture with the masked area blanked, and attach the (grown) mask for the sampler."""
    handle: VaeHandle = vae
    mask = pixel_mask(mask, pixels, "VAEEncodeForInpaint")
    pixels, mask = handle.crop_pixels(pixels), handle.crop_pixels(mask.movedim(1, -1)).movedim(-1, 1)
    latent = handle.encode(masked_for_inpaint(pixels, mask))
    return {"samples": latent, "noise_mask": _grow(mask, grow_mask_by).round()}


@node(category="latent/inpaint", outputs=[Output("LATENT")])
def SetLatentNoiseMask(samples=Socket("LATENT"), mask=Socket("MASK")):
    """Sample only where the mask is set; the rest of the latent is kept."""
    return {**samples, "noise_mask": mask.reshape(-1, 1, *mask.shape[-2:])}


def _slerp(low: torch.Tensor, high: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of channel vectors ``[..., C]``; lengths interpolate linearly.

    Latent channels behave like directions more than like intensities, so blending along the sphere
    keeps the upscaled latent's statistics closer to what the UNet saw than linear blending does.
    """
    low_norm, high_norm = low.norm(dim=-1, keepdim=True), high.norm(dim=-1, keepdim=True)
    low_unit = low / low_norm.clamp_min(1e-8)
    high_unit = high / high_norm.clamp_min(1e-8)
    cos = (low_unit * high_unit).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    omega = torch.acos(cos)
    sin = torch.sin(omega)
    linear = sin.abs() < 1e-4
    safe = torch.where(linear, torch.ones_like(sin), sin)
    unit = torch.where(
        linear,
        low_unit * (1.0 - ratio) + high_unit * ratio,
        (torch.sin((1.0 - ratio) * omega) * low_unit + torch.sin(ratio * omega) * high_unit) / safe,
    )
    return unit * (low_norm * (1.0 - ratio) + high_norm * ratio)


def _bislerp_width(samples: torch.Tensor, width: int) -> torch.Tensor:
    """Resize the last axis of ``[B, C, H, W]`` with half-pixel-centred slerp between neighbours."""
    length = samples.shape[-1]
    steps = torch.arange(width, dtype=torch.float32, device=samples.device)
    position = ((steps + 0.5) * length / width - 0.5).clamp(0, length - 1)
    low = position.floor().long()
    high = (low + 1).clamp(max=length - 1)
    vectors = samples.permute(0, 2, 3, 1)  # [B, H, W, C]: one channel vector per cell
    blended = _slerp(vectors[:, :, low], vectors[:, :, high], (position - low).reshape(-1, 1))
    return blended.permute(0, 3, 1, 2)


def bislerp(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Bilinear resampling of ``[B, C, H, W]`` latents with slerp instead of linear blending."""
    wide = _bislerp_width(samples.float(), width)
    return _bislerp_width(wide.transpose(2, 3), height).transpose(2, 3).contiguous().to(samples.dtype)


def _upscale(samples: torch.Tensor, method: str, width: int, height: int, crop: str = "disabled") -> torch.Tensor:
    if method != "bislerp":
        return resample(samples, width, height, method, crop)
    if crop == "center":
        samples = center_crop_to_aspect(samples, width, height)
    return bislerp(samples, width, height)


@node(category="latent", display_name="Upscale Latent", outputs=[Output("LATENT")])
def LatentUpscale(
    samples=Socket("LATENT"),
    upscale_method=Combo(LATENT_UPSCALE_METHODS),
    width=Int(512, min=0, max=MAX_RESOLUTION, step=8),
    height=Int(512, min=0, max=MAX_RESOLUTION, step=8),
    crop=Combo(CROP_METHODS),
):
    """Resize latents to a picture size; a width or height of 0 follows the other and keeps the aspect ratio."""
    latent = samples["samples"]
    if width == 0 and height == 0:
        return samples
    rows, cols = latent.shape[-2:]
    if width == 0:
        width = max(64, cols * height // rows)
    elif height == 0:
        height = max(64, rows * width // cols)
    return {**samples, "samples": _upscale(latent, upscale_method, width // 8, height // 8, crop)}


@node(category="latent", display_name="Upscale Latent By", outputs=[Output("LATENT")])
def LatentUpscaleBy(
    samples=Socket("LATENT"),
    upscale_method=Combo(LATENT_UPSCALE_METHODS),
    scale_by=Float(1.5, min=0.01, max=8.0, step=0.01),
):
    """Resize latents by a factor."""
    latent = samples["samples"]
    width, height = round(latent.shape[-1] * scale_by), round(latent.shape[-2] * scale_by)
    return {**samples, "samples": _upscale(latent, upscale_method, width, height)}


def _mask_for_batch(mask: torch.Tensor, batch: int) -> torch.Tensor:
    """A noise mask repeated to cover ``batch`` items (a shorter mask batch repeats cyclically)."""
    if mask.shape[0] >= batch:
        return mask
    return mask.repeat(math.ceil(batch / mask.shape[0]), 1, 1, 1)[:batch]


@node(category="latent/batch", outputs=[Output("LATENT")])
def LatentFromBatch(
    samples=Socket("LATENT"),
    batch_index=Int(0, min=0, max=63),
    length=Int(1, min=1, max=64),
):
    """Take ``length`` latents from a batch, keeping each one's original noise (``batch_index``)."""
    latent = samples["samples"]
    start = min(latent.shape[0] - 1, batch_index)
    count = min(latent.shape[0] - start, length)
    out: Latent = {**samples, "samples": latent[start : start + count].clone()}
    if "noise_mask" in samples:
        mask = samples["noise_mask"]
        out["noise_mask"] = (
            mask.clone()
            if mask.shape[0] == 1
            else _mask_for_batch(mask, latent.shape[0])[start : start + count].clone()
        )
    indexes = samples.get("batch_index", list(range(latent.shape[0])))
    out["batch_index"] = list(indexes[start : start + count])
    return out


@node(category="latent/batch", outputs=[Output("LATENT")])
def RepeatLatentBatch(samples=Socket("LATENT"), amount=Int(1, min=1, max=64)):
    """Repeat a latent batch; the copies get new noise indexes so they sample differently."""
    latent = samples["samples"]
    out: Latent = {**samples, "samples": latent.repeat(amount, 1, 1, 1)}
    if "noise_mask" in samples and samples["noise_mask"].shape[0] > 1:
        out["noise_mask"] = _mask_for_batch(samples["noise_mask"], latent.shape[0]).repeat(amount, 1, 1, 1)
    if "batch_index" in samples:
        indexes = samples["batch_index"]
        offset = max(indexes) - min(indexes) + 1
        out["batch_index"] = [index + offset * copy for copy in range(amount) for index in indexes]
    return out


@node(category="latent", outputs=[Output("LATENT")])
def LatentComposite(
    samples_to=Socket("LATENT"),
    samples_from=Socket("LATENT"),
    x=Int(0, min=0, max=MAX_RESOLUTION, step=8),
    y=Int(0, min=0, max=MAX_RESOLUTION, step=8),
    feather=Int(0, min=0, max=MAX_RESOLUTION, step=8),
):
    """Paste ``samples_from`` into ``samples_to`` at (x, y) pixels, optionally feathering the pasted edges."""
    target, source = samples_to["samples"], samples_from["samples"]
    if target.shape[1] != source.shape[1]:
        raise ValueError(
            f"LatentComposite: {source.shape[1]}-channel latents cannot go into {target.shape[1]}-channel ones"
        )
    x, y, feather = x // 8, y // 8, feather // 8
    result = target.clone()
    height = min(source.shape[2], target.shape[2] - y)
    width = min(source.shape[3], target.shape[3] - x)
    if height <= 0 or width <= 0:
        return {**samples_to, "samples": result}
    piece = source[:, :, :height, :width]
    weight = torch.ones_like(piece[:, :1])
    for step in range(feather):
        ramp = (step + 1) / feather
        # Edges on the target's border are not feathered: nothing lies beyond them to blend with.
        if y != 0:
            weight[:, :, step] *= ramp
        if y + height < target.shape[2]:
            weight[:, :, height - 1 - step] *= ramp
        if x != 0:
            weight[:, :, :, step] *= ramp
        if x + width < target.shape[3]:
            weight[:, :, :, width - 1 - step] *= ramp
    region = result[:, :, y : y + height, x : x + width]
    result[:, :, y : y + height, x : x + width] = piece * weight + region * (1.0 - weight)
    return {**samples_to, "samples": result}


@node(category="_for_testing", outputs=[Output("LATENT")])
def LatentBlend(
    samples1=Socket("LATENT"),
    samples2=Socket("LATENT"),
    blend_factor=Float(0.5, min=0.0, max=1.0, step=0.01),
):
    """``samples1 * factor + samples2 * (1 - factor)``; ``samples2`` is resized to match first."""
    first, second = samples1["samples"], samples2["samples"]
    if first.shape != second.shape:
        second = resample(second, first.shape[3], first.shape[2], "bicubic", "center")
    return {**samples1, "samples": first * blend_factor + second * (1.0 - blend_factor)}
