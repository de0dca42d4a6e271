"""Editor workflows (v0.4 and v1) convert to the API prompt the frontend's graphToPrompt would send."""

import copy
import json
from pathlib import Path

import pytest

from graph.declare import Combo, Int, Output, Socket, spec_of
from graph.declare import node as declare_node
from graph.errors import NodeInputsUnavailableError, UnknownNodeTypeError, WorkflowFormatError
from graph.formats.editor import editor_to_api
from graph.registry import NodeRegistry
from graph.v1 import spec_from_v1_class
from tests.graph.formats.fixtures.sd15_nodes import sd15_registry

FIXTURES = Path(__file__).parent / "fixtures"


def load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


@pytest.fixture(scope="module")
def registry():
    return sd15_registry()


@pytest.mark.parametrize(
    ("workflow", "expected"),
    [
        ("default_v04.json", "default.api.json"),
        ("groups_v1.json", "default.api.json"),
        ("reroute_primitive_v04.json", "reroute_primitive.api.json"),
        ("muted_bypassed_v04.json", "muted_bypassed.api.json"),
        ("subgraph_v04.json", "subgraph.api.json"),
    ],
)
def test_fixture_converts_to_the_hand_written_prompt(registry, workflow, expected) -> None:
    conversion = editor_to_api(load(workflow), registry)
    assert conversion.prompt == load(expected)
    assert conversion.warnings == []


def node(workflow: dict, node_id: int) -> dict:
    return next(n for n in workflow["nodes"] if n["id"] == node_id)


def test_control_after_generate_value_is_skipped_only_where_the_spec_declares_it(registry) -> None:
    workflow = load("default_v04.json")
    # Only the seed's control value is stepped over; every other value lands on its own widget.
    node(workflow, 3)["widgets_values"] = [7, "increment", 30, 6.5, "dpmpp_2m", "karras", 0.5]
    inputs = editor_to_api(workflow, registry).prompt["3"]["inputs"]
    assert (
        inputs["seed"],
        inputs["steps"],
        inputs["cfg"],
        inputs["sampler_name"],
        inputs["scheduler"],
        inputs["denoise"],
    ) == (7, 30, 6.5, "dpmpp_2m", "karras", 0.5)


def test_a_file_without_the_control_value_still_lines_up(registry) -> None:
    workflow = load("default_v04.json")
    node(workflow, 3)["widgets_values"] = [7, 30, 6.5, "dpmpp_2m", "karras", 0.5]
    inputs = editor_to_api(workflow, registry).prompt["3"]["inputs"]
    assert (inputs["seed"], inputs["steps"], inputs["cfg"], inputs["denoise"]) == (7, 30, 6.5, 0.5)


def test_an_undeclared_control_value_after_an_int_is_recognised() -> None:
    @declare_node(outputs=[Output("INT")])
    def Noise(noise_seed=Int(0), steps=Int(1)):
        """A custom node whose seed does not declare control_after_generate."""

    registry = NodeRegistry()
    registry.register(spec_of(Noise))
    workflow = {"nodes": [{"id": 1, "type": "Noise", "mode": 0, "widgets_values": [99, "randomize", 4]}], "links": []}
    assert editor_to_api(workflow, registry).prompt["1"]["inputs"] == {"noise_seed": 99, "steps": 4}


def test_a_control_word_that_the_next_combo_offers_is_kept(registry) -> None:
    @declare_node(outputs=[Output("INT")])
    def Stepper(count=Int(0), direction=Combo(["increment", "decrement"])):
        """'increment' here is a real combo value, not a control value."""

    registry = NodeRegistry()
    registry.register(spec_of(Stepper))
    workflow = {"nodes": [{"id": 1, "type": "Stepper", "mode": 0, "widgets_values": [3, "increment"]}], "links": []}
    assert editor_to_api(workflow, registry).prompt["1"]["inputs"] == {"count": 3, "direction": "increment"}


def test_the_upload_buttons_value_after_the_required_widgets_is_skipped() -> None:
    @declare_node(outputs=[Output("IMAGE")])
    def LoadPicture(image=Combo(["x.png"], image_upload=True), channel=Combo(["alpha"]), scale=Int(optional=True)):
        """Saved by the frontend as [image, channel, "image", scale]: the button follows the required widgets."""

    registry = NodeRegistry()
    registry.register(spec_of(LoadPicture))
    values = ["x.png", "alpha", "image", 3]
    workflow = {"nodes": [{"id": 1, "type": "LoadPicture", "mode": 0, "widgets_values": values}], "links": []}
    assert editor_to_api(workflow, registry).prompt["1"]["inputs"] == {"image": "x.png", "channel": "alpha", "scale": 3}


def test_socket_types_the_client_draws_as_widgets_take_their_widget_value() -> None:
    @declare_node(outputs=[Output("IMAGE")])
    def Tint(image=Socket("IMAGE"), color=Socket("MY_COLOR"), strength=Int(1)):
        """An editor extension draws MY_COLOR as a widget, so its value sits in widgets_values."""

    registry = NodeRegistry()
    registry.register(spec_of(Tint))
    tint = {"id": 1, "type": "Tint", "mode": 0, "inputs": [{"name": "image", "type": "IMAGE", "link": None}]}
    workflow = {"nodes": [{**tint, "widgets_values": ["#336699", 2]}], "links": []}
    inputs = editor_to_api(workflow, registry, widget_types={"MY_COLOR"}).prompt["1"]["inputs"]
    assert inputs == {"color": "#336699", "strength": 2}


def test_widgets_values_named_is_preferred_over_positions(registry) -> None:
    workflow = load("default_v04.json")
    sampler = node(workflow, 3)
    sampler["widgets_values_named"] = {
        "seed": 5,
        "control_after_generate": "fixed",
        "steps": 9,
        "cfg": 2,
        "sampler_name": "euler",
        "scheduler": "simple",
        "denoise": 0.3,
    }
    inputs = editor_to_api(workflow, registry).prompt["3"]["inputs"]
    assert (inputs["seed"], inputs["steps"], inputs["scheduler"], inputs["denoise"]) == (5, 9, "simple", 0.3)


def test_a_wired_widget_keeps_its_slot_in_widgets_values(registry) -> None:
    # reroute_primitive: KSampler's seed is wired to a PrimitiveNode, yet widgets_values still starts
    # with the stale seed and its control value; steps must still read 20, not the stale 42.
    inputs = editor_to_api(load("reroute_primitive_v04.json"), registry).prompt["3"]["inputs"]
    assert inputs["seed"] == 1234 and inputs["steps"] == 20


def test_socket_only_widget_types_own_no_widget_slot(registry) -> None:
    workflow = {
        "nodes": [
            {
                "id": 1,
                "type": "JoinStrings",
                "mode": 0,
                "inputs": [{"name": "parts", "type": "STRING", "link": None}],
                "widgets_values": [" | "],
            }
        ],
        "links": [],
    }
    assert editor_to_api(workflow, registry).prompt["1"]["inputs"] == {"separator": " | "}


def test_missing_widget_values_fall_back_to_defaults_with_a_warning(registry) -> None:
    workflow = load("default_v04.json")
    node(workflow, 5)["widgets_values"] = [768]
    conversion = editor_to_api(workflow, registry)
    assert conversion.prompt["5"]["inputs"] == {"width": 768, "height": 512, "batch_size": 1}
    assert any("'height'" in warning and "5" in warning for warning in conversion.warnings)


def test_list_values_are_wrapped_so_they_are_not_read_as_links(registry) -> None:
    workflow = load("default_v04.json")
    node(workflow, 9)["widgets_values"] = [["a", "b"]]
    assert editor_to_api(workflow, registry).prompt["9"]["inputs"]["filename_prefix"] == {"__value__": ["a", "b"]}


def test_bypass_chains_pass_through_by_type(registry) -> None:
    workflow = load("muted_bypassed_v04.json")
    # A second bypassed LoRA after the first: consumers must reach the checkpoint through both.
    second = copy.deepcopy(node(workflow, 10))
    second.update(
        id=20, inputs=[{"name": "model", "type": "MODEL", "link": 30}, {"name": "clip", "type": "CLIP", "link": 31}]
    )
    second["outputs"] = [
        {"name": "MODEL", "type": "MODEL", "links": [1]},
        {"name": "CLIP", "type": "CLIP", "links": [3]},
    ]
    workflow["nodes"].append(second)
    links = [link for link in workflow["links"] if link[0] not in (1, 3)]
    links += [
        [30, 10, 0, 20, 0, "MODEL"],
        [31, 10, 1, 20, 1, "CLIP"],
        [1, 20, 0, 3, 0, "MODEL"],
        [3, 20, 1, 6, 0, "CLIP"],
    ]
    workflow["links"] = links
    prompt = editor_to_api(workflow, registry).prompt
    assert prompt["3"]["inputs"]["model"] == ["4", 0]
    assert prompt["6"]["inputs"]["clip"] == ["4", 1]
    assert "10" not in prompt and "20" not in prompt


def test_subgraph_with_proxy_widgets_uses_the_inner_widget_values(registry) -> None:
    workflow = load("subgraph_v04.json")
    instance = node(workflow, 10)
    instance["widgets_values"] = []
    instance["properties"] = {"proxyWidgets": [["1", "text"], ["2", "text"]]}
    prompt = editor_to_api(workflow, registry).prompt
    assert prompt["10:1"]["inputs"]["text"] == ""
    assert prompt["10:2"]["inputs"]["text"] == "low quality"


def test_a_linked_subgraph_input_follows_the_outer_link(registry) -> None:
    workflow = load("subgraph_v04.json")
    workflow["nodes"].append(
        {
            "id": 11,
            "type": "PrimitiveNode",
            "mode": 0,
            "outputs": [{"name": "STRING", "type": "STRING", "links": [20]}],
            "widgets_values": ["from outside"],
        }
    )
    node(workflow, 10)["inputs"][1]["link"] = 20
    workflow["links"].append([20, 11, 0, 10, 1, "STRING"])
    assert editor_to_api(workflow, registry).prompt["10:1"]["inputs"]["text"] == "from outside"


def test_nested_subgraphs_get_colon_path_ids(registry) -> None:
    workflow = load("subgraph_v04.json")
    inner = workflow["definitions"]["subgraphs"][0]
    outer = copy.deepcopy(inner)
    outer.update(id="0c0c0c0c-0000-4000-8000-00000000000f", name="Wrapper")
    # The wrapper holds one instance (id 7) of the prompt pair and exposes its inputs and outputs.
    outer["nodes"] = [
        {
            "id": 7,
            "type": inner["id"],
            "mode": 0,
            "inputs": [
                {"name": "clip", "type": "CLIP", "link": 1},
                {"name": "positive", "type": "STRING", "widget": {"name": "positive"}, "link": 3},
                {"name": "negative", "type": "STRING", "widget": {"name": "negative"}, "link": 4},
            ],
            "outputs": [
                {"name": "positive", "type": "CONDITIONING", "links": [5]},
                {"name": "negative", "type": "CONDITIONING", "links": [6]},
            ],
            "widgets_values": ["unused", "unused"],
        }
    ]
    outer["links"] = [
        {"id": 1, "origin_id": -10, "origin_slot": 0, "target_id": 7, "target_slot": 0, "type": "CLIP"},
        {"id": 3, "origin_id": -10, "origin_slot": 1, "target_id": 7, "target_slot": 1, "type": "STRING"},
        {"id": 4, "origin_id": -10, "origin_slot": 2, "target_id": 7, "target_slot": 2, "type": "STRING"},
        {"id": 5, "origin_id": 7, "origin_slot": 0, "target_id": -20, "target_slot": 0, "type": "CONDITIONING"},
        {"id": 6, "origin_id": 7, "origin_slot": 1, "target_id": -20, "target_slot": 1, "type": "CONDITIONING"},
    ]
    workflow["definitions"]["subgraphs"].append(outer)
    node(workflow, 10)["type"] = outer["id"]
    prompt = editor_to_api(workflow, registry).prompt
    assert prompt["10:7:1"]["inputs"] == {"text": "a photo of a cat", "clip": ["4", 1]}
    assert prompt["10:7:2"]["inputs"] == {"text": "blurry", "clip": ["4", 1]}
    assert prompt["3"]["inputs"]["positive"] == ["10:7:1", 0]


def test_a_subgraph_that_contains_itself_is_refused(registry) -> None:
    workflow = load("subgraph_v04.json")
    definition = workflow["definitions"]["subgraphs"][0]
    definition["nodes"].append({"id": 3, "type": definition["id"], "mode": 0})
    with pytest.raises(WorkflowFormatError, match="contains itself"):
        editor_to_api(workflow, registry)


def test_unknown_node_types_are_all_named(registry) -> None:
    workflow = load("default_v04.json")
    node(workflow, 5)["type"] = "FancyLatent"
    node(workflow, 8)["type"] = "FancyDecode"
    with pytest.raises(UnknownNodeTypeError) as raised:
        editor_to_api(workflow, registry)
    assert [(n.node_id, n.class_type) for n in raised.value.nodes] == [("5", "FancyLatent"), ("8", "FancyDecode")]
    assert "node 5 (FancyLatent)" in str(raised.value)


def test_unknown_types_that_never_run_are_not_errors(registry) -> None:
    workflow = load("muted_bypassed_v04.json")
    node(workflow, 11)["type"] = "SomePluginPreview"  # muted
    node(workflow, 14)["type"] = "MarkdownNote"
    assert "11" not in editor_to_api(workflow, registry).prompt


def test_an_unknown_type_inside_a_subgraph_is_named_by_its_path(registry) -> None:
    workflow = load("subgraph_v04.json")
    workflow["definitions"]["subgraphs"][0]["nodes"][1]["type"] = "Mystery"
    with pytest.raises(UnknownNodeTypeError) as raised:
        editor_to_api(workflow, registry)
    assert raised.value.node_id == "10:2"


def test_a_broken_link_entry_points_at_its_path(registry) -> None:
    workflow = load("default_v04.json")
    workflow["links"][4] = [5, "x"]
    with pytest.raises(WorkflowFormatError) as raised:
        editor_to_api(workflow, registry)
    assert raised.value.path == "links[4]"


def test_a_dangling_link_drops_the_input_with_a_warning(registry) -> None:
    workflow = load("default_v04.json")
    workflow["links"] = [link for link in workflow["links"] if link[0] != 8]
    conversion = editor_to_api(workflow, registry)
    assert "vae" not in conversion.prompt["8"]["inputs"]
    assert any("link 8" in warning for warning in conversion.warnings)


def test_a_node_type_that_cannot_list_its_inputs_is_named() -> None:
    class Broken:
        @classmethod
        def INPUT_TYPES(cls):
            raise OSError("models folder missing")

        RETURN_TYPES = ()
        FUNCTION = "run"

    registry = NodeRegistry()
    registry.register(spec_from_v1_class("Broken", Broken))
    workflow = {"nodes": [{"id": 2, "type": "Broken", "mode": 0}], "links": []}
    with pytest.raises(NodeInputsUnavailableError) as raised:
        editor_to_api(workflow, registry)
    assert (raised.value.node_id, raised.value.class_type) == ("2", "Broken")
    assert "models folder missing" in str(raised.value)
