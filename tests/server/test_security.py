"""The cross-site guard, DNS-rebinding defence, token auth and opt-in CORS."""

from __future__ import annotations

import pytest

from server.security import AUTH_COOKIE


@pytest.fixture
def own_origin(client):
    return f"http://127.0.0.1:{client.port}"


async def test_non_browser_clients_and_same_origin_pages_are_allowed(client, own_origin):
    assert (await client.get("/system_stats")).status == 200
    response = await client.post(
        "/queue", json={"clear": True}, headers={"Origin": own_origin, "Sec-Fetch-Site": "same-origin"}
    )
    assert response.status == 200
    localhost = await client.get(
        "/queue", headers={"Host": f"localhost:{client.port}", "Origin": f"http://localhost:{client.port}"}
    )
    assert localhost.status == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "http://127.0.0.1:1"},  # same host, another port: another origin
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
    ],
)
async def test_cross_site_requests_are_refused_before_any_handler_runs(client, headers):
    response = await client.post("/prompt", json={"prompt": {}}, headers=headers)
    assert response.status == 403
    assert (await response.json())["error"]["type"] == "forbidden"
    assert (await client.get("/queue", headers=headers)).status == 403


async def test_cross_site_top_level_navigation_is_allowed(client):
    """Login proxies on another domain redirect the browser to / (ComfyUI #16203)."""
    response = await client.get("/", headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"})
    assert response.status == 200


async def test_rebinding_host_is_refused_on_loopback(client):
    response = await client.get("/queue", headers={"Host": f"attacker.example:{client.port}"})
    assert response.status == 403
    assert "rebinding" in (await response.json())["error"]["message"]
    # Same-origin by the browser's rules, since the rebinding page's Origin matches its Host:
    response = await client.post(
        "/prompt", json={}, headers={"Host": "attacker.example", "Origin": "http://attacker.example"}
    )
    assert response.status == 403


async def test_websocket_upgrade_from_another_site_is_refused(client):
    response = await client.get(
        "/ws",
        headers={
            "Origin": "https://evil.example",
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        },
    )
    assert response.status == 403


async def test_auth_token_is_required_on_every_route(make_client):
    client = await make_client(auth_token="s3cret")
    assert (await client.get("/queue")).status == 401
    assert (await client.get("/api/object_info")).status == 401
    assert (await client.post("/prompt", json={})).status == 401
    assert (await client.get("/queue", headers={"Authorization": "Bearer wrong"})).status == 401
    assert (await client.get("/queue", headers={"Authorization": "Bearer s3cret"})).status == 200
    page = await client.get("/", headers={"Accept": "text/html"}, allow_redirects=False)
    assert page.status == 302 and page.headers["Location"] == "/login"


async def test_login_page_sets_a_cookie_that_opens_api_and_websocket(make_client):
    client = await make_client(auth_token="s3cret")
    assert (await client.get("/login")).status == 200
    wrong = await client.post("/login", data={"token": "nope"}, allow_redirects=False)
    assert wrong.status == 401 and AUTH_COOKIE not in wrong.cookies
    right = await client.post("/login", data={"token": "s3cret"}, allow_redirects=False)
    assert right.status == 302
    cookie = right.cookies[AUTH_COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie.value != "s3cret"
    assert (await client.get("/queue")).status == 200  # the test client's jar now holds the cookie
    ws = await client.ws_connect("/ws")
    assert (await ws.receive_json())["type"] == "status"
    await ws.close()


async def test_token_from_environment(make_client, monkeypatch):
    from server.config import ServerConfig

    monkeypatch.setenv("LOOM_AUTH_TOKEN", "from-env")
    assert ServerConfig().auth_token == "from-env"


async def test_cors_only_when_asked_for(client, make_client):
    plain = await client.options(
        "/prompt", headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    )
    assert plain.status == 403
    cors_client = await make_client(cors_origin="https://app.example")
    preflight = await cors_client.options(
        "/prompt", headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status == 204 and preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"
    response = await cors_client.get("/queue", headers={"Origin": "https://app.example"})
    assert response.status == 200 and response.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert (await cors_client.get("/queue", headers={"Origin": "https://other.example"})).status == 403
