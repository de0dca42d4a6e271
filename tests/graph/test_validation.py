"""Prompt validation (docs/compatibility.md §4.1): every problem at once, in the docs/compatibility.md §1.3 shapes."""

import copy

import pytest

from graph.declare import Boolean, Combo, Int, Output, Socket, String, node, spec_of
from graph.registry import NodeRegistry
from graph.v1 import spec_from_v1_class
from graph.validation import validate_prompt
from tests.graph.formats.fixtures.sd15_nodes import sd15_registry


@node(
    outputs=[
        Output("INT"),
        Output("COMBO", name="choice"),
        Output("*", name="anything"),
        Output("IMAGE,MASK", name="either"),
    ]
)
def Source(value=Int(1)):
    """Outputs of the types the link rules treat specially."""


@node(outputs=[], output_node=True)
def Sink(
    count=Int(1, min=0, max=10),
    mode=Combo(["a", "b"]),
    mask=Socket("MASK", optional=True),
    anything=Socket("*", optional=True),
):
    """An output node with a widget, a combo and optional sockets."""


@node(outputs=[], output_node=True)
def BigCombo(name=Combo([f"model_{i}.safetensors" for i in range(30)])):
    """A combo longer than the 20 choices an error may list."""


@node(outputs=[], output_node=True, validate=lambda count: True if count % 2 == 0 else f"count {count} is odd")
def EvenOnly(count=Int(0, max=5), label=String("x")):
    """A custom validator that takes ``count``, so the built-in max check is its to make."""


def _raise(**_):
    raise RuntimeError("validator broke")


@node(outputs=[], output_node=True, validate=_raise)
def Fragile(count=Int(0)):
    """A validator that raises."""


seen_types: list = []


def _record_types(input_types):
    seen_types.append(dict(input_types))
    return True


@node(outputs=[], output_node=True, validate=_record_types)
def TypeChecker(value=Socket("FLOAT")):
    """Wants the linked types, so the built-in link type check is skipped."""


@node(outputs=[Output("LATENT")])
def Loop(previous=Socket("LATENT", optional=True)):
    """Feeds itself through other nodes to build cycles."""


@node(outputs=[], output_node=True)
def LatentSink(samples=Socket("LATENT")):
    """An output that consumes latents."""


class KwargsValidated:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"strength": ("FLOAT", {"min": 0.0, "max": 1.0}), "mode": (["x", "y"],)}}

    @classmethod
    def VALIDATE_INPUTS(cls, **kwargs):
        return True

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True


class BrokenInputs:
    @classmethod
    def INPUT_TYPES(cls):
        raise OSError("model folder unreadable")

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True


@pytest.fixture(scope="module")
def registry() -> NodeRegistry:
    registry = sd15_registry()
    for function in (Source, Sink, BigCombo, EvenOnly, Fragile, TypeChecker, Loop, LatentSink):
        registry.register(spec_of(function))
    registry.register(spec_from_v1_class("KwargsValidated", KwargsValidated))
    registry.register(spec_from_v1_class("BrokenInputs", BrokenInputs))
    return registry


def txt2img() -> dict:
    """The minimal SD1.5 prompt of docs/compatibility.md Appendix A."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly-fp16.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a cat", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["4", 0],
                "seed": 42,
                "steps": 20,
                "cfg": 8.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
                "denoise": 1.0,
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "ComfyUI"}},
    }


def errors_of(result, node_id: str) -> list[dict]:
    return result.node_errors[node_id]["errors"]


def only_error(result, node_id: str) -> dict:
    (error,) = errors_of(result, node_id)
    return error


# -- whole-prompt failures ---------------------------------------------------------------------


def test_the_default_txt2img_prompt_is_valid(registry) -> None:
    result = validate_prompt(txt2img(), registry)
    assert (result.ok, result.error, result.outputs, result.node_errors) == (True, None, ["9"], {})


def test_a_node_without_class_type_rejects_the_whole_prompt(registry) -> None:
    prompt = txt2img()
    del prompt["3"]["class_type"]
    result = validate_prompt(prompt, registry)
    assert not result.ok and result.error["type"] == "invalid_prompt"
    assert result.error["details"] == "Node ID '#3'"


def test_an_unknown_class_rejects_the_whole_prompt_and_names_it(registry) -> None:
    prompt = txt2img()
    prompt["8"]["class_type"] = "VAEDecodeTiledX"
    result = validate_prompt(prompt, registry)
    assert result.error["type"] == "invalid_prompt"
    assert "VAEDecodeTiledX" in result.error["message"] and result.error["details"] == "Node ID '#8'"
    assert set(result.error) == {"type", "message", "details", "extra_info"}


def test_every_unknown_class_and_every_error_of_the_known_nodes_come_in_one_answer(registry) -> None:
    prompt = txt2img()
    prompt["8"]["class_type"] = "VAEDecodeTiledX"  # between the sampler and the only output
    prompt["10"] = {"class_type": "NoSuchNode", "inputs": {"image": ["8", 0]}}
    prompt["3"]["inputs"]["steps"] = 0  # upstream of the unknown node 8
    prompt["9"]["inputs"]["filename_prefix"] = ["nowhere", 0]
    result = validate_prompt(prompt, registry)
    assert not result.ok and result.outputs == []
    assert result.error == {
        "type": "invalid_prompt",
        "message": "Cannot execute because node VAEDecodeTiledX does not exist; node NoSuchNode does not exist.",
        "details": "Node IDs '#8', '#10'",
        "extra_info": {},
    }
    assert {node_id: [error["type"] for error in entry["errors"]] for node_id, entry in result.node_errors.items()} == {
        "8": ["unknown_node_type"],
        "10": ["unknown_node_type"],
        "3": ["value_smaller_than_min"],
        "9": ["bad_linked_input"],
    }
    unknown = result.node_errors["8"]
    assert unknown["class_type"] == "VAEDecodeTiledX" and unknown["dependent_outputs"] == ["9"]
    assert unknown["errors"][0]["details"] == "no installed node or plugin provides 'VAEDecodeTiledX'"
    assert result.node_errors["3"]["dependent_outputs"] == ["9"]
    assert "not in the prompt" in only_error(result, "9")["details"], "a link to an unknown node is not itself an error"


def test_the_nodes_an_unknown_output_node_needs_are_still_checked(registry) -> None:
    prompt = txt2img()
    prompt["9"]["class_type"] = "SaveImageExtended"  # the output, from a plugin that is not installed
    prompt["5"]["inputs"]["width"] = "wide"
    result = validate_prompt(prompt, registry)
    assert result.error["type"] == "invalid_prompt" and "SaveImageExtended" in result.error["message"]
    assert set(result.node_errors) == {"9", "5"}
    assert only_error(result, "5")["type"] == "invalid_input_type"


@pytest.mark.parametrize(
    ("node", "reason"),
    [
        (["SaveImage"], "is a list, not an object"),
        ({"inputs": {}}, "has no class_type"),
        ({"class_type": ["SaveImage"], "inputs": {}}, "has a class_type that is a list, not a string"),
        ({"class_type": {"name": "SaveImage"}, "inputs": {}}, "has a class_type that is a dict, not a string"),
        ({"class_type": "SaveImage", "inputs": ["8", 0]}, "has inputs that are a list, not an object"),
    ],
)
def test_a_malformed_node_is_a_named_error_not_an_exception(registry, node, reason) -> None:
    prompt = txt2img()
    prompt["10"] = node
    result = validate_prompt(prompt, registry)
    assert result.error == {
        "type": "invalid_prompt",
        "message": f"Cannot execute because node 10 {reason}.",
        "details": "Node ID '#10'",
        "extra_info": {},
    }
    error = only_error(result, "10")
    assert error["type"] == "malformed_node" and error["details"] == f"the node {reason}"


def test_a_prompt_without_output_nodes_is_rejected(registry) -> None:
    prompt = txt2img()
    del prompt["9"]
    assert validate_prompt(prompt, registry).error["type"] == "prompt_no_outputs"


def test_targets_choose_which_output_nodes_run(registry) -> None:
    prompt = txt2img()
    prompt["10"] = {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "second"}}
    assert validate_prompt(prompt, registry).outputs == ["9", "10"]
    assert validate_prompt(prompt, registry, targets=["10"]).outputs == ["10"]
    assert validate_prompt(prompt, registry, targets=["3"]).error["type"] == "prompt_no_outputs"


# -- per-input errors --------------------------------------------------------------------------


def test_missing_required_input(registry) -> None:
    prompt = txt2img()
    del prompt["3"]["inputs"]["steps"]
    error = only_error(validate_prompt(prompt, registry), "3")
    assert error["type"] == "required_input_missing"
    assert error["extra_info"] == {"input_name": "steps"}


def test_hidden_inputs_are_never_required_and_optional_ones_may_be_absent(registry) -> None:
    prompt = {"1": {"class_type": "Sink", "inputs": {"count": 1, "mode": "a"}}}
    assert validate_prompt(prompt, registry).ok  # SaveImage in txt2img has hidden inputs too


def test_undeclared_inputs_are_ignored(registry) -> None:
    prompt = txt2img()
    prompt["3"]["inputs"]["legacy_option"] = ["nowhere", 0]
    assert validate_prompt(prompt, registry).ok


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (["99", 0], "not in the prompt"),
        (["4", 7], "no output 7"),
        (["4", 0, 1], "[node_id, output_slot]"),
        ([4, 0], "[node_id, output_slot]"),
    ],
)
def test_bad_links(registry, value, reason) -> None:
    prompt = txt2img()
    prompt["8"]["inputs"]["vae"] = value
    error = only_error(validate_prompt(prompt, registry), "8")
    assert error["type"] == "bad_linked_input"
    assert reason in error["details"]
    assert error["extra_info"]["input_name"] == "vae" and error["extra_info"]["received_value"] == value


def test_integral_float_slots_are_normalised_to_int(registry) -> None:
    prompt = txt2img()
    prompt["6"]["inputs"]["clip"] = ["4", 1.0]
    result = validate_prompt(prompt, registry)
    assert result.ok
    link = result.prompt["6"]["inputs"]["clip"]
    assert link == ["4", 1] and type(link[1]) is int
    assert type(prompt["6"]["inputs"]["clip"][1]) is float, "the caller's prompt is not modified"


@pytest.mark.parametrize(
    ("slot", "reason"),
    [(0.5, "the output slot 0.5 is not a whole number"), (True, "the output slot True is not a number")],
)
def test_a_fractional_or_boolean_slot_is_an_error_naming_the_node_and_input(registry, slot, reason) -> None:
    prompt = txt2img()
    prompt["8"]["inputs"]["vae"] = ["4", slot]
    error = only_error(validate_prompt(prompt, registry), "8")
    assert error["type"] == "bad_linked_input" and error["details"] == f"vae: {reason}"
    assert error["extra_info"]["input_name"] == "vae" and error["extra_info"]["received_value"] == ["4", slot]


def test_type_mismatch_names_both_ends(registry) -> None:
    prompt = txt2img()
    prompt["8"]["inputs"]["vae"] = ["4", 1]  # the CLIP output
    error = only_error(validate_prompt(prompt, registry), "8")
    assert error["type"] == "return_type_mismatch"
    assert "node 4 (CheckpointLoaderSimple) output 1 is CLIP" in error["details"]
    assert "node 8 (VAEDecode) input vae needs VAE" in error["details"]
    assert error["extra_info"]["received_type"] == "CLIP" and error["extra_info"]["linked_node"] == ["4", 1]


@pytest.mark.parametrize(
    ("slot", "input_name", "ok"),
    [
        (0, "count", True),
        (1, "mode", True),
        (2, "count", True),
        (3, "mask", True),
        (0, "mask", False),
        (1, "count", False),
    ],
)
def test_link_type_rules(registry, slot, input_name, ok) -> None:
    """INT feeds an INT widget, COMBO a combo, ``*`` anything, and ``IMAGE,MASK`` a MASK; not otherwise."""
    prompt = {
        "1": {"class_type": "Source", "inputs": {"value": 1}},
        "2": {"class_type": "Sink", "inputs": {"count": 1, "mode": "a", input_name: ["1", slot]}},
    }
    result = validate_prompt(prompt, registry)
    assert result.ok is ok
    if not ok:
        assert only_error(result, "2")["type"] == "return_type_mismatch"


def test_constants_are_coerced_and_written_back(registry) -> None:
    prompt = txt2img()
    prompt["3"]["inputs"].update(steps="25", cfg=7, seed=3.0)
    prompt["9"]["inputs"]["filename_prefix"] = 12
    result = validate_prompt(prompt, registry)
    assert result.ok
    sampler = result.prompt["3"]["inputs"]
    assert (sampler["steps"], type(sampler["cfg"]), type(sampler["seed"])) == (25, float, int)
    assert result.prompt["9"]["inputs"]["filename_prefix"] == "12"
    assert prompt["3"]["inputs"]["steps"] == "25", "the caller's prompt is not modified"


def test_boolean_words_and_wrapped_values(registry) -> None:
    @node(outputs=[], output_node=True)
    def Toggle(on=Boolean(False), numbers=Socket("FLOAT_LIST", optional=True)):
        """Carries a boolean and a list-valued constant."""

    local = NodeRegistry()
    local.register(spec_of(Toggle))
    result = validate_prompt(
        {"1": {"class_type": "Toggle", "inputs": {"on": "false", "numbers": {"__value__": [1.0, 2.0]}}}}, local
    )
    assert result.ok and result.prompt["1"]["inputs"] == {"on": False, "numbers": {"__value__": [1.0, 2.0]}}
    bad = validate_prompt({"1": {"class_type": "Toggle", "inputs": {"on": "maybe"}}}, local)
    assert only_error(bad, "1")["type"] == "invalid_input_type"


def test_unconvertible_constant(registry) -> None:
    prompt = txt2img()
    prompt["3"]["inputs"]["steps"] = "many"
    error = only_error(validate_prompt(prompt, registry), "3")
    assert error["type"] == "invalid_input_type"
    assert error["extra_info"]["received_value"] == "many" and error["extra_info"]["input_name"] == "steps"


def test_out_of_range_values(registry) -> None:
    prompt = txt2img()
    prompt["3"]["inputs"].update(steps=0, denoise=1.5)
    errors = {e["extra_info"]["input_name"]: e for e in errors_of(validate_prompt(prompt, registry), "3")}
    assert errors["steps"]["type"] == "value_smaller_than_min" and errors["steps"]["extra_info"]["received_value"] == 0
    assert errors["denoise"]["type"] == "value_bigger_than_max"


def test_value_not_in_list(registry) -> None:
    prompt = txt2img()
    prompt["4"]["inputs"]["ckpt_name"] = "x.safetensors"
    error = only_error(validate_prompt(prompt, registry), "4")
    assert error["type"] == "value_not_in_list"
    assert "'x.safetensors' not in ['v1-5-pruned-emaonly-fp16.safetensors'" in error["details"]
    assert error["extra_info"]["input_config"][0] == [
        "v1-5-pruned-emaonly-fp16.safetensors",
        "sub/dreamshaper.safetensors",
    ]


def test_long_combo_lists_are_summarised(registry) -> None:
    error = only_error(validate_prompt({"1": {"class_type": "BigCombo", "inputs": {"name": "nope"}}}, registry), "1")
    assert "(list of length 30)" in error["details"]
    assert error["extra_info"]["input_config"] is None


def test_path_separators_do_not_matter_for_combo_choices(registry) -> None:
    prompt = txt2img()
    prompt["4"]["inputs"]["ckpt_name"] = "sub\\dreamshaper.safetensors"
    result = validate_prompt(prompt, registry)
    assert result.ok
    assert result.prompt["4"]["inputs"]["ckpt_name"] == "sub/dreamshaper.safetensors"


# -- custom validation -------------------------------------------------------------------------


def test_custom_validation_message_is_reported(registry) -> None:
    error = only_error(
        validate_prompt({"1": {"class_type": "EvenOnly", "inputs": {"count": 3, "label": "x"}}}, registry), "1"
    )
    assert error["type"] == "custom_validation_failed" and "count 3 is odd" in error["details"]


def test_inputs_the_validator_takes_skip_builtin_range_checks(registry) -> None:
    assert validate_prompt({"1": {"class_type": "EvenOnly", "inputs": {"count": 8, "label": "x"}}}, registry).ok


def test_a_kwargs_validator_takes_every_input(registry) -> None:
    prompt = {"1": {"class_type": "KwargsValidated", "inputs": {"strength": 5.0, "mode": "z"}}}
    assert validate_prompt(prompt, registry).ok


def test_an_exception_in_the_validator_is_reported(registry) -> None:
    error = only_error(validate_prompt({"1": {"class_type": "Fragile", "inputs": {"count": 1}}}, registry), "1")
    assert error["type"] == "exception_during_inner_validation" and "validator broke" in error["details"]


def test_a_validator_that_wants_types_replaces_the_link_type_check(registry) -> None:
    seen_types.clear()
    prompt = {
        "1": {"class_type": "Source", "inputs": {"value": 1}},
        "2": {"class_type": "TypeChecker", "inputs": {"value": ["1", 0]}},
    }
    assert validate_prompt(prompt, registry).ok
    assert seen_types == [{"value": "INT"}]


def test_a_node_whose_inputs_cannot_be_read(registry) -> None:
    error = only_error(validate_prompt({"1": {"class_type": "BrokenInputs", "inputs": {}}}, registry), "1")
    assert error["type"] == "exception_during_validation" and "model folder unreadable" in error["details"]


# -- many problems, partial success, cycles --------------------------------------------------


def test_every_problem_is_reported_at_once(registry) -> None:
    prompt = txt2img()
    prompt["4"]["inputs"]["ckpt_name"] = "missing.safetensors"
    prompt["5"]["inputs"]["width"] = 1
    del prompt["6"]["inputs"]["text"]
    prompt["3"]["inputs"]["sampler_name"] = "euler_z"
    prompt["8"]["inputs"]["vae"] = ["4", 1]
    result = validate_prompt(prompt, registry)
    found = {(node_id, e["type"]) for node_id, entry in result.node_errors.items() for e in entry["errors"]}
    assert found == {
        ("4", "value_not_in_list"),
        ("5", "value_smaller_than_min"),
        ("6", "required_input_missing"),
        ("3", "value_not_in_list"),
        ("8", "return_type_mismatch"),
    }
    assert result.error["type"] == "prompt_outputs_failed_validation"
    assert len(result.error["details"].splitlines()) == 5
    assert all(entry["dependent_outputs"] == ["9"] for entry in result.node_errors.values())


def test_valid_outputs_still_run_when_another_fails(registry) -> None:
    prompt = txt2img()
    prompt["10"] = {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 1]}}
    prompt["11"] = {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "broken"}}
    result = validate_prompt(prompt, registry)
    assert (result.ok, result.error, result.outputs) == (True, None, ["9"])
    assert list(result.node_errors) == ["10"]
    assert result.node_errors["10"]["dependent_outputs"] == ["11"]
    assert result.node_errors["10"]["class_type"] == "VAEDecode"


def test_a_shared_broken_node_lists_every_output_it_takes_down(registry) -> None:
    prompt = txt2img()
    prompt["10"] = {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "copy"}}
    prompt["5"]["inputs"]["batch_size"] = 0
    result = validate_prompt(prompt, registry)
    assert result.node_errors["5"]["dependent_outputs"] == ["9", "10"]
    assert result.outputs == []


def test_nodes_not_needed_by_any_output_are_not_checked(registry) -> None:
    prompt = txt2img()
    prompt["20"] = {"class_type": "KSampler", "inputs": {}}
    assert validate_prompt(prompt, registry).ok


def test_a_cycle_names_every_node_in_it(registry) -> None:
    prompt = {
        "1": {"class_type": "Loop", "inputs": {"previous": ["3", 0]}},
        "2": {"class_type": "Loop", "inputs": {"previous": ["1", 0]}},
        "3": {"class_type": "Loop", "inputs": {"previous": ["2", 0]}},
        "4": {"class_type": "LatentSink", "inputs": {"samples": ["3", 0]}},
    }
    result = validate_prompt(prompt, registry)
    assert not result.ok
    assert set(result.node_errors) == {"1", "2", "3"}
    for node_id in ("1", "2", "3"):
        error = only_error(result, node_id)
        assert error["type"] == "dependency_cycle"
        assert sorted(error["extra_info"]["nodes"]) == ["1", "2", "3"]
        assert result.node_errors[node_id]["dependent_outputs"] == ["4"]


def test_a_node_linked_to_itself_is_a_cycle(registry) -> None:
    prompt = {
        "1": {"class_type": "Loop", "inputs": {"previous": ["1", 0]}},
        "2": {"class_type": "LatentSink", "inputs": {"samples": ["1", 0]}},
    }
    error = only_error(validate_prompt(prompt, registry), "1")
    assert error["type"] == "dependency_cycle" and error["extra_info"]["nodes"] == ["1"]


def test_the_callers_prompt_is_never_modified(registry) -> None:
    prompt = txt2img()
    prompt["4"]["inputs"]["ckpt_name"] = "sub\\dreamshaper.safetensors"
    before = copy.deepcopy(prompt)
    validate_prompt(prompt, registry)
    assert prompt == before


def test_a_long_chain_validates_without_recursion(registry) -> None:
    prompt = {"0": {"class_type": "Loop", "inputs": {}}}
    for index in range(1, 3000):
        prompt[str(index)] = {"class_type": "Loop", "inputs": {"previous": [str(index - 1), 0]}}
    prompt["sink"] = {"class_type": "LatentSink", "inputs": {"samples": ["2999", 0]}}
    assert validate_prompt(prompt, registry).outputs == ["sink"]
