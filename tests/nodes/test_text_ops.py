"""ComfyUI's text nodes (nodes/text_ops.py): interfaces as ComfyUI declares them, values, and SaveText's files.

The spec table was checked against ComfyUI's current schemas (comfy_extras/nodes_string.py for the
string and regex nodes, nodes_text.py for SaveText); JsonExtractString's inputs and output against
ComfyUI's node documentation.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from graph.declare import spec_of
from graph.registry import NodeRegistry
from nodes import text_ops
from nodes.folders import Folders
from nodes.text_ops import (
    JsonExtractString,
    RegexExtract,
    RegexMatch,
    RegexReplace,
    SaveText,
    StringLength,
    StringSubstring,
)

_TEXT = ["STRING", {"default": "", "multiline": True}]
_FLAGS = {
    "case_insensitive": ["BOOLEAN", {"default": True}],
    "multiline": ["BOOLEAN", {"default": False}],
    "dotall": ["BOOLEAN", {"default": False}],
}

#: class -> (display name, category, {section: {input: /object_info entry}}, outputs, output names, output node).
#: Tooltips are Loom's own wording and left out of the comparison.
SPEC_TABLE: dict[str, tuple[str, str, dict[str, dict[str, Any]], list[str], list[str], bool]] = {
    "StringLength": ("Length", "utils/string", {"required": {"string": _TEXT}}, ["INT"], ["length"], False),
    "StringSubstring": (
        "Substring",
        "utils/string",
        {"required": {"string": _TEXT, "start": ["INT", {"default": 0}], "end": ["INT", {"default": 0}]}},
        ["STRING"],
        ["STRING"],
        False,
    ),
    "RegexMatch": (
        "Regex Match",
        "utils/string",
        {"required": {"string": _TEXT, "regex_pattern": _TEXT, **_FLAGS}},
        ["BOOLEAN"],
        ["matches"],
        False,
    ),
    "RegexExtract": (
        "Regex Extract",
        "utils/string",
        {
            "required": {
                "string": _TEXT,
                "regex_pattern": _TEXT,
                "mode": [["First Match", "All Matches", "First Group", "All Groups"]],
                **_FLAGS,
                "group_index": ["INT", {"default": 1, "min": 0, "max": 100}],
            }
        },
        ["STRING"],
        ["STRING"],
        False,
    ),
    "RegexReplace": (
        "Regex Replace",
        "utils/string",
        {
            "required": {"string": _TEXT, "regex_pattern": _TEXT, "replace": _TEXT},
            "optional": {**_FLAGS, "count": ["INT", {"default": 0, "min": 0, "max": 100}]},
        },
        ["STRING"],
        ["STRING"],
        False,
    ),
    "JsonExtractString": (
        "Extract String from JSON",
        "utils/string",
        {"required": {"json_string": _TEXT, "key": ["STRING", {"default": ""}]}},
        ["STRING"],
        ["STRING"],
        False,
    ),
    "SaveText": (
        "Save Text",
        "text",
        {
            "required": {
                "text": ["STRING", {"default": "", "forceInput": True}],
                "filename_prefix": ["STRING", {"default": "ComfyUI"}],
                "format": [["txt", "csv", "md", "json"], {"default": "txt"}],
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        },
        ["STRING"],
        ["text"],
        True,
    ),
}


def _without_tooltips(entry: Any) -> Any:
    if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], dict):
        options = {key: value for key, value in entry[1].items() if key != "tooltip"}
        return [entry[0], options] if options else [entry[0]]
    return entry


@pytest.fixture(scope="module")
def object_info() -> dict[str, Any]:
    registry = NodeRegistry()
    assert sorted(registry.register_module(text_ops)) == sorted(SPEC_TABLE)
    return registry.object_info()


@pytest.mark.parametrize("class_type", sorted(SPEC_TABLE))
def test_object_info_matches_comfyui(object_info: dict[str, Any], class_type: str) -> None:
    display, category, inputs, outputs, names, output_node = SPEC_TABLE[class_type]
    info = object_info[class_type]
    served = {
        section: {name: _without_tooltips(entry) for name, entry in entries.items()}
        for section, entries in info["input"].items()
    }
    assert served == inputs
    assert info["input_order"] == {section: list(entries) for section, entries in inputs.items()}
    assert (info["display_name"], info["category"], info["output"], info["output_name"]) == (
        display,
        category,
        outputs,
        names,
    )
    assert info["output_node"] is output_node and "experimental" not in info


def test_length_and_substring() -> None:
    assert StringLength(string="a cat\n") == 6
    assert StringLength(string="") == 0
    assert StringSubstring(string="a red car", start=2, end=5) == "red"
    assert StringSubstring(string="a red car", start=-3, end=0) == ""  # Python's slice, as ComfyUI takes it
    assert StringSubstring(string="a red car", start=-3, end=9) == "car"


def _flags(case_insensitive: bool = True, multiline: bool = False, dotall: bool = False) -> dict[str, bool]:
    return {"case_insensitive": case_insensitive, "multiline": multiline, "dotall": dotall}


@pytest.mark.parametrize(
    ("string", "pattern", "flags", "expected"),
    [
        ("A Red Car", r"red\s+car", _flags(), True),
        ("A Red Car", r"red\s+car", _flags(case_insensitive=False), False),
        ("one\ntwo", r"^two$", _flags(), False),
        ("one\ntwo", r"^two$", _flags(multiline=True), True),
        ("one\ntwo", r"one.two", _flags(), False),
        ("one\ntwo", r"one.two", _flags(dotall=True), True),
        ("anything", r"(unclosed", _flags(), False),  # not a valid pattern: no match, as in ComfyUI
    ],
)
def test_regex_match(string: str, pattern: str, flags: dict[str, bool], expected: bool) -> None:
    assert RegexMatch(string=string, regex_pattern=pattern, **flags) is expected


_PEOPLE = "Ann: 31, Bob: 27, cy: 5"


@pytest.mark.parametrize(
    ("pattern", "mode", "group_index", "expected"),
    [
        (r"\w+: \d+", "First Match", 1, "Ann: 31"),
        (r"\w+: \d+", "All Matches", 1, "Ann: 31\nBob: 27\ncy: 5"),
        (r"(\w+): (\d+)", "All Matches", 1, "Ann\nBob\ncy"),  # with groups: each match's first group
        (r"(\w+): (\d+)", "First Group", 2, "31"),
        (r"(\w+): (\d+)", "First Group", 0, "Ann: 31"),
        (r"(\w+): (\d+)", "First Group", 3, ""),  # no third group
        (r"(\w+): (\d+)", "All Groups", 2, "31\n27\n5"),
        (r"(\w+): (\d+)(x)?", "All Groups", 3, "\n\n"),  # a group that took no part is empty, never None
        (r"\w+: \d+", "All Groups", 1, ""),  # no groups at all
        (r"zzz", "First Match", 1, ""),
        (r"(unclosed", "All Matches", 1, ""),  # not a valid pattern: empty, as in ComfyUI
    ],
)
def test_regex_extract(pattern: str, mode: str, group_index: int, expected: str) -> None:
    result = RegexExtract(string=_PEOPLE, regex_pattern=pattern, mode=mode, group_index=group_index, **_flags())
    assert result == expected


def test_regex_extract_flags_apply() -> None:
    arguments = {"string": "CAT cat", "regex_pattern": "cat", "mode": "All Matches", "group_index": 1}
    assert RegexExtract(**arguments, **_flags()) == "CAT\ncat"
    assert RegexExtract(**arguments, **_flags(case_insensitive=False)) == "cat"
    with pytest.raises(ValueError, match="^mode 'Every Match'"):
        RegexExtract(**{**arguments, "mode": "Every Match"}, **_flags())


@pytest.mark.parametrize(
    ("pattern", "replace", "options", "expected"),
    [
        (r"red", "blue", {}, "blue blue blue car"),  # case-insensitive by default, every match
        (r"red", "blue", {"case_insensitive": False}, "blue RED blue car"),
        (r"red", "blue", {"count": 2}, "blue blue red car"),
        (r"(\w+) car", r"\1 bike", {}, "red RED red bike"),
        (r"(?P<colour>\w+) car", r"\g<colour>-car", {}, "red RED red-car"),
        (r"^red", "-", {"multiline": True}, "- RED red car"),
    ],
)
def test_regex_replace(pattern: str, replace: str, options: dict[str, Any], expected: str) -> None:
    # Through the spec, so the optional inputs left out take their declared defaults, as in a prompt.
    inputs = {"string": "red RED red car", "regex_pattern": pattern, "replace": replace, **options}
    assert spec_of(RegexReplace).run(None, inputs).values == (expected,)


def test_regex_replace_errors_name_the_input() -> None:
    flags = {**_flags(), "count": 0}
    with pytest.raises(ValueError, match="^regex_pattern '\\(unclosed' is not a valid regular expression"):
        RegexReplace(string="x", regex_pattern="(unclosed", replace="y", **flags)
    with pytest.raises(ValueError, match="^replace '\\\\\\\\2' does not fit"):
        RegexReplace(string="x", regex_pattern="(x)", replace="\\2", **flags)


@pytest.mark.parametrize(
    ("json_string", "key", "expected"),
    [
        ('{"steps": 20, "mu": 0.5}', "steps", "20"),
        ('{"steps": 20, "mu": 0.5}', "mu", "0.5"),
        ('{"name": "Turbo"}', "name", "Turbo"),
        ('{"flag": true}', "flag", "True"),  # str() of the value, as ComfyUI converts it
        ('{"nested": {"a": [1, 2]}}', "nested", "{'a': [1, 2]}"),
        ('{"gone": null}', "gone", ""),
        ('{"steps": 20}', "missing", ""),
        ("[1, 2, 3]", "0", ""),  # not an object
        ("not json at all", "steps", ""),
        ('Here you go:\n```json\n{"prompt": "a cat", "seed": 7}\n```\nEnjoy.', "prompt", "a cat"),
        ('{broken {"seed": 7} trailing', "seed", "7"),  # the first place an object decodes
    ],
)
def test_json_extract_string(json_string: str, key: str, expected: str) -> None:
    assert JsonExtractString(json_string=json_string, key=key) == expected


def _save(text: str, prefix: str = "ComfyUI", file_format: str = "txt") -> Any:
    return SaveText(text=text, filename_prefix=prefix, format=file_format, prompt=None, extra_pnginfo=None)


def test_save_text_writes_numbered_files_into_the_output_folder(folders: Folders) -> None:
    first = _save("a red car")
    assert first.values == ("a red car",)
    assert first.ui == {
        "text": ["a red car"],
        "files": [{"filename": "ComfyUI_00001.txt", "subfolder": "", "type": "output"}],
    }
    assert (folders.output / "ComfyUI_00001.txt").read_text(encoding="utf-8") == "a red car"
    # The counter continues after the files already there (ComfyUI's would write _00001 again).
    second = _save("a blue car")
    assert second.ui["files"][0]["filename"] == "ComfyUI_00002.txt"
    assert (folders.output / "ComfyUI_00001.txt").read_text(encoding="utf-8") == "a red car"


def test_save_text_formats_and_subfolders(folders: Folders) -> None:
    saved = _save('{"b": 1, "a": "ü"}', prefix="notes/run", file_format="json")
    assert saved.ui["files"] == [{"filename": "run_00001.json", "subfolder": "notes", "type": "output"}]
    written = (folders.output / "notes" / "run_00001.json").read_text(encoding="utf-8")
    assert written == '{\n  "b": 1,\n  "a": "ü"\n}' and json.loads(written) == {"b": 1, "a": "ü"}
    _save("not { json", prefix="notes/run", file_format="json")
    assert (folders.output / "notes" / "run_00002.json").read_text(encoding="utf-8") == "not { json"
    _save("a,b\n1,2\n", prefix="table", file_format="csv")
    assert (folders.output / "table_00001.csv").read_bytes() == b"a,b\n1,2\n"
    _save("# Title", prefix="table", file_format="md")
    assert (folders.output / "table_00002.md").exists(), "one counter for every file of the prefix"


@pytest.mark.parametrize("prefix", ["../escape", "/tmp/abs", "a/../../b"])
def test_save_text_never_writes_outside_the_output_folder(folders: Folders, prefix: str) -> None:
    before = set(folders.base.parent.rglob("*"))
    with pytest.raises(ValueError, match="^filename_prefix"):
        _save("x", prefix=prefix)
    assert set(folders.base.parent.rglob("*")) == before


def test_save_text_refuses_an_unknown_format(folders: Folders) -> None:
    with pytest.raises(ValueError, match="^format 'exe'"):
        _save("x", file_format="exe")
    assert list(folders.output.iterdir()) == []
