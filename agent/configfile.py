"""Configuration loading shared by the agent and the collector.

Precedence: command-line flag > ``GPUAUDIT_<NAME>`` environment variable > TOML file >
default. Unknown keys and unparseable values are errors that name the key. Nothing is read
at import time: ``cli.main()`` builds one frozen dataclass and passes it down.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration key is unknown or its value cannot be used."""


def _coerce(name: str, typ: Any, value: Any, from_env: bool) -> Any:
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and type(None) in args:
        if value is None or (from_env and value == ""):
            return None
        (typ,) = [a for a in args if a is not type(None)]
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            if from_env and isinstance(value, str) and value.lower() in ("1", "true", "yes", "0", "false", "no"):
                return value.lower() in ("1", "true", "yes")
            raise ValueError(f"expected true or false, got {value!r}")
        if typ is int:
            if isinstance(value, bool):
                raise ValueError("expected an integer")
            if isinstance(value, int):
                return value
            if from_env and isinstance(value, str):
                return int(value)
            raise ValueError(f"expected an integer, got {value!r}")
        if typ is float:
            if isinstance(value, bool):
                raise ValueError("expected a number")
            if isinstance(value, (int, float)):
                return float(value)
            if from_env and isinstance(value, str):
                return float(value)
            raise ValueError(f"expected a number, got {value!r}")
        if typ is str:
            if isinstance(value, str):
                return value
            raise ValueError(f"expected a string, got {value!r}")
        if typ is Path:
            if isinstance(value, (str, Path)):
                return Path(value)
            raise ValueError(f"expected a path, got {value!r}")
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from exc
    return value  # tables handled by the caller


def load(
    cls: type[T],
    path: Path | None,
    *,
    env: Mapping[str, str],
    overrides: Mapping[str, Any] | None = None,
    tables: tuple[str, ...] = (),
) -> tuple[T, dict[str, Any]]:
    """Build ``cls`` from defaults, the TOML file, the environment and ``overrides``.

    Keys named in ``tables`` are TOML tables returned raw (second element) for the
    caller to validate; they are not settable from the environment.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    raw_tables: dict[str, Any] = {}
    if path is not None:
        try:
            doc = tomllib.loads(Path(path).read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from exc
        for k, v in doc.items():
            if k in tables:
                raw_tables[k] = v
                continue
            if k not in fields or k in tables:
                raise ConfigError(f"{path}: unknown key {k!r} (known: {', '.join(sorted(fields))})")
            values[k] = _coerce(k, hints[k], v, from_env=False)
    for k in fields:
        if k in tables:
            continue
        ev = env.get("GPUAUDIT_" + k.upper())
        if ev is not None:
            values[k] = _coerce(f"GPUAUDIT_{k.upper()}", hints[k], ev, from_env=True)
    for k, v in (overrides or {}).items():
        if v is None:
            continue
        if k not in fields:
            raise ConfigError(f"unknown setting {k!r}")
        values[k] = _coerce(k, hints[k], v, from_env=False)
    try:
        return cls(**values), raw_tables
    except TypeError as exc:
        raise ConfigError(str(exc)) from exc
