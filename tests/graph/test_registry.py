"""The node registry: built-ins are protected, plugins register through their module exports."""

import types

import pytest

from graph.declare import Int, Output, node
from graph.registry import NodeRegistry, RegistrationError


def _module(name: str, **exports) -> types.ModuleType:
    module = types.ModuleType(name)
    for key, value in exports.items():
        setattr(module, key, value)
    return module


class AddV1:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"a": ("INT", {"default": 1})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "add"

    def add(self, a):
        return (a + 1,)


def test_a_module_registers_its_v1_classes_with_display_names() -> None:
    registry = NodeRegistry()
    added = registry.register_module(
        _module("plugin", NODE_CLASS_MAPPINGS={"Add": AddV1}, NODE_DISPLAY_NAME_MAPPINGS={"Add": "Add One"}),
        python_module="custom_nodes.plugin",
    )
    assert added == ["Add"]
    info = registry.object_info()["Add"]
    assert info["display_name"] == "Add One"
    assert info["python_module"] == "custom_nodes.plugin"


def test_a_module_registers_the_declarative_nodes_it_defines() -> None:
    module = _module("mypack")

    @node(outputs=[Output("INT")])
    def Seven(x=Int(7)):
        return x

    Seven.__module__ = "mypack"
    module.Seven = Seven
    registry = NodeRegistry()
    assert registry.register_module(module) == ["Seven"]
    assert "Seven" in registry


def test_a_package_registers_the_nodes_its_submodules_define_once_each() -> None:
    """Built-in modules are read by the plugin loader's rule: a re-exported node counts, an alias does not."""
    module = _module("mypack")

    @node(outputs=[Output("INT")])
    def Seven(x=Int(7)):
        return x

    Seven.__module__ = "mypack.numbers"
    module.Seven = module.seven = Seven
    assert NodeRegistry().register_module(module, builtin=True) == ["Seven"]


def test_node_class_mappings_that_is_not_a_dict_is_a_registration_error() -> None:
    with pytest.raises(RegistrationError, match="NODE_CLASS_MAPPINGS is a list"):
        NodeRegistry().register_module(_module("p", NODE_CLASS_MAPPINGS=[AddV1]))


def test_plugins_cannot_replace_a_builtin() -> None:
    registry = NodeRegistry()
    registry.register_module(_module("nodes.math", NODE_CLASS_MAPPINGS={"Add": AddV1}), builtin=True)
    with pytest.raises(RegistrationError, match="'Add' is built in"):
        registry.register_module(_module("evil", NODE_CLASS_MAPPINGS={"Add": AddV1}))


def test_a_module_without_nodes_is_an_error() -> None:
    with pytest.raises(RegistrationError, match="exports no nodes"):
        NodeRegistry().register_module(_module("empty"))


def test_object_info_leaves_out_a_node_whose_inputs_raise() -> None:
    class Exploding(AddV1):
        @classmethod
        def INPUT_TYPES(cls):
            raise RuntimeError("plugin bug")

    registry = NodeRegistry()
    registry.register_module(_module("p", NODE_CLASS_MAPPINGS={"Boom": Exploding, "Add": AddV1}))
    failures = []
    info = registry.object_info(on_error=lambda name, error: failures.append(name))
    assert list(info) == ["Add"]
    assert failures == ["Boom"]


@pytest.mark.parametrize("class_type", [["Add"], {"name": "Add"}, 3, None])
def test_a_class_type_that_is_not_a_string_names_no_node(class_type) -> None:
    """Class types come from files and requests; an unhashable one must not raise ``TypeError``."""
    registry = NodeRegistry()
    registry.register_module(_module("nodes.math", NODE_CLASS_MAPPINGS={"Add": AddV1}), builtin=True)
    assert registry.get(class_type) is None
    assert class_type not in registry
    assert not registry.is_builtin(class_type)
    assert registry.get("Add") is not None and "Add" in registry and registry.is_builtin("Add")
