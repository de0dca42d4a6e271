"""The JSON Schemas accept every fixture and point at the broken part of a broken document."""

import copy
import json
from pathlib import Path

import pytest

from graph.errors import SchemaError
from graph.formats.schema import check_document, json_path, schema_for, schema_issues

FIXTURES = Path(__file__).parent / "fixtures"


def load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


@pytest.mark.parametrize(
    ("name", "schema"),
    [
        ("default_v04.json", "workflow_v04"),
        ("reroute_primitive_v04.json", "workflow_v04"),
        ("muted_bypassed_v04.json", "workflow_v04"),
        ("subgraph_v04.json", "workflow_v04"),
        ("groups_v1.json", "workflow_v1"),
        ("default.api.json", "api_prompt"),
        ("subgraph.api.json", "api_prompt"),
    ],
)
def test_fixtures_pass_their_schema(name, schema) -> None:
    document = load(name)
    assert schema_for(document) == schema
    assert schema_issues(document) == []


def test_unknown_keys_are_allowed_everywhere() -> None:
    document = load("default_v04.json")
    document["extra"]["someExtension"] = {"anything": [1, 2]}
    document["nodes"][0]["bgcolor"] = "#353"
    document["nodes"][0]["inputs"][0]["shape"] = 7
    check_document(document)


def test_a_broken_workflow_names_each_offending_path() -> None:
    document = load("default_v04.json")
    document["nodes"][3]["widgets_values"] = 5
    document["links"][2][2] = "one"
    del document["nodes"][10 - 9]["id"]
    paths = [issue.path for issue in schema_issues(document)]
    assert paths == ["links[2][2]", "nodes[1]", "nodes[3].widgets_values"]


def test_check_document_raises_with_every_issue() -> None:
    document = load("groups_v1.json")
    document["links"][0]["origin_slot"] = "0"
    document["groups"][1]["bounding"] = [0, 0, 10]
    with pytest.raises(SchemaError) as raised:
        check_document(document)
    assert [issue.path for issue in raised.value.issues] == ["groups[1].bounding", "links[0].origin_slot"]
    assert raised.value.schema == "workflow_v1"


def test_v1_links_must_be_objects() -> None:
    document = load("groups_v1.json")
    document["links"][0] = [1, 4, 0, 3, 0, "MODEL"]
    assert [issue.path for issue in schema_issues(document)] == ["links[0]"]


def test_subgraph_definitions_are_checked_too() -> None:
    document = load("subgraph_v04.json")
    document["definitions"]["subgraphs"][0]["links"][2]["target_id"] = None
    assert [issue.path for issue in schema_issues(document)] == ["definitions.subgraphs[0].links[2].target_id"]


def test_api_prompt_lists_must_be_links_or_wrapped() -> None:
    prompt = copy.deepcopy(load("default.api.json"))
    prompt["9"]["inputs"]["filename_prefix"] = ["a", "b", "c"]
    prompt["3"]["inputs"]["model"] = ["4", "zero"]
    del prompt["8"]["class_type"]
    paths = [issue.path for issue in schema_issues(prompt)]
    assert paths == ["3.inputs.model[1]", "8", "9.inputs.filename_prefix", "9.inputs.filename_prefix[1]"]
    prompt["9"]["inputs"]["filename_prefix"] = {"__value__": ["a", "b", "c"]}
    prompt["3"]["inputs"]["model"] = ["4", 0]
    prompt["8"]["class_type"] = "VAEDecode"
    assert schema_issues(prompt) == []


@pytest.mark.parametrize(
    ("slot", "valid"), [(0, True), (2.0, True), (0.5, False), (True, False), (-1, False), ("0", False)]
)
def test_api_prompt_link_slots_are_whole_numbers_as_validation_reads_them(slot, valid) -> None:
    """The schema and ``normalise_link`` agree: ``2.0`` is slot 2; ``0.5``, ``true`` and ``"0"`` are no slot."""
    prompt = copy.deepcopy(load("default.api.json"))
    prompt["3"]["inputs"]["model"] = ["4", slot]
    assert [issue.path for issue in schema_issues(prompt)] == ([] if valid else ["3.inputs.model[1]"])


def test_json_path() -> None:
    assert json_path(["nodes", 3, "widgets_values"]) == "nodes[3].widgets_values"
    assert json_path([]) == ""
    assert json_path(["3", "inputs", "seed"]) == "3.inputs.seed"
