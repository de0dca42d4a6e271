"""Folder configuration, path containment (names no file system could hold included), annotated names,
file listing and ComfyUI save naming."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from nodes.folders import (
    IMAGE_EXTENSIONS,
    MAX_PATH_PARTS,
    NAME_MAX_BYTES,
    PATH_MAX_BYTES,
    Folders,
    UnsafePathError,
    annotated_path,
    expand_prefix,
    join_inside,
    list_files,
    make_folders,
    resolve_inside,
    save_target,
    split_annotation,
)

MOMENT = datetime(2024, 3, 7, 9, 5, 2)


def test_folders_default_to_named_subdirectories_of_the_base(tmp_path: Path) -> None:
    folders = make_folders(tmp_path / "base", output=tmp_path / "elsewhere")
    assert folders.input == (tmp_path / "base" / "input").resolve()
    assert folders.output == (tmp_path / "elsewhere").resolve()
    assert all(path.is_dir() for path in (folders.input, folders.output, folders.temp, folders.user, folders.models))
    assert folders.directory("temp") == folders.temp


def test_only_input_output_and_temp_are_named_kinds(folders: Folders) -> None:
    with pytest.raises(ValueError, match="unknown folder kind 'models'"):
        folders.directory("models")  # type: ignore[arg-type]


def test_names_inside_the_folder_resolve(folders: Folders) -> None:
    assert resolve_inside(folders.input, "sub/../a.png") == folders.input / "a.png"
    assert resolve_inside(folders.input, "sub/b.png") == folders.input / "sub" / "b.png"


@pytest.mark.parametrize(
    ("name", "reason"),
    [("../x.png", "outside"), ("sub/../../x.png", "outside"), ("/etc/passwd", "absolute"), ("a\x00.png", "NUL")],
)
def test_names_that_escape_are_refused(folders: Folders, name: str, reason: str) -> None:
    with pytest.raises(UnsafePathError, match=reason) as caught:
        resolve_inside(folders.input, name)
    assert caught.value.name == name and caught.value.folder == folders.input


def test_an_absolute_name_is_refused_even_when_it_points_inside(folders: Folders) -> None:
    with pytest.raises(UnsafePathError, match="absolute"):
        resolve_inside(folders.input, str(folders.input / "a.png"))


def test_a_symlink_that_leads_outside_is_refused(folders: Folders, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    (folders.input / "door").symlink_to(secret)
    with pytest.raises(UnsafePathError, match="outside"):
        resolve_inside(folders.input, "door/key.png")


def test_annotations_pick_the_folder(folders: Folders) -> None:
    assert split_annotation("cat.png [output]") == ("cat.png", "output")
    assert split_annotation("sub/cat.png [temp]") == ("sub/cat.png", "temp")
    assert split_annotation("cat.png") == ("cat.png", "input")
    assert split_annotation("cat.png[output]") == ("cat.png[output]", "input")
    assert annotated_path(folders, "a b.png [output]") == folders.output / "a b.png"
    assert annotated_path(folders, "a.png [temp]") == folders.temp / "a.png"
    assert annotated_path(folders, "a.png") == folders.input / "a.png"
    with pytest.raises(UnsafePathError):
        annotated_path(folders, "../../x.png [output]")


def test_listing_is_sorted_recursive_images_only(folders: Folders, tmp_path: Path) -> None:
    for name in ("b.png", "A.JPG", "sub/c.webp", "sub/deeper/d.gif", "notes.txt", ".hidden.png", ".cache/e.png"):
        path = folders.input / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"x")
    (folders.input / "link.png").symlink_to(outside)
    assert list_files(folders.input, IMAGE_EXTENSIONS) == ["A.JPG", "b.png", "sub/c.webp", "sub/deeper/d.gif"]


def test_prefix_fields_expand() -> None:
    prefix = "%year%-%month%-%day%/%hour%%minute%%second%_%width%x%height%"
    assert expand_prefix(prefix, 640, 480, MOMENT) == "2024-03-07/090502_640x480"


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [("yyyy-MM-dd", "2024-03-07"), ("yyMMdd-hhmmss", "240307-090502"), ("d.M.yy h:m:s", "7.3.24 9:5:2")],
)
def test_date_patterns_expand_like_the_editor(pattern: str, expected: str) -> None:
    assert expand_prefix(f"run/%date:{pattern}%_img", 1, 1, MOMENT) == f"run/{expected}_img"


def test_unknown_fields_stay_literal() -> None:
    assert expand_prefix("%seed%_%batch_num%", 8, 8, MOMENT) == "%seed%_%batch_num%"


def test_first_save_starts_at_one_in_a_new_subfolder(folders: Folders) -> None:
    target = save_target("shots/day1/cat", folders.output, 64, 64, MOMENT)
    assert target.folder == folders.output / "shots" / "day1" and target.folder.is_dir()
    assert (target.base, target.counter, target.subfolder) == ("cat", 1, "shots/day1")
    assert [target.file_name(i) for i in range(2)] == ["cat_00001_.png", "cat_00002_.png"]


def test_counter_is_one_past_the_highest_existing_number(folders: Folders) -> None:
    for name in (
        "ComfyUI_00001_.png",
        "ComfyUI_00007_.png",
        "ComfyUI_00009.png",
        "Other_00050_.png",
        "ComfyUIx_00060_.png",
    ):
        (folders.output / name).write_bytes(b"")
    assert save_target("ComfyUI", folders.output, 8, 8).counter == 8


def test_batch_number_is_substituted_per_image_and_does_not_reset_the_counter(folders: Folders) -> None:
    (folders.output / "img_3_00004_.png").write_bytes(b"")
    target = save_target("img_%batch_num%", folders.output, 8, 8)
    assert target.counter == 5
    assert target.file_name(0) == "img_0_00005_.png" and target.file_name(1) == "img_1_00006_.png"


def test_a_name_taken_by_a_concurrent_writer_moves_on_instead_of_overwriting(folders: Folders) -> None:
    first = save_target("ComfyUI", folders.output, 8, 8)
    second = save_target("ComfyUI", folders.output, 8, 8)  # chose its counter before the first wrote
    assert first.counter == second.counter == 1
    assert first.write_new(0, b"first") == "ComfyUI_00001_.png"
    assert second.write_new(0, b"second") == "ComfyUI_00002_.png"
    assert second.write_new(1, b"second, picture 2") == "ComfyUI_00003_.png"
    assert (folders.output / "ComfyUI_00001_.png").read_bytes() == b"first"


def test_the_date_lands_in_the_subfolder(folders: Folders) -> None:
    target = save_target("%date:yyyy-MM-dd%/ComfyUI", folders.output, 8, 8, MOMENT)
    assert target.subfolder == "2024-03-07" and target.folder == folders.output / "2024-03-07"


@pytest.mark.parametrize("prefix", ["../escape", "a/../../escape", "/tmp/escape", "sub/..", ""])
def test_prefixes_that_leave_the_output_folder_or_name_nothing_are_refused(folders: Folders, prefix: str) -> None:
    with pytest.raises(UnsafePathError):
        save_target(prefix, folders.output, 8, 8)
    assert not (folders.base / "escape").exists()


def test_an_ordinary_nested_name_resolves_inside_the_folder(tmp_path: Path) -> None:
    assert resolve_inside(tmp_path, "workflows/a b.json") == tmp_path.resolve() / "workflows" / "a b.json"
    assert join_inside(tmp_path, "sub/model.safetensors") == tmp_path / "sub" / "model.safetensors"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("x" * (NAME_MAX_BYTES + 1), f"longer than {NAME_MAX_BYTES} bytes"),
        ("é" * 128, f"longer than {NAME_MAX_BYTES} bytes"),  # 256 bytes in UTF-8
        ("a/" * MAX_PATH_PARTS + "b", f"more than {MAX_PATH_PARTS} parts"),
        ("/".join(["y" * 250] * 20), f"longer than {PATH_MAX_BYTES - 1} bytes"),
        ("\ud800.json", "not text a file name can hold"),
    ],
)
@pytest.mark.parametrize("lookup", [resolve_inside, join_inside], ids=["request-folder", "model-folder"])
def test_names_no_file_system_could_hold_are_refused(tmp_path: Path, name: str, reason: str, lookup) -> None:
    with pytest.raises(UnsafePathError, match=reason):
        lookup(tmp_path, name)


def test_a_request_folder_name_may_not_resolve_outside(tmp_path: Path) -> None:
    with pytest.raises(UnsafePathError, match="outside the folder"):
        resolve_inside(tmp_path, "../outside.json")
