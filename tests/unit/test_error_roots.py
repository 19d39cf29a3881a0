"""Every error class a package defines derives from that package's error root.

A caller can then catch one package's errors with one class, and a newcomer finds them by
their root: ``core.errors.Error``, ``agent.errors.AgentError``, ``collector.errors.
CollectorError``, ``attestation.errors.Error``. Private classes (a leading underscore) are
internal signals and are left out, as are the generated protobuf modules.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import agent
import attestation
import collector
import core
from agent.errors import AgentError
from attestation.errors import Error as AttestationError
from collector.errors import CollectorError
from core.errors import Error as CoreError

ROOTS: dict[str, type[BaseException]] = {
    "core": CoreError,
    "agent": AgentError,
    "collector": CollectorError,
    "attestation": AttestationError,
}
SKIP = ("attestation.v1", "agent.sources.podresources", "collector.cli.__main__", "collector.evaluate.__main__")


def _modules(package: object) -> list[str]:
    path = [str(Path(p)) for p in package.__path__]  # type: ignore[attr-defined]
    prefix = package.__name__ + "."  # type: ignore[attr-defined]
    return [m.name for m in pkgutil.walk_packages(path, prefix) if not m.name.startswith(SKIP)]


def _errors() -> list[tuple[str, type[BaseException]]]:
    out = []
    for package in (core, agent, collector, attestation):
        for name in _modules(package):
            module = importlib.import_module(name)
            for attr, obj in vars(module).items():
                if (
                    inspect.isclass(obj)
                    and issubclass(obj, BaseException)
                    and obj.__module__ == name
                    and not attr.startswith("_")
                ):
                    out.append((name, obj))
    return out


ERRORS = _errors()


def test_the_walk_finds_the_errors_it_should() -> None:
    names = {cls.__name__ for _, cls in ERRORS}
    assert {"TraceError", "RejectedError", "SpoolFullError", "StoreError", "PrometheusError", "SchemaError"} <= names


@pytest.mark.parametrize(("module", "cls"), ERRORS, ids=[f"{m}.{c.__name__}" for m, c in ERRORS])
def test_an_error_derives_from_its_package_root(module: str, cls: type[BaseException]) -> None:
    root = ROOTS[module.split(".", 1)[0]]
    assert issubclass(cls, root), f"{module}.{cls.__name__} does not derive from {root.__module__}.{root.__name__}"
