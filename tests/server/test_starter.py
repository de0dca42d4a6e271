"""What a new installation starts with, and the model folders the server is told about at start."""

from __future__ import annotations

from pathlib import Path

from diffusion.upscalers.bundled import BUNDLED_NAMES
from nodes.folders import make_folders
from server.cli import main
from server.starter import SAMPLE_IMAGE, SAMPLE_IMAGE_NAME, install_starter_files


def test_the_bundled_upscalers_and_the_sample_photo_are_placed_once(tmp_path: Path) -> None:
    folders = make_folders(tmp_path)
    install_starter_files(folders)
    upscalers = folders.models / "upscale_models"
    assert {path.name for path in upscalers.iterdir()} == {
        f"{name}{suffix}" for name in BUNDLED_NAMES.values() for suffix in (".param", ".bin")
    }
    assert (folders.input / SAMPLE_IMAGE_NAME).read_bytes() == SAMPLE_IMAGE.read_bytes()

    (folders.input / SAMPLE_IMAGE_NAME).write_bytes(b"the user's own picture")
    install_starter_files(folders)
    assert (folders.input / SAMPLE_IMAGE_NAME).read_bytes() == b"the user's own picture"


async def test_the_editor_finds_the_starter_files_through_the_api(make_client, tmp_path: Path) -> None:
    client = await make_client()
    assert "RealESRGAN_x4plus.param" in await (await client.get("/models/upscale_models")).json()
    assert (await client.get("/view", params={"filename": SAMPLE_IMAGE_NAME, "type": "input"})).status == 200


async def test_starter_files_can_be_left_out(make_client, tmp_path: Path) -> None:
    client = await make_client(starter_files=False)
    assert await (await client.get("/models/upscale_models")).json() == []


async def test_an_extra_model_paths_file_adds_its_folders(make_client, tmp_path: Path) -> None:
    comfy = tmp_path / "ComfyUI" / "models"
    (comfy / "checkpoints").mkdir(parents=True)
    (comfy / "checkpoints" / "theirs.safetensors").write_bytes(b"")
    paths = tmp_path / "extra_model_paths.yaml"
    paths.write_text(f"comfyui:\n  base_path: {comfy}\n  checkpoints: checkpoints\n")
    client = await make_client(extra_model_paths=(paths,), starter_files=False)
    assert await (await client.get("/models/checkpoints")).json() == ["theirs.safetensors"]


def test_serve_stops_with_a_clear_message_for_a_broken_paths_file(tmp_path: Path, capsys) -> None:
    paths = tmp_path / "extra_model_paths.yaml"
    paths.write_text("comfyui:\n  - a list where a mapping belongs\n")
    status = main(["serve", "--base-dir", str(tmp_path), "--extra-model-paths", str(paths), "--port", "1"])
    assert status == 2
    assert str(paths) in capsys.readouterr().err
