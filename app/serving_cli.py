"""The ``export``, ``predict`` and ``serve`` commands (registered on ``app.cli.app``).

``predict`` and ``serve`` import only ``transfer.serving`` / ``app.serve`` (onnxruntime, numpy,
Pillow, tokenizers, FastAPI): they work where torch is not installed. ``export`` needs torch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from app.output import fail, print_json, user_errors


def export_cmd(
    run: Annotated[str, typer.Argument(help="Run id (see `aftzoo runs`).")],
    out: Annotated[Optional[Path], typer.Option("--out", help="Folder to write (default: $AFTZOO_HOME/exports/RUN).")] = None,
    opset: Annotated[Optional[int], typer.Option("--opset", help="ONNX opset (default: the exporter's).")] = None,
    quantize: Annotated[Optional[str], typer.Option("--quantize", help="int8: dynamic int8 quantisation.")] = None,
    parity_examples: Annotated[int, typer.Option("--parity-examples", help="Test examples for the parity check.")] = 64,
    eval_limit: Annotated[int, typer.Option("--eval-limit", help="Test examples for the int8 accuracy check.")] = 512,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    """Export a run's student to ONNX (a self-contained folder), checked against PyTorch."""
    from transfer.export.onnx import export_run

    with user_errors():
        result = export_run(run, out=out, opset=opset, quantize=quantize, parity_examples=parity_examples,
                            eval_limit=eval_limit)
    if as_json:
        print_json(result)
    else:
        p = result["parity"]
        size = sum(f["bytes"] for f in result["files"].values())
        typer.echo(f"exported {result['run_id']} ({result['student']}, {result['dataset']}) to {result['path']} "
                   f"(opset {result['opset']}, {size / 1e6:.1f} MB, {result['seconds']:.1f}s)")
        typer.echo(f"parity on {p['examples']} test examples: model alone max |logit diff| "
                   f"{p['model']['max_abs_logit_diff']:.2e}, top-1 agreement {p['model']['top1_agreement']:.3f}; "
                   f"end to end {p['end_to_end']['max_abs_logit_diff']:.2e}, "
                   f"{p['end_to_end']['top1_agreement']:.3f}")
        q = result.get("quantization")
        if q:
            typer.echo(f"int8: test accuracy {q['accuracy_fp32']:.4f} -> {q['accuracy_int8']:.4f} "
                       f"({q['accuracy_change']:+.4f}) on {q['eval_examples']} examples; "
                       f"{q['bytes_fp32'] / 1e6:.1f} MB -> {q['bytes_int8'] / 1e6:.1f} MB")
    if not result["parity"]["passed"]:
        typer.echo(f"warning: the export differs from PyTorch beyond tolerance ({result['parity']['tolerance']}); "
                   "see parity in the manifest", err=True)


def predict_cmd(
    export_dir: Annotated[Path, typer.Argument(help="An export folder (from `aftzoo export`).")],
    inputs: Annotated[list[str], typer.Argument(help="Image files, or texts (@FILE: one text per line).")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Labels per input.")] = 5,
    provider: Annotated[Optional[str], typer.Option("--provider", help="cpu or cuda (default: cuda if available).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    """Predict with an exported student, onnxruntime only (no PyTorch needed)."""
    from transfer.serving import runtime

    if top_k < 1:
        fail(f"--top-k must be at least 1; got {top_k}")
    try:
        model = runtime.load_export(export_dir, providers=provider)
        if model.modality == "text":
            labels = runtime.read_text_inputs(inputs)
            items = [model.parse_text(t) for t in labels]
        else:
            items = [Path(p).expanduser() for p in inputs]
            for p in items:
                if not p.is_file():
                    raise runtime.InputError(f"no image file {p} (this export takes image files)")
            labels = [str(p) for p in items]
        if not items:
            raise runtime.InputError("no inputs given")
        predictions = []
        for start in range(0, len(items), 64):
            predictions.extend(model.predict(items[start:start + 64], top_k=top_k))
    except (runtime.ExportError, runtime.InputError) as exc:
        fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - a user-facing entry point: one line, with the unexpected type
        fail(f"{type(exc).__name__}: {exc}")
    if as_json:
        print_json({"model": model.name, "export": str(model.folder), "provider": model.provider,
                     "modality": model.modality, "run_id": model.manifest.get("run_id"),
                     "predictions": [{"input": label, "top_k": top} for label, top in zip(labels, predictions)]})
        return
    for label, top in zip(labels, predictions):
        shown = label if len(label) <= 60 else label[:57] + "..."
        typer.echo(f"{shown}: " + ", ".join(f"{t['label']} ({t['probability']:.3f})" for t in top))


def serve_cmd(
    exports: Annotated[Optional[list[Path]], typer.Argument(
        help="Export folders (default: every valid export in $AFTZOO_HOME/exports).")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to bind; other than loopback is reachable by others.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", help="Port (0: a free one).")] = 8000,
    max_body_mb: Annotated[float, typer.Option("--max-body-mb", help="Largest request body, MiB (else 413).")] = 16.0,
    max_batch: Annotated[int, typer.Option("--max-batch", help="Most inputs in one request (else 400).")] = 64,
    batch_window_ms: Annotated[float, typer.Option("--batch-window-ms",
                                                   help="Micro-batching window; 0 (default) turns it off.")] = 0.0,
    threads: Annotated[Optional[int], typer.Option("--threads", help="onnxruntime intra-op threads per model.")] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", help="Requests computed at once per model (0: no limit).")] = 2,
    spinning: Annotated[bool, typer.Option("--spinning/--no-spinning",
                                           help="Let idle onnxruntime threads busy-wait.")] = False,
    provider: Annotated[Optional[str], typer.Option("--provider", help="cpu or cuda (default: cuda if available).")] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "info",
    max_inflight: Annotated[int, typer.Option("--max-inflight", help="Requests read or computed at once (else 503).")] = 64,
    head_timeout: Annotated[float, typer.Option("--head-timeout",
                                                help="Seconds a connection has to send a request head.")] = 10.0,
    body_timeout: Annotated[float, typer.Option("--body-timeout", help="Seconds a request body may take.")] = 60.0,
    max_connections: Annotated[int, typer.Option("--max-connections", help="Open connections, all clients.")] = 2048,
    per_client: Annotated[int, typer.Option("--max-connections-per-client",
                                            help="Open connections of one client address.")] = 128,
) -> None:
    """Serve exports over HTTP: Open Inference Protocol (/v2) and a JSON route (/v1)."""
    from app.serve import serve
    from transfer.serving import runtime
    from transfer.serving.connections import ConnectionLimits

    if max_batch < 1 or max_body_mb <= 0 or not 0 <= port <= 65535:
        fail("--max-batch and --max-body-mb must be positive, --port in 0..65535")
    if min(max_inflight, max_connections, per_client) < 1 or min(head_timeout, body_timeout) <= 0:
        fail("--max-inflight, --max-connections, --max-connections-per-client and the timeouts must be positive")

    def ready(app, bound_host, bound_port):
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        for name, served in app.state.models.items():
            typer.echo(f"serving {name} ({served.model.modality}, {served.model.num_classes} classes, "
                       f"{served.model.provider}) at http://{shown}:{bound_port}/v2/models/{name}", err=True)
        typer.echo(f"listening on http://{shown}:{bound_port} (OpenAPI: /docs)", err=True)

    try:
        serve(exports or None, host=host, port=port, log_level=log_level, on_ready=ready,
              max_body_bytes=int(max_body_mb * 1024 * 1024), max_batch=max_batch, batch_window_ms=batch_window_ms,
              providers=provider, intra_op_threads=threads, spinning=spinning, max_concurrency=concurrency,
              max_inflight=max_inflight, connections=ConnectionLimits(head_timeout, body_timeout, max_connections,
                                                                      per_client))
    except (runtime.ExportError, OSError, ValueError) as exc:
        fail(str(exc))
