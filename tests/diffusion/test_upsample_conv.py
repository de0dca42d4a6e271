"""``NearestUpsampleConv2d`` computes conv(nearest-2x(x)) exactly, as one stride-2 transposed conv of x."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from diffusion.upsample_conv import NearestUpsampleConv2d, transposed_kernel


def reference(conv: NearestUpsampleConv2d, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    upsampled = (
        F.interpolate(x, scale_factor=2.0, mode="nearest")
        if size is None
        else F.interpolate(x, size=size, mode="nearest")
    )
    return F.conv2d(upsampled.float(), conv.weight.float(), conv.bias.float(), padding=1)


def layer(channels_in: int, channels_out: int, seed: int = 0) -> NearestUpsampleConv2d:
    torch.manual_seed(seed)
    return NearestUpsampleConv2d(channels_in, channels_out, 3, padding=1).eval()


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got.float() - expected).abs().max() / expected.abs().max()).item()


@pytest.mark.parametrize("height, width", [(8, 8), (7, 5), (1, 3)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fp32_output_equals_upsample_then_convolve(height: int, width: int, channels_last: bool, cpu_path: str) -> None:
    conv = layer(6, 5)
    x = torch.randn(2, 6, height, width)
    if channels_last:
        conv, x = conv.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        got = conv(x)
    assert got.shape == (2, 5, 2 * height, 2 * width)
    assert relative_error(got, reference(conv, x)) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_cpu_without_onednn_kernels_for_the_dtype_upsamples_and_convolves_as_written(
    dtype: torch.dtype, cpu_path: str
) -> None:
    """PyTorch's native CPU transposed convolution is the slow one (and rounds more in bf16), so the
    transposed kernel is built only where oneDNN runs it."""
    conv = layer(4, 4).to(dtype)
    x = torch.randn(1, 4, 6, 6, dtype=dtype)
    with torch.no_grad():
        got = conv(x)
    assert (conv._transposed.value is not None) == (cpu_path == "onednn")
    if cpu_path == "plain":
        assert torch.equal(
            got, F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), conv.weight, conv.bias, padding=1)
        )


def test_the_transposed_kernel_computes_the_block_through_plain_conv_transpose2d() -> None:
    """What a GPU runs: the same kernel through ``F.conv_transpose2d`` (cuDNN there, native here)."""
    conv, x = layer(6, 5), torch.randn(2, 6, 5, 7)
    with torch.no_grad():
        got = F.conv_transpose2d(x, transposed_kernel(conv.weight), conv.bias, stride=2, padding=1)
    assert relative_error(got, reference(conv, x)) < 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_bf16_differs_only_by_rounding_the_summed_taps_once(dtype: torch.dtype, cpu_path: str) -> None:
    conv = layer(32, 32).to(dtype).to(memory_format=torch.channels_last)
    x = torch.randn(1, 32, 16, 16, dtype=dtype).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        got = conv(x)
        written = F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), conv.weight, conv.bias, padding=1)
    expected = reference(conv, x)
    # bf16 keeps 8 significant bits: rounding the output costs up to 2**-9 (0.2 %) of each value, and
    # each summed tap is rounded once more (2**-9 of the tap, errors that mostly cancel over the
    # 4 * C_in products). The interpolate-then-conv bf16 path is itself 0.3 % off the fp32 reference;
    # the summed taps may at most double that (observed 0.35 %).
    assert relative_error(got, expected) < min(1e-2, 2 * relative_error(written, expected))


def test_a_size_that_is_not_a_doubling_upsamples_as_written() -> None:
    """The UNet asks for its skip tensor's size, odd when the latent's side was odd."""
    conv, x = layer(4, 4), torch.randn(1, 4, 4, 4)
    with torch.no_grad():
        got = conv(x, (7, 9))
    assert got.shape == (1, 4, 7, 9)
    assert relative_error(got, reference(conv, x, (7, 9))) < 1e-6
    with torch.no_grad():
        assert torch.equal(conv(x, (8, 8)), conv(x))


def test_transposed_kernel_sums_the_taps_that_land_on_one_input_pixel() -> None:
    weight = torch.arange(9.0).reshape(1, 1, 3, 3)
    kernel = transposed_kernel(weight)
    assert kernel.shape == (1, 1, 4, 4)
    # Along each axis the four taps are (w[1], w[0] + w[1], w[-1] + w[0], w[-1]).
    rows = torch.tensor([[0.0, 0, 1], [0, 1, 1], [1, 1, 0], [1, 0, 0]])
    assert kernel[0, 0].tolist() == (rows @ weight[0, 0] @ rows.T).tolist()
    assert kernel.sum().item() == 4 * weight.sum().item(), "each of the four output phases uses every tap once"


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_every_input_size_and_batch_is_computed_exactly(dtype: torch.dtype, cpu_path: str) -> None:
    conv = layer(8, 8).to(dtype).to(memory_format=torch.channels_last)
    with torch.no_grad():
        for shape in ((1, 8, 16, 16), (3, 8, 5, 9), (2, 8, 32, 8)):
            x = torch.randn(shape, dtype=dtype).contiguous(memory_format=torch.channels_last)
            assert relative_error(conv(x), reference(conv, x)) < 1e-2


def test_changed_weights_are_seen_on_the_next_call(cpu_path: str) -> None:
    conv, x = layer(3, 3), torch.randn(1, 3, 4, 4)
    with torch.no_grad():
        conv(x)
        conv.weight.mul_(2.0)  # in place: the version counter moves
        assert relative_error(conv(x), reference(conv, x)) < 1e-5
        conv.weight.data = torch.randn_like(conv.weight)  # rebound, as LoRA patches are
        assert relative_error(conv(x), reference(conv, x)) < 1e-5


def test_same_parameters_as_the_convolution_it_replaces_and_gradients_still_flow() -> None:
    conv = layer(3, 2)
    assert list(conv.state_dict()) == ["weight", "bias"]
    assert conv.weight.shape == (2, 3, 3, 3)
    x = torch.randn(1, 3, 4, 4, requires_grad=True)
    conv(x).sum().backward()
    assert x.grad is not None and conv.weight.grad is not None


def test_a_copy_after_use_drops_the_cached_kernel_and_computes_the_same(cpu_path: str) -> None:
    conv = layer(4, 4).to(memory_format=torch.channels_last)
    x = torch.randn(1, 4, 6, 6).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        first = conv(x)
        assert torch.equal(copy.deepcopy(conv)(x), first)


def test_computing_in_fp32_from_a_stored_half_weight_equals_the_fp32_layer(cpu_path: str) -> None:
    stored = layer(6, 5).half()
    fp32 = copy.deepcopy(stored).float()
    stored.bias.data = stored.bias.data.float()
    stored.compute_from_stored(torch.float32)
    x = torch.randn(2, 6, 7, 5)
    with torch.no_grad():
        assert torch.equal(stored(x), fp32(x))
        assert torch.equal(stored(x, size=(15, 10)), fp32(x, size=(15, 10)))
    assert stored.weight.dtype == torch.float16
