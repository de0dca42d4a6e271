"""``/prompt``: accept a prompt, validate it, queue it (docs/compatibility.md §1.3).

The order of ComfyUI's handler is kept: parse, let plugins' on-prompt handlers edit the body
(``PromptServer.add_on_prompt_handler``), pick the priority, validate, move API keys out of
``extra_data``, queue, answer ``{prompt_id, number, node_errors}``. Parsing includes the check
against the ``PromptRequest`` schema (envelope, node shapes, link shapes), so a body of the wrong
shape is refused with every violation named before any of it reaches validation. A prompt whose
outputs partly fail validation is still queued with the valid ones, and the reply lists the broken
nodes. The editor's own format is accepted too (a ``workflow`` key instead of ``prompt``), checked
against its schema and converted here, so clients need not keep two files in sync (docs/compatibility.md
§7.9). ``POST /loom/api_prompt`` answers that conversion without queueing: it is the editor's
"Export API", so the file a user exports is the prompt the server would run.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from aiohttp import web

from graph.errors import WorkflowError
from graph.formats.editor import EditorConversion, editor_to_api
from graph.formats.schema import check_document
from graph.validation import validate_prompt
from server.keys import QUEUE, REGISTRY
from server.prompt_server_compat import PROMPT_SERVER
from server.request_body import BadRequestBody, read_json
from server.responses import error_response
from server.store import QueueItem, wire_number

__all__ = ["routes"]

routes = web.RouteTableDef()

#: Keys clients put in ``extra_data`` that must never reach the history or a log (docs/compatibility.md §1.3 step 4).
SENSITIVE_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")
_CONVERSION_FAILED = "The editor workflow cannot be converted"


def _prompt_error(type_: str, message: str, details: str = "") -> web.Response:
    return error_response(400, type_, message, details, node_errors={})


def _convert_workflow(request: web.Request, body: dict[str, Any]) -> EditorConversion:
    """The body's ``workflow``, checked against its schema and converted; raises ``WorkflowError``."""
    workflow = body["workflow"]
    check_document(workflow)
    return editor_to_api(workflow, request.app[REGISTRY], body.get("widget_types") or ())


@routes.get("/prompt")
async def queue_info(request: web.Request) -> web.Response:
    return web.json_response({"exec_info": {"queue_remaining": request.app[QUEUE].remaining()}})


@routes.post("/prompt")
async def submit_prompt(request: web.Request) -> web.Response:
    try:
        body = await read_json(request, "PromptRequest", default={})
    except BadRequestBody as error:
        return error.response("invalid_prompt", node_errors={})
    if (prompt_server := request.app.get(PROMPT_SERVER)) is not None:
        body = prompt_server.trigger_on_prompt(body)
    extra_data = dict(body.get("extra_data") or {})

    prompt = body.get("prompt")
    warnings: list[str] = []
    if prompt is None and "workflow" in body:
        try:
            conversion = _convert_workflow(request, body)
        except WorkflowError as error:
            return _prompt_error("invalid_workflow", _CONVERSION_FAILED, str(error))
        prompt, warnings = conversion.prompt, list(conversion.warnings)
        extra_data.setdefault("extra_pnginfo", {}).setdefault("workflow", body["workflow"])
    if prompt is None:
        return _prompt_error(
            "no_prompt", "No prompt provided", "The body needs a 'prompt' (API format) or a 'workflow' (editor format)."
        )

    prompt_id = body.get("prompt_id") or str(uuid.uuid4())
    queue = request.app[QUEUE]
    if queue.find(prompt_id) is not None:
        return _prompt_error("invalid_prompt", "prompt_id is already queued", f"prompt_id {prompt_id!r}")
    number = body.get("number")
    targets = body.get("partial_execution_targets")

    result = validate_prompt(prompt, request.app[REGISTRY], targets)
    if not result.ok:
        return web.json_response({"error": result.error, "node_errors": result.node_errors}, status=400)

    if "client_id" in body:
        extra_data["client_id"] = body["client_id"]
    sensitive = {key: extra_data.pop(key) for key in SENSITIVE_KEYS if key in extra_data}
    extra_data["create_time"] = int(time.time() * 1000)
    item = QueueItem(
        number=queue.assign_number(number, bool(body.get("front"))),
        prompt_id=prompt_id,
        prompt=result.prompt,
        extra_data=extra_data,
        outputs=list(result.outputs),
        sensitive=sensitive,
    )
    # The insert waits for an fsync; doing it off the loop keeps other clients' requests moving.
    await asyncio.to_thread(queue.put, item)
    reply: dict[str, Any] = {
        "prompt_id": prompt_id,
        "number": wire_number(item.number),
        "node_errors": result.node_errors,
    }
    if warnings:
        reply["warnings"] = warnings
    return web.json_response(reply)


@routes.post("/loom/api_prompt")
async def convert_workflow(request: web.Request) -> web.Response:
    """``{workflow, widget_types?}`` → ``{prompt, warnings}``: what ``POST /prompt`` would queue, unvalidated."""
    try:
        body = await read_json(request, "WorkflowConversionRequest")
    except BadRequestBody as error:
        return error.response()
    try:
        conversion = _convert_workflow(request, body)
    except WorkflowError as error:
        return error_response(400, "invalid_workflow", _CONVERSION_FAILED, str(error))
    return web.json_response({"prompt": conversion.prompt, "warnings": conversion.warnings})
