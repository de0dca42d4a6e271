"""ComfyUI's text nodes: regular expressions, length and slices, a value out of JSON, and SaveText.

Names, inputs, defaults and outputs follow ComfyUI's current schemas (``comfy_extras/nodes_string.py``,
``nodes_text.py``), and so do the results, including ComfyUI's leniency: an invalid pattern makes
``RegexMatch`` answer false and ``RegexExtract`` answer an empty text, as workflows expect. Where
ComfyUI would hand a consumer ``None`` (a group that took no part in the match) Loom gives ``""``.

Patterns run on Python's ``re``, which has no time limit and holds the interpreter while it matches:
a pattern that backtracks catastrophically (``(a+)+$`` against a long run of ``a``) stalls the prompt
worker, and a stop request cannot interrupt it. ComfyUI has the same exposure. Only queue patterns
you trust; the nodes do not try to detect such patterns, since no cheap check is reliable.

``SaveText`` writes ``<prefix>_<counter:05>.<format>`` inside the output folder through
``nodes.folders.save_target`` (a prefix that would leave the folder is refused). Unlike ComfyUI,
whose counter ignores text files and so rewrites ``ComfyUI_00001.txt`` on every run, the counter
here continues after the files already there, and files are created exclusively.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from graph.declare import Boolean, Combo, Hidden, Int, NodeOutput, Output, String, node
from graph.types import BOOLEAN, INT, STRING
from nodes.folders import save_target
from nodes.runtime import current_runtime

__all__ = [
    "JsonExtractString",
    "REGEX_EXTRACT_MODES",
    "RegexExtract",
    "RegexMatch",
    "RegexReplace",
    "SAVE_TEXT_FORMATS",
    "SaveText",
    "StringLength",
    "StringSubstring",
    "extract_json_string",
]

_CATEGORY = "utils/string"


def _flags(case_insensitive: bool, multiline: bool, dotall: bool) -> int:
    flags = 0
    if case_insensitive:
        flags |= re.IGNORECASE
    if multiline:
        flags |= re.MULTILINE
    if dotall:
        flags |= re.DOTALL
    return flags


def _compiled(pattern: str, flags: int) -> re.Pattern[str] | None:
    """The compiled pattern, or ``None`` when it is not a valid regular expression."""
    try:
        return re.compile(pattern, flags)
    except re.error:
        return None


@node(category=_CATEGORY, display_name="Length", outputs=[Output(INT, "length")])
def StringLength(string=String("", multiline=True)):
    """The number of characters in a text."""
    return len(string)


@node(category=_CATEGORY, display_name="Substring", outputs=[Output(STRING)])
def StringSubstring(string=String("", multiline=True), start=Int(0), end=Int(0)):
    """The characters from start up to (not including) end; negative positions count from the end,
    as in Python's string[start:end]."""
    return string[start:end]


@node(category=_CATEGORY, display_name="Regex Match", outputs=[Output(BOOLEAN, "matches")])
def RegexMatch(
    string=String("", multiline=True),
    regex_pattern=String("", multiline=True),
    case_insensitive=Boolean(True),
    multiline=Boolean(False),
    dotall=Boolean(False),
):
    """Whether the pattern occurs anywhere in the text (false for a pattern that is not valid)."""
    pattern = _compiled(regex_pattern, _flags(case_insensitive, multiline, dotall))
    return pattern is not None and pattern.search(string) is not None


REGEX_EXTRACT_MODES = ("First Match", "All Matches", "First Group", "All Groups")


def _group(match: re.Match[str], index: int) -> str | None:
    """Group ``index`` of the match ("" when it took no part), ``None`` when the pattern has no such group."""
    if len(match.groups()) < index:
        return None
    return match.group(index) or ""


@node(category=_CATEGORY, display_name="Regex Extract", outputs=[Output(STRING)])
def RegexExtract(
    string=String("", multiline=True),
    regex_pattern=String("", multiline=True),
    mode=Combo(list(REGEX_EXTRACT_MODES)),
    case_insensitive=Boolean(True),
    multiline=Boolean(False),
    dotall=Boolean(False),
    group_index=Int(1, min=0, max=100),
):
    """The text the pattern finds: the first match, every match (one per line; with groups, each match's
    first group), or group group_index of the first or of every match. Empty when nothing matches or the
    pattern is not valid."""
    if mode not in REGEX_EXTRACT_MODES:
        raise ValueError(f"mode {mode!r} is not one of {', '.join(REGEX_EXTRACT_MODES)}")
    pattern = _compiled(regex_pattern, _flags(case_insensitive, multiline, dotall))
    if pattern is None:
        return ""
    if mode == "First Match":
        match = pattern.search(string)
        return match.group(0) if match else ""
    if mode == "All Matches":
        found = pattern.findall(string)
        return "\n".join(item[0] if isinstance(item, tuple) else item for item in found)
    if mode == "First Group":
        match = pattern.search(string)
        return (_group(match, group_index) or "") if match else ""
    groups = (_group(match, group_index) for match in pattern.finditer(string) if match.groups())
    return "\n".join(group for group in groups if group is not None)


@node(
    category=_CATEGORY,
    display_name="Regex Replace",
    description="Replace what a regular expression matches.",
    outputs=[Output(STRING)],
)
def RegexReplace(
    string=String("", multiline=True),
    regex_pattern=String("", multiline=True),
    replace=String("", multiline=True),
    case_insensitive=Boolean(True, optional=True),
    multiline=Boolean(False, optional=True),
    dotall=Boolean(False, optional=True, tooltip="Let the dot (.) match line breaks too."),
    count=Int(0, min=0, max=100, optional=True, tooltip="Replace at most this many matches; 0 replaces all."),
):
    """Replace every match (or the first count) of the pattern; replace may use \\1 or \\g<name> for groups."""
    try:
        pattern = re.compile(regex_pattern, _flags(case_insensitive, multiline, dotall))
    except re.error as error:
        raise ValueError(f"regex_pattern {regex_pattern!r} is not a valid regular expression: {error}") from None
    try:
        return pattern.sub(replace, string, count=count)
    except re.error as error:
        raise ValueError(f"replace {replace!r} does not fit regex_pattern {regex_pattern!r}: {error}") from None


def _first_json_object(text: str) -> dict[str, Any] | None:
    """The text as a JSON object, or the first JSON object inside it (after prose or a ``` fence)."""
    decoder = json.JSONDecoder()
    try:
        whole = json.loads(text)
    except ValueError:
        whole = None
    if isinstance(whole, dict):
        return whole
    start = text.find("{")
    while start != -1:
        try:
            found, _ = decoder.raw_decode(text, start)
        except ValueError:
            found = None
        if isinstance(found, dict):
            return found
        start = text.find("{", start + 1)
    return None


def extract_json_string(json_string: str, key: str) -> str:
    """``str()`` of the value under ``key`` of the JSON object in ``json_string``; "" when there is no
    object, no such key, or the value is null (ComfyUI's JsonExtractString)."""
    data = _first_json_object(json_string)
    if data is None or key not in data or data[key] is None:
        return ""
    return str(data[key])


@node(category=_CATEGORY, display_name="Extract String from JSON", outputs=[Output(STRING)])
def JsonExtractString(json_string=String("", multiline=True), key=String("")):
    """The value under key in a JSON object, as text; the object may sit inside other text (a model's
    answer, a code fence). Empty when there is no object, no such key, or the value is null."""
    return extract_json_string(json_string, key)


#: ComfyUI's formats; each is also the file's extension.
SAVE_TEXT_FORMATS = ("txt", "csv", "md", "json")


def _text_counter(folder: Path, base: str) -> int:
    """One past the highest number of ``<base>_NNNNN.ext`` (or an image's ``<base>_NNNNN_``) in ``folder``."""
    pattern = re.compile(re.escape(base) + r"_(\d+)[._]")
    numbers = [int(match[1]) for entry in os.listdir(folder) if (match := pattern.match(entry))]
    return max(numbers, default=0) + 1


def _file_text(text: str, file_format: str) -> str:
    """JSON that parses is written indented by two; any other text as it is."""
    if file_format == "json":
        try:
            return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
        except ValueError:
            return text
    return text


@node(category="text", display_name="Save Text", output_node=True, outputs=[Output(STRING, "text")])
def SaveText(
    text=String("", force_input=True),
    filename_prefix=String("ComfyUI", tooltip="File name start; may hold a subfolder (sub/name)."),
    format=Combo(list(SAVE_TEXT_FORMATS), default="txt"),
    prompt=Hidden("PROMPT"),
    extra_pnginfo=Hidden("EXTRA_PNGINFO"),
):
    """Write the text into the output folder as a .txt, .csv, .md or .json file, and pass it on."""
    if format not in SAVE_TEXT_FORMATS:
        raise ValueError(f"format {format!r} is not one of {', '.join(SAVE_TEXT_FORMATS)}")
    if not isinstance(text, str):
        raise ValueError(f"text must be a STRING, not {type(text).__name__}")
    try:
        target = save_target(filename_prefix, current_runtime().folders.output, 1, 1)
    except ValueError as error:
        raise ValueError(f"filename_prefix {filename_prefix!r}: {error}") from None
    data = _file_text(text, format).encode("utf-8")
    counter = _text_counter(target.folder, target.base)
    while True:
        name = f"{target.base}_{counter:05d}.{format}"
        try:
            with open(target.folder / name, "xb") as file:
                file.write(data)
            break
        except FileExistsError:  # another prompt took the number first
            counter = max(counter + 1, _text_counter(target.folder, target.base))
    saved = {"filename": name, "subfolder": target.subfolder, "type": "output"}
    return NodeOutput(text, ui={"text": [text], "files": [saved]})
