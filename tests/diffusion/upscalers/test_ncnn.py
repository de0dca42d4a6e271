"""The ncnn reader: the real Real-ESRGAN files are consumed to the last byte, a written pair reads
back exactly, and every way a pair can be wrong is an error naming the file and the layer."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusion.upscalers.ncnn import FP16_TAG, NcnnFormatError, map_ncnn, parse_param, read_ncnn
from tests.diffusion.upscalers.tiny_upscalers import ANIMEVIDEO, X4PLUS, X4PLUS_ANIME, tiny_srvgg


def write_srvgg_ncnn(model: torch.nn.Module, folder: Path, *, fp16: bool = True) -> tuple[Path, Path]:
    """An ncnn pair for a tiny SRVGGNetCompact, laid out as ncnn's converter writes one."""
    lines, data = [], bytearray()
    blob = "data"
    lines.append("Input in 0 1 data")
    for index, layer in enumerate(model.body):
        out = f"b{index}"
        if isinstance(layer, torch.nn.Conv2d):
            weight = layer.weight.detach().numpy().ravel()
            lines.append(f"Convolution conv{index} 1 1 {blob} {out} 0={layer.out_channels} 1=3 4=1 5=1 6={weight.size}")
            if fp16:
                data += struct.pack("<I", FP16_TAG) + weight.astype("<f2").tobytes()
            else:
                data += struct.pack("<I", 0) + weight.astype("<f4").tobytes()
            data += layer.bias.detach().numpy().astype("<f4").tobytes()
        else:
            lines.append(f"PReLU prelu{index} 1 1 {blob} {out} 0={layer.weight.numel()}")
            data += layer.weight.detach().numpy().astype("<f4").tobytes()
        blob = out
    lines.append(f"PixelShuffle shuffle 1 1 {blob} output 0={model.config.upscale}")
    param, weights = folder / "tiny.param", folder / "tiny.bin"
    param.write_text("7767517\n" + f"{len(lines)} {len(lines) + 1}\n" + "\n".join(lines) + "\n")
    weights.write_bytes(bytes(data))
    return param, weights


def test_param_lines_parse_into_layers_with_typed_params(real_models):
    layers = parse_param(real_models / f"{X4PLUS}.param")
    assert len(layers) == 999
    conv = next(layer for layer in layers if layer.name == "Conv_1")
    assert conv.type == "Convolution"
    assert conv.inputs == ("703_splitncnn_7",) and conv.outputs == ("705",)
    assert conv.params == {0: 32, 1: 3, 4: 1, 5: 1, 6: 18432, 9: 2, 10: (0.2,)}


@pytest.mark.parametrize(
    ("stem", "convs", "prelus"), [(X4PLUS, 351, 0), (X4PLUS_ANIME, 96, 0), (ANIMEVIDEO[4], 18, 17)]
)
def test_the_real_files_are_read_to_the_last_byte(real_models, stem, convs, prelus):
    network = read_ncnn(real_models / f"{stem}.param", real_models / f"{stem}.bin")
    kinds = [layer.type for layer in network.layers if layer.name in network.weights]
    assert (kinds.count("Convolution"), kinds.count("PReLU")) == (convs, prelus)
    # Per conv: tag + fp16 weights + fp32 bias; per PReLU: fp32 slopes.
    expected = sum(
        4 + 2 * params["weight"].numel() + 4 * params["bias"].numel()
        if "bias" in params
        else 4 * params["weight"].numel()
        for params in network.weights.values()
    )
    assert expected == (real_models / f"{stem}.bin").stat().st_size


@pytest.mark.parametrize("scale", [2, 3])
def test_animevideov3_x2_x3_are_the_x4_network_with_a_bicubic_downscale(real_models, scale):
    stem = ANIMEVIDEO[scale]
    mapping = map_ncnn(
        read_ncnn(real_models / f"{stem}.param", real_models / f"{stem}.bin"), real_models / f"{stem}.param"
    )
    assert mapping.output_resize is not None
    assert (mapping.output_resize.mode, mapping.output_resize.factor * 4) == ("bicubic", scale)
    assert mapping.state_dict["body.34.weight"].shape == (48, 64, 3, 3)


def test_a_final_resize_type_written_as_a_float_is_refused(real_models, tmp_path):
    # ncnn reads Interp's resize type as an int, so "0=3.0" is not bicubic there: a broken file.
    stem = ANIMEVIDEO[2]
    text = (real_models / f"{stem}.param").read_text()
    assert " output 0=3 " in text
    param = tmp_path / f"{stem}.param"
    param.write_text(text.replace(" output 0=3 ", " output 0=3.0 "))
    with pytest.raises(NcnnFormatError, match=r"only a uniform nearest/bilinear/bicubic resize.*found type 3\.0"):
        map_ncnn(read_ncnn(param, real_models / f"{stem}.bin"), param)


@pytest.mark.parametrize("fp16", [True, False])
def test_a_written_pair_reads_back_under_the_module_names(tmp_path, fp16):
    model = tiny_srvgg(upscale=2)
    param, weights = write_srvgg_ncnn(model, tmp_path, fp16=fp16)
    mapping = map_ncnn(read_ncnn(param, weights), param)
    assert mapping.output_resize is None
    expected = model.state_dict()
    assert mapping.state_dict.keys() == expected.keys()
    for key, value in expected.items():
        exact = value.half().float() if fp16 and key.endswith("weight") and value.ndim == 4 else value
        assert torch.equal(mapping.state_dict[key], exact), key


def test_leftover_bytes_are_an_error_naming_the_bin(tmp_path):
    param, weights = write_srvgg_ncnn(tiny_srvgg(), tmp_path)
    weights.write_bytes(weights.read_bytes() + b"\0" * 8)
    with pytest.raises(NcnnFormatError, match=r"tiny\.bin: 8 bytes are left"):
        read_ncnn(param, weights)


def test_a_truncated_bin_names_the_layer_that_ran_out(tmp_path):
    param, weights = write_srvgg_ncnn(tiny_srvgg(), tmp_path)
    weights.write_bytes(weights.read_bytes()[:-4])
    with pytest.raises(NcnnFormatError, match=r"layer 'conv6' needs"):
        read_ncnn(param, weights)


def test_quantized_weights_are_refused_with_the_tag(tmp_path):
    param, weights = write_srvgg_ncnn(tiny_srvgg(), tmp_path)
    weights.write_bytes(struct.pack("<I", 0x000D4B38) + weights.read_bytes()[4:])
    with pytest.raises(NcnnFormatError, match=r"conv0.*0x000D4B38"):
        read_ncnn(param, weights)


def test_unsupported_layer_types_are_named(tmp_path):
    param, weights = write_srvgg_ncnn(tiny_srvgg(), tmp_path)
    param.write_text(param.read_text().replace("PixelShuffle shuffle", "Deconvolution shuffle"))
    with pytest.raises(NcnnFormatError, match=r"'shuffle' has type 'Deconvolution'"):
        read_ncnn(param, weights)


def test_a_binary_param_file_is_refused(tmp_path):
    param = tmp_path / "model.param"
    param.write_bytes(np.array([7767517, 3, 4], dtype="<i4").tobytes())
    with pytest.raises(NcnnFormatError, match="not an ncnn text .param file"):
        parse_param(param)


def test_a_malformed_layer_line_is_named(tmp_path):
    param, weights = write_srvgg_ncnn(tiny_srvgg(), tmp_path)
    param.write_text(param.read_text().replace("Input in 0 1 data", "Input in zero"))
    with pytest.raises(NcnnFormatError, match=r"line 3 is not"):
        parse_param(param)
