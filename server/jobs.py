"""Job objects: the queue and history seen as one list, the way the frontend reads them now.

The frontend no longer calls ``/queue`` or ``/history``; its queue and history panels come from
``/api/jobs`` (docs/compatibility.md §C.4, §1.7). A job is built from a queued item (``pending``/``in_progress``) or a
history record (``completed``/``failed``/``cancelled``); times are epoch milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from server.store import HistoryRecord, QueueItem, wire_number

__all__ = ["job_from_queue", "job_from_history", "JobQuery", "JOB_STATUSES"]

JOB_STATUSES = ("pending", "in_progress", "completed", "failed", "cancelled")
_FROM_RECORD = {"success": "completed", "error": "failed", "interrupted": "cancelled"}
_PREVIEWABLE = ("images", "gifs", "video", "audio", "animated")


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1000)


def _workflow_id(extra_data: dict[str, Any]) -> str | None:
    workflow = (extra_data.get("extra_pnginfo") or {}).get("workflow")
    return workflow.get("id") if isinstance(workflow, dict) else None


def _previews(outputs: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for node_id, ui in outputs.items():
        if not isinstance(ui, dict):
            continue
        for kind in _PREVIEWABLE:
            for item in ui.get(kind) or []:
                if isinstance(item, dict) and "filename" in item:
                    media = "images" if kind in ("images", "animated") else kind
                    found.append({**item, "nodeId": node_id, "mediaType": media})
    return found


def job_from_queue(item: QueueItem, running: bool, detail: bool = False) -> dict[str, Any]:
    job: dict[str, Any] = {
        "id": item.prompt_id,
        "status": "in_progress" if running else "pending",
        "priority": wire_number(item.number),
        "create_time": _ms(item.create_time),
        "execution_start_time": None,
        "execution_end_time": None,
        "outputs_count": 0,
        "previewable_outputs_count": 0,
        "workflow_id": _workflow_id(item.extra_data),
    }
    if detail:
        job.update(
            outputs={},
            execution_status=None,
            workflow={"prompt": item.prompt, "extra_data": item.extra_data},
            update_time=job["create_time"],
        )
    return job


def job_from_history(record: HistoryRecord, detail: bool = False) -> dict[str, Any]:
    entry = record.entry
    outputs = entry.get("outputs") or {}
    previews = _previews(outputs)
    _, _, prompt, extra_data, _ = entry["prompt"]
    job: dict[str, Any] = {
        "id": record.prompt_id,
        "status": _FROM_RECORD.get(record.status, "failed"),
        "priority": wire_number(record.number),
        "create_time": _ms(record.create_time),
        "execution_start_time": _ms(record.start_time),
        "execution_end_time": _ms(record.end_time),
        "outputs_count": sum(
            len(v) for ui in outputs.values() if isinstance(ui, dict) for v in ui.values() if isinstance(v, list)
        ),
        "previewable_outputs_count": len(previews),
        "workflow_id": _workflow_id(extra_data),
    }
    if previews:
        job["preview_output"] = previews[-1]
    error = next((data for name, data in entry["status"].get("messages", []) if name == "execution_error"), None)
    if error is not None:
        job["execution_error"] = error
    if detail:
        job.update(
            outputs=outputs,
            execution_status=entry["status"],
            workflow={"prompt": prompt, "extra_data": extra_data},
            update_time=job["execution_end_time"],
        )
    return job


class JobQuery:
    """The ``/api/jobs`` filters: ``status`` (comma list), ``workflow_id``, ``sort_by``, ``sort_order``, paging."""

    def __init__(self, query: dict[str, str]) -> None:
        statuses = [s for s in query.get("status", "").split(",") if s]
        unknown = set(statuses) - set(JOB_STATUSES)
        if unknown:
            raise ValueError(f"status {sorted(unknown)} not in {list(JOB_STATUSES)}")
        self.statuses = set(statuses) or set(JOB_STATUSES)
        self.workflow_id = query.get("workflow_id")
        self.sort_by = query.get("sort_by", "created_at")
        if self.sort_by not in ("created_at", "execution_duration"):
            raise ValueError(f"sort_by {self.sort_by!r} is not created_at or execution_duration")
        self.descending = query.get("sort_order", "desc") != "asc"
        self.offset = max(0, int(query.get("offset", 0)))
        self.limit = max(0, int(query["limit"])) if query.get("limit") else None
        self.ids = {i for i in query.get("ids", "").split(",") if i} or None

    def apply(self, jobs: Iterable[dict[str, Any]]) -> dict[str, Any]:
        selected = [
            job
            for job in jobs
            if job["status"] in self.statuses
            and (self.workflow_id is None or job.get("workflow_id") == self.workflow_id)
            and (self.ids is None or job["id"] in self.ids)
        ]

        def key(job: dict[str, Any]) -> float:
            if self.sort_by == "execution_duration":
                start, end = job.get("execution_start_time"), job.get("execution_end_time")
                return (end - start) if start is not None and end is not None else -1
            return job.get("create_time") or 0

        selected.sort(key=key, reverse=self.descending)
        end = None if self.limit is None else self.offset + self.limit
        page = selected[self.offset : end]
        return {
            "jobs": page,
            "pagination": {
                "offset": self.offset,
                "limit": self.limit if self.limit is not None else len(selected),
                "total": len(selected),
                "has_more": end is not None and end < len(selected),
            },
        }
