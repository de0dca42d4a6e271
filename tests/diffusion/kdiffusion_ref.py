"""k-diffusion's own sampling code, loaded as the reference our samplers are compared against.

`import k_diffusion` fails here: its package `__init__` imports training-only modules, and its
`utils.py` imports torchvision (which does not work beside torch 2.13.0: torchvision::nms is missing). Sampling
uses nothing from torchvision (only `utils.append_dims`), so the loader gives `utils.py` an empty
stand-in for the one torchvision module it names, then loads `utils.py`, `sampling.py` and
`external.py` as members of a synthetic package so their relative imports resolve.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

_PACKAGE = "_kdiffusion_reference"


def _source_dir() -> Path:
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError("k-diffusion is not installed (pip install --no-deps k-diffusion)")
    return Path(next(iter(spec.submodule_search_locations)))


def _load(name: str, directory: Path) -> types.ModuleType:
    full_name = f"{_PACKAGE}.{name}"
    if full_name in sys.modules:
        return sys.modules[full_name]
    spec = importlib.util.spec_from_file_location(full_name, directory / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[full_name] = module
    spec.loader.exec_module(module)
    setattr(sys.modules[_PACKAGE], name, module)
    return module


def _torchvision_stand_in() -> dict[str, types.ModuleType]:
    root = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    root.transforms = transforms
    transforms.functional = functional
    return {"torchvision": root, "torchvision.transforms": transforms, "torchvision.transforms.functional": functional}


def _load_all() -> tuple[types.ModuleType, types.ModuleType]:
    directory = _source_dir()
    if _PACKAGE not in sys.modules:
        package = types.ModuleType(_PACKAGE)
        package.__path__ = [str(directory)]
        sys.modules[_PACKAGE] = package
    saved = {name: sys.modules.get(name) for name in _torchvision_stand_in()}
    sys.modules.update({name: mod for name, mod in _torchvision_stand_in().items() if saved[name] is None})
    try:
        _load("utils", directory)
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
    return _load("sampling", directory), _load("external", directory)


sampling, external = _load_all()
