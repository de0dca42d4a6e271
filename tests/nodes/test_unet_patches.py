"""FreeU, FreeU_V2, HyperTile and PatchModelAddDownscale: ComfyUI's specs, clones carrying Loom's UNet patches, and
those patches run through the tiny SD1.5 checkpoint's UNet.

The spec table is ComfyUI's (comfy_extras/nodes_freelunch.py, nodes_hypertile.py, nodes_model_downscale.py): its
V3 schemas give FreeU's factors ``advanced`` and no display names but Deep Shrink's.
"""

from __future__ import annotations

import logging
import types
from typing import Any

import pytest
import torch

from diffusion.attention_guidance import AttentionRecorder, PerturbedMiddleAttention, blur_where_attended
from diffusion.guidance import CFGGuider
from diffusion.unet import UNetModel
from diffusion.unet_patches import (
    DownscaleAfterBlock,
    FreeUScaling,
    HyperTileAttention,
    UNetPatches,
    UpscaleToSkip,
    freeu_scaling,
)
from graph.declare import spec_of
from graph.registry import NodeRegistry
from nodes import unet_patches
from nodes.conditioning import CLIPTextEncode
from nodes.folders import Folders
from nodes.latent import EmptyLatentImage
from nodes.loaders import CheckpointLoaderSimple, LoraLoaderModelOnly
from nodes.sampling import KSampler
from nodes.unet_patch_options import UNET_PATCHES_KEY, unet_patches_of
from nodes.unet_patches import (
    FreeU,
    FreeU_V2,
    HyperTile,
    PatchModelAddDownscale,
    PerturbedAttentionGuidance,
    SelfAttentionGuidance,
)
from tests.nodes.tiny_models import kohya_lora_tensors, tiny_checkpoint, write_lora

FACTOR = {"min": 0.0, "max": 10.0, "step": 0.01, "advanced": True}
PERCENT = {"min": 0.0, "max": 1.0, "step": 0.001}
METHODS = ["bicubic", "nearest-exact", "bilinear", "area", "bislerp"]

# class_type: (category, display name, inputs as ComfyUI's /object_info gives them)
SPECS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "FreeU": (
        "model_patches/unet", "FreeU",
        {
            "model": ["MODEL"],
            "b1": ["FLOAT", {"default": 1.1, **FACTOR}], "b2": ["FLOAT", {"default": 1.2, **FACTOR}],
            "s1": ["FLOAT", {"default": 0.9, **FACTOR}], "s2": ["FLOAT", {"default": 0.2, **FACTOR}],
        },
    ),
    "FreeU_V2": (
        "model_patches/unet", "FreeU_V2",
        {
            "model": ["MODEL"],
            "b1": ["FLOAT", {"default": 1.3, **FACTOR}], "b2": ["FLOAT", {"default": 1.4, **FACTOR}],
            "s1": ["FLOAT", {"default": 0.9, **FACTOR}], "s2": ["FLOAT", {"default": 0.2, **FACTOR}],
        },
    ),
    "HyperTile": (
        "model_patches/unet", "HyperTile",
        {
            "model": ["MODEL"],
            "tile_size": ["INT", {"default": 256, "min": 1, "max": 2048}],
            "swap_size": ["INT", {"default": 2, "min": 1, "max": 128}],
            "max_depth": ["INT", {"default": 0, "min": 0, "max": 10}],
            "scale_depth": ["BOOLEAN", {"default": False}],
        },
    ),
    "PatchModelAddDownscale": (
        "model_patches/unet", "PatchModelAddDownscale (Kohya Deep Shrink)",
        {
            "model": ["MODEL"],
            "block_number": ["INT", {"default": 3, "min": 1, "max": 32, "step": 1}],
            "downscale_factor": ["FLOAT", {"default": 2.0, "min": 0.1, "max": 9.0, "step": 0.001}],
            "start_percent": ["FLOAT", {"default": 0.0, **PERCENT}],
            "end_percent": ["FLOAT", {"default": 0.35, **PERCENT}],
            "downscale_after_skip": ["BOOLEAN", {"default": True}],
            "downscale_method": [METHODS],
            "upscale_method": [METHODS],
        },
    ),
    "PerturbedAttentionGuidance": (
        "model_patches/unet", "PerturbedAttentionGuidance",
        {
            "model": ["MODEL"],
            "scale": ["FLOAT", {"default": 3.0, "min": 0.0, "max": 100.0, "step": 0.01, "round": 0.01}],
        },
    ),
    "SelfAttentionGuidance": (
        "_for_testing", "Self-Attention Guidance",
        {
            "model": ["MODEL"],
            "scale": ["FLOAT", {"default": 0.5, "min": -2.0, "max": 5.0, "step": 0.01}],
            "blur_sigma": ["FLOAT", {"default": 2.0, "min": 0.0, "max": 10.0, "step": 0.1}],
        },
    ),
}  # fmt: skip


@pytest.mark.parametrize("class_type", list(SPECS))
def test_the_node_is_comfyuis(class_type: str) -> None:
    registry = NodeRegistry()
    assert sorted(registry.register_module(unet_patches)) == sorted(SPECS)
    info = registry.object_info()[class_type]
    category, display_name, inputs = SPECS[class_type]
    assert (info["category"], info["display_name"]) == (category, display_name)
    assert info["input"] == {"required": inputs} and list(info["input"]["required"]) == list(inputs)
    assert info["output"] == ["MODEL"] and info["output_name"] == ["MODEL"] and info["output_node"] is False


@pytest.fixture
def sd15(folders: Folders) -> tuple[Any, Any]:
    tiny_checkpoint(folders.models, "sd15.safetensors")
    model, clip, _ = CheckpointLoaderSimple("sd15.safetensors")
    return model, clip


def forward(model: Any, patches: UNetPatches | None, sigma: float = 10.0) -> torch.Tensor:
    """The model's UNet on a fixed 8 x 8 latent at ``sigma`` (through its sampling's timestep), with ``patches``."""
    g = torch.Generator().manual_seed(4)
    x, context = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 3, 64, generator=g)
    timesteps = model.sampling.timestep(torch.full((2,), sigma))
    with torch.no_grad():
        return model.unet(x, timesteps, context, patches=patches)


def test_each_node_returns_a_clone_carrying_its_patch(sd15) -> None:
    model, _ = sd15
    freeu = FreeU(model, 1.1, 1.2, 0.9, 0.2)
    assert freeu is not model and freeu.unet is model.unet and freeu.patches == model.patches
    assert unet_patches_of(model.model_options) is None and model.model_options == {"transformer_options": {}}
    assert unet_patches_of(freeu.model_options) == UNetPatches(output_block=(freeu_scaling(32, 1.1, 1.2, 0.9, 0.2),))
    v2 = unet_patches_of(FreeU_V2(model, 1.3, 1.4, 0.9, 0.2).model_options)
    assert v2 == UNetPatches(output_block=(freeu_scaling(32, 1.3, 1.4, 0.9, 0.2, mean_normalised=True),))
    tiled = unet_patches_of(HyperTile(model, 256, 2, 0, False).model_options)
    assert tiled == UNetPatches(attn1=HyperTileAttention(256, 2, 0, False))


def test_patches_accumulate_in_order_and_survive_later_model_nodes(sd15, folders: Folders) -> None:
    model, clip = sd15
    chained = PatchModelAddDownscale(
        HyperTile(FreeU(model, 1.1, 1.2, 0.9, 0.2), 256, 2, 0, False), 3, 2.0, 0.0, 0.35, False, "bicubic", "bislerp"
    )
    patches = unet_patches_of(chained.model_options)
    assert patches is not None
    assert [type(patch) for patch in patches.output_block] == [FreeUScaling, UpscaleToSkip]
    (downscale,) = patches.input_block
    assert isinstance(downscale, DownscaleAfterBlock) and patches.input_block_after_skip == ()
    assert (downscale.block_number, downscale.factor) == (3, 2.0)
    assert downscale.sigma_start == model.sampling.percent_to_sigma(0.0) == float("inf")
    assert downscale.sigma_end == model.sampling.percent_to_sigma(0.35)
    assert patches.attn1 == HyperTileAttention(256, 2, 0, False)
    after = PatchModelAddDownscale(model, 3, 2.0, 0.0, 0.35, True, "bicubic", "bicubic")
    assert len(unet_patches_of(after.model_options).input_block_after_skip) == 1  # type: ignore[union-attr]
    unet = model.unet
    write_lora(folders.models / "loras" / "style.safetensors", kohya_lora_tensors(unet, [], seed=1))
    with_lora = LoraLoaderModelOnly(chained, "style.safetensors", 0.8)
    assert unet_patches_of(with_lora.model_options) is patches
    assert unet_patches_of(FreeU(model, 1.0, 1.0, 1.0, 1.0).model_options) is not None


def test_unet_patches_of_reads_only_loom_patches() -> None:
    assert unet_patches_of({}) is None
    assert unet_patches_of({"transformer_options": {}}) is None
    assert unet_patches_of({"transformer_options": {UNET_PATCHES_KEY: UNetPatches()}}) is None
    with pytest.raises(TypeError, match="not Loom's UNetPatches"):
        unet_patches_of({"transformer_options": {UNET_PATCHES_KEY: {"output_block_patch": []}}})


@pytest.mark.parametrize(
    "patch",
    [
        lambda m: FreeU(m, 1.1, 1.2, 0.9, 0.2),
        lambda m: FreeU_V2(m, 1.3, 1.4, 0.9, 0.2),
        lambda m: HyperTile(m, 32, 2, 0, False),  # 4-cell tiles: 2 x 2 tiles on the 8 x 8 latent
        lambda m: PatchModelAddDownscale(m, 3, 2.0, 0.0, 0.35, True, "bicubic", "bicubic"),
        lambda m: PatchModelAddDownscale(m, 1, 2.0, 0.0, 0.35, False, "bislerp", "area"),
    ],
    ids=["FreeU", "FreeU_V2", "HyperTile", "DeepShrink", "DeepShrinkBeforeSkip"],
)
def test_the_patches_change_the_unet_call(sd15, patch) -> None:
    model, _ = sd15
    patched = forward(model, unet_patches_of(patch(model).model_options), sigma=10.0)
    plain = forward(model, None, sigma=10.0)
    assert bool(torch.isfinite(patched).all()) and (patched - plain).abs().max() > 1e-3


def test_the_node_patches_are_the_library_patches(sd15) -> None:
    model, _ = sd15
    freeu = unet_patches_of(FreeU(model, 1.1, 1.2, 0.9, 0.2).model_options)
    library = UNetPatches().with_output_block_patch(freeu_scaling(model.unet.config.model_channels, 1.1, 1.2, 0.9, 0.2))
    assert torch.equal(forward(model, freeu), forward(model, library))


def test_neutral_settings_compute_the_unpatched_unet(sd15) -> None:
    model, _ = sd15
    plain = forward(model, None, sigma=10.0)
    assert torch.equal(forward(model, unet_patches_of(FreeU(model, 1.0, 1.0, 1.0, 1.0).model_options)), plain)
    assert torch.equal(forward(model, unet_patches_of(HyperTile(model, 2048, 2, 3, True).model_options)), plain)
    # Deep Shrink only while sigma is within its first 35 % of sampling: sigma 0.1 is past it.
    shrunk = unet_patches_of(PatchModelAddDownscale(model, 3, 2.0, 0.0, 0.35, True, "bicubic", "bicubic").model_options)
    assert torch.equal(forward(model, shrunk, sigma=0.1), forward(model, None, sigma=0.1))
    assert not torch.equal(forward(model, shrunk, sigma=10.0), plain)


def test_models_without_a_unet(caplog: pytest.LogCaptureFixture) -> None:
    flow = types.SimpleNamespace(unet=torch.nn.Linear(1, 1))
    with pytest.raises(ValueError, match="FreeU patches the output blocks of an SD1.x, SD2.x or SDXL UNet"):
        FreeU(flow, 1.1, 1.2, 0.9, 0.2)
    with pytest.raises(ValueError, match="FreeU_V2"):
        FreeU_V2(flow, 1.1, 1.2, 0.9, 0.2)
    with caplog.at_level(logging.WARNING, logger="nodes.unet_patches"):
        assert HyperTile(flow, 256, 2, 0, False) is flow
        assert PatchModelAddDownscale(flow, 3, 2.0, 0.0, 0.35, True, "bicubic", "bicubic") is flow
    assert [record.getMessage().split(" has no effect")[0] for record in caplog.records] == [
        "HyperTile",
        "PatchModelAddDownscale",
    ]


def test_the_spec_runs_the_node_with_comfyuis_defaults(sd15) -> None:
    model, _ = sd15
    (patched,) = spec_of(PatchModelAddDownscale).run(None, {
        "model": model, "block_number": 3, "downscale_factor": 2.0, "start_percent": 0.0, "end_percent": 0.35,
        "downscale_after_skip": True, "downscale_method": "bicubic", "upscale_method": "bicubic",
    }).values  # fmt: skip
    assert isinstance(patched.unet, UNetModel) and unet_patches_of(patched.model_options) is not None


def test_ksampler_samples_with_the_patches(sd15) -> None:
    model, clip = sd15
    positive, negative = CLIPTextEncode("a lighthouse", clip), CLIPTextEncode("fog", clip)
    latent = EmptyLatentImage(64, 64, 1)

    def ksample(m: Any) -> torch.Tensor:
        return KSampler(m, 7, 3, 6.0, "euler", "normal", positive, negative, latent, 1.0)["samples"]

    plain = ksample(model)
    for patched in (FreeU(model, 1.1, 1.2, 0.9, 0.2), HyperTile(model, 32, 2, 0, False)):
        assert not torch.allclose(ksample(patched), plain, rtol=1e-3, atol=1e-3)
    assert torch.equal(ksample(FreeU(model, 1.0, 1.0, 1.0, 1.0)), plain)


def one_guided_call(model: Any, clip: Any, cfg: float = 5.0) -> tuple[torch.Tensor, dict[str, Any]]:
    """The MODEL's guided x0 for one call at sigma 3 on a fixed 8 x 8 latent, as KSampler's guider makes it, and
    what a hand computation needs."""
    positive, negative = CLIPTextEncode("a lighthouse", clip), CLIPTextEncode("fog", clip)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5)) * 3
    sigma = torch.tensor([3.0])
    with model.unet_fn() as unet_fn:
        guider = CFGGuider(unet_fn, model.sampling, x, positive, negative, cfg, hooks=model.cfg_hooks())
        guided = guider(x, sigma)
    return guided, {"x": x, "sigma": sigma, "positive": positive[0][0], "negative": negative[0][0]}


def x0(model: Any, given: dict[str, Any], context: torch.Tensor, x: torch.Tensor, patches: Any = None) -> torch.Tensor:
    sampling, sigma = model.sampling, given["sigma"]
    with torch.no_grad():
        out = model.unet(sampling.calculate_input(sigma, x), sampling.timestep(sigma), context, patches=patches)
    return sampling.calculate_denoised(sigma, out, x)


def test_pag_adds_the_positive_minus_its_perturbed_attention_prediction(sd15) -> None:
    model, clip = sd15
    guided, given = one_guided_call(PerturbedAttentionGuidance(model, 2.0), clip)
    x = given["x"]
    cond, uncond = x0(model, given, given["positive"], x), x0(model, given, given["negative"], x)
    perturbed = x0(model, given, given["positive"], x, UNetPatches(attn1=PerturbedMiddleAttention()))
    assert (cond - perturbed).abs().max() > 1e-3
    torch.testing.assert_close(guided, uncond + (cond - uncond) * 5.0 + (cond - perturbed) * 2.0, rtol=1e-4, atol=1e-4)
    plain, _ = one_guided_call(model, clip)
    assert torch.equal(one_guided_call(PerturbedAttentionGuidance(model, 0.0), clip)[0], plain)


def test_sag_adds_the_blurred_negative_minus_its_prediction(sd15) -> None:
    model, clip = sd15
    patched = SelfAttentionGuidance(model, 0.5, 2.0)
    guided, given = one_guided_call(patched, clip)
    x = given["x"]
    cond, uncond = x0(model, given, given["positive"], x), x0(model, given, given["negative"], x)
    recorder = AttentionRecorder()
    x0(model, given, given["negative"], x, UNetPatches(attn1=recorder, cond_or_uncond=(1,)))
    assert recorder.recorded is not None
    degraded = blur_where_attended(uncond, recorder.recorded, 2.0)
    assert not torch.allclose(degraded, uncond)
    prediction = x0(model, given, given["negative"], degraded + x - uncond)
    expected = uncond + (cond - uncond) * 5.0 + (degraded - prediction) * 0.5
    torch.testing.assert_close(guided, expected, rtol=1e-4, atol=1e-4)


def test_sag_evaluates_the_negative_at_cfg_one(sd15) -> None:
    model, clip = sd15
    guided, given = one_guided_call(SelfAttentionGuidance(model, 0.5, 2.0), clip, cfg=1.0)
    plain, _ = one_guided_call(model, clip, cfg=1.0)
    assert SelfAttentionGuidance(model, 0.5, 2.0).cfg_hooks().uncond_at_cfg1
    assert not torch.allclose(guided, plain)


def test_attention_guidances_chain_with_each_other_and_hypertile(sd15) -> None:
    model, clip = sd15
    chained = PerturbedAttentionGuidance(SelfAttentionGuidance(HyperTile(model, 32, 2, 0, False), 0.5, 2.0), 1.0)
    patches = unet_patches_of(chained.model_options)
    assert isinstance(patches.attn1, AttentionRecorder) and patches.attn1.previous == HyperTileAttention(
        32, 2, 0, False
    )
    assert chained.cfg_hooks().label_rows and len(chained.cfg_hooks().post_cfg) == 2
    guided, _ = one_guided_call(chained, clip)
    assert torch.isfinite(guided).all()
