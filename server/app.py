"""``create_app(config)``: the aiohttp application with every service wired in.

Services live behind typed ``AppKey``s (``server.keys``). The worker thread and the database are
owned by a ``cleanup_ctx`` so they start with the server and stop with it: the worker finishes (or
interrupts) its prompt, and the database is closed last. Every API route is registered twice, bare
and under ``/api`` (COMPAT 1.1): the frontend uses ``/api``, Python clients the bare paths.
"""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from graph.cache import OutputCache
from graph.executor import Executor
from graph.registry import NodeRegistry
from nodes import register_builtin_nodes
from nodes.folders import configure_folders
from server import routes_files, routes_info, routes_prompt, routes_queue, routes_userdata
from server.config import ServerConfig
from server.keys import CONFIG, FOLDERS, HUB, QUEUE, REGISTRY, STORE, WORKER
from server.openapi import add_openapi_route
from server.queue import PromptQueue
from server.security import add_login_routes, security_middlewares
from server.static import add_frontend_routes
from server.store import PromptStore
from server.websocket import SocketHub, ThreadSafePublisher
from server.worker import PromptEngine, PromptWorker

__all__ = ["create_app", "API_ROUTE_TABLES"]

API_ROUTE_TABLES = (
    routes_prompt.routes, routes_queue.routes, routes_files.routes, routes_info.routes, routes_userdata.routes,
)


def _builtin_registry() -> NodeRegistry:
    registry = NodeRegistry()
    register_builtin_nodes(registry)
    return registry


def _free_memory(cache: OutputCache) -> Callable[[bool, bool], None]:
    def free(unload_models: bool, free_memory: bool) -> None:
        """Models are cached outputs of loader nodes, so dropping the cache unloads them too."""
        if unload_models or free_memory:
            cache.clear()
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()

    return free


def create_app(config: ServerConfig, registry: NodeRegistry | None = None, engine: PromptEngine | None = None) -> web.Application:
    """Build the application; ``registry`` defaults to the built-in nodes, ``engine`` to an ``Executor``."""
    folders = configure_folders(
        config.base_dir, input=config.input_path, output=config.output_path, temp=config.temp_path,
        user=config.user_path, models=config.models_path,
    )
    registry = registry if registry is not None else _builtin_registry()
    cache = OutputCache(config.cache_budget_bytes)
    engine = engine if engine is not None else Executor(registry, cache)

    app = web.Application(client_max_size=config.max_upload_bytes, middlewares=security_middlewares(config))
    store = PromptStore(config.database_path, config.max_history)
    publisher = ThreadSafePublisher()
    queue = PromptQueue(store, on_change=publisher.status)
    hub = SocketHub(
        queue_remaining=queue.remaining,
        server_features=lambda: routes_info.server_features(config.max_upload_bytes),
        queue_size=config.ws_send_queue,
        send_timeout=config.ws_send_timeout,
    )
    worker = PromptWorker(queue, store, engine, publisher, _free_memory(cache), previews_enabled=config.preview_method != "none")
    app[CONFIG], app[FOLDERS], app[REGISTRY] = config, folders, registry
    app[STORE], app[QUEUE], app[HUB], app[WORKER] = store, queue, hub, worker

    for table in API_ROUTE_TABLES:
        for route in table:
            assert isinstance(route, web.RouteDef)
            app.router.add_route(route.method, route.path, route.handler, **route.kwargs)
            app.router.add_route(route.method, "/api" + route.path, route.handler, **route.kwargs)
    app.router.add_get("/ws", hub.handle)
    app.router.add_get("/api/ws", hub.handle)
    add_openapi_route(app)
    add_login_routes(app, config)
    add_frontend_routes(app, config.frontend_root)

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        publisher.attach(hub, asyncio.get_running_loop())
        worker.start()
        yield
        await asyncio.to_thread(worker.stop)
        store.close()

    async def close_sockets(app: web.Application) -> None:
        await hub.close_all()

    app.cleanup_ctx.append(lifetime)
    app.on_shutdown.append(close_sockets)
    return app
