"""Tiny model files for node tests: checkpoints from ``diffusion.tiny`` and kohya-format LoRAs.

Checkpoints are written once per session and family, then copied into each test's models folder
(copied, not linked, so that a test may change its file without touching another test's).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from diffusion.tiny import write_tiny_checkpoint
from graph.execution_state import ExecutionRecord
from graph.executor import Executor
from graph.registry import NodeRegistry
from graph.validation import validate_prompt
from nodes import register_builtin_nodes
from tests.scratch import session_scratch_dir

_TEMPLATES: dict[tuple[str, bool, int], Path] = {}
_TEMPLATE_DIR = session_scratch_dir("loom-tiny-")


def tiny_checkpoint(
    models: Path,
    name: str,
    family: str = "sd15",
    inpaint: bool = False,
    folder: str = "checkpoints",
    seed: int = 0,
) -> Path:
    """``models/<folder>/<name>``: a tiny checkpoint of ``family`` and ``seed``."""
    key = (family, inpaint, seed)
    if key not in _TEMPLATES:
        _TEMPLATES[key] = write_tiny_checkpoint(
            _TEMPLATE_DIR / f"{family}-{inpaint}-{seed}.safetensors", family, inpaint=inpaint, seed=seed
        )
    target = models / folder / name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_TEMPLATES[key], target)
    return target


def kohya_lora_tensors(
    unet: nn.Module,
    text_encoders: list[nn.Module],
    rank: int = 4,
    alpha: float = 2.0,
    seed: int = 0,
    scale: float = 0.3,
) -> dict[str, torch.Tensor]:
    """A kohya-layout LoRA on every attention projection (LDM names, as kohya's SDXL trainer writes them)."""
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}

    def add(stem: str, weight: torch.Tensor) -> None:
        out_features, in_features = weight.shape[:2]
        tensors[f"{stem}.lora_down.weight"] = torch.randn(rank, in_features, generator=generator) * scale
        tensors[f"{stem}.lora_up.weight"] = torch.randn(out_features, rank, generator=generator) * scale
        tensors[f"{stem}.alpha"] = torch.tensor(alpha)

    for name, module in unet.named_modules():
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v"):
            add("lora_unet_" + name.replace(".", "_"), module.weight)
    prefixes = ["lora_te_"] if len(text_encoders) == 1 else ["lora_te1_", "lora_te2_"]
    for prefix, encoder in zip(prefixes, text_encoders):
        for name, module in encoder.named_modules():
            if isinstance(module, nn.Linear) and name.endswith(("q_proj", "v_proj")):
                add(prefix + "text_model_" + name.replace(".", "_"), module.weight)
    return tensors


def write_lora(path: Path, tensors: Mapping[str, torch.Tensor]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous() for key, value in tensors.items()}, path)
    return path


def decode_prompt(ckpt_name: str, size: int = 64) -> dict[str, Any]:
    """The cheapest prompt that needs a checkpoint: decode an empty latent with its VAE and save it."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "2": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "3": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["1", 2]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "decoded"}},
    }


def make_executor() -> Executor:
    registry = NodeRegistry()
    register_builtin_nodes(registry)
    return Executor(registry)


def run_prompt(
    executor: Executor, prompt: dict[str, Any], prompt_id: str = "p", extra_data: dict[str, Any] | None = None
) -> ExecutionRecord:
    """Validate then execute; fails the test with the validation errors if the prompt is refused."""
    checked = validate_prompt(prompt, executor.registry)
    assert checked.ok, (checked.error, checked.node_errors)
    record = executor.execute(checked.prompt, checked.outputs, prompt_id=prompt_id, extra_data=extra_data)
    assert record.error is None, record.error
    return record
