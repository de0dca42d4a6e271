"""Typed application keys for the services every route reaches through ``request.app``."""

from __future__ import annotations

from aiohttp import web

from graph.registry import NodeRegistry
from nodes.runtime import Runtime
from server.config import ServerConfig
from server.log_buffer import LogBuffer
from server.queue import PromptQueue
from server.store import PromptStore
from server.websocket import SocketHub
from server.worker import PromptWorker

__all__ = ["CONFIG", "RUNTIME", "REGISTRY", "STORE", "QUEUE", "HUB", "WORKER", "LOGS"]

CONFIG = web.AppKey("loom_config", ServerConfig)
RUNTIME = web.AppKey("loom_runtime", Runtime)
REGISTRY = web.AppKey("loom_registry", NodeRegistry)
STORE = web.AppKey("loom_store", PromptStore)
QUEUE = web.AppKey("loom_queue", PromptQueue)
HUB = web.AppKey("loom_hub", SocketHub)
WORKER = web.AppKey("loom_worker", PromptWorker)
LOGS = web.AppKey("loom_logs", LogBuffer)
