"""diffusers pipeline folders, written by diffusers/transformers themselves, are classified."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from diffusion.checkpoint import ModelFamily, detect_checkpoint
from diffusion.checkpoint.errors import CheckpointFormatError, UnsupportedModelError

TINY_UNETS = {
    "sd15": dict(cross_attention_dim=32),
    "sd2": dict(cross_attention_dim=32, use_linear_projection=True),
    "sdxl": dict(
        cross_attention_dim=64,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=80,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64, 64),
    ),
    "sdxl_refiner": dict(
        cross_attention_dim=32,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=72,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64, 64, 64),
    ),
}
PIPELINES = {
    "sd15": "StableDiffusionPipeline",
    "sd2": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
    "sdxl_refiner": "StableDiffusionXLImg2ImgPipeline",
}


def write_diffusers_folder(root: Path, family: str, in_channels: int = 4, prediction: str = "epsilon") -> Path:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    unet_args = dict(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=2,
    )
    unet_args.update(TINY_UNETS[family])
    UNet2DConditionModel(**unet_args).save_pretrained(root / "unet")
    AutoencoderKL(
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        scaling_factor=0.13025 if family.startswith("sdxl") else 0.18215,
    ).save_pretrained(root / "vae")
    clip = CLIPTextConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=1000,
        projection_dim=32,
    )
    components = {"unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
    if family != "sdxl_refiner":
        CLIPTextModel(clip).save_pretrained(root / "text_encoder")
        components["text_encoder"] = ["transformers", "CLIPTextModel"]
    if family.startswith("sdxl"):
        CLIPTextModelWithProjection(clip).save_pretrained(root / "text_encoder_2")
        components["text_encoder_2"] = ["transformers", "CLIPTextModelWithProjection"]
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({"_class_name": "EulerDiscreteScheduler", "prediction_type": prediction})
    )
    (root / "model_index.json").write_text(json.dumps({"_class_name": PIPELINES[family], **components}))
    return root


@pytest.mark.parametrize("family", sorted(TINY_UNETS))
def test_folder_family_and_components(tmp_path: Path, family: str) -> None:
    info = detect_checkpoint(write_diffusers_folder(tmp_path, family))
    assert info.family is ModelFamily(family)
    assert info.prediction == "eps"
    assert not info.is_inpaint
    assert info.latent_scale_factor == (0.13025 if family.startswith("sdxl") else 0.18215)
    expected = {
        "sd15": {"unet": "unet", "vae": "vae", "clip_l": "text_encoder"},
        "sd2": {"unet": "unet", "vae": "vae", "clip_h": "text_encoder"},
        "sdxl": {"unet": "unet", "vae": "vae", "clip_l": "text_encoder", "clip_g": "text_encoder_2"},
        "sdxl_refiner": {"unet": "unet", "vae": "vae", "clip_g": "text_encoder_2"},
    }[family]
    assert {name: src.file.parent.name for name, src in info.components.items()} == expected
    assert all(src.file.suffix == ".safetensors" for src in info.components.values())


def test_folder_v_prediction_and_inpainting(tmp_path: Path) -> None:
    info = detect_checkpoint(write_diffusers_folder(tmp_path, "sd2", in_channels=9, prediction="v_prediction"))
    assert (info.family, info.prediction, info.is_inpaint) == (ModelFamily.SD2, "v", True)


def test_transformer_pipelines_are_named_unsupported(tmp_path: Path) -> None:
    (tmp_path / "transformer").mkdir()
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(UnsupportedModelError, match="FluxPipeline"):
        detect_checkpoint(tmp_path)


def test_a_plain_directory_is_not_a_diffusers_folder(tmp_path: Path) -> None:
    with pytest.raises(CheckpointFormatError, match="without model_index.json"):
        detect_checkpoint(tmp_path)


def test_a_component_folder_without_weights_is_named(tmp_path: Path) -> None:
    write_diffusers_folder(tmp_path, "sd15")
    (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(CheckpointFormatError, match="vae: holds no weights file"):
        detect_checkpoint(tmp_path)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_a_folder_loads_into_modules_that_compute_what_diffusers_computes(tmp_path: Path, family: str) -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    from diffusion.checkpoint.load import load_checkpoint

    folder = write_diffusers_folder(tmp_path, family)
    loaded = load_checkpoint(folder)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=g)
    context = torch.randn(1, 77, TINY_UNETS[family]["cross_attention_dim"], generator=g)
    t = torch.tensor([321.0])
    unet = UNet2DConditionModel.from_pretrained(folder / "unet").eval()
    extra, y = {}, None
    if family == "sdxl":
        from diffusion.unet import sdxl_adm_vector

        pooled = torch.randn(1, 32, generator=g)
        extra = {
            "added_cond_kwargs": {"text_embeds": pooled, "time_ids": torch.tensor([[8.0, 8.0, 0.0, 0.0, 8.0, 8.0]])}
        }
        y = sdxl_adm_vector(pooled, (8, 8), (0, 0), (8, 8), embed_dim=8)
    vae = AutoencoderKL.from_pretrained(folder / "vae").eval()
    clip = CLIPTextModel.from_pretrained(folder / "text_encoder").eval()
    ids = torch.tensor([[0, 5, 17, 999, 2] + [2] * 72])
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.unet(x, t, context, y), unet(x, t, context, **extra).sample, atol=1e-4, rtol=1e-4
        )
        torch.testing.assert_close(loaded.vae.decode(x), vae.decode(x).sample, atol=1e-4, rtol=1e-4)
        hidden, _ = loaded.text_encoders.encoders["clip_l"](ids, torch.tensor([4]), layer=-1, normalize_hidden=True)
        torch.testing.assert_close(hidden, clip(ids).last_hidden_state, atol=1e-5, rtol=1e-5)
