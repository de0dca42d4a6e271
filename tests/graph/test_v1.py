"""A ComfyUI-style V1 class read into a NodeSpec serves the same /object_info entry ComfyUI would."""

import pytest

from graph.spec import ExecutionBlocker, NodeDefinitionError, NodeReturnError
from graph.v1 import spec_from_v1_class


class KSamplerLike:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "the model"}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True}),
                "sampler_name": (["euler", "heun"],),
                "scheduler": ("COMBO", {"options": ["normal", "karras"]}),
            },
            "optional": {"denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01})},
            "hidden": {"prompt": "PROMPT", "unique_id": "UNIQUE_ID"},
        }

    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("The denoised latent.",)
    FUNCTION = "sample"
    CATEGORY = "sampling"
    DESCRIPTION = "Denoises a latent."

    def sample(self, model, seed, sampler_name, scheduler, denoise=1.0, prompt=None, unique_id=None):
        return ((model, seed, sampler_name, scheduler, denoise, unique_id),)


def test_object_info_matches_the_comfyui_shape() -> None:
    info = spec_from_v1_class("KSampler", KSamplerLike).object_info()
    assert info["input"]["required"]["model"] == ["MODEL", {"tooltip": "the model"}]
    assert info["input"]["required"]["sampler_name"] == [["euler", "heun"]]
    assert info["input"]["required"]["scheduler"] == ["COMBO", {"options": ["normal", "karras"]}]
    assert info["input"]["hidden"] == {"prompt": "PROMPT", "unique_id": "UNIQUE_ID"}
    assert info["input_order"] == {
        "required": ["model", "seed", "sampler_name", "scheduler"],
        "optional": ["denoise"],
        "hidden": ["prompt", "unique_id"],
    }
    assert info["output"] == ["LATENT"]
    assert info["output_is_list"] == [False]
    assert info["output_name"] == ["LATENT"]
    assert info["output_tooltips"] == ["The denoised latent."]
    assert info["name"] == info["display_name"] == "KSampler"
    assert info["category"] == "sampling"
    assert info["description"] == "Denoises a latent."
    assert info["output_node"] is False
    assert info["python_module"] == "nodes"


def test_inputs_expose_combo_choices_and_flags() -> None:
    spec = spec_from_v1_class("KSampler", KSamplerLike)
    inputs = spec.input_map()
    assert inputs["sampler_name"].choices == ("euler", "heun")
    assert inputs["scheduler"].choices == ("normal", "karras")
    assert inputs["seed"].control_after_generate
    assert inputs["seed"].is_widget and not inputs["model"].is_widget
    assert spec.uses_unique_id


def test_running_calls_the_named_method_on_an_instance() -> None:
    spec = spec_from_v1_class("KSampler", KSamplerLike)
    result = spec.normalize_result(
        spec.run(spec.create_instance(), {"model": "m", "seed": 3, "sampler_name": "euler", "scheduler": "normal"})
    )
    assert result.values == (("m", 3, "euler", "normal", 1.0, None),)


def test_hooks_receive_only_the_arguments_they_declare() -> None:
    seen = {}

    class Hooked:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"a": ("INT", {}), "b": ("STRING", {})}}

        RETURN_TYPES = ()
        FUNCTION = "go"
        OUTPUT_NODE = True

        @classmethod
        def IS_CHANGED(cls, a):
            return a * 2

        @classmethod
        def VALIDATE_INPUTS(cls, b, input_types):
            seen["types"] = input_types
            return b == "ok" or "b must be ok"

        def go(self, a, b):
            return {"ui": {"text": [b]}}

    spec = spec_from_v1_class("Hooked", Hooked)
    assert spec.fingerprint({"a": 4, "b": "x"}) == 8
    assert spec.validate({"a": 1, "b": "ok"}, {"a": "INT"}) is True
    assert seen["types"] == {"a": "INT"}
    assert spec.validate({"b": "no"}, None) == "b must be ok"
    assert spec.validate_takes == frozenset({"b"}) and spec.validate_wants_types
    assert spec.output_node
    assert spec.normalize_result(spec.run(Hooked(), {"a": 1, "b": "hi"})).ui == {"text": ["hi"]}


def test_lists_and_lazy_status_are_read() -> None:
    class Switch:
        INPUT_IS_LIST = True
        OUTPUT_IS_LIST = (True,)

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"on": ("BOOLEAN", {}), "a": ("*", {"lazy": True}), "b": ("*", {"lazy": True})}}

        RETURN_TYPES = ("*",)
        FUNCTION = "pick"

        def check_lazy_status(self, on, a=None, b=None):
            return ["a"] if on else ["b"]

        def pick(self, on, a=None, b=None):
            return (a if on else b,)

    spec = spec_from_v1_class("Switch", Switch)
    assert spec.input_is_list and spec.outputs[0].is_list
    assert spec.input_map()["a"].lazy
    assert spec.lazy_status(Switch(), {"on": True, "a": None, "b": None}) == ["a"]


def test_a_class_without_the_required_attributes_is_refused() -> None:
    class Broken:
        RETURN_TYPES = ("INT",)

    with pytest.raises(NodeDefinitionError, match="Broken lacks INPUT_TYPES"):
        spec_from_v1_class("Broken", Broken)


def test_every_return_shape_is_normalised() -> None:
    spec = spec_from_v1_class("KSampler", KSamplerLike)
    assert spec.normalize_result(["x"]).values == ("x",)
    assert spec.normalize_result({"result": ("x",), "ui": {"a": [1]}}).ui == {"a": [1]}
    blocker = ExecutionBlocker("stop")
    assert spec.normalize_result(blocker).values == (blocker,)
    with pytest.raises(NodeReturnError, match="2 values for 1 outputs"):
        spec.normalize_result(("x", "y"))
    with pytest.raises(NodeReturnError, match="expected a tuple"):
        spec.normalize_result(42)
