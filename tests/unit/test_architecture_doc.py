"""docs/architecture.md is drawn from the code as it is: its module table names every package.

A package added without a row (or a row left behind by a package that moved) fails here, so a
newcomer who reads the table finds every room of the house.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOP = ("agent", "collector", "attestation", "core", "demo")


def _packages() -> list[str]:
    out = []
    for top in TOP:
        for init in sorted((ROOT / top).rglob("__init__.py")):
            rel = init.parent.relative_to(ROOT).as_posix()
            if "__pycache__" not in rel:
                out.append(rel)
    return out


def _table() -> str:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert rows, "docs/architecture.md has no module table"
    return "\n".join(rows)


def _named_paths(table: str) -> set[str]:
    """Every path the table names in backticks, and the parent folders of the files it names."""
    named: set[str] = set()
    for code in re.findall(r"`([^`]+)`", table):
        for token in re.split(r"[,\s]+", code):
            token = token.strip().rstrip("/")
            if "/" in token or token in TOP:
                named.add(token)
    return named


def test_the_module_table_names_every_package() -> None:
    table = _table()
    named = _named_paths(table)
    missing = []
    for pkg in _packages():
        leaf = pkg.rsplit("/", 1)[-1]
        # A package is named by its path (``collector/store/``), a file in it, or, inside a
        # row of its parent, by its folder name followed by "/" (``nvml/`` in agent/sources).
        if pkg in named or any(p.startswith(pkg + "/") for p in named) or f"`{leaf}/" in table or f" {leaf}/" in table:
            continue
        missing.append(pkg)
    assert not missing, f"packages without a row in docs/architecture.md: {missing}"


def test_every_file_the_table_names_exists() -> None:
    stale = []
    for path in sorted(_named_paths(_table())):
        if not path.startswith(TOP) or "*" in path or "<" in path:
            continue
        if not (ROOT / path).exists():
            stale.append(path)
    assert not stale, f"docs/architecture.md names files that are not there: {stale}"
