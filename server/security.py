"""Who may talk to the server: a cross-site guard, DNS-rebinding defence, optional token auth, CORS.

A local engine is an easy target for any web page the user visits (docs/compatibility.md §7.1): the
page cannot read our answers, but it can send requests. The guard therefore refuses, before any
handler runs:

- an ``Origin`` that is not this server's own (a page on another site), unless CORS was asked for;
- ``Origin: null`` — sent by sandboxed iframes and ``data:`` pages; ComfyUI let it through
  (GHSA-5xxr-jvhm-jxmj, #13245);
- ``Sec-Fetch-Site: cross-site`` on anything but a top-level ``GET`` navigation (refusing those too
  broke login proxies on another domain, #16203; a navigation cannot read the answer);
- when bound to loopback, a ``Host`` that is not a loopback name or the bound address: a DNS-rebinding
  page reaches 127.0.0.1 under its own host name and would otherwise pass as same-origin (#12860).

Requests without ``Origin`` or ``Sec-Fetch-*`` headers are not from a browser page and pass: scripts
and API clients keep working. With ``--auth-token`` every route also needs the token, as a Bearer
header (clients) or an HttpOnly SameSite=Strict cookie set by ``/login`` (browsers, whose WebSocket
cannot carry a header).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from yarl import URL

from server.config import ServerConfig, is_loopback_host

__all__ = ["security_middlewares", "add_login_routes", "AUTH_COOKIE", "session_cookie_value"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

AUTH_COOKIE = "loom_session"
_LOGIN_PATH = "/login"
_CORS_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
_CORS_HEADERS = "Content-Type, Authorization, Comfy-User"


def _forbidden(reason: str) -> web.Response:
    return web.json_response({"error": {"type": "forbidden", "message": reason}}, status=403)


def _host_port(authority: str, scheme: str) -> tuple[str, int | None]:
    url = URL(f"{scheme}://{authority}")
    return (url.host or "").lower(), url.port


def _origin_matches(origin: str, host: str, request_scheme: str) -> bool:
    try:
        parsed = URL(origin)
        origin_host, origin_port = (parsed.host or "").lower(), parsed.port
        host_name, host_port = _host_port(host, parsed.scheme or request_scheme)
    except ValueError:
        return False
    return bool(origin_host) and origin_host == host_name and origin_port == host_port


def _cors_allows(config: ServerConfig, origin: str | None) -> bool:
    return config.cors_origin is not None and origin is not None and config.cors_origin in ("*", origin)


def _rebinding_refused(config: ServerConfig, host: str | None) -> bool:
    if not config.loopback_only or not host:
        return False
    try:
        name, _ = _host_port(host, "http")
    except ValueError:
        return True
    allowed = {part.strip().strip("[]").lower() for part in config.host.split(",")}
    return not (is_loopback_host(name) or name in allowed)


def _origin_guard(config: ServerConfig) -> Callable[..., Any]:
    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        host = request.headers.get("Host")
        if _rebinding_refused(config, host):
            return _forbidden(f"Host {host!r} is not a loopback name; refused (DNS rebinding protection)")
        origin = request.headers.get("Origin")
        if origin is not None and origin.strip().lower() == "null":
            return _forbidden("Origin 'null' (sandboxed or opaque origin) is refused")
        cors = _cors_allows(config, origin)
        if origin is not None and not cors and not _origin_matches(origin, host or "", request.scheme):
            return _forbidden(f"cross-origin request from {origin!r} refused")
        site = request.headers.get("Sec-Fetch-Site")
        navigation = request.method == "GET" and request.headers.get("Sec-Fetch-Mode") == "navigate"
        if site == "cross-site" and not cors and not navigation:
            return _forbidden("cross-site request refused")
        if cors and request.method == "OPTIONS":
            response: web.StreamResponse = web.Response(status=204)
        else:
            response = await handler(request)
        if cors:
            response.headers["Access-Control-Allow-Origin"] = config.cors_origin or "*"
            response.headers["Access-Control-Allow-Methods"] = _CORS_METHODS
            response.headers["Access-Control-Allow-Headers"] = _CORS_HEADERS
            response.headers["Vary"] = "Origin"
        return response

    return guard


def session_cookie_value(token: str) -> str:
    """The cookie holds a digest of the token, not the token, so a leaked cookie jar is not a leaked token."""
    return hmac.new(token.encode(), b"loom-session-v1", hashlib.sha256).hexdigest()


def _authenticated(request: web.Request, token: str) -> bool:
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer ") and hmac.compare_digest(header[7:].strip().encode(), token.encode()):
        return True
    cookie = request.cookies.get(AUTH_COOKIE)
    return cookie is not None and hmac.compare_digest(cookie.encode(), session_cookie_value(token).encode())


def _auth_guard(token: str) -> Callable[..., Any]:
    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == _LOGIN_PATH or request.method == "OPTIONS" or _authenticated(request, token):
            return await handler(request)
        wants_page = request.method == "GET" and "text/html" in request.headers.get("Accept", "")
        if wants_page:
            raise web.HTTPFound(_LOGIN_PATH)
        return web.json_response(
            {"error": {"type": "unauthorized", "message": "this server requires a token (Authorization: Bearer ...)"}},
            status=401,
            headers={"WWW-Authenticate": "Bearer"},
        )

    return guard


def security_middlewares(config: ServerConfig) -> list[Callable[..., Any]]:
    """Origin/Host guard first (it needs no secret), then the token check when one is configured."""
    middlewares = [_origin_guard(config)]
    if config.auth_token:
        middlewares.append(_auth_guard(config.auth_token))
    return middlewares


_LOGIN_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Loom: sign in</title></head>
<body style="font-family: sans-serif; max-width: 24em; margin: 6em auto">
<h1>Loom</h1><p>This server needs its access token.</p>{error}
<form method="post" action="/login">
<input type="password" name="token" autofocus style="width: 100%" aria-label="token">
<button type="submit">Sign in</button></form></body></html>
"""


def add_login_routes(app: web.Application, config: ServerConfig) -> None:
    """``GET /login`` shows a one-field form; ``POST /login`` checks the token and sets the cookie."""
    token = config.auth_token
    if not token:
        return

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=_LOGIN_PAGE.format(error=""), content_type="text/html")

    async def login(request: web.Request) -> web.Response:
        form = await request.post()
        given = str(form.get("token", ""))
        if not hmac.compare_digest(given.encode(), token.encode()):
            return web.Response(
                text=_LOGIN_PAGE.format(error="<p><b>Wrong token.</b></p>"), content_type="text/html", status=401
            )
        response = web.HTTPFound("/")
        response.set_cookie(AUTH_COOKIE, session_cookie_value(token), httponly=True, samesite="Strict", path="/")
        raise response

    app.router.add_get(_LOGIN_PATH, page)
    app.router.add_post(_LOGIN_PATH, login)
