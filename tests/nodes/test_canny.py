"""ComfyUI's ``Canny`` node: its interface as ComfyUI serves it, the picture it returns, and its speed.

The edge algorithm itself is checked step by step in ``tests/diffusion/test_canny.py``; here, the node
around it: IMAGE in and out, batches, the device choice, refusals, and ComfyUI's own expression
(``kornia.filters.canny(image.movedim(-1, 1), low, high)[1].repeat(1, 3, 1, 1).movedim(1, -1)``)
where kornia is installed.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import nodes.canny
from diffusion.canny import canny
from graph.declare import spec_of
from graph.registry import NodeRegistry
from nodes.canny import Canny


def photo_like(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """IMAGE ``[B, H, W, 3]`` of soft random blobs: edges in every direction and strength."""
    coarse = torch.rand((batch, 3, height // 8 + 2, width // 8 + 2), generator=torch.Generator().manual_seed(seed))
    blobs = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False).clamp(0, 1)
    return blobs.movedim(1, -1).contiguous()


def detect(image: torch.Tensor, low: float = 0.4, high: float = 0.8, device: str = "cpu") -> torch.Tensor:
    return Canny(image=image, low_threshold=low, high_threshold=high, device=device)


def test_object_info_matches_comfyui() -> None:
    registry = NodeRegistry()
    assert registry.register_module(nodes.canny) == ["Canny"]
    entry = registry.object_info()["Canny"]
    threshold = {"min": 0.01, "max": 0.99, "step": 0.01}
    assert entry["input"] == {
        "required": {
            "image": ["IMAGE"],
            "low_threshold": ["FLOAT", {"default": 0.4, **threshold}],
            "high_threshold": ["FLOAT", {"default": 0.8, **threshold}],
        },
        "optional": {"device": [["gpu", "cpu"], {"default": "cpu", "advanced": True}]},
    }
    assert entry["input_order"] == {
        "required": ["image", "low_threshold", "high_threshold"],
        "optional": ["device"],
    }
    assert (entry["output"], entry["output_name"], entry["output_is_list"]) == (["IMAGE"], ["IMAGE"], [False])
    assert (entry["display_name"], entry["category"], entry["output_node"]) == (
        "Detect Edges (Canny)",
        "image/filters",
        False,
    )
    assert entry["description"]


def test_edges_come_back_as_a_three_channel_black_and_white_image() -> None:
    image = photo_like(1, 48, 56)
    result = detect(image, 0.2, 0.5)
    assert result.shape == (1, 48, 56, 3) and result.dtype == torch.float32
    assert set(result.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(result[..., 0], result[..., 1]) and torch.equal(result[..., 0], result[..., 2])
    expected = canny(image.movedim(-1, 1), 0.2, 0.5).edges[:, 0]
    assert torch.equal(result[..., 0], expected)


def test_a_white_square_on_black_gives_its_outline() -> None:
    image = torch.zeros(1, 32, 32, 3)
    image[:, 8:24, 8:24] = 1
    edges = detect(image)[0, :, :, 0].bool()
    inside, outside = torch.zeros(32, 32, dtype=torch.bool), torch.ones(32, 32, dtype=torch.bool)
    inside[10:22, 10:22] = True
    outside[6:26, 6:26] = False
    assert not (edges & (inside | outside)).any()
    assert edges[7:9, 16].sum() == 1 and edges[16, 23:25].sum() == 1


def test_each_picture_of_a_batch_gets_its_own_edges() -> None:
    batch = photo_like(3, 40, 40, seed=5)
    together = detect(batch, 0.2, 0.5)
    assert together.shape == (3, 40, 40, 3)
    for index in range(3):
        assert torch.equal(together[index], detect(batch[index : index + 1], 0.2, 0.5)[0])
    assert not torch.equal(together[0], together[1])


def test_higher_thresholds_keep_fewer_edges() -> None:
    image = photo_like(1, 64, 64, seed=2)
    counts = [int(detect(image, low, high).sum()) for low, high in [(0.1, 0.2), (0.4, 0.8), (0.9, 0.99)]]
    assert counts[0] > counts[1] > counts[2]


def test_a_one_channel_image_is_accepted() -> None:
    image = photo_like(1, 24, 24)[..., :1]
    assert detect(image).shape == (1, 24, 24, 3)


def test_a_workflow_without_the_device_value_runs_on_the_cpu_default() -> None:
    image = photo_like(1, 24, 24)
    result = spec_of(Canny).run(None, {"image": image, "low_threshold": 0.3, "high_threshold": 0.6})
    assert torch.equal(result.values[0], detect(image, 0.3, 0.6, "cpu"))


def test_gpu_outside_a_runtime_computes_where_the_image_is() -> None:
    image = photo_like(1, 24, 24)
    assert torch.equal(detect(image, device="gpu"), detect(image, device="cpu"))


def test_an_alpha_channel_is_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match="Split Image with Alpha"):
        detect(torch.zeros(1, 16, 16, 4))


def test_a_low_threshold_above_the_high_one_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="low_threshold 0.9 is above high_threshold 0.5"):
        detect(torch.zeros(1, 16, 16, 3), 0.9, 0.5)


@pytest.mark.parametrize(("low", "high"), [(0.4, 0.8), (0.05, 0.3), (0.99, 0.99)])
@pytest.mark.parametrize(("batch", "height", "width"), [(2, 64, 72), (1, 320, 256)])
def test_equals_comfyuis_kornia_call(low: float, high: float, batch: int, height: int, width: int) -> None:
    kornia_filters = pytest.importorskip("kornia.filters")
    image = photo_like(batch, height, width, seed=9)
    expected = kornia_filters.canny(image.movedim(-1, 1), low, high)[1].repeat(1, 3, 1, 1).movedim(1, -1)
    assert torch.equal(detect(image, low, high), expected)
