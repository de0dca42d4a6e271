"""ControlNet nodes under ComfyUI's names: loading ControlNets and applying them to conditioning.

Names, inputs, ranges and categories are ComfyUI's. ``ControlNetLoader`` loads a file of the ``controlnet``
model folders (ComfyUI's ``controlnet`` and ``t2i_adapter``) as a CONTROL_NET (``nodes.controlnet_handles``);
``DiffControlNetLoader`` also takes the MODEL a difference ControlNet is added to. The apply nodes put the
ControlNet on every conditioning entry as its ``control`` option, chained after the control the entry already
carried, and leave the conditioning they were given unchanged:

- ``ControlNetApplyAdvanced`` ("Apply ControlNet") applies to the positive and the negative alike, one applied
  control per distinct earlier control, so entries that shared a control still share one (and one ControlNet
  evaluation per model call);
- ``ControlNetApply`` ("Apply ControlNet (OLD)", deprecated in ComfyUI) applies to one conditioning, for the
  whole process, a new control per entry, and marks it ``control_apply_to_uncond``: sampling hands it to the
  negative (``diffusion.applied_control.share_with_uncond``).

- ``ControlNetApplySD3`` ("Apply Controlnet with VAE", deprecated in ComfyUI) is ``ControlNetApplyAdvanced`` with
  its ``vae`` required.

``SetUnionControlNetType`` picks the control type a union ControlNet (ControlNet++) runs with, on a new handle; on
an InstantX FLUX.1 union ControlNet the type's index is the mode, as ComfyUI passes it.

Strength 0 returns the conditioning as given. The control models that load are those of SD1.x, SD2.x and SDXL
UNets: ControlNets (original and diffusers layouts, difference ControlNets through ``DiffControlNetLoader``),
union ControlNets, Control-LoRAs (built over the MODEL they sample with) and T2I-Adapters (full, light and XL,
TencentARC's and diffusers' layouts); and those of flow transformers: Stability's SD3.5 Large ControlNets and
FLUX.1's InstantX / Shakker-Labs (union included) and XLabs ControlNets. The SD3.5 and InstantX ones take the
control image as a latent of the ``vae`` given to the apply node (ComfyUI's ControlNets with a latent format):
without one the node raises ``ControlNetNeedsVaeError``, naming itself and its ``vae`` input, where ComfyUI warns
and fails when sampling starts. The other ControlNets take the image itself and leave a given ``vae`` unused.
"""

from __future__ import annotations

from typing import Any

from diffusion.controlnet_union import UNION_CONTROLNET_TYPES
from graph.declare import Combo, Float, Output, Socket, node, spec_of
from nodes.controlnet_handles import ControlNetHandle, ControlNetNeedsVaeError
from nodes.image import resample
from nodes.runtime import find_model, list_models
from nodes.vae_handles import VaeHandle

__all__ = [
    "ControlNetApply",
    "ControlNetApplyAdvanced",
    "ControlNetApplySD3",
    "ControlNetLoader",
    "DiffControlNetLoader",
    "SetUnionControlNetType",
]

FOLDER_KEY = "controlnet"

Conditioning = list[list[Any]]


def _names() -> list[str]:
    return list_models(FOLDER_KEY)


@node(category="loaders", display_name="Load ControlNet Model", outputs=[Output("CONTROL_NET")])
def ControlNetLoader(control_net_name=Combo(_names, model_folder=FOLDER_KEY)):
    """Load a ControlNet, union ControlNet, Control-LoRA or T2I-Adapter (SD1.x, SD2.x or SDXL), or an SD3.5 or
    FLUX.1 ControlNet, from the controlnet folder."""
    return ControlNetHandle.from_file(find_model(FOLDER_KEY, control_net_name))


@node(category="loaders", display_name="Load ControlNet Model (diff)", outputs=[Output("CONTROL_NET")])
def DiffControlNetLoader(model=Socket("MODEL"), control_net_name=Combo(_names, model_folder=FOLDER_KEY)):
    """Load a difference ControlNet, stored relative to its base UNet, by adding it to this model's weights."""
    return ControlNetHandle.difference(find_model(FOLDER_KEY, control_net_name), model)


_STRENGTH = Float(1.0, min=0.0, max=10.0, step=0.01)
_PERCENT_START = Float(0.0, min=0.0, max=1.0, step=0.001)
_PERCENT_END = Float(1.0, min=0.0, max=1.0, step=0.001)


def _hint_vae(node_name: str, handle: ControlNetHandle, vae: VaeHandle | None) -> VaeHandle | None:
    """The node's ``vae`` input as the ControlNet's hint encoder, refused when the ControlNet needs one and it is
    missing or gives latents of another width (the VAE of another model family)."""
    channels = handle.hint_latent_channels
    if channels is None:
        return vae
    if vae is None:
        raise ControlNetNeedsVaeError(
            node_name,
            handle.name,
            "takes the control image as a VAE latent (an SD3.5 or InstantX FLUX.1 ControlNet), and the vae input "
            "is not connected: connect the model's VAE to it",
        )
    if vae.latent_channels != channels:
        raise ControlNetNeedsVaeError(
            node_name,
            handle.name,
            f"takes the control image as a {channels}-channel VAE latent, and the VAE at the vae input gives "
            f"{vae.latent_channels}-channel ones: connect the VAE of the model the ControlNet is for",
        )
    return vae


def _apply_to_both(
    node_name: str,
    positive: Conditioning,
    negative: Conditioning,
    handle: ControlNetHandle,
    image: Any,
    strength: float,
    start_percent: float,
    end_percent: float,
    vae: VaeHandle | None,
    mask: Any = None,
) -> tuple[Conditioning, Conditioning]:
    """ControlNetApplyAdvanced's application, by the node ``node_name``: nothing at strength 0, else one applied
    control per distinct earlier control (by identity), shared by both sides; the ``vae`` checked first."""
    if strength == 0:
        return positive, negative
    vae = _hint_vae(node_name, handle, vae)
    applied: dict[int, Any] = {}

    def chained(options: dict[str, Any]) -> dict[str, Any]:
        previous = options.get("control")
        if id(previous) not in applied:
            applied[id(previous)] = handle.applied(image, strength, start_percent, end_percent, previous, vae, mask)
        return {**options, "control": applied[id(previous)], "control_apply_to_uncond": False}

    return (
        [[cond, chained(options)] for cond, options in positive],
        [[cond, chained(options)] for cond, options in negative],
    )


@node(category="conditioning/controlnet", display_name="Apply ControlNet (OLD)", outputs=[Output("CONDITIONING")])
def ControlNetApply(
    conditioning=Socket("CONDITIONING"), control_net=Socket("CONTROL_NET"), image=Socket("IMAGE"), strength=_STRENGTH
):
    """Guide the conditioning with a ControlNet and a control image over the whole process; the negative gets
    the same control when sampling. Superseded by Apply ControlNet."""
    if strength == 0:
        return conditioning
    handle: ControlNetHandle = control_net
    if handle.needs_vae:
        raise ControlNetNeedsVaeError(
            "ControlNetApply",
            handle.name,
            "takes the control image as a VAE latent (an SD3.5 or InstantX FLUX.1 ControlNet), and this node has no "
            "vae input: use Apply ControlNet (ControlNetApplyAdvanced) and connect the model's VAE to its vae input",
        )
    return [
        [
            cond,
            {
                **options,
                "control": handle.applied(image, strength, previous=options.get("control")),
                "control_apply_to_uncond": True,
            },
        ]
        for cond, options in conditioning
    ]


spec_of(ControlNetApply).deprecated = True


@node(
    category="conditioning/controlnet",
    display_name="Apply ControlNet",
    outputs=[Output("CONDITIONING", "positive"), Output("CONDITIONING", "negative")],
)
def ControlNetApplyAdvanced(
    positive=Socket("CONDITIONING"),
    negative=Socket("CONDITIONING"),
    control_net=Socket("CONTROL_NET"),
    image=Socket("IMAGE"),
    strength=_STRENGTH,
    start_percent=_PERCENT_START,
    end_percent=_PERCENT_END,
    vae=Socket("VAE", optional=True),
):
    """Guide the positive and negative conditioning with a ControlNet and a control image (an edge map, a depth
    map, a pose ...), from start_percent to end_percent of the sampling process. SD3.5 and InstantX FLUX.1
    ControlNets need the model's VAE."""
    return _apply_to_both(
        "ControlNetApplyAdvanced", positive, negative, control_net, image, strength, start_percent, end_percent, vae
    )


@node(
    category="conditioning/controlnet",
    display_name="Apply Controlnet with VAE",
    outputs=[Output("CONDITIONING", "positive"), Output("CONDITIONING", "negative")],
)
def ControlNetApplySD3(
    positive=Socket("CONDITIONING"),
    negative=Socket("CONDITIONING"),
    control_net=Socket("CONTROL_NET"),
    vae=Socket("VAE"),
    image=Socket("IMAGE"),
    strength=_STRENGTH,
    start_percent=_PERCENT_START,
    end_percent=_PERCENT_END,
):
    """Apply ControlNet with the VAE required, for SD3.5 ControlNets. Superseded by Apply ControlNet."""
    return _apply_to_both(
        "ControlNetApplySD3", positive, negative, control_net, image, strength, start_percent, end_percent, vae
    )


spec_of(ControlNetApplySD3).deprecated = True


@node(
    category="conditioning/controlnet",
    outputs=[Output("CONDITIONING", "positive"), Output("CONDITIONING", "negative")],
)
def ControlNetInpaintingAliMamaApply(
    positive=Socket("CONDITIONING"),
    negative=Socket("CONDITIONING"),
    control_net=Socket("CONTROL_NET"),
    vae=Socket("VAE"),
    image=Socket("IMAGE"),
    mask=Socket("MASK"),
    strength=_STRENGTH,
    start_percent=_PERCENT_START,
    end_percent=_PERCENT_END,
):
    """Apply an inpainting ControlNet (AliMama's FLUX.1 inpainting ControlNets): the picture with the masked
    region blacked out, and the mask, tell it what to keep. A ControlNet without a mask channel is applied as
    Apply ControlNet applies it."""
    node_name = "ControlNetInpaintingAliMamaApply"
    handle: ControlNetHandle = control_net
    if strength == 0 or not handle.takes_mask:
        return _apply_to_both(node_name, positive, negative, handle, image, strength, start_percent, end_percent, vae)
    if image.ndim != 4 or mask.ndim not in (2, 3):
        raise ValueError(
            f"ControlNetInpaintingAliMamaApply: image must be IMAGE [B, H, W, C] and mask MASK [B, H, W], got "
            f"{tuple(image.shape)} and {tuple(mask.shape)}"
        )
    kept = 1.0 - mask.reshape(-1, 1, *mask.shape[-2:]).float()
    # ComfyUI scales the mask to the picture bilinearly (centre crop) and rounds it before blacking out.
    on_picture = resample(kept, image.shape[2], image.shape[1], "bilinear", crop="center").round()
    blacked = image * on_picture.movedim(1, -1)
    return _apply_to_both(
        node_name, positive, negative, handle, blacked, strength, start_percent, end_percent, vae, kept
    )


@node(category="conditioning/controlnet", outputs=[Output("CONTROL_NET")])
def SetUnionControlNetType(
    control_net=Socket("CONTROL_NET"),
    type=Combo(["auto", *UNION_CONTROLNET_TYPES]),
):
    """Choose which kind of control image a union ControlNet is given; "auto" chooses none."""
    handle: ControlNetHandle = control_net
    return handle.with_union_type(type)
