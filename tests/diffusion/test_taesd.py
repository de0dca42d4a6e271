"""TAESD's decoder: loads the published single-file layout and decodes as diffusers' AutoencoderTiny does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderTiny
from safetensors.torch import save_file

from diffusion.taesd import TAESDDecoder, TAESDWeightsError, load_taesd_decoder, taesd_preview
from tests.diffusion.weight_files import (
    BAD_WEIGHT_FILES,
    PICKLE_NAMED_SAFETENSORS,
    PICKLE_SUFFIXES,
    expect_refusal,
    write_bad_file,
)

TOLERANCE = 1e-5


def published_layout(diffusers_decoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    """diffusers' ``DecoderTiny`` weights under the keys of the released ``taesd_decoder.pth``.

    Both are one ``nn.Sequential`` of the same modules, but the released one starts with its soft
    clamp as module 0 (diffusers applies the clamp in ``forward``), so every index is one higher:
    diffusers' ``layers.0.weight`` is ``1.weight``, ``layers.2.conv.0.weight`` is ``3.conv.0.weight``.
    """
    renamed = {}
    for key, tensor in diffusers_decoder.state_dict().items():
        index, rest = key.removeprefix("layers.").split(".", 1)
        renamed[f"{int(index) + 1}.{rest}"] = tensor.clone()
    return renamed


@pytest.fixture(scope="module")
def reference() -> AutoencoderTiny:
    torch.manual_seed(0)
    return AutoencoderTiny().eval()  # TAESD's architecture is fixed, so the default config is the real one


@pytest.fixture
def latent() -> torch.Tensor:
    return torch.randn(2, 4, 12, 10, generator=torch.Generator().manual_seed(1)) * 2


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_published_layout_file_decodes_like_diffusers(
    reference: AutoencoderTiny, latent: torch.Tensor, tmp_path: Path, suffix: str
) -> None:
    weights = published_layout(reference.decoder)
    path = tmp_path / f"taesd_decoder{suffix}"
    torch.save(weights, path) if suffix == ".pth" else save_file(weights, path)

    decoder = load_taesd_decoder(path)
    with torch.no_grad():
        ours = decoder(latent)
        # AutoencoderTiny.decode takes the model-space latent as it is (scaling_factor 1.0) and maps
        # TAESD's [0, 1] output to diffusers' [-1, 1]; undo only that last step.
        theirs = (reference.decode(latent).sample + 1) / 2
    assert ours.shape == (2, 3, 96, 80) and theirs.std() > 0.01, "a meaningful comparison needs varied output"
    assert (ours - theirs).abs().max() <= TOLERANCE


def test_the_module_keys_are_the_published_ones() -> None:
    keys = TAESDDecoder().state_dict().keys()
    assert {"1.weight", "1.bias", "3.conv.0.weight", "3.conv.4.bias", "7.weight", "19.weight", "19.bias"} <= keys
    assert "7.bias" not in keys, "the convolutions after each upsample have no bias"
    # the first conv, ten blocks of three convs, three bias-free convs after the upsamples, the RGB conv
    assert len(keys) == 2 + 10 * 3 * 2 + 3 + 2


def test_a_file_with_other_keys_is_rejected_naming_the_file(tmp_path: Path) -> None:
    encoder_like = {"0.weight": torch.zeros(64, 3, 3, 3), "1.conv.0.weight": torch.zeros(64, 64, 3, 3)}
    path = tmp_path / "taesd_encoder.safetensors"
    save_file(encoder_like, path)
    with pytest.raises(
        TAESDWeightsError, match=r"taesd_encoder\.safetensors: is not a TAESD decoder: missing .*1\.weight"
    ):
        load_taesd_decoder(path)


def test_a_file_with_the_right_keys_but_wrong_shapes_is_rejected(tmp_path: Path) -> None:
    weights = TAESDDecoder().state_dict()
    weights["19.weight"] = torch.zeros(4, 64, 3, 3)
    path = tmp_path / "taesd_decoder.pth"
    torch.save(weights, path)
    with pytest.raises(TAESDWeightsError, match=r"19\.weight has shape \(4, 64, 3, 3\), expected \(3, 64, 3, 3\)"):
        load_taesd_decoder(path)


@pytest.mark.parametrize("suffix", PICKLE_SUFFIXES)
def test_a_safetensors_file_under_a_pickle_suffix_loads(tmp_path: Path, suffix: str) -> None:
    weights = TAESDDecoder().state_dict()
    save_file(weights, tmp_path / f"taesd_decoder{suffix}")
    loaded = load_taesd_decoder(tmp_path / f"taesd_decoder{suffix}").state_dict()
    assert all(torch.equal(loaded[key], weights[key]) for key in weights)


def test_a_pickle_named_safetensors_is_refused(tmp_path: Path) -> None:
    torch.save(TAESDDecoder().state_dict(), tmp_path / "taesd_decoder.safetensors")
    expect_refusal(load_taesd_decoder, tmp_path / "taesd_decoder.safetensors", PICKLE_NAMED_SAFETENSORS)


@pytest.mark.parametrize(("name", "content", "reason"), BAD_WEIGHT_FILES)
def test_a_file_that_is_not_weights_is_named_with_what_it_is(
    tmp_path: Path, name: str, content: bytes, reason: str
) -> None:
    expect_refusal(load_taesd_decoder, write_bad_file(tmp_path, name, content), reason)


def test_the_latent_channel_count_comes_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "taesd3_decoder.safetensors"
    save_file(TAESDDecoder(latent_channels=16).state_dict(), path)
    assert load_taesd_decoder(path)[1].in_channels == 16


def test_a_preview_is_the_first_item_clamped_to_uint8(latent: torch.Tensor) -> None:
    torch.manual_seed(2)
    decoder = TAESDDecoder().eval()
    image = taesd_preview(decoder, latent)
    with torch.no_grad():
        expected = (decoder(latent[:1])[0].clamp(0, 1) * 255).round().permute(1, 2, 0)
    assert image.shape == (96, 80, 3) and image.dtype.name == "uint8"
    assert torch.equal(torch.from_numpy(image), expected.to(torch.uint8))
