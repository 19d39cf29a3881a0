"""The packages' layers hold: every import of every module, as the parser reads it.

    attestation   the protocol; needs no other gpuaudit package (a vendor verifies with it alone)
    core          the neutral layer: trace format, samples, windowing, config, simulated site, version
    agent         the node daemon           \\  neither imports the other; what both need is in
    collector     the server                /   core, so what `detect` finds never depends on agent/
    demo          composes agent and collector (the demo site); nothing in the four above imports it

Every import counts: at the top of a module, inside a function (lazy) or under TYPE_CHECKING,
and ``importlib.import_module("...")`` / ``__import__("...")`` with a literal name.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# package -> the gpuaudit packages it must not import
FORBIDDEN: dict[str, frozenset[str]] = {
    "attestation": frozenset({"agent", "collector", "core", "demo"}),
    "core": frozenset({"agent", "collector", "demo"}),
    "agent": frozenset({"collector", "demo"}),
    "collector": frozenset({"agent", "demo"}),
}


def _modules(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts)


def _imported(path: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``."""
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's own package upwards
                package = parts if rel.name == "__init__" else parts[:-1]
                base = package[: len(package) - (node.level - 1)]
                yield node.lineno, ".".join([*base, *([node.module] if node.module else [])])
            elif node.module:
                yield node.lineno, node.module
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                yield node.lineno, node.args[0].value


def _violations(package: str) -> list[str]:
    out = []
    for path in _modules(package):
        for line, module in _imported(path):
            top = module.split(".", 1)[0]
            if top in FORBIDDEN[package]:
                out.append(f"{path.relative_to(ROOT).as_posix()}:{line}: imports {module}")
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_the_layers_below_it(package: str) -> None:
    bad = _violations(package)
    assert not bad, (
        f"{package}/ must not import {', '.join(sorted(FORBIDDEN[package]))} (tests/unit/test_layering.py "
        "says why); move what both sides need into core/ (or compose them in demo/):\n  " + "\n  ".join(bad)
    )


def test_the_checker_sees_every_kind_of_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The test would pass vacuously if the walker missed imports: check it on a planted module."""
    pkg = tmp_path / "collector" / "sub"
    pkg.mkdir(parents=True)
    (pkg / "m.py").write_text(
        "import agent.node\n"
        "from agent import replay\n"
        "def f():\n"
        "    from agent.replay import ReplayStats\n"
        "    import importlib\n"
        "    importlib.import_module('agent.cli')\n"
        "from .. import x\n"
        "from core.trace import write_trace\n",
        encoding="utf-8",
    )
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert sorted(_violations("collector")) == [
        "collector/sub/m.py:1: imports agent.node",
        "collector/sub/m.py:2: imports agent",
        "collector/sub/m.py:4: imports agent.replay",
        "collector/sub/m.py:6: imports agent.cli",
    ]
    assert {"collector", "core.trace"} <= {m for _, m in _imported(pkg / "m.py")}, "relative or core imports"
