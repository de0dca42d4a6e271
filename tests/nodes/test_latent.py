"""LATENT nodes: VAE encode/decode against the autoencoder itself, inpainting masks, resizing, batches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nodes.folders import Folders
from nodes.latent import (
    EmptyLatentImage,
    EmptySD3LatentImage,
    LatentBlend,
    LatentComposite,
    LatentFromBatch,
    LatentUpscale,
    LatentUpscaleBy,
    RepeatLatentBatch,
    SetLatentNoiseMask,
    VAEDecode,
    VAEDecodeTiled,
    VAEEncode,
    VAEEncodeForInpaint,
    VAEEncodeTiled,
    bislerp,
)
from nodes.loaders import CheckpointLoaderSimple
from tests.nodes.tiny_models import tiny_checkpoint


@pytest.fixture
def vae(folders: Folders):
    tiny_checkpoint(folders.models, "sd15.safetensors")
    return CheckpointLoaderSimple("sd15.safetensors")[2]


def test_empty_latent_is_zeros_at_one_eighth_size() -> None:
    latent = EmptyLatentImage(512, 768, 2)["samples"]
    assert latent.shape == (2, 4, 96, 64) and not latent.any()


def test_the_sd3_and_flux_empty_latent_has_the_16_channels_of_their_vae() -> None:
    latent = EmptySD3LatentImage(1024, 768, 3)["samples"]
    assert latent.shape == (3, 16, 96, 128) and not latent.any()


def test_encode_and_decode_are_the_autoencoder_in_pixel_range_minus_one_to_one(vae) -> None:
    image = torch.rand(2, 16, 24, 3)
    latent = VAEEncode(image, vae)
    with torch.no_grad():
        expected = vae.model.encode(image.movedim(-1, 1) * 2 - 1)
        torch.testing.assert_close(latent["samples"], expected)
        decoded = VAEDecode(latent, vae)
        torch.testing.assert_close(decoded, ((vae.model.decode(expected) + 1) / 2).clamp(0, 1).movedim(1, -1))
    assert decoded.shape == image.shape


def test_tiled_nodes_agree_with_whole_image_ones_when_one_tile_covers_all(vae) -> None:
    image = torch.rand(1, 32, 32, 3)
    latent = VAEEncode(image, vae)
    torch.testing.assert_close(VAEEncodeTiled(image, vae, 64, 16)["samples"], latent["samples"])
    torch.testing.assert_close(VAEDecodeTiled(latent, vae, 64, 16), VAEDecode(latent, vae))


def test_decoding_another_familys_latent_says_so(vae) -> None:
    with pytest.raises(ValueError, match="another model family"):
        VAEDecode({"samples": torch.zeros(1, 16, 8, 8)}, vae)


def test_encode_for_inpaint_blanks_the_masked_area_and_grows_the_mask(vae) -> None:
    image = torch.rand(1, 16, 16, 3)
    mask = torch.zeros(1, 16, 16)
    mask[:, 6:10, 6:10] = 1.0
    latent = VAEEncodeForInpaint(image, vae, mask, 3)
    blanked = image.clone()
    blanked[:, 6:10, 6:10] = 0.5
    torch.testing.assert_close(latent["samples"], VAEEncode(blanked, vae)["samples"])
    grown = latent["noise_mask"][0, 0]
    assert grown.shape == (16, 16) and grown[5:11, 5:11].all() and not grown[:5].any() and not grown[11:].any()
    assert torch.equal(VAEEncodeForInpaint(image, vae, mask, 0)["noise_mask"][0, 0], mask[0])
    with pytest.raises(ValueError, match="mask is 8x8 but the image is 16x16"):
        VAEEncodeForInpaint(image, vae, torch.zeros(1, 8, 8), 6)


def test_set_noise_mask_attaches_without_touching_the_input() -> None:
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    masked = SetLatentNoiseMask(latent, torch.ones(64, 64))
    assert masked["noise_mask"].shape == (1, 1, 64, 64) and "noise_mask" not in latent


def test_latent_upscale_sizes_and_keep_aspect_with_zero() -> None:
    latent = {"samples": torch.randn(1, 4, 8, 16)}
    assert LatentUpscale(latent, "bilinear", 256, 128, "disabled")["samples"].shape == (1, 4, 16, 32)
    assert LatentUpscale(latent, "nearest-exact", 0, 128, "disabled")["samples"].shape == (1, 4, 16, 32)
    assert LatentUpscaleBy(latent, "bicubic", 1.5)["samples"].shape == (1, 4, 12, 24)
    torch.testing.assert_close(
        LatentUpscaleBy(latent, "bilinear", 2.0)["samples"],
        F.interpolate(latent["samples"], size=(16, 32), mode="bilinear"),
    )


def test_bislerp_follows_the_sphere_between_channel_vectors() -> None:
    samples = torch.randn(1, 4, 5, 7)
    torch.testing.assert_close(bislerp(samples, 7, 5), samples)
    # Two cells whose vectors are orthogonal, same length: the midpoint keeps that length (linear would shrink it).
    pair = torch.zeros(1, 2, 1, 2)
    pair[0, 0, 0, 0] = 1.0
    pair[0, 1, 0, 1] = 1.0
    wide = bislerp(pair, 4, 1)
    torch.testing.assert_close(wide.norm(dim=1), torch.ones(1, 1, 4))
    collinear = torch.cat([torch.full((1, 3, 1, 1), 1.0), torch.full((1, 3, 1, 1), 3.0)], dim=-1)
    torch.testing.assert_close(bislerp(collinear, 4, 1), F.interpolate(collinear, size=(1, 4), mode="bilinear"))
    assert LatentUpscale({"samples": samples}, "bislerp", 112, 80, "disabled")["samples"].shape == (1, 4, 10, 14)


def test_from_batch_keeps_each_items_noise_index_and_mask() -> None:
    latent = {"samples": torch.arange(4.0).reshape(4, 1, 1, 1).expand(4, 4, 2, 2), "noise_mask": torch.rand(4, 1, 2, 2)}
    picked = LatentFromBatch(latent, 1, 2)
    assert picked["samples"][:, 0, 0, 0].tolist() == [1.0, 2.0] and picked["batch_index"] == [1, 2]
    assert torch.equal(picked["noise_mask"], latent["noise_mask"][1:3])
    assert LatentFromBatch(picked, 1, 5)["batch_index"] == [2]


def test_repeat_batch_gives_copies_new_noise_indexes() -> None:
    latent = {"samples": torch.zeros(2, 4, 2, 2), "batch_index": [3, 4]}
    repeated = RepeatLatentBatch(latent, 3)
    assert repeated["samples"].shape == (6, 4, 2, 2) and repeated["batch_index"] == [3, 4, 5, 6, 7, 8]


def test_composite_pastes_at_pixel_offsets_and_feathers_inner_edges() -> None:
    target = {"samples": torch.zeros(1, 4, 8, 8)}
    source = {"samples": torch.ones(1, 4, 4, 4)}
    pasted = LatentComposite(target, source, 16, 8, 0)["samples"]
    assert pasted[0, 0, 1:5, 2:6].eq(1).all() and pasted.sum() == 4 * 16
    feathered = LatentComposite(target, source, 16, 8, 16)["samples"][0, 0]
    assert feathered[1, 2] == 0.25 and feathered[2, 3] == 1.0 and feathered[1, 3] == 0.5
    assert not target["samples"].any()


def test_blend_mixes_and_resizes_the_second_latent() -> None:
    first, second = {"samples": torch.ones(1, 4, 4, 4)}, {"samples": torch.zeros(1, 4, 8, 8)}
    blended = LatentBlend(first, second, 0.25)["samples"]
    assert blended.shape == (1, 4, 4, 4)
    torch.testing.assert_close(blended, torch.full((1, 4, 4, 4), 0.25))


def test_bislerp_computes_on_the_device_of_its_latent() -> None:
    # Positions made on the CPU would fail against a GPU latent; the meta device shows where they are made.
    resized = bislerp(torch.empty(1, 4, 8, 8, device="meta"), 16, 12)
    assert resized.device.type == "meta" and resized.shape == (1, 4, 12, 16)
