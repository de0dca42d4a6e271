"""Splitting a checkpoint into components and building runnable modules from it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from diffusion.checkpoint import CheckpointError, ModelFamily, detect_checkpoint, open_state_dict
from diffusion.checkpoint.load import load_checkpoint, split_checkpoint
from diffusion.tiny import tiny_checkpoint_tensors, write_tiny_checkpoint
from diffusion.unet import sdxl_adm_vector, sdxl_refiner_adm_vector
from tests.diffusion.test_checkpoint_diffusers import write_diffusers_folder
from tests.diffusion.weight_files import (
    BAD_WEIGHT_FILES,
    PICKLE_NAMED_SAFETENSORS,
    PICKLE_SUFFIXES,
    expect_refusal,
    write_bad_file,
)


@pytest.fixture(scope="module")
def sd15_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "sd15.safetensors", "sd15")


def test_split_hands_each_component_its_own_keys(sd15_file: Path) -> None:
    views = split_checkpoint(detect_checkpoint(sd15_file))
    assert set(views) == {"unet", "vae", "clip_l"}
    assert "input_blocks.0.0.weight" in views["unet"] and "out.2.weight" in views["unet"]
    assert "encoder.conv_in.weight" in views["vae"] and "post_quant_conv.weight" in views["vae"]
    assert "text_model.embeddings.token_embedding.weight" in views["clip_l"]
    whole = open_state_dict(sd15_file)
    assert sum(len(v) for v in views.values()) == len(whole)
    assert torch.equal(views["vae"]["decoder.conv_out.bias"], whole["first_stage_model.decoder.conv_out.bias"])


def _sample_inputs(family: ModelFamily, context_dim: int, pooled: torch.Tensor) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=g)
    context = torch.randn(1, 77, context_dim, generator=g)
    if family is ModelFamily.SDXL:
        return x, context, sdxl_adm_vector(pooled, (64, 64), (0, 0), (64, 64))
    if family is ModelFamily.SDXL_REFINER:
        return x, context, sdxl_refiner_adm_vector(pooled, (64, 64), (0, 0), 6.0)
    return x, context, None


@pytest.mark.parametrize("family", [family for family in ModelFamily if not family.is_flow_transformer])
def test_every_family_loads_and_runs_text_to_latent_to_image(tmp_path: Path, family: ModelFamily) -> None:
    loaded = load_checkpoint(write_tiny_checkpoint(tmp_path / "m.safetensors", family))
    assert loaded.info.family is family
    assert loaded.text_encoders is not None and loaded.text_encoders.family == family.value
    with torch.no_grad():
        cond, pooled = loaded.text_encoders.encode("a photo of an astronaut")
        x, _, y = _sample_inputs(family, cond.shape[-1], pooled)
        out = loaded.unet(x, torch.tensor([999.0]), cond, y)
        image = loaded.vae.decode(out)
    assert cond.shape[:2] == (1, 77) and cond.shape[-1] == loaded.unet.config.context_dim
    assert out.shape == x.shape and image.shape == (1, 3, 64, 64)
    assert torch.isfinite(image).all()


def test_weights_keep_their_stored_dtype_until_a_dtype_is_asked_for(tmp_path: Path) -> None:
    half = {k: v.half() if v.is_floating_point() else v for k, v in tiny_checkpoint_tensors("sd15").items()}
    path = tmp_path / "half.safetensors"
    save_file(half, path)
    stored = load_checkpoint(path)
    assert stored.unet.time_embed[0].weight.dtype is torch.float16
    assert stored.vae.decoder.conv_out.weight.dtype is torch.float16
    assert torch.equal(stored.unet.out[2].weight, half["model.diffusion_model.out.2.weight"])

    cast = load_checkpoint(path, device="cpu", dtype=torch.float32)
    params = [*cast.unet.parameters(), *cast.vae.parameters(), *cast.text_encoders.encoders["clip_l"].parameters()]
    assert {p.dtype for p in params} == {torch.float32}


def test_a_vae_file_loads_only_a_vae(tmp_path: Path) -> None:
    vae = {
        k.removeprefix("first_stage_model."): v
        for k, v in tiny_checkpoint_tensors("sd15").items()
        if k.startswith("first_stage_model.")
    }
    save_file(vae, tmp_path / "vae.safetensors")
    loaded = load_checkpoint(tmp_path / "vae.safetensors")
    assert (loaded.unet, loaded.text_encoders) == (None, None)
    assert loaded.vae.decode(torch.zeros(1, 4, 4, 4)).shape == (1, 3, 32, 32)


@pytest.mark.parametrize("suffix", PICKLE_SUFFIXES)
def test_a_safetensors_checkpoint_under_a_pickle_suffix_loads(sd15_file: Path, tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"sd15{suffix}"
    path.write_bytes(sd15_file.read_bytes())
    loaded = load_checkpoint(path)
    assert loaded.info.family is ModelFamily.SD15
    assert torch.equal(loaded.unet.out[2].weight, open_state_dict(sd15_file)["model.diffusion_model.out.2.weight"])


def test_a_pickled_checkpoint_named_safetensors_is_refused(tmp_path: Path) -> None:
    torch.save(tiny_checkpoint_tensors("sd15"), tmp_path / "sd15.safetensors")
    expect_refusal(load_checkpoint, tmp_path / "sd15.safetensors", PICKLE_NAMED_SAFETENSORS)


@pytest.mark.parametrize(("name", "content", "reason"), BAD_WEIGHT_FILES)
def test_a_checkpoint_that_is_not_weights_is_named_with_what_it_is(
    tmp_path: Path, name: str, content: bytes, reason: str
) -> None:
    path = write_bad_file(tmp_path, name, content)
    expect_refusal(detect_checkpoint, path, reason)
    expect_refusal(load_checkpoint, path, reason)


def test_weights_that_do_not_fit_name_the_file_and_the_key(tmp_path: Path) -> None:
    tensors = tiny_checkpoint_tensors("sd15")
    del tensors["cond_stage_model.transformer.text_model.final_layer_norm.weight"]
    path = tmp_path / "broken.safetensors"
    save_file(tensors, path)
    with pytest.raises(CheckpointError, match="final_layer_norm.weight") as err:
        load_checkpoint(path)
    assert err.value.path == path
    assert "sd15 model" in str(err.value)


def test_a_diffusers_layout_vae_file_decodes_like_diffusers(tmp_path: Path) -> None:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    reference = AutoencoderKL(
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        latent_channels=4,
    ).eval()
    save_file(reference.state_dict(), tmp_path / "vae.safetensors")
    loaded = load_checkpoint(tmp_path / "vae.safetensors")
    assert loaded.info.components["vae"].layout == "diffusers"
    latent = torch.randn(1, 4, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(loaded.vae.decode(latent), reference.decode(latent).sample, atol=1e-4, rtol=1e-4)


def test_a_diffusers_unet_config_that_states_no_heads_gets_the_diffusers_default(tmp_path: Path) -> None:
    from diffusers import UNet2DConditionModel

    folder = write_diffusers_folder(tmp_path, "sd15")
    config_path = folder / "unet" / "config.json"
    config = json.loads(config_path.read_text())
    del config["attention_head_dim"]
    config.pop("num_attention_heads", None)
    config_path.write_text(json.dumps(config))
    reference = UNet2DConditionModel.from_pretrained(folder / "unet").eval()
    assert reference.config.attention_head_dim == 8
    loaded = load_checkpoint(folder)
    g = torch.Generator().manual_seed(0)
    x, context, t = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 77, 32, generator=g), torch.tensor([321.0])
    with torch.no_grad():
        torch.testing.assert_close(loaded.unet(x, t, context), reference(x, t, context).sample, atol=1e-4, rtol=1e-4)
