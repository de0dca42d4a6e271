"""Typed validation errors render the docs/compatibility.md §1.3 wire dicts clients read."""

from graph.errors import (
    BadLinkedInput,
    DependencyCycle,
    InvalidInputType,
    PromptError,
    RequiredInputMissing,
    ReturnTypeMismatch,
    SchemaError,
    SchemaIssue,
    UnknownNode,
    UnknownNodeTypeError,
    ValueNotInList,
    ValueSmallerThanMin,
    node_errors_to_wire,
)

WHERE = {"node_id": "4", "class_type": "CheckpointLoaderSimple", "input_name": "ckpt_name"}


def test_every_error_has_the_four_wire_keys() -> None:
    errors = [
        RequiredInputMissing(**WHERE),
        BadLinkedInput(**WHERE, received_value=["9", 0], reason="node '9' is not in the prompt"),
        InvalidInputType(**WHERE, received_value="x", input_type="INT", reason="invalid literal"),
        ValueSmallerThanMin(**WHERE, received_value=0, minimum=1),
        DependencyCycle(node_id="1", class_type="Loop", cycle=("1", "2")),
    ]
    for error in errors:
        wire = error.to_wire()
        assert set(wire) == {"type", "message", "details", "extra_info"}
        assert wire["type"] == type(error).type
        assert isinstance(wire["message"], str) and wire["message"]


def test_value_not_in_list_matches_the_documented_example() -> None:
    error = ValueNotInList(
        **WHERE, input_config=[["a.safetensors"]], received_value="x.safetensors", choices=("a.safetensors",)
    )
    assert error.to_wire() == {
        "type": "value_not_in_list",
        "message": "Value not in list",
        "details": "ckpt_name: 'x.safetensors' not in ['a.safetensors']",
        "extra_info": {
            "input_name": "ckpt_name",
            "input_config": [["a.safetensors"]],
            "received_value": "x.safetensors",
        },
    }


def test_return_type_mismatch_carries_the_linked_node() -> None:
    error = ReturnTypeMismatch(
        node_id="8",
        class_type="VAEDecode",
        input_name="vae",
        received_type="CLIP",
        input_type="VAE",
        linked_node=("4", 1),
        linked_class_type="CheckpointLoaderSimple",
    )
    extra = error.to_wire()["extra_info"]
    assert (extra["received_type"], extra["linked_node"], extra["input_name"]) == ("CLIP", ["4", 1], "vae")


def test_node_errors_group_per_node_with_dependent_outputs() -> None:
    first = RequiredInputMissing(node_id="3", class_type="KSampler", input_name="steps")
    second = RequiredInputMissing(node_id="3", class_type="KSampler", input_name="cfg")
    wire = node_errors_to_wire([first, second], {"3": ["9"]})
    assert wire == {
        "3": {"errors": [first.to_wire(), second.to_wire()], "dependent_outputs": ["9"], "class_type": "KSampler"}
    }


def test_outputs_failed_lists_each_problem_once_per_line() -> None:
    error = RequiredInputMissing(node_id="3", class_type="KSampler", input_name="steps")
    wire = PromptError.outputs_failed([error, error]).to_wire()
    assert wire["type"] == "prompt_outputs_failed_validation"
    assert wire["details"] == "Required input is missing: steps"


def test_unknown_node_type_error_names_node_and_type() -> None:
    error = UnknownNodeTypeError([UnknownNode("12:5", "FancySampler")])
    assert (error.node_id, error.class_type) == ("12:5", "FancySampler")
    assert "node 12:5 (FancySampler)" in str(error)


def test_schema_error_message_points_at_paths() -> None:
    error = SchemaError("workflow_v04", [SchemaIssue("nodes[3].widgets_values", "5 is not of type 'array'")])
    assert "nodes[3].widgets_values: 5 is not of type 'array'" in str(error)
