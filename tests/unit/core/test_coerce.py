"""The one config coercer (core.config) that the agent's, the collector's and the [detect] readers share."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import sys
from pathlib import Path

import pytest

from core.config import coerce, from_table, load
from core.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Inner:
    floor: str = "medium"
    countries: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Outer:
    ratio: float = 0.5
    count: int = 3
    inner: Inner = dataclasses.field(default_factory=Inner)

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError("count must not be negative")


@pytest.mark.parametrize(
    ("typ", "value", "from_env", "want"),
    [
        (int, 3, False, 3),
        (int, "3", True, 3),
        (float, 2, False, 2.0),
        (bool, "yes", True, True),
        (str | None, "", True, None),
        (Path | None, "/x", False, Path("/x")),
        (tuple[str, ...], ["DE", "FR"], False, ("DE", "FR")),
    ],
)
def test_coerce_accepts(typ: object, value: object, from_env: bool, want: object) -> None:
    assert coerce("k", typ, value, from_env=from_env) == want


@pytest.mark.parametrize(
    ("typ", "value", "message"),
    [
        (int, True, "k: expected an integer"),
        (int, "3", "k: expected an integer, got '3'"),  # from a file, text is not a number
        (float, "x", "k: expected a number"),
        (tuple[str, ...], "DE", "k: expected a list"),
        (tuple[str, ...], ["DE", 1], "k[1]: expected a string"),
        (Inner, 3, "k: expected a table"),
    ],
)
def test_coerce_refuses_naming_the_key(typ: object, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        coerce("k", typ, value)


def test_from_table_builds_nested_tables_and_names_the_key_path() -> None:
    cfg = from_table(Outer, {"ratio": 1, "inner": {"countries": ["DE"]}}, "detect")
    assert cfg == Outer(ratio=1.0, inner=Inner(countries=("DE",)))
    with pytest.raises(ConfigError, match=r"detect\.inner: unknown key 'x'"):
        from_table(Outer, {"inner": {"x": 1}}, "detect")
    with pytest.raises(ConfigError, match=r"detect\.inner\.floor: expected a string"):
        from_table(Outer, {"inner": {"floor": 1}}, "detect")
    with pytest.raises(ConfigError, match="detect: count must not be negative"):
        from_table(Outer, {"count": -1}, "detect")


def test_load_goes_through_the_same_coercer(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("ratio = 1\n")
    cfg, _ = load(Outer, f, env={"GPUAUDIT_COUNT": "7"})
    assert (cfg.ratio, cfg.count) == (1.0, 7)


def test_version_comes_from_the_package_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    import core

    assert core.__version__ == importlib.metadata.version("gpuaudit")

    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    monkeypatch.delitem(sys.modules, "core")
    import core as fresh

    assert fresh.__version__ == "0+unknown"
