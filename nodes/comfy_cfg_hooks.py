"""ComfyUI's sampler functions in a MODEL's ``model_options``, as Loom's CFG hooks (``diffusion.cfg_hooks``), and
Loom's hooks as ComfyUI's functions.

Packs change guidance by putting functions into ``model_options`` (``MODEL.set_model_sampler_cfg_function``
...), each called with a dict of arguments. ``cfg_hooks`` reads them as the typed hooks Loom's guiders run,
each call's arguments built exactly as ComfyUI's ``sampling_function`` / ``cfg_function`` build them, with
two differences: ``model`` is the MODEL's ``model`` view (``nodes.comfy_base_model``), not ComfyUI's
``BaseModel``, and the conditionings (``cond``/``uncond`` of a post-CFG function, ``input_cond``/
``input_uncond`` of a CFG function, ``conds`` of a pre-CFG function) are the CONDITIONING values the
guider was given (``[(context, options), ...]``, None for a side left unevaluated), not ComfyUI's
processed conds.

Loom's own nodes (RescaleCFG, APG ...) store their hooks wrapped as ComfyUI functions (``ComfyCFGFunction``
...), so that packs reading or chaining ``model_options`` find callables of the usual shape; reading them
back unwraps the hook, so they run without a round trip through noise space.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from diffusion.cfg_hooks import (
    CFGFunction,
    CFGHooks,
    CFGInputs,
    PostCFGFunction,
    PreCFGFunction,
    PreCFGInputs,
)

__all__ = ["ComfyCFGFunction", "ComfyPostCFGFunction", "ComfyPreCFGFunction", "cfg_hooks"]

ComfyFunction = Callable[[dict[str, Any]], Any]


@dataclass(frozen=True)
class ComfyCFGFunction:
    """A Loom ``CFGFunction`` as ComfyUI's ``sampler_cfg_function``: ``args -> input - guided x0``."""

    hook: CFGFunction

    def __call__(self, args: dict[str, Any]) -> Tensor:
        x = args["input"]
        inputs = CFGInputs(
            x,
            args["sigma"],
            args["cond_denoised"],
            args["uncond_denoised"],
            args["cond_scale"],
            args.get("input_cond"),
            args.get("input_uncond"),
        )
        return x - self.hook(inputs)


@dataclass(frozen=True)
class ComfyPostCFGFunction:
    """A Loom ``PostCFGFunction`` as one of ComfyUI's ``sampler_post_cfg_function``: ``args -> x0``."""

    hook: PostCFGFunction

    def __call__(self, args: dict[str, Any]) -> Tensor:
        inputs = CFGInputs(
            args["input"],
            args["sigma"],
            args["cond_denoised"],
            args["uncond_denoised"],
            args["cond_scale"],
            args.get("cond"),
            args.get("uncond"),
            args.get("empty_cond_denoised"),
            args.get("empty_cond"),
        )
        return self.hook(inputs, args["denoised"])


@dataclass(frozen=True)
class ComfyPreCFGFunction:
    """A Loom ``PreCFGFunction`` as one of ComfyUI's ``sampler_pre_cfg_function``: ``args -> [x0, ...]``."""

    hook: PreCFGFunction

    def __call__(self, args: dict[str, Any]) -> list[Tensor]:
        inputs = PreCFGInputs(
            args["input"], args["sigma"], args["cond_scale"], tuple(args["conds_out"]), tuple(args["conds"])
        )
        return list(self.hook(inputs))


@dataclass(frozen=True)
class _PackCFGFunction:
    """A pack's ``sampler_cfg_function``, which returns a noise-space result, as a ``CFGFunction``."""

    function: ComfyFunction
    model: Any
    model_options: Mapping[str, Any]

    def __call__(self, inputs: CFGInputs) -> Tensor:
        x = inputs.x
        args = {
            "cond": x - inputs.cond,
            "uncond": x - inputs.uncond,
            "cond_scale": inputs.cfg,
            "timestep": inputs.sigma,
            "input": x,
            "sigma": inputs.sigma,
            "cond_denoised": inputs.cond,
            "uncond_denoised": inputs.uncond,
            "model": self.model,
            "model_options": self.model_options,
            "input_cond": inputs.cond_conditioning,
            "input_uncond": inputs.uncond_conditioning,
        }
        result: Tensor = x - self.function(args)
        return result


@dataclass(frozen=True)
class _PackPostCFGFunction:
    """A pack's ``sampler_post_cfg_function`` as a ``PostCFGFunction``."""

    function: ComfyFunction
    model: Any
    model_options: Mapping[str, Any]

    def __call__(self, inputs: CFGInputs, denoised: Tensor) -> Tensor:
        args = {
            "denoised": denoised,
            "cond": inputs.cond_conditioning,
            "uncond": inputs.uncond_conditioning,
            "cond_scale": inputs.cfg,
            "model": self.model,
            "uncond_denoised": inputs.uncond,
            "cond_denoised": inputs.cond,
            "sigma": inputs.sigma,
            "model_options": self.model_options,
            "input": inputs.x,
        }
        if inputs.empty is not None:
            args["empty_cond"], args["empty_cond_denoised"] = inputs.empty_conditioning, inputs.empty
        result: Tensor = self.function(args)
        return result


@dataclass(frozen=True)
class _PackPreCFGFunction:
    """A pack's ``sampler_pre_cfg_function`` as a ``PreCFGFunction``."""

    function: ComfyFunction
    model: Any
    model_options: Mapping[str, Any]

    def __call__(self, inputs: PreCFGInputs) -> list[Tensor]:
        args = {
            "conds": list(inputs.conditionings),
            "conds_out": list(inputs.predictions),
            "cond_scale": inputs.cfg,
            "timestep": inputs.sigma,
            "input": inputs.x,
            "sigma": inputs.sigma,
            "model": self.model,
            "model_options": self.model_options,
        }
        return list(self.function(args))


def _cfg_function(function: ComfyFunction, model: Any, options: Mapping[str, Any]) -> CFGFunction:
    return function.hook if isinstance(function, ComfyCFGFunction) else _PackCFGFunction(function, model, options)


def _post_cfg_function(function: ComfyFunction, model: Any, options: Mapping[str, Any]) -> PostCFGFunction:
    if isinstance(function, ComfyPostCFGFunction):
        return function.hook
    return _PackPostCFGFunction(function, model, options)


def _pre_cfg_function(function: ComfyFunction, model: Any, options: Mapping[str, Any]) -> PreCFGFunction:
    if isinstance(function, ComfyPreCFGFunction):
        return function.hook
    return _PackPreCFGFunction(function, model, options)


def cfg_hooks(model_options: Mapping[str, Any], model: Any) -> CFGHooks:
    """The hooks ``model_options`` holds (``sampler_cfg_function``, the ``sampler_pre_cfg_function`` and
    ``sampler_post_cfg_function`` lists, ``disable_cfg1_optimization``); ``model`` is what their ``args``
    call ``model``."""
    function = model_options.get("sampler_cfg_function")
    return CFGHooks(
        cfg_function=None if function is None else _cfg_function(function, model, model_options),
        pre_cfg=tuple(
            _pre_cfg_function(f, model, model_options) for f in model_options.get("sampler_pre_cfg_function", ())
        ),
        post_cfg=tuple(
            _post_cfg_function(f, model, model_options) for f in model_options.get("sampler_post_cfg_function", ())
        ),
        uncond_at_cfg1=bool(model_options.get("disable_cfg1_optimization", False)),
    )
