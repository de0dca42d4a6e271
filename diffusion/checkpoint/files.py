"""Open every weight file Loom reads: keys, shapes and dtypes first, tensor bytes only when asked for.

Checkpoints, VAEs, LoRAs, embeddings, upscalers and TAESD decoders all open here, so a file named
`.pt` that holds safetensors, or a web page saved as `.safetensors`, behaves the same whichever node
loads it. The format comes from the content (`sniff`), never from the suffix.

A single-file SDXL checkpoint is ~7 GB; reading it to classify it, or copying it once into RAM and
once more into the model, is what makes naive loaders slow and memory hungry. Here:

- safetensors is parsed by hand (an 8-byte little-endian header length, a JSON header, a flat data
  section) and each tensor is a `torch.frombuffer` view over a copy-on-write `mmap` of the file: no
  byte is read until a tensor is touched, no copy is made until it is moved or cast.
- Pickled torch files (zip or legacy) go through `torch.load(weights_only=True)`, memory mapped
  when the file is a zip archive (the only layout `mmap=True` supports). `weights_only` refuses
  arbitrary code in the pickle, which is how malicious checkpoints work.
- A pickle named `.safetensors` is refused rather than unpickled. That name promises a file that
  cannot carry code, so users and model sites scrutinise it less, and no tool writes a pickle under
  it by mistake: it is a disguise or a mix-up, and a user who trusts the file can rename it. The
  reverse, safetensors under a pickle's name, is simply read, since it is the safer format.
"""

from __future__ import annotations

import json
import mmap
import re
import struct
import threading
import weakref
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from math import prod
from pathlib import Path

import torch

from .errors import CheckpointFormatError
from .sniff import WeightFormat, sniff_weight_format

__all__ = ["LazyStateDict", "TensorEntry", "open_state_dict", "release_file_pages"]

# dtype names from the safetensors specification (https://github.com/huggingface/safetensors).
_SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U64": torch.uint64,
    "U32": torch.uint32,
    "U16": torch.uint16,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}

_SAFETENSORS_SUFFIXES = frozenset({".safetensors", ".sft"})
# Training code saves the weights beside its bookkeeping: PyTorch Lightning (the original SD `.ckpt`
# files) under "state_dict", BasicSR and Real-ESRGAN under "params_ema" (the EMA weights they
# evaluate with, hence preferred) and "params".
_WRAPPER_KEYS = ("params_ema", "params", "state_dict")


@dataclass(frozen=True)
class TensorEntry:
    """What is known about a stored tensor without reading its bytes."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return prod(self.shape) * self.dtype.itemsize


class LazyStateDict(Mapping[str, torch.Tensor]):
    """A read-only state dict whose tensors are loaded one key at a time.

    `view(prefix)` gives the sub-dict under a prefix with the prefix stripped, sharing the same
    file: this is how a checkpoint is split into UNet / VAE / text encoder without touching weights.
    Tensors come back in their stored dtype on the CPU; placing and casting is the caller's job.
    """

    def __init__(
        self,
        entries: Mapping[str, TensorEntry],
        load: Callable[[str], torch.Tensor],
        path: Path | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self._entries = dict(entries)
        self._load = load
        self.path = path
        self.metadata: Mapping[str, str] = dict(metadata or {})

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], path: Path | None = None) -> LazyStateDict:
        """Wrap tensors already in memory (or on the meta device) in the same interface."""
        entries = {k: TensorEntry(tuple(v.shape), v.dtype) for k, v in tensors.items()}
        return cls(entries, tensors.__getitem__, path)

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._entries:
            raise KeyError(key)
        return self._load(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def shape(self, key: str) -> tuple[int, ...]:
        return self._entries[key].shape

    def dtype(self, key: str) -> torch.dtype:
        return self._entries[key].dtype

    @property
    def nbytes(self) -> int:
        """Bytes the tensors occupy in their stored dtypes."""
        return sum(e.nbytes for e in self._entries.values())

    def has_prefix(self, prefix: str) -> bool:
        return any(k.startswith(prefix) for k in self._entries)

    def view(self, prefix: str) -> LazyStateDict:
        """The tensors whose keys start with `prefix`, with the prefix removed."""
        entries = {k[len(prefix) :]: e for k, e in self._entries.items() if k.startswith(prefix)}
        load = self._load
        return LazyStateDict(entries, lambda key: load(prefix + key), self.path, self.metadata)


def open_state_dict(path: str | Path) -> LazyStateDict:
    """Open a safetensors or pickled torch weight file, whatever its suffix, without reading tensor data.

    Raises `CheckpointFormatError` naming the file and what it holds when it is not weights Loom
    reads (see `sniff`), is damaged or cut short, or holds no tensors.
    """
    path = Path(path)
    found = sniff_weight_format(path)
    if found is WeightFormat.SAFETENSORS:
        return _open_safetensors(path)
    if found is WeightFormat.NCNN_PARAM:
        raise CheckpointFormatError(path, "is an ncnn network description (.param): it loads only as an upscaler")
    if found is WeightFormat.TORCH_ZIP:
        _check_torch_zip(path)
    if path.suffix.lower() in _SAFETENSORS_SUFFIXES:
        raise CheckpointFormatError(
            path,
            f"is named {path.suffix} but is a {found.value}; Loom does not unpickle a file whose name "
            "promises safetensors. If you trust where it came from, rename it to .pt",
        )
    return _open_torch_pickle(path, mmap_ok=found is WeightFormat.TORCH_ZIP)


def _open_safetensors(path: Path) -> LazyStateDict:
    size = path.stat().st_size
    with path.open("rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if 8 + header_len > size:
            raise CheckpointFormatError(
                path,
                f"truncated safetensors file: the header claims {header_len} bytes but only {size - 8} "
                "follow the length field",
            )
        raw = f.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointFormatError(path, f"safetensors header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise CheckpointFormatError(path, "safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + header_len
    data_size = size - data_start
    entries: dict[str, TensorEntry] = {}
    offsets: dict[str, int] = {}
    for key, info in header.items():
        entry, begin, end = _parse_header_entry(path, key, info)
        if end > data_size:
            raise CheckpointFormatError(
                path,
                f"truncated safetensors file: tensor {key!r} ends at byte {end} of the data section, "
                f"which has only {data_size} bytes",
            )
        entries[key] = entry
        offsets[key] = data_start + begin
    if not entries:
        raise CheckpointFormatError(path, "is a safetensors file without any tensors")
    return LazyStateDict(entries, _MappedTensors(path, entries, offsets), path, metadata)


def _parse_header_entry(path: Path, key: str, info: object) -> tuple[TensorEntry, int, int]:
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
        raise CheckpointFormatError(path, f"safetensors header entry {key!r} lacks dtype/shape/data_offsets")
    dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
    if dtype is None:
        raise CheckpointFormatError(path, f"tensor {key!r} has dtype {info['dtype']!r}, which Loom cannot read")
    shape = tuple(int(d) for d in info["shape"])
    begin, end = (int(o) for o in info["data_offsets"])
    entry = TensorEntry(shape, dtype)
    if end - begin != entry.nbytes:
        raise CheckpointFormatError(
            path,
            f"tensor {key!r} occupies {end - begin} bytes but shape {list(shape)} of {info['dtype']} "
            f"needs {entry.nbytes}",
        )
    return entry, begin, end


@dataclass(frozen=True)
class _Mapping:
    start: int
    length: int
    map: weakref.ref[mmap.mmap]


# Every live mapping this module made, by start address: what `release_file_pages` may advise on.
_MAPPINGS: dict[int, _Mapping] = {}
_MAPPINGS_LOCK = threading.Lock()


def _register_mapping(mapped: mmap.mmap) -> None:
    start = torch.frombuffer(mapped, dtype=torch.uint8, count=1).data_ptr()

    def forget(_: object) -> None:
        with _MAPPINGS_LOCK:
            _MAPPINGS.pop(start, None)

    with _MAPPINGS_LOCK:
        _MAPPINGS[start] = _Mapping(start, len(mapped), weakref.ref(mapped, forget))


def release_file_pages(tensor: torch.Tensor) -> bool:
    """Drop the resident pages of a tensor that views a mapped safetensors file; True if it did.

    A model computes from copies (weights cast to the compute dtype, oneDNN-packed convolution
    weights), and while anything still views the file, every page once read stays resident beside
    those copies: 2 GB for an fp16 SD1.5 checkpoint (bench/RESULTS.md). Dropping the pages fully inside
    the tensor's bytes costs nothing to correctness: the mapping is private and the views are never
    written (docs/architecture.md, "Memory"), so a later read faults the same bytes back in from the
    page cache or the file. Tensors that are not such views are left alone.
    """
    if tensor.device.type != "cpu" or not hasattr(mmap, "MADV_DONTNEED"):
        return False
    storage = tensor.untyped_storage()
    begin, end = storage.data_ptr(), storage.data_ptr() + storage.nbytes()
    with _MAPPINGS_LOCK:
        found = next((m for m in _MAPPINGS.values() if m.start <= begin and end <= m.start + m.length), None)
    mapped = found.map() if found is not None else None
    if found is None or mapped is None:
        return False
    first = -(-(begin - found.start) // mmap.PAGESIZE) * mmap.PAGESIZE
    last = (end - found.start) // mmap.PAGESIZE * mmap.PAGESIZE
    if last > first:
        mapped.madvise(mmap.MADV_DONTNEED, first, last - first)
    return True


class _MappedTensors:
    """Tensor loader over one copy-on-write mapping of a safetensors file.

    ACCESS_COPY maps pages privately: they are shared with the page cache until written, so the
    views are zero-copy yet writable (torch warns about read-only buffers), and an in-place edit of
    a loaded tensor can never reach the file. Loom never writes into them, which is what lets
    `release_file_pages` drop their pages once a model has made its compute copies.
    """

    def __init__(self, path: Path, entries: Mapping[str, TensorEntry], offsets: Mapping[str, int]) -> None:
        self._path = path
        self._entries = entries
        self._offsets = offsets
        self._map: mmap.mmap | None = None

    def __call__(self, key: str) -> torch.Tensor:
        entry = self._entries[key]
        numel = prod(entry.shape)
        if numel == 0:
            return torch.empty(entry.shape, dtype=entry.dtype)
        offset = self._offsets[key]
        if self._map is None:
            with self._path.open("rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
            _register_mapping(self._map)
        if offset % entry.dtype.itemsize:
            # Misaligned data (legal in the format, rare in practice): copy rather than hand
            # vectorised kernels a pointer they may not expect.
            raw = bytearray(self._map[offset : offset + entry.nbytes])
            return torch.frombuffer(raw, dtype=entry.dtype).reshape(entry.shape)
        return torch.frombuffer(self._map, dtype=entry.dtype, count=numel, offset=offset).reshape(entry.shape)


def _check_torch_zip(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile as exc:
        # A zip's directory sits at its end, so a download cut short loses it first.
        raise CheckpointFormatError(path, f"is a damaged or cut-short zip archive ({exc})") from exc
    if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        listing = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise CheckpointFormatError(path, f"is a zip archive but not a torch file (no data.pkl; holds {listing})")


def _open_torch_pickle(path: Path, mmap_ok: bool) -> LazyStateDict:
    """`mmap_ok` for zip archives only: `torch.load` can map those, not the legacy format."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap_ok)
    except MemoryError:
        raise
    except Exception as exc:  # damaged bytes fail deep inside torch.load with a dozen exception types
        raise CheckpointFormatError(path, _unpickling_failure(exc)) from exc
    return LazyStateDict.from_tensors(_weights_in(path, loaded), path)


def _unpickling_failure(exc: Exception) -> str:
    # torch words the refusal differently from version to version ("Unsupported global: GLOBAL x",
    # "Trying to load unsupported GLOBAL x", or an opcode it does not read at all).
    refused = re.search(r"unsupported global:? (?:GLOBAL )?(\S+)", str(exc), re.IGNORECASE)
    if refused:
        return (
            f"is a pickle that safe (weights_only) loading refuses: it asks for {refused.group(1)}, which is "
            "neither a tensor nor a plain container, and loading it would run that code"
        )
    if "Weights only load failed" in str(exc):
        return (
            "is a pickle that safe (weights_only) loading refuses: it holds more than tensors and plain "
            "containers, and loading it could run code"
        )
    first_line = next(iter(str(exc).strip().splitlines()), "")
    return f"is a damaged or cut-short torch file ({type(exc).__name__}{': ' if first_line else ''}{first_line})"


def _weights_in(path: Path, loaded: object) -> dict[str, torch.Tensor]:
    """The tensors of a `torch.load`ed object: training wrappers removed, nested dicts as dotted keys."""
    while isinstance(loaded, Mapping):
        inner = next((loaded[key] for key in _WRAPPER_KEYS if isinstance(loaded.get(key), Mapping)), None)
        if inner is None:
            break
        loaded = inner
    if not isinstance(loaded, Mapping):
        raise CheckpointFormatError(path, f"holds a pickled {type(loaded).__name__}, not a dict of tensors")
    tensors = dict(_flattened(loaded))
    if not tensors:
        sample = ", ".join(map(str, list(loaded)[:8])) or "none"
        raise CheckpointFormatError(path, f"holds a dict without any tensors (keys: {sample})")
    return tensors


def _flattened(mapping: Mapping[object, object], prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Nested dicts give dotted keys, as A1111 embeddings nest theirs (`string_to_param.*`)."""
    for key, value in mapping.items():
        if not isinstance(key, str):
            continue
        if isinstance(value, torch.Tensor):
            yield prefix + key, value
        elif isinstance(value, Mapping):
            yield from _flattened(value, f"{prefix}{key}.")
