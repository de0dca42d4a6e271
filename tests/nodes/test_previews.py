"""--preview-method: TAESD from models/vae_approx when asked for (or found), latent2rgb otherwise."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import nodes.previews
from diffusion.latent_preview import latent_to_rgb
from diffusion.taesd import TAESDDecoder
from graph.progress import InterruptFlag, node_context
from graph.services import services_context
from nodes.conditioning import CLIPTextEncode
from nodes.folders import Folders
from nodes.latent import EmptyLatentImage
from nodes.loaders import CheckpointLoaderSimple
from nodes.previews import Previews
from nodes.runtime import Runtime
from nodes.sampling import KSampler
from tests.nodes.tiny_models import tiny_checkpoint

LATENT = torch.randn(1, 4, 6, 5, generator=torch.Generator().manual_seed(0))


def write_taesd(folders: Folders, name: str = "taesd_decoder.pth") -> TAESDDecoder:
    """A random-weight decoder saved in the released file layout, as a user would download it."""
    torch.manual_seed(1)
    decoder = TAESDDecoder().eval()
    path = folders.models / "vae_approx" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    state = decoder.state_dict()
    torch.save(state, path) if path.suffix == ".pth" else save_file(state, path)
    return decoder


def taesd_image(decoder: TAESDDecoder, latent: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        rgb = decoder(latent[:1])[0].clamp(0, 1)
    return (rgb * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


@pytest.mark.parametrize("name", ["taesd_decoder.pth", "taesd_decoder.safetensors"])
def test_auto_uses_taesd_when_its_file_is_in_vae_approx(runtime: Runtime, name: str) -> None:
    decoder = write_taesd(runtime.folders, name)
    image = Previews("auto").previewer_for("sd1", runtime.model_paths)(LATENT)
    assert image.shape == (48, 40, 3)
    assert np.array_equal(image, taesd_image(decoder, LATENT))


def test_sd2_shares_sd1s_decoder_and_sdxl_needs_its_own(runtime: Runtime) -> None:
    write_taesd(runtime.folders)
    previews = Previews("auto")
    assert previews.previewer_for("sd2", runtime.model_paths)(LATENT).shape == (48, 40, 3)
    assert np.array_equal(previews.previewer_for("sdxl", runtime.model_paths)(LATENT), latent_to_rgb(LATENT, "sdxl"))


def test_auto_without_the_file_uses_latent2rgb_without_a_warning(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="nodes.previews"):
        image = Previews("auto").previewer_for("sd1", runtime.model_paths)(LATENT)
    assert np.array_equal(image, latent_to_rgb(LATENT, "sd1"))
    assert caplog.records == []


def test_taesd_without_the_file_falls_back_with_one_warning(runtime: Runtime, caplog: pytest.LogCaptureFixture) -> None:
    previews = Previews("taesd")
    with caplog.at_level(logging.WARNING, logger="nodes.previews"):
        first, second = (previews.previewer_for("sdxl", runtime.model_paths) for _ in range(2))
    assert np.array_equal(first(LATENT), latent_to_rgb(LATENT, "sdxl"))
    assert np.array_equal(second(LATENT), latent_to_rgb(LATENT, "sdxl"))
    assert [record.getMessage() for record in caplog.records] == [
        "--preview-method taesd: models/vae_approx/taesdxl_decoder.pth is missing; previews use latent2rgb instead"
    ]


def test_latent2rgb_ignores_a_taesd_file(runtime: Runtime) -> None:
    write_taesd(runtime.folders)
    image = Previews("latent2rgb").previewer_for("sd1", runtime.model_paths)(LATENT)
    assert np.array_equal(image, latent_to_rgb(LATENT, "sd1"))


def test_none_gives_no_previewer_and_unknown_methods_are_refused(runtime: Runtime) -> None:
    assert Previews("none").previewer_for("sd1", runtime.model_paths) is None
    with pytest.raises(ValueError, match="'fast': expected one of none, auto, latent2rgb, taesd"):
        Previews("fast")


def test_a_decoder_file_is_loaded_once(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    write_taesd(runtime.folders)
    previews = Previews("taesd")
    loads: list[Path] = []
    real = nodes.previews.load_taesd_decoder

    def counting(path: Path) -> TAESDDecoder:
        loads.append(path)
        return real(path)

    monkeypatch.setattr(nodes.previews, "load_taesd_decoder", counting)
    previews.previewer_for("sd1", runtime.model_paths)
    previews.previewer_for("sd1", runtime.model_paths)
    assert len(loads) == 1


class Sink:
    def __init__(self) -> None:
        self.previews: list[Any] = []

    def on_progress(self, node_id: str, value: float, total: float, preview: Any) -> None:
        self.previews.append(preview)


@pytest.mark.parametrize(("method", "size"), [("taesd", (64, 64)), ("latent2rgb", (8, 8)), ("none", None)])
def test_ksampler_reports_the_runtimes_preview(runtime: Runtime, method: str, size: tuple[int, int] | None) -> None:
    write_taesd(runtime.folders)
    tiny_checkpoint(runtime.folders.models, "sd15.safetensors")
    model, clip, _ = CheckpointLoaderSimple("sd15.safetensors")
    sink = Sink()
    with (
        services_context(dataclasses.replace(runtime, previews=Previews(method))),
        node_context("3", InterruptFlag(), sink),
    ):
        KSampler(
            model,
            1,
            2,
            7.0,
            "euler",
            "normal",
            CLIPTextEncode("a red cube", clip),
            CLIPTextEncode("", clip),
            EmptyLatentImage(64, 64, 1),
            1.0,
        )
    assert len(sink.previews) == 2
    assert [None if p is None else p[1].size for p in sink.previews] == [size, size]
