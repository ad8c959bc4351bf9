"""The package itself: ``mypy --strict`` passes on it and on the example, and the synchronous
client is what ``scripts/unasync.py`` makes of the asynchronous one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_strict_passes() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "src/creditd", "examples/ai_gateway.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_sync_client_is_generated_from_the_async_one() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/unasync.py", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_the_package_is_typed() -> None:
    assert (ROOT / "src" / "creditd" / "py.typed").exists()


def test_without_creditd_bin_the_suite_says_how_to_build_it() -> None:
    env = {name: value for name, value in os.environ.items() if name != "CREDITD_BIN"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "tests/test_recipe.py", "-k", "async_client"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "CREDITD_BIN is not set" in result.stdout
    assert "cargo build --release" in result.stdout
