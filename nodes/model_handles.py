"""The MODEL, CLIP and VAE values that flow between nodes: cheap handles around shared, loaded modules.

A handle is the loaded modules plus what the workflow changed about them: LoRA patch sets (with their
strengths) and, for CLIP, the clip skip. Patching never touches the loaded tensors, which are
copy-on-write views of the file's memory map shared by every handle of that checkpoint; a handle
computes its patched weights into new tensors once (per device), keeps them, and swaps them into the
module only for the duration of a call. Changing or removing a LoRA therefore costs one new handle
and one weight sum, never a reload of the checkpoint.

Latents between nodes are the VAE's own, unscaled, as in ComfyUI (so LATENT values and ``.latent``
files mean the same thing in both engines); the MODEL handle's ``latent_format`` scales them into
the diffusion model's space for sampling and back.

Loaded checkpoints are shared through the runtime's ``ModelMemory.load_shared``, weakly, keyed by file,
modification time and size: two loader nodes naming one unchanged file get the same modules, a
changed file is loaded anew, and the modules go away with the last handle using them. Every handle
keeps its whole loaded file alive (a VAE handle too, so that a later load of the file cannot make a
second copy beside it) and tells ``graph.sizeof`` so through ``loom_parts``: the file's modules, each
charged once however many handles share them, plus the handle's own LoRA tensors. The output cache,
which holds the handles, is thus the one owner of model memory (docs/architecture.md, "Memory").
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffusion import guidance
from diffusion.checkpoint import DiffusionModel, LoadedCheckpoint, ModelFamily, load_checkpoint
from diffusion.checkpoint.errors import CheckpointError, UnsupportedModelError
from diffusion.checkpoint.text_encoder_files import load_text_encoders
from diffusion.chroma import ChromaTransformer
from diffusion.embeddings import EmbeddingResolver
from diffusion.flow_matching import DiscreteFlow, FluxFlow
from diffusion.flux import FluxTransformer
from diffusion.lora import WeightDelta, apply_lora_patches
from diffusion.mmdit import MMDiT
from diffusion.model_memory import place
from diffusion.prediction import EpsPrediction, ModelSampling, VPrediction
from diffusion.stored_weights import store_weights_as
from diffusion.text_encoders.t5_stacks import T5FamilyEncoders, T5Padding
from diffusion.unet import UNetModel
from diffusion.vae import (
    FLUX_LATENT,
    SD1_LATENT,
    SD2_LATENT,
    SD3_LATENT,
    SDXL_LATENT,
    AutoencoderKL,
    LatentFormat,
    ScaledVAE,
)
from diffusion.vae_tiling import TileSpec
from diffusion.zimage import ZImageTransformer
from nodes.runtime import current_runtime

__all__ = [
    "DEFAULT_GUIDANCE",
    "ClipHandle",
    "ModelHandle",
    "PatchSet",
    "VaeHandle",
    "load_shared_checkpoint",
    "load_shared_text_encoders",
    "weights_swapped",
]

#: One LoRA as applied: parameter name -> deltas, and the strength it was applied with.
PatchSet = tuple[Mapping[str, Sequence[WeightDelta]], float]

_LATENT_FORMATS = {
    ModelFamily.SD15: SD1_LATENT,
    ModelFamily.SD2: SD2_LATENT,
    ModelFamily.SDXL: SDXL_LATENT,
    ModelFamily.SDXL_REFINER: SDXL_LATENT,
    ModelFamily.SD3: SD3_LATENT,
    ModelFamily.FLUX: FLUX_LATENT,
    ModelFamily.ZIMAGE: FLUX_LATENT,
    ModelFamily.CHROMA: FLUX_LATENT,
}
#: What a guidance-distilled model (FLUX.1 dev) is conditioned on when no FluxGuidance says otherwise,
#: as in ComfyUI.
DEFAULT_GUIDANCE = 3.5
#: Latents between nodes are unscaled (module docstring); the VAE handle maps with factor 1.
_UNSCALED = LatentFormat("unscaled", 1.0)


def _file_identity(path: Path) -> tuple[str, int, int]:
    """What changes when a file does: its resolved path, modification time and size."""
    stat = path.stat()
    return str(path.resolve()), stat.st_mtime_ns, stat.st_size


def load_shared_checkpoint(path: Path, weight_dtype: torch.dtype | None = None) -> LoadedCheckpoint:
    """``load_checkpoint(path)``, shared with every live handle of the same unchanged file in this runtime.

    Per runtime, not per process: each runtime's ``ModelMemory`` moves and casts the modules it places,
    so two runtimes with different compute settings must not share them. With ``weight_dtype`` the
    diffusion model keeps its weights in that dtype (``UNETLoader``'s fp8 choices), a load of its own.
    """
    key = ("checkpoint", _file_identity(path), weight_dtype)

    def load() -> LoadedCheckpoint:
        loaded = load_checkpoint(path)
        if weight_dtype is not None and loaded.unet is not None:
            store_weights_as(loaded.unet, weight_dtype)
        return loaded

    return current_runtime().memory.load_shared(key, load)


def load_shared_text_encoders(paths: Sequence[Path], clip_type: str) -> LoadedCheckpoint:
    """``load_text_encoders(...)``, shared like ``load_shared_checkpoint`` while a handle uses it."""
    key = ("text_encoders", clip_type, tuple(map(_file_identity, paths)))
    return current_runtime().memory.load_shared(key, lambda: load_text_encoders(paths, clip_type))


def _modules_of(checkpoint: LoadedCheckpoint) -> list[nn.Module]:
    """Every module of a loaded file: what a handle holding ``checkpoint`` keeps alive."""
    encoders = checkpoint.text_encoders.modules() if checkpoint.text_encoders is not None else ()
    return [module for module in (checkpoint.unet, checkpoint.vae, *encoders) if module is not None]


@contextmanager
def weights_swapped(module: nn.Module, weights: Mapping[str, torch.Tensor]) -> Iterator[nn.Module]:
    """Run with ``module``'s named parameters temporarily bound to ``weights``; rebinds, never writes."""
    parameters = dict(module.named_parameters())
    originals: dict[str, torch.Tensor] = {}
    try:
        for name, tensor in weights.items():
            originals[name] = parameters[name].data
            parameters[name].data = tensor
        yield module
    finally:
        for name, tensor in originals.items():
            parameters[name].data = tensor


class _Patched:
    """A module plus patch sets, with the patched weights computed once per device."""

    def __init__(self, module: nn.Module, patches: tuple[PatchSet, ...]) -> None:
        self.module = module
        self.patches = patches
        self._weights: dict[torch.device, dict[str, torch.Tensor]] = {}
        self._lock = threading.Lock()

    def weights(self) -> dict[str, torch.Tensor]:
        first = next(self.module.parameters())
        with self._lock:
            if first.device not in self._weights:
                self._weights = {first.device: apply_lora_patches(self.module, self.patches)}
            return self._weights[first.device]

    def loom_nbytes(self) -> int:
        """The patched weights computed so far (``graph.sizeof``): this handle's own, shared with no other."""
        with self._lock:
            return sum(t.element_size() * t.nelement() for weights in self._weights.values() for t in weights.values())

    def loom_parts(self) -> list[torch.Tensor]:
        """The LoRA tensors applied; a handle stacking another LoRA on this one shares them."""
        deltas = [delta for patch_set, _ in self.patches for sequence in patch_set.values() for delta in sequence]
        return [
            value
            for delta in deltas
            for value in (getattr(delta, field.name) for field in fields(delta))
            if isinstance(value, torch.Tensor)
        ]

    @contextmanager
    def active(self) -> Iterator[nn.Module]:
        """The module with its patched weights bound; the caller has placed it (``current_runtime().memory.use``)
        together with every module it runs alongside, so none is offloaded while patched."""
        if not self.patches:
            yield self.module
            return
        with torch.no_grad(), weights_swapped(self.module, self.weights()):
            yield self.module


def _active_patches(
    patches: tuple[PatchSet, ...], added: Mapping[str, Sequence[WeightDelta]], strength: float
) -> tuple[PatchSet, ...]:
    return patches if strength == 0.0 or not added else (*patches, (added, strength))


def _default_sampling(checkpoint: LoadedCheckpoint, model: DiffusionModel) -> ModelSampling:
    """How a model file predicts, as ComfyUI configures each family (shift 3 for SD3, 1.15 for FLUX.1 dev,
    none for the timestep-distilled schnell; Z-Image and Chroma on sigma itself, shift 3 and 1)."""
    if isinstance(model, FluxTransformer):
        return FluxFlow(shift=1.15 if model.config.guidance_embed else 1.0)
    if isinstance(model, MMDiT):
        return DiscreteFlow(shift=3.0)
    if isinstance(model, ZImageTransformer):
        return DiscreteFlow(shift=3.0, multiplier=1.0)
    if isinstance(model, ChromaTransformer):
        return DiscreteFlow(shift=1.0, multiplier=1.0)
    return VPrediction() if checkpoint.info.prediction == "v" else EpsPrediction()


class ModelHandle:
    """MODEL: the diffusion model of a file (a UNet or a flow transformer), how it predicts, and its LoRAs.

    ``mask_policy`` (None for a loaded model) changes how sampling uses an inpainting's noise mask at each
    model call (``DifferentialDiffusion``: ``diffusion.guidance.DifferentialMask``).
    """

    def __init__(
        self,
        checkpoint: LoadedCheckpoint,
        patches: tuple[PatchSet, ...] = (),
        sampling: ModelSampling | None = None,
        mask_policy: guidance.InpaintMaskPolicy | None = None,
    ) -> None:
        info = checkpoint.info
        if checkpoint.unet is None or info.family is None:
            raise CheckpointError(info.path, "holds no diffusion model, so it cannot be used as a MODEL")
        if info.prediction == "edm":
            raise UnsupportedModelError(
                info.path, info.family.value, "EDM-prediction models (Playground 2.5) are not supported yet"
            )
        self.checkpoint = checkpoint
        self.family: ModelFamily = info.family
        self.unet: DiffusionModel = checkpoint.unet
        self.sampling: ModelSampling = _default_sampling(checkpoint, self.unet) if sampling is None else sampling
        self.latent_format = _LATENT_FORMATS[self.family]
        self.mask_policy = mask_policy
        self._patched = _Patched(self.unet, patches)

    @property
    def patches(self) -> tuple[PatchSet, ...]:
        return self._patched.patches

    def loom_parts(self) -> list[object]:
        """What this handle keeps alive, for ``graph.sizeof``: its file's modules and its LoRA weights."""
        return [*_modules_of(self.checkpoint), self._patched]

    @property
    def latent_channels(self) -> int:
        return self.checkpoint.info.latent_channels

    @property
    def in_channels(self) -> int:
        """Latent channels the model takes: the noisy latent's, plus any concatenated conditioning."""
        if isinstance(self.unet, (FluxTransformer, ChromaTransformer)):
            return self.unet.config.latent_channels
        return self.unet.config.in_channels

    @property
    def adm_in_channels(self) -> int | None:
        """Width of an SDXL UNet's pooled-text-and-size vector ``y``; None for the rest."""
        return self.unet.config.adm_in_channels if isinstance(self.unet, UNetModel) else None

    @property
    def pooled_dim(self) -> int | None:
        """Width of the pooled text vector a flow transformer takes as ``y`` (FLUX: CLIP-L's, SD3: CLIP-L and
        CLIP-G's); None for UNets."""
        if isinstance(self.unet, FluxTransformer):
            return self.unet.config.vec_dim
        if isinstance(self.unet, MMDiT):
            return self.unet.config.pooled_dim
        return None

    @property
    def repeats_contexts(self) -> bool:
        """Whether conditionings of different lengths may share a model call with the shorter repeated
        (``CFGGuider``): not for Z-Image, which numbers its text tokens, so a repeat is a new token."""
        return not isinstance(self.unet, ZImageTransformer)

    @property
    def concat_builder(self) -> guidance.ConcatBuilder:
        """How this model's extra input channels are made: FLUX.1 Fill packs its mask, FLUX.1 Canny / Depth take
        the control latent alone, SD inpainting UNets take mask and latent."""
        if isinstance(self.unet, FluxTransformer) and self.in_channels > self.latent_channels:
            extra = self.in_channels - self.latent_channels
            return guidance.fill_channels if extra > self.latent_channels else guidance.control_channels
        return guidance.inpaint_channels

    @property
    def takes_guidance(self) -> bool:
        """A guidance-distilled model, conditioned on a guidance strength (FluxGuidance) instead of CFG."""
        return isinstance(self.unet, FluxTransformer) and self.unet.config.guidance_embed

    @property
    def device(self) -> torch.device:
        """Where the UNet's weights are now (inside ``unet_fn()``: where it computes)."""
        return next(self.unet.parameters()).device

    @property
    def preview_family(self) -> str:
        return self.latent_format.name

    def with_lora(self, patches: Mapping[str, Sequence[WeightDelta]], strength: float) -> ModelHandle:
        """A new handle with one more LoRA; strength 0 (or nothing to patch) returns this handle."""
        combined = _active_patches(self.patches, patches, strength)
        if combined is self.patches:
            return self
        return ModelHandle(self.checkpoint, combined, self.sampling, self.mask_policy)

    def with_sampling(self, sampling: ModelSampling) -> ModelHandle:
        """A new handle predicting through ``sampling`` (the ModelSampling* nodes: a flow model's shift)."""
        return ModelHandle(self.checkpoint, self.patches, sampling, self.mask_policy)

    def with_mask_policy(self, mask_policy: guidance.InpaintMaskPolicy | None) -> ModelHandle:
        """A new handle whose sampling reads an inpainting's noise mask through ``mask_policy``."""
        return ModelHandle(self.checkpoint, self.patches, self.sampling, mask_policy)

    @contextmanager
    def unet_fn(self) -> Iterator[Callable[..., torch.Tensor]]:
        """The ``unet_fn(x_in, timesteps, context, y=None, concat=None, guidance=None)`` that
        ``diffusion.guidance.CFGGuider`` calls.

        Inpainting UNets (9 input channels) take the mask and masked-image latent as extra input
        channels after the noisy latent; a 4-channel UNet ignores ``concat``. Flow transformers take
        sigma as their time (``timesteps`` is the sampling's sigma x multiplier) and the pooled text
        vector as ``y``; a guidance-distilled FLUX also its ``guidance``.
        """
        current_runtime().memory.use(self.unet)
        with self._patched.active() as unet:
            extra_channels = self.in_channels - self.latent_channels
            forward = _flow_forward(unet, self.sampling) if self.family.is_flow_transformer else _unet_forward(unet)

            def call(
                x_in: torch.Tensor,
                timesteps: torch.Tensor,
                context: torch.Tensor,
                y: torch.Tensor | None = None,
                concat: torch.Tensor | None = None,
                guidance: torch.Tensor | None = None,
                reference_latents: Sequence[torch.Tensor] = (),
            ) -> torch.Tensor:
                if extra_channels:
                    if concat is None or concat.shape[1] != extra_channels:
                        got = "none" if concat is None else concat.shape[1]
                        raise ValueError(
                            f"this model needs {extra_channels} extra input channels, got {got}: use "
                            "InpaintModelConditioning for inpainting models (and FLUX.1 Fill), "
                            "InstructPixToPixConditioning for FLUX.1 Canny / Depth"
                        )
                    x_in = torch.cat([x_in, concat.to(x_in)], dim=1)
                device = next(unet.parameters()).device

                def moved(tensor: torch.Tensor | None) -> torch.Tensor | None:
                    return None if tensor is None else tensor.to(device)

                references = [reference.to(device) for reference in reference_latents]
                with torch.no_grad():
                    output = forward(
                        x_in.to(device), timesteps.to(device), context.to(device), moved(y), moved(guidance), references
                    )
                return output.to(x_in.device)

            yield call


#: ``(x, timesteps, context, y, guidance, reference latents) -> output``: one model family's call.
_Forward = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None, list[torch.Tensor]],
    torch.Tensor,
]


def _no_references(model: nn.Module, references: list[torch.Tensor]) -> None:
    if references:
        raise ValueError(
            f"this {type(model).__name__} takes no reference latents: ReferenceLatent is for edit models "
            "such as FLUX.1 Kontext"
        )


def _unet_forward(unet: nn.Module) -> _Forward:
    def forward(
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        y: torch.Tensor | None,
        _: torch.Tensor | None,
        references: list[torch.Tensor],
    ) -> torch.Tensor:
        _no_references(unet, references)
        return unet(x, timesteps, context, y=y)

    return forward


def _need_pooled(y: torch.Tensor | None) -> torch.Tensor:
    if y is None:
        raise ValueError("this flow-matching transformer needs the pooled text vector (pooled_output)")
    return y


def _flow_forward(model: nn.Module, sampling: ModelSampling) -> _Forward:
    """A flow transformer called with the sampler's timesteps: back to sigma; FLUX and SD3 need the pooled vector,
    Z-Image and Chroma take none."""
    multiplier = getattr(sampling, "multiplier", None)
    if multiplier is None:
        raise ValueError(
            f"a flow-matching transformer cannot sample with {type(sampling).__name__}; "
            "use ModelSamplingSD3, ModelSamplingFlux or ModelSamplingAuraFlow"
        )

    def forward(
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        y: torch.Tensor | None,
        guidance: torch.Tensor | None,
        references: list[torch.Tensor],
    ) -> torch.Tensor:
        sigma = timesteps / multiplier
        if isinstance(model, FluxTransformer):
            _need_pooled(y)
            return model(x, sigma, context, y, guidance=guidance, ref_latents=references or None)
        _no_references(model, references)
        if isinstance(model, (ZImageTransformer, ChromaTransformer)):
            return model(x, sigma, context)
        return model(x, sigma, context, _need_pooled(y))

    return forward


#: What ``ClipHandle.encoders`` gives for a family's encoder the loaded stack lacks.
_ABSENT_ENCODER = nn.Module()


class ClipHandle:
    """CLIP: a family's tokenizer and text encoders, the clip skip, the LoRAs applied to them, and for the T5
    families the padding of T5's ids (``T5TokenizerOptions``; None: the family's own)."""

    def __init__(
        self,
        checkpoint: LoadedCheckpoint,
        clip_skip: int | None = None,
        patches: Mapping[int, tuple[PatchSet, ...]] | None = None,
        on_cpu: bool = False,
        t5_padding: T5Padding | None = None,
    ) -> None:
        if checkpoint.text_encoders is None:
            raise CheckpointError(checkpoint.info.path, "holds no text encoder, so it cannot be used as a CLIP")
        self.checkpoint = checkpoint
        self.stack = checkpoint.text_encoders
        self.clip_skip = clip_skip
        self.patches = dict(patches or {})
        #: The loaders' ``device: cpu``: encode on the CPU in fp32 whatever device the runtime computes on.
        self.on_cpu = on_cpu
        self.t5_padding = t5_padding
        self._patched = [
            _Patched(self.stack.encoders[role.name], self.patches.get(index, ()))
            for index, role in enumerate(self.stack.slots)
            if role.name in self.stack.encoders
        ]

    @property
    def family(self) -> str:
        return self.stack.family

    def loom_parts(self) -> list[object]:
        """What this handle keeps alive, for ``graph.sizeof``: its file's modules and its LoRA weights."""
        return [*_modules_of(self.checkpoint), *self._patched]

    @property
    def encoders(self) -> list[nn.Module]:
        """The text encoders in family order, as LoRA files number them (te1, te2); an encoder the family
        runs without stands as a module with no parameters, so a LoRA's part for it matches nothing."""
        return [self.stack.encoders.get(role.name, _ABSENT_ENCODER) for role in self.stack.slots]

    def with_clip_skip(self, clip_skip: int) -> ClipHandle:
        if not self.stack.roles:
            raise ValueError(f"this {self.family} text encoder has no CLIP encoder, so it has no CLIP layer to stop at")
        if not -self.stack.layer_count <= clip_skip <= -1:
            raise ValueError(
                f"stop_at_clip_layer {clip_skip} is out of range for this {self.family} text encoder: "
                f"-1 .. -{self.stack.layer_count}"
            )
        return self._with(clip_skip=clip_skip)

    def with_lora(self, patches: Mapping[int, Mapping[str, Sequence[WeightDelta]]], strength: float) -> ClipHandle:
        combined = {
            index: _active_patches(self.patches.get(index, ()), patches.get(index, {}), strength)
            for index in range(len(self.stack.slots))
        }
        if all(combined[index] is self.patches.get(index, ()) for index in combined):
            return self
        return self._with(patches=combined)

    def with_t5_padding(self, padding: T5Padding) -> ClipHandle:
        """A new handle padding T5's ids as given; a CLIP without T5 comes back as it is (ComfyUI ignores
        the option there too)."""
        return self._with(t5_padding=padding) if isinstance(self.stack, T5FamilyEncoders) else self

    def _with(self, **changes: Any) -> ClipHandle:
        current = dict(clip_skip=self.clip_skip, patches=self.patches, on_cpu=self.on_cpu, t5_padding=self.t5_padding)
        return ClipHandle(self.checkpoint, **(current | changes))

    def encode(
        self, text: str | Mapping[str, str], resolve_embedding: EmbeddingResolver | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(cond [1, tokens, width], pooled [1, dim] or None for a family without one) on the CPU in float32;
        `text` may differ per encoder."""
        pooled: torch.Tensor | None
        if self.on_cpu:
            for module in self.stack.modules():
                place(module, torch.device("cpu"), torch.float32)
        else:
            current_runtime().memory.use(*self.stack.modules())
        with torch.no_grad(), _all_active(self._patched):
            if self.t5_padding is not None and isinstance(self.stack, T5FamilyEncoders):
                cond, pooled = self.stack.encode(text, self.clip_skip, resolve_embedding, self.t5_padding)
            else:
                cond, pooled = self.stack.encode(text, self.clip_skip, resolve_embedding)
        return cond.float().cpu(), None if pooled is None else pooled.float().cpu()


@contextmanager
def _all_active(patched: list[_Patched]) -> Iterator[None]:
    if not patched:
        yield
        return
    with patched[0].active(), _all_active(patched[1:]):
        yield


class VaeHandle:
    """VAE: IMAGE ``[B, H, W, C]`` in 0..1 <-> unscaled LATENT ``[B, C, H/8, W/8]``.

    ``checkpoint`` is the loaded file ``model`` belongs to, if any: the handle keeps it alive, so the
    file's shared load lives as long as its VAE does (module docstring).
    """

    def __init__(
        self, model: AutoencoderKL, source: Path | None = None, checkpoint: LoadedCheckpoint | None = None
    ) -> None:
        self.model = model
        self.source = source
        self.checkpoint = checkpoint
        self._scaled = ScaledVAE(model, _UNSCALED)

    def loom_parts(self) -> list[nn.Module]:
        """What this handle keeps alive, for ``graph.sizeof``: its file's modules, or its own VAE."""
        return _modules_of(self.checkpoint) if self.checkpoint is not None else [self.model]

    @property
    def latent_channels(self) -> int:
        config = self.model.config
        return config.embed_dim if config.use_quant_conv else config.z_channels

    @property
    def downscale(self) -> int:
        return self.model.config.downscale

    def check_latent(self, latent: torch.Tensor) -> None:
        if latent.ndim != 4 or latent.shape[1] != self.latent_channels:
            raise ValueError(
                f"the latent has shape {tuple(latent.shape)} but this VAE ({self.source or 'checkpoint'}) "
                f"works on {self.latent_channels}-channel latents: the latent comes from another model family"
            )

    def crop_pixels(self, image: torch.Tensor) -> torch.Tensor:
        """Trim ``[B, H, W, C]`` to multiples of the VAE's factor, centred, as ComfyUI does before encoding."""
        factor = self.downscale
        height, width = image.shape[1] // factor * factor, image.shape[2] // factor * factor
        top, left = (image.shape[1] % factor) // 2, (image.shape[2] % factor) // 2
        return image[:, top : top + height, left : left + width]

    def _to_pixels(self, image: torch.Tensor) -> torch.Tensor:
        pixels = self.crop_pixels(image)[..., :3].movedim(-1, 1) * 2.0 - 1.0
        return pixels.to(next(self.model.parameters()).device)

    @staticmethod
    def _to_image(pixels: torch.Tensor) -> torch.Tensor:
        return ((pixels.float().cpu() + 1.0) / 2.0).clamp(0.0, 1.0).movedim(1, -1).contiguous()

    def encode(self, image: torch.Tensor, tiles: TileSpec | None = None) -> torch.Tensor:
        current_runtime().memory.use(self.model)
        with torch.no_grad():
            pixels = self._to_pixels(image)
            latent = self._scaled.encode(pixels) if tiles is None else self._scaled.encode_tiled(pixels, tiles)
        return latent.float().cpu()

    def decode(self, latent: torch.Tensor, tiles: TileSpec | None = None) -> torch.Tensor:
        self.check_latent(latent)
        current_runtime().memory.use(self.model)
        with torch.no_grad():
            z = latent.to(next(self.model.parameters()).device)
            pixels = self._scaled.decode(z) if tiles is None else self._scaled.decode_tiled(z, tiles)
        return self._to_image(pixels)
