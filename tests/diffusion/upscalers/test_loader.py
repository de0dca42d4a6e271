"""Loading upscalers from every supported file kind, and the real Real-ESRGAN weights giving the same
result from an ncnn pair as from ``.pth`` files in the standard key layouts."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from diffusion.upscalers.loader import UpscaleModelError, load_upscale_model
from diffusion.upscalers.ncnn import map_ncnn, read_ncnn
from tests.diffusion.upscalers.tiny_upscalers import ANIMEVIDEO, X4PLUS, old_esrgan_layout, tiny_rrdb, tiny_srvgg
from tests.diffusion.weight_files import (
    BAD_WEIGHT_FILES,
    PICKLE_NAMED_SAFETENSORS,
    PICKLE_SUFFIXES,
    expect_refusal,
    write_bad_file,
)

X = torch.rand(1, 3, 6, 5, generator=torch.Generator().manual_seed(3))


def test_a_real_esrgan_pth_with_params_ema_loads_as_rrdbnet(tmp_path):
    model = tiny_rrdb(unshuffle=2)
    torch.save({"params_ema": model.state_dict(), "params": {}}, tmp_path / "x2.pth")
    loaded = load_upscale_model(tmp_path / "x2.pth")
    assert (loaded.architecture, loaded.scale, loaded.in_channels) == ("RRDBNet", 2, 3)
    with torch.no_grad():
        assert torch.equal(loaded(X), model(X))


def test_an_old_layout_esrgan_pth_loads(tmp_path):
    model = tiny_rrdb()
    torch.save(old_esrgan_layout(model.state_dict(), num_block=2), tmp_path / "old.pth")
    loaded = load_upscale_model(tmp_path / "old.pth")
    assert (loaded.architecture, loaded.scale) == ("RRDBNet", 4)
    with torch.no_grad():
        assert torch.equal(loaded(X), model(X))


def test_srvgg_safetensors_load(tmp_path):
    model = tiny_srvgg(upscale=3)
    save_file(model.state_dict(), tmp_path / "compact.safetensors")
    loaded = load_upscale_model(tmp_path / "compact.safetensors")
    assert (loaded.architecture, loaded.scale) == ("SRVGGNetCompact", 3)
    with torch.no_grad():
        assert torch.equal(loaded(X), model(X))


def test_a_loaded_model_reports_its_weights_to_a_cache(tmp_path):
    from graph.sizeof import nbytes

    model = tiny_rrdb()
    save_file(model.state_dict(), tmp_path / "x4.safetensors")
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert nbytes(load_upscale_model(tmp_path / "x4.safetensors")) >= weights


def test_unknown_keys_are_an_error_naming_the_file_and_keys(tmp_path):
    save_file({"encoder.weight": torch.zeros(2, 2)}, tmp_path / "vae.safetensors")
    with pytest.raises(UpscaleModelError, match=r"vae\.safetensors: no known upscaler .*encoder\.weight"):
        load_upscale_model(tmp_path / "vae.safetensors")


def test_weights_that_do_not_fit_are_an_error_naming_the_file(tmp_path):
    state_dict = tiny_srvgg().state_dict()
    state_dict["body.2.bias"] = torch.zeros(5)
    save_file(state_dict, tmp_path / "broken.safetensors")
    with pytest.raises(UpscaleModelError, match=r"(?s)broken\.safetensors: weights do not fit.*body\.2\.bias"):
        load_upscale_model(tmp_path / "broken.safetensors")


def test_an_ncnn_pair_loads_by_either_name_and_a_half_pair_is_named(tmp_path, real_models):
    for suffix in (".param", ".bin"):
        shutil.copy(real_models / f"{ANIMEVIDEO[4]}{suffix}", tmp_path / f"v3{suffix}")
    assert load_upscale_model(tmp_path / "v3.bin").scale == 4
    assert load_upscale_model(tmp_path / "v3.param").architecture == "SRVGGNetCompact"
    (tmp_path / "v3.bin").unlink()
    with pytest.raises(UpscaleModelError, match=r"v3\.param: .*v3\.bin is not beside it"):
        load_upscale_model(tmp_path / "v3.param")


def test_a_bin_without_param_is_read_as_a_pytorch_file(tmp_path):
    torch.save(tiny_srvgg().state_dict(), tmp_path / "pytorch_model.bin")
    assert load_upscale_model(tmp_path / "pytorch_model.bin").architecture == "SRVGGNetCompact"


def test_a_bin_holding_weights_is_read_as_such_even_beside_an_ncnn_param(tmp_path, real_models):
    """Content first: only a ``.bin`` that is no weight format of its own is taken for ncnn data."""
    shutil.copy(real_models / f"{ANIMEVIDEO[4]}.param", tmp_path / "v3.param")
    save_file(tiny_srvgg(upscale=3).state_dict(), tmp_path / "v3.bin")
    assert load_upscale_model(tmp_path / "v3.bin").scale == 3


@pytest.mark.parametrize("suffix", PICKLE_SUFFIXES)
def test_a_safetensors_file_under_a_pickle_suffix_loads(tmp_path, suffix):
    model = tiny_srvgg(upscale=3)
    save_file(model.state_dict(), tmp_path / f"compact{suffix}")
    loaded = load_upscale_model(tmp_path / f"compact{suffix}")
    with torch.no_grad():
        assert torch.equal(loaded(X), model(X))


def test_a_pickle_named_safetensors_is_refused(tmp_path):
    torch.save({"params_ema": tiny_srvgg().state_dict()}, tmp_path / "compact.safetensors")
    expect_refusal(load_upscale_model, tmp_path / "compact.safetensors", PICKLE_NAMED_SAFETENSORS)


@pytest.mark.parametrize(("name", "content", "reason"), BAD_WEIGHT_FILES)
def test_a_file_that_is_not_weights_is_named_with_what_it_is(tmp_path, name, content, reason):
    expect_refusal(load_upscale_model, write_bad_file(tmp_path, name, content), reason)


def test_other_file_types_are_named_by_content_and_missing_files_are_refused(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07\x12\x07pytorch")
    expect_refusal(load_upscale_model, tmp_path / "model.onnx", r"unrecognised content \(first bytes 08 07 12 07")
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        load_upscale_model(tmp_path / "absent.pth")


def test_animevideov3_x2_is_x4_then_bicubic_half(real_models):
    x2, x4 = (
        load_upscale_model(real_models / f"{ANIMEVIDEO[2]}.param"),
        load_upscale_model(real_models / f"{ANIMEVIDEO[4]}.param"),
    )
    assert x2.scale == 2
    torch.testing.assert_close(x2(X), F.interpolate(x4(X), size=(12, 10), mode="bicubic"), rtol=0, atol=1e-6)


@pytest.mark.parametrize("layout", ["new", "old"])
def test_real_x4plus_from_pth_equals_the_ncnn_pair(tmp_path, real_models, layout):
    param = real_models / f"{X4PLUS}.param"
    state_dict = map_ncnn(read_ncnn(param, param.with_suffix(".bin")), param).state_dict
    if layout == "old":
        state_dict = old_esrgan_layout(state_dict, num_block=23)
    torch.save({"params_ema": state_dict}, tmp_path / "RealESRGAN_x4plus.pth")
    from_pth, from_ncnn = load_upscale_model(tmp_path / "RealESRGAN_x4plus.pth"), load_upscale_model(param)
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(from_pth(x), from_ncnn(x), rtol=0, atol=1e-6)


def test_real_animevideov3_from_pth_equals_the_ncnn_pair(tmp_path, real_models):
    param = real_models / f"{ANIMEVIDEO[4]}.param"
    state_dict = map_ncnn(read_ncnn(param, param.with_suffix(".bin")), param).state_dict
    torch.save({"params": state_dict}, tmp_path / "realesr-animevideov3.pth")
    from_pth, from_ncnn = load_upscale_model(tmp_path / "realesr-animevideov3.pth"), load_upscale_model(param)
    torch.testing.assert_close(from_pth(X), from_ncnn(X), rtol=0, atol=1e-6)
