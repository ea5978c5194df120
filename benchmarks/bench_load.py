"""The serving endpoint under sustained load: N concurrent loopback clients for a fixed time.

    python -m benchmarks.bench_load [--export DIR] [--image] [--clients 32] [--seconds 60] [--baseline-seconds 10]
                                    [--json]

Without ``--export`` it makes one in a throw-away AFTZOO_HOME (MiniLM-L6 fine-tuned for two steps on
Rotten Tomatoes, as benchmarks/bench_serve.py does; ``--image``: the tiny random ResNet on digits).
``aftzoo serve`` runs in its own process (no torch in it), with its default settings. Then:

1. baseline, in the same run: one client, one input per request, for ``--baseline-seconds``;
2. load: ``--clients`` clients (httpx, asyncio, one connection each) posting one input per request
   to ``/v1/models/<name>/predict`` for ``--seconds``. The loop is bounded: no request starts
   after the deadline, each has a 30 s timeout, and the phase as a whole is cancelled 60 s after
   the deadline whatever happens.

Reported: requests per second, p50 / p99 / max latency, errors (any non-200 answer, timeout or
connection error), and the server's resident memory (VmRSS from /proc, sampled every 0.25 s) at
the start, at its peak, at the end, and how much it grew over the second half of the load (a
leak shows there). Ratios compare the load phase with the baseline. Clients and server share the
machine's cores, as they would on one host.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time

import numpy as np

from benchmarks.bench_serve import _inputs, _make_export, _start_server


def rss_mib(pid: int) -> float | None:
    """Resident memory of ``pid`` in MiB, from /proc (psutil is not needed)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


async def _phase(url: str, key: str, items: list, clients: int, seconds: float, pid: int) -> dict:
    import httpx

    latencies: list[float] = []
    errors: dict[str, int] = {}
    rss: list[tuple[float, float]] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        for i in range(min(8, clients * 2)):  # warm-up: connections and first calls, not counted
            (await client.post(url, json={key: [items[i % len(items)]], "top_k": 1})).raise_for_status()
        start = time.perf_counter()
        deadline = start + seconds
        counter = 0

        async def worker(offset: int) -> None:
            nonlocal counter
            i = offset
            while time.perf_counter() < deadline:  # bounded: nothing starts after the deadline
                t = time.perf_counter()
                try:
                    r = await client.post(url, json={key: [items[i % len(items)]], "top_k": 1})
                    if r.status_code != 200:
                        errors[f"HTTP {r.status_code}"] = errors.get(f"HTTP {r.status_code}", 0) + 1
                    else:
                        latencies.append(time.perf_counter() - t)
                except httpx.HTTPError as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                counter += 1
                i += clients

        async def sample() -> None:
            while time.perf_counter() < deadline:
                value = rss_mib(pid)
                if value is not None:
                    rss.append((time.perf_counter() - start, value))
                await asyncio.sleep(0.25)

        rss_start = rss_mib(pid)
        await asyncio.wait_for(asyncio.gather(sample(), *[worker(c) for c in range(clients)]), seconds + 60)
        wall = time.perf_counter() - start
    await asyncio.sleep(2.0)  # idle again: what the server keeps
    rss_end = rss_mib(pid)
    lat = np.asarray(latencies) * 1e3
    half = [v for t, v in rss if t >= seconds / 2]
    return {"clients": clients, "seconds": round(wall, 1), "requests": counter, "ok": len(latencies),
            "errors": errors, "error_count": sum(errors.values()), "rps": len(latencies) / wall,
            "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
            "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
            "max_ms": float(lat.max()) if len(lat) else None,
            "rss_start_mib": rss_start, "rss_peak_mib": max((v for _, v in rss), default=None), "rss_end_mib": rss_end,
            "rss_second_half_growth_mib": (half[-1] - half[0]) if len(half) > 1 else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_load", description=__doc__.split("\n")[0])
    ap.add_argument("--export", help="an export folder (default: make one in a throw-away home)")
    ap.add_argument("--image", action="store_true", help="make an image export (tiny ResNet on digits)")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--baseline-seconds", type=float, default=10.0)
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = ap.parse_args(argv)
    if args.clients < 1 or args.seconds <= 0 or args.baseline_seconds <= 0:
        ap.error("--clients, --seconds and --baseline-seconds must be positive")

    from storage.settings import Settings, reset_settings

    if args.export:
        export = args.export
    else:
        packs = Settings().packs_dir  # shared offline packs, resolved before the home moves
        os.environ.update(AFTZOO_HOME=tempfile.mkdtemp(prefix="aftzoo-bench-load-"), AFTZOO_PACKS=str(packs))
        reset_settings()
        print("making an export (a two-step run, then ONNX)...", file=sys.stderr, flush=True)
        export, _ = _make_export(args.image)
    from transfer.serving import runtime

    model = runtime.load_export(export)
    key = "texts" if model.modality == "text" else "images"
    _, items = _inputs(model.modality, 256)
    proc, port = _start_server(export, [])
    try:
        url = f"http://127.0.0.1:{port}/v1/models/{model.name}/predict"
        print(f"baseline: 1 client for {args.baseline_seconds:g} s...", file=sys.stderr, flush=True)
        base = asyncio.run(_phase(url, key, items, 1, args.baseline_seconds, proc.pid))
        print(f"load: {args.clients} clients for {args.seconds:g} s...", file=sys.stderr, flush=True)
        load = asyncio.run(_phase(url, key, items, args.clients, args.seconds, proc.pid))
        alive = proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    result = {"model": model.name, "modality": model.modality, "cpus": os.cpu_count(),
              "load_average_at_end": os.getloadavg()[0], "baseline": base, "load": load, "server_alive": alive,
              "ratios": {"rps_load_over_baseline": load["rps"] / base["rps"] if base["rps"] else None,
                         "p99_load_over_baseline": (load["p99_ms"] / base["p99_ms"]) if base["p99_ms"] and
                         load["p99_ms"] else None}}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{model.name} ({model.modality}) on {os.cpu_count()} CPUs, loopback, clients in this process")
        print(f"{'phase':10s} {'clients':>7s} {'s':>6s} {'ok':>7s} {'errors':>6s} {'req/s':>7s} {'p50 ms':>7s} "
              f"{'p99 ms':>7s} {'max ms':>7s} {'RSS start/peak/end MiB':>23s} {'2nd-half growth':>15s}")
        for name, r in (("baseline", base), ("load", load)):
            print(f"{name:10s} {r['clients']:7d} {r['seconds']:6.1f} {r['ok']:7d} {r['error_count']:6d} "
                  f"{r['rps']:7.1f} {r['p50_ms']:7.1f} {r['p99_ms']:7.1f} {r['max_ms']:7.1f} "
                  f"{r['rss_start_mib']:7.1f}/{r['rss_peak_mib']:6.1f}/{r['rss_end_mib']:6.1f} "
                  f"{r['rss_second_half_growth_mib']:+13.1f} MiB")
        q = result["ratios"]
        print(f"load / baseline: throughput {q['rps_load_over_baseline']:.2f}x, "
              f"p99 {q['p99_load_over_baseline']:.1f}x; errors {load['errors'] or 'none'}; "
              f"server still running: {alive}")
    return 0 if alive and not load["error_count"] else 1


if __name__ == "__main__":
    sys.exit(main())
