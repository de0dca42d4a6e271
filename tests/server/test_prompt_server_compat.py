"""``server.PromptServer`` outside a running server, and the on-prompt handler chain."""

from __future__ import annotations

import logging

import server
from server.prompt_server_compat import BinaryEventTypes, PromptServer


def test_comfyui_names_resolve_from_the_server_package() -> None:
    assert server.PromptServer is PromptServer and isinstance(PromptServer.instance, PromptServer)
    assert (BinaryEventTypes.PREVIEW_IMAGE, BinaryEventTypes.UNENCODED_PREVIEW_IMAGE) == (1, 2)
    assert (BinaryEventTypes.TEXT, BinaryEventTypes.PREVIEW_IMAGE_WITH_METADATA) == (3, 4)


def test_a_detached_instance_collects_routes_and_drops_messages() -> None:
    detached = PromptServer()

    @detached.routes.get("/pack/status")
    async def status(request):
        raise AssertionError("never served")

    assert [route.path for route in detached.routes] == ["/pack/status"]
    detached.send_sync("pack.event", {"x": 1})
    detached.send_sync(BinaryEventTypes.PREVIEW_IMAGE, b"\x00\x00\x00\x01jpeg")
    detached.mount_routes()
    assert detached.client_id is None and detached.last_prompt_id is None and detached.last_node_id is None
    assert "custom_nodes_from_web" in detached.supports


def test_on_prompt_handlers_run_in_turn_and_a_broken_one_is_skipped(caplog) -> None:
    prompt_server = PromptServer()
    prompt_server.add_on_prompt_handler(lambda body: {**body, "first": True})
    prompt_server.add_on_prompt_handler(lambda body: 1 / 0)
    prompt_server.add_on_prompt_handler(lambda body: None)
    prompt_server.add_on_prompt_handler(lambda body: {**body, "second": body["first"]})
    with caplog.at_level(logging.WARNING):
        edited = prompt_server.trigger_on_prompt({"prompt": {}})
    assert edited == {"prompt": {}, "first": True, "second": True}
    assert "ZeroDivisionError" in caplog.text and "returned NoneType" in caplog.text
