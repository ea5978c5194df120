"""HTTP serving of exported students: the routes. The engine is ``transfer.serving`` (no torch).

``create_app(exports)`` returns a FastAPI app; ``serve(...)`` runs it with uvicorn. Routes:

Open Inference Protocol (KServe v2 REST, as Triton and MLServer speak it; ``tritonclient.http``
works unmodified, JSON or binary tensors):

- ``GET  /v2``, ``/v2/health/live``, ``/v2/health/ready``
- ``GET  /v2/models/{name}[/versions/1]``: metadata; input ``input``, BYTES, shape ``[-1]``
  (raw texts, or encoded images: base64 strings in JSON, raw bytes as binary tensor data), and
  for image models ``pixel_values`` FP32 ``[-1, 3, S, S]`` (preprocessed images) instead;
  outputs ``probabilities`` and ``logits`` FP32 ``[-1, C]``, ``labels`` BYTES and ``scores``
  FP32 ``[-1, k]`` (the top k classes, k from the ``top_k`` parameter, default 5)
- ``GET  /v2/models/{name}[/versions/1]/ready``
- ``POST /v2/models/{name}[/versions/1]/infer``: outputs as requested (``binary_data`` and
  Triton's ``classification`` output parameters honoured), binary tensor extension
  (``Inference-Header-Content-Length``) in both directions

For people: ``GET /v1/models`` and ``POST /v1/models/{name}/predict`` with ``{"texts": [...]}``
or ``{"images": [base64, ...]}`` and ``top_k``, answering the top-k labels with probabilities.
``/openapi.json`` and ``/docs`` describe both.

Every error is ``{"error": "..."}`` JSON: 400 for bad input, 404 unknown models, 408 slow
clients, 413 bodies over ``max_body_bytes``, 503 when busy. The limits are in
``transfer.serving.engine`` (work) and ``transfer.serving.connections`` (connections).
"""
from __future__ import annotations

import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from transfer.serving import runtime
from transfer.serving.connections import ConnectionLimits, build_server  # noqa: F401 (the tests' server)
from transfer.serving.engine import MAX_BATCH, MAX_BODY_BYTES, Engine, ServeConfig, load_models  # noqa: F401
from transfer.serving.middleware import BodyLimit, InFlightLimit
from transfer.serving.protocol import (ErrorResponse, InferRequest, InferResponse, ModelList, ModelMetadata,
                                       PredictRequest, PredictResponse, ServeError, ServerMetadata)

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("aftzoo")
    except Exception:  # pragma: no cover
        return "0"


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServeError)
    async def _serve_error(_request, exc: ServeError):
        headers = {"Retry-After": "2"} if exc.status == 503 else None
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request, exc: StarletteHTTPException):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request, exc: RequestValidationError):
        where = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in exc.errors()[:3])
        return JSONResponse({"error": f"invalid request ({where})"}, status_code=400)

    @app.exception_handler(Exception)
    async def _internal_error(_request, exc: Exception):
        # The protocol's error shape, with nothing of the server's internals; uvicorn logs the traceback.
        return JSONResponse({"error": "internal error; the server's log has the details"}, status_code=500)


def _openapi(app: FastAPI):
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
    return openapi


def _v2_routes(app: FastAPI, engine: Engine, version: str) -> None:
    errors = {400: {"model": ErrorResponse}, 404: {"model": ErrorResponse}, 413: {"model": ErrorResponse},
              503: {"model": ErrorResponse}}

    @app.get("/v2", response_model=ServerMetadata, tags=["v2"], summary="Server metadata")
    async def server_metadata():
        return {"name": "aftzoo", "version": version, "extensions": ["binary_tensor_data", "classification"]}

    @app.get("/v2/health/live", tags=["v2"], summary="Liveness")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready", tags=["v2"], summary="Readiness: every model is loaded")
    async def ready():
        return {"ready": True}

    @app.get("/v2/models/{name}", response_model=ModelMetadata, response_model_exclude_none=True,
             responses=errors, tags=["v2"], summary="Model metadata")
    async def model_metadata(name: str):
        return engine.get(name).metadata()

    @app.get("/v2/models/{name}/versions/{version}", response_model=ModelMetadata, response_model_exclude_none=True,
             responses=errors, tags=["v2"], summary="Model metadata (one version, 1)")
    async def model_metadata_version(name: str, version: str):
        return engine.get(name, version).metadata()

    @app.get("/v2/models/{name}/ready", responses=errors, tags=["v2"], summary="Model readiness")
    async def model_ready(name: str):
        return {"name": engine.get(name).name, "ready": True}

    @app.get("/v2/models/{name}/versions/{version}/ready", responses=errors, tags=["v2"],
             summary="Model readiness (one version, 1)")
    async def model_ready_version(name: str, version: str):
        return {"name": engine.get(name, version).name, "ready": True}

    infer_doc = dict(response_model=InferResponse, responses=errors, tags=["v2"], openapi_extra={"requestBody": {
        "required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}},
                                      "application/octet-stream": {"schema": {"type": "string", "format": "binary"},
                                                                   "description": "JSON header of "
                                                                   "Inference-Header-Content-Length bytes, then "
                                                                   "binary tensor data"}}}})

    async def infer_route(served, request: Request) -> Response:
        raw = engine.decompress(await request.body(), request.headers.get("content-encoding", ""))
        body, header = await engine.infer(served, raw, request.headers.get("inference-header-content-length"))
        if header is not None:
            return Response(body, media_type="application/octet-stream",
                            headers={"Inference-Header-Content-Length": str(header)})
        return Response(body, media_type="application/json")

    @app.post("/v2/models/{name}/infer", summary="Inference", **infer_doc)
    async def infer(name: str, request: Request):
        return await infer_route(engine.get(name), request)

    @app.post("/v2/models/{name}/versions/{version}/infer", summary="Inference (one version, 1)", **infer_doc)
    async def infer_version(name: str, version: str, request: Request):
        return await infer_route(engine.get(name, version), request)


def _v1_routes(app: FastAPI, engine: Engine) -> None:
    errors = {400: {"model": ErrorResponse}, 404: {"model": ErrorResponse}, 413: {"model": ErrorResponse},
              503: {"model": ErrorResponse}}

    @app.get("/v1/models", response_model=ModelList, tags=["v1"], summary="The models served")
    async def list_models():
        return {"models": [m.public() for m in engine.models.values()]}

    @app.post("/v1/models/{name}/predict", response_model=PredictResponse, responses=errors, tags=["v1"],
              summary="Top-k labels for texts or base64 images", openapi_extra={"requestBody": {
                  "required": True,
                  "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}}}})
    async def predict(name: str, request: Request):
        served = engine.get(name)
        raw = engine.decompress(await request.body(), request.headers.get("content-encoding", ""))
        return await engine.predict(served, raw)


def create_app(exports: Sequence[str | Path] | Sequence[runtime.ExportedModel] | None = None, *,
               providers: str | Sequence[str] | None = None, intra_op_threads: int | None = None,
               spinning: bool | None = False, **limits) -> FastAPI:
    """A FastAPI app serving ``exports`` (folders or loaded models; default: every valid export in
    ``$AFTZOO_HOME/exports``); ``limits`` are ``ServeConfig`` fields (max_body_bytes, max_batch,
    batch_window_ms, max_concurrency, heavy_pixels, heavy_slots, max_inflight, ...).

    ``max_concurrency`` (2) requests run preprocessing + onnxruntime at once per model; with
    ``spinning=False`` idle onnxruntime threads sleep instead of busy-waiting. Both defaults come
    from benchmarks/bench_serve.py: on a shared 2-core machine they cut the p99 latency at 32
    concurrent clients by 2-4x at equal or better throughput than onnxruntime's defaults.
    """
    config = ServeConfig(**limits)
    config.check()
    if exports and all(isinstance(e, runtime.ExportedModel) for e in exports):
        loaded = list(exports)
    else:
        loaded = load_models(exports, providers=providers, intra_op_threads=intra_op_threads, spinning=spinning)
    engine = Engine(loaded, config)

    @asynccontextmanager
    async def lifespan(_app):
        yield
        await engine.stop()

    version = _version()
    app = FastAPI(title="aftzoo serving", version=version, lifespan=lifespan,
                  description="Exported aftzoo students run with onnxruntime: the Open Inference Protocol (KServe v2 "
                              "REST) under /v2 and a simple JSON route under /v1.")
    app.state.engine, app.state.models, app.state.config = engine, engine.models, config
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.add_middleware(InFlightLimit, limit=config.max_inflight)  # added last: runs first
    _error_handlers(app)
    _v2_routes(app, engine, version)
    _v1_routes(app, engine)
    app.openapi = _openapi(app)
    return app


def warn_if_exposed(host: str) -> None:
    if host not in LOOPBACK:
        print(f"warning: serving on {host}, reachable from other machines; there is no authentication: put a "
              "proxy with authentication and TLS in front, or bind 127.0.0.1", file=sys.stderr)


def serve(exports: Sequence[str | Path] | None = None, host: str = "127.0.0.1", port: int = 8000, *,
          log_level: str = "info", on_ready=None, connections: ConnectionLimits | None = None,
          **app_kwargs) -> None:
    """Serve ``exports`` on ``host:port`` until interrupted (port 0 picks a free one)."""
    import signal
    import socket
    import threading

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
    server = build_server(app, host, bound, log_level=log_level, limits=connections)

    # uvicorn shuts down gracefully on SIGINT/SIGTERM and then re-raises the signal: after a clean
    # shutdown, return normally (exit status 0) rather than dying of it.
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
