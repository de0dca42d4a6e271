"""fp8 matrix multiplication for fp8 and scaled-fp8 linear layers, against the upcast path they replace.

``torch._scaled_mm`` runs on the CPU too (slowly), so the arithmetic is checked here on every machine; on a
GPU ``place`` turns it on only where the card multiplies fp8 natively (compute capability 8.9+).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diffusion import model_memory
from diffusion.fp8_matmul import fp8_linear, fp8_matmul_supported, takes_fp8_matmul
from diffusion.fused_linear import FusedLinear
from diffusion.model_memory import place
from diffusion.stored_weights import attach_weight_scales

#: Relative error (Frobenius) of the fp8 product against the upcast one: e4m3 keeps 3 mantissa bits, so each
#: quantised activation is off by up to 2^-4 of itself; summed over a row the errors partly cancel (~2-3 %).
TOLERANCE = 0.05


def fp8_layer(width_in: int, width_out: int, scaled: bool, seed: int = 0) -> FusedLinear:
    generator = torch.Generator().manual_seed(seed)
    layer = FusedLinear(width_in, width_out)
    real = torch.randn(width_out, width_in, generator=generator) * 0.05
    scale = real.abs().amax() / 448.0 if scaled else torch.tensor(1.0)
    layer.weight.data = (real / scale).to(torch.float8_e4m3fn)
    if scaled:
        attach_weight_scales(nn.Sequential(layer), {"0": scale})
    layer.bias.data = torch.randn(width_out, generator=generator) * 0.1
    return layer


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).norm() / want.float().norm())


@pytest.mark.parametrize("scaled", [False, True], ids=["fp8", "scaled_fp8"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fp8_matmul_matches_the_upcast_path_within_the_stated_tolerance(scaled: bool, dtype: torch.dtype) -> None:
    layer = fp8_layer(256, 384, scaled)
    place(layer, torch.device("cpu"), dtype)
    x = torch.randn(2, 77, 256, generator=torch.Generator().manual_seed(1)).to(dtype)
    upcast = layer(x)
    layer.fp8_matmul = True
    fp8 = layer(x)
    assert fp8.dtype == dtype and fp8.shape == upcast.shape
    error = relative_error(fp8, upcast)
    assert 0 < error < TOLERANCE, error


def test_the_input_scale_follows_the_activations_so_large_and_small_inputs_keep_their_precision() -> None:
    layer = fp8_layer(128, 128, scaled=True)
    place(layer, torch.device("cpu"), torch.bfloat16)
    base = torch.randn(64, 128, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    for magnitude in (1e-3, 1.0, 1e3):
        x = base * magnitude
        want = layer(x)
        got = fp8_linear(x, layer.weight, layer.weight_scale, layer.bias, torch.bfloat16)
        assert relative_error(got, want) < TOLERANCE, magnitude


def test_place_turns_fp8_matmul_on_only_where_the_device_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    layer = fp8_layer(64, 64, scaled=True)
    place(layer, torch.device("cpu"), torch.bfloat16)
    assert not layer.fp8_matmul, "no CPU multiplies fp8 natively"
    monkeypatch.setattr(model_memory, "fp8_matmul_supported", lambda device: True)
    place(layer, torch.device("cpu"), torch.bfloat16)
    assert layer.fp8_matmul
    odd = fp8_layer(64, 40, scaled=True)
    place(odd, torch.device("cpu"), torch.bfloat16)
    assert not odd.fp8_matmul, "an output width that is no multiple of 16 keeps the upcast path"
    place(layer, torch.device("cpu"), torch.float32)
    assert not layer.fp8_matmul, "fp32 compute keeps the upcast path"


def test_which_weights_and_devices_take_fp8_matmul() -> None:
    e4m3 = torch.zeros(32, 48, dtype=torch.float8_e4m3fn)
    assert takes_fp8_matmul(e4m3, torch.bfloat16) and takes_fp8_matmul(e4m3, torch.float16)
    assert not takes_fp8_matmul(e4m3.to(torch.float8_e5m2), torch.bfloat16)
    assert not takes_fp8_matmul(torch.zeros(32, 48, dtype=torch.bfloat16), torch.bfloat16)
    assert not fp8_matmul_supported(torch.device("cpu"))


def test_fused_mlp_projections_multiply_in_fp8_too() -> None:
    layer = fp8_layer(128, 256, scaled=True)
    place(layer, torch.device("cpu"), torch.bfloat16)
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(64, 128, generator=generator).to(torch.bfloat16)
    other = torch.randn(64, 256, generator=generator).to(torch.bfloat16)
    upcast_gelu, upcast_times = layer.gelu(x, "tanh"), layer.times(x, other)
    layer.fp8_matmul = True
    assert 0 < relative_error(layer.gelu(x, "tanh"), upcast_gelu) < TOLERANCE
    assert 0 < relative_error(layer.times(x, other), upcast_times) < TOLERANCE


@pytest.mark.cuda
@pytest.mark.skipif(
    not torch.cuda.is_available() or not fp8_matmul_supported(torch.device("cuda")),
    reason="needs a GPU with fp8 matmul (compute capability 8.9+); the CPU's _scaled_mm checks the arithmetic above",
)
def test_on_a_gpu_with_fp8_matmul_place_turns_it_on_and_it_matches_the_upcast_path() -> None:
    layer = fp8_layer(1024, 2048, scaled=True)
    place(layer, torch.device("cuda"), torch.bfloat16)
    assert layer.fp8_matmul
    x = torch.randn(2, 4096, 1024, generator=torch.Generator().manual_seed(4)).to("cuda", torch.bfloat16)
    fp8 = layer(x)
    layer.fp8_matmul = False
    assert 0 < relative_error(fp8, layer(x)) < TOLERANCE
