"""Image upscaling networks (ESRGAN/RRDBNet, SRVGGNetCompact), their file formats, and tiled inference.

Written here rather than taken from spandrel, whose architecture registry imports torchvision,
which does not load beside this project's torch (torchvision::nms is missing beside torch 2.13.0).
"""

from diffusion.upscalers.loader import UpscaleModel, UpscaleModelError, load_upscale_model
from diffusion.upscalers.tiling import upscale_tiled

__all__ = ["UpscaleModel", "UpscaleModelError", "load_upscale_model", "upscale_tiled"]
