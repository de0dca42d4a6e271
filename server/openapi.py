"""The OpenAPI 3.1 description of the HTTP API, served at ``/openapi.json`` (docs/compatibility.md §7.10).

Written as data here rather than generated from handlers so that it documents the *wire* shapes
clients depend on; ``tests/server/test_openapi.py`` keeps it honest by checking that every route
the app registers is described and that real responses validate against these schemas. OpenAPI 3.1
schemas are JSON Schema 2020-12, so ``jsonschema`` checks them directly. Every path is also served
under ``/api``; only the bare form is listed.

The request-body schemas are not only documentation: ``server.request_body`` checks every JSON
body against its component here before a handler runs, so what is documented is what is accepted.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from graph.formats.schema import load_schema
from graph.formats.strict_json import MAX_DEPTH

__all__ = ["OPENAPI", "add_openapi_route"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERROR = {"description": "Refused; the body says why", "content": {"application/json": {"schema": _ref("Error")}}}
_EMPTY = {"description": "Done (empty body)"}
_BINARY_CONTENT: dict[str, Any] = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
_BINARY = {"description": "File bytes", "content": _BINARY_CONTENT}


def _op(
    summary: str,
    ok: dict[str, Any],
    *,
    errors: tuple[int, ...] = (),
    body: dict[str, Any] | None = None,
    params: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary, "responses": {"200": ok, **{str(code): _ERROR for code in errors}}}
    if body is not None:
        operation["requestBody"] = {"content": {"application/json": {"schema": body}}}
    if params:
        operation["parameters"] = params
    return operation


def _q(name: str, type_: str = "string", required: bool = False, description: str = "") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": {"type": type_}, "description": description}


def _p(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


_STR_LIST = {"type": "array", "items": {"type": "string"}}
_OBJECT = {"type": "object"}
_FILE_REF = {
    "type": "object",
    "required": ["filename", "subfolder", "type"],
    "properties": {
        "filename": {"type": "string"},
        "subfolder": {"type": "string"},
        "type": {"enum": ["input", "output", "temp"]},
    },
}
_QUEUE_ITEM = {
    "type": "array",
    "minItems": 5,
    "maxItems": 5,
    "prefixItems": [{"type": "number"}, {"type": "string"}, _OBJECT, _OBJECT, _STR_LIST],
    "description": "[number, prompt_id, prompt, extra_data, outputs_to_execute]",
}

_API_PROMPT = load_schema("api_prompt")
_WIDGET_TYPES = {
    **_STR_LIST,
    "description": "socket types the client draws as widgets (editor extensions): "
    "their values are read from widgets_values when a workflow is converted",
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["type", "message"],
                "properties": {
                    "type": {"type": "string"},
                    "message": {"type": "string"},
                    "details": {"type": "string"},
                    "extra_info": _OBJECT,
                },
            },
            "node_errors": {"type": ["object", "array"]},
        },
    },
    # Embedded so the document stands alone, and referenced by its $id: a $ref into components/
    # would resolve the schema's own "#/$defs/..." references against this document instead.
    "ApiPrompt": _API_PROMPT,
    "PromptRequest": {
        "type": "object",
        "properties": {
            "prompt": {"$ref": _API_PROMPT["$id"]},
            "workflow": {
                "type": "object",
                "description": "an editor workflow, converted on the server when 'prompt' is absent",
            },
            "widget_types": _WIDGET_TYPES,
            "client_id": {"type": ["string", "null"]},
            "prompt_id": {"type": ["string", "null"]},
            # A priority is stored as a float: beyond 2^53 it would silently lose its order.
            "number": {"type": ["number", "null"], "minimum": -(2**53), "maximum": 2**53},
            "front": {"type": ["boolean", "null"]},
            "partial_execution_targets": {"type": ["array", "null"], "items": {"type": ["string", "integer"]}},
            "extra_data": {
                "type": ["object", "null"],
                "properties": {
                    "extra_pnginfo": {
                        "type": "object",
                        "description": "PNG text chunks outputs carry, one per key (the editor sends 'workflow')",
                    }
                },
            },
        },
    },
    "WorkflowConversionRequest": {
        "type": "object",
        "required": ["workflow"],
        "properties": {
            "workflow": {"type": "object", "description": "an editor workflow (version 0.4 or 1)"},
            "widget_types": _WIDGET_TYPES,
        },
    },
    "WorkflowConversion": {
        "type": "object",
        "required": ["prompt", "warnings"],
        "properties": {"prompt": {"$ref": _API_PROMPT["$id"]}, "warnings": _STR_LIST},
    },
    "DeleteOrClear": {"type": "object", "properties": {"clear": {"type": "boolean"}, "delete": _STR_LIST}},
    "JobIds": {"type": "object", "properties": {"job_ids": _STR_LIST}},
    "InterruptRequest": {"type": "object", "properties": {"prompt_id": {"type": ["string", "null"]}}},
    "FreeRequest": {
        "type": "object",
        "properties": {"unload_models": {"type": "boolean"}, "free_memory": {"type": "boolean"}},
    },
    "Settings": _OBJECT,
    "LogsSubscription": {
        "type": "object",
        "required": ["enabled", "clientId"],
        "properties": {
            "enabled": {"type": "boolean", "description": "true to start logs messages, false to stop them"},
            "clientId": {"type": "string", "description": "the id of a connected /ws client (its clientId or sid)"},
        },
    },
    "LogEntry": {
        "type": "object",
        "required": ["t", "m"],
        "properties": {
            "t": {"type": "string", "description": "when it was logged, ISO 8601 local time"},
            "m": {
                "type": "string",
                "description": "the line, ending in a newline; control characters but newline and tab are "
                "written as \\xNN escapes",
            },
        },
    },
    "ServerLog": {
        "type": "object",
        "required": ["entries", "size"],
        "properties": {
            "entries": {"type": "array", "items": _ref("LogEntry"), "description": "oldest first"},
            "size": {
                "type": "object",
                "description": "the server console's size (80x24 without a terminal)",
                "required": ["cols", "rows"],
                "properties": {"cols": {"type": "integer"}, "rows": {"type": "integer"}},
            },
        },
    },
    "ModelDownloadRequest": {
        "type": "object",
        "required": ["name", "directory", "url"],
        "description": "one entry of a workflow's models metadata (ComfyUI's ModelFile)",
        "properties": {
            "name": {"type": "string", "description": "file name inside the folder"},
            "directory": {"type": "string", "description": "model folder key, e.g. checkpoints"},
            "url": {"type": "string", "description": "https source (http only from a loopback host)"},
            "hash": {"type": ["string", "null"]},
            "hash_type": {"type": ["string", "null"], "description": "only sha256 is checked"},
        },
    },
    "ModelDownload": {
        "type": "object",
        "required": ["directory", "name", "url", "status", "downloaded", "total", "error"],
        "description": "one download's state; also the data of the model_download WebSocket event",
        "properties": {
            "directory": {"type": "string"},
            "name": {"type": "string"},
            "url": {"type": "string"},
            "status": {"enum": ["downloading", "done", "failed"]},
            "downloaded": {"type": "integer"},
            "total": {"type": ["integer", "null"]},
            "error": {"type": ["string", "null"]},
            "resumed_from": {"type": "integer"},
        },
    },
    "ModelRequirement": {
        "type": "object",
        "required": ["name", "directory", "url", "present", "refused"],
        "description": "a model file a workflow's loaders or its models metadata name",
        "properties": {
            "name": {"type": "string"},
            "directory": {"type": "string"},
            "url": {"type": ["string", "null"], "description": "null: only a loader names it, with no source"},
            "hash": {"type": ["string", "null"]},
            "hash_type": {"type": ["string", "null"]},
            "present": {"type": "boolean", "description": "the file is in one of the folder's directories"},
            "refused": {"type": ["string", "null"], "description": "why the server would not download it"},
        },
    },
    "WorkflowRequirementsRequest": {
        "type": "object",
        "required": ["workflow"],
        "properties": {"workflow": {"type": "object", "description": "an editor workflow or an API prompt"}},
    },
    "MaskReference": {
        "type": "object",
        "required": ["filename"],
        "description": "the original_ref form field of /upload/mask, as JSON",
        "properties": {
            "filename": {"type": "string", "minLength": 1},
            "subfolder": {"type": "string"},
            "type": {"enum": ["input", "output", "temp"]},
        },
    },
    "PromptResponse": {
        "type": "object",
        "required": ["prompt_id", "number", "node_errors"],
        "properties": {
            "prompt_id": {"type": "string"},
            "number": {"type": "number"},
            "node_errors": _ref("NodeErrors"),
            "warnings": _STR_LIST,
        },
    },
    "NodeErrors": {
        "type": "object",
        "additionalProperties": {
            "type": "object",
            "required": ["errors", "dependent_outputs", "class_type"],
            "properties": {
                "class_type": {"type": "string"},
                "dependent_outputs": _STR_LIST,
                "errors": {
                    "type": "array",
                    "items": {"type": "object", "required": ["type", "message", "details", "extra_info"]},
                },
            },
        },
    },
    "QueueInfo": {
        "type": "object",
        "required": ["exec_info"],
        "properties": {
            "exec_info": {
                "type": "object",
                "required": ["queue_remaining"],
                "properties": {"queue_remaining": {"type": "integer"}},
            }
        },
    },
    "Queue": {
        "type": "object",
        "required": ["queue_running", "queue_pending"],
        "properties": {
            "queue_running": {"type": "array", "items": _QUEUE_ITEM},
            "queue_pending": {"type": "array", "items": _QUEUE_ITEM},
        },
    },
    "HistoryEntry": {
        "type": "object",
        "required": ["prompt", "outputs", "status", "meta"],
        "properties": {
            "prompt": _QUEUE_ITEM,
            "outputs": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "properties": {"images": {"type": "array", "items": _FILE_REF}},
                },
            },
            "status": {
                "type": "object",
                "required": ["status_str", "completed", "messages"],
                "properties": {
                    "status_str": {"enum": ["success", "error"]},
                    "completed": {"type": "boolean"},
                    "messages": {
                        "type": "array",
                        "items": {"type": "array", "prefixItems": [{"type": "string"}, _OBJECT]},
                    },
                },
            },
            "meta": {"type": "object"},
        },
    },
    "History": {"type": "object", "additionalProperties": _ref("HistoryEntry")},
    "Job": {
        "type": "object",
        "required": ["id", "status", "create_time", "outputs_count"],
        "properties": {
            "id": {"type": "string"},
            "status": {"enum": ["pending", "in_progress", "completed", "failed", "cancelled"]},
            "priority": {"type": "number"},
            "create_time": {"type": ["integer", "null"]},
            "execution_start_time": {"type": ["integer", "null"]},
            "execution_end_time": {"type": ["integer", "null"]},
            "outputs_count": {"type": "integer"},
            "previewable_outputs_count": {"type": "integer"},
            "preview_output": _OBJECT,
            "execution_error": _OBJECT,
            "workflow_id": {"type": ["string", "null"]},
            "outputs": _OBJECT,
            "workflow": _OBJECT,
        },
    },
    "JobList": {
        "type": "object",
        "required": ["jobs", "pagination"],
        "properties": {
            "jobs": {"type": "array", "items": _ref("Job")},
            "pagination": {
                "type": "object",
                "required": ["offset", "limit", "total", "has_more"],
                "properties": {
                    "offset": {"type": "integer"},
                    "limit": {"type": "integer"},
                    "total": {"type": "integer"},
                    "has_more": {"type": "boolean"},
                },
            },
        },
    },
    "Cancelled": {"type": "object", "required": ["cancelled"], "properties": {"cancelled": _STR_LIST}},
    "Upload": {
        "type": "object",
        "required": ["name", "subfolder", "type"],
        "properties": {
            "name": {"type": "string"},
            "subfolder": {"type": "string"},
            "type": {"enum": ["input", "output", "temp"]},
        },
    },
    "NodeDef": {
        "type": "object",
        "required": [
            "input",
            "input_order",
            "output",
            "output_is_list",
            "output_name",
            "name",
            "display_name",
            "description",
            "python_module",
            "category",
            "output_node",
        ],
        "properties": {
            "input": {"type": "object", "required": ["required"]},
            "input_order": _OBJECT,
            "output": {"type": "array"},
            "output_is_list": {"type": "array", "items": {"type": "boolean"}},
            "output_name": _STR_LIST,
            "name": {"type": "string"},
            "display_name": {"type": "string"},
            "description": {"type": "string"},
            "python_module": {"type": "string"},
            "category": {"type": "string"},
            "output_node": {"type": "boolean"},
        },
    },
    "ObjectInfo": {"type": "object", "additionalProperties": _ref("NodeDef")},
    "SystemStats": {
        "type": "object",
        "required": ["system", "devices"],
        "properties": {
            "system": {
                "type": "object",
                "required": [
                    "os",
                    "ram_total",
                    "ram_free",
                    "comfyui_version",
                    "python_version",
                    "pytorch_version",
                    "embedded_python",
                    "argv",
                ],
            },
            "devices": {
                "type": "array",
                "items": {"type": "object", "required": ["name", "type", "index", "vram_total", "vram_free"]},
            },
        },
    },
    "Features": {
        "type": "object",
        "properties": {"supports_preview_metadata": {"type": "boolean"}, "max_upload_size": {"type": "integer"}},
    },
    "Users": {
        "type": "object",
        "required": ["storage"],
        "properties": {"storage": {"const": "server"}, "migrated": {"type": "boolean"}},
    },
    "UserdataList": {"type": "array", "items": {"type": ["string", "object", "array"]}},
    "PluginReport": {
        "type": "object",
        "required": [
            "name",
            "key",
            "path",
            "status",
            "module",
            "nodes",
            "refused",
            "web_directory",
            "web_error",
            "error",
            "traceback",
            "seconds",
        ],
        "properties": {
            "name": {"type": "string"},
            "key": {"type": "string", "description": "the URL segment of its web files"},
            "path": {"type": "string"},
            "status": {"enum": ["loaded", "failed", "disabled", "skipped"]},
            "module": {"type": ["string", "null"], "description": "the name it is imported as (sys.modules)"},
            "alias_reason": {
                "type": ["string", "null"],
                "description": "why it is imported under another name than its own (the name was taken)",
            },
            "installs": {
                "type": "array",
                "items": {"type": "string"},
                "description": "package installs (pip) the pack ran while it was imported",
            },
            "nodes": _STR_LIST,
            "refused": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["class_type", "reason", "traceback"],
                    "properties": {
                        "class_type": {"type": "string"},
                        "reason": {"type": "string"},
                        "traceback": {"type": ["string", "null"]},
                    },
                },
            },
            "web_directory": {"type": ["string", "null"]},
            "web_error": {"type": ["string", "null"]},
            "error": {"type": ["string", "null"]},
            "traceback": {"type": ["string", "null"]},
            "seconds": {"type": "number"},
        },
    },
    "UserdataV2": {
        "type": "array",
        "items": {
            "type": "object",
            "required": ["name", "path", "type"],
            "properties": {
                "name": {"type": "string"},
                "path": {"type": "string"},
                "type": {"enum": ["file", "directory"]},
                "size": {"type": "integer"},
                "modified": {"type": "number"},
            },
        },
    },
}

PATHS: dict[str, Any] = {
    "/prompt": {
        "get": _op("Queue length", _json(_ref("QueueInfo"))),
        "post": _op(
            "Queue a prompt (API or editor format); works without a Content-Type header",
            _json(_ref("PromptResponse")),
            errors=(400, 413),
            body=_ref("PromptRequest"),
        ),
    },
    "/queue": {
        "get": _op("Running and pending prompts", _json(_ref("Queue"))),
        "post": _op(
            "Delete pending prompts or clear the pending queue", _EMPTY, errors=(400, 413), body=_ref("DeleteOrClear")
        ),
    },
    "/history": {
        "get": _op(
            "Finished prompts, oldest first",
            _json(_ref("History")),
            params=[_q("max_items", "integer"), _q("offset", "integer")],
        ),
        "post": _op("Delete or clear history entries", _EMPTY, errors=(400, 413), body=_ref("DeleteOrClear")),
    },
    "/history/{prompt_id}": {"get": _op("One history entry, or {}", _json(_ref("History")), params=[_p("prompt_id")])},
    "/jobs": {
        "get": _op(
            "Queue and history as job objects",
            _json(_ref("JobList")),
            errors=(400,),
            params=[
                _q("status", description="comma list of job statuses"),
                _q("workflow_id"),
                _q("sort_by"),
                _q("sort_order"),
                _q("limit", "integer"),
                _q("offset", "integer"),
                _q("ids"),
            ],
        )
    },
    "/jobs/{job_id}": {
        "get": _op("One job with its outputs and workflow", _json(_ref("Job")), errors=(404,), params=[_p("job_id")])
    },
    "/jobs/{job_id}/cancel": {
        "post": _op("Cancel a pending or running job", _json(_ref("Cancelled")), errors=(404,), params=[_p("job_id")])
    },
    "/jobs/cancel": {
        "post": _op("Cancel several jobs", _json(_ref("Cancelled")), errors=(400, 413), body=_ref("JobIds"))
    },
    "/interrupt": {
        "post": _op(
            "Stop the running prompt, or only the given one", _EMPTY, errors=(400, 413), body=_ref("InterruptRequest")
        )
    },
    "/free": {
        "post": _op("Free cached models/outputs between prompts", _EMPTY, errors=(400, 413), body=_ref("FreeRequest"))
    },
    "/object_info": {"get": _op("Every node definition", _json(_ref("ObjectInfo")))},
    "/object_info/{class_type}": {
        "get": _op("One node definition, or {}", _json(_ref("ObjectInfo")), params=[_p("class_type")])
    },
    "/view": {
        "get": _op(
            "A file from input/output/temp",
            _BINARY,
            errors=(400, 403, 404),
            params=[
                _q("filename", required=True),
                _q("type"),
                _q("subfolder"),
                _q("preview", description="webp;90 or jpeg;80"),
                _q("channel", description="rgb, a or rgba"),
            ],
        )
    },
    "/view_metadata/{folder}": {
        "get": _op(
            "The __metadata__ of a safetensors model",
            _json(_OBJECT),
            errors=(403, 404),
            params=[_p("folder"), _q("filename", required=True)],
        )
    },
    "/upload/image": {
        "post": _op(
            "Upload an image (multipart: image, type, subfolder, overwrite)",
            _json(_ref("Upload")),
            errors=(400, 403, 409, 413),
        )
    },
    "/upload/mask": {
        "post": _op(
            "Upload a mask onto an image (multipart: image, original_ref, ...)",
            _json(_ref("Upload")),
            errors=(400, 403, 409, 413),
        )
    },
    "/system_stats": {"get": _op("Versions, memory and devices", _json(_ref("SystemStats")))},
    "/features": {"get": _op("Server feature flags", _json(_ref("Features")))},
    "/embeddings": {"get": _op("Embedding names", _json(_STR_LIST))},
    "/extensions": {
        "get": _op(
            "Editor extension scripts: the frontend root's extensions/ and every loaded plugin's WEB_DIRECTORY",
            _json(_STR_LIST),
        )
    },
    "/extensions/{key}/{path}": {
        "get": _op(
            "A file of a plugin's WEB_DIRECTORY (or of the frontend root's extensions/<key>/); "
            "scripts as text/javascript",
            {
                "description": "File bytes",
                "content": {"text/javascript": {"schema": {"type": "string"}}, **_BINARY_CONTENT},
            },
            errors=(403, 404),
            params=[_p("key"), _p("path")],
        )
    },
    "/loom/api_prompt": {
        "post": _op(
            "An editor workflow converted to the API prompt POST /prompt would queue (not validated, not queued)",
            _json(_ref("WorkflowConversion")),
            errors=(400, 413),
            body=_ref("WorkflowConversionRequest"),
        )
    },
    "/loom/plugins": {
        "get": _op(
            "Every plugin found at start and what loading it did; tracebacks only for loopback clients",
            _json({"type": "array", "items": _ref("PluginReport")}),
        )
    },
    "/loom/node_docs/{node_type}": {
        "get": _op(
            "A node type's help page as markdown: comfyui-embedded-docs' page in the closest language when that "
            "package is installed, else one written from the node's description and tooltips",
            _json(
                {
                    "type": "object",
                    "required": ["node_type", "source", "markdown", "locale", "assets"],
                    "properties": {
                        "node_type": {"type": "string"},
                        "source": {"enum": ["comfyui-embedded-docs", "loom"]},
                        "markdown": {"type": "string"},
                        "locale": {"type": ["string", "null"]},
                        "assets": {"type": ["string", "null"], "description": "URL folder of the page's pictures"},
                    },
                }
            ),
            errors=(400, 404),
            params=[_p("node_type"), _q("locale", description="a language tag, e.g. en or pt-BR (default en)")],
        )
    },
    "/docs/{path}": {
        "get": _op(
            "A file of the comfyui-embedded-docs package (pages and their pictures), where ComfyUI serves them",
            _BINARY,
            errors=(403, 404),
            params=[_p("path")],
        )
    },
    "/loom/model_downloads": {
        "get": _op(
            "Whether downloads are on, and the state of every download since the server started",
            _json(
                {
                    "type": "object",
                    "required": ["enabled", "downloads"],
                    "properties": {
                        "enabled": {"type": "boolean"},
                        "downloads": {"type": "array", "items": _ref("ModelDownload")},
                    },
                }
            ),
        ),
        "post": _op(
            "Start downloading a model file into its models folder (needs loom serve --enable-model-downloads); "
            "progress follows as model_download WebSocket events",
            _json(_ref("ModelDownload")),
            errors=(400, 403, 409, 413),
            body=_ref("ModelDownloadRequest"),
        ),
    },
    "/loom/templates": {
        "get": _op(
            "Template workflows (comfyui-workflow-templates when installed, examples/, the user's workflows), "
            "each with the node types and model files this server lacks for it",
            _json(
                {
                    "type": "object",
                    "required": ["downloads_enabled", "sources", "templates"],
                    "properties": {
                        "downloads_enabled": {"type": "boolean"},
                        "sources": {"type": "array", "items": _OBJECT},
                        "templates": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["source", "path", "title", "missing_node_types", "models"],
                                "properties": {
                                    "source": {"type": "string"},
                                    "path": {"type": "string"},
                                    "title": {"type": "string"},
                                    "description": {"type": "string"},
                                    "category": {"type": "string"},
                                    "missing_node_types": _STR_LIST,
                                    "models": {"type": "array", "items": _ref("ModelRequirement")},
                                },
                            },
                        },
                    },
                }
            ),
        )
    },
    "/loom/templates/{source}/{path}": {
        "get": _op("One template workflow file", _json(_OBJECT), errors=(403, 404), params=[_p("source"), _p("path")])
    },
    "/loom/workflow_requirements": {
        "post": _op(
            "The node types this server lacks for a workflow, and the model files its loaders and metadata name",
            _json(
                {
                    "type": "object",
                    "required": ["downloads_enabled", "missing_node_types", "models"],
                    "properties": {
                        "downloads_enabled": {"type": "boolean"},
                        "missing_node_types": _STR_LIST,
                        "models": {"type": "array", "items": _ref("ModelRequirement")},
                    },
                }
            ),
            errors=(400, 413),
            body=_ref("WorkflowRequirementsRequest"),
        )
    },
    "/models": {"get": _op("Model folder keys", _json(_STR_LIST))},
    "/models/{folder}": {
        "get": _op("Model files in a folder", _json(_STR_LIST), errors=(403, 404), params=[_p("folder")])
    },
    "/experiment/models": {"get": _op("Model folders with their paths", _json({"type": "array"}))},
    "/i18n": {"get": _op("Translations from plugins", _json(_OBJECT))},
    "/global_subgraphs": {"get": _op("Shared subgraph blueprints", _json(_OBJECT))},
    "/node_replacements": {"get": _op("Node replacement hints", _json(_OBJECT))},
    "/workflow_templates": {"get": _op("Workflow templates of plugins", _json(_OBJECT))},
    "/internal/folder_paths": {
        "get": _op(
            "Every model folder key with the directories searched for it (the official frontend's missing-model check)",
            _json({"type": "object", "additionalProperties": _STR_LIST}),
        )
    },
    "/internal/files/{directory_type}": {
        "get": _op(
            "Names of the files directly in the input, output or temp folder, most recently modified first",
            _json(_STR_LIST),
            errors=(400,),
            params=[_p("directory_type")],
        )
    },
    "/internal/logs": {
        "get": _op(
            "The server log kept in memory as one string, each line after its time ('<t> - <m>')",
            _json({"type": "string"}),
        )
    },
    "/internal/logs/raw": {
        "get": _op(
            "The server log kept in memory, line by line (the official frontend's Logs panel)", _json(_ref("ServerLog"))
        )
    },
    "/internal/logs/subscribe": {
        "patch": _op(
            "Start or stop 'logs' WebSocket messages ({entries, size}, as /internal/logs/raw) with each new batch "
            "of lines, for one connected client; 400 when starting them for a client that is not connected",
            _EMPTY,
            errors=(400, 413),
            body=_ref("LogsSubscription"),
        )
    },
    "/templates/{path}": {
        "get": _op(
            "A file of the installed comfyui-workflow-templates packages (the official frontend's template browser); "
            "without them index.json answers [] and index_logo.json {}",
            {"description": "File bytes", "content": {"application/json": {"schema": {}}, **_BINARY_CONTENT}},
            errors=(403, 404),
            params=[_p("path")],
        )
    },
    "/user.css": {
        "get": _op(
            "The frontend root's user.css, or an empty stylesheet (the official frontend's page links it)",
            {"description": "A stylesheet", "content": {"text/css": {"schema": {"type": "string"}}}},
        )
    },
    "/settings": {
        "get": _op("All editor settings", _json(_OBJECT)),
        "post": _op("Merge settings", _EMPTY, errors=(400, 413), body=_ref("Settings")),
    },
    "/settings/{setting_id}": {
        "get": _op("One setting value, or null", _json({}), params=[_p("setting_id")]),
        "post": _op("Set one setting (body: the JSON value)", _EMPTY, errors=(400, 413), params=[_p("setting_id")]),
    },
    "/users": {
        "get": _op("User storage mode", _json(_ref("Users"))),
        "post": _op("Create a user (single-user server: refused)", _EMPTY, errors=(400,)),
    },
    "/userdata": {
        "get": _op(
            "List user files under dir",
            _json(_ref("UserdataList")),
            errors=(400, 403, 404),
            params=[_q("dir", required=True), _q("recurse"), _q("full_info"), _q("split")],
        )
    },
    "/v2/userdata": {
        "get": _op("List one user folder", _json(_ref("UserdataV2")), errors=(403, 404), params=[_q("path")])
    },
    "/userdata/{file}": {
        "get": _op(
            "A user file (URL-encode '/' in the name); user.css is an empty stylesheet until one is written",
            _BINARY,
            errors=(403, 404),
            params=[_p("file")],
        ),
        "post": _op(
            "Write a user file (raw body)",
            _json({"type": ["string", "object"]}),
            errors=(400, 403, 409, 413),
            params=[_p("file"), _q("overwrite"), _q("full_info")],
        ),
        "delete": {
            "summary": "Delete a user file",
            "parameters": [_p("file")],
            "responses": {"204": {"description": "Deleted"}, "403": _ERROR, "404": _ERROR},
        },
    },
    "/userdata/{file}/move/{dest}": {
        "post": _op(
            "Move a user file",
            _json({"type": ["string", "object"]}),
            errors=(403, 404, 409),
            params=[_p("file"), _p("dest"), _q("overwrite"), _q("full_info")],
        )
    },
    "/ws": {
        "get": {
            "summary": "WebSocket: status, execution events, binary previews, server log lines to subscribers "
            "(see docs/compatibility.md §1.4)",
            "parameters": [_q("clientId")],
            "responses": {"101": {"description": "Switching protocols"}},
        }
    },
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Loom",
        "version": "1",
        "description": (
            "ComfyUI-compatible workflow API. Every path is also served under /api. When the server has an auth token, "
            "send it as 'Authorization: Bearer <token>'. JSON request bodies are checked against the request "
            f"schemas below before anything else; a body that is not UTF-8 JSON, nests more than {MAX_DEPTH} "
            "levels, holds NaN, Infinity or a number too large for a float, or breaks its schema is refused "
            "with 400 (413 when over the size limit) and an Error whose "
            "extra_info.issues lists every schema violation with its path."
        ),
    },
    "components": {"schemas": SCHEMAS, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    "paths": PATHS,
}


def add_openapi_route(app: web.Application) -> None:
    async def document(request: web.Request) -> web.Response:
        return web.json_response(OPENAPI)

    app.router.add_get("/openapi.json", document)
    app.router.add_get("/api/openapi.json", document)
