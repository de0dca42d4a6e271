"""Chroma: the config read from original-layout weights, output parity with diffusers, T5 padding, stored dtypes.

Layout proof: a tiny Loom model with random weights gives its original-layout state dict; diffusers' own
single-file converter (`convert_chroma_transformer_checkpoint_to_diffusers`) turns that into a
`ChromaTransformer2DModel`, which must compute what Loom computes. Heads are 128 wide so that the release's RoPE
split (16, 56, 56) is the one tested. Latents are packed into tokens and given their position ids by diffusers'
own pipeline helpers.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import ChromaPipeline, ChromaTransformer2DModel
from diffusers.loaders.single_file_utils import convert_chroma_transformer_checkpoint_to_diffusers

from diffusion.chroma import ChromaConfig, ChromaTransformer, chroma_config_from_state_dict, load_chroma
from diffusion.flux import FluxConfig, FluxTransformer
from diffusion.fused_linear import FusedLinear
from diffusion.model_memory import place
from diffusion.stored_weights import stored_layers
from diffusion.unet_config import CheckpointLayoutError
from tests.diffusion.random_weights import original_state_dict, with_random_scales
from tests.diffusion.single_block_widths import converted_at_model_width

TOLERANCE = 1e-4
CONTEXT_DIM, TEXT_TOKENS = 32, 8


def tiny_config() -> ChromaConfig:
    return ChromaConfig(
        hidden_size=256,
        num_heads=2,
        depth=2,
        depth_single_blocks=2,
        context_dim=CONTEXT_DIM,
        approximator_hidden=48,
        approximator_depth=2,
    )


def random_chroma(config: ChromaConfig, seed: int = 0) -> ChromaTransformer:
    return with_random_scales(lambda: ChromaTransformer(config), seed)


def diffusers_twin(state_dict: dict[str, torch.Tensor], config: ChromaConfig) -> ChromaTransformer2DModel:
    """A diffusers model holding exactly the given original-layout weights, through diffusers' own converter."""
    sizes = (config.depth_single_blocks, config.hidden_size, config.mlp_hidden_size)
    converted = converted_at_model_width(state_dict, convert_chroma_transformer_checkpoint_to_diffusers, *sizes)
    reference = ChromaTransformer2DModel(
        patch_size=1,
        in_channels=config.in_channels,
        out_channels=config.out_channels,
        num_layers=config.depth,
        num_single_layers=config.depth_single_blocks,
        attention_head_dim=config.head_dim,
        num_attention_heads=config.num_heads,
        joint_attention_dim=config.context_dim,
        axes_dims_rope=config.axes_dim,
        approximator_num_channels=config.approximator_in_dim,
        approximator_hidden_dim=config.approximator_hidden,
        approximator_layers=config.approximator_depth,
    )
    reference.load_state_dict(converted, strict=True)
    return reference.eval().requires_grad_(False)


def run_diffusers(
    reference: ChromaTransformer2DModel,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    context: torch.Tensor,
    prompt_lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """The pipeline's packing and ids around the diffusers model. With `prompt_lengths` (the T5 tokenizer's mask
    summed) text keys are masked as `ChromaPipeline._get_t5_prompt_embeds` builds it: the prompt and one padding
    token. The mask is given as booleans; the pipeline's own is a 0/1 float, which SDPA would add to the logits."""
    b, c, h, w = x.shape
    tokens = ChromaPipeline._pack_latents(x, b, c, h, w)
    mask = None
    if prompt_lengths is not None:
        text = torch.arange(context.shape[1])[None, :] <= prompt_lengths[:, None]
        mask = torch.cat((text, torch.ones(b, tokens.shape[1], dtype=torch.bool)), dim=1)
    out = reference(
        hidden_states=tokens,
        encoder_hidden_states=context,
        timestep=timesteps,
        img_ids=ChromaPipeline._prepare_latent_image_ids(b, h // 2, w // 2, x.device, x.dtype),
        txt_ids=torch.zeros(context.shape[1], 3),
        attention_mask=mask,
    ).sample
    return ChromaPipeline._unpack_latents(out, h * 8, w * 8, 8)


def inputs(batch: int, height: int, width: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 16, height, width, generator=g)
    return x, torch.linspace(0.3, 0.9, batch), torch.randn(batch, TEXT_TOKENS, CONTEXT_DIM, generator=g)


def assert_matches(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    assert expected.abs().max() > 0.1  # a real signal, not two near-zero outputs
    assert (actual - expected).abs().max() <= TOLERANCE


# ---------------------------------------------------------------- parity with diffusers


def test_computes_what_diffusers_computes_on_the_converted_file(cpu_path: str) -> None:
    config = tiny_config()
    model = random_chroma(config, seed=1)
    reference = diffusers_twin(original_state_dict(model), config)
    x, timesteps, context = inputs(2, 8, 8)  # square, two different timesteps
    with torch.no_grad():
        actual = model(x, timesteps, context)
        expected = run_diffusers(reference, x, timesteps, context)
    assert actual.shape == (2, 16, 8, 8)
    assert_matches(actual, expected)


def test_a_padded_prompt_is_masked_as_diffusers_masks_it_on_a_non_square_latent(cpu_path: str) -> None:
    config = tiny_config()
    model = random_chroma(config, seed=2)
    reference = diffusers_twin(original_state_dict(model), config)
    x, timesteps, context = inputs(2, 6, 10, seed=3)
    lengths = torch.tensor([3, 6])  # 5 and 2 padding tokens, of which each attends to one
    with torch.no_grad():
        actual = model(x, timesteps, context, context_lengths=lengths)
        expected = run_diffusers(reference, x, timesteps, context, lengths)
        unmasked = model(x, timesteps, context)
    assert_matches(actual, expected)
    assert (actual - unmasked).abs().max() > 1e-3  # the mask does take part


# ---------------------------------------------------------------- T5 padding


def test_only_the_prompt_and_one_padding_token_are_attended() -> None:
    model = random_chroma(tiny_config(), seed=4)
    x, timesteps, context = inputs(1, 4, 4, seed=5)
    length = 3
    with torch.no_grad():
        base = model(x, timesteps, context, context_lengths=[length])
        for index, attended in ((length - 1, True), (length, True), (length + 1, False), (TEXT_TOKENS - 1, False)):
            changed = context.clone()
            changed[:, index] += 1.0
            difference = (model(x, timesteps, changed, context_lengths=[length]) - base).abs().max()
            assert (difference > 1e-3) if attended else (difference <= 1e-6), index


def test_a_padded_batch_computes_what_each_prompt_with_one_padding_token_computes_alone() -> None:
    # ComfyUI's way: the tokenizer stops one padding token after the prompt and nothing is masked.
    model = random_chroma(tiny_config(), seed=6)
    x, timesteps, context = inputs(2, 4, 6, seed=7)
    lengths = [2, 5]
    with torch.no_grad():
        batched = model(x, timesteps, context, context_lengths=lengths)
        for i, length in enumerate(lengths):
            alone = model(x[i : i + 1], timesteps[i : i + 1], context[i : i + 1, : length + 1])
            assert (batched[i : i + 1] - alone).abs().max() <= 1e-5


def test_a_prompt_filling_the_context_attends_to_all_of_it() -> None:
    model = random_chroma(tiny_config(), seed=8)
    x, timesteps, context = inputs(2, 4, 4, seed=9)
    with torch.no_grad():
        unmasked = model(x, timesteps, context)
        assert torch.equal(model(x, timesteps, context, context_lengths=[TEXT_TOKENS] * 2), unmasked)
        assert torch.equal(model(x, timesteps, context, context_lengths=[TEXT_TOKENS - 1] * 2), unmasked)


@pytest.mark.parametrize("lengths", [[3], [3, TEXT_TOKENS + 1], [-1, 2]])
def test_lengths_outside_the_context_or_not_one_per_item_are_refused(lengths: list[int]) -> None:
    model = random_chroma(tiny_config())
    x, timesteps, context = inputs(2, 4, 4)
    with pytest.raises(ValueError, match="context_lengths"):
        model(x, timesteps, context, context_lengths=lengths)


# ---------------------------------------------------------------- config and loading


def test_config_is_read_back_from_the_weights() -> None:
    config = tiny_config()
    state_dict = original_state_dict(random_chroma(config))
    assert chroma_config_from_state_dict(state_dict) == config
    assert load_chroma(state_dict).config == config


def test_release_shapes_give_24_heads_of_128_and_344_modulations() -> None:
    release = ChromaConfig()
    with torch.device("meta"):
        state_dict = ChromaTransformer(release).state_dict()
    detected = chroma_config_from_state_dict(state_dict)
    assert detected == release
    assert (detected.num_heads, detected.head_dim, detected.axes_dim) == (24, 128, (16, 56, 56))
    assert (detected.hidden_size, detected.depth, detected.depth_single_blocks) == (3072, 19, 38)
    assert (detected.approximator_in_dim, detected.approximator_hidden, detected.approximator_depth) == (64, 5120, 5)
    assert detected.modulation_count == 344
    assert 8.8e9 < sum(tensor.numel() for tensor in state_dict.values()) < 9.0e9  # "8.9B parameters"
    flux_only = ("img_mod", "txt_mod", ".modulation.", "adaLN_modulation", "time_in", "vector_in", "guidance_in")
    assert not [key for key in state_dict if any(part in key for part in flux_only)]


def test_a_missing_weight_is_named() -> None:
    config = tiny_config()
    state_dict = original_state_dict(random_chroma(config))
    del state_dict["distilled_guidance_layer.norms.1.scale"]
    with pytest.raises(CheckpointLayoutError, match=r"distilled_guidance_layer\.norms\.1\.scale: missing"):
        load_chroma(state_dict, config)


def test_a_flux_modulation_weight_is_unexpected() -> None:
    config = tiny_config()
    state_dict = original_state_dict(random_chroma(config))
    state_dict["double_blocks.0.img_mod.lin.weight"] = torch.zeros(6 * 256, 256)
    with pytest.raises(CheckpointLayoutError, match=r"double_blocks\.0\.img_mod\.lin\.weight: unexpected"):
        load_chroma(state_dict, config)


def test_flux_diffusers_and_prefixed_files_are_refused_with_the_key_they_lack() -> None:
    config = tiny_config()
    state_dict = original_state_dict(random_chroma(config))
    with torch.device("meta"):
        flux = FluxTransformer(FluxConfig(hidden_size=256, num_heads=2, depth=1, depth_single_blocks=1)).state_dict()
    with pytest.raises(CheckpointLayoutError, match=r"distilled_guidance_layer\.in_proj\.weight: missing"):
        load_chroma(flux)
    diffusers_layout = diffusers_twin(state_dict, config).state_dict()
    with pytest.raises(CheckpointLayoutError, match=r"img_in\.weight: missing"):
        load_chroma(diffusers_layout)
    prefixed = {f"model.diffusion_model.{key}": tensor for key, tensor in state_dict.items()}
    with pytest.raises(CheckpointLayoutError, match="prefix stripped"):
        load_chroma(prefixed)


def test_load_adopts_the_given_tensors() -> None:
    state_dict = original_state_dict(random_chroma(tiny_config()))
    model = load_chroma(state_dict)
    assert model.distilled_guidance_layer.in_proj.weight.data_ptr() == (
        state_dict["distilled_guidance_layer.in_proj.weight"].data_ptr()
    )
    assert not any(p.is_meta for p in model.parameters())


def test_fp16_weights_placed_for_fp32_compute_what_the_model_cast_whole_computes() -> None:
    config = tiny_config()
    half = {key: tensor.half() for key, tensor in original_state_dict(random_chroma(config, seed=10)).items()}
    placed = load_chroma(dict(half))
    place(placed, torch.device("cpu"), torch.float32)
    whole = load_chroma({key: tensor.clone() for key, tensor in half.items()}).float()
    assert placed.dtype == whole.dtype == torch.float32
    linears = [layer for layer in placed.modules() if isinstance(layer, FusedLinear)]
    assert linears and all(layer.weight.dtype == torch.float16 for layer in linears)
    x, timesteps, context = inputs(2, 4, 6, seed=11)
    with torch.no_grad():
        assert torch.equal(placed(x, timesteps, context, [3, 5]), whole(x, timesteps, context, [3, 5]))


def _fp8_mixed(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(a mixed file, its weights dequantized to fp32). As in `*-fp8mixed` / `*_fp8_scaled` files: the blocks' and
    the approximator's hidden linears in float8_e4m3fn, every other one with a per-tensor `scale_weight` (and
    the `scale_input` and `scaled_fp8` marker ComfyUI's files carry), the rest in bf16: the embedders (`img_in`,
    `txt_in`, `in_proj`, `out_proj`), the final projection, the biases and the norm scales."""
    quantized = [
        key
        for key in state_dict
        if key.endswith(".weight")
        and key.startswith(("double_blocks.", "single_blocks.", "distilled_guidance_layer.l"))
    ]
    file: dict[str, torch.Tensor] = {"scaled_fp8": torch.zeros(2, dtype=torch.float8_e4m3fn)}
    real: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if key not in quantized:
            file[key] = tensor.to(torch.bfloat16)
            real[key] = file[key].float()
        elif quantized.index(key) % 2:
            scale = tensor.abs().max() / 448  # float8_e4m3fn's largest value
            file[key] = (tensor / scale).to(torch.float8_e4m3fn)
            layer = key.removesuffix(".weight")
            file[f"{layer}.scale_weight"] = scale.reshape(())
            file[f"{layer}.scale_input"] = torch.ones(())
            real[key] = file[key].float() * scale
        else:
            file[key] = tensor.to(torch.float8_e4m3fn)
            real[key] = file[key].float()
    return file, real


def test_an_fp8_mixed_file_keeps_each_tensor_as_stored_and_computes_its_values() -> None:
    config = tiny_config()
    file, real = _fp8_mixed(original_state_dict(random_chroma(config, seed=12)))
    model = load_chroma(dict(file))
    loaded = model.state_dict()
    assert {key: loaded[key].dtype for key in real} == {key: file[key].dtype for key in real}
    assert {loaded[key].dtype for key in real} == {torch.float8_e4m3fn, torch.bfloat16}
    scaled = {key.removesuffix(".scale_weight") for key in file if key.endswith(".scale_weight")}
    with_scale = {
        name.removesuffix(".weight") for name, layer in stored_layers(model).items() if layer.weight_scale is not None
    }
    assert scaled and with_scale == scaled
    assert model.double_blocks[0].img_attn.norm.query_norm.scale.dtype == torch.bfloat16

    place(model, torch.device("cpu"), torch.float32)
    assert model.double_blocks[0].img_mlp[0].weight.dtype == torch.float8_e4m3fn  # kept, cast per call
    reference = load_chroma(real)
    x, timesteps, context = inputs(2, 4, 6, seed=13)
    with torch.no_grad():
        assert torch.equal(model(x, timesteps, context, [2, 7]), reference(x, timesteps, context, [2, 7]))


# ---------------------------------------------------------------- the forward contract


def test_scalar_timesteps_apply_to_the_whole_batch() -> None:
    model = random_chroma(tiny_config(), seed=14)
    x, _, context = inputs(2, 4, 4, seed=15)
    with torch.no_grad():
        assert torch.equal(model(x, 0.5, context), model(x, torch.full((2,), 0.5), context))


def test_odd_sized_latents_are_wrapped_to_even_and_cropped_back() -> None:
    model = random_chroma(tiny_config(), seed=18)
    x, timesteps, context = inputs(1, 7, 9, seed=19)
    with torch.no_grad():
        actual = model(x, timesteps, context)
        expected = model(F.pad(x, (0, 1, 0, 1), mode="circular"), timesteps, context)[:, :, :7, :9]
    assert actual.shape == (1, 16, 7, 9)
    assert torch.equal(actual, expected)


def test_a_latent_with_the_wrong_channels_is_refused() -> None:
    model = random_chroma(tiny_config())
    with pytest.raises(ValueError, match=r"\[B, 16, H, W\]"):
        model(torch.randn(1, 4, 4, 4), 0.5, torch.randn(1, TEXT_TOKENS, CONTEXT_DIM))


def test_bf16_stays_close_to_fp32() -> None:
    model = random_chroma(tiny_config(), seed=16)
    x, timesteps, context = inputs(1, 4, 6, seed=17)
    with torch.no_grad():
        fp32 = model(x, timesteps, context, [4])
        bf16 = model.to(torch.bfloat16)(x, timesteps, context, [4])
    assert bf16.dtype == torch.float32
    assert (bf16 - fp32).abs().max() <= 0.05 * fp32.abs().max()
