"""Where model files live: ComfyUI's folder layout under ``models/`` plus extra roots from a paths file.

Folder keys and directory names are ComfyUI's (COMPAT 6.1), so a ComfyUI ``models`` folder works as
Loom's models folder unchanged (``configure_folders(base, models=".../ComfyUI/models")``), and so do the
``extra_model_paths.yaml`` files users already have. Two keys have had two names: ``text_encoders`` was
``clip`` and ``diffusion_models`` was ``unet``; both names are served and both directories searched.

There is no YAML library among Loom's dependencies, and the paths file needs very little of YAML, so
``parse_extra_model_paths`` reads a documented subset (see its docstring) and also accepts the same
structure as JSON. Anything outside the subset is an error naming the line, never a silent guess.

Listings are cached per key and reused while the modification time of every directory that was
walked is unchanged: adding, removing or renaming a file changes its directory's mtime, so a refreshed
combo list costs one ``stat`` per directory instead of a walk.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from nodes.folders import current_folders, join_inside

__all__ = [
    "FOLDER_ALIASES",
    "FOLDER_LAYOUT",
    "MODEL_DIRECTORIES",
    "MODEL_EXTENSIONS",
    "ExtraModelPathsError",
    "ModelFolderSpec",
    "ModelNotFoundError",
    "UnknownModelFolderError",
    "add_extra_model_paths",
    "all_model_folders",
    "canonical_key",
    "clear_extra_model_paths",
    "find_model",
    "folder_keys",
    "folder_paths",
    "list_models",
    "parse_extra_model_paths",
]

#: What ComfyUI lists as model files; ``.pt2`` is torch.export's archive, ``.sft`` a safetensors alias.
MODEL_EXTENSIONS = frozenset({".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"})


@dataclass(frozen=True)
class ModelFolderSpec:
    """One folder key: the directories under ``models/`` it covers and the file extensions it lists.

    ``extensions`` None lists every file; ``MODEL_DIRECTORIES`` lists diffusers model folders instead.
    """

    directories: tuple[str, ...]
    extensions: frozenset[str] | None = MODEL_EXTENSIONS


#: The diffusers key lists folders holding a ``model_index.json``, not files.
MODEL_DIRECTORIES: frozenset[str] = frozenset({"model_index.json"})


#: ComfyUI's keys (``folder_paths.py``). ncnn upscalers come as ``.param`` + ``.bin`` pairs, so the
#: upscale folder lists ``.param`` too; ``configs`` holds the legacy LDM yaml files.
FOLDER_LAYOUT: Mapping[str, ModelFolderSpec] = {
    "checkpoints": ModelFolderSpec(("checkpoints",)),
    "configs": ModelFolderSpec(("configs",), frozenset({".yaml"})),
    "loras": ModelFolderSpec(("loras",)),
    "vae": ModelFolderSpec(("vae",)),
    "text_encoders": ModelFolderSpec(("text_encoders", "clip")),
    "diffusion_models": ModelFolderSpec(("unet", "diffusion_models")),
    "clip_vision": ModelFolderSpec(("clip_vision",)),
    "style_models": ModelFolderSpec(("style_models",)),
    "embeddings": ModelFolderSpec(("embeddings",)),
    "diffusers": ModelFolderSpec(("diffusers",), MODEL_DIRECTORIES),
    "vae_approx": ModelFolderSpec(("vae_approx",)),
    "controlnet": ModelFolderSpec(("controlnet", "t2i_adapter")),
    "gligen": ModelFolderSpec(("gligen",)),
    "upscale_models": ModelFolderSpec(("upscale_models",), MODEL_EXTENSIONS | {".param"}),
    "hypernetworks": ModelFolderSpec(("hypernetworks",)),
    "photomaker": ModelFolderSpec(("photomaker",)),
    "classifiers": ModelFolderSpec(("classifiers",), None),
}
#: Legacy key -> current key; both are served, and paths-file entries under either land in one list.
FOLDER_ALIASES: Mapping[str, str] = {"clip": "text_encoders", "unet": "diffusion_models"}


class UnknownModelFolderError(KeyError):
    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"unknown model folder {key!r}; known: {', '.join(folder_keys())}")

    def __str__(self) -> str:
        return str(self.args[0])


class ModelNotFoundError(FileNotFoundError):
    """A model name that is in none of its key's folders; ``searched`` is what a person should check."""

    def __init__(self, key: str, name: str, searched: list[Path]) -> None:
        self.key, self.name, self.searched = key, name, searched
        places = ", ".join(str(path) for path in searched) or "(no folders configured)"
        super().__init__(f"{key} model {name!r} not found; searched: {places}")


class ExtraModelPathsError(ValueError):
    """A paths file Loom cannot read; ``line`` is 1-based, 0 when the problem is the whole file."""

    def __init__(self, file: Path | str, line: int, reason: str) -> None:
        self.file, self.line, self.reason = Path(file), line, reason
        where = f"{file}, line {line}" if line else str(file)
        super().__init__(f"{where}: {reason}")


_extra: dict[str, list[Path]] = {}
_extra_first: dict[str, list[Path]] = {}
_listings: dict[str, tuple[tuple[Path, ...], dict[Path, float], list[str]]] = {}
_lock = threading.Lock()


def canonical_key(key: str) -> str:
    return FOLDER_ALIASES.get(key, key)


def folder_keys() -> list[str]:
    """Every key clients may ask for: the layout's, the legacy aliases and keys added by a paths file."""
    return sorted(set(FOLDER_LAYOUT) | set(FOLDER_ALIASES) | set(_extra) | set(_extra_first))


def _spec(key: str) -> ModelFolderSpec:
    key = canonical_key(key)
    if key in FOLDER_LAYOUT:
        return FOLDER_LAYOUT[key]
    if key in _extra or key in _extra_first:
        return ModelFolderSpec((key,))
    raise UnknownModelFolderError(key)


def folder_paths(key: str) -> list[Path]:
    """The directories searched for ``key``, in order: ``is_default`` extras, ``models/<dir>``, other extras."""
    canonical = canonical_key(key)
    spec = _spec(canonical)
    models = current_folders().models
    paths = [*_extra_first.get(canonical, []), *(models / name for name in spec.directories), *_extra.get(canonical, [])]
    return list(dict.fromkeys(paths))


def _walk(root: Path, extensions: frozenset[str] | None, mtimes: dict[Path, float]) -> list[str]:
    """Names under ``root`` as ``sub/name.ext``; records each visited directory's mtime in ``mtimes``.

    Symlinked files and folders are followed (model folders are the owner's, ``join_inside``); a
    folder reached twice through links (a link to an ancestor) is walked once, and a dangling link is
    not listed, so every listed name is one ``find_model`` loads.
    """
    found = []
    seen: set[tuple[int, int]] = set()
    for directory, subdirectories, files in os.walk(root, followlinks=True):
        status = os.stat(directory)
        if (status.st_dev, status.st_ino) in seen:
            subdirectories[:] = []
            continue
        seen.add((status.st_dev, status.st_ino))
        mtimes[Path(directory)] = status.st_mtime
        subdirectories[:] = sorted(d for d in subdirectories if not d.startswith("."))
        relative = Path(directory).relative_to(root)
        if extensions is MODEL_DIRECTORIES:
            if "model_index.json" in files and relative != Path("."):
                found.append(relative.as_posix())
            continue
        for file_name in files:
            if file_name.startswith(".") or not (extensions is None or Path(file_name).suffix.lower() in extensions):
                continue
            if os.path.isfile(os.path.join(directory, file_name)):
                found.append((relative / file_name).as_posix())
    return found


def _unchanged(mtimes: dict[Path, float]) -> bool:
    try:
        return all(os.stat(path).st_mtime == mtime for path, mtime in mtimes.items())
    except OSError:
        return False


def list_models(key: str) -> list[str]:
    """Sorted model names for ``key`` across its folders; a name in two folders is listed once."""
    canonical = canonical_key(key)
    spec = _spec(canonical)
    roots = tuple(path for path in folder_paths(canonical) if path.is_dir())
    with _lock:
        cached = _listings.get(canonical)
        if cached is not None and cached[0] == roots and _unchanged(cached[1]):
            return list(cached[2])
    mtimes: dict[Path, float] = {}
    names: set[str] = set()
    for root in roots:
        names.update(_walk(root, spec.extensions, mtimes))
    listing = sorted(names)
    with _lock:
        _listings[canonical] = (roots, mtimes, listing)
    return list(listing)


def find_model(key: str, name: str) -> Path:
    """The file ``name`` (as listed by ``list_models``) in the first of ``key``'s folders that has it.

    The name may not climb out of a folder (``join_inside``); symlinks in it are followed wherever
    they lead, as ``list_models`` follows them.
    """
    searched = folder_paths(key)
    for folder in searched:
        if folder.is_dir():
            path = join_inside(folder, name)
            if path.is_file() or (_spec(key).extensions is MODEL_DIRECTORIES and path.is_dir()):
                return path
    raise ModelNotFoundError(canonical_key(key), name, searched)


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


def parse_extra_model_paths(text: str, file: Path | str) -> dict[str, list[tuple[Path, bool]]]:
    """Folder key -> ``[(directory, is_default)]`` from the text of an extra-model-paths file.

    The subset of YAML read: top-level ``section:`` lines; under each, indented ``key: value`` lines
    where ``base_path`` is the root the other values are relative to (itself relative to the file's
    directory) and ``is_default: true`` puts the section's folders before Loom's own; every other key
    is a folder key whose value is one path or a ``|`` block with one path per line. ``#`` comments,
    quoted values and blank lines are allowed. JSON with the same structure (text starting with ``{``)
    is read too. A file that is empty or has only comments adds nothing.
    """
    file = Path(file)
    sections = _parse_json(text, file) if text.lstrip().startswith("{") else _parse_yaml_subset(text, file)
    found: dict[str, list[tuple[Path, bool]]] = {}
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
                    found.setdefault(canonical_key(key), []).append(((base / path).resolve(), is_default))
    return found


def add_extra_model_paths(file: str | os.PathLike[str]) -> dict[str, list[Path]]:
    """Read a paths file (``extra_model_paths.yaml``, or JSON) and add its folders; returns what it added."""
    path = Path(file).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ExtraModelPathsError(path, 0, f"cannot be read: {error.strerror or error}") from None
    added: dict[str, list[Path]] = {}
    with _lock:
        for key, folders in parse_extra_model_paths(text, path).items():
            for folder, first in folders:
                (_extra_first if first else _extra).setdefault(key, []).append(folder)
                added.setdefault(key, []).append(folder)
        _listings.clear()
    return added


def clear_extra_model_paths() -> None:
    """Forget every added folder (tests, or a server reconfigured at run time)."""
    with _lock:
        _extra.clear()
        _extra_first.clear()
        _listings.clear()


def all_model_folders() -> dict[str, list[Path]]:
    """Key -> searched directories, for every key (the server's ``/experiment/models`` answer)."""
    return {key: folder_paths(key) for key in folder_keys()}
