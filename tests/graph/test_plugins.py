"""Plugins load from custom_nodes folders, run like built-ins, and a broken one breaks nothing else.

Every plugin here is written to a temporary folder as its author would write it for ComfyUI, then
loaded through ``load_plugins`` and, where it matters, validated and run by the real executor.
"""

from __future__ import annotations

import logging
import sys
import textwrap
from pathlib import Path

import pytest

from graph.declare import Int, Output, node, spec_of
from graph.executor import Executor
from graph.plugins import PluginReport, PluginStatus, discover_plugins, import_times_table, load_plugins
from graph.registry import NodeRegistry
from graph.validation import validate_prompt


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


#: A ComfyUI plugin as authors write them: classes in a submodule, a relative import, JS beside it.
COMFY_STYLE_PACK = {
    "comfy_style_pack/__init__.py": """
        from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

        WEB_DIRECTORY = "./js"
        __all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
    """,
    "comfy_style_pack/js/words.js": "export default { name: 'comfy_style_pack.words' };\n",
    "comfy_style_pack/helpers.py": """
        CALLS = []

        def shout(word):
            return word.upper() + "!"
    """,
    "comfy_style_pack/nodes.py": """
        import hashlib

        from .helpers import CALLS, shout


        class ReadNote:
            @classmethod
            def INPUT_TYPES(s):
                return {"required": {"path": ("STRING", {"default": "note.txt"})}}

            RETURN_TYPES = ("STRING",)
            FUNCTION = "read"
            CATEGORY = "words"

            @classmethod
            def IS_CHANGED(s, path):
                with open(path, "rb") as f:
                    return hashlib.sha256(f.read()).hexdigest()

            def read(self, path):
                CALLS.append(("ReadNote", path))
                with open(path) as f:
                    return (f.read(),)


        class SplitWords:
            @classmethod
            def INPUT_TYPES(s):
                return {"required": {
                    "text": ("STRING", {"multiline": True, "default": ""}),
                    "repeat": ("INT", {"default": 1, "min": 1, "max": 10}),
                }}

            RETURN_TYPES = ("STRING",)
            RETURN_NAMES = ("word",)
            OUTPUT_IS_LIST = (True,)
            FUNCTION = "split"
            CATEGORY = "words"

            def split(self, text, repeat):
                CALLS.append(("SplitWords", text))
                return (text.split() * repeat,)


        class Shout:
            @classmethod
            def INPUT_TYPES(s):
                return {"required": {"word": ("STRING", {"forceInput": True})}}

            RETURN_TYPES = ("STRING",)
            FUNCTION = "run"
            CATEGORY = "words"

            def run(self, word):
                CALLS.append(("Shout", word))
                return (shout(word),)


        class PickOne:
            @classmethod
            def INPUT_TYPES(s):
                return {"required": {
                    "use_first": ("BOOLEAN", {"default": True}),
                    "first": ("STRING", {"lazy": True, "forceInput": True}),
                    "second": ("STRING", {"lazy": True, "forceInput": True}),
                }}

            RETURN_TYPES = ("STRING",)
            FUNCTION = "pick"
            CATEGORY = "words"

            def check_lazy_status(self, use_first, first=None, second=None):
                if use_first and first is None:
                    return ["first"]
                if not use_first and second is None:
                    return ["second"]
                return []

            def pick(self, use_first, first, second):
                return (first if use_first else second,)


        class JoinWords:
            @classmethod
            def INPUT_TYPES(s):
                return {
                    "required": {
                        "words": ("STRING", {"forceInput": True}),
                        "separator": ("STRING", {"default": " "}),
                    },
                    "hidden": {"unique_id": "UNIQUE_ID", "prompt": "PROMPT"},
                }

            RETURN_TYPES = ()
            INPUT_IS_LIST = True
            OUTPUT_NODE = True
            FUNCTION = "join"
            CATEGORY = "words"

            @classmethod
            def VALIDATE_INPUTS(s, separator):
                if len(separator) > 3:
                    return "separator must be at most 3 characters"
                return True

            def join(self, words, separator, unique_id, prompt):
                CALLS.append(("JoinWords", tuple(words)))
                me = unique_id[0]
                return {"ui": {"text": [separator[0].join(words)], "node": [me],
                               "class": [prompt[0][me]["class_type"]]}}


        NODE_CLASS_MAPPINGS = {
            "ReadNote": ReadNote,
            "SplitWords": SplitWords,
            "Shout": Shout,
            "PickOne": PickOne,
            "JoinWords": JoinWords,
        }
        NODE_DISPLAY_NAME_MAPPINGS = {"JoinWords": "Join Words"}
    """,
}


def words_prompt(note: Path, separator: str = "-") -> dict:
    return {
        "1": {"class_type": "ReadNote", "inputs": {"path": str(note)}},
        "2": {"class_type": "SplitWords", "inputs": {"text": ["1", 0], "repeat": 1}},
        "3": {"class_type": "Shout", "inputs": {"word": ["2", 0]}},
        "4": {"class_type": "SplitWords", "inputs": {"text": "never needed", "repeat": 1}},
        "5": {"class_type": "PickOne", "inputs": {"use_first": True, "first": ["3", 0], "second": ["4", 0]}},
        "6": {"class_type": "JoinWords", "inputs": {"words": ["5", 0], "separator": separator}},
    }


def by_name(reports: list[PluginReport]) -> dict[str, PluginReport]:
    return {report.name: report for report in reports}


@node(outputs=[Output("INT")])
def Const(value=Int(0)):
    return value


def registry_with_builtin() -> NodeRegistry:
    registry = NodeRegistry()
    registry.register(spec_of(Const), builtin=True)
    return registry


@pytest.fixture
def comfy_pack(tmp_path: Path) -> tuple[NodeRegistry, PluginReport, Path]:
    folder = write_tree(tmp_path / "custom_nodes", COMFY_STYLE_PACK)
    registry = registry_with_builtin()
    [report] = load_plugins(registry, [folder])
    note = tmp_path / "note.txt"
    note.write_text("hello plugin world")
    return registry, report, note


def plugin_calls() -> list:
    return sys.modules["comfy_style_pack.helpers"].CALLS


# --- a ComfyUI-style plugin loads and runs unchanged ------------------------------------------------


def test_comfyui_plugin_loads_with_its_nodes_module_and_web_folder(comfy_pack) -> None:
    registry, report, _ = comfy_pack
    assert report.status is PluginStatus.LOADED, report.traceback
    assert report.nodes == ["ReadNote", "SplitWords", "Shout", "PickOne", "JoinWords"]
    assert report.module_name == "comfy_style_pack" and report.alias_reason is None
    assert report.web_directory == (report.path / "js").resolve()
    assert report.error is None and report.refused == []
    info = registry.get("JoinWords").object_info()
    assert info["display_name"] == "Join Words"
    assert info["python_module"] == "custom_nodes.comfy_style_pack"
    assert info["input"]["hidden"] == {"unique_id": "UNIQUE_ID", "prompt": "PROMPT"}
    assert registry.get("SplitWords").object_info()["output_is_list"] == [True]


def test_comfyui_plugin_runs_through_validation_and_the_executor(comfy_pack) -> None:
    registry, _, note = comfy_pack
    checked = validate_prompt(words_prompt(note), registry)
    assert checked.ok, checked.node_errors
    record = Executor(registry).execute(checked.prompt, checked.outputs, prompt_id="p1")

    assert record.error is None, record.error
    assert record.outputs["6"] == {"text": ["HELLO!-PLUGIN!-WORLD!"], "node": ["6"], "class": ["JoinWords"]}
    # The lazy branch nobody asked for never ran; the list output fed Shout one word at a time.
    assert ("SplitWords", "never needed") not in plugin_calls()
    assert [call for call in plugin_calls() if call[0] == "Shout"] == [
        ("Shout", w) for w in ("hello", "plugin", "world")
    ]


def test_is_changed_keeps_the_cache_until_the_file_changes(comfy_pack) -> None:
    registry, _, note = comfy_pack
    executor = Executor(registry)
    prompt = validate_prompt(words_prompt(note), registry).prompt
    executor.execute(prompt, ["6"], prompt_id="first")
    plugin_calls().clear()

    again = executor.execute(prompt, ["6"], prompt_id="again")
    assert plugin_calls() == []
    assert again.outputs["6"]["text"] == ["HELLO!-PLUGIN!-WORLD!"]

    note.write_text("changed note")
    changed = executor.execute(prompt, ["6"], prompt_id="changed")
    assert ("ReadNote", str(note)) in plugin_calls()
    assert changed.outputs["6"]["text"] == ["CHANGED!-NOTE!"]


def test_validate_inputs_of_a_plugin_rejects_the_prompt_with_its_message(comfy_pack) -> None:
    registry, _, note = comfy_pack
    checked = validate_prompt(words_prompt(note, separator="----"), registry)
    assert not checked.ok
    [error] = checked.node_errors["6"]["errors"]
    assert error["type"] == "custom_validation_failed"
    assert "separator must be at most 3 characters" in error["details"]


# --- one broken plugin never stops the others ------------------------------------------------------

FAILING_PLUGINS = {
    "syntax_error.py": "def broken(:\n    pass\n",
    "missing_dependency/__init__.py": """
        import loom_test_no_such_dependency
        NODE_CLASS_MAPPINGS = {}
    """,
    "bad_relative_import/__init__.py": """
        from .not_there import Thing
        NODE_CLASS_MAPPINGS = {"Thing": Thing}
    """,
    "raises_at_import/__init__.py": 'raise RuntimeError("no GPU driver found")\n',
    "exits_at_import.py": "import sys\nsys.exit(1)\n",
    "mappings_not_a_dict.py": "NODE_CLASS_MAPPINGS = ['NotADict']\n",
    "no_exports.py": "def helper():\n    return 1\n",
    "v3_only.py": "def comfy_entrypoint():\n    return None\n",
    "not_a_package/readme.txt": "a folder without __init__.py\n",
    "old_pack.disabled/__init__.py": "raise AssertionError('a disabled pack must not be imported')\n",
    "old_file.py.disabled": "raise AssertionError('a disabled file must not be imported')\n",
    "notes.txt": "not a plugin\n",
    "__pycache__/stale.cpython-312.pyc": "",
    "partly_broken/__init__.py": """
        class Good:
            @classmethod
            def INPUT_TYPES(cls):
                return {"required": {"value": ("INT", {"default": 1})}}
            RETURN_TYPES = ("INT",)
            FUNCTION = "run"
            def run(self, value):
                return (value + 1,)

        class InputsRaise:
            @classmethod
            def INPUT_TYPES(cls):
                raise KeyError("models/checkpoints")
            RETURN_TYPES = ("INT",)
            FUNCTION = "run"

        class NoReturnTypes:
            @classmethod
            def INPUT_TYPES(cls):
                return {"required": {}}
            FUNCTION = "run"

        class Const:
            @classmethod
            def INPUT_TYPES(cls):
                return {"required": {}}
            RETURN_TYPES = ("INT",)
            FUNCTION = "run"
            def run(self):
                return (666,)

        NODE_CLASS_MAPPINGS = {"PartlyGood": Good, "InputsRaise": InputsRaise, "NoReturnTypes": NoReturnTypes,
                               "Const": Const}
    """,
    "web_outside/__init__.py": """
        from .nodes import NODE_CLASS_MAPPINGS
        WEB_DIRECTORY = "../comfy_style_pack/js"
    """,
    "web_outside/nodes.py": """
        class Echo:
            @classmethod
            def INPUT_TYPES(cls):
                return {"required": {"value": ("INT", {})}}
            RETURN_TYPES = ("INT",)
            FUNCTION = "run"
            def run(self, value):
                return (value,)
        NODE_CLASS_MAPPINGS = {"WebOutsideEcho": Echo}
    """,
    "web_missing/__init__.py": """
        from .nodes import NODE_CLASS_MAPPINGS
        WEB_DIRECTORY = "./js"
    """,
    "web_missing/nodes.py": """
        class Echo:
            @classmethod
            def INPUT_TYPES(cls):
                return {"required": {"value": ("INT", {})}}
            RETURN_TYPES = ("INT",)
            FUNCTION = "run"
            def run(self, value):
                return (value,)
        NODE_CLASS_MAPPINGS = {"WebMissingEcho": Echo}
    """,
}


@pytest.fixture
def crowded(tmp_path: Path) -> tuple[NodeRegistry, dict[str, PluginReport], Path]:
    folder = write_tree(tmp_path / "custom_nodes", {**COMFY_STYLE_PACK, **FAILING_PLUGINS})
    registry = registry_with_builtin()
    reports = load_plugins(registry, [folder])
    note = tmp_path / "note.txt"
    note.write_text("still works")
    return registry, by_name(reports), note


def test_every_entry_gets_a_report_and_junk_is_ignored(crowded) -> None:
    _, reports, _ = crowded
    assert set(reports) == {
        "comfy_style_pack", "syntax_error", "missing_dependency", "bad_relative_import", "raises_at_import",
        "exits_at_import", "mappings_not_a_dict", "no_exports", "v3_only", "not_a_package", "old_pack", "old_file",
        "partly_broken", "web_outside", "web_missing",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("syntax_error", "SyntaxError"),
        ("missing_dependency", "missing Python module 'loom_test_no_such_dependency'"),
        ("bad_relative_import", "missing Python module 'bad_relative_import.not_there'"),
        ("raises_at_import", "RuntimeError: no GPU driver found"),
        ("exits_at_import", "SystemExit: 1"),
        ("mappings_not_a_dict", "NODE_CLASS_MAPPINGS is a list"),
    ],
)
def test_a_plugin_that_fails_to_import_is_reported_with_its_traceback(crowded, name: str, message: str) -> None:
    _, reports, _ = crowded
    report = reports[name]
    assert report.status is PluginStatus.FAILED
    assert message in report.error
    assert report.nodes == []
    assert "Traceback" in report.traceback
    assert name not in sys.modules, "a half-imported module must not linger"


@pytest.mark.parametrize(
    ("name", "status", "message"),
    [
        ("no_exports", PluginStatus.SKIPPED, "exports no NODE_CLASS_MAPPINGS"),
        ("v3_only", PluginStatus.SKIPPED, "comfy_entrypoint"),
        ("not_a_package", PluginStatus.SKIPPED, "no __init__.py"),
        ("old_pack", PluginStatus.DISABLED, ".disabled"),
        ("old_file", PluginStatus.DISABLED, ".disabled"),
    ],
)
def test_entries_that_are_not_loadable_packs_are_reported_not_imported(crowded, name, status, message) -> None:
    _, reports, _ = crowded
    assert reports[name].status is status
    assert message in reports[name].error


def test_bad_nodes_are_refused_one_by_one_and_the_packs_good_nodes_load(crowded) -> None:
    registry, reports, _ = crowded
    report = reports["partly_broken"]
    assert report.status is PluginStatus.LOADED
    assert report.nodes == ["PartlyGood"]
    refused = {refusal.class_type: refusal for refusal in report.refused}
    assert set(refused) == {"InputsRaise", "NoReturnTypes", "Const"}
    assert "KeyError" in refused["InputsRaise"].reason and "models/checkpoints" in refused["InputsRaise"].reason
    assert "Traceback" in refused["InputsRaise"].traceback
    assert "lacks RETURN_TYPES" in refused["NoReturnTypes"].reason
    assert "built-in" in refused["Const"].reason
    assert "InputsRaise" not in registry and "NoReturnTypes" not in registry
    assert registry.get("Const") is spec_of(Const), "the built-in must survive a plugin that reuses its name"


def test_a_bad_web_directory_is_reported_and_the_nodes_still_load(crowded) -> None:
    registry, reports, _ = crowded
    outside, missing = reports["web_outside"], reports["web_missing"]
    assert outside.web_directory is None and "outside the plugin folder" in outside.web_error
    assert missing.web_directory is None and "is not a folder" in missing.web_error
    assert outside.nodes == ["WebOutsideEcho"] and "WebOutsideEcho" in registry
    assert missing.nodes == ["WebMissingEcho"]


def test_the_good_plugin_still_runs_beside_the_broken_ones(crowded) -> None:
    registry, reports, note = crowded
    assert reports["comfy_style_pack"].status is PluginStatus.LOADED
    checked = validate_prompt(words_prompt(note), registry)
    record = Executor(registry).execute(checked.prompt, checked.outputs, prompt_id="p")
    assert record.outputs["6"]["text"] == ["STILL!-WORKS!"]


def test_failures_are_logged_and_flagged_in_the_import_times_table(tmp_path: Path, caplog) -> None:
    folder = write_tree(tmp_path / "custom_nodes", {**COMFY_STYLE_PACK, **FAILING_PLUGINS})
    with caplog.at_level(logging.INFO, logger="graph.plugins"):
        reports = load_plugins(registry_with_builtin(), [folder])
    assert "cannot import plugin raises_at_import" in caplog.text
    assert "RuntimeError: no GPU driver found" in caplog.text
    assert "node InputsRaise refused" in caplog.text
    table = import_times_table(reports)
    assert table.splitlines()[0] == "Plugin import times:"
    [failed_line] = [line for line in table.splitlines() if "raises_at_import" in line]
    assert "(IMPORT FAILED)" in failed_line
    assert not any("old_pack" in line for line in table.splitlines()), "disabled packs were never timed"
    assert all(report.seconds >= 0 for report in reports)


def test_a_node_that_raises_when_run_fails_its_prompt_and_the_next_prompt_runs(crowded, tmp_path: Path) -> None:
    registry, _, note = crowded
    executor = Executor(registry)
    prompt = words_prompt(tmp_path / "deleted.txt")
    failed = executor.execute(prompt, ["6"], prompt_id="bad")
    assert failed.error is not None and failed.error["node_id"] == "1"
    good = executor.execute(validate_prompt(words_prompt(note), registry).prompt, ["6"], prompt_id="good")
    assert good.outputs["6"]["text"] == ["STILL!-WORKS!"]


# --- folders, names and switches --------------------------------------------------------------------

PACK_WITH_HELPER = """
    from .helper import SUFFIX
    from graph.declare import Output, String, node

    @node(outputs=[Output("STRING")], class_type="Tag{n}")
    def tag(text=String("x")):
        return text + SUFFIX
"""


def test_two_folders_with_a_pack_of_the_same_name_do_not_share_a_module(tmp_path: Path) -> None:
    first = write_tree(
        tmp_path / "a", {"pack/__init__.py": PACK_WITH_HELPER.format(n=1), "pack/helper.py": "SUFFIX = '-a'\n"}
    )
    second = write_tree(
        tmp_path / "b", {"pack/__init__.py": PACK_WITH_HELPER.format(n=2), "pack/helper.py": "SUFFIX = '-b'\n"}
    )
    registry = NodeRegistry()
    reports = load_plugins(registry, [first, second])
    assert [r.module_name for r in reports] == ["pack", "pack__2"]
    assert [r.key for r in reports] == ["pack", "pack__2"]
    assert reports[0].alias_reason is None and "loaded before" in reports[1].alias_reason
    assert registry.get("Tag1").run(None, {"text": "t"}).values == ("t-a",)
    assert registry.get("Tag2").run(None, {"text": "t"}).values == ("t-b",)
    assert registry.get("Tag2").object_info()["python_module"] == "custom_nodes.pack__2"


def test_declared_nodes_a_pack_imports_from_elsewhere_are_not_registered_again(tmp_path: Path) -> None:
    folder = write_tree(
        tmp_path / "custom_nodes",
        {"reuser.py": "from tests.graph.test_plugins import Const\nfrom graph.declare import Output, node\n\n"
         "@node(outputs=[Output('INT')])\ndef Seven():\n    return 7\n"},
    )  # fmt: skip
    [report] = load_plugins(registry_with_builtin(), [folder])
    assert report.nodes == ["Seven"] and report.refused == []


def test_among_plugins_the_later_one_wins_a_shared_node_name(tmp_path: Path, caplog) -> None:
    template = (
        "from graph.declare import Output, node\n\n@node(outputs=[Output('INT')])\ndef Shared():\n    return {v}\n"
    )
    folder = write_tree(
        tmp_path / "custom_nodes", {"a_pack.py": template.format(v=1), "b_pack.py": template.format(v=2)}
    )
    registry = NodeRegistry()
    with caplog.at_level(logging.WARNING, logger="graph.plugins"):
        load_plugins(registry, [folder])
    assert registry.get("Shared").run(None, {}).values == (2,)
    assert "node Shared from plugin b_pack replaces the one from plugin a_pack" in caplog.text


def test_disable_all_loads_only_the_whitelist(tmp_path: Path) -> None:
    folder = write_tree(
        tmp_path / "custom_nodes", {**COMFY_STYLE_PACK, "raises_at_import.py": "raise RuntimeError('x')\n"}
    )
    registry = NodeRegistry()
    reports = by_name(load_plugins(registry, [folder], disable_all=True, whitelist=["comfy_style_pack"]))
    assert reports["comfy_style_pack"].status is PluginStatus.LOADED
    assert reports["raises_at_import"].status is PluginStatus.DISABLED
    assert "not whitelisted" in reports["raises_at_import"].error
    assert "ReadNote" in registry

    nothing = by_name(load_plugins(NodeRegistry(), [folder], disable_all=True))
    assert {r.status for r in nothing.values()} == {PluginStatus.DISABLED}


def test_whitelist_accepts_a_single_files_name_with_its_suffix(tmp_path: Path) -> None:
    folder = write_tree(
        tmp_path / "custom_nodes", {"one.py": "from graph.declare import node\n\n@node()\ndef One():\n    pass\n"}
    )
    [report] = load_plugins(NodeRegistry(), [folder], disable_all=True, whitelist=["one.py"])
    assert report.status is PluginStatus.LOADED and report.nodes == ["One"]


def test_discovery_is_in_name_order_and_skips_missing_folders(tmp_path: Path) -> None:
    folder = write_tree(tmp_path / "plugins", {"b.py": "", "a/__init__.py": "", ".git/config": "", "c.json": "{}"})
    entries = discover_plugins([tmp_path / "absent", folder])
    assert [(e.name, e.is_package) for e in entries] == [("a", True), ("b", False)]


def test_report_serialises_for_an_endpoint(crowded) -> None:
    _, reports, _ = crowded
    wire = reports["partly_broken"].to_json()
    assert wire["status"] == "loaded" and wire["key"] == "partly_broken"
    assert [r["class_type"] for r in wire["refused"]] == ["InputsRaise", "NoReturnTypes", "Const"]
    assert reports["comfy_style_pack"].to_json()["web_directory"].endswith("js")
