"""Nodes that change how a MODEL turns noise levels into predictions: its parametrisation and noise schedule.

A flow model's shift moves its sampling time towards the noisy end, where the composition of a large
image forms; ComfyUI's workflows set it with these nodes (``ModelSamplingSD3`` shift 3 for SD3.5,
``ModelSamplingAuraFlow`` for AuraFlow-style models such as Z-Image, ``ModelSamplingFlux`` from the image
size). As in ComfyUI, each node makes the model predict the rectified flow (``diffusion.flow_matching``)
with the new shift, whatever it predicted before; the loaded weights are shared, not copied.

``ModelSamplingDiscrete`` and ``ModelSamplingContinuousEDM`` say what a model's output is (epsilon, v, x0,
EDM, LCM ...) and over which noise levels it was trained (the DDPM table, rescaled to zero terminal SNR or
not; a continuous EDM range), for files whose own keys do not tell (``diffusion.prediction``).
"""

from __future__ import annotations

from diffusion.flow_matching import DiscreteFlow, FluxFlow, flux_shift_for_size
from diffusion.prediction import (
    CosmosRFlowPrediction,
    CosmosRFlowSchedule,
    DistilledSchedule,
    EDMPrediction,
    EDMSchedule,
    EpsPrediction,
    ImageToImagePrediction,
    LCMPrediction,
    ModelSampling,
    VPrediction,
    X0Prediction,
    scaled_linear_schedule,
)
from graph.declare import Boolean, Combo, Float, Int, Output, Socket, node
from nodes.image import MAX_RESOLUTION

__all__ = [
    "ModelSamplingAuraFlow",
    "ModelSamplingContinuousEDM",
    "ModelSamplingDiscrete",
    "ModelSamplingFlux",
    "ModelSamplingSD3",
]


@node(category="advanced/model", outputs=[Output("MODEL")])
def ModelSamplingSD3(model=Socket("MODEL"), shift=Float(3.0, min=0.0, max=100.0, step=0.01)):
    """SD3's time shift over timesteps 0..1000: higher spends more of the steps at high noise."""
    return model.with_sampling(DiscreteFlow(shift=shift, multiplier=1000.0))


@node(category="advanced/model", outputs=[Output("MODEL")])
def ModelSamplingAuraFlow(model=Socket("MODEL"), shift=Float(1.73, min=0.0, max=100.0, step=0.01)):
    """The same shift for models conditioned on time in 0..1 (AuraFlow, Lumina 2, Z-Image)."""
    return model.with_sampling(DiscreteFlow(shift=shift, multiplier=1.0))


@node(category="advanced/model", outputs=[Output("MODEL")])
def ModelSamplingFlux(
    model=Socket("MODEL"),
    max_shift=Float(1.15, min=0.0, max=100.0, step=0.01),
    base_shift=Float(0.5, min=0.0, max=100.0, step=0.01),
    width=Int(1024, min=16, max=MAX_RESOLUTION, step=8),
    height=Int(1024, min=16, max=MAX_RESOLUTION, step=8),
):
    """FLUX's shift for an image size: `base_shift` at 256 tokens (256²) up to `max_shift` at 4096 (1024²)."""
    return model.with_sampling(FluxFlow(shift=flux_shift_for_size(width, height, base_shift, max_shift)))


@node(category="advanced/model", outputs=[Output("MODEL")])
def ModelSamplingDiscrete(
    model=Socket("MODEL"),
    sampling=Combo(["eps", "v_prediction", "lcm", "x0", "img_to_img"]),
    zsnr=Boolean(False),
):
    """What a discrete-time model predicts over the 1000 DDPM timesteps: noise (eps), velocity (v_prediction),
    the clean image (x0; img_to_img takes its input unscaled) or an LCM's consistency estimate over its 50
    distilled timesteps (lcm). ``zsnr`` rescales the schedule to zero terminal SNR (Lin et al. 2024)."""
    schedule = scaled_linear_schedule(zero_terminal_snr=zsnr)
    predictions: dict[str, ModelSampling] = {
        "eps": EpsPrediction(schedule),
        "v_prediction": VPrediction(schedule),
        "lcm": LCMPrediction(DistilledSchedule(schedule)),
        "x0": X0Prediction(schedule),
        "img_to_img": ImageToImagePrediction(schedule),
    }
    return model.with_sampling(predictions[sampling])


def _unrounded(declaration: Float) -> Float:
    """A FLOAT that ComfyUI declares with ``round: False``: the editor keeps every typed digit."""
    declaration.options["round"] = False
    return declaration


@node(category="advanced/model", outputs=[Output("MODEL")])
def ModelSamplingContinuousEDM(
    model=Socket("MODEL"),
    sampling=Combo(["v_prediction", "edm", "edm_playground_v2.5", "eps", "cosmos_rflow"]),
    sigma_max=_unrounded(Float(120.0, min=0.0, max=1000.0, step=0.001)),
    sigma_min=_unrounded(Float(0.002, min=0.0, max=1000.0, step=0.001)),
):
    """A continuous-time model over the noise levels sigma_min..sigma_max, conditioned on ln(sigma) / 4
    (Karras et al. 2022): predicting v or eps (sigma_data 1), EDM's own output (edm: sigma_data 0.5), or
    Cosmos's rectified flow (cosmos_rflow: conditioned on sigma / (sigma + 1))."""
    if sampling == "edm_playground_v2.5":
        raise NotImplementedError(
            "ModelSamplingContinuousEDM 'edm_playground_v2.5' also switches the MODEL to Playground v2.5's "
            "per-channel latent format, which Loom does not have yet; 'edm' samples an EDM model in its own format"
        )
    if sampling == "cosmos_rflow":
        return model.with_sampling(CosmosRFlowPrediction(CosmosRFlowSchedule(sigma_min, sigma_max)))
    schedule = EDMSchedule(sigma_min, sigma_max)
    prediction: ModelSampling
    if sampling == "edm":
        prediction = EDMPrediction(schedule, sigma_data=0.5)
    elif sampling == "v_prediction":
        prediction = VPrediction(schedule)
    else:
        prediction = EpsPrediction(schedule)
    return model.with_sampling(prediction)
