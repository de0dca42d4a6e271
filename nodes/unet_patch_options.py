"""Where a MODEL keeps Loom's UNet patches: a ``diffusion.unet_patches.UNetPatches`` value in its
``model_options["transformer_options"]``, under ``UNET_PATCHES_KEY``.

The patch nodes (``nodes/unet_patches.py``) write it on a clone of the MODEL; the model handle
(``nodes/model_handles.py``) reads it for each UNet call. Both sides import this module, so neither imports
the other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from diffusion.unet_patches import UNetPatches

__all__ = ["UNET_PATCHES_KEY", "patched_model", "unet_patches_of"]

#: Where a MODEL's ``transformer_options`` keep Loom's UNet patches.
UNET_PATCHES_KEY = "loom_unet_patches"


def unet_patches_of(model_options: Mapping[str, Any]) -> UNetPatches | None:
    """The UNet patches a MODEL's ``model_options`` carry, or None when there are none."""
    patches = model_options.get("transformer_options", {}).get(UNET_PATCHES_KEY)
    if patches is None:
        return None
    if not isinstance(patches, UNetPatches):
        raise TypeError(
            f"model_options['transformer_options'][{UNET_PATCHES_KEY!r}] holds a {type(patches).__name__}, "
            "not Loom's UNetPatches"
        )
    return None if patches.is_empty else patches


def patched_model(model: Any, change: Callable[[UNetPatches], UNetPatches]) -> Any:
    """``model.clone()`` whose UNet patches are ``change(patches)``."""
    twin = model.clone()
    options = twin.model_options.setdefault("transformer_options", {})
    options[UNET_PATCHES_KEY] = change(unet_patches_of(twin.model_options) or UNetPatches())
    return twin
