"""MODEL, the diffusion-model value that flows between nodes: a cheap handle around a shared, loaded model.

A handle is the loaded diffusion model (a UNet or a flow transformer) plus what the workflow changed about
it: LoRA patch sets with their strengths (``nodes.patched_weights``), how it predicts (``sampling``) and how
sampling reads an inpainting's noise mask. Changing any of them makes a new handle over the same modules,
never a reload (``nodes.shared_models``). ``unet_fn`` binds the patches and calls the model the way its
family needs (``nodes.model_forward``).

Latents between nodes are the VAE's own, unscaled (``nodes.vae_handles``); the handle's ``latent_format``
scales them into the diffusion model's space for sampling and back.

The handle also answers the methods ComfyUI node packs call on a MODEL value, ComfyUI's ``ModelPatcher``,
under its names and arguments (``clone``, ``add_patches``, ``model_options``, ``get_model_object``,
``model``: ``nodes.comfy_base_model`` ...; docs/plugins.md, "MODEL, CLIP and VAE values"). As in ComfyUI,
``clone()`` makes a new handle and the ComfyUI-style setters (``add_patches``, ``add_object_patch``,
``set_model_sampler_cfg_function`` ...) change the handle they are called on, which a pack clones first.
The sampler functions in ``model_options`` reach Loom's guiders as CFG hooks (``cfg_hooks``,
``nodes.comfy_cfg_hooks``). What Loom cannot do the ComfyUI way raises ``NotImplementedError`` naming the
method and the reason.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

import torch

from diffusion import guidance
from diffusion.attention_masks import TokenAttentionMask
from diffusion.cfg_hooks import CFGHooks
from diffusion.checkpoint import DiffusionModel, LoadedCheckpoint, ModelFamily
from diffusion.checkpoint.errors import CheckpointError, UnsupportedModelError
from diffusion.chroma import ChromaTransformer
from diffusion.controlnet import ControlResiduals
from diffusion.devices import compute_device
from diffusion.flow_matching import DiscreteFlow, FluxFlow
from diffusion.flux import FluxTransformer
from diffusion.lora import WeightDelta
from diffusion.mmdit import MMDiT
from diffusion.prediction import EpsPrediction, ModelSampling, VPrediction
from diffusion.skip_layer_guidance import SkipLayers
from diffusion.stored_weights import ComputesFromStored
from diffusion.unet import UNetModel
from diffusion.vae import FLUX_LATENT, SD1_LATENT, SD2_LATENT, SD3_LATENT, SDXL_LATENT
from diffusion.zimage import ZImageTransformer
from nodes.comfy_base_model import ComfyBaseModel
from nodes.comfy_cfg_hooks import cfg_hooks
from nodes.comfy_weight_patches import comfy_patches
from nodes.model_forward import Control, Forward, flow_forward, unet_call_patches, unet_forward
from nodes.patched_weights import PatchedModule, PatchSet, stack_patch_set
from nodes.runtime import current_runtime
from nodes.shared_models import modules_of
from nodes.unet_patch_options import UNET_PATCHES_KEY, unet_patches_of

__all__ = ["DEFAULT_GUIDANCE", "ModelHandle"]

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


def _unsupported(method: str, reason: str) -> Callable[..., NoReturn]:
    """A ComfyUI method Loom does not provide: calling it raises, naming the method and why."""

    def refuse(self: object, *args: object, **kwargs: object) -> NoReturn:
        raise NotImplementedError(f"{method}() is not supported in Loom: {reason}")

    refuse.__name__ = method.rpartition(".")[2]
    return refuse


def _three_argument_cfg_function(function: Callable[..., Any]) -> Callable[[dict[str, Any]], Any]:
    """ComfyUI's older ``sampler_cfg_function(cond, uncond, cond_scale)`` in the ``args`` form."""

    def cfg_function(args: dict[str, Any]) -> Any:
        return function(args["cond"], args["uncond"], args["cond_scale"])

    return cfg_function


def _copy_nested_dicts(options: Mapping[str, Any]) -> dict[str, Any]:
    """``model_options`` as ComfyUI clones them: every nested dict copied, the values in them shared."""
    return {key: _copy_nested_dicts(value) if isinstance(value, dict) else value for key, value in options.items()}


#: ``model_options`` entries Loom's guiders honour (``cfg_hooks``).
_HONOURED_OPTIONS = frozenset(
    {"sampler_cfg_function", "sampler_post_cfg_function", "sampler_pre_cfg_function", "disable_cfg1_optimization"}
)
#: ``model_options`` entries with which ComfyUI changes sampling that Loom cannot honour, and the setter of each.
_IGNORED_SAMPLING_OPTIONS = {
    "model_function_wrapper": "set_model_unet_function_wrapper",
    "denoise_mask_function": "set_model_denoise_mask_function",
}
_NO_SAMPLING_SEAM = (
    "Loom's sampler has no seam to wrap the model call or the inpainting mask (it honours sampler_cfg_function, "
    "sampler_pre_cfg_function and sampler_post_cfg_function); write the change as a node that returns a new "
    "MODEL or GUIDER"
)
_NO_BLOCK_PATCHES = (
    "Loom's diffusion models have no ComfyUI transformer_options patch points (attention and block patches)"
)
#: What a ``model_sampling`` object must answer to stand in for Loom's (``diffusion.prediction.ModelSampling``).
_MODEL_SAMPLING_METHODS = ("calculate_input", "calculate_denoised", "timestep", "sigma", "sigmas", "noise_scaling")


class ModelHandle:
    """MODEL: the diffusion model of a file (a UNet or a flow transformer), how it predicts, and its LoRAs.

    ``mask_policy`` (None for a loaded model) changes how sampling uses an inpainting's noise mask at each
    model call (``DifferentialDiffusion``: ``diffusion.guidance.DifferentialMask``).

    For ComfyUI packs it is also a ``ModelPatcher``: ``clone()``, ``add_patches`` (weight differences and
    LoRA, on ``diffusion_model.<parameter>`` keys), ``model_options`` with the sampler functions in it
    (``set_model_sampler_cfg_function`` ..., honoured through ``cfg_hooks``), ``get_model_object``, ``model``
    (``ComfyBaseModel``), ``add_object_patch("model_sampling", ...)``; see docs/plugins.md.
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
        self._patched = PatchedModule(self.unet, patches)
        #: ComfyUI's per-model sampling options, kept for packs that read and write them; Loom's guiders
        #: honour the sampler functions (``cfg_hooks``), ``unet_fn`` logs what they leave out.
        self.model_options: dict[str, Any] = {"transformer_options": {}}

    @property
    def patches(self) -> tuple[PatchSet, ...]:
        return self._patched.patches

    def loom_parts(self) -> list[object]:
        """What this handle keeps alive, for ``graph.sizeof``: its file's modules and its LoRA weights."""
        return [*modules_of(self.checkpoint), self._patched]

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
        return compute_device(self.unet)

    @property
    def preview_family(self) -> str:
        return self.latent_format.name

    def with_lora(self, patches: Mapping[str, Sequence[WeightDelta]], strength: float) -> ModelHandle:
        """A new handle with one more LoRA; strength 0 (or nothing to patch) returns this handle."""
        combined = stack_patch_set(self.patches, patches, strength)
        if combined is self.patches:
            return self
        return self._carrying_options(ModelHandle(self.checkpoint, combined, self.sampling, self.mask_policy))

    def with_sampling(self, sampling: ModelSampling) -> ModelHandle:
        """A new handle predicting through ``sampling`` (the ModelSampling* nodes: a flow model's shift)."""
        return self._carrying_options(ModelHandle(self.checkpoint, self.patches, sampling, self.mask_policy))

    def with_mask_policy(self, mask_policy: guidance.InpaintMaskPolicy | None) -> ModelHandle:
        """A new handle whose sampling reads an inpainting's noise mask through ``mask_policy``."""
        return self._carrying_options(ModelHandle(self.checkpoint, self.patches, self.sampling, mask_policy))

    def computed_weights(self, names: Iterable[str]) -> dict[str, torch.Tensor]:
        """The diffusion model's tensors ``names`` (state-dict names, no prefix) as it computes with them: this
        handle's LoRA patches applied, a scaled-fp8 weight times its scale (in fp32). Names it lacks are left out.
        Loaded tensors come back as they are: read them, never write them."""
        wanted = set(names)
        found: dict[str, torch.Tensor] = {}
        with self._patched.active() as model:
            for prefix, module in model.named_modules():
                owned = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
                for name, tensor in owned:
                    key = f"{prefix}.{name}" if prefix else name
                    if key not in wanted:
                        continue
                    scaled = (
                        isinstance(module, ComputesFromStored) and name == "weight" and module.weight_scale is not None
                    )
                    # Detached inside the patch binding: the parameter object is rebound when it ends.
                    found[key] = module.dequantized_weight() if scaled else tensor.detach()
        return found

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

        grouped, applied = comfy_patches(patches, target, "MODEL.add_patches")
        combined = stack_patch_set(self.patches, grouped.get(0, {}), strength_patch)
        if combined is not self.patches:
            self._patched = PatchedModule(self.unet, combined)
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

    def set_model_sampler_cfg_function(
        self, sampler_cfg_function: Callable[..., Any], disable_cfg1_optimization: bool = False
    ) -> None:
        """Replace this handle's CFG combination (``model_options["sampler_cfg_function"]``): called with
        ComfyUI's ``args`` (``cond``/``uncond`` as ``input - x0``, ``cond_denoised`` ...), it returns
        ``input - guided x0``. A function of three parameters is ComfyUI's older form, ``(cond, uncond,
        cond_scale)``. ``disable_cfg1_optimization`` makes cfg 1 evaluate the negative too."""
        if len(inspect.signature(sampler_cfg_function).parameters) == 3:
            sampler_cfg_function = _three_argument_cfg_function(sampler_cfg_function)
        self.model_options["sampler_cfg_function"] = sampler_cfg_function
        if disable_cfg1_optimization:
            self.model_options["disable_cfg1_optimization"] = True

    def set_model_sampler_post_cfg_function(
        self, post_cfg_function: Callable[[dict[str, Any]], Any], disable_cfg1_optimization: bool = False
    ) -> None:
        """Append to this handle's post-CFG functions: each gets ComfyUI's ``args`` with the guided x0 as
        ``denoised`` and returns a new one, in the order they were added."""
        self._append_option("sampler_post_cfg_function", post_cfg_function, disable_cfg1_optimization)

    def set_model_sampler_pre_cfg_function(
        self, pre_cfg_function: Callable[[dict[str, Any]], Any], disable_cfg1_optimization: bool = False
    ) -> None:
        """Append to this handle's pre-CFG functions: each gets ComfyUI's ``args`` with the sides' x0 predictions
        as ``conds_out`` and returns them changed, before they are combined."""
        self._append_option("sampler_pre_cfg_function", pre_cfg_function, disable_cfg1_optimization)

    def _append_option(self, key: str, function: Callable[..., Any], disable_cfg1_optimization: bool) -> None:
        # A new list, as ComfyUI makes: clones share the lists of the options they copied.
        self.model_options[key] = [*self.model_options.get(key, []), function]
        if disable_cfg1_optimization:
            self.model_options["disable_cfg1_optimization"] = True

    def cfg_hooks(self) -> CFGHooks:
        """The guidance hooks this handle's ``model_options`` hold, as Loom's guiders run them; the guider labels
        each call's rows with their sides when a UNet attention replacement may read them."""
        hooks = cfg_hooks(self.model_options, self.model)
        patches = unet_patches_of(self.model_options)
        if patches is not None and patches.attn1 is not None:
            return dataclasses.replace(hooks, label_rows=True)
        return hooks

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
            if key in _IGNORED_SAMPLING_OPTIONS or key == "transformer_options" and set(value) - {UNET_PATCHES_KEY}:
                _log.warning(
                    "MODEL.model_options[%r] is ignored: %s (ComfyUI sets it with MODEL.%s)",
                    key,
                    _NO_SAMPLING_SEAM if key in _IGNORED_SAMPLING_OPTIONS else _NO_BLOCK_PATCHES,
                    _IGNORED_SAMPLING_OPTIONS.get(key, "set_model_patch"),
                )
            elif key not in _HONOURED_OPTIONS and key != "transformer_options":
                _log.debug("MODEL.model_options[%r] is kept and ignored: Loom's sampler does not read it", key)

    @contextmanager
    def unet_fn(self) -> Iterator[Callable[..., torch.Tensor]]:
        """The ``unet_fn(x_in, timesteps, context, y=None, concat=None, guidance=None, reference_latents=(),
        control=None, cond_or_uncond=(), variant=None)`` that ``diffusion.guidance.CFGGuider`` calls; ``control`` is
        a UNet's ControlNet residuals or an SD3.5 / FLUX transformer's ControlNets (``nodes.model_forward``); the row
        sides and a guidance hook's variant of the UNet patches only for UNets.

        Inpainting UNets (9 input channels) take the mask and masked-image latent as extra input
        channels after the noisy latent; a 4-channel UNet ignores ``concat``. Flow transformers take
        sigma as their time (``timesteps`` is the sampling's sigma x multiplier) and the pooled text
        vector as ``y``; a guidance-distilled FLUX also its ``guidance``.
        """
        self._report_ignored_options()
        current_runtime().memory.use(self.unet)
        with self._patched.active() as unet:
            extra_channels = self.in_channels - self.latent_channels
            patches = unet_patches_of(self.model_options)
            flow = self.family.is_flow_transformer
            forward = flow_forward(unet, self.sampling) if flow else unet_forward(unet, patches)

            def forward_for(variant: object, cond_or_uncond: tuple[int, ...]) -> Forward:
                if variant is None and not cond_or_uncond:
                    return forward
                if not flow:
                    return unet_forward(unet, unet_call_patches(patches, variant, cond_or_uncond))
                if variant is None:
                    return forward
                if not isinstance(variant, SkipLayers):
                    raise ValueError(
                        f"this guidance changes a UNet's attention, and a {self.family.value} model is a "
                        f"{type(unet).__name__}"
                    )
                return flow_forward(unet, self.sampling, variant)

            def call(
                x_in: torch.Tensor,
                timesteps: torch.Tensor,
                context: torch.Tensor,
                y: torch.Tensor | None = None,
                concat: torch.Tensor | None = None,
                guidance: torch.Tensor | None = None,
                reference_latents: Sequence[torch.Tensor] = (),
                control: Control | None = None,
                attention_mask: TokenAttentionMask | None = None,
                cond_or_uncond: tuple[int, ...] = (),
                variant: object = None,
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
                device = compute_device(unet)

                def moved(tensor: torch.Tensor | None) -> torch.Tensor | None:
                    return None if tensor is None else tensor.to(device)

                references = [reference.to(device) for reference in reference_latents]
                # A transformer's ControlNets run inside the forward, each on its own device.
                residuals = control.to(device) if isinstance(control, ControlResiduals) else control
                with torch.no_grad():
                    output = forward_for(variant, cond_or_uncond)(
                        x_in.to(device),
                        timesteps.to(device),
                        context.to(device),
                        moved(y),
                        moved(guidance),
                        references,
                        residuals,
                        attention_mask,
                    )
                return output.to(x_in.device)

            yield call
