"""FLUX ControlNets (InstantX and XLabs): their files, their residuals and where FLUX adds them, against diffusers.

InstantX files are in the layout of diffusers' `FluxControlNetModel`, so a random diffusers model's own state dict
is the file Loom loads. XLabs files are in Black Forest Labs' names; diffusers runs the same architecture as a
`FluxControlNetModel` with a 16-channel `input_hint_block` (its `ControlNetConditioningEmbedding` of four 16-wide
levels: XLabs' eight convolutions, indices 0, 2, ..., 14) on 2x2 patches, which holds a random Loom XLabs model's
weights renamed. The transformers are a random Loom FLUX and its diffusers twin (`tests.diffusion.test_flux`), with
five double and three single blocks, so that two ControlNet residuals must spread over them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, TypeVar

import pytest
import torch
from diffusers import FluxControlNetModel, FluxPipeline, FluxTransformer2DModel

from diffusion.flux import FluxConfig, FluxTransformer
from diffusion.flux_controlnet import (
    BlockResiduals,
    FluxControlNet,
    FluxControlNetConfig,
    flux_controlnet_style,
    load_flux_controlnet,
    original_to_instantx,
    spread_over_blocks,
    tiny_flux_controlnet_tensors,
)
from diffusion.tiny_parts import tiny_flux_config
from diffusion.unet_config import CheckpointLayoutError
from tests.diffusion.random_weights import original_state_dict
from tests.diffusion.test_flux import AXES, CONTEXT_DIM, VEC_DIM, diffusers_twin, random_flux

TOLERANCE = 1e-5
TRANSFORMER = FluxConfig(
    hidden_size=64,
    num_heads=2,
    depth=5,
    depth_single_blocks=3,
    context_dim=CONTEXT_DIM,
    vec_dim=VEC_DIM,
    axes_dim=AXES,
)
BLOCKS = replace(TRANSFORMER, depth=2, depth_single_blocks=2)  # the ControlNets' transformer part
MODES = 5


Module = TypeVar("Module", bound=torch.nn.Module)


def randomized(module: Module, seed: int) -> Module:
    """Zero layers and norm scales random too: zeros or ones there would hide a misplaced weight."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if name.endswith(("norm_q.weight", "norm_k.weight", "norm_added_q.weight", "norm_added_k.weight")):
                parameter.uniform_(0.5, 1.5)
            elif name.endswith(".scale"):
                parameter.uniform_(0.5, 1.5)
            elif name.startswith(("controlnet_", "pos_embed_input", "input_hint_block")):
                parameter.normal_(0.0, 0.1)
    return module.eval().requires_grad_(False)


def instantx_reference(union: bool) -> FluxControlNetModel:
    return randomized(
        FluxControlNetModel(
            in_channels=64,
            num_layers=BLOCKS.depth,
            num_single_layers=BLOCKS.depth_single_blocks,
            attention_head_dim=32,
            num_attention_heads=2,
            joint_attention_dim=CONTEXT_DIM,
            pooled_projection_dim=VEC_DIM,
            guidance_embeds=True,
            axes_dims_rope=list(AXES),
            num_mode=MODES if union else None,
        ),
        seed=11,
    )


XLABS = FluxControlNetConfig(replace(BLOCKS, depth_single_blocks=0), "xlabs")


def xlabs_to_diffusers(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """XLabs' keys as diffusers' port names them: the transformer part as InstantX's, the hint convolutions
    (0; 2 ... 12; 14) as `conv_in`, `blocks.0` ... `blocks.5`, `conv_out`."""
    hint = {k: v for k, v in weights.items() if k.startswith("input_hint_block.")}
    rest = {k: v for k, v in weights.items() if k not in hint}
    converted = original_to_instantx(rest, replace(XLABS, style="instantx"))
    for key, tensor in hint.items():
        _, index, param = key.split(".")
        conv = int(index) // 2
        name = "conv_in" if conv == 0 else "conv_out" if conv == 7 else f"blocks.{conv - 1}"
        converted[f"input_hint_block.{name}.{param}"] = tensor
    return converted


def xlabs_reference(model: FluxControlNet) -> FluxControlNetModel:
    reference = FluxControlNetModel(
        patch_size=2,
        in_channels=64,
        num_layers=XLABS.blocks.depth,
        num_single_layers=0,
        attention_head_dim=32,
        num_attention_heads=2,
        joint_attention_dim=CONTEXT_DIM,
        pooled_projection_dim=VEC_DIM,
        guidance_embeds=True,
        axes_dims_rope=list(AXES),
        conditioning_embedding_channels=16,
    )
    reference.load_state_dict(xlabs_to_diffusers(dict(model.state_dict())), strict=True)
    return reference.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def transformers() -> tuple[FluxTransformer, FluxTransformer2DModel]:
    model = random_flux(TRANSFORMER, seed=2)
    return model, diffusers_twin(original_state_dict(model), TRANSFORMER)


def inputs(height: int = 6, width: int = 10, batch: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return {
        "x": torch.randn(batch, 16, height, width, generator=g),
        "latent_hint": torch.randn(1, 16, height, width, generator=g),
        "image_hint": torch.rand(1, 3, 8 * height, 8 * width, generator=g),
        "sigmas": torch.linspace(0.4, 0.8, batch),
        "context": torch.randn(batch, 5, CONTEXT_DIM, generator=g),
        "y": torch.randn(batch, VEC_DIM, generator=g),
        "guidance": torch.linspace(3.0, 4.0, batch),
    }


def packed(latent: torch.Tensor) -> torch.Tensor:
    b, c, h, w = latent.shape
    return FluxPipeline._pack_latents(latent, b, c, h, w)


def ids(latent: torch.Tensor) -> dict[str, torch.Tensor]:
    _, _, h, w = latent.shape
    return {
        "img_ids": FluxPipeline._prepare_latent_image_ids(1, h // 2, w // 2, latent.device, latent.dtype),
        "txt_ids": torch.zeros(5, 3),
    }


def twin_with_residuals(twin: Any, case: dict[str, torch.Tensor], double: Any, **extra: Any) -> torch.Tensor:
    """diffusers' FLUX transformer on ``case`` with ControlNet residuals (``extra``: the single-block ones, or
    ``controlnet_blocks_repeat``), unpacked to a latent like Loom's output."""
    out = twin(
        hidden_states=packed(case["x"]),
        encoder_hidden_states=case["context"],
        pooled_projections=case["y"],
        timestep=case["sigmas"],
        guidance=case["guidance"],
        controlnet_block_samples=double,
        **extra,
        **ids(case["x"]),
    ).sample
    return FluxPipeline._unpack_latents(out, 48, 80, 8)


def run_reference(reference: FluxControlNetModel, hint: torch.Tensor, case: dict[str, torch.Tensor], **extra):
    out = reference(
        hidden_states=packed(case["x"]),
        controlnet_cond=hint,
        encoder_hidden_states=case["context"],
        pooled_projections=case["y"],
        timestep=case["sigmas"],
        guidance=case["guidance"],
        **ids(case["x"]),
        **extra,
    )
    return out.controlnet_block_samples, out.controlnet_single_block_samples or []


def run_controlnet(model: FluxControlNet, hint: torch.Tensor, case, transformer: FluxTransformer, **extra):
    return model(
        case["x"],
        hint,
        case["sigmas"],
        case["context"],
        case["y"],
        case["guidance"],
        transformer=transformer,
        **extra,
    )


def assert_close(actual: torch.Tensor | None, expected: torch.Tensor) -> None:
    assert actual is not None and actual.shape == expected.shape
    assert expected.abs().max() > 0.1  # a real signal
    assert (actual - expected).abs().max() <= TOLERANCE


# ---------------------------------------------------------------- InstantX


@pytest.mark.parametrize("union", [False, True], ids=["single-purpose", "union"])
def test_instantx_residuals_are_diffusers_stretched_over_the_blocks(transformers, union):
    flux, _ = transformers
    reference = instantx_reference(union)
    controlnet = load_flux_controlnet(reference.state_dict(), axes_dim=AXES)
    case = inputs()
    mode = {"mode": 3} if union else {}
    with torch.no_grad():
        residuals = run_controlnet(controlnet, case["latent_hint"], case, flux, **mode)
        hint = packed(case["latent_hint"].expand(2, -1, -1, -1))
        union_mode = {"controlnet_mode": torch.full((2, 1), 3)} if union else {}
        double, single = run_reference(reference, hint, case, **union_mode)
    # ceil(5 / 2) = 3 consecutive double blocks per residual, ceil(3 / 2) = 2 single blocks.
    assert len(residuals.double) == 5 and len(residuals.single) == 3
    for block, residual in enumerate(residuals.double):
        assert_close(residual, double[block // 3])
    for block, residual in enumerate(residuals.single):
        assert_close(residual, single[block // 2])


def test_flux_adds_double_and_single_residuals_to_the_image_tokens_as_diffusers_does(transformers):
    flux, twin = transformers
    reference = instantx_reference(union=False)
    controlnet = load_flux_controlnet(reference.state_dict(), axes_dim=AXES)
    case = inputs()
    with torch.no_grad():
        residuals = run_controlnet(controlnet, case["latent_hint"], case, flux)
        actual = flux(case["x"], case["sigmas"], case["context"], case["y"], case["guidance"], control=residuals)
        plain = flux(case["x"], case["sigmas"], case["context"], case["y"], case["guidance"])
        double, single = run_reference(reference, packed(case["latent_hint"].expand(2, -1, -1, -1)), case)
        expected = twin_with_residuals(twin, case, double, controlnet_single_block_samples=single)
    assert (actual - plain).abs().max() > 0.1
    assert_close(actual, expected)


def test_kontext_references_get_no_residual(transformers):
    flux, twin = transformers
    case = inputs()
    g = torch.Generator().manual_seed(9)
    reference_latent = torch.randn(1, 16, 4, 4, generator=g)
    reference_ids = FluxPipeline._prepare_latent_image_ids(1, 2, 2, reference_latent.device, reference_latent.dtype)
    reference_ids[:, 0] = 1
    residual = torch.randn(2, 15, 64, generator=g)
    with torch.no_grad():
        actual = flux(
            case["x"],
            case["sigmas"],
            case["context"],
            case["y"],
            case["guidance"],
            ref_latents=[reference_latent],
            control=BlockResiduals((residual,) + (None,) * 4),
        )
        # diffusers adds to every image-side token: zeros for the reference's four.
        padded = torch.cat((residual, torch.zeros(2, 4, 64)), dim=1)
        out = twin(
            hidden_states=torch.cat((packed(case["x"]), packed(reference_latent.expand(2, -1, -1, -1))), dim=1),
            encoder_hidden_states=case["context"],
            pooled_projections=case["y"],
            timestep=case["sigmas"],
            guidance=case["guidance"],
            img_ids=torch.cat((ids(case["x"])["img_ids"], reference_ids)),
            txt_ids=torch.zeros(5, 3),
            controlnet_block_samples=[padded] + [torch.zeros_like(padded)] * 4,
        ).sample
    assert_close(actual, FluxPipeline._unpack_latents(out[:, :15], 48, 80, 8))


def test_a_union_controlnet_without_a_mode_adds_no_mode_token(transformers):
    flux, _ = transformers
    controlnet = load_flux_controlnet(instantx_reference(union=True).state_dict(), axes_dim=AXES)
    case = inputs()
    with torch.no_grad():
        auto = run_controlnet(controlnet, case["latent_hint"], case, flux)
        moded = run_controlnet(controlnet, case["latent_hint"], case, flux, mode=0)
    assert auto.double[0] is not None and moded.double[0] is not None
    assert (auto.double[0] - moded.double[0]).abs().max() > 1e-3


# ---------------------------------------------------------------- XLabs


@pytest.fixture(scope="module")
def xlabs() -> tuple[FluxControlNet, FluxControlNetModel]:
    torch.manual_seed(13)
    model = randomized(FluxControlNet(XLABS), seed=13)
    return model, xlabs_reference(model)


def test_xlabs_residuals_are_diffusers_cycled_over_the_double_blocks(transformers, xlabs):
    flux, _ = transformers
    model, reference = xlabs
    case = inputs()
    with torch.no_grad():
        residuals = run_controlnet(model, case["image_hint"], case, flux)
        image = case["image_hint"].expand(2, -1, -1, -1) * 2 - 1  # diffusers' pipeline normalises to -1..1
        double, _ = run_reference(reference, image, case)
    assert residuals.single == ()
    assert len(residuals.double) == 5
    for block, residual in enumerate(residuals.double):
        assert_close(residual, double[block % 2])


def test_flux_adds_xlabs_residuals_as_diffusers_does_with_blocks_repeated(transformers, xlabs):
    flux, twin = transformers
    model, reference = xlabs
    case = inputs()
    with torch.no_grad():
        residuals = run_controlnet(model, case["image_hint"], case, flux)
        actual = flux(case["x"], case["sigmas"], case["context"], case["y"], case["guidance"], control=residuals)
        double, _ = run_reference(reference, case["image_hint"].expand(2, -1, -1, -1) * 2 - 1, case)
        expected = twin_with_residuals(twin, case, double, controlnet_blocks_repeat=True)
    assert_close(actual, expected)


def test_xlabs_hint_block_is_eight_convolutions_three_strided(xlabs):
    model, _ = xlabs
    convs = {
        int(k.split(".")[1]): v.shape for k, v in model.state_dict().items() if k.endswith("weight") and "hint" in k
    }
    assert convs == {0: (16, 3, 3, 3), **{i: (16, 16, 3, 3) for i in range(2, 15, 2)}}
    strides = [model.input_hint_block[i].stride for i in range(0, 15, 2)]
    assert strides == [(1, 1), (1, 1), (2, 2), (1, 1), (2, 2), (1, 1), (2, 2), (1, 1)]


def test_odd_latents_are_wrapped_for_both_styles(transformers, xlabs):
    flux, _ = transformers
    model, _ = xlabs
    instantx = load_flux_controlnet(instantx_reference(union=False).state_dict(), axes_dim=AXES)
    case = inputs(height=7, width=5)
    with torch.no_grad():
        for controlnet, hint in ((model, case["image_hint"]), (instantx, case["latent_hint"])):
            residuals = run_controlnet(controlnet, hint, case, flux)
            out = flux(case["x"], case["sigmas"], case["context"], case["y"], case["guidance"], control=residuals)
            assert residuals.double[0] is not None and residuals.double[0].shape == (2, 4 * 3, 64)
            assert out.shape == case["x"].shape


# ---------------------------------------------------------------- inputs refused


def test_inputs_that_do_not_fit_are_refused(transformers, xlabs):
    flux, _ = transformers
    model, _ = xlabs
    case = inputs()
    with pytest.raises(ValueError, match=r"control image\) must be \[1 or 2, 3, 48, 80\]"):
        run_controlnet(model, case["latent_hint"], case, flux)
    with pytest.raises(ValueError, match="not a union ControlNet"):
        run_controlnet(model, case["image_hint"], case, flux, mode=0)
    with pytest.raises(ValueError, match="pass guidance"):
        model(case["x"], case["image_hint"], case["sigmas"], case["context"], case["y"], transformer=flux)
    union = load_flux_controlnet(instantx_reference(union=True).state_dict(), axes_dim=AXES)
    with pytest.raises(ValueError, match="mode 5 is not one of"):
        run_controlnet(union, case["latent_hint"], case, flux, mode=5)


def test_residuals_for_another_transformer_are_refused(transformers):
    flux, _ = transformers
    case = inputs()
    residual = torch.zeros(2, 15, 64)
    with pytest.raises(ValueError, match="2 double-block residuals for this model's 5"):
        flux(
            case["x"],
            case["sigmas"],
            case["context"],
            case["y"],
            case["guidance"],
            control=BlockResiduals((residual,) * 2),
        )
    with pytest.raises(ValueError, match=r"\(2, 15, 64\), not \(2, 12, 64\)"):
        flux(
            case["x"][..., :8],
            case["sigmas"],
            case["context"],
            case["y"],
            case["guidance"],
            control=BlockResiduals((residual,) * 5),
        )


# ---------------------------------------------------------------- residual arithmetic


def test_spreading_stretches_or_cycles_a_controlnets_outputs():
    outputs = [torch.tensor(0.0), torch.tensor(1.0)]
    assert [int(t) for t in spread_over_blocks(outputs, 5)] == [0, 0, 0, 1, 1]
    assert [int(t) for t in spread_over_blocks(outputs, 5, cycle=True)] == [0, 1, 0, 1, 0]
    assert [int(t) for t in spread_over_blocks(outputs, 1)] == [0]
    assert spread_over_blocks([], 5) == ()


def test_residuals_scale_and_sum_block_by_block_none_counting_as_zero():
    one, two = torch.ones(1, 2, 3), torch.full((1, 2, 3), 2.0)
    first = BlockResiduals((one, None), (one,))
    second = BlockResiduals((two, two))
    total = first.scaled(3.0) + second
    assert total.double[0] is not None and torch.equal(total.double[0], torch.full((1, 2, 3), 5.0))
    assert total.double[1] is two
    assert total.single[0] is not None and torch.equal(total.single[0], torch.full((1, 2, 3), 3.0))
    assert torch.equal(one, torch.ones(1, 2, 3))  # scaling made new tensors
    with pytest.raises(ValueError, match="2 and 3 double blocks"):
        first + BlockResiduals((one, one, one))
    moved = first.to("meta")
    assert moved.double[0] is not None and moved.double[0].device.type == "meta"
    assert moved.double[1] is None


# ---------------------------------------------------------------- files


def test_the_tiny_instantx_file_is_in_diffusers_layout_and_loads_back():
    config = tiny_flux_config("flux_dev")
    tensors = tiny_flux_controlnet_tensors(config, seed=1, style="instantx", union_modes=4)
    assert flux_controlnet_style(tensors) == "instantx"
    reference = FluxControlNetModel(
        in_channels=64,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=128,
        num_attention_heads=1,
        joint_attention_dim=config.context_dim,
        pooled_projection_dim=config.vec_dim,
        guidance_embeds=True,
        num_mode=4,
    )
    reference.load_state_dict(tensors, strict=True)
    model = load_flux_controlnet(tensors)
    assert (model.config.style, model.config.union_modes, model.config.hint_channels) == ("instantx", 4, 16)
    assert (model.config.blocks.depth, model.config.blocks.depth_single_blocks) == (1, 1)


def test_the_tiny_xlabs_file_has_xlabs_keys_and_loads_back():
    config = tiny_flux_config("flux_dev")
    tensors = tiny_flux_controlnet_tensors(config, seed=1, style="xlabs")
    assert flux_controlnet_style(tensors) == "xlabs"
    top = {key.rsplit(".", 1)[0] for key in tensors if not key.startswith("double_blocks.")}
    assert top == {
        "img_in",
        "txt_in",
        "pos_embed_input",
        "controlnet_blocks.0",
        "controlnet_blocks.1",
        *(f"{mlp}.{layer}" for mlp in ("time_in", "vector_in", "guidance_in") for layer in ("in_layer", "out_layer")),
        *(f"input_hint_block.{i}" for i in range(0, 15, 2)),
    }
    model = load_flux_controlnet(tensors)
    assert (model.config.style, model.config.blocks.depth, model.config.blocks.depth_single_blocks) == ("xlabs", 2, 0)


@pytest.mark.parametrize("style", ["instantx", "xlabs"])
def test_a_tiny_controlnet_drives_the_tiny_flux(style):
    config = tiny_flux_config("flux_dev")
    torch.manual_seed(0)
    flux = FluxTransformer(config).eval()
    controlnet = load_flux_controlnet(tiny_flux_controlnet_tensors(config, style=style))
    x = torch.randn(1, 16, 4, 4)
    hint = torch.rand(1, 3, 32, 32) if style == "xlabs" else torch.randn(1, 16, 4, 4)
    context, y = torch.randn(1, 3, config.context_dim), torch.randn(1, config.vec_dim)
    with torch.no_grad():
        residuals = controlnet(x, hint, 0.5, context, y, 3.5, transformer=flux)
        controlled = flux(x, 0.5, context, y, 3.5, control=residuals)
        plain = flux(x, 0.5, context, y, 3.5)
    assert (len(residuals.double), len(residuals.single)) == (1, 0 if style == "xlabs" else 2)
    assert (controlled - plain).abs().max() > 0


def test_unknown_and_mistoline_files_are_refused_by_name():
    xlabs = tiny_flux_controlnet_tensors(tiny_flux_config("flux_dev"), style="xlabs")
    with pytest.raises(CheckpointLayoutError, match="Mistoline"):
        load_flux_controlnet({"controlnet_blocks.0.linear.weight": torch.zeros(1)})
    with pytest.raises(CheckpointLayoutError, match="not an InstantX or XLabs"):
        load_flux_controlnet({k: v for k, v in xlabs.items() if not k.startswith("double_blocks.")})
    assert flux_controlnet_style({"input_blocks.0.0.weight": torch.zeros(1)}) is None
