"""Tiny checkpoints: deterministic, classified as their family, and in the real single-file layout.

"Real layout" is judged by diffusers: its own LDM->diffusers converters must turn a tiny file into
state dicts that load strictly into diffusers/transformers models, and those models must compute what
Loom's modules loaded from the same file compute.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from diffusion.checkpoint import ModelFamily, detect_checkpoint
from diffusion.checkpoint.load import load_checkpoint
from diffusion.tiny import TINY_TEXT_WIDTH, tiny_checkpoint_tensors, write_tiny_checkpoint
from diffusion.unet import sdxl_adm_vector, sdxl_refiner_adm_vector

FAMILIES = ["sd15", "sd2", "sdxl", "sdxl_refiner"]


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {family: write_tiny_checkpoint(root / f"{family}.safetensors", family) for family in FAMILIES}


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path: Path) -> None:
    def digest(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    first = write_tiny_checkpoint(tmp_path / "a.safetensors", "sd15", seed=3)
    second = write_tiny_checkpoint(tmp_path / "b.safetensors", "sd15", seed=3)
    other = write_tiny_checkpoint(tmp_path / "c.safetensors", "sd15", seed=4)
    assert digest(first) == digest(second) != digest(other)


def test_writing_does_not_disturb_the_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_checkpoint_tensors("sd15")
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("inpaint", [False, True])
@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_files_are_detected_as_their_family(tmp_path: Path, family: str, inpaint: bool) -> None:
    info = detect_checkpoint(write_tiny_checkpoint(tmp_path / "m.safetensors", family, inpaint=inpaint))
    assert (info.family, info.is_inpaint, info.prediction) == (ModelFamily(family), inpaint, "eps")


@pytest.mark.parametrize(("family", "prediction"), [("sd2", "v"), ("sdxl", "v"), ("sdxl", "edm")])
def test_prediction_markers_are_detected(tmp_path: Path, family: str, prediction: str) -> None:
    path = write_tiny_checkpoint(tmp_path / "m.safetensors", family, prediction=prediction)
    assert detect_checkpoint(path).prediction == prediction


@pytest.mark.parametrize(("family", "prediction"), [("sd15", "v"), ("sd2", "edm"), ("sdxl_refiner", "v")])
def test_families_without_such_a_marker_refuse_it(family: str, prediction: str) -> None:
    with pytest.raises(ValueError, match=prediction):
        tiny_checkpoint_tensors(family, prediction=prediction)


# ---- the layout, as diffusers reads single files ------------------------------------------------

_DIFFUSERS_UNETS = {
    "sd15": dict(
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TINY_TEXT_WIDTH,
        attention_head_dim=8,
    ),
    "sd2": dict(
        block_out_channels=(64, 128),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TINY_TEXT_WIDTH,
        attention_head_dim=(1, 2),
        use_linear_projection=True,
    ),
    "sdxl": dict(
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=2 * TINY_TEXT_WIDTH,
        attention_head_dim=1,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=TINY_TEXT_WIDTH + 6 * 256,
    ),
    "sdxl_refiner": dict(
        block_out_channels=(32, 64, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TINY_TEXT_WIDTH,
        attention_head_dim=1,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=TINY_TEXT_WIDTH + 5 * 256,
    ),
}


def _diffusers_unet(family: str, checkpoint: dict[str, torch.Tensor]):
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    model = UNet2DConditionModel(layers_per_block=1, **_DIFFUSERS_UNETS[family]).eval()
    model.load_state_dict(convert_ldm_unet_checkpoint(checkpoint, dict(model.config)), strict=True)
    return model


@pytest.mark.parametrize("family", FAMILIES)
def test_unet_weights_read_by_diffusers_compute_what_loom_computes(tiny_files: dict[str, Path], family: str) -> None:
    from safetensors.torch import load_file

    reference = _diffusers_unet(family, load_file(tiny_files[family]))
    unet = load_checkpoint(tiny_files[family]).unet
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=g)
    context = torch.randn(1, 77, reference.config.cross_attention_dim, generator=g)
    t = torch.tensor([500.0])
    pooled = torch.randn(1, TINY_TEXT_WIDTH, generator=g)
    if family == "sdxl":
        numbers, y = [64.0, 64.0, 0.0, 0.0, 64.0, 64.0], sdxl_adm_vector(pooled, (64, 64), (0, 0), (64, 64))
    elif family == "sdxl_refiner":
        numbers, y = [64.0, 64.0, 0.0, 0.0, 6.0], sdxl_refiner_adm_vector(pooled, (64, 64), (0, 0), 6.0)
    else:
        numbers, y = None, None
    extra = (
        {} if numbers is None else {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": torch.tensor([numbers])}}
    )
    with torch.no_grad():
        expected = reference(x, t, encoder_hidden_states=context, **extra).sample
        actual = unet(x, t, context, y)
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)


def test_vae_weights_read_by_diffusers_decode_like_loom(tiny_files: dict[str, Path]) -> None:
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
    from safetensors.torch import load_file

    reference = AutoencoderKL(
        block_out_channels=(32, 64, 64, 64),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        latent_channels=4,
    ).eval()
    reference.load_state_dict(
        convert_ldm_vae_checkpoint(load_file(tiny_files["sd15"]), dict(reference.config)), strict=True
    )
    vae = load_checkpoint(tiny_files["sd15"]).vae
    latent = torch.randn(1, 4, 8, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        decoded = vae.decode(latent)
        torch.testing.assert_close(decoded, reference.decode(latent).sample, atol=1e-4, rtol=1e-4)
    assert decoded.shape[-2:] == (64, 48), "the real 8x factor: a tiny workflow makes a real model's image size"


def _transformers_clip(checkpoint: dict[str, torch.Tensor], prefix: str, openclip: bool, projected: bool):
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        hidden_size=TINY_TEXT_WIDTH,
        intermediate_size=2 * TINY_TEXT_WIDTH,
        num_hidden_layers=2,
        num_attention_heads=1,
        projection_dim=TINY_TEXT_WIDTH,
        hidden_act="gelu" if openclip else "quick_gelu",
    )
    model = (CLIPTextModelWithProjection if projected else CLIPTextModel)(config).eval()
    if openclip:
        weights = convert_open_clip_checkpoint(model, checkpoint, prefix=prefix)
    else:
        weights = convert_ldm_clip_checkpoint({k: v for k, v in checkpoint.items() if k.startswith(prefix)}, prefix)
    # transformers >= 5.6 keeps CLIPTextModel's layers at top level, without `text_model.`
    expected = set(model.state_dict())
    weights = {k if k in expected else k.removeprefix("text_model."): v for k, v in weights.items()}
    weights.pop("embeddings.position_ids", None)
    model.load_state_dict(weights, strict=True)
    return model


# diffusers drops SD2's text projection (SD2 uses no pooled output), so only bigG's is compared.
@pytest.mark.parametrize(
    ("family", "name", "prefix", "openclip", "projected"),
    [
        ("sd15", "clip_l", "cond_stage_model.transformer.", False, False),
        ("sd2", "clip_h", "cond_stage_model.model.", True, False),
        ("sdxl", "clip_l", "conditioner.embedders.0.transformer.", False, False),
        ("sdxl", "clip_g", "conditioner.embedders.1.model.", True, True),
        ("sdxl_refiner", "clip_g", "conditioner.embedders.0.model.", True, True),
    ],
)
def test_text_encoders_read_by_transformers_encode_like_loom(
    tiny_files: dict[str, Path], family: str, name: str, prefix: str, openclip: bool, projected: bool
) -> None:
    from safetensors.torch import load_file

    reference = _transformers_clip(load_file(tiny_files[family]), prefix, openclip, projected)
    encoder = load_checkpoint(tiny_files[family]).text_encoders.encoders[name]
    ids = torch.tensor([[49406, 320, 1125, 539, 49407] + [49407] * 72])
    with torch.no_grad():
        out = reference(ids)
        hidden, pooled = encoder(ids, torch.tensor([4]), layer=-1, normalize_hidden=True)
    torch.testing.assert_close(hidden, out.last_hidden_state, atol=1e-5, rtol=1e-5)
    if projected:
        torch.testing.assert_close(pooled, out.text_embeds, atol=1e-5, rtol=1e-5)
