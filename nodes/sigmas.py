"""Schedulers and sigma utilities: ComfyUI's nodes that build a SIGMAS value or reshape one.

A SIGMAS value is a 1-D float32 tensor of noise levels from the noisiest down, one sampler step per
consecutive pair (``SamplerCustom``, ``SamplerCustomAdvanced``). The schedules themselves live in
``diffusion.schedules``; these nodes expose their parameters as ComfyUI does and apply ComfyUI's
per-node rules for ``denoise`` (each node has its own rounding), so saved workflows give the same sigmas.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from torch import Tensor

from diffusion.schedules import (
    ALIGN_YOUR_STEPS,
    align_your_steps_sigmas,
    beta_sigmas,
    exponential_sigmas,
    karras_sigmas,
    laplace_sigmas,
    polyexponential_sigmas,
    sd_turbo_sigmas,
    vp_sigmas,
)
from graph.declare import Boolean, Combo, Float, Int, Output, Socket, String, node, spec_of

__all__ = [
    "AlignYourStepsScheduler", "BetaSamplingScheduler", "ExponentialScheduler", "ExtendIntermediateSigmas",
    "FlipSigmas", "KarrasScheduler", "LaplaceScheduler", "ManualSigmas", "PolyexponentialScheduler",
    "SDTurboScheduler", "SIGMAS_CATEGORY", "SCHEDULERS_CATEGORY", "SamplingPercentToSigma", "SetFirstSigma",
    "SplitSigmas", "SplitSigmasDenoise", "UnroundedFloat", "VPScheduler",
]  # fmt: skip

#: Menu paths of ComfyUI's custom-sampling nodes, as ``BasicScheduler`` and ``KSamplerSelect`` use them.
SCHEDULERS_CATEGORY = "sampling/custom_sampling/schedulers"
SIGMAS_CATEGORY = "sampling/custom_sampling/sigmas"

#: SD 1.x's trained sigma range, the default range of the model-free schedulers.
_SD1_SIGMA_MAX = 14.614642
_SD1_SIGMA_MIN = 0.0291675
#: ComfyUI's discrete models answer this, not infinity, for the sigma at 0% of the process.
_DISCRETE_START_SIGMA = 999999999.9


class UnroundedFloat(Float):
    """A FLOAT that ComfyUI declares with ``round: False``: the editor keeps the typed value exactly
    instead of rounding it to a multiple of ``step`` (sigmas such as 0.0291675 need every digit)."""

    def __init__(self, default: float = 0.0, **options: Any) -> None:
        super().__init__(default, **options)
        self.options["round"] = False


# Shared declarations: each node's spec copies their options.
_STEPS = Int(20, min=1, max=10000)
_SIGMA_MAX = UnroundedFloat(_SD1_SIGMA_MAX, min=0.0, max=5000.0, step=0.01)
_SIGMA_MIN = UnroundedFloat(_SD1_SIGMA_MIN, min=0.0, max=5000.0, step=0.01)


@node(category=SCHEDULERS_CATEGORY, outputs=[Output("SIGMAS")])
def KarrasScheduler(
    steps=_STEPS,
    sigma_max=_SIGMA_MAX,
    sigma_min=_SIGMA_MIN,
    rho=UnroundedFloat(7.0, min=0.0, max=100.0, step=0.01),
):
    """Karras et al. 2022: equal steps in sigma^(1/rho) between sigma_max and sigma_min, then 0."""
    return karras_sigmas(steps, sigma_min, sigma_max, rho)


@node(category=SCHEDULERS_CATEGORY, outputs=[Output("SIGMAS")])
def ExponentialScheduler(steps=_STEPS, sigma_max=_SIGMA_MAX, sigma_min=_SIGMA_MIN):
    """Equal steps in log-sigma between sigma_max and sigma_min, then 0."""
    return exponential_sigmas(steps, sigma_min, sigma_max)


@node(category=SCHEDULERS_CATEGORY, outputs=[Output("SIGMAS")])
def PolyexponentialScheduler(
    steps=_STEPS,
    sigma_max=_SIGMA_MAX,
    sigma_min=_SIGMA_MIN,
    rho=UnroundedFloat(1.0, min=0.0, max=100.0, step=0.01),
):
    """Log-sigma falling as ramp^rho from sigma_max to sigma_min, then 0 (rho 1 is the exponential schedule)."""
    return polyexponential_sigmas(steps, sigma_min, sigma_max, rho)


@node(category=SCHEDULERS_CATEGORY, outputs=[Output("SIGMAS")])
def LaplaceScheduler(
    steps=_STEPS,
    sigma_max=_SIGMA_MAX,
    sigma_min=_SIGMA_MIN,
    mu=UnroundedFloat(0.0, min=-10.0, max=10.0, step=0.1),
    beta=UnroundedFloat(0.5, min=0.0, max=10.0, step=0.1),
):
    """Log-sigma at Laplace(mu, beta) quantiles, clamped to the range; no final 0, as in ComfyUI."""
    return laplace_sigmas(steps, sigma_min, sigma_max, mu, beta)


@node(category=SCHEDULERS_CATEGORY, outputs=[Output("SIGMAS")])
def VPScheduler(
    steps=_STEPS,
    beta_d=UnroundedFloat(19.9, min=0.0, max=5000.0, step=0.01),
    beta_min=UnroundedFloat(0.1, min=0.0, max=5000.0, step=0.01),
    eps_s=UnroundedFloat(0.001, min=0.0, max=1.0, step=0.0001),
):
    """The continuous variance-preserving SDE's noise levels from time 1 down to eps_s, then 0."""
    return vp_sigmas(steps, beta_d, beta_min, eps_s)


@node(category=SCHEDULERS_CATEGORY, outputs=[Output("SIGMAS")])
def BetaSamplingScheduler(
    model=Socket("MODEL"),
    steps=_STEPS,
    alpha=UnroundedFloat(0.6, min=0.0, max=50.0, step=0.01),
    beta=UnroundedFloat(0.6, min=0.0, max=50.0, step=0.01),
):
    """The model's trained sigmas at Beta(alpha, beta) quantiles of its timesteps, then 0."""
    return beta_sigmas(model.sampling, steps, alpha, beta)


@node(category=SCHEDULERS_CATEGORY, outputs=[Output("SIGMAS")])
def SDTurboScheduler(
    model=Socket("MODEL"),
    steps=Int(1, min=1, max=10),
    denoise=Float(1.0, min=0, max=1.0, step=0.01),
):
    """SD/SDXL Turbo's timesteps 999, 899, ... 99: denoise below 1 starts that many tenths later."""
    return sd_turbo_sigmas(model.sampling, steps, denoise)


@node(category=SCHEDULERS_CATEGORY, outputs=[Output("SIGMAS")])
def AlignYourStepsScheduler(
    model_type=Combo(list(ALIGN_YOUR_STEPS)),
    steps=Int(10, min=1, max=10000),
    denoise=Float(1.0, min=0.0, max=1.0, step=0.01),
):
    """NVIDIA's Align Your Steps schedule for the model type, log-linearly stretched to the step count.

    Below 1, ``denoise`` keeps the last ``round(steps * denoise)`` steps of it.
    """
    if denoise <= 0.0:
        return torch.zeros(0)
    kept = steps if denoise >= 1.0 else round(steps * denoise)
    return align_your_steps_sigmas(model_type, steps)[-(kept + 1) :]


@node(category=SIGMAS_CATEGORY, outputs=[Output("SIGMAS", "high_sigmas"), Output("SIGMAS", "low_sigmas")])
def SplitSigmas(sigmas=Socket("SIGMAS"), step=Int(0, min=0, max=10000)):
    """Cut a schedule at a step: the steps before it, and those from it on (both keep its sigma)."""
    return sigmas[: step + 1], sigmas[step:]


@node(category=SIGMAS_CATEGORY, outputs=[Output("SIGMAS", "high_sigmas"), Output("SIGMAS", "low_sigmas")])
def SplitSigmasDenoise(sigmas=Socket("SIGMAS"), denoise=Float(1.0, min=0.0, max=1.0, step=0.01)):
    """Cut a schedule so the low part is the last ``round(steps * denoise)`` steps.

    As in ComfyUI, a denoise that rounds to no steps leaves the high part empty, not whole.
    """
    steps = max(sigmas.shape[-1] - 1, 0)
    low_steps = round(steps * denoise)
    return sigmas[:-low_steps], sigmas[-(low_steps + 1) :]


@node(category=SIGMAS_CATEGORY, outputs=[Output("SIGMAS")])
def FlipSigmas(sigmas=Socket("SIGMAS")):
    """Reverse a schedule (for inversion, clean to noisy); a leading 0 becomes 0.0001."""
    if len(sigmas) == 0:
        return sigmas
    flipped = sigmas.flip(0)
    if flipped[0] == 0:
        flipped[0] = 0.0001
    return flipped


@node(category=SIGMAS_CATEGORY, outputs=[Output("SIGMAS")])
def SetFirstSigma(sigmas=Socket("SIGMAS"), sigma=UnroundedFloat(136.0, min=0.0, max=20000.0, step=0.001)):
    """Replace the first (noisiest) sigma of a schedule."""
    changed = sigmas.clone()
    changed[0] = sigma
    return changed


def _spacing(name: str, x: Tensor) -> Tensor:
    """Where between two sigmas the inserted ones fall. ComfyUI's names are kept although they are
    swapped against the curves: "cosine" is the sine ease-out, "sine" the cosine ease-in."""
    if name == "cosine":
        return torch.sin(x * math.pi / 2)
    if name == "sine":
        return 1 - torch.cos(x * math.pi / 2)
    return x


@node(category=SIGMAS_CATEGORY, outputs=[Output("SIGMAS")])
def ExtendIntermediateSigmas(
    sigmas=Socket("SIGMAS"),
    steps=Int(2, min=1, max=100),
    start_at_sigma=UnroundedFloat(-1.0, min=-1.0, max=20000.0, step=0.01),
    end_at_sigma=UnroundedFloat(12.0, min=0.0, max=20000.0, step=0.01),
    spacing=Combo(["linear", "cosine", "sine"]),
):
    """Split each step that starts between end_at_sigma and start_at_sigma (-1: no bound) into ``steps`` steps."""
    upper = math.inf if start_at_sigma < 0 else start_at_sigma
    fractions = _spacing(spacing, torch.linspace(0, 1, steps + 1, device=sigmas.device)[1:-1])
    extended: list[float] = []
    # Compared and interpolated as tensors, so the bounds meet the sigmas in their own precision.
    for current, following in zip(sigmas[:-1], sigmas[1:]):
        extended.append(float(current))
        if end_at_sigma <= current <= upper:
            extended.extend((fractions * (following - current) + current).tolist())
    if len(sigmas) > 0:
        extended.append(float(sigmas[-1]))
    return torch.tensor(extended, dtype=torch.float32)


@node(category=SIGMAS_CATEGORY, outputs=[Output("FLOAT", "sigma_value")])
def SamplingPercentToSigma(
    model=Socket("MODEL"),
    sampling_percent=Float(0.0, min=0.0, max=1.0, step=0.0001),
    return_actual_sigma=Boolean(
        False, tooltip="Give the model's real highest / lowest sigma at 0 / 1 instead of the bounds used for ranges."
    ),
):
    """The model's sigma at a fraction of the sampling process (0 the noisy start, 1 the clean end).

    At the ends it gives what timestep ranges compare against (a huge value at 0, 0 at 1) unless
    ``return_actual_sigma`` asks for the model's sigma_max / sigma_min.
    """
    sampling = model.sampling
    if return_actual_sigma and sampling_percent == 0.0:
        return float(sampling.sigma_max)
    if return_actual_sigma and sampling_percent == 1.0:
        return float(sampling.sigma_min)
    sigma = float(sampling.percent_to_sigma(sampling_percent))
    return _DISCRETE_START_SIGMA if math.isinf(sigma) else sigma


# ComfyUI's number syntax: an optional sign, optional digits, any run of dots, then digits (no exponents).
_NUMBER = re.compile(r"[-+]?\d*\.*\d+")


_SIGMA_LIST = String("1, 0.5")
# ComfyUI's declaration says ``multiline: false`` outright, which ``String`` leaves out as the default.
_SIGMA_LIST.options["multiline"] = False


@node(category="_for_testing/custom_sampling", outputs=[Output("SIGMAS")])
def ManualSigmas(sigmas=_SIGMA_LIST):
    """Sigmas typed as a list of numbers; any text between the numbers separates them."""
    found = _NUMBER.findall(sigmas)
    try:
        return torch.tensor([float(number) for number in found], dtype=torch.float32)
    except ValueError as error:
        raise ValueError(f"ManualSigmas cannot read a number in {sigmas!r}: {error}") from None


# ComfyUI marks ManualSigmas experimental (the editor badges it); ``@node`` has no flag for that.
spec_of(ManualSigmas).experimental = True
