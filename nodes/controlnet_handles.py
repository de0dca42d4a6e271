"""CONTROL_NET, the ControlNet value that flows between nodes: a cheap handle around a shared, loaded ControlNet.

A handle is the ControlNet module of a file (``diffusion.controlnet``), loaded once per unchanged file and
shared by every handle over it (``nodes.shared_models.load_shared_controlnet``), plus what ComfyUI reads from
the file's name: the shuffle ControlNet's global average pooling. Applying it to conditioning
(``nodes.controlnets``) makes a ``diffusion.applied_control.AppliedControl`` per entry; sampling checks each
against the MODEL (``check_control_fits``) and places its ControlNets on the device beside the UNet for the
run (``place_controls``).

A difference ControlNet (``DiffControlNetLoader``) is the file's weights plus the MODEL's own, LoRAs
included, as ComfyUI adds them: a load of its own per MODEL, shared with nothing. A Control-LoRA is built the
same way over the MODEL it samples with, LoRAs included, when that sampling starts (``place_controls``), as
ComfyUI builds it. The handle of a union ControlNet carries the control type ``SetUnionControlNetType`` chose (for
an InstantX FLUX union ControlNet, its mode: ComfyUI passes the type's index as the mode); T2I-Adapters are
handles too, loaded by the same node.

The ControlNets of flow transformers (SD3.5's, FLUX.1's InstantX and XLabs ones) are handles like the others;
those that take the control image as a VAE latent (SD3.5, InstantX) are applied with the VAE given to the apply
node, which encodes their hint (``VaeHintEncoder``); without one the apply node raises ``ControlNetNeedsVaeError``
(ComfyUI warns and fails when sampling starts). They sit on the device beside the transformer they drive.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from diffusion.applied_control import (
    AppliedControl,
    controlnet_mismatch,
    transformer_controlnet_mismatch,
    unet_kind,
)
from diffusion.checkpoint import open_state_dict
from diffusion.control_lora import ControlLora
from diffusion.control_models import ControlModel, hint_latent_format
from diffusion.controlnet import LDM_PREFIX, ControlNet, is_difference_controlnet, load_controlnet
from diffusion.controlnet_union import UNION_CONTROLNET_TYPES, UnionControlNet
from diffusion.flux_controlnet import FluxControlNet
from diffusion.sd3_controlnet import SD3ControlNet
from diffusion.t2i_adapter import T2IAdapter, adapter_mismatch
from diffusion.unet import UNetModel
from nodes.model_handles import ModelHandle
from nodes.runtime import current_runtime
from nodes.shared_models import load_shared_controlnet
from nodes.vae_handles import VaeHandle

__all__ = [
    "ControlNetHandle",
    "ControlNetMismatchError",
    "ControlNetNeedsVaeError",
    "VaeHintEncoder",
    "check_control_fits",
    "place_controls",
]

#: File-name endings ComfyUI reads as the shuffle ControlNet, whose residuals are pooled to their spatial mean.
_POOLED_STEMS = ("_shuffle", "_shuffle_fp16")


class ControlNetMismatchError(ValueError):
    """A ControlNet applied to a MODEL it cannot drive: names the ControlNet, the model family and why."""

    def __init__(self, controlnet: str, family: str, reason: str) -> None:
        self.controlnet, self.family, self.reason = controlnet, family, reason
        super().__init__(f"ControlNet {controlnet!r} cannot drive this {family} model: {reason}")


class ControlNetNeedsVaeError(ValueError):
    """A ControlNet that takes its hint as a VAE latent applied without a VAE: names the node, its input, the
    ControlNet and why."""

    def __init__(self, node: str, controlnet: str, reason: str) -> None:
        self.node, self.input, self.controlnet, self.reason = node, "vae", controlnet, reason
        super().__init__(f"{node}: ControlNet {controlnet!r} {reason}")


@dataclass(frozen=True, eq=False)
class VaeHintEncoder:
    """The VAE given to an apply node, as the ControlNet's hint encoder (``diffusion.applied_control.HintEncoder``):
    pictures ``[B, 3, H, W]`` to the VAE's own latents, encoded as VAEEncode encodes them."""

    vae: VaeHandle

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(pixels.movedim(1, -1))

    def loom_parts(self) -> list[object]:
        """What it keeps alive, for ``graph.sizeof``: the VAE."""
        return [self.vae]


@dataclass(frozen=True, eq=False)
class ControlNetHandle:
    """CONTROL_NET: a loaded control model, the file it came from, whether its residuals are pooled, and the
    control type a union ControlNet runs with (None: "auto")."""

    module: ControlModel
    path: Path
    global_average_pooling: bool = False
    union_type: int | None = None

    @classmethod
    def from_file(cls, path: Path) -> ControlNetHandle:
        """The control model of ``path``, shared with every live handle of the same unchanged file. Only
        ControlNets pool by file name, as in ComfyUI (which passes the shuffle flag to nothing else)."""
        module = load_shared_controlnet(path)
        pooled = isinstance(module, ControlNet) and path.stem.endswith(_POOLED_STEMS)
        return cls(module, path, pooled)

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
        """What this handle keeps alive, for ``graph.sizeof``: the control module."""
        return [self.module]

    def with_union_type(self, type_name: str) -> ControlNetHandle:
        """This handle running its union ControlNet as control type ``type_name`` (``UNION_CONTROLNET_TYPES``, or
        "auto": none chosen). Any other control model has no type to choose: "auto" leaves it as it is, a named
        type is an error naming the file."""
        if type_name == "auto":
            return replace(self, union_type=None)
        if type_name not in UNION_CONTROLNET_TYPES:
            raise ValueError(f"unknown union ControlNet type {type_name!r}: one of {', '.join(UNION_CONTROLNET_TYPES)}")
        index = UNION_CONTROLNET_TYPES[type_name]
        module = self.module
        if isinstance(module, FluxControlNet) and module.config.union_modes:
            if index >= module.config.union_modes:
                raise ValueError(
                    f"ControlNet {self.name!r} knows {module.config.union_modes} union modes, and {type_name!r} is "
                    f"mode {index}"
                )
            return replace(self, union_type=index)
        if not isinstance(module, UnionControlNet):
            raise ValueError(
                f"ControlNet {self.name!r} is not a union ControlNet (ControlNet++ / controlnet-union, or a FLUX.1 "
                f'union ControlNet), so it has no control type to set to {type_name!r}: choose "auto" or remove '
                "SetUnionControlNetType"
            )
        if index >= module.union.types:
            raise ValueError(
                f"ControlNet {self.name!r} knows {module.union.types} control types, and {type_name!r} is type "
                f"{index}, one only the ProMax model knows"
            )
        return replace(self, union_type=index)

    @property
    def needs_vae(self) -> bool:
        """Whether the ControlNet takes its hint as a VAE latent (SD3.5's, InstantX's FLUX ones)."""
        return hint_latent_format(self.module) is not None

    @property
    def hint_latent_channels(self) -> int | None:
        """Channels of the VAE latent the ControlNet's hint is encoded to (16; None for one taking the picture).
        An inpainting ControlNet's extra mask channel is not the VAE's."""
        module = self.module
        if not self.needs_vae:
            return None
        assert isinstance(module, (SD3ControlNet, FluxControlNet))
        channels = module.config.hint_channels
        return channels - 1 if channels % 2 else channels

    @property
    def takes_mask(self) -> bool:
        """Whether the ControlNet takes a mask channel after its hint latent (the inpainting ones, AliMama's)."""
        channels = self.hint_latent_channels
        if channels is None:
            return False
        module = self.module
        assert isinstance(module, (SD3ControlNet, FluxControlNet))  # only they take latents
        return module.config.hint_channels == channels + 1

    @property
    def hint_channels(self) -> int:
        """Channels of the IMAGE the ControlNet takes: a transformer's ControlNets take a picture (RGB), which
        some encode with the VAE."""
        module = self.module
        if isinstance(module, (SD3ControlNet, FluxControlNet)):
            return 3
        if isinstance(module, T2IAdapter):
            return module.config.hint_channels
        if isinstance(module, ControlLora):
            return module.hint_channels
        return module.config.hint_channels

    def applied(
        self,
        image: torch.Tensor,
        strength: float,
        start_percent: float = 0.0,
        end_percent: float = 1.0,
        previous: object = None,
        vae: VaeHandle | None = None,
        mask: torch.Tensor | None = None,
    ) -> AppliedControl:
        """This ControlNet applied with ``image`` (IMAGE, ``[B, H, W, C]``) as its hint after ``previous``, the
        ``control`` an entry already carried (None, or another ``AppliedControl``). ``vae`` encodes the hint of a
        ControlNet that takes a VAE latent (``needs_vae``: the caller refuses its absence); others ignore it, as
        ComfyUI does. ``mask`` (``[B, 1, H, W]``, 1 where kept) is an inpainting ControlNet's mask channel."""
        channels = self.hint_channels
        # A one-channel adapter takes any image: ComfyUI averages its channels.
        takes_any = isinstance(self.module, T2IAdapter) and channels == 1
        if image.ndim != 4 or (image.shape[-1] != channels and not takes_any):
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
            self.union_type,
            VaeHintEncoder(vae) if self.needs_vae and vae is not None else None,
            mask,
        )


def check_control_fits(model: ModelHandle, control: object) -> None:
    """Raise ``ControlNetMismatchError`` unless every ControlNet of the chain can drive ``model``'s UNet. A
    control Loom did not apply is left to the guider, which names the conditioning entry carrying it."""
    if not isinstance(control, AppliedControl):
        return
    unet = model.unet
    for link in control.chain():
        module = link.controlnet
        if isinstance(module, (SD3ControlNet, FluxControlNet)):
            reason = transformer_controlnet_mismatch(module, unet)
            if reason is not None:
                raise ControlNetMismatchError(link.name, model.family.value, f"it is {_made_for(module)} ({reason})")
            continue
        if not isinstance(unet, UNetModel):
            raise ControlNetMismatchError(
                link.name,
                model.family.value,
                f"it is {_made_for(module)}, and a {model.family.value} model is a {type(unet).__name__}, which "
                "takes no UNet ControlNet residuals",
            )
        if isinstance(module, T2IAdapter):
            reason = adapter_mismatch(module.config, unet.config)
        elif isinstance(module, ControlLora):
            reason = module.mismatch(unet.config)
        else:
            reason = controlnet_mismatch(module.config, unet.config, model.latent_channels)
        if reason is not None:
            raise ControlNetMismatchError(link.name, model.family.value, f"it is {_made_for(module)} ({reason})")


def _made_for(module: ControlModel) -> str:
    """What a control model is, for messages."""
    if isinstance(module, T2IAdapter):
        return f"a T2I-Adapter for {'SDXL' if module.config.kind == 'full_xl' else 'SD1.x'} UNets"
    if isinstance(module, ControlLora):
        return "a Control-LoRA, whose weights are changes to the UNet it was trained for"
    if isinstance(module, SD3ControlNet):
        return "an SD3.5 ControlNet, made for an SD3 MMDiT"
    if isinstance(module, FluxControlNet):
        return f"a FLUX.1 ControlNet ({'XLabs' if module.config.style == 'xlabs' else 'InstantX'}), made for FLUX.1"
    return f"a ControlNet made for {unet_kind(module.config.unet)} UNets"


def place_controls(model: ModelHandle, controls: Sequence[AppliedControl]) -> None:
    """Build the Control-LoRAs of ``controls`` over ``model``'s UNet weights, LoRAs included (ComfyUI builds them
    when sampling starts), then put every control model on the device together with the UNet or transformer, so
    that neither is offloaded for the other while they sample. ``check_control_fits`` has passed for each."""
    modules = {id(module): module for control in controls for module in control.controlnets()}
    placed: list[torch.nn.Module] = []
    for module in modules.values():
        if isinstance(module, ControlLora):
            unet = model.unet
            assert isinstance(unet, UNetModel)  # check_control_fits refused Control-LoRAs on other models
            base = model.computed_weights(module.base_names(unet.config))
            placed.append(module.bind(unet.config, base, unet.dtype))
        else:
            placed.append(module)
    if placed:
        current_runtime().memory.use(model.unet, *placed)
