"""Content-addressed cache keys: a node's key changes only when something that could change its output does.

A key is a Merkle-style digest (docs/compatibility.md §4.4): the node's class, its ``fingerprint`` token (V1
``IS_CHANGED``) when it has one, its id only when its output depends on the id (``not_idempotent``
or a ``UNIQUE_ID`` input), and every input sorted by name — a constant as itself, a link as the key
of the source node plus the output slot. Node ids of ancestors never enter, so renumbering a graph
or duplicating a branch hits the cache.

Keys are 16-byte BLAKE2b digests of a canonical text encoding: compact, equal exactly when the
encodings are, and each node is hashed once per prompt from its inputs' digests (a memoised pass,
iterative so a 10,000-node chain cannot reach the recursion limit). A constant that has no canonical
form (an arbitrary object, NaN) and a fingerprint that raises or returns NaN make a key that never
matches anything, which is ComfyUI's "always re-run" behaviour.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from graph.formats.api import is_link
from graph.registry import NodeRegistry
from graph.spec import NodeSpec

log = logging.getLogger(__name__)

CacheKey = bytes
KEY_BYTES = 16

_never_counter = itertools.count()


class PromptStructureError(ValueError):
    """The prompt cannot be executed as given (it was not validated, or validation missed it)."""

    def __init__(self, node_id: str | None, reason: str) -> None:
        super().__init__(f"node {node_id!r}: {reason}" if node_id is not None else reason)
        self.node_id = node_id
        self.reason = reason


class DependencyCycleError(PromptStructureError):
    """The links form a cycle; ``nodes`` lists the ids on it, in link order."""

    def __init__(self, nodes: list[str]) -> None:
        super().__init__(nodes[0] if nodes else None, "dependency cycle through nodes " + " -> ".join(nodes))
        self.nodes = nodes


@dataclass(frozen=True)
class SpecFacts:
    """What the executor needs from a ``NodeSpec``, derived once instead of per node and per prompt.

    ``spec.inputs()`` re-runs a plugin's ``INPUT_TYPES`` (combo lists are computed on demand), which
    is far too slow to repeat for every node of every prompt; hidden kinds and lazy flags do not
    change between calls, so they are read once per spec object.
    """

    spec: NodeSpec
    #: ``(input name, hidden kind)`` for each hidden input, e.g. ``("unique_id", "UNIQUE_ID")``.
    hidden: tuple[tuple[str, str], ...]
    lazy: frozenset[str]
    keyed_by_id: bool
    #: Every declared input name, hidden ones included.
    declared: frozenset[str]

    @classmethod
    def of(cls, spec: NodeSpec) -> SpecFacts:
        inputs = spec.inputs()
        hidden = tuple((item.name, item.type) for item in inputs if item.section == "hidden")
        return cls(
            spec=spec,
            hidden=hidden,
            lazy=frozenset(item.name for item in inputs if item.lazy),
            keyed_by_id=spec.not_idempotent or any(kind == "UNIQUE_ID" for _, kind in hidden),
            declared=frozenset(item.name for item in inputs),
        )


class SpecFactsCache:
    """``SpecFacts`` per class type, refreshed when the registry hands out a different spec object."""

    def __init__(self, registry: NodeRegistry) -> None:
        self._registry = registry
        self._facts: dict[str, SpecFacts] = {}

    def get(self, class_type: str) -> SpecFacts | None:
        spec = self._registry.get(class_type)
        if spec is None:
            return None
        facts = self._facts.get(class_type)
        if facts is None or facts.spec is not spec:
            facts = self._facts[class_type] = SpecFacts.of(spec)
        return facts


class _Uncacheable(Exception):
    """A constant or fingerprint with no canonical form; the key becomes one that never matches."""


def _canonical(value: Any) -> Any:
    """A hashable form whose equality means identical values *and types*.

    Python says ``1 == 1.0 == True`` and ``0.0 == -0.0``; as cache keys those must differ, so
    booleans and floats carry a type tag (floats as their exact ``repr``) and containers a kind
    tag. Strings, ints and ``None`` stay bare: among bare values equality already implies type,
    and they are most constants, so most nodes allocate nothing here.
    """
    kind = type(value)
    if kind is str or kind is int or value is None:
        return value
    if kind is bool:
        return ("bool", value)
    if kind is float:
        if value != value:
            raise _Uncacheable("NaN")
        return ("float", repr(value))
    if kind is list or kind is tuple:
        return (kind.__name__, tuple(_canonical(item) for item in value))
    if kind is dict:
        if not all(type(key) is str for key in value):
            raise _Uncacheable("dict with non-string keys")
        return ("dict", tuple((key, _canonical(value[key])) for key in sorted(value)))
    raise _Uncacheable(kind.__name__)


_NEVER = b"never:"


def never_matching_key() -> CacheKey:
    """A key no other key equals, within this process (the cache lives in one process)."""
    return _NEVER + next(_never_counter).to_bytes(KEY_BYTES - len(_NEVER), "big")


def can_match(key: CacheKey) -> bool:
    """Whether a later prompt could ever look ``key`` up; storing results under other keys only leaks."""
    return not key.startswith(_NEVER)


def node_links(inputs: Mapping[str, Any]) -> Iterable[tuple[str, str, int]]:
    """``(input name, source id, slot)`` for every linked input."""
    for name, value in inputs.items():
        if is_link(value):
            yield name, value[0], value[1]


def _check_node(prompt: Mapping[str, Any], node_id: str, consumer: str | None) -> None:
    node = prompt.get(node_id)
    if not isinstance(node, Mapping):
        if consumer is not None:
            raise PromptStructureError(consumer, f"links to node {node_id!r}, which is not in the prompt")
        raise PromptStructureError(node_id, "is requested as an output but is not in the prompt")
    inputs = node.get("inputs", {})
    if not isinstance(inputs, Mapping):
        raise PromptStructureError(node_id, f"'inputs' is a {type(inputs).__name__}, not an object")


class DigestMemo:
    """Digests of node signatures already hashed, so an unchanged graph costs a dict lookup per node.

    The signature tuple is hashable and its equality implies an identical encoding (see
    ``_canonical``), so the memo can skip the text encoding and BLAKE2b, which are most of the
    per-node cost of an all-cached rerun. Bounded: it is simply emptied when full.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._digests: dict[tuple[Any, ...], CacheKey] = {}

    def digest(self, signature: tuple[Any, ...]) -> CacheKey:
        found = self._digests.get(signature)
        if found is None:
            found = hashlib.blake2b(repr(signature).encode(), digest_size=KEY_BYTES).digest()
            if len(self._digests) >= self.max_entries:
                self._digests.clear()
            self._digests[signature] = found
        return found


def _signature(
    node_id: str, inputs: Mapping[str, Any], facts: SpecFacts, keys: Mapping[str, CacheKey], memo: DigestMemo
) -> CacheKey:
    items: list[tuple[Any, ...]] = []
    try:
        for name in sorted(inputs):
            value = inputs[name]
            if is_link(value):
                source_key = keys[value[0]]
                if source_key.startswith(_NEVER):
                    raise _Uncacheable("depends on a node that never matches")
                items.append((name, source_key, value[1]))
            else:
                items.append((name, _canonical(value)))
        token = None
        if facts.spec.fingerprint is not None:
            constants = {name: value for name, value in inputs.items() if not is_link(value)}
            token = _fingerprint(node_id, facts, constants)
    except _Uncacheable:
        return never_matching_key()
    identity = node_id if facts.keyed_by_id else None
    return memo.digest((facts.spec.class_type, token, identity, tuple(items)))


def _fingerprint(node_id: str, facts: SpecFacts, constants: dict[str, Any]) -> Any:
    assert facts.spec.fingerprint is not None
    try:
        token = facts.spec.fingerprint(constants)
    except Exception as error:  # a plugin's IS_CHANGED may raise anything; ComfyUI treats it as NaN
        log.warning("fingerprint of node %s (%s) raised %r; it will re-run", node_id, facts.spec.class_type, error)
        raise _Uncacheable("fingerprint raised") from error
    return ("fingerprint", _canonical(token))


def compute_keys(
    prompt: Mapping[str, Any],
    roots: Iterable[str],
    facts_of: Callable[[str], SpecFacts | None],
    memo: DigestMemo | None = None,
    known: dict[str, CacheKey] | None = None,
) -> dict[str, CacheKey]:
    """Keys of ``roots`` and of every node they depend on (lazy inputs included).

    ``known`` holds keys computed earlier in the same prompt; it is extended in place and returned
    (a node expansion keys only its new nodes). Raises ``PromptStructureError`` for a missing node
    or unknown class type and ``DependencyCycleError`` for a cycle, naming the nodes involved. This
    runs for every node of every prompt, cached or not, so the facts lookup is inlined.
    """
    memo = memo if memo is not None else DigestMemo()
    keys: dict[str, CacheKey] = known if known is not None else {}
    expanded: set[str] = set()
    facts_by_type: dict[str, SpecFacts | None] = {}
    for root in roots:
        if root in keys:
            continue
        _check_node(prompt, root, None)
        stack = [root]
        while stack:
            node_id = stack[-1]
            if node_id in keys:
                stack.pop()
                continue
            node = prompt[node_id]
            inputs = node.get("inputs", {})
            if node_id not in expanded:
                expanded.add(node_id)
                waiting = False
                for value in inputs.values():
                    if is_link(value):
                        source = value[0]
                        if source in keys:
                            continue
                        if source in expanded:
                            raise DependencyCycleError(find_cycle(prompt, source))
                        source_node = prompt.get(source)
                        if type(source_node) is not dict or type(source_node.get("inputs", {})) is not dict:
                            _check_node(prompt, source, node_id)
                        stack.append(source)
                        waiting = True
                if waiting:
                    continue
            class_type = node.get("class_type")
            facts = None
            if type(class_type) is str:
                facts = facts_by_type.get(class_type)
                if facts is None:
                    facts = facts_by_type[class_type] = facts_of(class_type)
            if facts is None:
                raise PromptStructureError(node_id, f"unknown node type {class_type!r}")
            keys[node_id] = _signature(node_id, inputs, facts, keys, memo)
            stack.pop()
    return keys


def find_cycle(prompt: Mapping[str, Any], start: str) -> list[str]:
    """The ids of one dependency cycle through ``start``'s region, in link order (networkx)."""
    import networkx as nx

    graph = nx.DiGraph()
    for node_id, node in prompt.items():
        inputs = node.get("inputs", {}) if isinstance(node, Mapping) else {}
        if isinstance(inputs, Mapping):
            graph.add_edges_from((source, node_id) for _, source, _ in node_links(inputs) if source in prompt)
    try:
        edges = nx.find_cycle(graph, source=start)
    except nx.NetworkXNoCycle:
        edges = nx.find_cycle(graph)
    return [edge[0] for edge in edges]
