"""``comfy.model_management`` answers from the runtime's device, and its interrupt is Loom's executor's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from graph.execution_state import PromptStatus
from graph.executor import Executor
from graph.progress import InterruptFlag, node_context
from graph.registry import NodeRegistry
from graph.services import services_context
from graph.v1 import spec_from_v1_class
from nodes.runtime import Runtime, RuntimeOptions, build_runtime


def test_devices_and_dtypes_are_the_runtime_s(runtime: Runtime) -> None:
    import comfy.model_management as mm

    assert mm.get_torch_device() == runtime.compute.device == torch.device("cpu")
    assert mm.unet_offload_device() == mm.intermediate_device() == torch.device("cpu")
    assert mm.vae_device() == mm.text_encoder_device() == runtime.compute.device
    assert mm.unet_dtype() == mm.vae_dtype() == mm.text_encoder_dtype() == torch.float32
    assert mm.cpu_mode() and not mm.mps_mode() and not mm.should_use_fp16() and not mm.should_use_bf16()
    assert mm.is_device_cpu("cpu") and mm.is_device_cuda(torch.device("cuda", 0)) and not mm.is_device_mps("cpu")
    assert mm.xformers_enabled() is False
    assert 0 < mm.get_free_memory() <= mm.get_total_memory()
    free, cached = mm.get_free_memory(torch.device("cpu"), torch_free_too=True)
    assert free > 0 and cached == 0


def test_each_prompt_sees_its_own_runtime(tmp_path: Path) -> None:
    import comfy.model_management as mm

    other = build_runtime(RuntimeOptions(base_dir=tmp_path / "other", device="cpu", dtype="bf16"))
    with services_context(other):
        assert mm.unet_dtype() == torch.bfloat16 and mm.should_use_bf16()
    assert mm.unet_dtype() == torch.float32


def test_load_models_gpu_places_a_pack_s_module_within_the_runtime_s_budget(runtime: Runtime) -> None:
    import comfy.model_management as mm

    layer = nn.Linear(2, 2)
    mm.load_models_gpu([layer, object()])  # a value that is no module is left alone
    assert runtime.memory.is_resident(layer)
    mm.unload_all_models()
    assert not runtime.memory.is_resident(layer)


def test_interrupt_inside_a_node_raises_at_the_next_check() -> None:
    import comfy.model_management as mm

    mm.throw_exception_if_processing_interrupted()  # outside a node: nothing to stop
    assert not mm.processing_interrupted()
    flag = InterruptFlag()
    with node_context("4", flag, None):
        assert not mm.processing_interrupted()
        mm.interrupt_current_processing()
        assert flag.is_set() and mm.processing_interrupted()
        with pytest.raises(mm.InterruptProcessingException):
            mm.throw_exception_if_processing_interrupted()


class StopsItself:
    """A pack node that interrupts the prompt the ComfyUI way, or raises ComfyUI's exception itself."""

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"how": ("STRING", {"default": "flag"})}}

    def run(self, how: str) -> tuple[int]:
        import comfy.model_management as mm

        if how == "flag":
            mm.interrupt_current_processing()
            mm.throw_exception_if_processing_interrupted()
        else:
            raise mm.InterruptProcessingException()
        return (1,)


class Show:
    RETURN_TYPES = ()
    FUNCTION = "show"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"value": ("INT",)}}

    def show(self, value: int) -> dict[str, Any]:
        return {"ui": {"text": [str(value)]}}


@pytest.mark.parametrize("how", ["flag", "raise"])
def test_the_executor_ends_the_prompt_as_interrupted(runtime: Runtime, how: str) -> None:
    registry = NodeRegistry()
    registry.register(spec_from_v1_class("StopsItself", StopsItself))
    registry.register(spec_from_v1_class("Show", Show))
    prompt = {
        "1": {"class_type": "StopsItself", "inputs": {"how": how}},
        "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}},
    }
    record = Executor(registry, services=runtime).execute(prompt, ["2"], prompt_id="p", interrupt=InterruptFlag())
    assert record.status is PromptStatus.INTERRUPTED
    assert record.messages[-1][0] == "execution_interrupted" and record.messages[-1][1]["node_id"] == "1"
