"""ModelSamplingSD3 / AuraFlow / Flux: a MODEL that predicts the rectified flow with ComfyUI's shifts, its
weights shared with the model it came from; their inputs are ComfyUI's."""

from __future__ import annotations

import pytest
import torch

from diffusion.flow_matching import DiscreteFlow, FluxFlow, flux_shift_for_size
from diffusion.prediction import EpsPrediction
from diffusion.schedules import compute_sigmas
from graph.registry import NodeRegistry
from nodes import register_builtin_nodes
from nodes.folders import Folders
from nodes.loaders import CheckpointLoaderSimple, LoraLoaderModelOnly
from nodes.model_sampling import ModelSamplingAuraFlow, ModelSamplingFlux, ModelSamplingSD3
from tests.nodes.tiny_models import kohya_lora_tensors, tiny_checkpoint, write_lora


@pytest.fixture
def model(folders: Folders):
    tiny_checkpoint(folders.models, "sd15.safetensors")
    return CheckpointLoaderSimple("sd15.safetensors")[0]


def test_the_inputs_are_comfyui_s() -> None:
    registry = NodeRegistry()
    register_builtin_nodes(registry)
    info = registry.object_info()
    shift = {"min": 0.0, "max": 100.0, "step": 0.01}
    assert info["ModelSamplingSD3"]["input"]["required"]["shift"][1] == {"default": 3.0, **shift}
    assert info["ModelSamplingAuraFlow"]["input"]["required"]["shift"][1] == {"default": 1.73, **shift}
    flux = info["ModelSamplingFlux"]["input"]["required"]
    assert list(flux) == ["model", "max_shift", "base_shift", "width", "height"]
    assert flux["max_shift"][1] == {"default": 1.15, **shift} and flux["base_shift"][1] == {"default": 0.5, **shift}
    assert flux["width"][1] == {"default": 1024, "min": 16, "max": 16384, "step": 8}
    for name in ("ModelSamplingSD3", "ModelSamplingAuraFlow", "ModelSamplingFlux"):
        assert info[name]["output"] == ["MODEL"] and info[name]["category"] == "advanced/model"


def test_sd3_sampling_shifts_timesteps_of_0_to_1000_and_leaves_the_input_model_alone(model) -> None:
    shifted = ModelSamplingSD3(model, 3.0)
    assert isinstance(shifted.sampling, DiscreteFlow) and isinstance(model.sampling, EpsPrediction)
    assert (shifted.sampling.shift, shifted.sampling.multiplier) == (3.0, 1000.0)
    assert shifted.unet is model.unet
    sigmas = compute_sigmas(shifted.sampling, "simple", 4)
    torch.testing.assert_close(sigmas, torch.tensor([1.0, 0.9, 0.75, 0.5, 0.0]), rtol=0, atol=1e-6)


def test_auraflow_sampling_is_the_same_shift_over_time_in_0_to_1(model) -> None:
    shifted = ModelSamplingAuraFlow(model, 1.73)
    assert (shifted.sampling.shift, shifted.sampling.multiplier) == (1.73, 1.0)
    torch.testing.assert_close(shifted.sampling.timestep(torch.tensor(0.5)), torch.tensor(0.5))


@pytest.mark.parametrize("width, height", [(1024, 1024), (512, 768)])
def test_flux_sampling_takes_its_shift_from_the_image_size(model, width: int, height: int) -> None:
    shifted = ModelSamplingFlux(model, 1.15, 0.5, width, height)
    assert isinstance(shifted.sampling, FluxFlow)
    assert shifted.sampling.shift == pytest.approx(flux_shift_for_size(width, height, 0.5, 1.15))


def test_a_lora_applied_after_the_shift_keeps_it(model, folders: Folders) -> None:
    write_lora(folders.models / "loras" / "style.safetensors", kohya_lora_tensors(model.unet, []))
    shifted = ModelSamplingSD3(model, 6.0)
    patched = LoraLoaderModelOnly(shifted, "style.safetensors", 0.5)
    assert patched.sampling is shifted.sampling and patched.patches
