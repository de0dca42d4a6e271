"""``FusedLinear`` and the fused GELU/product helpers compute exactly what their plain compositions do."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from diffusion.fused_linear import FusedLinear, linear_gelu, linear_times
from tests.diffusion.cpu_paths import requires_onednn


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got.float() - expected.float()).abs().max() / expected.float().abs().max()).item()


def weights(dtype: torch.dtype, bias: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(24, 16, generator=generator).to(dtype)
    return weight, torch.randn(24, generator=generator).to(dtype) if bias else None


def tokens(dtype: torch.dtype, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, 16, generator=torch.Generator().manual_seed(1)).to(dtype)


@pytest.mark.parametrize("shape", [(5,), (3, 5), (2, 7, 5)])
@pytest.mark.parametrize("bias", [True, False])
def test_fp32_equals_nn_linear_for_any_leading_shape(shape: tuple[int, ...], bias: bool, cpu_path: str) -> None:
    layer = FusedLinear(16, 24, bias=bias).eval()
    x = torch.randn(*shape, 16)
    with torch.no_grad():
        assert relative_error(layer(x), F.linear(x, layer.weight, layer.bias)) < 1e-6


def test_fp32_gelu_and_product_are_fused_without_changing_the_values(cpu_path: str) -> None:
    weight, bias = weights(torch.float32)
    x, other = tokens(torch.float32, 2, 9), torch.randn(2, 9, 24)
    with torch.no_grad():
        assert relative_error(linear_gelu(x, weight, bias), F.gelu(F.linear(x, weight, bias))) < 1e-6
        assert relative_error(linear_times(x, weight, bias, other), F.linear(x, weight, bias) * other) < 1e-6


def profiled_geglu_and_projection(dtype: torch.dtype) -> list[str]:
    """The ops one GEGLU pattern (GELU of one projection times another) and one projection call."""
    weight, bias = weights(dtype)
    x = tokens(dtype, 2, 9)
    with torch.no_grad(), torch.profiler.profile() as profile:
        linear_times(x, weight, bias, linear_gelu(x, weight, bias))
        FusedLinear(16, 24).to(dtype).eval()(x)
    return [event.name for event in profile.events() if "::" in event.name]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_inference_runs_each_projection_as_one_onednn_call(dtype: torch.dtype, cpu_path: str) -> None:
    """On the fast path the GEGLU pattern is two oneDNN matmuls and nothing else; a CPU without
    oneDNN kernels for the dtype computes the same with plain ``linear``, ``gelu`` and ``mul``."""
    ops = profiled_geglu_and_projection(dtype)
    if cpu_path == "onednn":
        assert ops.count("mkldnn::_linear_pointwise") == 3
        assert not {"aten::gelu", "aten::mul", "aten::mul_", "aten::addmm", "aten::linear"} & set(ops)
    else:
        assert "mkldnn::_linear_pointwise" not in ops
        assert {"aten::linear", "aten::gelu", "aten::mul_"} <= set(ops)


@requires_onednn(torch.bfloat16)
def test_bf16_fusion_rounds_once_where_the_plain_path_rounds_twice() -> None:
    """The fused epilogue works on the fp32 accumulator, so it is at least as close to the fp32 truth."""
    weight, bias = weights(torch.bfloat16)
    x = tokens(torch.bfloat16, 4, 9)
    truth = F.gelu(F.linear(x.float(), weight.float(), bias.float()))
    with torch.no_grad():
        fused, plain = linear_gelu(x, weight, bias), F.gelu(F.linear(x, weight, bias))
    assert fused.dtype == torch.bfloat16
    assert relative_error(fused, truth) <= relative_error(plain, truth) + 2**-9


def test_a_product_operand_that_does_not_match_the_output_takes_the_plain_path(cpu_path: str) -> None:
    weight, bias = weights(torch.float32)
    x = tokens(torch.float32, 3)
    other = torch.randn(24, 3).t()  # right shape, not contiguous
    with torch.no_grad():
        assert relative_error(linear_times(x, weight, bias, other), F.linear(x, weight, bias) * other) < 1e-6


def test_training_records_gradients_through_the_plain_path() -> None:
    layer = FusedLinear(16, 24)
    x = torch.randn(3, 16, requires_grad=True)
    (layer(x).sum() + linear_gelu(x, layer.weight, layer.bias).sum()).backward()
    assert x.grad is not None and layer.weight.grad is not None


def test_a_product_operand_that_needs_gradients_keeps_them() -> None:
    weight, bias = weights(torch.float32)
    x, other = tokens(torch.float32, 3), torch.randn(3, 24, requires_grad=True)
    linear_times(x, weight, bias, other).sum().backward()
    assert torch.allclose(other.grad, F.linear(x, weight, bias))


def test_same_state_dict_keys_as_nn_linear() -> None:
    plain = torch.nn.Linear(16, 24)
    fused = FusedLinear(16, 24)
    fused.load_state_dict(plain.state_dict(), strict=True)
    assert list(fused.state_dict()) == ["weight", "bias"]
