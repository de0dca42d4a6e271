"""CFG++ (Chung et al. 2024): samplers that land on the guided x0 estimate but renoise with the unconditional one.

A toy guider whose conditional and unconditional estimates are known functions shows the samplers'
rule; the CFG guider's ``with_uncond`` is the seam that hands them the unconditional estimate.
"""

from __future__ import annotations

import math

import pytest
import torch

from diffusion.flow_matching import DiscreteFlow
from diffusion.guidance import CFGGuider, Inpainting
from diffusion.samplers import ParametrisedDenoiser, UncondDenoiser, get_sampler
from diffusion.sampling import prepare_noise, sample
from diffusion.schedules import compute_sigmas, karras_sigmas
from tests.diffusion.test_sampler_references import res_multistep_reference
from tests.diffusion.toy_unet import MS, ToyUNet, context, zero_latent

FLOW = DiscreteFlow(shift=3.0)

# (CFG++ sampler, plain twin)
TWINS = [
    ("euler_cfg_pp", "euler"),
    ("euler_ancestral_cfg_pp", "euler_ancestral"),
    ("dpmpp_2s_ancestral_cfg_pp", "dpmpp_2s_ancestral"),
    ("dpmpp_2m_cfg_pp", "dpmpp_2m"),
    ("res_multistep_cfg_pp", "res_multistep"),
    ("res_multistep_ancestral_cfg_pp", "res_multistep_ancestral"),
    ("gradient_estimation_cfg_pp", "gradient_estimation"),
]


def _estimate(x: torch.Tensor, sigma: torch.Tensor, mu: float, flow: bool, w: torch.Tensor) -> torch.Tensor:
    """A Gaussian's ideal denoiser (mean ``mu``, std 0.5) plus a fixed nonlinear term."""
    sigma = sigma.reshape(-1, 1)
    alpha = 1 - sigma if flow else torch.ones_like(sigma)
    ideal = mu + alpha * 0.25 / (alpha**2 * 0.25 + sigma**2) * (x - alpha * mu)
    return ideal + 0.1 * torch.tanh(x @ w) / (1 + sigma)


class ToyGuider:
    """Classifier-free guidance over two known estimates: the prompt's (mean 0.7) and the negative's
    (mean -0.4, or the prompt's own with ``same``). ``with_uncond`` as ``CFGGuider`` has it."""

    def __init__(self, cfg: float, flow: bool = False, same: bool = False) -> None:
        self.cfg, self.flow, self.same = cfg, flow, same
        g = torch.Generator().manual_seed(0)
        self.w = torch.randn(16, 16, generator=g, dtype=torch.float64) / 4
        if flow:
            self.model_sampling = FLOW

    def cond(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return _estimate(x, sigma, 0.7, self.flow, self.w)

    def uncond(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.cond(x, sigma) if self.same else _estimate(x, sigma, -0.4, self.flow, self.w)

    def with_uncond(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cond, uncond = self.cond(x, sigma), self.uncond(x, sigma)
        return uncond + (cond - uncond) * self.cfg, uncond

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.with_uncond(x, sigma)[0]


class PlainGuider(ToyGuider):
    """The same guidance, but no unconditional estimate handed out (a model without ``with_uncond``)."""

    with_uncond = None  # a protocol method set to None does not count for isinstance

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        cond, uncond = self.cond(x, sigma), self.uncond(x, sigma)
        return uncond + (cond - uncond) * self.cfg


def _schedule(flow: bool, steps: int = 6) -> torch.Tensor:
    if flow:
        return compute_sigmas(FLOW, "normal", steps).double()
    return karras_sigmas(steps, 0.1, 12.0).double()


def _start(flow: bool) -> torch.Tensor:
    noise = torch.randn(2, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return noise if flow else noise * 12.0


def _noise(count: int = 32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(9)
    return [torch.randn(2, 16, generator=g, dtype=torch.float64) for _ in range(count)]


def _run(name: str, model, flow: bool, noise: list[torch.Tensor] | None = None) -> torch.Tensor:
    options = {}
    if get_sampler(name).takes_seed:
        draws = iter(noise or _noise())
        options["noise_sampler"] = lambda sigma, sigma_next: next(draws)
    return get_sampler(name)(model, _start(flow), _schedule(flow), disable=True, **options)


def _close(a: torch.Tensor, b: torch.Tensor, tolerance: float = 1e-10) -> None:
    assert (a - b).abs().max().item() <= tolerance * max(1.0, b.abs().max().item())


# --- with no guidance to split off, a CFG++ sampler is its plain twin ---


@pytest.mark.parametrize("cfg_pp, plain", TWINS)
def test_a_model_without_an_unconditional_estimate_runs_cfg_pp_as_its_plain_twin(cfg_pp, plain):
    _close(_run(cfg_pp, PlainGuider(5.0), False), _run(plain, PlainGuider(5.0), False))


@pytest.mark.parametrize("flow", [False, True], ids=["ve", "flow"])
@pytest.mark.parametrize("cfg_pp, plain", TWINS)
def test_cfg_pp_equals_its_plain_twin_when_the_negative_predicts_what_the_prompt_does(cfg_pp, plain, flow):
    """At cfg 1 with a negative equal to the prompt (or at any cfg), guided and unconditional estimates
    coincide. On a flow model euler_ancestral_cfg_pp splits its noise in VE-equivalent terms, as ComfyUI's
    does, while euler_ancestral uses the flow split: those two differ there by design."""
    if flow and cfg_pp == "euler_ancestral_cfg_pp":
        assert (
            _run(cfg_pp, ToyGuider(1.0, flow, same=True), flow) - _run(plain, ToyGuider(1.0, flow), flow)
        ).abs().max() > 1e-3
        return
    _close(_run(cfg_pp, ToyGuider(1.0, flow, same=True), flow), _run(plain, ToyGuider(1.0, flow, same=True), flow))


@pytest.mark.parametrize("cfg_pp, plain", TWINS)
def test_with_a_different_negative_cfg_pp_differs_from_its_twin_even_at_cfg_1(cfg_pp, plain):
    """ComfyUI evaluates the negative for these samplers at cfg 1 too, and renoises with it."""
    difference = (_run(cfg_pp, ToyGuider(1.0), False) - _run(plain, ToyGuider(1.0), False)).abs().max()
    assert difference > 1e-3


# --- with guidance: the documented rules, step by step ---


@pytest.mark.parametrize("flow", [False, True], ids=["ve", "flow"])
def test_euler_cfg_pp_lands_on_the_guided_estimate_and_renoises_with_the_unconditional_one(flow):
    """``x' = D + sigma' (x - D_uncond) / sigma`` in VE-equivalent coordinates (``x / alpha`` at ``sigma / alpha``)."""
    model, sigmas, x = ToyGuider(4.0, flow), _schedule(flow), _start(flow)
    alpha = (lambda s: 1 - s) if flow else (lambda s: 1.0)
    for i in range(len(sigmas) - 1):
        guided, uncond = model.with_uncond(x, sigmas[i].expand(2))
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        if sigma_next == 0:
            x = guided
        else:
            # (x / alpha - D_uncond) / (sigma / alpha) = (x - alpha D_uncond) / sigma, finite at a flow's sigma = 1
            direction = (x - alpha(sigma) * uncond) / sigma
            x = alpha(sigma_next) * (guided + sigma_next / alpha(sigma_next) * direction)
    _close(_run("euler_cfg_pp", ToyGuider(4.0, flow), flow), x)


def test_one_euler_cfg_pp_step_differs_from_euler_by_the_guidance_scaled_to_the_next_noise_level():
    model, x = ToyGuider(4.0), _start(False)
    sigmas = torch.tensor([8.0, 3.0], dtype=torch.float64)
    guided, uncond = model.with_uncond(x, sigmas[:1].expand(2))
    ours = get_sampler("euler_cfg_pp")(model, x, sigmas, disable=True)
    plain = get_sampler("euler")(model, x, sigmas, disable=True)
    _close(ours - plain, (guided - uncond) * 3.0 / 8.0)


@pytest.mark.parametrize("flow", [False, True], ids=["ve", "flow"])
def test_euler_ancestral_cfg_pp_lands_on_sigma_down_with_the_unconditional_noise_then_adds_fresh_noise(flow):
    model, sigmas, x, noise = ToyGuider(4.0, flow), _schedule(flow), _start(flow), _noise()
    alpha = (lambda s: 1 - s) if flow else (lambda s: 1.0)
    draws = iter(noise)
    for i in range(len(sigmas) - 1):
        guided, uncond = model.with_uncond(x, sigmas[i].expand(2))
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        if sigma_next == 0:
            x = guided
            continue
        level_next = sigma_next / alpha(sigma_next)
        if alpha(sigma) == 0:  # a flow at sigma = 1: the VE-equivalent level is infinite, all noise is fresh
            up = level_next
        else:
            level = sigma / alpha(sigma)
            up = min(level_next, math.sqrt(level_next**2 * (level**2 - level_next**2) / level**2))
        down, direction = math.sqrt(level_next**2 - up**2), (x - alpha(sigma) * uncond) / sigma
        x = alpha(sigma_next) * (guided + down * direction + up * next(draws))
    _close(_run("euler_ancestral_cfg_pp", ToyGuider(4.0, flow), flow, noise), x)


def test_dpmpp_2m_cfg_pp_follows_its_exponential_rule():
    """``x' = D + e^-h (x - D_uncond) + (1 - e^-h) (h / 2 h_last) (D - D_uncond_prev)`` in lambda = -log sigma."""
    model, sigmas, x = ToyGuider(4.0), _schedule(False), _start(False)
    previous = None
    for i in range(len(sigmas) - 1):
        guided, uncond = model.with_uncond(x, sigmas[i].expand(2))
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        if sigma_next == 0:
            x = guided
        else:
            h = math.log(sigma / sigma_next)
            x = guided + math.exp(-h) * (x - uncond)
            if previous is not None:
                h_last = math.log(float(sigmas[i - 1]) / sigma)
                x = x + (1 - math.exp(-h)) * h / (2 * h_last) * (guided - previous)
        previous = uncond
    _close(_run("dpmpp_2m_cfg_pp", ToyGuider(4.0), False), x)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_res_multistep_cfg_pp_pushes_by_the_guidance_then_steps_on_unconditional_estimates(eta):
    model, noise = ToyGuider(4.0), _noise()
    reference = res_multistep_reference(
        model, _start(False), _schedule(False), eta=eta, noise=noise, cfg_pp_of=model.with_uncond
    )
    name = "res_multistep_ancestral_cfg_pp" if eta else "res_multistep_cfg_pp"
    _close(_run(name, ToyGuider(4.0), False, noise), reference, 1e-9)


def test_gradient_estimation_cfg_pp_takes_its_slopes_from_the_unconditional_estimate():
    model, sigmas, x = ToyGuider(4.0), _schedule(False), _start(False)
    old_slope = None
    for i in range(len(sigmas) - 1):
        guided, uncond = model.with_uncond(x, sigmas[i].expand(2))
        slope = (x - uncond) / sigmas[i]
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = guided
        else:
            x = guided + slope * sigmas[i + 1] + (0.0 if old_slope is None else (slope - old_slope) * dt)
        old_slope = slope
    _close(_run("gradient_estimation_cfg_pp", ToyGuider(4.0), False), x)


@pytest.mark.parametrize("flow", [False, True], ids=["ve", "flow"])
def test_dpmpp_2s_ancestral_cfg_pp_steps_on_unconditional_estimates_then_adds_the_guidance(flow):
    """Both substeps on unconditional estimates (the midpoint's from a second call), fresh noise, then the first
    call's guidance ``D - D_uncond`` weighted by the next state's signal scale. VE: DPM-Solver++(2S) to sigma_down;
    flow: straight-line substeps to ComfyUI's flow sigma_down, rescaled before the noise."""
    model, sigmas, x, noise = ToyGuider(4.0, flow), _schedule(flow), _start(flow), _noise()
    draws = iter(noise)
    for i in range(len(sigmas) - 1):
        guided, uncond = model.with_uncond(x, sigmas[i].expand(2))
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        if sigma_next == 0:
            x = guided
            continue
        if flow:
            down = sigma_next**2 / sigma
            lam = lambda s: math.log((1 - s) / s)  # noqa: E731
            mid = 0.9999 if sigma == 1.0 else 1 / (1 + math.exp((lam(sigma) + lam(down)) / 2))
            rescale = (1 - sigma_next) / (1 - down)
            up = math.sqrt(sigma_next**2 - (down * rescale) ** 2)
        else:
            up = min(sigma_next, math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
            down = math.sqrt(sigma_next**2 - up**2)
            mid, rescale = math.sqrt(sigma * down), 1.0
        # flow: the straight line; VE: DPM-Solver++(1), which is the same line
        x_mid = (mid / sigma) * x + (1 - mid / sigma) * uncond
        _, uncond_mid = model.with_uncond(x_mid, torch.full((2,), mid, dtype=torch.float64))
        x = (down / sigma) * x + (1 - down / sigma) * uncond_mid
        x = rescale * x + up * next(draws) + (1 - sigma_next if flow else 1.0) * (guided - uncond)
    _close(_run("dpmpp_2s_ancestral_cfg_pp", ToyGuider(4.0, flow), flow, noise), x, 1e-9)


# --- the seam: CFGGuider.with_uncond ---


def _guider(cfg: float, negative: int | None = 2, unet: ToyUNet | None = None, **options) -> CFGGuider:
    neg = None if negative is None else [(context(negative), {})]
    return CFGGuider(unet or ToyUNet(), MS, zero_latent(), [(context(1), {})], neg, cfg, **options)


X = torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(3))
SIGMA = torch.tensor([3.0])


def test_the_cfg_guider_hands_out_its_unconditional_estimate_and_names_its_model_sampling():
    guider = _guider(5.0)
    assert isinstance(guider, UncondDenoiser) and isinstance(guider, ParametrisedDenoiser)
    assert guider.model_sampling is MS


def test_with_uncond_returns_the_guided_estimate_and_the_negatives_prediction_from_one_call():
    unet = ToyUNet()
    guided, uncond = _guider(5.0, unet=unet).with_uncond(X, SIGMA)
    assert [call["batch"] for call in unet.calls] == [2]
    assert torch.equal(guided, _guider(5.0)(X, SIGMA))
    negative_alone = CFGGuider(ToyUNet(), MS, zero_latent(), [(context(2), {})])
    torch.testing.assert_close(uncond, negative_alone(X, SIGMA))


def test_at_cfg_1_with_uncond_evaluates_the_negative_too_and_the_plain_call_still_skips_it():
    unet = ToyUNet()
    guider = _guider(1.0, unet=unet)
    plain = guider(X, SIGMA)
    guided, uncond = guider.with_uncond(X, SIGMA)
    assert [call["batch"] for call in unet.calls] == [1, 2]
    assert torch.equal(guided, plain)
    negative_alone = CFGGuider(ToyUNet(), MS, zero_latent(), [(context(2), {})])
    torch.testing.assert_close(uncond, negative_alone(X, SIGMA))
    assert (uncond - guided).abs().max() > 1e-3


def test_without_a_negative_the_unconditional_estimate_is_zeros_as_comfyui_hands_it():
    guided, uncond = _guider(1.0, negative=None).with_uncond(X, SIGMA)
    assert torch.equal(guided, _guider(1.0, negative=None)(X, SIGMA))
    assert torch.equal(uncond, torch.zeros_like(X))


def test_under_an_inpainting_only_the_guided_estimate_keeps_the_originals_cells():
    latent = torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(5))
    mask = torch.zeros(1, 6, 6)
    mask[:, 2:4, 1:5] = 1.0
    noise = prepare_noise(latent, 1)
    guider = CFGGuider(
        ToyUNet(), MS, latent, [(context(1), {})], [(context(2), {})], 5.0, Inpainting.from_mask(mask, latent, noise)
    )
    guided, uncond = guider.with_uncond(X, SIGMA)
    assert torch.equal(guided, guider(X, SIGMA))
    kept = mask[:, None].expand_as(X) == 0
    assert torch.equal(guided[kept], latent[kept])
    held = guider.inpainting.hold(MS, X, SIGMA, guider.inpainting.mask_at(MS, SIGMA))
    negative_alone = CFGGuider(ToyUNet(), MS, latent, [(context(2), {})])
    torch.testing.assert_close(uncond, negative_alone(held, SIGMA))


def test_sampling_through_the_guider_with_a_cfg_pp_sampler_equals_the_plain_one_when_guidance_vanishes():
    """End to end: a negative equal to the prompt leaves nothing to split off, whatever the cfg."""
    latent = zero_latent()
    sigmas = compute_sigmas(MS, "karras", 5)

    def run(sampler: str, negative: int) -> torch.Tensor:
        guider = CFGGuider(ToyUNet(), MS, latent, [(context(1), {})], [(context(negative), {})], 6.0)
        return sample(guider, get_sampler(sampler), sigmas, latent, prepare_noise(latent, 4), seed=4)

    torch.testing.assert_close(run("euler_cfg_pp", 1), run("euler", 1), rtol=1e-4, atol=1e-4)
    assert (run("euler_cfg_pp", 2) - run("euler", 2)).abs().max() > 1e-2
