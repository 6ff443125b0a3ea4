"""`./aibox up` checks every prerequisite before it builds or writes anything, and names the exact
command that installs what is missing (a missing package found after the release build would
cost the whole build). Each test runs the real `deploy/compose.sh up` with a PATH that lacks one
tool.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def path_without(tmp_path: Path, *tools: str) -> str:
    """A PATH of one directory holding every program this machine has, except `tools`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    dirs = os.environ.get("PATH", "").split(":") + [str(Path.home() / ".cargo" / "bin")]
    for d in dirs:
        if not d or not os.path.isdir(d):
            continue
        for entry in os.scandir(d):
            link = bin_dir / entry.name
            if entry.name in tools or link.exists() or link.is_symlink():
                continue
            link.symlink_to(entry.path)
    return str(bin_dir)


def up(tmp_path: Path, *tools_missing: str, args: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = path_without(tmp_path, *tools_missing)
    env["AIBOX_ENV_FILE"] = str(tmp_path / "env")
    env["AIBOX_DATA_DIR"] = str(tmp_path / "data")
    env["COMPOSE_PROJECT_NAME"] = f"aibox-prereq-{os.getpid()}"
    return subprocess.run([str(ROOT / "deploy" / "compose.sh"), "up", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def install_line(out: str) -> str:
    lines = [line for line in out.splitlines() if "apt-get install -y" in line]
    assert lines, out
    return lines[0]


def assert_nothing_started(r: subprocess.CompletedProcess, tmp_path: Path) -> None:
    assert r.returncode == 1, r.stderr
    assert "missing prerequisites" in r.stderr
    assert "building" not in r.stderr, r.stderr
    assert not (tmp_path / "env").exists(), "no secret may be written before the check passes"
    assert not (tmp_path / "data").exists()


def test_up_without_cmake_names_the_package_and_builds_nothing(tmp_path):
    r = up(tmp_path, "cmake")
    assert_nothing_started(r, tmp_path)
    assert "cmake" in install_line(r.stderr).split("apt-get install -y", 1)[1].split()


def test_up_without_cargo_points_at_rustup(tmp_path):
    r = up(tmp_path, "cargo")
    assert_nothing_started(r, tmp_path)
    assert "cargo" in r.stderr and "sh.rustup.rs" in r.stderr


def test_up_without_a_static_busybox_says_so_before_the_build(tmp_path, monkeypatch):
    monkeypatch.setenv("AIBOX_BUSYBOX", str(tmp_path / "no-busybox"))
    r = up(tmp_path)
    assert_nothing_started(r, tmp_path)
    assert "busybox-static" in install_line(r.stderr)


def test_up_without_compose_names_a_compose_package(tmp_path):
    r = up(tmp_path, "docker", "docker-compose")
    assert_nothing_started(r, tmp_path)
    packages = install_line(r.stderr).split("apt-get install -y", 1)[1].split()
    assert "docker.io" in packages and "docker-compose" in packages


def test_up_no_build_needs_no_build_tools(tmp_path):
    r = subprocess.run([str(ROOT / "deploy" / "compose.sh"), "check", "--no-build"],
                       env={**os.environ, "PATH": path_without(tmp_path, "cargo", "cmake", "cc"),
                            "AIBOX_ENV_FILE": str(tmp_path / "env")},
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "all prerequisites are installed" in r.stderr
