"""Offline Docker fixtures: tiny images, throwaway compose projects, a loopback registry.

The Docker engine on this machine cannot pull anything, so everything here is built locally.
Reusable by any test that needs real containers (controller, dashboard, compose bundle):

- `require_docker()` -> None
    Fails the test loudly (never skips) when the `docker` CLI or the daemon is missing.
- `busybox_image(tag="aibox-test/busybox:1", marker=None)` -> str (image id)
    `docker import` of a root filesystem holding Debian's static /bin/busybox and a symlink per
    applet (sh, sleep, echo, wget, ...). `marker` adds /marker with that text, giving an image with
    a different id (useful to show drift). Idempotent for the same tag and marker.
- `ComposeProject(name=None)`: containers labelled as docker compose would label them
  (`com.docker.compose.project=<name>`, `com.docker.compose.service=<service>`), with no network.
    - `.run(service, script, image=BUSYBOX, tty=False, health_cmd=None, env=None)` -> container id;
      runs `sh -c script`, named `<project>-<service>-1`, stop timeout 1 s.
    - `.inspect(service)` -> dict (docker inspect of that container)
    - `.wait_health(service, status, timeout=30)` -> None
    - `.cleanup()`: removes every container of the project (call at teardown).
    Use `unique_name(prefix)` for project names so parallel runs never collide.
- `LocalRegistry(tmp_dir)`: Debian's `docker-registry` on 127.0.0.1:<free port>, filesystem storage.
    - `.push(local_image, repo)` -> "127.0.0.1:<port>/<repo>" (tags and pushes through the engine;
      Docker allows plain HTTP to 127.0.0.0/8 registries by default)
    - `.storage`: the registry's filesystem root (to corrupt it on purpose)
    - `.stop()`
- `ComposeFile(tmp_dir, yaml_text, project=None)`: a real `docker compose` / `docker-compose` project.
    - `.up()` (`up -d`, no pull: use local images such as BUSYBOX and `network_mode: none`)
    - `.down()` (`down -v --remove-orphans`; call at teardown)
    - `compose_cli()` -> the argv prefix found (`["docker", "compose"]` or `["docker-compose"]`)
- `docker(*args, check=True, input=None)` -> CompletedProcess (text) of the docker CLI.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import time
import uuid
from pathlib import Path

import pytest

BUSYBOX = "aibox-test/busybox:1"
BUSYBOX_BIN = Path("/bin/busybox")


def docker(*args: str, check: bool = True, input: bytes | None = None, timeout: float = 120):
    res = subprocess.run(["docker", *args], input=input, capture_output=True, timeout=timeout)
    out = subprocess.CompletedProcess(res.args, res.returncode,
                                      res.stdout.decode(errors="replace"), res.stderr.decode(errors="replace"))
    if check and res.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} failed ({res.returncode}): {out.stderr.strip()}")
    return out


def require_docker() -> None:
    if shutil.which("docker") is None:
        pytest.fail("the docker CLI is not installed; these tests need the real Docker engine", pytrace=False)
    res = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True)
    if res.returncode != 0 or not res.stdout.strip():
        pytest.fail(f"no Docker daemon reachable (docker info: {res.stderr.strip()}); "
                    "these tests need the real Docker engine and never skip", pytrace=False)


def unique_name(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def _rootfs_tar(marker: str | None) -> bytes:
    if not BUSYBOX_BIN.exists():
        pytest.fail("/bin/busybox (Debian busybox-static) is required to build the offline test image")
    applets = subprocess.run([str(BUSYBOX_BIN), "--list"], capture_output=True, text=True, check=True).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("bin", "tmp", "etc", "proc", "sys", "dev"):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        tar.add(str(BUSYBOX_BIN), arcname="bin/busybox")
        for applet in applets:
            if applet == "busybox":
                continue
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type = tarfile.SYMTYPE
            info.linkname = "busybox"
            tar.addfile(info)
        for name, text in (("etc/passwd", "root:x:0:0:root:/:/bin/sh\n"), ("etc/group", "root:x:0:\n"),
                           *((("marker", marker),) if marker else ())):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def busybox_image(tag: str = BUSYBOX, marker: str | None = None) -> str:
    """Builds (once) an image from busybox-static; returns its id."""
    existing = docker("image", "inspect", "--format", "{{.Id}}", tag, check=False)
    if existing.returncode == 0 and marker is None:
        return existing.stdout.strip()
    docker("import", "--change", 'CMD ["/bin/sh"]', "--change", "ENV PATH=/bin",
           "-", tag, input=_rootfs_tar(marker))
    return docker("image", "inspect", "--format", "{{.Id}}", tag).stdout.strip()


class ComposeProject:
    """Containers that look like one docker compose project to anything reading the labels."""

    def __init__(self, name: str | None = None):
        self.name = name or unique_name("aiboxt")

    def container_name(self, service: str) -> str:
        return f"{self.name}-{service}-1"

    def run(self, service: str, script: str, image: str = BUSYBOX, tty: bool = False,
            health_cmd: str | None = None, env: dict[str, str] | None = None) -> str:
        args = ["run", "-d", "--name", self.container_name(service), "--network", "none",
                "--stop-timeout", "1",
                "--label", f"com.docker.compose.project={self.name}",
                "--label", f"com.docker.compose.service={service}",
                "--label", "com.docker.compose.container-number=1",
                "--label", "com.docker.compose.oneoff=False"]
        if tty:
            args.append("-t")
        if health_cmd:
            args += ["--health-cmd", health_cmd, "--health-interval", "1s", "--health-retries", "1",
                     "--health-timeout", "2s"]
        for k, v in (env or {}).items():
            args += ["-e", f"{k}={v}"]
        args += [image, "sh", "-c", script]
        return docker(*args).stdout.strip()

    def inspect(self, service: str) -> dict:
        return json.loads(docker("inspect", self.container_name(service)).stdout)[0]

    def wait_health(self, service: str, status: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            health = (self.inspect(service)["State"].get("Health") or {}).get("Status")
            if health == status:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{service}: health {health!r}, expected {status!r}")
            time.sleep(0.3)

    def cleanup(self) -> None:
        ids = docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={self.name}").stdout.split()
        if ids:
            docker("rm", "-f", *ids, check=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRegistry:
    """A Docker registry (distribution) on loopback with storage in tmp_dir."""

    def __init__(self, tmp_dir: Path):
        exe = shutil.which("docker-registry") or "/usr/bin/docker-registry"
        if not os.path.exists(exe):
            pytest.fail("docker-registry (Debian package docker-registry) is required for the pull test")
        self.port = _free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.storage = storage = tmp_dir / "registry-data"
        storage.mkdir(parents=True, exist_ok=True)
        config = tmp_dir / "registry.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n"
            f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.host}\n"
        )
        self._log = open(tmp_dir / "registry.log", "w")
        self.proc = subprocess.Popen([exe, "serve", str(config)], stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"docker-registry did not start: {(tmp_dir / 'registry.log').read_text()}")
                time.sleep(0.1)

    def push(self, local_image: str, repo: str) -> str:
        ref = f"{self.host}/{repo}"
        docker("tag", local_image, ref)
        docker("push", ref)
        return ref

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()


def compose_cli() -> list[str]:
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail("neither `docker compose` nor `docker-compose` is installed")


class ComposeFile:
    """A compose file in tmp_dir run by the real compose CLI under a unique project name."""

    def __init__(self, tmp_dir: Path, yaml_text: str, project: str | None = None):
        self.name = project or unique_name("aiboxc")
        self.dir = tmp_dir / f"compose-{self.name}"
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "docker-compose.yml").write_text(yaml_text)

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        res = subprocess.run([*compose_cli(), "-p", self.name, "-f", str(self.dir / "docker-compose.yml"), *args],
                             capture_output=True, text=True, cwd=self.dir, timeout=180)
        if res.returncode != 0:
            raise RuntimeError(f"compose {' '.join(args)} failed: {res.stderr.strip()}")
        return res

    def up(self) -> None:
        self._run("up", "-d")

    def down(self) -> None:
        try:
            self._run("down", "-v", "--remove-orphans")
        except RuntimeError:
            ComposeProject(self.name).cleanup()
