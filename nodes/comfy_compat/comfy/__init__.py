"""ComfyUI's ``comfy`` package as node packs see it in Loom: only ``comfy.utils``,
``comfy.model_management``, ``comfy.samplers`` and ``comfy.cli_args``.

The rest of ComfyUI's package (``comfy.sd``, ``comfy.model_patcher``, ``comfy.sample`` ...) is its
model library, which Loom replaces with its own (``diffusion/``); a pack importing one of those
fails to load, with an ``ImportError`` naming the module, as any missing dependency does.
"""
