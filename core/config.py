"""Configuration loading shared by the agent and the collector: one coercer for both.

Precedence: command-line flag > ``GPUAUDIT_<NAME>`` environment variable > TOML file >
default. Unknown keys and unparseable values are errors that name the key. Nothing is read
at import time: ``cli.main()`` builds one frozen dataclass and passes it down.

:func:`coerce` turns one TOML or environment value into a dataclass field's type; every
config reader goes through it: :func:`load` (a process's settings: the agent's, the
collector's) and :func:`from_table` (a TOML table as a dataclass, tables nested in tables:
the collector's ``[detect]``).
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from core.errors import ConfigError

T = TypeVar("T")


def coerce(name: str, typ: Any, value: Any, *, from_env: bool = False) -> Any:
    """``value`` as ``typ`` (bool, int, float, str, Path, ``X | None``, ``tuple[X, ...]`` from a
    list, a dataclass from a table); ConfigError names ``name``. Environment values
    (``from_env``) are text: numbers and booleans are parsed, "" is None where None is allowed.
    Any other type (a table the caller validates) is returned as it is."""
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if value is None or (from_env and value == ""):
            return None
        (typ,) = [a for a in args if a is not type(None)]
        origin, args = typing.get_origin(typ), typing.get_args(typ)
    if isinstance(typ, type) and dataclasses.is_dataclass(typ):
        if isinstance(value, typ):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a table")
        return from_table(typ, value, name)
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
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            if not isinstance(value, list):
                raise ValueError(f"expected a list, got {value!r}")
            return tuple(coerce(f"{name}[{i}]", args[0], x, from_env=from_env) for i, x in enumerate(value))
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from exc
    return value  # tables handled by the caller


def from_table(cls: type[T], table: Mapping[str, Any], where: str) -> T:
    """Build the dataclass ``cls`` from the TOML table ``where`` (e.g. ``detect``): each key a
    field, coerced; a field that is itself a dataclass from a nested table
    (``[detect.opacity]``); keys left out keep their defaults."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for k, v in table.items():
        if k not in fields:
            raise ConfigError(f"{where}: unknown key {k!r}")
        kwargs[k] = coerce(f"{where}.{k}", hints[k], v)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


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
            values[k] = coerce(k, hints[k], v)
    for k in fields:
        if k in tables:
            continue
        ev = env.get("GPUAUDIT_" + k.upper())
        if ev is not None:
            values[k] = coerce(f"GPUAUDIT_{k.upper()}", hints[k], ev, from_env=True)
    for k, v in (overrides or {}).items():
        if v is None:
            continue
        if k not in fields:
            raise ConfigError(f"unknown setting {k!r}")
        values[k] = coerce(k, hints[k], v)
    try:
        return cls(**values), raw_tables
    except TypeError as exc:
        raise ConfigError(str(exc)) from exc
