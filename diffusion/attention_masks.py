"""Attention biases that conditioning carries to a diffusion transformer: ComfyUI's ``attention_mask`` entry.

A conditioning entry may hold ``attention_mask``, an additive bias ``[B, N, N]`` between the sequence a FLUX-style
transformer attends over, its text tokens first and then its image tokens, and ``attention_mask_img_shape``, the
grid ``(h, w)`` the image part of that bias was drawn at (``N = text tokens + h * w``). The model stretches the
image part to its own token grid (``over_image``), so a bias made once serves every picture size. FLUX.1 Redux's
``attn_bias`` strength is such a bias (``with_token_bias``): every query but the added tokens' own gives the
added tokens' keys ``log(strength)`` more, which weights them by ``strength`` inside each softmax.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["UNSIZED", "TokenAttentionMask", "as_additive", "with_token_bias"]

#: The image grid of a bias drawn without a picture in mind: one token stands for all of them.
UNSIZED = (1, 1)


def as_additive(mask: Tensor) -> Tensor:
    """A boolean mask (True: may attend) as the additive bias it means (0 or -inf); a float mask as it is."""
    return torch.log(mask.to(torch.float32)) if mask.dtype == torch.bool else mask


@dataclass(frozen=True)
class TokenAttentionMask:
    """An additive attention bias ``[B, T + h*w, T + h*w]`` over ``T`` text tokens and an ``h`` x ``w`` image grid."""

    bias: Tensor
    image_shape: tuple[int, int] = UNSIZED

    @property
    def text_tokens(self) -> int:
        return int(self.bias.shape[-1]) - self.image_shape[0] * self.image_shape[1]

    def over_image(self, rows: int, cols: int) -> Tensor:
        """The bias for an image of ``rows`` x ``cols`` tokens: each image quadrant resized bilinearly along its
        image axes, as ComfyUI's ``upscale_dit_mask`` stretches it. A shut-out key (-inf) stays a finite, hugely
        negative bias through the resize, where a zero interpolation weight would turn it into NaN."""
        bias = self.bias.float()
        if self.image_shape == (rows, cols):
            return bias
        bias = bias.clamp(min=torch.finfo(torch.float32).min / 2)
        text, (height, width) = self.text_tokens, self.image_shape
        batch = bias.shape[0]

        def resized(part: Tensor) -> Tensor:
            """``[B, X, h*w]`` -> ``[B, X, rows*cols]``."""
            grid = part.reshape(batch, part.shape[1], height, width)
            return F.interpolate(grid, size=(rows, cols), mode="bilinear").reshape(batch, part.shape[1], -1)

        text_to_text, text_to_image = bias[:, :text, :text], resized(bias[:, :text, text:])
        image_to_text = resized(bias[:, text:, :text].transpose(1, 2)).transpose(1, 2)
        image_to_image = resized(resized(bias[:, text:, text:]).transpose(1, 2)).transpose(1, 2)
        return torch.cat(
            (torch.cat((text_to_text, text_to_image), dim=2), torch.cat((image_to_text, image_to_image), dim=2)), dim=1
        )


def with_token_bias(
    previous: TokenAttentionMask | None, batch: int, text_tokens: int, added: int, strength: float
) -> TokenAttentionMask:
    """The bias after ``added`` tokens were appended to ``text_tokens`` text tokens and weighted by ``strength``
    (ComfyUI's StyleModelApply ``attn_bias``): the earlier bias kept quadrant by quadrant, the new tokens' columns
    and then their rows set to ``log(strength)`` (their rows are uniform, so their own queries are unchanged);
    strength 0 shuts the new tokens out. Stored in float16, as ComfyUI stores it."""
    shape = UNSIZED if previous is None else previous.image_shape
    image = shape[0] * shape[1]
    old = (
        torch.zeros(batch, text_tokens + image, text_tokens + image)
        if previous is None
        else as_additive(previous.bias).float()
    )
    if old.shape[-1] != text_tokens + image:
        raise ValueError(
            f"the conditioning's attention_mask covers {old.shape[-1] - image} text tokens and its context has "
            f"{text_tokens}"
        )
    size = text_tokens + added + image
    new = torch.zeros(old.shape[0], size, size)
    kept = [slice(0, text_tokens), slice(text_tokens + added, size)]
    was = [slice(0, text_tokens), slice(text_tokens, text_tokens + image)]
    for rows, old_rows in zip(kept, was):
        for cols, old_cols in zip(kept, was):
            new[:, rows, cols] = old[:, old_rows, old_cols]
    bias = math.log(strength) if strength > 0 else -math.inf
    new[:, :, text_tokens : text_tokens + added] = bias
    # A uniform row changes nothing; at strength 0 it is left at 0, where log(0) would make the softmax NaN.
    new[:, text_tokens : text_tokens + added, :] = bias if strength > 0 else 0.0
    return TokenAttentionMask(new.to(torch.float16), shape)
