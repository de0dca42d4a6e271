"""Text encoding and the CONDITIONING editing nodes (ComfyUI semantics, inputs never mutated)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from diffusion.embeddings import EmbeddingFolder
from nodes.conditioning import (
    CLIPTextEncode,
    ConditioningAverage,
    ConditioningCombine,
    ConditioningConcat,
    ConditioningSetArea,
    ConditioningSetMask,
    ConditioningSetTimestepRange,
    ConditioningZeroOut,
    FluxGuidance,
    InpaintModelConditioning,
)
from nodes.folders import Folders
from nodes.loaders import CheckpointLoaderSimple
from tests.nodes.tiny_models import tiny_checkpoint


def entry(value: float, tokens: int = 77, **options) -> list:
    return [torch.full((1, tokens, 4), value), {"pooled_output": torch.full((1, 2), value), **options}]


@pytest.fixture
def loaded(folders: Folders):
    tiny_checkpoint(folders.models, "sd15.safetensors")
    return CheckpointLoaderSimple("sd15.safetensors")


def test_clip_text_encode_is_the_stack_encoding_with_pooled_output(loaded) -> None:
    _, clip, _ = loaded
    ((cond, options),) = CLIPTextEncode("a (red:1.2) cube", clip)
    expected_cond, expected_pooled = clip.stack.encode("a (red:1.2) cube")
    torch.testing.assert_close(cond, expected_cond)
    torch.testing.assert_close(options["pooled_output"], expected_pooled)


def test_embedding_names_resolve_from_the_embeddings_folder(loaded, folders: Folders) -> None:
    _, clip, _ = loaded
    (folders.models / "embeddings").mkdir()
    save_file({"emb_params": torch.randn(3, 64)}, folders.models / "embeddings" / "style.safetensors")
    ((cond, _),) = CLIPTextEncode("a embedding:style cube", clip)
    expected, _ = clip.stack.encode(
        "a embedding:style cube", resolve_embedding=EmbeddingFolder([folders.models / "embeddings"])
    )
    torch.testing.assert_close(cond, expected)
    assert not torch.equal(cond, CLIPTextEncode("a style cube", clip)[0][0])


def test_combine_concatenates_the_lists() -> None:
    first, second = [entry(1.0)], [entry(2.0), entry(3.0)]
    assert ConditioningCombine(first, second) == first + second


def test_average_blends_states_and_pooled_and_pads_the_shorter_source() -> None:
    (blended,) = ConditioningAverage([entry(1.0, tokens=154)], [entry(3.0)], 0.25)
    assert blended[0].shape == (1, 154, 4)
    torch.testing.assert_close(blended[0][:, :77], torch.full((1, 77, 4), 0.25 + 2.25))
    torch.testing.assert_close(blended[0][:, 77:], torch.full((1, 77, 4), 0.25))
    torch.testing.assert_close(blended[1]["pooled_output"], torch.full((1, 2), 2.5))


def test_concat_appends_the_source_tokens() -> None:
    source = [entry(2.0, tokens=3)]
    (joined,) = ConditioningConcat([entry(1.0, tokens=5)], source)
    assert joined[0].shape == (1, 8, 4) and torch.equal(joined[0][:, 5:], source[0][0])


def test_area_mask_and_range_edit_copies_of_the_options() -> None:
    original = [entry(1.0)]
    (area,) = ConditioningSetArea(original, 256, 128, 64, 32, 0.5)
    assert area[1]["area"] == (16, 32, 4, 8) and area[1]["strength"] == 0.5 and area[1]["set_area_to_bounds"] is False
    mask = torch.ones(32, 32)
    (masked,) = ConditioningSetMask(original, mask, 0.7, "mask bounds")
    assert (
        masked[1]["mask"].shape == (1, 32, 32) and masked[1]["mask_strength"] == 0.7 and masked[1]["set_area_to_bounds"]
    )
    (ranged,) = ConditioningSetTimestepRange(original, 0.2, 0.8)
    assert (ranged[1]["timestep_start"], ranged[1]["timestep_end"]) == (0.2, 0.8)
    assert set(original[0][1]) == {"pooled_output"}


def test_flux_guidance_sets_the_guidance_of_every_entry_on_a_copy() -> None:
    original = [entry(1.0), entry(2.0)]
    guided = FluxGuidance(original, 2.5)
    assert [options["guidance"] for _, options in guided] == [2.5, 2.5]
    assert all("guidance" not in options for _, options in original)


def test_zero_out_zeroes_states_and_pooled() -> None:
    (zeroed,) = ConditioningZeroOut([entry(1.0)])
    assert not zeroed[0].any() and not zeroed[1]["pooled_output"].any()


def test_inpaint_model_conditioning_encodes_the_blanked_picture_and_attaches_the_mask(loaded) -> None:
    _, _, vae = loaded
    image = torch.rand(1, 16, 16, 3)
    mask = torch.zeros(1, 16, 16)
    mask[:, 4:12, 4:12] = 1.0
    positive, negative, latent = InpaintModelConditioning([entry(1.0)], [entry(0.0)], vae, image, mask)
    blanked = image.clone()
    blanked[:, 4:12, 4:12] = 0.5
    torch.testing.assert_close(positive[0][1]["concat_latent_image"], vae.encode(blanked))
    assert negative[0][1]["concat_latent_image"] is positive[0][1]["concat_latent_image"]
    torch.testing.assert_close(latent["samples"], vae.encode(image))
    assert latent["noise_mask"].shape == (1, 1, 16, 16)
    with pytest.raises(ValueError, match="mask is 64x64 but the image is 16x16.*without alpha"):
        InpaintModelConditioning([entry(1.0)], [entry(0.0)], vae, image, torch.zeros(1, 64, 64))
