"""LoRA patch sets on shared, loaded modules, applied without ever writing the loaded tensors.

The loaded tensors are copy-on-write views of the file's memory map shared by every handle of that
checkpoint (``nodes.shared_models``). A handle computes its patched weights into new tensors once (per
device), keeps them, and swaps them into the module only for the duration of a call. Changing or
removing a LoRA therefore costs one new handle and one weight sum, never a reload of the checkpoint.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import fields

import torch
from torch import nn

from diffusion.lora import WeightDelta, apply_lora_patches

__all__ = ["PatchSet", "PatchedModule", "all_active", "stack_patch_set", "weights_swapped"]

#: One LoRA as applied: parameter name -> deltas, and the strength it was applied with.
PatchSet = tuple[Mapping[str, Sequence[WeightDelta]], float]


@contextmanager
def weights_swapped(module: nn.Module, weights: Mapping[str, torch.Tensor]) -> Iterator[nn.Module]:
    """Run with ``module``'s named parameters temporarily bound to ``weights``; rebinds, never writes."""
    parameters = dict(module.named_parameters())
    originals: dict[str, torch.Tensor] = {}
    try:
        for name, tensor in weights.items():
            originals[name] = parameters[name].data
            parameters[name].data = tensor
        yield module
    finally:
        for name, tensor in originals.items():
            parameters[name].data = tensor


class PatchedModule:
    """A module plus patch sets, with the patched weights computed once per device."""

    def __init__(self, module: nn.Module, patches: tuple[PatchSet, ...]) -> None:
        self.module = module
        self.patches = patches
        self._weights: dict[torch.device, dict[str, torch.Tensor]] = {}
        self._lock = threading.Lock()

    def weights(self) -> dict[str, torch.Tensor]:
        first = next(self.module.parameters())
        with self._lock:
            if first.device not in self._weights:
                self._weights = {first.device: apply_lora_patches(self.module, self.patches)}
            return self._weights[first.device]

    def loom_nbytes(self) -> int:
        """The patched weights computed so far (``graph.sizeof``): this handle's own, shared with no other."""
        with self._lock:
            return sum(t.element_size() * t.nelement() for weights in self._weights.values() for t in weights.values())

    def loom_parts(self) -> list[torch.Tensor]:
        """The LoRA tensors applied; a handle stacking another LoRA on this one shares them."""
        deltas = [delta for patch_set, _ in self.patches for sequence in patch_set.values() for delta in sequence]
        return [
            value
            for delta in deltas
            for value in (getattr(delta, field.name) for field in fields(delta))
            if isinstance(value, torch.Tensor)
        ]

    @contextmanager
    def active(self) -> Iterator[nn.Module]:
        """The module with its patched weights bound; the caller has placed it (``current_runtime().memory.use``)
        together with every module it runs alongside, so none is offloaded while patched."""
        if not self.patches:
            yield self.module
            return
        with torch.no_grad(), weights_swapped(self.module, self.weights()):
            yield self.module


def stack_patch_set(
    patches: tuple[PatchSet, ...], added: Mapping[str, Sequence[WeightDelta]], strength: float
) -> tuple[PatchSet, ...]:
    """``patches`` with ``added`` at ``strength`` stacked on top; ``patches`` itself (the same object) when that
    changes nothing: strength 0 or no parameter to patch."""
    return patches if strength == 0.0 or not added else (*patches, (added, strength))


@contextmanager
def all_active(patched: Sequence[PatchedModule]) -> Iterator[None]:
    """Every module of ``patched`` with its patched weights bound (``PatchedModule.active``) at once."""
    if not patched:
        yield
        return
    with patched[0].active(), all_active(patched[1:]):
        yield
