"""Import images as a user's data set: a zip of class folders, or such a folder as it is.

``<class>/<file>`` or ``train|test/<class>/<file>``, one wrapping folder allowed. Zip entries
are decoded with PIL straight from the archive in memory; nothing is ever extracted to disk.
The archive is refused whole on a zip-slip entry name, and on zip-bomb signs (too many
entries, too many bytes declared or actually inflated, an entry compressed too well, an
image with too many pixels). A folder is read through the same checks, its files standing in
for the entries (symbolic links are skipped, never followed).
"""
from __future__ import annotations

import io
import math
import os
import re
import stat
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from zoo.datatypes import stratified
from zoo.userstore import (Limits, UploadError, check_stratifiable, first_line, given_splits, human)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")
MAX_SIDE = 224
# Modes PIL decodes greyscale files into; a set is stored as (N, S, S) only when all are.
_GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_CHUNK = 1 << 20


@dataclass
class _Entry:
    info: zipfile.ZipInfo
    split: str | None
    label: str


@dataclass
class _Layout:
    entries: list[_Entry]
    skipped: list[tuple[str, str]]
    has_splits: bool


def _unsafe(name: str) -> bool:
    norm = name.replace("\\", "/")
    return (norm.startswith("/") or bool(re.match(r"^[A-Za-z]:", norm)) or "\x00" in norm
            or any(part == ".." for part in norm.split("/")))


@contextmanager
def _open_zip(path: Path, limits: Limits) -> Iterator[zipfile.ZipFile]:
    """The archive, opened only after its directory passes the zip-slip and zip-bomb checks."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise UploadError(f"{path.name} is not a readable zip archive ({first_line(exc)}); zip the folder "
                          "again") from None
    try:
        infos = zf.infolist()
        if len(infos) > limits.max_files:
            raise UploadError(f"{path.name} has {len(infos):,} entries, more than {limits.max_files:,} "
                              "(Limits.max_files); upload fewer files or raise the limit")
        for info in infos:
            if _unsafe(info.filename):
                # Never extracted, but a name that climbs out of the folder only comes from a crafted archive.
                raise UploadError(f"{path.name} has an unsafe entry {info.filename!r} (an absolute path, a drive "
                                  "letter or a '..' component); the whole archive is refused: zip the folder "
                                  "again from inside it")
        total = sum(i.file_size for i in infos)
        if total > limits.max_unpacked_bytes:
            raise UploadError(f"{path.name} unpacks to {human(total)}, more than {human(limits.max_unpacked_bytes)} "
                              "(Limits.max_unpacked_bytes); upload fewer or smaller images, or raise the limit")
        for info in infos:
            if info.file_size >= limits.ratio_floor_bytes:
                ratio = info.file_size / max(info.compress_size, 1)
                if ratio > limits.max_ratio:
                    raise UploadError(f"{path.name} looks like a zip bomb: entry {info.filename!r} inflates "
                                      f"{ratio:,.0f} times ({human(info.compress_size)} to {human(info.file_size)}), "
                                      f"more than {limits.max_ratio:g} (Limits.max_ratio); the archive is refused")
        yield zf
    finally:
        zf.close()


def layout_of(zf: zipfile.ZipFile) -> _Layout:
    """Which entries are images of which class (and split); why each other entry is skipped."""
    skipped: list[tuple[str, str]] = []
    images: list[tuple[zipfile.ZipInfo, tuple[str, ...]]] = []
    for info in sorted(zf.infolist(), key=lambda i: i.filename):
        if info.is_dir():
            continue
        parts = tuple(p for p in info.filename.replace("\\", "/").split("/") if p not in ("", "."))
        if not parts:
            continue
        if parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts):
            skipped.append((info.filename, "system file (macOS metadata or hidden)"))
        elif stat.S_ISLNK(info.external_attr >> 16):
            skipped.append((info.filename, "symbolic link"))
        elif PurePosixPath(parts[-1]).suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append((info.filename, "not an image file"))
        else:
            images.append((info, parts))
    # One wrapping folder (zip tools add the folder's own name) is dropped when class folders remain below it.
    tops = {parts[0] for _, parts in images}
    if len(tops) == 1 and any(len(parts) >= 3 for _, parts in images):
        images = [(info, parts[1:]) for info, parts in images]
    has_splits = {parts[0].lower() for _, parts in images if len(parts) >= 3} >= {"train", "test"}
    entries = []
    for info, parts in images:
        split = parts[0].lower() if has_splits and len(parts) >= 2 else None
        rest = parts[1:] if has_splits else parts
        if has_splits and split not in ("train", "test"):
            skipped.append((info.filename, "outside the train/ and test/ folders"))
        elif len(rest) < 2:
            skipped.append((info.filename, "not inside a class folder"))
        else:
            entries.append(_Entry(info, split, rest[0]))
    return _Layout(entries, skipped, has_splits)


def _read_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, budget: list[int]) -> bytes:
    """The entry's bytes, counted as they inflate: a header that lies about sizes gains nothing."""
    out = bytearray()
    with zf.open(info) as f:
        while chunk := f.read(_CHUNK):
            out += chunk
            budget[0] -= len(chunk)
            if len(out) > info.file_size:
                raise UploadError(f"entry {info.filename!r} inflates past the {info.file_size:,} bytes its header "
                                  "declares; the archive is refused")
            if budget[0] < 0:
                raise UploadError("the archive inflates past Limits.max_unpacked_bytes while being read; "
                                  "it is refused")
    return bytes(out)


@contextmanager
def _pil_guard(limit: int):
    """PIL's own decompression-bomb check at our limit, its warning raised as an error."""
    from PIL import Image

    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = int(limit)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _bomb(path: Path, entry: str, pixels, limits: Limits) -> UploadError:
    """The refusal of an image past the pixel limit; ``pixels`` is a count or PIL's own exception."""
    if isinstance(pixels, BaseException):
        found = re.search(r"\((\d+) pixels\)", str(pixels))
        pixels = int(found.group(1)) if found else None
    has = f"has {pixels:,} pixels" if pixels is not None else "has too many pixels"
    return UploadError(f"{path.name}: image {entry!r} {has}, more than {limits.max_image_pixels:,} "
                       "(Limits.max_image_pixels); the archive is refused: shrink the image or raise the limit")


def _to_array(img, side: int, grey: bool) -> np.ndarray:
    from PIL import Image, ImageOps

    img = ImageOps.exif_transpose(img)
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        a = np.asarray(img, dtype=np.float64)
        if a.max(initial=0) > 255:  # 16-bit scans: keep the range, not a saturated copy
            a = a / 257.0
        img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "La", "RGBa", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")  # transparent pixels shown on white, as a viewer would
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    img = img.convert("L" if grey else "RGB")
    w, h = img.size
    if (w, h) != (side, side):
        # Short side to `side`, then the centre square: what models' own eval preprocessing does.
        scale = side / min(w, h)
        nw, nh = max(side, round(w * scale)), max(side, round(h * scale))
        img = img.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=3.0)
        left, top = (nw - side) // 2, (nh - side) // 2
        img = img.crop((left, top, left + side, top + side))
    return np.asarray(img, dtype=np.uint8)


def images_content(path: Path, limits: Limits) -> dict:
    from PIL import Image, UnidentifiedImageError

    # Any failure to decode one untrusted file skips that file (with its reason); bombs and limits refuse all.
    decode_errors = (UnidentifiedImageError, Exception)
    notes: list[str] = []
    with open_images(path, limits) as zf, _pil_guard(limits.max_image_pixels):
        layout = layout_of(zf)
        skipped = list(layout.skipped)
        # Pass 1, headers only: sizes and modes decide the array's shape before anything is decoded.
        heads = []
        for entry in layout.entries:
            try:
                with zf.open(entry.info) as f, Image.open(f) as img:
                    size, mode = img.size, img.mode
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise _bomb(path, entry.info.filename, exc, limits) from None
            except decode_errors as exc:
                skipped.append((entry.info.filename, f"not a readable image ({first_line(exc)})"))
                continue
            if size[0] * size[1] > limits.max_image_pixels:
                raise _bomb(path, entry.info.filename, size[0] * size[1], limits)
            heads.append((entry, size, mode))
        if not heads:
            raise UploadError(f"{path.name} has no usable images ({_skipped_summary(skipped)}); import a folder "
                              "(or a zip of it) with one sub-folder of images per class")
        side = int(min(MAX_SIDE, max(1, np.median([min(s) for _, s, _ in heads]))))
        grey = all(m in _GREY_MODES for _, _, m in heads)
        shape = (len(heads), side, side) if grey else (len(heads), side, side, 3)
        need = math.prod(shape)
        if need > limits.max_array_bytes:
            raise UploadError(f"{path.name}'s {len(heads):,} images at {side}x{side} would take {human(need)} in "
                              f"memory, more than {human(limits.max_array_bytes)} (Limits.max_array_bytes); "
                              "upload fewer images or raise the limit")
        # Pass 2: decode each image in full (a truncated file fails here) into one preallocated array.
        pixels = np.empty(shape, dtype=np.uint8)
        kept: list[_Entry] = []
        budget = [limits.max_unpacked_bytes]
        for entry, _, _ in heads:
            name = entry.info.filename
            try:
                data = _read_entry(zf, entry.info, budget)
                with Image.open(io.BytesIO(data)) as img:
                    if img.format == "JPEG":  # decode at a reduced scale when it is far larger than needed
                        w, h = img.size
                        scale = side / min(w, h)
                        img.draft(img.mode, (math.ceil(w * scale), math.ceil(h * scale)))
                    img.load()
                    pixels[len(kept)] = _to_array(img, side, grey)
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise _bomb(path, name, exc, limits) from None
            except UploadError:
                raise
            except decode_errors as exc:
                skipped.append((name, f"not a readable image ({first_line(exc)})"))
                continue
            kept.append(entry)
    if not kept:
        raise UploadError(f"{path.name} has no usable images ({_skipped_summary(skipped)}); zip a folder with one "
                          "sub-folder of images per class")
    pixels = pixels[:len(kept)]
    for entry, reason in skipped:
        notes.append(f"skipped {entry!r}: {reason}")
    class_names = sorted({e.label for e in kept})
    index = {c: i for i, c in enumerate(class_names)}
    y = np.array([index[e.label] for e in kept], dtype=np.int64)
    lost = sorted({e.label for e in layout.entries} - set(class_names))
    if lost:
        notes.append(f"class folder(s) {', '.join(map(repr, lost))} had no readable image and were left out")
    where = f"{path.name}"
    if layout.has_splits:
        parts = given_splits(pixels, y, [e.split for e in kept], class_names, where, "train/test folders", notes)
    else:
        check_stratifiable(y, class_names, where, "use train/ and test/ folders")
        parts = stratified(pixels, y)
    colour = "grey" if grey else "RGB"
    return {"modality": "image", "kind": "images", "class_names": class_names, "splits": parts, "warnings": notes,
            "description_tail": f"{len(kept):,} {colour} images {side}x{side}", "image_size": side}


def _skipped_summary(skipped: list[tuple[str, str]]) -> str:
    if not skipped:
        return "no image files in class folders"
    shown = "; ".join(f"{e!r}: {r}" for e, r in skipped[:3])
    return f"skipped {len(skipped)}: {shown}{' ...' if len(skipped) > 3 else ''}"


@dataclass
class _FileInfo:
    """A folder's file in the shape of a ``zipfile.ZipInfo``: what the checks and the layout read."""
    filename: str
    file_size: int
    external_attr: int
    path: Path

    @property
    def compress_size(self) -> int:
        return self.file_size

    def is_dir(self) -> bool:
        return False


class _Folder:
    """An image folder read through the zip code path: ``infolist`` and ``open`` over its files."""

    def __init__(self, root: Path):
        self.root = root
        self._infos = []
        for dirpath, dirnames, filenames in os.walk(root):  # os.walk does not follow links to folders
            dirnames.sort()
            for name in sorted(filenames):
                path = Path(dirpath) / name
                st = path.lstat()
                self._infos.append(_FileInfo(path.relative_to(root).as_posix(), st.st_size, st.st_mode << 16, path))

    def infolist(self) -> list[_FileInfo]:
        return list(self._infos)

    def open(self, info: _FileInfo):
        return open(info.path, "rb")

    def close(self) -> None:
        pass


@contextmanager
def _open_folder(path: Path, limits: Limits) -> Iterator[_Folder]:
    folder = _Folder(path)
    infos = folder.infolist()
    if len(infos) > limits.max_files:
        raise UploadError(f"{path.name} has {len(infos):,} files, more than {limits.max_files:,} (Limits.max_files); "
                          "import fewer files or raise the limit")
    total = sum(i.file_size for i in infos if not stat.S_ISLNK(i.external_attr >> 16))
    if total > limits.max_unpacked_bytes:
        raise UploadError(f"{path.name} holds {human(total)}, more than {human(limits.max_unpacked_bytes)} "
                          "(Limits.max_unpacked_bytes); import fewer or smaller images, or raise the limit")
    yield folder


def open_images(path: Path, limits: Limits):
    """The zip archive or the folder at ``path``, checked, as one source of entries."""
    return _open_folder(path, limits) if path.is_dir() else _open_zip(path, limits)
