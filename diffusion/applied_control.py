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

The ControlNets of flow transformers (SD3.5's, FLUX.1's InstantX and XLabs ones) add ``BlockResiduals`` after the
transformer's blocks and read the transformer itself (its patch embedding, its block counts), so the guider cannot
run them: for a batched call it hands the forward that holds the transformer a ``TransformerControl``, which runs
them on exactly the inputs the transformer gets (noisy latent, sigma, context, pooled ``y``, FLUX's guidance). Their
hint is fitted to 8x the latent like a UNet ControlNet's; the SD3.5 ones then preprocess it as their file says
(``prepare_hint_image``), and those that take a VAE latent (SD3.5, InstantX) have it encoded by the link's
``encoder`` (the VAE given to the apply node) and brought into the family's latent space, as ComfyUI's ControlNet
does with its ``vae`` and ``latent_format``; one that takes a mask channel more gets an all-ones mask, ComfyUI's
default ``extra_concat``.

``BoundControl`` is one chain bound to a guider's model sampling for one sampling run; it caches the prepared
hints (a VAE encodes each hint once per latent size, when the guider resolves the conditioning, before the model
is placed for sampling) and the adapters' features. ``shared_residuals`` runs each control once over the rows of
every entry sharing it, ``concat_residuals`` lines the residuals of several entries up with a batched call, zeros
for an entry without control, and ``share_with_uncond`` gives the negative the positive's controls the way ComfyUI
does for the old ControlNetApply (``control_apply_to_uncond``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor, nn

from diffusion.cfg_hooks import Conditioning
from diffusion.control_models import ControlModel, TransformerControlNet, hint_latent_format
from diffusion.controlnet import ControlNetConfig, ControlResiduals, fit_hint
from diffusion.controlnet_union import UnionControlNet
from diffusion.devices import compute_device
from diffusion.flux import FluxTransformer
from diffusion.flux_controlnet import BlockResiduals, FluxControlNet
from diffusion.mmdit import MMDiT
from diffusion.prediction import ModelSampling
from diffusion.sd3_controlnet import SD3ControlNet, prepare_hint_image
from diffusion.t2i_adapter import T2IAdapter, fit_adapter_hint
from diffusion.unet_config import UNetConfig

__all__ = [
    "AppliedControl",
    "BoundControl",
    "HintEncoder",
    "TransformerControl",
    "concat_residuals",
    "controlnet_mismatch",
    "share_with_uncond",
    "shared_residuals",
    "split_rows",
    "transformer_controlnet_mismatch",
    "unet_kind",
]

#: A VAE's encoder as a latent-space ControlNet's hint needs it: pixels ``[B, 3, H, W]`` in 0..1 (or beyond, after
#: a canny ControlNet's preprocessing) -> the VAE's own latent ``[B, C, H/8, W/8]``, unscaled.
HintEncoder = Callable[[Tensor], Tensor]
#: The residuals of one control chain: a UNet's or a flow transformer's.
Residuals = TypeVar("Residuals", ControlResiduals, BlockResiduals)
#: Pictures of a hint per latent pixel: the VAE's 8 for the latent-space ControlNets (ComfyUI's compression ratio 1
#: times the VAE's), and XLabs' hint block brings its pictures down 8x too.
_TRANSFORMER_HINT_SCALE = 8


@dataclass(frozen=True, eq=False)
class AppliedControl:
    """A control model (ControlNet, union ControlNet, Control-LoRA or T2I-Adapter) applied to conditioning entries
    (their ``control`` option), with the controls before it.

    ``hint`` is the control image channels first, ``[B or 1, C, H, W]`` in 0..1, at any size. ``name`` says
    which ControlNet it is in errors (its file's name). ``global_average_pooling`` replaces each residual by
    its spatial mean, as ComfyUI does for the shuffle ControlNet. ``union_type`` is the control type a union
    ControlNet runs with (None: "auto"; a FLUX union ControlNet's mode). ``encoder`` encodes the hint for a
    ControlNet that takes a VAE latent (``hint_latent_format``), None for one that takes the picture. Compared and
    hashed by identity: entries that share one object share one ControlNet evaluation per model call. ``mask`` is
    an inpainting ControlNet's mask channel, ``[B or 1, 1, H, W]``, 1 where the picture is kept (None: all ones,
    ComfyUI's default).
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
    encoder: HintEncoder | None = None
    mask: Tensor | None = None

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
        """What this value keeps alive, for ``graph.sizeof``: the ControlNet, the hint, its encoder (the VAE) and
        the earlier links."""
        kept = [] if self.encoder is None else [self.encoder]
        return [self.controlnet, self.hint, *kept, *([] if self.previous is None else [self.previous])]


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


def transformer_controlnet_mismatch(module: TransformerControlNet, transformer: nn.Module) -> str | None:
    """Why a transformer's ControlNet cannot drive ``transformer`` (None when it can): another kind of transformer,
    or a difference in what shapes its residuals or reads the same inputs."""
    if isinstance(module, SD3ControlNet):
        if not isinstance(transformer, MMDiT):
            return f"a {type(transformer).__name__} is no SD3 MMDiT"
        config, target = module.config, transformer.config
        checks = [
            ("width", config.hidden_size, target.hidden_size),
            ("patch size", config.patch_size, target.patch_size),
            ("pooled text width (y)", config.pooled_dim, target.pooled_dim),
            ("hint latent channels", config.hint_channels, target.in_channels),
        ]
    else:
        if not isinstance(transformer, FluxTransformer):
            return f"a {type(transformer).__name__} is no FLUX.1 transformer"
        blocks, flux = module.config.blocks, transformer.config
        checks = [
            ("width", blocks.hidden_size, flux.hidden_size),
            ("latent channels", blocks.latent_channels, flux.out_latent_channels),
            ("text context width", blocks.context_dim, flux.context_dim),
            ("pooled text width (y)", blocks.vec_dim, flux.vec_dim),
        ]
        if blocks.guidance_embed and not flux.guidance_embed:
            return "it is guidance-distilled (FLUX.1 dev) and this transformer takes no guidance (FLUX.1 schnell)"
    for what, theirs, ours in checks:
        if theirs != ours:
            return f"its {what} is {theirs}, the transformer's {ours}"
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
    """One control chain bound to a model sampling for one sampling run: its windows as sigmas, its prepared hints."""

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
        self._prepared: dict[tuple[int, int, int], Tensor] = {}
        self._hints: dict[tuple[int, int, int, torch.device, torch.dtype], Tensor] = {}
        self._features: dict[tuple[int, int, int, torch.device, torch.dtype], ControlResiduals] = {}

    @property
    def drives_transformer(self) -> bool:
        """Whether the chain's ControlNets are a flow transformer's (``TransformerControl`` runs them)."""
        return isinstance(self.control.controlnet, (SD3ControlNet, FluxControlNet))

    def prepare(self, height: int, width: int) -> None:
        """Encode the hints of the chain's latent-space ControlNets for latents of ``height`` x ``width`` now: the
        guider calls it as it resolves the conditioning, so the VAE runs before the model is placed for sampling,
        never between its steps (where it could push the model off the device). Other hints are fitted when first
        needed."""
        for link, _, _ in self._links:
            if hint_latent_format(link.controlnet) is not None:
                self._prepared_hint(link, height, width)

    def _prepared_hint(self, link: AppliedControl, height: int, width: int) -> Tensor:
        """The hint of ``link`` for latents of this size, on the CPU in fp32: fitted, preprocessed and encoded
        once per sampling run and size."""
        key = (id(link), height, width)
        prepared = self._prepared.get(key)
        if prepared is None:
            prepared = _hint_for(link, height, width)
            self._prepared[key] = prepared
        return prepared

    def _hint(self, link: AppliedControl, x_in: Tensor, chunks: int, device: torch.device) -> Tensor:
        controlnet = link.controlnet
        assert not isinstance(controlnet, T2IAdapter)  # adapters take their hints in _adapter_features
        height, width = x_in.shape[-2:]
        key = (id(link), height, width, device, controlnet.dtype)
        fitted = self._hints.get(key)
        if fitted is None:
            fitted = self._prepared_hint(link, height, width).to(device, controlnet.dtype)
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

    def _acting(self, sigma: float) -> Iterator[AppliedControl]:
        """The links whose window holds ``sigma``, oldest first."""
        for link, sigma_start, sigma_end in self._links:
            if sigma_end <= sigma <= sigma_start:
                yield link

    def residuals(
        self, x_in: Tensor, sigma: float, timesteps: Tensor, context: Tensor, y: Tensor | None, chunks: int = 1
    ) -> ControlResiduals | None:
        """The chain's summed residuals for a UNet call on ``x_in`` (already scaled by the model sampling) at
        noise level ``sigma``, or None when no link acts at this sigma. ``x_in`` holds ``chunks`` conditionings'
        rows one after the other (equal counts), each of which gets the whole hint; ``timesteps``, ``context``
        and ``y`` are the UNet's, row for row. The residuals come back on ``x_in``'s device and dtype."""
        total: ControlResiduals | None = None
        for link in self._acting(sigma):
            controlnet = link.controlnet
            if isinstance(controlnet, (SD3ControlNet, FluxControlNet)):
                raise ValueError(f"ControlNet {link.name!r} drives a transformer, and is chained with UNet controls")
            device = compute_device(controlnet)
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

    def block_residuals(
        self,
        transformer: nn.Module,
        x: Tensor,
        sigma: float,
        sigmas: Tensor,
        context: Tensor,
        y: Tensor | None,
        guidance: Tensor | None,
        chunks: int = 1,
    ) -> BlockResiduals | None:
        """The chain's summed residuals for ``transformer`` called on the noisy latent ``x`` at noise level
        ``sigma``, or None when no link acts at it. ``sigmas``, ``context``, ``y`` and ``guidance`` are what the
        transformer gets, row for row; rows come in ``chunks`` blocks as for ``residuals``. The residuals come
        back on ``x``'s device and dtype."""
        total: BlockResiduals | None = None
        for link in self._acting(sigma):
            controlnet = link.controlnet
            if not isinstance(controlnet, (SD3ControlNet, FluxControlNet)):
                raise ValueError(f"ControlNet {link.name!r} drives a UNet, and is chained with transformer controls")
            if y is None:
                raise ValueError(f"ControlNet {link.name!r} needs the pooled text vector (pooled_output)")
            device = compute_device(controlnet)
            hint = self._hint(link, x, chunks, device)
            moved = [x.to(device), hint, sigmas.to(device), context.to(device), y.to(device)]
            with torch.no_grad():
                if isinstance(controlnet, SD3ControlNet):
                    assert isinstance(transformer, MMDiT)  # check_control_fits matched them
                    own = controlnet(*moved, transformer=transformer)
                else:
                    assert isinstance(transformer, FluxTransformer)
                    scale = None if guidance is None else guidance.to(device)
                    own = controlnet(*moved, scale, transformer=transformer, mode=link.union_type)
            own = own.to(x.device).scaled(link.strength)
            total = own if total is None else own + total
        return total


def _hint_for(link: AppliedControl, height: int, width: int) -> Tensor:
    """A link's hint for latents of ``height`` x ``width``, as ComfyUI's ControlNet prepares it: the picture fitted
    to the ControlNet's scale (centre crop, nearest-exact), then for the SD3.5 ControlNets preprocessed, and for
    those taking a VAE latent encoded, brought into the family's latent space (``process_in``) and given a mask
    channel when they take one (the inpainting ones): the link's mask fitted to the latent the same way, or ones."""
    controlnet = link.controlnet
    assert not isinstance(controlnet, T2IAdapter)
    if isinstance(controlnet, (SD3ControlNet, FluxControlNet)):
        scale = _TRANSFORMER_HINT_SCALE
    else:
        scale = controlnet.config.hint_downscale
    image = fit_hint(link.hint.float(), height * scale, width * scale)
    if isinstance(controlnet, SD3ControlNet):
        image = prepare_hint_image(image, controlnet.config.control_type)
    latent_format = hint_latent_format(controlnet)
    if latent_format is None:
        return image
    assert isinstance(controlnet, (SD3ControlNet, FluxControlNet))
    if link.encoder is None:
        raise ValueError(
            f"ControlNet {link.name!r} takes the control image as a VAE latent, and was applied without a VAE"
        )
    latent = latent_format.to_model(link.encoder(image).float().cpu())
    if controlnet.config.hint_channels == latent.shape[1] + 1:
        if link.mask is None:
            mask = torch.ones_like(latent[:, :1])
        else:
            mask = _per_chunk(fit_hint(link.mask.float(), latent.shape[-2], latent.shape[-1]), latent.shape[0])
        latent = torch.cat([latent, mask.expand(latent.shape[0], -1, -1, -1)], dim=1)
    return latent


def shared_residuals(
    parts: Sequence[BoundControl | None],
    rows: int,
    evaluate: Callable[[BoundControl, Tensor, int], Residuals | None],
) -> list[Residuals | None]:
    """The residuals of each of ``len(parts)`` equal row blocks of a batched call of ``rows`` rows, block ``i``
    carrying ``parts[i]``'s control: a control shared by several blocks runs once, over all their rows
    (``evaluate(control, row indices, blocks)``), and is split back; a block without control, or whose control does
    not act now, gets None."""
    per_block = rows // len(parts)
    result: list[Residuals | None] = [None] * len(parts)
    sharing: dict[int, list[int]] = {}
    for index, part in enumerate(parts):
        if part is not None:
            sharing.setdefault(id(part), []).append(index)
    for indices in sharing.values():
        control = parts[indices[0]]
        assert control is not None  # grouped above
        picked = torch.cat([torch.arange(i * per_block, (i + 1) * per_block) for i in indices])
        residuals = evaluate(control, picked, len(indices))
        if residuals is not None:
            for index, rows_of_block in zip(indices, split_rows(residuals, len(indices))):
                result[index] = rows_of_block
    return result


def split_rows(residuals: Residuals, parts: int) -> list[Residuals]:
    """Residuals of ``parts`` equal row blocks, one per block, in order."""
    first = next(r for r in residuals.tensors() if r is not None)
    rows = int(first.shape[0]) // parts

    def block(index: int) -> Callable[[Tensor], Tensor]:
        return lambda r: r[index * rows : (index + 1) * rows]

    return [residuals.mapped(block(index)) for index in range(parts)]


def _joined(entries: list[tuple[Tensor | None, ...] | None]) -> tuple[Tensor | None, ...]:
    """Position by position, the row blocks' tensors concatenated in order; a block without one there (None, or
    a shorter tuple) contributes zeros shaped like the others', and a position none has stays None."""
    count = max(len(entry) for entry in entries if entry is not None)
    joined: list[Tensor | None] = []
    for index in range(count):
        tensors = [None if entry is None or index >= len(entry) else entry[index] for entry in entries]
        template = next((t for t in tensors if t is not None), None)
        if template is None:
            joined.append(None)
        else:
            joined.append(torch.cat([torch.zeros_like(template) if t is None else t for t in tensors]))
    return tuple(joined)


def concat_residuals(parts: Sequence[Residuals | None]) -> Residuals | None:
    """The residuals of one batched call from those of its conditionings, in batch order: an entry without
    residuals (no control, or none acting now) contributes zeros shaped like the others'. None when none has any.

    Every part with residuals must be made for the same model (the guider checks that beforehand), so entries
    line up position by position."""
    present = [part for part in parts if part is not None]
    if not present:
        return None
    if isinstance(present[0], BlockResiduals):
        blocks = [part if isinstance(part, BlockResiduals) else None for part in parts]
        double = _joined([None if part is None else part.double for part in blocks])
        return BlockResiduals(double, _joined([None if part is None else part.single for part in blocks]))
    unet = [part if isinstance(part, ControlResiduals) else None for part in parts]
    (middle,) = _joined([None if part is None else (part.middle,) for part in unet])
    return ControlResiduals(
        _joined([None if part is None else part.input for part in unet]),
        middle,
        _joined([None if part is None else part.encoder for part in unet]),
    )


@dataclass(frozen=True, eq=False)
class TransformerControl:
    """The controls of one batched flow-transformer call, one per row block (None: a block without control), at
    the step's noise level ``sigma``: what the guider hands the forward that holds the transformer, which runs
    them (``residuals``) on the very inputs it gives the transformer."""

    parts: tuple[BoundControl | None, ...]
    sigma: float

    def residuals(
        self,
        transformer: nn.Module,
        x: Tensor,
        sigmas: Tensor,
        context: Tensor,
        y: Tensor | None,
        guidance: Tensor | None,
    ) -> BlockResiduals | None:
        """The summed ``BlockResiduals`` of every row block's ControlNets for ``transformer`` called on the noisy
        latent ``x`` with ``sigmas``, ``context``, ``y`` and ``guidance`` (row for row), zeros for a block
        without; None when no ControlNet acts at this step."""

        def evaluate(control: BoundControl, rows: Tensor, chunks: int) -> BlockResiduals | None:
            def picked(tensor: Tensor | None) -> Tensor | None:
                return None if tensor is None else tensor[rows.to(tensor.device)]

            return control.block_residuals(
                transformer,
                x[rows.to(x.device)],
                self.sigma,
                sigmas[rows.to(sigmas.device)],
                context[rows.to(context.device)],
                picked(y),
                picked(guidance),
                chunks,
            )

        return concat_residuals(shared_residuals(self.parts, x.shape[0], evaluate))


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
