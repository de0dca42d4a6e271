"""LATENT transforms and arithmetic: ComfyUI's interfaces (nodes.py, comfy_extras/nodes_latent.py) and the
exact latents they compute, including how the second latent is fitted and what the dict carries along."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

import nodes.latent_ops as latent_ops_module
from graph.registry import NodeRegistry
from nodes.image import MAX_RESOLUTION
from nodes.latent_ops import (
    LatentAdd,
    LatentBatch,
    LatentBatchSeedBehavior,
    LatentCrop,
    LatentFlip,
    LatentInterpolate,
    LatentMultiply,
    LatentRotate,
    LatentSubtract,
    repeat_to_batch,
)


def _step8(default: int, low: int) -> list[Any]:
    return ["INT", {"default": default, "min": low, "max": MAX_RESOLUTION, "step": 8}]


#: ComfyUI's inputs in order, then (category, display name). Categories are from the tree Loom's other
#: core nodes follow (ComfyUI's newest code moves them under "model/latent/...").
SPEC: dict[str, tuple[dict[str, Any], str, str]] = {
    "LatentCrop": (
        {
            "samples": ["LATENT"],
            "width": _step8(512, 64),
            "height": _step8(512, 64),
            "x": _step8(0, 0),
            "y": _step8(0, 0),
        },
        "latent/transform",
        "Crop Latent",
    ),
    "LatentFlip": (
        {"samples": ["LATENT"], "flip_method": [["x-axis: vertically", "y-axis: horizontally"]]},
        "latent/transform",
        "Flip Latent",
    ),
    "LatentRotate": (
        {"samples": ["LATENT"], "rotation": [["none", "90 degrees", "180 degrees", "270 degrees"]]},
        "latent/transform",
        "Rotate Latent",
    ),
    "LatentAdd": ({"samples1": ["LATENT"], "samples2": ["LATENT"]}, "latent/advanced", "LatentAdd"),
    "LatentSubtract": ({"samples1": ["LATENT"], "samples2": ["LATENT"]}, "latent/advanced", "LatentSubtract"),
    "LatentMultiply": (
        {"samples": ["LATENT"], "multiplier": ["FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01}]},
        "latent/advanced",
        "LatentMultiply",
    ),
    "LatentInterpolate": (
        {
            "samples1": ["LATENT"],
            "samples2": ["LATENT"],
            "ratio": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}],
        },
        "latent/advanced",
        "LatentInterpolate",
    ),
    "LatentBatch": ({"samples1": ["LATENT"], "samples2": ["LATENT"]}, "latent/batch", "LatentBatch"),
    "LatentBatchSeedBehavior": (
        {"samples": ["LATENT"], "seed_behavior": [["random", "fixed"], {"default": "fixed"}]},
        "latent/advanced",
        "LatentBatchSeedBehavior",
    ),
}


def test_object_info_matches_comfyui() -> None:
    registry = NodeRegistry()
    assert sorted(registry.register_module(latent_ops_module)) == sorted(SPEC)
    info = registry.object_info()
    for name, (inputs, category, display_name) in SPEC.items():
        entry = info[name]
        assert entry["input"] == {"required": inputs}, name
        assert entry["input_order"] == {"required": list(inputs)}, name
        assert (entry["output"], entry["output_name"], entry["output_node"]) == (["LATENT"], ["LATENT"], False)
        assert (entry["category"], entry["display_name"]) == (category, display_name), name
        assert entry.get("deprecated", False) is (name == "LatentBatch"), name


def cells(*rows: list[float]) -> torch.Tensor:
    """One single-channel latent ``[1, 1, h, w]`` from its rows."""
    return torch.tensor([list(row) for row in rows], dtype=torch.float32)[None, None]


# --- LatentCrop ------------------------------------------------------------------------------------------


def test_crop_rounds_pixels_down_to_latent_cells() -> None:
    latent = torch.arange(16 * 16, dtype=torch.float32).reshape(1, 1, 16, 16)
    cropped = LatentCrop({"samples": latent}, 71, 64, 15, 17)["samples"]
    # width 71 -> 8 cells, height 64 -> 8, x 15 -> 1, y 17 -> 2.
    assert torch.equal(cropped, latent[:, :, 2:10, 1:9])


def test_crop_starts_at_least_eight_cells_before_the_edge_and_clips_the_rest() -> None:
    latent = torch.arange(12 * 20, dtype=torch.float32).reshape(1, 1, 12, 20)
    cropped = LatentCrop({"samples": latent}, 512, 128, 152, 4000)["samples"]
    # x 152 -> 19 cells, moved back to 20 - 8 = 12; y moved back to 12 - 8 = 4; width clipped at the edge.
    assert torch.equal(cropped, latent[:, :, 4:12, 12:20])


def test_crop_flip_and_rotate_keep_the_noise_mask_and_batch_index_as_they_are() -> None:
    mask = torch.rand(1, 1, 128, 128)
    samples = torch.zeros(2, 4, 16, 16)
    latent = {"samples": samples, "noise_mask": mask, "batch_index": [3, 4]}
    for out in (
        LatentCrop(latent, 64, 64, 0, 0),
        LatentFlip(latent, "x-axis: vertically"),
        LatentRotate(latent, "90 degrees"),
    ):
        assert out["noise_mask"] is mask and out["batch_index"] == [3, 4] and out is not latent
    assert latent["samples"] is samples and not samples.any()


# --- LatentFlip, LatentRotate ----------------------------------------------------------------------------


def test_flip_x_axis_turns_upside_down_and_y_axis_mirrors() -> None:
    latent = {"samples": cells([1, 2, 3], [4, 5, 6])}
    assert torch.equal(LatentFlip(latent, "x-axis: vertically")["samples"], cells([4, 5, 6], [1, 2, 3]))
    assert torch.equal(LatentFlip(latent, "y-axis: horizontally")["samples"], cells([3, 2, 1], [6, 5, 4]))
    with pytest.raises(ValueError, match="LatentFlip: flip_method 'z' is not one of"):
        LatentFlip(latent, "z")


def test_rotate_turns_clockwise() -> None:
    latent = {"samples": cells([1, 2, 3], [4, 5, 6])}
    assert torch.equal(LatentRotate(latent, "none")["samples"], latent["samples"])
    assert torch.equal(LatentRotate(latent, "90 degrees")["samples"], cells([4, 1], [5, 2], [6, 3]))
    assert torch.equal(LatentRotate(latent, "180 degrees")["samples"], cells([6, 5, 4], [3, 2, 1]))
    assert torch.equal(LatentRotate(latent, "270 degrees")["samples"], cells([3, 6], [2, 5], [1, 4]))
    with pytest.raises(ValueError, match="LatentRotate: rotation '45 degrees' is not one of"):
        LatentRotate(latent, "45 degrees")


# --- LatentAdd, LatentSubtract, LatentMultiply -----------------------------------------------------------


def test_add_and_subtract_cell_by_cell_keeping_the_first_latents_extras() -> None:
    first = {"samples": cells([1, 2], [3, 4]), "noise_mask": torch.ones(1, 1, 16, 16), "batch_index": [7]}
    second = {"samples": cells([10, 20], [30, 40]), "noise_mask": torch.zeros(1, 1, 16, 16), "batch_index": [1]}
    added = LatentAdd(first, second)
    assert torch.equal(added["samples"], cells([11, 22], [33, 44]))
    assert added["noise_mask"] is first["noise_mask"] and added["batch_index"] == [7]
    assert torch.equal(LatentSubtract(first, second)["samples"], cells([-9, -18], [-27, -36]))


def test_the_second_batch_repeats_cyclically_or_is_cut_to_the_first() -> None:
    first = {"samples": torch.zeros(3, 1, 1, 1)}
    second = {"samples": torch.tensor([1.0, 2.0]).reshape(2, 1, 1, 1)}
    assert LatentAdd(first, second)["samples"].flatten().tolist() == [1.0, 2.0, 1.0]
    short = {"samples": torch.zeros(1, 1, 1, 1)}
    assert LatentSubtract(short, second)["samples"].flatten().tolist() == [-1.0]


def test_a_second_latent_of_another_size_is_centre_cropped_then_resized_bilinearly() -> None:
    first = {"samples": torch.zeros(1, 2, 4, 4)}
    wide = torch.randn(1, 2, 4, 8)
    # Aspect 2 against 1: two columns come off each side, then the 4x4 middle needs no resizing.
    torch.testing.assert_close(LatentAdd(first, {"samples": wide})["samples"], wide[..., 2:6])
    small = torch.randn(1, 2, 2, 2)
    expected = F.interpolate(small, size=(4, 4), mode="bilinear")
    torch.testing.assert_close(LatentAdd(first, {"samples": small})["samples"], expected)


def test_latents_with_other_channels_cannot_be_combined() -> None:
    with pytest.raises(ValueError, match="LatentAdd: samples2 has 16-channel latents and samples1 4-channel"):
        LatentAdd({"samples": torch.zeros(1, 4, 8, 8)}, {"samples": torch.zeros(1, 16, 8, 8)})


def test_multiply_scales_every_cell() -> None:
    latent = {"samples": cells([1, -2], [0.5, 4]), "batch_index": [2]}
    scaled = LatentMultiply(latent, -1.5)
    assert torch.equal(scaled["samples"], cells([-1.5, 3], [-0.75, -6])) and scaled["batch_index"] == [2]


# --- LatentInterpolate -----------------------------------------------------------------------------------


def vectors(*pairs: tuple[float, float]) -> torch.Tensor:
    """A two-channel latent, one row, whose cells hold the given channel vectors."""
    return torch.tensor(pairs, dtype=torch.float32).T.reshape(1, 2, 1, len(pairs))


def test_interpolate_mixes_directions_and_lengths_separately() -> None:
    first = {"samples": vectors((2.0, 0.0), (0.0, 0.0), (3.0, 4.0))}
    second = {"samples": vectors((0.0, 4.0), (0.0, 1.0), (3.0, 4.0))}
    mixed = LatentInterpolate(first, second, 0.5)["samples"]
    # Orthogonal unit vectors average to the diagonal; the length is the mean of 2 and 4.
    diagonal = 3.0 / 2**0.5
    # A zero vector has no direction: only the other's direction, with half its length, remains.
    torch.testing.assert_close(mixed, vectors((diagonal, diagonal), (0.0, 0.5), (3.0, 4.0)))
    torch.testing.assert_close(LatentInterpolate(first, second, 1.0)["samples"], first["samples"])
    torch.testing.assert_close(LatentInterpolate(first, second, 0.0)["samples"], second["samples"])


def test_interpolate_fits_the_second_latent_first() -> None:
    first = {"samples": vectors((1.0, 0.0), (1.0, 0.0)).repeat(2, 1, 1, 1)}
    second = {"samples": vectors((0.0, 2.0))}  # one cell, one item: resized to 1x2 and repeated
    mixed = LatentInterpolate(first, second, 0.0)["samples"]
    torch.testing.assert_close(mixed, vectors((0.0, 2.0), (0.0, 2.0)).repeat(2, 1, 1, 1))


# --- LatentBatch, LatentBatchSeedBehavior ----------------------------------------------------------------


def test_batch_joins_and_lists_each_parts_noise_indexes() -> None:
    first = {"samples": torch.zeros(2, 1, 2, 2), "noise_mask": torch.ones(1, 1, 16, 16)}
    second = {"samples": torch.ones(3, 1, 2, 2)}
    joined = LatentBatch(first, second)
    assert joined["samples"][:, 0, 0, 0].tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]
    # Both parts count from 0, so the second part reuses the first part's noise (ComfyUI's rule).
    assert joined["batch_index"] == [0, 1, 0, 1, 2]
    assert joined["noise_mask"] is first["noise_mask"] and "batch_index" not in first
    split = LatentBatch({**first, "batch_index": [4, 5]}, {**second, "batch_index": [7, 8, 9]})
    assert split["batch_index"] == [4, 5, 7, 8, 9]


def test_batch_resizes_the_second_part_but_keeps_its_batch() -> None:
    first = {"samples": torch.zeros(1, 2, 4, 4)}
    small = torch.randn(2, 2, 2, 2)
    joined = LatentBatch(first, {"samples": small})["samples"]
    assert joined.shape == (3, 2, 4, 4)
    torch.testing.assert_close(joined[1:], F.interpolate(small, size=(4, 4), mode="bilinear"))


def test_fixed_seed_behaviour_gives_every_item_the_first_items_noise() -> None:
    latent = {"samples": torch.zeros(3, 4, 2, 2), "batch_index": [5, 6, 7], "noise_mask": torch.ones(1, 1, 2, 2)}
    fixed = LatentBatchSeedBehavior(latent, "fixed")
    assert fixed["batch_index"] == [5, 5, 5] and fixed["noise_mask"] is latent["noise_mask"]
    assert LatentBatchSeedBehavior({"samples": torch.zeros(2, 4, 2, 2)}, "fixed")["batch_index"] == [0, 0]
    assert latent["batch_index"] == [5, 6, 7]


def test_random_seed_behaviour_drops_the_noise_indexes() -> None:
    latent = {"samples": torch.zeros(3, 4, 2, 2), "batch_index": [5, 6, 7]}
    assert "batch_index" not in LatentBatchSeedBehavior(latent, "random")
    assert "batch_index" in latent
    with pytest.raises(ValueError, match="seed_behavior 'same' is not one of random, fixed"):
        LatentBatchSeedBehavior(latent, "same")


def test_repeat_to_batch_cuts_or_repeats_cyclically() -> None:
    items = torch.tensor([1.0, 2.0, 3.0]).reshape(3, 1)
    assert repeat_to_batch(items, 2).flatten().tolist() == [1.0, 2.0]
    assert repeat_to_batch(items, 7).flatten().tolist() == [1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 1.0]
    assert repeat_to_batch(items, 3) is items
