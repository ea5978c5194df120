"""The serving engine behind ``aftzoo serve``: the models served, their limits, and the work of
each request (decoding, preprocessing, onnxruntime), apart from any HTTP framework's routes.

Bounds, so that no client can take the server from the others (docs/RELIABILITY.md):

- per model, ``max_concurrency`` requests compute at once (the rest wait in the event loop);
- a request whose images decode to more than ``heavy_pixels`` is *heavy*: heavy decodes run
  ``heavy_slots`` at a time for all models together, at most ``heavy_queue`` wait (then 503),
  so large images cannot starve small requests or other models of threads, cores or memory;
- the decoded pixels of one request are at most ``max_request_pixels``, checked from the image
  headers before anything is decoded; each image is reduced at decode to about its model's
  size (``transfer.serving.images``);
- at most ``max_inflight`` requests are read or computed at once (then 503, JSON, Retry-After).
"""
from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import json
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from starlette.concurrency import run_in_threadpool

from transfer.serving import runtime
from transfer.serving.batching import MicroBatcher
from transfer.serving.protocol import (DEFAULT_TOP_K, INPUT_NAME, TENSOR_INPUT, VERSION, ServeError, bad,
                                       infer_response, parse_json, read_bytes_tensor, read_fp32_tensor,
                                       requested_outputs, split_binary, top_k)

MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_BATCH = 64
MAX_TEXT_CHARS = 100_000


@dataclass
class ServeConfig:
    max_body_bytes: int = MAX_BODY_BYTES
    max_batch: int = MAX_BATCH
    batch_window_ms: float = 0.0              # micro-batching window; 0: off
    max_text_chars: int = MAX_TEXT_CHARS
    max_concurrency: int = 2                  # requests computed at once per model (0: no limit)
    max_request_pixels: int = runtime.MAX_PIXELS  # decoded image pixels per request
    heavy_pixels: int = 4_000_000             # a request decoding more is heavy
    heavy_slots: int = 1                      # heavy decodes at once, all models together
    heavy_queue: int = 8                      # heavy requests waiting beyond this: 503
    max_inflight: int = 64                    # requests read or computed at once beyond this: 503

    def check(self) -> None:
        for name in ("max_body_bytes", "max_batch", "max_request_pixels", "heavy_slots", "max_inflight"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1; got {getattr(self, name)}")


class ServedModel:
    """One loaded export and its limits."""

    def __init__(self, model: runtime.ExportedModel, engine: "Engine"):
        cfg = engine.config
        self.model, self.engine, self.max_batch = model, engine, cfg.max_batch
        self._slots = asyncio.Semaphore(cfg.max_concurrency) if cfg.max_concurrency else None
        self.batcher = MicroBatcher(model, cfg.batch_window_ms / 1000.0, cfg.max_batch) \
            if cfg.batch_window_ms > 0 else None

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def image_size(self) -> int:
        return int(self.model.preprocess_config["image_size"])

    def _slot(self):
        return self._slots if self._slots is not None else contextlib.nullcontext()

    async def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Feeds -> logits: one (possibly shared) onnxruntime call, within the model's slots."""
        if self.batcher is not None:
            return await self.batcher.run(feeds)
        async with self._slot():
            return await run_in_threadpool(self.model.run, feeds)

    async def logits(self, items: list) -> np.ndarray:
        """Raw inputs -> logits: preprocessing in a worker thread (heavy images in the shared heavy slots)."""
        if self.model.modality == "image" and self._pixels(items) > self.engine.config.heavy_pixels:
            return await self.run(await self.engine.heavy(self._prepare, items))
        if self.batcher is not None:
            return await self.batcher.run(await run_in_threadpool(self._prepare, items))
        async with self._slot():
            return await run_in_threadpool(lambda: self.model.run(self._prepare(items)))

    def _pixels(self, items: list) -> int:
        """The pixels a request's images decode to, from their headers; over the budget is a 400."""
        total, limit = 0, self.engine.config.max_request_pixels
        for i, item in enumerate(items):
            try:
                total += runtime.image_pixels(item, self.image_size)
            except runtime.InputError as exc:
                raise bad(f"element {i}: {exc}" if len(items) > 1 else str(exc)) from None
            if total > limit:
                raise bad(f"the images of this request decode to more than {limit:,} pixels (reached at element "
                          f"{i}); send fewer or smaller images")
        return total

    def _prepare(self, items: list) -> dict[str, np.ndarray]:
        try:
            return self.model.prepare(items, max_total_pixels=self.engine.config.max_request_pixels)
        except runtime.InputError as exc:
            raise bad(str(exc)) from None

    def public(self) -> dict:
        """What clients may see of the model (not where it sits on the server's disk)."""
        return {k: v for k, v in self.model.describe().items() if k != "path"}

    def metadata(self) -> dict:
        c, m = self.model.num_classes, self.model
        if m.modality == "text":
            kind = "utf-8 text" + (f"; the prompt has fields {', '.join(m.text_fields)}: a JSON object naming them"
                                   if len(m.text_fields) > 1 else "")
        else:
            kind = "an encoded image file (PNG, JPEG, ...): base64 in JSON, raw bytes as binary data"
        inputs = [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1], "parameters": {"content": kind}}]
        if m.modality == "image":
            cfg, s = m.preprocess_config, self.image_size
            inputs.append({"name": TENSOR_INPUT, "datatype": "FP32", "shape": [-1, 3, s, s], "parameters": {
                "content": f"instead of {INPUT_NAME!r}: images already preprocessed, resized to {s} x {s} "
                           f"({cfg.get('interpolation', 'bicubic')}, antialiased), pixel / 255, minus mean, over std; "
                           "finite float32", "mean": list(cfg["mean"]), "std": list(cfg["std"])}})
        return {
            "name": self.name, "versions": [VERSION], "platform": "onnxruntime_onnx", "inputs": inputs,
            "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, c]},
                        {"name": "logits", "datatype": "FP32", "shape": [-1, c]},
                        {"name": "labels", "datatype": "BYTES", "shape": [-1, -1]},
                        {"name": "scores", "datatype": "FP32", "shape": [-1, -1]}],
            "parameters": {**self.public(), "max_batch_size": self.max_batch, "top_k_default": DEFAULT_TOP_K},
        }


def load_models(exports: Sequence[str | Path] | None = None, *, providers: str | Sequence[str] | None = None,
                intra_op_threads: int | None = None, spinning: bool | None = None,
                warn=None) -> list[runtime.ExportedModel]:
    """The exports named (each must pass its checksum check), or every one under ``$AFTZOO_HOME/exports`` that does."""
    warn = warn or (lambda message: print(f"warning: {message}", file=sys.stderr))
    options = dict(providers=providers, intra_op_threads=intra_op_threads, spinning=spinning)
    models: list[runtime.ExportedModel] = []
    if exports:
        models = [runtime.load_export(folder, **options) for folder in exports]
    else:
        root = runtime.exports_root()
        for folder in runtime.find_exports(root):
            try:
                models.append(runtime.load_export(folder, **options))
            except runtime.ExportError as exc:
                warn(f"skipping {folder}: {exc}")
        if not models:
            raise runtime.ExportError(f"no usable export under {root}; make one with `aftzoo export RUN` or name "
                                      "export folders")
    names: dict[str, Path] = {}
    for m in models:
        if m.name in names:
            raise runtime.ExportError(f"two exports are named {m.name!r} ({names[m.name]} and {m.folder}); "
                                      "serve one of them")
        names[m.name] = m.folder
    return models


class Engine:
    """The served models and the work of a request, from its body to the response's."""

    def __init__(self, models: Sequence[runtime.ExportedModel], config: ServeConfig):
        config.check()
        self.config = config
        self.models = {m.name: ServedModel(m, self) for m in models}
        self._heavy = asyncio.Semaphore(config.heavy_slots)
        # Heavy decodes on threads of their own: each reuses the memory the previous one freed
        # (spread over the shared pool's threads, every thread's malloc arena kept its own copy).
        self._heavy_pool = ThreadPoolExecutor(config.heavy_slots, thread_name_prefix="aftzoo-heavy")
        self.heavy_waiting = 0

    def get(self, name: str, version: str | None = None) -> ServedModel:
        if name not in self.models:
            raise ServeError(404, f"unknown model {name!r}; models served here: "
                                  f"{', '.join(sorted(self.models)) or 'none'}")
        if version not in (None, "", VERSION):
            raise ServeError(404, f"model {name!r} has version {VERSION} only; got {version!r}")
        return self.models[name]

    async def stop(self) -> None:
        for m in self.models.values():
            if m.batcher is not None:
                await m.batcher.stop()
        self._heavy_pool.shutdown(wait=False, cancel_futures=True)

    async def heavy(self, fn, *args):
        """``fn(*args)`` in a worker thread, in one of the heavy slots shared by every model."""
        if self.heavy_waiting >= self.config.heavy_queue:
            raise ServeError(503, f"the server is busy decoding large images ({self.heavy_waiting} requests wait); "
                                  "retry in a few seconds, or send images nearer the model's size")
        self.heavy_waiting += 1
        try:
            await self._heavy.acquire()
        finally:
            self.heavy_waiting -= 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._heavy_pool, fn, *args)
        finally:
            self._heavy.release()

    def decompress(self, raw: bytes, encoding: str) -> bytes:
        limit = self.config.max_body_bytes
        encoding = encoding.lower()
        if encoding in ("gzip", "deflate"):
            try:
                if encoding == "gzip":
                    raw = gzip.GzipFile(fileobj=io.BytesIO(raw)).read(limit + 1)
                else:
                    raw = zlib.decompressobj().decompress(raw, limit + 1)
            except (OSError, EOFError, zlib.error) as exc:
                raise bad(f"cannot decompress the {encoding} body: {exc}") from None
            if len(raw) > limit:
                raise ServeError(413, "the decompressed request body is larger than the limit")
        elif encoding not in ("", "identity"):
            raise ServeError(415, f"unsupported Content-Encoding {encoding!r}; use gzip, deflate or none")
        return raw

    def check_batch(self, n: int) -> None:
        if n < 1:
            raise bad("no inputs given: send at least one text or image")
        if n > self.config.max_batch:
            raise bad(f"{n} inputs in one request; the limit is {self.config.max_batch}")

    def decode_items(self, served: ServedModel, items: list, *, binary: bool) -> list:
        """JSON strings (texts; base64 images) or binary elements (utf-8 texts; image bytes) -> model inputs."""
        return [self._decode_item(served, i, item, binary) for i, item in enumerate(items)]

    def _decode_item(self, served: ServedModel, i: int, item: Any, binary: bool):
        if served.model.modality != "text":
            if isinstance(item, bytes) and binary:
                return item
            if not isinstance(item, str):
                raise bad(f"element {i} must be a base64 string (an encoded image); got {type(item).__name__}")
            try:
                return runtime.decode_base64(item)
            except runtime.InputError as exc:
                raise bad(f"element {i} is not a base64-encoded image: {exc}") from None
        if isinstance(item, bytes):
            try:
                item = item.decode("utf-8")
            except UnicodeDecodeError:
                raise bad(f"element {i} is not UTF-8 text") from None
        if isinstance(item, dict) and len(served.model.text_fields) > 1 and not binary:
            item = json.dumps(item)  # the fields of a several-field prompt, as an object
        if not isinstance(item, str):
            raise bad(f"element {i} must be a string (a text); got {type(item).__name__}")
        if len(item) > self.config.max_text_chars:
            raise bad(f"element {i} has {len(item):,} characters; the limit is {self.config.max_text_chars:,}")
        try:
            return served.model.parse_text(item)
        except runtime.InputError as exc:
            raise bad(f"element {i}: {exc}") from None

    async def infer(self, served: ServedModel, raw: bytes, header: str | None) -> tuple[bytes, int | None]:
        """A v2 inference request's body -> (the response body, its JSON header length if binary data follows)."""
        text, binary = split_binary(raw, header)
        body = parse_json(text)
        if not isinstance(body, dict):
            raise bad("the inference request must be a JSON object with 'inputs'")
        params = body.get("parameters") or {}
        if not isinstance(params, dict):
            raise bad("'parameters' must be an object")
        inputs = body.get("inputs")
        if not isinstance(inputs, list) or not inputs:
            raise bad("'inputs' must be a non-empty list of tensors")
        names = [INPUT_NAME] + ([TENSOR_INPUT] if served.model.modality == "image" else [])
        if len(inputs) != 1:
            raise bad(f"model {served.name!r} takes one input, {' or '.join(map(repr, names))}; got {len(inputs)}")
        tensor = inputs[0]
        if not isinstance(tensor, dict):
            raise bad("each input must be an object with name, shape, datatype and data")
        m = served.model
        if tensor.get("name") == INPUT_NAME:
            items, from_binary = read_bytes_tensor(tensor, binary, self.config.max_batch,
                                                   "texts" if m.modality == "text" else "encoded images")
            decoded = self.decode_items(served, items, binary=from_binary)
            wanted = requested_outputs(body, params, m.num_classes, served.name)
            logits = await served.logits(decoded)
        elif tensor.get("name") in names:
            pixels = read_fp32_tensor(tensor, binary, self.config.max_batch, served.image_size)
            wanted = requested_outputs(body, params, m.num_classes, served.name)
            logits = await served.run({m.input_names[0]: pixels})
        else:
            raise bad(f"unknown input {tensor.get('name')!r}; model {served.name!r} takes "
                      f"{' or '.join(map(repr, names))}")
        probs = runtime.softmax(logits.astype(np.float32, copy=True))
        return infer_response(served.name, logits, probs, m.class_names, wanted, body.get("id"))

    async def predict(self, served: ServedModel, raw: bytes) -> dict:
        """The /v1 route: ``{"texts": [...]}`` or ``{"images": [...]}`` -> top-k labels per input."""
        body = parse_json(raw)
        if not isinstance(body, dict):
            raise bad('the request must be a JSON object: {"texts": [...]} or {"images": [...]}, optionally "top_k"')
        unknown = set(body) - {"texts", "images", "top_k"}
        if unknown:
            raise bad(f"unknown field(s) {', '.join(sorted(unknown))}; use texts or images, and top_k")
        key = "texts" if served.model.modality == "text" else "images"
        other = "images" if key == "texts" else "texts"
        if other in body:
            raise bad(f"model {served.name!r} takes {key}, not {other}")
        items = body.get(key)
        if not isinstance(items, list):
            raise bad(f"'{key}' must be a list of " + ("strings" if key == "texts" else "base64 strings"))
        self.check_batch(len(items))
        k = top_k(body.get("top_k"), served.model.num_classes)
        logits = await served.logits(self.decode_items(served, items, binary=False))
        return {"model": served.name, "provider": served.model.provider,
                "predictions": served.model.format(runtime.softmax(logits.astype(np.float32, copy=True)), k)}
