"""FLUX and SD3 diffusion-model files through the nodes: UNETLoader gives a MODEL that samples the rectified
flow with ComfyUI's defaults, and KSampler on it is exactly flow-matching Euler over the shifted schedule."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from diffusion.checkpoint.errors import CheckpointError
from diffusion.flow_matching import DiscreteFlow, FlowPrediction, FluxFlow
from diffusion.flux import FluxConfig, FluxTransformer
from diffusion.guidance import fill_channels
from diffusion.mmdit import MMDiT, MMDiTConfig
from diffusion.samplers.euler import sample_euler
from diffusion.sampling import prepare_noise
from diffusion.schedules import compute_sigmas
from diffusion.text_encoders.t5_stacks import T5_MIN_LENGTH
from diffusion.tiny_parts import tiny_file_tensors, write_tiny_file
from diffusion.vae import FLUX_LATENT, SD3_LATENT, LatentFormat
from graph.registry import NodeRegistry
from nodes import register_builtin_nodes
from nodes.conditioning import (
    CLIPTextEncode,
    CLIPTextEncodeFlux,
    CLIPTextEncodeSD3,
    FluxGuidance,
    InpaintModelConditioning,
    InstructPixToPixConditioning,
    ReferenceLatent,
)
from nodes.folders import Folders
from nodes.guidance_nodes import SkipLayerGuidanceDiT, SkipLayerGuidanceSD3
from nodes.image import FluxKontextImageScale
from nodes.latent import EmptySD3LatentImage, VAEDecode
from nodes.loaders import (
    CheckpointLoaderSimple,
    CLIPLoader,
    DualCLIPLoader,
    LoraLoaderModelOnly,
    T5TokenizerOptions,
    TripleCLIPLoader,
    UNETLoader,
    VAELoader,
)
from nodes.model_handles import DEFAULT_GUIDANCE
from nodes.sampling import KSampler
from tests.nodes.tiny_models import tiny_checkpoint

CONTEXT, POOLED = 32, 16  # tiny text widths; real files have 4096 and 768 (FLUX) / 2048 (SD3)


def _write(module: torch.nn.Module, path: Path, prefix: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({prefix + k: v.half().contiguous() for k, v in module.state_dict().items()}, str(path))


def _flux(guidance: bool) -> FluxTransformer:
    torch.manual_seed(0)
    # One 128-wide head: the RoPE split (16, 56, 56) of the released files then fits.
    config = FluxConfig(
        hidden_size=128, num_heads=1, depth=1, depth_single_blocks=1, context_dim=CONTEXT, vec_dim=POOLED,
        guidance_embed=guidance,
    )  # fmt: skip
    return FluxTransformer(config)


def _sd3() -> MMDiT:
    torch.manual_seed(1)
    return MMDiT(MMDiTConfig(depth=2, hidden_size=128, num_heads=2, pos_embed_max_size=16, pooled_dim=POOLED,
                             context_dim=CONTEXT))  # fmt: skip


@pytest.fixture
def files(folders: Folders) -> dict[str, torch.nn.Module]:
    models = {"flux-dev.safetensors": _flux(True), "flux-schnell.safetensors": _flux(False), "sd3.safetensors": _sd3()}
    for name, module in models.items():
        _write(module, folders.models / "diffusion_models" / name)
    return models


def _conditioning(seed: int, pooled: bool = True) -> list:
    generator = torch.Generator().manual_seed(seed)
    options = {"pooled_output": torch.randn(1, POOLED, generator=generator)} if pooled else {}
    return [[torch.randn(1, 7, CONTEXT, generator=generator), options]]


def _flow_euler(
    call, flow: FlowPrediction, latent_format: LatentFormat, latent: torch.Tensor, seed: int, steps: int
) -> torch.Tensor:
    """What KSampler must compute at cfg 1 with euler / simple: written out from the definitions."""
    sigmas = compute_sigmas(flow, "simple", steps)
    start = latent_format.to_model(latent)
    x = flow.noise_scaling(sigmas[0], prepare_noise(start, seed), start)
    x = sample_euler(lambda x, sigma: x - call(x, sigma) * sigma.reshape(-1, 1, 1, 1), x, sigmas, disable=True)
    return latent_format.from_model(flow.inverse_noise_scaling(sigmas[-1], x))


def test_the_loader_lists_diffusion_models_and_its_inputs_are_comfyui_s(files) -> None:
    registry = NodeRegistry()
    register_builtin_nodes(registry)
    info = registry.object_info()["UNETLoader"]
    assert list(info["input"]["required"]) == ["unet_name", "weight_dtype"]
    assert info["input"]["required"]["unet_name"][0] == sorted(files)
    assert info["input"]["required"]["weight_dtype"][0] == ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"]
    assert (info["output"], info["display_name"], info["category"]) == (
        ["MODEL"],
        "Load Diffusion Model",
        "advanced/loaders",
    )


def test_each_family_samples_with_comfyui_s_defaults(files) -> None:
    dev, schnell, sd3 = (UNETLoader(name, "default") for name in sorted(files))
    assert (dev.family.value, type(dev.sampling), dev.sampling.shift, dev.latent_format) == (
        "flux",
        FluxFlow,
        1.15,
        FLUX_LATENT,
    )
    assert (type(schnell.sampling), schnell.sampling.shift, schnell.takes_guidance) == (FluxFlow, 1.0, False)
    assert (sd3.family.value, type(sd3.sampling), sd3.sampling.shift, sd3.latent_format) == (
        "sd3",
        DiscreteFlow,
        3.0,
        SD3_LATENT,
    )
    assert dev.takes_guidance and dev.pooled_dim == POOLED and dev.latent_channels == 16


def test_fp8_weight_dtype_keeps_the_model_s_linear_weights_in_fp8(files) -> None:
    model = UNETLoader("flux-dev.safetensors", "fp8_e4m3fn")
    assert model.unet.img_in.weight.dtype == torch.float8_e4m3fn
    assert UNETLoader("flux-dev.safetensors", "default").unet.img_in.weight.dtype == torch.float16


def test_ksampler_on_flux_dev_is_flow_euler_with_the_guidance_of_its_conditioning(files) -> None:
    model = UNETLoader("flux-dev.safetensors", "default")
    positive = FluxGuidance(_conditioning(0), 2.0)
    latent = EmptySD3LatentImage(64, 48, 1)
    got = KSampler(model, 7, 3, 1.0, "euler", "simple", positive, _conditioning(1), latent, 1.0)["samples"]
    reference = files["flux-dev.safetensors"].half().float().eval()
    context, options = positive[0]
    with torch.no_grad():
        expected = _flow_euler(
            lambda x, sigma: reference(x, sigma, context, options["pooled_output"], torch.full((1,), 2.0)),
            FluxFlow(1.15), FLUX_LATENT, latent["samples"], 7, 3,
        )  # fmt: skip
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("double", "single"), [("0", ""), ("", "0"), ("0", "0")])
def test_skip_layer_guidance_on_flux_guides_away_from_the_prediction_with_blocks_skipped(
    files, double: str, single: str
) -> None:
    model = SkipLayerGuidanceDiT(UNETLoader("flux-dev.safetensors", "default"), double, single, 2.0, 0.0, 1.0, 0.0)
    positive = FluxGuidance(_conditioning(0), 2.0)
    latent = EmptySD3LatentImage(64, 48, 1)
    got = KSampler(model, 7, 3, 1.0, "euler", "simple", positive, _conditioning(1), latent, 1.0)["samples"]
    reference = files["flux-dev.safetensors"].half().float().eval()
    context, options = positive[0]
    skips = {"skip_double": [0] if double else [], "skip_single": [0] if single else []}

    def guided(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        cond, skipped = (
            reference(x, sigma, context, options["pooled_output"], torch.full((1,), 2.0), **extra)
            for extra in ({}, skips)
        )
        return cond + (cond - skipped) * 2.0

    with torch.no_grad():
        expected = _flow_euler(guided, FluxFlow(1.15), FLUX_LATENT, latent["samples"], 7, 3)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_skip_layer_guidance_on_sd3_skips_joint_blocks_inside_its_window_only(files) -> None:
    model = UNETLoader("sd3.safetensors", "default")
    positive, negative = _conditioning(0), _conditioning(1)
    latent = EmptySD3LatentImage(64, 64, 1)
    # The window (percent 0.3 to 0.5: sigmas 0.875 to 0.75) holds the second of three steps only.
    patched = SkipLayerGuidanceSD3(model, "1", 3.0, 0.3, 0.5)
    got = KSampler(patched, 11, 3, 4.0, "euler", "simple", positive, negative, latent, 1.0)["samples"]
    reference = files["sd3.safetensors"].half().float().eval()
    low, high = model.sampling.percent_to_sigma(0.5), model.sampling.percent_to_sigma(0.3)
    calls = []

    def guided(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        cond, uncond = (reference(x, sigma, c[0][0], c[0][1]["pooled_output"]) for c in (positive, negative))
        out = uncond + (cond - uncond) * 4.0
        calls.append(low < float(sigma[0]) <= high)
        if calls[-1]:
            skipped = reference(x, sigma, positive[0][0], positive[0][1]["pooled_output"], skip_layers=[1])
            out = out + (cond - skipped) * 3.0
        return out

    with torch.no_grad():
        expected = _flow_euler(guided, DiscreteFlow(3.0), SD3_LATENT, latent["samples"], 11, 3)
    assert calls == [False, True, False]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_skip_layer_guidance_names_blocks_the_model_does_not_have(files) -> None:
    model = SkipLayerGuidanceSD3(UNETLoader("sd3.safetensors", "default"), "7", 3.0, 0.0, 1.0)
    latent = EmptySD3LatentImage(32, 32, 1)
    with pytest.raises(ValueError, match=r"skip_layers \[7\] are not blocks of this depth-2 MMDiT"):
        KSampler(model, 1, 1, 4.0, "euler", "simple", _conditioning(0), _conditioning(1), latent, 1.0)
    with pytest.raises(ValueError, match="a MMDiT has no single-stream blocks"):
        flux_only = SkipLayerGuidanceDiT(UNETLoader("sd3.safetensors", "default"), "", "0", 3.0, 0.0, 1.0, 0.0)
        KSampler(flux_only, 1, 1, 4.0, "euler", "simple", _conditioning(0), _conditioning(1), latent, 1.0)


def test_skip_layer_guidance_without_layers_or_on_a_unet_leaves_the_model_alone(
    files, folders: Folders, caplog: pytest.LogCaptureFixture
) -> None:
    model = UNETLoader("sd3.safetensors", "default")
    assert SkipLayerGuidanceDiT(model, "", " , ", 3.0, 0.0, 1.0, 0.0) is model
    tiny_checkpoint(folders.models, "sd15.safetensors")
    unet_model = CheckpointLoaderSimple("sd15.safetensors")[0]
    assert SkipLayerGuidanceSD3(unet_model, "7, 8, 9", 3.0, 0.01, 0.15) is unet_model
    assert "SkipLayerGuidanceSD3 has no effect on a UNetModel" in caplog.text


def test_a_conditioning_without_guidance_gets_comfyui_s_default_and_without_pooled_output_zeros(files) -> None:
    model = UNETLoader("flux-dev.safetensors", "default")
    latent = EmptySD3LatentImage(32, 32, 1)
    plain = _conditioning(0, pooled=False)
    got = KSampler(model, 3, 2, 1.0, "euler", "simple", plain, plain, latent, 1.0)["samples"]
    explicit = [[plain[0][0], {"pooled_output": torch.zeros(1, POOLED), "guidance": 3.5}]]
    assert torch.equal(got, KSampler(model, 3, 2, 1.0, "euler", "simple", explicit, plain, latent, 1.0)["samples"])


def test_ksampler_on_sd3_is_flow_euler_with_cfg_over_timesteps_of_0_to_1000(files) -> None:
    model = UNETLoader("sd3.safetensors", "default")
    positive, negative = _conditioning(0), _conditioning(1)
    latent = EmptySD3LatentImage(64, 64, 1)
    got = KSampler(model, 11, 3, 4.0, "euler", "simple", positive, negative, latent, 1.0)["samples"]
    reference = files["sd3.safetensors"].half().float().eval()

    def guided(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        cond, uncond = (reference(x, sigma, c[0][0], c[0][1]["pooled_output"]) for c in (positive, negative))
        return uncond + (cond - uncond) * 4.0

    with torch.no_grad():
        expected = _flow_euler(guided, DiscreteFlow(3.0), SD3_LATENT, latent["samples"], 11, 3)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_a_diffusion_model_alone_given_to_the_checkpoint_loader_says_which_loaders_to_use(folders: Folders) -> None:
    _write(_flux(True), folders.models / "checkpoints" / "flux-dev.safetensors")
    with pytest.raises(CheckpointError, match="load the model with UNETLoader .* and its VAE with VAELoader"):
        CheckpointLoaderSimple("flux-dev.safetensors")


def test_a_pooled_output_of_another_width_is_named(files) -> None:
    model = UNETLoader("sd3.safetensors", "default")
    wrong = [[torch.zeros(1, 7, CONTEXT), {"pooled_output": torch.zeros(1, 768)}]]
    with pytest.raises(ValueError, match="pooled output is 768 wide, this model takes 16"):
        KSampler(model, 0, 1, 1.0, "euler", "simple", wrong, wrong, EmptySD3LatentImage(32, 32, 1), 1.0)


@pytest.fixture
def flux_split_files(folders: Folders) -> Folders:
    """A split FLUX.1 dev install as users have it, from tiny files in the real layouts (fp16 T5 as in
    t5xxl_fp16.safetensors)."""
    models = folders.models
    write_tiny_file(models / "diffusion_models" / "flux1-dev.safetensors", "flux_dev", "diffusion_model")
    write_tiny_file(models / "text_encoders" / "clip_l.safetensors", "flux_dev", "clip_l")
    write_tiny_file(models / "text_encoders" / "t5xxl_fp16.safetensors", "flux_dev", "t5xxl", "fp16")
    write_tiny_file(models / "vae" / "ae.safetensors", "flux_dev", "vae")
    return folders


def test_the_split_flux_workflow_runs_from_loaders_to_pixels(flux_split_files: Folders) -> None:
    model = UNETLoader("flux1-dev.safetensors", "default")
    clip = DualCLIPLoader("clip_l.safetensors", "t5xxl_fp16.safetensors", "flux")
    vae = VAELoader("ae.safetensors")
    positive = FluxGuidance(CLIPTextEncode("a (red:1.3) fox in the snow", clip), 3.5)
    cond, options = positive[0]
    assert cond.shape == (1, T5_MIN_LENGTH, 4096) and options["pooled_output"].shape == (1, 768)
    latent = KSampler(model, 1, 2, 1.0, "euler", "simple", positive, positive, EmptySD3LatentImage(64, 64, 1), 1.0)
    image = VAEDecode(latent, vae)
    assert image.shape == (1, 64, 64, 3) and torch.isfinite(image).all()


def test_clip_text_encode_flux_is_clip_text_encode_with_the_guidance_set(flux_split_files: Folders) -> None:
    clip = DualCLIPLoader("t5xxl_fp16.safetensors", "clip_l.safetensors", "flux")  # either order
    (plain,) = CLIPTextEncode("a lighthouse at dusk", clip)
    (flux,) = CLIPTextEncodeFlux(clip, "a lighthouse at dusk", "a lighthouse at dusk", 2.5)
    assert torch.equal(plain[0], flux[0]) and torch.equal(plain[1]["pooled_output"], flux[1]["pooled_output"])
    assert flux[1]["guidance"] == 2.5
    (split,) = CLIPTextEncodeFlux(clip, "a lighthouse", "a lighthouse at dusk, oil painting", 2.5)
    assert not torch.equal(split[0], flux[0]) and not torch.equal(split[1]["pooled_output"], flux[1]["pooled_output"])


def test_a_dual_clip_pair_that_is_not_the_type_s_is_named(flux_split_files: Folders) -> None:
    with pytest.raises(CheckpointError, match=r"type flux takes clip_l \+ t5xxl, each file once; got clip_l.safe"):
        DualCLIPLoader("clip_l.safetensors", "clip_l.safetensors", "flux")
    with pytest.raises(CheckpointError, match=r"type sdxl takes clip_g \+ clip_l, each file once"):
        DualCLIPLoader("clip_l.safetensors", "t5xxl_fp16.safetensors", "sdxl")


@pytest.mark.parametrize(("family", "dtype", "cfg"), [("sd35_large", "fp16", 4.0), ("flux_schnell", "fp8", 1.0)])
def test_an_all_in_one_checkpoint_runs_through_the_checkpoint_loader(
    folders: Folders, family: str, dtype: str, cfg: float
) -> None:
    write_tiny_file(folders.models / "checkpoints" / "all-in-one.safetensors", family, "checkpoint", dtype)
    model, clip, vae = CheckpointLoaderSimple("all-in-one.safetensors")
    expected = "flux" if family.startswith("flux") else "sd3"
    assert model.family.value == clip.family == expected
    positive, negative = CLIPTextEncode("a red fox", clip), CLIPTextEncode("blurry", clip)
    latent = KSampler(model, 3, 2, cfg, "euler", "simple", positive, negative, EmptySD3LatentImage(64, 64, 1), 1.0)
    image = VAEDecode(latent, vae)
    assert image.shape == (1, 64, 64, 3) and torch.isfinite(image).all()


def test_sd3_s_three_encoders_load_in_any_order_and_empty_t5_adds_no_tokens_unless_padded(folders: Folders) -> None:
    for part in ("clip_l", "clip_g", "t5xxl"):
        write_tiny_file(folders.models / "text_encoders" / f"{part}.safetensors", "sd3", part)
    clip = TripleCLIPLoader("t5xxl.safetensors", "clip_l.safetensors", "clip_g.safetensors")
    ((none, _),) = CLIPTextEncodeSD3(clip, "a fox", "a fox", "", "none")
    ((padded, _),) = CLIPTextEncodeSD3(clip, "a fox", "a fox", "", "empty_prompt")
    ((full, options),) = CLIPTextEncodeSD3(clip, "a fox", "a fox", "a fox in the snow", "none")
    assert none.shape == (1, 77, 4096) and padded.shape == full.shape == (1, 154, 4096)
    assert torch.equal(none, padded[:, :77]) and options["pooled_output"].shape == (1, 2048)


@pytest.mark.parametrize("layout", ["comfyui", "kohya"])
def test_a_flux_lora_patches_the_transformer_in_comfyui_s_and_kohya_s_layouts(
    flux_split_files: Folders, layout: str, caplog
) -> None:
    tensors = tiny_file_tensors("flux_dev", "lora")
    if layout == "kohya":
        tensors = {_kohya_key(key): value for key, value in tensors.items()}
    (flux_split_files.models / "loras").mkdir(exist_ok=True)
    save_file(tensors, str(flux_split_files.models / "loras" / "flux-style.safetensors"))
    model = UNETLoader("flux1-dev.safetensors", "default")
    with caplog.at_level("WARNING"):
        patched = LoraLoaderModelOnly(model, "flux-style.safetensors", 0.8)
    assert caplog.text == ""  # every key matched
    stem = "diffusion_model.double_blocks.0.img_attn.qkv"
    up, down, alpha = (tensors[_key(layout, stem, part)] for part in ("lora_up.weight", "lora_down.weight", "alpha"))
    weights = patched._patched.weights()
    base = model.unet.double_blocks[0].img_attn.qkv.weight.float()
    expected = base + 0.8 * float(alpha) / down.shape[0] * (up.float() @ down.float())
    torch.testing.assert_close(
        weights["double_blocks.0.img_attn.qkv.weight"],
        expected.to(weights["double_blocks.0.img_attn.qkv.weight"].dtype),
    )
    latent = EmptySD3LatentImage(32, 32, 1)
    positive = CLIPTextEncode("a fox", DualCLIPLoader("clip_l.safetensors", "t5xxl_fp16.safetensors", "flux"))
    plain = KSampler(model, 1, 1, 1.0, "euler", "simple", positive, positive, latent, 1.0)["samples"]
    styled = KSampler(patched, 1, 1, 1.0, "euler", "simple", positive, positive, latent, 1.0)["samples"]
    assert not torch.equal(plain, styled)


def _kohya_key(key: str) -> str:
    """``diffusion_model.double_blocks.0.img_attn.qkv.lora_up.weight`` as kohya's trainer names it."""
    stem, part = key.removeprefix("diffusion_model.").split(".lora_") if ".lora_" in key else key.rsplit(".", 1)
    part = f"lora_{part}" if ".lora_" in key else part
    return f"lora_unet_{stem.removeprefix('diffusion_model.').replace('.', '_')}.{part}"


def _key(layout: str, stem: str, part: str) -> str:
    key = f"{stem}.{part}"
    return key if layout == "comfyui" else _kohya_key(key)


def test_flux_kontext_image_scale_picks_the_kontext_size_of_the_closest_aspect_ratio() -> None:
    image = torch.rand(1, 300, 400, 3)
    assert FluxKontextImageScale(image).shape == (1, 880, 1184, 3)  # 4:3 -> 1184 x 880 (1.345)
    assert FluxKontextImageScale(torch.rand(2, 64, 64, 3)).shape == (2, 1024, 1024, 3)


def test_reference_latents_chain_and_reach_a_kontext_model_in_its_latent_space(files) -> None:
    model = UNETLoader("flux-dev.safetensors", "default")
    first, second = {"samples": torch.randn(1, 16, 4, 6)}, {"samples": torch.randn(1, 16, 6, 4)}
    positive = ReferenceLatent(ReferenceLatent(_conditioning(0), first), second)
    assert ReferenceLatent(positive, None) is positive
    assert [r.shape for r in positive[0][1]["reference_latents"]] == [(1, 16, 4, 6), (1, 16, 6, 4)]
    latent = EmptySD3LatentImage(48, 64, 1)
    got = KSampler(model, 5, 2, 1.0, "euler", "simple", positive, positive, latent, 1.0)["samples"]
    reference = files["flux-dev.safetensors"].half().float().eval()
    context, options = positive[0]
    refs = [FLUX_LATENT.to_model(r["samples"]) for r in (first, second)]
    with torch.no_grad():
        expected = _flow_euler(
            lambda x, sigma: reference(
                x, sigma, context, options["pooled_output"], torch.full((1,), DEFAULT_GUIDANCE), ref_latents=refs
            ),
            FluxFlow(1.15), FLUX_LATENT, latent["samples"], 5, 2,
        )  # fmt: skip
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_a_reference_latent_on_a_model_that_takes_none_is_named(files) -> None:
    model = UNETLoader("sd3.safetensors", "default")
    positive = ReferenceLatent(_conditioning(0), {"samples": torch.randn(1, 16, 4, 4)})
    with pytest.raises(ValueError, match="takes no reference latents: ReferenceLatent is for edit models"):
        KSampler(model, 0, 1, 1.0, "euler", "simple", positive, positive, EmptySD3LatentImage(32, 32, 1), 1.0)


def test_flux_fill_inpaints_with_its_packed_mask_through_inpaint_model_conditioning(folders: Folders) -> None:
    torch.manual_seed(2)
    fill = FluxTransformer(
        FluxConfig(hidden_size=128, num_heads=1, depth=1, depth_single_blocks=1, context_dim=CONTEXT, vec_dim=POOLED,
                   in_channels=384)
    )  # fmt: skip
    _write(fill, folders.models / "diffusion_models" / "flux1-fill-dev.safetensors")
    write_tiny_file(folders.models / "vae" / "ae.safetensors", "flux_dev", "vae")
    model, vae = UNETLoader("flux1-fill-dev.safetensors", "default"), VAELoader("ae.safetensors")
    assert model.concat_builder is fill_channels
    pixels = torch.rand(1, 64, 64, 3)
    mask = torch.zeros(1, 64, 64)
    mask[:, 16:48, 16:48] = 1.0
    positive, negative, latent = InpaintModelConditioning(_conditioning(0), _conditioning(1), vae, pixels, mask)
    result = KSampler(model, 1, 2, 1.0, "euler", "simple", positive, negative, latent, 1.0)["samples"]
    assert result.shape == latent["samples"].shape and torch.isfinite(result).all()
    outside = torch.ones(1, 1, 8, 8, dtype=torch.bool)
    outside[..., 2:6, 2:6] = False
    # Sampling changes only the masked area (the latent keeps the picture elsewhere).
    assert torch.allclose(result * outside, latent["samples"] * outside, atol=1e-5)
    assert not torch.allclose(result, latent["samples"], atol=1e-3)


def test_flux_canny_takes_the_control_picture_s_latent_through_instruct_pix_to_pix_conditioning(
    folders: Folders,
) -> None:
    torch.manual_seed(3)
    canny = FluxTransformer(
        FluxConfig(hidden_size=128, num_heads=1, depth=1, depth_single_blocks=1, context_dim=CONTEXT, vec_dim=POOLED,
                   in_channels=128)
    )  # fmt: skip
    _write(canny, folders.models / "diffusion_models" / "flux1-canny-dev.safetensors")
    write_tiny_file(folders.models / "vae" / "ae.safetensors", "flux_dev", "vae")
    model, vae = UNETLoader("flux1-canny-dev.safetensors", "default"), VAELoader("ae.safetensors")
    edges = torch.rand(1, 70, 60, 3)  # cropped to 64 x 56 before encoding, as ComfyUI crops
    positive, negative, latent = InstructPixToPixConditioning(_conditioning(0), _conditioning(1), vae, edges)
    assert latent["samples"].shape == (1, 16, 8, 7) and not latent["samples"].any()
    control = positive[0][1]["concat_latent_image"]
    got = KSampler(model, 4, 2, 1.0, "euler", "simple", positive, negative, latent, 1.0)["samples"]
    reference = canny.half().float().eval()
    context, options = positive[0]
    with torch.no_grad():
        expected = _flow_euler(
            lambda x, sigma: reference(
                torch.cat([x, FLUX_LATENT.to_model(control)], dim=1), sigma, context, options["pooled_output"],
                torch.full((1,), DEFAULT_GUIDANCE),
            ),
            FluxFlow(1.15), FLUX_LATENT, latent["samples"], 4, 2,
        )  # fmt: skip
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_a_dual_clip_loader_on_the_cpu_encodes_what_the_default_device_encodes(flux_split_files: Folders) -> None:
    default = DualCLIPLoader("clip_l.safetensors", "t5xxl_fp16.safetensors", "flux")
    on_cpu = DualCLIPLoader("clip_l.safetensors", "t5xxl_fp16.safetensors", "flux", "cpu")
    assert on_cpu.on_cpu and not default.on_cpu
    ((cond, options),) = CLIPTextEncode("a fox", on_cpu)
    ((expected, expected_options),) = CLIPTextEncode("a fox", default)
    assert torch.equal(cond, expected) and torch.equal(options["pooled_output"], expected_options["pooled_output"])
    assert next(on_cpu.stack.t5.parameters()).device.type == "cpu"


def test_sd3_from_its_two_clips_alone_attends_to_the_clip_pair_without_t5_tokens(folders: Folders) -> None:
    for part in ("clip_l", "clip_g"):
        write_tiny_file(folders.models / "text_encoders" / f"{part}.safetensors", "sd3", part)
    clip = DualCLIPLoader("clip_g.safetensors", "clip_l.safetensors", "sd3")
    ((cond, options),) = CLIPTextEncode("a fox", clip)
    assert clip.family == "sd3" and clip.stack.t5 is None
    assert cond.shape == (1, 77, 4096) and options["pooled_output"].shape == (1, 2048)


def test_sd3_runs_from_t5_alone_through_the_single_clip_loader(folders: Folders) -> None:
    write_tiny_file(folders.models / "text_encoders" / "t5xxl.safetensors", "sd3", "t5xxl")
    write_tiny_file(folders.models / "diffusion_models" / "sd3_medium.safetensors", "sd3", "diffusion_model")
    clip = CLIPLoader("t5xxl.safetensors", "sd3")
    ((cond, options),) = positive = CLIPTextEncode("a fox", clip)
    assert clip.family == "sd3" and not clip.stack.roles
    # LoRA files number SD3's CLIPs te1 (L) and te2 (G); both slots stand, holding nothing to patch.
    assert len(clip.encoders) == 2 and not any(list(encoder.parameters()) for encoder in clip.encoders)
    assert cond.shape == (1, 77, 4096) and not options["pooled_output"].any()
    with pytest.raises(ValueError, match="no CLIP encoder, so it has no CLIP layer to stop at"):
        clip.with_clip_skip(-2)
    model = UNETLoader("sd3_medium.safetensors", "default")
    latent = KSampler(model, 0, 2, 1.0, "euler", "simple", positive, positive, EmptySD3LatentImage(64, 64, 1), 1.0)
    assert torch.isfinite(latent["samples"]).all()


def test_t5_tokenizer_options_replace_the_family_s_padding_and_keep_the_prompt_s_states(
    flux_split_files: Folders,
) -> None:
    clip = DualCLIPLoader("clip_l.safetensors", "t5xxl_fp16.safetensors", "flux")
    ((default, _),) = CLIPTextEncode("a fox", clip)
    ((one_pad, options),) = CLIPTextEncode("a fox", T5TokenizerOptions(clip, 1, 0))
    prompt_length = len(clip.stack.tokenizer.encode("a fox"))  # the pieces and the end token
    assert default.shape[1] == T5_MIN_LENGTH and one_pad.shape[1] == prompt_length + 1
    ((padded, _),) = CLIPTextEncode("a fox", T5TokenizerOptions(clip, 0, 300))
    assert padded.shape[1] == 300
    # Nothing is masked, so the prompt's states depend on the padding that follows; the pooled CLIP-L does not.
    assert not torch.allclose(one_pad[:, :prompt_length], default[:, :prompt_length])
    assert torch.equal(options["pooled_output"], CLIPTextEncode("a fox", clip)[0][1]["pooled_output"])


def test_t5_tokenizer_options_leave_a_clip_without_t5_as_it_is(folders: Folders) -> None:
    for part in ("clip_l", "clip_g"):
        write_tiny_file(folders.models / "text_encoders" / f"{part}.safetensors", "sd3", part)
    clip = DualCLIPLoader("clip_l.safetensors", "clip_g.safetensors", "sdxl")
    assert T5TokenizerOptions(clip, 1, 0) is clip
