"""How the CLI talks: rich tables for people, one JSON document for programs, one line per error."""
from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape

from storage.errors import AftzooError

console = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 1) -> None:
    """One clear line on stderr and a non-zero exit; never a traceback."""
    # Escaped: messages quote paths and backend errors such as gloo's "[/.../pair.cc:545]", which rich
    # would read as markup and fail on.
    err.print(f"[bold red]error:[/] {escape(' '.join(str(message).split()))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def user_errors(interrupted: str = "interrupted") -> Iterator[None]:
    """A command's body: aftzoo's own errors (and bad values) as their one line, Ctrl+C as ``interrupted``.

    Anything else is unexpected: still one line, with its type, so that a report can name it.
    """
    try:
        yield
    except (AftzooError, ValueError) as exc:
        fail(str(exc) or type(exc).__name__)
    except KeyboardInterrupt:
        fail(interrupted, code=130)
    except Exception as exc:  # noqa: BLE001 - a user-facing entry point: never a traceback
        fail(f"{type(exc).__name__}: {exc}")


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
