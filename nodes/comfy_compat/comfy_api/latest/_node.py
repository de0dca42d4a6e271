"""ComfyUI's V3 node: ``io.ComfyNode`` with its ``Schema``, ``io.NodeOutput`` and ``io.Hidden``.

A V3 node is a class of classmethods: ``define_schema()`` returns a ``Schema`` (id, title, category,
inputs, outputs, flags) and ``execute(**inputs)`` returns a ``NodeOutput``. As in ComfyUI, the base
class also answers the V1 attributes (``INPUT_TYPES``, ``RETURN_TYPES``, ``FUNCTION`` ...), derived
from the schema, so Loom reads a V3 class through the same V1 reader (``graph/v1.py``) into the same
``NodeSpec`` a V1 class with those inputs gives, and ``nodes.NODE_CLASS_MAPPINGS`` lists it as itself.

What differs from V1 is handled here, where the V1 attributes meet the V3 hooks:

- Hidden values (``Hidden.unique_id`` ...) are not arguments of ``execute``: each call runs on a
  subclass of the node class whose ``hidden`` holds them (``cls.hidden.unique_id``), as ComfyUI's
  per-call class clone does, so concurrent prompts never see each other's values.
- ``fingerprint_inputs`` and ``validate_inputs`` answer as ``IS_CHANGED`` and ``VALIDATE_INPUTS``,
  only where the node defines them, with their own signatures (Loom passes the inputs they name).
  There ``cls.hidden`` holds nothing: Loom calls them with the constant inputs alone.
- ``execute`` may return a ``NodeOutput``, a tuple, a dict (``result``/``ui``/``expand``), ``None``
  or an ``ExecutionBlocker``; a ``ui`` given as ``ui.PreviewImage(...)`` and the like is sent as its dict.

Not supported: ``accept_all_inputs``, dynamic inputs (their values nested by path), ``price_badge``
(accepted, not served), ``GET_NODE_INFO_V1``.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from functools import partial
from typing import Any, ClassVar, Generic, Literal, TypeVar

from graph.spec import ExecutionBlocker
from nodes.comfy_compat.comfy_api.latest._sockets import Input, Output

__all__ = ["ComfyNode", "Hidden", "HiddenHolder", "NodeOutput", "Schema"]

_T = TypeVar("_T")


class Hidden(str, Enum):
    """Values the engine gives a node that are not inputs of the prompt; ``cls.hidden.<name>`` reads them."""

    unique_id = "UNIQUE_ID"
    prompt = "PROMPT"
    extra_pnginfo = "EXTRA_PNGINFO"
    dynprompt = "DYNPROMPT"
    auth_token_comfy_org = "AUTH_TOKEN_COMFY_ORG"
    api_key_comfy_org = "API_KEY_COMFY_ORG"
    comfy_usage_source = "COMFY_USAGE_SOURCE"


class HiddenHolder:
    """The hidden values of one call, by ``Hidden`` member name; one the node did not declare is ``None``."""

    def __init__(self, values: Mapping[Hidden, Any] | None = None) -> None:
        for hidden in Hidden:
            setattr(self, hidden.name, (values or {}).get(hidden))

    def __getattr__(self, name: str) -> Any:
        return None

    @classmethod
    def from_dict(cls, values: Mapping[Hidden, Any] | None) -> HiddenHolder:
        return cls(values)


@dataclass
class Schema:
    """A V3 node's declaration (ComfyUI's ``io.Schema``: same fields, order and defaults)."""

    node_id: str
    display_name: str | None = None
    category: str = "sd"
    inputs: list[Input] = field(default_factory=list)
    outputs: list[Output] = field(default_factory=list)
    hidden: list[Hidden] = field(default_factory=list)
    description: str = ""
    search_aliases: list[str] = field(default_factory=list)
    is_input_list: bool = False
    is_output_node: bool = False
    is_deprecated: bool = False
    is_experimental: bool = False
    is_dev_only: bool = False
    is_api_node: bool = False
    price_badge: Any = None
    not_idempotent: bool = False
    enable_expand: bool = False
    accept_all_inputs: bool = False
    essentials_category: str | None = None
    has_intermediate_output: bool = False
    loop_boundary: Literal["start", "end"] | None = None

    def validate(self) -> None:
        """Refuse a schema whose input or output ids repeat (they would overwrite each other)."""
        problems = []
        for kind, ids in (("Input", [i.id for i in self.inputs]), ("Output", [o.id for o in self.outputs])):
            repeated = sorted(str(name) for name, count in Counter(ids).items() if count > 1 and name is not None)
            if repeated:
                problems.append(f"{kind} ids must be unique, but {repeated} are not.")
        if problems:
            raise ValueError("\n".join(problems))
        for item in self.inputs:
            item.validate()
        for output in self.outputs:
            output.validate()

    def finalize(self) -> None:
        """Add the hidden values the flags imply and give outputs without an id one (idempotent).

        An output node saves files, so it gets the prompt and the PNG info to write into them; an
        API node gets the credentials its requests need.
        """
        implied: list[Hidden] = []
        if self.is_api_node:
            implied += [Hidden.auth_token_comfy_org, Hidden.api_key_comfy_org, Hidden.comfy_usage_source]
        if self.is_output_node:
            implied += [Hidden.prompt, Hidden.extra_pnginfo]
        self.hidden = [*self.hidden, *(hidden for hidden in implied if hidden not in self.hidden)]
        for index, output in enumerate(self.outputs):
            if output.id is None:
                output.id = f"_{index}_{output.io_type}_"

    def hidden_arguments(self) -> dict[str, Hidden]:
        """The V1 name of each hidden value: its member name (``unique_id``), as ComfyUI lists it.

        Loom passes hidden values by these names, so one that an input of the node also uses
        (an output node with a ``prompt`` text input) is renamed ``hidden_<name>``.
        """
        taken = {item.id for item in self.inputs}
        declared = dict.fromkeys(Hidden(hidden) for hidden in self.hidden)
        return {(f"hidden_{h.name}" if h.name in taken else h.name): h for h in declared}

    def v1_input_types(self) -> dict[str, dict[str, Any]]:
        """``INPUT_TYPES`` as ComfyUI derives it: ``required``, ``optional`` and ``hidden`` (``(KIND,)``)."""
        sections: dict[str, dict[str, Any]] = {"required": {}}
        for item in self.inputs:
            section = "optional" if item.optional else "required"
            sections.setdefault(section, {})[item.id] = item.v1_entry()
        for name, hidden in self.hidden_arguments().items():
            sections.setdefault("hidden", {})[name] = (hidden.value,)
        return sections


class _UIOutput(ABC):
    """What ``ui=`` may be besides a dict: an object that knows the dict the editor is sent."""

    @abstractmethod
    def as_dict(self) -> dict[str, Any]: ...


class NodeOutput:
    """What ``execute`` returns: the output values in order, and optionally UI data or an expansion."""

    def __init__(
        self,
        *args: Any,
        ui: _UIOutput | Mapping[str, Any] | None = None,
        expand: Mapping[str, Any] | None = None,
        block_execution: str | None = None,
    ) -> None:
        self.args = args
        self.ui = ui
        self.expand = expand
        self.block_execution = block_execution

    @property
    def result(self) -> tuple[Any, ...] | None:
        return self.args or None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NodeOutput:
        """A V1-style ``{"result": ..., "ui": ..., "expand": ...}``."""
        result = data.get("result", ())
        if isinstance(result, ExecutionBlocker):
            return cls(block_execution=result.message)
        return cls(*result, ui=data.get("ui"), expand=data.get("expand"))

    def __getitem__(self, index: int) -> Any:
        return self.args[index]


class _ClassProperty(Generic[_T]):
    """A class attribute computed from the class: how a V3 class answers V1 attribute names."""

    def __init__(self, compute: Callable[[type[Any]], _T]) -> None:
        self.compute = compute

    def __get__(self, instance: object, owner: type[Any]) -> _T:
        return self.compute(owner)


def _from_schema(read: Callable[[Schema], _T]) -> _ClassProperty[_T]:
    return _ClassProperty(lambda cls: read(cls.GET_SCHEMA()))


class ComfyNode:
    """The base class of V3 nodes: override ``define_schema`` and ``execute`` (classmethods)."""

    #: This call's hidden values; set on the per-call subclass ``execute`` runs on.
    hidden: ClassVar[HiddenHolder | None] = None

    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError(f"V3 node {cls.__name__} does not define define_schema()")

    @classmethod
    def execute(cls, **kwargs: Any) -> Any:
        raise NotImplementedError(f"V3 node {cls.__name__} does not define execute()")

    @classmethod
    def validate_inputs(cls, **kwargs: Any) -> bool | str:
        """Optional: ``True`` or an error message; ComfyUI's name for ``VALIDATE_INPUTS``."""
        raise NotImplementedError

    @classmethod
    def fingerprint_inputs(cls, **kwargs: Any) -> Any:
        """Optional: a value that changes when the node's outside state does; ComfyUI's ``IS_CHANGED``."""
        raise NotImplementedError

    @classmethod
    def check_lazy_status(cls, **kwargs: Any) -> list[str]:
        """The lazy inputs still to compute: by default every one not computed yet (``None``)."""
        return [name for name, value in kwargs.items() if value is None]

    def __init__(self) -> None:
        # Loom's V1 reader asks the node's instance, with the hidden values among the inputs; a V3
        # hook never takes those as arguments, so this instance answers through ``_lazy_status``.
        vars(self)["check_lazy_status"] = partial(_lazy_status, type(self))

    @classmethod
    def GET_SCHEMA(cls) -> Schema:
        """The schema, checked and with its implied hidden values and output ids."""
        schema = cls.define_schema()
        if not isinstance(schema, Schema):
            raise TypeError(f"{cls.__name__}.define_schema() returned {type(schema).__name__}, not an io.Schema")
        schema.finalize()
        schema.validate()
        return schema

    # --- the V1 attributes, derived from the schema -------------------------------------------------

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, dict[str, Any]]:
        return cls.GET_SCHEMA().v1_input_types()

    RETURN_TYPES = _from_schema(lambda s: tuple(o.io_type for o in s.outputs))
    RETURN_NAMES = _from_schema(lambda s: tuple(o.name for o in s.outputs))
    OUTPUT_IS_LIST = _from_schema(lambda s: tuple(o.is_output_list for o in s.outputs))
    #: Empty unless an output has a tooltip: ``/object_info`` then lists one per output, as ComfyUI does.
    OUTPUT_TOOLTIPS = _from_schema(
        lambda s: tuple(o.tooltip for o in s.outputs) if any(o.tooltip for o in s.outputs) else ()
    )
    CATEGORY = _from_schema(lambda s: s.category)
    DESCRIPTION = _from_schema(lambda s: s.description)
    OUTPUT_NODE = _from_schema(lambda s: s.is_output_node)
    INPUT_IS_LIST = _from_schema(lambda s: s.is_input_list)
    NOT_IDEMPOTENT = _from_schema(lambda s: s.not_idempotent)
    DEPRECATED = _from_schema(lambda s: s.is_deprecated)
    EXPERIMENTAL = _from_schema(lambda s: s.is_experimental)
    DEV_ONLY = _from_schema(lambda s: s.is_dev_only)
    API_NODE = _from_schema(lambda s: s.is_api_node)
    FUNCTION = _ClassProperty(
        lambda cls: "EXECUTE_NORMALIZED_ASYNC" if inspect.iscoroutinefunction(cls.execute) else "EXECUTE_NORMALIZED"
    )
    IS_CHANGED = _ClassProperty(lambda cls: _hook(cls, "fingerprint_inputs", "IS_CHANGED"))
    VALIDATE_INPUTS = _ClassProperty(lambda cls: _hook(cls, "validate_inputs", "VALIDATE_INPUTS"))

    @classmethod
    def EXECUTE_NORMALIZED(cls, /, **inputs: Any) -> Any:
        schema = cls.GET_SCHEMA()
        call, arguments = _prepare_call(cls, schema, inputs)
        return _v1_result(call, schema, call.execute(**arguments))

    @classmethod
    async def EXECUTE_NORMALIZED_ASYNC(cls, /, **inputs: Any) -> Any:
        schema = cls.GET_SCHEMA()
        call, arguments = _prepare_call(cls, schema, inputs)
        return _v1_result(call, schema, await call.execute(**arguments))


def _with_hidden(cls: type[ComfyNode], hidden: HiddenHolder) -> type[ComfyNode]:
    """A subclass of the node whose ``hidden`` holds one call's values (ComfyUI's per-call class clone)."""
    return type(
        cls.__name__, (cls,), {"hidden": hidden, "__module__": cls.__module__, "__qualname__": cls.__qualname__}
    )


def _prepare_call(
    cls: type[ComfyNode], schema: Schema, inputs: Mapping[str, Any]
) -> tuple[type[ComfyNode], dict[str, Any]]:
    """The class to call for these inputs and the arguments it takes: the inputs less the hidden values."""
    hidden_names = schema.hidden_arguments()
    arguments = {name: value for name, value in inputs.items() if name not in hidden_names}
    hidden = {kind: inputs.get(name) for name, kind in hidden_names.items()}
    return _with_hidden(cls, HiddenHolder(hidden)), arguments


def _lazy_status(cls: type[ComfyNode], /, **inputs: Any) -> list[str]:
    call, arguments = _prepare_call(cls, cls.GET_SCHEMA(), inputs)
    return list(call.check_lazy_status(**arguments) or [])


def _overrides(cls: type[ComfyNode], name: str) -> bool:
    return inspect.getattr_static(cls, name) is not vars(ComfyNode)[name]


def _hook(cls: type[ComfyNode], name: str, v1_name: str) -> Callable[..., Any]:
    """The node's own ``name`` hook, answering as ``v1_name``; an ``AttributeError`` where it has none,
    so that ``hasattr(cls, v1_name)`` is false as for a V1 class without it."""
    if not _overrides(cls, name):
        raise AttributeError(f"{cls.__name__} defines no {name}, so it has no {v1_name}")
    hook: Callable[..., Any] = getattr(_with_hidden(cls, HiddenHolder()), name)
    return hook


def _as_node_output(returned: Any) -> NodeOutput | ExecutionBlocker:
    if returned is None:
        return NodeOutput()
    if isinstance(returned, (NodeOutput, ExecutionBlocker)):
        return returned
    if isinstance(returned, tuple):
        return NodeOutput(*returned)
    if isinstance(returned, Mapping):
        return NodeOutput.from_dict(returned)
    raise TypeError(f"execute() returned {type(returned).__name__}; expected an io.NodeOutput or a tuple")


def _v1_result(cls: type[ComfyNode], schema: Schema, returned: Any) -> dict[str, Any] | ExecutionBlocker:
    """What a V1 node returns for ``execute``'s value: ``{"result": ..., "ui": ..., "expand": ...}``."""
    output = _as_node_output(returned)
    if isinstance(output, ExecutionBlocker):
        return output
    if output.expand is not None and not schema.enable_expand:
        raise ValueError(f"node {cls.__name__} returned an expansion but its schema does not set enable_expand=True")
    result: dict[str, Any] = {"result": output.args}
    if output.block_execution is not None:
        result["result"] = ExecutionBlocker(output.block_execution)
    ui = output.ui.as_dict() if isinstance(output.ui, _UIOutput) else output.ui
    if ui:
        result["ui"] = {key: list(value) if isinstance(value, (list, tuple)) else [value] for key, value in ui.items()}
    if output.expand is not None:
        result["expand"] = output.expand
    return result
