"""ModelSamplingDiscrete / ModelSamplingContinuousEDM: a MODEL told what its output is and over which noise levels
it was trained, with ComfyUI's inputs; the loaded weights shared with the model it came from."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from diffusion.prediction import (
    CosmosRFlowPrediction,
    EDMPrediction,
    EpsPrediction,
    ImageToImagePrediction,
    LCMPrediction,
    VPrediction,
    X0Prediction,
)
from diffusion.sampling import prepare_noise
from graph.registry import NodeRegistry
from nodes import model_sampling
from nodes.conditioning import CLIPTextEncode
from nodes.folders import Folders
from nodes.latent import EmptyLatentImage
from nodes.loaders import CheckpointLoaderSimple
from nodes.model_sampling import ModelSamplingContinuousEDM, ModelSamplingDiscrete
from nodes.sampling import KSampler
from tests.nodes.tiny_models import tiny_checkpoint

UNROUNDED = {"min": 0.0, "max": 1000.0, "step": 0.001, "round": False}


def test_the_inputs_are_comfyuis() -> None:
    registry = NodeRegistry()
    registry.register_module(model_sampling)
    info = registry.object_info()
    discrete = info["ModelSamplingDiscrete"]
    assert discrete["input"]["required"] == {
        "model": ["MODEL"],
        "sampling": [["eps", "v_prediction", "lcm", "x0", "img_to_img"]],
        "zsnr": ["BOOLEAN", {"default": False}],
    }
    edm = info["ModelSamplingContinuousEDM"]
    assert edm["input"]["required"] == {
        "model": ["MODEL"],
        "sampling": [["v_prediction", "edm", "edm_playground_v2.5", "eps", "cosmos_rflow"]],
        "sigma_max": ["FLOAT", {"default": 120.0, **UNROUNDED}],
        "sigma_min": ["FLOAT", {"default": 0.002, **UNROUNDED}],
    }
    assert list(edm["input"]["required"]) == ["model", "sampling", "sigma_max", "sigma_min"]
    for node in (discrete, edm):
        assert node["output"] == ["MODEL"] and node["category"] == "advanced/model"


@pytest.fixture
def sd15(folders: Folders):
    tiny_checkpoint(folders.models, "sd15.safetensors")
    model, clip, _ = CheckpointLoaderSimple("sd15.safetensors")
    return model, CLIPTextEncode("a lighthouse", clip), CLIPTextEncode("fog", clip)


def ksample(model: Any, positive: Any, negative: Any, cfg: float = 1.0, sampler: str = "euler") -> torch.Tensor:
    latent = EmptyLatentImage(64, 64, 1)
    return KSampler(model, 5, 3, cfg, sampler, "normal", positive, negative, latent, 1.0)["samples"]


@pytest.mark.parametrize(
    "sampling, kind",
    [("eps", EpsPrediction), ("v_prediction", VPrediction), ("lcm", LCMPrediction), ("x0", X0Prediction),
     ("img_to_img", ImageToImagePrediction)],
)  # fmt: skip
def test_discrete_sampling_is_the_chosen_prediction_on_the_same_weights(sd15, sampling: str, kind: type) -> None:
    model, _, _ = sd15
    model.model_options["my_pack_setting"] = 1
    patched = ModelSamplingDiscrete(model, sampling, False)
    assert type(patched.sampling) is kind and type(model.sampling) is EpsPrediction
    assert patched.unet is model.unet and patched.model_options == model.model_options
    assert patched.get_model_object("model_sampling") is patched.sampling


def test_v_prediction_on_an_eps_model_changes_the_picture_and_is_the_hand_written_loop(sd15) -> None:
    """Euler over the normal schedule, each step's x0 from the UNet output read as velocity (sigma_data 1)."""
    model, positive, negative = sd15
    patched = ModelSamplingDiscrete(model, "v_prediction", False)
    out = ksample(patched, positive, negative)
    assert not torch.allclose(out, ksample(model, positive, negative), rtol=1e-3, atol=1e-3)

    sampling = patched.sampling
    timesteps = torch.linspace(999, 0, 3)
    sigmas = torch.cat([sampling.sigma(timesteps), torch.zeros(1)])
    latent = torch.zeros(1, 4, 8, 8)
    x = prepare_noise(latent, 5) * (1.0 + sigmas[0] ** 2) ** 0.5
    context = positive[0][0]
    with patched.unet_fn() as unet_fn:
        for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
            scale = (sigma**2 + 1.0) ** 0.5
            v = unet_fn(x / scale, sampling.timestep(sigma.reshape(1)), context)
            x0 = x / (sigma**2 + 1.0) - v * sigma / scale
            x = x + (x - x0) / sigma * (sigma_next - sigma)
    torch.testing.assert_close(out, x / 0.18215, rtol=1e-4, atol=1e-3)


def test_zsnr_rescales_the_schedule_to_zero_terminal_snr_and_still_samples(sd15) -> None:
    model, positive, negative = sd15
    patched = ModelSamplingDiscrete(model, "v_prediction", True)
    assert patched.sampling.sigma_max == pytest.approx(4518.76, rel=1e-4)
    assert patched.sampling.sigma_min == pytest.approx(model.sampling.sigma_min, rel=1e-6)
    out = ksample(patched, positive, negative, cfg=4.0)
    assert bool(torch.isfinite(out).all())
    assert not torch.allclose(
        out, ksample(ModelSamplingDiscrete(model, "v_prediction", False), positive, negative, 4.0)
    )


def test_lcm_samples_over_its_distilled_timesteps(sd15) -> None:
    model, positive, negative = sd15
    patched = ModelSamplingDiscrete(model, "lcm", False)
    assert patched.sampling.sigma_max == pytest.approx(model.sampling.sigma_max)
    assert float(patched.sampling.timestep(torch.tensor(patched.sampling.sigma_min))) == 19.0
    assert bool(torch.isfinite(ksample(patched, positive, negative, sampler="lcm")).all())


@pytest.mark.parametrize(
    "sampling, kind, sigma_data",
    [("v_prediction", VPrediction, 1.0), ("edm", EDMPrediction, 0.5), ("eps", EpsPrediction, 1.0),
     ("cosmos_rflow", CosmosRFlowPrediction, 1.0)],
)  # fmt: skip
def test_continuous_edm_sampling_is_the_chosen_prediction_over_the_given_range(
    sd15, sampling: str, kind: type, sigma_data: float
) -> None:
    model, positive, negative = sd15
    patched = ModelSamplingContinuousEDM(model, sampling, 80.0, 0.03)
    assert type(patched.sampling) is kind and patched.sampling.sigma_data == sigma_data
    assert patched.sampling.sigma_max == pytest.approx(80.0) and patched.sampling.sigma_min == pytest.approx(0.03)
    sigma = torch.tensor([2.0])
    expected = sigma / (sigma + 1) if sampling == "cosmos_rflow" else 0.25 * sigma.log()
    torch.testing.assert_close(patched.sampling.timestep(sigma), expected)
    out = ksample(patched, positive, negative, cfg=3.0)
    assert bool(torch.isfinite(out).all()) and not torch.allclose(out, ksample(model, positive, negative, cfg=3.0))


def test_edm_playground_is_refused_naming_its_latent_format(sd15) -> None:
    model, _, _ = sd15
    with pytest.raises(NotImplementedError, match="Playground v2.5's per-channel latent format"):
        ModelSamplingContinuousEDM(model, "edm_playground_v2.5", 80.0, 0.002)


def test_an_edm_range_with_sigma_min_zero_is_refused(sd15) -> None:
    model, _, _ = sd15
    with pytest.raises(ValueError, match="0 < sigma_min < sigma_max"):
        ModelSamplingContinuousEDM(model, "edm", 120.0, 0.0)
    assert math.isfinite(ModelSamplingContinuousEDM(model, "edm", 120.0, 0.002).sampling.sigma_max)
