"""Model folders: ComfyUI's layout, extra-model-paths files, cached listings and lookups, per runtime."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import nodes.model_folders as model_folders
from nodes.extra_model_paths import ExtraModelPathsError, parse_extra_model_paths
from nodes.folders import Folders, UnsafePathError
from nodes.model_folders import ModelNotFoundError, ModelPaths, UnknownModelFolderError
from nodes.runtime import Runtime, RuntimeOptions, build_runtime


@pytest.fixture
def paths(runtime: Runtime) -> ModelPaths:
    """The test runtime's model folders: ``models/`` only, no paths file."""
    return runtime.model_paths


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_keys_include_comfyui_names_and_legacy_aliases(paths: ModelPaths, folders: Folders) -> None:
    keys = paths.keys()
    for key in (
        "checkpoints",
        "loras",
        "vae",
        "embeddings",
        "upscale_models",
        "text_encoders",
        "clip",
        "diffusion_models",
        "unet",
        "controlnet",
        "vae_approx",
        "configs",
    ):
        assert key in keys


def test_lists_model_files_recursively_with_model_extensions_only(paths: ModelPaths, folders: Folders) -> None:
    root = folders.models / "checkpoints"
    for name in ("b.safetensors", "sub/a.ckpt", "c.SFT", "d.pt2", "notes.txt", ".hidden.safetensors"):
        touch(root / name)
    assert paths.names("checkpoints") == ["b.safetensors", "c.SFT", "d.pt2", "sub/a.ckpt"]


def test_upscale_models_list_ncnn_param_files(paths: ModelPaths, folders: Folders) -> None:
    touch(folders.models / "upscale_models" / "x4.param")
    touch(folders.models / "upscale_models" / "x4.bin")
    assert paths.names("upscale_models") == ["x4.bin", "x4.param"]


def test_legacy_and_new_directory_names_are_one_key(paths: ModelPaths, folders: Folders) -> None:
    touch(folders.models / "clip" / "old.safetensors")
    touch(folders.models / "text_encoders" / "new.safetensors")
    touch(folders.models / "unet" / "u.safetensors")
    assert paths.names("clip") == paths.names("text_encoders") == ["new.safetensors", "old.safetensors"]
    assert paths.names("diffusion_models") == ["u.safetensors"]


def test_listing_is_cached_until_a_directory_changes(
    paths: ModelPaths, folders: Folders, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = folders.models / "loras"
    touch(root / "deep" / "a.safetensors")
    walks = []
    real_walk = os.walk
    monkeypatch.setattr(model_folders.os, "walk", lambda *a, **k: walks.append(a) or real_walk(*a, **k))
    assert paths.names("loras") == ["deep/a.safetensors"]
    assert paths.names("loras") == ["deep/a.safetensors"]
    assert len(walks) == 1
    touch(root / "deep" / "b.safetensors")
    os.utime(root / "deep", ns=(1, 1))  # the mtime changes even on coarse-clock filesystems
    assert paths.names("loras") == ["deep/a.safetensors", "deep/b.safetensors"]
    assert len(walks) == 2


def test_find_model_names_every_folder_searched(folders: Folders, tmp_path: Path) -> None:
    config = tmp_path / "extra.yaml"
    config.write_text(f"other:\n    base_path: {tmp_path / 'comfy'}\n    checkpoints: models/checkpoints\n")
    paths = ModelPaths.from_files(folders.models, (config,))
    with pytest.raises(ModelNotFoundError) as caught:
        paths.find("checkpoints", "missing.safetensors")
    message = str(caught.value)
    assert "missing.safetensors" in message
    assert (
        str(folders.models / "checkpoints") in message and str(tmp_path / "comfy" / "models" / "checkpoints") in message
    )
    assert caught.value.searched == paths.folders("checkpoints")


def test_find_model_searches_extra_folders_and_refuses_escapes(folders: Folders, tmp_path: Path) -> None:
    target = touch(tmp_path / "comfy" / "models" / "loras" / "style.safetensors")
    config = tmp_path / "extra.yaml"
    config.write_text(f"comfyui:\n    base_path: {tmp_path / 'comfy'}\n    loras: models/loras\n")
    paths = ModelPaths.from_files(folders.models, (config,))
    assert paths.find("loras", "style.safetensors") == target.resolve()
    assert paths.names("loras") == ["style.safetensors"]
    touch(folders.models / "secret.safetensors")
    (folders.models / "loras").mkdir()
    with pytest.raises(UnsafePathError):
        paths.find("loras", "../secret.safetensors")


def test_symlinked_files_and_folders_are_followed_wherever_they_lead(
    paths: ModelPaths, folders: Folders, tmp_path: Path
) -> None:
    outside = touch(tmp_path / "disk" / "big.safetensors")
    touch(tmp_path / "disk" / "nested" / "deep.safetensors")
    loras = folders.models / "loras"
    loras.mkdir()
    (loras / "big.safetensors").symlink_to(outside)
    (loras / "disk").symlink_to(tmp_path / "disk", target_is_directory=True)
    assert paths.names("loras") == ["big.safetensors", "disk/big.safetensors", "disk/nested/deep.safetensors"]
    for name in paths.names("loras"):
        assert paths.find("loras", name).is_file()
    assert paths.find("loras", "big.safetensors") == loras / "big.safetensors"


def test_symlinks_in_extra_model_paths_folders_are_followed_too(folders: Folders, tmp_path: Path) -> None:
    target = touch(tmp_path / "disk" / "style.safetensors")
    extra = tmp_path / "comfy" / "models" / "loras"
    extra.mkdir(parents=True)
    (extra / "style.safetensors").symlink_to(target)
    config = tmp_path / "extra.yaml"
    config.write_text(f"comfyui:\n    base_path: {tmp_path / 'comfy'}\n    loras: models/loras\n")
    paths = ModelPaths.from_files(folders.models, (config,))
    assert paths.names("loras") == ["style.safetensors"]
    assert paths.find("loras", "style.safetensors").read_bytes() == b"x"


def test_dangling_links_are_not_listed_and_link_loops_end(paths: ModelPaths, folders: Folders, tmp_path: Path) -> None:
    root = folders.models / "checkpoints"
    touch(root / "real.safetensors")
    (root / "gone.safetensors").symlink_to(tmp_path / "deleted.safetensors")
    (root / "loop").symlink_to(root, target_is_directory=True)
    assert paths.names("checkpoints") == ["real.safetensors"]
    with pytest.raises(ModelNotFoundError):
        paths.find("checkpoints", "gone.safetensors")


@pytest.mark.parametrize("name", ["../secret.safetensors", "sub/../../secret.safetensors", "/etc/passwd", "a\x00b"])
def test_a_model_name_may_not_climb_out_of_its_folder(paths: ModelPaths, folders: Folders, name: str) -> None:
    touch(folders.models / "secret.safetensors")
    (folders.models / "checkpoints" / "sub").mkdir(parents=True)
    with pytest.raises(UnsafePathError):
        paths.find("checkpoints", name)


def test_unknown_folder_key_is_an_error_listing_known_keys(paths: ModelPaths, folders: Folders) -> None:
    with pytest.raises(UnknownModelFolderError, match="checkpoints"):
        paths.names("nonsense")


COMFYUI_EXAMPLE = """
#Rename this to extra_model_paths.yaml and ComfyUI will load it

#config for a1111 ui
a111:
    base_path: webui/

    checkpoints: models/Stable-diffusion
    configs: models/Stable-diffusion
    vae: models/VAE
    loras: |
         models/Lora
         models/LyCORIS
    upscale_models: |
                  models/ESRGAN
                  models/RealESRGAN
    embeddings: embeddings
    controlnet: models/ControlNet

comfyui:
     base_path: "/srv/comfy # not a comment/"
     is_default: true
     clip: models/clip/  # trailing comment
     unet: models/unet/
"""


def test_parses_the_comfyui_example_file_format(paths: ModelPaths, tmp_path: Path) -> None:
    parsed = parse_extra_model_paths(COMFYUI_EXAMPLE, tmp_path / "extra_model_paths.yaml")
    webui = (tmp_path / "webui").resolve()
    assert parsed["loras"] == [(webui / "models/Lora", False), (webui / "models/LyCORIS", False)]
    assert parsed["upscale_models"] == [(webui / "models/ESRGAN", False), (webui / "models/RealESRGAN", False)]
    assert parsed["checkpoints"] == [(webui / "models/Stable-diffusion", False)]
    assert parsed["configs"] == [(webui / "models/Stable-diffusion", False)]
    comfy = Path("/srv/comfy # not a comment")
    assert parsed["clip"] == [((comfy / "models/clip").resolve(), True)]
    assert parsed["unet"] == [((comfy / "models/unet").resolve(), True)]


def test_is_default_folders_are_searched_before_the_own_models_folder(folders: Folders, tmp_path: Path) -> None:
    config = tmp_path / "extra.yaml"
    config.write_text(COMFYUI_EXAMPLE)
    paths = ModelPaths.from_files(folders.models, (config,))
    paths = paths.folders("text_encoders")
    assert paths[0] == Path("/srv/comfy # not a comment/models/clip").resolve()
    assert paths[1:3] == [folders.models / "text_encoders", folders.models / "clip"]


def test_json_with_the_same_structure_is_accepted(paths: ModelPaths, tmp_path: Path) -> None:
    text = json.dumps({"mine": {"base_path": "/data", "checkpoints": ["a", "b"], "vae": "v"}})
    parsed = parse_extra_model_paths(text, tmp_path / "paths.json")
    assert parsed["checkpoints"] == [(Path("/data/a"), False), (Path("/data/b"), False)]
    assert parsed["vae"] == [(Path("/data/v"), False)]


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("section:\n  checkpoints models\n", 2, "key: value"),
        ("  checkpoints: x\n", 1, "before any section"),
        ("top value\n", 1, "section name"),
        ("s:\n\tcheckpoints: x\n", 2, "tab"),
        ("{not json", 1, "invalid JSON"),
    ],
)
def test_malformed_files_name_the_line_and_the_problem(tmp_path: Path, text: str, line: int, reason: str) -> None:
    with pytest.raises(ExtraModelPathsError, match=reason) as caught:
        parse_extra_model_paths(text, tmp_path / "bad.yaml")
    assert caught.value.line == line


def test_an_unreadable_file_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ExtraModelPathsError, match="missing.yaml"):
        ModelPaths.from_files(tmp_path, (tmp_path / "missing.yaml",))


def test_an_existing_comfyui_models_folder_works_as_is(tmp_path: Path) -> None:
    comfy_models = tmp_path / "ComfyUI" / "models"
    touch(comfy_models / "checkpoints" / "v1-5-pruned-emaonly.safetensors")
    touch(comfy_models / "upscale_models" / "RealESRGAN_x4plus.pth")
    runtime = build_runtime(RuntimeOptions(base_dir=tmp_path / "loom", models_dir=comfy_models, device="cpu"))
    paths = runtime.model_paths
    assert paths.names("checkpoints") == ["v1-5-pruned-emaonly.safetensors"]
    assert (
        paths.find("upscale_models", "RealESRGAN_x4plus.pth")
        == (comfy_models / "upscale_models" / "RealESRGAN_x4plus.pth").resolve()
    )
