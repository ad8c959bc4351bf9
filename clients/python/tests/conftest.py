"""The test harness: a real creditd server, started from the binary at ``CREDITD_BIN``.

The server listens on a free port of 127.0.0.1 with a data directory of its own, and prints
``listening on http://IP:PORT``; it runs with the repository's ``config.toml`` (the dev keys of
tenant ``default``) and is killed when the tests end.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest

import creditd

REPO_ROOT = Path(__file__).resolve().parents[3]
CONFIG = REPO_ROOT / "config.toml"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))

SERVICE_KEY = "dev-service-secret-change-me"
ADMIN_KEY = "dev-admin-secret-change-me"
PLATFORM_KEY = "dev-platform-secret-change-me"

BUILD_HINT = (
    "CREDITD_BIN is not set: these tests run against a real creditd server. Build it at the "
    "repository root with `cargo build --release`, then run "
    "`CREDITD_BIN=$PWD/target/release/creditd python -m pytest` from clients/python."
)

_LISTENING = re.compile(r"listening on (http://\S+)")

#: Every server process started, so that none outlives the test run however it ends.
_STARTED: List[subprocess.Popen[str]] = []


@atexit.register
def _kill_leftovers() -> None:
    for process in _STARTED:
        if process.poll() is None:
            process.kill()


def creditd_binary() -> str:
    binary = os.environ.get("CREDITD_BIN")
    if not binary:
        pytest.fail(BUILD_HINT, pytrace=False)
    if not os.path.isabs(binary) or not os.access(binary, os.X_OK):
        pytest.fail(
            f"CREDITD_BIN={binary!r} is not an absolute path to an executable. {BUILD_HINT}",
            pytrace=False,
        )
    return binary


class Server:
    """One creditd process on a data directory; it can be killed and started again on it."""

    def __init__(self, data_dir: Path, env: Optional[Dict[str, str]] = None) -> None:
        self.binary = creditd_binary()
        self.data_dir = data_dir
        self.extra_env = env or {}
        self.process: Optional[subprocess.Popen[str]] = None
        self.base_url = ""
        self.output: List[str] = []

    def start(self, timeout_seconds: float = 60.0) -> str:
        env = dict(os.environ)
        env.update(
            {
                "CREDITD_SERVER__LISTEN": "127.0.0.1:0",
                "CREDITD_STORAGE__DATA_DIR": str(self.data_dir),
            }
        )
        env.update(self.extra_env)
        log = open(self.data_dir.parent / f"{self.data_dir.name}.stderr.log", "a")
        self.process = subprocess.Popen(
            [self.binary, "serve", "--config", str(CONFIG)],
            cwd=str(REPO_ROOT),
            env=env,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        log.close()
        _STARTED.append(self.process)
        found = threading.Event()
        process = self.process

        def drain() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                self.output.append(line)
                match = _LISTENING.search(line)
                if match and not found.is_set():
                    self.base_url = match.group(1).rstrip("/")
                    found.set()
            found.set()

        threading.Thread(target=drain, daemon=True).start()
        if not found.wait(timeout_seconds) or not self.base_url:
            self.kill()
            raise RuntimeError(
                f"creditd did not print its address within {timeout_seconds} s: {self.output!r}"
            )
        # It listens while it recovers (answering 503 `recovering`): ready once /readyz says so,
        # so that what a test sends next meets the recovered server, however long recovery takes.
        deadline = time.monotonic() + timeout_seconds
        while True:
            try:
                with urllib.request.urlopen(f"{self.base_url}/readyz", timeout=5) as answer:
                    if answer.status == 200:
                        return self.base_url
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"creditd was not ready within {timeout_seconds} s")
            time.sleep(0.01)

    def kill(self) -> None:
        """SIGKILL: no clean stop, as a crash would be."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="creditd-py-tests-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def server(workdir: Path) -> Iterator[Server]:
    data = workdir / "shared"
    data.mkdir()
    started = Server(data)
    started.start()
    yield started
    started.stop()


@pytest.fixture()
def fresh_server(workdir: Path) -> Iterator[Server]:
    """A server of the test's own, for tests that kill it."""
    data = workdir / f"own-{uuid.uuid4().hex[:8]}"
    data.mkdir()
    started = Server(data)
    started.start()
    yield started
    started.stop()


@pytest.fixture()
def service(server: Server) -> Iterator[creditd.Creditd]:
    with creditd.Creditd(server.base_url, SERVICE_KEY) as client:
        yield client


@pytest.fixture()
def admin(server: Server) -> Iterator[creditd.Creditd]:
    with creditd.Creditd(server.base_url, ADMIN_KEY) as client:
        yield client


@pytest.fixture()
def platform(server: Server) -> Iterator[creditd.Creditd]:
    with creditd.Creditd(server.base_url, PLATFORM_KEY) as client:
        yield client


@pytest.fixture()
def user_id() -> str:
    """A user id no other test uses."""
    return f"py-{uuid.uuid4().hex[:12]}"


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"
