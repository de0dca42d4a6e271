"""``register_builtin_nodes`` puts every built-in node into a registry, protected from plugins."""

from __future__ import annotations

import pytest
from PIL import Image

from graph.declare import Output, node
from graph.executor import Executor
from graph.registry import NodeRegistry, RegistrationError
from graph.validation import validate_prompt
from nodes import register_builtin_nodes
from nodes.folders import Folders

BUILTIN_NAMES = {
    "EmptyImage", "ImageScale", "ImageScaleBy", "ImageInvert", "ImageBatch", "ImageCrop", "ImagePadForOutpaint",
    "LoadImage", "LoadImageMask", "SaveImage", "PreviewImage",
    "PrimitiveInt", "PrimitiveFloat", "PrimitiveString", "PrimitiveStringMultiline", "PrimitiveBoolean",
    "StringConcatenate", "StringReplace", "PreviewAny", "MathExpression",
    "CheckpointLoaderSimple", "UNETLoader", "VAELoader", "LoraLoader", "LoraLoaderModelOnly", "UpscaleModelLoader",
    "CLIPSetLastLayer", "CLIPTextEncode", "ConditioningCombine", "ConditioningAverage", "ConditioningConcat",
    "ConditioningSetArea", "ConditioningSetMask", "ConditioningSetTimestepRange", "ConditioningZeroOut",
    "InpaintModelConditioning",
    "EmptyLatentImage", "VAEDecode", "VAEEncode", "VAEDecodeTiled", "VAEEncodeTiled", "VAEEncodeForInpaint",
    "SetLatentNoiseMask", "LatentUpscale", "LatentUpscaleBy", "LatentFromBatch", "RepeatLatentBatch",
    "LatentComposite", "LatentBlend",
    "KSampler", "KSamplerAdvanced", "KSamplerSelect", "BasicScheduler", "RandomNoise", "DisableNoise",
    "CFGGuider", "SamplerCustom", "SamplerCustomAdvanced", "ImageUpscaleWithModel",
    "FluxGuidance", "EmptySD3LatentImage", "ModelSamplingSD3", "ModelSamplingAuraFlow", "ModelSamplingFlux",
    "CLIPLoader", "DualCLIPLoader", "CLIPTextEncodeFlux", "BasicGuider", "TripleCLIPLoader", "CLIPTextEncodeSD3",
    "ReferenceLatent", "FluxKontextImageScale", "InstructPixToPixConditioning", "T5TokenizerOptions",
    "ImageStitch", "DifferentialDiffusion",
    "GetImageSize", "ImageScaleToTotalPixels", "ImageScaleToMaxDimension", "ResizeImageMaskNode", "ResizeAndPadImage",
    "ImageCompare", "SaveImageAdvanced", "BatchImagesNode", "ImageFromBatch", "RepeatImageBatch", "RebatchImages",
    "ImageBlend", "ImageBlur", "ImageSharpen", "ImageQuantize", "ImageAddNoise", "ImageCompositeMasked",
    "JoinImageWithAlpha", "SplitImageWithAlpha", "ImageFlip", "ImageRotate",
    "ModelMergeSimple", "ModelMergeBlocks", "ModelMergeSubtract", "ModelMergeAdd", "CLIPMergeSimple",
    "CLIPMergeSubtract", "CLIPMergeAdd", "ModelMergeSD1", "ModelMergeSD2", "ModelMergeSDXL",
    "CheckpointSave", "ModelSave", "CLIPSave", "VAESave", "LoraSave",
    "RescaleCFG", "CFGNorm", "CFGZeroStar", "APG", "DualCFGGuider", "PerpNegGuider", "ModelSamplingDiscrete",
    "ModelSamplingContinuousEDM",
    "Canny",
    "CLIPVisionLoader", "CLIPVisionEncode", "unCLIPConditioning", "StyleModelLoader", "StyleModelApply",
    "SkipLayerGuidanceDiT", "SkipLayerGuidanceSD3",
    "ControlNetLoader", "DiffControlNetLoader", "ControlNetApply", "ControlNetApplyAdvanced",
    "SetUnionControlNetType", "ControlNetApplySD3", "ControlNetInpaintingAliMamaApply",
    "FreeU", "FreeU_V2", "HyperTile", "PatchModelAddDownscale", "PerturbedAttentionGuidance", "SelfAttentionGuidance",
    "SolidMask", "InvertMask", "GrowMask", "FeatherMask", "MaskComposite", "ThresholdMask", "ImageToMask",
    "MaskToImage", "ImageColorToMask", "CropMask", "MaskPreview",
    "LatentCrop", "LatentFlip", "LatentRotate", "LatentAdd", "LatentSubtract", "LatentMultiply", "LatentInterpolate",
    "LatentBatch", "LatentBatchSeedBehavior",
    "ComfySwitchNode", "ComfyMathExpression", "ComfyNumberConvert", "ResolutionSelector", "CustomCombo",
    "RegexMatch", "RegexExtract", "RegexReplace", "JsonExtractString", "StringLength", "StringSubstring", "SaveText",
    "CLIPTextEncodeSDXL", "CLIPTextEncodeSDXLRefiner", "ConditioningSetAreaPercentage", "ConditioningSetAreaStrength",
    "KarrasScheduler", "ExponentialScheduler", "PolyexponentialScheduler", "LaplaceScheduler", "VPScheduler",
    "BetaSamplingScheduler", "SDTurboScheduler", "AlignYourStepsScheduler", "SplitSigmas", "SplitSigmasDenoise",
    "FlipSigmas", "SetFirstSigma", "ExtendIntermediateSigmas", "SamplingPercentToSigma", "ManualSigmas",
    "SamplerEulerAncestral", "SamplerEulerAncestralCFGPP", "SamplerLMS", "SamplerDPMPP_3M_SDE", "SamplerDPMPP_2M_SDE",
    "SamplerDPMPP_SDE", "SamplerDPMPP_2S_Ancestral", "SamplerDPMAdaptative", "SamplerER_SDE", "SamplerSASolver",
    "SamplerSEEDS2",
}  # fmt: skip
OUTPUT_NODES = {
    "SaveImage",
    "PreviewImage",
    "PreviewAny",
    "MaskPreview",
    "SaveText",
    "SaveImageAdvanced",
    "ImageCompare",
    "CheckpointSave",
    "ModelSave",
    "CLIPSave",
    "VAESave",
    "LoraSave",
}
#: Fields the editor's schema requires of every ``/object_info`` entry (docs/compatibility.md §C.4).
REQUIRED_FIELDS = {"name", "display_name", "description", "category", "output_node", "python_module"}


def test_every_builtin_name_is_registered_and_protected() -> None:
    registry = NodeRegistry()
    names = register_builtin_nodes(registry)
    assert set(names) == BUILTIN_NAMES and len(names) == len(BUILTIN_NAMES)
    assert set(registry) == BUILTIN_NAMES
    assert all(registry.is_builtin(name) for name in names)
    assert {name for name in names if registry.get(name).output_node} == OUTPUT_NODES  # type: ignore[union-attr]


def test_a_plugin_cannot_replace_a_builtin() -> None:
    registry = NodeRegistry()
    register_builtin_nodes(registry)

    @node(class_type="SaveImage", outputs=[Output("IMAGE")])
    def impostor():
        """Would silently change what saved workflows do."""

    with pytest.raises(RegistrationError, match="SaveImage"):
        registry.register(impostor.__loom_spec__)  # type: ignore[attr-defined]


def test_registering_twice_is_refused() -> None:
    registry = NodeRegistry()
    register_builtin_nodes(registry)
    with pytest.raises(RegistrationError, match="built in"):
        register_builtin_nodes(registry)


def test_every_node_serves_a_complete_object_info_entry(folders: Folders) -> None:
    registry = NodeRegistry()
    register_builtin_nodes(registry)
    failures: list[str] = []
    info = registry.object_info(on_error=lambda name, error: failures.append(f"{name}: {error}"))
    assert failures == [] and set(info) == BUILTIN_NAMES
    for name, entry in info.items():
        assert REQUIRED_FIELDS <= set(entry), name
        assert entry["name"] == name and entry["python_module"].startswith("nodes.")
        assert len(entry["output"]) == len(entry["output_name"]) == len(entry["output_is_list"])


def test_a_prompt_of_builtin_nodes_validates_runs_and_saves_its_workflow(folders: Folders) -> None:
    Image.new("RGBA", (8, 4), (255, 0, 0, 255)).save(folders.input / "red.png")
    registry = NodeRegistry()
    register_builtin_nodes(registry)
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "red.png"}},
        "2": {"class_type": "PrimitiveInt", "inputs": {"value": 4}},
        "3": {"class_type": "MathExpression", "inputs": {"expression": "a * 4", "a": ["2", 0]}},
        "4": {
            "class_type": "ImageScale",
            "inputs": {"image": ["1", 0], "upscale_method": "area", "width": ["3", 0], "height": 0, "crop": "disabled"},
        },
        "5": {"class_type": "ImageInvert", "inputs": {"image": ["4", 0]}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "e2e/%width%x%height%"}},
    }
    checked = validate_prompt(prompt, registry)
    assert checked.ok, checked.node_errors
    workflow = {"nodes": [], "links": [], "version": 0.4}
    extra_data = {"extra_pnginfo": {"workflow": workflow}}
    record = Executor(registry).execute(checked.prompt, checked.outputs, prompt_id="p", extra_data=extra_data)
    assert record.error is None
    assert record.outputs["6"] == {"images": [{"filename": "16x8_00001_.png", "subfolder": "e2e", "type": "output"}]}
    with Image.open(folders.output / "e2e" / "16x8_00001_.png") as saved:
        assert saved.size == (16, 8) and saved.getpixel((0, 0)) == (0, 255, 255)
        assert saved.text["workflow"] == '{"nodes": [], "links": [], "version": 0.4}'
