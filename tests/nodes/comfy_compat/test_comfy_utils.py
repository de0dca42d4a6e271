"""``comfy.utils``: progress bars reach Loom's progress reporting, resizes are Loom's, weight files are read
safely."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from diffusion.checkpoint.errors import CheckpointFormatError
from graph.progress import Interrupted, InterruptFlag, node_context
from nodes.image import resample
from nodes.latent import bislerp


class Sink:
    def __init__(self) -> None:
        self.reports: list[tuple[str, float, float, Any]] = []

    def on_progress(self, node_id: str, value: float, total: float, preview: Any | None) -> None:
        self.reports.append((node_id, value, total, preview))


def test_progress_bar_updates_reach_the_running_node_s_progress() -> None:
    from comfy.utils import ProgressBar

    sink = Sink()
    with node_context("7", InterruptFlag(), sink):
        bar = ProgressBar(4)
        for _ in range(4):
            bar.update(1)
        bar.update_absolute(2, preview=("JPEG", "picture", 512))
    values = [(node, value, total) for node, value, total, _ in sink.reports]
    assert values[0] == ("7", 1, 4) and ("7", 4, 4) in values, "the first and the last update are always sent"
    assert sink.reports[-1] == ("7", 2, 4, ("JPEG", "picture", 512)), "a preview is always sent"


def test_progress_bar_updates_are_thinned_like_comfyui_s() -> None:
    from comfy.utils import ProgressBar

    sink = Sink()
    with node_context("1", InterruptFlag(), sink):
        bar = ProgressBar(10_000)
        for _ in range(10_000):
            bar.update(1)
    assert 2 <= len(sink.reports) < 100
    assert sink.reports[-1][1] == 10_000


def test_a_progress_bar_update_stops_an_interrupted_prompt() -> None:
    from comfy.model_management import InterruptProcessingException
    from comfy.utils import ProgressBar

    flag = InterruptFlag()
    with node_context("3", flag, Sink()):
        bar = ProgressBar(100)
        bar.update(1)
        flag.set()
        with pytest.raises(InterruptProcessingException):
            bar.update(1)  # thinned away, and still an interruption point
    assert InterruptProcessingException is Interrupted


def test_a_global_hook_set_by_a_pack_receives_comfyui_s_arguments() -> None:
    import comfy.utils

    seen: list[tuple[Any, ...]] = []
    previous = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: seen.append((value, total)))
    try:
        comfy.utils.ProgressBar(2).update_absolute(2)
    finally:
        comfy.utils.set_progress_bar_global_hook(previous)
    assert seen == [(2, 2)]


@pytest.mark.parametrize("method", ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"])
@pytest.mark.parametrize("crop", ["disabled", "center"])
def test_common_upscale_matches_loom_s_own_resize(method: str, crop: str) -> None:
    from comfy.utils import common_upscale

    pixels = torch.rand(2, 3, 24, 40)
    assert torch.equal(common_upscale(pixels, 16, 20, method, crop), resample(pixels, 16, 20, method, crop))


def test_common_upscale_bislerp_and_video_latents() -> None:
    from comfy.utils import common_upscale

    latent = torch.randn(1, 4, 8, 8)
    assert torch.equal(common_upscale(latent, 16, 12, "bislerp", "disabled"), bislerp(latent, 16, 12))
    video = torch.randn(2, 4, 3, 8, 10)  # [B, C, T, H, W]: each frame resized like a picture
    out = common_upscale(video, 20, 16, "bilinear", "disabled")
    assert out.shape == (2, 4, 3, 16, 20)
    assert torch.equal(out[1, :, 2], resample(video[1:2, :, 2], 20, 16, "bilinear")[0])
    with pytest.raises(ValueError, match="unknown upscale_method 'cubic'"):
        common_upscale(latent, 16, 16, "cubic", "disabled")


def test_load_torch_file_reads_safetensors_with_metadata(tmp_path: Path) -> None:
    from comfy.utils import load_torch_file

    path = tmp_path / "w.safetensors"
    save_file({"a.weight": torch.arange(4.0)}, str(path), metadata={"format": "pt"})
    tensors, metadata = load_torch_file(str(path), return_metadata=True)
    assert torch.equal(tensors["a.weight"], torch.arange(4.0)) and metadata == {"format": "pt"}
    tensors["a.weight"].add_(1)  # a pack editing in place does not change the file
    assert torch.equal(load_torch_file(str(path))["a.weight"], torch.arange(4.0))


class RunsCode:
    """Pickles to a call of ``os.mkdir``: loading the file would create a folder."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


@pytest.mark.parametrize("safe_load", [True, False])
def test_load_torch_file_refuses_a_pickle_that_runs_code(tmp_path: Path, safe_load: bool) -> None:
    from comfy.utils import load_torch_file

    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    torch.save({"weight": torch.zeros(2), "payload": RunsCode(marker)}, path)
    with pytest.raises(CheckpointFormatError, match="model.pt"):
        load_torch_file(str(path), safe_load=safe_load)
    assert not marker.exists()


def test_load_torch_file_reads_a_plain_pickle_of_tensors(tmp_path: Path) -> None:
    from comfy.utils import load_torch_file

    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"x": torch.ones(3)}}, path)
    tensors, metadata = load_torch_file(str(path), safe_load=True, return_metadata=True)
    assert list(tensors) == ["x"] and torch.equal(tensors["x"], torch.ones(3)) and metadata is None


def test_state_dict_prefix_replace_renames_in_place_or_filters() -> None:
    from comfy.utils import state_dict_prefix_replace

    weights = {"model.a": 1, "model.b": 2, "other": 3}
    assert state_dict_prefix_replace(weights, {"model.": "unet."}) is weights
    assert weights == {"other": 3, "unet.a": 1, "unet.b": 2}
    assert state_dict_prefix_replace({"p.x": 1, "q": 2}, {"p.": ""}, filter_keys=True) == {"x": 1}


def test_repeat_to_batch_size_cuts_or_cycles() -> None:
    from comfy.utils import repeat_to_batch_size

    batch = torch.arange(3).reshape(3, 1)
    assert repeat_to_batch_size(batch, 2).flatten().tolist() == [0, 1]
    assert repeat_to_batch_size(batch, 7).flatten().tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert repeat_to_batch_size(batch.T, 4, dim=1).flatten().tolist() == [0, 1, 2, 0]
