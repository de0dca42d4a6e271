"""diffusers' FLUX and Chroma single-file converters cut each single block's fused ``linear1`` at FLUX.1's widths
(3072 for q, k and v, 12288 for the MLP input) whatever the file's. A tiny model's rows are therefore moved to
those offsets before conversion and cut back to the tiny widths after it, so the twin holds exactly its weights.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

RELEASE_HIDDEN, RELEASE_MLP = 3072, 12288
_SINGLE_BLOCK_PARTS = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")


def _widths(hidden: int, mlp: int) -> tuple[int, ...]:
    return (hidden,) * 3 + (mlp,)


def _at_release_width(
    state_dict: Mapping[str, torch.Tensor], blocks: int, hidden: int, mlp: int
) -> dict[str, torch.Tensor]:
    """The same weights with each single block's ``linear1`` rows (q, k, v, MLP input) moved to the offsets the
    converter cuts at, zeros in between. Every other key is as is."""
    widened = dict(state_dict)
    for i in range(blocks):
        for suffix in ("weight", "bias"):
            key = f"single_blocks.{i}.linear1.{suffix}"
            parts = []
            for part, width in zip(state_dict[key].split(_widths(hidden, mlp)), _widths(RELEASE_HIDDEN, RELEASE_MLP)):
                padded = part.new_zeros(width, *part.shape[1:])
                padded[: part.shape[0]] = part
                parts.append(padded)
            widened[key] = torch.cat(parts)
    return widened


def _cut_to_model_width(converted: dict[str, torch.Tensor], blocks: int, hidden: int, mlp: int) -> None:
    """Cut the converted single-block layers back to the model's widths, checking only padding is dropped."""
    for i in range(blocks):
        for name, width in zip(_SINGLE_BLOCK_PARTS, _widths(hidden, mlp)):
            for suffix in ("weight", "bias"):
                key = f"single_transformer_blocks.{i}.{name}.{suffix}"
                assert not converted[key][width:].any()  # the zeros at_release_width put there, nothing else
                converted[key] = converted[key][:width]


def converted_at_model_width(
    state_dict: Mapping[str, torch.Tensor],
    converter: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]],
    blocks: int,
    hidden: int,
    mlp: int,
) -> dict[str, torch.Tensor]:
    """diffusers' single-file ``converter`` over a tiny model's original-layout weights, holding exactly them:
    the single blocks' rows moved to the release widths before, the converted layers cut back after."""
    converted = converter(_at_release_width(state_dict, blocks, hidden, mlp))
    _cut_to_model_width(converted, blocks, hidden, mlp)
    return converted
