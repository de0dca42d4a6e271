"""ComfyUI's ``comfy`` package as node packs see it in Loom: only ``comfy.utils``,
``comfy.model_management``, ``comfy.samplers``, ``comfy.cli_args`` and ``comfy.sd`` (its loading
functions, giving Loom's MODEL, CLIP and VAE values).

The rest of ComfyUI's package (``comfy.model_patcher``, ``comfy.sample``, ``comfy.lora`` ...) is its
model library, which Loom replaces with its own (``diffusion/``); a pack importing one of those
fails to load, with an ``ImportError`` naming the module, as any missing dependency does.
"""
