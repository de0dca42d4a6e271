"""POST /prompt as clients use it: full runs, partial validation, bodies without Content-Type; and the
conversion route the editor exports with."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from graph.formats.strict_json import MAX_DEPTH
from tests.server.conftest import wait_for_history, wait_prompt
from tests.server.test_openapi import check

SAVE_PROMPT = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 6, "batch_size": 1, "color": 0xFF0000}},
    "2": {
        "class_type": "SaveImage",
        "inputs": {"images": ["1", 0], "filename_prefix": "run/test"},
        "_meta": {"title": "Save"},
    },
}


async def test_full_run_from_post_through_websocket_to_view(client):
    ws = await client.ws_connect("/ws?clientId=me")
    hello = await ws.receive_json()
    assert hello == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "me"}}

    response = await client.post("/prompt", json={"prompt": SAVE_PROMPT, "client_id": "me"})
    assert response.status == 200
    reply = await response.json()
    assert set(reply) == {"prompt_id", "number", "node_errors"} and reply["node_errors"] == {}
    prompt_id = reply["prompt_id"]

    seen = []
    while True:
        message = await ws.receive_json(timeout=20)
        seen.append(message["type"])
        if message["type"] == "executing" and message["data"]["node"] is None:
            assert message["data"]["prompt_id"] == prompt_id
            break
    assert {"execution_start", "executing", "executed", "execution_success"} <= set(seen)

    # The end marker comes after the history entry is written (docs/compatibility.md §C.6).
    history = await (await client.get(f"/history/{prompt_id}")).json()
    entry = history[prompt_id]
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    assert entry["prompt"][1] == prompt_id and entry["prompt"][4] == ["2"]
    image_ref = entry["outputs"]["2"]["images"][0]
    assert image_ref["type"] == "output" and image_ref["subfolder"] == "run"

    view = await client.get("/view", params=image_ref)
    assert view.status == 200 and view.headers["Content-Type"] == "image/png"
    picture = Image.open(io.BytesIO(await view.read()))
    assert picture.size == (8, 6) and picture.convert("RGB").getpixel((0, 0)) == (255, 0, 0)
    await ws.close()


async def test_body_without_content_type_is_accepted(client):
    body = json.dumps({"prompt": wait_prompt(0, "plain")}).encode()
    response = await client.post("/prompt", data=body, skip_auto_headers={"Content-Type"})
    assert response.status == 200
    entry = await wait_for_history(client, (await response.json())["prompt_id"])
    assert entry["outputs"]["2"] == {"text": ["plain"]}


async def test_partial_validation_runs_the_valid_output_and_reports_the_broken_one(client):
    prompt = {
        **wait_prompt(0, "fine"),
        "3": {"class_type": "Wait", "inputs": {"seconds": 99.0, "text": "x"}},
        "4": {"class_type": "Record", "inputs": {"value": ["3", 0]}},
    }
    response = await client.post("/prompt", json={"prompt": prompt})
    assert response.status == 200
    reply = await response.json()
    error = reply["node_errors"]["3"]
    assert error["class_type"] == "Wait" and error["dependent_outputs"] == ["4"]
    assert error["errors"][0]["type"] == "value_bigger_than_max"
    assert error["errors"][0]["extra_info"]["input_name"] == "seconds"
    entry = await wait_for_history(client, reply["prompt_id"])
    assert entry["prompt"][4] == ["2"] and set(entry["outputs"]) == {"2"}


async def test_a_prompt_with_no_valid_output_is_refused_with_every_error(client):
    prompt = {
        "1": {"class_type": "Wait", "inputs": {"seconds": -1.0}},
        "2": {"class_type": "Record", "inputs": {"value": ["1", 0]}},
        "3": {"class_type": "Record", "inputs": {"value": ["9", 0]}},
    }
    response = await client.post("/prompt", json={"prompt": prompt})
    assert response.status == 400
    body = await response.json()
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert set(body["node_errors"]) == {"1", "3"}
    assert (await (await client.get("/queue")).json())["queue_pending"] == []


async def test_unknown_node_type_and_missing_prompt(client):
    response = await client.post("/prompt", json={"prompt": {"1": {"class_type": "Nope", "inputs": {}}}})
    assert response.status == 400
    assert (await response.json())["error"]["type"] == "invalid_prompt"
    response = await client.post("/prompt", json={"client_id": "x"})
    assert response.status == 400
    assert await response.json() == {
        "error": {
            "type": "no_prompt",
            "message": "No prompt provided",
            "details": "The body needs a 'prompt' (API format) or a 'workflow' (editor format).",
            "extra_info": {},
        },
        "node_errors": {},
    }
    response = await client.post("/prompt", data=b"{not json", skip_auto_headers={"Content-Type"})
    assert response.status == 400 and (await response.json())["error"]["type"] == "invalid_prompt"


async def test_every_unknown_node_and_every_error_of_the_known_nodes_come_in_one_reply(client):
    prompt = {
        "1": {"class_type": "NoSuchNode", "inputs": {}},
        "2": {"class_type": "Record", "inputs": {"value": ["1", 0]}},
        "3": {"class_type": "Wait", "inputs": {"seconds": 99.0, "text": "x"}},
        "4": {"class_type": "Record", "inputs": {"value": ["3", 0]}},
        "5": {"class_type": "AlsoMissing", "inputs": {"value": ["9", 0]}},
    }
    response = await client.post("/prompt", json={"prompt": prompt})
    assert response.status == 400
    body = await response.json()
    assert body["error"]["type"] == "invalid_prompt"
    assert (
        body["error"]["message"]
        == "Cannot execute because node NoSuchNode does not exist; node AlsoMissing does not exist."
    )
    assert body["error"]["details"] == "Node IDs '#1', '#5'"
    assert {
        node_id: [error["type"] for error in entry["errors"]] for node_id, entry in body["node_errors"].items()
    } == {
        "1": ["unknown_node_type"],
        "5": ["unknown_node_type"],
        "3": ["value_bigger_than_max"],
    }
    assert body["node_errors"]["1"]["dependent_outputs"] == ["2"] and body["node_errors"]["3"]["dependent_outputs"] == [
        "4"
    ]
    assert (await (await client.get("/queue")).json())["queue_pending"] == []


async def test_a_float_slot_runs_as_the_link_it_names(client):
    prompt = wait_prompt(0, "through the link")
    prompt["2"]["inputs"]["value"] = ["1", 0.0]
    response = await client.post("/prompt", json={"prompt": prompt})
    assert response.status == 200, await response.text()
    entry = await wait_for_history(client, (await response.json())["prompt_id"])
    assert entry["outputs"]["2"] == {"text": ["through the link"]}, "the node got the upstream value, not the list"
    assert entry["prompt"][2]["2"]["inputs"]["value"] == ["1", 0], "the normalised prompt is what was queued"


async def test_a_body_of_the_wrong_shape_is_refused_with_every_violation_named(client):
    prompt = {
        "1": {"class_type": ["Wait"], "inputs": {}},
        "2": {"class_type": "Record", "inputs": {"value": ["1", 0.5]}},
    }
    response = await client.post("/api/prompt", json={"prompt": prompt, "number": "first"})
    assert response.status == 400
    body = await response.json()
    assert body["error"]["type"] == "invalid_prompt" and body["node_errors"] == {}
    assert [issue["path"] for issue in body["error"]["extra_info"]["issues"]] == [
        "number",
        "prompt.1.class_type",
        "prompt.2.inputs.value[1]",
    ]
    assert "prompt.1.class_type: ['Wait'] is not of type 'string'" in body["error"]["details"]


async def test_a_body_nested_past_the_cap_is_refused_before_parsing(client):
    response = await client.post("/prompt", data=b"[" * 5_000 + b"]" * 5_000, skip_auto_headers={"Content-Type"})
    assert response.status == 400
    assert (await response.json())["error"] == {
        "type": "invalid_prompt",
        "message": "Request body is not acceptable JSON",
        "details": f"nested more than {MAX_DEPTH} levels deep",
        "extra_info": {},
    }


async def test_editor_workflow_is_converted_on_the_server(client):
    workflow = {
        "version": 0.4,
        "last_node_id": 2,
        "last_link_id": 1,
        "nodes": [
            {
                "id": 1,
                "type": "PrimitiveString",
                "mode": 0,
                "inputs": [],
                "outputs": [{"name": "STRING", "type": "STRING", "links": [1]}],
                "widgets_values": ["from editor"],
            },
            {
                "id": 2,
                "type": "Record",
                "mode": 0,
                "inputs": [{"name": "value", "type": "*", "link": 1}],
                "outputs": [],
                "widgets_values": [],
            },
        ],
        "links": [[1, 1, 0, 2, 0, "STRING"]],
    }
    response = await client.post("/prompt", json={"workflow": workflow})
    assert response.status == 200, await response.text()
    entry = await wait_for_history(client, (await response.json())["prompt_id"])
    assert entry["outputs"]["2"] == {"text": ["from editor"]}
    assert entry["prompt"][3]["extra_pnginfo"]["workflow"] == workflow


async def test_caller_chosen_id_number_front_and_secret_keys(client):
    blocker = await client.post("/prompt", json={"prompt": wait_prompt(0.5, "blocker")})
    first = await (await client.post("/prompt", json={"prompt": wait_prompt(0, "a")})).json()
    second = await (
        await client.post(
            "/prompt",
            json={
                "prompt": wait_prompt(0, "b"),
                "front": True,
                "prompt_id": "mine",
                "extra_data": {"api_key_comfy_org": "secret", "note": 1},
            },
        )
    ).json()
    assert second["prompt_id"] == "mine" and second["number"] < 0 < first["number"]
    pending = (await (await client.get("/queue")).json())["queue_pending"]
    assert [item[1] for item in pending] == ["mine", first["prompt_id"]]
    assert "api_key_comfy_org" not in pending[0][3] and pending[0][3]["note"] == 1
    duplicate = await client.post("/prompt", json={"prompt": wait_prompt(0, "c"), "prompt_id": "mine"})
    assert duplicate.status == 400
    entry = await wait_for_history(client, "mine")
    assert "secret" not in json.dumps(entry)
    assert blocker.status == 200


async def test_get_prompt_reports_queue_remaining(client):
    await client.post("/prompt", json={"prompt": wait_prompt(0.4, "slow")})
    await client.post("/prompt", json={"prompt": wait_prompt(0, "next")})
    body = await (await client.get("/api/prompt")).json()
    assert body == {"exec_info": {"queue_remaining": 2}}


#: A version 1 editor file: a subgraph whose inner Wait takes its text from the instance's widget,
#: feeding a Record outside; a Note beside it never runs.
SUBGRAPH_WORKFLOW = {
    "version": 1,
    "state": {"lastNodeId": 3, "lastLinkId": 1},
    "nodes": [
        {
            "id": 1,
            "type": "wait-pair",
            "mode": 0,
            "inputs": [{"name": "text", "type": "STRING", "widget": {"name": "text"}, "link": None}],
            "outputs": [{"name": "STRING", "type": "STRING", "links": [1]}],
            "widgets_values": ["from the instance"],
        },
        {"id": 2, "type": "Record", "mode": 0, "inputs": [{"name": "value", "type": "*", "link": 1}], "outputs": []},
        {"id": 3, "type": "Note", "mode": 0, "widgets_values": ["never runs"]},
    ],
    "links": [{"id": 1, "origin_id": 1, "origin_slot": 0, "target_id": 2, "target_slot": 0, "type": "STRING"}],
    "definitions": {
        "subgraphs": [
            {
                "id": "wait-pair",
                "name": "Wait pair",
                "inputs": [{"name": "text", "type": "STRING"}],
                "outputs": [{"name": "STRING", "type": "STRING"}],
                "nodes": [
                    {
                        "id": 5,
                        "type": "Wait",
                        "mode": 0,
                        "inputs": [{"name": "text", "type": "STRING", "widget": {"name": "text"}, "link": 1}],
                        "outputs": [{"name": "STRING", "type": "STRING", "links": [2]}],
                        "widgets_values": [0, "inner"],
                    }
                ],
                "links": [
                    {"id": 1, "origin_id": -10, "origin_slot": 0, "target_id": 5, "target_slot": 0, "type": "STRING"},
                    {"id": 2, "origin_id": 5, "origin_slot": 0, "target_id": -20, "target_slot": 0, "type": "STRING"},
                ],
            }
        ]
    },
}


async def test_the_conversion_route_answers_the_prompt_that_post_prompt_runs(client):
    response = await client.post("/loom/api_prompt", json={"workflow": SUBGRAPH_WORKFLOW})
    assert response.status == 200, await response.text()
    converted = await response.json()
    check(converted, "/loom/api_prompt", "post")
    assert converted == {
        "warnings": [],
        "prompt": {
            "1:5": {
                "class_type": "Wait",
                "inputs": {"seconds": 0, "text": "from the instance"},
                "_meta": {"title": "Wait"},
            },
            "2": {"class_type": "Record", "inputs": {"value": ["1:5", 0]}, "_meta": {"title": "Record"}},
        },
    }
    reply = await (await client.post("/prompt", json={"workflow": SUBGRAPH_WORKFLOW})).json()
    entry = await wait_for_history(client, reply["prompt_id"])
    assert entry["prompt"][2] == converted["prompt"]
    assert entry["outputs"]["2"] == {"text": ["from the instance"]}


BAD_BODY = "Request body does not match the WorkflowConversionRequest schema"
UNCONVERTIBLE = "The editor workflow cannot be converted"


@pytest.mark.parametrize(
    ("body", "message", "details"),
    [
        (None, BAD_BODY, "None is not of type 'object'"),
        ({}, BAD_BODY, "'workflow' is a required property"),
        ({"workflow": []}, BAD_BODY, "is not of type 'object'"),
        ({"workflow": {"nodes": []}, "widget_types": "MY_COLOR"}, BAD_BODY, "is not of type 'array'"),
        ({"workflow": {"nodes": [{"id": 1}]}}, UNCONVERTIBLE, "nodes[0]"),
        ({"workflow": {"nodes": [{"id": 4, "type": "Nope"}], "links": []}}, UNCONVERTIBLE, "node 4 (Nope)"),
    ],
)
async def test_the_conversion_route_refuses_what_it_cannot_convert(client, body, message, details):
    response = await client.post("/loom/api_prompt", data=b"" if body is None else json.dumps(body).encode())
    assert response.status == 400
    refusal = await response.json()
    check(refusal, "/loom/api_prompt", "post", "400")
    assert refusal["error"]["message"] == message and details in refusal["error"]["details"]
