"""Socket types and the rule that decides whether an output may feed an input.

Types are open strings so plugins can invent their own (``"MY_MASK_LIST"``). Three rules, from the
ComfyUI wire contract: identical names connect, ``*`` connects to anything, and a comma list such as
``"IMAGE,MASK"`` is a union that connects when the two sides share a member. A combo list (a Python
list of choices in ``INPUT_TYPES``) is the type ``COMBO``.
"""

from __future__ import annotations

from typing import Any

ANY = "*"
COMBO = "COMBO"
INT = "INT"
FLOAT = "FLOAT"
STRING = "STRING"
BOOLEAN = "BOOLEAN"

#: Types whose unconnected inputs are edited in place (a widget) rather than wired.
WIDGET_TYPES = frozenset({INT, FLOAT, STRING, BOOLEAN, COMBO})


def type_name(raw: Any) -> str:
    """Normalise a declared type: a list/tuple of choices is a combo, anything else its string."""
    if isinstance(raw, (list, tuple)):
        return COMBO
    return str(raw)


def type_members(type_: str) -> frozenset[str]:
    """The members of a possibly comma-separated union type, stripped of whitespace."""
    return frozenset(part.strip() for part in type_.split(",") if part.strip())


def types_compatible(output_type: str, input_type: str) -> bool:
    """Whether a link from an output of ``output_type`` into an input of ``input_type`` is valid."""
    if output_type == input_type or ANY in (output_type, input_type):
        return True
    return bool(type_members(output_type) & type_members(input_type))
