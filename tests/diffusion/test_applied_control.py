"""Applied ControlNets: windows on sigma, chains summed, hints fitted and cycled per batch, residuals lined up
with batched calls, and the old ControlNetApply's hand-over to the negative, as ComfyUI does them."""

from __future__ import annotations

import pytest
import torch

from diffusion.applied_control import (
    AppliedControl,
    BoundControl,
    concat_residuals,
    controlnet_mismatch,
    share_with_uncond,
    split_rows,
)
from diffusion.controlnet import ControlResiduals, fit_hint, load_controlnet, tiny_controlnet_tensors
from diffusion.flux_controlnet import BlockResiduals
from diffusion.prediction import EpsPrediction
from diffusion.t2i_adapter import fit_adapter_hint, load_t2i_adapter, tiny_t2i_adapter_tensors
from diffusion.tiny import tiny_checkpoint_tensors, tiny_unet_config
from diffusion.unet_config import CheckpointLayoutError

SAMPLING = EpsPrediction()


@pytest.fixture(scope="module")
def controlnets():
    config = tiny_unet_config("sd15")
    return load_controlnet(tiny_controlnet_tensors(config, seed=1)), load_controlnet(
        tiny_controlnet_tensors(config, seed=2)
    )


def inputs(batch: int = 2):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4, 8, 8, generator=g)
    return x, torch.full((batch,), 400.0), torch.randn(batch, 5, 64, generator=g)


def same(a: ControlResiduals | None, b: ControlResiduals | None, atol: float = 0.0) -> bool:
    assert a is not None and b is not None
    pairs = [*zip(a.input, b.input), (a.middle, b.middle), *zip(a.encoder, b.encoder, strict=True)]
    return all(torch.allclose(p, q, rtol=0, atol=atol) for p, q in pairs if p is not None and q is not None)


def test_a_link_acts_inside_its_window_on_sigma_only(controlnets) -> None:
    net, _ = controlnets
    control = AppliedControl(net, torch.rand(1, 3, 64, 64), 0.5, 0.25, 0.75)
    bound = BoundControl(control, SAMPLING)
    x, t, context = inputs()
    inside = SAMPLING.percent_to_sigma(0.5)
    for sigma, acts in [
        (SAMPLING.percent_to_sigma(0.1), False),
        (inside, True),
        (SAMPLING.percent_to_sigma(0.9), False),
    ]:
        assert (bound.residuals(x, sigma, t, context, None) is not None) is acts
    with torch.no_grad():
        expected = net(x, fit_hint(control.hint, 64, 64), t, context).scaled(0.5)
    assert same(bound.residuals(x, inside, t, context, None), expected)


def test_a_chain_sums_its_links_at_their_strengths(controlnets) -> None:
    first_net, second_net = controlnets
    hint = torch.rand(1, 3, 64, 64)
    first = AppliedControl(first_net, hint, 0.7)
    second = AppliedControl(second_net, hint, 1.5, previous=first)
    assert list(second.chain()) == [first, second] and second.controlnets() == [first_net, second_net]
    x, t, context = inputs()
    with torch.no_grad():
        expected = second_net(x, hint, t, context).scaled(1.5) + first_net(x, hint, t, context).scaled(0.7)
    assert same(BoundControl(second, SAMPLING).residuals(x, 1.0, t, context, None), expected)


def test_hints_of_several_pictures_cycle_over_each_conditionings_rows(controlnets) -> None:
    net, _ = controlnets
    pictures = torch.rand(2, 3, 64, 64)
    bound = BoundControl(AppliedControl(net, pictures), SAMPLING)
    x, t, context = inputs(3)
    cycled = pictures[[0, 1, 0]]
    with torch.no_grad():
        expected = net(x, cycled, t, context)
    assert same(bound.residuals(x, 1.0, t, context, None), expected, atol=1e-6)
    # Two conditionings' rows in one call: each block of rows gets the pictures from the first again.
    x2, t2, context2 = torch.cat([x, x]), torch.cat([t, t]), torch.cat([context, context])
    both = bound.residuals(x2, 1.0, t2, context2, None, chunks=2)
    assert both is not None
    for part in split_rows(both, 2):
        assert same(part, expected, atol=1e-5)


def test_a_shuffle_controlnet_pools_each_residual_to_its_spatial_mean(controlnets) -> None:
    net, _ = controlnets
    hint = torch.rand(1, 3, 64, 64)
    x, t, context = inputs()
    pooled = BoundControl(AppliedControl(net, hint, global_average_pooling=True), SAMPLING).residuals(
        x, 1.0, t, context, None
    )
    plain = BoundControl(AppliedControl(net, hint), SAMPLING).residuals(x, 1.0, t, context, None)
    assert pooled is not None and plain is not None
    for p, q in zip(pooled.input, plain.input):
        assert p is not None and q is not None
        torch.testing.assert_close(p, q.mean(dim=(2, 3), keepdim=True).expand_as(q))


def test_residuals_line_up_with_a_batched_call_zeros_for_an_entry_without() -> None:
    a = ControlResiduals((torch.ones(2, 3), None), torch.full((2, 1), 2.0))
    b = ControlResiduals((torch.full((2, 3), 5.0), torch.ones(2, 4)), None)
    joined = concat_residuals([a, None, b])
    assert joined is not None
    first, second = joined.input
    assert first is not None and first.tolist() == [[1.0] * 3] * 2 + [[0.0] * 3] * 2 + [[5.0] * 3] * 2
    assert second is not None and second.tolist() == [[0.0] * 4] * 4 + [[1.0] * 4] * 2
    assert joined.middle is not None and joined.middle.tolist() == [[2.0]] * 2 + [[0.0]] * 4
    assert concat_residuals([None, None]) is None


def entry(**options):
    return (torch.zeros(1, 2, 4), options)


def test_the_old_apply_nodes_controls_go_to_the_negative_as_comfyui_hands_them_on() -> None:
    one, two, three = (object() for _ in range(3))
    positive = [
        entry(control=one, control_apply_to_uncond=True),
        entry(control=two, control_apply_to_uncond=False),
        entry(control=three, control_apply_to_uncond=True),
        entry(control=object(), control_apply_to_uncond=True, area=(1, 1, 0, 0)),
    ]
    negative = [entry(), entry(area=(1, 1, 0, 0))]
    shared = share_with_uncond(positive, negative)
    assert shared[0][1]["control"] is three  # the entries without area take them in turn, the last one staying
    assert "control" not in shared[1][1] and "control" not in negative[0][1]
    two_negatives = share_with_uncond(positive, [entry(), entry()])
    assert [options["control"] for _, options in two_negatives] == [one, three]
    controlled = [entry(control=two)]
    assert share_with_uncond(positive, controlled) is controlled
    assert share_with_uncond([entry(control=one, control_apply_to_uncond=False)], negative) is negative


def test_a_controlnet_for_another_unet_is_named_with_what_differs(controlnets) -> None:
    net, _ = controlnets
    assert controlnet_mismatch(net.config, tiny_unet_config("sd15"), 4) is None
    assert controlnet_mismatch(net.config, tiny_unet_config("sd2"), 4) == "its base width is 32, the UNet's 64"
    assert controlnet_mismatch(net.config, tiny_unet_config("sd15"), 16) == "its latent channels is 4, the UNet's 16"


def test_a_difference_controlnet_needs_its_base_and_adds_it() -> None:
    prefix = "model.diffusion_model."
    unet = {k[len(prefix) :]: v for k, v in tiny_checkpoint_tensors("sd15").items() if k.startswith(prefix)}
    controlnet = tiny_controlnet_tensors(tiny_unet_config("sd15"), seed=4)
    stored = {
        key: value - unet.get(key.removeprefix("control_model."), torch.zeros_like(value))
        for key, value in controlnet.items()
    }
    stored["difference"] = torch.tensor([])
    with pytest.raises(CheckpointLayoutError, match="difference: this is a 'difference' ControlNet"):
        load_controlnet(stored)
    added = load_controlnet(stored, base=unet).state_dict()
    for key, value in load_controlnet(controlnet).state_dict().items():
        torch.testing.assert_close(added[key], value, rtol=0, atol=1e-6)
    wrong = {**unet, "input_blocks.1.0.in_layers.2.weight": torch.zeros(1)}
    with pytest.raises(CheckpointLayoutError, match=r"input_blocks\.1\.0\.in_layers\.2\.weight: has shape"):
        load_controlnet(stored, base=wrong)


@pytest.mark.parametrize(
    ("marker", "kind"), [("lora_controlnet", "a Control-LoRA"), ("task_embedding", "a union ControlNet")]
)
def test_control_kinds_load_controlnet_does_not_build_are_named_with_their_loader(marker: str, kind: str) -> None:
    weights = {**tiny_controlnet_tensors(tiny_unet_config("sd15")), marker: torch.zeros(1)}
    with pytest.raises(CheckpointLayoutError, match=f"{marker}: {kind}.*load_control_model"):
        load_controlnet(weights)


def test_an_adapter_runs_once_per_run_and_its_features_join_a_controlnets_at_their_strengths(controlnets) -> None:
    net, _ = controlnets
    adapter = load_t2i_adapter(tiny_t2i_adapter_tensors(tiny_unet_config("sd15"), seed=3))
    runs: list[torch.Size] = []
    adapter.register_forward_hook(lambda module, args, output: runs.append(args[0].shape))
    pictures = torch.rand(2, 3, 50, 70)
    first = AppliedControl(net, torch.rand(1, 3, 64, 64), 0.7)
    both = AppliedControl(adapter, pictures, 0.5, 0.0, 0.6, previous=first)
    bound = BoundControl(both, SAMPLING)
    x, t, context = inputs(3)
    high, low = SAMPLING.percent_to_sigma(0.3), SAMPLING.percent_to_sigma(0.8)
    at_high = [bound.residuals(x, high, t, context, None) for _ in range(3)]
    assert runs == [torch.Size([2, 3, 64, 64])]  # once, on the pictures fitted to 8x the latent
    with torch.no_grad():
        own = adapter(fit_adapter_hint(pictures, 8, 8, adapter.config))
        expected = own.mapped(lambda f: f[[0, 1, 0]]).scaled(0.5) + net(x, first.hint, t, context).scaled(0.7)
    for result in at_high:
        assert result is not None and same(result, expected, atol=1e-6)
        assert result.encoder[0] is not None and result.encoder[1] is None and result.input
    outside = bound.residuals(x, low, t, context, None)  # past the adapter's window: the ControlNet alone
    assert outside is not None and outside.encoder == ()
    assert same(outside, net(x, first.hint, t, context).scaled(0.7), atol=1e-6)


def test_transformer_residuals_line_up_with_a_batched_call_zeros_where_an_entry_has_none() -> None:
    """A FLUX call batching an InstantX-controlled entry (double and single blocks), an entry without control and an
    XLabs-controlled one (double blocks only): each block position joins its rows, zeros for the others'."""
    tokens = torch.ones(1, 6, 8)
    instantx = BlockResiduals((tokens, tokens * 2), (tokens * 3,))
    xlabs = BlockResiduals((tokens * 4, None))
    joined = concat_residuals([instantx, None, xlabs])
    assert joined is not None and len(joined.double) == 2 and len(joined.single) == 1
    assert all(r is not None for r in joined.tensors())
    rows = [[float(r[index, 0, 0]) for index in range(3)] for r in joined.tensors() if r is not None]
    assert rows == [[1.0, 0.0, 4.0], [2.0, 0.0, 0.0], [3.0, 0.0, 0.0]]
    first, _, last = split_rows(joined, 3)
    assert first.single[0] is not None and torch.equal(first.single[0], tokens * 3)
    assert last.double[0] is not None and torch.equal(last.double[0], tokens * 4)
    assert concat_residuals([None, None]) is None
