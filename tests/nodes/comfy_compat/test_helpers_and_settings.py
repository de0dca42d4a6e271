"""``comfy.samplers``, ``comfy.cli_args``, ``node_helpers`` and ``latent_preview`` answer with Loom's lists,
settings and previews."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from diffusion.samplers import SAMPLER_NAMES
from diffusion.schedules import SCHEDULER_NAMES
from diffusion.vae import LatentFormat
from graph.progress import InterruptFlag, node_context
from graph.services import services_context
from nodes.folders import Folders
from nodes.runtime import Runtime, RuntimeOptions, build_runtime


def test_ksampler_lists_are_loom_s() -> None:
    from comfy.samplers import KSAMPLER_NAMES, KSampler
    from comfy.samplers import SCHEDULER_NAMES as COMFY_SCHEDULERS

    assert KSampler.SAMPLERS == list(SAMPLER_NAMES)
    assert KSampler.SCHEDULERS == COMFY_SCHEDULERS == list(SCHEDULER_NAMES)
    assert KSAMPLER_NAMES == [name for name in SAMPLER_NAMES if name not in ("ddim", "uni_pc", "uni_pc_bh2")]
    with pytest.raises(NotImplementedError, match="SAMPLERS and SCHEDULERS"):
        KSampler(None, 20, "cpu")


def test_args_hold_comfyui_defaults_and_the_runtime_s_settings(tmp_path: Path, folders: Folders) -> None:
    from comfy.cli_args import LatentPreviewMethod, args

    assert (args.listen, args.port, args.disable_metadata, args.preview_size) == ("127.0.0.1", 8188, False, 512)
    assert args.cpu is True and args.output_directory == str(folders.output)
    assert args.preview_method is LatentPreviewMethod.Auto
    quiet = build_runtime(RuntimeOptions(base_dir=tmp_path / "quiet", device="cpu", preview_method="none"))
    with services_context(quiet):
        assert args.preview_method is LatentPreviewMethod.NoPreviews
    with pytest.raises(AttributeError, match="no 'not_a_flag'"):
        args.not_a_flag  # noqa: B018


def test_conditioning_set_values_copies_and_appends() -> None:
    from node_helpers import conditioning_set_values

    cond = torch.zeros(1, 2, 3)
    original: list[Any] = [[cond, {"strength": 1.0, "hooks": [1]}]]
    changed = conditioning_set_values(original, {"strength": 0.5})
    assert changed[0][1]["strength"] == 0.5 and original[0][1]["strength"] == 1.0, "the input is left as cached"
    assert changed[0][0] is cond
    appended = conditioning_set_values(original, {"hooks": [2], "area": (1, 2)}, append=True)
    assert appended[0][1]["hooks"] == [1, 2] and appended[0][1]["area"] == (1, 2)


def test_pillow_opens_a_truncated_picture_on_retry(tmp_path: Path) -> None:
    from node_helpers import pillow
    from PIL import ImageFile

    buffer = io.BytesIO()
    noise = (torch.rand(64, 64, 3) * 255).to(torch.uint8).numpy()
    Image.fromarray(noise).save(buffer, format="JPEG", quality=95)
    data = buffer.getvalue()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) * 3 // 4])  # a download cut short

    def load(name: Path) -> Image.Image:
        with Image.open(name) as picture:
            picture.load()
            return picture.copy()

    with pytest.raises(OSError, match="truncated"):
        load(path)
    assert pillow(load, path).size == (64, 64)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_image_alpha_fix_matches_channels() -> None:
    from node_helpers import image_alpha_fix

    rgb, rgba = torch.rand(1, 4, 4, 3), torch.rand(1, 4, 4, 4)
    assert image_alpha_fix(rgb, rgba)[1].shape[-1] == 3
    padded = image_alpha_fix(rgba, rgb)[1]
    assert padded.shape[-1] == 4 and bool((padded[..., 3] == 1).all())


class Sink:
    def __init__(self) -> None:
        self.previews: list[Any] = []

    def on_progress(self, node_id: str, value: float, total: float, preview: Any | None) -> None:
        self.previews.append((value, total, preview))


def test_previews_follow_the_runtime_s_method(tmp_path: Path, runtime: Runtime) -> None:
    import latent_preview

    previewer = latent_preview.get_previewer(None, LatentFormat("sdxl", 0.13025))
    assert previewer is not None
    fmt, picture, size = previewer.decode_latent_to_preview_image("JPEG", torch.randn(1, 4, 8, 8))
    assert (fmt, picture.size, size) == ("JPEG", (8, 8), 512)
    assert latent_preview.get_previewer(None, "no_such_family") is None
    quiet = build_runtime(RuntimeOptions(base_dir=tmp_path / "quiet", device="cpu", preview_method="none"))
    with services_context(quiet):
        assert latent_preview.get_previewer(None, "sd1") is None


class FakeModel:
    latent_format = LatentFormat("sd1", 0.18215)


def test_prepare_callback_reports_steps_with_previews() -> None:
    import latent_preview

    sink = Sink()
    kept: dict[str, Any] = {}
    with node_context("8", InterruptFlag(), sink):
        callback = latent_preview.prepare_callback(FakeModel(), 2, kept)
        x0 = torch.randn(1, 4, 8, 8)
        callback(0, x0, x0, 2)
        callback(1, x0, x0, 2)
    assert [(value, total) for value, total, _ in sink.previews] == [(1, 2), (2, 2)]
    assert sink.previews[0][2][0] == "JPEG" and isinstance(sink.previews[0][2][1], Image.Image)
    assert kept["x0"] is x0
