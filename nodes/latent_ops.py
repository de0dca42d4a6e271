"""LATENT arithmetic and transforms: crop, flip, rotate, add, subtract, multiply, interpolate, batch and
seed behaviour (ComfyUI's ``nodes.py`` and ``comfy_extras/nodes_latent.py``).

Every node returns a copy of its first latent's dict with new ``samples``, so ``noise_mask`` and
``batch_index`` pass through unchanged (and are not cropped, flipped or rotated with the samples), as
in ComfyUI: the sampler resizes a noise mask to whatever latent it meets. Where a second latent joins
the first it is made to fit as ComfyUI makes it fit: resized (bilinear, centre-cropped to the aspect
ratio) when any of its channel, height or width sizes differ, and for the arithmetic nodes repeated
or cut to the first one's batch.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from graph.declare import Combo, Float, Int, Output, Socket, node, spec_of
from nodes.image import MAX_RESOLUTION, resample

__all__ = [
    "FLIP_METHODS", "ROTATIONS", "SEED_BEHAVIORS", "LatentAdd", "LatentBatch", "LatentBatchSeedBehavior",
    "LatentCrop", "LatentFlip", "LatentInterpolate", "LatentMultiply", "LatentRotate", "LatentSubtract",
    "repeat_to_batch",
]  # fmt: skip

Latent = dict[str, Any]
#: LatentRotate's choices and the quarter turns (clockwise) each makes.
ROTATIONS = {"none": 0, "90 degrees": 1, "180 degrees": 2, "270 degrees": 3}
#: LatentFlip's choices and the axis each reverses: rows for "x-axis", columns for "y-axis".
FLIP_METHODS = {"x-axis: vertically": -2, "y-axis: horizontally": -1}
SEED_BEHAVIORS = ["random", "fixed"]


def repeat_to_batch(samples: torch.Tensor, batch: int) -> torch.Tensor:
    """``samples`` cut to ``batch`` items, or repeated cyclically up to it (ComfyUI's ``repeat_to_batch_size``)."""
    count = samples.shape[0]
    if count > batch:
        return samples[:batch]
    if count < batch:
        return samples.repeat(math.ceil(batch / count), *[1] * (samples.ndim - 1))[:batch]
    return samples


def _fitted(first: torch.Tensor, second: torch.Tensor, node_name: str) -> torch.Tensor:
    """``second`` resized to ``first``'s height and width, as ComfyUI's ``reshape_latent_to`` does."""
    if second.shape[1] != first.shape[1]:
        raise ValueError(
            f"{node_name}: samples2 has {second.shape[1]}-channel latents and samples1 {first.shape[1]}-channel "
            "ones; they must have the same channels"
        )
    if second.shape[1:] == first.shape[1:]:
        return second.to(first.device)
    if first.ndim != 4 or second.ndim != 4:
        raise ValueError(
            f"{node_name}: samples2 {tuple(second.shape)} cannot be resized to samples1 {tuple(first.shape)}; "
            "only image latents [B, C, h, w] are resized"
        )
    return resample(second.to(first.device), first.shape[-1], first.shape[-2], "bilinear", "center")


def _pair(samples1: Latent, samples2: Latent, node_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    first = samples1["samples"]
    return first, repeat_to_batch(_fitted(first, samples2["samples"], node_name), first.shape[0])


@node(category="latent/transform", display_name="Crop Latent", outputs=[Output("LATENT")])
def LatentCrop(
    samples=Socket("LATENT"),
    width=Int(512, min=64, max=MAX_RESOLUTION, step=8),
    height=Int(512, min=64, max=MAX_RESOLUTION, step=8),
    x=Int(0, min=0, max=MAX_RESOLUTION, step=8),
    y=Int(0, min=0, max=MAX_RESOLUTION, step=8),
):
    """Cut a width × height window (pixels) at (x, y); sizes and offsets round down to multiples of 8.

    The window starts at least 64 pixels before the right and bottom edges, so it always keeps some
    latent; past the edge it is clipped, never padded. The noise mask is kept whole, as in ComfyUI.
    """
    latent = samples["samples"]
    # max(0, ...) only matters for latents under 8 cells, which ComfyUI indexes from the end instead.
    x = max(0, min(x // 8, latent.shape[-1] - 8))
    y = max(0, min(y // 8, latent.shape[-2] - 8))
    return {**samples, "samples": latent[..., y : y + height // 8, x : x + width // 8]}


@node(category="latent/transform", display_name="Flip Latent", outputs=[Output("LATENT")])
def LatentFlip(samples=Socket("LATENT"), flip_method=Combo(list(FLIP_METHODS))):
    """Mirror latents: "x-axis" turns them upside down, "y-axis" mirrors left and right."""
    if flip_method not in FLIP_METHODS:
        raise ValueError(f"LatentFlip: flip_method {flip_method!r} is not one of {', '.join(FLIP_METHODS)}")
    return {**samples, "samples": torch.flip(samples["samples"], dims=[FLIP_METHODS[flip_method]])}


@node(category="latent/transform", display_name="Rotate Latent", outputs=[Output("LATENT")])
def LatentRotate(samples=Socket("LATENT"), rotation=Combo(list(ROTATIONS))):
    """Turn latents clockwise by a multiple of 90 degrees."""
    if rotation not in ROTATIONS:
        raise ValueError(f"LatentRotate: rotation {rotation!r} is not one of {', '.join(ROTATIONS)}")
    # Turning from the width axis towards the height axis is clockwise on screen.
    return {**samples, "samples": torch.rot90(samples["samples"], k=ROTATIONS[rotation], dims=[-1, -2])}


@node(category="latent/advanced", outputs=[Output("LATENT")])
def LatentAdd(samples1=Socket("LATENT"), samples2=Socket("LATENT")):
    """``samples1 + samples2``, samples2 fitted to samples1's size and batch first."""
    first, second = _pair(samples1, samples2, "LatentAdd")
    return {**samples1, "samples": first + second}


@node(category="latent/advanced", outputs=[Output("LATENT")])
def LatentSubtract(samples1=Socket("LATENT"), samples2=Socket("LATENT")):
    """``samples1 - samples2``, samples2 fitted to samples1's size and batch first."""
    first, second = _pair(samples1, samples2, "LatentSubtract")
    return {**samples1, "samples": first - second}


@node(category="latent/advanced", outputs=[Output("LATENT")])
def LatentMultiply(samples=Socket("LATENT"), multiplier=Float(1.0, min=-10.0, max=10.0, step=0.01)):
    """Scale latents by a factor."""
    return {**samples, "samples": samples["samples"] * multiplier}


def _direction_and_length(latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each cell's channel vector split into its unit direction (0 for a zero vector) and its length."""
    length = torch.linalg.vector_norm(latent, dim=1, keepdim=True)
    return torch.nan_to_num(latent / length), length


@node(category="latent/advanced", outputs=[Output("LATENT")])
def LatentInterpolate(
    samples1=Socket("LATENT"),
    samples2=Socket("LATENT"),
    ratio=Float(1.0, min=0.0, max=1.0, step=0.01),
):
    """Blend two latents cell by cell: directions and lengths of the channel vectors mix separately.

    ratio 1 gives samples1, 0 gives samples2 (fitted to samples1's size and batch). The mixed direction
    is renormalised and given the mixed length, which keeps the blend from fading towards zero where
    the two latents point different ways, as a plain linear blend would.
    """
    first, second = _pair(samples1, samples2, "LatentInterpolate")
    direction1, length1 = _direction_and_length(first)
    direction2, length2 = _direction_and_length(second)
    direction, _ = _direction_and_length(direction1 * ratio + direction2 * (1.0 - ratio))
    return {**samples1, "samples": direction * (length1 * ratio + length2 * (1.0 - ratio))}


@node(category="latent/batch", outputs=[Output("LATENT")])
def LatentBatch(samples1=Socket("LATENT"), samples2=Socket("LATENT")):
    """Join two latent batches; samples2 is resized to samples1's size (its batch is kept whole).

    ``batch_index`` lists each part's own indexes, counting from 0 where a part has none, so the two
    parts start from the same noise unless one came from a batch split (ComfyUI's rule). The noise
    mask is samples1's.
    """
    first = samples1["samples"]
    second = _fitted(first, samples2["samples"], "LatentBatch")
    indexes = list(samples1.get("batch_index", range(first.shape[0])))
    indexes += list(samples2.get("batch_index", range(second.shape[0])))
    return {**samples1, "samples": torch.cat((first, second)), "batch_index": indexes}


# Deprecated in ComfyUI (its batch nodes take over); ``@node`` has no flag for it, the spec does.
spec_of(LatentBatch).deprecated = True


@node(category="latent/advanced", outputs=[Output("LATENT")])
def LatentBatchSeedBehavior(samples=Socket("LATENT"), seed_behavior=Combo(SEED_BEHAVIORS, default="fixed")):
    """How a batch draws its noise: "fixed" gives every item the first item's noise, "random" its own.

    "fixed" sets every ``batch_index`` to the first one (0 when there are none); "random" drops them,
    so the sampler draws the batch as one new batch.
    """
    out: Latent = dict(samples)
    if seed_behavior == "random":
        out.pop("batch_index", None)
    elif seed_behavior == "fixed":
        first = samples.get("batch_index", [0])[0]
        out["batch_index"] = [first] * samples["samples"].shape[0]
    else:
        raise ValueError(
            f"LatentBatchSeedBehavior: seed_behavior {seed_behavior!r} is not one of {', '.join(SEED_BEHAVIORS)}"
        )
    return out
