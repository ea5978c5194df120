"""HTTP serving of exported students with onnxruntime: the Open Inference Protocol and a JSON route.

``create_app(exports)`` returns a FastAPI app; ``serve(...)`` runs it with uvicorn. Routes:

Open Inference Protocol (KServe v2 REST, as Triton and MLServer speak it; ``tritonclient.http``
works unmodified, JSON or binary tensors):

- ``GET  /v2``, ``/v2/health/live``, ``/v2/health/ready``
- ``GET  /v2/models/{name}[/versions/1]``: metadata; one input ``input``, BYTES, shape ``[-1]``
  (raw texts, or encoded images: base64 strings in JSON, raw bytes as binary tensor data);
  outputs ``probabilities`` and ``logits`` FP32 ``[-1, C]``, ``labels`` BYTES and ``scores``
  FP32 ``[-1, k]`` (the top k classes, k from the ``top_k`` parameter, default 5)
- ``GET  /v2/models/{name}[/versions/1]/ready``
- ``POST /v2/models/{name}[/versions/1]/infer``: outputs as requested (``binary_data`` and
  Triton's ``classification`` output parameters honoured), binary tensor extension
  (``Inference-Header-Content-Length``) in both directions

For people: ``GET /v1/models`` and ``POST /v1/models/{name}/predict`` with ``{"texts": [...]}``
or ``{"images": [base64, ...]}`` and ``top_k``, answering the top-k labels with probabilities.
``/openapi.json`` and ``/docs`` describe both.

Limits: request bodies over ``max_body_bytes`` (16 MiB) get 413, more than ``max_batch`` (64)
inputs 400; malformed JSON, wrong types and undecodable images 400 with a message; unknown
models 404 naming the models served. Errors are ``{"error": "..."}`` as the protocol asks.

Nothing here imports torch: ``transfer.serving.runtime`` runs the models. Micro-batching
(``batch_window_ms`` > 0) gathers concurrent requests to one model for up to that many
milliseconds into one onnxruntime call; it is off by default (see benchmarks/bench_serve.py).
"""
from __future__ import annotations

import asyncio
import gzip
import json
import math
import struct
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from transfer.serving import runtime

MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_BATCH = 64
MAX_TEXT_CHARS = 100_000
MAX_REQUEST_PIXELS = 80_000_000  # decoded image pixels per request: PNGs of a few KB can decode to gigapixels
DEFAULT_TOP_K = 5
INPUT_NAME = "input"
OUTPUTS = ("probabilities", "logits", "labels", "scores")
VERSION = "1"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class ServeError(Exception):
    """A request the server refuses: ``status`` and a message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _bad(message: str) -> ServeError:
    return ServeError(400, message)


# ---------------------------------------------------------------------------------------------
# Schemas (documentation in /openapi.json; requests are parsed by hand for exact 4xx messages)
# ---------------------------------------------------------------------------------------------
class ErrorResponse(BaseModel):
    error: str


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: Optional[dict[str, Any]] = None


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: Optional[dict[str, Any]] = None


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class InferInputTensor(BaseModel):
    name: str = Field(description="'input'")
    shape: list[int] = Field(description="[N] (or [N, 1]): N texts or images")
    datatype: str = Field(description="BYTES")
    parameters: Optional[dict[str, Any]] = Field(None, description="binary_data_size with the binary extension")
    data: Optional[list[Any]] = Field(None, description="texts, or base64-encoded images (PNG, JPEG, ...)")


class InferRequestedOutput(BaseModel):
    name: str = Field(description="probabilities, logits, labels or scores")
    parameters: Optional[dict[str, Any]] = Field(
        None, description="binary_data (bool), classification (int: Triton's 'score:index:label' strings), top_k")


class InferRequest(BaseModel):
    id: Optional[str] = None
    parameters: Optional[dict[str, Any]] = Field(None, description="top_k (int), binary_data_output (bool)")
    inputs: list[InferInputTensor]
    outputs: Optional[list[InferRequestedOutput]] = None


class InferOutputTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Optional[dict[str, Any]] = None
    data: Optional[list[Any]] = None


class InferResponse(BaseModel):
    model_name: str
    model_version: Optional[str] = None
    id: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None
    outputs: list[InferOutputTensor]


class PredictRequest(BaseModel):
    texts: Optional[list[Union[str, dict[str, str]]]] = Field(
        None, description="texts, for a text model (objects naming the fields of a prompt with several)")
    images: Optional[list[str]] = Field(None, description="base64-encoded image files, for an image model")
    top_k: Optional[int] = Field(None, description=f"labels per input (default {DEFAULT_TOP_K})")


class Prediction(BaseModel):
    label: str
    index: int
    probability: float


class PredictResponse(BaseModel):
    model: str
    provider: str
    predictions: list[list[Prediction]]


class ModelInfo(BaseModel):
    name: str
    modality: str
    classes: list[str]
    run_id: Optional[str] = None
    dataset: Optional[str] = None
    student: Optional[str] = None
    quantize: Optional[str] = None
    opset: Optional[int] = None
    provider: str


class ModelList(BaseModel):
    models: list[ModelInfo]


# ---------------------------------------------------------------------------------------------
# Micro-batching
# ---------------------------------------------------------------------------------------------
@dataclass
class _Pending:
    feeds: dict[str, np.ndarray]
    rows: int
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    """Gathers concurrent requests to one model for up to ``window`` seconds (or ``max_rows`` rows)
    into one onnxruntime call; ``max_inflight`` such calls run at once."""

    def __init__(self, model: runtime.ExportedModel, window: float, max_rows: int, max_inflight: int = 2):
        self.model, self.window, self.max_rows = model, window, max_rows
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.slots = asyncio.Semaphore(max_inflight)
        self.task: asyncio.Task | None = None
        cfg = model.preprocess_config
        self.pad_id, self.side = int(cfg.get("pad_token_id") or 0), cfg.get("padding_side", "right")
        self.calls = self.rows = 0

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
            self.task = None

    async def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        self.start()
        rows = len(next(iter(feeds.values())))
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(_Pending(feeds, rows, future))
        return await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self.queue.get()
            batch, rows = [first], first.rows
            deadline = loop.time() + self.window
            while rows < self.max_rows:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), left)
                except (asyncio.TimeoutError, TimeoutError):
                    break
                batch.append(item)
                rows += item.rows
            await self.slots.acquire()
            loop.create_task(self._run(batch))

    async def _run(self, batch: list[_Pending]) -> None:
        try:
            feeds = runtime.ExportedModel.merge([p.feeds for p in batch], self.pad_id, self.side)
            logits = await run_in_threadpool(self.model.run, feeds)
            self.calls += 1
            self.rows += len(logits)
            start = 0
            for p in batch:
                if not p.future.done():
                    p.future.set_result(logits[start:start + p.rows])
                start += p.rows
        except Exception as exc:  # pragma: no cover - the session failed: every waiter hears it
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
        finally:
            self.slots.release()


# ---------------------------------------------------------------------------------------------
# The served models
# ---------------------------------------------------------------------------------------------
class ServedModel:
    def __init__(self, model: runtime.ExportedModel, batch_window_ms: float, max_batch: int,
                 max_concurrency: int = 0, max_request_pixels: int = MAX_REQUEST_PIXELS):
        self.model, self.max_batch, self.max_concurrency = model, max_batch, max_concurrency
        self.max_request_pixels = max_request_pixels
        self._slots: asyncio.Semaphore | None = None
        self.batcher = MicroBatcher(model, batch_window_ms / 1000.0, max_batch) if batch_window_ms > 0 else None

    @property
    def name(self) -> str:
        return self.model.name

    async def logits(self, items: list) -> np.ndarray:
        """Raw inputs -> logits: preprocessing in a worker thread, then one (possibly shared) session call."""
        if self.batcher is None:
            if not self.max_concurrency:
                return await run_in_threadpool(self._prepare_and_run, items)
            if self._slots is None:
                self._slots = asyncio.Semaphore(self.max_concurrency)
            async with self._slots:
                return await run_in_threadpool(self._prepare_and_run, items)
        feeds = await run_in_threadpool(self._prepare, items)
        return await self.batcher.run(feeds)

    def _prepare(self, items: list) -> dict[str, np.ndarray]:
        try:
            return self.model.prepare(items, max_total_pixels=self.max_request_pixels)
        except runtime.InputError as exc:
            raise _bad(str(exc)) from None

    def _prepare_and_run(self, items: list) -> np.ndarray:
        return self.model.run(self._prepare(items))

    def public(self) -> dict:
        """What clients may see of the model (not where it sits on the server's disk)."""
        return {k: v for k, v in self.model.describe().items() if k != "path"}

    def metadata(self) -> dict:
        c = self.model.num_classes
        kind = ("utf-8 text" + (f"; the prompt has fields {', '.join(self.model.text_fields)}: a JSON object naming "
                                "them" if len(self.model.text_fields) > 1 else "")) if self.model.modality == "text" else \
            "an encoded image file (PNG, JPEG, ...): base64 in JSON, raw bytes as binary data"
        return {
            "name": self.name, "versions": [VERSION], "platform": "onnxruntime_onnx",
            "inputs": [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1], "parameters": {"content": kind}}],
            "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, c]},
                        {"name": "logits", "datatype": "FP32", "shape": [-1, c]},
                        {"name": "labels", "datatype": "BYTES", "shape": [-1, -1]},
                        {"name": "scores", "datatype": "FP32", "shape": [-1, -1]}],
            "parameters": {**self.public(), "max_batch_size": self.max_batch, "top_k_default": DEFAULT_TOP_K},
        }


@dataclass
class ServeConfig:
    max_body_bytes: int = MAX_BODY_BYTES
    max_batch: int = MAX_BATCH
    batch_window_ms: float = 0.0
    max_text_chars: int = MAX_TEXT_CHARS


def load_models(exports: Sequence[str | Path] | None = None, *, providers: str | Sequence[str] | None = None,
                intra_op_threads: int | None = None, spinning: bool | None = None,
                warn=None) -> list[runtime.ExportedModel]:
    """The exports named (each must pass its checksum check), or every one under ``$AFTZOO_HOME/exports`` that does."""
    warn = warn or (lambda message: print(f"warning: {message}", file=sys.stderr))
    models: list[runtime.ExportedModel] = []
    if exports:
        for folder in exports:
            models.append(runtime.load_export(folder, providers=providers, intra_op_threads=intra_op_threads,
                                              spinning=spinning))
    else:
        root = runtime.exports_root()
        for folder in runtime.find_exports(root):
            try:
                models.append(runtime.load_export(folder, providers=providers, intra_op_threads=intra_op_threads,
                                                  spinning=spinning))
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


# ---------------------------------------------------------------------------------------------
# Request parsing helpers
# ---------------------------------------------------------------------------------------------
def _json(raw: bytes) -> Any:
    if not raw:
        raise _bad("the request has no body; send a JSON object")
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise _bad("the request body is not UTF-8 JSON") from None
    except ValueError as exc:
        raise _bad(f"malformed JSON: {exc}") from None
    except RecursionError:  # "[[[[...": Python's parser recurses once per level
        raise _bad("the JSON nests too deeply; send a flat list of inputs") from None


def _top_k(value: Any, num_classes: int, where: str = "top_k") -> int:
    if value is None:
        return min(DEFAULT_TOP_K, num_classes)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and (
            not math.isfinite(value) or value != int(value))):
        raise _bad(f"{where} must be a whole number; got {value!r}")
    if int(value) < 1:
        raise _bad(f"{where} must be at least 1; got {value!r}")
    return min(int(value), num_classes)


def _flatten(data: Any) -> list:
    """Nested lists -> their elements in order; a loop, not recursion, so no depth can crash it."""
    out: list = []
    stack = [iter([data])]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def _deserialize_bytes(buffer: bytes) -> list[bytes]:
    """The binary form of a BYTES tensor: each element a 4-byte little-endian length, then its bytes."""
    items, offset = [], 0
    while offset < len(buffer):
        if offset + 4 > len(buffer):
            raise _bad("binary BYTES data ends inside an element's length prefix")
        (n,) = struct.unpack_from("<I", buffer, offset)
        offset += 4
        if offset + n > len(buffer):
            raise _bad("binary BYTES data ends inside an element")
        items.append(buffer[offset:offset + n])
        offset += n
    return items


def _serialize_bytes(items: Sequence[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


# ---------------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------------
class BodyLimit:
    """ASGI middleware: request bodies larger than ``max_bytes`` get 413 before any route parses them."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        chunks, size, too_big = [], 0, False
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            too_big = True
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            more = message.get("more_body", False)
            if size > self.max_bytes:
                too_big = True
            if too_big:
                # Read and drop the rest (up to 4x the limit), so the client reads the 413 rather than a reset.
                if size > 4 * self.max_bytes + (1 << 20):
                    break
                continue
            chunks.append(body)
        if too_big:
            limit = f"{self.max_bytes / (1 << 20):g} MiB" if self.max_bytes >= (1 << 20) else f"{self.max_bytes} bytes"
            response = JSONResponse({"error": f"the request body is larger than the limit of {limit}"}, status_code=413,
                                    headers={"Connection": "close"})
            return await response(scope, receive, send)
        body = b"".join(chunks)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


def create_app(exports: Sequence[str | Path] | Sequence[runtime.ExportedModel] | None = None, *,
               max_body_bytes: int = MAX_BODY_BYTES, max_batch: int = MAX_BATCH, batch_window_ms: float = 0.0,
               providers: str | Sequence[str] | None = None, intra_op_threads: int | None = None,
               spinning: bool | None = False, max_concurrency: int = 2) -> FastAPI:
    """A FastAPI app serving ``exports`` (folders or loaded models; default: every valid export in
    ``$AFTZOO_HOME/exports``).

    ``max_concurrency`` caller requests run preprocessing + onnxruntime at once per model (0: no
    limit); the rest wait their turn in the event loop. With ``spinning=False`` idle onnxruntime
    threads sleep instead of busy-waiting. Both defaults come from benchmarks/bench_serve.py: on a
    shared 2-core machine they cut the p99 latency at 32 concurrent clients by 2-4x at equal or
    better throughput than onnxruntime's defaults with no limit.
    """
    if exports and all(isinstance(e, runtime.ExportedModel) for e in exports):
        loaded = list(exports)
    else:
        loaded = load_models(exports, providers=providers, intra_op_threads=intra_op_threads, spinning=spinning)
    if max_batch < 1 or max_body_bytes < 1:
        raise ValueError("max_batch and max_body_bytes must be at least 1")
    config = ServeConfig(max_body_bytes=max_body_bytes, max_batch=max_batch, batch_window_ms=batch_window_ms)
    models = {m.name: ServedModel(m, batch_window_ms, max_batch, max_concurrency) for m in loaded}
    try:
        from importlib.metadata import version

        aftzoo_version = version("aftzoo")
    except Exception:  # pragma: no cover
        aftzoo_version = "0"

    async def shutdown():
        for m in models.values():
            if m.batcher is not None:
                await m.batcher.stop()

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(_app):
        yield
        await shutdown()

    app = FastAPI(title="aftzoo serving", version=aftzoo_version, lifespan=lifespan,
                  description="Exported aftzoo students run with onnxruntime: the Open Inference Protocol (KServe v2 "
                              "REST) under /v2 and a simple JSON route under /v1.")
    app.state.models = models
    app.state.config = config
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)

    @app.exception_handler(ServeError)
    async def _serve_error(_request, exc: ServeError):
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request, exc: StarletteHTTPException):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _internal_error(_request, exc: Exception):
        # The protocol's error shape, with nothing of the server's internals; uvicorn logs the traceback.
        return JSONResponse({"error": f"internal error ({type(exc).__name__}); the server's log has the details"},
                            status_code=500)

    def get_model(name: str, version: str | None = None) -> ServedModel:
        if name not in models:
            raise ServeError(404, f"unknown model {name!r}; models served here: {', '.join(sorted(models)) or 'none'}")
        if version not in (None, "", VERSION):
            raise ServeError(404, f"model {name!r} has version {VERSION} only; got {version!r}")
        return models[name]

    errors = {400: {"model": ErrorResponse}, 404: {"model": ErrorResponse}, 413: {"model": ErrorResponse}}

    # -- Open Inference Protocol ----------------------------------------------------------------
    @app.get("/v2", response_model=ServerMetadata, tags=["v2"], summary="Server metadata")
    async def server_metadata():
        return {"name": "aftzoo", "version": aftzoo_version, "extensions": ["binary_tensor_data", "classification"]}

    @app.get("/v2/health/live", tags=["v2"], summary="Liveness")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready", tags=["v2"], summary="Readiness: every model is loaded")
    async def ready():
        return {"ready": True}

    @app.get("/v2/models/{name}", response_model=ModelMetadata, response_model_exclude_none=True,
             responses=errors, tags=["v2"], summary="Model metadata")
    async def model_metadata(name: str):
        return get_model(name).metadata()

    @app.get("/v2/models/{name}/versions/{version}", response_model=ModelMetadata, response_model_exclude_none=True,
             responses=errors, tags=["v2"], summary="Model metadata (one version, 1)")
    async def model_metadata_version(name: str, version: str):
        return get_model(name, version).metadata()

    @app.get("/v2/models/{name}/ready", responses=errors, tags=["v2"], summary="Model readiness")
    async def model_ready(name: str):
        return {"name": get_model(name).name, "ready": True}

    @app.get("/v2/models/{name}/versions/{version}/ready", responses=errors, tags=["v2"],
             summary="Model readiness (one version, 1)")
    async def model_ready_version(name: str, version: str):
        return {"name": get_model(name, version).name, "ready": True}

    infer_doc = dict(response_model=InferResponse, responses=errors, tags=["v2"], openapi_extra={"requestBody": {
        "required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}},
                                      "application/octet-stream": {"schema": {"type": "string", "format": "binary"},
                                                                   "description": "JSON header of "
                                                                   "Inference-Header-Content-Length bytes, then "
                                                                   "binary tensor data"}}}})

    @app.post("/v2/models/{name}/infer", summary="Inference", **infer_doc)
    async def infer(name: str, request: Request):
        return await _infer(get_model(name), request)

    @app.post("/v2/models/{name}/versions/{version}/infer", summary="Inference (one version, 1)", **infer_doc)
    async def infer_version(name: str, version: str, request: Request):
        return await _infer(get_model(name, version), request)

    async def _body(request: Request) -> bytes:
        raw = await request.body()
        encoding = request.headers.get("content-encoding", "").lower()
        if encoding in ("gzip", "deflate"):
            try:
                if encoding == "gzip":
                    raw = gzip.GzipFile(fileobj=__import__("io").BytesIO(raw)).read(config.max_body_bytes + 1)
                else:
                    d = zlib.decompressobj()
                    raw = d.decompress(raw, config.max_body_bytes + 1)
            except (OSError, EOFError, zlib.error) as exc:
                raise _bad(f"cannot decompress the {encoding} body: {exc}") from None
            if len(raw) > config.max_body_bytes:
                raise ServeError(413, "the decompressed request body is larger than the limit")
        elif encoding not in ("", "identity"):
            raise ServeError(415, f"unsupported Content-Encoding {encoding!r}; use gzip, deflate or none")
        return raw

    def _check_batch(n: int) -> None:
        if n < 1:
            raise _bad("no inputs given: send at least one text or image")
        if n > config.max_batch:
            raise _bad(f"{n} inputs in one request; the limit is {config.max_batch}")

    def _decode_items(served: ServedModel, items: list, *, binary: bool) -> list:
        """JSON strings (texts; base64 images) or binary elements (utf-8 texts; image bytes) -> model inputs."""
        out = []
        for i, item in enumerate(items):
            if served.model.modality == "text":
                if isinstance(item, bytes):
                    try:
                        item = item.decode("utf-8")
                    except UnicodeDecodeError:
                        raise _bad(f"element {i} is not UTF-8 text") from None
                if isinstance(item, dict) and len(served.model.text_fields) > 1 and not binary:
                    item = json.dumps(item)  # the fields of a several-field prompt, as an object
                if not isinstance(item, str):
                    raise _bad(f"element {i} must be a string (a text); got {type(item).__name__}")
                if len(item) > config.max_text_chars:
                    raise _bad(f"element {i} has {len(item):,} characters; the limit is {config.max_text_chars:,}")
                try:
                    out.append(served.model.parse_text(item))
                except runtime.InputError as exc:
                    raise _bad(f"element {i}: {exc}") from None
            else:
                if isinstance(item, bytes) and binary:
                    out.append(item)
                elif isinstance(item, str):
                    try:
                        out.append(runtime.decode_base64(item))
                    except runtime.InputError as exc:
                        raise _bad(f"element {i} is not a base64-encoded image: {exc}") from None
                else:
                    raise _bad(f"element {i} must be a base64 string (an encoded image); got {type(item).__name__}")
        return out

    async def _infer(served: ServedModel, request: Request):
        raw = await _body(request)
        header = request.headers.get("inference-header-content-length")
        binary = b""
        if header is not None:
            if not header.isdigit() or int(header) > len(raw):
                raise _bad(f"Inference-Header-Content-Length {header!r} does not fit a body of {len(raw)} bytes")
            raw, binary = raw[:int(header)], raw[int(header):]
        body = _json(raw)
        if not isinstance(body, dict):
            raise _bad("the inference request must be a JSON object with 'inputs'")
        params = body.get("parameters") or {}
        if not isinstance(params, dict):
            raise _bad("'parameters' must be an object")
        inputs = body.get("inputs")
        if not isinstance(inputs, list) or not inputs:
            raise _bad("'inputs' must be a non-empty list of tensors")
        if len(inputs) != 1:
            raise _bad(f"model {served.name!r} takes one input, {INPUT_NAME!r}; got {len(inputs)}")
        tensor = inputs[0]
        if not isinstance(tensor, dict):
            raise _bad("each input must be an object with name, shape, datatype and data")
        if tensor.get("name") != INPUT_NAME:
            raise _bad(f"unknown input {tensor.get('name')!r}; model {served.name!r} takes {INPUT_NAME!r}")
        if tensor.get("datatype") != "BYTES":
            raise _bad(f"input {INPUT_NAME!r} has datatype {tensor.get('datatype')!r}; it must be BYTES "
                       f"({'texts' if served.model.modality == 'text' else 'encoded images'})")
        shape = tensor.get("shape")
        if not isinstance(shape, list) or not shape or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise _bad("input 'shape' must be a list of non-negative integers, e.g. [N]")
        count = math.prod(shape)
        if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
            raise _bad(f"input shape {shape} is not [N] or [N, 1]")
        _check_batch(count)
        tparams = tensor.get("parameters") or {}
        if not isinstance(tparams, dict):
            raise _bad("input 'parameters' must be an object")
        if "binary_data_size" in tparams:
            size = tparams["binary_data_size"]
            if not isinstance(size, int) or size < 0 or size > len(binary):
                raise _bad(f"binary_data_size {size!r} does not fit the {len(binary)} bytes after the JSON header")
            items: list = _deserialize_bytes(binary[:size])
            from_binary = True
        else:
            if "data" not in tensor:
                raise _bad(f"input {INPUT_NAME!r} has no 'data' (and no binary_data_size)")
            items = _flatten(tensor["data"])
            from_binary = False
        if len(items) != count:
            raise _bad(f"input shape {shape} says {count} elements; the data has {len(items)}")
        decoded = _decode_items(served, items, binary=from_binary)

        # Which outputs, in which form.
        requested = body.get("outputs")
        default_binary = bool(params.get("binary_data_output", False))
        k_default = _top_k(params.get("top_k"), served.model.num_classes, "parameters.top_k")
        wanted: list[tuple[str, dict]] = []
        if requested is None:
            wanted = [(n, {}) for n in OUTPUTS]
        else:
            if not isinstance(requested, list):
                raise _bad("'outputs' must be a list of {name, parameters}")
            for out in requested:
                if not isinstance(out, dict) or out.get("name") not in OUTPUTS:
                    got = out.get("name") if isinstance(out, dict) else out
                    raise _bad(f"unknown output {got!r}; model {served.name!r} has {', '.join(OUTPUTS)}")
                oparams = out.get("parameters") or {}
                if not isinstance(oparams, dict):
                    raise _bad("output 'parameters' must be an object")
                wanted.append((out["name"], oparams))

        logits = await served.logits(decoded)
        probs = runtime.softmax(logits.astype(np.float32, copy=True))
        outputs, buffers = [], []
        for name, oparams in wanted:
            k = _top_k(oparams.get("top_k"), served.model.num_classes, f"{name}.top_k") if "top_k" in oparams \
                else k_default
            classification = oparams.get("classification")
            if classification is not None:
                kc = _top_k(classification, served.model.num_classes, f"{name}.classification")
                source = logits if name == "logits" else probs
                idx, _ = runtime.top_k(source, kc)
                vals = np.take_along_axis(source, idx, axis=-1)
                values: Any = [[f"{v:f}:{j}:{served.model.class_names[j]}" for v, j in zip(rv, ri)]
                               for rv, ri in zip(vals, idx)]
                datatype, shape_out = "BYTES", [len(values), kc]
            elif name in ("probabilities", "logits"):
                values = (probs if name == "probabilities" else logits).astype(np.float32)
                datatype, shape_out = "FP32", list(values.shape)
            else:
                idx, top = runtime.top_k(probs, k)
                if name == "labels":
                    values = [[served.model.class_names[j] for j in row] for row in idx]
                    datatype = "BYTES"
                else:
                    values = top.astype(np.float32)
                    datatype = "FP32"
                shape_out = [len(idx), idx.shape[1]]
            as_binary = bool(oparams.get("binary_data", default_binary))
            entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape_out}
            if as_binary:
                if datatype == "BYTES":
                    blob = _serialize_bytes([s.encode("utf-8") for row in values for s in row])
                else:
                    blob = np.ascontiguousarray(values, dtype="<f4").tobytes()
                entry["parameters"] = {"binary_data_size": len(blob)}
                buffers.append(blob)
            else:
                entry["data"] = (np.asarray(values).reshape(-1).tolist() if datatype == "FP32"
                                 else [s for row in values for s in row])
            outputs.append(entry)
        result: dict[str, Any] = {"model_name": served.name, "model_version": VERSION, "outputs": outputs}
        if body.get("id") is not None:
            result["id"] = str(body["id"])
        text = json.dumps(result, separators=(",", ":")).encode()
        if buffers:
            return Response(text + b"".join(buffers), media_type="application/octet-stream",
                            headers={"Inference-Header-Content-Length": str(len(text))})
        return Response(text, media_type="application/json")

    # -- The JSON route for people --------------------------------------------------------------
    @app.get("/v1/models", response_model=ModelList, tags=["v1"], summary="The models served")
    async def list_models():
        return {"models": [m.public() for m in models.values()]}

    @app.post("/v1/models/{name}/predict", response_model=PredictResponse, responses=errors, tags=["v1"],
              summary="Top-k labels for texts or base64 images", openapi_extra={"requestBody": {
                  "required": True,
                  "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}}}})
    async def predict(name: str, request: Request):
        served = get_model(name)
        body = _json(await _body(request))
        if not isinstance(body, dict):
            raise _bad('the request must be a JSON object: {"texts": [...]} or {"images": [...]}, optionally "top_k"')
        unknown = set(body) - {"texts", "images", "top_k"}
        if unknown:
            raise _bad(f"unknown field(s) {', '.join(sorted(unknown))}; use texts or images, and top_k")
        key = "texts" if served.model.modality == "text" else "images"
        other = "images" if key == "texts" else "texts"
        if other in body:
            raise _bad(f"model {name!r} takes {key}, not {other}")
        items = body.get(key)
        if not isinstance(items, list):
            raise _bad(f"'{key}' must be a list of " + ("strings" if key == "texts" else "base64 strings"))
        _check_batch(len(items))
        k = _top_k(body.get("top_k"), served.model.num_classes)
        decoded = _decode_items(served, items, binary=False)
        logits = await served.logits(decoded)
        return {"model": served.name, "provider": served.model.provider,
                "predictions": served.model.format(runtime.softmax(logits.astype(np.float32, copy=True)), k)}

    def openapi():
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (InferRequest, PredictRequest):
            js = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for key, value in js.pop("$defs", {}).items():
                components.setdefault(key, value)
            components[model.__name__] = js
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
    return app


# ---------------------------------------------------------------------------------------------
# Running it
# ---------------------------------------------------------------------------------------------
def build_server(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info",
                 access_log: bool = True):
    """A ``uvicorn.Server`` for ``app`` (call ``.run(sockets=[...])`` or ``.run()``; set ``should_exit`` to stop)."""
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=access_log,
                            timeout_graceful_shutdown=5, limit_concurrency=1024)
    return uvicorn.Server(config)


def warn_if_exposed(host: str) -> None:
    if host not in LOOPBACK:
        print(f"warning: serving on {host}, reachable from other machines; there is no authentication: put a "
              "proxy with authentication and TLS in front, or bind 127.0.0.1", file=sys.stderr)


def serve(exports: Sequence[str | Path] | None = None, host: str = "127.0.0.1", port: int = 8000, *,
          log_level: str = "info", on_ready=None, **app_kwargs) -> None:
    """Serve ``exports`` on ``host:port`` until interrupted (port 0 picks a free one)."""
    import socket

    app = create_app(exports, **app_kwargs)
    warn_if_exposed(host)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP spelled out: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
    # without it every response waits ~40 ms for a delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(2048)
    bound = sock.getsockname()[1]
    if on_ready is not None:
        on_ready(app, host, bound)
    server = build_server(app, host, bound, log_level=log_level)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM and then re-raises the signal: after a clean
    # shutdown, return normally (exit status 0) rather than dying of it.
    import signal
    import threading

    class _Stopped(Exception):
        pass

    def stopped(*_):
        raise _Stopped

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, stopped) if main else None
    try:
        server.run(sockets=[sock])
    except (KeyboardInterrupt, _Stopped):
        pass
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
        sock.close()
