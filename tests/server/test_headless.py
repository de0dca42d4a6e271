"""``loom run``: a workflow file runs headless, and an invalid one is refused with exit code 2."""

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from nodes.runtime_options import RuntimeOptions
from server.cli import main
from server.headless import EXIT_FAILED, EXIT_INVALID, EXIT_OK, run_workflow_file

API_WORKFLOW = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 16, "batch_size": 1, "color": 0xFF0000}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "run/api"}},
}

EDITOR_WORKFLOW = {
    "last_node_id": 3,
    "last_link_id": 2,
    "nodes": [
        {
            "id": 1,
            "type": "EmptyImage",
            "pos": [0, 0],
            "size": [300, 130],
            "flags": {},
            "order": 0,
            "mode": 0,
            "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1], "slot_index": 0}],
            "properties": {},
            "widgets_values": [24, 8, 1, 0x00FF00],
        },
        {
            "id": 2,
            "type": "ImageInvert",
            "pos": [350, 0],
            "size": [200, 30],
            "flags": {},
            "order": 1,
            "mode": 0,
            "inputs": [{"name": "image", "type": "IMAGE", "link": 1}],
            "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [2], "slot_index": 0}],
            "properties": {},
            "widgets_values": [],
        },
        {
            "id": 3,
            "type": "SaveImage",
            "pos": [600, 0],
            "size": [300, 300],
            "flags": {},
            "order": 2,
            "mode": 0,
            "inputs": [{"name": "images", "type": "IMAGE", "link": 2}],
            "properties": {},
            "widgets_values": ["run/editor"],
        },
    ],
    "links": [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 0, "IMAGE"]],
    "groups": [],
    "config": {},
    "extra": {"ds": {"scale": 1, "offset": [0, 0]}},
    "version": 0.4,
}


def _write(tmp_path: Path, name: str, document: dict) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(document))
    return path


def _run(path: Path, tmp_path: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run_workflow_file(str(path), RuntimeOptions(tmp_path), show_progress=False, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_an_api_format_file_runs_and_prints_where_outputs_went(tmp_path: Path) -> None:
    code, out, _ = _run(_write(tmp_path, "api.json", API_WORKFLOW), tmp_path)
    saved = tmp_path / "output" / "run" / "api_00001_.png"
    assert code == EXIT_OK
    assert out.strip() == f"node 3: {saved}"
    with Image.open(saved) as image:
        assert image.size == (32, 16)
        assert image.getpixel((0, 0)) == (0, 255, 255)  # red inverted


def test_an_editor_format_file_runs_and_embeds_its_workflow(tmp_path: Path) -> None:
    code, out, _ = _run(_write(tmp_path, "editor.json", EDITOR_WORKFLOW), tmp_path)
    saved = tmp_path / "output" / "run" / "editor_00001_.png"
    assert code == EXIT_OK and str(saved) in out
    with Image.open(saved) as image:
        assert image.getpixel((0, 0)) == (255, 0, 255)  # green inverted
        assert json.loads(image.info["workflow"]) == EDITOR_WORKFLOW
        assert json.loads(image.info["prompt"])["3"]["inputs"]["filename_prefix"] == "run/editor"


def test_a_png_written_by_save_image_runs_again(tmp_path: Path) -> None:
    _run(_write(tmp_path, "api.json", API_WORKFLOW), tmp_path)
    code, out, _ = _run(tmp_path / "output" / "run" / "api_00001_.png", tmp_path)
    assert code == EXIT_OK and "api_00002_.png" in out


def test_an_invalid_file_is_refused_with_every_problem_named(tmp_path: Path) -> None:
    broken = json.loads(json.dumps(API_WORKFLOW))
    broken["1"]["inputs"]["width"] = -5
    broken["1"]["inputs"]["height"] = "tall"
    broken["3"]["inputs"]["images"] = ["1", 4]
    code, out, err = _run(_write(tmp_path, "bad.json", broken), tmp_path)
    assert code == EXIT_INVALID and out == ""
    assert "node 1 (EmptyImage), input 'width': Value -5 smaller than min of 1" in err
    assert "node 1 (EmptyImage), input 'height'" in err and "'tall'" in err
    assert "node 3 (SaveImage), input 'images': Bad linked input" in err
    assert not (tmp_path / "output" / "run").exists()


def test_every_unknown_node_type_and_every_other_problem_is_printed(tmp_path: Path) -> None:
    document = json.loads(json.dumps(API_WORKFLOW))
    document["2"]["class_type"] = "ImageInvertPlus"
    document["1"]["inputs"]["width"] = -5
    document["9"] = {"class_type": "NoSuchNode", "inputs": {}}
    document["10"] = {"class_type": ["SaveImage"], "inputs": {}}
    code, out, err = _run(_write(tmp_path, "unknown.json", document), tmp_path)
    assert code == EXIT_INVALID and out == ""
    assert "Cannot execute because node ImageInvertPlus does not exist; node NoSuchNode does not exist; " in err
    assert (
        "node 2 (ImageInvertPlus): Node type does not exist: no installed node or plugin provides 'ImageInvertPlus'"
        in err
    )
    assert "node 9 (NoSuchNode): Node type does not exist" in err
    assert "node 10 (?): Malformed node: the node has a class_type that is a list, not a string" in err
    assert "node 1 (EmptyImage), input 'width': Value -5 smaller than min of 1" in err


def test_a_file_that_is_not_a_workflow_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "junk.json"
    path.write_text("not json at all")
    code, _, err = _run(path, tmp_path)
    assert code == EXIT_INVALID and "cannot read" in err and "junk.json" in err


def test_a_node_that_fails_at_run_time_exits_1_naming_it(tmp_path: Path) -> None:
    document = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "missing.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }
    code, _, err = _run(_write(tmp_path, "fails.json", document), tmp_path)
    # A missing input file is caught by LoadImage's own validation before anything runs.
    assert code == EXIT_INVALID and "Invalid image file: missing.png" in err

    (tmp_path / "input").mkdir(exist_ok=True)
    (tmp_path / "input" / "broken.png").write_bytes(b"not a png")
    document["1"]["inputs"]["image"] = "broken.png"
    code, _, err = _run(_write(tmp_path, "fails.json", document), tmp_path)
    assert code == EXIT_FAILED and "node 1 (LoadImage) failed" in err


@pytest.mark.parametrize("argv_tail", [[], ["--quiet"]])
def test_the_console_entry_point_runs_a_file(tmp_path: Path, argv_tail: list[str]) -> None:
    path = _write(tmp_path, "api.json", API_WORKFLOW)
    assert (
        main(["run", str(path), "--base-dir", str(tmp_path), "--output-dir", str(tmp_path / "elsewhere"), *argv_tail])
        == EXIT_OK
    )
    assert (tmp_path / "elsewhere" / "run" / "api_00001_.png").is_file()


def test_the_installed_loom_script_exits_2_on_an_invalid_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "bad.json", {"1": {"class_type": "SaveImage", "inputs": {}}})
    loom = Path(sys.executable).with_name("loom")
    completed = subprocess.run(
        [str(loom), "run", str(path), "--base-dir", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == EXIT_INVALID
    assert "node 1 (SaveImage), input 'images'" in completed.stderr


def test_a_workflow_using_a_plugin_node_runs_and_a_broken_plugin_is_reported(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "broken.py").write_text("import loom_missing_dependency\n")
    document = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0xFFFFFF}},
        "2": {"class_type": "ExampleSepia", "inputs": {"image": ["1", 0], "strength": 1.0}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "sepia"}},
    }
    path = _write(tmp_path, "plugin.json", document)
    err = io.StringIO()
    code = run_workflow_file(
        str(path),
        RuntimeOptions(tmp_path),
        show_progress=False,
        out=io.StringIO(),
        err=err,
        plugin_folders=[Path(__file__).resolve().parents[2] / "custom_nodes", plugins],
    )
    assert code == EXIT_OK, err.getvalue()
    assert "plugin broken could not be imported" in err.getvalue()
    assert (tmp_path / "output" / "sepia_00001_.png").is_file()


COMFY_PACK = """
import folder_paths
from nodes import MAX_RESOLUTION


class OutputFolderName:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"width": ("INT", {"default": 8, "min": 1, "max": MAX_RESOLUTION})}}

    RETURN_TYPES = ("STRING",)
    FUNCTION = "name"
    CATEGORY = "test"

    def name(self, width):
        return (f"{folder_paths.get_output_directory()}|{width}",)


NODE_CLASS_MAPPINGS = {"OutputFolderName": OutputFolderName}
"""


def test_loom_run_gives_packs_comfyui_s_modules_answering_from_its_own_folders(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "comfy_style_pack.py").write_text(COMFY_PACK)
    document = {
        "1": {"class_type": "OutputFolderName", "inputs": {"width": 12}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
    }
    path = _write(tmp_path, "comfy_pack.json", document)
    out, err = io.StringIO(), io.StringIO()
    code = run_workflow_file(
        str(path), RuntimeOptions(tmp_path), show_progress=False, out=out, err=err, plugin_folders=[plugins]
    )
    assert code == EXIT_OK, err.getvalue()
    assert f"{tmp_path / 'output'}|12" in out.getvalue()


def test_without_plugins_a_plugin_node_is_an_unknown_type(tmp_path: Path) -> None:
    document = {"1": {"class_type": "ExampleSepia", "inputs": {}}}
    path = _write(tmp_path, "plugin.json", document)
    assert main(["run", str(path), "--base-dir", str(tmp_path), "--disable-custom-nodes", "--quiet"]) == EXIT_INVALID


@pytest.mark.parametrize(("flags", "reason"), [
    (["--device", "tpu:x"], "device 'tpu:x'"),
    (["--device", "cuda:7"], "no CUDA device"),
    (["--preview-method", "fast"], "invalid choice: 'fast'"),
])  # fmt: skip
def test_unusable_settings_are_refused_before_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], reason: str
) -> None:
    if "cuda" in flags[-1] and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    path = _write(tmp_path, "api.json", API_WORKFLOW)
    with contextlib.suppress(SystemExit):
        assert main(["run", str(path), "--base-dir", str(tmp_path), "--quiet", *flags]) == EXIT_INVALID
    assert reason in capsys.readouterr().err
    assert not (tmp_path / "output" / "run").exists()


def test_loom_run_finds_models_through_the_same_extra_model_paths_flag_as_serve(tmp_path: Path) -> None:
    """A model that lives only in another install's folder, named by an extra_model_paths file."""
    from safetensors.torch import save_file

    from tests.diffusion.upscalers.tiny_upscalers import tiny_srvgg

    other = tmp_path / "ComfyUI" / "models" / "upscale_models"
    other.mkdir(parents=True)
    save_file(tiny_srvgg(upscale=2).state_dict(), other / "x2.safetensors")
    paths = tmp_path / "extra_model_paths.yaml"
    paths.write_text(f"comfyui:\n  base_path: {tmp_path / 'ComfyUI'}\n  upscale_models: models/upscale_models\n")
    workflow = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 6, "batch_size": 1, "color": 0x336699}},
        "2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "x2.safetensors"}},
        "3": {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["2", 0], "image": ["1", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "up"}},
    }
    path = _write(tmp_path, "up.json", workflow)
    base = ["run", str(path), "--base-dir", str(tmp_path / "loom"), "--quiet", "--disable-custom-nodes"]
    assert main(base) == EXIT_INVALID, "without the paths file the model is not there"
    assert main([*base, "--extra-model-paths", str(paths)]) == EXIT_OK
    with Image.open(tmp_path / "loom" / "output" / "up_00001_.png") as picture:
        assert picture.size == (16, 12)


# ---------------------------------------------------------------- loom tiny-checkpoint


def test_tiny_checkpoint_writes_the_requested_family_part_dtype_and_seed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from diffusion.tiny_parts import write_tiny_file

    path = tmp_path / "t5xxl_fp8_e4m3fn_scaled.safetensors"
    argv = ["tiny-checkpoint", str(path), "--family", "flux_schnell", "--part", "t5xxl", "--dtype", "fp8_scaled"]
    assert main([*argv, "--seed", "3"]) == EXIT_OK
    expected = write_tiny_file(tmp_path / "expected.safetensors", "flux_schnell", "t5xxl", "fp8_scaled", seed=3)
    assert path.read_bytes() == expected.read_bytes()
    assert f"wrote a tiny random flux_schnell t5xxl (fp8_scaled) to {path}" in capsys.readouterr().out


def test_tiny_checkpoint_still_writes_the_fp32_sd15_checkpoint_by_default(tmp_path: Path) -> None:
    from diffusion.tiny import write_tiny_checkpoint

    assert main(["tiny-checkpoint", str(tmp_path / "a.safetensors")]) == EXIT_OK
    expected = write_tiny_checkpoint(tmp_path / "b.safetensors", "sd15", seed=0)
    assert (tmp_path / "a.safetensors").read_bytes() == expected.read_bytes()


@pytest.mark.parametrize(("flags", "listing"), [
    (["--family", "sd4"], "unknown family 'sd4'; valid families: sd15, sd2, sdxl, sdxl_refiner, sd3, sd35_medium, "
     "sd35_large, flux_dev, flux_schnell, flux_fill, flux_canny, flux_depth"),
    (["--family", "sd3", "--part", "unet"], "unknown part 'unet'; valid parts: checkpoint, diffusion_model, vae, "
     "clip_l, clip_g, t5xxl, qwen3_4b, lora"),
    (["--family", "sd3", "--dtype", "fp4"], "unknown dtype 'fp4'; valid dtypes: fp32, fp16, bf16, fp8, fp8_scaled"),
    (["--family", "flux_dev", "--part", "clip_g"], "no part 'clip_g' for flux_dev; valid parts: checkpoint, "
     "diffusion_model, vae, clip_l, t5xxl, lora"),
    (["--part", "vae"], "no part 'vae' for sd15; valid parts: checkpoint"),
    (["--family", "sd3", "--part", "clip_l", "--dtype", "fp8"], "no dtype 'fp8' for the clip_l of sd3; valid dtypes: "
     "fp32, fp16, bf16"),
])  # fmt: skip
def test_tiny_checkpoint_exits_2_listing_the_valid_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], listing: str
) -> None:
    path = tmp_path / "never.safetensors"
    assert main(["tiny-checkpoint", str(path), *flags]) == EXIT_INVALID == 2
    assert listing in capsys.readouterr().err
    assert not path.exists()


def test_tiny_checkpoint_help_names_every_family_part_and_dtype(capsys: pytest.CaptureFixture[str]) -> None:
    import re

    from diffusion.tiny_parts import DTYPES, FAMILIES, PARTS

    with pytest.raises(SystemExit):
        main(["tiny-checkpoint", "--help"])
    listed = set(re.findall(r"\w+", capsys.readouterr().out))
    assert {*FAMILIES, *PARTS, *DTYPES} <= listed
