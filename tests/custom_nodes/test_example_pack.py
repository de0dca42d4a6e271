"""The example pack loads beside the built-ins and its nodes do what the tutorial says, on real pictures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from graph.executor import Executor
from graph.plugins import PluginReport, PluginStatus, load_plugins
from graph.progress import Interrupted, InterruptFlag, node_context
from graph.registry import NodeRegistry
from graph.validation import validate_prompt
from nodes import register_builtin_nodes

CUSTOM_NODES = Path(__file__).resolve().parents[2] / "custom_nodes"
PACK_NODES = ["ExamplePromptTemplate", "ExampleGaussianBlur", "ExampleSepia", "ExampleColorTint"]


@pytest.fixture(scope="module")
def loaded() -> tuple[NodeRegistry, PluginReport]:
    registry = NodeRegistry()
    register_builtin_nodes(registry)
    reports = load_plugins(registry, [CUSTOM_NODES], disable_all=True, whitelist=["example_pack"])
    [report] = [r for r in reports if r.name == "example_pack"]
    return registry, report


def run_node(registry: NodeRegistry, class_type: str, **inputs):
    spec = registry.get(class_type)
    return spec.normalize_result(spec.run(spec.create_instance(), inputs)).values


def test_the_pack_loads_beside_the_builtins_with_its_web_folder(loaded) -> None:
    registry, report = loaded
    assert report.status is PluginStatus.LOADED, report.traceback
    assert report.nodes == PACK_NODES and report.refused == []
    assert (report.web_directory / "color_widget.js").is_file()
    assert all(registry.get(name).python_module == "custom_nodes.example_pack" for name in PACK_NODES)
    color = registry.get("ExampleColorTint").object_info()["input"]["required"]["color"]
    assert color == [
        "STRING",
        {"default": "#c08040", "tooltip": "The tint colour, #rrggbb.", "widgetType": "EXAMPLE_COLOR"},
    ]


@pytest.mark.parametrize(("shape", "sigma"), [((2, 17, 23, 3), 1.5), ((1, 32, 32, 4), 3.0), ((1, 9, 7, 3), 4.0)])
def test_gaussian_blur_matches_scipy(loaded, shape, sigma: float) -> None:
    registry, _ = loaded
    pictures = torch.rand(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    (blurred,) = run_node(registry, "ExampleGaussianBlur", image=pictures, sigma=sigma)
    # scipy's "nearest" edge mode repeats the border pixel, which is the node's documented edge rule.
    expected = ndimage.gaussian_filter(pictures.numpy(), sigma=(0, sigma, sigma, 0), mode="nearest", truncate=3.0)
    np.testing.assert_allclose(blurred.numpy(), expected, rtol=0, atol=1e-12)


def test_gaussian_blur_keeps_float32_and_flat_colour(loaded) -> None:
    registry, _ = loaded
    flat = torch.full((1, 12, 12, 3), 0.25)
    (blurred,) = run_node(registry, "ExampleGaussianBlur", image=flat, sigma=2.0)
    assert blurred.dtype == torch.float32
    torch.testing.assert_close(blurred, flat)


class _Progress:
    def __init__(self) -> None:
        self.reports: list[tuple[str, float, float]] = []

    def on_progress(self, node_id, value, total, preview) -> None:
        self.reports.append((node_id, value, total))


def test_gaussian_blur_reports_progress_per_picture_and_stops_when_interrupted(loaded) -> None:
    registry, _ = loaded
    pictures = torch.rand(3, 8, 8, 3)
    sink = _Progress()
    with node_context("7", InterruptFlag(), sink):
        run_node(registry, "ExampleGaussianBlur", image=pictures, sigma=1.0)
    assert sink.reports == [("7", 1, 3), ("7", 2, 3), ("7", 3, 3)]

    stop = InterruptFlag()
    stop.set()
    with node_context("7", stop, sink), pytest.raises(Interrupted):
        run_node(registry, "ExampleGaussianBlur", image=pictures, sigma=1.0)


def test_sepia_applies_the_sepia_matrix_and_mixes_by_strength(loaded) -> None:
    registry, _ = loaded
    pixel = torch.tensor([[[[0.2, 0.4, 0.6, 0.5]]]])  # RGBA: alpha must pass through
    (toned,) = run_node(registry, "ExampleSepia", image=pixel, strength=1.0)
    r, g, b = 0.2, 0.4, 0.6
    expected = [0.393 * r + 0.769 * g + 0.189 * b, 0.349 * r + 0.686 * g + 0.168 * b, 0.272 * r + 0.534 * g + 0.131 * b]
    torch.testing.assert_close(toned[0, 0, 0], torch.tensor([*expected, 0.5]))

    (half,) = run_node(registry, "ExampleSepia", image=pixel, strength=0.5)
    torch.testing.assert_close(half[..., :3], (pixel[..., :3] + toned[..., :3]) / 2)
    (untouched,) = run_node(registry, "ExampleSepia", image=pixel, strength=0.0)
    torch.testing.assert_close(untouched, pixel)


def test_sepia_clamps_bright_pixels_to_one(loaded) -> None:
    registry, _ = loaded
    (white,) = run_node(registry, "ExampleSepia", image=torch.ones(1, 2, 2, 3), strength=1.0)
    assert white.max() == 1.0
    torch.testing.assert_close(white[0, 0, 0], torch.tensor([1.0, 1.0, 0.937]))


def test_color_tint_multiplies_by_the_colour(loaded) -> None:
    registry, _ = loaded
    pictures = torch.stack([torch.ones(4, 4, 3), torch.zeros(4, 4, 3)])
    (tinted,) = run_node(registry, "ExampleColorTint", image=pictures, color="#ff8000", strength=1.0)
    torch.testing.assert_close(tinted[0, 0, 0], torch.tensor([1.0, 128 / 255, 0.0]))
    assert tinted[1].abs().max() == 0.0
    (half,) = run_node(registry, "ExampleColorTint", image=pictures, color="#ff8000", strength=0.5)
    torch.testing.assert_close(half[0, 0, 0], torch.tensor([1.0, (1 + 128 / 255) / 2, 0.5]))
    with pytest.raises(ValueError, match="'orange' is not of the form #rrggbb"):
        run_node(registry, "ExampleColorTint", image=pictures, color="orange", strength=1.0)


def image_prompt(color: str) -> dict:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0xFFFFFF}},
        "2": {"class_type": "ExampleGaussianBlur", "inputs": {"image": ["1", 0], "sigma": 1.0}},
        "3": {"class_type": "ExampleSepia", "inputs": {"image": ["2", 0], "strength": 1.0}},
        "4": {"class_type": "ExampleColorTint", "inputs": {"image": ["3", 0], "color": color, "strength": 1.0}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}},
    }


def test_the_image_nodes_wire_to_builtins_and_a_bad_colour_fails_validation(loaded) -> None:
    registry, _ = loaded
    assert validate_prompt(image_prompt("#336699"), registry).ok
    rejected = validate_prompt(image_prompt("teal"), registry)
    [error] = rejected.node_errors["4"]["errors"]
    assert error["type"] == "custom_validation_failed" and "'teal' is not of the form #rrggbb" in error["details"]


def test_prompt_template_runs_through_the_executor_and_shows_its_text(loaded) -> None:
    registry, _ = loaded
    prompt = {
        "1": {
            "class_type": "ExamplePromptTemplate",
            "inputs": {"template": "{subject} at {style}", "subject": "a fox", "style": "dawn"},
        },
        "2": {"class_type": "StringConcatenate", "inputs": {"string_a": ["1", 0], "string_b": "!", "delimiter": ""}},
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}},
    }  # fmt: skip
    checked = validate_prompt(prompt, registry)
    assert checked.ok, checked.node_errors
    record = Executor(registry).execute(checked.prompt, checked.outputs, prompt_id="tpl")
    assert record.error is None, record.error
    assert record.outputs["1"] == {"text": ["a fox at dawn"]}
    assert record.outputs["3"]["text"] == ["a fox at dawn!"]


def test_prompt_template_rejects_unknown_placeholders_before_running(loaded) -> None:
    registry, _ = loaded
    prompt = {
        "1": {
            "class_type": "ExamplePromptTemplate",
            "inputs": {"template": "{subjet} {mood}", "subject": "x", "style": "y"},
        }
    }
    [error] = validate_prompt(prompt, registry).node_errors["1"]["errors"]
    assert error["type"] == "custom_validation_failed"
    assert "unknown placeholder(s) {mood}, {subjet}" in error["details"]
