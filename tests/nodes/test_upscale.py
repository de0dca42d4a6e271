"""``UpscaleModelLoader`` and ``ImageUpscaleWithModel``: what the combo lists, what a missing model
says, and that an image comes out four times larger, tile by tile with progress."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from diffusion.upscalers.bundled import bundled_models_directory
from graph.progress import InterruptFlag, node_context
from nodes.folders import Folders
from nodes.model_folders import ModelNotFoundError
from nodes.upscale import ImageUpscaleWithModel, UpscaleModelLoader, upscale_model_names
from tests.diffusion.upscalers.tiny_upscalers import tiny_rrdb

ANIMEVIDEO_X4 = "REALESRGAN_ANIMAVIDEOV3_UP4X"


@pytest.fixture
def upscale_folder(folders: Folders) -> Path:
    folder = folders.models / "upscale_models"
    (folder / "anime").mkdir(parents=True)
    torch.save(tiny_rrdb().state_dict(), folder / "tiny_x4.pth")
    for suffix in (".param", ".bin"):
        shutil.copy(bundled_models_directory() / f"{ANIMEVIDEO_X4}{suffix}", folder / "anime" / f"v3-x4{suffix}")
    (folder / "notes.txt").write_text("not a model")
    return folder


class Sink:
    def __init__(self) -> None:
        self.reports: list[tuple[float, float]] = []

    def on_progress(self, node_id: str, value: float, total: float, preview: Any) -> None:
        self.reports.append((value, total))


def test_the_combo_lists_models_and_an_ncnn_pair_once_by_its_param(upscale_folder: Path) -> None:
    assert upscale_model_names() == ["anime/v3-x4.param", "tiny_x4.pth"]


def test_a_missing_model_names_the_folder_searched(upscale_folder: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=f"'absent.pth' not found; searched: {upscale_folder}"):
        UpscaleModelLoader("absent.pth")


def test_a_loaded_model_upscales_by_four_with_progress_per_tile(upscale_folder: Path) -> None:
    model = UpscaleModelLoader("tiny_x4.pth")
    image = torch.rand(2, 20, 24, 3)
    sink = Sink()
    with node_context("7", InterruptFlag(), sink):
        upscaled = ImageUpscaleWithModel(model, image)
    assert upscaled.shape == (2, 80, 96, 3)
    assert upscaled.min() >= 0 and upscaled.max() <= 1
    assert sink.reports == [(1, 1)]
    expected = model(image.movedim(-1, 1)).clamp(0, 1).movedim(1, -1)
    torch.testing.assert_close(upscaled, expected, rtol=0, atol=1e-6)


def test_the_real_ncnn_pair_loads_through_the_node(upscale_folder: Path) -> None:
    model = UpscaleModelLoader("anime/v3-x4.param")
    assert (model.architecture, model.scale) == ("SRVGGNetCompact", 4)
    assert ImageUpscaleWithModel(model, torch.rand(1, 8, 8, 3)).shape == (1, 32, 32, 3)


def test_an_image_with_other_channels_is_refused(upscale_folder: Path) -> None:
    model = UpscaleModelLoader("tiny_x4.pth")
    with pytest.raises(ValueError, match="the image has 4 channels but tiny_x4.pth takes 3"):
        ImageUpscaleWithModel(model, torch.rand(1, 8, 8, 4))
