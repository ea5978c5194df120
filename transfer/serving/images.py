"""Image preprocessing without torch: decode at (about) the model's size, resize as PyTorch does.

A small file can hold a huge image (a 136 KB PNG of 6000 x 6000), and a model needs only its
own side S. So an image is made small as early as its format allows, and turned into floats
last:

- JPEG: Pillow's ``draft`` decodes at 1/2, 1/4 or 1/8 scale straight from the DCT, never
  below ``KEEP`` x S;
- any format: once decoded (uint8), ``Image.reduce`` box-averages integer factors down to no
  less than ``KEEP`` x S per side, before mode conversion, EXIF rotation or float32;
- then the antialiased resize to S x S of ``torch.nn.functional.interpolate(...,
  antialias=True)`` (bilinear or bicubic, Keys a=-0.5, clamped) on that small image.

Images under ``KEEP`` x S per side are resized from their full pixels, exactly as PyTorch
does (the export's parity check); larger ones differ from the full-resolution resize by the
box prefilter only (measured: under 1% of the pixel range at 6000 -> 32). The peak memory of
one image is its decoded uint8 pixels (at most ``MAX_PIXELS`` x 4 bytes), never a float32
copy of them.
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from transfer.serving.errors import InputError

MAX_PIXELS = 40_000_000  # decoded pixels of one image (and of one request): a small PNG can inflate to gigabytes
KEEP = 8                 # images are reduced at decode to no less than KEEP x the model's side
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_REDUCIBLE = ("L", "RGB", "RGBA", "LA", "I", "F")  # modes Image.reduce takes
_TRANSPOSE = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE", 6: "ROTATE_270",
              7: "TRANSVERSE", 8: "ROTATE_90"}  # EXIF orientation -> the transpose that undoes it


def _filter(kind: str):
    if kind == "bicubic":
        a = -0.5

        def cubic(x: np.ndarray) -> np.ndarray:
            x = np.abs(x)
            return np.where(x < 1.0, ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0,
                            np.where(x < 2.0, (((x - 5.0) * x + 8.0) * x - 4.0) * a, 0.0))
        return cubic, 4
    return (lambda x: np.clip(1.0 - np.abs(x), 0.0, None)), 2


_WEIGHTS: dict[tuple[int, int, str], np.ndarray] = {}


def resize_weights(in_size: int, out_size: int, kind: str) -> np.ndarray:
    """``(out, in)`` matrix of PyTorch's antialiased interpolation (``_compute_weights_aa``, align_corners=False)."""
    key = (in_size, out_size, kind)
    if key in _WEIGHTS:
        return _WEIGHTS[key]
    fn, interp = _filter(kind)
    scale = in_size / out_size
    support = interp * 0.5 * scale if scale >= 1.0 else interp * 0.5
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    weights = np.zeros((out_size, in_size), dtype=np.float64)
    for i in range(out_size):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)          # int() truncates toward zero, like static_cast
        hi = min(int(center + support + 0.5), in_size)
        j = np.arange(lo, hi, dtype=np.float64)
        w = fn((j - center + 0.5) * invscale)
        total = w.sum()
        if total != 0.0:
            w = w / total
        weights[i, lo:hi] = w
    weights = weights.astype(np.float32)
    if len(_WEIGHTS) < 256:
        _WEIGHTS[key] = weights
    return weights


def _describe(data: Any) -> str:
    return f"{len(data)} bytes" if isinstance(data, (bytes, bytearray, memoryview)) else str(data)


def open_image(data: bytes | str | Path, size: int | None = None):
    """A lazily opened PIL image (header read, pixels not decoded), drafted towards ``KEEP x size``; or ``InputError``."""
    from PIL import Image, UnidentifiedImageError

    try:
        if isinstance(data, (bytes, bytearray, memoryview)):
            img = Image.open(io.BytesIO(bytes(data)))
        else:
            img = Image.open(Path(data))
        if size and img.format == "JPEG":
            img.draft(img.mode, (KEEP * size, KEEP * size))  # decode at 1/2, 1/4 or 1/8 scale
    except FileNotFoundError:
        raise InputError(f"no image file {data}") from None
    except Image.DecompressionBombError as exc:  # Pillow's own, larger limit, checked while opening
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = f"{int(found.group(1)):,}" if found else "too many"
        raise InputError(f"an image of {pixels} pixels is larger than the limit of {MAX_PIXELS:,} pixels") from None
    except UnidentifiedImageError:
        raise InputError(f"cannot decode an image from {_describe(data)} (not an image format Pillow reads)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InputError(f"cannot decode an image from {_describe(data)} ({exc})") from None
    if img.size[0] * img.size[1] > MAX_PIXELS:
        raise InputError(f"an image of {img.size[0]} x {img.size[1]} pixels is larger than the limit of "
                         f"{MAX_PIXELS:,} pixels")
    return img


def image_pixels(data: Any, size: int | None = None) -> int:
    """Pixels ``data`` decodes to (after the JPEG draft for a model of side ``size``), from its header alone."""
    if isinstance(data, np.ndarray):
        return int(data.shape[0]) * int(data.shape[1]) if data.ndim >= 2 else 0
    if not isinstance(data, (bytes, bytearray, memoryview, str, Path)):
        return int(data.size[0]) * int(data.size[1])  # a PIL image
    img = open_image(data, size)
    try:
        return int(img.size[0]) * int(img.size[1])
    finally:
        img.close()


def _plain_mode(img):
    """Palette and CMYK images -> RGB(A), 1-bit and 16-bit -> grey, LA -> L; L, RGB and RGBA stay."""
    mode = img.mode
    if mode in ("1", "I", "I;16", "I;16B", "I;16L", "F"):
        return img.convert("L")
    if mode == "LA":
        return img.getchannel("L")
    if mode == "P":
        return img.convert("RGBA" if "transparency" in img.info else "RGB")
    if mode not in ("L", "RGB", "RGBA"):
        return img.convert("RGB")
    return img


def decode_image(data: bytes | str | Path | Any, size: int | None = None) -> np.ndarray:
    """Encoded bytes, a file path or a PIL image -> uint8 ``(H, W)`` (grey) or ``(H, W, 3)``.

    With ``size`` (the model's side) an image larger than ``KEEP * size`` is reduced while it is
    decoded (see the module docstring); without, it keeps every pixel.
    """
    from PIL import Image

    if isinstance(data, np.ndarray):
        return data
    img = data if isinstance(data, Image.Image) else open_image(data, size)
    try:
        orientation = img.getexif().get(0x0112)
    except Exception:  # a broken EXIF block: keep the pixels as stored
        orientation = None
    try:
        img.load()
        if size:
            factors = (max(1, img.size[0] // (KEEP * size)), max(1, img.size[1] // (KEEP * size)))
            if factors != (1, 1):
                if img.mode not in _REDUCIBLE:
                    img = _plain_mode(img)
                img = img.reduce(factors)
    except (OSError, ValueError, SyntaxError) as exc:
        raise InputError(f"cannot decode an image from {_describe(data)} ({exc})") from None
    if orientation in _TRANSPOSE:
        img = img.transpose(getattr(Image.Transpose, _TRANSPOSE[orientation]))
    arr = np.asarray(_plain_mode(img))
    if arr.ndim == 3 and arr.shape[-1] == 4:  # the training pipeline drops alpha without compositing
        arr = arr[..., :3]
    return np.ascontiguousarray(arr, dtype=np.uint8)


@dataclass(frozen=True)
class ImagePreprocessor:
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"

    @classmethod
    def from_config(cls, cfg: Mapping) -> "ImagePreprocessor":
        return cls(int(cfg["image_size"]), tuple(cfg["mean"]), tuple(cfg["std"]), cfg.get("interpolation", "bicubic"))

    def _one(self, image: np.ndarray) -> np.ndarray:
        x = np.asarray(image)
        if x.ndim == 3 and x.shape[-1] == 4:
            x = x[..., :3]
        if x.ndim == 3 and x.shape[-1] == 1:
            x = x[..., 0]
        if x.ndim not in (2, 3) or (x.ndim == 3 and x.shape[-1] != 3) or 0 in x.shape:
            raise InputError(f"an image must be shaped (H, W) or (H, W, 3); got {x.shape}")
        pixels = x.dtype == np.uint8
        if not pixels and not np.issubdtype(x.dtype, np.floating):
            raise InputError(f"image pixels must be uint8 (or floats in [0, 1]); got {x.dtype}")
        x = x.astype(np.float32)
        planes = x[None] if x.ndim == 2 else np.moveaxis(x, -1, 0)         # (C, H, W)
        size = self.image_size
        if planes.shape[1:] != (size, size):
            kind = "bicubic" if self.interpolation == "bicubic" else "bilinear"
            wh = resize_weights(planes.shape[1], size, kind)
            ww = resize_weights(planes.shape[2], size, kind)
            planes = np.einsum("oh,chw,pw->cop", wh, planes, ww, optimize=True).astype(np.float32)
            if kind == "bicubic":
                np.clip(planes, 0.0, 255.0 if pixels else 1.0, out=planes)
        std = np.asarray(self.std, dtype=np.float32).reshape(3, 1, 1)
        mean = np.asarray(self.mean, dtype=np.float32).reshape(3, 1, 1)
        scale = np.float32(1.0) / (np.float32(255.0) * std)
        if not pixels:
            scale = scale * np.float32(255.0)
        shift = -mean / std
        return (planes * scale + shift).astype(np.float32)                # grey broadcasts to 3 channels

    def __call__(self, images: Iterable, max_total_pixels: int | None = None) -> np.ndarray:
        """Images (encoded bytes, paths, PIL images or uint8 arrays) -> float32 ``(N, 3, S, S)``.

        ``images`` is a batch: a list, or an array ``(N, H, W)`` / ``(N, H, W, C)`` as the data
        sets give. Each image is decoded, reduced and resized before the next is decoded, so
        memory holds one decoded image at a time; ``max_total_pixels`` bounds the decoded pixels
        of the batch (checked from each header, before its pixels are decoded).
        """
        items = list(images)
        if not items:
            raise InputError("no images given")
        out, total = [], 0
        for i, item in enumerate(items):
            if max_total_pixels is not None:
                total += image_pixels(item, self.image_size)
                if total > max_total_pixels:
                    raise InputError(f"the images of this request decode to more than {max_total_pixels:,} pixels "
                                     f"(reached at image {i}); send fewer or smaller images")
            out.append(self._one(decode_image(item, self.image_size)))
        return np.stack(out)
