"""``--workers``: its three forms, and a clear error when Ray is asked for but not installed."""

from __future__ import annotations

import argparse
import importlib.util

import pytest

from server.config import ServerConfig
from server.distributed.spec import DistributedUnavailableError, WorkersSpec, parse_workers, require_ray
from server.serve import add_serve_arguments, config_from_args


@pytest.mark.parametrize(
    "text, spec",
    [
        ("local", WorkersSpec("local")),
        ("ray-local:3", WorkersSpec("ray-local", count=3)),
        ("ray://auto", WorkersSpec("ray", address="auto")),
        ("ray://head.example:10001", WorkersSpec("ray", address="head.example:10001")),
    ],
)
def test_the_three_forms_parse_and_print_back(text, spec):
    assert parse_workers(text) == spec and str(spec) == text
    assert spec.uses_ray is (text != "local")


@pytest.mark.parametrize("text", ["ray-local:0", "ray-local:", "ray:2", "ray://", "threads"])
def test_anything_else_is_refused_naming_the_forms(text):
    with pytest.raises(ValueError, match="--workers"):
        parse_workers(text)
    with pytest.raises(ValueError, match="--workers"):
        ServerConfig(workers=text)


def without_ray(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "ray" else real(name, *args))


def test_ray_workers_without_ray_name_the_distributed_extra(monkeypatch, capsys):
    without_ray(monkeypatch)
    with pytest.raises(DistributedUnavailableError, match="'distributed' extra") as caught:
        require_ray("ray-local:2")
    assert caught.value.spec == "ray-local:2"
    parser = argparse.ArgumentParser(prog="loom serve")
    add_serve_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--workers", "ray-local:2"])
    assert "needs Ray, which is not installed" in capsys.readouterr().err
    assert config_from_args(parser.parse_args([])).workers == "local"


def test_the_flag_reaches_the_config():
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    assert config_from_args(parser.parse_args(["--workers", "ray-local:2"])).workers_spec == WorkersSpec(
        "ray-local", count=2
    )
