"""Images read from their files as they are used: large sets are never decoded whole into memory.

``ImageFiles(paths, side)`` behaves like the ``uint8`` array ``(N, side, side, 3)`` the models read:
``len``, an index, a slice or an index array give decoded pixels (short side resized to ``side``,
then the centre square, as models' own evaluation preprocessing does); ``subset`` keeps it lazy.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np


class ImageFiles:
    def __init__(self, paths: Sequence[str | Path], side: int = 224):
        self.paths = [str(p) for p in paths]
        self.side = int(side)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), self.side, self.side, 3)

    dtype = np.dtype(np.uint8)
    ndim = 4

    def _decode(self, path: str) -> np.ndarray:
        from PIL import Image, ImageOps

        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img).convert("RGB")
            w, h = img.size
            scale = self.side / min(w, h)
            nw, nh = max(self.side, round(w * scale)), max(self.side, round(h * scale))
            img = img.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=3.0)
            left, top = (nw - self.side) // 2, (nh - self.side) // 2
            return np.asarray(img.crop((left, top, left + self.side, top + self.side)), dtype=np.uint8)

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return self._decode(self.paths[index])
        rows = range(len(self))[index] if isinstance(index, slice) else np.asarray(index).tolist()
        out = np.empty((len(rows), self.side, self.side, 3), dtype=np.uint8)
        for i, row in enumerate(rows):
            out[i] = self._decode(self.paths[row])
        return out

    def __iter__(self):
        return (self._decode(p) for p in self.paths)

    def subset(self, index) -> "ImageFiles":
        return ImageFiles([self.paths[i] for i in np.asarray(index).tolist()], self.side)

    def identity(self) -> str:
        """What the data's fingerprint hashes: each file's name, size and first 4 KiB (not every byte of a
        large set), and the side the images are read at."""
        h = hashlib.sha256(f"files:{self.side}:{len(self.paths)}".encode())
        for p in self.paths:
            path = Path(p)
            h.update(f"{path.parent.name}/{path.name}:{path.stat().st_size}".encode())
            with open(path, "rb") as f:
                h.update(f.read(4096))
        return h.hexdigest()
