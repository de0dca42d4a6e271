"""A node whose colour input gets a custom widget from the pack's browser code.

The input is an ordinary ``STRING`` ("#rrggbb") that names a ``widgetType``. The editor draws the
widget that ``web/color_widget.js`` registers under that name; an editor without the extension (or
ComfyUI's) still shows a text box, so the node never becomes unusable.
"""

from __future__ import annotations

import re

import torch

from graph.declare import Float, Output, Socket, String, node

HEX_COLOR = re.compile(r"#[0-9a-fA-F]{6}")


def parse_color(color: str) -> tuple[float, float, float]:
    """``"#rrggbb"`` → three floats in 0..1; raises ``ValueError`` naming the bad text."""
    if not HEX_COLOR.fullmatch(color):
        raise ValueError(f"color {color!r} is not of the form #rrggbb")
    return tuple(int(color[i : i + 2], 16) / 255.0 for i in (1, 3, 5))  # type: ignore[return-value]


def check_color(color: str | None = None) -> bool | str:
    """Custom validation: a wired colour is checked when it runs, a typed one before anything runs."""
    if color is None or HEX_COLOR.fullmatch(color):
        return True
    return f"color {color!r} is not of the form #rrggbb"


def tint(pictures: torch.Tensor, rgb: tuple[float, float, float], strength: float) -> torch.Tensor:
    """Multiply-blend RGB with a colour (white takes the colour, black stays black), mixed by ``strength``."""
    colour = torch.tensor(rgb, dtype=pictures.dtype, device=pictures.device)
    base = pictures[..., :3]
    return torch.cat([torch.lerp(base, base * colour, strength), pictures[..., 3:]], dim=-1)


@node(
    category="example_pack/image",
    display_name="Color Tint (example)",
    outputs=[Output("IMAGE")],
    validate=check_color,
)
def ExampleColorTint(
    image=Socket("IMAGE"),
    color=String("#c08040", widgetType="EXAMPLE_COLOR", tooltip="The tint colour, #rrggbb."),
    strength=Float(1.0, min=0.0, max=1.0, step=0.01),
):
    """Tint pictures with a colour picked in the node's colour widget."""
    return tint(image, parse_color(color), strength)
