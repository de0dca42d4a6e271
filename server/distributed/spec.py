"""The ``--workers`` flag: where prompts run.

``local`` (the default) runs them in the server process. ``ray-local:N`` runs them on N Ray worker
actors on this machine, starting a Ray instance whose node address is 127.0.0.1 (or joining the one
this process already started). ``ray://ADDRESS`` joins an existing cluster: ``ray://auto`` from a
process running on a cluster node (a Ray driver, the recommended form), any other address through
Ray Client (``ray://head:10001``). Parsing needs no Ray, so a bad flag fails before anything starts.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from typing import Literal

__all__ = ["WorkersSpec", "parse_workers", "require_ray", "DistributedUnavailableError"]


class DistributedUnavailableError(RuntimeError):
    """``--workers ray...`` was asked for but Ray is not installed."""

    def __init__(self, spec: str) -> None:
        super().__init__(
            f"--workers {spec} needs Ray, which is not installed: install the 'distributed' extra "
            "(pip install 'loom[distributed]', or pip install 'ray==2.60.0')"
        )
        self.spec = spec


@dataclass(frozen=True)
class WorkersSpec:
    """A parsed ``--workers`` value."""

    kind: Literal["local", "ray-local", "ray"]
    count: int = 1
    address: str | None = None

    @property
    def uses_ray(self) -> bool:
        return self.kind != "local"

    def __str__(self) -> str:
        """The flag value this spec was parsed from."""
        if self.kind == "ray-local":
            return f"ray-local:{self.count}"
        return f"ray://{self.address}" if self.kind == "ray" else "local"


_RAY_LOCAL = re.compile(r"ray-local:(\d+)")
_RAY_ADDRESS = re.compile(r"ray://(\S+)")


def parse_workers(text: str) -> WorkersSpec:
    """``local`` | ``ray-local:N`` | ``ray://ADDRESS``; raises ``ValueError`` naming the forms."""
    if text == "local":
        return WorkersSpec("local")
    if match := _RAY_LOCAL.fullmatch(text):
        count = int(match.group(1))
        if count < 1:
            raise ValueError(f"--workers {text}: need at least one worker actor")
        return WorkersSpec("ray-local", count=count)
    if match := _RAY_ADDRESS.fullmatch(text):
        return WorkersSpec("ray", address=match.group(1))
    raise ValueError(f"--workers {text!r}: expected 'local', 'ray-local:N' or 'ray://ADDRESS'")


def require_ray(spec: str) -> None:
    """Fail early and clearly, before the server binds its port, when Ray is missing."""
    if importlib.util.find_spec("ray") is None:
        raise DistributedUnavailableError(spec)
