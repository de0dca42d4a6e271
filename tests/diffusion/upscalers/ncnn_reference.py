"""An independent reference for the upscaler architectures: run the graph an ncnn ``.param`` describes.

Our torch modules are written from the papers; this evaluates, operator by operator, the network
that the model's authors exported. Equal outputs on the same weights prove the module structure
(block wiring, residual scales, activations, upsampling) rather than just the weight shapes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from diffusion.upscalers.ncnn import INTERP_MODES, NcnnNetwork

_BINARY_ADD = 0
_ELTWISE_SUM = 1
_ACTIVATION_LEAKY_RELU = 2


def run_ncnn_graph(network: NcnnNetwork, x: torch.Tensor) -> torch.Tensor:
    blobs: dict[str, torch.Tensor] = {}
    for layer in network.layers:
        inputs = [blobs[name] for name in layer.inputs]
        if layer.type == "Input":
            outputs = [x]
        elif layer.type == "Split":
            outputs = inputs * len(layer.outputs)
        elif layer.type == "Convolution":
            weights = network.weights[layer.name]
            out = F.conv2d(inputs[0], weights["weight"], weights.get("bias"), padding=layer.param(4, 0))
            activation = layer.param(9, 0)
            if activation == _ACTIVATION_LEAKY_RELU:
                out = F.leaky_relu(out, layer.param(10, (0.0,))[0])
            else:
                assert activation == 0, f"{layer.name}: activation {activation}"
            outputs = [out]
        elif layer.type == "PReLU":
            outputs = [F.prelu(inputs[0], network.weights[layer.name]["weight"])]
        elif layer.type == "Concat":
            assert layer.param(0, 0) == 0
            outputs = [torch.cat(inputs, dim=1)]
        elif layer.type == "Eltwise":
            assert layer.param(0, 1) == _ELTWISE_SUM
            coefficients = layer.param(1, (1.0,) * len(inputs))
            outputs = [sum(c * t for c, t in zip(coefficients, inputs, strict=True))]
        elif layer.type == "BinaryOp":
            assert layer.param(0, 0) == _BINARY_ADD
            outputs = [inputs[0] + inputs[1]]
        elif layer.type == "Interp":
            mode = INTERP_MODES[layer.param(0, 0)]
            height, width = inputs[0].shape[-2:]
            size = (round(height * layer.param(1, 1.0)), round(width * layer.param(2, 1.0)))
            outputs = [F.interpolate(inputs[0], size=size, mode=mode)]
        elif layer.type == "PixelShuffle":
            assert layer.param(1, 0) == 0, "only the torch (CRD) channel order"
            outputs = [F.pixel_shuffle(inputs[0], layer.param(0, 1))]
        else:
            raise AssertionError(f"reference has no operator {layer.type}")
        blobs.update(zip(layer.outputs, outputs, strict=True))
    return blobs["output"]
