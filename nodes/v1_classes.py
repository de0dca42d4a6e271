"""Loom's node types as ComfyUI V1 classes, for packs that call the core nodes the way ComfyUI's allow.

Packs written for ComfyUI reach into its ``nodes`` module: ``nodes.CLIPTextEncode().encode(clip, text)``
inside their own node, ``nodes.NODE_CLASS_MAPPINGS["KSampler"]``, ``common_ksampler(...)``, or a
subclass of ``SaveImage`` that saves into another folder. ``nodes/__init__.py`` answers those names
lazily from here. Each class is derived from the node's ``NodeSpec``: ``INPUT_TYPES``,
``RETURN_TYPES`` and the rest come from the spec, and the method named as ComfyUI names it
(``FUNCTION``: ``encode``, ``decode``, ``sample``, ``load_checkpoint``...) calls the Loom node with
keyword arguments. Positional arguments follow ComfyUI's method signature, which for a few nodes
differs from the input order (``VAEDecode.decode(vae, samples)``). Every method returns a tuple of
outputs, or ``{"ui": ..., "result": ...}`` for a node with UI data, as ComfyUI's do. ``SaveImage``
and ``PreviewImage`` are written out, because packs subclass them and set ``output_dir``, ``type``,
``prefix_append`` and ``compress_level``.

``NODE_CLASS_MAPPINGS`` is a live view of the registry the host exposes (``expose_registry``, called
by the server before it loads plugins), so a pack sees the built-ins and the packs loaded before it,
as in ComfyUI. A plugin's V1 class is listed as itself; a declarative node gets a derived class.
"""

from __future__ import annotations

import inspect
import io
import random
import string
import threading
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graph.declare import SPEC_ATTRIBUTE
from graph.registry import NodeRegistry
from graph.spec import NodeSpec

if TYPE_CHECKING:
    import torch

__all__ = [
    "COMFY_METHODS",
    "ComfyMethod",
    "NodeClassMappings",
    "NodeDisplayNameMappings",
    "PreviewImage",
    "SaveImage",
    "builtin_class",
    "comfy_attribute",
    "common_ksampler",
    "expose_registry",
    "forwards",
    "v1_class",
]


@dataclass(frozen=True)
class ComfyMethod:
    """ComfyUI's ``FUNCTION`` of a core node, and its parameter order where that is not the input order."""

    name: str
    order: tuple[str, ...] | None = None


#: ComfyUI's method per built-in node type (its ``nodes.py`` and ``comfy_extras``). Nodes ComfyUI
#: declares only in its V3 schema form run through ``execute``, the name it gives them.
COMFY_METHODS: dict[str, ComfyMethod] = {
    "EmptyImage": ComfyMethod("generate"),
    "ImageScale": ComfyMethod("upscale"),
    "FluxKontextImageScale": ComfyMethod("scale"),
    "ImageScaleBy": ComfyMethod("upscale"),
    "ImageInvert": ComfyMethod("invert"),
    "ImageBatch": ComfyMethod("batch"),
    "ImageCrop": ComfyMethod("crop"),
    "ImagePadForOutpaint": ComfyMethod("expand_image"),
    "ImageStitch": ComfyMethod("stitch"),
    "LoadImage": ComfyMethod("load_image"),
    "LoadImageMask": ComfyMethod("load_image"),
    "SaveImage": ComfyMethod("save_images"),
    "PreviewImage": ComfyMethod("save_images"),
    "PrimitiveInt": ComfyMethod("execute"),
    "PrimitiveFloat": ComfyMethod("execute"),
    "PrimitiveString": ComfyMethod("execute"),
    "PrimitiveStringMultiline": ComfyMethod("execute"),
    "PrimitiveBoolean": ComfyMethod("execute"),
    "StringConcatenate": ComfyMethod("execute"),
    "StringReplace": ComfyMethod("execute"),
    "PreviewAny": ComfyMethod("main"),
    "MathExpression": ComfyMethod("execute"),
    "CheckpointLoaderSimple": ComfyMethod("load_checkpoint"),
    "UNETLoader": ComfyMethod("load_unet"),
    "CLIPLoader": ComfyMethod("load_clip"),
    "DualCLIPLoader": ComfyMethod("load_clip"),
    "TripleCLIPLoader": ComfyMethod("load_clip"),
    "VAELoader": ComfyMethod("load_vae"),
    "LoraLoader": ComfyMethod("load_lora"),
    "LoraLoaderModelOnly": ComfyMethod("load_lora_model_only"),
    "CLIPSetLastLayer": ComfyMethod("set_last_layer"),
    "T5TokenizerOptions": ComfyMethod("set_options"),
    "CLIPTextEncode": ComfyMethod("encode", ("clip", "text")),
    "ConditioningCombine": ComfyMethod("combine"),
    "ConditioningAverage": ComfyMethod("addWeighted"),
    "ConditioningConcat": ComfyMethod("concat"),
    "ConditioningSetArea": ComfyMethod("append"),
    "ConditioningSetMask": ComfyMethod("append", ("conditioning", "mask", "set_cond_area", "strength")),
    "ConditioningSetTimestepRange": ComfyMethod("set_range"),
    "CLIPTextEncodeFlux": ComfyMethod("encode"),
    "CLIPTextEncodeSD3": ComfyMethod("encode"),
    "FluxGuidance": ComfyMethod("append"),
    "InstructPixToPixConditioning": ComfyMethod("encode", ("positive", "negative", "pixels", "vae")),
    "ReferenceLatent": ComfyMethod("append"),
    "ConditioningZeroOut": ComfyMethod("zero_out"),
    "InpaintModelConditioning": ComfyMethod("encode", ("positive", "negative", "pixels", "vae", "mask")),
    "EmptyLatentImage": ComfyMethod("generate"),
    "EmptySD3LatentImage": ComfyMethod("generate"),
    "VAEDecode": ComfyMethod("decode", ("vae", "samples")),
    "VAEEncode": ComfyMethod("encode", ("vae", "pixels")),
    "VAEDecodeTiled": ComfyMethod("decode", ("vae", "samples", "tile_size", "overlap")),
    "VAEEncodeTiled": ComfyMethod("encode", ("vae", "pixels", "tile_size", "overlap")),
    "VAEEncodeForInpaint": ComfyMethod("encode", ("vae", "pixels", "mask", "grow_mask_by")),
    "SetLatentNoiseMask": ComfyMethod("set_mask"),
    "LatentUpscale": ComfyMethod("upscale"),
    "LatentUpscaleBy": ComfyMethod("upscale"),
    "LatentFromBatch": ComfyMethod("frombatch"),
    "RepeatLatentBatch": ComfyMethod("repeat"),
    "LatentComposite": ComfyMethod("composite"),
    "LatentBlend": ComfyMethod("blend"),
    "ComfySwitchNode": ComfyMethod("execute", ("switch", "on_true", "on_false")),
    "ComfyMathExpression": ComfyMethod("execute"),
    "ComfyNumberConvert": ComfyMethod("execute"),
    "ResolutionSelector": ComfyMethod("execute"),
    "CustomCombo": ComfyMethod("execute"),
    "RegexMatch": ComfyMethod("execute"),
    "RegexExtract": ComfyMethod("execute"),
    "RegexReplace": ComfyMethod("execute"),
    "JsonExtractString": ComfyMethod("execute"),
    "StringLength": ComfyMethod("execute"),
    "StringSubstring": ComfyMethod("execute"),
    "SaveText": ComfyMethod("execute"),
    "CLIPTextEncodeSDXL": ComfyMethod("execute"),
    "CLIPTextEncodeSDXLRefiner": ComfyMethod("execute", ("clip", "ascore", "width", "height", "text")),
    "ConditioningSetAreaPercentage": ComfyMethod("append"),
    "ConditioningSetAreaStrength": ComfyMethod("append"),
    "KarrasScheduler": ComfyMethod("get_sigmas"),
    "ExponentialScheduler": ComfyMethod("get_sigmas"),
    "PolyexponentialScheduler": ComfyMethod("get_sigmas"),
    "LaplaceScheduler": ComfyMethod("get_sigmas"),
    "VPScheduler": ComfyMethod("get_sigmas"),
    "BetaSamplingScheduler": ComfyMethod("get_sigmas"),
    "SDTurboScheduler": ComfyMethod("get_sigmas"),
    "AlignYourStepsScheduler": ComfyMethod("get_sigmas"),
    "SplitSigmas": ComfyMethod("get_sigmas"),
    "SplitSigmasDenoise": ComfyMethod("get_sigmas"),
    "FlipSigmas": ComfyMethod("get_sigmas"),
    "SetFirstSigma": ComfyMethod("set_first_sigma"),
    "ExtendIntermediateSigmas": ComfyMethod("extend"),
    "SamplingPercentToSigma": ComfyMethod("get_sigma"),
    "ManualSigmas": ComfyMethod("execute"),
    "SamplerEulerAncestral": ComfyMethod("get_sampler"),
    "SamplerEulerAncestralCFGPP": ComfyMethod("get_sampler"),
    "SamplerLMS": ComfyMethod("get_sampler"),
    "SamplerDPMPP_3M_SDE": ComfyMethod("get_sampler"),
    "SamplerDPMPP_2M_SDE": ComfyMethod("get_sampler"),
    "SamplerDPMPP_SDE": ComfyMethod("get_sampler"),
    "SamplerDPMPP_2S_Ancestral": ComfyMethod("get_sampler"),
    "SamplerDPMAdaptative": ComfyMethod("get_sampler"),
    "SamplerER_SDE": ComfyMethod("get_sampler"),
    "SamplerSASolver": ComfyMethod("get_sampler"),
    "SamplerSEEDS2": ComfyMethod("execute"),
    "GetImageSize": ComfyMethod("get_size"),
    "ImageScaleToTotalPixels": ComfyMethod("execute"),
    "ImageScaleToMaxDimension": ComfyMethod("upscale"),
    "ResizeImageMaskNode": ComfyMethod("execute", ("input", "scale_method", "resize_type")),
    "ResizeAndPadImage": ComfyMethod("resize_and_pad"),
    "ImageCompare": ComfyMethod("execute"),
    "SaveImageAdvanced": ComfyMethod("execute"),
    "BatchImagesNode": ComfyMethod("execute"),
    "ImageFromBatch": ComfyMethod("frombatch"),
    "RepeatImageBatch": ComfyMethod("repeat"),
    "RebatchImages": ComfyMethod("execute"),
    "ImageBlend": ComfyMethod("execute"),
    "ImageBlur": ComfyMethod("execute"),
    "ImageSharpen": ComfyMethod("execute"),
    "ImageQuantize": ComfyMethod("execute"),
    "ImageAddNoise": ComfyMethod("repeat"),
    "ImageCompositeMasked": ComfyMethod("composite"),
    "JoinImageWithAlpha": ComfyMethod("execute"),
    "SplitImageWithAlpha": ComfyMethod("execute"),
    "ImageFlip": ComfyMethod("flip"),
    "ImageRotate": ComfyMethod("rotate"),
    "ModelMergeSimple": ComfyMethod("merge"),
    "ModelMergeBlocks": ComfyMethod("merge"),
    "ModelMergeSubtract": ComfyMethod("merge"),
    "ModelMergeAdd": ComfyMethod("merge"),
    "CLIPMergeSimple": ComfyMethod("merge"),
    "CLIPMergeSubtract": ComfyMethod("merge"),
    "CLIPMergeAdd": ComfyMethod("merge"),
    "ModelMergeSD1": ComfyMethod("merge"),
    "ModelMergeSD2": ComfyMethod("merge"),
    "ModelMergeSDXL": ComfyMethod("merge"),
    "CheckpointSave": ComfyMethod("save"),
    "ModelSave": ComfyMethod("save"),
    "CLIPSave": ComfyMethod("save"),
    "VAESave": ComfyMethod("save"),
    "LoraSave": ComfyMethod("execute"),
    "RescaleCFG": ComfyMethod("patch"),
    "CFGNorm": ComfyMethod("execute"),
    "CFGZeroStar": ComfyMethod("execute"),
    "APG": ComfyMethod("execute"),
    "DualCFGGuider": ComfyMethod("get_guider"),
    "PerpNegGuider": ComfyMethod("execute"),
    "ModelSamplingDiscrete": ComfyMethod("patch"),
    "ModelSamplingContinuousEDM": ComfyMethod("patch"),
    "Canny": ComfyMethod("detect_edge"),
    "ControlNetLoader": ComfyMethod("load_controlnet"),
    "DiffControlNetLoader": ComfyMethod("load_controlnet"),
    "ControlNetApply": ComfyMethod("apply_controlnet"),
    "ControlNetApplyAdvanced": ComfyMethod("apply_controlnet"),
    "ControlNetApplySD3": ComfyMethod(
        "apply_controlnet",
        ("positive", "negative", "control_net", "image", "strength", "start_percent", "end_percent", "vae"),
    ),
    "FreeU": ComfyMethod("patch"),
    "FreeU_V2": ComfyMethod("patch"),
    "HyperTile": ComfyMethod("patch"),
    "SetUnionControlNetType": ComfyMethod("set_controlnet_type"),
    "ControlNetInpaintingAliMamaApply": ComfyMethod("apply_inpaint_controlnet"),
    "CLIPVisionLoader": ComfyMethod("load_clip"),
    "CLIPVisionEncode": ComfyMethod("encode"),
    "unCLIPConditioning": ComfyMethod("apply_adm"),
    "StyleModelLoader": ComfyMethod("load_style_model"),
    "StyleModelApply": ComfyMethod("apply_stylemodel"),
    "SkipLayerGuidanceDiT": ComfyMethod("execute"),
    "SkipLayerGuidanceSD3": ComfyMethod("execute"),
    "PerturbedAttentionGuidance": ComfyMethod("execute"),
    "SelfAttentionGuidance": ComfyMethod("patch"),
    "PatchModelAddDownscale": ComfyMethod("patch"),
    "SolidMask": ComfyMethod("execute"),
    "InvertMask": ComfyMethod("execute"),
    "GrowMask": ComfyMethod("execute"),
    "FeatherMask": ComfyMethod("execute"),
    "MaskComposite": ComfyMethod("execute"),
    "ThresholdMask": ComfyMethod("execute"),
    "ImageToMask": ComfyMethod("execute"),
    "MaskToImage": ComfyMethod("execute"),
    "ImageColorToMask": ComfyMethod("execute"),
    "CropMask": ComfyMethod("execute"),
    "MaskPreview": ComfyMethod("execute", ("mask",)),
    "LatentCrop": ComfyMethod("crop"),
    "LatentFlip": ComfyMethod("flip"),
    "LatentRotate": ComfyMethod("rotate"),
    "LatentAdd": ComfyMethod("execute"),
    "LatentSubtract": ComfyMethod("execute"),
    "LatentMultiply": ComfyMethod("execute"),
    "LatentInterpolate": ComfyMethod("execute"),
    "LatentBatch": ComfyMethod("execute"),
    "LatentBatchSeedBehavior": ComfyMethod("execute"),
    "KSampler": ComfyMethod("sample"),
    "KSamplerAdvanced": ComfyMethod("sample"),
    "KSamplerSelect": ComfyMethod("get_sampler"),
    "BasicScheduler": ComfyMethod("get_sigmas"),
    "RandomNoise": ComfyMethod("get_noise"),
    "DisableNoise": ComfyMethod("get_noise"),
    "CFGGuider": ComfyMethod("get_guider"),
    "BasicGuider": ComfyMethod("get_guider"),
    "SamplerCustom": ComfyMethod("sample"),
    "SamplerCustomAdvanced": ComfyMethod("sample"),
    "ModelSamplingSD3": ComfyMethod("patch"),
    "ModelSamplingAuraFlow": ComfyMethod("patch_aura"),
    "ModelSamplingFlux": ComfyMethod("patch"),
    "DifferentialDiffusion": ComfyMethod("apply"),
    "UpscaleModelLoader": ComfyMethod("load_model"),
    "ImageUpscaleWithModel": ComfyMethod("upscale"),
}
#: The method of a node ComfyUI does not have (a plugin's declarative node, a future built-in).
DEFAULT_METHOD = ComfyMethod("execute")

_lock = threading.RLock()
_classes: dict[int, tuple[NodeSpec, type]] = {}
_builtins: dict[str, Callable[..., Any]] | None = None
_exposed: NodeRegistry | None = None


def expose_registry(registry: NodeRegistry) -> None:
    """Make ``nodes.NODE_CLASS_MAPPINGS`` list ``registry``'s node types (the host's latest)."""
    global _exposed
    _exposed = registry


def _registry() -> NodeRegistry:
    """The exposed registry, or one of the built-ins alone while no host has exposed its own."""
    global _exposed
    with _lock:
        if _exposed is None:
            from nodes import register_builtin_nodes

            registry = NodeRegistry()
            register_builtin_nodes(registry)
            _exposed = registry
        return _exposed


def _builtin_functions() -> dict[str, Callable[..., Any]]:
    """``class_type → node function`` of every built-in, read from the modules ``nodes`` lists."""
    global _builtins
    with _lock:
        if _builtins is None:
            from nodes import builtin_modules

            _builtins = {}
            for module in builtin_modules():
                for value in vars(module).values():
                    spec = getattr(value, SPEC_ATTRIBUTE, None)
                    if isinstance(spec, NodeSpec) and getattr(value, "__module__", None) == module.__name__:
                        _builtins[spec.class_type] = value
        return _builtins


def builtin_class(class_type: str) -> type:
    """The V1 class of a built-in node; ``KeyError`` when Loom has no built-in of that name."""
    function = _builtin_functions()[class_type]
    return v1_class(getattr(function, SPEC_ATTRIBUTE), function)


def v1_class(spec: NodeSpec, function: Callable[..., Any] | None = None) -> type:
    """The V1 class that runs ``spec``: a plugin's own class, or one derived from the spec (cached)."""
    if isinstance(spec.create_instance, type):
        return spec.create_instance
    with _lock:
        cached = _classes.get(id(spec))
        if cached is not None and cached[0] is spec:
            return cached[1]
        if function is None:
            function = _builtin_functions().get(spec.class_type)
            if function is not None and getattr(function, SPEC_ATTRIBUTE) is not spec:
                function = None
        written = _WRITTEN_OUT.get(spec.class_type) if function is not None else None
        cls = written if written is not None else _derived_class(spec, function)
        _classes[id(spec)] = (spec, cls)
        return cls


def _input_types(spec: NodeSpec) -> dict[str, dict[str, Any]]:
    """``INPUT_TYPES()`` of a spec: ``(TYPE, {options})`` per input, the kind string for hidden ones."""
    sections: dict[str, dict[str, Any]] = {"required": {}}
    for declared in spec.inputs():
        entry = declared.object_info_entry()
        sections.setdefault(declared.section, {})[declared.name] = tuple(entry) if isinstance(entry, list) else entry
    return sections


def _parameter_names(spec: NodeSpec, function: Callable[..., Any] | None) -> tuple[str, ...]:
    if function is not None:
        return tuple(inspect.signature(function).parameters)
    return tuple(declared.name for declared in spec.inputs())


def _call(spec: NodeSpec, method: ComfyMethod, function: Callable[..., Any] | None) -> Callable[..., Any]:
    """The method that runs ``spec`` with ComfyUI's arguments and returns what ComfyUI's would."""

    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        names = method.order or _parameter_names(spec, function)
        if len(args) > len(names):
            raise TypeError(f"{spec.class_type}.{method.name}() takes {len(names)} arguments, {len(args)} given")
        for name, value in zip(names, args):
            if name in kwargs:
                raise TypeError(f"{spec.class_type}.{method.name}() got multiple values for argument {name!r}")
            kwargs[name] = value
        result = spec.normalize_result(spec.run(None, kwargs))
        if result.ui is None and result.expand is None:
            return result.values
        returned: dict[str, Any] = {"ui": result.ui} if result.ui is not None else {}
        if result.values:
            returned["result"] = result.values
        if result.expand is not None:
            returned["expand"] = result.expand
        return returned

    call.__name__ = call.__qualname__ = method.name
    return call


def _class_attributes(spec: NodeSpec, method: ComfyMethod) -> dict[str, Any]:
    return {
        "INPUT_TYPES": classmethod(lambda cls: _input_types(spec)),
        "RETURN_TYPES": tuple(out.declared if out.declared is not None else out.type for out in spec.outputs),
        "RETURN_NAMES": tuple(out.name for out in spec.outputs),
        "OUTPUT_IS_LIST": tuple(out.is_list for out in spec.outputs),
        "FUNCTION": method.name,
        "CATEGORY": spec.category,
        "DESCRIPTION": spec.description,
        "OUTPUT_NODE": spec.output_node,
        "INPUT_IS_LIST": spec.input_is_list,
        "NOT_IDEMPOTENT": spec.not_idempotent,
        "__doc__": spec.description or None,
    }


def _derived_class(spec: NodeSpec, function: Callable[..., Any] | None) -> type:
    method = COMFY_METHODS.get(spec.class_type, DEFAULT_METHOD)
    attributes = _class_attributes(spec, method)
    attributes[method.name] = _call(spec, method, function)
    attributes["__module__"] = "nodes"
    return type(spec.class_type, (), attributes)


def common_ksampler(
    model: Any,
    seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    positive: Any,
    negative: Any,
    latent: dict[str, Any],
    denoise: float = 1.0,
    disable_noise: bool = False,
    start_step: int | None = None,
    last_step: int | None = None,
    force_full_denoise: bool = False,
) -> tuple[dict[str, Any]]:
    """ComfyUI's shared body of KSampler and KSamplerAdvanced, on Loom's sampling: ``(latent,)``.

    The schedule is ``steps`` long, cut by ``denoise``, then windowed to ``start_step..last_step``;
    a window that ends early finishes at sigma 0 only with ``force_full_denoise``.
    """
    from diffusion.samplers import get_sampler
    from diffusion.schedules import cut_sigmas
    from nodes import sampling

    sampler = get_sampler(sampler_name)
    sigmas = cut_sigmas(
        sampling._ksampler_sigmas(model, sampler, scheduler, steps, denoise),
        start_step,
        last_step,
        leftover_noise=not force_full_denoise,
    )
    noise = sampling.Noise(seed, add=not disable_noise)
    return (sampling._sample(noise, sampling.Guider(model, positive, negative, cfg), sampler, sigmas, latent),)


class SaveImage:
    """ComfyUI's ``SaveImage``, whose attributes subclasses set to save elsewhere.

    ``output_dir`` (defaults to the running installation's folder of ``type``), ``type`` (what
    ``ui.images[].type`` says: ``"output"`` or ``"temp"``), ``prefix_append`` (added to the
    prefix) and ``compress_level`` (zlib level of the PNGs).
    """

    RETURN_TYPES: tuple[Any, ...] = ()
    FUNCTION = "save_images"
    OUTPUT_NODE = True
    CATEGORY = "image"
    DESCRIPTION = "Save the input images to your output directory."

    type = "output"
    prefix_append = ""
    compress_level = 4
    _output_dir: str | None = None

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, dict[str, Any]]:
        return _input_types(getattr(_builtin_functions()["SaveImage"], SPEC_ATTRIBUTE))

    @property
    def output_dir(self) -> str:
        if self._output_dir is not None:
            return self._output_dir
        from nodes.runtime import current_runtime

        return str(current_runtime().folders.directory("temp" if self.type == "temp" else "output"))

    @output_dir.setter
    def output_dir(self, folder: str | Path) -> None:
        self._output_dir = str(folder)

    def save_images(
        self, images: torch.Tensor, filename_prefix: str = "ComfyUI", prompt: Any = None, extra_pnginfo: Any = None
    ) -> dict[str, Any]:
        """Write each picture as a numbered PNG carrying the prompt; ``{"ui": {"images": [...]}}``."""
        import torch

        from nodes.folders import save_target
        from nodes.image_tensors import image_to_pil
        from nodes.io import _png_metadata

        if not isinstance(images, torch.Tensor):
            images = torch.stack(list(images))
        height, width = images.shape[1:3]
        target = save_target(filename_prefix + self.prefix_append, Path(self.output_dir), width, height)
        metadata = _png_metadata(prompt, extra_pnginfo)
        results = []
        for index, picture in enumerate(images):
            encoded = io.BytesIO()
            image_to_pil(picture).save(encoded, format="PNG", pnginfo=metadata, compress_level=self.compress_level)
            name = target.write_new(index, encoded.getvalue())
            results.append({"filename": name, "subfolder": target.subfolder, "type": self.type})
        return {"ui": {"images": results}}


class PreviewImage(SaveImage):
    """ComfyUI's ``PreviewImage``: a ``SaveImage`` into the temp folder, fast to compress, randomly suffixed."""

    DESCRIPTION = "Preview the input images."
    type = "temp"
    compress_level = 1

    def __init__(self) -> None:
        self.prefix_append = "_temp_" + "".join(random.choices(string.ascii_lowercase, k=5))

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, dict[str, Any]]:
        return _input_types(getattr(_builtin_functions()["PreviewImage"], SPEC_ATTRIBUTE))


_WRITTEN_OUT: dict[str, type] = {"SaveImage": SaveImage, "PreviewImage": PreviewImage}


class NodeClassMappings(MutableMapping[str, Any]):
    """``nodes.NODE_CLASS_MAPPINGS``: class name → V1 class of every registered node type, live.

    What a pack stores here itself is kept (and shadows the registry's entry) but not registered:
    node types come from packs' own ``NODE_CLASS_MAPPINGS``.
    """

    def __init__(self) -> None:
        self._stored: dict[str, Any] = {}

    def __getitem__(self, class_type: str) -> Any:
        if class_type in self._stored:
            return self._stored[class_type]
        spec = _registry().get(class_type)
        if spec is None:
            raise KeyError(class_type)
        return v1_class(spec)

    def __setitem__(self, class_type: str, cls: Any) -> None:
        self._stored[class_type] = cls

    def __delitem__(self, class_type: str) -> None:
        del self._stored[class_type]

    def __iter__(self) -> Iterator[str]:
        yield from self._stored
        yield from (name for name in list(_registry()) if name not in self._stored)

    def __len__(self) -> int:
        return len(set(_registry()) | set(self._stored))

    def __repr__(self) -> str:
        return f"<NODE_CLASS_MAPPINGS of {len(self)} node types>"


class NodeDisplayNameMappings(MutableMapping[str, str]):
    """``nodes.NODE_DISPLAY_NAME_MAPPINGS``: class name → display name of every registered node type, live."""

    def __init__(self) -> None:
        self._stored: dict[str, str] = {}

    def __getitem__(self, class_type: str) -> str:
        if class_type in self._stored:
            return self._stored[class_type]
        spec = _registry().get(class_type)
        if spec is None:
            raise KeyError(class_type)
        return spec.display_name

    def __setitem__(self, class_type: str, name: str) -> None:
        self._stored[class_type] = name

    def __delitem__(self, class_type: str) -> None:
        del self._stored[class_type]

    def __iter__(self) -> Iterator[str]:
        yield from self._stored
        yield from (name for name in list(_registry()) if name not in self._stored)

    def __len__(self) -> int:
        return len(set(_registry()) | set(self._stored))


NODE_CLASS_MAPPINGS = NodeClassMappings()
NODE_DISPLAY_NAME_MAPPINGS = NodeDisplayNameMappings()


def comfy_attribute(name: str) -> Any:
    """What ``nodes.<name>`` is in ComfyUI, for the names ``nodes/__init__.py`` forwards here."""
    if name in _MODULE_VALUES:
        return globals()[name]
    if name in COMFY_METHODS:
        return builtin_class(name)
    raise AttributeError(f"module 'nodes' has no attribute {name!r}")


def forwards(name: str) -> bool:
    """Whether ``nodes.<name>`` is answered here; cheap: never imports the node modules."""
    return name in COMFY_METHODS or name in _MODULE_VALUES


_MODULE_VALUES = frozenset({"NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "common_ksampler"})
