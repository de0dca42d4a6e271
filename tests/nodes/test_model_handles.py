"""MODEL / CLIP / VAE handles: shared loads, LoRA patches that never touch the loaded tensors, and the
bytes they hold as the output cache counts them."""

from __future__ import annotations

import gc
import os
import weakref
from pathlib import Path

import pytest
import torch

import nodes.patched_weights as patched_weights
import nodes.shared_models as shared_models
from diffusion.checkpoint import LoadedCheckpoint
from diffusion.lora import LowRankDelta
from diffusion.model_memory import module_bytes
from graph.services import services_context
from graph.sizeof import nbytes
from nodes.clip_handles import ClipHandle
from nodes.model_handles import ModelHandle
from nodes.patched_weights import weights_swapped
from nodes.runtime import RuntimeOptions, build_runtime
from nodes.shared_models import load_shared_checkpoint
from nodes.vae_handles import VaeHandle
from tests.nodes.tiny_models import tiny_checkpoint

TO_Q = "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"


@pytest.fixture(scope="module")
def sd15_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("models"), "tiny.safetensors")


def count_loads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    loads: list[Path] = []
    real = shared_models.load_checkpoint
    monkeypatch.setattr(shared_models, "load_checkpoint", lambda path: loads.append(path) or real(path))
    return loads


def test_a_file_is_loaded_once_while_handles_use_it(sd15_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loads = count_loads(monkeypatch)
    first = load_shared_checkpoint(sd15_path)
    assert load_shared_checkpoint(sd15_path) is first
    assert len(loads) == 1
    os.utime(sd15_path, ns=(1, 1))  # a changed file is read again
    assert load_shared_checkpoint(sd15_path) is not first
    assert len(loads) == 2


def test_the_shared_load_goes_away_with_its_last_user(sd15_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loads = count_loads(monkeypatch)
    handle = ModelHandle(load_shared_checkpoint(sd15_path))
    del handle
    gc.collect()
    load_shared_checkpoint(sd15_path)
    assert len(loads) == 2


def test_a_changed_file_is_loaded_anew_and_the_old_copy_dies_with_its_last_handle(
    sd15_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads = count_loads(monkeypatch)
    old = ModelHandle(load_shared_checkpoint(sd15_path))
    with old.unet_fn():
        pass  # placed by the runtime's ModelMemory, which must not keep it alive either
    os.utime(sd15_path, ns=(3, 3))
    assert load_shared_checkpoint(sd15_path) is not old.checkpoint and len(loads) == 2
    gone = weakref.ref(old.unet)
    del old
    gc.collect()
    assert gone() is None


def test_a_vae_handle_keeps_its_files_load_so_no_second_copy_is_made(
    sd15_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads = count_loads(monkeypatch)
    loaded = load_shared_checkpoint(sd15_path)
    vae = VaeHandle(loaded.vae, sd15_path, loaded)
    del loaded
    gc.collect()
    assert load_shared_checkpoint(sd15_path).vae is vae.model and len(loads) == 1


def test_runtimes_do_not_share_loaded_modules(sd15_path: Path, tmp_path: Path) -> None:
    """Each runtime's ModelMemory moves and casts what it places; another runtime's settings must not apply."""
    first = load_shared_checkpoint(sd15_path)
    other = build_runtime(RuntimeOptions(base_dir=tmp_path / "other", device="cpu", dtype="fp32"))
    with services_context(other):
        assert load_shared_checkpoint(sd15_path) is not first


def checkpoint_bytes(loaded: LoadedCheckpoint) -> int:
    modules = [loaded.unet, loaded.vae, *loaded.text_encoders.encoders.values()]
    return sum(module_bytes(module) for module in modules)


def test_handles_hold_their_whole_file_and_handles_of_one_file_share_it(sd15_path: Path) -> None:
    loaded = load_shared_checkpoint(sd15_path)
    model, clip, vae = ModelHandle(loaded), ClipHandle(loaded), VaeHandle(loaded.vae, sd15_path, loaded)
    whole = checkpoint_bytes(loaded)
    assert whole > 1_000_000
    assert nbytes(model) == nbytes(clip) == nbytes(vae) == nbytes((model, clip, vae)) == whole
    assert nbytes(VaeHandle(loaded.vae)) == module_bytes(loaded.vae)


def test_weights_swapped_rebinds_and_restores_even_on_error() -> None:
    layer = torch.nn.Linear(2, 2)
    original = layer.weight.data_ptr()
    with pytest.raises(RuntimeError):
        with weights_swapped(layer, {"weight": torch.zeros(2, 2)}):
            assert torch.equal(layer(torch.ones(1, 2)), layer.bias.data[None])
            raise RuntimeError("boom")
    assert layer.weight.data_ptr() == original


def lora_on(handle: ModelHandle) -> dict[str, list[LowRankDelta]]:
    weight = handle.unet.get_parameter(TO_Q)
    generator = torch.Generator().manual_seed(0)
    return {
        TO_Q: [
            LowRankDelta(
                torch.randn(weight.shape[0], 2, generator=generator),
                torch.randn(2, weight.shape[1], generator=generator),
                1.0,
            )
        ]
    }


def unet_output(handle: ModelHandle) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(1, 4, 8, 8, generator=generator)
    context = torch.randn(1, 77, handle.unet.config.context_dim, generator=generator)
    with handle.unet_fn() as call:
        return call(x, torch.tensor([500.0]), context)


def test_lora_patches_change_the_output_but_never_the_loaded_tensors(sd15_path: Path) -> None:
    base = ModelHandle(load_shared_checkpoint(sd15_path))
    loaded_weight = base.unet.get_parameter(TO_Q)
    storage, snapshot = loaded_weight.data_ptr(), loaded_weight.detach().clone()
    patched = base.with_lora(lora_on(base), 1.0)
    assert patched.unet is base.unet
    assert not torch.equal(unet_output(patched), unet_output(base))
    assert base.unet.get_parameter(TO_Q).data_ptr() == storage and torch.equal(loaded_weight, snapshot)
    assert base.with_lora(lora_on(base), 0.0) is base


def test_a_lora_handle_adds_its_own_tensors_to_the_base_it_shares(sd15_path: Path) -> None:
    base = ModelHandle(load_shared_checkpoint(sd15_path))
    patches = lora_on(base)
    (delta,) = patches[TO_Q]
    patched = base.with_lora(patches, 1.0)
    lora_bytes = nbytes([delta.up, delta.down])
    assert nbytes((base, patched)) == nbytes(base) + lora_bytes
    unet_output(patched)  # computes the patched weight, which the handle keeps
    weight = base.unet.get_parameter(TO_Q)
    assert nbytes((base, patched)) == nbytes(base) + lora_bytes + weight.element_size() * weight.nelement()


def test_patched_weights_are_computed_once_per_handle(sd15_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = patched_weights.apply_lora_patches
    monkeypatch.setattr(patched_weights, "apply_lora_patches", lambda *a: calls.append(1) or real(*a))
    base = ModelHandle(load_shared_checkpoint(sd15_path))
    patched = base.with_lora(lora_on(base), 0.5)
    first = unet_output(patched)
    assert torch.equal(unet_output(patched), first)
    assert len(calls) == 1


def test_an_inpainting_model_needs_its_extra_channels(tmp_path: Path) -> None:
    handle = ModelHandle(load_shared_checkpoint(tiny_checkpoint(tmp_path, "inpaint.safetensors", inpaint=True)))
    assert handle.in_channels == 9
    with handle.unet_fn() as call, pytest.raises(ValueError, match="5 extra input channels"):
        call(torch.zeros(1, 4, 8, 8), torch.tensor([1.0]), torch.zeros(1, 77, 64))
    with handle.unet_fn() as call:
        assert call(
            torch.zeros(1, 4, 8, 8), torch.tensor([1.0]), torch.zeros(1, 77, 64), concat=torch.zeros(1, 5, 8, 8)
        ).shape == (1, 4, 8, 8)


def test_vae_handle_matches_the_autoencoder_and_names_channel_mismatches(sd15_path: Path) -> None:
    loaded = load_shared_checkpoint(sd15_path)
    vae = VaeHandle(loaded.vae, sd15_path)
    image = torch.rand(1, 21, 26, 3)
    latent = vae.encode(image)
    cropped = image[:, 2:18, 1:25]  # trimmed to multiples of the VAE's 8x factor, centred
    with torch.no_grad():
        torch.testing.assert_close(latent, loaded.vae.encode(cropped.movedim(-1, 1) * 2 - 1))
        decoded = ((loaded.vae.decode(latent) + 1) / 2).clamp(0, 1).movedim(1, -1)
    torch.testing.assert_close(vae.decode(latent), decoded)
    with pytest.raises(ValueError, match="works on 4-channel latents: the latent comes from another model family"):
        vae.decode(torch.zeros(1, 16, 4, 4))


def test_clip_skip_out_of_range_names_the_valid_range(sd15_path: Path) -> None:
    clip = ClipHandle(load_shared_checkpoint(sd15_path))
    assert clip.with_clip_skip(-2).clip_skip == -2
    with pytest.raises(ValueError, match=r"-1 \.\. -"):
        clip.with_clip_skip(-24)
