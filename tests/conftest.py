"""Shared fixtures: start the real binaries on port 0, read their "listening on" lines, clean up.

Every aibox binary prints one line per listener, `<label> listening on <host:port>`, on stderr
once the socket is bound. Tests wait for that line instead of sleeping.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(os.environ.get("AIBOX_BIN_DIR", ROOT / "target" / "debug"))
ARTIFACTS = ROOT / "artifacts"
LISTENING = re.compile(r"(\S+) listening on (\S+)")


class Proc:
    """A running binary whose output is kept (in memory and in artifacts/logs) for assertions."""

    def __init__(self, name: str, args: list[str], env: dict[str, str] | None = None,
                 wait_for: tuple[str, ...] = ("api",), timeout: float = 30.0, cwd: Path | None = None):
        self.name = name
        self.lines: list[str] = []
        self.addrs: dict[str, str] = {}
        self._cond = threading.Condition()
        full_env = dict(os.environ)
        full_env.setdefault("RUST_LOG", "info")
        full_env.update(env or {})
        exe = args[0] if "/" in args[0] else str(BIN / args[0])
        ARTIFACTS.joinpath("logs").mkdir(parents=True, exist_ok=True)
        self._log = open(ARTIFACTS / "logs" / f"{name}-{os.getpid()}-{time.time_ns()}.log", "w")
        self.proc = subprocess.Popen(
            [exe, *args[1:]], env=full_env, cwd=cwd or ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
            start_new_session=True,
        )
        threading.Thread(target=self._pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        with self._cond:
            while not all(label in self.addrs for label in wait_for):
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"{name} did not report {wait_for} listening:\n" + "".join(self.lines[-40:]))
                self._cond.wait(min(left, 0.2))

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._log.write(line)
            self._log.flush()
            with self._cond:
                self.lines.append(line)
                m = LISTENING.search(line)
                if m and m.group(1) not in self.addrs:
                    self.addrs[m.group(1)] = m.group(2)
                self._cond.notify_all()
        # The pump owns the log file: it closes it once the process's output has ended.
        self._log.close()

    def addr(self, label: str = "api") -> str:
        return self.addrs[label]

    def url(self, label: str = "api") -> str:
        return f"http://{self.addrs[label]}"

    def output(self) -> str:
        with self._cond:
            return "".join(self.lines)

    def wait_for_line(self, pattern: str, timeout: float = 10.0) -> str:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if rx.search(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.name}: no line matching {pattern!r}:\n" + "".join(self.lines[-40:]))
                self._cond.wait(min(left, 0.2))

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=5)


class Starter:
    """Starts binaries and remembers them so the fixture can stop them all."""

    def __init__(self) -> None:
        self.started: list[Proc] = []

    def start(self, name: str, args: list[str], **kw) -> Proc:
        p = Proc(name, args, **kw)
        self.started.append(p)
        return p

    def stop_all(self) -> None:
        for p in reversed(self.started):
            p.stop()


@pytest.fixture
def procs():
    """Start binaries with `procs.start(name, args, ...)`; all are stopped when the test ends."""
    s = Starter()
    yield s
    s.stop_all()


@pytest.fixture(scope="module")
def module_procs():
    """Like `procs`, shared by the tests of one module (for a stack that every test reuses)."""
    s = Starter()
    yield s
    s.stop_all()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fake_upstream(procs, kind: str, *extra: str, name: str | None = None) -> Proc:
    """A fake Ollama or OpenAI-compatible server (tests/testkit), written from the published APIs."""
    return procs.start(name or f"fake-{kind}", ["fake-upstream", "--kind", kind, "--listen", "127.0.0.1:0", *extra])


def start_edge(procs, tmp_path: Path, config: str = "", env: dict[str, str] | None = None,
               wait_for: tuple[str, ...] = ("api",), name: str = "edge") -> Proc:
    """The real edge binary on port 0 with the given TOML config (written to tmp_path)."""
    cfg = tmp_path / f"{name}.toml"
    cfg.write_text(config)
    full_env = {"EDGE_LISTEN": "127.0.0.1:0", "EDGE_CONFIG": str(cfg), "EGRESS_LISTEN": "127.0.0.1:0"}
    full_env.update(env or {})
    return procs.start(name, ["edge", "--log-format", "json"], env=full_env, wait_for=wait_for)
