"""CLIP vision towers: parity with transformers' CLIPVisionModelWithProjection and SigLIP's vision model on
identical weights in the files' layout, ComfyUI's preprocessing worked by hand, and what each file is read as."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, SiglipVisionConfig, SiglipVisionModel

from diffusion.clip_vision import (
    CLIP_MEAN,
    CLIP_STD,
    CLIP_VISION_KINDS,
    SIGLIP_MEAN,
    SIGLIP_STD,
    ClipVisionKind,
    clip_preprocess,
    clip_vision_config_from_state_dict,
    load_clip_vision,
    tiny_clip_vision_config,
    tiny_clip_vision_tensors,
)
from diffusion.unet_config import CheckpointLayoutError


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal to float32 rounding: 27 to 48 layers accumulate a few ulps."""
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def _clip_reference(layers: int, projection: int, seed: int = 0) -> CLIPVisionModelWithProjection:
    torch.manual_seed(seed)
    config = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=16, image_size=224,
        patch_size=14, projection_dim=projection, hidden_act="gelu", layer_norm_eps=1e-5,
    )  # fmt: skip
    return CLIPVisionModelWithProjection(config).eval()


def _siglip_reference(seed: int = 0) -> tuple[SiglipVisionModel, dict[str, torch.Tensor]]:
    """SigLIP so400m's shape at width 32, with the attention-pooling head the released file carries; the state dict
    under `vision_model.`, as the file (a SiglipModel's vision half) stores it."""
    torch.manual_seed(seed)
    config = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=27, num_attention_heads=16, image_size=384,
        patch_size=14, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6,
    )  # fmt: skip
    model = SiglipVisionModel(config).eval()
    state = {
        key if key.startswith("vision_model.") else f"vision_model.{key}": v for key, v in model.state_dict().items()
    }
    return model, state


@pytest.mark.parametrize(("layers", "projection", "kind"), [(32, 1024, "clip_vision_h"), (48, 1280, "clip_vision_g")])
def test_clip_towers_match_transformers(layers: int, projection: int, kind: str) -> None:
    reference = _clip_reference(layers, projection)
    state = {**reference.state_dict(), "vision_model.embeddings.position_ids": torch.arange(257)[None]}
    model = load_clip_vision(state)
    assert (model.config.kind, model.config.image_size, model.config.projection_dim) == (kind, 224, projection)
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(pixel_values=pixels, output_hidden_states=True)
        got = model(pixels)
    close(got.last_hidden_state, expected.last_hidden_state)
    close(got.image_embeds, expected.image_embeds)
    close(got.penultimate_hidden_states, expected.hidden_states[-2])


def test_siglip_matches_transformers_and_its_pooling_head_is_left_out() -> None:
    reference, state = _siglip_reference()
    assert any(key.startswith("vision_model.head.") for key in state)
    model = load_clip_vision(state)
    assert (model.config.kind, model.config.image_size, model.config.positions) == ("siglip_vision", 384, 729)
    pixels = torch.randn(1, 3, 384, 384, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = reference(pixel_values=pixels, output_hidden_states=True)
        got = model(pixels)
    assert got.last_hidden_state.shape == (1, 729, 32)
    close(got.last_hidden_state, expected.last_hidden_state)
    # ComfyUI's SigLIP has no projection: its image_embeds are the normalised token states.
    close(got.image_embeds, expected.last_hidden_state)
    close(got.penultimate_hidden_states, expected.hidden_states[-2])


def test_a_whole_clip_model_file_loads_its_vision_half() -> None:
    state = {
        **_clip_reference(32, 1024).state_dict(),
        "text_model.embeddings.token_embedding.weight": torch.zeros(49408, 32),
        "text_projection.weight": torch.zeros(1024, 32),
        "logit_scale": torch.tensor(4.6),
    }
    assert load_clip_vision(state).config.kind == "clip_vision_h"


def test_preprocessing_of_a_picture_at_the_tower_size_is_8_bit_rounding_and_normalising() -> None:
    image = torch.rand(1, 4, 4, 4, generator=torch.Generator().manual_seed(3))
    image[0, 0, 0, 0] = 1.4  # beyond white: clamped
    got = clip_preprocess(image, 4, CLIP_MEAN, CLIP_STD, crop=True)
    assert got.shape == (1, 3, 4, 4)  # the alpha channel is dropped
    for channel in range(3):
        for row in range(4):
            for col in range(4):
                value = min(max(float(image[0, row, col, channel]) * 255.0, 0.0), 255.0)
                expected = (round(value) / 255.0 - CLIP_MEAN[channel]) / CLIP_STD[channel]
                assert float(got[0, channel, row, col]) == pytest.approx(expected, abs=1e-6)


def _stripes() -> torch.Tensor:
    """A 60 x 180 picture: thirds of pure red, green and blue, left to right."""
    image = torch.zeros(1, 60, 180, 3)
    for third in range(3):
        image[0, :, 60 * third : 60 * (third + 1), third] = 1.0
    return image


def _normalised(rgb: tuple[float, float, float], mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    return torch.tensor([(value - m) / s for value, m, s in zip(rgb, mean, std, strict=True)])


def test_center_crop_resizes_the_short_side_and_keeps_the_middle() -> None:
    got = clip_preprocess(_stripes(), 30, SIGLIP_MEAN, SIGLIP_STD, crop=True)
    # 60 x 180 -> 30 x 90, columns 30..59 kept: the green third, exactly (a constant region stays constant).
    assert got.shape == (1, 3, 30, 30)
    green = _normalised((0.0, 1.0, 0.0), SIGLIP_MEAN, SIGLIP_STD)
    torch.testing.assert_close(got[0, :, :, 5:25], green[:, None, None].expand(3, 30, 20), rtol=0, atol=1e-6)


def test_crop_none_squashes_the_whole_picture_into_the_square() -> None:
    got = clip_preprocess(_stripes(), 30, SIGLIP_MEAN, SIGLIP_STD, crop=False)
    # 180 columns into 30: each colour gets 10, the middle of each third untouched by the blend at the seams.
    for third, colour in enumerate(((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))):
        middle = got[0, :, :, 10 * third + 4 : 10 * third + 6]
        expected = _normalised(colour, SIGLIP_MEAN, SIGLIP_STD)[:, None, None].expand_as(middle)
        torch.testing.assert_close(middle, expected, rtol=0, atol=1e-6)


def test_resizing_rounds_each_side_and_always_gives_the_tower_square() -> None:
    image = torch.rand(2, 300, 451, 3, generator=torch.Generator().manual_seed(4))
    assert clip_preprocess(image, 224, CLIP_MEAN, CLIP_STD, crop=True).shape == (2, 3, 224, 224)
    assert clip_preprocess(image, 224, CLIP_MEAN, CLIP_STD, crop=False).shape == (2, 3, 224, 224)


@pytest.mark.parametrize("kind", CLIP_VISION_KINDS)
def test_tiny_files_are_read_as_their_kind(kind: ClipVisionKind) -> None:
    tensors = tiny_clip_vision_tensors(kind, seed=5)
    config = clip_vision_config_from_state_dict(tensors)
    assert config == tiny_clip_vision_config(kind)
    image = torch.rand(1, 50, 70, 3, generator=torch.Generator().manual_seed(6))
    out = load_clip_vision(tensors).encode_image(image)
    tokens, width = config.positions, config.width
    assert out.last_hidden_state.shape == (1, tokens, width)
    assert out["image_embeds"].shape == ((1, tokens, width) if kind == "siglip_vision" else (1, config.projection_dim))
    again = tiny_clip_vision_tensors(kind, seed=5)
    assert all(torch.equal(again[key], value) for key, value in tensors.items())


def test_towers_loom_does_not_build_are_named() -> None:
    vit_l = _clip_reference(24, 768).state_dict()
    with pytest.raises(CheckpointLayoutError, match="ViT-L"):
        load_clip_vision(vit_l)
    open_clip = {
        "visual.transformer.resblocks.0.attn.in_proj_weight": torch.zeros(96, 32),
        "visual.proj": torch.zeros(1),
    }
    with pytest.raises(CheckpointLayoutError, match="OpenCLIP-layout"):
        load_clip_vision(open_clip)
    with pytest.raises(CheckpointLayoutError, match="no CLIP or SigLIP vision tower"):
        load_clip_vision({"redux_up.weight": torch.zeros(2, 2)})
