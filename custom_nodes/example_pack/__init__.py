"""Loom's example node pack: the working code behind ``docs/plugins.md``.

A pack is a folder in ``custom_nodes/`` whose ``__init__.py`` exposes what Loom should load:

* ``@node`` functions (Loom's declarative API, the recommended way) found in this namespace,
  imported here from the pack's own modules: ``filters`` and ``tint``;
* ``NODE_CLASS_MAPPINGS`` / ``NODE_DISPLAY_NAME_MAPPINGS`` for ComfyUI-style V1 classes, which is
  how ``text`` is written, to show the two APIs side by side in one pack;
* ``WEB_DIRECTORY``: the folder of browser modules; ``web/color_widget.js`` gives ``ExampleColorTint``
  its colour-picker widget.

Relative imports work because Loom imports the pack as the package ``custom_nodes.example_pack``.
"""

from .filters import ExampleGaussianBlur, ExampleSepia
from .text import ExamplePromptTemplate
from .tint import ExampleColorTint

NODE_CLASS_MAPPINGS = {"ExamplePromptTemplate": ExamplePromptTemplate}
NODE_DISPLAY_NAME_MAPPINGS = {"ExamplePromptTemplate": "Prompt Template (example)"}
WEB_DIRECTORY = "./web"

__all__ = [
    "ExampleColorTint",
    "ExampleGaussianBlur",
    "ExampleSepia",
    "NODE_CLASS_MAPPINGS",
    "NODE_DISPLAY_NAME_MAPPINGS",
    "WEB_DIRECTORY",
]
