"""Layer 2: ERNIE 4.5 VL in Paddle (vision tower, resampler, multimodal MoE, 3-D RoPE)."""

from ernie_paddle.models.vl.model import ErnieVLForConditionalGeneration, ErnieVLModel
from ernie_paddle.models.vl.vision import VisionTransformer

__all__ = ["ErnieVLForConditionalGeneration", "ErnieVLModel", "VisionTransformer"]
