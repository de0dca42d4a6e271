"""Every refusal, aiohttp's own routing answers included, comes in the one JSON error shape."""

from __future__ import annotations

import pytest


async def error_of(response) -> dict:
    assert response.headers["Content-Type"].startswith("application/json")
    return (await response.json())["error"]


@pytest.mark.parametrize("path", ["/api/no_such_route", "/api/history/x/y/z"])
async def test_an_api_path_nothing_serves_is_a_json_404(client, path: str) -> None:
    response = await client.get(path)
    assert response.status == 404
    error = await error_of(response)
    assert error["type"] == "not_found" and path in error["message"]


async def test_a_method_a_route_lacks_is_a_json_405_listing_the_allowed_ones(client) -> None:
    for path in ("/prompt", "/api/prompt"):
        response = await client.delete(path)
        assert response.status == 405
        assert set(response.headers["Allow"].split(", ")) >= {"GET", "POST"}
        error = await error_of(response)
        assert error["type"] == "method_not_allowed" and "POST" in error["details"]


async def test_known_api_routes_are_not_shadowed(client) -> None:
    assert (await client.get("/api/prompt")).status == 200
    assert (await client.get("/api/openapi.json")).status == 200
