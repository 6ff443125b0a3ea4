"""Fixtures of the compose bundle tests: the compose CLI of this machine, the rendered config, and a
core stack brought up by the real bring-up command (deploy/compose.sh) under a unique project name.

Everything the live stack makes (containers, networks, images, the env file, data/) carries the
test's unique name, and `CoreStack.down()` removes it; `leftovers()` says what is still there.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
UI_PORTS_FILE = ROOT / "deploy" / "compose.ui-ports.yml"
OLLAMA_DIRECT_FILE = ROOT / "deploy" / "compose.ollama-direct.yml"
DEBUG_BIN = ROOT / "target" / "debug"
CORE = ("edge", "controller", "dashboard")
# Secrets the static render needs (the compose file refuses to render without them).
DUMMY_SECRETS = {
    "OPS_CONTROLLER_TOKEN": "t" * 40,
    "AIBOX_ADMIN_TOKEN": "a" * 40,
    "DASHBOARD_PASSWORD": "p" * 16,
}


def run(args: list[str], env: dict[str, str] | None = None, timeout: float = 300,
        check: bool = True) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env.update(env or {})
    p = subprocess.run(args, env=full_env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p


def require_docker() -> None:
    """Fail loudly (never skip) when the engine is missing: these tests are the bundle's proof."""
    if shutil.which("docker") is None:
        pytest.fail("docker is not installed: the compose tests need the Docker engine", pytrace=False)
    p = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        pytest.fail(f"the Docker engine is not reachable: {p.stderr.strip()}", pytrace=False)


def compose_command() -> list[str]:
    """`docker compose` (v2) when the plugin is there, else Debian's `docker-compose`."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail("neither `docker compose` nor `docker-compose` is installed", pytrace=False)


def render_config(tmp_path: Path, files: list[Path] | None = None, env: dict[str, str] | None = None) -> dict:
    """The compose model as compose itself resolves it (interpolation, anchors, merges), with every
    profile active. v2 renders JSON; v1 (Debian's docker-compose 1.29) renders YAML."""
    cmd = compose_command()
    env_file = tmp_path / "render.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in DUMMY_SECRETS.items()))
    args = [*cmd, "--env-file", str(env_file), "-p", "aiboxrender"]
    for f in files or [COMPOSE_FILE]:
        args += ["-f", str(f)]
    # A clean environment for interpolation: only what the test sets, so the host's .env and
    # shell do not change what is asserted.
    full_env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "DOCKER_HOST", "LANG")}
    full_env.update({"COMPOSE_PROFILES": "full", **(env or {})})
    if cmd == ["docker", "compose"]:
        p = subprocess.run([*args, "config", "--format", "json"], env=full_env, cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)
    p = subprocess.run([*args, "config"], env=full_env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return yaml.safe_load(p.stdout)


_PORT_SHORT = re.compile(r"^(?:(?P<ip>\[[^\]]+\]|[^:]+):)?(?:(?P<published>[^:]*):)?(?P<target>[^:]+)$")


def published_ports(service: dict) -> list[dict]:
    """Ports as {host_ip, published, target}, from v2's long form or v1's short strings."""
    out = []
    for p in service.get("ports") or []:
        if isinstance(p, dict):
            out.append({"host_ip": p.get("host_ip", ""), "published": str(p.get("published", "")),
                        "target": str(p.get("target", ""))})
        else:
            m = _PORT_SHORT.match(str(p).split("/")[0])
            assert m, f"unparsable port {p!r}"
            ip, published = m.group("ip") or "", m.group("published") or ""
            if not published and ip:  # "HOST:CONTAINER" has no ip
                ip, published = "", ip
            out.append({"host_ip": ip, "published": published, "target": m.group("target")})
    return out


def bind_sources(service: dict) -> list[str]:
    out = []
    for v in service.get("volumes") or []:
        if isinstance(v, dict):
            out.append(str(v.get("source", "")))
        else:
            out.append(str(v).split(":")[0])
    return out


def image_size(ref: str) -> int:
    return int(run(["docker", "image", "inspect", "-f", "{{.Size}}", ref]).stdout.strip())


FAKE_DOCKERFILE = """\
FROM {base}
COPY fake-upstream /usr/local/bin/fake-upstream
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/fake-upstream"]
"""

FAKE_OVERRIDE = """\
# Test-only: a fake Ollama (tests/testkit) on the models network under the name `ollama`.
services:
  fake-ollama:
    image: {image}
    command: ["--kind", "ollama", "--listen", "0.0.0.0:11434"]
    user: "65532:65532"
    read_only: true
    cap_drop: [ALL]
    security_opt: ["no-new-privileges:true"]
    mem_limit: 128m
    pids_limit: 64
    logging:
      driver: json-file
      options: {{max-size: "10m", max-file: "3"}}
    networks:
      models:
        aliases: [ollama]
    healthcheck:
      test: ["CMD", "/bin/busybox", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:11434/api/tags"]
      interval: 2s
      timeout: 3s
      retries: 3
"""


def run_subnet(seed: int) -> str:
    """A /24 for one test run's `front` network, inside 10.214.0.0-10.253.255.0 (away from the bundle's
    default 10.213.0.0/24), so parallel runs on one engine do not ask for the same subnet."""
    return f"10.{214 + seed % 40}.{(seed >> 8) % 256}.0/24"


class CoreStack:
    """The core of the bundle (plus a fake Ollama) under a unique project, built from target/debug."""

    def __init__(self, workdir: Path, port: int):
        self.id = uuid.uuid4().hex[:8]
        self.front_subnet = run_subnet(int(self.id, 16))
        self.project = f"aiboxtest{self.id}"
        self.prefix = f"aiboxtest{self.id}"
        self.tag = "ci"
        self.port = port
        self.workdir = workdir
        self.env_file = workdir / "aibox.env"
        self.data_dir = workdir / "data"
        self.override = workdir / "fake-ollama.yml"
        self.fake_image = f"{self.prefix}-fake-ollama:{self.tag}"
        self.up_output = ""
        self.up_seconds = 0.0

    @property
    def env(self) -> dict[str, str]:
        return {
            "AIBOX_ENV_FILE": str(self.env_file),
            "AIBOX_DATA_DIR": str(self.data_dir),
            "COMPOSE_PROJECT_NAME": self.project,
            "AIBOX_PORT": str(self.port),
            "AIBOX_PROFILE": "debug",
            "AIBOX_CARGO_BUILD": "0",
            "AIBOX_TAG": self.tag,
            "AIBOX_IMAGE_PREFIX": self.prefix,
            "AIBOX_COMPOSE_OVERRIDES": str(self.override),
            "AIBOX_UP_TIMEOUT": "90",
            "AIBOX_PROFILES": "",
            "AIBOX_FRONT_SUBNET": self.front_subnet,
        }

    def image(self, service: str) -> str:
        return f"{self.prefix}-{service}:{self.tag}"

    def build_images(self) -> None:
        missing = [b for b in (*CORE, "fake-upstream") if not (DEBUG_BIN / b).exists()]
        if missing:
            pytest.fail(f"missing target/debug/{', '.join(missing)}: run "
                        "`cargo build -p edge -p controller -p dashboard -p aibox-testkit --bins`", pytrace=False)
        run(["deploy/build-images.sh"], env=self.env, timeout=240)
        ctx = self.workdir / "fake-ctx"
        ctx.mkdir()
        if shutil.which("objcopy"):
            subprocess.run(["objcopy", "--strip-all", str(DEBUG_BIN / "fake-upstream"), str(ctx / "fake-upstream")],
                           check=True)
        else:
            shutil.copy2(DEBUG_BIN / "fake-upstream", ctx / "fake-upstream")
        (ctx / "Dockerfile").write_text(FAKE_DOCKERFILE.format(base=self.image("edge")))
        run(["docker", "build", "-q", "-t", self.fake_image, str(ctx)], env={"DOCKER_BUILDKIT": "0"}, timeout=120)
        self.override.write_text(FAKE_OVERRIDE.format(image=self.fake_image))

    def up(self) -> None:
        # A committed example in data/, as in the repository: it must stay the user's.
        (self.data_dir / "mcp").mkdir(parents=True, exist_ok=True)
        (self.data_dir / "mcp" / "registry.example.json").write_text('{"servers": {}}\n')
        # Another run (or anything else on this engine) may hold the subnet: take another one. Output
        # accumulates over attempts: the dashboard password is shown only by the first.
        for _ in range(5):
            t0 = time.monotonic()
            p = run(["deploy/compose.sh", "up", "--no-build"], env=self.env, timeout=150, check=False)
            self.up_seconds = time.monotonic() - t0
            self.up_output += p.stdout + p.stderr
            if p.returncode == 0 or "Pool overlaps" not in p.stdout + p.stderr:
                break
            self.front_subnet = run_subnet(random.getrandbits(32))
        if p.returncode != 0:
            logs = run(["docker", "ps", "-a", "--filter", f"label=com.docker.compose.project={self.project}"],
                       check=False).stdout
            raise AssertionError(f"./aibox up failed ({p.returncode}):\n{self.up_output}\n{logs}")

    def container(self, service: str) -> dict:
        ids = run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={self.project}",
                   "--filter", f"label=com.docker.compose.service={service}"]).stdout.split()
        assert len(ids) == 1, f"{service}: containers {ids}"
        return json.loads(run(["docker", "inspect", ids[0]]).stdout)[0]

    def secret(self, key: str) -> str:
        for line in self.env_file.read_text().splitlines():
            if line.startswith(key + "="):
                return line.split("=", 1)[1].strip("'\"")
        raise KeyError(key)

    @property
    def dashboard_password(self) -> str:
        """The one secret that is not in the env file (only its argon2id hash is): `./aibox up`
        shows it once."""
        m = re.search(r"dashboard password: (\S+) \(shown once", self.up_output)
        assert m, f"./aibox up did not show the dashboard password:\n{self.up_output}"
        return m.group(1)

    def down(self) -> None:
        run(["deploy/compose.sh", "down"], env=self.env, timeout=120, check=False)
        # The containers wrote data/ as uid 65532; hand it back so pytest can delete tmp_path.
        if self.data_dir.exists() and os.geteuid() != 0:
            run(["docker", "run", "--rm", "--network", "none", "--user", "0:0", "-v", f"{self.data_dir}:/mnt",
                 "--entrypoint", "/bin/busybox", self.image("edge"), "chown", "-R",
                 f"{os.geteuid()}:{os.getegid()}", "/mnt"], check=False)
        # By name, children first (the fake Ollama is built FROM the edge image), so each `rmi`
        # also drops the untagged build stages under it.
        names = run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}", "--filter",
                     f"reference={self.prefix}-*"], check=False).stdout.split()
        names.sort(key=lambda n: n != self.fake_image)
        for name in names:
            run(["docker", "rmi", name], check=False)

    def leftovers(self) -> dict[str, list[str]]:
        label = f"label=com.docker.compose.project={self.project}"
        return {
            "containers": run(["docker", "ps", "-aq", "--filter", label]).stdout.split(),
            "networks": run(["docker", "network", "ls", "-q", "--filter", label]).stdout.split(),
            "volumes": run(["docker", "volume", "ls", "-q", "--filter", label]).stdout.split(),
            "images": run(["docker", "images", "-q", "--filter", f"reference={self.prefix}-*"]).stdout.split(),
        }
