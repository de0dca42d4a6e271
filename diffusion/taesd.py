"""TAESD's decoder: a tiny VAE decoder that makes sampling previews look like the final image.

TAESD (Tiny AutoEncoder for Stable Diffusion, Ollin Boer Bohan 2023, MIT) was distilled to decode
the latents the diffusion model works on: the VAE latent already multiplied by the VAE scale
factor, which is what samplers carry. It has 1.2 M parameters (the SD VAE decoder ~50 M) and no
attention or normalisation, so decoding every sampling step is affordable.

The modules mirror the published ``nn.Sequential`` exactly (a soft clamp, then three stages of three
residual blocks and a 2x nearest upsample, then one block and the RGB convolution), so the released
``taesd_decoder`` (SD1/SD2) and ``taesdxl_decoder`` (SDXL) files load by their integer-index keys
(``1.weight``, ``3.conv.0.weight``, ...) without renaming. Output is RGB in roughly [0, 1]; it is
not clamped by the network.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from diffusion.checkpoint.errors import CheckpointError
from diffusion.checkpoint.files import open_state_dict

__all__ = ["TAESDDecoder", "TAESDWeightsError", "load_taesd_decoder", "taesd_preview"]

_WIDTH = 64
_STAGES = 3
_BLOCKS_PER_STAGE = 3


class TAESDWeightsError(CheckpointError):
    """A file whose tensors do not fit TAESD's decoder (another model, or TAESD's encoder)."""


class _SoftClamp(nn.Module):
    """``3 tanh(x / 3)``: keeps outlier latents (early, noisy steps) from blowing up the decoder."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x / 3) * 3


class _Block(nn.Module):
    """Three 3x3 convolutions with ReLUs between, added to the input, then a ReLU (keys ``conv.0/2/4``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            _conv(channels, channels),
            nn.ReLU(),
            _conv(channels, channels),
            nn.ReLU(),
            _conv(channels, channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        # The decoder's blocks keep their width, so the skip is the identity (no 1x1 ``skip`` weights).
        return torch.relu(self.conv(x) + x)


def _conv(n_in: int, n_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, bias=bias)


class TAESDDecoder(nn.Sequential):
    """Latent ``[B, C, h, w]`` in model space -> RGB ``[B, 3, 8h, 8w]`` in about [0, 1]."""

    def __init__(self, latent_channels: int = 4) -> None:
        layers: list[nn.Module] = [_SoftClamp(), _conv(latent_channels, _WIDTH), nn.ReLU()]
        for _ in range(_STAGES):
            layers += [_Block(_WIDTH) for _ in range(_BLOCKS_PER_STAGE)]
            layers += [nn.Upsample(scale_factor=2), _conv(_WIDTH, _WIDTH, bias=False)]
        layers += [_Block(_WIDTH), _conv(_WIDTH, 3)]
        super().__init__(*layers)


def load_taesd_decoder(path: str | Path) -> TAESDDecoder:
    """The decoder in ``path`` (``.safetensors`` or a ``torch.save``d state dict), in eval mode on the CPU.

    The latent channel count is read from the first convolution, so the 16-channel TAESD3/TAEF1
    decoders, which share the layout, load too. Anything else raises ``TAESDWeightsError``.
    """
    path = Path(path)
    state = open_state_dict(path)
    first = state.shape("1.weight") if "1.weight" in state else ()
    decoder = TAESDDecoder(first[1] if len(first) == 4 else 4)
    expected = {key: tuple(value.shape) for key, value in decoder.state_dict().items()}
    found = {key: state.shape(key) for key in state}
    _check_layout(path, expected, found)
    decoder.load_state_dict({key: state[key].float() for key in expected})
    return decoder.eval().requires_grad_(False)


def _check_layout(path: Path, expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]]) -> None:
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    if missing or unexpected:
        raise TAESDWeightsError(
            path,
            "is not a TAESD decoder: "
            + "; ".join(
                f"{label} {len(keys)} keys (e.g. {', '.join(keys[:3])})"
                for label, keys in (("missing", missing), ("unexpected", unexpected))
                if keys
            ),
        )
    for key, shape in expected.items():
        if found[key] != shape:
            raise TAESDWeightsError(path, f"is not a TAESD decoder: {key} has shape {found[key]}, expected {shape}")


@torch.no_grad()
def taesd_preview(decoder: TAESDDecoder, latent: Tensor) -> np.ndarray:
    """The first item of a ``[B, C, h, w]`` model-space latent, decoded to an ``[8h, 8w, 3]`` uint8 image.

    Decodes where the latent is: the decoder (a few MB) is moved there in place on first use, so a
    GPU run previews on the GPU instead of paying a CPU decode every step.
    """
    sample = latent[:1] if latent.ndim == 4 else latent[None]
    decoder.to(sample.device)
    rgb = decoder(sample.float())[0].clamp(0, 1)
    return (rgb * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
