"""``comfy_api.latest``: V3 schemas become the V1 attributes ComfyUI derives, and ``execute`` the V1 return.

The expected V1 entries follow ComfyUI's ``comfy_api/latest/_io.py``: each input's ``as_dict()``
(arguments left at ``None`` omitted, wire names such as ``forceInput``), ``optional`` moved to its
section, hidden values as ``(KIND,)`` keyed by member name, output nodes given ``prompt`` and
``extra_pnginfo``.
"""

from __future__ import annotations

import asyncio
import importlib
from enum import Enum
from typing import Any

import pytest

from graph.spec import ExecutionBlocker
from graph.v1 import spec_from_v1_class


class Sampler(Enum):
    euler = "euler"
    heun = "heun"


def test_the_imports_v3_packs_write_work() -> None:
    from comfy_api.latest import IO, UI, ComfyExtension, io, ui
    from comfy_api.latest._io import ComfyTypeIO, NodeOutput, Schema, _UIOutput, comfytype
    from comfy_api.v0_0_2 import IO as pinned_io
    from comfy_api.v0_0_2 import ComfyExtension as PinnedExtension

    assert IO is io and UI is ui and pinned_io is io and PinnedExtension is ComfyExtension
    assert NodeOutput is io.NodeOutput and Schema is io.Schema and _UIOutput is io._UIOutput
    assert comfytype is io.comfytype and ComfyTypeIO is io.ComfyTypeIO
    assert importlib.import_module("comfy_api.latest._ui").PreviewText is ui.PreviewText


def test_widget_inputs_become_comfyuis_v1_entries() -> None:
    from comfy_api.latest import io

    inputs = [
        io.Int.Input("seed", default=0, min=0, max=2**32, control_after_generate=True),
        io.Int.Input("steps", display_name="Steps", default=20, display_mode=io.NumberDisplay.slider, advanced=True),
        io.Float.Input("cfg", default=8.0, step=0.1, round=0.01),
        io.String.Input("text", multiline=True, placeholder="prompt", dynamic_prompts=True),
        io.String.Input("wired", force_input=True, lazy=True),
        io.Boolean.Input("on", default=True, label_on="yes", label_off="no", optional=True),
        io.Combo.Input("sampler", options=Sampler, default=Sampler.heun, tooltip="Which sampler."),
        io.Combo.Input("image", options=["a.png"], upload=io.UploadType.image, image_folder=io.FolderType.input),
        io.Combo.Input("mode", options=["x", "y"], control_after_generate=io.ControlAfterGenerate.randomize),
        io.Image.Input("pixels", optional=True),
        io.Custom("MY_POINTS").Input("points", raw_link=True, extra_dict={"shape": "dots", "unset": None}),
        io.AnyType.Input("anything"),
        io.MultiType.Input(io.Float.Input("strength", default=1.0), types=[io.Int, io.Mask]),
    ]
    schema = io.Schema("Everything", inputs=inputs, hidden=[io.Hidden.unique_id, io.Hidden.dynprompt])
    assert schema.v1_input_types() == {
        "required": {
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**32, "control_after_generate": True}),
            "steps": ("INT", {"display_name": "Steps", "advanced": True, "default": 20, "display": "slider"}),
            "cfg": ("FLOAT", {"default": 8.0, "step": 0.1, "round": 0.01}),
            "text": ("STRING", {"multiline": True, "placeholder": "prompt", "dynamicPrompts": True}),
            "wired": ("STRING", {"lazy": True, "forceInput": True, "multiline": False}),
            "sampler": (
                "COMBO",
                {"tooltip": "Which sampler.", "default": "heun", "multiselect": False, "options": ["euler", "heun"]},
            ),
            "image": (
                "COMBO",
                {"multiselect": False, "options": ["a.png"], "image_upload": True, "image_folder": "input"},
            ),
            "mode": ("COMBO", {"multiselect": False, "options": ["x", "y"], "control_after_generate": "randomize"}),
            "points": ("MY_POINTS", {"rawLink": True, "shape": "dots"}),
            "anything": ("*", {}),
            "strength": ("FLOAT,INT,MASK", {"default": 1.0, "widgetType": "FLOAT"}),
        },
        "optional": {
            "on": ("BOOLEAN", {"default": True, "label_on": "yes", "label_off": "no"}),
            "pixels": ("IMAGE", {}),
        },
        "hidden": {"unique_id": ("UNIQUE_ID",), "dynprompt": ("DYNPROMPT",)},
    }


def test_types_keep_their_own_input_and_output_classes() -> None:
    from comfy_api.latest import io

    @io.comfytype(io_type="MY_MESH")
    class Mesh(io.ComfyTypeIO):
        pass

    assert isinstance(io.Image.Input("a"), io.Image.Input) and not isinstance(io.Image.Input("a"), io.Mask.Input)
    assert Mesh.Input("m").get_io_type() == "MY_MESH" and Mesh.Output().io_type == "MY_MESH"
    assert io.Mask.Output().io_type == "MASK" and io.Image.io_type == "IMAGE"
    assert io.Custom("A").Input("x").get_io_type() == "A" and io.Custom("B").Input("x").get_io_type() == "B"


def _blend() -> Any:
    """A V3 node class, defined once ``comfy_api`` is importable (the conftest installs it)."""
    from comfy_api.latest import io, ui

    class Blend(io.ComfyNode):
        @classmethod
        def define_schema(cls) -> io.Schema:
            return io.Schema(
                node_id="Blend",
                category="image/blend",
                inputs=[io.Float.Input("amount", default=0.5), io.String.Input("prompt", default="")],
                outputs=[io.Float.Output("half"), io.Float.Output(display_name="double", is_output_list=True)],
                is_output_node=True,
                is_input_list=False,
                not_idempotent=True,
            )

        @classmethod
        def execute(cls, amount: float, prompt: str) -> io.NodeOutput:
            text = f"{prompt}{amount} by {cls.hidden.unique_id} in {cls.hidden.prompt}"
            return io.NodeOutput(amount / 2, [amount * 2], ui=ui.PreviewText(text))

    return Blend


def test_the_v1_attributes_come_from_the_schema() -> None:
    blend = _blend()
    assert blend.RETURN_TYPES == ("FLOAT", "FLOAT") and blend.RETURN_NAMES == ("half", "double")
    assert blend.OUTPUT_IS_LIST == (False, True) and blend.OUTPUT_TOOLTIPS == ()
    assert (blend.CATEGORY, blend.DESCRIPTION, blend.OUTPUT_NODE) == ("image/blend", "", True)
    assert (blend.NOT_IDEMPOTENT, blend.INPUT_IS_LIST, blend.DEPRECATED, blend.EXPERIMENTAL) == (
        True,
        False,
        False,
        False,
    )
    assert blend.FUNCTION == "EXECUTE_NORMALIZED"
    assert not hasattr(blend, "IS_CHANGED") and not hasattr(blend, "VALIDATE_INPUTS"), "only where defined"
    # An output node gets the prompt and the PNG info; "prompt" is taken by an input, so it is renamed.
    assert blend.INPUT_TYPES()["hidden"] == {"hidden_prompt": ("PROMPT",), "extra_pnginfo": ("EXTRA_PNGINFO",)}


def test_execute_gets_hidden_values_through_cls_hidden_and_returns_the_v1_shape() -> None:
    blend = _blend()
    spec = spec_from_v1_class("Blend", blend)
    raw = spec.run(spec.create_instance(), {"amount": 3.0, "prompt": "p:", "hidden_prompt": {"1": {}}})
    assert raw == {"result": (1.5, [6.0]), "ui": {"text": ["p:3.0 by None in {'1': {}}"]}}
    assert blend.hidden is None


@pytest.mark.parametrize(
    ("returned", "expected"),
    [
        (None, {"result": ()}),
        ((1, 2), {"result": (1, 2)}),
        ({"result": (3,), "ui": {"text": ("t",)}}, {"result": (3,), "ui": {"text": ["t"]}}),
        ("blocked", {"result": ExecutionBlocker}),
    ],
)
def test_every_return_shape_comfyui_accepts_is_normalised(returned: object, expected: dict) -> None:
    from comfy_api.latest import io

    class Returns(io.ComfyNode):
        @classmethod
        def define_schema(cls) -> io.Schema:
            return io.Schema("Returns", outputs=[io.Int.Output(), io.Int.Output()])

        @classmethod
        def execute(cls) -> object:
            return io.NodeOutput(block_execution="stop") if returned == "blocked" else returned

    result = Returns.EXECUTE_NORMALIZED()
    if expected["result"] is ExecutionBlocker:
        assert isinstance(result["result"], ExecutionBlocker) and result["result"].message == "stop"
    else:
        assert result == expected


def test_async_execute_and_an_expansion_needs_enable_expand() -> None:
    from comfy_api.latest import io

    class Expands(io.ComfyNode):
        @classmethod
        def define_schema(cls) -> io.Schema:
            return io.Schema("Expands", outputs=[io.Int.Output()])

        @classmethod
        async def execute(cls) -> io.NodeOutput:
            return io.NodeOutput(["n1", 0], expand={"n1": {"class_type": "X", "inputs": {}}})

    assert Expands.FUNCTION == "EXECUTE_NORMALIZED_ASYNC"
    with pytest.raises(ValueError, match="enable_expand=True"):
        asyncio.run(Expands.EXECUTE_NORMALIZED_ASYNC())


def test_an_execution_blocker_returned_is_passed_on() -> None:
    from comfy_api.latest import io

    class Blocks(io.ComfyNode):
        @classmethod
        def define_schema(cls) -> io.Schema:
            return io.Schema("Blocks", outputs=[io.Int.Output()])

        @classmethod
        def execute(cls) -> ExecutionBlocker:
            return ExecutionBlocker(None)

    blocker = Blocks.EXECUTE_NORMALIZED()
    assert isinstance(blocker, ExecutionBlocker) and blocker.message is None


def test_hooks_answer_as_their_v1_names_with_their_own_signatures() -> None:
    from comfy_api.latest import io

    class Hooked(io.ComfyNode):
        @classmethod
        def define_schema(cls) -> io.Schema:
            return io.Schema("Hooked", inputs=[io.String.Input("path"), io.Int.Input("n", default=1)])

        @classmethod
        def execute(cls, path: str, n: int) -> io.NodeOutput:
            return io.NodeOutput()

        @classmethod
        def validate_inputs(cls, path: str) -> bool | str:
            return path.endswith(".txt") or f"{path} is not a .txt file"

        @classmethod
        def fingerprint_inputs(cls, path: str, n: int) -> str:
            return f"{path}#{n}#{cls.hidden.unique_id}"

    spec = spec_from_v1_class("Hooked", Hooked)
    assert spec.validate_takes == frozenset({"path"})
    assert spec.validate is not None and spec.validate({"path": "a.png", "n": 1}, None) == "a.png is not a .txt file"
    assert spec.fingerprint is not None and spec.fingerprint({"path": "a.txt", "n": 2}) == "a.txt#2#None"


def test_a_schema_with_repeated_ids_is_refused() -> None:
    from comfy_api.latest import io

    schema = io.Schema("Twice", inputs=[io.Int.Input("a"), io.Int.Input("a")], outputs=[io.Int.Output("o")] * 2)
    with pytest.raises(ValueError, match=r"Input ids must be unique, but \['a'\] are not") as raised:
        schema.validate()
    assert "Output ids must be unique, but ['o'] are not" in str(raised.value)


def test_remote_combos_are_refused_by_name() -> None:
    from comfy_api.latest import io

    with pytest.raises(NotImplementedError, match="remote combos"):
        io.Combo.Input("voice", remote=object())
