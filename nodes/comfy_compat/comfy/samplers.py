"""ComfyUI's ``comfy.samplers`` for node packs: the sampler and scheduler names Loom's KSampler offers.

Supported: ``KSampler.SAMPLERS``, ``KSampler.SCHEDULERS``, ``SAMPLER_NAMES``, ``SCHEDULER_NAMES`` and
``KSAMPLER_NAMES`` (the samplers other than ``ddim``, ``uni_pc`` and ``uni_pc_bh2``, as ComfyUI splits
them), built from Loom's registries (``diffusion.samplers``, ``diffusion.schedules``), so a pack's
combo offers exactly what Loom's sampler nodes accept. They are fresh lists: a pack appending its
own sampler changes what it reads, not what Loom's KSampler runs.

Not supported: sampling through ComfyUI's classes. ``KSampler(...)`` raises: packs sample with Loom's
nodes or ``diffusion.sampling``. ``CFGGuider``, ``sampler_object``, ``calculate_sigmas`` ... are not provided.
"""

from __future__ import annotations

from typing import Any

from diffusion.samplers import SAMPLER_NAMES as _LOOM_SAMPLERS
from diffusion.schedules import SCHEDULER_NAMES as _LOOM_SCHEDULERS

__all__ = ["KSAMPLER_NAMES", "SAMPLER_NAMES", "SCHEDULER_NAMES", "KSampler"]

#: ComfyUI's samplers that do not run through its k-diffusion sampling loop.
_NON_K_SAMPLERS = ("ddim", "uni_pc", "uni_pc_bh2")

SAMPLER_NAMES: list[str] = list(_LOOM_SAMPLERS)
SCHEDULER_NAMES: list[str] = list(_LOOM_SCHEDULERS)
KSAMPLER_NAMES: list[str] = [name for name in SAMPLER_NAMES if name not in _NON_K_SAMPLERS]


class KSampler:
    """The lists ComfyUI's KSampler class carries; Loom samples with its own nodes."""

    SAMPLERS = SAMPLER_NAMES
    SCHEDULERS = SCHEDULER_NAMES

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            "comfy.samplers.KSampler only carries the SAMPLERS and SCHEDULERS lists in Loom; sample with "
            "Loom's KSampler node (nodes.sampling) or diffusion.sampling.sample"
        )
