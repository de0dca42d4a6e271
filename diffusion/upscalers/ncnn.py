"""Reading ncnn model pairs (``.param`` + ``.bin``), the format of realesrgan-ncnn-vulkan and Upscayl.

``.param`` is text: the magic ``7767517``, a line ``layer_count blob_count``, then one line per layer,
``Type name n_inputs n_outputs inputs... outputs... k=v...``. Keys are small integers whose meaning
depends on the layer type (Convolution: ``0`` num_output, ``1`` kernel_w, ``11`` kernel_h, ``2``
dilation, ``3`` stride, ``4`` pad, ``5`` bias_term, ``6`` weight_data_size, ``9`` activation); a key
``-233NN=count,v1,v2...`` is an array for key ``NN``.

``.bin`` has no index: each layer that owns weights reads them in layer order. A Convolution's
weights are stored "tagged": a 4-byte tag says how (``0x01306B47`` fp16, padded to 4 bytes; ``0``
plain fp32), while its bias and a PReLU's slopes are untagged fp32. Nothing marks where a layer's data
ends, so a misread shows up only as leftover or missing bytes: reading checks that the file is used
to the last byte.

``map_ncnn`` then walks the layer list and names each weighted layer after the torch module
it is (``body.N`` for SRVGGNetCompact, the BasicSR names for RRDBNet), so an ncnn pair loads through
the same path as a ``.pth`` in the standard key layout.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from diffusion.checkpoint.errors import CheckpointError
from diffusion.checkpoint.sniff import NCNN_PARAM_MAGIC

__all__ = [
    "NcnnFormatError",
    "NcnnLayer",
    "NcnnNetwork",
    "NcnnMapping",
    "OutputResize",
    "read_ncnn",
    "parse_param",
    "map_ncnn",
]

FP16_TAG = 0x01306B47
FP32_TAG = 0
_ARRAY_KEY_BASE = -23300
#: Layer types that own no data in ``.bin``; anything else that is not Convolution/PReLU is refused.
WEIGHTLESS_TYPES = frozenset({"Input", "Split", "Concat", "Eltwise", "BinaryOp", "Interp", "PixelShuffle"})

ParamValue = int | float | tuple[int | float, ...]


class NcnnFormatError(CheckpointError):
    """An ncnn file that cannot be read, or describes a network Loom cannot map."""


@dataclass(frozen=True)
class NcnnLayer:
    type: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    params: dict[int, ParamValue]

    def param(self, key: int, default: ParamValue) -> ParamValue:
        return self.params.get(key, default)


@dataclass(frozen=True)
class NcnnNetwork:
    layers: tuple[NcnnLayer, ...]
    #: Per weighted layer name: ``{"weight": ..., "bias": ...}`` for a Convolution, ``{"weight": slopes}`` for PReLU.
    weights: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


def _number(text: str) -> int | float:
    return float(text) if any(c in text for c in ".eE") else int(text)


def _parse_params(path: Path, layer_name: str, tokens: list[str]) -> dict[int, ParamValue]:
    params: dict[int, ParamValue] = {}
    for token in tokens:
        key_text, sep, value_text = token.partition("=")
        try:
            key = int(key_text)
            if key <= _ARRAY_KEY_BASE:
                count_text, *items = value_text.split(",")
                if int(count_text) != len(items):
                    raise ValueError(f"array announces {count_text} items and has {len(items)}")
                params[_ARRAY_KEY_BASE - key] = tuple(_number(item) for item in items)
            else:
                params[key] = _number(value_text)
        except ValueError as error:
            raise NcnnFormatError(path, f"layer {layer_name!r}: bad parameter {token!r} ({error})") from None
        if not sep:
            raise NcnnFormatError(path, f"layer {layer_name!r}: parameter {token!r} has no '='")
    return params


def parse_param(path: Path) -> tuple[NcnnLayer, ...]:
    """The layers of a text ``.param`` file, in file order (ncnn's execution order)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        text = ""
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if not lines or lines[0] != [NCNN_PARAM_MAGIC]:
        raise NcnnFormatError(path, f"not an ncnn text .param file: the first line is not the magic {NCNN_PARAM_MAGIC}")
    if len(lines) < 2 or len(lines[1]) != 2:
        raise NcnnFormatError(path, "the second line must be 'layer_count blob_count'")
    layer_count = int(lines[1][0])
    if len(lines) - 2 != layer_count:
        raise NcnnFormatError(path, f"announces {layer_count} layers but lists {len(lines) - 2}")
    layers = []
    for number, tokens in enumerate(lines[2:], start=3):
        if len(tokens) < 4 or not (tokens[2].isdigit() and tokens[3].isdigit()):
            raise NcnnFormatError(
                path, f"line {number} is not 'Type name n_inputs n_outputs ...': {' '.join(tokens)!r}"
            )
        layer_type, name, n_in, n_out, *rest = tokens
        n_inputs, n_outputs = int(n_in), int(n_out)
        blobs, params = rest[: n_inputs + n_outputs], rest[n_inputs + n_outputs :]
        layers.append(
            NcnnLayer(
                type=layer_type,
                name=name,
                inputs=tuple(blobs[:n_inputs]),
                outputs=tuple(blobs[n_inputs:]),
                params=_parse_params(path, name, params),
            )
        )
    return tuple(layers)


class _BinReader:
    """Sequential reads from ``.bin`` bytes, failing with the layer's name when data runs out."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = path.read_bytes()
        self.offset = 0

    def _take(self, size: int, layer: str) -> bytes:
        if self.offset + size > len(self.data):
            raise NcnnFormatError(
                self.path,
                f"layer {layer!r} needs {size} bytes at offset {self.offset} but the file has {len(self.data)}",
            )
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return chunk

    def raw_float32(self, count: int, layer: str) -> torch.Tensor:
        return torch.from_numpy(np.frombuffer(self._take(4 * count, layer), dtype="<f4").copy())

    def tagged(self, count: int, layer: str) -> torch.Tensor:
        (tag,) = struct.unpack("<I", self._take(4, layer))
        if tag == FP16_TAG:
            values = np.frombuffer(self._take(2 * count, layer), dtype="<f2").astype(np.float32)
            self._take(-2 * count % 4, layer)
            return torch.from_numpy(values)
        if tag == FP32_TAG:
            return self.raw_float32(count, layer)
        raise NcnnFormatError(
            self.path,
            f"layer {layer!r}: weight tag 0x{tag:08X} at offset {self.offset - 4} is not fp16 or fp32 "
            "(quantized ncnn weights are not supported)",
        )


def _int_param(path: Path, layer: NcnnLayer, key: int, default: int) -> int:
    value = layer.param(key, default)
    if not isinstance(value, int):
        raise NcnnFormatError(path, f"layer {layer.name!r}: parameter {key} should be an integer, found {value!r}")
    return value


def _read_convolution(reader: _BinReader, path: Path, layer: NcnnLayer) -> dict[str, torch.Tensor]:
    num_output = _int_param(path, layer, 0, 0)
    kernel_w = _int_param(path, layer, 1, 0)
    kernel_h = _int_param(path, layer, 11, kernel_w)
    size = _int_param(path, layer, 6, 0)
    geometry = {
        "dilation": _int_param(path, layer, 2, 1),
        "stride": _int_param(path, layer, 3, 1),
        "pad": _int_param(path, layer, 4, 0),
    }
    if geometry != {"dilation": 1, "stride": 1, "pad": kernel_w // 2} or kernel_w != kernel_h or kernel_w % 2 == 0:
        raise NcnnFormatError(
            path, f"layer {layer.name!r}: only odd square 'same' convolutions are supported, found {geometry}"
        )
    if num_output <= 0 or size % (num_output * kernel_w * kernel_h):
        raise NcnnFormatError(path, f"layer {layer.name!r}: weight_data_size {size} does not fit {num_output} outputs")
    in_channels = size // (num_output * kernel_w * kernel_h)
    params = {"weight": reader.tagged(size, layer.name).reshape(num_output, in_channels, kernel_h, kernel_w)}
    if _int_param(path, layer, 5, 0):
        params["bias"] = reader.raw_float32(num_output, layer.name)
    return params


def read_ncnn(param_path: Path, bin_path: Path) -> NcnnNetwork:
    """Parse both files and read every weighted layer's data; the ``.bin`` must be used exactly."""
    layers = parse_param(param_path)
    reader = _BinReader(bin_path)
    weights: dict[str, dict[str, torch.Tensor]] = {}
    for layer in layers:
        if layer.type == "Convolution":
            weights[layer.name] = _read_convolution(reader, param_path, layer)
        elif layer.type == "PReLU":
            weights[layer.name] = {"weight": reader.raw_float32(_int_param(param_path, layer, 0, 1), layer.name)}
        elif layer.type not in WEIGHTLESS_TYPES:
            supported = ", ".join(sorted(WEIGHTLESS_TYPES | {"Convolution", "PReLU"}))
            raise NcnnFormatError(
                param_path, f"layer {layer.name!r} has type {layer.type!r}; supported types: {supported}"
            )
    if reader.offset != len(reader.data):
        raise NcnnFormatError(
            bin_path,
            f"{len(reader.data) - reader.offset} bytes are left after the last layer's weights "
            f"(read {reader.offset} of {len(reader.data)}): the .bin does not belong to {param_path.name}",
        )
    return NcnnNetwork(layers=layers, weights=weights)


#: ncnn Interp ``resize_type`` → torch interpolate mode.
INTERP_MODES = {1: "nearest", 2: "bilinear", 3: "bicubic"}


@dataclass(frozen=True)
class OutputResize:
    """A resize the ``.param`` applies after the network: the animevideov3 x2/x3 files are the x4 network
    followed by a bicubic ×0.5 / ×0.75 (their ``.bin`` files are byte-identical to the x4 one)."""

    mode: str
    factor: float


@dataclass(frozen=True)
class NcnnMapping:
    """An ncnn network as torch sees it: the weights under module names, and any trailing resize."""

    state_dict: dict[str, torch.Tensor]
    output_resize: OutputResize | None


def _rrdb_names(conv_count: int, upsample_count: int, path: Path) -> list[str]:
    """RRDBNet's convs in forward order: first, 15 per RRDB, trunk, one per upsampling stage, hr, last."""
    blocks, remainder = divmod(conv_count - 4 - upsample_count, 15)
    if remainder or blocks < 1:
        raise NcnnFormatError(
            path, f"{conv_count} convolutions and {upsample_count} upsampling stages do not form an RRDBNet"
        )
    trunk = [f"body.{b}.rdb{r}.conv{c}" for b in range(blocks) for r in (1, 2, 3) for c in range(1, 6)]
    ups = [f"conv_up{n}" for n in range(1, upsample_count + 1)]
    return ["conv_first", *trunk, "conv_body", *ups, "conv_hr", "conv_last"]


def _output_resize(layer: NcnnLayer, path: Path) -> OutputResize:
    resize_type, height_scale, width_scale = layer.param(0, 0), layer.param(1, 1.0), layer.param(2, 1.0)
    mode = INTERP_MODES.get(resize_type) if isinstance(resize_type, int) else None
    if mode is None or height_scale != width_scale or not isinstance(height_scale, float):
        raise NcnnFormatError(
            path,
            f"final layer {layer.name!r}: only a uniform nearest/bilinear/bicubic resize is supported, "
            f"found type {resize_type} with scales {height_scale}x{width_scale}",
        )
    return OutputResize(mode=mode, factor=height_scale)


def map_ncnn(network: NcnnNetwork, path: Path) -> NcnnMapping:
    """Name the network's weights after the torch module they belong to, by walking the layers in order.

    PReLU layers identify SRVGGNetCompact (each conv and PReLU is the next ``body`` entry); dense
    blocks (Concat) identify RRDBNet, whose upsampling stages are its Interp layers. A final Interp
    is a resize of the finished output, not part of either network. ``path`` is for error messages.
    """
    layers = network.layers
    resize = _output_resize(layers[-1], path) if layers and layers[-1].type == "Interp" else None
    if resize is not None:
        layers = layers[:-1]
    weighted = [layer for layer in layers if layer.name in network.weights]
    types = {layer.type for layer in layers}
    if "PReLU" in types:
        names = [f"body.{index}" for index in range(len(weighted))]
    elif "Concat" in types:
        convs = sum(1 for layer in weighted if layer.type == "Convolution")
        names = _rrdb_names(convs, sum(1 for layer in layers if layer.type == "Interp"), path)
    else:
        raise NcnnFormatError(path, f"not a known upscaler network (layer types: {', '.join(sorted(types))})")
    state_dict = {
        f"{name}.{kind}": tensor
        for name, layer in zip(names, weighted, strict=True)
        for kind, tensor in network.weights[layer.name].items()
    }
    return NcnnMapping(state_dict=state_dict, output_resize=resize)
