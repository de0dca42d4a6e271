"""Names that no file system could hold are refused before any file is touched, in every folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodes.folders import MAX_PATH_PARTS, NAME_MAX_BYTES, PATH_MAX_BYTES, UnsafePathError, join_inside, resolve_inside


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
