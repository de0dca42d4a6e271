"""ComfyUI's ``extra_model_paths.yaml``: more model folders, from another install or another disk.

There is no YAML library among Loom's dependencies, and the paths file needs very little of YAML, so
``parse_extra_model_paths`` reads a documented subset (see its docstring) and also accepts the same
structure as JSON. Anything outside the subset is an error naming the line, never a silent guess.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["ExtraModelPathsError", "ExtraFolders", "parse_extra_model_paths", "read_extra_model_paths"]

#: Folder key -> ``[(directory, is_default)]``: ``is_default`` folders are searched before ``models/``.
ExtraFolders = dict[str, list[tuple[Path, bool]]]


class ExtraModelPathsError(ValueError):
    """A paths file Loom cannot read; ``line`` is 1-based, 0 when the problem is the whole file."""

    def __init__(self, file: Path | str, line: int, reason: str) -> None:
        self.file, self.line, self.reason = Path(file), line, reason
        where = f"{file}, line {line}" if line else str(file)
        super().__init__(f"{where}: {reason}")


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def _strip_comment(line: str) -> str:
    """YAML comments start at ``#`` at the line start or after a space, outside quotes; ``a#b`` is kept."""
    quote = None
    for index, char in enumerate(line):
        if quote is not None:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index]
    return line


def _parse_yaml_subset(text: str, file: Path) -> dict[str, dict[str, str | list[str]]]:
    sections: dict[str, dict[str, str | list[str]]] = {}
    current: dict[str, str | list[str]] | None = None
    block: list[str] | None = None
    block_indent = 0
    key_indent = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        if "\t" in raw[: len(raw) - len(raw.lstrip())]:
            raise ExtraModelPathsError(file, number, "indentation uses a tab; YAML allows spaces only")
        line = _strip_comment(raw).rstrip()
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if block is not None and indent > key_indent:
            if not block and not block_indent:
                block_indent = indent
            block.append(line.strip())
            continue
        block = None
        content = line.strip()
        if indent == 0:
            if not content.endswith(":"):
                raise ExtraModelPathsError(file, number, f"expected a section name ending in ':', got {content!r}")
            current = sections.setdefault(_unquote(content[:-1].strip()), {})
            continue
        if current is None:
            raise ExtraModelPathsError(file, number, "an indented entry comes before any section")
        name, colon, value = content.partition(":")
        if not colon:
            raise ExtraModelPathsError(file, number, f"expected 'key: value', got {content!r}")
        name, value = _unquote(name.strip()), value.strip()
        if value in ("|", "|-", "|+", ">", ">-"):
            block, block_indent, key_indent = [], 0, indent
            current[name] = block
        else:
            current[name] = _unquote(value)
    return sections


def _parse_json(text: str, file: Path) -> dict[str, dict[str, str | list[str]]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ExtraModelPathsError(file, error.lineno, f"invalid JSON: {error.msg}") from None
    if not isinstance(data, dict) or not all(isinstance(section, dict) for section in data.values()):
        raise ExtraModelPathsError(file, 0, "expected an object of sections, each an object of folder entries")
    return data


def parse_extra_model_paths(text: str, file: Path | str) -> ExtraFolders:
    """Folder key -> ``[(directory, is_default)]`` from the text of an extra-model-paths file.

    The subset of YAML read: top-level ``section:`` lines; under each, indented ``key: value`` lines
    where ``base_path`` is the root the other values are relative to (itself relative to the file's
    directory) and ``is_default: true`` puts the section's folders before Loom's own; every other key
    is a folder key whose value is one path or a ``|`` block with one path per line. ``#`` comments,
    quoted values and blank lines are allowed. JSON with the same structure (text starting with ``{``)
    is read too. A file that is empty or has only comments adds nothing. Keys are kept as written;
    ``nodes.model_folders.ModelPaths`` maps legacy names onto current ones.
    """
    file = Path(file)
    sections = _parse_json(text, file) if text.lstrip().startswith("{") else _parse_yaml_subset(text, file)
    found: ExtraFolders = {}
    for name, entries in sections.items():
        base = Path(os.path.expandvars(str(entries.get("base_path", "")))).expanduser()
        base = base if base.is_absolute() else file.parent / base
        is_default = str(entries.get("is_default", "false")).lower() == "true"
        for key, value in entries.items():
            if key in ("base_path", "is_default"):
                continue
            values = value if isinstance(value, list) else [value]
            if not all(isinstance(item, str) for item in values):
                raise ExtraModelPathsError(file, 0, f"section {name!r}, key {key!r}: paths must be strings")
            for item in values:
                if item.strip():
                    path = Path(os.path.expandvars(item.strip())).expanduser()
                    found.setdefault(key, []).append(((base / path).resolve(), is_default))
    return found


def read_extra_model_paths(file: str | os.PathLike[str]) -> ExtraFolders:
    """Read a paths file (``extra_model_paths.yaml``, or JSON); its problems name the file and line."""
    path = Path(file).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ExtraModelPathsError(path, 0, f"cannot be read: {error.strerror or error}") from None
    return parse_extra_model_paths(text, path)
