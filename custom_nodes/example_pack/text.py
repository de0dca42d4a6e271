"""A text node written the ComfyUI way (a V1 class), as plugins made for ComfyUI are.

Everything Loom reads from the class is a plain attribute or classmethod: ``INPUT_TYPES``,
``RETURN_TYPES``, ``FUNCTION``, ``OUTPUT_NODE``, ``VALIDATE_INPUTS``. Returning a dict with ``ui``
shows the filled text on the node in the editor while ``result`` still feeds the next node.
"""

from __future__ import annotations

import re

PLACEHOLDER = re.compile(r"\{(\w*)\}")
FIELDS = ("subject", "style")


class ExamplePromptTemplate:
    """Fill ``{subject}`` and ``{style}`` in a reusable prompt template."""

    DESCRIPTION = "Fill {subject} and {style} in a prompt template and show the result."
    CATEGORY = "example_pack/text"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("text",)
    OUTPUT_TOOLTIPS = ("The filled prompt; wire it into a text encoder's text input.",)
    FUNCTION = "fill"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "template": ("STRING", {"multiline": True, "default": "a photo of {subject}, {style}"}),
                "subject": ("STRING", {"default": "a lighthouse on a cliff"}),
                "style": ("STRING", {"default": "golden hour, film grain"}),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, template=None):
        """Reject a typo such as ``{subjet}`` before the prompt runs, naming the placeholders allowed."""
        if template is None:  # wired from another node: checked when it runs
            return True
        unknown = sorted({name for name in PLACEHOLDER.findall(template) if name not in FIELDS})
        if unknown:
            return f"unknown placeholder(s) {', '.join('{' + n + '}' for n in unknown)}; use {{subject}} or {{style}}"
        return True

    def fill(self, template, subject, style):
        values = {"subject": subject, "style": style}
        text = PLACEHOLDER.sub(lambda match: values.get(match.group(1), match.group(0)), template)
        return {"ui": {"text": [text]}, "result": (text,)}
