"""A build in its own process, for the app: the page starts it, reads its status file, and stays responsive.

The build process dies with the process that started it (as the queue's workers do), and its trial
workers die with it, each keeping its last checkpoint: starting the same build again resumes it.

    python -m transfer.build.process CONFIG_JSON
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from storage.files import pid_alive
from transfer.build.config import BuildConfig, build_dir
from transfer.build.flow import read_status


def running(build_id: str) -> bool:
    """True while a process of this machine is working on the build (its status file names it and it lives)."""
    state = read_status(build_id)
    if not state or state.get("done") or not state.get("pid"):
        return False
    return pid_alive(int(state["pid"]))


def start(config: BuildConfig | dict) -> str:
    """Start the build in the background (or join the one already running); return its id. A bad configuration
    fails here, before anything starts."""
    from transfer.build.flow import _resolve
    from transfer.jobs.queue import worker_environment

    cfg = config if isinstance(config, BuildConfig) else BuildConfig.from_dict(dict(config))
    cfg.validate()
    _resolve(cfg)  # unknown data sets, students and teachers fail now, with the valid names
    build_id = cfg.build_id()
    if running(build_id):
        return build_id
    folder = build_dir(build_id)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "status.json").unlink(missing_ok=True)  # the page waits for this run's own status
    env = worker_environment(1)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # the build's own queue divides the cores among its trials
        if var not in os.environ:
            env.pop(var, None)
    with open(folder / "build.log", "ab") as log:
        subprocess.Popen([sys.executable, "-m", "transfer.build.process", json.dumps(cfg.to_dict())], stdout=log,
                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    return build_id


def main(argv: list[str] | None = None) -> int:
    from transfer.build.flow import run_build
    from transfer.jobs.queue import PARENT_VARIABLE, _die_with_parent

    _die_with_parent(int(os.environ.get(PARENT_VARIABLE) or 0))
    args = sys.argv[1:] if argv is None else argv
    try:
        summary = run_build(json.loads(args[0]))
    except Exception as exc:  # noqa: BLE001 - recorded in the status file; the log keeps the message
        print(f"error: {exc}", flush=True)
        return 1
    print(json.dumps({"build_id": summary["build_id"], "card": summary["card"]["markdown"]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
