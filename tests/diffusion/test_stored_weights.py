"""An fp16 checkpoint placed to compute in fp32 keeps half its weights in fp16 and computes exactly what
the model cast whole to fp32 computes: upcasting is exact, so the stored weights lose nothing."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from diffusion.checkpoint import LoadedCheckpoint, load_checkpoint
from diffusion.fused_linear import FusedLinear
from diffusion.lora import FullDelta, apply_lora_patches
from diffusion.model_memory import module_bytes, place
from diffusion.onednn import onednn_computes
from diffusion.packed_conv import PackedConv2d
from diffusion.stored_weights import ComputesFromStored, StoredEmbedding
from diffusion.tiny import tiny_checkpoint_tensors
from diffusion.unet_config import CheckpointLayoutError, load_exact


def _half_file_checkpoint(tmp_path: Path, family: str) -> tuple[LoadedCheckpoint, LoadedCheckpoint]:
    """(the file's models placed to compute in fp32, the same models cast whole by ``.float()``)."""
    tensors = {k: v.half() if v.is_floating_point() else v for k, v in tiny_checkpoint_tensors(family).items()}
    save_file(tensors, str(tmp_path / "tiny.safetensors"))
    placed, whole = load_checkpoint(tmp_path / "tiny.safetensors"), load_checkpoint(tmp_path / "tiny.safetensors")
    assert placed.text_encoders is not None and whole.text_encoders is not None
    for model in (placed.unet, placed.vae, *placed.text_encoders.encoders.values()):
        place(model, torch.device("cpu"), torch.float32)
    for model in (whole.unet, whole.vae, *whole.text_encoders.encoders.values()):
        model.float()
    return placed, whole


def test_unet_vae_and_clip_compute_what_the_model_cast_whole_computes(tmp_path: Path) -> None:
    placed, whole = _half_file_checkpoint(tmp_path, "sd15")
    x, t, context = torch.randn(2, 4, 16, 16), torch.tensor([999.0, 10.0]), torch.randn(2, 77, 64)
    ids, eos = torch.randint(0, 49406, (2, 77)), torch.tensor([5, 76])
    assert placed.text_encoders is not None and whole.text_encoders is not None
    with torch.no_grad():
        assert torch.equal(placed.unet(x, t, context), whole.unet(x, t, context))
        assert torch.equal(placed.vae.decode(x[:1]), whole.vae.decode(x[:1]))
        for name, encoder in placed.text_encoders.encoders.items():
            got, expected = encoder(ids, eos), whole.text_encoders.encoders[name](ids, eos)
            assert torch.equal(got.hidden, expected.hidden) and torch.equal(got.pooled, expected.pooled)


def test_linear_embedding_and_packed_conv_weights_stay_in_the_file_s_dtype_and_the_rest_is_cast(
    tmp_path: Path,
) -> None:
    placed, whole = _half_file_checkpoint(tmp_path, "sdxl")
    assert placed.text_encoders is not None
    packs = onednn_computes(torch.float32)
    for model in (placed.unet, placed.vae, *placed.text_encoders.encoders.values()):
        stored = {
            id(layer.weight)
            for layer in model.modules()
            if isinstance(layer, (FusedLinear, StoredEmbedding)) or (packs and isinstance(layer, PackedConv2d))
        }
        for layer in model.modules():
            if isinstance(layer, ComputesFromStored):
                assert layer.computes_in == torch.float32
        for tensor in model.parameters():
            assert tensor.dtype == (torch.float16 if id(tensor) in stored else torch.float32)
    assert module_bytes(placed.unet) < module_bytes(whole.unet)
    assert placed.unet.dtype == placed.vae.dtype == torch.float32


def test_a_placed_model_cast_again_computes_in_the_new_dtype(tmp_path: Path) -> None:
    placed, _ = _half_file_checkpoint(tmp_path, "sd15")
    bf16 = copy.deepcopy(placed.unet).to(torch.bfloat16)
    assert bf16.dtype == torch.bfloat16
    assert all(t.dtype == torch.bfloat16 for t in bf16.parameters())
    with torch.no_grad():
        out = bf16(
            torch.randn(1, 4, 8, 8, dtype=torch.bfloat16), torch.tensor([500.0]), torch.randn(1, 77, 64).bfloat16()
        )
    assert out.dtype == torch.bfloat16


class ScaledPair(nn.Module):
    """A convolution and a linear layer, the two kinds of layer scaled-fp8 files quantise."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = PackedConv2d(4, 8, 3, padding=1)
        self.linear = FusedLinear(8, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.conv(x).mean(dim=(2, 3)))


def _scaled_fp8_file() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(a scaled-fp8 state dict of ``ScaledPair``, the same weights dequantised to fp32)."""
    torch.manual_seed(0)
    weights = dict(ScaledPair().state_dict())
    dequantized = dict(weights)
    for prefix in ("conv", "linear"):
        scale = weights[f"{prefix}.weight"].abs().max() / 448.0
        quantized = (weights[f"{prefix}.weight"] / scale).to(torch.float8_e4m3fn)
        weights[f"{prefix}.weight"], weights[f"{prefix}.scale_weight"] = quantized, scale.reshape(())
        weights[f"{prefix}.scale_input"] = torch.ones(())
        dequantized[f"{prefix}.weight"] = quantized.float() * scale
    weights["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    return weights, dequantized


def _loaded(state_dict: dict[str, torch.Tensor]) -> ScaledPair:
    with torch.device("meta"):
        model = ScaledPair()
    load_exact(model, state_dict, "test model")
    return model


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_scaled_fp8_weights_stay_fp8_and_compute_as_their_dequantised_values(dtype: torch.dtype) -> None:
    weights, dequantized = _scaled_fp8_file()
    model, reference = _loaded(weights), _loaded(dequantized)
    place(model, torch.device("cpu"), dtype)
    reference.to(dtype)
    assert model.linear.weight.dtype == model.conv.weight.dtype == torch.float8_e4m3fn
    assert model.linear.weight_scale is not None and model.linear.weight_scale.dtype == torch.float32
    x = torch.randn(2, 4, 8, 8, dtype=dtype)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0 if dtype == torch.float32 else 1e-2)


def test_a_lora_on_a_scaled_fp8_weight_patches_its_real_values() -> None:
    weights, dequantized = _scaled_fp8_file()
    model = _loaded(weights)
    place(model, torch.device("cpu"), torch.float32)
    delta = torch.full((6, 8), 0.01)
    patched = apply_lora_patches(model, [({"linear.weight": [FullDelta(delta)]}, 1.0)])
    model.linear.weight.data = patched["linear.weight"]  # bound for a call, as nodes.patched_weights does
    torch.testing.assert_close(model.linear.compute_weight(), dequantized["linear.weight"] + delta)


def test_a_weight_scale_for_no_layer_is_named() -> None:
    weights, _ = _scaled_fp8_file()
    weights["nowhere.scale_weight"] = torch.ones(())
    with pytest.raises(CheckpointLayoutError, match=r"nowhere\.scale_weight: a weight scale for no linear"):
        _loaded(weights)


def _comfy_quant(layout: str) -> torch.Tensor:
    return torch.tensor(list(json.dumps({"format": layout}).encode()), dtype=torch.uint8)


def test_comfyui_s_newer_naming_of_per_tensor_fp8_loads_as_scaled_fp8() -> None:
    weights, dequantized = _scaled_fp8_file()
    renamed = {}
    for key, tensor in weights.items():
        if key == "scaled_fp8":
            continue
        renamed[key.replace(".scale_weight", ".weight_scale").replace(".scale_input", ".input_scale")] = tensor
    for prefix in ("conv", "linear"):
        renamed[f"{prefix}.comfy_quant"] = _comfy_quant("float8_e4m3fn")
    model, reference = _loaded(renamed), _loaded(dequantized)
    place(model, torch.device("cpu"), torch.float32)
    assert model.linear.weight.dtype == torch.float8_e4m3fn and model.linear.weight_scale is not None
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)


@pytest.mark.parametrize("layout", ["int8_blockwise", "nvfp4"])
def test_a_layer_quantised_in_another_layout_is_refused_by_name(layout: str) -> None:
    weights, _ = _scaled_fp8_file()
    weights["linear.comfy_quant"] = _comfy_quant(layout)
    with pytest.raises(
        CheckpointLayoutError, match=rf"linear\.comfy_quant: quantised as '{layout}'; Loom reads per-tensor fp8"
    ):
        _loaded(weights)
