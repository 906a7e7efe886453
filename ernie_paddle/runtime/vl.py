"""Load an ERNIE 4.5 VL folder (Paddle or HF layout) and run it: logits, greedy/sampled generation.

Weights go through the converter's VL rule table (HF tensors mapped on the fly) into Paddle-owned memory.
Generation reuses the text runtime's loop (sampling, stop ids) through a small adapter that feeds the
multimodal prompt on the first step and then continues 3-D positions as text positions + the rope delta.
Every method takes ``VLInputs`` (``ErnieVLRuntime.inputs``) or plain token ids of a text-only prompt.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import paddle

from converters.rules import canonical_paddle_key
from ernie_paddle.config.text import ErnieConfig
from ernie_paddle.config.vl import token_ids, vision_spec
from ernie_paddle.errors import ErnieError
from ernie_paddle.io.checkpoint import open_checkpoint
from ernie_paddle.models.vl import ErnieVLForConditionalGeneration
from ernie_paddle.models.vl.rope3d import rope_index
from ernie_paddle.runtime.generation import generate, pad_batch, read_generation_config, stream
from ernie_paddle.runtime.setup import Placement, setup
from ernie_paddle.runtime.weights import default_dtype, load_weights, tensor_stream
from ernie_paddle.tokenizer.ernie_tokenizer import ErnieTokenizer
from ernie_paddle.tokenizer.image_preprocess import ImageOptions
from ernie_paddle.tokenizer.vl_prompt import VLInputs, build_inputs, modality_types, user_message


def build_vl_model(config: ErnieConfig, dtype: str = "float32") -> ErnieVLForConditionalGeneration:
    """The VL model with zero-initialised parameters in ``dtype`` (routers and bias stay float32)."""
    with default_dtype(dtype):
        model = ErnieVLForConditionalGeneration(config)
    model.eval()
    return model


def as_inputs(config: ErnieConfig, prompt) -> VLInputs:
    """``prompt`` as VLInputs: itself, or token ids [B, T] / [T] of a text-only prompt (rows of equal length)."""
    if isinstance(prompt, VLInputs):
        return prompt
    ids, mask = pad_batch(prompt)
    if not mask.all():
        raise ErnieError("padded batches are not supported for VL prompts (give rows of equal length)")
    return VLInputs(ids, *modality_types(ids, token_ids(config)))


def embed_prompt(model: ErnieVLForConditionalGeneration, inputs: VLInputs):
    """(embeddings [B, T, H], positions [3, B, T], vision mask [B, T], rope delta [B]) for a prompt batch."""
    ids = np.asarray(inputs.input_ids, dtype=np.int64)
    spec = vision_spec(model.config)
    vision = []
    for pixels, grid, kind in ((inputs.pixel_values, inputs.image_grid_thw, 1),
                               (inputs.pixel_values_videos, inputs.video_grid_thw, 2)):
        if pixels is not None:
            vision.append((inputs.token_types == kind, model.vision_embeddings(pixels, grid)))
    embeds = model.embed(ids, vision)
    positions, deltas = np.zeros((3, *ids.shape), dtype=np.int64), np.zeros(len(ids), dtype=np.int64)
    images = iter(_split_grids(inputs.image_grid_thw, inputs.token_types == 1, spec.spatial_merge ** 2, 1))
    videos = iter(_split_grids(inputs.video_grid_thw, inputs.token_types == 2, spec.spatial_merge ** 2,
                               spec.temporal_merge))
    for row in range(len(ids)):
        positions[:, row], deltas[row] = rope_index(inputs.token_types[row], next(images), next(videos),
                                                    spec.spatial_merge, spec.temporal_merge)
    mask = inputs.moe_types != 0
    return embeds, positions, (mask if mask.any() else None), deltas


def _split_grids(grids, placeholder_mask: np.ndarray, merge_area: int, t_merge: int) -> list[list]:
    """The grids of each row: consecutive grids until that row's placeholder count is used up."""
    out, queue = [], list(np.asarray(grids).reshape(-1, 3).tolist()) if grids is not None else []
    for row in placeholder_mask:
        need, mine = int(row.sum()), []
        while need > 0:
            if not queue:
                raise ErnieError("more image/video placeholder tokens than grids")
            grid = queue.pop(0)
            need -= int(np.prod(grid)) // merge_area // t_merge
            mine.append(grid)
        if need:
            raise ErnieError("placeholder tokens do not match the image/video grids")
        out.append(mine)
    return out


class _PromptedModel:
    """Looks like ``ErnieForCausalLM`` to ``generation.stream``: the first call consumes the prompt."""

    def __init__(self, model: ErnieVLForConditionalGeneration, inputs: VLInputs):
        self.model, self.config = model, model.config
        self.prepared = embed_prompt(model, inputs)

    def new_cache(self, capacity: int = 0):
        return self.model.new_cache(capacity)

    def __call__(self, ids, cache, mask=None, last_only=False):
        if mask is not None:
            raise ErnieError("padded batches are not supported for VL prompts")
        embeds, positions, vision_mask, deltas = self.prepared
        if cache.length:
            t = ids.shape[1]
            text = np.arange(cache.length, cache.length + t, dtype=np.int64)[None] + deltas[:, None]
            positions, vision_mask = np.broadcast_to(text, (3, *text.shape)), None
            embeds = self.model.embed(ids.numpy())
        return self.model(embeds, positions, vision_mask, cache, last_only)


class ErnieVLRuntime:
    """A loaded VL model: ``inputs(prompt, images)``, ``logits``, ``generate``, ``stream``, ``close``.

    ``logits``, ``generate`` and ``stream`` take VLInputs or plain token ids (see ``as_inputs``).
    """

    engine = "dygraph"

    def __init__(self, model, folder: Path | None, device: str, dtype: str, generation_defaults: dict | None = None):
        self.model, self.config, self.folder = model, model.config, folder
        self.device, self.dtype = device, dtype
        self.generation_defaults = generation_defaults or {}
        self.image_options = ImageOptions.from_folder(folder) if folder else ImageOptions()
        self._tokenizer = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:

            self._tokenizer = ErnieTokenizer.from_folder(self.folder)
        return self._tokenizer

    def inputs(self, prompt: str | None = None, images=(), messages=None, **template_vars) -> VLInputs:
        """Tokenized chat prompt with images: ``messages`` (OpenAI-style parts) or one prompt + images."""
        messages = messages if messages is not None else user_message(prompt or "", list(images))
        return build_inputs(self.tokenizer, self.config, messages, self.image_options, **template_vars)

    def logits(self, inputs) -> np.ndarray:
        """Float32 logits [B, T, V] of the whole prompt."""
        with paddle.no_grad():
            embeds, positions, mask, _ = embed_prompt(self.model, as_inputs(self.config, inputs))
            return self.model(embeds, positions, mask).numpy()

    def stream(self, inputs, max_new_tokens: int | None = None, **sampling) -> Iterator[np.ndarray]:
        """Yield the new token ids [B] one step at a time."""
        inputs = as_inputs(self.config, inputs)
        return stream(_PromptedModel(self.model, inputs), inputs.input_ids, defaults=self.generation_defaults,
                      max_new_tokens=max_new_tokens, **sampling)

    def generate(self, inputs, max_new_tokens: int | None = None, **sampling) -> np.ndarray:
        """Prompt plus new ids [B, T + N]; greedy unless a sampling option is given."""
        inputs = as_inputs(self.config, inputs)
        with paddle.no_grad():
            return generate(_PromptedModel(self.model, inputs), inputs.input_ids, defaults=self.generation_defaults,
                            max_new_tokens=max_new_tokens, **sampling)

    def close(self) -> None:
        """Drop the weights; the runtime cannot run afterwards."""
        self.model = None


def vl_runtime(ckpt, place: Placement) -> ErnieVLRuntime:
    """The ErnieVLRuntime of an opened VL checkpoint on an already set-up ``place``."""
    if ckpt.config.family != "vl":
        raise ErnieError(f"expected an ERNIE 4.5 VL checkpoint, the config is a {ckpt.config.family} model",
                         ckpt.folder / "config.json")
    model = build_vl_model(ckpt.config, place.dtype)
    tensors = ((canonical_paddle_key(k), a) for k, a in tensor_stream(ckpt, place.dtype))
    load_weights(model, tensors, ckpt.folder)
    return ErnieVLRuntime(model, ckpt.folder, place.device, place.dtype, read_generation_config(ckpt.folder))


def load_vl(path, dtype: str | None = None, device: str | None = None,
            num_threads: int | None = None) -> ErnieVLRuntime:
    """Load a VL checkpoint folder in either layout."""
    place = setup(device, dtype, num_threads)
    return vl_runtime(open_checkpoint(path), place)
