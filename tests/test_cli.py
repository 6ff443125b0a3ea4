"""The everyday CLI without a running box: `./aibox doctor` when the Docker engine does not answer,
when .env is missing or readable by others, and when another program holds the edge's port;
`./aibox logs` and `./aibox audit verify` argument errors and the verifier on a host binary.
(On a running box, tests/test_compose.py checks a clean doctor report, logs and audit verify.)
"""
from __future__ import annotations

import os
import socket
import subprocess
import uuid
from pathlib import Path

import pytest

from compose_fixtures import DEBUG_BIN, ROOT
from conftest import free_port

SECRETS = {"OPS_CONTROLLER_TOKEN": "c" * 64, "AIBOX_ADMIN_TOKEN": "d" * 64, "DASHBOARD_PASSWORD": "e" * 24}


def write_env(path: Path, mode: int = 0o600, secrets: dict[str, str] | None = None) -> Path:
    path.write_text("".join(f"{k}={v}\n" for k, v in (SECRETS if secrets is None else secrets).items()))
    path.chmod(mode)
    return path


def aibox(args: list[str], tmp_path: Path, env_file: Path, extra: dict[str, str] | None = None,
          timeout: float = 120) -> subprocess.CompletedProcess:
    """`./aibox ...` against a box of its own: unique project and image prefix, its own data dir,
    env file and a free port, so nothing of this host's real box (or another test's) is seen."""
    name = f"aiboxcli{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "DOCKER_HOST")}
    env.update({"AIBOX_ENV_FILE": str(env_file), "AIBOX_DATA_DIR": str(tmp_path / "data"),
                "COMPOSE_PROJECT_NAME": name, "AIBOX_IMAGE_PREFIX": name, "AIBOX_PORT": str(free_port()),
                "AIBOX_GPU": "none"})
    env.update(extra or {})
    return subprocess.run([str(ROOT / "aibox"), *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def lines(out: str, level: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(level + " ")]


def advice_after(out: str, needle: str) -> str:
    """The `-> ...` line under the first result line containing needle."""
    rows = out.splitlines()
    for i, line in enumerate(rows):
        if needle in line:
            assert i + 1 < len(rows) and rows[i + 1].strip().startswith("->"), f"no advice under {line!r}"
            return rows[i + 1].strip()
    raise AssertionError(f"{needle!r} not in:\n{out}")


def assert_no_secret(out: str) -> None:
    for v in SECRETS.values():
        assert v not in out, "a secret was printed"


def test_doctor_with_docker_unreachable_says_what_to_do(tmp_path):
    dead = tmp_path / "dead.sock"
    env_file = write_env(tmp_path / "aibox.env")
    p = aibox(["doctor"], tmp_path, env_file, {"DOCKER_HOST": f"unix://{dead}"}, timeout=60)
    out = p.stdout
    assert p.returncode == 1, out + p.stderr
    assert any("Docker engine does not answer" in line for line in lines(out, "FAIL")), out
    advice = advice_after(out, "Docker engine does not answer")
    assert "sudo systemctl start docker" in advice and f"DOCKER_HOST=unix://{dead}" in advice
    # The checks that need no engine still ran and passed ...
    ok = "\n".join(lines(out, "ok"))
    assert f"{env_file} exists, mode 0600" in ok
    assert "disk:" in ok and "GPU: none" in ok and "is free" in ok
    # ... and those that do say so instead of failing one by one.
    assert any("images, drift and service health" in line for line in lines(out, "skip")), out
    assert "the edge does not answer" in out
    assert "problem(s)" in out.splitlines()[-1]
    assert_no_secret(out + p.stderr)


def test_doctor_without_env_file(tmp_path):
    missing = tmp_path / "no.env"
    p = aibox(["doctor"], tmp_path, missing)
    assert p.returncode == 1, p.stdout + p.stderr
    assert f"FAIL  {missing} does not exist" in p.stdout
    assert "run ./aibox up" in advice_after(p.stdout, f"{missing} does not exist")
    assert not missing.exists(), "doctor only looks; it must not create .env"


def test_doctor_with_env_file_readable_by_others(tmp_path):
    env_file = write_env(tmp_path / "aibox.env", mode=0o644)
    p = aibox(["doctor"], tmp_path, env_file)
    assert p.returncode == 1, p.stdout + p.stderr
    assert f"FAIL  {env_file} has mode 644" in p.stdout
    assert advice_after(p.stdout, "has mode 644") == f"-> chmod 600 {env_file}"
    assert oct(env_file.stat().st_mode & 0o777) == "0o644", "doctor only looks; it must not chmod"
    assert_no_secret(p.stdout + p.stderr)


def test_doctor_names_missing_secrets(tmp_path):
    env_file = write_env(tmp_path / "aibox.env", secrets={"OPS_CONTROLLER_TOKEN": "c" * 64})
    p = aibox(["doctor"], tmp_path, env_file, {"DOCKER_HOST": f"unix://{tmp_path}/dead.sock"}, timeout=60)
    assert p.returncode == 1
    assert "secrets missing from" in p.stdout and "AIBOX_ADMIN_TOKEN DASHBOARD_PASSWORD_HASH" in p.stdout


def test_doctor_reports_a_port_taken_by_another_program(tmp_path):
    env_file = write_env(tmp_path / "aibox.env")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        p = aibox(["doctor"], tmp_path, env_file, {"AIBOX_PORT": str(port)})
    assert p.returncode == 1
    assert f"FAIL  port 127.0.0.1:{port} (AIBOX_PORT) is taken by another program" in p.stdout
    assert "set AIBOX_PORT to a free port" in advice_after(p.stdout, "is taken by another program")


def test_doctor_reports_a_bad_gpu_setting(tmp_path):
    env_file = write_env(tmp_path / "aibox.env")
    p = aibox(["doctor"], tmp_path, env_file, {"AIBOX_GPU": "cuda"})
    assert p.returncode == 1
    assert "FAIL  GPU: AIBOX_GPU must be auto, nvidia, amd or none (got 'cuda')" in p.stdout


def test_cli_rejects_bad_arguments(tmp_path):
    env_file = write_env(tmp_path / "aibox.env")
    p = aibox(["logs", "--bogus"], tmp_path, env_file)
    assert p.returncode != 0 and "logs: unknown option --bogus" in p.stderr
    p = aibox(["audit"], tmp_path, env_file)
    assert p.returncode != 0 and "usage: ./aibox audit verify" in p.stderr
    p = aibox(["doctor", "--fix"], tmp_path, env_file)
    assert p.returncode != 0 and "doctor: no arguments expected" in p.stderr


def test_audit_verify_runs_the_host_binary_without_docker(tmp_path):
    if not (DEBUG_BIN / "controller").exists():
        pytest.fail("missing target/debug/controller: run `cargo build --workspace --bins`", pytrace=False)
    env_file = write_env(tmp_path / "aibox.env")
    audit = tmp_path / "data" / "ops-controller"
    audit.mkdir(parents=True)
    p = aibox(["audit", "verify"], tmp_path, env_file, {"DOCKER_HOST": f"unix://{tmp_path}/dead.sock"}, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "ok: 0 events" in p.stdout
    assert "/controller" in p.stderr and str(audit) in p.stderr
    # A broken log is reported with the verifier's own words and exit status.
    (audit / "audit.log").write_text('{"seq": 7, "not": "an event"}\n')
    p = aibox(["audit", "verify"], tmp_path, env_file, {"DOCKER_HOST": f"unix://{tmp_path}/dead.sock"}, timeout=60)
    assert p.returncode != 0, p.stdout + p.stderr
    assert_no_secret(p.stdout + p.stderr)


# ---------- `./aibox up` without a Rust toolchain: the from-source Dockerfile build ----------

STUB_DOCKER = """#!/bin/sh
# A stub engine that records every call; `inspect` says every container is healthy.
echo "docker $*" >> "{log}"
case "$1" in
  buildx) [ "{buildx}" = yes ] ;;
  inspect) echo running/healthy ;;
  run) case "$*" in *hash-password*) cat >/dev/null; echo '$argon2id$v=19$m=19456,t=2,p=1$c3R1Yg$c3R1Yg' ;; esac ;;
  *) exit 0 ;;
esac
"""
STUB_COMPOSE = """#!/bin/sh
echo "compose $*" >> "{log}"
case " $* " in *" ps -q "*) echo 0123456789ab ;; esac
"""


def up_without_cargo(tmp_path: Path, buildx: bool) -> tuple[subprocess.CompletedProcess, list[str]]:
    """`./aibox up` with PATH holding no cargo, a stub docker and a recording compose."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    for name, script in (("docker", STUB_DOCKER.format(log=log, buildx="yes" if buildx else "no")),
                         ("compose", STUB_COMPOSE.format(log=log))):
        (bin_dir / name).write_text(script)
        (bin_dir / name).chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "AIBOX_ENV_FILE": str(tmp_path / "aibox.env"),
           "AIBOX_DATA_DIR": str(tmp_path / "data"), "COMPOSE_PROJECT_NAME": "aiboxclistub",
           "AIBOX_IMAGE_PREFIX": "aiboxclistub", "AIBOX_COMPOSE": str(bin_dir / "compose"), "AIBOX_GPU": "none",
           "DOCKER_SOCKET": str(tmp_path / "no.sock"), "AIBOX_UP_TIMEOUT": "5"}
    p = subprocess.run([str(ROOT / "aibox"), "up"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    return p, log.read_text().splitlines() if log.exists() else []


def test_up_without_a_rust_toolchain_builds_from_the_dockerfile(tmp_path):
    p, calls = up_without_cargo(tmp_path, buildx=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "building the images from source in Docker" in p.stderr
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    builds = [c for c in calls if c.startswith("docker build ")]
    assert len(builds) == 3, calls
    for b, call in zip(("edge", "controller", "dashboard"), builds):
        assert f"--target {b} -t aiboxclistub-{b}:" in call
        assert f"org.opencontainers.image.revision={head}" in call
        assert call.endswith(f"-f {ROOT}/Dockerfile {ROOT}")
    # No host build ran, and compose starts what was built without building again.
    assert not any("build-images" in c for c in calls)
    ups = [c for c in calls if c.startswith("compose ") and " up " in c]
    assert ups and "--no-build" in ups[0]


def test_up_without_a_rust_toolchain_or_buildkit_says_what_to_install(tmp_path):
    p, calls = up_without_cargo(tmp_path, buildx=False)
    assert p.returncode != 0
    # The prerequisite check names both ways out before anything is built or written.
    assert "missing prerequisites" in p.stderr and "docker-buildx-plugin" in p.stderr and "sh.rustup.rs" in p.stderr
    assert not any(c.startswith("docker build ") for c in calls)
