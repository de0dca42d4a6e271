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

The handles also answer the methods ComfyUI node packs call on the MODEL, CLIP and VAE values they are
given, under ComfyUI's names, arguments and tensor layouts (``clone``, ``add_patches``, ``model_options``,
``tokenize``, ``encode_from_tokens``, ``decode_tiled`` ...; docs/plugins.md, "MODEL, CLIP and VAE values").
As in ComfyUI, ``clone()`` makes a new handle and the ComfyUI-style setters (``add_patches``,
``clip_layer``, ``add_object_patch``) change the handle they are called on, which a pack clones first.
What Loom cannot do the ComfyUI way raises ``NotImplementedError`` naming the method and the reason.
"""

from __future__ import annotations

import copy
import logging
import math
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import nn

from diffusion import guidance
from diffusion.checkpoint import DiffusionModel, LoadedCheckpoint, ModelFamily, load_checkpoint
from diffusion.checkpoint.errors import CheckpointError, UnsupportedModelError
from diffusion.checkpoint.text_encoder_files import load_text_encoders
from diffusion.chroma import ChromaTransformer
from diffusion.dit_diffusers_layout import RowSlice
from diffusion.embeddings import EmbeddingFolder, EmbeddingResolver
from diffusion.flow_matching import DiscreteFlow, FluxFlow
from diffusion.flux import FluxTransformer
from diffusion.lora import FullDelta, LowRankDelta, WeightDelta, apply_lora_patches
from diffusion.mmdit import MMDiT
from diffusion.model_memory import place
from diffusion.prediction import EpsPrediction, ModelSampling, VPrediction
from diffusion.prompt_weights import TokenWindow, empty_window
from diffusion.qwen_tokenizer import load_qwen_tokenizer
from diffusion.stored_weights import store_weights_as
from diffusion.text_encoders.qwen3 import Z_IMAGE_TEMPLATE
from diffusion.text_encoders.stack import ClipStack
from diffusion.text_encoders.t5_stacks import (
    CHROMA_T5_PADDING,
    FLUX_T5_PADDING,
    SD3_T5_PADDING,
    T5FamilyEncoders,
    T5Padding,
    t5_weighted_tokens,
)
from diffusion.text_encoders.zimage_text import ZImageTextEncoder
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
    "ComfyBaseModel",
    "ComfyLatentFormat",
    "EncoderTokens",
    "ModelHandle",
    "PatchSet",
    "VaeHandle",
    "load_shared_checkpoint",
    "load_shared_text_encoders",
    "weights_swapped",
]

#: One LoRA as applied: parameter name -> deltas, and the strength it was applied with.
PatchSet = tuple[Mapping[str, Sequence[WeightDelta]], float]

_log = logging.getLogger(__name__)

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


# ComfyUI's weight patches (``ModelPatcher.add_patches``) as Loom deltas. A patch dict maps a state-dict name,
# or ``(name, (dim, start, length))`` for part of a fused weight, to ``(diff,)``, ``("diff", (diff,))`` or
# ``("lora", (up, down, alpha, mid, dora_scale, reshape))`` (comfy/lora.py); a bare tensor is read as a diff.

#: ``name -> (patch group, parameter name, parameter shape)``, or None for a name the handle does not have.
_PatchTarget = Callable[[str], tuple[int, str, torch.Size] | None]


def _unsupported(method: str, reason: str) -> Callable[..., NoReturn]:
    """A ComfyUI method Loom does not provide: calling it raises, naming the method and why."""

    def refuse(self: object, *args: object, **kwargs: object) -> NoReturn:
        raise NotImplementedError(f"{method}() is not supported in Loom: {reason}")

    refuse.__name__ = method.rpartition(".")[2]
    return refuse


def _patch_rows(key: tuple[Any, ...], method: str) -> RowSlice | None:
    """The rows a ``(name, offset[, function])`` key patches; ComfyUI's offset is ``(dim, start, length)``."""
    if len(key) > 2 and key[2] is not None:
        raise NotImplementedError(
            f"{method}: {key[0]!r} carries a function to apply to its delta, which Loom does not support"
        )
    offset = key[1] if len(key) > 1 else None
    if offset is None:
        return None
    dim, start, length = offset
    if dim != 0:
        raise NotImplementedError(
            f"{method}: {key[0]!r} patches a slice along dimension {dim}; Loom patches whole weights or rows"
        )
    return RowSlice(int(start), int(start) + int(length))


def _weight_delta(name: str, value: object, rows: RowSlice | None, method: str) -> WeightDelta:
    """One patch value in ComfyUI's formats as the delta Loom's LoRA loader makes for the same numbers."""
    if isinstance(value, torch.Tensor):
        return FullDelta(value, rows)
    if isinstance(value, list):
        raise NotImplementedError(
            f"{method}: {name!r} is a model-merge patch (a weight and its patches, as get_key_patches gives "
            "them); Loom applies weight differences ('diff') and LoRA ('lora') patches"
        )
    if isinstance(value, tuple) and len(value) == 1:
        kind, args = "diff", value
    elif isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], tuple):
        kind, args = value
    else:
        raise ValueError(
            f"{method}: the patch of {name!r} is not (diff,), ('diff', (diff,)) or "
            f"('lora', (up, down, alpha, mid, dora_scale, reshape)): {type(value).__name__}"
        )
    if kind == "diff" and args and isinstance(args[0], torch.Tensor):
        if len(args) > 1 and isinstance(args[1], Mapping) and args[1].get("pad_weight"):
            raise NotImplementedError(f"{method}: {name!r} asks to pad the weight to the diff's shape")
        return FullDelta(args[0], rows)
    if kind == "lora" and len(args) >= 2:
        up, down, alpha, mid, dora_scale, reshape = (*args, None, None, None, None)[:6]
        if dora_scale is not None:
            raise NotImplementedError(f"{method}: {name!r} is a DoRA patch (dora_scale), which Loom does not apply")
        if reshape is not None:
            raise NotImplementedError(f"{method}: {name!r} reshapes the weight, which Loom does not support")
        scale = 1.0 if alpha is None else float(alpha) / down.shape[0]
        return LowRankDelta(up, down, scale, mid, rows)
    raise NotImplementedError(
        f"{method}: {name!r} has a {kind!r} patch; Loom applies 'diff' and 'lora' patches "
        "(not LoHa, LoKr, GLoRA or 'set')"
    )


def _delta_numel(delta: WeightDelta) -> int:
    if isinstance(delta, FullDelta):
        return delta.diff.numel()
    kernel = 1 if delta.mid is None else math.prod(delta.mid.shape[2:])
    return delta.up.shape[0] * delta.down.flatten(1).shape[1] * kernel


def _comfy_patches(
    patches: Mapping[Any, Any], target: _PatchTarget, method: str
) -> tuple[dict[int, dict[str, list[WeightDelta]]], list[Any]]:
    """(group -> parameter -> deltas, the keys applied) for a ComfyUI patch dict; a name ``target`` does not
    know is skipped, as ComfyUI skips keys its model lacks. Everything is checked before anything is applied."""
    grouped: dict[int, dict[str, list[WeightDelta]]] = {}
    applied = []
    for key, value in patches.items():
        name = key if isinstance(key, str) else key[0] if isinstance(key, tuple) and key else None
        found = target(name) if isinstance(name, str) else None
        if name is None or found is None:
            continue
        group, parameter, shape = found
        rows = None if isinstance(key, str) else _patch_rows(key, method)
        delta = _weight_delta(name, value, rows, method)
        own = shape if rows is None else rows.part_shape(shape)
        if _delta_numel(delta) != own.numel():
            raise ValueError(f"{method}: the patch of {name!r} does not fit its weight of shape {tuple(own)}")
        grouped.setdefault(group, {}).setdefault(parameter, []).append(delta)
        applied.append(key)
    return grouped, applied


def _copy_nested_dicts(options: Mapping[str, Any]) -> dict[str, Any]:
    """``model_options`` as ComfyUI clones them: every nested dict copied, the values in them shared."""
    return {key: _copy_nested_dicts(value) if isinstance(value, dict) else value for key, value in options.items()}


#: ``model_options`` entries with which ComfyUI changes sampling, and the ``ModelHandle`` setter for each.
_SAMPLING_OPTIONS = {
    "sampler_cfg_function": "set_model_sampler_cfg_function",
    "sampler_post_cfg_function": "set_model_sampler_post_cfg_function",
    "sampler_pre_cfg_function": "set_model_sampler_pre_cfg_function",
    "model_function_wrapper": "set_model_unet_function_wrapper",
    "denoise_mask_function": "set_model_denoise_mask_function",
}
_NO_SAMPLING_SEAM = (
    "Loom's sampler (diffusion.guidance.CFGGuider) has no seam for ComfyUI's model_options functions yet; "
    "write the change as a node that returns a new MODEL or GUIDER"
)
_NO_BLOCK_PATCHES = (
    "Loom's diffusion models have no ComfyUI transformer_options patch points (attention and block patches)"
)
#: What a ``model_sampling`` object must answer to stand in for Loom's (``diffusion.prediction.ModelSampling``).
_MODEL_SAMPLING_METHODS = ("calculate_input", "calculate_denoised", "timestep", "sigma", "sigmas", "noise_scaling")


@dataclass(frozen=True)
class ComfyLatentFormat:
    """A MODEL's latent format under ComfyUI's names: ``process_in`` takes a VAE latent into the diffusion
    model's space, ``process_out`` back (Loom's ``LatentFormat.to_model`` / ``from_model``)."""

    loom: LatentFormat
    latent_channels: int

    @property
    def name(self) -> str:
        return self.loom.name

    @property
    def scale_factor(self) -> float:
        return self.loom.scale_factor

    @property
    def shift_factor(self) -> float:
        return self.loom.shift_factor

    def process_in(self, latent: torch.Tensor) -> torch.Tensor:
        return self.loom.to_model(latent)

    def process_out(self, latent: torch.Tensor) -> torch.Tensor:
        return self.loom.from_model(latent)


class ComfyBaseModel:
    """``MODEL.model``: what packs read of ComfyUI's ``BaseModel``, answered live from the handle."""

    def __init__(self, handle: ModelHandle) -> None:
        self._handle = handle

    @property
    def model_sampling(self) -> ModelSampling:
        return self._handle.sampling

    @property
    def latent_format(self) -> ComfyLatentFormat:
        return ComfyLatentFormat(self._handle.latent_format, self._handle.latent_channels)

    @property
    def diffusion_model(self) -> nn.Module:
        """The loaded module, without the handle's LoRA patches (they are bound only while it samples)."""
        return self._handle.unet

    @property
    def device(self) -> torch.device:
        return self._handle.device

    def get_dtype(self) -> torch.dtype:
        return self._handle.unet.dtype


class ModelHandle:
    """MODEL: the diffusion model of a file (a UNet or a flow transformer), how it predicts, and its LoRAs.

    ``mask_policy`` (None for a loaded model) changes how sampling uses an inpainting's noise mask at each
    model call (``DifferentialDiffusion``: ``diffusion.guidance.DifferentialMask``).

    For ComfyUI packs it is also a ``ModelPatcher``: ``clone()``, ``add_patches`` (weight differences and
    LoRA, on ``diffusion_model.<parameter>`` keys), ``model_options``, ``get_model_object``, ``model``
    (``ComfyBaseModel``), ``add_object_patch("model_sampling", ...)``; the sampling hooks ComfyUI keeps in
    ``model_options`` are refused (``set_model_sampler_cfg_function`` ...), see docs/plugins.md.
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
        #: ComfyUI's per-model sampling options, kept for packs that read and write them; Loom's sampler
        #: reads none of them (``unet_fn`` logs what it leaves out).
        self.model_options: dict[str, Any] = {"transformer_options": {}}

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
        return self._carrying_options(ModelHandle(self.checkpoint, combined, self.sampling, self.mask_policy))

    def with_sampling(self, sampling: ModelSampling) -> ModelHandle:
        """A new handle predicting through ``sampling`` (the ModelSampling* nodes: a flow model's shift)."""
        return self._carrying_options(ModelHandle(self.checkpoint, self.patches, sampling, self.mask_policy))

    def with_mask_policy(self, mask_policy: guidance.InpaintMaskPolicy | None) -> ModelHandle:
        """A new handle whose sampling reads an inpainting's noise mask through ``mask_policy``."""
        return self._carrying_options(ModelHandle(self.checkpoint, self.patches, self.sampling, mask_policy))

    def _carrying_options(self, derived: ModelHandle) -> ModelHandle:
        derived.model_options = _copy_nested_dicts(self.model_options)
        return derived

    # ComfyUI's ModelPatcher, for packs (comfy/model_patcher.py).

    def clone(self) -> ModelHandle:
        """A new handle over the same weights, patches and options; patching the clone leaves this one as it is."""
        twin = copy.copy(self)
        twin.model_options = _copy_nested_dicts(self.model_options)
        return twin

    def add_patches(
        self, patches: Mapping[Any, Any], strength_patch: float = 1.0, strength_model: float = 1.0
    ) -> list[Any]:
        """Patch this handle's weights as ComfyUI does, ``W + strength_patch * delta`` per key; returns the keys
        applied. Keys are the model's state-dict names (``diffusion_model.<parameter>``); keys it lacks are
        skipped, as in ComfyUI. Applied like a LoRA loader's patches: the loaded tensors are never written."""
        if strength_model != 1.0:
            raise NotImplementedError(
                "MODEL.add_patches(strength_model != 1) scales the model's own weights (model merging), "
                "which Loom's patches do not do"
            )
        parameters = dict(self.unet.named_parameters())

        def target(name: str) -> tuple[int, str, torch.Size] | None:
            parameter = name.removeprefix("diffusion_model.")
            if parameter == name or parameter not in parameters:
                return None
            return 0, parameter, parameters[parameter].shape

        grouped, applied = _comfy_patches(patches, target, "MODEL.add_patches")
        combined = _active_patches(self.patches, grouped.get(0, {}), strength_patch)
        if combined is not self.patches:
            self._patched = _Patched(self.unet, combined)
        return applied

    @property
    def model(self) -> ComfyBaseModel:
        """``ModelPatcher.model``: the model sampling, latent format, diffusion model and dtype packs read."""
        return ComfyBaseModel(self)

    def model_dtype(self) -> torch.dtype:
        return self.unet.dtype

    def get_model_object(self, name: str) -> Any:
        """``model_sampling``, ``latent_format``, ``diffusion_model`` or an attribute path below it."""
        view = self.model
        if name in ("model_sampling", "latent_format", "diffusion_model"):
            return getattr(view, name)
        head, _, path = name.partition(".")
        if head == "diffusion_model":
            found: Any = self.unet
            for part in path.split("."):
                found = getattr(found, part)
            return found
        raise AttributeError(
            f"MODEL.get_model_object({name!r}): Loom's MODEL has model_sampling, latent_format and diffusion_model"
        )

    def add_object_patch(self, name: str, obj: Any) -> None:
        """Replace ``model_sampling`` on this handle (ComfyUI's ModelSampling* nodes); other objects are refused."""
        if name != "model_sampling":
            raise NotImplementedError(
                f"MODEL.add_object_patch({name!r}) is not supported in Loom: only 'model_sampling' can be replaced"
            )
        missing = [method for method in _MODEL_SAMPLING_METHODS if not hasattr(obj, method)]
        if missing:
            raise TypeError(
                f"MODEL.add_object_patch('model_sampling', ...): {type(obj).__name__} lacks {', '.join(missing)} "
                "(diffusion.prediction.ModelSampling)"
            )
        self.sampling = obj

    set_model_sampler_cfg_function = _unsupported("MODEL.set_model_sampler_cfg_function", _NO_SAMPLING_SEAM)
    set_model_sampler_post_cfg_function = _unsupported("MODEL.set_model_sampler_post_cfg_function", _NO_SAMPLING_SEAM)
    set_model_sampler_pre_cfg_function = _unsupported("MODEL.set_model_sampler_pre_cfg_function", _NO_SAMPLING_SEAM)
    set_model_unet_function_wrapper = _unsupported("MODEL.set_model_unet_function_wrapper", _NO_SAMPLING_SEAM)
    set_model_denoise_mask_function = _unsupported("MODEL.set_model_denoise_mask_function", _NO_SAMPLING_SEAM)
    set_model_patch = _unsupported("MODEL.set_model_patch", _NO_BLOCK_PATCHES)
    set_model_patch_replace = _unsupported("MODEL.set_model_patch_replace", _NO_BLOCK_PATCHES)
    set_model_attn1_patch = _unsupported("MODEL.set_model_attn1_patch", _NO_BLOCK_PATCHES)
    set_model_attn2_patch = _unsupported("MODEL.set_model_attn2_patch", _NO_BLOCK_PATCHES)
    set_model_attn1_replace = _unsupported("MODEL.set_model_attn1_replace", _NO_BLOCK_PATCHES)
    set_model_attn2_replace = _unsupported("MODEL.set_model_attn2_replace", _NO_BLOCK_PATCHES)
    set_model_attn1_output_patch = _unsupported("MODEL.set_model_attn1_output_patch", _NO_BLOCK_PATCHES)
    set_model_attn2_output_patch = _unsupported("MODEL.set_model_attn2_output_patch", _NO_BLOCK_PATCHES)
    set_model_input_block_patch = _unsupported("MODEL.set_model_input_block_patch", _NO_BLOCK_PATCHES)
    set_model_input_block_patch_after_skip = _unsupported(
        "MODEL.set_model_input_block_patch_after_skip", _NO_BLOCK_PATCHES
    )
    set_model_output_block_patch = _unsupported("MODEL.set_model_output_block_patch", _NO_BLOCK_PATCHES)
    get_key_patches = _unsupported(
        "MODEL.get_key_patches", "Loom's handles expose no weight patches for merging; merge with Loom's nodes"
    )

    def _report_ignored_options(self) -> None:
        """Log what of ``model_options`` this sampling leaves out: a warning for what changes ComfyUI's result."""
        for key, value in self.model_options.items():
            if key in _SAMPLING_OPTIONS or key == "transformer_options" and value:
                _log.warning(
                    "MODEL.model_options[%r] is ignored: %s (ComfyUI sets it with MODEL.%s)",
                    key,
                    _NO_SAMPLING_SEAM if key in _SAMPLING_OPTIONS else _NO_BLOCK_PATCHES,
                    _SAMPLING_OPTIONS.get(key, "set_model_patch"),
                )
            elif key != "transformer_options":
                _log.debug("MODEL.model_options[%r] is kept and ignored: Loom's sampler does not read it", key)

    @contextmanager
    def unet_fn(self) -> Iterator[Callable[..., torch.Tensor]]:
        """The ``unet_fn(x_in, timesteps, context, y=None, concat=None, guidance=None)`` that
        ``diffusion.guidance.CFGGuider`` calls.

        Inpainting UNets (9 input channels) take the mask and masked-image latent as extra input
        channels after the noisy latent; a 4-channel UNet ignores ``concat``. Flow transformers take
        sigma as their time (``timesteps`` is the sampling's sigma x multiplier) and the pooled text
        vector as ``y``; a guidance-distilled FLUX also its ``guidance``.
        """
        self._report_ignored_options()
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


#: ComfyUI's name for each encoder's part of ``CLIP.tokenize(text)`` (``tokens["l"]``), by Loom's encoder name.
_TOKEN_KEYS = {"clip_l": "l", "clip_h": "h", "clip_g": "g", "t5xxl": "t5xxl", "qwen3": "qwen3_4b"}
_ENCODER_OF_KEY = {key: encoder for encoder, key in _TOKEN_KEYS.items()}
#: The T5 padding each T5 family tokenizes with when no ``T5TokenizerOptions`` says otherwise.
_T5_PADDINGS = {"flux": FLUX_T5_PADDING, "sd3": SD3_T5_PADDING, "chroma": CHROMA_T5_PADDING}
_Pair = tuple[Any, ...]


class EncoderTokens(list[list[_Pair]]):
    """One encoder's part of ``CLIP.tokenize``: ComfyUI's windows of ``(token, weight)`` pairs, a textual-inversion
    vector standing as a tensor in place of its token; ``text`` is the prompt they came from and ``windows``
    Loom's own windows of it (CLIP encoders only). Packs may edit the pairs of a CLIP encoder's part."""

    def __init__(self, pairs: Sequence[Sequence[_Pair]], text: str, windows: Sequence[TokenWindow] = ()) -> None:
        super().__init__([list(window) for window in pairs])
        self.text = text
        self.windows = tuple(windows)
        self._original = tuple(tuple(window) for window in self)

    def unchanged(self) -> bool:
        """Whether the pairs are still those ``tokenize`` gave (tensors compared by identity)."""
        return len(self) == len(self._original) and all(
            len(window) == len(original) and all(map(_same_pair, window, original))
            for window, original in zip(self, self._original)
        )


def _same_pair(pair: _Pair, original: _Pair) -> bool:
    return len(pair) == len(original) and all(
        value is known if isinstance(value, torch.Tensor) or isinstance(known, torch.Tensor) else value == known
        for value, known in zip(pair, original)
    )


def _window_pairs(window: TokenWindow) -> list[_Pair]:
    vectors = dict(window.embeddings)
    return [
        (vectors.get(position, token), weight)
        for position, (token, weight) in enumerate(zip(window.ids, window.weights))
    ]


def _pairs_window(pairs: Sequence[Sequence[Any]], eos_id: int) -> TokenWindow:
    """A window from ComfyUI's pairs (a third item, the word id, is ignored); the end token is the first
    ``eos_id`` after the start token."""
    ids: list[int] = []
    weights: list[float] = []
    embeddings: list[tuple[int, torch.Tensor]] = []
    for position, pair in enumerate(pairs):
        token, weight = pair[0], pair[1]
        if isinstance(token, torch.Tensor):
            embeddings.append((position, token))
            token = 0  # the vector replaces the token's embedding; the id is a placeholder
        ids.append(int(token))
        weights.append(float(weight))
    vector_positions = {position for position, _ in embeddings}
    ends = (position for position in range(1, len(ids)) if ids[position] == eos_id and position not in vector_positions)
    return TokenWindow(tuple(ids), tuple(weights), next(ends, len(ids) - 1), tuple(embeddings))


def _embedding_resolver() -> EmbeddingFolder:
    """This installation's textual-inversion embeddings, as CLIPTextEncode resolves them."""
    return EmbeddingFolder(tuple(current_runtime().model_paths.folders("embeddings")))


class ClipHandle:
    """CLIP: a family's tokenizer and text encoders, the clip skip, the LoRAs applied to them, and for the T5
    families the padding of T5's ids (``T5TokenizerOptions``; None: the family's own).

    For ComfyUI packs it is also ComfyUI's ``CLIP``: ``clone()``, ``tokenize``, ``encode_from_tokens``,
    ``encode_from_tokens_scheduled``, ``clip_layer``, ``add_patches``, ``load_model``, ``set_tokenizer_option``.
    ``encode(text, ...)`` stays Loom's and returns ``(cond, pooled)``, where ComfyUI's returns ``cond``.
    """

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
        self._patched = self._patched_encoders()

    def _patched_encoders(self) -> list[_Patched]:
        return [
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
        return self._with(clip_skip=self._checked_clip_skip(clip_skip, "stop_at_clip_layer"))

    def _checked_clip_skip(self, clip_skip: int, name: str) -> int:
        if not self.stack.roles:
            raise ValueError(f"this {self.family} text encoder has no CLIP encoder, so it has no CLIP layer to stop at")
        if not -self.stack.layer_count <= clip_skip <= -1:
            raise ValueError(
                f"{name} {clip_skip} is out of range for this {self.family} text encoder: "
                f"-1 .. -{self.stack.layer_count}"
            )
        return clip_skip

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

        def run() -> tuple[torch.Tensor, torch.Tensor | None]:
            if self.t5_padding is not None and isinstance(self.stack, T5FamilyEncoders):
                return self.stack.encode(text, self.clip_skip, resolve_embedding, self.t5_padding)
            return self.stack.encode(text, self.clip_skip, resolve_embedding)

        return self._encoded(run)

    def _encoded(
        self, run: Callable[[], tuple[torch.Tensor, torch.Tensor | None]]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``run()`` with the encoders placed and patched, its outputs on the CPU in float32."""
        if self.on_cpu:
            for module in self.stack.modules():
                place(module, torch.device("cpu"), torch.float32)
        else:
            current_runtime().memory.use(*self.stack.modules())
        with torch.no_grad(), _all_active(self._patched):
            cond, pooled = run()
        return cond.float().cpu(), None if pooled is None else pooled.float().cpu()

    # ComfyUI's CLIP, for packs (comfy/sd.py).

    def clone(self) -> ClipHandle:
        """A new handle over the same encoders, patches and clip skip; changing the clone leaves this one as it is."""
        twin = copy.copy(self)
        twin.patches = dict(self.patches)
        twin._patched = list(self._patched)
        return twin

    def load_model(self) -> ClipHandle:
        """Nothing to do: the encoders are placed on the device when they encode."""
        return self

    def clip_layer(self, layer_idx: int) -> None:
        """Encode from layer ``layer_idx`` (-1 the last, -2 the one before: ``CLIPSetLastLayer``) from now on."""
        self.clip_skip = self._checked_clip_skip(layer_idx, "CLIP.clip_layer")

    def set_tokenizer_option(self, option_name: str, value: Any) -> None:
        """T5's ``t5xxl_min_padding`` / ``t5xxl_min_length`` (``T5TokenizerOptions``); options no tokenizer of
        this CLIP reads are ignored, as in ComfyUI."""
        if option_name not in ("t5xxl_min_padding", "t5xxl_min_length") or not isinstance(self.stack, T5FamilyEncoders):
            _log.debug("CLIP.set_tokenizer_option(%r): no tokenizer of this %s CLIP reads it", option_name, self.family)
            return
        padding = self._t5_padding()
        if option_name == "t5xxl_min_padding":
            self.t5_padding = T5Padding(int(value), padding.min_length)
        else:
            self.t5_padding = T5Padding(padding.min_padding, int(value))

    def _t5_padding(self) -> T5Padding:
        return self.t5_padding if self.t5_padding is not None else _T5_PADDINGS[self.family]

    def add_patches(
        self, patches: Mapping[Any, Any], strength_patch: float = 1.0, strength_model: float = 1.0
    ) -> list[Any]:
        """Patch the CLIP encoders' weights as ComfyUI does; returns the keys applied. Keys are ComfyUI's
        state-dict names (``clip_l.transformer.text_model.encoder.layers.0.mlp.fc1.weight``); others, T5's
        included (Loom patches only CLIP encoders), are skipped."""
        if strength_model != 1.0:
            raise NotImplementedError(
                "CLIP.add_patches(strength_model != 1) scales the encoders' own weights (model merging), "
                "which Loom's patches do not do"
            )
        slots = {role.name: index for index, role in enumerate(self.stack.slots) if role.name in self.stack.encoders}
        parameters = {index: dict(self.stack.encoders[name].named_parameters()) for name, index in slots.items()}

        def target(name: str) -> tuple[int, str, torch.Size] | None:
            encoder, _, rest = name.partition(".transformer.")
            index = slots.get(encoder)
            parameter = rest.removeprefix("text_model.")
            if index is None or parameter not in parameters[index]:
                return None
            return index, parameter, parameters[index][parameter].shape

        grouped, applied = _comfy_patches(patches, target, "CLIP.add_patches")
        combined = {
            index: _active_patches(self.patches.get(index, ()), added, strength_patch)
            for index, added in grouped.items()
        }
        if any(combined[index] is not self.patches.get(index, ()) for index in combined):
            self.patches = {**self.patches, **combined}
            self._patched = self._patched_encoders()
        return applied

    def tokenize(self, text: str, return_word_ids: bool = False, **kwargs: Any) -> dict[str, EncoderTokens]:
        """The prompt's tokens per encoder under ComfyUI's keys (``l``, ``g``, ``h``, ``t5xxl``, ``qwen3_4b``),
        weights and textual-inversion embeddings resolved as CLIPTextEncode resolves them."""
        if return_word_ids:
            raise NotImplementedError("CLIP.tokenize(return_word_ids=True): Loom's tokenizers do not number words")
        options = sorted(key for key, value in kwargs.items() if value)
        if options:
            raise NotImplementedError(f"CLIP.tokenize: Loom's tokenizers take no options ({', '.join(options)})")
        stack = self.stack
        clips = stack if isinstance(stack, ClipStack) else stack.clips if isinstance(stack, T5FamilyEncoders) else None
        tokens: dict[str, EncoderTokens] = {}
        if clips is not None and clips.roles:
            for name, windows in clips.tokenize(text, _embedding_resolver()).items():
                tokens[_TOKEN_KEYS[name]] = EncoderTokens([_window_pairs(w) for w in windows], text, windows)
        if isinstance(stack, T5FamilyEncoders) and stack.t5 is not None:
            t5 = t5_weighted_tokens(text, stack.tokenizer, self._t5_padding())
            tokens["t5xxl"] = EncoderTokens([list(zip(t5.ids, t5.weights))], text)
        if isinstance(stack, ZImageTextEncoder):
            ids = load_qwen_tokenizer().encode_templated(text, Z_IMAGE_TEMPLATE)
            tokens["qwen3_4b"] = EncoderTokens([[(token, 1.0) for token in ids]], text)
        return tokens

    def encode_from_tokens(
        self,
        tokens: Mapping[str, Sequence[Sequence[_Pair]]],
        return_pooled: bool | str = False,
        return_dict: bool = False,
    ) -> Any:
        """``cond``; ``(cond, pooled)`` with ``return_pooled``; ``{"cond", "pooled_output"}`` with ``return_dict``.
        ``cond`` is ``[1, tokens, width]`` and ``pooled`` ``[1, dim]`` (None for families without one), as
        CLIPTextEncode gives them for the text the tokens came from."""
        if return_pooled == "unprojected":
            raise NotImplementedError("CLIP.encode_from_tokens(return_pooled='unprojected') is not supported in Loom")
        if isinstance(self.stack, ClipStack):
            stack = self.stack
            windows = self._windows_of(stack, tokens)
            cond, pooled = self._encoded(lambda: stack.encode_tokens(windows, self.clip_skip))
        else:
            cond, pooled = self.encode(self._texts_of(tokens), _embedding_resolver())
        if return_dict:
            return {"cond": cond, "pooled_output": pooled}
        return (cond, pooled) if return_pooled else cond

    def encode_from_tokens_scheduled(
        self,
        tokens: Mapping[str, Sequence[Sequence[_Pair]]],
        unprojected: bool = False,
        add_dict: Mapping[str, Any] | None = None,
        show_pbar: bool = True,
    ) -> list[list[Any]]:
        """The CONDITIONING CLIPTextEncode gives: ``[[cond, {"pooled_output": pooled, **add_dict}]]``."""
        if unprojected:
            raise NotImplementedError("CLIP.encode_from_tokens_scheduled(unprojected=True) is not supported in Loom")
        encoded = self.encode_from_tokens(tokens, return_dict=True)
        cond = encoded.pop("cond")
        return [[cond, {**encoded, **(add_dict or {})}]]

    def _windows_of(
        self, stack: ClipStack, tokens: Mapping[str, Sequence[Sequence[_Pair]]]
    ) -> dict[str, list[TokenWindow]]:
        """Loom's windows per CLIP encoder: those ``tokenize`` made, or windows of the pairs a pack edited or built;
        a shorter part is padded with empty-prompt windows, as ``ClipStack.tokenize`` aligns them."""
        missing = sorted(_TOKEN_KEYS[role.name] for role in stack.roles if _TOKEN_KEYS[role.name] not in tokens)
        if missing:
            raise ValueError(f"CLIP.encode_from_tokens: this {self.family} CLIP needs the tokens {missing}")
        windows: dict[str, list[TokenWindow]] = {}
        for role in stack.roles:
            part = tokens[_TOKEN_KEYS[role.name]]
            if isinstance(part, EncoderTokens) and part.windows and part.unchanged():
                windows[role.name] = list(part.windows)
            else:
                windows[role.name] = [_pairs_window(pairs, stack.tokenizer.eos_id) for pairs in part]
        count = max(len(parts) for parts in windows.values())
        for name, parts in windows.items():
            parts += [empty_window(stack.tokenizer, stack.specs[name])] * (count - len(parts))
        return windows

    def _texts_of(self, tokens: Mapping[str, Sequence[Sequence[_Pair]]]) -> str | dict[str, str]:
        """The prompt each encoder's tokens came from: a T5 or Qwen family encodes text, so its tokens must be
        ``tokenize``'s, unedited; one text when every part the family tokenizes came from the same."""
        names = self._encoder_names()
        texts: dict[str, str] = {}
        for key, part in tokens.items():
            if _ENCODER_OF_KEY.get(key) not in names:
                continue
            if not (isinstance(part, EncoderTokens) and part.unchanged()):
                raise NotImplementedError(
                    f"CLIP.encode_from_tokens: a {self.family} CLIP encodes the text its tokens came from, so "
                    f"tokens[{key!r}] must be CLIP.tokenize's, unedited (edited tokens work for SD1.x, SD2.x and SDXL)"
                )
            texts[_ENCODER_OF_KEY[key]] = part.text
        # SD3 runs without T5 tokens (CLIPTextEncodeSD3 with an empty T5 prompt); the other families need every part.
        missing = [_TOKEN_KEYS[name] for name in names if name not in texts and (name, self.family) != ("t5xxl", "sd3")]
        if missing:
            raise ValueError(f"CLIP.encode_from_tokens: this {self.family} CLIP needs the tokens {missing}")
        if len(texts) == len(names) and len(set(texts.values())) == 1:
            return next(iter(texts.values()))
        return texts

    def _encoder_names(self) -> list[str]:
        """The encoders ``tokenize`` gives tokens for, by Loom's names."""
        stack = self.stack
        clips = stack if isinstance(stack, ClipStack) else stack.clips if isinstance(stack, T5FamilyEncoders) else None
        names = [role.name for role in clips.roles] if clips is not None else []
        if isinstance(stack, T5FamilyEncoders) and stack.t5 is not None:
            names.append("t5xxl")
        if isinstance(stack, ZImageTextEncoder):
            names.append("qwen3")
        return names


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

    ``encode``/``decode`` are also ComfyUI's ``VAE.encode(pixels)`` / ``VAE.decode(samples)``; with
    ``decode_tiled``, ``encode_tiled``, ``spacial_compression_*``, ``downscale_ratio`` ... the handle answers
    what packs call on ComfyUI's ``VAE``.
    """

    #: ComfyUI's ``VAE.latent_dim`` (2: images, not video) and ``output_channels`` (RGB).
    latent_dim = 2
    output_channels = 3

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

    def decode(
        self, latent: torch.Tensor, tiles: TileSpec | None = None, *, vae_options: Mapping[str, Any] | None = None
    ) -> torch.Tensor:
        if vae_options:
            raise NotImplementedError(f"VAE.decode(vae_options={dict(vae_options)!r}) is not supported in Loom")
        self.check_latent(latent)
        current_runtime().memory.use(self.model)
        with torch.no_grad():
            z = latent.to(next(self.model.parameters()).device)
            pixels = self._scaled.decode(z) if tiles is None else self._scaled.decode_tiled(z, tiles)
        return self._to_image(pixels)

    # ComfyUI's VAE, for packs (comfy/sd.py).

    @property
    def first_stage_model(self) -> AutoencoderKL:
        return self.model

    @property
    def downscale_ratio(self) -> int:
        return self.downscale

    @property
    def upscale_ratio(self) -> int:
        return self.downscale

    def spacial_compression_encode(self) -> int:
        return self.downscale

    def spacial_compression_decode(self) -> int:
        return self.downscale

    def temporal_compression_decode(self) -> None:
        """None: an image VAE has no time axis."""
        return None

    def vae_encode_crop_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.crop_pixels(pixels)

    def decode_tiled(
        self,
        samples: torch.Tensor,
        tile_x: int | None = None,
        tile_y: int | None = None,
        overlap: int | None = None,
        tile_t: int | None = None,
        overlap_t: int | None = None,
    ) -> torch.Tensor:
        """Decode in tiles given in latent cells, ComfyUI's defaults 64 x 64 overlapping by 16: VAEDecodeTiled with
        ``tile_size = tile * 8`` and ``overlap = overlap * 8``. Loom's tiles are square: ``min(tile_x, tile_y)``;
        ``tile_t``/``overlap_t`` are for video and unused, as ComfyUI leaves them for images."""
        tile = min(64 if tile_x is None else tile_x, 64 if tile_y is None else tile_y)
        factor = self.downscale
        return self.decode(samples, TileSpec(tile * factor, (16 if overlap is None else overlap) * factor))

    def encode_tiled(
        self,
        pixel_samples: torch.Tensor,
        tile_x: int | None = None,
        tile_y: int | None = None,
        overlap: int | None = None,
        tile_t: int | None = None,
        overlap_t: int | None = None,
    ) -> torch.Tensor:
        """Encode in tiles given in pixels, ComfyUI's defaults 512 x 512 overlapping by 64: VAEEncodeTiled's
        numbers; square tiles of ``min(tile_x, tile_y)`` as for ``decode_tiled``."""
        tile = min(512 if tile_x is None else tile_x, 512 if tile_y is None else tile_y)
        return self.encode(pixel_samples, TileSpec(tile, 64 if overlap is None else overlap))
