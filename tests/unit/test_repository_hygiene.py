"""The repository holds sources, not environments or build outputs.

A tracked virtualenv carries one machine's interpreter path in every script's first line,
so `make demo` on any other machine fails at once; build outputs and egg-info go stale
the moment a source changes. This test reads what git tracks, not what is on disk.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# A path is refused when any of its components matches one of these.
FORBIDDEN_DIRS = {
    ".venv",
    "venv",
    "build",
    "dist",
    "__pycache__",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    ".hypothesis",
}
FORBIDDEN_SUFFIXES = (".egg-info", ".pyc")


def _tracked() -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: nothing is tracked to check")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    return [p for p in out.stdout.decode().split("\0") if p]


def offending(paths: list[str]) -> list[str]:
    bad = []
    for path in paths:
        parts = path.split("/")
        if any(p in FORBIDDEN_DIRS or p.endswith(FORBIDDEN_SUFFIXES) for p in parts):
            bad.append(path)
    return bad


def test_rule_catches_each_kind() -> None:
    assert offending(
        [
            ".venv/bin/python",
            "build/lib/x.py",
            "dist/a.whl",
            "gpuaudit.egg-info/PKG-INFO",
            "agent/__pycache__/a.cpython-311.pyc",
            "core/window.py",
            "docs/build-notes.md",
        ]
    ) == [
        ".venv/bin/python",
        "build/lib/x.py",
        "dist/a.whl",
        "gpuaudit.egg-info/PKG-INFO",
        "agent/__pycache__/a.cpython-311.pyc",
    ]


def test_nothing_environment_like_is_tracked() -> None:
    paths = _tracked()
    assert len(paths) > 50, "git ls-files listed almost nothing; is this the project?"
    bad = offending(paths)
    assert not bad, f"{len(bad)} tracked paths belong to an environment or a build: {bad[:5]}"
