"""CLIP text encoders of Stable Diffusion: the transformer, its checkpoint layouts, and per-family stacks."""

from diffusion.text_encoders.clip_model import ClipTextConfig, ClipTextModel, ClipTextOutput
from diffusion.text_encoders.layouts import TextEncoderLayoutError, load_clip_text_model, to_module_keys
from diffusion.text_encoders.stack import FAMILY_ENCODERS, ClipStack, EncoderRole, encode_windows

__all__ = [
    "ClipStack",
    "ClipTextConfig",
    "ClipTextModel",
    "ClipTextOutput",
    "EncoderRole",
    "FAMILY_ENCODERS",
    "TextEncoderLayoutError",
    "encode_windows",
    "load_clip_text_model",
    "to_module_keys",
]
