"""``/prompt``: accept a prompt, validate it, queue it (docs/compatibility.md §1.3).

The order of ComfyUI's handler is kept: parse, pick the priority, validate, move API keys out of
``extra_data``, queue, answer ``{prompt_id, number, node_errors}``. Parsing includes the check
against the ``PromptRequest`` schema (envelope, node shapes, link shapes), so a body of the wrong
shape is refused with every violation named before any of it reaches validation. A prompt whose
outputs partly fail validation is still queued with the valid ones, and the reply lists the broken
nodes. The editor's own format is accepted too (a ``workflow`` key instead of ``prompt``), checked
against its schema and converted here, so clients need not keep two files in sync (docs/compatibility.md
§7.9).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from aiohttp import web

from graph.errors import WorkflowError
from graph.formats.editor import editor_to_api
from graph.formats.schema import check_document
from graph.validation import validate_prompt
from server.keys import QUEUE, REGISTRY
from server.request_body import BadRequestBody, read_json
from server.responses import error_response
from server.store import QueueItem, wire_number

__all__ = ["routes"]

routes = web.RouteTableDef()

#: Keys clients put in ``extra_data`` that must never reach the history or a log (docs/compatibility.md §1.3 step 4).
SENSITIVE_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")


def _prompt_error(type_: str, message: str, details: str = "") -> web.Response:
    return error_response(400, type_, message, details, node_errors={})


@routes.get("/prompt")
async def queue_info(request: web.Request) -> web.Response:
    return web.json_response({"exec_info": {"queue_remaining": request.app[QUEUE].remaining()}})


@routes.post("/prompt")
async def submit_prompt(request: web.Request) -> web.Response:
    try:
        body = await read_json(request, "PromptRequest", default={})
    except BadRequestBody as error:
        return error.response("invalid_prompt", node_errors={})
    extra_data = dict(body.get("extra_data") or {})

    prompt = body.get("prompt")
    warnings: list[str] = []
    if prompt is None and "workflow" in body:
        workflow = body["workflow"]
        try:
            check_document(workflow)
            conversion = editor_to_api(workflow, request.app[REGISTRY])
        except WorkflowError as error:
            return _prompt_error("invalid_workflow", "The editor workflow cannot be converted", str(error))
        prompt, warnings = conversion.prompt, list(conversion.warnings)
        extra_data.setdefault("extra_pnginfo", {}).setdefault("workflow", workflow)
    if prompt is None:
        return _prompt_error("no_prompt", "No prompt provided", "The body needs a 'prompt' (API format) or a 'workflow' (editor format).")

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
    reply: dict[str, Any] = {"prompt_id": prompt_id, "number": wire_number(item.number), "node_errors": result.node_errors}
    if warnings:
        reply["warnings"] = warnings
    return web.json_response(reply)
