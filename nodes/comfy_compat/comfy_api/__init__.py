"""ComfyUI's ``comfy_api`` package as V3 node packs see it in Loom: ``comfy_api.latest`` and its pinned
alias ``comfy_api.v0_0_2``, both answering with the same classes (``latest/``).

Importing it is cheap: nothing here imports torch until a pack shows a picture (``ui``).
"""
