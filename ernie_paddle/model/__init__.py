"""Layer 2: the ERNIE 4.5 text model in Paddle's own parameter layout."""

from .ernie import ErnieForCausalLM, ErnieModel
from .kv_cache import KVCache

__all__ = ["ErnieForCausalLM", "ErnieModel", "KVCache"]
