"""Node documentation for the help panel: ``GET /loom/node_docs/{node_type}`` and ``GET /docs/{path}``.

A node's page is the one ``comfyui-embedded-docs`` holds for its type when that optional package is
installed (``pip install 'loom[docs]'``), and otherwise one written from the node's own declaration:
its description (the docstring) and the tooltips of its inputs and outputs. Either way the answer
is markdown, so the editor renders both with the same safe renderer (``web/js/markdown.js``).

The package keeps one folder per node type, ``comfyui_embedded_docs/docs/<NodeType>/<locale>.md``,
with the page's pictures beside it (``asset/...``, linked relatively), and for a few types only a
single ``docs/<NodeType>.md``. ComfyUI serves that ``docs`` folder at ``/docs/``, which is where its
own frontend fetches ``/docs/<NodeType>/<locale>.md``; Loom serves it at the same path, so pictures
resolve for Loom's editor and ``--frontend comfyui`` finds its help pages. Files leave through
``server.downloads.file_response``, which never lets one render as a page under this origin. The
package is looked up once, when the app is built, as plugins are.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import importlib.util
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import quote

from aiohttp import web

from graph.spec import NodeSpec
from nodes.folders import UnsafePathError, resolve_inside
from server.downloads import file_response
from server.keys import REGISTRY
from server.responses import error_response

__all__ = [
    "DOCS_PACKAGE",
    "NodeDocPage",
    "add_node_docs_routes",
    "declared_page",
    "embedded_docs_root",
    "locale_order",
    "package_page",
]

log = logging.getLogger(__name__)

DOCS_PACKAGE = "comfyui_embedded_docs"
#: Where ``source`` says a page came from.
PACKAGE_SOURCE = "comfyui-embedded-docs"
DECLARED_SOURCE = "loom"
#: Every page of the package exists in English; other languages cover fewer nodes.
FALLBACK_LOCALE = "en"
#: A BCP 47 tag as ``navigator.language`` gives it (``en``, ``pt-BR``, ``zh-Hant-TW``); nothing else
#: may become part of a file name.
_LOCALE = re.compile(r"^[A-Za-z]{2,3}(?:-[A-Za-z0-9]{2,8})*$")
INSTALL_HINT = "install the optional docs extra: pip install 'loom[docs]' (or pip install comfyui-embedded-docs)"


@dataclass(frozen=True)
class NodeDocPage:
    """One node's help page as the editor receives it."""

    node_type: str
    #: ``comfyui-embedded-docs`` or ``loom`` (written from the node's declaration).
    source: str
    markdown: str
    #: The language file the page came from; ``None`` for a declared page or a package's single file.
    locale: str | None
    #: The URL folder the page's relative picture links are under; ``None`` when it has none.
    assets: str | None


def embedded_docs_root() -> Path | None:
    """The installed package's ``docs`` folder, or ``None`` when the package is not installed."""
    if importlib.util.find_spec(DOCS_PACKAGE) is None:
        return None
    folder = Path(str(importlib.resources.files(DOCS_PACKAGE) / "docs"))
    return folder if folder.is_dir() else None


def locale_order(locale: str) -> list[str]:
    """The language files to try, most specific first: ``pt-BR`` → ``pt-BR, pt, en``.

    The package names most files by language alone (``de.md``) and a few by language and region
    (``pt-BR.md``, ``zh-TW.md``), while browsers report a region almost always.
    """
    parts = locale.split("-")
    order = ["-".join(parts[:count]) for count in range(len(parts), 0, -1)]
    return order if FALLBACK_LOCALE in order else [*order, FALLBACK_LOCALE]


def package_page(root: Path, node_type: str, locale: str) -> NodeDocPage | None:
    """The package's page for ``node_type`` in the closest language it has, or ``None``."""
    try:
        folder = resolve_inside(root, node_type)
        single = resolve_inside(root, f"{node_type}.md")
    except UnsafePathError:
        return None
    for candidate in locale_order(locale):
        page = folder / f"{candidate}.md"
        if page.is_file():
            assets = f"/docs/{quote(node_type)}/"
            return NodeDocPage(node_type, PACKAGE_SOURCE, page.read_text(encoding="utf-8"), candidate, assets)
    if single.is_file():
        return NodeDocPage(node_type, PACKAGE_SOURCE, single.read_text(encoding="utf-8"), None, "/docs/")
    return None


def _socket_line(name: str, type_: str, tooltip: str | None, optional: bool = False) -> str:
    kind = f"{type_}, optional" if optional else type_
    return f"- `{name}` ({kind})" + (f": {tooltip}" if tooltip else "")


def declared_page(spec: NodeSpec) -> NodeDocPage:
    """A page written from what the node declares, for types the package does not cover.

    Reads ``spec.inputs()``, whose combo choices may list model files: call it where the app's
    runtime is lent (any request handler, or a thread started from one).
    """
    lines = [f"# {spec.display_name}", ""]
    if spec.description:
        lines += [spec.description, ""]
    inputs = [entry for entry in spec.inputs() if entry.section != "hidden"]
    if inputs:
        lines += ["## Inputs", ""]
        for entry in inputs:
            type_ = "choice" if entry.choices is not None else entry.type
            lines.append(_socket_line(entry.name, type_, entry.options.get("tooltip"), entry.section == "optional"))
        lines.append("")
    if spec.outputs:
        # ``output_tooltips`` (V1's OUTPUT_TOOLTIPS) is one per output when a node declares it.
        tooltips: tuple[str | None, ...] = spec.output_tooltips or tuple(output.tooltip for output in spec.outputs)
        lines += ["## Outputs", ""]
        for output, tooltip in zip(spec.outputs, tooltips, strict=False):
            lines.append(_socket_line(output.name, output.type, tooltip))
    return NodeDocPage(spec.class_type, DECLARED_SOURCE, "\n".join(lines).strip() + "\n", None, None)


def add_node_docs_routes(app: web.Application) -> None:
    """Add the node-docs routes; call before the frontend's catch-all static route."""
    root = embedded_docs_root()
    if root is not None:
        log.info("node documentation from %s", root)

    async def node_docs(request: web.Request) -> web.Response:
        node_type = request.match_info["node_type"]
        locale = request.query.get("locale", FALLBACK_LOCALE)
        if not _LOCALE.match(locale):
            return error_response(400, "invalid_locale", f"Not a language tag: {locale!r}", "expected e.g. en or pt-BR")
        spec = request.app[REGISTRY].get(node_type)
        if spec is None:
            return error_response(404, "unknown_node_type", f"No node type {node_type!r}")
        page = await asyncio.to_thread(package_page, root, node_type, locale) if root is not None else None
        if page is None:
            page = await asyncio.to_thread(declared_page, spec)
        return web.json_response(asdict(page))

    async def docs_file(request: web.Request) -> web.StreamResponse:
        if root is None:
            return error_response(404, "not_found", "No node documentation package is installed", INSTALL_HINT)
        try:
            path = resolve_inside(root, request.match_info["path"])
        except UnsafePathError as error:
            return error_response(403, "path_refused", "Path refused", f"{error.name!r}: {error.reason}")
        if not path.is_file():
            return error_response(404, "not_found", f"No documentation file {request.match_info['path']!r}")
        return file_response(path)

    app.router.add_get("/loom/node_docs/{node_type}", node_docs)
    app.router.add_get("/api/loom/node_docs/{node_type}", node_docs)
    app.router.add_get("/docs/{path:.+}", docs_file)
