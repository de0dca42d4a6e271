"""ComfyUI's ``folder_paths`` for node packs, answered from Loom's runtime folders.

Supported: the model folder keys of ComfyUI's layout and their legacy aliases (``clip`` is
``text_encoders``, ``unet`` is ``diffusion_models``), ``extra_model_paths.yaml`` folders and
symlinks included, as Loom's loaders see them (``nodes.model_folders``); ``custom_nodes`` (this
repository's plugin folder); folders and extensions packs add (``add_model_folder_path``, assigning
``folder_names_and_paths[key]``, appending to its folder list or adding to its extension set); the
input, output, temp and user folders; ComfyUI's save naming (``get_save_image_path``) and annotated
names (``"photo.png [output]"``).

Every answer is read when asked, from the runtime ``pack_runtime()`` picks (the running prompt's; at
import time the server's), so ``folder_paths.models_dir`` and ``folder_names_and_paths`` are live
views, not values fixed at import. What packs add is kept for the whole process, as ComfyUI keeps
it, and joins every runtime's folders: a runtime's own folders are always searched, a pack's after
them (or first, with ``is_default``).

Not supported: ``set_output_directory`` and the other setters (the host chooses the folders);
removing a folder or an extension (Loom's folders come from its configuration); the ComfyUI
filename cache (``filename_list_cache`` is an inert dict: Loom's listings check directory mtimes, so
nothing needs clearing); ``get_input_subfolders``, ``filter_files_content_types``, system users.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Iterable, Iterator, MutableMapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, SupportsIndex

from nodes.comfy_compat.pack_runtime import pack_runtime
from nodes.folders import UnsafePathError, expand_prefix, join_inside, resolve_inside, split_annotation
from nodes.model_folders import (
    MODEL_DIRECTORIES,
    MODEL_EXTENSIONS,
    ModelNotFoundError,
    ModelPaths,
    UnknownModelFolderError,
    canonical_key,
)

__all__ = [
    "add_model_folder_path",
    "exists_annotated_filepath",
    "filter_files_extensions",
    "folder_names_and_paths",
    "get_annotated_filepath",
    "get_directory_by_type",
    "get_filename_list",
    "get_folder_paths",
    "get_full_path",
    "get_full_path_or_raise",
    "get_input_directory",
    "get_output_directory",
    "get_save_image_path",
    "get_temp_directory",
    "get_user_directory",
    "map_legacy",
    "supported_pt_extensions",
]

#: ComfyUI's model file extensions. Adding one here lists it in every folder that uses this set, as in ComfyUI.
supported_pt_extensions: set[str] = set(MODEL_EXTENSIONS)
#: Kept for packs that clear it after downloading a model; Loom's listings need no clearing.
filename_list_cache: dict[str, Any] = {}
#: The repository's plugin folder (the server's ``custom_nodes/``); more are added by ``add_model_folder_path``.
CUSTOM_NODES = Path(__file__).resolve().parents[2] / "custom_nodes"
#: ComfyUI's extension set of the diffusers key: it lists folders, never files.
_FOLDER_MARKER = frozenset({"folder"})


@dataclass
class PackFolders:
    """What packs added to one folder key, for the whole process."""

    first: list[str] = field(default_factory=list)
    last: list[str] = field(default_factory=list)
    extensions: set[str] = field(default_factory=set)
    #: Set when a pack assigned the key: these extensions replace the key's own (empty: every file).
    replaced_extensions: set[str] | None = None


#: Folder key -> what packs added; keys Loom does not know exist only here (``custom_nodes`` from the start).
pack_folders: dict[str, PackFolders] = {
    "custom_nodes": PackFolders(last=[str(CUSTOM_NODES)], replaced_extensions=set()),
}


def _pack_entry(key: str) -> PackFolders | None:
    return pack_folders.get(key)


def _loom_paths() -> ModelPaths:
    return pack_runtime().model_paths


def _is_loom_key(paths: ModelPaths, key: str) -> bool:
    try:
        paths.spec(key)
    except UnknownModelFolderError:
        return False
    return True


def map_legacy(folder_name: str) -> str:
    """``clip`` -> ``text_encoders``, ``unet`` -> ``diffusion_models``; other names unchanged."""
    return canonical_key(folder_name)


def _known_keys(paths: ModelPaths) -> list[str]:
    return sorted(set(paths.keys()) | set(pack_folders))


def _folders(key: str) -> list[str] | None:
    """The folders searched for ``key``, in order; None for a key nobody defined."""
    paths, key = _loom_paths(), canonical_key(key)
    added = _pack_entry(key)
    own = [str(folder) for folder in paths.folders(key)] if _is_loom_key(paths, key) else None
    if own is None and added is None:
        return None
    if added is None:
        return own
    return list(dict.fromkeys([*added.first, *(own or []), *added.last]))


def _own_extensions(paths: ModelPaths, key: str) -> frozenset[str] | None:
    """The extensions Loom lists for one of its keys, with ``supported_pt_extensions`` standing for
    ComfyUI's model extensions; None lists every file."""
    extensions = paths.spec(key).extensions
    if extensions is MODEL_DIRECTORIES:
        return _FOLDER_MARKER
    if extensions is MODEL_EXTENSIONS:
        return frozenset(supported_pt_extensions)
    return extensions


def _extensions(key: str) -> frozenset[str] | None:
    """The extensions ``get_filename_list`` lists for ``key``; None lists every file."""
    paths, key = _loom_paths(), canonical_key(key)
    added = _pack_entry(key)
    if added is not None and added.replaced_extensions is not None:
        base: frozenset[str] | None = frozenset(added.replaced_extensions)
    elif _is_loom_key(paths, key):
        base = _own_extensions(paths, key)
    else:
        base = frozenset()
    if added is not None and added.extensions and base is not None:
        base |= added.extensions
    return base or None


def _raise_unknown(key: str) -> NoReturn:
    raise UnknownModelFolderError(key, _known_keys(_loom_paths()))


def get_folder_paths(folder_name: str) -> list[str]:
    """The folders searched for ``folder_name``; ``KeyError`` (naming the known keys) for an unknown one."""
    found = _folders(folder_name)
    if found is None:
        _raise_unknown(folder_name)
    return found


def get_filename_list(folder_name: str) -> list[str]:
    """Sorted ``sub/name.ext`` names of the files in ``folder_name``'s folders, as loader combos list them."""
    paths, key = _loom_paths(), canonical_key(folder_name)
    folders = _folders(key)
    if folders is None:
        _raise_unknown(folder_name)
    extensions = _extensions(key)
    if _is_loom_key(paths, key) and (
        extensions == _FOLDER_MARKER or _pack_entry(key) is None and _as_loom_lists(paths, key)
    ):
        return paths.names(key)  # Loom's cached listing, the one its own loaders offer
    names: set[str] = set()
    for folder in folders:
        names.update(_walk(Path(folder), extensions))
    return sorted(names)


def _as_loom_lists(paths: ModelPaths, key: str) -> bool:
    """Whether Loom's listing of one of its keys is what this module would list (no extension was added)."""
    return paths.spec(key).extensions is not MODEL_EXTENSIONS or supported_pt_extensions == MODEL_EXTENSIONS


def _walk(root: Path, extensions: frozenset[str] | None) -> Iterator[str]:
    """Files under ``root`` with one of ``extensions`` (any, for None), hidden entries skipped, symlinks
    followed; a folder reached twice through links (a link to an ancestor) is walked once."""
    seen: set[tuple[int, int]] = set()
    for directory, subdirectories, files in os.walk(root, followlinks=True):
        status = os.stat(directory)
        if (status.st_dev, status.st_ino) in seen:
            subdirectories[:] = []
            continue
        seen.add((status.st_dev, status.st_ino))
        subdirectories[:] = [d for d in subdirectories if not d.startswith(".")]
        relative = Path(directory).relative_to(root)
        for name in files:
            if name.startswith(".") or (extensions is not None and Path(name).suffix.lower() not in extensions):
                continue
            if os.path.isfile(os.path.join(directory, name)):
                yield (relative / name).as_posix()


def get_full_path(folder_name: str, filename: str) -> str | None:
    """The file ``filename`` in the first of ``folder_name``'s folders holding it; None when none does,
    for an unknown key, and for a name that climbs out of the folder (``..``, absolute)."""
    folders = _folders(folder_name)
    for folder in folders or []:
        try:
            path = join_inside(Path(folder), filename)
        except UnsafePathError:
            return None
        if path.is_file():
            return str(path)
    return None


def get_full_path_or_raise(folder_name: str, filename: str) -> str:
    """``get_full_path``, raising ``FileNotFoundError`` that names the folder key, the file and where it looked."""
    found = get_full_path(folder_name, filename)
    if found is not None:
        return found
    folders = _folders(folder_name)
    if folders is None:
        known = ", ".join(_known_keys(_loom_paths()))
        raise FileNotFoundError(f"no model folder {folder_name!r} to find {filename!r} in; known: {known}")
    raise ModelNotFoundError(canonical_key(folder_name), filename, [Path(folder) for folder in folders])


def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
    """Search ``full_folder_path`` for ``folder_name`` too, first with ``is_default``; a new key lists every file."""
    key = canonical_key(folder_name)
    paths = _loom_paths()
    entry = _pack_entry(key)
    if entry is None:
        entry = pack_folders[key] = PackFolders()
        if not _is_loom_key(paths, key):
            entry.replaced_extensions = set()
    folder = str(full_folder_path)
    if folder in entry.first or folder in entry.last:
        if not is_default:
            return
        for place in (entry.first, entry.last):
            if folder in place:
                place.remove(folder)
    if is_default:
        entry.first.insert(0, folder)
    else:
        entry.last.append(folder)


def _assign(key: str, value: Any) -> None:
    try:
        folders, extensions = value
    except (TypeError, ValueError):
        raise TypeError(
            f"folder_names_and_paths[{key!r}] takes a (folders, extensions) pair, got {type(value).__name__}"
        ) from None
    folders = [folders] if isinstance(folders, (str, os.PathLike)) else list(folders)
    paths = _loom_paths()
    own = {str(folder) for folder in paths.folders(key)} if _is_loom_key(paths, key) else set()
    pack_folders[key] = PackFolders(
        last=[str(folder) for folder in folders if str(folder) not in own],
        replaced_extensions={str(extension).lower() for extension in extensions},
    )


def _refuse(what: str) -> Any:
    def refused(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"{what}: Loom's model folders come from its configuration and can only be added to")

    return refused


class FolderList(list[str]):
    """The folders of one key; appending or inserting a folder adds it for the whole process."""

    def __init__(self, key: str, folders: Iterable[str]) -> None:
        super().__init__(folders)
        self.key = key

    def append(self, folder: str) -> None:
        add_model_folder_path(self.key, folder)
        super().append(folder)

    def insert(self, index: SupportsIndex, folder: str) -> None:
        add_model_folder_path(self.key, folder, is_default=operator.index(index) == 0)
        super().insert(index, folder)

    def extend(self, folders: Iterable[str]) -> None:
        for folder in folders:
            self.append(folder)

    def __iadd__(self, folders: Iterable[str]) -> FolderList:  # type: ignore[override,misc]
        self.extend(folders)
        return self

    remove = pop = clear = sort = reverse = _refuse("removing or reordering model folders")
    __setitem__ = __delitem__ = __imul__ = _refuse("replacing model folders")


class ExtensionSet(set[str]):
    """The extensions one key lists; adding one lists those files too, for the whole process."""

    def __init__(self, key: str, extensions: Iterable[str]) -> None:
        super().__init__(extensions)
        self.key = key

    def add(self, extension: str) -> None:
        entry = _pack_entry(self.key) or pack_folders.setdefault(self.key, PackFolders())
        entry.extensions.add(extension.lower())
        super().add(extension)

    def update(self, *groups: Iterable[str]) -> None:
        for group in groups:
            for extension in group:
                self.add(extension)

    def __ior__(self, extensions: Any) -> ExtensionSet:  # type: ignore[override,misc]
        self.update(extensions)
        return self

    discard = remove = pop = clear = _refuse("removing model file extensions")
    difference_update = intersection_update = symmetric_difference_update = _refuse("removing model file extensions")
    __isub__ = __iand__ = __ixor__ = _refuse("removing model file extensions")


class FolderNamesAndPaths(MutableMapping[str, tuple[list[str], set[str]]]):
    """``key -> (folders, extensions)`` read from the current runtime on every access (ComfyUI's dict).

    Assigning a key defines it (a key of Loom's keeps its own folders and searches the given ones
    after them; the extensions replace its own); an empty extension set lists every file.
    """

    def __getitem__(self, key: str) -> tuple[list[str], set[str]]:
        canonical = canonical_key(key)
        folders = _folders(canonical)
        if folders is None:
            raise UnknownModelFolderError(key, _known_keys(_loom_paths()))
        return FolderList(canonical, folders), ExtensionSet(canonical, _extensions(canonical) or ())

    def __setitem__(self, key: str, value: tuple[list[str], set[str]]) -> None:
        _assign(canonical_key(key), value)

    def __delitem__(self, key: str) -> None:
        canonical = canonical_key(key)
        if _is_loom_key(_loom_paths(), canonical) or canonical == "custom_nodes":
            raise TypeError(f"folder key {key!r} is one of Loom's and cannot be removed")
        del pack_folders[canonical]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in _known_keys(_loom_paths())

    def __iter__(self) -> Iterator[str]:
        return iter(_known_keys(_loom_paths()))

    def __len__(self) -> int:
        return len(_known_keys(_loom_paths()))


folder_names_and_paths = FolderNamesAndPaths()


def get_input_directory() -> str:
    return str(pack_runtime().folders.input)


def get_output_directory() -> str:
    return str(pack_runtime().folders.output)


def get_temp_directory() -> str:
    return str(pack_runtime().folders.temp)


def get_user_directory() -> str:
    return str(pack_runtime().folders.user)


_DIRECTORY_ATTRIBUTES = {
    "base_path": "base",
    "models_dir": "models",
    "input_directory": "input",
    "output_directory": "output",
    "temp_directory": "temp",
    "user_directory": "user",
}


def __getattr__(name: str) -> str:
    """``models_dir``, ``base_path``, ``output_directory`` ...: the current runtime's folders (PEP 562)."""
    folder = _DIRECTORY_ATTRIBUTES.get(name)
    if folder is None:
        raise AttributeError(f"module 'folder_paths' has no attribute {name!r} (Loom provides: {', '.join(__all__)})")
    return str(getattr(pack_runtime().folders, folder))


def get_directory_by_type(type_name: str) -> str | None:
    """The ``output``, ``temp`` or ``input`` folder; None for any other name."""
    if type_name not in ("output", "temp", "input"):
        return None
    return str(getattr(pack_runtime().folders, type_name))


def get_annotated_filepath(name: str, default_dir: str | None = None) -> str:
    """The file ``"photo.png [output]"`` names (``[input]``/``[temp]`` likewise; unannotated: ``default_dir``,
    else input); raises ``ValueError`` for a name that resolves outside that folder, symlinks included."""
    bare, kind = split_annotation(name)
    folder = Path(default_dir) if bare == name and default_dir is not None else pack_runtime().folders.directory(kind)
    return str(resolve_inside(folder, bare))


def exists_annotated_filepath(name: str) -> bool:
    """Whether ``get_annotated_filepath(name)`` exists; False for a name that would leave its folder."""
    try:
        return os.path.exists(get_annotated_filepath(name))
    except UnsafePathError:
        return False


def filter_files_extensions(files: Iterable[str], extensions: Iterable[str]) -> list[str]:
    """The sorted ``files`` whose extension (any case) is in ``extensions``; all of them for no extensions."""
    wanted = frozenset(extensions)
    return sorted(name for name in files if not wanted or os.path.splitext(name)[1].lower() in wanted)


def get_save_image_path(
    filename_prefix: str, output_dir: str, image_width: int = 0, image_height: int = 0
) -> tuple[str, str, int, str, str]:
    """``(folder, filename, counter, subfolder, filename_prefix)`` for files a pack writes as
    ``f"{filename}_{counter:05}_.png"``, with ComfyUI's semantics.

    ``%width%``, ``%height%``, ``%year%`` ... ``%second%`` (and Loom's ``%date:FORMAT%``) are
    substituted; a ``sub/dir/`` part becomes a folder under ``output_dir``, created if missing, and
    one that resolves outside it (``..``, absolute, a symlink out) raises ``ValueError``. The counter
    is one past the highest number found after ``<filename>_`` in that folder, whatever follows the
    number (``name_00007_.png``, ``name_00007.mp4``): packs that write other patterns keep counting.
    """
    if "%" in filename_prefix:
        filename_prefix = expand_prefix(filename_prefix, image_width, image_height, datetime.now())
    normalised = os.path.normpath(filename_prefix)
    subfolder, filename = os.path.dirname(normalised), os.path.basename(normalised)
    if filename in ("", ".", ".."):
        raise UnsafePathError(filename_prefix, Path(output_dir), "the prefix names no file")
    folder = resolve_inside(Path(output_dir), subfolder or ".")
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder), filename, _next_counter(folder, filename), subfolder, filename_prefix


def _next_counter(folder: Path, filename: str) -> int:
    head = filename + "_"
    highest = 0
    for entry in os.listdir(folder):
        if entry.startswith(head):
            number = entry[len(head) :].split(".", 1)[0].split("_", 1)[0]
            highest = max(highest, int(number) if number.isascii() and number.isdigit() else 0)
    return highest + 1
