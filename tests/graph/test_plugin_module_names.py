"""Packs are imported under their own names, as ComfyUI imports them, and never shadow another module.

Each pack is written to a temporary folder the way its author writes it for ComfyUI (sub-packages
reached by relative imports, another pack imported by its name) and loaded through ``load_plugins``.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

from graph.plugins import PluginStatus, load_plugins
from graph.registry import NodeRegistry
from tests.graph.test_plugins import by_name, write_tree

V1_NODE = """
class {cls}:
    @classmethod
    def INPUT_TYPES(cls):
        return {{"required": {{"value": ("INT", {{"default": 1}})}}}}
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    def run(self, value):
        return ({expression},)
"""

#: A pack whose nodes live two sub-packages down, reached with relative imports only.
SUB_PACKAGE_PACK = {
    "mathpack_nodes/__init__.py": """
        from .src.mathpack.convert import NODE_CLASS_MAPPINGS
        from .src.mathpack import convert as _convert

        NODE_DISPLAY_NAME_MAPPINGS = {"MathDouble": "Double (math pack)"}
        PACKAGE_SEEN_AS = _convert.__name__
    """,
    "mathpack_nodes/src/__init__.py": "",
    "mathpack_nodes/src/mathpack/__init__.py": "from ..shared import FACTOR\n",
    "mathpack_nodes/src/shared.py": "FACTOR = 2\n",
    "mathpack_nodes/src/mathpack/convert.py": """
        from . import FACTOR
        from ..shared import FACTOR as SAME_FACTOR

        class MathDouble:
            @classmethod
            def INPUT_TYPES(cls):
                return {"required": {"value": ("INT", {"default": 1})}}
            RETURN_TYPES = ("INT",)
            FUNCTION = "run"
            def run(self, value):
                return (value * FACTOR * SAME_FACTOR // 2,)

        NODE_CLASS_MAPPINGS = {"MathDouble": MathDouble}
    """,
}

#: ``b_user`` (a package) and ``c_single.py`` (a file) import ``a_base``, loaded before them, by name.
PACKS_THAT_IMPORT_EACH_OTHER = {
    "a_base/__init__.py": V1_NODE.format(cls="BaseNode", expression="value")
    + "NODE_CLASS_MAPPINGS = {'BaseNode': BaseNode}\n",
    "a_base/utils.py": "def triple(value):\n    return 3 * value\n",
    "b_user/__init__.py": """
        import a_base.utils
        from a_base.utils import triple

        from .more import BUILT_WITH

        class Triple:
            @classmethod
            def INPUT_TYPES(cls):
                return {"required": {"value": ("INT", {"default": 1})}}
            RETURN_TYPES = ("INT",)
            FUNCTION = "run"
            def run(self, value):
                return (a_base.utils.triple(value),)

        NODE_CLASS_MAPPINGS = {"Triple": Triple}
    """,
    "b_user/more.py": "import a_base\nBUILT_WITH = a_base.BaseNode\n",
    "c_single.py": V1_NODE.format(cls="Sextuple", expression="triple(value) * 2")
    .replace("class Sextuple", "from a_base.utils import triple\n\nclass Sextuple")
    + "NODE_CLASS_MAPPINGS = {'Sextuple': Sextuple}\n",
}  # fmt: skip


def run_node(registry: NodeRegistry, class_type: str, **inputs) -> tuple:
    spec = registry.get(class_type)
    return spec.normalize_result(spec.run(spec.create_instance(), inputs)).values


def test_a_pack_is_its_own_top_level_module_and_reaches_its_sub_packages_relatively(tmp_path: Path) -> None:
    registry = NodeRegistry()
    [report] = load_plugins(registry, [write_tree(tmp_path / "custom_nodes", SUB_PACKAGE_PACK)])
    assert report.status is PluginStatus.LOADED, report.traceback
    assert (report.module_name, report.key, report.alias_reason) == ("mathpack_nodes", "mathpack_nodes", None)
    assert sys.modules["mathpack_nodes"].PACKAGE_SEEN_AS == "mathpack_nodes.src.mathpack.convert"
    assert "mathpack_nodes.src.mathpack.convert" in sys.modules
    assert run_node(registry, "MathDouble", value=21) == (42,)
    info = registry.get("MathDouble").object_info()
    assert info["python_module"] == "custom_nodes.mathpack_nodes", "what the frontend reads to tell plugin nodes"
    assert info["display_name"] == "Double (math pack)"


def test_packs_import_each_other_by_name(tmp_path: Path) -> None:
    registry = NodeRegistry()
    reports = by_name(load_plugins(registry, [write_tree(tmp_path / "custom_nodes", PACKS_THAT_IMPORT_EACH_OTHER)]))
    assert all(report.status is PluginStatus.LOADED for report in reports.values()), {
        name: report.error for name, report in reports.items()
    }
    assert [reports[name].module_name for name in ("a_base", "b_user", "c_single")] == ["a_base", "b_user", "c_single"]
    assert sys.modules["b_user.more"].BUILT_WITH is sys.modules["a_base"].BaseNode, "one module, not a copy"
    assert run_node(registry, "Triple", value=5) == (15,)
    assert run_node(registry, "Sextuple", value=5) == (30,)


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("json", "already imported"),
        ("nodes", "'nodes'"),  # Loom's own package, which ComfyUI packs import
        ("server", "'server'"),  # Loom's other package packs import, imported by now or not
        ("tabnanny", "standard library"),  # a stdlib module nobody imports
        ("torch", "'torch'"),  # installed, imported by now or not
    ],
)
def test_a_pack_named_like_an_existing_module_loads_under_an_alias_and_shadows_nothing(
    tmp_path: Path, name: str, why: str
) -> None:
    before = sys.modules.get(name)
    folder = write_tree(
        tmp_path / "custom_nodes",
        {
            f"{name}/__init__.py": f"from .impl import NODE_CLASS_MAPPINGS\nMARK = 'the {name} pack'\n",
            f"{name}/impl.py": V1_NODE.format(cls="Echo", expression="value")
            + f"NODE_CLASS_MAPPINGS = {{'Echo_{name}': Echo}}\n",
        },
    )
    registry = NodeRegistry()
    [report] = load_plugins(registry, [folder])

    assert report.status is PluginStatus.LOADED, report.traceback
    assert report.module_name == report.key == f"{name}__2"
    assert why in report.alias_reason and "must not" in report.alias_reason
    assert sys.modules[f"{name}__2"].MARK == f"the {name} pack", "relative imports work under the alias"
    assert run_node(registry, f"Echo_{name}", value=4) == (4,)
    assert sys.modules.get(name) is before, "the real module is untouched"
    real = importlib.import_module(name)
    assert getattr(real, "MARK", None) is None, f"import {name} still gives the real module"
    assert registry.get(f"Echo_{name}").python_module == f"custom_nodes.{name}__2"


def test_the_standard_library_keeps_working_beside_a_pack_named_json(tmp_path: Path) -> None:
    folder = write_tree(tmp_path / "custom_nodes", {"json.py": "NODE_CLASS_MAPPINGS = {}\nWEB_DIRECTORY = '.'\n"})
    [report] = load_plugins(NodeRegistry(), [folder])
    assert report.module_name == "json__2"
    assert json.loads('{"a": 1}') == {"a": 1} and sys.modules["json"] is json


def test_loading_again_reuses_the_packs_own_name_and_runs_the_files_on_disk(tmp_path: Path) -> None:
    folder = write_tree(tmp_path / "custom_nodes", SUB_PACKAGE_PACK)
    first = NodeRegistry()
    load_plugins(first, [folder])
    (folder / "mathpack_nodes" / "src" / "shared.py").write_text("FACTOR = 3\n")

    second = NodeRegistry()
    [report] = load_plugins(second, [folder])
    assert report.module_name == "mathpack_nodes" and report.alias_reason is None, "its own earlier load is no clash"
    assert run_node(second, "MathDouble", value=2) == (9,)


def test_a_pack_of_the_same_name_in_another_load_replaces_the_earlier_one(tmp_path: Path) -> None:
    files = {
        "samename/__init__.py": V1_NODE.format(cls="N", expression="value + {n}") + "NODE_CLASS_MAPPINGS = {'N': N}\n"
    }
    a = write_tree(tmp_path / "a", {k: v.replace("{n}", "1") for k, v in files.items()})
    b = write_tree(tmp_path / "b", {k: v.replace("{n}", "2") for k, v in files.items()})
    load_plugins(NodeRegistry(), [a])
    registry = NodeRegistry()
    [report] = load_plugins(registry, [b])
    assert report.module_name == "samename" and run_node(registry, "N", value=0) == (2,)


def test_the_host_hook_runs_once_before_the_first_pack_is_imported(tmp_path: Path) -> None:
    calls: list[list[str]] = []
    folder = write_tree(
        tmp_path / "custom_nodes",
        {
            "old.py.disabled": "raise AssertionError('never imported')\n",
            "first.py": "import hook_made_this\nNODE_CLASS_MAPPINGS = {}\nWEB_DIRECTORY = '.'\n",
            "second.py": "import hook_made_this\nNODE_CLASS_MAPPINGS = {}\nWEB_DIRECTORY = '.'\n",
        },
    )

    def hook() -> None:
        calls.append(sorted(name for name in sys.modules if name in ("first", "second")))
        sys.modules["hook_made_this"] = type(sys)("hook_made_this")

    try:
        reports = by_name(load_plugins(NodeRegistry(), [folder], before_import=hook))
    finally:
        sys.modules.pop("hook_made_this", None)
    assert calls == [[]], "once, before any pack ran"
    assert reports["first"].status is reports["second"].status is PluginStatus.LOADED

    nothing_to_import = write_tree(tmp_path / "disabled_only", {"old.py.disabled": "raise AssertionError()\n"})
    load_plugins(NodeRegistry(), [nothing_to_import], before_import=lambda: calls.append(["again"]))
    assert calls == [[]], "not called when no pack is imported"


def test_a_pack_that_fails_leaves_no_module_under_its_name(tmp_path: Path) -> None:
    folder = write_tree(
        tmp_path / "custom_nodes",
        {"half_done/__init__.py": "from . import part\nraise RuntimeError('late failure')\n", "half_done/part.py": ""},
    )
    [report] = load_plugins(NodeRegistry(), [folder])
    assert report.status is PluginStatus.FAILED and "late failure" in report.error
    assert "half_done" not in sys.modules and "half_done.part" not in sys.modules
