"""The real server process: flags, and a hard kill that loses no queued prompt and no history."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from server.config import REPO_ROOT
from server.serve import add_serve_arguments, config_from_args


def test_serve_flags_build_the_config(tmp_path, monkeypatch):
    monkeypatch.setenv("LOOM_AUTH_TOKEN", "env-token")
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    args = parser.parse_args(
        [
            "--port",
            "9000",
            "--base-dir",
            str(tmp_path),
            "--output-dir",
            str(tmp_path / "out"),
            "--cache-budget",
            "512M",
            "--max-upload-size",
            "2",
            "--enable-cors-header",
            "--preview-method",
            "none",
        ]
    )
    config = config_from_args(args)
    assert (config.host, config.port, config.cache_budget_bytes, config.max_upload_bytes) == (
        "127.0.0.1",
        9000,
        512 * 2**20,
        2 * 2**20,
    )
    assert config.output_path == tmp_path / "out" and config.input_path == tmp_path / "input"
    assert config.auth_token == "env-token" and config.cors_origin == "*" and config.preview_method == "none"
    assert config.frontend_root == REPO_ROOT / "web"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(base: Path, port: int) -> subprocess.Popen:
    env = {key: value for key, value in os.environ.items() if key != "LOOM_AUTH_TOKEN"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.server.standin_server",
            "--port",
            str(port),
            "--base-dir",
            str(base),
            "--frontend-root",
            str(base / "web"),
        ],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def call(port: int, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    with urllib.request.urlopen(
        urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data), timeout=5
    ) as response:
        return json.loads(response.read() or b"null")


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = predicate()
        except OSError:
            result = None
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def prompt(seconds: float, text: str) -> dict:
    return {
        "prompt": {
            "1": {"class_type": "Wait", "inputs": {"seconds": seconds, "text": text}},
            "2": {"class_type": "Record", "inputs": {"value": ["1", 0]}},
        }
    }


def test_a_hard_kill_loses_nothing_and_pending_prompts_resume(tmp_path):
    port = free_port()
    server = start(tmp_path, port)
    try:
        wait_for(lambda: call(port, "/prompt"), 30, "the server to start")
        early = call(port, "/prompt", prompt(0, "early"))["prompt_id"]
        wait_for(lambda: call(port, f"/history/{early}"), 10, "the first prompt")
        slow = call(port, "/prompt", prompt(1.0, "slow"))["prompt_id"]
        queued = [call(port, "/prompt", prompt(0, f"q{n}"))["prompt_id"] for n in range(3)]
        wait_for(
            lambda: [item[1] for item in call(port, "/queue")["queue_running"]] == [slow], 10, "the slow prompt to run"
        )
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait()

    server = start(tmp_path, port)
    try:
        wait_for(lambda: call(port, "/prompt"), 30, "the restarted server")
        for prompt_id in [slow, *queued]:
            entry = wait_for(lambda p=prompt_id: call(port, f"/history/{p}").get(p), 15, f"prompt {prompt_id}")
            assert entry["status"]["status_str"] == "success"
        history = call(port, "/history")
        assert list(history) == [early, slow, *queued]
        assert history[queued[2]]["outputs"]["2"] == {"text": ["q2"]}
        next_number = call(port, "/prompt", prompt(0, "after"))["number"]
        assert next_number > max(entry["prompt"][0] for entry in history.values())
    finally:
        server.terminate()
        server.wait(10)


def test_every_dtype_flag_has_a_meaning_for_the_nodes() -> None:
    from nodes.compute import DTYPES
    from nodes.runtime_options import DTYPE_MODES

    assert set(DTYPE_MODES) == {"auto", *DTYPES}
