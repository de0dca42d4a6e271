"""Where Loom's files live, and the rules that keep every file a node touches inside those folders.

``make_folders`` builds (and creates) one installation's folders; they are part of a runtime
(``nodes.runtime``), which nodes reach when they run, never at import time, so one process can serve
several base directories (and tests use temporary ones).

In the folders that web requests write and read (input, output, temp), every path built from a
user-supplied name is resolved, symlinks included, and only then checked for containment. ComfyUI
checks the unresolved path, which lets a symlink inside an allowed folder reach anywhere (docs/compatibility.md §1.6,
issue #12285); resolving first closes that hole. Model folders are the owner's: there symlinks are
followed wherever they lead, and only the name is checked (``join_inside``).

Save naming follows ComfyUI (docs/compatibility.md §5, "Save naming") so clients that predict or parse file names keep
working: ``<subfolder>/<base>_<counter:05>_.png`` with ``counter`` one past the highest existing one.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePath
from typing import Literal

FolderKind = Literal["input", "output", "temp"]
#: The folders a name annotated like ``photo.png [output]`` may point into; only these are reachable over HTTP.
FOLDER_KINDS: tuple[FolderKind, ...] = ("input", "output", "temp")

#: Extensions offered in image combos; a fixed list because Pillow registers stubs (.mpeg, .h5) that open nothing.
IMAGE_EXTENSIONS = frozenset(
    {
        ".png",
        ".apng",
        ".jpg",
        ".jpeg",
        ".jpe",
        ".jfif",
        ".webp",
        ".gif",
        ".bmp",
        ".dib",
        ".tif",
        ".tiff",
        ".tga",
        ".avif",
        ".qoi",
        ".ppm",
        ".pgm",
        ".pbm",
        ".pnm",
        ".psd",
        ".ico",
    }
)


@dataclass(frozen=True)
class Folders:
    """The directories of one Loom installation, all absolute and resolved."""

    base: Path
    input: Path
    output: Path
    temp: Path
    user: Path
    models: Path

    def directory(self, kind: FolderKind) -> Path:
        if kind not in FOLDER_KINDS:
            raise ValueError(f"unknown folder kind {kind!r}; expected one of {', '.join(FOLDER_KINDS)}")
        return getattr(self, kind)


class UnsafePathError(ValueError):
    """A user-supplied name would reach outside the folder it must stay in."""

    def __init__(self, name: str, folder: Path, reason: str) -> None:
        super().__init__(f"{name!r} is refused in {folder}: {reason}")
        self.name = name
        self.folder = folder
        self.reason = reason


def make_folders(
    base: str | os.PathLike[str],
    *,
    input: str | os.PathLike[str] | None = None,
    output: str | os.PathLike[str] | None = None,
    temp: str | os.PathLike[str] | None = None,
    user: str | os.PathLike[str] | None = None,
    models: str | os.PathLike[str] | None = None,
) -> Folders:
    """The folders of one installation, created if missing; each defaults to ``<base>/<name>``."""
    root = Path(base).expanduser().resolve()

    def pick(override: str | os.PathLike[str] | None, name: str) -> Path:
        folder = Path(override).expanduser().resolve() if override is not None else root / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    return Folders(
        base=root,
        input=pick(input, "input"),
        output=pick(output, "output"),
        temp=pick(temp, "temp"),
        user=pick(user, "user"),
        models=pick(models, "models"),
    )


#: The longest file or folder name ext4, XFS, APFS and NTFS accept, in bytes.
NAME_MAX_BYTES = 255
#: Linux's limit for a whole path, terminating NUL included.
PATH_MAX_BYTES = 4096
#: Folders within folders a name may hold; far beyond real use, far below the recursion limit that
#: ``Path.mkdir(parents=True)`` (one frame per missing folder) would hit.
MAX_PATH_PARTS = 100


def _checked_name(folder: Path, name: str | os.PathLike[str]) -> str:
    """The name as text, refused when no file system could hold it or when it is absolute.

    Names come from requests and workflow files; one the OS cannot hold (a NUL byte, a lone
    surrogate, a part over 255 bytes) would otherwise fail with an OS error deep inside a handler.
    Even an absolute name that happens to point inside is refused: a client never has a reason to
    know the server's directory layout.
    """
    text = os.fspath(name)
    if "\x00" in text:
        raise UnsafePathError(text, folder, "contains a NUL byte")
    try:
        parts = [os.fsencode(part) for part in PurePath(text).parts]
    except UnicodeEncodeError:  # a lone surrogate, e.g. from a JSON "\ud800" escape
        raise UnsafePathError(text, folder, "it is not text a file name can hold") from None
    if PurePath(text).is_absolute():
        raise UnsafePathError(text, folder, "absolute paths are not allowed")
    if any(len(part) > NAME_MAX_BYTES for part in parts):
        raise UnsafePathError(text, folder, f"a name in it is longer than {NAME_MAX_BYTES} bytes")
    if len(parts) > MAX_PATH_PARTS:
        raise UnsafePathError(text, folder, f"it has more than {MAX_PATH_PARTS} parts")
    return text


def _checked_length(text: str, folder: Path, path: Path) -> Path:
    if len(os.fsencode(path)) >= PATH_MAX_BYTES:
        raise UnsafePathError(text, folder, f"the path is longer than {PATH_MAX_BYTES - 1} bytes")
    return path


def resolve_inside(folder: Path, name: str | os.PathLike[str]) -> Path:
    """``folder/name`` resolved through symlinks; refused unless it stays inside ``folder``.

    For the folders that web requests write and read (input, output, temp, user): a symlink placed
    there, by an upload or anyone else, must not lead a request out of them.
    """
    text = _checked_name(folder, name)
    root = folder.resolve()
    candidate = (root / text).resolve()
    if not candidate.is_relative_to(root):
        raise UnsafePathError(text, folder, "it resolves outside the folder")
    return _checked_length(text, folder, candidate)


def join_inside(folder: Path, name: str | os.PathLike[str]) -> Path:
    """``folder/name`` for a name that stays inside ``folder`` as written; symlinks are followed.

    For model folders, which the machine's owner configures: linking model files or whole folders in
    from another install or disk is what this field's users do, so a link may point anywhere. The name
    itself, which a request supplies, may not climb out: no ``..`` component, nothing absolute.
    """
    text = _checked_name(folder, name)
    if ".." in PurePath(text).parts:
        raise UnsafePathError(text, folder, "'..' is not allowed in a model name")
    return _checked_length(text, folder, folder / text)


_ANNOTATION = re.compile(r"^(?P<name>.*) \[(?P<kind>input|output|temp)\]$")


def split_annotation(name: str, default: FolderKind = "input") -> tuple[str, FolderKind]:
    """``"cat.png [output]"`` → ``("cat.png", "output")``: how the editor points at files outside ``input``."""
    match = _ANNOTATION.match(name)
    if match is None:
        return name, default
    return match["name"], match["kind"]  # type: ignore[return-value]


def annotated_path(folders: Folders, name: str, default: FolderKind = "input") -> Path:
    """The file an (optionally annotated) name refers to, checked to stay inside its folder."""
    bare, kind = split_annotation(name, default)
    return resolve_inside(folders.directory(kind), bare)


def list_files(folder: Path, extensions: frozenset[str]) -> list[str]:
    """Files under ``folder`` with one of ``extensions``, as sorted ``sub/name.ext`` strings.

    Hidden entries are skipped, and so is anything that resolves outside the folder, so every listed
    name is one that ``resolve_inside`` accepts.
    """
    root = folder.resolve()
    found = []
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = [d for d in subdirectories if not d.startswith(".")]
        for file_name in files:
            if file_name.startswith(".") or Path(file_name).suffix.lower() not in extensions:
                continue
            path = Path(directory, file_name)
            if path.resolve().is_relative_to(root) and path.is_file():
                found.append(path.relative_to(root).as_posix())
    return sorted(found)


_DATE_TOKEN = re.compile(r"yyyy|yy|MM|M|dd|d|hh|h|mm|m|ss|s")
_DATE_FIELD = re.compile(r"%date:([^%]*)%")


def _format_date(pattern: str, now: datetime) -> str:
    """The editor's date pattern language (``yyyy-MM-dd``, ``hh`` is 24-hour); other characters stay."""
    values = {"y": now.year, "M": now.month, "d": now.day, "h": now.hour, "m": now.minute, "s": now.second}

    def token(match: re.Match[str]) -> str:
        text = match[0]
        if text == "yy":
            return f"{now.year % 100:02d}"
        return str(values[text[0]]).zfill(len(text))

    return _DATE_TOKEN.sub(token, pattern)


def expand_prefix(prefix: str, width: int, height: int, now: datetime) -> str:
    """Substitute ``%width%``, ``%height%``, ``%year%``..``%second%`` and ``%date:FORMAT%``.

    ComfyUI leaves ``%date:...%`` to the editor, so API clients sending it got a literal folder
    named after the pattern (#7996); expanding it here as well gives both kinds of client the same file.
    ``%batch_num%`` is left for the writer, which knows each image's index.
    """
    fields = {
        "width": str(width),
        "height": str(height),
        "year": f"{now.year:04d}",
        "month": f"{now.month:02d}",
        "day": f"{now.day:02d}",
        "hour": f"{now.hour:02d}",
        "minute": f"{now.minute:02d}",
        "second": f"{now.second:02d}",
    }
    expanded = _DATE_FIELD.sub(lambda match: _format_date(match[1], now), prefix)
    for key, value in fields.items():
        expanded = expanded.replace(f"%{key}%", value)
    return expanded


BATCH_NUMBER = "%batch_num%"


@dataclass(frozen=True)
class SaveTarget:
    """Where one batch of images is written: a folder inside the output kind, a base name, a counter."""

    folder: Path
    base: str
    counter: int
    #: The folder relative to its root, with ``/``, as clients receive it in ``ui.images[].subfolder``.
    subfolder: str

    def file_name(self, batch_index: int, extension: str = "png", counter: int | None = None) -> str:
        """Each image of a batch takes the next counter value, as ComfyUI numbers them."""
        base = self.base.replace(BATCH_NUMBER, str(batch_index))
        return f"{base}_{(self.counter + batch_index) if counter is None else counter:05d}_.{extension}"

    def write_new(self, batch_index: int, data: bytes, extension: str = "png") -> str:
        """Write ``data`` under its numbered name, or the next free number if another writer took it.

        Files are created exclusively, so prompts saving with the same prefix at the same moment (Ray
        workers, parallel lanes) never overwrite each other. Returns the name written.
        """
        counter = self.counter + batch_index
        while True:
            name = self.file_name(batch_index, extension, counter)
            try:
                with open(self.folder / name, "xb") as file:
                    file.write(data)
                return name
            except FileExistsError:
                counter = max(counter + 1, _next_counter(self.folder, self.base))


def _next_counter(folder: Path, base: str) -> int:
    """One past the highest ``<base>_NNNNN_`` number in ``folder``; gaps are never refilled.

    ``%batch_num%`` matches any index, so a batch-numbered prefix does not restart at 1 and overwrite.
    """
    pattern = re.compile(r"\d+".join(re.escape(part) for part in base.split(BATCH_NUMBER)) + r"_(\d+)_")
    numbers = [int(match[1]) for entry in os.listdir(folder) if (match := pattern.match(entry))]
    return max(numbers, default=0) + 1


def save_target(prefix: str, root: Path, width: int, height: int, now: datetime | None = None) -> SaveTarget:
    """Turn a ``filename_prefix`` (maybe ``sub/dir/name``) into a checked, created folder and a counter."""
    expanded = expand_prefix(prefix, width, height, now or datetime.now())
    normalised = os.path.normpath(expanded) if expanded else ""
    subfolder, base = os.path.split(normalised)
    if not base or base in (".", ".."):
        raise UnsafePathError(prefix, root, "the prefix names no file")
    folder = resolve_inside(root, subfolder or ".")
    folder.mkdir(parents=True, exist_ok=True)
    relative = PurePath(subfolder).as_posix() if subfolder else ""
    return SaveTarget(folder=folder, base=base, counter=_next_counter(folder, base), subfolder=relative)
