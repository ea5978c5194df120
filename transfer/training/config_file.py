"""A transfer run's configuration as a TOML file: every field of ``TransferConfig``, nothing else.

``read(path)`` checks names and types against the dataclass (a misspelt key is an error, not
a silently ignored line), ``merge`` lays command-line overrides over it, and ``dumps`` writes a
past run's configuration back as a file ``aftzoo transfer --config`` runs again. The defaults
live in one place, ``TransferConfig``'s fields: the CLI leaves an option unset (None) unless
the user gives it.
"""
from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from pathlib import Path
from typing import Any

from transfer.training.trainer import TransferConfig, TransferError

_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "None": (type(None),),
          "list[str]": (list,), "tuple[float, ...]": (list, tuple)}


def fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(TransferConfig)}


def defaults() -> dict[str, Any]:
    """Every field's default (the one place the CLI and the app take them from); required fields are absent."""
    out = {}
    for name, f in fields().items():
        if f.default is not dataclasses.MISSING:
            out[name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[name] = f.default_factory()
    return out


def check(values: dict[str, Any], where: str) -> dict[str, Any]:
    """``values`` if every key is a field and every value has the field's type; else one ``TransferError``."""
    known = fields()
    problems = []
    for key, value in values.items():
        if key not in known:
            close = [k for k in known if k.replace("_", "") == key.replace("_", "").replace("-", "")]
            problems.append(f"unknown field {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            continue
        allowed = tuple(t for part in str(known[key].type).split("|") for t in _TYPES.get(part.strip(), (object,)))
        if isinstance(value, bool) and bool not in allowed:
            allowed = ()
        if not isinstance(value, allowed):
            problems.append(f"{key} = {value!r} should be {known[key].type}")
    if problems:
        raise TransferError(f"{where}: " + "; ".join(problems) + f"; the fields are: {', '.join(known)}")
    return values


def read(path: str | Path) -> dict[str, Any]:
    """The fields set in the TOML file ``path`` (top level, or under a ``[transfer]`` table)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TransferError(f"cannot read the config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise TransferError(f"{path} is not valid TOML: {exc}") from None
    if set(data) == {"transfer"} and isinstance(data["transfer"], dict):
        data = data["transfer"]
    return check(data, str(path))


def merge(file_values: dict[str, Any], overrides: dict[str, Any]) -> TransferConfig:
    """The configuration: the defaults, then the file, then the overrides that are set (not None)."""
    values = {**file_values, **{k: v for k, v in overrides.items() if v is not None}}
    check(values, "the options")
    missing = [k for k in ("dataset", "student") if not values.get(k)]
    if missing:
        raise TransferError(f"no {' or '.join(missing)}: give --dataset and --student, or set them in --config")
    return TransferConfig.from_dict(values)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value), ensure_ascii=False)  # a TOML basic string: JSON's escapes are TOML's


def dumps(config: dict[str, Any], header: str = "") -> str:
    """``config``'s ``TransferConfig`` fields as TOML (unset fields as comments), ready for ``--config``."""
    lines = [f"# {line}" for line in header.splitlines()]
    for name in fields():
        if name not in config:
            continue
        value = config[name]
        lines.append(f"# {name} = (unset)" if value is None else f"{name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"
