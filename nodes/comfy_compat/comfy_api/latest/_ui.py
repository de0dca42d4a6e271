"""ComfyUI's ``comfy_api.latest.ui``: UI outputs a V3 node returns as ``io.NodeOutput(..., ui=...)``.

Each object becomes the ``ui`` dict of a V1 node (``{"images": [...]}``, ``{"text": [...]}``), which
the executor sends in the ``executed`` event and keeps in the history. Pictures are written through
``nodes.io.write_pngs``, into the folders of the running installation, with the prompt and the PNG
info of the call (``cls.hidden``) as text chunks when ``cls=`` is given, as ComfyUI writes them.

Supported: ``SavedResult``, ``SavedImages``, ``PreviewImage``, ``PreviewMask``, ``PreviewText`` and
``ImageSaveHelper.save_images`` / ``get_save_images_ui``. Not supported: audio, video, 3D and
animated PNG/WebP output.
"""

from __future__ import annotations

import random
import string
from typing import TYPE_CHECKING, Any

from nodes.comfy_compat.comfy_api.latest._node import ComfyNode, _UIOutput
from nodes.comfy_compat.comfy_api.latest._sockets import FolderType

if TYPE_CHECKING:
    from nodes.folders import FolderKind

__all__ = ["ImageSaveHelper", "PreviewImage", "PreviewMask", "PreviewText", "SavedImages", "SavedResult"]

#: ComfyUI's PNG compression for previews: fast to write, never kept.
_PREVIEW_COMPRESS_LEVEL = 1

_FOLDER_KINDS: dict[FolderType, FolderKind] = {
    FolderType.input: "input",
    FolderType.output: "output",
    FolderType.temp: "temp",
}


class SavedResult(dict[str, str]):
    """One written file as the editor finds it: ``{"filename", "subfolder", "type"}``."""

    def __init__(self, filename: str, subfolder: str, type: FolderType) -> None:
        super().__init__(filename=filename, subfolder=subfolder, type=FolderType(type).value)

    @property
    def filename(self) -> str:
        return self["filename"]

    @property
    def subfolder(self) -> str:
        return self["subfolder"]

    @property
    def type(self) -> FolderType:
        return FolderType(self["type"])


class SavedImages(_UIOutput):
    """Pictures already written (by ``ImageSaveHelper``), shown on the node."""

    def __init__(self, results: list[SavedResult], is_animated: bool = False) -> None:
        self.results = results
        self.is_animated = is_animated

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"images": self.results}
        if self.is_animated:
            data["animated"] = (True,)
        return data


class ImageSaveHelper:
    """Write IMAGE batches as numbered PNGs, as ComfyUI's V3 save nodes do."""

    @staticmethod
    def save_images(
        images: Any,
        filename_prefix: str,
        folder_type: FolderType,
        cls: type[ComfyNode] | None,
        compress_level: int = 4,
    ) -> list[SavedResult]:
        from nodes.io import write_pngs

        hidden = cls.hidden if cls is not None else None
        prompt = hidden.prompt if hidden is not None else None
        extra_pnginfo = hidden.extra_pnginfo if hidden is not None else None
        kind = _FOLDER_KINDS[FolderType(folder_type)]
        written = write_pngs(images, filename_prefix, kind, prompt, extra_pnginfo, compress_level)
        return [SavedResult(entry["filename"], entry["subfolder"], FolderType(entry["type"])) for entry in written]

    @staticmethod
    def get_save_images_ui(
        images: Any, filename_prefix: str, cls: type[ComfyNode] | None, compress_level: int = 4
    ) -> SavedImages:
        """Write into the output folder and show the pictures on the node."""
        return SavedImages(ImageSaveHelper.save_images(images, filename_prefix, FolderType.output, cls, compress_level))


class PreviewImage(_UIOutput):
    """Show an IMAGE batch on the node: written to the temp folder, which is cleared between sessions."""

    def __init__(self, image: Any, animated: bool = False, cls: type[ComfyNode] | None = None, **kwargs: Any) -> None:
        # A random suffix keeps previews of concurrent prompts (and browser caches) from colliding.
        prefix = "ComfyUI_temp_" + "".join(random.choices(string.ascii_lowercase, k=5))
        self.values = ImageSaveHelper.save_images(image, prefix, FolderType.temp, cls, _PREVIEW_COMPRESS_LEVEL)
        self.animated = animated

    def as_dict(self) -> dict[str, Any]:
        return {"images": self.values, "animated": (self.animated,)}


class PreviewMask(PreviewImage):
    """Show a MASK (``[B, H, W]`` or ``[H, W]``) as grey pictures."""

    def __init__(self, mask: Any, animated: bool = False, cls: type[ComfyNode] | None = None, **kwargs: Any) -> None:
        grey = mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])).movedim(1, -1).expand(-1, -1, -1, 3)
        super().__init__(grey, animated, cls, **kwargs)


class PreviewText(_UIOutput):
    """Show text on the node."""

    def __init__(self, value: str, **kwargs: Any) -> None:
        self.value = value

    def as_dict(self) -> dict[str, Any]:
        return {"text": (self.value,)}
