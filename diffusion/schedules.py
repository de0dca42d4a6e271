"""Noise schedules: which sigmas a sampler visits, from the noisiest down to 0.

Every builder returns a float32 tensor of ``steps + 1`` sigmas (``ddim_uniform`` and ``beta`` may
return fewer or more, see their notes) that decreases and ends in exactly 0, so a sampler takes
one step per consecutive pair. ``compute_sigmas`` picks a builder by its ComfyUI scheduler name;
``denoise_sigmas`` and ``cut_sigmas`` take the part of a schedule that KSampler's ``denoise`` and
KSamplerAdvanced's step window ask for.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from diffusion.prediction import ModelSampling

__all__ = [
    "ALIGN_YOUR_STEPS",
    "KSAMPLER_FULL_DENOISE",
    "SCHEDULER_NAMES",
    "UnknownSchedulerError",
    "align_your_steps_sigmas",
    "beta_quantile",
    "beta_sigmas",
    "compute_sigmas",
    "cut_sigmas",
    "ddim_uniform_sigmas",
    "denoise_sigmas",
    "exponential_sigmas",
    "karras_sigmas",
    "kl_optimal_sigmas",
    "laplace_sigmas",
    "linear_quadratic_sigmas",
    "normal_sigmas",
    "polyexponential_sigmas",
    "sd_turbo_sigmas",
    "sgm_uniform_sigmas",
    "simple_sigmas",
    "vp_sigmas",
]


class UnknownSchedulerError(ValueError):
    """A scheduler name that no builder answers to."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"unknown scheduler {name!r}; known: {', '.join(SCHEDULER_NAMES)}")


def _regularized_incomplete_beta(x: np.ndarray, a: float, b: float, terms: int = 200) -> np.ndarray:
    """``I_x(a, b)`` by its continued fraction (Abramowitz & Stegun 26.5.8), evaluated with Lentz's method.

    The fraction converges fast for ``x < (a + 1) / (a + b + 2)``; above that the symmetry
    ``I_x(a, b) = 1 - I_{1-x}(b, a)`` is used instead.
    """
    x = np.asarray(x, dtype=np.float64)
    flip = x > (a + 1.0) / (a + b + 2.0)
    xs = np.where(flip, 1.0 - x, x).clip(1e-300, 1.0)
    pa, pb = np.where(flip, b, a), np.where(flip, a, b)
    tiny = 1e-300

    def lentz_step(numerator: np.ndarray, c: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        d = 1.0 + numerator * d
        d = 1.0 / np.where(np.abs(d) < tiny, tiny, d)
        c = 1.0 + numerator / c
        c = np.where(np.abs(c) < tiny, tiny, c)
        return c, d, c * d

    c = np.ones_like(xs)
    d = 1.0 - (pa + pb) * xs / (pa + 1.0)
    d = 1.0 / np.where(np.abs(d) < tiny, tiny, d)
    value = d
    for m in range(1, terms):
        even = m * (pb - m) * xs / ((pa + 2 * m - 1) * (pa + 2 * m))
        c, d, factor = lentz_step(even, c, d)
        value = value * factor
        odd = -(pa + m) * (pa + pb + m) * xs / ((pa + 2 * m) * (pa + 2 * m + 1))
        c, d, factor = lentz_step(odd, c, d)
        value = value * factor
        if np.all(np.abs(factor - 1.0) < 1e-16):
            break
    log_beta = np.vectorize(lambda p, q: math.lgamma(p) + math.lgamma(q) - math.lgamma(p + q))(pa, pb)
    front = np.exp(pa * np.log(xs) + pb * np.log1p(-xs) - log_beta) / pa
    result = front * value
    result = np.where(flip, 1.0 - result, result)
    return np.where(x <= 0.0, 0.0, np.where(x >= 1.0, 1.0, result))


def beta_quantile(levels: np.ndarray, a: float, b: float) -> np.ndarray:
    """Inverse of the regularised incomplete beta function: ``x`` with ``I_x(a, b) = level``.

    Bisection on [0, 1] (the CDF is monotone); 60 halvings reach float64 resolution. Written here
    because scipy is not a runtime dependency; tests compare it with ``scipy.stats.beta.ppf``.
    """
    levels = np.asarray(levels, dtype=np.float64)
    low, high = np.zeros_like(levels), np.ones_like(levels)
    for _ in range(60):
        middle = 0.5 * (low + high)
        below = _regularized_incomplete_beta(middle, a, b) < levels
        low, high = np.where(below, middle, low), np.where(below, high, middle)
    return np.where(levels <= 0.0, 0.0, np.where(levels >= 1.0, 1.0, 0.5 * (low + high)))


def _append_zero(sigmas: Tensor) -> Tensor:
    return torch.cat([sigmas.float(), sigmas.new_zeros(1, dtype=torch.float32)])


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """Karras et al. 2022, eq. 5: equal steps in ``sigma^(1/rho)``; rho = 7 spends most steps at low noise."""
    ramp = torch.linspace(0, 1, steps)
    inv_min, inv_max = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero((inv_max + ramp * (inv_min - inv_max)) ** rho)


def exponential_sigmas(steps: int, sigma_min: float, sigma_max: float) -> Tensor:
    """Equal steps in log-sigma: the same ratio between consecutive sigmas."""
    return _append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), steps).exp())


def kl_optimal_sigmas(steps: int, sigma_min: float, sigma_max: float) -> Tensor:
    """Sabour et al. 2024 ("Align Your Steps"), the KL-optimal schedule: equal steps in atan(sigma)."""
    t = torch.linspace(0, 1, steps, dtype=torch.float64)
    return _append_zero(torch.tan(t * math.atan(sigma_min) + (1 - t) * math.atan(sigma_max)))


def polyexponential_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> Tensor:
    """k-diffusion's polyexponential schedule: log-sigma falls as ``ramp^rho`` (rho = 1 is ``exponential``)."""
    ramp = torch.linspace(1, 0, steps) ** rho
    log_min = math.log(sigma_min)
    return _append_zero(torch.exp(ramp * (math.log(sigma_max) - log_min) + log_min))


def vp_sigmas(steps: int, beta_d: float = 19.9, beta_min: float = 0.1, eps_s: float = 1e-3) -> Tensor:
    """The continuous variance-preserving SDE of Song et al. 2021 as sigmas, time running from 1 to ``eps_s``:
    ``sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)``."""
    t = torch.linspace(1, eps_s, steps)
    return _append_zero(torch.sqrt(torch.special.expm1(beta_d * t**2 / 2 + beta_min * t)))


def laplace_sigmas(steps: int, sigma_min: float, sigma_max: float, mu: float = 0.0, beta: float = 0.5) -> Tensor:
    """Hang et al. 2024, "Improved Noise Schedule for Diffusion Training": log-sigma at the quantiles of a
    Laplace(mu, beta) distribution, clamped to the range.

    Unlike every other builder here it returns ``steps`` sigmas and no final 0 (ComfyUI's
    ``LaplaceScheduler`` does the same), so sampling stops at the last, clamped, sigma.
    """
    x = torch.linspace(0, 1, steps)
    # The 1e-5 keeps the log finite at the two ends of the ramp.
    log_sigma = mu - beta * torch.sign(0.5 - x) * torch.log(1 - 2 * torch.abs(0.5 - x) + 1e-5)
    return torch.exp(log_sigma).clamp(min=sigma_min, max=sigma_max)


#: Sabour et al. 2024, "Align Your Steps": the 10-step schedules NVIDIA published per model family,
#: from the noisiest sigma down to the last one before 0.
ALIGN_YOUR_STEPS: dict[str, tuple[float, ...]] = {
    "SD1": (14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177, 1.3943805092,
            0.9642583904, 0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582),
    "SDXL": (14.6146412293, 6.3184485287, 3.7681790315, 2.1811480769, 1.3405244945, 0.8620721141,
             0.5550693289, 0.3798540708, 0.2332364134, 0.1114188177, 0.0291671582),
    "SVD": (700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002),
}  # fmt: skip


def align_your_steps_sigmas(model_type: str, steps: int) -> Tensor:
    """The published AYS schedule of ``model_type``, log-linearly interpolated to ``steps`` steps (the
    paper's recipe for other step counts), with the last sigma replaced by 0."""
    table = np.array(ALIGN_YOUR_STEPS[model_type], dtype=np.float64)
    if steps + 1 != len(table):
        # Interpolated from the clean end, on evenly spaced positions over the whole table.
        rising = np.log(table[::-1])
        positions = np.linspace(0, 1, steps + 1)
        table = np.exp(np.interp(positions, np.linspace(0, 1, len(table)), rising))[::-1].copy()
    table[-1] = 0.0
    return torch.from_numpy(table).float()


def sd_turbo_sigmas(model_sampling: ModelSampling, steps: int, denoise: float = 1.0) -> Tensor:
    """The timesteps SD/SDXL Turbo were distilled on (999, 899, ..., 99), from the one ``denoise`` starts at.

    ``denoise`` skips the first ``10 - int(10 * denoise)`` of the ten timesteps; ``steps`` of the rest are
    kept (fewer where fewer remain), each the model's sigma at that timestep, then 0.
    """
    start = 10 - int(10 * denoise)
    timesteps = torch.arange(999, 0, -100, dtype=torch.float32)[start : start + steps]
    return _append_zero(model_sampling.sigma(timesteps))


def normal_sigmas(model_sampling: ModelSampling, steps: int) -> Tensor:
    """Evenly spaced (fractional) timesteps from the highest to the lowest trained sigma.

    The same as k-diffusion's ``DiscreteSchedule.get_sigmas(steps)``: both ends are included, so
    the last nonzero sigma is the model's sigma_min.
    """
    start = model_sampling.timestep(torch.tensor(model_sampling.sigma_max))
    end = model_sampling.timestep(torch.tensor(model_sampling.sigma_min))
    return _append_zero(model_sampling.sigma(torch.linspace(float(start), float(end), steps)))


def sgm_uniform_sigmas(model_sampling: ModelSampling, steps: int) -> Tensor:
    """Stability's generative-models discretisation: ``steps`` of ``steps + 1`` evenly spaced timesteps.

    Like ``normal`` but the grid has one more point and the lowest one is dropped, so the
    last nonzero sigma sits one interval above sigma_min ("trailing" spacing in diffusers terms).
    """
    start = model_sampling.timestep(torch.tensor(model_sampling.sigma_max))
    end = model_sampling.timestep(torch.tensor(model_sampling.sigma_min))
    return _append_zero(model_sampling.sigma(torch.linspace(float(start), float(end), steps + 1)[:-1]))


def simple_sigmas(model_sampling: ModelSampling, steps: int) -> Tensor:
    """Every ``N/steps``-th entry of the trained sigma table, counted down from the top entry.

    Entry ``i`` is ``table[N - 1 - floor(i * N / steps)]``: no interpolation, so every sigma is one
    the model was trained at.
    """
    table = model_sampling.sigmas
    stride = len(table) / steps
    return _append_zero(torch.stack([table[-(1 + int(i * stride))] for i in range(steps)]))


def ddim_uniform_sigmas(model_sampling: ModelSampling, steps: int) -> Tensor:
    """The "uniform" timestep discretisation of the DDIM reference code (Song et al. 2021).

    Timesteps ``1, 1 + c, 1 + 2c, ...`` below N with stride ``c = N // steps``, visited from the top.
    Because of the integer stride this can produce a few more sigmas than ``steps`` (e.g. 8 for
    7 steps over 1000 timesteps), which is the behaviour ComfyUI workflows were tuned with.
    """
    table = model_sampling.sigmas
    stride = max(len(table) // steps, 1)
    indices = torch.arange(1, len(table), stride).flip(0)
    return _append_zero(table[indices])


def beta_sigmas(model_sampling: ModelSampling, steps: int, alpha: float = 0.6, beta: float = 0.6) -> Tensor:
    """Lee et al. 2024, "Beta Sampling is All You Need": timesteps at Beta(alpha, beta) quantiles.

    With alpha = beta = 0.6 the quantiles crowd both ends of the process (composition early,
    detail late). Quantiles ``1 - i/steps`` become integer timesteps of the table; a timestep that
    rounds onto the previous one is skipped, so very many steps can yield fewer sigmas.
    """
    table = model_sampling.sigmas
    last = len(table) - 1
    levels = 1.0 - np.linspace(0.0, 1.0, steps, endpoint=False)
    timesteps = np.rint(beta_quantile(levels, alpha, beta) * last).astype(np.int64)
    kept = [int(t) for i, t in enumerate(timesteps) if i == 0 or t != timesteps[i - 1]]
    return _append_zero(table[torch.tensor(kept)])


def linear_quadratic_sigmas(
    model_sampling: ModelSampling, steps: int, threshold_noise: float = 0.025, linear_steps: int | None = None
) -> Tensor:
    """Genmo's Mochi schedule: noise fraction linear in the step index, then quadratic.

    The first ``linear_steps`` (default ``steps // 2``) lower the noise fraction from 1 to
    ``1 - threshold_noise`` linearly; the rest follow the quadratic that continues that line with
    matching slope (C1) and reaches 0 at the last step. Fractions scale sigma_max.
    """
    if steps == 1:
        fractions = [1.0, 0.0]
    else:
        linear = steps // 2 if linear_steps is None else linear_steps
        quadratic = steps - linear
        slope = threshold_noise / linear
        curvature = (1.0 - threshold_noise - slope * quadratic) / quadratic**2
        progress = [i * slope for i in range(linear)]
        progress += [
            threshold_noise + slope * (i - linear) + curvature * (i - linear) ** 2 for i in range(linear, steps)
        ]
        fractions = [1.0 - p for p in progress] + [0.0]
    return torch.tensor(fractions, dtype=torch.float32) * model_sampling.sigma_max


def _range_builder(build: Callable[[int, float, float], Tensor]) -> Callable[[ModelSampling, int], Tensor]:
    return lambda model_sampling, steps: build(steps, model_sampling.sigma_min, model_sampling.sigma_max)


_BUILDERS: dict[str, Callable[[ModelSampling, int], Tensor]] = {
    "simple": simple_sigmas,
    "sgm_uniform": sgm_uniform_sigmas,
    "karras": _range_builder(karras_sigmas),
    "exponential": _range_builder(exponential_sigmas),
    "ddim_uniform": ddim_uniform_sigmas,
    "beta": beta_sigmas,
    "normal": normal_sigmas,
    "linear_quadratic": linear_quadratic_sigmas,
    "kl_optimal": _range_builder(kl_optimal_sigmas),
}

SCHEDULER_NAMES: tuple[str, ...] = tuple(_BUILDERS)
"""ComfyUI's scheduler names in its recent order; the first is the UI default."""


def compute_sigmas(model_sampling: ModelSampling, scheduler: str, steps: int) -> Tensor:
    """The sigmas of ``steps`` sampling steps under the named scheduler, ending in 0."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    try:
        build = _BUILDERS[scheduler]
    except KeyError:
        raise UnknownSchedulerError(scheduler) from None
    return build(model_sampling, steps).float()


#: KSampler counts a denoise above this as a full one (ComfyUI's ``KSampler.set_steps``).
KSAMPLER_FULL_DENOISE = 0.9999


def denoise_sigmas(
    model_sampling: ModelSampling,
    scheduler: str,
    steps: int,
    denoise: float = 1.0,
    *,
    discard_penultimate_sigma: bool = False,
    exact_denoise: bool = False,
) -> Tensor:
    """The sigmas of ``steps`` steps over the last ``denoise`` fraction of the named schedule.

    img2img and hires fix start from a picture, so they skip the noisiest part of the process:
    below 1, ``int(steps / denoise)`` steps are scheduled and the last ``steps + 1`` sigmas kept, so
    the run still takes ``steps`` steps but starts at the noise level that fraction implies. A
    denoise of 0 or less gives no sigmas: nothing to sample.

    The two ComfyUI nodes that take a denoise round differently, and both rules are kept: KSampler
    counts anything above ``KSAMPLER_FULL_DENOISE`` as a full denoise; BasicScheduler
    (``exact_denoise``) lengthens the schedule for any denoise below 1. They disagree only where
    ``int(steps / denoise) > steps`` for such a denoise, which needs about 10000 steps.

    ``discard_penultimate_sigma`` (``SamplerSpec``): one more step is scheduled and the
    second-to-last sigma dropped, as KSampler does for the samplers that ask for it.
    """
    if denoise <= 0.0:
        return torch.zeros(0)
    full = denoise >= 1.0 if exact_denoise else denoise > KSAMPLER_FULL_DENOISE
    total = steps if full else int(steps / denoise)
    if discard_penultimate_sigma:
        sigmas = compute_sigmas(model_sampling, scheduler, total + 1)
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    else:
        sigmas = compute_sigmas(model_sampling, scheduler, total)
    return sigmas[-(steps + 1) :]


def cut_sigmas(
    sigmas: Tensor, start_step: int | None = None, end_step: int | None = None, leftover_noise: bool = False
) -> Tensor:
    """KSamplerAdvanced's window: the part of a schedule from step ``start_step`` to ``end_step``.

    Multi-stage sampling (a base model then a refiner) splits one schedule between samplers. A
    window that ends early lands on sigma 0, finishing the denoise from the noise level reached,
    unless ``leftover_noise`` keeps the schedule's sigma there so a later window continues from the
    still-noisy latent. An ``end_step`` at or past the last step changes nothing. A window that
    starts at or after the last step is a single sigma: no step, so sampling returns the latent as
    given.
    """
    if end_step is not None and end_step < len(sigmas) - 1:
        sigmas = sigmas[: end_step + 1].clone()
        if not leftover_noise:
            sigmas[-1] = 0.0
    if start_step is not None:
        sigmas = sigmas[start_step:] if start_step < len(sigmas) - 1 else sigmas[-1:]
    return sigmas
