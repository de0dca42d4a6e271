"""Loom's declarative node API gives the same spec and /object_info entry as a V1 class."""

import pytest

from graph.declare import Boolean, Combo, Float, Hidden, Int, NodeOutput, Output, Socket, String, node, spec_of
from graph.spec import NodeDefinitionError
from graph.v1 import spec_from_v1_class


@node(category="image/transform", outputs=[Output("IMAGE")], display_name="Upscale Image By")
def ImageScaleBy(
    image=Socket("IMAGE"),
    upscale_method=Combo(["nearest-exact", "bilinear"]),
    scale_by=Float(1.0, min=0.01, max=8.0, step=0.01),
):
    """Resize an image by a factor."""
    return (image, upscale_method, scale_by)


class ImageScaleByV1:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE",),
                "upscale_method": (["nearest-exact", "bilinear"],),
                "scale_by": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 8.0, "step": 0.01}),
            }
        }

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "image/transform"
    DESCRIPTION = "Resize an image by a factor."


def test_declarative_and_v1_forms_serve_the_same_object_info() -> None:
    declarative = spec_of(ImageScaleBy).object_info()
    v1 = spec_from_v1_class(
        "ImageScaleBy", ImageScaleByV1, display_name="Upscale Image By", python_module=declarative["python_module"]
    ).object_info()
    assert declarative == v1


def test_the_decorated_function_stays_callable() -> None:
    assert ImageScaleBy(image=1, upscale_method="bilinear", scale_by=2.0) == (1, "bilinear", 2.0)


def test_one_output_returns_the_bare_value() -> None:
    result = spec_of(ImageScaleBy).run(None, {"image": "img", "upscale_method": "bilinear", "scale_by": 2.0})
    assert result.values == (("img", "bilinear", 2.0),)


def test_widget_declarations_carry_their_options() -> None:
    @node(outputs=[Output("INT"), Output("STRING", name="label")], output_node=True)
    def Widgets(
        seed=Int(0, min=0, max=2**64 - 1, control_after_generate=True),
        text=String("", multiline=True, dynamic_prompts=True),
        flag=Boolean(False, label_on="yes", label_off="no"),
        mask=Socket("MASK", optional=True),
        prompt=Hidden("PROMPT"),
    ):
        return NodeOutput(seed, text, ui={"text": [text]})

    info = spec_of(Widgets).object_info()
    assert info["input"]["required"]["seed"] == [
        "INT",
        {"default": 0, "min": 0, "max": 2**64 - 1, "control_after_generate": True},
    ]
    assert info["input"]["required"]["text"] == ["STRING", {"default": "", "multiline": True, "dynamicPrompts": True}]
    assert info["input"]["required"]["flag"] == ["BOOLEAN", {"default": False, "label_on": "yes", "label_off": "no"}]
    assert info["input"]["optional"]["mask"] == ["MASK"]
    assert info["input"]["hidden"] == {"prompt": "PROMPT"}
    assert info["output_name"] == ["INT", "label"]
    result = spec_of(Widgets).run(None, {"seed": 5, "text": "hi", "flag": True})
    assert result.values == (5, "hi") and result.ui == {"text": ["hi"]}


def test_dynamic_combo_choices_are_computed_when_asked() -> None:
    files = ["a.safetensors"]

    @node(outputs=[Output("MODEL")])
    def Loader(ckpt_name=Combo(lambda: list(files))):
        return ckpt_name

    assert spec_of(Loader).input_map()["ckpt_name"].choices == ("a.safetensors",)
    files.append("b.safetensors")
    assert spec_of(Loader).input_map()["ckpt_name"].choices == ("a.safetensors", "b.safetensors")


def test_hooks_take_inputs_by_name() -> None:
    @node(
        outputs=[Output("*")],
        fingerprint=lambda path: f"hash-of-{path}",
        validate=lambda path: path.endswith(".png") or f"not a png: {path}",
        lazy_status=lambda use_a, a=None: ["a"] if use_a and a is None else [],
    )
    def Hooked(path=String(), use_a=Boolean(True), a=Socket("*", lazy=True, optional=True)):
        return a

    spec = spec_of(Hooked)
    assert spec.fingerprint({"path": "x.png", "use_a": True}) == "hash-of-x.png"
    assert spec.validate({"path": "x.jpg"}, None) == "not a png: x.jpg"
    assert spec.validate_takes == frozenset({"path"})
    assert spec.lazy_status(None, {"use_a": True, "a": None, "path": "p"}) == ["a"]
    assert spec.input_map()["a"].lazy


def test_a_parameter_without_a_declaration_is_refused() -> None:
    with pytest.raises(NodeDefinitionError, match="parameter 'x' needs an input declaration"):

        @node(outputs=[Output("INT")])
        def Bad(x=3):
            return x


def test_absent_optional_inputs_arrive_as_their_default_or_none() -> None:
    @node(outputs=[Output("*")])
    def Optional_(mask=Socket("MASK", optional=True), strength=Float(0.5, optional=True)):
        return (mask, strength)

    assert spec_of(Optional_).run(None, {}).values == ((None, 0.5),)
