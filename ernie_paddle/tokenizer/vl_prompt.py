"""Multimodal prompts for ERNIE 4.5 VL: the chat template with image parts, placeholder expansion, token types.

A rendered prompt holds one ``<|IMAGE_PLACEHOLDER|>`` per image between ``<|IMAGE_START|>`` and
``<|IMAGE_END|>``; after tokenizing, each placeholder becomes (h/p * w/p) / merge^2 copies, as the reference
processor does. ``token_types`` marks the placeholders (1 image, 2 video) for the 3-D RoPE; ``moe_types``
also marks the start/end tokens, which the multimodal MoE routes to the vision experts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ernie_paddle.config.vl import token_ids
from ernie_paddle.errors import ErnieError
from ernie_paddle.tokenizer.image_preprocess import ImageOptions, preprocess_images

# Release format (spec 4.8): "User: ...\n", "Assistant: ...<|end_of_sentence|>", "Picture n:" before each
# image; the generation prompt closes an empty think block unless enable_thinking is true (VL-Thinking style:
# options.thinking_mode "open").
VL_CHAT_TEMPLATE = (
    "{%- set pictures = namespace(n=0) -%}{%- set videos = namespace(n=0) -%}\n"
    "{{- cls_token if cls_token is defined else '<|begin_of_sentence|>' -}}\n"
    "{%- for message in messages -%}\n"
    "{%- if message.role == 'user' -%}{{- 'User: ' -}}"
    "{%- elif message.role == 'assistant' -%}{{- 'Assistant: ' -}}{%- endif -%}\n"
    "{%- if message.content is string -%}{{- message.content -}}\n"
    "{%- else -%}{%- for part in message.content -%}\n"
    "{%- if part.type == 'text' -%}{{- part.text -}}\n"
    "{%- elif part.type in ['image', 'image_url'] -%}{%- set pictures.n = pictures.n + 1 -%}"
    "{{- 'Picture ' ~ pictures.n ~ ':<|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>' -}}\n"
    "{%- elif part.type in ['video', 'video_url'] -%}{%- set videos.n = videos.n + 1 -%}"
    "{{- 'Video ' ~ videos.n ~ ':<|VIDEO_START|><|VIDEO_PLACEHOLDER|><|VIDEO_END|>' -}}\n"
    "{%- endif -%}{%- endfor -%}{%- endif -%}\n"
    "{%- if message.role == 'assistant' -%}{{- '<|end_of_sentence|>' -}}{%- else -%}{{- '\\n' -}}{%- endif -%}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}{{- 'Assistant: ' -}}\n"
    "{%- if (enable_thinking is defined and enable_thinking) or (options is defined and options.thinking_mode "
    "in [true, 'open', 'on']) -%}{{- '<think>' -}}"
    "{%- else -%}{{- '<think>\\n\\n</think>\\n\\n' -}}{%- endif -%}{%- endif -%}"
)
IMAGE_PART_TYPES = ("image", "image_url")


@dataclass
class VLInputs:
    """Everything the VL model needs for one prompt batch (numpy, no padding)."""

    input_ids: np.ndarray  # [B, T] int64
    token_types: np.ndarray  # [B, T]: 0 text, 1 image placeholder, 2 video placeholder
    moe_types: np.ndarray  # [B, T]: as token_types, plus the start/end tokens of each image/video
    pixel_values: np.ndarray | None = None  # [N, C*p*p] float32
    image_grid_thw: np.ndarray | None = None  # [n_images, 3] int64
    pixel_values_videos: np.ndarray | None = None
    video_grid_thw: np.ndarray | None = None


def user_message(prompt: str, images: list) -> list[dict]:
    """One user turn: the images first (as image parts), then the text."""
    parts = [{"type": "image", "image": img} for img in images]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": prompt}]}]


def image_sources(messages) -> list:
    """The image of every image part, in order: ``image``, ``image_url`` (string or {"url"}), ``url``, ``path``."""
    found = []
    for message in messages:
        content = message.get("content")
        for part in content if isinstance(content, list) else []:
            if not isinstance(part, dict) or part.get("type") not in IMAGE_PART_TYPES:
                continue
            src = part.get("image", part.get("image_url", part.get("url", part.get("path"))))
            src = src.get("url") if isinstance(src, dict) else src
            if src is None:
                raise ErnieError(f"image part without an image: {sorted(part)}")
            found.append(src)
    return found


def chat_template_of(tokenizer) -> str:
    """The tokenizer's template when it knows image parts, else the built-in VL template."""
    template = getattr(tokenizer, "chat_template", None)
    return template if template and "IMAGE_PLACEHOLDER" in template else VL_CHAT_TEMPLATE


def modality_types(ids: np.ndarray, ids_of: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """(token_types, moe_types) for token ids of any shape."""
    ids = np.asarray(ids)
    types = np.where(ids == ids_of["image_token_id"], 1, np.where(ids == ids_of["video_token_id"], 2, 0))
    moe = types.copy()
    moe[np.isin(ids, [ids_of["image_start_token_id"], ids_of["image_end_token_id"]])] = 1
    moe[np.isin(ids, [ids_of["video_start_token_id"], ids_of["video_end_token_id"]])] = 2
    return types.astype(np.int64), moe.astype(np.int64)


def expand_placeholders(ids: list[int], placeholder: int, counts: list[int]) -> list[int]:
    """Replace the i-th ``placeholder`` id by ``counts[i]`` copies; the numbers of both must agree."""
    found = sum(1 for t in ids if t == placeholder)
    if found != len(counts):
        raise ErnieError(f"the prompt has {found} image placeholder(s) but {len(counts)} image(s) were given")
    out, it = [], iter(counts)
    for t in ids:
        out.extend([t] * next(it) if t == placeholder else [t])
    return out


def build_inputs(tokenizer, config, messages, opts: ImageOptions = ImageOptions(),
                 add_generation_prompt: bool = True, **template_vars) -> VLInputs:
    """Render ``messages`` with the VL template, tokenize, preprocess their images and expand placeholders."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                         chat_template=chat_template_of(tokenizer), **template_vars)
    return encode_with_images(tokenizer, config, text, image_sources(messages), opts)


def encode_with_images(tokenizer, config, text: str, images: list, opts: ImageOptions = ImageOptions()) -> VLInputs:
    """Tokenize an already rendered prompt whose placeholders stand for ``images`` (in order)."""
    ids_of = token_ids(config)
    ids = tokenizer.encode(text, add_special_tokens=False)
    pixels = grid = None
    counts: list[int] = []
    if images:
        pixels, grid = preprocess_images(images, opts)
        counts = [int(np.prod(g)) // opts.merge_size ** 2 for g in grid]
    row = np.array([expand_placeholders(ids, ids_of["image_token_id"], counts)], dtype=np.int64)
    types, moe = modality_types(row, ids_of)
    return VLInputs(row, types, moe, pixels, grid)
