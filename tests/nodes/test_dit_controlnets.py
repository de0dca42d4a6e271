"""SD3.5 and FLUX.1 ControlNets through the nodes: KSampler with them equals a hand-written flow Euler loop that
calls the transformer with the ControlNets' residuals at the steps inside their windows, the hint prepared as
ComfyUI prepares it (fitted to 8x the latent; for SD3.5 and InstantX preprocessed, VAE-encoded and brought into the
family's latent space; XLabs' the picture itself)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from diffusion.controlnet import fit_hint
from diffusion.flow_matching import FlowPrediction
from diffusion.flux_controlnet import BlockResiduals, tiny_flux_controlnet_tensors
from diffusion.samplers.euler import sample_euler
from diffusion.sampling import prepare_noise
from diffusion.schedules import compute_sigmas
from diffusion.sd3_controlnet import SD3ControlType, prepare_hint_image, tiny_sd3_controlnet_tensors
from diffusion.tiny_parts import tiny_flux_config, tiny_mmdit_config, write_tiny_file
from diffusion.vae import FLUX_LATENT, SD3_LATENT, LatentFormat
from nodes.controlnet_handles import ControlNetHandle, ControlNetMismatchError, ControlNetNeedsVaeError
from nodes.controlnets import (
    ControlNetApply,
    ControlNetApplyAdvanced,
    ControlNetApplySD3,
    ControlNetInpaintingAliMamaApply,
    ControlNetLoader,
    SetUnionControlNetType,
)
from nodes.folders import Folders
from nodes.latent import EmptySD3LatentImage
from nodes.loaders import CheckpointLoaderSimple, UNETLoader, VAELoader
from nodes.model_handles import DEFAULT_GUIDANCE, ModelHandle
from nodes.runtime import Runtime
from nodes.sampling import KSampler
from nodes.vae_handles import VaeHandle
from tests.nodes.tiny_models import tiny_checkpoint

SEED, STEPS, CFG = 5, 3, 3.0
WIDTH, HEIGHT = 64, 48  # an 8x6 latent


def write_model(folders: Folders, family: str) -> tuple[ModelHandle, VaeHandle]:
    write_tiny_file(folders.models / "diffusion_models" / f"{family}.safetensors", family, "diffusion_model")
    write_tiny_file(folders.models / "vae" / f"{family}_vae.safetensors", family, "vae")
    return UNETLoader(f"{family}.safetensors", "default"), VAELoader(f"{family}_vae.safetensors")


def write_control(folders: Folders, name: str, tensors: dict[str, torch.Tensor]) -> ControlNetHandle:
    path = folders.models / "controlnet" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return ControlNetLoader(name)


def conditioning(model: ModelHandle, seed: int) -> list:
    generator = torch.Generator().manual_seed(seed)
    assert model.pooled_dim is not None
    pooled = torch.randn(1, model.pooled_dim, generator=generator)
    return [[torch.randn(1, 5, 4096, generator=generator), {"pooled_output": pooled}]]


def picture(seed: int = 0, size: tuple[int, int] = (40, 56)) -> torch.Tensor:
    return torch.rand(1, *size, 3, generator=torch.Generator().manual_seed(seed))


def latent_hint(vae: VaeHandle, latent_format: LatentFormat, pixels: torch.Tensor) -> torch.Tensor:
    """ComfyUI's ``vae.encode`` then ``latent_format.process_in`` of a hint picture ``[B, 3, H, W]``."""
    return latent_format.to_model(vae.encode(pixels.movedim(1, -1)))


#: A ControlNet as the hand loop runs it: (module, hint for a latent of (h, w), strength, start, end, extra kwargs).
Control = tuple[torch.nn.Module, Callable[[int, int], torch.Tensor], float, float, float, dict[str, Any]]


def by_hand(
    model: ModelHandle,
    flow: FlowPrediction,
    positive: list,
    negative: list,
    controls: list[Control],
    guidance: float | None = None,
) -> tuple[torch.Tensor, int]:
    """CFG flow Euler written out, both sides calling the transformer with the summed residuals of ``controls``
    (each at the steps whose sigma lies in its window); returns the latent and the steps controlled."""
    transformer = model.unet
    latent_format = model.latent_format
    sigmas = compute_sigmas(flow, "simple", STEPS)
    start = latent_format.to_model(torch.zeros(1, 16, HEIGHT // 8, WIDTH // 8))
    x = flow.noise_scaling(sigmas[0], prepare_noise(start, SEED), start)
    controlled = []
    extra = {} if guidance is None else {"guidance": torch.full((1,), guidance)}

    def side(x: torch.Tensor, sigma: torch.Tensor, cond: list) -> torch.Tensor:
        context, y = cond[0][0], cond[0][1]["pooled_output"]
        total: BlockResiduals | None = None
        for module, hint, strength, begin, end, kwargs in controls:
            if flow.percent_to_sigma(end) <= float(sigma[0]) <= flow.percent_to_sigma(begin):
                args = (x, hint(*x.shape[-2:]), sigma, context, y, *extra.values())
                own = module(*args, transformer=transformer, **kwargs).scaled(strength)
                total = own if total is None else own + total
        controlled.append(total is not None)
        return transformer(x, sigma, context, y, *extra.values(), control=total)

    def guided(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        cond, uncond = side(x, sigma, positive), side(x, sigma, negative)
        return uncond + (cond - uncond) * CFG

    with torch.no_grad():
        x = sample_euler(lambda x, sigma: x - guided(x, sigma) * sigma.reshape(-1, 1, 1, 1), x, sigmas, disable=True)
    return latent_format.from_model(flow.inverse_noise_scaling(sigmas[-1], x)), sum(controlled) // 2


def ksample(model: ModelHandle, positive: list, negative: list) -> torch.Tensor:
    latent = EmptySD3LatentImage(WIDTH, HEIGHT, 1)
    return KSampler(model, SEED, STEPS, CFG, "euler", "simple", positive, negative, latent, 1.0)["samples"]


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to float rounding: Loom batches both sides into one call, the hand loop calls per side."""
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


# ---------------------------------------------------------------- SD3.5


@pytest.fixture
def sd35(folders: Folders) -> tuple[ModelHandle, VaeHandle]:
    return write_model(folders, "sd35_large")


def canny_file(folders: Folders, name: str = "sd3.5_large_controlnet_canny.safetensors", seed: int = 0) -> str:
    write_tiny_file(folders.models / "controlnet" / name, "sd35_large", "controlnet", seed=seed)
    return name


def sd3_hint(vae: VaeHandle, image: torch.Tensor, control_type: SD3ControlType) -> Callable[[int, int], torch.Tensor]:
    def hint(height: int, width: int) -> torch.Tensor:
        fitted = fit_hint(image.movedim(-1, 1), 8 * height, 8 * width)
        return latent_hint(vae, SD3_LATENT, prepare_hint_image(fitted, control_type))

    return hint


def test_ksampler_with_an_sd35_canny_controlnet_equals_the_hand_written_loop(sd35, folders: Folders) -> None:
    model, vae = sd35
    positive, negative = conditioning(model, 0), conditioning(model, 1)
    control_net = ControlNetLoader(canny_file(folders))
    assert control_net.module.config.control_type == "canny"
    image = picture()
    pos, neg = ControlNetApplyAdvanced(positive, negative, control_net, image, 0.7, 0.2, 0.8, vae)
    control: Control = (control_net.module, sd3_hint(vae, image, "canny"), 0.7, 0.2, 0.8, {})
    expected, controlled = by_hand(model, model.sampling, positive, negative, [control])
    assert 0 < controlled < STEPS  # the window takes some steps and leaves others
    got = ksample(model, pos, neg)
    close(got, expected)
    assert not torch.allclose(got, ksample(model, positive, negative), atol=1e-3)


def test_apply_controlnet_with_vae_is_the_advanced_node_with_the_vae_required(sd35, folders: Folders) -> None:
    model, vae = sd35
    positive, negative = conditioning(model, 0), conditioning(model, 1)
    control_net = ControlNetLoader(canny_file(folders))
    image = picture()
    advanced = ControlNetApplyAdvanced(positive, negative, control_net, image, 1.2, 0.0, 1.0, vae)
    sd3 = ControlNetApplySD3(positive, negative, control_net, vae, image, 1.2, 0.0, 1.0)
    assert sd3[0][0][1]["control"] is sd3[1][0][1]["control"]
    close(ksample(model, *sd3), ksample(model, *advanced))
    assert ControlNetApplySD3(positive, negative, control_net, vae, image, 0.0, 0.0, 1.0) == (positive, negative)


def test_chained_sd35_controlnets_add_their_residuals(sd35, folders: Folders) -> None:
    model, vae = sd35
    positive, negative = conditioning(model, 0), conditioning(model, 1)
    canny = ControlNetLoader(canny_file(folders))
    depth_tensors = tiny_sd3_controlnet_tensors(tiny_mmdit_config("sd35_large"), seed=3, control_type="depth")
    depth = write_control(folders, "sd3.5_large_controlnet_depth.safetensors", depth_tensors)
    one, two = picture(1), picture(2, (64, 64))
    pos, neg = ControlNetApplyAdvanced(positive, negative, canny, one, 0.6, 0.0, 1.0, vae)
    pos, neg = ControlNetApplyAdvanced(pos, neg, depth, two, 1.1, 0.0, 0.5, vae)
    chain: list[Control] = [
        (canny.module, sd3_hint(vae, one, "canny"), 0.6, 0.0, 1.0, {}),
        (depth.module, sd3_hint(vae, two, "depth"), 1.1, 0.0, 0.5, {}),
    ]
    expected, _ = by_hand(model, model.sampling, positive, negative, chain)
    close(ksample(model, pos, neg), expected)


def test_the_vae_encodes_each_hint_once_per_sampling(sd35, folders: Folders, monkeypatch: pytest.MonkeyPatch) -> None:
    model, vae = sd35
    positive, negative = conditioning(model, 0), conditioning(model, 1)
    pos, neg = ControlNetApplyAdvanced(
        positive, negative, ControlNetLoader(canny_file(folders)), picture(), 1, 0, 1, vae
    )
    encoded: list[tuple[int, ...]] = []
    encode = VaeHandle.encode

    def counting(self: VaeHandle, image: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        encoded.append(tuple(image.shape))
        return encode(self, image, *args, **kwargs)

    monkeypatch.setattr(VaeHandle, "encode", counting)
    ksample(model, pos, neg)
    assert encoded == [(1, HEIGHT, WIDTH, 3)]  # both sides, every step: one encoding at 8x the latent


def test_the_controlnet_sits_on_the_device_beside_the_transformer(
    sd35, folders: Folders, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, vae = sd35
    positive, negative = conditioning(model, 0), conditioning(model, 1)
    control_net = ControlNetLoader(canny_file(folders))
    pos, neg = ControlNetApplyAdvanced(positive, negative, control_net, picture(), 1.0, 0.0, 1.0, vae)
    placed: list[tuple[Any, ...]] = []
    use = runtime.memory.use

    def recording_use(*models: Any, **options: Any) -> None:
        placed.append(models)
        use(*models, **options)

    monkeypatch.setattr(runtime.memory, "use", recording_use)
    ksample(model, pos, neg)
    assert (model.unet, control_net.module) in placed
    assert placed.index((vae.model,)) < placed.index((model.unet, control_net.module))  # encoded before placing


# ---------------------------------------------------------------- FLUX.1


@pytest.fixture
def flux(folders: Folders) -> tuple[ModelHandle, VaeHandle]:
    return write_model(folders, "flux_dev")


def instantx_hint(vae: VaeHandle, image: torch.Tensor) -> Callable[[int, int], torch.Tensor]:
    return lambda height, width: latent_hint(vae, FLUX_LATENT, fit_hint(image.movedim(-1, 1), 8 * height, 8 * width))


def xlabs_hint(image: torch.Tensor) -> Callable[[int, int], torch.Tensor]:
    return lambda height, width: fit_hint(image.movedim(-1, 1), 8 * height, 8 * width)


def xlabs_file(folders: Folders, seed: int = 1) -> ControlNetHandle:
    tensors = tiny_flux_controlnet_tensors(tiny_flux_config("flux_dev"), seed, style="xlabs")
    return write_control(folders, "flux-canny-controlnet-v3.safetensors", tensors)


def test_ksampler_with_an_instantx_flux_controlnet_equals_the_hand_written_loop(flux, folders: Folders) -> None:
    model, vae = flux
    positive, negative = conditioning(model, 0), conditioning(model, 1)
    write_tiny_file(folders.models / "controlnet" / "instantx_canny.safetensors", "flux_dev", "controlnet")
    control_net = ControlNetLoader("instantx_canny.safetensors")
    image = picture()
    pos, neg = ControlNetApplyAdvanced(positive, negative, control_net, image, 0.8, 0.0, 0.6, vae)
    control: Control = (control_net.module, instantx_hint(vae, image), 0.8, 0.0, 0.6, {})
    expected, controlled = by_hand(model, model.sampling, positive, negative, [control], DEFAULT_GUIDANCE)
    assert 0 < controlled < STEPS
    got = ksample(model, pos, neg)
    close(got, expected)
    assert not torch.allclose(got, ksample(model, positive, negative), atol=1e-3)


def alimama_file(folders: Folders) -> ControlNetHandle:
    """An InstantX-layout FLUX ControlNet whose hint is the latent plus a mask channel (17 x 2 x 2 features), as
    AliMama's inpainting ControlNets are."""
    tensors = tiny_flux_controlnet_tensors(tiny_flux_config("flux_dev"), 2)
    embedder = tensors["controlnet_x_embedder.weight"]
    generator = torch.Generator().manual_seed(4)
    tensors["controlnet_x_embedder.weight"] = torch.randn(embedder.shape[0], 17 * 4, generator=generator) * 0.05
    return write_control(folders, "FLUX.1-dev-Controlnet-Inpainting-Beta.safetensors", tensors)


def test_the_alimama_node_hands_an_inpainting_controlnet_the_blacked_out_picture_and_the_kept_mask(
    flux, folders: Folders
) -> None:
    model, vae = flux
    positive, negative = conditioning(model, 0), conditioning(model, 1)
    control_net = alimama_file(folders)
    assert control_net.takes_mask and control_net.hint_latent_channels == 16
    image = picture(size=(48, 64))
    mask = torch.zeros(1, 48, 64)
    mask[:, 8:40, 16:48] = 1.0  # repaint the middle
    pos, neg = ControlNetInpaintingAliMamaApply(positive, negative, control_net, vae, image, mask, 0.9, 0.0, 1.0)
    kept = 1.0 - mask.unsqueeze(1)
    blacked = image.movedim(-1, 1) * kept

    def hint(height: int, width: int) -> torch.Tensor:
        latent = latent_hint(vae, FLUX_LATENT, fit_hint(blacked, 8 * height, 8 * width))
        return torch.cat([latent, fit_hint(kept, height, width)], dim=1)

    control: Control = (control_net.module, hint, 0.9, 0.0, 1.0, {})
    expected, _ = by_hand(model, model.sampling, positive, negative, [control], DEFAULT_GUIDANCE)
    close(ksample(model, pos, neg), expected)


def test_the_alimama_node_applies_a_controlnet_without_a_mask_channel_as_apply_controlnet_does(
    flux, folders: Folders
) -> None:
    model, vae = flux
    positive, negative = conditioning(model, 0), conditioning(model, 1)
    write_tiny_file(folders.models / "controlnet" / "instantx_canny.safetensors", "flux_dev", "controlnet")
    control_net = ControlNetLoader("instantx_canny.safetensors")
    image, mask = picture(), torch.ones(1, 40, 56)
    inpainting = ControlNetInpaintingAliMamaApply(positive, negative, control_net, vae, image, mask, 0.8, 0.0, 0.6)
    advanced = ControlNetApplyAdvanced(positive, negative, control_net, image, 0.8, 0.0, 0.6, vae)
    assert torch.equal(ksample(model, *inpainting), ksample(model, *advanced))
    with pytest.raises(ControlNetNeedsVaeError, match="ControlNetInpaintingAliMamaApply"):
        ControlNetInpaintingAliMamaApply(positive, negative, control_net, None, image, mask, 0.8, 0.0, 0.6)


def test_ksampler_with_an_xlabs_flux_controlnet_takes_the_picture_and_needs_no_vae(flux, folders: Folders) -> None:
    model, _ = flux
    positive, negative = conditioning(model, 0), conditioning(model, 1)
    control_net = xlabs_file(folders)
    image = picture(3)
    pos, neg = ControlNetApplyAdvanced(positive, negative, control_net, image, 1.3, 0.0, 1.0)
    control: Control = (control_net.module, xlabs_hint(image), 1.3, 0.0, 1.0, {})
    expected, controlled = by_hand(model, model.sampling, positive, negative, [control], DEFAULT_GUIDANCE)
    assert controlled == STEPS
    got = ksample(model, pos, neg)
    close(got, expected)
    assert not torch.allclose(got, ksample(model, positive, negative), atol=1e-3)


def test_chained_instantx_and_xlabs_controlnets_add_their_residuals(flux, folders: Folders) -> None:
    model, vae = flux
    positive, negative = conditioning(model, 0), conditioning(model, 1)
    write_tiny_file(folders.models / "controlnet" / "instantx.safetensors", "flux_dev", "controlnet")
    instantx, xlabs = ControlNetLoader("instantx.safetensors"), xlabs_file(folders)
    one, two = picture(1), picture(2, (64, 64))
    pos, neg = ControlNetApplyAdvanced(positive, negative, instantx, one, 0.9, 0.0, 1.0, vae)
    pos, neg = ControlNetApplyAdvanced(pos, neg, xlabs, two, 0.5, 0.0, 1.0)
    chain: list[Control] = [
        (instantx.module, instantx_hint(vae, one), 0.9, 0.0, 1.0, {}),
        (xlabs.module, xlabs_hint(two), 0.5, 0.0, 1.0, {}),
    ]
    expected, _ = by_hand(model, model.sampling, positive, negative, chain, DEFAULT_GUIDANCE)
    close(ksample(model, pos, neg), expected)


def test_the_union_type_is_the_mode_of_an_instantx_union_controlnet(flux, folders: Folders) -> None:
    model, vae = flux
    positive, negative = conditioning(model, 0), conditioning(model, 1)
    tensors = tiny_flux_controlnet_tensors(tiny_flux_config("flux_dev"), 2, union_modes=4)
    union = write_control(folders, "flux_union.safetensors", tensors)
    depth = SetUnionControlNetType(union, "depth")
    assert (depth.union_type, SetUnionControlNetType(depth, "auto").union_type) == (1, None)
    with pytest.raises(ValueError, match=r"'flux_union.safetensors' knows 4 union modes, and 'tile' is mode 6"):
        SetUnionControlNetType(union, "tile")
    image = picture()
    pos, neg = ControlNetApplyAdvanced(positive, negative, depth, image, 1.0, 0.0, 1.0, vae)
    control: Control = (union.module, instantx_hint(vae, image), 1.0, 0.0, 1.0, {"mode": 1})
    expected, _ = by_hand(model, model.sampling, positive, negative, [control], DEFAULT_GUIDANCE)
    got = ksample(model, pos, neg)
    close(got, expected)
    auto = ControlNetApplyAdvanced(positive, negative, union, image, 1.0, 0.0, 1.0, vae)
    assert not torch.allclose(got, ksample(model, *auto), atol=1e-3)


# ---------------------------------------------------------------- errors


def test_a_latent_controlnet_without_a_vae_is_refused_naming_node_input_and_why(sd35, folders: Folders) -> None:
    model, _ = sd35
    positive, negative = conditioning(model, 0), conditioning(model, 1)
    control_net = ControlNetLoader(canny_file(folders))
    with pytest.raises(ControlNetNeedsVaeError) as raised:
        ControlNetApplyAdvanced(positive, negative, control_net, picture(), 1.0, 0.0, 1.0, None)
    assert (raised.value.node, raised.value.input) == ("ControlNetApplyAdvanced", "vae")
    assert str(raised.value).startswith(
        "ControlNetApplyAdvanced: ControlNet 'sd3.5_large_controlnet_canny.safetensors' takes the control image as "
        "a VAE latent"
    )
    assert "vae input is not connected" in str(raised.value)
    with pytest.raises(ControlNetNeedsVaeError, match=r"^ControlNetApply: .* this node has no vae input: use Apply"):
        ControlNetApply(positive, control_net, picture(), 1.0)


def test_a_vae_of_another_family_is_refused_naming_the_latent_widths(sd35, folders: Folders) -> None:
    model, _ = sd35
    tiny_checkpoint(folders.models, "sd15.safetensors")
    _, _, sd15_vae = CheckpointLoaderSimple("sd15.safetensors")
    control_net = ControlNetLoader(canny_file(folders))
    positive = conditioning(model, 0)
    with pytest.raises(ControlNetNeedsVaeError, match=r"^ControlNetApplySD3: .* 16-channel VAE latent, and the VAE "):
        ControlNetApplySD3(positive, positive, control_net, sd15_vae, picture(), 1.0, 0.0, 1.0)


def test_an_sd35_controlnet_on_flux_is_refused_naming_file_family_and_why(flux, sd35, folders: Folders) -> None:
    model, vae = flux
    _, sd3_vae = sd35
    positive, negative = conditioning(model, 0), conditioning(model, 1)
    control_net = ControlNetLoader(canny_file(folders))
    pos, neg = ControlNetApplyAdvanced(positive, negative, control_net, picture(), 1.0, 0.0, 1.0, sd3_vae)
    with pytest.raises(
        ControlNetMismatchError,
        match=r"'sd3.5_large_controlnet_canny.safetensors' cannot drive this flux model: it is an SD3.5 ControlNet, "
        r"made for an SD3 MMDiT \(a FluxTransformer is no SD3 MMDiT\)",
    ):
        ksample(model, pos, neg)


def test_a_flux_controlnet_on_an_sd_unet_or_on_sd35_is_refused(sd35, folders: Folders) -> None:
    sd3_model, _ = sd35
    control_net = xlabs_file(folders)
    tiny_checkpoint(folders.models, "sd15.safetensors")
    sd15, _, _ = CheckpointLoaderSimple("sd15.safetensors")
    sd15_cond = [[torch.zeros(1, 77, sd15.unet.config.context_dim), {}]]
    pos, neg = ControlNetApplyAdvanced(sd15_cond, sd15_cond, control_net, picture(), 1.0, 0.0, 1.0)
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    with pytest.raises(
        ControlNetMismatchError, match=r"cannot drive this sd15 model: it is a FLUX.1 ControlNet \(XLabs"
    ):
        KSampler(sd15, 0, 1, 1.0, "euler", "normal", pos, neg, latent, 1.0)
    pos, neg = ControlNetApplyAdvanced(*[conditioning(sd3_model, 0)] * 2, control_net, picture(), 1.0, 0.0, 1.0)
    with pytest.raises(ControlNetMismatchError, match=r"this sd3 model: .*a MMDiT is no FLUX.1 transformer"):
        ksample(sd3_model, pos, neg)


def test_the_loader_tells_the_transformer_controlnets_apart(folders: Folders) -> None:
    assert ControlNetLoader(canny_file(folders)).needs_vae
    write_tiny_file(folders.models / "controlnet" / "instantx.safetensors", "flux_dev", "controlnet")
    assert ControlNetLoader("instantx.safetensors").needs_vae
    xlabs = xlabs_file(folders)
    assert not xlabs.needs_vae and xlabs.hint_channels == 3
    assert Path(xlabs.path).name == "flux-canny-controlnet-v3.safetensors"
