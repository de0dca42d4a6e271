"""``loom plugins``: each pack's load reported with what explains a failure, and installs only on request."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from server import plugins_cli
from server.cli import main


def _pack(folder: Path, name: str, init: str, requirements: str | None = None) -> Path:
    pack = folder / name
    pack.mkdir(parents=True)
    (pack / "__init__.py").write_text(init)
    if requirements is not None:
        (pack / "requirements.txt").write_text(requirements)
    return pack


GOOD = """
class Twice:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 1})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "test"

    def run(self, value):
        return (value * 2,)


NODE_CLASS_MAPPINGS = {"CliTwice": Twice}
"""
# A harmless process whose command line reads like an install, as `subprocess.run([pip, "install", ...])` does.
INSTALLS = """
import subprocess, sys
subprocess.run([sys.executable, "-c", "pass", "pip", "install", "left-pad"], check=True)
NODE_CLASS_MAPPINGS = {}
"""


@pytest.fixture
def packs(tmp_path: Path) -> Path:
    folder = tmp_path / "packs"
    _pack(folder, "cli_good_pack", GOOD, requirements="pytest>=7  # installed\n# a comment\n--extra-index-url x\n")
    _pack(folder, "cli_broken_pack", "import loom_cli_missing_module\n", requirements="loom-cli-missing-dist==1.0\n")
    _pack(folder, "cli_installing_pack", INSTALLS)
    return folder


def test_list_reports_each_pack_with_its_failure_and_uninstalled_requirements(
    packs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["plugins", "list", "--base-dir", str(tmp_path), "--extra-custom-nodes-dir", str(packs)]
    assert main(args) == 0
    blocks = _blocks(capsys.readouterr().out)
    assert blocks["cli_good_pack"][0].startswith("cli_good_pack: loaded, 1 nodes")
    assert len(blocks["cli_good_pack"]) == 1  # its one requirement (pytest) is installed
    broken = "\n".join(blocks["cli_broken_pack"])
    assert broken.startswith("cli_broken_pack: failed, 0 nodes")
    assert "missing Python module 'loom_cli_missing_module'" in broken
    assert "not installed from requirements.txt: loom-cli-missing-dist" in broken
    assert "loom plugins install-requirements cli_broken_pack" in broken


def _blocks(out: str) -> dict[str, list[str]]:
    """Each pack's lines, by pack name: its status line and the indented lines under it."""
    blocks: dict[str, list[str]] = {}
    for line in out.splitlines():
        if line.startswith(" "):
            blocks[list(blocks)[-1]].append(line.strip())
        elif ":" in line:
            blocks[line.split(":", 1)[0]] = [line]
    return blocks


def test_a_pack_that_installs_packages_while_imported_is_reported(
    packs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    assert main(["plugins", "list", "--base-dir", str(tmp_path), "--extra-custom-nodes-dir", str(packs)]) == 0
    assert "ran an install while imported: " in capsys.readouterr().out
    assert any("installs packages while it is imported" in record.getMessage() for record in caplog.records)


def test_missing_requirements_reads_names_and_skips_options_urls_and_comments(tmp_path: Path) -> None:
    pack = _pack(
        tmp_path,
        "p",
        "",
        requirements="torch>=2\nloom-absent-a[extra]~=1.0; python_version>'3'\n# loom-absent-b\n"
        "-r other.txt\ngit+https://example.invalid/x.git\n./local\n",
    )
    assert plugins_cli.missing_requirements(pack) == ["loom-absent-a"]
    assert plugins_cli.missing_requirements(tmp_path / "absent") == []


def test_install_requirements_runs_pip_on_the_pack_s_file_in_loom_s_environment(
    packs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[list[str]] = []

    class Done:
        returncode = 0

    monkeypatch.setattr(plugins_cli.subprocess, "run", lambda command, check: ran.append(command) or Done())
    assert main(["plugins", "install-requirements", "cli_broken_pack", "--extra-custom-nodes-dir", str(packs)]) == 0
    assert ran == [[sys.executable, "-m", "pip", "install", "-r", str(packs / "cli_broken_pack" / "requirements.txt")]]


@pytest.mark.parametrize(
    ("name", "message"), [("nope", "no pack named 'nope'"), ("cli_installing_pack", "has no requirements.txt")]
)
def test_install_requirements_refuses_an_unknown_pack_or_one_without_requirements(
    packs: Path, name: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plugins", "install-requirements", name, "--extra-custom-nodes-dir", str(packs)]) == 2
    assert message in capsys.readouterr().err
