"""``comfy.sd`` loads model files into Loom's MODEL, CLIP and VAE values, through the loading Loom's loader
nodes use, so what a pack loads samples exactly as a workflow's loaders do."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

from graph.services import current_services, services_context
from nodes.clip_handles import ClipHandle
from nodes.comfy_compat import pack_runtime
from nodes.conditioning import CLIPTextEncode
from nodes.folders import Folders
from nodes.latent import EmptyLatentImage, VAEDecode
from nodes.loaders import CheckpointLoaderSimple, CLIPLoader, LoraLoader, UNETLoader
from nodes.model_handles import ModelHandle
from nodes.runtime import Runtime
from nodes.sampling import KSampler
from nodes.vae_handles import VaeHandle
from tests.nodes.tiny_models import kohya_lora_tensors, tiny_checkpoint, write_lora


@pytest.fixture
def checkpoint(folders: Folders) -> str:
    return str(tiny_checkpoint(folders.models, "sd15.safetensors"))


def picture(model: ModelHandle, clip: ClipHandle, vae: VaeHandle) -> torch.Tensor:
    """A text-to-image prompt's picture: CLIPTextEncode, KSampler (2 steps), VAEDecode."""
    positive, negative = CLIPTextEncode("a lighthouse", clip), CLIPTextEncode("blurry", clip)
    latent = KSampler(model, 3, 2, 7.0, "euler", "normal", positive, negative, EmptyLatentImage(64, 64, 1), 1.0)
    return VAEDecode(latent, vae)


def test_load_checkpoint_guess_config_gives_handles_that_run_a_ksampler_prompt(checkpoint: str) -> None:
    import comfy.sd

    model, clip, vae, clipvision = comfy.sd.load_checkpoint_guess_config(
        checkpoint, output_vae=True, output_clip=True, embedding_directory=["unused"]
    )
    assert isinstance(model, ModelHandle) and isinstance(clip, comfy.sd.CLIP) and isinstance(vae, comfy.sd.VAE)
    assert clipvision is None
    by_loader = CheckpointLoaderSimple("sd15.safetensors")
    assert model.checkpoint is by_loader[0].checkpoint  # one shared load
    image = picture(model, clip, vae)
    assert image.shape == (1, 64, 64, 3) and torch.equal(image, picture(*by_loader))


def test_outputs_not_asked_for_are_none(checkpoint: str) -> None:
    import comfy.sd

    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(checkpoint, output_vae=False, output_model=False)
    assert model is None and vae is None and isinstance(clip, ClipHandle)


def test_a_file_without_text_encoder_or_vae_gives_none_for_them_with_a_warning(
    checkpoint: str, folders: Folders, caplog: pytest.LogCaptureFixture
) -> None:
    import comfy.sd

    unet_only = folders.models / "diffusion_models" / "unet.safetensors"
    unet_only.parent.mkdir(parents=True, exist_ok=True)
    tensors = load_file(checkpoint)
    save_file({key: value for key, value in tensors.items() if key.startswith("model.diffusion_model.")}, unet_only)
    with caplog.at_level(logging.WARNING):
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(unet_only))
    assert isinstance(model, ModelHandle) and clip is None and vae is None
    assert "holds no text encoder" in caplog.text and "holds no VAE" in caplog.text


def test_load_diffusion_model_is_unet_loader(checkpoint: str, folders: Folders) -> None:
    import comfy.sd

    tiny_checkpoint(folders.models, "unet.safetensors", folder="diffusion_models")
    path = folders.models / "diffusion_models" / "unet.safetensors"
    model = comfy.sd.load_diffusion_model(str(path))
    assert model.checkpoint is UNETLoader("unet.safetensors", "default").checkpoint
    fp8 = comfy.sd.load_diffusion_model(path, {"dtype": torch.float8_e4m3fn})
    assert fp8.checkpoint is UNETLoader("unet.safetensors", "fp8_e4m3fn").checkpoint
    assert comfy.sd.load_unet(path).checkpoint is model.checkpoint
    with pytest.raises(NotImplementedError, match="not in torch.float16"):
        comfy.sd.load_diffusion_model(path, {"dtype": torch.float16})
    with pytest.raises(NotImplementedError, match="load_diffusion_model: Loom does not support model_options"):
        comfy.sd.load_diffusion_model(path, {"custom_operations": object()})


def test_load_clip_is_clip_loader(checkpoint: str, folders: Folders) -> None:
    import comfy.sd

    prefix = "cond_stage_model.transformer."
    tensors = load_file(checkpoint)
    clip_l = folders.models / "text_encoders" / "clip_l.safetensors"
    clip_l.parent.mkdir(parents=True, exist_ok=True)
    save_file({key.removeprefix(prefix): value for key, value in tensors.items() if key.startswith(prefix)}, clip_l)
    clip = comfy.sd.load_clip([str(clip_l)], clip_type=comfy.sd.CLIPType.STABLE_DIFFUSION)
    expected = CLIPLoader("clip_l.safetensors", "stable_diffusion")
    assert clip.checkpoint is expected.checkpoint and clip.family == "sd15" and not clip.on_cpu
    assert comfy.sd.load_clip([clip_l], model_options={"load_device": torch.device("cpu")}).on_cpu
    ((cond, _),) = CLIPTextEncode("a fox", clip)
    ((reference, _),) = CLIPTextEncode("a fox", expected)
    assert torch.equal(cond, reference)
    # A pack passing CLIPLoader's type name the way ComfyUI's CLIPLoader does.
    assert comfy.sd.load_clip([clip_l], clip_type=comfy.sd.CLIPType["STABLE_DIFFUSION"]).family == "sd15"


def test_load_lora_for_models_is_lora_loader(checkpoint: str, folders: Folders) -> None:
    import comfy.sd

    model, clip, vae = CheckpointLoaderSimple("sd15.safetensors")
    tensors = kohya_lora_tensors(model.unet, clip.encoders)
    write_lora(folders.models / "loras" / "style.safetensors", tensors)
    new_model, new_clip = comfy.sd.load_lora_for_models(model, clip, tensors, 0.6, 0.9)
    assert new_model is not None and new_clip is not None
    assert model.patches == () and clip.patches == {}
    by_loader, clip_by_loader = LoraLoader(model, clip, "style.safetensors", 0.6, 0.9)
    assert torch.equal(picture(new_model, new_clip, vae), picture(by_loader, clip_by_loader, vae))
    from_file, _ = comfy.sd.load_lora_for_models(model, None, folders.models / "loras" / "style.safetensors", 0.6, 0)
    assert from_file is not None and [strength for _, strength in from_file.patches] == [0.6]


def test_load_lora_for_models_returns_clones_at_strength_zero_and_logs_what_matched_nothing(
    checkpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    import comfy.sd

    model, clip, _ = CheckpointLoaderSimple("sd15.safetensors")
    tensors = kohya_lora_tensors(model.unet, clip.encoders)
    tensors["lora_unet_no_such_block.lora_up.weight"] = torch.zeros(4, 2)
    tensors["lora_unet_no_such_block.lora_down.weight"] = torch.zeros(2, 4)
    with caplog.at_level(logging.WARNING):
        new_model, new_clip = comfy.sd.load_lora_for_models(model, clip, tensors, 0.0, 0.0)
    assert new_model is not model and new_clip is not clip and new_model is not None and new_clip is not None
    assert new_model.patches == () and "lora_unet_no_such_block" in caplog.text
    new_model.model_options["my_pack"] = 1
    assert "my_pack" not in model.model_options


def test_unsupported_options_raise_naming_them(checkpoint: str) -> None:
    import comfy.sd

    with pytest.raises(NotImplementedError, match="load_checkpoint_guess_config: .*\\['custom_operations'\\]"):
        comfy.sd.load_checkpoint_guess_config(checkpoint, model_options={"custom_operations": object()})


def test_loading_outside_a_prompt_uses_the_runtime_packs_fall_back_to(checkpoint: str, runtime: Runtime) -> None:
    import comfy.sd

    pack_runtime.set_default_runtime(runtime)
    try:
        with services_context(None):  # as while a pack is imported: no prompt lends a runtime
            assert current_services() is None
            model, _, _, _ = comfy.sd.load_checkpoint_guess_config(checkpoint)
        assert (
            isinstance(model, ModelHandle)
            and model.checkpoint is CheckpointLoaderSimple("sd15.safetensors")[0].checkpoint
        )
    finally:
        pack_runtime.set_default_runtime(None)
