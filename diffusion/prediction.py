"""Model wrappers: from a UNet's raw output to the denoised estimate the samplers work with.

Stable Diffusion UNets were trained as discrete DDPMs (Ho et al. 2020) on 1000 timesteps; the
samplers instead work in the variance-exploding parametrisation of Karras et al. 2022, where
``x = x0 + sigma * noise`` and ``model(x, sigma)`` returns an estimate of ``x0``. The two views are
the same process rescaled: a DDPM state ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise`` divided by
``sqrt(a_t)`` is ``x0 + sigma_t noise`` with ``sigma_t = sqrt((1 - a_t) / a_t)`` (``a`` =
alphas_cumprod). So the wrapper owns two things: the schedule (the table of the 1000 training sigmas, to
turn a continuous sigma back into the timestep the UNet was conditioned on) and the output
parametrisation (epsilon or v, Salimans & Ho 2022).

Besides the discrete DDPM schedule there are the 50 timesteps an LCM was distilled on
(``DistilledSchedule``), a continuous log-uniform range conditioned on ``1/4 ln sigma`` (Karras et al.
2022, ``EDMSchedule``) and NVIDIA Cosmos's rectified-flow reading of it (``CosmosRFlowSchedule``); besides
epsilon and v, EDM's own preconditioning, direct x0, LCM's boundary conditions and Cosmos's rectified flow.
ComfyUI's ModelSamplingDiscrete / ModelSamplingContinuousEDM nodes pick among these.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor

if TYPE_CHECKING:
    from diffusion.controlnet import ControlResiduals

__all__ = [
    "ZSNR_TERMINAL_ALPHA_BAR",
    "CosmosRFlowPrediction",
    "CosmosRFlowSchedule",
    "DiscreteSchedule",
    "DistilledSchedule",
    "EDMPrediction",
    "EDMSchedule",
    "EpsPrediction",
    "ImageToImagePrediction",
    "LCMPrediction",
    "ModelSampling",
    "SigmaSchedule",
    "UNetFn",
    "VPrediction",
    "X0Prediction",
    "expand_per_sample",
    "scaled_linear_schedule",
    "zero_terminal_snr_alphas_cumprod",
    "zero_terminal_snr_sigmas",
]


class UNetFn(Protocol):
    """A diffusion model's forward: ``(x_in, timesteps, context, **cond) -> raw output`` (eps, v or flow);
    ``cond`` holds tensors (``y``, ``concat``, ``guidance``), lists of them (``reference_latents``) and a UNet's
    ControlNet residuals (``control``)."""

    def __call__(
        self, x_in: Tensor, timesteps: Tensor, context: Tensor, **cond: Tensor | Sequence[Tensor] | ControlResiduals
    ) -> Tensor: ...


def expand_per_sample(values: Tensor, like: Tensor) -> Tensor:
    """Per-batch scalars ``[B]`` (or a 0-d scalar) broadcast over a ``[B, C, H, W]`` tensor."""
    values = torch.as_tensor(values, dtype=like.dtype, device=like.device)
    return values.reshape(values.shape + (1,) * (like.ndim - values.ndim))


class DiscreteSchedule:
    """The noise levels a discrete-time model was trained on, indexed by timestep 0..N-1.

    Conversions interpolate linearly in log-sigma between neighbouring table entries, as
    k-diffusion's ``DiscreteSchedule`` does: samplers ask for sigmas between the trained ones
    (Karras schedules, Heun midpoints), and the UNet's sinusoidal timestep embedding accepts a
    fractional timestep, so rounding would add error for no gain.
    """

    def __init__(self, sigmas: Tensor) -> None:
        sigmas = torch.as_tensor(sigmas, dtype=torch.float32)
        if sigmas.ndim != 1 or sigmas.numel() < 2:
            raise ValueError(
                f"a discrete schedule needs a 1-D table of at least 2 sigmas, got shape {tuple(sigmas.shape)}"
            )
        if not bool((sigmas[1:] > sigmas[:-1]).all()):
            raise ValueError("the sigma table must increase strictly with the timestep")
        self.sigmas = sigmas
        self.log_sigmas = sigmas.log()

    @property
    def num_timesteps(self) -> int:
        return self.sigmas.numel()

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def timestep(self, sigma: Tensor) -> Tensor:
        """Fractional timestep whose interpolated sigma equals ``sigma`` (clamped to the table)."""
        sigma = torch.as_tensor(sigma, dtype=torch.float32)
        log_sigmas = self.log_sigmas.to(sigma.device)
        log_sigma = sigma.log().reshape(-1)
        low = torch.searchsorted(log_sigmas, log_sigma, right=True).sub(1).clamp(0, self.num_timesteps - 2)
        lo, hi = log_sigmas[low], log_sigmas[low + 1]
        weight = ((log_sigma - lo) / (hi - lo)).clamp(0, 1)
        return (low + weight).reshape(sigma.shape)

    def sigma(self, timestep: Tensor) -> Tensor:
        """Sigma at a (possibly fractional) timestep, log-linear between table entries."""
        timestep = torch.as_tensor(timestep, dtype=torch.float32).clamp(0, self.num_timesteps - 1)
        log_sigmas = self.log_sigmas.to(timestep.device)
        low = timestep.floor().long().clamp(max=self.num_timesteps - 2)
        weight = timestep - low
        return torch.lerp(log_sigmas[low], log_sigmas[low + 1], weight).exp()

    def percent_to_sigma(self, percent: float) -> float:
        """Sigma at a fraction of the sampling process: 0 is the noisiest end, 1 is clean.

        ComfyUI's timestep ranges (``ConditioningSetTimestepRange``, ControlNet start/end) are
        expressed this way; the ends map outside the table so that 0 admits every sigma and 1
        admits none but zero.
        """
        if percent <= 0.0:
            return math.inf
        if percent >= 1.0:
            return 0.0
        return float(self.sigma(torch.tensor((1.0 - percent) * (self.num_timesteps - 1))))


#: The last alpha-bar of a zero-terminal-SNR schedule as ComfyUI stores it: 0 would make the last sigma
#: infinite, so this stands in for it (sigma_max about 4519).
ZSNR_TERMINAL_ALPHA_BAR = 4.8973451890853435e-08


def zero_terminal_snr_alphas_cumprod(alphas_cumprod: Tensor) -> Tensor:
    """Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps Are Flawed", Algorithm 1.

    ``sqrt(alpha_bar)`` is shifted so that its last value is exactly 0 (the last timestep carries no
    signal: terminal SNR 0) and scaled so that its first value is kept:
    ``sqrt(a') = (sqrt(a) - sqrt(a_T)) * sqrt(a_0) / (sqrt(a_0) - sqrt(a_T))``.
    """
    root = alphas_cumprod.sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    return root**2


def zero_terminal_snr_sigmas(sigmas: Tensor) -> Tensor:
    """A sigma table rescaled to zero terminal SNR (``zero_terminal_snr_alphas_cumprod``), its infinite last
    sigma replaced by the one of ``ZSNR_TERMINAL_ALPHA_BAR``, as ComfyUI's ``zsnr`` option does."""
    alphas_cumprod = zero_terminal_snr_alphas_cumprod(1 / (sigmas * sigmas + 1))
    alphas_cumprod[-1] = ZSNR_TERMINAL_ALPHA_BAR
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5


def scaled_linear_schedule(
    beta_start: float = 0.00085, beta_end: float = 0.012, num_timesteps: int = 1000, zero_terminal_snr: bool = False
) -> DiscreteSchedule:
    """The Latent Diffusion training schedule (SD1.x, SD2.x, SDXL): betas linear in sqrt(beta).

    Computed in float64 and rounded once; diffusers accumulates the product in float32, so its
    table differs from this one by up to ~1.3e-5 relative (measured), far below sampling error.
    ``zero_terminal_snr`` rescales it to terminal SNR 0 first (``zero_terminal_snr_sigmas``), in float64 too.
    """
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
    if zero_terminal_snr:
        sigmas = zero_terminal_snr_sigmas(sigmas)
    return DiscreteSchedule(sigmas.float())


class DistilledSchedule:
    """The timesteps a latent consistency model (LCM, Luo et al. 2023) was distilled on: ``original_timesteps``
    of the full schedule's, every ``stride``-th counted down from its last (19, 39, ..., 999 of 1000).

    A sigma maps to the nearest of those timesteps, not to a fraction between them: LCM's boundary
    conditions (``LCMPrediction``) are defined at the trained timesteps only. As ComfyUI's
    ``ModelSamplingDiscreteDistilled``.
    """

    def __init__(self, full: DiscreteSchedule, original_timesteps: int = 50) -> None:
        self.full_timesteps = full.num_timesteps
        self.stride = full.num_timesteps // original_timesteps
        indices = full.num_timesteps - 1 - torch.arange(original_timesteps - 1, -1, -1) * self.stride
        self.table = DiscreteSchedule(full.sigmas[indices])
        self.sigmas = self.table.sigmas

    @property
    def sigma_min(self) -> float:
        return self.table.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.table.sigma_max

    def timestep(self, sigma: Tensor) -> Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float32)
        log_sigmas = self.table.log_sigmas.to(sigma.device)
        nearest = (sigma.log().reshape(1, -1) - log_sigmas[:, None]).abs().argmin(dim=0)
        return (nearest * self.stride + (self.stride - 1)).float().reshape(sigma.shape)

    def sigma(self, timestep: Tensor) -> Tensor:
        timestep = torch.as_tensor(timestep, dtype=torch.float32)
        return self.table.sigma((timestep - (self.stride - 1)) / self.stride)

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return math.inf
        if percent >= 1.0:
            return 0.0
        return float(self.sigma(torch.tensor((1.0 - percent) * (self.full_timesteps - 1))))


class EDMSchedule:
    """A continuous noise range (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
    Generative Models"): the model is conditioned on ``c_noise = ln(sigma) / 4`` (their Table 1), and the
    table schedulers read is ``table_size`` sigmas spaced evenly in log sigma, as ComfyUI's
    ``ModelSamplingContinuousEDM`` builds it (float32, so its ends are ``sigma_min``/``sigma_max`` as rounded).
    """

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 120.0, table_size: int = 1000) -> None:
        if not 0.0 < sigma_min < sigma_max:
            raise ValueError(f"an EDM noise range needs 0 < sigma_min < sigma_max, got {sigma_min} and {sigma_max}")
        self.sigmas = torch.linspace(math.log(sigma_min), math.log(sigma_max), table_size).exp()

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def timestep(self, sigma: Tensor) -> Tensor:
        return 0.25 * torch.as_tensor(sigma, dtype=torch.float32).log()

    def sigma(self, timestep: Tensor) -> Tensor:
        return (torch.as_tensor(timestep, dtype=torch.float32) / 0.25).exp()

    def percent_to_sigma(self, percent: float) -> float:
        """Log-linear between ``sigma_max`` (0) and ``sigma_min`` (just below 1); 1 admits only sigma 0."""
        if percent <= 0.0:
            return math.inf
        if percent >= 1.0:
            return 0.0
        log_min = math.log(self.sigma_min)
        return math.exp((math.log(self.sigma_max) - log_min) * (1.0 - percent) + log_min)


class CosmosRFlowSchedule(EDMSchedule):
    """NVIDIA Cosmos-Predict2's reading of an EDM range as rectified-flow time: ``t = sigma / (sigma + 1)``,
    back as ``sigma = t / (1 - t)`` up to ``sigma_max`` (ComfyUI's ``ModelSamplingCosmosRFlow``)."""

    def timestep(self, sigma: Tensor) -> Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float32)
        return sigma / (sigma + 1)

    def sigma(self, timestep: Tensor) -> Tensor:
        timestep = torch.as_tensor(timestep, dtype=torch.float32)
        sigma_max = self.sigma_max
        capped = torch.full_like(timestep, sigma_max)
        return torch.where(timestep >= sigma_max / (sigma_max + 1), capped, timestep / (1 - timestep))


class SigmaSchedule(Protocol):
    """The noise levels a model samples over and how they map to the timesteps it is conditioned on."""

    sigmas: Tensor

    @property
    def sigma_min(self) -> float: ...

    @property
    def sigma_max(self) -> float: ...

    def timestep(self, sigma: Tensor) -> Tensor: ...

    def sigma(self, timestep: Tensor) -> Tensor: ...

    def percent_to_sigma(self, percent: float) -> float: ...


class EpsPrediction:
    """A discrete-time model that predicts the added noise (epsilon).

    The UNet sees ``x / sqrt(sigma^2 + sigma_data^2)``: with ``sigma_data`` 1, the DDPM-scaled state it was
    trained on. With ``x = x0 + sigma * eps`` the denoised estimate is ``x - sigma * eps``.
    """

    def __init__(self, schedule: SigmaSchedule | None = None, sigma_data: float = 1.0) -> None:
        self.schedule: SigmaSchedule = schedule if schedule is not None else scaled_linear_schedule()
        self.sigma_data = sigma_data

    @property
    def sigma_min(self) -> float:
        return self.schedule.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.schedule.sigma_max

    @property
    def sigmas(self) -> Tensor:
        return self.schedule.sigmas

    def timestep(self, sigma: Tensor) -> Tensor:
        return self.schedule.timestep(sigma)

    def sigma(self, timestep: Tensor) -> Tensor:
        return self.schedule.sigma(timestep)

    def percent_to_sigma(self, percent: float) -> float:
        return self.schedule.percent_to_sigma(percent)

    def calculate_input(self, sigma: Tensor, x: Tensor) -> Tensor:
        return x / expand_per_sample((sigma**2 + self.sigma_data**2) ** 0.5, x)

    def calculate_denoised(self, sigma: Tensor, model_output: Tensor, x: Tensor) -> Tensor:
        return x - model_output * expand_per_sample(sigma, x)

    def noise_scaling(self, sigma: Tensor | float, noise: Tensor, latent: Tensor, max_denoise: bool = False) -> Tensor:
        """The sampler's starting point: ``latent`` noised to ``sigma``.

        A full-strength start (``max_denoise``) treats the latent as carrying no signal: the DDPM
        prior ``x_T ~ N(0, 1)`` rescaled by ``1/sqrt(a_T)`` has variance ``sigma^2 + 1``, not
        ``sigma^2``. diffusers' ``init_noise_sigma`` uses the same ``sqrt(sigma_max^2 + 1)``.
        """
        sigma = torch.as_tensor(sigma, dtype=noise.dtype, device=noise.device)
        scale = (sigma**2 + 1.0) ** 0.5 if max_denoise else sigma
        return latent + noise * expand_per_sample(scale, noise)

    def inverse_noise_scaling(self, sigma: Tensor | float, latent: Tensor) -> Tensor:
        """The sampler's final state back to a latent: the identity for VE-style models."""
        return latent

    def denoiser(self, unet_fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        """Wrap ``unet_fn(x_in, timesteps, **cond)`` as a sampler model ``model(x, sigma, **cond) -> x0``."""

        def model(x: Tensor, sigma: Tensor, **cond: Tensor) -> Tensor:
            sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1).expand(x.shape[0])
            output = unet_fn(self.calculate_input(sigma, x), self.timestep(sigma), **cond)
            return self.calculate_denoised(sigma, output.to(x.dtype), x)

        return model


class VPrediction(EpsPrediction):
    """A discrete-time model that predicts velocity ``v = alpha * eps - sigma_vp * x0`` (SD2 768-v).

    In the VE view (Salimans & Ho 2022, with sigma_data = 1) this gives
    ``x0 = x * sd^2 / (sigma^2 + sd^2) - v * sigma * sd / sqrt(sigma^2 + sd^2)``.
    """

    def calculate_denoised(self, sigma: Tensor, model_output: Tensor, x: Tensor) -> Tensor:
        sigma = expand_per_sample(sigma, x)
        total = sigma**2 + self.sigma_data**2
        return x * (self.sigma_data**2 / total) - model_output * (sigma * self.sigma_data / total**0.5)


class EDMPrediction(VPrediction):
    """EDM's preconditioning (Karras et al. 2022, Table 1): ``D = c_skip x + c_out F`` with
    ``c_skip = sd^2 / (sigma^2 + sd^2)``, ``c_out = sigma sd / sqrt(sigma^2 + sd^2)`` and the input scaled by
    ``c_in = 1 / sqrt(sigma^2 + sd^2)``: v's formula with the output's sign flipped. Playground v2.5 uses it
    with ``sigma_data`` 0.5 over an ``EDMSchedule``."""

    def calculate_denoised(self, sigma: Tensor, model_output: Tensor, x: Tensor) -> Tensor:
        sigma = expand_per_sample(sigma, x)
        total = sigma**2 + self.sigma_data**2
        return x * (self.sigma_data**2 / total) + model_output * (sigma * self.sigma_data / total**0.5)


class X0Prediction(EpsPrediction):
    """A model whose output is the clean latent itself (ComfyUI's ``x0`` sampling)."""

    def calculate_denoised(self, sigma: Tensor, model_output: Tensor, x: Tensor) -> Tensor:
        return model_output


class ImageToImagePrediction(X0Prediction):
    """An x0 model that takes the noisy latent unscaled (ComfyUI's ``img_to_img`` sampling)."""

    def calculate_input(self, sigma: Tensor, x: Tensor) -> Tensor:
        return x


class LCMPrediction(EpsPrediction):
    """A latent consistency model (Luo et al. 2023): the epsilon model's x0 estimate mixed with the input by
    the consistency boundary conditions ``c_skip = sd^2 / (s^2 + sd^2)``, ``c_out = s / sqrt(s^2 + sd^2)``,
    where ``s`` is the timestep scaled by 10 and ``sd`` is 0.5 (LCM's ``timestep_scaling`` and
    ``sigma_data``), so the estimate is exactly the input at timestep 0. Over a ``DistilledSchedule``."""

    boundary_sigma_data = 0.5
    timestep_scaling = 10.0

    def __init__(self, schedule: DistilledSchedule | None = None) -> None:
        super().__init__(schedule if schedule is not None else DistilledSchedule(scaled_linear_schedule()))

    def calculate_denoised(self, sigma: Tensor, model_output: Tensor, x: Tensor) -> Tensor:
        scaled = expand_per_sample(self.timestep(sigma), x) * self.timestep_scaling
        x0 = x - model_output * expand_per_sample(sigma, x)
        total = scaled**2 + self.boundary_sigma_data**2
        return scaled / total**0.5 * x0 + self.boundary_sigma_data**2 / total * x


class CosmosRFlowPrediction(EpsPrediction):
    """NVIDIA Cosmos-Predict2's rectified flow over an EDM range: with ``t = sigma / (sigma + 1)`` the model
    sees ``(1 - t) x`` and its output ``F`` gives ``x0 = (1 - t) x - t F``; the state itself stays
    variance-exploding, ``x0 + sigma noise``, even at a full-strength start (as ComfyUI's ``COSMOS_RFLOW``)."""

    def __init__(self, schedule: CosmosRFlowSchedule | None = None) -> None:
        super().__init__(schedule if schedule is not None else CosmosRFlowSchedule())

    @staticmethod
    def _flow_time(sigma: Tensor, like: Tensor) -> Tensor:
        sigma = expand_per_sample(sigma, like)
        return sigma / (sigma + 1)

    def calculate_input(self, sigma: Tensor, x: Tensor) -> Tensor:
        return x * (1.0 - self._flow_time(sigma, x))

    def calculate_denoised(self, sigma: Tensor, model_output: Tensor, x: Tensor) -> Tensor:
        t = self._flow_time(sigma, x)
        return x * (1.0 - t) - model_output * t

    def noise_scaling(self, sigma: Tensor | float, noise: Tensor, latent: Tensor, max_denoise: bool = False) -> Tensor:
        sigma = torch.as_tensor(sigma, dtype=noise.dtype, device=noise.device)
        return latent + noise * expand_per_sample(sigma, noise)


class ModelSampling(Protocol):
    """What schedules and the sampling pipeline need from a model wrapper (read-only: a schedule is
    fixed once the model is loaded)."""

    @property
    def sigma_min(self) -> float: ...

    @property
    def sigma_max(self) -> float: ...

    @property
    def sigmas(self) -> Tensor: ...

    def timestep(self, sigma: Tensor) -> Tensor: ...

    def sigma(self, timestep: Tensor) -> Tensor: ...

    def percent_to_sigma(self, percent: float) -> float: ...

    def calculate_input(self, sigma: Tensor, x: Tensor) -> Tensor: ...

    def calculate_denoised(self, sigma: Tensor, model_output: Tensor, x: Tensor) -> Tensor: ...

    def noise_scaling(
        self, sigma: Tensor | float, noise: Tensor, latent: Tensor, max_denoise: bool = False
    ) -> Tensor: ...

    def inverse_noise_scaling(self, sigma: Tensor | float, latent: Tensor) -> Tensor: ...
