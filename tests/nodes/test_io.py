"""Loading pictures from the input folder and saving them with their workflow, on real small files."""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, features

from graph.declare import spec_of
from nodes.folders import Folders, UnsafePathError
from nodes.io import (
    LoadImage,
    LoadImageMask,
    PreviewImage,
    SaveImage,
    image_fingerprint,
    input_image_names,
    validate_image_name,
)

PROMPT = {
    "3": {"class_type": "EmptyImage", "inputs": {"width": 4, "height": 2}},
    "9": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "ComfyUI"}},
}
WORKFLOW = {
    "last_node_id": 9,
    "nodes": [{"id": 9, "type": "SaveImage", "title": "Sàve ✓"}],
    "links": [],
    "version": 0.4,
}


def random_pixels(height: int, width: int, channels: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)


def write(folder: Path, name: str, picture: Image.Image, **options: object) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path, **options)
    return path


# --- interface -------------------------------------------------------------------------------------------


def test_interfaces_match_comfyui(folders: Folders) -> None:
    write(folders.input, "b.png", Image.new("RGB", (2, 2)))
    write(folders.input, "a/c.jpg", Image.new("RGB", (2, 2)))
    (folders.input / "notes.txt").write_text("not a picture")
    files = ["a/c.jpg", "b.png"]
    assert spec_of(LoadImage).object_info()["input"] == {"required": {"image": [files, {"image_upload": True}]}}
    assert spec_of(LoadImage).object_info()["output"] == ["IMAGE", "MASK"]
    assert spec_of(LoadImageMask).object_info()["input"] == {
        "required": {"image": [files, {"image_upload": True}], "channel": [["alpha", "red", "green", "blue"]]}
    }
    assert spec_of(LoadImageMask).object_info()["output"] == ["MASK"]
    save = spec_of(SaveImage).object_info()
    assert save["input"]["required"]["images"][0] == "IMAGE"
    assert save["input"]["required"]["filename_prefix"][0] == "STRING"
    assert save["input"]["required"]["filename_prefix"][1]["default"] == "ComfyUI"
    assert save["input"]["hidden"] == {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    assert (save["output"], save["output_node"]) == ([], True)
    preview = spec_of(PreviewImage).object_info()
    assert preview["input"] == {
        "required": {"images": ["IMAGE"]},
        "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
    }
    assert preview["output_node"] is True
    assert [spec_of(f).display_name for f in (LoadImage, LoadImageMask, SaveImage, PreviewImage)] == [
        "Load Image",
        "Load Image (as Mask)",
        "Save Image",
        "Preview Image",
    ]


def test_the_image_list_follows_the_folder(folders: Folders) -> None:
    assert input_image_names() == []
    write(folders.input, "new.webp", Image.new("RGB", (2, 2)))
    assert input_image_names() == ["new.webp"]


# --- LoadImage -------------------------------------------------------------------------------------------


def test_an_opaque_picture_loads_exactly_with_an_empty_64px_mask(folders: Folders) -> None:
    pixels = random_pixels(3, 5, 3)
    write(folders.input, "rgb.png", Image.fromarray(pixels))
    image, mask = LoadImage(image="rgb.png")
    assert image.dtype == torch.float32 and image.shape == (1, 3, 5, 3)
    torch.testing.assert_close(image[0], torch.from_numpy(pixels).float() / 255)
    assert torch.equal(mask, torch.zeros(1, 64, 64))


def test_the_mask_is_one_minus_alpha(folders: Folders) -> None:
    pixels = random_pixels(4, 3, 4, seed=1)
    write(folders.input, "rgba.png", Image.fromarray(pixels))
    image, mask = LoadImage(image="rgba.png")
    torch.testing.assert_close(image[0], torch.from_numpy(pixels[..., :3]).float() / 255)
    torch.testing.assert_close(mask[0], 1 - torch.from_numpy(pixels[..., 3]).float() / 255)


def test_a_palette_transparent_index_masks_its_pixels(folders: Folders) -> None:
    picture = Image.new("P", (3, 1))
    picture.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    picture.putdata([0, 1, 0])
    write(folders.input, "palette.png", picture, transparency=1)
    image, mask = LoadImage(image="palette.png")
    assert torch.equal(mask, torch.tensor([[[0.0, 1.0, 0.0]]]))
    assert torch.equal(image[0, 0, 0], torch.tensor([1.0, 0.0, 0.0]))


def test_exif_orientation_is_applied(folders: Folders) -> None:
    picture = Image.new("RGB", (4, 2), (0, 0, 0))
    picture.putpixel((0, 0), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: turn 90° clockwise to view
    write(folders.input, "phone.png", picture, exif=exif)
    image, _ = LoadImage(image="phone.png")
    assert image.shape == (1, 4, 2, 3)
    # The stored top-left corner ends up top-right once turned clockwise.
    assert torch.equal(image[0, 0, 1], torch.tensor([1.0, 0.0, 0.0]))
    assert image[0].sum() == 1.0


COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("anim.gif", {"duration": 50, "loop": 0}),
        pytest.param(
            "anim.webp",
            {"duration": 50, "lossless": True},
            marks=pytest.mark.skipif(not features.check("webp"), reason="no WebP"),
        ),
    ],
)
def test_every_frame_of_an_animation_becomes_a_batch_item(
    folders: Folders, name: str, options: dict[str, object]
) -> None:
    frames = [Image.new("RGB", (4, 3), colour) for colour in COLOURS]
    write(folders.input, name, frames[0], save_all=True, append_images=frames[1:], **options)
    image, mask = LoadImage(image=name)
    expected = torch.tensor(COLOURS, dtype=torch.float32)[:, None, None, :].div(255).expand(3, 3, 4, 3)
    torch.testing.assert_close(image, expected)
    assert mask.shape[0] == 3


def test_sixteen_bit_greyscale_keeps_its_full_range(folders: Folders) -> None:
    levels = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    write(folders.input, "deep.png", Image.fromarray(levels))
    image, _ = LoadImage(image="deep.png")
    expected = torch.from_numpy(levels.astype(np.float32) / 65535)[..., None].expand(1, 4, 3)
    torch.testing.assert_close(image[0], expected)


def test_annotated_names_load_from_output_and_temp(folders: Folders) -> None:
    write(folders.output, "sub/made.png", Image.new("RGB", (2, 2), (255, 255, 255)))
    image, _ = LoadImage(image="sub/made.png [output]")
    assert torch.equal(image, torch.ones(1, 2, 2, 3))
    assert validate_image_name("sub/made.png [output]") is True
    assert validate_image_name("sub/made.png") == "Invalid image file: sub/made.png"


@pytest.mark.parametrize("name", ["missing.png", "../outside.png", "/etc/hostname", "a.png [temp]"])
def test_names_that_do_not_point_to_an_input_file_fail_validation(folders: Folders, name: str) -> None:
    (folders.base / "outside.png").write_bytes(b"x")
    assert validate_image_name(name) == f"Invalid image file: {name}"


def test_validation_is_the_nodes_own_so_annotated_names_pass_the_combo(folders: Folders) -> None:
    spec = spec_of(LoadImage)
    assert spec.validate_takes == frozenset({"image"})
    write(folders.input, "ok.png", Image.new("RGB", (1, 1)))
    assert spec.validate is not None and spec.validate({"image": "ok.png"}, None) is True


def test_the_fingerprint_is_the_files_sha256_and_follows_edits(folders: Folders) -> None:
    path = write(folders.input, "edit.png", Image.new("RGB", (2, 2), (1, 2, 3)))
    assert image_fingerprint("edit.png") == hashlib.sha256(path.read_bytes()).hexdigest()
    before = spec_of(LoadImage).fingerprint({"image": "edit.png"})  # type: ignore[misc]
    write(folders.input, "edit.png", Image.new("RGB", (2, 2), (9, 9, 9)))
    assert spec_of(LoadImage).fingerprint({"image": "edit.png"}) != before  # type: ignore[misc]
    assert math.isnan(image_fingerprint(None))  # type: ignore[arg-type]


def test_a_traversing_name_is_refused_at_run_time_too(folders: Folders) -> None:
    write(folders.base, "secret.png", Image.new("RGB", (1, 1)))
    with pytest.raises(UnsafePathError):
        LoadImage(image="../secret.png")


# --- LoadImageMask ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("channel", "index"), [("red", 0), ("green", 1), ("blue", 2)])
def test_a_colour_channel_is_the_mask_as_is(folders: Folders, channel: str, index: int) -> None:
    pixels = random_pixels(3, 4, 4, seed=2)
    write(folders.input, "m.png", Image.fromarray(pixels))
    torch.testing.assert_close(
        LoadImageMask(image="m.png", channel=channel), torch.from_numpy(pixels[None, ..., index]).float() / 255
    )


def test_the_alpha_channel_mask_is_inverted(folders: Folders) -> None:
    pixels = random_pixels(3, 4, 4, seed=3)
    write(folders.input, "m.png", Image.fromarray(pixels))
    torch.testing.assert_close(
        LoadImageMask(image="m.png", channel="alpha"), 1 - torch.from_numpy(pixels[None, ..., 3]).float() / 255
    )
    write(folders.input, "opaque.png", Image.fromarray(pixels[..., :3]))
    assert torch.equal(LoadImageMask(image="opaque.png", channel="alpha"), torch.zeros(1, 3, 4))


# --- SaveImage / PreviewImage ----------------------------------------------------------------------------


def idat_zlib_header(path: Path) -> bytes:
    data = path.read_bytes()
    offset = 8
    while True:
        length, kind = struct.unpack(">I4s", data[offset : offset + 8])
        if kind == b"IDAT":
            return data[offset + 8 : offset + 10]
        offset += 12 + length


def test_saved_pngs_carry_the_prompt_and_workflow(folders: Folders) -> None:
    images = torch.rand(2, 3, 4, 3, generator=torch.Generator().manual_seed(0))
    inputs = {"images": images, "filename_prefix": "ComfyUI", "prompt": PROMPT, "extra_pnginfo": {"workflow": WORKFLOW}}
    result = spec_of(SaveImage).run(None, inputs)
    assert result.values == ()
    assert result.ui == {
        "images": [
            {"filename": "ComfyUI_00001_.png", "subfolder": "", "type": "output"},
            {"filename": "ComfyUI_00002_.png", "subfolder": "", "type": "output"},
        ]
    }
    for index, entry in enumerate(result.ui["images"]):
        with Image.open(folders.output / entry["filename"]) as saved:
            assert saved.text == {"prompt": json.dumps(PROMPT), "workflow": json.dumps(WORKFLOW)}
            assert json.loads(saved.text["workflow"]) == WORKFLOW
            # 8-bit values are truncated, as ComfyUI writes them.
            assert np.array_equal(np.asarray(saved), (images[index].numpy() * 255).astype(np.uint8))


def test_saving_again_continues_the_count_in_the_subfolder(folders: Folders) -> None:
    image = torch.zeros(1, 2, 2, 3)
    first = SaveImage(images=image, filename_prefix="runs/%width%x%height%/cat", prompt=None, extra_pnginfo=None)
    second = SaveImage(images=image, filename_prefix="runs/%width%x%height%/cat", prompt=None, extra_pnginfo=None)
    assert [result.ui["images"][0] for result in (first, second)] == [
        {"filename": "cat_00001_.png", "subfolder": "runs/2x2", "type": "output"},
        {"filename": "cat_00002_.png", "subfolder": "runs/2x2", "type": "output"},
    ]
    with Image.open(folders.output / "runs" / "2x2" / "cat_00002_.png") as saved:
        assert saved.text == {}


def test_batch_numbers_name_each_image(folders: Folders) -> None:
    result = SaveImage(images=torch.zeros(2, 1, 1, 3), filename_prefix="b%batch_num%", prompt=None, extra_pnginfo=None)
    assert [entry["filename"] for entry in result.ui["images"]] == ["b0_00001_.png", "b1_00002_.png"]


@pytest.mark.parametrize("prefix", ["../escape", "/tmp/escape", "x/../../escape"])
def test_saving_outside_the_output_folder_is_refused(folders: Folders, prefix: str) -> None:
    with pytest.raises(UnsafePathError):
        SaveImage(images=torch.zeros(1, 1, 1, 3), filename_prefix=prefix, prompt=None, extra_pnginfo=None)
    assert not list(folders.base.parent.glob("escape*"))


def test_previews_go_to_temp_with_a_random_prefix_and_fast_compression(folders: Folders) -> None:
    images = torch.rand(1, 8, 8, 3, generator=torch.Generator().manual_seed(1))
    preview = PreviewImage(images=images, prompt=PROMPT, extra_pnginfo=None).ui["images"]
    saved = SaveImage(images=images, filename_prefix="ComfyUI", prompt=PROMPT, extra_pnginfo=None).ui["images"]
    assert re.fullmatch(r"ComfyUI_temp_[a-z]{5}_00001_\.png", preview[0]["filename"])
    assert preview[0]["type"] == "temp" and preview[0]["subfolder"] == ""
    # zlib's second header byte records the level class: 0x01 for level 1, 0x5E for levels 2-5.
    assert idat_zlib_header(folders.temp / preview[0]["filename"]) == b"\x78\x01"
    assert idat_zlib_header(folders.output / saved[0]["filename"]) == b"\x78\x5e"


def test_single_channel_and_rgba_images_save(folders: Folders) -> None:
    for channels, mode in ((1, "L"), (4, "RGBA")):
        result = SaveImage(images=torch.ones(1, 2, 2, channels), filename_prefix=mode, prompt=None, extra_pnginfo=None)
        with Image.open(folders.output / result.ui["images"][0]["filename"]) as saved:
            assert saved.mode == mode
