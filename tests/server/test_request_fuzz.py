"""Malformed requests to every route that reads a body or names a user path: 4xx with a JSON error, never 5xx.

Seeded random cases, so a failure names the exact request and reruns identically: truncated JSON,
bytes that are not UTF-8, NaN and numbers too large for a float, arrays and objects nested far past
the cap, bodies that are not objects, values of the wrong type at every level of the ``/prompt``
envelope and of its nodes, class types that are not strings, every bad link shape, broken multipart
upload forms, and user paths no file system can hold, each under both ``/`` and ``/api``. Every
test ends by running a valid prompt to success, so no refusal leaves the server broken. The
tests together send more than 2,000 requests (``test_the_fuzz_covers_enough_cases`` checks).
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from PIL import Image
from yarl import URL

from graph.formats.strict_json import MAX_DEPTH
from tests.server.conftest import wait_for_history, wait_prompt

SEED = 13
PREFIXES = ("", "/api")

#: Values of each JSON kind, to put where another kind belongs. ``number`` holds no whole numbers,
#: so it is also wrong where an integer belongs.
SAMPLES: dict[str, list[Any]] = {
    "object": [{}, {"key": 1}],
    "array": [[], [1, "x", None]],
    "string": ["", "text", "1"],
    "integer": [0, -7, 10**20],
    "number": [0.5, -2.25, 1.5e-7],
    "boolean": [True, False],
    "null": [None],
}


@dataclass
class Case:
    """One request; ``what`` is printed when the answer is wrong."""

    what: str
    method: str
    path: str
    data: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json_text(cls, what: str, path: str, text: str | bytes) -> Case:
        body = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
        return cls(what, "POST", path, body, {"Content-Type": "application/json"})

    @classmethod
    def json_value(cls, what: str, path: str, value: Any) -> Case:
        return cls.json_text(what, path, json.dumps(value))


def wrong(rng: random.Random, *allowed: str) -> Any:
    """A value of a JSON kind not in ``allowed`` (``number`` allows integers too)."""
    excluded = set(allowed) | ({"integer"} if "number" in allowed else set())
    return rng.choice(SAMPLES[rng.choice([kind for kind in SAMPLES if kind not in excluded])])


def deep_text(rng: random.Random) -> str:
    depth = rng.choice([MAX_DEPTH + 1, 1_000, 5_000, 50_000])
    if rng.random() < 0.5:
        return "[" * depth + "1" + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


def json_level_cases(rng: random.Random, path: str, valid: Any, count: int) -> Iterator[Case]:
    """Bodies that are not acceptable JSON at all, derived from a valid body of the route."""
    text = json.dumps(valid)
    for index in range(count):
        kind = index % 5
        if kind == 0:
            cut = rng.randint(1, len(text) - 1)
            yield Case.json_text(f"truncated at {cut}", path, text[:cut])
        elif kind == 1:
            spot = rng.randint(0, len(text))
            yield Case.json_text(
                f"invalid UTF-8 at {spot}", path, text[:spot].encode() + b"\xff\xfe" + text[spot:].encode()
            )
        elif kind == 2:
            number = rng.choice(["NaN", "Infinity", "-Infinity", "1e999", "-1e400", "1" + "0" * 5_000])
            yield Case.json_text(
                f"number {number[:12]}", path, json.dumps({"x": "__N__", "y": valid}).replace('"__N__"', number)
            )
        elif kind == 3:
            yield Case.json_text("deep nesting at the root", path, deep_text(rng))
        else:
            deep = deep_text(rng)
            yield Case.json_text(
                "deep nesting inside", path, json.dumps({"x": "__D__", "y": valid}).replace('"__D__"', deep)
            )


# -- /prompt --------------------------------------------------------------------------------


def prompt_body() -> dict[str, Any]:
    return {
        "prompt": {
            "1": {"class_type": "Wait", "inputs": {"seconds": 0.0, "text": "fuzz"}},
            "2": {"class_type": "Record", "inputs": {"value": ["1", 0]}, "_meta": {"title": "Record"}},
        },
        "client_id": "fuzzer",
        "extra_data": {"extra_pnginfo": {"workflow": {"nodes": []}}},
    }


BAD_LINKS: list[Any] = [
    [],
    ["1"],
    ["1", 0, 0],
    [1, 0],
    [None, 0],
    ["1", "0"],
    ["1", 0.5],
    ["1", True],
    ["1", -1],
    ["1", None],
    ["1", {}],
    ["1", []],
    ["99", 0],
    ["1", 1],
    ["1", 10**30],
    ["", 0],
]
BAD_SECONDS: list[Any] = ["abc", {}, None, -1, 61, 1e300, 10**30, {"__value__": "x"}, {"__value__": []}, ["1"]]
ENVELOPE_KINDS = {
    "prompt": ("object",),
    "client_id": ("string", "null"),
    "prompt_id": ("string", "null"),
    "number": ("number", "null"),
    "front": ("boolean", "null"),
    "partial_execution_targets": ("array", "null"),
    "extra_data": ("object", "null"),
}


def broken_prompt(rng: random.Random) -> tuple[str, dict[str, Any]]:
    """A ``/prompt`` body that is wrong in exactly one place, and where."""
    body = prompt_body()
    nodes = body["prompt"]
    node = rng.choice(["1", "2"])
    kind = rng.randrange(12)
    if kind == 0:
        name = rng.choice(list(ENVELOPE_KINDS))
        body[name] = wrong(rng, *ENVELOPE_KINDS[name])
        return f"{name} = {body[name]!r}", body
    if kind == 1:
        body["number"] = rng.choice([1e300, -1e300, 2**60, -(2**60)])
        return f"number = {body['number']!r}", body
    if kind == 2:
        nodes[node] = wrong(rng, "object")
        return f"node {node} = {nodes[node]!r}", body
    if kind == 3:
        nodes[node]["class_type"] = wrong(rng, "string")
        return f"class_type of {node} = {nodes[node]['class_type']!r}", body
    if kind == 4:
        choice = rng.choice(["missing", "", f"NoSuchNode{rng.randrange(100)}"])
        if choice == "missing":
            del nodes[node]["class_type"]
        else:
            nodes[node]["class_type"] = choice
        return f"class_type of {node}: {choice!r}", body
    if kind == 5:
        nodes[node]["inputs"] = wrong(rng, "object")
        return f"inputs of {node} = {nodes[node]['inputs']!r}", body
    if kind == 6:
        nodes["2"]["inputs"]["value"] = rng.choice(BAD_LINKS)
        return f"link {nodes['2']['inputs']['value']!r}", body
    if kind == 7:
        nodes["1"]["inputs"]["seconds"] = rng.choice(BAD_SECONDS)
        return f"seconds = {nodes['1']['inputs']['seconds']!r}", body
    if kind == 8:
        nodes["2"]["_meta"] = rng.choice([wrong(rng, "object"), {"title": wrong(rng, "string")}])
        return f"_meta = {nodes['2']['_meta']!r}", body
    if kind == 9:
        body["partial_execution_targets"] = rng.choice([["99"], ["1"], [], [None], [{}], [0.5]])
        return f"targets = {body['partial_execution_targets']!r}", body
    if kind == 10:
        body["extra_data"] = {"extra_pnginfo": wrong(rng, "object")}
        return f"extra_pnginfo = {body['extra_data']['extra_pnginfo']!r}", body
    del body["prompt"]
    body["workflow"] = rng.choice(
        [wrong(rng, "object"), {"nodes": "x"}, {"nodes": [{"id": "a"}]}, {"nodes": [], "links": "x"}]
    )
    return f"workflow = {body['workflow']!r}", body


def prompt_cases(rng: random.Random) -> Iterator[Case]:
    for prefix in PREFIXES:
        path = f"{prefix}/prompt"
        for _ in range(400):
            what, body = broken_prompt(rng)
            yield Case.json_value(what, path, body)
        for value in ([], "prompt", 1, True, None, [prompt_body()]):
            yield Case.json_value(f"body {value!r:.40}", path, value)
        yield from json_level_cases(rng, path, prompt_body(), 150)


# -- the other JSON routes ------------------------------------------------------------------


def id_list(rng: random.Random) -> Any:
    return rng.choice([wrong(rng, "array"), [wrong(rng, "string")]])


#: route -> (a valid body, a function making a body wrong in one field)
OBJECT_ROUTES: dict[str, tuple[dict[str, Any], Callable[[random.Random], Any]]] = {
    "/queue": (
        {"clear": False, "delete": ["x"]},
        lambda rng: rng.choice([{"clear": wrong(rng, "boolean")}, {"delete": id_list(rng)}]),
    ),
    "/history": (
        {"delete": ["x"]},
        lambda rng: rng.choice([{"clear": wrong(rng, "boolean")}, {"delete": id_list(rng)}]),
    ),
    "/interrupt": ({"prompt_id": "x"}, lambda rng: {"prompt_id": wrong(rng, "string", "null")}),
    "/free": (
        {"free_memory": False},
        lambda rng: {rng.choice(["unload_models", "free_memory"]): wrong(rng, "boolean")},
    ),
    "/jobs/cancel": ({"job_ids": ["x"]}, lambda rng: {"job_ids": id_list(rng)}),
    "/settings": ({"Comfy.Fuzz": 1}, lambda rng: wrong(rng, "object")),
}


def other_route_cases(rng: random.Random) -> Iterator[Case]:
    for prefix in PREFIXES:
        for route, (valid, make_wrong) in OBJECT_ROUTES.items():
            path = prefix + route
            for _ in range(25):
                body = make_wrong(rng)
                yield Case.json_value(f"body {body!r:.60}", path, body)
            yield from json_level_cases(rng, path, valid, 30)
        yield from json_level_cases(rng, f"{prefix}/settings/Comfy.Fuzz", {"any": "value"}, 30)


# -- upload forms ---------------------------------------------------------------------------


def multipart(*parts: bytes, boundary: str = "B") -> tuple[bytes, dict[str, str]]:
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), {
        "Content-Type": f"multipart/form-data; boundary={boundary}"
    }


def part(name: str, value: bytes, *headers: str, filename: str | None = None) -> bytes:
    disposition = f'Content-Disposition: form-data; name="{name}"' + (
        f'; filename="{filename}"' if filename is not None else ""
    )
    head = "\r\n".join(["--B", disposition, *headers])
    return head.encode() + b"\r\n\r\n" + value + b"\r\n"


IMAGE = part("image", b"\x89PNG\r\n\x1a\nnot really", "Content-Type: image/png", filename="a.png")
BROKEN_FORMS: list[tuple[str, bytes, dict[str, str]]] = [
    ("no boundary", b"--B\r\n", {"Content-Type": "multipart/form-data"}),
    ("garbage", b"garbage", {"Content-Type": "multipart/form-data; boundary=B"}),
    (
        "unterminated part",
        b'--B\r\nContent-Disposition: form-data; name="a"\r\n\r\nv\r\n',
        {"Content-Type": "multipart/form-data; boundary=B"},
    ),
    ("part without name", *multipart(b"--B\r\nContent-Disposition: form-data\r\n\r\nv\r\n")),
    ("part without headers", *multipart(b"--B\r\n\r\nv\r\n")),
    ("unknown charset", *multipart(part("type", b"input", "Content-Type: text/plain; charset=nope"), IMAGE)),
    ("unknown transfer encoding", *multipart(part("type", b"input", "Content-Transfer-Encoding: weird"), IMAGE)),
    ("field not UTF-8", *multipart(part("subfolder", b"\xff\xfe", "Content-Type: text/plain; charset=utf-8"), IMAGE)),
    (
        "nested multipart",
        *multipart(part("x", b"--C\r\n\r\nx\r\n--C--", "Content-Type: multipart/mixed; boundary=C"), IMAGE),
    ),
    ("broken part header", *multipart(b"--B\r\nno colon here\r\n\r\nv\r\n", IMAGE)),
    ("no image field", *multipart(part("type", b"input"))),
    ("image is not a file", *multipart(part("image", b"plain text"))),
    ("url-encoded form", b"image=abc&type=input", {"Content-Type": "application/x-www-form-urlencoded"}),
    ("url-encoded, unknown charset", b"image=abc", {"Content-Type": "application/x-www-form-urlencoded; charset=nope"}),
    ("json instead of a form", b'{"image": "abc"}', {"Content-Type": "application/json"}),
    ("no body", b"", {}),
]
BAD_FIELDS: list[dict[str, str]] = [
    {"type": "models"},
    {"type": ""},
    {"type": "../input"},
    {"subfolder": "../outside"},
    {"subfolder": "/etc"},
    {"subfolder": "a\x00b"},
    {"subfolder": "x" * 300},
    {"subfolder": "a/" * 2_100},
    {"subfolder": "/".join(["y" * 250] * 20)},
    {"subfolder": "taken.png"},
    {"subfolder": "taken.png/deeper"},
]
BAD_FILENAMES = ["", ".", "..", "a/b.png", "x" * 300 + ".png", "taken-dir"]
BAD_REFERENCES = [
    "",
    "{",
    "[]",
    "null",
    '{"filename": 5}',
    '{"filename": ""}',
    '{"filename": "missing.png"}',
    '{"filename": "taken.png", "type": "models"}',
    '{"filename": "taken.png", "subfolder": ["x"]}',
    '{"filename": "../../x.png"}',
    '{"filename": "\\ud800.png"}',
    '{"filename": NaN}',
    "[" * 5_000,
    '{"filename": "taken.png"}',
]


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", (2, 2)).save(buffer, format="PNG")
    return buffer.getvalue()


def upload_cases() -> Iterator[Case]:
    for prefix in PREFIXES:
        for route in ("/upload/image", "/upload/mask"):
            path = prefix + route
            reference = [part("original_ref", b'{"filename": "taken.png"}')] if route == "/upload/mask" else []
            for what, body, headers in BROKEN_FORMS:
                yield Case(what, "POST", path, body, headers)
            for fields in BAD_FIELDS:
                body, headers = multipart(*(part(k, v.encode()) for k, v in fields.items()), *reference, IMAGE)
                yield Case(f"fields {fields!r:.60}", "POST", path, body, headers)
            for filename in BAD_FILENAMES:
                image = part("image", b"data", filename=filename)
                yield Case(f"file name {filename!r:.40}", "POST", path, *multipart(*reference, image))
        for original_ref in BAD_REFERENCES:
            # IMAGE is no PNG, so even the one good reference (the last) ends in an unreadable mask.
            yield Case(
                f"original_ref {original_ref!r:.40}",
                "POST",
                f"{prefix}/upload/mask",
                *multipart(part("original_ref", original_ref.encode()), IMAGE),
            )


# -- user paths and query strings -----------------------------------------------------------

BAD_USER_FILES = [
    "..%2F..%2Fsecret.json",
    "%2Fetc%2Fpasswd",
    "a%00b.json",
    "x" * 300,
    "a%2F" * 1_100 + "b",
    "%2F".join(["y" * 250] * 20),
    "taken.json%2Finside.json",
    "sub%2F..%2F..%2Fx",
]
BAD_QUERIES = [
    "/history?max_items=abc",
    "/history?offset=1.5",
    "/history?max_items=",
    "/history?max_items=" + "9" * 5_000,
    "/jobs?limit=abc",
    "/jobs?offset=x",
    "/jobs?status=bogus",
    "/jobs?sort_by=bogus",
    "/userdata",
    "/userdata?dir=",
    "/userdata?dir=..%2F..",
    "/userdata?dir=" + "x" * 300,
    "/userdata?dir=a%00b",
    "/v2/userdata?path=..%2F..",
    "/v2/userdata?path=" + "x" * 300,
    "/v2/userdata?path=nowhere",
]


def path_cases() -> Iterator[Case]:
    for prefix in PREFIXES:
        for name in BAD_USER_FILES:
            for method in ("GET", "POST", "DELETE"):
                yield Case(f"{method} user file {name[:40]}", method, f"{prefix}/userdata/{name}", b"{}")
            yield Case(f"move {name[:40]}", "POST", f"{prefix}/userdata/taken.json/move/{name}")
            yield Case(f"move from {name[:40]}", "POST", f"{prefix}/userdata/{name}/move/ok.json")
        for query in BAD_QUERIES:
            yield Case(f"query {query[:50]}", "GET", prefix + query)


# -- running the cases ----------------------------------------------------------------------


async def refused(client: TestClient, case: Case) -> dict[str, Any]:
    """Send ``case``; it must get a 4xx whose body is a JSON object with an ``error`` that has a message."""
    response = await client.request(case.method, URL(case.path, encoded=True), data=case.data, headers=case.headers)
    text = await response.text()
    where = f"{case.method} {case.path[:80]} ({case.what}) answered {response.status}: {text[:300]}"
    assert 400 <= response.status < 500, where
    assert response.content_type == "application/json", where
    body = json.loads(text)
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), where
    assert isinstance(body["error"].get("type"), str) and isinstance(body["error"].get("message"), str), where
    return body


async def still_runs(client: TestClient) -> None:
    response = await client.post("/prompt", json={"prompt": wait_prompt(0, "still alive")})
    assert response.status == 200, await response.text()
    entry = await wait_for_history(client, (await response.json())["prompt_id"])
    assert entry["status"]["status_str"] == "success" and entry["outputs"]["2"] == {"text": ["still alive"]}


@pytest.fixture
def rng() -> random.Random:
    return random.Random(SEED)


async def test_malformed_prompt_bodies_are_refused_with_the_comfyui_error_shape(client, rng) -> None:
    for case in prompt_cases(rng):
        body = await refused(client, case)
        assert "node_errors" in body, case.what
    assert (await (await client.get("/queue")).json())["queue_pending"] == []
    await still_runs(client)


async def test_malformed_bodies_of_the_other_json_routes_are_refused(client, rng) -> None:
    for case in other_route_cases(rng):
        await refused(client, case)
    assert (await (await client.get("/settings")).json()) == {}
    await still_runs(client)


async def test_broken_upload_forms_are_refused(client, tmp_path) -> None:
    (tmp_path / "input" / "taken-dir").mkdir(parents=True)
    (tmp_path / "input" / "taken.png").write_bytes(png_bytes())
    before = sorted((tmp_path / "input").rglob("*"))
    for case in upload_cases():
        await refused(client, case)
    assert sorted((tmp_path / "input").rglob("*")) == before, "a refused upload stored something"
    await still_runs(client)


async def test_bad_user_paths_and_query_strings_are_refused(client, tmp_path) -> None:
    written = await client.post("/userdata/taken.json", data=b"{}")
    assert written.status == 200
    for case in path_cases():
        await refused(client, case)
    assert (tmp_path / "user" / "default" / "taken.json").read_bytes() == b"{}"
    huge = "9" * 30  # beyond SQLite's 64-bit integers: clamped, so it means "all" and "none"
    assert (await client.get(f"/history?max_items={huge}&offset={huge}")).status == 200
    await still_runs(client)


async def test_bodies_over_the_size_limit_get_413_as_json(make_client) -> None:
    client = await make_client(max_upload_bytes=64 * 1024)
    too_big = json.dumps({"prompt": {"1": {"class_type": "Wait", "inputs": {"text": "x" * 100_000}}}}).encode()
    routes = [
        *(prefix + route for prefix in PREFIXES for route in (*OBJECT_ROUTES, "/prompt", "/settings/Comfy.Fuzz")),
        "/userdata/big.json",
        "/api/userdata/big.json",
    ]
    for path in routes:
        body = await refused(client, Case.json_text("100 kB body", path, too_big))
        assert body["error"]["message"] == "Request body is too large", path
    for path in ("/upload/image", "/api/upload/mask"):
        body, headers = multipart(part("image", b"x" * 100_000, filename="big.png"))
        response = await refused(client, Case("100 kB upload", "POST", path, body, headers))
        assert response["error"]["message"] == "Request body is too large"
    await still_runs(client)


def test_the_fuzz_covers_enough_cases() -> None:
    rng = random.Random(SEED)
    total = sum(1 for _ in prompt_cases(rng)) + sum(1 for _ in other_route_cases(rng)) + sum(1 for _ in upload_cases())
    total += sum(1 for _ in path_cases())
    assert total >= 2_000, total
