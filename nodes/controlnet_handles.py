"""CONTROL_NET, the ControlNet value that flows between nodes: a cheap handle around a shared, loaded ControlNet.

A handle is the ControlNet module of a file (``diffusion.controlnet``), loaded once per unchanged file and
shared by every handle over it (``nodes.shared_models.load_shared_controlnet``), plus what ComfyUI reads from
the file's name: the shuffle ControlNet's global average pooling. Applying it to conditioning
(``nodes.controlnets``) makes a ``diffusion.applied_control.AppliedControl`` per entry; sampling checks each
against the MODEL (``check_control_fits``) and places its ControlNets on the device beside the UNet for the
run (``place_controls``).

A difference ControlNet (``DiffControlNetLoader``) is the file's weights plus the MODEL's own, LoRAs
included, as ComfyUI adds them: a load of its own per MODEL, shared with nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from diffusion.applied_control import AppliedControl, controlnet_mismatch, unet_kind
from diffusion.checkpoint import open_state_dict
from diffusion.controlnet import LDM_PREFIX, ControlNet, is_difference_controlnet, load_controlnet
from diffusion.unet import UNetModel
from nodes.model_handles import ModelHandle
from nodes.runtime import current_runtime
from nodes.shared_models import load_shared_controlnet

__all__ = ["ControlNetHandle", "ControlNetMismatchError", "check_control_fits", "place_controls"]

#: File-name endings ComfyUI reads as the shuffle ControlNet, whose residuals are pooled to their spatial mean.
_POOLED_STEMS = ("_shuffle", "_shuffle_fp16")


class ControlNetMismatchError(ValueError):
    """A ControlNet applied to a MODEL it cannot drive: names the ControlNet, the model family and why."""

    def __init__(self, controlnet: str, family: str, reason: str) -> None:
        self.controlnet, self.family, self.reason = controlnet, family, reason
        super().__init__(f"ControlNet {controlnet!r} cannot drive this {family} model: {reason}")


@dataclass(frozen=True, eq=False)
class ControlNetHandle:
    """CONTROL_NET: a loaded ControlNet, the file it came from, and whether its residuals are pooled."""

    module: ControlNet
    path: Path
    global_average_pooling: bool = False

    @classmethod
    def from_file(cls, path: Path) -> ControlNetHandle:
        """The ControlNet of ``path``, shared with every live handle of the same unchanged file."""
        return cls(load_shared_controlnet(path), path, path.stem.endswith(_POOLED_STEMS))

    @classmethod
    def difference(cls, path: Path, model: ModelHandle) -> ControlNetHandle:
        """A difference ControlNet added to ``model``'s UNet weights (its LoRAs included); a file that is an
        ordinary ControlNet loads as ``from_file`` does, ``model`` unused, as in ComfyUI."""
        state_dict = open_state_dict(path)
        if not is_difference_controlnet(state_dict):
            return cls.from_file(path)
        if not isinstance(model.unet, UNetModel):
            raise ControlNetMismatchError(
                path.name,
                model.family.value,
                "a difference ControlNet is added to the weights of an SD1.x, SD2.x or SDXL UNet, and this MODEL "
                f"is a {type(model.unet).__name__}",
            )
        names = [key.removeprefix(LDM_PREFIX) for key in state_dict.keys()]
        module = load_controlnet(state_dict, base=model.computed_weights(names))
        return cls(module, path, path.stem.endswith(_POOLED_STEMS))

    @property
    def name(self) -> str:
        return self.path.name

    def loom_parts(self) -> list[object]:
        """What this handle keeps alive, for ``graph.sizeof``: the ControlNet module."""
        return [self.module]

    def applied(
        self,
        image: torch.Tensor,
        strength: float,
        start_percent: float = 0.0,
        end_percent: float = 1.0,
        previous: object = None,
    ) -> AppliedControl:
        """This ControlNet applied with ``image`` (IMAGE, ``[B, H, W, C]``) as its hint after ``previous``, the
        ``control`` an entry already carried (None, or another ``AppliedControl``)."""
        channels = self.module.config.hint_channels
        if image.ndim != 4 or image.shape[-1] != channels:
            raise ValueError(
                f"ControlNet {self.name!r} takes a {channels}-channel image as its hint, got one of shape "
                f"{tuple(image.shape)}"
            )
        if previous is not None and not isinstance(previous, AppliedControl):
            raise TypeError(
                f"the conditioning already carries a control Loom cannot chain after ({type(previous).__name__}): "
                "apply ControlNets with Loom's ControlNetApply nodes"
            )
        return AppliedControl(
            self.module,
            image.movedim(-1, 1),
            strength,
            start_percent,
            end_percent,
            previous,
            self.name,
            self.global_average_pooling,
        )


def check_control_fits(model: ModelHandle, control: object) -> None:
    """Raise ``ControlNetMismatchError`` unless every ControlNet of the chain can drive ``model``'s UNet. A
    control Loom did not apply is left to the guider, which names the conditioning entry carrying it."""
    if not isinstance(control, AppliedControl):
        return
    unet = model.unet
    for link in control.chain():
        made_for = unet_kind(link.controlnet.config.unet)
        if not isinstance(unet, UNetModel):
            raise ControlNetMismatchError(
                link.name,
                model.family.value,
                f"it is a ControlNet for {made_for} UNets, and a {model.family.value} model is a "
                f"{type(unet).__name__}, which takes no ControlNet residuals",
            )
        reason = controlnet_mismatch(link.controlnet.config, unet.config, model.latent_channels)
        if reason is not None:
            raise ControlNetMismatchError(link.name, model.family.value, f"it was made for {made_for} UNets ({reason})")


def place_controls(model: ModelHandle, controls: Sequence[AppliedControl]) -> None:
    """Put the ControlNets of ``controls`` on the device together with ``model``'s UNet, so that neither is
    offloaded for the other while they sample."""
    modules = {id(module): module for control in controls for module in control.controlnets()}
    if modules:
        current_runtime().memory.use(model.unet, *modules.values())
