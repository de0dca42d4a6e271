"""Control-LoRAs (Stability AI's `control-lora-*.safetensors`): ControlNets stored as low-rank changes to the UNet
they are applied to.

A Control-LoRA file holds, under the original ControlNet names without prefix, full weights for what the base
UNet lacks or the training changed wholesale (the hint block, the zero convs, norms and biases) and, for the
encoder's conv and linear weights, a pair `<module>.up` / `<module>.down`: that module's weight is the base
UNet's plus `up @ down` (both flattened to matrices, no scale). A `lora_controlnet` key marks the file.

The ControlNet therefore only exists against a UNet. ComfyUI builds it when sampling starts, from the model
being sampled (its LoRAs included), and drops it after; Loom does the same: `ControlLora` holds the file and
`bind` builds the ControlNet for a UNet's config and weights, which the module then runs until bound again.
`mismatch` says beforehand, by shapes alone, why a file cannot be built against a UNet.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from diffusion.controlnet import ControlNet, ControlNetConfig, ControlResiduals, detect_hint_block
from diffusion.unet_config import CheckpointLayoutError, UNetConfig, load_exact

__all__ = ["LORA_MARKER", "ControlLora", "is_control_lora", "tiny_control_lora_tensors"]

LORA_MARKER = "lora_controlnet"


def is_control_lora(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether the weights are a Control-LoRA (they carry the `lora_controlnet` marker)."""
    return LORA_MARKER in state_dict


def _pairs(weights: Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The low-rank pairs by the weight they change (`<module>.weight`); a lone half is a layout error."""
    modules = {key.rsplit(".", 1)[0] for key in weights if key.endswith((".up", ".down"))}
    pairs = {}
    for module in sorted(modules):
        for half in ("up", "down"):
            if f"{module}.{half}" not in weights:
                raise CheckpointLayoutError("Control-LoRA", f"{module}.{half}", "missing (the other half is there)")
        pairs[f"{module}.weight"] = (weights[f"{module}.up"], weights[f"{module}.down"])
    return pairs


class ControlLora(nn.Module):
    """A Control-LoRA file, and the ControlNet it makes over the UNet it was last bound to (`bind`).

    Called like the ControlNet it makes (`diffusion.controlnet.ControlNet`); `config` and `dtype` are that
    ControlNet's. Before a `bind` there is no ControlNet, and using one is an error.
    """

    def __init__(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        self.weights = {key: tensor for key, tensor in state_dict.items() if key != LORA_MARKER}
        self.pairs = _pairs(self.weights)
        self.full = {key: tensor for key, tensor in self.weights.items() if not key.endswith((".up", ".down"))}
        self.hint_channels, self.hint_widths = detect_hint_block(self.full, "Control-LoRA")
        self.bound: ControlNet | None = None

    def loom_parts(self) -> list[object]:
        """What this keeps alive, for ``graph.sizeof``: the file's tensors and the ControlNet bound now."""
        return [*self.weights.values(), *([] if self.bound is None else [self.bound])]

    def config_for(self, unet: UNetConfig) -> ControlNetConfig:
        """The ControlNet config this file makes over `unet` (its encoder is the UNet's, as ComfyUI builds it)."""
        return ControlNetConfig(unet, self.hint_channels, self.hint_widths)

    def base_names(self, unet: UNetConfig) -> list[str]:
        """The UNet weights (LDM names) a ControlNet over `unet` starts from: its encoder's, the hint block's and
        zero convs' names included (a UNet has none of those)."""
        with torch.device("meta"):
            return list(ControlNet(self.config_for(unet)).state_dict().keys())

    def mismatch(self, unet: UNetConfig) -> str | None:
        """Why this file cannot be built over `unet` (None when it can): the first weight whose shape disagrees
        with the ControlNet the UNet makes, or one the ControlNet has no place for."""
        with torch.device("meta"):
            shapes = {key: value.shape for key, value in ControlNet(self.config_for(unet)).state_dict().items()}
        for key, tensor in self.full.items():
            if key not in shapes:
                return f"its {key} has no place in a ControlNet over this UNet"
            if tensor.shape != shapes[key]:
                return f"its {key} is {tuple(tensor.shape)}, the UNet's {tuple(shapes[key])}"
        for key, (up, down) in self.pairs.items():
            if key not in shapes:
                return f"its LoRA for {key} has no place in a ControlNet over this UNet"
            rows, columns = up.flatten(1).shape[0], down.flatten(1).shape[1]
            if rows * columns != shapes[key].numel() or rows != shapes[key][0]:
                return f"its LoRA for {key} makes a {rows}x{columns} change, the UNet's weight is {tuple(shapes[key])}"
        return None

    def bind(self, unet: UNetConfig, base: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None) -> ControlNet:
        """Build the ControlNet over a UNet of config `unet` whose weights (LDM names, no prefix) are `base`, and
        run it from now on. Its weights are the UNet's, replaced by the file's full weights, each LoRA pair's
        `up @ down` added; all on the device of the UNet's first weight and in `dtype` (the UNet's compute dtype;
        None: that weight's), so it is placed whole."""
        reason = self.mismatch(unet)
        if reason is not None:
            raise CheckpointLayoutError("Control-LoRA", "weights", reason)
        config = self.config_for(unet)
        with torch.device("meta"):
            model = ControlNet(config)
        names = model.state_dict().keys()
        anchor = next(iter(base.values()))
        device, dtype = anchor.device, anchor.dtype if dtype is None else dtype
        weights = {key: base[key].to(device, dtype) for key in names if key in base}
        weights.update({key: tensor.to(device, dtype) for key, tensor in self.full.items()})
        for key, (up, down) in self.pairs.items():
            if key not in weights:
                raise CheckpointLayoutError("Control-LoRA", key, "its LoRA has no base weight in the UNet")
            target = weights[key]
            change = up.flatten(1).to(device, torch.float32) @ down.flatten(1).to(device, torch.float32)
            weights[key] = (target.float() + change.reshape(target.shape)).to(dtype)
        load_exact(model, weights, "Control-LoRA")
        self.bound = model
        return model

    def _built(self) -> ControlNet:
        if self.bound is None:
            raise RuntimeError("a Control-LoRA makes its ControlNet over the UNet it samples with: bind it first")
        return self.bound

    @property
    def config(self) -> ControlNetConfig:
        return self._built().config

    @property
    def dtype(self) -> torch.dtype:
        return self._built().dtype

    def forward(self, *args: Any, **kwargs: Any) -> ControlResiduals:
        return self._built()(*args, **kwargs)


def tiny_control_lora_tensors(
    unet: UNetConfig, base: Mapping[str, torch.Tensor], seed: int = 0, rank: int = 4
) -> dict[str, torch.Tensor]:
    """A random Control-LoRA over a UNet of config `unet` with weights `base` (LDM names), in Stability's layout:
    an up/down pair for every conv and linear weight of the encoder the UNet has, full weights for everything
    else (the hint block, the zero convs, norms and biases), and the marker."""
    from diffusion.controlnet import tiny_controlnet_tensors

    full = tiny_controlnet_tensors(unet, seed=seed, prefix="")
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {LORA_MARKER: torch.tensor([])}
    for key, tensor in full.items():
        if key in base and tensor.ndim > 1:
            # Convs' halves are convs too (a 1x1 up, a down of the conv's kernel), as in the published files.
            module = key.removesuffix(".weight")
            kernel = (1,) * (tensor.ndim - 2)
            up = torch.randn(tensor.shape[0], rank, *kernel, generator=generator) * 0.05
            tensors[f"{module}.up"] = up
            tensors[f"{module}.down"] = torch.randn(rank, *tensor.shape[1:], generator=generator) * 0.05
        else:
            tensors[key] = tensor
    return tensors
