"""The socket types of ComfyUI's V3 API (``io.Int``, ``io.Image``, ``io.Custom("MY_TYPE")`` ...).

A V3 type is a class with an ``io_type`` string and nested ``Input`` / ``Output`` classes whose
instances a node's ``Schema`` lists. Each instance turns into the V1 entry ComfyUI derives from it,
``(io_type, {options})``: the options are the arguments given, under their wire names
(``force_input`` is ``forceInput``, ``dynamic_prompts`` is ``dynamicPrompts``), those left at
``None`` omitted, enums as their values. Names, argument order and defaults follow
``comfy_api/latest/_io.py`` so packs may pass arguments by position as they do for ComfyUI.

Supported: ``Boolean``, ``Int``, ``Float``, ``String``, ``Combo`` (a list or an ``Enum`` of options),
the socket-only types below, ``AnyType`` (``*``), ``Custom(io_type)``, ``MultiType`` (a comma union,
optionally with a widget), ``comfytype`` for a pack's own type classes. Not supported: ``MultiCombo``,
``MatchType``, the dynamic inputs (``Autogrow``, ``DynamicCombo``, ``DynamicSlot``) and remote
combos (``RemoteOptions``): ComfyUI's executor rewrites those inputs, Loom's does not.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from enum import Enum
from typing import Any, ClassVar, TypeVar

__all__ = [
    "AnyType",
    "Audio",
    "Boolean",
    "Clip",
    "ClipVision",
    "ClipVisionOutput",
    "Combo",
    "ComfyTypeI",
    "ComfyTypeIO",
    "Conditioning",
    "ControlAfterGenerate",
    "ControlNet",
    "Custom",
    "Float",
    "FolderType",
    "Gligen",
    "Guider",
    "Image",
    "Input",
    "Int",
    "Latent",
    "LatentOperation",
    "Mask",
    "Model",
    "MultiType",
    "Noise",
    "NumberDisplay",
    "Output",
    "Sampler",
    "Sigmas",
    "String",
    "StyleModel",
    "UploadType",
    "UpscaleModel",
    "Vae",
    "Video",
    "WidgetInput",
    "comfytype",
]


class FolderType(str, Enum):
    input = "input"
    output = "output"
    temp = "temp"


class UploadType(str, Enum):
    """A combo that lists files gets an upload button: the value names the option ComfyUI sets."""

    image = "image_upload"
    audio = "audio_upload"
    video = "video_upload"
    model = "file_upload"


class NumberDisplay(str, Enum):
    number = "number"
    slider = "slider"
    gradient_slider = "gradientslider"


class ControlAfterGenerate(str, Enum):
    fixed = "fixed"
    increment = "increment"
    decrement = "decrement"
    randomize = "randomize"


def wire_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Options as ComfyUI sends them: ``None`` means "not given" and is left out; enums become values."""
    return {
        key: value.value if isinstance(value, Enum) else value for key, value in options.items() if value is not None
    }


class _ComfyType:
    """A V3 socket type: ``io_type`` is the type string sockets carry; ``Type`` the Python value's type."""

    io_type: ClassVar[str] = ""
    Type: ClassVar[Any] = Any


class Input:
    """One input of a node; ``id`` is its name, ``optional`` puts it in the V1 ``optional`` section."""

    #: The type class this input belongs to (bound by ``comfytype``).
    Parent: ClassVar[type[_ComfyType] | None] = None

    def __init__(
        self,
        id: str,
        display_name: str | None = None,
        optional: bool = False,
        tooltip: str | None = None,
        lazy: bool | None = None,
        extra_dict: Mapping[str, Any] | None = None,
        raw_link: bool | None = None,
        advanced: bool | None = None,
    ) -> None:
        self.id = id
        self.display_name = display_name
        self.optional = optional
        self.tooltip = tooltip
        self.lazy = lazy
        self.extra_dict = dict(extra_dict or {})
        self.raw_link = raw_link
        self.advanced = advanced

    @property
    def io_type(self) -> str:
        if self.Parent is None:
            raise TypeError(f"{type(self).__name__} is not bound to a socket type (declare it with @comfytype)")
        return self.Parent.io_type

    def get_io_type(self) -> str:
        return self.io_type

    def as_dict(self) -> dict[str, Any]:
        return wire_options(
            {
                "display_name": self.display_name,
                "optional": self.optional,
                "tooltip": self.tooltip,
                "lazy": self.lazy,
                "rawLink": self.raw_link,
                "advanced": self.advanced,
            }
        ) | wire_options(self.extra_dict)

    def v1_entry(self) -> tuple[str, dict[str, Any]]:
        """The ``(type, {options})`` pair of ``INPUT_TYPES``; the section says whether it is optional."""
        options = self.as_dict()
        options.pop("optional", None)
        return self.get_io_type(), options

    def validate(self) -> None:
        """ComfyUI's hook for a type to check its arguments; nothing to check by default."""

    def get_all(self) -> list[Input]:
        return [self]


class WidgetInput(Input):
    """An input edited in place (a widget) unless it is linked, or ``force_input`` makes it a socket."""

    def __init__(
        self,
        id: str,
        display_name: str | None = None,
        optional: bool = False,
        tooltip: str | None = None,
        lazy: bool | None = None,
        default: Any = None,
        socketless: bool | None = None,
        widget_type: str | None = None,
        force_input: bool | None = None,
        extra_dict: Mapping[str, Any] | None = None,
        raw_link: bool | None = None,
        advanced: bool | None = None,
    ) -> None:
        super().__init__(id, display_name, optional, tooltip, lazy, extra_dict, raw_link, advanced)
        self.default = default
        self.socketless = socketless
        self.widget_type = widget_type
        self.force_input = force_input

    def as_dict(self) -> dict[str, Any]:
        return super().as_dict() | wire_options(
            {
                "default": self.default,
                "socketless": self.socketless,
                "widgetType": self.widget_type,
                "forceInput": self.force_input,
            }
        )

    def get_io_type(self) -> str:
        return self.widget_type if self.widget_type is not None else super().get_io_type()


class Output:
    """One output of a node; its V1 name is ``display_name``, else ``id``, else the type."""

    Parent: ClassVar[type[_ComfyType] | None] = None

    def __init__(
        self,
        id: str | None = None,
        display_name: str | None = None,
        tooltip: str | None = None,
        is_output_list: bool = False,
    ) -> None:
        self.id = id
        self.display_name = display_name or id
        self.tooltip = tooltip
        self.is_output_list = is_output_list

    @property
    def io_type(self) -> str:
        if self.Parent is None:
            raise TypeError(f"{type(self).__name__} is not bound to a socket type (declare it with @comfytype)")
        return self.Parent.io_type

    def get_io_type(self) -> str:
        return self.io_type

    @property
    def name(self) -> str:
        return self.display_name or self.io_type

    def validate(self) -> None:
        """ComfyUI's hook for a type to check its arguments; nothing to check by default."""


class ComfyTypeI(_ComfyType):
    """A type with inputs only."""

    Input: ClassVar[type[Input]] = Input


class ComfyTypeIO(ComfyTypeI):
    """A type with inputs and outputs: what most types are."""

    Output: ClassVar[type[Output]] = Output


_T = TypeVar("_T", bound=type)


def comfytype(io_type: str, **_ignored: Any) -> Callable[[_T], _T]:
    """Declare a type class: bind ``io_type`` and give it ``Input``/``Output`` classes of its own.

    An ``Input`` or ``Output`` the class inherits is subclassed, so that ``isinstance(x, Image.Input)``
    tells an image input from a mask input and each knows its own type. A class that derives from
    no V3 type is made a ``ComfyTypeIO``, as ComfyUI does.
    """

    def bind(cls: _T) -> _T:
        bound: Any = cls if issubclass(cls, _ComfyType) else type(cls.__name__, (cls, ComfyTypeIO), {})
        bound.io_type = io_type
        for role in ("Input", "Output"):
            io_class: Any = getattr(bound, role, None)
            if io_class is None:
                continue
            if role not in vars(cls):
                qualified = f"{cls.__qualname__}.{role}"
                io_class = type(role, (io_class,), {"__qualname__": qualified, "__module__": cls.__module__})
            io_class.Parent = bound
            setattr(bound, role, io_class)
        return bound

    return bind


def Custom(io_type: str) -> type[ComfyTypeIO]:
    """A socket type of the pack's own (``io.Custom("MY_PACK_POINTS")``): inputs and outputs, no widget."""

    @comfytype(io_type)
    class CustomComfyType(ComfyTypeIO):
        pass

    return CustomComfyType


@comfytype("BOOLEAN")
class Boolean(ComfyTypeIO):
    Type = bool

    class Input(WidgetInput):
        def __init__(
            self,
            id: str,
            display_name: str | None = None,
            optional: bool = False,
            tooltip: str | None = None,
            lazy: bool | None = None,
            default: bool | None = None,
            label_on: str | None = None,
            label_off: str | None = None,
            socketless: bool | None = None,
            force_input: bool | None = None,
            extra_dict: Mapping[str, Any] | None = None,
            raw_link: bool | None = None,
            advanced: bool | None = None,
        ) -> None:
            super().__init__(
                id,
                display_name,
                optional,
                tooltip,
                lazy,
                default,
                socketless,
                None,
                force_input,
                extra_dict,
                raw_link,
                advanced,
            )
            self.label_on = label_on
            self.label_off = label_off

        def as_dict(self) -> dict[str, Any]:
            return super().as_dict() | wire_options({"label_on": self.label_on, "label_off": self.label_off})


@comfytype("INT")
class Int(ComfyTypeIO):
    Type = int

    class Input(WidgetInput):
        def __init__(
            self,
            id: str,
            display_name: str | None = None,
            optional: bool = False,
            tooltip: str | None = None,
            lazy: bool | None = None,
            default: int | None = None,
            min: int | None = None,
            max: int | None = None,
            step: int | None = None,
            control_after_generate: bool | ControlAfterGenerate | None = None,
            display_mode: NumberDisplay | None = None,
            socketless: bool | None = None,
            force_input: bool | None = None,
            extra_dict: Mapping[str, Any] | None = None,
            raw_link: bool | None = None,
            advanced: bool | None = None,
        ) -> None:
            super().__init__(
                id,
                display_name,
                optional,
                tooltip,
                lazy,
                default,
                socketless,
                None,
                force_input,
                extra_dict,
                raw_link,
                advanced,
            )
            self.min, self.max, self.step = min, max, step
            self.control_after_generate = control_after_generate
            self.display_mode = display_mode

        def as_dict(self) -> dict[str, Any]:
            return super().as_dict() | wire_options(
                {
                    "min": self.min,
                    "max": self.max,
                    "step": self.step,
                    "control_after_generate": self.control_after_generate,
                    "display": self.display_mode,
                }
            )


@comfytype("FLOAT")
class Float(ComfyTypeIO):
    Type = float

    class Input(WidgetInput):
        def __init__(
            self,
            id: str,
            display_name: str | None = None,
            optional: bool = False,
            tooltip: str | None = None,
            lazy: bool | None = None,
            default: float | None = None,
            min: float | None = None,
            max: float | None = None,
            step: float | None = None,
            round: float | None = None,
            display_mode: NumberDisplay | None = None,
            gradient_stops: list[Any] | None = None,
            socketless: bool | None = None,
            force_input: bool | None = None,
            extra_dict: Mapping[str, Any] | None = None,
            raw_link: bool | None = None,
            advanced: bool | None = None,
        ) -> None:
            super().__init__(
                id,
                display_name,
                optional,
                tooltip,
                lazy,
                default,
                socketless,
                None,
                force_input,
                extra_dict,
                raw_link,
                advanced,
            )
            self.min, self.max, self.step, self.round = min, max, step, round
            self.display_mode = display_mode
            self.gradient_stops = gradient_stops

        def as_dict(self) -> dict[str, Any]:
            return super().as_dict() | wire_options(
                {
                    "min": self.min,
                    "max": self.max,
                    "step": self.step,
                    "round": self.round,
                    "display": self.display_mode,
                    "gradient_stops": self.gradient_stops,
                }
            )


@comfytype("STRING")
class String(ComfyTypeIO):
    Type = str

    class Input(WidgetInput):
        def __init__(
            self,
            id: str,
            display_name: str | None = None,
            optional: bool = False,
            tooltip: str | None = None,
            lazy: bool | None = None,
            multiline: bool = False,
            placeholder: str | None = None,
            default: str | None = None,
            dynamic_prompts: bool | None = None,
            socketless: bool | None = None,
            force_input: bool | None = None,
            extra_dict: Mapping[str, Any] | None = None,
            raw_link: bool | None = None,
            advanced: bool | None = None,
        ) -> None:
            super().__init__(
                id,
                display_name,
                optional,
                tooltip,
                lazy,
                default,
                socketless,
                None,
                force_input,
                extra_dict,
                raw_link,
                advanced,
            )
            self.multiline = multiline
            self.placeholder = placeholder
            self.dynamic_prompts = dynamic_prompts

        def as_dict(self) -> dict[str, Any]:
            return super().as_dict() | wire_options(
                {"multiline": self.multiline, "placeholder": self.placeholder, "dynamicPrompts": self.dynamic_prompts}
            )


@comfytype("COMBO")
class Combo(ComfyTypeIO):
    Type = str

    class Input(WidgetInput):
        def __init__(
            self,
            id: str,
            options: Sequence[Any] | type[Enum] | None = None,
            display_name: str | None = None,
            optional: bool = False,
            tooltip: str | None = None,
            lazy: bool | None = None,
            default: Any = None,
            control_after_generate: bool | ControlAfterGenerate | None = None,
            upload: UploadType | None = None,
            image_folder: FolderType | None = None,
            remote: Any = None,
            remote_combo: Any = None,
            socketless: bool | None = None,
            extra_dict: Mapping[str, Any] | None = None,
            raw_link: bool | None = None,
            advanced: bool | None = None,
        ) -> None:
            if remote is not None or remote_combo is not None:
                raise NotImplementedError("Loom does not support remote combos (options fetched by the editor)")
            if isinstance(options, type) and issubclass(options, Enum):
                options = [member.value for member in options]
            if isinstance(default, Enum):
                default = default.value
            super().__init__(
                id,
                display_name,
                optional,
                tooltip,
                lazy,
                default,
                socketless,
                None,
                None,
                extra_dict,
                raw_link,
                advanced,
            )
            self.options = list(options) if options is not None else None
            self.control_after_generate = control_after_generate
            self.upload = upload
            self.image_folder = image_folder

        def as_dict(self) -> dict[str, Any]:
            upload = {self.upload.value: True} if self.upload is not None else {}
            return super().as_dict() | wire_options(
                {
                    "multiselect": False,
                    "options": self.options,
                    "control_after_generate": self.control_after_generate,
                    **upload,
                    "image_folder": self.image_folder,
                }
            )

    class Output(Output):
        def __init__(
            self,
            id: str | None = None,
            display_name: str | None = None,
            options: list[Any] | None = None,
            tooltip: str | None = None,
            is_output_list: bool = False,
        ) -> None:
            super().__init__(id, display_name, tooltip, is_output_list)
            self.options = options if options is not None else []


def _socket_type(name: str, io_type: str) -> type[ComfyTypeIO]:
    """A type that is only ever wired (a model, a tensor ...): the plain ``Input`` and ``Output``."""
    return comfytype(io_type)(type(name, (ComfyTypeIO,), {"__module__": __name__, "__qualname__": name}))


Image = _socket_type("Image", "IMAGE")
Mask = _socket_type("Mask", "MASK")
Latent = _socket_type("Latent", "LATENT")
Conditioning = _socket_type("Conditioning", "CONDITIONING")
Sampler = _socket_type("Sampler", "SAMPLER")
Sigmas = _socket_type("Sigmas", "SIGMAS")
Noise = _socket_type("Noise", "NOISE")
Guider = _socket_type("Guider", "GUIDER")
Clip = _socket_type("Clip", "CLIP")
ControlNet = _socket_type("ControlNet", "CONTROL_NET")
Vae = _socket_type("Vae", "VAE")
Model = _socket_type("Model", "MODEL")
ClipVision = _socket_type("ClipVision", "CLIP_VISION")
ClipVisionOutput = _socket_type("ClipVisionOutput", "CLIP_VISION_OUTPUT")
StyleModel = _socket_type("StyleModel", "STYLE_MODEL")
Gligen = _socket_type("Gligen", "GLIGEN")
UpscaleModel = _socket_type("UpscaleModel", "UPSCALE_MODEL")
Audio = _socket_type("Audio", "AUDIO")
Video = _socket_type("Video", "VIDEO")
LatentOperation = _socket_type("LatentOperation", "LATENT_OPERATION")
AnyType = _socket_type("AnyType", "*")


class MultiType:
    """An input that accepts several types: its type is their comma union (``"IMAGE,MASK"``).

    ``MultiType.Input(io.Float.Input("strength", default=1.0), types=[io.Int])`` keeps the given
    input's widget and options, and accepts the other types through a link as well.
    """

    io_type: ClassVar[str] = "COMFY_MULTITYPED_V3"

    class Input(Input):
        def __init__(
            self,
            id: str | Input,
            types: Sequence[type[_ComfyType] | _ComfyType],
            display_name: str | None = None,
            optional: bool = False,
            tooltip: str | None = None,
            lazy: bool | None = None,
            extra_dict: Mapping[str, Any] | None = None,
            raw_link: bool | None = None,
            advanced: bool | None = None,
        ) -> None:
            self.input_override: Input | None = None
            if isinstance(id, Input):
                override = copy.copy(id)  # its widget type is set below; the pack's own object stays as it was
                optional = optional or override.optional
                tooltip = override.tooltip if override.tooltip is not None else tooltip
                display_name = override.display_name if override.display_name is not None else display_name
                lazy = override.lazy if override.lazy is not None else lazy
                if isinstance(override, WidgetInput):
                    override.widget_type = override.get_io_type()
                self.input_override, id = override, override.id
            super().__init__(id, display_name, optional, tooltip, lazy, extra_dict, raw_link, advanced)
            self.types = list(types)

        def get_io_type(self) -> str:
            names = [t.io_type for t in self.types]
            if self.input_override is not None:
                names.insert(0, self.input_override.get_io_type())
            return ",".join(dict.fromkeys(names))

        def as_dict(self) -> dict[str, Any]:
            own = super().as_dict()
            return self.input_override.as_dict() | own if self.input_override is not None else own
