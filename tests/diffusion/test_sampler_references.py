"""The samplers k-diffusion 0.1.1 lacks, against references written here from their published update rules.

Every reference works in the VE-equivalent coordinates of the model's parametrisation: the state
``y = x / alpha`` at noise level ``s = sigma / alpha`` (alpha = 1 for VE, ``1 - sigma`` for rectified flow),
where half-log-SNR is ``-log s``. The exponential integrators are written as what they are, the exact
integral ``k integral_0^L e^(-k (L - u)) P(u) du`` of a polynomial P through the x0 estimates, taken here by
numerical quadrature (scipy) instead of the phi functions the samplers use. On a flow model this also
checks that the samplers carry alpha correctly. For the DPM-Solver++ SDE samplers the reference on a
flow model is k-diffusion's own code, run in those coordinates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
from scipy.integrate import quad

from diffusion.flow_matching import DiscreteFlow
from diffusion.samplers import get_sampler
from diffusion.samplers.multistep import _ADAMS_BASHFORTH, ipndm_v_weights
from diffusion.samplers.ode import flow_ancestral_step
from diffusion.samplers.sa_solver import stochastic_adams_weights
from diffusion.schedules import karras_sigmas
from tests.diffusion.kdiffusion_ref import sampling as ksampling

FLOW = DiscreteFlow(shift=3.0)
MU, S = 0.7, 0.5


class VEToy:
    """A Gaussian's ideal denoiser plus a fixed nonlinear term, on VE states ``x0 + sigma noise``."""

    def __init__(self, dim: int = 16, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(dim, dim, generator=g, dtype=torch.float64) / dim**0.5
        self.sigmas: list[float] = []

    def ideal(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return (S**2 * x + sigma**2 * MU) / (S**2 + sigma**2)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.sigmas.append(float(sigma[0]))
        sigma = sigma.reshape(-1, 1)
        return self.ideal(x, sigma) + 0.1 * torch.tanh(x @ self.w) / (1 + sigma)


class FlowToy(VEToy):
    """The same on rectified-flow states ``(1 - sigma) x0 + sigma noise``; names its model sampling as a guider does."""

    model_sampling = FLOW

    def ideal(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        alpha = 1 - sigma
        return MU + alpha * S**2 / (alpha**2 * S**2 + sigma**2) * (x - alpha * MU)


def toy(flow: bool) -> VEToy:
    return FlowToy() if flow else VEToy()


def schedule(flow: bool, steps: int = 5) -> torch.Tensor:
    """A short schedule ending in 0; the flow one starts below 1, where half-log-SNR is finite."""
    if flow:
        t = torch.linspace(0.97, 0.08, steps, dtype=torch.float64)
        return torch.cat([FLOW.shifted(t), t.new_zeros(1)])
    return karras_sigmas(steps, 0.1, 12.0).double()


def start(flow: bool, dim: int = 16) -> torch.Tensor:
    noise = torch.randn(2, dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sigmas = schedule(flow)
    return noise * sigmas[0] + (0.3 * (1 - sigmas[0]) if flow else 0.0)


def draws(count: int = 64, dim: int = 16) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(9)
    return [torch.randn(2, dim, generator=g, dtype=torch.float64) for _ in range(count)]


def noise_from(noise: list[torch.Tensor]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    it: Iterator[torch.Tensor] = iter(noise)
    return lambda sigma, sigma_next: next(it)


class Coordinates:
    """VE-equivalent coordinates of a parametrisation: alpha, ``s = sigma / alpha``, lambda = -log s."""

    def __init__(self, flow: bool) -> None:
        self.flow = flow

    def alpha(self, sigma: float) -> float:
        return 1.0 - sigma if self.flow else 1.0

    def level(self, sigma: float) -> float:
        return sigma / self.alpha(sigma)

    def lam(self, sigma: float) -> float:
        return -math.log(self.level(sigma))

    def sigma_at(self, lam: float) -> float:
        s = math.exp(-lam)
        return s / (1 + s) if self.flow else s


def evaluate(model: VEToy, coords: Coordinates, y: torch.Tensor, sigma: float) -> torch.Tensor:
    """The model's x0 estimate at the VE-equivalent state y of noise level sigma."""
    return model(y * coords.alpha(sigma), torch.full((y.shape[0],), sigma, dtype=torch.float64))


def integral_weights(k: float, length: float, nodes: list[float]) -> list[float]:
    """``k integral_0^length e^(-k (length - u)) L_j(u) du`` for the Lagrange basis through ``nodes`` (in lambda,
    measured from the step's start), by quadrature."""

    def basis(j: int, u: float) -> float:
        return math.prod((u - n) / (nodes[j] - n) for m, n in enumerate(nodes) if m != j)

    return [
        quad(lambda u, j=j: k * math.exp(-k * (length - u)) * basis(j, u), 0.0, length, epsabs=1e-13, epsrel=1e-12)[0]
        for j in range(len(nodes))
    ]


def close(ours: torch.Tensor, reference: torch.Tensor, tolerance: float = 1e-9) -> None:
    assert (ours - reference).abs().max().item() <= tolerance * max(1.0, reference.abs().max().item())


# --- RES multistep (Zhang et al. 2023) and gradient estimation (Permenter & Yuan 2024) ---


def ve_ancestral(sigma: float, sigma_next: float, eta: float) -> tuple[float, float]:
    """DDPM's ancestral split of a VE step: ``sigma_up`` of fresh noise, the rest reached deterministically."""
    if eta == 0:
        return sigma_next, 0.0
    up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - up**2), up


def res_multistep_reference(
    model: VEToy, x: torch.Tensor, sigmas: torch.Tensor, eta: float = 0.0, noise=(), cfg_pp_of=None
) -> torch.Tensor:
    """``x' = e^-h x + integral_0^h e^-(h-u) P(u) du`` (VE, lambda = -log sigma) with P the line through this
    step's x0 estimate and the previous one. The previous node sits at ``lambda(sigma_prev) - lambda(landed)``
    from this one, ``landed`` being where the previous step's deterministic part ended (sigma_down; sigma
    itself without noise), as ComfyUI places it. ``cfg_pp_of(x, sigma) -> (guided, uncond)``: CFG++."""
    noise_it = iter(noise)
    previous = None  # (estimate, offset of its node)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        if cfg_pp_of is None:
            guided = uncond = model(x, sigmas[i].expand(x.shape[0]))
        else:
            guided, uncond = cfg_pp_of(x, sigmas[i].expand(x.shape[0]))
        down, up = ve_ancestral(sigma, sigma_next, eta)
        if previous is None or down == 0:
            x = guided + (x - uncond) * down / sigma
        else:
            x = x + (guided - uncond)
            h = math.log(sigma / down)
            w_cur, w_prev = integral_weights(1.0, h, [0.0, previous[1]])
            x = math.exp(-h) * x + w_cur * uncond + w_prev * previous[0]
        if sigma_next > 0 and eta > 0:
            x = x + next(noise_it) * up
        previous = (uncond, math.log(down) - math.log(sigma)) if down > 0 else None
    return x


@pytest.mark.parametrize("flow", [False, True], ids=["ve", "flow"])
def test_res_multistep_is_the_exponential_integral_of_the_line_through_two_estimates(flow):
    """ComfyUI runs RES with the VE formulas on every model: the flow toy's parametrisation is ignored."""
    x, sigmas = start(flow), schedule(flow)
    reference = res_multistep_reference(toy(flow), x, sigmas)
    close(get_sampler("res_multistep")(toy(flow), x, sigmas, disable=True), reference)


@pytest.mark.parametrize("flow", [False, True], ids=["ve", "flow"])
def test_res_multistep_ancestral_lands_on_sigma_down_then_adds_fresh_noise(flow):
    x, sigmas, noise = start(flow), schedule(flow), draws()
    reference = res_multistep_reference(toy(flow), x, sigmas, eta=1.0, noise=noise)
    ours = get_sampler("res_multistep_ancestral")(toy(flow), x, sigmas, disable=True, noise_sampler=noise_from(noise))
    close(ours, reference)


def test_gradient_estimation_adds_the_change_in_slope_to_each_euler_step():
    model, x, sigmas = VEToy(), start(False), schedule(False)
    reference, old_slope = x, None
    for i in range(len(sigmas) - 1):
        denoised = model(reference, sigmas[i].expand(2))
        slope = (reference - denoised) / sigmas[i]
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            reference = denoised
        else:
            reference = reference + slope * dt + (0.0 if old_slope is None else (slope - old_slope) * dt)
        old_slope = slope
    close(get_sampler("gradient_estimation")(VEToy(), x, sigmas, disable=True), reference)


# --- iPNDM-v (Zhou et al. 2024) ---


def test_ipndm_v_weights_reduce_to_adams_bashforth_for_equal_steps_up_to_order_3():
    for order in (1, 2, 3):
        assert ipndm_v_weights([-0.5] * order) == pytest.approx(_ADAMS_BASHFORTH[order - 1], abs=1e-15)


def test_ipndm_v_order_4_is_comfyuis_not_adams_bashforth():
    """ComfyUI's (and the reference code's) order-4 weights do not reduce to AB4 for equal steps."""
    assert ipndm_v_weights([-0.5] * 4) == pytest.approx([57 / 24, -65 / 24, 43 / 24, -11 / 24], abs=1e-14)


def test_ipndm_v_order_2_is_the_exact_variable_step_adams_bashforth_rule():
    h, h_1 = -0.7, -1.9
    # integral over [0, h] of the line through (0, 1, 0) and (-h_1, 0, 1): weights of the slopes, per unit step
    exact = [quad(lambda u: 1 + u / h_1, 0, h)[0] / h, quad(lambda u: -u / h_1, 0, h)[0] / h]
    assert ipndm_v_weights([h, h_1]) == pytest.approx(exact, abs=1e-14)


def test_ipndm_v_equals_ipndm_on_equal_steps():
    """With equal steps and order 3 the two are one method; ipndm_v returns x0 on a last step to 0, so the
    schedule here ends above 0."""
    sigmas = torch.linspace(8.0, 1.0, 9, dtype=torch.float64)
    x = start(False)
    ours = get_sampler("ipndm_v")(VEToy(), x, sigmas, disable=True, max_order=3)
    close(ours, get_sampler("ipndm")(VEToy(), x, sigmas, disable=True, max_order=3), 1e-12)


# --- SEEDS (Gonzalez et al. 2023) and exponential Heun ---


def seeds_reference(
    model: VEToy,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    flow: bool,
    fractions: list[float],
    final: str,
    eta: float,
    noise=(),
) -> torch.Tensor:
    """Stages at ``fractions`` of each step in lambda. A stage from 0 to L (k = 1 + eta) is the SDE's exact
    solution for P, the polynomial through the step's estimates so far: ``y' = e^(-k L) y + k integral_0^L
    e^(-k (L - u)) P(u) du`` plus noise. SEEDS uses the line through the start's estimate and the newest
    stage's. The final stage is that line ("line"), or the start's and the middle stage's estimates mixed
    by ``1 / (2 r)`` ("mix", SEEDS-2 phi_1). The noise of all stages is one path: a stage's normalised noise
    over [0, L] is the previous stage's, decayed by ``e^(-eta (L - L_prev))``, plus fresh noise for the rest."""
    coords = Coordinates(flow)
    noise_it = iter(noise)
    k = 1 + eta
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        y = x / coords.alpha(sigma)
        denoised = evaluate(model, coords, y, sigma)
        if sigma_next == 0:
            x = denoised
            continue
        h = coords.lam(sigma_next) - coords.lam(sigma)
        estimates, nodes, path, length_done = [denoised], [0.0], None, 0.0
        for index, fraction in enumerate(fractions + [1.0]):
            last_stage = index == len(fractions)
            length = fraction * h
            stage_sigma = sigma_next if last_stage else coords.sigma_at(coords.lam(sigma) + length)
            if len(estimates) == 1:
                drift = (1 - math.exp(-k * length)) * denoised
            elif last_stage and final == "mix":
                r = fractions[0]
                drift = (1 - math.exp(-k * length)) * ((1 - 1 / (2 * r)) * estimates[0] + estimates[1] / (2 * r))
            else:
                weights = integral_weights(k, length, [nodes[0], nodes[-1]])
                drift = weights[0] * estimates[0] + weights[1] * estimates[-1]
            y_stage = math.exp(-k * length) * y + drift  # the state decays by (s'/s) e^(-eta L) = e^(-k L)
            if eta > 0:
                span = length - length_done
                if path is None:
                    path = math.sqrt(1 - math.exp(-2 * eta * length)) * next(noise_it)
                elif span > 0:
                    decay = math.exp(-eta * span)
                    path = path * decay + math.sqrt(1 - decay**2) * next(noise_it)
                y_stage = y_stage + path * coords.level(stage_sigma)
            length_done = length
            if last_stage:
                x = y_stage * coords.alpha(sigma_next)
            else:
                estimates.append(evaluate(model, coords, y_stage, stage_sigma))
                nodes.append(length)
    return x


SEEDS_CASES = {
    # name: (fractions, final stage, eta, options)
    "seeds_2": ([0.5], "mix", 1.0, {}),
    "seeds_2_phi_2": ([0.5], "line", 1.0, {"solver_type": "phi_2"}),
    "seeds_3": ([1 / 3, 2 / 3], "line", 1.0, {}),
    "exp_heun_2_x0": ([1.0], "line", 0.0, {}),
    "exp_heun_2_x0_sde": ([1.0], "line", 1.0, {}),
}


@pytest.mark.parametrize("flow", [False, True], ids=["ve", "flow"])
@pytest.mark.parametrize("case", SEEDS_CASES)
def test_seeds_and_exponential_heun_follow_the_exact_sde_step_of_their_interpolants(case, flow):
    fractions, final, eta, options = SEEDS_CASES[case]
    name = case.removesuffix("_phi_2")
    x, sigmas, noise = start(flow), schedule(flow), draws()
    reference = seeds_reference(toy(flow), x, sigmas, flow, fractions, final, eta, noise)
    if eta > 0:
        options = {**options, "noise_sampler": noise_from(noise)}
    close(get_sampler(name)(toy(flow), x, sigmas, disable=True, **options), reference)


# --- ER-SDE-Solver (Cui et al. 2023) ---


def er_sde_reference(model: VEToy, x: torch.Tensor, sigmas: torch.Tensor, flow: bool, noise) -> torch.Tensor:
    """Stage 1: ``y' = r y + (1 - r) D + sqrt(l_t^2 - r^2 l_s^2) z``, ``r = phi(l_t) / phi(l_s)``, l = sigma / alpha.
    Stages 2 and 3 add ``(dl + phi(l_t) integral 1/phi) D'`` and ``(dl^2 / 2 + phi(l_t) integral (l - l_s)/phi) D''``
    with D', D'' divided differences of past estimates (D'' over half the two-step span); the integrals run
    from l_t to l_s as 200-point left Riemann sums."""
    coords = Coordinates(flow)
    noise_it = iter(noise)

    def phi(level: float) -> float:
        return level * (math.exp(level**0.3) + 10.0)

    levels = [coords.level(float(s)) for s in sigmas]
    history: list[torch.Tensor] = []
    slopes: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        y = x / coords.alpha(sigma)
        denoised = evaluate(model, coords, y, sigma)
        history.append(denoised)
        if sigma_next == 0:
            x = denoised
            continue
        l_s, l_t = levels[i], levels[i + 1]
        r = phi(l_t) / phi(l_s)
        y = r * y + (1 - r) * denoised
        if i >= 1:
            spacing = (l_s - l_t) / 200
            points = [l_t + n * spacing for n in range(200)]
            integral_0 = sum(1 / phi(p) for p in points) * spacing
            slope = (history[-1] - history[-2]) / (l_s - levels[i - 1])
            y = y + ((l_t - l_s) + integral_0 * phi(l_t)) * slope
            if i >= 2:
                integral_1 = sum((p - l_s) / phi(p) for p in points) * spacing
                curvature = (slope - slopes[-1]) / ((l_s - levels[i - 2]) / 2)
                y = y + ((l_t - l_s) ** 2 / 2 + integral_1 * phi(l_t)) * curvature
            slopes.append(slope)
        y = y + math.sqrt(max(l_t**2 - r**2 * l_s**2, 0.0)) * next(noise_it)
        x = y * coords.alpha(sigma_next)
    return x


@pytest.mark.parametrize("flow", [False, True], ids=["ve", "flow"])
def test_er_sde_follows_its_three_stage_rule(flow):
    x, sigmas, noise = start(flow), schedule(flow), draws()
    reference = er_sde_reference(toy(flow), x, sigmas, flow, noise)
    close(get_sampler("er_sde")(toy(flow), x, sigmas, disable=True, noise_sampler=noise_from(noise)), reference)


# --- SA-Solver (Xue et al. 2023) ---


def test_stochastic_adams_weights_integrate_the_lagrange_basis():
    nodes = torch.tensor([-1.3, -0.6, 0.2, 0.9], dtype=torch.float64)
    for tau in (0.0, 1.0):
        k = 1 + tau**2
        ours = stochastic_adams_weights(nodes, torch.tensor(0.2, dtype=torch.float64), nodes[-1], tau)
        # integral_weights measures from the step's start: lambda_s = 0.2
        expected = integral_weights(k, 0.7, [float(n) - 0.2 for n in nodes])
        assert ours.tolist() == pytest.approx(expected, abs=1e-12)


def sa_solver_reference(
    model: VEToy,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    flow: bool,
    tau_of: Callable[[float], float],
    noise,
    pece: bool = False,
) -> torch.Tensor:
    """Predictor: ``y' = (s'/s) e^(-tau^2 h) y + sum_j w_j D_j + s' sqrt(1 - e^(-2 tau^2 h)) z`` with w the exact
    integral weights of the polynomial through the last 3 estimates (SA-Solver's eq. 15). Corrector: the
    same step again, from the same state with the same noise, through the last 4 estimates, the new one
    included (eq. 18). The orders shrink at the end of the schedule: the last predictor is first order,
    and no corrector runs into the final sigma 0."""
    coords = Coordinates(flow)
    noise_it = iter(noise)
    steps = len(sigmas) - 1
    lams = [coords.lam(float(s)) if s > 0 else math.inf for s in sigmas]
    history: list[torch.Tensor] = []
    y_prev = x / coords.alpha(float(sigmas[0]))  # the corrected state of the previous node
    y_pred = y_prev
    last = None  # (tau, fresh noise term) of the last predictor

    def step(y: torch.Tensor, i: int, nodes: range, tau: float) -> torch.Tensor:
        """From sigmas[i] to sigmas[i + 1] through the estimates at the nodes (indices into sigmas)."""
        h = lams[i + 1] - lams[i]
        weights = integral_weights(1 + tau**2, h, [lams[j] - lams[i] for j in nodes])
        ratio = coords.level(float(sigmas[i + 1])) / coords.level(float(sigmas[i]))
        used = history[-len(nodes) :]
        return ratio * math.exp(-(tau**2) * h) * y + sum(w * d for w, d in zip(weights, used))

    for i in range(steps):
        sigma = float(sigmas[i])
        denoised = evaluate(model, coords, y_pred, sigma)
        history.append(denoised)
        if i > 0 and (sigmas[i + 1] > 0 or pece):
            order = min(4, len(history), steps - i)
            assert last is not None
            tau, z = last
            y_prev = step(y_prev, i - 1, range(i - order + 1, i + 1), tau) + z
            if pece:
                history[-1] = denoised = evaluate(model, coords, y_prev, sigma)
        else:
            y_prev = y_pred
        if sigmas[i + 1] == 0:
            return denoised
        tau = tau_of(float(sigmas[i + 1]))
        order = min(3, len(history), steps - 1 - i)
        h = lams[i + 1] - lams[i]
        z = coords.level(float(sigmas[i + 1])) * math.sqrt(1 - math.exp(-2 * tau**2 * h)) * next(noise_it)
        y_pred = step(y_prev, i, range(i - order + 1, i + 1), tau) + z
        last = (tau, z)
    return y_pred * coords.alpha(float(sigmas[-1]))


@pytest.mark.parametrize("pece", [False, True], ids=["pec", "pece"])
@pytest.mark.parametrize("flow", [False, True], ids=["ve", "flow"])
def test_sa_solver_predicts_and_corrects_with_stochastic_adams_steps(flow, pece):
    sigmas = schedule(flow, steps=8)  # long enough for the full orders: predictor 3, corrector 4
    middle = (float(sigmas[5]), float(sigmas[2]))  # tau = 1 on the steps into sigmas[2..5], an ODE elsewhere

    def tau_of(sigma):
        return 1.0 if middle[1] >= float(sigma) >= middle[0] else 0.0

    x, noise = start(flow), draws()
    reference = sa_solver_reference(toy(flow), x, sigmas, flow, tau_of, noise, pece)
    name = "sa_solver_pece" if pece else "sa_solver"
    # The reference draws noise on the ODE steps too (and zeroes it): hand the sampler only the used draws.
    used = [noise[i] for i in range(len(sigmas) - 2) if tau_of(sigmas[i + 1]) > 0]
    ours = get_sampler(name)(toy(flow), x, sigmas, disable=True, tau_func=tau_of, noise_sampler=noise_from(used))
    close(ours, reference)


def test_sa_solver_is_stochastic_from_20_to_80_percent_of_the_process_in_model_timesteps():
    calls: list[tuple[float, float]] = []

    def recording(sigma, sigma_next):
        calls.append((float(sigma), float(sigma_next)))
        return torch.zeros(2, 16, dtype=torch.float64)

    sigmas = torch.cat([FLOW.shifted(torch.linspace(0.99, 0.01, 30, dtype=torch.float64)), torch.zeros(1)])
    get_sampler("sa_solver")(FlowToy(), start(True), sigmas.double(), disable=True, noise_sampler=recording)
    noisy = {sigma_next for _, sigma_next in calls}
    inside = {float(s) for s in sigmas[1:-1] if FLOW.percent_to_sigma(0.2) >= s >= FLOW.percent_to_sigma(0.8)}
    assert noisy == inside and inside


# --- DPM-Solver++ SDE samplers on a flow model: k-diffusion's VE code in VE-equivalent coordinates ---


class InVECoordinates:
    """A flow model seen in VE-equivalent coordinates: ``D(y, s) = model(y alpha, sigma)``, ``sigma = s / (1 + s)``."""

    def __init__(self, model: VEToy) -> None:
        self.model = model

    def __call__(self, y: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        sigma = level / (1 + level)
        return self.model(y * (1 - sigma.reshape(-1, 1)), sigma)


@pytest.mark.parametrize("name", ["dpmpp_sde", "dpmpp_2m_sde", "dpmpp_2m_sde_heun", "dpmpp_3m_sde"])
def test_dpmpp_sde_samplers_on_a_flow_model_are_the_ve_samplers_in_its_ve_coordinates(name):
    function, options = {
        "dpmpp_sde": ("sample_dpmpp_sde", {}),
        "dpmpp_2m_sde": ("sample_dpmpp_2m_sde", {}),
        "dpmpp_2m_sde_heun": ("sample_dpmpp_2m_sde", {"solver_type": "heun"}),
        "dpmpp_3m_sde": ("sample_dpmpp_3m_sde", {}),
    }[name]
    x, sigmas, noise = start(True), schedule(True), draws()
    levels = sigmas / (1 - sigmas)
    reference = getattr(ksampling, function)(
        InVECoordinates(FlowToy()),
        x / (1 - sigmas[0]),
        levels,
        disable=True,
        noise_sampler=noise_from(noise),
        **options,
    )
    ours = get_sampler(name)(FlowToy(), x, sigmas, disable=True, noise_sampler=noise_from(noise))
    close(ours, reference, 1e-8)


# --- ancestral samplers on a flow model: ComfyUI's RF split ---


def test_flow_ancestral_split_renoises_to_the_next_noise_level():
    sigma, sigma_next = torch.tensor(0.8, dtype=torch.float64), torch.tensor(0.55, dtype=torch.float64)
    for eta in (0.0, 0.5, 1.0):
        down, renoise, rescale = flow_ancestral_step(sigma, sigma_next, eta)
        # the straight line to `down` keeps weight 1 - down on x0; rescaled, that is the weight at sigma_next
        assert float(rescale * (1 - down)) == pytest.approx(1 - float(sigma_next))
        assert float((rescale * down) ** 2 + renoise**2) == pytest.approx(float(sigma_next) ** 2)
    assert float(flow_ancestral_step(sigma, sigma_next, 0.0)[1]) == 0.0


def test_euler_ancestral_on_a_flow_model_takes_the_straight_line_down_then_renoises():
    x, sigmas, noise = start(True), schedule(True), draws()
    model, reference = FlowToy(), x
    noise_it = iter(noise)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = model(reference, sigmas[i].expand(2))
        if sigma_next == 0:
            reference = denoised
            continue
        down = sigma_next * sigma_next / sigma  # eta = 1
        on_line = denoised + (reference - denoised) * down / sigma
        std = math.sqrt(sigma_next**2 - (down * (1 - sigma_next) / (1 - down)) ** 2)
        reference = on_line * (1 - sigma_next) / (1 - down) + next(noise_it) * std
    close(
        get_sampler("euler_ancestral")(FlowToy(), x, sigmas, disable=True, noise_sampler=noise_from(noise)), reference
    )


@pytest.mark.parametrize("name", ["er_sde", "seeds_2", "seeds_3", "sa_solver", "dpmpp_2m_sde", "exp_heun_2_x0"])
def test_half_log_snr_samplers_start_a_flow_schedule_just_off_sigma_one(name):
    """lambda is infinite at sigma = 1: they call the model at 1e-4 of the process instead, as ComfyUI's do."""
    model = FlowToy()
    sigmas = torch.cat([FLOW.shifted(torch.linspace(1.0, 0.1, 4, dtype=torch.float64)), torch.zeros(1)])
    out = get_sampler(name)(model, start(True), sigmas, disable=True)
    assert model.sigmas[0] == pytest.approx(FLOW.percent_to_sigma(1e-4), abs=1e-12)
    assert torch.isfinite(out).all()


def test_reference_helpers_are_exact_for_a_constant_estimate():
    """Self-check of the quadrature helper: a constant x0 estimate integrates to ``1 - e^(-k L)``."""
    weights = integral_weights(2.0, 0.8, [0.0, -0.5])
    assert sum(weights) == pytest.approx(1 - math.exp(-1.6), abs=1e-13)
    assert np.isfinite(weights).all()
