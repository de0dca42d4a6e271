"""Where model files live: ComfyUI's folder layout under ``models/`` plus extra roots from a paths file.

Folder keys and directory names are ComfyUI's (docs/compatibility.md §6.1), so a ComfyUI ``models`` folder works as
Loom's models folder unchanged (``--models-dir .../ComfyUI/models``), and so do the
``extra_model_paths.yaml`` files users already have (``nodes.extra_model_paths``). Two keys have had
two names: ``text_encoders`` was ``clip`` and ``diffusion_models`` was ``unet``; both names are served
and both directories searched.

A ``ModelPaths`` is one runtime's set of model folders (``nodes.runtime``): two servers in one process
each have their own. Listings are cached per key and reused while the modification time of every
directory that was walked is unchanged: adding, removing or renaming a file changes its directory's
mtime, so a refreshed combo list costs one ``stat`` per directory instead of a walk.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from nodes.extra_model_paths import ExtraFolders, read_extra_model_paths
from nodes.folders import join_inside

__all__ = [
    "FOLDER_ALIASES",
    "FOLDER_LAYOUT",
    "MODEL_DIRECTORIES",
    "MODEL_EXTENSIONS",
    "ModelFolderSpec",
    "ModelNotFoundError",
    "ModelPaths",
    "UnknownModelFolderError",
    "canonical_key",
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
    def __init__(self, key: str, known: list[str]) -> None:
        self.key = key
        super().__init__(f"unknown model folder {key!r}; known: {', '.join(known)}")

    def __str__(self) -> str:
        return str(self.args[0])


class ModelNotFoundError(FileNotFoundError):
    """A model name that is in none of its key's folders; ``searched`` is what a person should check."""

    def __init__(self, key: str, name: str, searched: list[Path]) -> None:
        self.key, self.name, self.searched = key, name, searched
        places = ", ".join(str(path) for path in searched) or "(no folders configured)"
        super().__init__(f"{key} model {name!r} not found; searched: {places}")


def canonical_key(key: str) -> str:
    return FOLDER_ALIASES.get(key, key)


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


_Listing = tuple[tuple[Path, ...], dict[Path, float], list[str]]


class ModelPaths:
    """The model folders of one runtime: ``models/`` in ComfyUI's layout, plus extra folders (those
    marked ``is_default`` searched first). Immutable once built; only its listing cache changes."""

    def __init__(self, models: Path, extra: ExtraFolders | None = None) -> None:
        self.models = models
        self._first: dict[str, list[Path]] = {}
        self._last: dict[str, list[Path]] = {}
        for key, folders in (extra or {}).items():
            for folder, first in folders:
                (self._first if first else self._last).setdefault(canonical_key(key), []).append(folder)
        self._listings: dict[str, _Listing] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_files(cls, models: Path, extra_files: tuple[Path, ...] = ()) -> ModelPaths:
        """``models`` plus the folders of each ``extra_model_paths.yaml`` (or JSON) file, in order."""
        extra: ExtraFolders = {}
        for file in extra_files:
            for key, folders in read_extra_model_paths(file).items():
                extra.setdefault(key, []).extend(folders)
        return cls(models, extra)

    def keys(self) -> list[str]:
        """Every key clients may ask for: the layout's, the legacy aliases and keys added by a paths file."""
        return sorted(set(FOLDER_LAYOUT) | set(FOLDER_ALIASES) | set(self._first) | set(self._last))

    def spec(self, key: str) -> ModelFolderSpec:
        key = canonical_key(key)
        if key in FOLDER_LAYOUT:
            return FOLDER_LAYOUT[key]
        if key in self._first or key in self._last:
            return ModelFolderSpec((key,))
        raise UnknownModelFolderError(key, self.keys())

    def folders(self, key: str) -> list[Path]:
        """The directories searched for ``key``, in order: ``is_default`` extras, ``models/<dir>``, other extras."""
        canonical = canonical_key(key)
        spec = self.spec(canonical)
        paths = [
            *self._first.get(canonical, []),
            *(self.models / name for name in spec.directories),
            *self._last.get(canonical, []),
        ]
        return list(dict.fromkeys(paths))

    def all_folders(self) -> dict[str, list[Path]]:
        """Key -> searched directories, for every key (the server's ``/experiment/models`` answer)."""
        return {key: self.folders(key) for key in self.keys()}

    def names(self, key: str) -> list[str]:
        """Sorted model names for ``key`` across its folders; a name in two folders is listed once."""
        canonical = canonical_key(key)
        spec = self.spec(canonical)
        roots = tuple(path for path in self.folders(canonical) if path.is_dir())
        with self._lock:
            cached = self._listings.get(canonical)
            if cached is not None and cached[0] == roots and _unchanged(cached[1]):
                return list(cached[2])
        mtimes: dict[Path, float] = {}
        names: set[str] = set()
        for root in roots:
            names.update(_walk(root, spec.extensions, mtimes))
        listing = sorted(names)
        with self._lock:
            self._listings[canonical] = (roots, mtimes, listing)
        return list(listing)

    def find(self, key: str, name: str) -> Path:
        """The file ``name`` (as ``names`` gives it) in the first of ``key``'s folders that has it.

        The name may not climb out of a folder (``join_inside``); symlinks in it are followed wherever
        they lead, as ``names`` follows them.
        """
        searched = self.folders(key)
        for folder in searched:
            if folder.is_dir():
                path = join_inside(folder, name)
                if path.is_file() or (self.spec(key).extensions is MODEL_DIRECTORIES and path.is_dir()):
                    return path
        raise ModelNotFoundError(canonical_key(key), name, searched)
