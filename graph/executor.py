"""Run a validated API prompt: only what the outputs need, in dependency order, reusing cached results.

One ``Executor`` lives as long as the server. Per prompt (docs/compatibility.md §4.2–4.6):

1. Every node the outputs depend on gets a content-addressed key (``cache_keys``); nodes whose key
   is in the ``OutputCache`` are *cached* and their whole upstream is never visited.
2. The nodes still needed (non-lazy links, stopping at cached nodes) are collected in dependency
   order and run one by one. A node with lazy inputs first answers ``lazy_status`` with the
   unevaluated ones as ``None``; the inputs it requests are scheduled, the rest of the plan is
   re-sorted topologically with networkx and the node runs again later. Branches never requested
   never run. (The first plan is the post-order of the walk that finds the needed nodes; building
   a networkx graph for it too would double the cold per-node cost on large graphs.)
3. Every input is a list internally (docs/compatibility.md §3.6): a node is called once per index unless it takes
   whole lists (``input_is_list``); ``is_list`` outputs are flattened; UI dicts are concatenated.
4. An ``ExecutionBlocker`` among a call's inputs replaces that call's outputs with the blocker. A
   silent blocker (no message) just skips the consumers. A blocker with a message ends the prompt
   with ``execution_error`` "Execution Blocked: ..." (ComfyUI reports it but carries on with other
   branches and then records success; Loom makes the history agree with what the user was told).
5. An exception ends the prompt with ``execution_error`` naming the node, its type and its inputs;
   everything computed before it stays cached and the executor is ready for the next prompt.

6. Node expansion (docs/compatibility.md §3.8): a result carrying ``expand`` (an API-format subgraph) adds those
   nodes to this prompt's graph, keyed and cached like any other node; the values it returned may
   be links into the subgraph, and the expanding node finishes once they are computed. Expanded
   nodes are displayed on the node that expanded them (``display_node``/``parent_node`` in events).

Node instances are kept per ``(node id, class_type)`` across prompts, so V1 nodes can hold state;
instances of nodes absent from the current prompt are dropped. ``async def`` node functions are
awaited one at a time on the executor's own event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
import traceback
from collections.abc import Hashable, Mapping
from typing import Any, cast

from graph.cache import OutputCache
from graph.cache_keys import (
    CacheKey,
    DigestMemo,
    PromptStructureError,
    SpecFacts,
    SpecFactsCache,
    can_match,
    compute_keys,
)
from graph.events import Listener
from graph.execution_state import ExecutionRecord, ExecutionState
from graph.formats.api import is_link, unwrap_value
from graph.heap import return_free_heap
from graph.progress import Interrupted, InterruptFlag, node_context
from graph.registry import NodeRegistry
from graph.services import services_context
from graph.spec import ExecutionBlocker, NodeResult, NodeReturnError

__all__ = ["DuplicateNodeError", "ExecutionBlocked", "Executor"]


class DuplicateNodeError(ValueError):
    """An expansion tried to add a node id that already exists in the prompt."""

    def __init__(self, node_id: str, new_id: str) -> None:
        super().__init__(f"node {node_id!r} expanded into node id {new_id!r}, which already exists")
        self.node_id = node_id
        self.new_id = new_id


class ExecutionBlocked(RuntimeError):
    """An input carried an ``ExecutionBlocker`` with a message."""

    def __init__(self, message: str) -> None:
        super().__init__(f"Execution Blocked: {message}")
        self.blocker_message = message


class _NodeFailure(Exception):
    """A node could not produce its outputs; carries what the ``execution_error`` event reports."""

    def __init__(self, node_id: str, class_type: str, error: Exception, inputs: dict[str, list[Any]]) -> None:
        super().__init__(str(error))
        self.node_id = node_id
        self.class_type = class_type
        self.error = error
        self.inputs = inputs


class Executor:
    """Runs prompts one at a time against a registry, sharing one output cache between them.

    Without a ``cache`` it makes an unbounded ``OutputCache``; a server passes one with budgets.
    ``services`` is what node code reaches through ``graph.services.current_services()`` while a
    prompt runs (Loom's hosts lend a ``nodes.runtime.Runtime``); without it, prompts see whatever the
    calling context lends.
    """

    def __init__(self, registry: NodeRegistry, cache: OutputCache | None = None, services: Any = None) -> None:
        self.registry = registry
        self.cache = cache if cache is not None else OutputCache()
        self.services = services
        self._facts = SpecFactsCache(registry)
        self._digests = DigestMemo()
        self._instances: dict[tuple[str, str], Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = threading.Lock()

    def execute(
        self,
        prompt: dict[str, Any],
        outputs: list[str],
        *,
        prompt_id: str,
        extra_data: dict[str, Any] | None = None,
        listener: Listener | None = None,
        interrupt: InterruptFlag | None = None,
    ) -> ExecutionRecord:
        """Run what ``outputs`` need; never raises for a bad prompt or a failing node (see the record).

        ``interrupt`` is read, never cleared: the caller owns it, so an interrupt that arrives between
        the caller's choosing this prompt and its start still stops it (before its first node).
        """
        lent = services_context(self.services) if self.services is not None else contextlib.nullcontext()
        with self._running, self.cache.prompt_scope(), lent:
            record = _PromptRun(
                self, prompt, outputs, prompt_id, extra_data or {}, listener, interrupt or InterruptFlag()
            ).execute()
        # The run and every value it did not cache are gone now; what they freed leaves the process.
        return_free_heap()
        return record

    def facts_of(self, class_type: str) -> SpecFacts | None:
        return self._facts.get(class_type)

    def keys_for(
        self, prompt: Mapping[str, Any], outputs: list[str], known: dict[str, CacheKey] | None = None
    ) -> dict[str, CacheKey]:
        """Cache keys of ``outputs`` and everything upstream, memoised across this executor's prompts."""
        return compute_keys(prompt, outputs, self._facts.get, self._digests, known)

    def instance_for(self, node_id: str, facts: SpecFacts) -> Any:
        """The node's kept instance (created on first use); stateless node types have none (``None``)."""
        key = (node_id, facts.spec.class_type)
        instance = self._instances.get(key)
        if instance is None:
            instance = facts.spec.create_instance()
            if instance is not None:
                self._instances[key] = instance
        return instance

    def keep_instances_of(self, prompt: Mapping[str, Any]) -> None:
        for node_id, class_type in list(self._instances):
            node = prompt.get(node_id)
            if not isinstance(node, Mapping) or node.get("class_type") != class_type:
                del self._instances[(node_id, class_type)]

    def await_result(self, awaitable: Any) -> Any:
        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(awaitable)


class _PromptRun:
    """One prompt's scheduling: the pending set, computed values and the lazy inputs requested so far."""

    def __init__(
        self,
        executor: Executor,
        prompt: Any,
        outputs: list[str],
        prompt_id: str,
        extra_data: Mapping[str, Any],
        listener: Listener | None,
        interrupt: InterruptFlag,
    ) -> None:
        self.executor = executor
        self.cache = executor.cache
        self.prompt = prompt
        #: The prompt plus the nodes expansions added (the original stays untouched: it is ``PROMPT``).
        self.graph: dict[str, Any] = {}
        #: Outputs of nodes that expanded, holding links into their subgraphs until those are computed.
        self.expanded: dict[str, tuple[tuple[list[Any], ...], dict[str, list[Any]] | None]] = {}
        self.requested_outputs = outputs
        self.outputs: list[str] = []
        self.extra_data = extra_data
        self.interrupt = interrupt
        self.state = ExecutionState(prompt_id, prompt.keys() if isinstance(prompt, Mapping) else (), listener)
        self.keys: dict[str, CacheKey] = {}
        self.values: dict[str, tuple[list[Any], ...]] = {}
        #: Insertion-ordered (a dict, not a set) so the run order is the same in every process.
        self.pending: dict[str, None] = {}
        self.requested: dict[str, set[str]] = {}
        self.dependencies: dict[str, list[str]] = {}
        self.facts_by_type: dict[str, SpecFacts] = {}
        self.current: str | None = None

    def execute(self) -> ExecutionRecord:
        self.state.start()
        try:
            if not isinstance(self.prompt, Mapping):
                raise PromptStructureError(None, f"the prompt is a {type(self.prompt).__name__}, not an object")
            self.graph = dict(self.prompt)
            self.outputs = list(dict.fromkeys(self.requested_outputs))
            self.keys = self.executor.keys_for(self.graph, self.outputs)
            self._use_cached_results()
            self.executor.keep_instances_of(self.prompt)
            self._require(self.outputs)
            self._run_pending()
        except Interrupted:
            return self.state.interrupt(self.current, self._class_type(self.current))
        except _NodeFailure as failure:
            exception_type = "ExecutionBlocked" if isinstance(failure.error, ExecutionBlocked) else None
            return self.state.fail(
                failure.node_id,
                failure.class_type,
                failure.error,
                traceback.format_tb(failure.error.__traceback__),
                failure.inputs,
                list(self.values),
                exception_type,
            )
        except PromptStructureError as error:
            return self.state.fail(error.node_id, self._class_type(error.node_id), error, [], {}, list(self.values))
        except Exception as error:  # an engine bug must not take the worker down; report it like a node error
            tb = traceback.format_tb(error.__traceback__)
            return self.state.fail(self.current, self._class_type(self.current), error, tb, {}, list(self.values))
        return self.state.succeed()

    def _class_type(self, node_id: str | None) -> str | None:
        graph = self.graph or (self.prompt if isinstance(self.prompt, Mapping) else {})
        node = graph.get(node_id) if node_id is not None else None
        return node.get("class_type") if isinstance(node, Mapping) else None

    def _use_cached_results(self) -> None:
        # get_many only reads the mapping, but asks for a dict[str, Hashable], which (dict being
        # invariant) a dict of bytes keys is not; OutputCache.get_many should take a Mapping.
        entries = self.cache.get_many(cast("dict[str, Hashable]", self.keys))
        for node_id, entry in entries.items():
            self.values[node_id] = entry.outputs
        self.state.found_cached([node_id for node_id in self.prompt if node_id in entries])
        for node_id in self.outputs:
            if node_id in entries:
                self.state.served_from_cache(node_id, entries[node_id].ui)

    def _facts_of_node(self, node_id: str) -> SpecFacts:
        class_type = self.graph[node_id]["class_type"]
        facts = self.facts_by_type.get(class_type)
        if facts is None:
            found = self.executor.facts_of(class_type)
            if found is None:
                raise PromptStructureError(node_id, f"unknown node type {class_type!r}")
            facts = self.facts_by_type[class_type] = found
        return facts

    def _dependencies(self, node_id: str) -> list[str]:
        """Sources that must be computed before ``node_id`` runs: non-lazy links plus requested lazy ones."""
        found = self.dependencies.get(node_id)
        if found is None:
            node = self.graph[node_id]
            lazy = self._facts_of_node(node_id).lazy
            requested = self.requested.get(node_id, ())
            found = self.dependencies[node_id] = [
                value[0]
                for name, value in node.get("inputs", {}).items()
                if is_link(value) and (name not in lazy or name in requested)
            ]
        return found

    def _require(self, roots: list[str]) -> None:
        """Add ``roots`` and their uncomputed upstream to ``pending``, dependencies first.

        An iterative depth-first post-order (a 10,000-node chain must not recurse), so the
        insertion order of ``pending`` is already a topological order: the first plan costs nothing
        beyond collecting the nodes. Cycles cannot occur here, ``compute_keys`` rejected them.
        """
        pending, values = self.pending, self.values
        for root in roots:
            if root in values or root in pending:
                continue
            visiting = {root}
            stack = [(root, iter(self._dependencies(root)))]
            while stack:
                node_id, sources = stack[-1]
                for source in sources:
                    if source not in values and source not in pending and source not in visiting:
                        visiting.add(source)
                        stack.append((source, iter(self._dependencies(source))))
                        break
                else:
                    stack.pop()
                    pending[node_id] = None

    def _replan(self) -> list[str]:
        """A topological order of what is still pending, after a node asked for lazy inputs or expanded (networkx)."""
        import networkx as nx

        graph = nx.DiGraph()
        graph.add_nodes_from(self.pending)
        pending = self.pending
        graph.add_edges_from(
            (source, node_id) for node_id in pending for source in self._dependencies(node_id) if source in pending
        )
        return list(nx.topological_sort(graph))

    def _run_pending(self) -> None:
        order = list(self.pending)
        while order:
            for node_id in order:
                if not self._run_node(node_id):
                    order = self._replan()
                    break
                del self.pending[node_id]
            else:
                order = []

    def _run_node(self, node_id: str) -> bool:
        """Run one node; ``False`` when it must run again later (it asked for lazy inputs, or expanded)."""
        self.current = node_id
        if self.interrupt.is_set():
            raise Interrupted(node_id)
        if node_id in self.expanded:
            slots, ui = self._resolve_expansion(node_id)
            self._finish(node_id, slots, ui, all_blocked=False)
            return True
        node = self.graph[node_id]
        class_type = node["class_type"]
        facts = self._facts_of_node(node_id)
        self.state.node_started(node_id)
        args: dict[str, list[Any]] = {}
        try:
            args, unevaluated = self._gather_inputs(node_id, node, facts)
            instance = self.executor.instance_for(node_id, facts)
            if unevaluated and facts.spec.lazy_status is not None:
                wanted = self._lazy_requests(node_id, facts, instance, args, unevaluated)
                if wanted:
                    self.requested.setdefault(node_id, set()).update(wanted)
                    del self.dependencies[node_id]
                    self._require([node["inputs"][name][0] for name in wanted])
                    self.state.node_deferred(node_id)
                    return False
            slots, ui, all_blocked, expansions = self._call(node_id, facts, instance, args)
            if expansions:
                self._expand(node_id, expansions, slots, ui)
                return False
        except Exception as error:  # Interrupted is a BaseException and passes through
            visible = {name: values for name, values in args.items() if name not in dict(facts.hidden)}
            raise _NodeFailure(node_id, class_type, error, visible) from error
        self._finish(node_id, slots, ui, all_blocked)
        return True

    def _finish(
        self, node_id: str, slots: tuple[list[Any], ...], ui: dict[str, list[Any]] | None, all_blocked: bool
    ) -> None:
        self.values[node_id] = slots
        if can_match(self.keys[node_id]):
            self.cache.put(self.keys[node_id], slots, ui)
        if all_blocked:
            self.state.node_skipped(node_id)
        else:
            self.state.node_succeeded(node_id, ui)

    def _expand(
        self,
        node_id: str,
        expansions: list[Mapping[str, Any]],
        slots: tuple[list[Any], ...],
        ui: dict[str, list[Any]] | None,
    ) -> None:
        """Add the subgraphs to this prompt and wait for the nodes the results link to."""
        added: list[str] = []
        for subgraph in expansions:
            for new_id, new_node in subgraph.items():
                if new_id in self.graph:
                    raise DuplicateNodeError(node_id, new_id)
                self.graph[new_id] = new_node
                display = new_node.get("override_display_id") if isinstance(new_node, Mapping) else None
                self.state.add_expanded(new_id, node_id, display)
                added.append(new_id)
        targets = list(dict.fromkeys(item[0] for slot in slots for item in slot if is_link(item)))
        for target in targets:
            if target not in self.graph:
                raise PromptStructureError(
                    node_id, f"its expansion result links to node {target!r}, which does not exist"
                )
        self.executor.keys_for(self.graph, added + targets, self.keys)
        fresh = [new_id for new_id in added + targets if new_id not in self.values]
        for new_id, entry in self.cache.get_many({new_id: self.keys[new_id] for new_id in fresh}).items():
            self.values[new_id] = entry.outputs
        self.expanded[node_id] = (slots, ui)
        self.dependencies[node_id] = targets
        self._require(targets)
        self.state.node_deferred(node_id)

    def _resolve_expansion(self, node_id: str) -> tuple[tuple[list[Any], ...], dict[str, list[Any]] | None]:
        """The expanding node's outputs: each link replaced by every item the linked output produced."""
        slots, ui = self.expanded.pop(node_id)
        resolved: tuple[list[Any], ...] = tuple([] for _ in slots)
        for target, slot in zip(resolved, slots, strict=True):
            for item in slot:
                if is_link(item):
                    target.extend(self.values[item[0]][item[1]])
                else:
                    target.append(item)
        return resolved, ui

    def _gather_inputs(
        self, node_id: str, node: Mapping[str, Any], facts: SpecFacts
    ) -> tuple[dict[str, list[Any]], list[str]]:
        args: dict[str, list[Any]] = {}
        unevaluated: list[str] = []
        for name, value in node.get("inputs", {}).items():
            if not is_link(value):
                # ComfyUI passes a constant the node does not declare only to nodes that accept all inputs;
                # links always pass (nodes with dynamic inputs rely on it).
                if name in facts.declared or facts.spec.accepts_all_inputs:
                    args[name] = [unwrap_value(value)]
                continue
            source, slot = value
            if source in self.values:
                produced = self.values[source]
                if not 0 <= slot < len(produced):
                    raise PromptStructureError(
                        node_id,
                        f"input {name!r} links to output {slot} of node {source!r}, which has {len(produced)} outputs",
                    )
                args[name] = produced[slot]
            elif name in facts.lazy:
                args[name] = [None]
                unevaluated.append(name)
            else:
                raise PromptStructureError(node_id, f"input {name!r}: node {source!r} has not produced its outputs")
        for name, kind in facts.hidden:
            args[name] = [self._hidden_value(node_id, kind)]
        return args, unevaluated

    def _hidden_value(self, node_id: str, kind: str) -> Any:
        if kind == "PROMPT":
            return self.prompt
        if kind == "DYNPROMPT":
            return self.graph
        if kind == "UNIQUE_ID":
            return node_id
        if kind == "EXTRA_PNGINFO":
            return self.extra_data.get("extra_pnginfo")
        if kind == "AUTH_TOKEN_COMFY_ORG":
            return self.extra_data.get("auth_token_comfy_org")
        if kind == "API_KEY_COMFY_ORG":
            return self.extra_data.get("api_key_comfy_org")
        return None

    def _lazy_requests(
        self, node_id: str, facts: SpecFacts, instance: Any, args: dict[str, list[Any]], unevaluated: list[str]
    ) -> list[str]:
        """The unevaluated lazy inputs the node asks for, over every list index (docs/compatibility.md §3.7)."""
        assert facts.spec.lazy_status is not None
        wanted: dict[str, None] = {}
        with node_context(node_id, self.interrupt, self.state):
            for kwargs in _call_arguments(args, facts.spec.input_is_list):
                for name in facts.spec.lazy_status(instance, kwargs):
                    if name in unevaluated:
                        wanted[name] = None
        return list(wanted)

    def _call(
        self, node_id: str, facts: SpecFacts, instance: Any, args: dict[str, list[Any]]
    ) -> tuple[tuple[list[Any], ...], dict[str, list[Any]] | None, bool, list[Mapping[str, Any]]]:
        """Call the node over the list mapping.

        Returns the output slots, the merged UI, whether every call was blocked, and the subgraphs
        the calls asked to expand (their results may then hold links into them).
        """
        spec = facts.spec
        slots: tuple[list[Any], ...] = tuple([] for _ in spec.outputs)
        ui: dict[str, list[Any]] | None = None
        expansions: list[Mapping[str, Any]] = []
        calls = 0
        blocked = 0
        with node_context(node_id, self.interrupt, self.state):
            for kwargs in _call_arguments(args, spec.input_is_list):
                calls += 1
                blocker = _blocker_in(kwargs, spec.input_is_list)
                if blocker is not None:
                    if blocker.message is not None:
                        raise ExecutionBlocked(blocker.message)
                    blocked += 1
                    for slot in slots:
                        slot.append(blocker)
                    continue
                if self.interrupt.is_set():
                    raise Interrupted(node_id)
                raw = spec.run(instance, kwargs)
                if type(raw) not in _PLAIN_RESULTS and inspect.isawaitable(raw):
                    raw = self.executor.await_result(raw)
                result = spec.normalize_result(raw)
                _check_result(spec.class_type, result, len(slots))
                if result.expand:
                    expansions.append(result.expand)
                for slot, output, value in zip(slots, spec.outputs, result.values, strict=True):
                    if output.is_list and not isinstance(value, ExecutionBlocker) and not is_link(value):
                        slot.extend(value)
                    else:
                        slot.append(value)
                if result.ui:
                    ui = _merge_ui(ui, result.ui)
        return slots, ui, calls > 0 and blocked == calls, expansions


#: Return types that are certainly not awaitable; checked first because ``isawaitable`` is slow.
_PLAIN_RESULTS = frozenset({tuple, list, dict, NodeResult, ExecutionBlocker, type(None)})


def _call_arguments(args: dict[str, list[Any]], input_is_list: bool) -> list[dict[str, Any]]:
    """Keyword arguments of each call: whole lists, or one index at a time (shorter lists repeat their last item)."""
    if input_is_list:
        return [args]
    count = 1
    for values in args.values():
        if len(values) != 1:
            count = 0 if not values or not count else max(count, len(values))
    if count == 1:
        return [{name: values[0] for name, values in args.items()}]
    return [
        {name: values[index if index < len(values) else -1] for name, values in args.items()} for index in range(count)
    ]


def _blocker_in(kwargs: dict[str, Any], input_is_list: bool) -> ExecutionBlocker | None:
    for value in kwargs.values():
        if input_is_list:
            for item in value:
                if isinstance(item, ExecutionBlocker):
                    return item
        elif isinstance(value, ExecutionBlocker):
            return value
    return None


def _check_result(class_type: str, result: NodeResult, outputs: int) -> None:
    if result.expand is not None and not isinstance(result.expand, Mapping):
        raise NodeReturnError(
            class_type, f"an expansion that is a {type(result.expand).__name__}, not an API-format graph"
        )
    if len(result.values) != outputs:
        raise NodeReturnError(class_type, f"{len(result.values)} values for {outputs} outputs")


def _merge_ui(merged: dict[str, list[Any]] | None, ui: Mapping[str, Any]) -> dict[str, list[Any]]:
    merged = {} if merged is None else merged
    for key, value in ui.items():
        items = merged.setdefault(key, [])
        if isinstance(value, (list, tuple)):
            items.extend(value)
        else:
            items.append(value)
    return merged
