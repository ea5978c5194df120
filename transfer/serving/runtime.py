"""Run an exported student with onnxruntime alone: no PyTorch, no model library.

An export folder (written by ``transfer.export.onnx``) holds::

    model.onnx, model.onnx.data   the network (weights always in the external data file)
    preprocess.json               how raw inputs become the network's tensors
    classes.json                  the class names, in logit order
    tokenizer.json                text students: the tokenizer, for the ``tokenizers`` library
    manifest.json                 sha256 and size of every file above, versions, parity

``load_export(folder)`` verifies every checksum before anything is loaded, and refuses a
folder whose files changed (``TamperedExport``). Preprocessing repeats the student's own
(``zoo.models``) in numpy, Pillow and ``tokenizers``:

- images: decoded with Pillow (EXIF orientation applied; palette and CMYK images to RGB,
  1-bit and 16-bit images to grey, alpha dropped as the training pipeline drops it), grey
  images kept on one channel and broadcast to three by the normalisation, resized to the
  student's size with the same antialiased separable filter as
  ``torch.nn.functional.interpolate(..., antialias=True)`` (bilinear or bicubic, Keys a=-0.5,
  clamped), then ``pixel / 255``, minus mean, over std, as float32 ``(N, 3, S, S)``;
- texts: written into the data set's prompt, tokenised with special tokens, padded to the
  longest text of the batch; a text too long for the prompt is cut (not the prompt's ending),
  as ``TextFeatureModel`` does.

This module imports numpy, Pillow, ``tokenizers`` and onnxruntime (each when first needed)
and shares the prompt rules of ``zoo.prompts`` (no torch there either), so ``aftzoo predict``
and ``aftzoo serve`` work where torch is not installed.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from transfer.serving.errors import ExportError, InputError, TamperedExport  # noqa: F401 (re-exported)
from transfer.serving.images import (IMAGE_SUFFIXES, MAX_PIXELS, ImagePreprocessor, decode_image,  # noqa: F401
                                     image_pixels, resize_weights)
from zoo.prompts import DEFAULT_PROMPT, fields, fit_prompt, format_prompt

FORMAT = "aftzoo-export"
FORMAT_VERSION = 1
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
PREPROCESS_FILE = "preprocess.json"
CLASSES_FILE = "classes.json"
TOKENIZER_FILE = "tokenizer.json"
MANIFEST_FILE = "manifest.json"


# ---------------------------------------------------------------------------------------------
# Manifest and checksums
# ---------------------------------------------------------------------------------------------
def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_manifest(folder: str | Path) -> dict:
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not folder.is_dir():
        raise ExportError(f"{folder} is not a folder; give the folder `aftzoo export` wrote")
    if not path.is_file():
        raise ExportError(f"{folder} has no {MANIFEST_FILE}; it is not an aftzoo export (make one with `aftzoo export RUN`)")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as exc:
        raise TamperedExport(f"{path} is not valid JSON ({exc}); export the run again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ExportError(f"{path} is not an aftzoo export manifest")
    if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise ExportError(f"{folder} was written by a newer aftzoo (export format {manifest.get('format_version')}, "
                          f"this one reads {FORMAT_VERSION}); upgrade aftzoo")
    return manifest


def verify_export(folder: str | Path) -> dict:
    """Check every file the manifest lists (size, then sha256); return the manifest or raise ``TamperedExport``."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    files = manifest.get("files")
    if not isinstance(files, dict) or MODEL_FILE not in files:
        raise TamperedExport(f"{folder / MANIFEST_FILE} lists no files; export the run again")
    problems = []
    for name, info in sorted(files.items()):
        path = folder / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            problems.append(f"{name}: not a file inside the export")
        elif not path.is_file():
            problems.append(f"{name}: missing")
        elif path.stat().st_size != info.get("bytes"):
            problems.append(f"{name}: {path.stat().st_size} bytes, the manifest says {info.get('bytes')}")
        elif sha256_file(path) != info.get("sha256"):
            problems.append(f"{name}: sha256 differs from the manifest")
    if problems:
        raise TamperedExport(f"the export {folder} failed its checksum check ({'; '.join(problems)}); it was "
                             "modified or damaged after export: export the run again with `aftzoo export`")
    return manifest


# ---------------------------------------------------------------------------------------------
# Providers
# ---------------------------------------------------------------------------------------------
def choose_providers(requested: str | Sequence[str] | None = None) -> list[str]:
    """CUDA when onnxruntime offers it (``onnxruntime-gpu`` with a GPU), else CPU; never asks for an absent one."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if requested:
        wanted = [requested] if isinstance(requested, str) else list(requested)
        aliases = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
        wanted = [aliases.get(p.lower(), p) for p in wanted]
        missing = [p for p in wanted if p not in available]
        if missing:
            raise ExportError(f"onnxruntime here offers {', '.join(available)}; not {', '.join(missing)}")
        return wanted + (["CPUExecutionProvider"] if "CPUExecutionProvider" not in wanted else [])
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


# ---------------------------------------------------------------------------------------------
# Texts
# ---------------------------------------------------------------------------------------------
def _clean_up_tokenization(text: str) -> str:
    for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
                 (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(a, b)
    return text


def _check_unicode(text: str, index: int) -> None:
    """Refuse lone surrogates (JSON's "\\ud800", undecodable bytes in argv): tokenizers cannot encode them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"text {index} is not valid Unicode: {text[exc.start]!r} at character {exc.start} is half of "
                         "a surrogate pair (or an undecodable byte); send UTF-8 text") from None


class TextPreprocessor:
    """Texts -> ``input_ids`` and ``attention_mask`` (int64, ``(N, L)``), as ``TextFeatureModel.preprocess``."""

    def __init__(self, tokenizer_file: str | Path, cfg: Mapping):
        from tokenizers import Tokenizer

        self.max_length = int(cfg["max_length"])
        self.prompt = cfg.get("prompt") or DEFAULT_PROMPT
        self.lowercase = bool(cfg.get("lowercase", False))
        self.pad_id = int(cfg.get("pad_token_id") or 0)
        self.padding_side = cfg.get("padding_side", "right")
        self.clean_up = bool(cfg.get("clean_up_tokenization_spaces", False))
        # Two tokenizers, never reconfigured after this: tokenizers objects are shared by server threads.
        self._plain = Tokenizer.from_file(str(tokenizer_file))
        self._plain.no_padding()
        self._plain.no_truncation()
        self._cut = Tokenizer.from_file(str(tokenizer_file))
        self._cut.no_padding()
        self._cut.enable_truncation(self.max_length, direction=cfg.get("truncation_side", "right"))

    def _ids(self, text: str, special: bool = True) -> list[int]:
        return self._plain.encode(text, add_special_tokens=special).ids

    def _decode(self, ids: list[int]) -> str:
        text = self._plain.decode(ids, skip_special_tokens=True)
        return _clean_up_tokenization(text) if self.clean_up else text

    def _fit(self, example, prompt: str) -> list[int]:
        return fit_prompt(example, prompt, self.max_length, self._ids, self._decode,
                          lambda text: self._cut.encode(text).ids)

    def _pad(self, rows: list[list[int]]) -> dict[str, np.ndarray]:
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            if self.padding_side == "left":
                ids[i, width - len(row):], mask[i, width - len(row):] = row, 1
            else:
                ids[i, :len(row)], mask[i, :len(row)] = row, 1
        return {"input_ids": ids, "attention_mask": mask}

    def __call__(self, texts: Sequence) -> dict[str, np.ndarray]:
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            raise InputError("no texts given")
        for t in texts:
            if not isinstance(t, (str, Mapping, list, tuple)):
                raise InputError(f"a text input must be a string; got {type(t).__name__}")
        prompt = self.prompt
        texts = [t.lower() if self.lowercase and isinstance(t, str) else t for t in texts]
        try:
            formatted = [format_prompt(prompt, t) for t in texts]
        except ValueError as exc:  # an example that does not fit the prompt's fields
            raise InputError(str(exc)) from None
        for i, example in enumerate(texts):
            for part in (example.values() if isinstance(example, Mapping) else
                         example if isinstance(example, (list, tuple)) else [example]):
                _check_unicode(str(part), i)
        truncate = prompt.rstrip().endswith("}")
        tok = self._cut if truncate else self._plain
        rows = [e.ids for e in tok.encode_batch(formatted)]
        if max(len(r) for r in rows) > self.max_length:
            rows = [self._fit(t, prompt) if len(r) > self.max_length else r for t, r in zip(texts, rows)]
        return self._pad(rows)


# ---------------------------------------------------------------------------------------------
# The exported model
# ---------------------------------------------------------------------------------------------
def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)
    return z


def top_k(probabilities: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, probabilities) of the ``k`` most probable classes per row, most probable first."""
    k = max(1, min(int(k), probabilities.shape[-1]))
    idx = np.argsort(-probabilities, axis=-1, kind="stable")[:, :k]
    return idx, np.take_along_axis(probabilities, idx, axis=-1)


BUCKET_ROWS = 8  # texts per length bucket: enough rows for efficient matrix products


def _buckets(mask: np.ndarray | None) -> list[tuple[np.ndarray, int]] | None:
    """Rows of a right-padded text batch grouped by length, each group cut to its longest text.

    A batch is padded to its longest text; at batch 32 of Rotten Tomatoes snippets about half the
    tokens are padding, and a transformer computes them all (attention masks them only after the
    matrix products). Sorted by length in groups of ``BUCKET_ROWS``, each group runs at its own
    width: the same logits (padding is masked; positions of right-padded tokens do not move), up to
    float rounding, for about the real tokens' cost. ``None`` where it cannot help or does not apply
    (few rows, left padding, images).
    """
    if mask is None or mask.ndim != 2 or len(mask) < 2 * BUCKET_ROWS:
        return None
    lengths = mask.sum(axis=1)
    if not (mask == (np.arange(mask.shape[1]) < lengths[:, None])).all():  # not plainly right-padded
        return None
    order = np.argsort(lengths, kind="stable")
    groups = [order[i:i + BUCKET_ROWS] for i in range(0, len(order), BUCKET_ROWS)]
    if len(groups[-1]) < BUCKET_ROWS // 2 and len(groups) > 1:  # a short tail joins the group before it
        groups[-2:] = [np.concatenate(groups[-2:])]
    return [(rows, max(1, int(lengths[rows].max()))) for rows in groups]


class ExportedModel:
    """An export folder loaded into an onnxruntime session.

    ``prepare(inputs)`` -> feeds; ``run(feeds)`` -> logits; ``predict(inputs, top_k)`` ->
    per input a list of ``{"label", "index", "probability"}``. Safe to call from several threads.
    """

    def __init__(self, folder: str | Path, *, providers: str | Sequence[str] | None = None, verify: bool = True,
                 intra_op_threads: int | None = None, spinning: bool | None = None):
        import onnxruntime as ort

        self.folder = Path(folder).resolve()
        self.manifest = verify_export(self.folder) if verify else read_manifest(self.folder)
        self.name: str = self.manifest.get("name") or self.folder.name
        try:
            self.preprocess_config: dict = json.loads((self.folder / PREPROCESS_FILE).read_text())
            self.class_names: list[str] = [str(c) for c in json.loads((self.folder / CLASSES_FILE).read_text())]
        except (OSError, ValueError) as exc:
            raise ExportError(f"cannot read {self.folder}: {exc}") from None
        self.modality: str = self.preprocess_config["modality"]
        if self.modality == "image":
            self.preprocessor: Any = ImagePreprocessor.from_config(self.preprocess_config)
        elif self.modality == "text":
            self.preprocessor = TextPreprocessor(self.folder / TOKENIZER_FILE, self.preprocess_config)
        else:
            raise ExportError(f"{self.folder}: unknown modality {self.modality!r}")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if intra_op_threads:
            options.intra_op_num_threads = int(intra_op_threads)
        if spinning is not None:  # idle worker threads busy-wait by default: fast alone, costly when shared
            options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        self.providers = choose_providers(providers)
        self.session = ort.InferenceSession(str(self.folder / MODEL_FILE), sess_options=options,
                                            providers=self.providers)
        self.provider: str = self.session.get_providers()[0]
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._logits = "logits" if "logits" in self.output_names else self.output_names[0]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def describe(self) -> dict:
        m = self.manifest
        return {"name": self.name, "modality": self.modality, "classes": self.class_names, "run_id": m.get("run_id"),
                "dataset": m.get("dataset"), "student": m.get("student"), "quantize": m.get("quantize"),
                "opset": m.get("opset"), "provider": self.provider, "path": str(self.folder)}

    def prepare(self, inputs, *, max_total_pixels: int | None = None) -> dict[str, np.ndarray]:
        """Raw inputs (texts; or images as bytes, paths, PIL images, uint8 arrays) -> the network's feeds."""
        if self.modality == "image":
            return {self.input_names[0]: self.preprocessor(inputs, max_total_pixels=max_total_pixels)}
        return self.preprocessor(inputs)

    @property
    def text_fields(self) -> list[str]:
        """The prompt's fields (text models): one for plain texts, several for pairs (premise, hypothesis...)."""
        return fields(self.preprocess_config.get("prompt") or DEFAULT_PROMPT) if self.modality == "text" else []

    def parse_text(self, item: str):
        """A text input; for a prompt with several fields, a JSON object naming them (``{"premise": ...}``)."""
        if len(self.text_fields) > 1 and item.lstrip().startswith("{"):
            try:
                value = json.loads(item)
            except ValueError as exc:
                raise InputError(f"this model's prompt has fields {', '.join(self.text_fields)}: give a JSON "
                                 f"object naming them ({exc})") from None
            if isinstance(value, dict):
                return {str(k): str(v) for k, v in value.items()}
        return item

    def run(self, feeds: Mapping[str, np.ndarray] | np.ndarray) -> np.ndarray:
        """Feeds -> logits. Right-padded texts run in length buckets (see ``_buckets``)."""
        if isinstance(feeds, np.ndarray):
            feeds = {self.input_names[0]: feeds}
        feeds = {k: feeds[k] for k in self.input_names}
        buckets = _buckets(feeds.get("attention_mask"))
        if buckets is None:
            return self.session.run([self._logits], feeds)[0]
        out = None
        for rows, width in buckets:
            part = self.session.run([self._logits], {k: v[rows, :width] for k, v in feeds.items()})[0]
            if out is None:
                out = np.empty((len(feeds["attention_mask"]), part.shape[1]), dtype=part.dtype)
            out[rows] = part
        return out

    def logits(self, inputs) -> np.ndarray:
        return self.run(self.prepare(inputs))

    def predict(self, inputs, top_k: int = 5) -> list[list[dict]]:
        return self.format(softmax(self.logits(inputs)), top_k)

    def format(self, probabilities: np.ndarray, k: int) -> list[list[dict]]:
        idx, p = top_k(probabilities, k)
        return [[{"label": self.class_names[j], "index": int(j), "probability": float(q)} for j, q in zip(ri, rp)]
                for ri, rp in zip(idx, p)]

    @staticmethod
    def merge(feeds: list[dict[str, np.ndarray]], pad_id: int = 0, padding_side: str = "right") -> dict[str, np.ndarray]:
        """Concatenate several requests' feeds into one batch (text rows padded to the longest)."""
        if len(feeds) == 1:
            return feeds[0]
        if "input_ids" not in feeds[0]:
            return {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}
        width = max(f["input_ids"].shape[1] for f in feeds)
        out = {}
        for key, fill in (("input_ids", pad_id), ("attention_mask", 0)):
            parts = []
            for f in feeds:
                a = f[key]
                pad = width - a.shape[1]
                if pad:
                    widths = ((0, 0), (pad, 0)) if padding_side == "left" else ((0, 0), (0, pad))
                    a = np.pad(a, widths, constant_values=fill)
                parts.append(a)
            out[key] = np.concatenate(parts)
        return out


def load_export(folder: str | Path, **kwargs) -> ExportedModel:
    """Verify and load an export folder (see ``ExportedModel``)."""
    return ExportedModel(folder, **kwargs)


def own_export(folder: str | Path, root: str | Path | None = None) -> Path:
    """``folder`` resolved, if it lies under ``root`` (default ``$AFTZOO_HOME/exports``), else ``ExportError``.

    For folders a client names (the app's "try it" box, an API call). The checksums prove a folder
    is intact, not that this aftzoo wrote it: a client must not make the process load a model it
    placed elsewhere. Symlinks are resolved first, so a link inside the root does not lead out of it.
    """
    root = Path(root if root is not None else exports_root()).expanduser().resolve()
    path = Path(folder).expanduser().resolve()
    if path == root or not path.is_relative_to(root):
        raise ExportError(f"{folder} is not an export of this aftzoo home (they are under {root}); export the run "
                          "here with `aftzoo export RUN`, or serve that folder with `aftzoo serve FOLDER`")
    return path


def find_exports(root: str | Path) -> list[Path]:
    """Folders under ``root`` (one level) that hold a manifest; unchecked."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / MANIFEST_FILE).is_file())


def decode_base64(text: str) -> bytes:
    """Standard or URL-safe base64 (a ``data:...;base64,`` prefix allowed) -> bytes, or ``InputError``."""
    if not isinstance(text, str):
        raise InputError(f"an image must be a base64 string; got {type(text).__name__}")
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    text = "".join(text.split())
    try:
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError(f"not valid base64: {exc}") from None


def read_text_inputs(items: Iterable[str]) -> list[str]:
    """Command-line text inputs: each argument is a text, ``@file`` reads one text per non-empty line."""
    texts: list[str] = []
    for item in items:
        if item.startswith("@") and len(item) > 1:
            path = Path(item[1:]).expanduser()
            if not path.is_file():
                raise InputError(f"no file {path} (an argument starting with @ names a file of texts, one per line)")
            texts.extend(line.rstrip("\r") for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
        else:
            texts.append(item)
    return texts


def exports_root() -> Path:
    """``$AFTZOO_HOME/exports`` (read from the environment; storage.settings gives the same answer)."""
    try:
        from storage.settings import get_settings

        return get_settings().home / "exports"
    except Exception:  # pragma: no cover - a bare runtime install without aftzoo's settings
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return Path(os.environ.get("AFTZOO_HOME") or Path(cache) / "aftzoo") / "exports"
