"""Does the web app keep answering while it works? Page response times, idle and under two jobs and a ranking.

    python -m benchmarks.bench_app_load [--idle-seconds 20] [--max-seconds 300] [--steps 150] [--limit-train 2000]
                                        [--rank-limit 1000] [--interval 0.25] [--json]

``aftzoo app`` is started in its own process on a throw-away AFTZOO_HOME with AFTZOO_JOBS=2, as a
user starts it. A client then times, one request after another every ``--interval`` seconds, what
a browser asks of it:

- ``GET /``: the page itself (HTML);
- ``GET /gradio_api/queue/status``: a light JSON endpoint of the same server;
- the ``/jobs`` event through gradio_client (every 2 s, as the Transfer page's timer does): a call
  that goes through Gradio's queue and reads the catalog.

First with the app idle (``--idle-seconds``, the baseline of this run), then while it runs two
transfer jobs (queued through the ``/transfer`` endpoint: AFT with an EfficientNet-Lite0 teacher
and STL, ``resnet18-small`` from scratch on digits) and a ranking (``/rank``: EfficientNet-Lite0
and -Lite2, LogME and the probe) at once. The loaded window runs until the ranking and both jobs
have finished, or ``--max-seconds`` (then the jobs are cancelled): the loop is bounded. Reported:
p50 / p99 / max of each series, idle and loaded, and their ratio (loaded / idle); the figures
while all three were running are reported apart. Errors are any non-200 answer or exception.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def start_app(home: Path, jobs: int) -> tuple[subprocess.Popen, str, Path]:
    from storage.settings import Settings
    from tests.helpers import start_app as start_app_process  # the tests' launcher: one way to start the app

    env = {"AFTZOO_JOBS": str(jobs), "AFTZOO_PACKS": str(Settings().packs_dir)}
    return start_app_process(home, env=env, timeout=180)


class Sampler:
    """Times page requests one after another; each sample is (time, series, seconds or None for an error)."""

    def __init__(self, url: str, interval: float):
        import gradio_client
        import httpx

        self.url, self.interval = url, interval
        # A connection idle for uvicorn's keep-alive timeout (5 s) may be closed just as it is reused;
        # browsers retry such a request silently. Not reusing connections idle for 2 s avoids the race.
        self.http = httpx.Client(base_url=url, timeout=60, limits=httpx.Limits(keepalive_expiry=2.0))
        self.gradio = gradio_client.Client(url, verbose=False)
        self.samples: list[tuple[float, str, float | None]] = []
        self.errors: list[str] = []
        self.jobs: list[dict] = []
        self._last_event = 0.0
        self._last_get = time.monotonic()

    def _time(self, series: str, fn) -> object:
        t = time.perf_counter()
        try:
            out = fn()
        except Exception as exc:  # noqa: BLE001 - every failure counts as an error of the series
            self.samples.append((time.monotonic(), series, None))
            self.errors.append(f"{series}: {type(exc).__name__}: {exc}"[:300])
            return None
        self.samples.append((time.monotonic(), series, time.perf_counter() - t))
        return out

    def get(self, path: str) -> None:
        idle = time.monotonic() - self._last_get  # an error says how long its connection had been idle

        def call():
            try:
                r = self.http.get(path)
            except Exception as exc:
                raise RuntimeError(f"{type(exc).__name__}: {exc} (after {idle:.1f} s without a GET)") from None
            if r.status_code != 200:
                raise RuntimeError(f"HTTP {r.status_code}")
        self._time(f"GET {path}", call)
        self._last_get = time.monotonic()

    def event(self) -> None:
        out = self._time("event /jobs", lambda: self.gradio.predict(None, "this data set", "digits",
                                                                   api_name="/jobs"))
        if out is not None:
            table = out[0]
            self.jobs = [dict(zip(table["headers"], row)) for row in table["data"]]

    def run_until(self, stop) -> None:
        while not stop():
            start = time.monotonic()
            self.get("/")
            self.get("/gradio_api/queue/status")
            if start - self._last_event >= 2.0:
                self._last_event = start
                self.event()
            time.sleep(max(0.0, self.interval - (time.monotonic() - start)))


def _stats(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    a = np.asarray(values) * 1e3
    return {"n": len(a), "p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "max_ms": float(a.max())}


def summarise(samples, t0: float, t1: float) -> dict:
    series = sorted({s for _, s, _ in samples})
    out = {}
    for name in series:
        window = [(v) for t, s, v in samples if s == name and t0 <= t <= t1]
        out[name] = {**_stats([v for v in window if v is not None]), "errors": sum(v is None for v in window)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_app_load", description=__doc__.split("\n")[0])
    ap.add_argument("--idle-seconds", type=float, default=20.0)
    ap.add_argument("--max-seconds", type=float, default=300.0, help="bound on the loaded window")
    ap.add_argument("--steps", type=int, default=150, help="training steps of each job")
    ap.add_argument("--limit-train", type=int, default=0, help="training examples of each job (0: all 1,437)")
    ap.add_argument("--rank-limit", type=int, default=1000, help="training examples the ranking uses")
    ap.add_argument("--interval", type=float, default=0.25, help="seconds between two page requests")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = ap.parse_args(argv)

    home = Path(tempfile.mkdtemp(prefix="aftzoo-bench-app-"))
    proc, url, log = start_app(home, jobs=2)
    result: dict = {"cpus": os.cpu_count(), "url": url}
    try:
        sampler = Sampler(url, args.interval)
        for _ in range(5):  # warm-up, not counted
            sampler.get("/")
        sampler.samples.clear()
        sampler.errors.clear()

        print(f"idle: {args.idle_seconds:g} s...", file=sys.stderr, flush=True)
        t_idle = time.monotonic()
        sampler.run_until(lambda: time.monotonic() - t_idle >= args.idle_seconds)
        idle = summarise(sampler.samples, t_idle, time.monotonic())

        print("loaded: two transfer jobs and a ranking...", file=sys.stderr, flush=True)
        import gradio_client

        work = gradio_client.Client(url, verbose=False)
        t_load = time.monotonic()
        limit_train = args.limit_train or 0
        queued = []
        for method, teachers in (("aft", ["efficientnet-lite0"]), ("stl", [])):
            status, *_ = work.predict("digits", "resnet18-small", True, method, teachers, "1", args.steps, 1e-3,
                                      limit_train, 0, api_name="/transfer")
            if not status.startswith("Queued job"):
                raise RuntimeError(f"the app did not queue the job: {status}")
            queued.append(status.split("**")[1])
        rank_done: dict = {}

        def rank():
            started = time.monotonic()
            try:
                status, *_ = gradio_client.Client(url, verbose=False).predict(
                    "digits", ["efficientnet-lite0", "efficientnet-lite2"], ["logme", "probe"], args.rank_limit,
                    "logme", api_name="/rank")
                rank_done.update(status=status)
            except Exception as exc:  # noqa: BLE001
                rank_done.update(status=f"error: {exc}")
            rank_done.update(seconds=time.monotonic() - started, at=time.monotonic())

        ranker = threading.Thread(target=rank, daemon=True)
        ranker.start()
        job_end: dict[str, float] = {}

        def finished() -> bool:
            now = time.monotonic()
            for j in sampler.jobs:
                if j.get("job") in queued and j.get("state") not in ("queued", "running") and j["job"] not in job_end:
                    job_end[j["job"]] = now
            return (len(job_end) == len(queued) and "at" in rank_done) or now - t_load >= args.max_seconds

        sampler.run_until(finished)
        t_end = time.monotonic()
        timed_out = not (len(job_end) == len(queued) and "at" in rank_done)
        if timed_out:
            for job_id in queued:
                if job_id not in job_end:
                    work.predict(job_id, api_name="/cancel")
        all_three_end = min([*job_end.values(), rank_done.get("at", t_end), t_end])
        loaded = summarise(sampler.samples, t_load, t_end)
        all_three = summarise(sampler.samples, t_load, all_three_end)
        states = {j["job"]: {k: j.get(k) for k in ("state", "method", "accuracy", "run")} for j in sampler.jobs
                  if j.get("job") in queued}
        ratios = {name: {"p50": loaded[name]["p50_ms"] / idle[name]["p50_ms"],
                         "p99": loaded[name]["p99_ms"] / idle[name]["p99_ms"]}
                  for name in idle if idle[name]["n"] and loaded.get(name, {}).get("n")}
        result.update(idle=idle, loaded=loaded, all_three=all_three, ratios=ratios,
                      loaded_seconds=round(t_end - t_load, 1), all_three_seconds=round(all_three_end - t_load, 1),
                      timed_out=timed_out, rank=rank_done.get("status", "")[:200],
                      rank_seconds=round(rank_done.get("seconds", float("nan")), 1),
                      job_seconds={k: round(v - t_load, 1) for k, v in job_end.items()}, jobs=states,
                      errors=sampler.errors[:20], app_alive=proc.poll() is None,
                      load_average_at_end=os.getloadavg()[0])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"aftzoo app on {result['cpus']} CPUs; loaded window {result['loaded_seconds']} s "
              f"(all three running: {result['all_three_seconds']} s; ranking {result['rank_seconds']} s; jobs "
              f"{result['job_seconds']}{'; bounded: jobs cancelled' if result['timed_out'] else ''})")
        print(f"{'series':28s} {'idle p50':>9s} {'idle p99':>9s} {'load p50':>9s} {'load p99':>9s} {'max':>8s} "
              f"{'p50 x':>6s} {'p99 x':>6s} {'n idle/load':>11s} {'errors':>6s}")
        for name in result["idle"]:
            i, lo = result["idle"][name], result["loaded"].get(name, {"n": 0})
            if not (i["n"] and lo["n"]):
                continue
            q = result["ratios"][name]
            print(f"{name:28s} {i['p50_ms']:9.1f} {i['p99_ms']:9.1f} {lo['p50_ms']:9.1f} {lo['p99_ms']:9.1f} "
                  f"{lo['max_ms']:8.1f} {q['p50']:6.2f} {q['p99']:6.2f} {i['n']:5d}/{lo['n']:<5d} "
                  f"{i['errors'] + lo['errors']:6d}")
        for name, s in result["all_three"].items():
            if s["n"]:
                print(f"  while all three ran, {name}: p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms "
                      f"(n={s['n']}, errors {s['errors']})")
        print(f"jobs: {result['jobs']}; ranking: {result['rank'][:100]}")
        if result["errors"]:
            print("errors:", *result["errors"], sep="\n  ")
    ok = result.get("app_alive") and not any(v["errors"] for v in result.get("loaded", {}).values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
