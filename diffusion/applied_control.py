"""ControlNets applied to conditioning: what a conditioning entry's ``control`` option holds, and how a guider
turns it into the residuals of one UNet call.

ComfyUI's ControlNetApply nodes put a control object on every conditioning entry: the ControlNet, the hint
image, a strength, the window of the sampling process it acts in (``start_percent``/``end_percent``, 0 the
noisiest end) and the control applied before it, so several ControlNets chain. ``AppliedControl`` is that
value. At each model call inside its window a link runs its ControlNet on exactly what the UNet is about to
receive (the scaled latent, timesteps, context and SDXL's ``y`` of the entry's batch rows) with the hint
fitted to the latent (``fit_hint``: centre crop, nearest-exact resize to 8x the latent), scales the residuals
by its strength and adds those of the links before it; outside its window it adds nothing of its own. The
window is checked on sigma, through the model sampling's ``percent_to_sigma``, as ComfyUI's controls check it.

A T2I-Adapter link (``diffusion.t2i_adapter``) sees neither latent nor timestep: its features are computed once
per sampling run and size, from the hint sized as ComfyUI sizes adapter hints (``fit_adapter_hint``), and added
inside the UNet's encoder at its strength. A union ControlNet link runs with the control type its
``SetUnionControlNetType`` chose (``union_type``, None for "auto"); a Control-LoRA link runs the ControlNet it was
last bound to (``diffusion.control_lora``), which the caller binds to the sampled UNet before the run.

``BoundControl`` is one chain bound to a guider's model sampling for one sampling run; it caches the fitted
hints and the adapters' features. ``concat_residuals`` lines the residuals of several entries up with a batched
UNet call, zeros for an entry without control, and ``share_with_uncond`` gives the negative the positive's
controls the way ComfyUI does for the old ControlNetApply (``control_apply_to_uncond``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from diffusion.cfg_hooks import Conditioning
from diffusion.control_models import ControlModel
from diffusion.controlnet import ControlNetConfig, ControlResiduals, fit_hint
from diffusion.controlnet_union import UnionControlNet
from diffusion.prediction import ModelSampling
from diffusion.t2i_adapter import T2IAdapter, fit_adapter_hint
from diffusion.unet_config import UNetConfig

__all__ = [
    "AppliedControl",
    "BoundControl",
    "concat_residuals",
    "controlnet_mismatch",
    "share_with_uncond",
    "split_rows",
    "unet_kind",
]


@dataclass(frozen=True, eq=False)
class AppliedControl:
    """A control model (ControlNet, union ControlNet, Control-LoRA or T2I-Adapter) applied to conditioning entries
    (their ``control`` option), with the controls before it.

    ``hint`` is the control image channels first, ``[B or 1, C, H, W]`` in 0..1, at any size. ``name`` says
    which ControlNet it is in errors (its file's name). ``global_average_pooling`` replaces each residual by
    its spatial mean, as ComfyUI does for the shuffle ControlNet. ``union_type`` is the control type a union
    ControlNet runs with (None: "auto"). Compared and hashed by identity: entries that share one object share
    one ControlNet evaluation per model call.
    """

    controlnet: ControlModel
    hint: Tensor
    strength: float = 1.0
    start_percent: float = 0.0
    end_percent: float = 1.0
    previous: AppliedControl | None = None
    name: str = "ControlNet"
    global_average_pooling: bool = False
    union_type: int | None = None

    def chain(self) -> Iterator[AppliedControl]:
        """This control and those applied before it, oldest first."""
        if self.previous is not None:
            yield from self.previous.chain()
        yield self

    def controlnets(self) -> list[ControlModel]:
        """The distinct control modules of the chain: what must sit on the device beside the UNet."""
        distinct: dict[int, ControlModel] = {}
        for link in self.chain():
            distinct.setdefault(id(link.controlnet), link.controlnet)
        return list(distinct.values())

    def loom_parts(self) -> list[object]:
        """What this value keeps alive, for ``graph.sizeof``: the ControlNet, the hint and the earlier links."""
        return [self.controlnet, self.hint, *([] if self.previous is None else [self.previous])]


def unet_kind(config: UNetConfig) -> str:
    """The SD generation a UNet encoder belongs to, by its text context width, for messages."""
    known = {768: "SD1.x", 1024: "SD2.x", 2048: "SDXL"}
    return known.get(config.context_dim, f"a UNet with {config.context_dim}-wide text context")


def controlnet_mismatch(config: ControlNetConfig, unet: UNetConfig, latent_channels: int) -> str | None:
    """Why a ControlNet cannot drive ``unet`` (None when it can): a difference in what shapes its residuals or
    its inputs. Transformer depths may differ (the small SDXL ControlNets have fewer blocks)."""
    encoder = config.unet
    checks = [
        ("latent channels", encoder.in_channels, latent_channels),
        ("text context width", encoder.context_dim, unet.context_dim),
        ("base width", encoder.model_channels, unet.model_channels),
        ("channel multipliers", encoder.channel_mult, unet.channel_mult),
        ("ResBlocks per level", encoder.num_res_blocks, unet.num_res_blocks),
    ]
    if encoder.adm_in_channels is not None:
        checks.append(("pooled conditioning width (y)", encoder.adm_in_channels, unet.adm_in_channels))
    for what, theirs, ours in checks:
        if theirs != ours:
            return f"its {what} is {theirs}, the UNet's {ours}"
    return None


def _per_chunk(hint: Tensor, batch: int) -> Tensor:
    """A hint of several pictures for ``batch`` latents: the first ``batch``, cycled when there are fewer
    (ComfyUI's ``broadcast_image_to`` for one conditioning's rows)."""
    if hint.shape[0] == 1 or hint.shape[0] == batch:
        return hint
    repeats = -(-batch // hint.shape[0])
    return hint.repeat(repeats, 1, 1, 1)[:batch]


def _pooled(residuals: ControlResiduals) -> ControlResiduals:
    return residuals.mapped(lambda r: r.mean(dim=(2, 3), keepdim=True).expand_as(r))


def _for_rows(tensor: Tensor, rows: int, chunks: int) -> Tensor:
    """One per-picture tensor for ``chunks`` blocks of ``rows`` rows: each block cycles over the pictures from the
    first (``_per_chunk``), one picture repeated to every row."""
    per_chunk = _per_chunk(tensor, rows)
    if per_chunk.shape[0] == 1:
        per_chunk = per_chunk.expand(rows, *per_chunk.shape[1:])
    return per_chunk.repeat(chunks, *(1,) * (tensor.ndim - 1))


class BoundControl:
    """One control chain bound to a model sampling for one sampling run: its windows as sigmas, its fitted hints."""

    def __init__(self, control: AppliedControl, model_sampling: ModelSampling) -> None:
        self.control = control
        self._links = [
            (
                link,
                model_sampling.percent_to_sigma(link.start_percent),
                model_sampling.percent_to_sigma(link.end_percent),
            )
            for link in control.chain()
        ]
        self._hints: dict[tuple[int, int, int, torch.device, torch.dtype], Tensor] = {}
        self._features: dict[tuple[int, int, int, torch.device, torch.dtype], ControlResiduals] = {}

    def _hint(self, link: AppliedControl, x_in: Tensor, chunks: int, device: torch.device) -> Tensor:
        controlnet = link.controlnet
        assert not isinstance(controlnet, T2IAdapter)  # adapters take their hints in _adapter_features
        height, width = x_in.shape[-2:]
        key = (id(link), height, width, device, controlnet.dtype)
        fitted = self._hints.get(key)
        if fitted is None:
            scale = controlnet.config.hint_downscale
            fitted = fit_hint(link.hint.float(), height * scale, width * scale).to(device, controlnet.dtype)
            self._hints[key] = fitted
        if fitted.shape[0] == 1:
            return fitted
        return _per_chunk(fitted, x_in.shape[0] // chunks).repeat(chunks, 1, 1, 1)

    def _adapter_features(
        self, link: AppliedControl, adapter: T2IAdapter, x_in: Tensor, chunks: int, device: torch.device
    ) -> ControlResiduals:
        """The adapter's features for ``x_in``'s rows: computed on the hint's pictures once per run and latent
        size (ComfyUI runs an adapter once per sampling), then cycled over each conditioning's rows."""
        height, width = x_in.shape[-2:]
        key = (id(link), height, width, device, adapter.dtype)
        features = self._features.get(key)
        if features is None:
            hint = fit_adapter_hint(link.hint.float(), height, width, adapter.config).to(device)
            with torch.no_grad():
                features = adapter(hint)
            self._features[key] = features
        rows = x_in.shape[0] // chunks
        return features.mapped(lambda feature: _for_rows(feature, rows, chunks).to(x_in.device))

    def residuals(
        self, x_in: Tensor, sigma: float, timesteps: Tensor, context: Tensor, y: Tensor | None, chunks: int = 1
    ) -> ControlResiduals | None:
        """The chain's summed residuals for a UNet call on ``x_in`` (already scaled by the model sampling) at
        noise level ``sigma``, or None when no link acts at this sigma. ``x_in`` holds ``chunks`` conditionings'
        rows one after the other (equal counts), each of which gets the whole hint; ``timesteps``, ``context``
        and ``y`` are the UNet's, row for row. The residuals come back on ``x_in``'s device and dtype."""
        total: ControlResiduals | None = None
        for link, sigma_start, sigma_end in self._links:
            if not sigma_end <= sigma <= sigma_start:
                continue
            controlnet = link.controlnet
            device = next(controlnet.parameters()).device
            if isinstance(controlnet, T2IAdapter):
                own = self._adapter_features(link, controlnet, x_in, chunks, device)
            else:
                takes_y = controlnet.config.unet.adm_in_channels is not None
                union = {"union_type": link.union_type} if isinstance(controlnet, UnionControlNet) else {}
                with torch.no_grad():
                    own = controlnet(
                        x_in.to(device),
                        self._hint(link, x_in, chunks, device),
                        timesteps.to(device),
                        context.to(device),
                        None if y is None or not takes_y else y.to(device),
                        **union,
                    ).to(x_in.device)
            if link.global_average_pooling:
                own = _pooled(own)
            own = own.scaled(link.strength)
            total = own if total is None else own + total
        return total


def _rows(residuals: ControlResiduals, start: int, stop: int) -> ControlResiduals:
    return residuals.mapped(lambda r: r[start:stop])


def split_rows(residuals: ControlResiduals, parts: int) -> list[ControlResiduals]:
    """Residuals of ``parts`` equal row blocks, one per block, in order."""
    rows = _rows_of(residuals) // parts
    return [_rows(residuals, index * rows, (index + 1) * rows) for index in range(parts)]


def _rows_of(residuals: ControlResiduals) -> int:
    first = next(r for r in residuals.tensors() if r is not None)
    return int(first.shape[0])


def concat_residuals(parts: list[ControlResiduals | None]) -> ControlResiduals | None:
    """The residuals of one batched UNet call from those of its conditionings, in batch order: an entry without
    residuals (no control, or none acting now) contributes zeros shaped like the others'. None when none has any.

    Every part with residuals must be made for the same UNet (the guider checks that beforehand), so entries
    line up position by position."""
    present = [part for part in parts if part is not None]
    if not present:
        return None
    count = max(len(part.input) for part in present)
    stages = max(len(part.encoder) for part in present)

    def joined(pick: Any) -> Tensor | None:
        tensors: list[Tensor | None] = [None if part is None else pick(part) for part in parts]
        template = next((t for t in tensors if t is not None), None)
        if template is None:
            return None
        return torch.cat([torch.zeros_like(template) if t is None else t for t in tensors])

    def input_at(index: int) -> Any:
        return lambda part: part.input[index] if index < len(part.input) else None

    def encoder_at(index: int) -> Any:
        return lambda part: part.encoder[index] if index < len(part.encoder) else None

    return ControlResiduals(
        tuple(joined(input_at(index)) for index in range(count)),
        joined(lambda part: part.middle),
        tuple(joined(encoder_at(index)) for index in range(stages)),
    )


def share_with_uncond(positive: Conditioning, other: Conditioning) -> Conditioning:
    """``other`` with the controls the positive shares (``control_apply_to_uncond``: the old ControlNetApply),
    as ComfyUI hands them on: only when no entry of ``other`` without an area has a control yet, the i-th
    shared control goes to the (i mod n)-th of ``other``'s n entries without area, a later one replacing an
    earlier. Entries with an ``area`` neither give nor take. The lists given are not changed."""
    shared = [
        options["control"]
        for _, options in positive
        if options.get("control_apply_to_uncond") and "area" not in options and options.get("control") is not None
    ]
    if not shared:
        return other
    takers = [index for index, (_, options) in enumerate(other) if "area" not in options]
    if not takers or any(other[index][1].get("control") is not None for index in takers):
        return other
    result = list(other)
    for number, control in enumerate(shared):
        index = takers[number % len(takers)]
        context, options = other[index]
        result[index] = (context, {**options, "control": control})
    return result
