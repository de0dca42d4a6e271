"""Outside JSON is decoded with a depth cap and finite numbers, and every refusal says why."""

import json
import sys

import pytest

from graph.formats.strict_json import MAX_DEPTH, JsonDocumentError, nesting_depth, parse_json


def test_ordinary_documents_decode_as_json_loads_would() -> None:
    text = '{"3": {"class_type": "KSampler", "inputs": {"seed": 18446744073709551615, "cfg": 7.5, "model": ["4", 0]}}}'
    assert parse_json(text) == json.loads(text)
    assert parse_json(text.encode()) == json.loads(text)


@pytest.mark.parametrize("opening", ["[", '{"a":'])
def test_nesting_deeper_than_the_cap_is_refused_before_python_recursion_can_fail(opening) -> None:
    closing = "]" if opening == "[" else "}"
    assert parse_json(opening * MAX_DEPTH + "1" + closing * MAX_DEPTH) is not None
    for depth in (MAX_DEPTH + 1, 5_000, sys.getrecursionlimit() * 10):
        with pytest.raises(JsonDocumentError, match=f"nested more than {MAX_DEPTH} levels"):
            parse_json(opening * depth + "1" + closing * depth)


def test_a_deep_prefix_is_refused_even_when_the_rest_is_truncated() -> None:
    with pytest.raises(JsonDocumentError, match="nested more than"):
        parse_json("[" * 100_000)


def test_brackets_inside_strings_do_not_count() -> None:
    text = json.dumps({"text": "[" * 5_000, "escaped": '\\"[[[' * 100, "nested": [[["ok"]]]})
    assert nesting_depth(text) == 4  # the object and three lists
    assert parse_json(text)["text"] == "[" * 5_000


def test_an_unterminated_string_does_not_make_the_scan_quadratic() -> None:
    # Every quote would start a new failed string match if the scan retried from each one.
    assert nesting_depth('"' + '\\"[' * 200_000) == 0


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("[NaN]", "NaN is not a JSON number"),
        ('{"x": -Infinity}', "-Infinity is not a JSON number"),
        ("[1e999]", "the number 1e999 is too large"),
        ("1" * 5_000, "not valid JSON"),
        ('{"a": ', "not valid JSON"),
        ("[1, 2,]", "not valid JSON"),
        (b"\xff\xfe[]", "not UTF-8 text"),
    ],
)
def test_what_is_not_json_is_refused_with_a_reason(text, reason) -> None:
    with pytest.raises(JsonDocumentError, match=reason):
        parse_json(text)
