"""ComfyUI's ``comfy_execution`` package for node packs: ``graph`` (``ExecutionBlocker``) and
``graph_utils`` (``GraphBuilder`` for node expansion). Its executor internals (``DynamicPrompt``,
caching, validation) are Loom's own (``graph/``) and are not provided.
"""
