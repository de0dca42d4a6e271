"""Everything `loom serve` can be told, as one immutable value.

The CLI, the tests and the benchmark all build a ``ServerConfig`` and hand it to ``create_app``;
nothing in ``server/`` reads flags or the environment on its own, except the auth token, which may
come from ``LOOM_AUTH_TOKEN`` so that it never has to appear in a process listing.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from nodes.runtime_options import RuntimeOptions
from server.distributed.spec import WorkersSpec, parse_workers

__all__ = [
    "ServerConfig",
    "AUTH_TOKEN_ENV",
    "REPO_ROOT",
    "parse_size",
    "is_loopback_host",
]

AUTH_TOKEN_ENV = "LOOM_AUTH_TOKEN"
REPO_ROOT = Path(__file__).resolve().parent.parent


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_size(text: str) -> int:
    """``"512M"``, ``"4G"``, ``"1.5GiB"`` or a plain byte count → bytes (binary units)."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"not a size: {text!r} (expected e.g. 512M, 4G or a byte count)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def is_loopback_host(host: str) -> bool:
    """Whether a bind address or Host name only reaches this machine."""
    name = host.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def default_cache_budget() -> int:
    """Three quarters of this machine's RAM: the cache holds the loaded models too (an SDXL file is
    about 6.9 GB in fp16), so a fixed small default would drop and rebuild them for every prompt,
    while the rest is left for the running prompt's activations and the system."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * 3 // 4


def _env_token() -> str | None:
    return os.environ.get(AUTH_TOKEN_ENV) or None


@dataclass(frozen=True)
class ServerConfig:
    """One ``loom serve`` flag per field; directories left ``None`` live under ``base_dir``."""

    host: str = "127.0.0.1"
    port: int = 8188
    base_dir: Path = field(default_factory=Path.cwd)
    models_dir: Path | None = None
    input_dir: Path | None = None
    output_dir: Path | None = None
    user_dir: Path | None = None
    temp_dir: Path | None = None
    #: ComfyUI ``extra_model_paths.yaml`` files, read in order.
    extra_model_paths: tuple[Path, ...] = ()
    #: Bytes of node outputs kept between prompts, loaded models included (``graph.cache``).
    cache_budget_bytes: int = field(default_factory=default_cache_budget)
    device: str = "auto"
    dtype: str = "auto"
    #: Bytes the models may hold on the device (``--vram-budget``); None: the device's memory less a reserve.
    vram_budget_bytes: int | None = None
    #: Bytes of node outputs kept on the device between prompts (``--cache-vram-budget``); None: 1 GiB on a GPU.
    cache_vram_budget_bytes: int | None = None
    auth_token: str | None = field(default_factory=_env_token)
    preview_method: str = "auto"
    frontend_root: Path = REPO_ROOT / "web"
    max_upload_bytes: int = 100 * 2**20
    cors_origin: str | None = None
    #: Load no plugins except those named in ``custom_node_whitelist`` (``--disable-custom-nodes``).
    disable_custom_nodes: bool = False
    #: Plugins still loaded when ``disable_custom_nodes`` is set: folder names, file names or stems.
    custom_node_whitelist: tuple[str, ...] = ()
    #: Plugin folders searched after the repository's ``custom_nodes/``, in this order.
    extra_custom_node_dirs: tuple[Path, ...] = ()
    #: History entries kept in the database; the oldest are dropped past this (ComfyUI keeps 10,000).
    max_history: int = 10_000
    #: Frames a WebSocket may have waiting before it is judged too slow and closed.
    ws_send_queue: int = 1024
    #: Seconds one frame may take to reach a socket before that socket is closed.
    ws_send_timeout: float = 10.0
    #: Where prompts run: ``local``, ``ray-local:N`` or ``ray://ADDRESS`` (``server.distributed.spec``).
    workers: str = "local"
    #: Place the bundled upscalers and a sample image at start (``server.starter``); ``--no-starter-files``.
    starter_files: bool = True
    #: Let the editor have model files fetched into the models folders (``server.model_downloads``).
    #: Off by default: it makes the server open outbound connections and write files that are
    #: later loaded, which only the machine's owner should allow (``--enable-model-downloads``).
    enable_model_downloads: bool = False

    def __post_init__(self) -> None:
        for name in ("base_dir", "models_dir", "input_dir", "output_dir", "user_dir", "temp_dir", "frontend_root"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        object.__setattr__(self, "extra_model_paths", tuple(Path(file) for file in self.extra_model_paths))
        object.__setattr__(self, "custom_node_whitelist", tuple(self.custom_node_whitelist))
        object.__setattr__(
            self, "extra_custom_node_dirs", tuple(Path(folder) for folder in self.extra_custom_node_dirs)
        )
        self.runtime_options()  # checks the device, dtype and preview names
        if not 0 < self.port < 65536:
            raise ValueError(f"port {self.port} out of range 1..65535")
        if self.max_upload_bytes <= 0 or self.cache_budget_bytes < 0:
            raise ValueError("max_upload_bytes must be positive and cache_budget_bytes not negative")
        parse_workers(self.workers)

    @property
    def workers_spec(self) -> WorkersSpec:
        return parse_workers(self.workers)

    def runtime_options(self) -> RuntimeOptions:
        """What the nodes' runtime is built from: the server's own and each Ray worker's."""
        return RuntimeOptions.of(self)

    def _dir(self, explicit: Path | None, name: str) -> Path:
        return explicit if explicit is not None else self.base_dir / name

    @property
    def models_path(self) -> Path:
        return self._dir(self.models_dir, "models")

    @property
    def input_path(self) -> Path:
        return self._dir(self.input_dir, "input")

    @property
    def output_path(self) -> Path:
        return self._dir(self.output_dir, "output")

    @property
    def user_path(self) -> Path:
        return self._dir(self.user_dir, "user")

    @property
    def temp_path(self) -> Path:
        return self._dir(self.temp_dir, "temp")

    @property
    def database_path(self) -> Path:
        """Queue and history live with the user's data, so they survive a reinstall of the code."""
        return self.user_path / "loom.sqlite3"

    @property
    def loopback_only(self) -> bool:
        return all(is_loopback_host(part) for part in self.host.split(","))
