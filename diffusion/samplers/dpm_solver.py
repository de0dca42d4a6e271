"""DPM-Solver (Lu et al. 2022, arXiv:2206.00927): fixed-budget "fast" and adaptive step size.

These solvers choose their own steps in ``t = -log(sigma)`` between the schedule's ends, so only
the first and the last nonzero sigma of the given schedule matter (ComfyUI's dpm_fast and
dpm_adaptive behave the same way); the budget of dpm_fast is one model call per schedule step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from diffusion.samplers.noise import NoiseSampler, gaussian_noise_sampler
from diffusion.samplers.ode import Denoiser, StepCallback, ancestral_step, report_step

__all__ = ["StepSizeControl", "sample_dpm_adaptive", "sample_dpm_adaptive_flat", "sample_dpm_fast"]


def _sigma(t: Tensor) -> Tensor:
    return t.neg().exp()


def _t(sigma: Tensor) -> Tensor:
    return sigma.log().neg()


class _EpsModel:
    """The denoiser seen as a noise predictor ``eps(x, t)``, counting model calls for the progress bar."""

    def __init__(self, model: Denoiser, extra_args: dict[str, Any], on_call: Callable[[], Any]) -> None:
        self.model, self.extra_args, self.on_call = model, extra_args, on_call

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        sigma = _sigma(t)
        eps = (x - self.model(x, sigma * x.new_ones([x.shape[0]]), **self.extra_args)) / sigma
        self.on_call()
        return eps


def _first_order(x: Tensor, t: Tensor, t_next: Tensor, eps: Tensor) -> Tensor:
    return x - _sigma(t_next) * (t_next - t).expm1() * eps


def _eps_at_fraction(eps_model: _EpsModel, x: Tensor, t: Tensor, t_next: Tensor, eps: Tensor, r1: float) -> Tensor:
    """Noise prediction at ``t + r1 h`` after a first-order move there (the solvers' first stage)."""
    s1 = t + r1 * (t_next - t)
    return eps_model(x - _sigma(s1) * (r1 * (t_next - t)).expm1() * eps, s1)


def _second_order(x: Tensor, t: Tensor, t_next: Tensor, eps: Tensor, eps_r1: Tensor, r1: float = 0.5) -> Tensor:
    h = t_next - t
    return x - _sigma(t_next) * h.expm1() * eps - _sigma(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps)


def _third_order(
    eps_model: _EpsModel,
    x: Tensor,
    t: Tensor,
    t_next: Tensor,
    eps: Tensor,
    eps_r1: Tensor,
    r1: float = 1 / 3,
    r2: float = 2 / 3,
) -> Tensor:
    h = t_next - t
    s2 = t + r2 * h
    u2 = (
        x
        - _sigma(s2) * (r2 * h).expm1() * eps
        - _sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps)
    )
    eps_r2 = eps_model(u2, s2)
    return x - _sigma(t_next) * h.expm1() * eps - _sigma(t_next) / r2 * (h.expm1() / h - 1) * (eps_r2 - eps)


def _range(sigmas: Tensor) -> tuple[Tensor, Tensor]:
    positive = sigmas[sigmas > 0]
    if positive.numel() == 0:
        raise ValueError("DPM-Solver needs at least one nonzero sigma in the schedule")
    return positive.min(), sigmas.max()


def _noisy_target(t: Tensor, t_next: Tensor, t_end: Tensor, eta: float) -> tuple[Tensor, Tensor]:
    """Where the deterministic part of an ancestral step ends, and how much noise restores t_next."""
    if not eta:
        return t_next, torch.zeros_like(t_next)
    sigma_down, _ = ancestral_step(_sigma(t), _sigma(t_next), eta)
    t_down = torch.minimum(t_end, _t(sigma_down))
    return t_down, (_sigma(t_next) ** 2 - _sigma(t_down) ** 2) ** 0.5


@torch.no_grad()
def sample_dpm_fast(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    eta: float = 0.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    seed: int | None = None,
) -> Tensor:
    """DPM-Solver-fast: the paper's order plan (mostly third order) for ``len(sigmas) - 1`` model calls."""
    sigma_min, sigma_max = _range(sigmas)
    nfe = len(sigmas) - 1
    noise_sampler = noise_sampler or gaussian_noise_sampler(x, seed)
    t_start, t_end = _t(sigma_max), _t(sigma_min)
    steps = nfe // 3 + 1
    ts = torch.linspace(float(t_start), float(t_end), steps + 1, device=x.device)
    orders = [3] * (steps - 2) + [2, 1] if nfe % 3 == 0 else [3] * (steps - 1) + [nfe % 3]
    with tqdm(total=nfe, disable=disable) as bar:
        eps_model = _EpsModel(model, extra_args or {}, bar.update)
        for i, order in enumerate(orders):
            t, t_next = ts[i], ts[i + 1]
            t_down, sigma_up = _noisy_target(t, t_next, t_end, eta)
            eps = eps_model(x, t)
            report_step(callback, x, i, _sigma(t), _sigma(t), x - _sigma(t) * eps)
            if order == 1:
                x = _first_order(x, t, t_down, eps)
            elif order == 2:
                x = _second_order(x, t, t_down, eps, _eps_at_fraction(eps_model, x, t, t_down, eps, 0.5))
            else:
                eps_r1 = _eps_at_fraction(eps_model, x, t, t_down, eps, 1 / 3)
                x = _third_order(eps_model, x, t, t_down, eps, eps_r1)
            x = x + sigma_up * s_noise * noise_sampler(_sigma(t), _sigma(t_next))
    return x


@dataclass(frozen=True)
class StepSizeControl:
    """How DPM-Solver-12 / -23 choose their steps: the solver order, the error tolerances and the
    PID step-size controller's settings. The defaults are k-diffusion's, which ComfyUI uses.

    ``order`` 2 pairs first- with second-order steps, 3 second- with third-order. The pair's
    difference, scaled by ``max(atol, rtol * |x|)``, is the error the controller steers towards 1,
    starting from a step of ``h_init`` in ``t = -log(sigma)``, with the gains ``pcoeff``, ``icoeff``
    and ``dcoeff`` (by default integral control alone). A step is kept unless the controller would
    shrink the next one below ``accept_safety`` times its length.
    """

    order: int = 3
    rtol: float = 0.05
    atol: float = 0.0078
    h_init: float = 0.05
    pcoeff: float = 0.0
    icoeff: float = 1.0
    dcoeff: float = 0.0
    accept_safety: float = 0.81

    def __post_init__(self) -> None:
        if self.order not in (2, 3):
            raise ValueError(f"dpm_adaptive order must be 2 or 3, got {self.order}")

    @classmethod
    def split(cls, options: Mapping[str, Any]) -> tuple[StepSizeControl, dict[str, Any]]:
        """These settings taken out of flat sampler keywords, and the keywords that remain."""
        names = {field.name for field in fields(cls)}
        own = {name: value for name, value in options.items() if name in names}
        return cls(**own), {name: value for name, value in options.items() if name not in names}


class _StepSizeController:
    """PID step-size control for embedded error estimates (Söderlind 2003), with an atan limiter.

    ``order`` is the exponent the error scales with: the solver's order, or 1.5 for ancestral steps.
    """

    def __init__(self, control: StepSizeControl, order: float, eps: float = 1e-8) -> None:
        self.h = abs(control.h_init)
        self.b1 = (control.pcoeff + control.icoeff + control.dcoeff) / order
        self.b2 = -(control.pcoeff + 2 * control.dcoeff) / order
        self.b3 = control.dcoeff / order
        self.accept_safety, self.eps = control.accept_safety, eps
        self.errs: list[float] = []

    def propose(self, error: Tensor) -> bool:
        inv_error = 1 / (float(error) + self.eps)
        if not self.errs:
            self.errs = [inv_error] * 3
        self.errs[0] = inv_error
        factor = self.errs[0] ** self.b1 * self.errs[1] ** self.b2 * self.errs[2] ** self.b3
        factor = 1 + math.atan(factor - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2], self.errs[1] = self.errs[1], self.errs[0]
        self.h *= factor
        return accept


@torch.no_grad()
def sample_dpm_adaptive(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    control: StepSizeControl = StepSizeControl(),
    eta: float = 0.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    seed: int | None = None,
) -> Tensor:
    """DPM-Solver-12 / -23: embedded pairs of orders (1, 2) or (2, 3) choose the step size.

    The number of model calls depends on ``control``'s tolerances, not on the schedule's length.
    """
    order = control.order
    sigma_min, sigma_max = _range(sigmas)
    noise_sampler = noise_sampler or gaussian_noise_sampler(x, seed)
    t_start, t_end = _t(sigma_max), _t(sigma_min)
    atol_t, rtol_t = torch.tensor(control.atol), torch.tensor(control.rtol)
    s, x_prev, steps = t_start, x, 0
    controller = _StepSizeController(control, 1.5 if eta else order)
    with tqdm(disable=disable) as bar:
        eps_model = _EpsModel(model, extra_args or {}, bar.update)
        while s < t_end - 1e-5:
            t = torch.minimum(t_end, s + controller.h)
            t_down, sigma_up = _noisy_target(s, t, t_end, eta)
            eps = eps_model(x, s)
            denoised = x - _sigma(s) * eps
            if order == 2:
                x_low = _first_order(x, s, t_down, eps)
                x_high = _second_order(x, s, t_down, eps, _eps_at_fraction(eps_model, x, s, t_down, eps, 0.5))
            else:
                eps_r1 = _eps_at_fraction(eps_model, x, s, t_down, eps, 1 / 3)
                x_low = _second_order(x, s, t_down, eps, eps_r1, r1=1 / 3)
                x_high = _third_order(eps_model, x, s, t_down, eps, eps_r1)
            delta = torch.maximum(atol_t, rtol_t * torch.maximum(x_low.abs(), x_prev.abs()))
            error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
            if controller.propose(error):
                x_prev = x_low
                x = x_high + sigma_up * s_noise * noise_sampler(_sigma(s), _sigma(t))
                s = t
            report_step(callback, x, steps, _sigma(s), _sigma(s), denoised)
            steps += 1
    return x


def sample_dpm_adaptive_flat(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    seed: int | None = None,
    **options: Any,
) -> Tensor:
    """``sample_dpm_adaptive`` under the registry's contract, where every option is a flat keyword.

    Callers that pick samplers by name pass k-diffusion's keywords (``order=2, rtol=0.01``) with the
    rest; this gathers the step-size settings into a ``StepSizeControl``. ``seed`` stays a named
    parameter because ``SamplerSpec.takes_seed`` looks for it in the signature.
    """
    control, rest = StepSizeControl.split(options)
    return sample_dpm_adaptive(
        model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, control=control, seed=seed, **rest
    )
