"""Prompts on Ray actors: each ``LoomWorkerActor`` is a whole Loom executor with its own model cache.

One actor per device (a GPU on a cluster, a CPU slot locally) holds a registry, an ``OutputCache``
and an ``Executor`` for its lifetime, so the models it loaded stay warm between prompts exactly as in
the single-process server. The server keeps the queue; ``RayBackend.execute`` is called by one of
the worker's lane threads per running prompt and:

* picks an actor with the ``Dispatcher`` (cache affinity, then least busy);
* calls the actor's ``run`` as a Ray *streaming generator*: events are yielded as soon as the
  listener sees them (in batches of whatever is queued at that moment), the ``ExecutionRecord``
  last. Chosen over polling (latency plus a call per tick per prompt) and over a
  ``ray.util.queue.Queue`` (itself an actor: every event would take two hops): the stream keeps the
  executor's order, delivers events in one hop, and an actor that dies surfaces as
  ``RayActorError`` on the next read, which is what the retry needs;
* forwards each event to the listener unchanged, so the WebSocket frames are the in-process ones;
* routes an interrupt to that actor: the lane's ``InterruptFlag`` is polled between reads (every
  ``POLL_SECONDS``) and, once set, ``actor.interrupt(prompt_id)`` is sent until the actor confirms;
* retries a prompt whose actor died once, on another actor, replacing the dead one so the pool keeps
  its size; a second loss raises ``WorkerLostError``, which the worker records as an
  ``execution_error`` in the history.

Outputs: an actor writes to the server's output folder by path. On one machine that is the same
filesystem; on a cluster the folders must be shared storage mounted at the same path on every node
(docs/scaling.md). Ray is imported only here, and only when this module is used.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from graph import events
from graph.cache import OutputCache
from graph.events import Listener
from graph.executor import Executor
from graph.progress import InterruptFlag
from graph.registry import NodeRegistry
from nodes.runtime import RuntimeOptions, build_runtime
from server.config import ServerConfig
from server.distributed.backend import LocalBackend, WorkerLostError
from server.distributed.placement import Dispatcher, model_files
from server.distributed.spec import WorkersSpec, require_ray

__all__ = [
    "LoomWorkerActor",
    "RayBackend",
    "WorkerSetup",
    "WorkersDidNotStartError",
    "actor_resources",
    "POLL_SECONDS",
    "ATTEMPTS",
]

log = logging.getLogger(__name__)

#: How often a lane waiting for the next event checks its interrupt flag.
POLL_SECONDS = 0.05
#: Runs of one prompt before it is reported failed: the first, and one retry on another actor.
ATTEMPTS = 2
#: Threads per actor: the running prompt's stream plus ``interrupt``/``free`` calls arriving meanwhile.
ACTOR_CONCURRENCY = 4
#: Seconds the server waits at startup for its actors (a cold node imports torch; a full cluster never places them).
START_SECONDS = 300.0


class WorkersDidNotStartError(RuntimeError):
    """The worker actors were not running in time: usually the cluster lacks the resources they ask for."""

    def __init__(self, count: int, seconds: float, resources: dict[str, Any]) -> None:
        super().__init__(
            f"{count} Loom worker actor(s) asking for {resources or 'no special resources'} did not start within "
            f"{seconds:.0f} s: check that the Ray cluster has them free (`ray status`)"
        )
        self.count = count
        self.seconds = seconds
        self.resources = resources


@dataclass(frozen=True)
class WorkerSetup:
    """What every actor needs to become a Loom executor like the server's own.

    Exactly one of ``registry`` (sent as it is: tests' stand-in nodes) and ``plugins`` (the server's
    config: the actor loads the built-ins and the same plugins itself) is set.
    """

    #: The server's own runtime options: workers find models, write outputs and compute as it does.
    runtime: RuntimeOptions
    cache_budget_bytes: int
    registry: NodeRegistry | None = None
    plugins: ServerConfig | None = None

    def __post_init__(self) -> None:
        if (self.registry is None) == (self.plugins is None):
            raise ValueError("WorkerSetup takes either a registry or the config to load plugins from")

    def build_registry(self) -> NodeRegistry:
        if self.registry is not None:
            return self.registry
        from server.plugins import configured_registry

        assert self.plugins is not None
        return configured_registry(self.plugins)[0]


class LoomWorkerActor:
    """The body of one Ray worker actor (wrapped with ``ray.remote`` by ``RayBackend``)."""

    def __init__(self, setup: WorkerSetup) -> None:
        self.runtime = build_runtime(setup.runtime)
        cache = OutputCache(setup.cache_budget_bytes, device_budget_bytes=self.runtime.cache_vram_budget_bytes)
        self._local = LocalBackend(Executor(setup.build_registry(), cache, services=self.runtime), cache)
        self._lock = threading.Lock()
        self._executing = threading.Lock()
        self._interrupt = InterruptFlag()
        self._running: str | None = None
        self._free_request: tuple[bool, bool] | None = None

    def ready(self) -> bool:
        return True

    def run(
        self, prompt: dict[str, Any], outputs: list[str], prompt_id: str, extra_data: dict[str, Any]
    ) -> Iterator[list[tuple[str, Any, Any]]]:
        """Yield batches of ``("event", name, data)`` in order; the last ends with ``("record", record, None)``.

        The executor reports through a callback, so it runs on a thread of its own and the events
        cross to this generator through a queue. Each yield carries every event queued by then: one
        Ray object per batch rather than per event, so a burst (a node's ``executing``, ``progress``
        and ``progress_state``) costs one hop, while a lone event still leaves at once.
        """
        messages: queue.SimpleQueue[tuple[str, Any, Any]] = queue.SimpleQueue()

        def listener(name: str, data: dict[str, Any]) -> None:
            if name == events.EXECUTION_START:
                # Only now may an interrupt land, so one meant for the previous prompt never stops this one.
                with self._lock:
                    self._running = prompt_id
            messages.put(("event", name, data))

        def work() -> None:
            try:
                with self._executing:
                    self._apply_free_request()  # one that arrived just as the previous prompt ended
                    self._interrupt.clear()
                    record = self._local.execute(
                        prompt,
                        outputs,
                        prompt_id=prompt_id,
                        extra_data=extra_data,
                        listener=listener,
                        interrupt=self._interrupt,
                    )
                    with self._lock:
                        self._running = None
                    self._apply_free_request()
                messages.put(("record", record, None))
            except BaseException as error:  # handed to the generator, which raises it to the caller
                messages.put(("error", error, None))

        threading.Thread(target=work, name=f"loom-actor-{prompt_id}", daemon=True).start()
        while True:
            batch = [messages.get()]
            while not messages.empty() and batch[-1][0] == "event":
                batch.append(messages.get())
            if batch[-1][0] == "error":
                if batch[:-1]:
                    yield batch[:-1]
                raise batch[-1][1]
            yield batch
            if batch[-1][0] == "record":
                return

    def interrupt(self, prompt_id: str) -> bool:
        """Stop ``prompt_id`` if it is the one running here; ``False`` if it has not started (yet)."""
        with self._lock:
            if self._running != prompt_id:
                return False
            self._interrupt.set()
            return True

    def free(self, unload_models: bool, free_memory: bool) -> None:
        """Applied now when idle, else right after the running prompt: never under one."""
        with self._lock:
            previous = self._free_request or (False, False)
            self._free_request = (previous[0] or unload_models, previous[1] or free_memory)
        if self._executing.acquire(blocking=False):
            try:
                self._apply_free_request()
            finally:
                self._executing.release()

    def _apply_free_request(self) -> None:
        with self._lock:
            request, self._free_request = self._free_request, None
        if request is not None:
            self._local.free(*request)


class RayBackend:
    """``PromptBackend`` over a pool of ``LoomWorkerActor``s; one lane per actor."""

    def __init__(self, spec: WorkersSpec, setup: WorkerSetup) -> None:
        require_ray(str(spec))
        import ray

        self._ray = ray
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            ray.init(**_init_arguments(spec))
        # Ray leaves cluster_resources unannotated; it returns {resource name: total amount}.
        cluster_resources: Callable[[], dict[str, float]] = ray.cluster_resources
        available = cluster_resources()
        count = spec.count if spec.kind == "ray-local" else max(1, int(available.get("GPU", 0)))
        resources = actor_resources(spec, count, available)
        self._actor_class = ray.remote(LoomWorkerActor).options(
            max_concurrency=ACTOR_CONCURRENCY, scheduling_strategy="SPREAD", **resources
        )
        self._setup = setup
        self._names = (f"worker-{index}" for index in itertools.count(1))
        self._lock = threading.Lock()
        self._actors: dict[str, Any] = {}
        self._placed: dict[str, str] = {}
        self.dispatcher = Dispatcher()
        for _ in range(count):
            self._spawn()
        try:
            # Fail at startup, not on the first prompt, if an actor cannot be built (e.g. the
            # registry's node modules are not importable on the worker nodes).
            ray.get([actor.ready.remote() for actor in self.actors().values()], timeout=START_SECONDS)
        except BaseException as error:
            self.close()
            if isinstance(error, ray.exceptions.GetTimeoutError):
                raise WorkersDidNotStartError(count, START_SECONDS, resources) from error
            raise
        self._lanes = count

    @property
    def lanes(self) -> int:
        return self._lanes

    def actors(self) -> dict[str, Any]:
        """The live actor handles by worker name (a copy; tests kill them to simulate a lost node)."""
        with self._lock:
            return dict(self._actors)

    def running_on(self, prompt_id: str) -> str | None:
        """The worker ``prompt_id`` is running on now, if any."""
        with self._lock:
            return self._placed.get(prompt_id)

    def _spawn(self) -> str:
        name = next(self._names)
        actor = self._actor_class.remote(self._setup)
        with self._lock:
            self._actors[name] = actor
        self.dispatcher.add(name)
        return name

    def _replace(self, name: str) -> None:
        self.dispatcher.remove(name)
        with self._lock:
            dead = self._actors.pop(name, None)
        if dead is not None:
            self._ray.kill(dead, no_restart=True)
            log.warning("worker %s died; started %s in its place", name, self._spawn())

    def execute(
        self,
        prompt: dict[str, Any],
        outputs: list[str],
        *,
        prompt_id: str,
        extra_data: dict[str, Any] | None = None,
        listener: Listener | None = None,
        interrupt: InterruptFlag | None = None,
    ) -> Any:
        files = model_files(prompt) if isinstance(prompt, dict) else frozenset()
        tried: list[str] = []
        reason = "no worker is available"
        for _ in range(ATTEMPTS):
            name = self.dispatcher.acquire(files, exclude=tried)
            if name is None:
                break
            held: frozenset[str] = frozenset()
            with self._lock:
                self._placed[prompt_id] = name
            try:
                record = self._run_on(
                    name, prompt, outputs, prompt_id, extra_data or {}, listener, interrupt or InterruptFlag()
                )
                held = model_files(prompt, [*record.executed, *record.cached])
                return record
            except self._ray.exceptions.RayActorError as error:
                tried.append(name)
                reason = str(error).splitlines()[0]
                log.warning("prompt %s: worker %s died: %s", prompt_id, name, reason)
                self._replace(name)
            finally:
                with self._lock:
                    self._placed.pop(prompt_id, None)
                self.dispatcher.release(name, held)
        raise WorkerLostError(prompt_id, tried, reason)

    def _run_on(
        self,
        name: str,
        prompt: dict[str, Any],
        outputs: list[str],
        prompt_id: str,
        extra_data: dict[str, Any],
        listener: Listener | None,
        interrupt: InterruptFlag,
    ) -> Any:
        ray = self._ray
        actor = self.actors()[name]
        stream = actor.run.options(num_returns="streaming").remote(prompt, outputs, prompt_id, extra_data)
        acknowledged = False
        pending_ack = None
        while True:
            if interrupt.is_set() and not acknowledged:
                if pending_ack is None:
                    pending_ack = actor.interrupt.remote(prompt_id)
                elif ray.wait([pending_ack], timeout=0)[0]:
                    # ``False``: the prompt had not started on the actor yet; ask again next tick.
                    acknowledged, pending_ack = bool(ray.get(pending_ack)), None
            if not ray.wait([stream], timeout=POLL_SECONDS)[0]:
                continue
            try:
                batch = ray.get(next(stream))
            except StopIteration:
                raise RuntimeError(f"worker {name} ended prompt {prompt_id} without a record") from None
            for kind, value, data in batch:
                if kind == "record":
                    return value
                if listener is not None:
                    listener(value, data)

    def free(self, unload_models: bool, free_memory: bool) -> None:
        """Waits until every actor has freed or scheduled the free, so no later prompt sees the old cache."""
        for reply in [actor.free.remote(unload_models, free_memory) for actor in self.actors().values()]:
            try:
                self._ray.get(reply)
            except self._ray.exceptions.RayActorError:
                pass  # a dead actor holds nothing; its replacement starts empty
        if unload_models or free_memory:
            self.dispatcher.forget_models()

    def close(self) -> None:
        """Kill the actors; shut Ray down only if this backend started it."""
        with self._lock:
            actors, self._actors = list(self._actors.values()), {}
        for actor in actors:
            self._ray.kill(actor, no_restart=True)
        if self._owns_ray:
            self._ray.shutdown()


def actor_resources(spec: WorkersSpec, count: int, available: dict[str, float]) -> dict[str, float]:
    """What each actor asks Ray for.

    GPUs: one per actor on a cluster; ``ray-local:N`` on a GPU machine shares its GPUs among the N.
    CPUs, ``ray-local`` only: the machine's cores split evenly, because Ray sets ``OMP_NUM_THREADS``
    (hence torch's thread count) to an actor's ``num_cpus``, and to 1 when none is asked for: one
    actor on a 2-core machine would otherwise compute on one core. On a cluster the actors keep Ray's
    default (a GPU does the work; CPU-heavy nodes can be given ``num_cpus`` by editing this policy).
    """
    resources: dict[str, float] = {}
    gpus = available.get("GPU", 0)
    if gpus:
        resources["num_gpus"] = min(1.0, gpus / count)
    if spec.kind == "ray-local":
        resources["num_cpus"] = max(1, int(available.get("CPU", 1)) // count)
    return resources


def _init_arguments(spec: WorkersSpec) -> dict[str, Any]:
    """``ray-local``: a new private instance (``address="local"``: never a cluster some ``ray start``
    left behind) whose node registers as 127.0.0.1, so its traffic stays on loopback (by default it
    registers under the LAN address; docs/scaling.md), no dashboard. ``ray://auto``
    joins as a driver on a cluster node; any other address goes through Ray Client."""
    if spec.kind == "ray-local":
        return {"address": "local", "include_dashboard": False, "_node_ip_address": "127.0.0.1"}
    return {"address": "auto" if spec.address == "auto" else f"ray://{spec.address}"}
