"""The entry point of each process that ``aftzoo launch`` starts under torchrun.

``python -m app.launch_worker extract|transfer ARGS`` joins the process group, runs the ordinary
command (whose library code shards the work) and leaves the group. Rank 0 alone prints results;
every rank prints its errors. Its own module, so that the CLI does not import its own launcher.
"""
from __future__ import annotations

import contextlib
import os
import shlex
import sys

from app.cli import main
from app.launch_cli import LAUNCHABLE
from app.output import err
from transfer.training import distributed


def worker(argv: list[str]) -> int:
    """One process of a launched job: join the others, run the aftzoo command, leave the group; its exit status."""
    if not argv or argv[0] not in LAUNCHABLE:
        return _error(f"a launched process runs one of: {', '.join(LAUNCHABLE)}; got {shlex.join(argv) or 'nothing'}",
                      2)
    try:
        with distributed.session() as ctx, contextlib.ExitStack() as quiet:
            if not ctx.is_main:  # results once, from rank 0; errors from every rank (stderr)
                quiet.enter_context(contextlib.redirect_stdout(quiet.enter_context(open(os.devnull, "w"))))
            main(argv)  # exits (SystemExit) with the command's status
    except (distributed.JobStopped, distributed.DistributedError) as exc:
        return _error(str(exc), 1)
    return 0


def _error(message: str, code: int) -> int:
    """``fail``'s line, outside a typer command (a worker's own errors)."""
    err.print(f"[bold red]error:[/] {' '.join(message.split())}", highlight=False, soft_wrap=True)
    return code

if __name__ == "__main__":
    sys.exit(worker(sys.argv[1:]))
