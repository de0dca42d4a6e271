"""``create_app(config)``: the aiohttp application with every service wired in.

Services live behind typed ``AppKey``s (``server.keys``). The nodes' runtime (folders, model paths,
compute, previews: ``nodes.runtime``) is built once from the config and is the only source of those
settings: routes read ``app[RUNTIME]``, the executor lends the same object to the nodes it runs, and a
middleware lends it to every request, since validation and ``/object_info`` ask nodes for their
choices. Nothing is process-wide, so two apps in one process keep their own. The worker threads, the backend they run
prompts on (in process, or Ray actors: ``config.workers``) and the database are owned by a
``cleanup_ctx`` so they start with the server and stop with it: the worker finishes (or interrupts)
its prompts, the backend is closed, and the database is closed last. The server log the official
frontend's Logs panel shows (``server.log_buffer``) is kept while the plugins load and while the app
runs, and no longer: its handler leaves the root logger when the app stops. Every API route is registered
twice, bare and under ``/api`` (docs/compatibility.md §1.1): the frontend uses ``/api``, Python clients the bare paths.
The application exists before the plugins are imported, behind a fresh ``PromptServer.instance``
(``server.prompt_server_compat``), so ComfyUI packs can declare routes at import; those are mounted
after Loom's own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from graph.cache import OutputCache
from graph.executor import Executor
from graph.plugins import PluginReport
from graph.registry import NodeRegistry
from graph.services import services_context
from nodes.runtime import Runtime, build_runtime
from server import (
    model_downloads,
    routes_files,
    routes_info,
    routes_internal,
    routes_prompt,
    routes_queue,
    routes_userdata,
    templates,
)
from server.config import ServerConfig
from server.distributed.backend import LocalBackend, PromptBackend
from server.keys import CONFIG, HUB, LOGS, QUEUE, REGISTRY, RUNTIME, STORE, WORKER
from server.log_buffer import LogBuffer
from server.node_docs import add_node_docs_routes
from server.openapi import add_openapi_route
from server.plugins import add_plugin_routes, configured_registry
from server.prompt_server_compat import PromptServer
from server.queue import PromptQueue
from server.responses import api_not_found, json_routing_errors
from server.security import add_login_routes, security_middlewares
from server.starter import install_starter_files
from server.static import add_frontend_routes
from server.store import PromptStore
from server.websocket import SocketHub, ThreadSafePublisher
from server.worker import PromptWorker

__all__ = ["create_app", "API_ROUTE_TABLES"]

API_ROUTE_TABLES = (
    routes_prompt.routes,
    routes_queue.routes,
    routes_files.routes,
    routes_info.routes,
    routes_internal.routes,
    routes_userdata.routes,
    templates.routes,
    model_downloads.routes,
)


def _backend(config: ServerConfig, registry: NodeRegistry, given_registry: bool, runtime: Runtime) -> PromptBackend:
    """In process, or on Ray worker actors: ``config.workers`` decides.

    Ray workers rebuild the configured registry themselves (plugins are imported by file path, which
    a pickled registry could not replay on another machine); a registry given to ``create_app`` is
    sent as it is.
    """
    if config.workers_spec.uses_ray:
        from server.distributed.ray_backend import RayBackend, WorkerSetup  # imports Ray: only when asked for

        setup = WorkerSetup(
            config.runtime_options(),
            config.cache_budget_bytes,
            registry=registry if given_registry else None,
            plugins=None if given_registry else config,
        )
        return RayBackend(config.workers_spec, setup)
    cache = OutputCache(config.cache_budget_bytes, device_budget_bytes=runtime.cache_vram_budget_bytes)
    return LocalBackend(Executor(registry, cache, services=runtime), cache)


def _lend_runtime(runtime: Runtime) -> Middleware:
    """Run every request handler with this app's runtime lent to node code (``graph.services``)."""

    @web.middleware
    async def lend(request: web.Request, handler: Handler) -> web.StreamResponse:
        with services_context(runtime):
            return await handler(request)

    return lend


def create_app(config: ServerConfig, registry: NodeRegistry | None = None) -> web.Application:
    """Build the application.

    ``registry`` defaults to the built-in nodes plus the configured plugins; a registry passed in is
    used as it is (tests choose their nodes), so no plugin is loaded into it.
    """
    runtime = build_runtime(config.runtime_options())
    if config.starter_files:
        install_starter_files(runtime.folders)
    middlewares = [json_routing_errors, *security_middlewares(config), _lend_runtime(runtime)]
    app = web.Application(client_max_size=config.max_upload_bytes, middlewares=middlewares)
    prompt_server = PromptServer.open(app)
    given_registry = registry is not None
    plugin_reports: list[PluginReport] = []
    log_buffer = LogBuffer()
    if registry is None:
        log_buffer.attach()  # what loading the plugins logs (their import times) belongs in the server log
        try:
            registry, plugin_reports = configured_registry(config, runtime)
        finally:
            log_buffer.detach()
    backend = _backend(config, registry, given_registry, runtime)

    store = PromptStore(config.database_path, config.max_history)
    publisher = ThreadSafePublisher()
    queue = PromptQueue(store, on_change=publisher.status)
    hub = SocketHub(
        queue_remaining=queue.remaining,
        server_features=lambda: routes_info.server_features(config.max_upload_bytes),
        queue_size=config.ws_send_queue,
        send_timeout=config.ws_send_timeout,
    )
    worker = PromptWorker(queue, store, backend, publisher, previews_enabled=runtime.previews.enabled)
    prompt_server.connect(publisher, queue)
    app[CONFIG], app[RUNTIME], app[REGISTRY] = config, runtime, registry
    app[STORE], app[QUEUE], app[HUB], app[WORKER] = store, queue, hub, worker
    app[LOGS] = log_buffer

    for table in API_ROUTE_TABLES:
        for route in table:
            assert isinstance(route, web.RouteDef)
            app.router.add_route(route.method, route.path, route.handler, **route.kwargs)
            app.router.add_route(route.method, "/api" + route.path, route.handler, **route.kwargs)
    app.router.add_get("/ws", hub.handle)
    app.router.add_get("/api/ws", hub.handle)
    add_openapi_route(app)
    add_plugin_routes(app, plugin_reports, config.frontend_root)
    add_node_docs_routes(app)
    add_login_routes(app, config)
    prompt_server.mount_routes()
    app.router.add_get("/api/{tail:.*}", api_not_found)
    add_frontend_routes(app, config.frontend_root)

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        log_buffer.attach(loop, hub.send_logs)
        publisher.attach(hub, loop)
        prompt_server.loop = loop
        worker.start()
        yield
        await asyncio.to_thread(worker.stop)
        await asyncio.to_thread(backend.close)
        store.close()
        log_buffer.detach()

    async def close_sockets(app: web.Application) -> None:
        await hub.close_all()

    app.cleanup_ctx.append(lifetime)
    app.cleanup_ctx.append(model_downloads.model_downloader_context)
    app.on_shutdown.append(close_sockets)
    return app
