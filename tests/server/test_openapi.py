"""The OpenAPI document describes every route, and real responses validate against it."""

from __future__ import annotations

import re

import jsonschema
from jsonschema.validators import Draft202012Validator
from yarl import URL

from graph.formats.schema import schema_registry
from server.openapi import OPENAPI
from tests.server.conftest import wait_for_history, wait_prompt


def response_validator(path: str, method: str = "get", status: str = "200") -> Draft202012Validator:
    schema = OPENAPI["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]
    # The registry resolves the workflow-format schemas that responses reference by their $id.
    return Draft202012Validator({**schema, "components": OPENAPI["components"]}, registry=schema_registry())


def check(body, path, method="get", status="200"):
    errors = sorted(response_validator(path, method, status).iter_errors(body), key=str)
    assert not errors, f"{method.upper()} {path} {status}: {errors[0].message} at {list(errors[0].absolute_path)}"


def test_the_document_is_well_formed_openapi_3_1():
    assert OPENAPI["openapi"].startswith("3.1")
    for schema in OPENAPI["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    for path, operations in OPENAPI["paths"].items():
        for method, operation in operations.items():
            assert method in ("get", "post", "put", "patch", "delete"), path
            assert operation["summary"] and operation["responses"], (path, method)
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == set(re.findall(r"{(\w+)}", path)), (path, method)


async def test_every_registered_api_route_is_documented(client):
    documented = {(path, method.upper()) for path, ops in OPENAPI["paths"].items() for method in ops}
    for route in client.app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("formatter") or info.get("path")
        if (
            not path
            or route.method == "HEAD"
            or path in ("/", "/login", "/openapi.json", "/api/openapi.json", "/api/{tail}")  # {tail}: the JSON 404
            or "prefix" in info
        ):
            continue
        bare = path[4:] if path.startswith("/api/") else path
        assert (bare, route.method) in documented, f"{route.method} {path} is not in the OpenAPI document"


async def test_real_responses_match_the_schemas(client):
    assert (await client.get("/openapi.json")).status == 200
    reply = await (await client.post("/prompt", json={"prompt": wait_prompt(0, "doc")})).json()
    check(reply, "/prompt", "post")
    await wait_for_history(client, reply["prompt_id"])
    for path in (
        "/prompt",
        "/queue",
        "/history",
        f"/history/{reply['prompt_id']}",
        "/object_info",
        "/object_info/Wait",
        "/system_stats",
        "/features",
        "/embeddings",
        "/extensions",
        "/models",
        "/users",
        "/api/jobs",
        f"/api/jobs/{reply['prompt_id']}",
    ):
        response = await client.get(path)
        assert response.status == 200, path
        template = path.replace("/api/", "/").replace(reply["prompt_id"], "{id}")
        template = {
            "/history/{id}": "/history/{prompt_id}",
            "/jobs/{id}": "/jobs/{job_id}",
            "/object_info/Wait": "/object_info/{class_type}",
        }.get(template, template)
        check(await response.json(), template)
    bad = await client.post("/prompt", json={"prompt": {"1": {"class_type": "Nope", "inputs": {}}}})
    check(await bad.json(), "/prompt", "post", "400")
    await client.post(URL("/userdata/w%2Fa.json", encoded=True), data=b"{}")
    check(await (await client.get("/v2/userdata", params={"path": "w"})).json(), "/v2/userdata")
    check(await (await client.get("/userdata", params={"dir": "w", "full_info": "true"})).json(), "/userdata")
    try:
        check({"prompt_id": 3}, "/prompt", "post")
    except AssertionError:
        pass
    else:
        raise AssertionError("the schema accepted a reply without number and node_errors")
    jsonschema.validate([], response_validator("/embeddings").schema)
