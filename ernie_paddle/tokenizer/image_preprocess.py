"""Image preprocessing for ERNIE 4.5 VL, equal to transformers' reference (PIL) image processor.

RGB (transparency composited on white) -> bicubic resize to a multiple of patch*merge with the pixel count
in [min_pixels, max_pixels] -> x/255 -> (x - mean) / std -> patches [N, C*p*p] in merge-block order,
with ``grid_thw`` = [1, H/p, W/p] per image. Images come from a path, bytes, a ``data:`` URL or a PIL image;
nothing is ever fetched from the network.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from ernie_paddle.errors import ErnieError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ImageOptions:
    """The reference processor's settings (defaults are the release's ``preprocessor_config.json``)."""

    patch_size: int = 14
    merge_size: int = 2
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 6177
    image_mean: tuple[float, ...] = field(default=CLIP_MEAN)
    image_std: tuple[float, ...] = field(default=CLIP_STD)
    rescale_factor: float = 1 / 255

    @classmethod
    def from_folder(cls, folder) -> ImageOptions:
        """Read ``preprocessor_config.json`` (either spelling of the pixel bounds); defaults when absent."""
        path = Path(folder) / "preprocessor_config.json"
        if not path.is_file():
            return cls()
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ErnieError(f"preprocessor_config.json is not valid JSON: {exc}", path) from None
        size = raw.get("size") or {}
        values = {"min_pixels": raw.get("min_pixels", size.get("shortest_edge")),
                  "max_pixels": raw.get("max_pixels", size.get("longest_edge"))}
        values.update({f.name: raw.get(f.name) for f in fields(cls) if f.name not in values})
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if v is not None}
        return cls(**values)


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(h, w): multiples of ``factor`` near the original aspect ratio with h*w within the pixel bounds."""
    if max(height, width) / min(height, width) > 200:
        raise ErnieError(f"image aspect ratio {max(height, width) / min(height, width):.0f} exceeds 200")
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


def load_image(source):
    """A PIL RGB image from a PIL image, bytes, a local path or a ``data:`` URL (never the network)."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(source, Image.Image):
        image = source
    else:
        name = source if isinstance(source, (str, Path)) else "<bytes>"
        try:
            if isinstance(source, bytes):
                data = source
            elif isinstance(source, str) and source.startswith("data:"):
                header, _, payload = source.partition(",")
                if ";base64" not in header:
                    raise ErnieError("a data: image URL must be base64-encoded")
                data = base64.b64decode(payload, validate=True)
                name = "data: URL"
            elif isinstance(source, str) and source.startswith(("http://", "https://")):
                raise ErnieError("images are not fetched from the network; pass a local path or a data: URL")
            else:
                data = Path(str(source).removeprefix("file://")).read_bytes()
            image = Image.open(io.BytesIO(data))
            image.load()
        except OSError as exc:
            if isinstance(exc, UnidentifiedImageError):
                raise ErnieError("not an image file PIL can read", name) from None
            raise ErnieError(f"cannot read image: {exc.strerror or exc}", name) from None
        except binascii.Error:
            raise ErnieError("data: URL payload is not valid base64") from None
    return _to_rgb(image)


def _to_rgb(image):
    from PIL import Image

    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def patchify(image: np.ndarray, patch: int, merge: int) -> np.ndarray:
    """CHW float32 -> [gh*gw, C*p*p] patches, merge x merge blocks of neighbours consecutive."""
    c, h, w = image.shape
    gh, gw = h // patch, w // patch
    blocks = image.reshape(c, gh // merge, merge, patch, gw // merge, merge, patch)
    return blocks.transpose(1, 4, 2, 5, 0, 3, 6).reshape(gh * gw, c * patch * patch)


def preprocess_image(image, opts: ImageOptions = ImageOptions()) -> tuple[np.ndarray, tuple[int, int, int]]:
    """One image -> (patches [N, C*p*p] float32, grid (1, H/p, W/p))."""
    from PIL import Image

    rgb = load_image(image)
    factor = opts.patch_size * opts.merge_size
    h, w = smart_resize(rgb.height, rgb.width, factor, opts.min_pixels, opts.max_pixels)
    resized = np.asarray(rgb.resize((w, h), resample=Image.Resampling.BICUBIC)).transpose(2, 0, 1)
    scaled = (resized.astype(np.float64) * opts.rescale_factor).astype(np.float32)
    mean = np.asarray(opts.image_mean, dtype=np.float32)[:, None, None]
    std = np.asarray(opts.image_std, dtype=np.float32)[:, None, None]
    normed = (scaled - mean) / std
    return patchify(normed, opts.patch_size, opts.merge_size), (1, h // opts.patch_size, w // opts.patch_size)


def preprocess_images(images, opts: ImageOptions = ImageOptions()) -> tuple[np.ndarray, np.ndarray]:
    """Images -> (pixel_values [sum N, C*p*p] float32, image_grid_thw [n, 3] int64), in order."""
    done = [preprocess_image(img, opts) for img in images]
    if not done:
        raise ErnieError("no images to preprocess")
    return np.concatenate([p for p, _ in done]), np.array([g for _, g in done], dtype=np.int64)
