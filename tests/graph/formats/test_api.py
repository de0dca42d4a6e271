"""API-format conventions and loading a workflow from whatever file the user has."""

import io
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from graph.errors import WorkflowFormatError
from graph.formats.api import (
    LinkShapeError,
    detect_format,
    is_link,
    load_document,
    normalise_link,
    parse_document,
    prompt_from_document,
    unwrap_value,
)
from graph.formats.png import add_text_chunks
from tests.graph.formats.fixtures.sd15_nodes import sd15_registry

FIXTURES = Path(__file__).parent / "fixtures"
EXPECTED = json.loads((FIXTURES / "default.api.json").read_text())
WORKFLOW = json.loads((FIXTURES / "default_v04.json").read_text())


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (["4", 0], True),
        (["4", 1.0], False),
        (("4", 0), False),
        ([4, 0], False),
        (["4", "0"], False),
        (["4", 0, 1], False),
        (["4", True], False),
        ("4", False),
        ({"__value__": ["4", 0]}, False),
    ],
)
def test_a_link_of_a_validated_prompt_is_exactly_a_str_and_an_int(value, expected) -> None:
    assert is_link(value) is expected


@pytest.mark.parametrize(("value", "expected"), [(["4", 0], ["4", 0]), (["4", 2.0], ["4", 2]), (["4", -1], ["4", -1])])
def test_normalise_link_makes_integral_slots_ints(value, expected) -> None:
    link = normalise_link(value)
    assert link == expected and type(link[1]) is int and is_link(link)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (["4", 0.5], "not a whole number"),
        (["4", True], "not a number"),
        (["4", "0"], "not a number"),
        (["4", float("inf")], "not a whole number"),
        ([4, 0], "[node_id, output_slot]"),
        (["4"], "[node_id, output_slot]"),
        (["4", 0, 1], "[node_id, output_slot]"),
    ],
)
def test_normalise_link_refuses_what_names_no_slot(value, reason) -> None:
    with pytest.raises(LinkShapeError, match=re.escape(reason)):
        normalise_link(value)


def test_unwrap_value_only_touches_the_plain_wrapper() -> None:
    assert unwrap_value({"__value__": [1, 2]}) == [1, 2]
    curve = {"__type__": "CURVE", "__value__": [[0, 0], [1, 1]]}
    assert unwrap_value(curve) is curve
    assert unwrap_value(7) == 7


def test_detect_format() -> None:
    assert detect_format(WORKFLOW) == "editor"
    assert detect_format(EXPECTED) == "api"
    with pytest.raises(WorkflowFormatError):
        detect_format({"3": {"inputs": {}}})


def test_a_post_prompt_body_keeps_its_workflow() -> None:
    document = parse_document({"prompt": EXPECTED, "extra_data": {"extra_pnginfo": {"workflow": WORKFLOW}}})
    assert document.prompt == EXPECTED and document.workflow == WORKFLOW


def test_load_an_api_json_file(tmp_path) -> None:
    path = tmp_path / "prompt.json"
    path.write_text(json.dumps(EXPECTED))
    document = load_document(path)
    assert (document.prompt, document.workflow) == (EXPECTED, None)
    assert prompt_from_document(document, sd15_registry()).prompt == EXPECTED


def test_load_an_editor_json_file_and_convert_it(tmp_path) -> None:
    path = tmp_path / "workflow.json"
    path.write_text(json.dumps(WORKFLOW))
    assert prompt_from_document(load_document(path), sd15_registry()).prompt == EXPECTED


def png_with(texts: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (2, 2)).save(buffer, format="PNG")
    return add_text_chunks(buffer.getvalue(), texts)


def test_a_png_prefers_the_prompt_that_actually_ran(tmp_path) -> None:
    ran = dict(
        EXPECTED, **{"5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}}
    )
    path = tmp_path / "image.png"
    path.write_bytes(png_with({"prompt": json.dumps(ran), "workflow": json.dumps(WORKFLOW)}))
    document = load_document(path)
    assert document.workflow == WORKFLOW
    assert prompt_from_document(document, sd15_registry()).prompt == ran


def test_a_png_with_only_a_workflow_is_converted(tmp_path) -> None:
    path = tmp_path / "image.png"
    path.write_bytes(png_with({"workflow": json.dumps(WORKFLOW)}))
    assert prompt_from_document(load_document(path), sd15_registry()).prompt == EXPECTED


def test_a_png_without_workflow_chunks_is_refused(tmp_path) -> None:
    path = tmp_path / "plain.png"
    path.write_bytes(png_with({"Software": "paint"}))
    with pytest.raises(WorkflowFormatError, match="no 'prompt' or 'workflow'"):
        load_document(path)


def test_a_png_chunk_that_is_not_json_names_the_chunk(tmp_path) -> None:
    path = tmp_path / "broken.png"
    path.write_bytes(png_with({"prompt": "{not json"}))
    with pytest.raises(WorkflowFormatError) as raised:
        load_document(path)
    assert raised.value.path.endswith(":prompt")


def test_a_file_that_is_neither_is_refused(tmp_path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(WorkflowFormatError, match="not JSON and not a PNG"):
        load_document(path)
