"""The ERNIE 4.5 text model in Paddle's own parameter layout (dense, MoE, MTP), and the VL model under ``vl``."""

from ernie_paddle.models.ernie import ErnieForCausalLM, ErnieModel
from ernie_paddle.models.kv_cache import KVCache

__all__ = ["ErnieForCausalLM", "ErnieModel", "KVCache"]
