"""One runtime per installation: built by one function, lent to node code, never process-wide."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from graph.executor import Executor
from graph.registry import NodeRegistry
from graph.services import current_services, services_context
from nodes import register_builtin_nodes
from nodes.compute import ComputeSettingsError
from nodes.extra_model_paths import ExtraModelPathsError
from nodes.runtime import RuntimeNotConfiguredError, RuntimeOptions, build_runtime, current_runtime, list_models


def test_node_code_outside_any_prompt_or_request_is_told_how_to_get_a_runtime() -> None:
    with services_context(None), pytest.raises(RuntimeNotConfiguredError, match="services=build_runtime"):
        current_runtime()


def test_two_runtimes_in_one_process_keep_their_own_folders_and_models(tmp_path: Path) -> None:
    first = build_runtime(RuntimeOptions(tmp_path / "a", device="cpu"))
    second = build_runtime(RuntimeOptions(tmp_path / "b", device="cpu"))
    (first.folders.models / "checkpoints").mkdir()
    (first.folders.models / "checkpoints" / "mine.safetensors").write_bytes(b"x")
    with services_context(first):
        assert list_models("checkpoints") == ["mine.safetensors"]
        with services_context(second):
            assert list_models("checkpoints") == []
            assert current_runtime().folders.base == (tmp_path / "b").resolve()
        assert current_runtime() is first


def test_the_executor_lends_its_runtime_to_the_nodes_it_runs(tmp_path: Path) -> None:
    runtime = build_runtime(RuntimeOptions(tmp_path, device="cpu"))
    registry = NodeRegistry()
    register_builtin_nodes(registry)
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "lent"}},
    }
    with services_context(None):
        record = Executor(registry, services=runtime).execute(prompt, ["2"], prompt_id="p")
        assert current_services() is None, "lent for the prompt only"
    assert record.error is None
    assert (runtime.folders.output / "lent_00001_.png").is_file()


@pytest.mark.parametrize(("options", "error", "named"), [
    (dict(device="tpu:0"), ValueError, "device 'tpu:0'"),
    (dict(dtype="fp8"), ValueError, "dtype 'fp8'"),
    (dict(preview_method="fast"), ValueError, "preview method 'fast'"),
])  # fmt: skip
def test_bad_option_names_are_refused_when_the_options_are_made(options: dict, error: type, named: str) -> None:
    with pytest.raises(error, match=named):
        RuntimeOptions(**options)


def test_a_settings_problem_is_found_when_the_runtime_is_built(tmp_path: Path) -> None:
    with pytest.raises(ExtraModelPathsError, match="missing.yaml"):
        build_runtime(RuntimeOptions(tmp_path, extra_model_paths=(tmp_path / "missing.yaml",)))
    if not torch.cuda.is_available():
        with pytest.raises(ComputeSettingsError, match="no CUDA device"):
            build_runtime(RuntimeOptions(tmp_path, device="cuda"))
