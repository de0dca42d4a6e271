"""PackedConv2d computes what nn.Conv2d computes, and never serves a stale packed weight."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from diffusion.packed_conv import PackedConv2d
from tests.diffusion.cpu_paths import requires_onednn


def conv(in_channels: int = 16, out_channels: int = 24, kernel: int = 3, **kwargs) -> PackedConv2d:
    torch.manual_seed(0)
    return PackedConv2d(in_channels, out_channels, kernel, **kwargs).eval().requires_grad_(False)


def reference(module: PackedConv2d, x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, module.weight, module.bias, module.stride, module.padding, module.dilation, module.groups)


@pytest.mark.parametrize("dtype", [torch.bfloat16])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_bf16_output_is_bit_identical_to_conv2d(
    memory_format: torch.memory_format, dtype: torch.dtype, cpu_path: str
) -> None:
    module = conv(padding=1).to(dtype).to(memory_format=memory_format)
    x = torch.randn(2, 16, 9, 7, dtype=dtype).contiguous(memory_format=memory_format)
    with torch.no_grad():
        assert torch.equal(module(x), reference(module, x))
    assert (module._packed.value is not None) == (cpu_path == "onednn")


@pytest.mark.parametrize(
    "options",
    [dict(kernel=3, padding=1), dict(kernel=3, stride=2), dict(kernel=1), dict(kernel=3, padding=2, dilation=2)],
    ids=["3x3", "stride2-unpadded", "1x1", "dilated"],
)
def test_fp32_output_matches_conv2d(options: dict, cpu_path: str) -> None:
    module = conv(**options)
    x = torch.randn(2, 16, 11, 10)
    with torch.no_grad():
        torch.testing.assert_close(module(x), reference(module, x), rtol=1e-5, atol=1e-5)


def test_every_input_size_is_computed_exactly(cpu_path: str) -> None:
    module = conv(padding=1)
    with torch.no_grad():
        for size in (8, 13, 4):
            x = torch.randn(1, 16, size, size)
            torch.testing.assert_close(module(x), reference(module, x), rtol=1e-5, atol=1e-5)


@requires_onednn(torch.float32)
def test_the_weight_is_repacked_for_a_new_input_shape_and_kept_while_the_shape_stays() -> None:
    """oneDNN chooses the packed layout from the input shape; a copy packed for another shape would be
    reordered again on every call (a UNet run at 512² and then at 256² kept paying for it)."""
    module = conv(padding=1)
    with torch.no_grad():
        module(torch.randn(2, 16, 16, 16))
        packed_for_16 = module._packed.value
        module(torch.randn(2, 16, 8, 8))
        packed_for_8 = module._packed.value
        module(torch.randn(2, 16, 8, 8))
    assert packed_for_8 is not packed_for_16
    assert module._packed.value is packed_for_8


def test_in_place_weight_patch_is_seen_on_the_next_call(cpu_path: str) -> None:
    module = conv(padding=1)
    x = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        before = module(x)
        module.weight.add_(torch.randn_like(module.weight))  # what a LoRA patch does
        after = module(x)
        torch.testing.assert_close(after, reference(module, x), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(before, after)


def test_rebinding_the_weight_data_repacks_both_ways(cpu_path: str) -> None:
    module = conv(padding=1)
    x = torch.randn(1, 16, 8, 8)
    original = module.weight.data
    with torch.no_grad():
        before = module(x)
        module.weight.data = torch.randn_like(original)  # how patched weights are swapped in for a run
        torch.testing.assert_close(module(x), reference(module, x), rtol=1e-5, atol=1e-5)
        module.weight.data = original
        assert torch.equal(module(x), before)


@requires_onednn(torch.bfloat16)
def test_dtype_change_repacks() -> None:
    module = conv(padding=1)
    x = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        module(x)
        packed_fp32 = module._packed.value
        module.to(torch.bfloat16)
        assert torch.equal(module(x.bfloat16()), reference(module, x.bfloat16()))
    assert module._packed.value is not packed_fp32 and module._packed.value.dtype == torch.bfloat16


def test_autograd_takes_the_plain_path() -> None:
    module = PackedConv2d(16, 24, 3, padding=1)
    x = torch.randn(1, 16, 8, 8, requires_grad=True)
    module(x).sum().backward()
    assert x.grad is not None and module.weight.grad is not None
    assert module._packed.value is None


@requires_onednn(torch.float32)
def test_copies_drop_the_cache_and_keep_the_state_dict_keys() -> None:
    module = conv(padding=1)
    with torch.no_grad():
        module(torch.randn(1, 16, 8, 8))
    clone = copy.deepcopy(module)
    assert clone._packed.value is None
    assert set(clone.state_dict()) == set(torch.nn.Conv2d(16, 24, 3).state_dict()) == {"weight", "bias"}


def test_computing_from_a_stored_half_weight_gives_the_fp32_layer_s_output(cpu_path: str) -> None:
    stored = conv(padding=1).half()
    fp32 = copy.deepcopy(stored).float()
    stored.bias.data = stored.bias.data.float()
    stored.compute_from_stored(torch.float32)
    x = torch.randn(2, 16, 9, 7)
    with torch.no_grad():
        assert torch.equal(stored(x), fp32(x))
    assert stored.weight.dtype == torch.float16
    assert stored.computes_in == torch.float32


def test_a_cast_of_the_module_casts_its_compute_dtype_and_a_move_keeps_it() -> None:
    module = conv().half()
    module.compute_from_stored(torch.float32)
    module.to("cpu")
    assert (module.weight.dtype, module.computes_in) == (torch.float16, torch.float32)
    module.to(torch.bfloat16)
    assert (module.weight.dtype, module.computes_in) == (torch.bfloat16, torch.bfloat16)


@requires_onednn(torch.float32)
def test_a_layer_computing_from_its_stored_weight_reports_what_its_packed_copy_will_hold() -> None:
    module = conv(padding=1).half()
    module.bias.data = module.bias.data.float()
    module.compute_from_stored(torch.float32)
    weight_fp32 = module.weight.numel() * 4
    before = module.loom_nbytes()
    with torch.no_grad():
        module(torch.randn(1, 16, 8, 8))
    assert before == weight_fp32 + module.bias.numel() * 4
    # not a view of a mapped file, so the stored weight stays resident beside its packed copy
    assert module.loom_nbytes() == module._packed.nbytes + (module.weight.numel() * 2) + module.bias.numel() * 4
    assert module._packed.nbytes >= weight_fp32


@requires_onednn(torch.float32)
def test_a_layer_computing_in_its_weight_s_dtype_holds_both_copies() -> None:
    module = conv(padding=1)
    with torch.no_grad():
        module(torch.randn(1, 16, 8, 8))
    own = (module.weight.numel() + module.bias.numel()) * 4
    assert module.loom_nbytes() == own + module._packed.nbytes > 2 * module.weight.numel() * 4
