"""How the CLI talks: rich tables for people, one JSON document for programs, one line per error."""
from __future__ import annotations

import json
import sys

import typer
from rich.console import Console
from rich.markup import escape

console = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 1) -> None:
    """One clear line on stderr and a non-zero exit; never a traceback."""
    # Escaped: messages quote paths and backend errors such as gloo's "[/.../pair.cc:545]", which rich
    # would read as markup and fail on.
    err.print(f"[bold red]error:[/] {escape(' '.join(str(message).split()))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def human_count(n: int | None) -> str:
    """A parameter count as people say it: 3.4M, 1.1B ("?" when unknown)."""
    if not n:
        return "?"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)
