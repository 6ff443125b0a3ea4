"""The third-party services as the research in docs/third-party-services.md found them: each image's
user, writable paths, required variables and health check, against the compose model as compose
itself renders it. Static: no Docker engine, no image needed (the images are not pullable here).

The table in the doc and `RESEARCH` below say the same thing; when an image changes, both change.
`deploy/pin-images.sh`'s registry-free mode (`--list`) and its rewrite (`--write`, against a stub
`docker` that answers like `docker buildx imagetools inspect`) are tested here too.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from compose_fixtures import COMPOSE_FILE, ROOT, published_ports, render_config

DOC = ROOT / "docs" / "third-party-services.md"


# service -> what its settings must be, from the image's own files (cited in the doc):
#   user: the uid:gid we run it as; read_only: whether the root filesystem is read-only;
#   writable: container paths that must be a volume or tmpfs (everything it writes);
#   env: variables that must have exactly this value; required: variables that must be set
#   (from .env); health: a word the health check command must contain; port: its UI's
#   container port published on 127.0.0.1 (None: not published).
RESEARCH = {
    "ollama": {
        "user": "65532:65532", "read_only": True,
        "writable": {"/data": "volume", "/tmp": "tmpfs"},
        "env": {"HOME": "/data", "OLLAMA_MODELS": "/data/models", "OLLAMA_HOST": "0.0.0.0:11434"},
        "required": [], "health": "ollama", "port": None,
    },
    "open-webui": {
        "user": "65532:65532", "read_only": True,
        "writable": {"/app/backend/data": "volume", "/tmp": "tmpfs"},
        "env": {"HOME": "/app/backend/data", "DATA_DIR": "/app/backend/data",
                "ENABLE_OPENAI_API": "false", "ENABLE_OLLAMA_API": "true",
                "OLLAMA_BASE_URL": "http://edge:11435", "WEBUI_AUTH": "true"},
        "required": ["WEBUI_SECRET_KEY"], "health": "/health", "port": ("3000", "8080"),
    },
    "n8n": {
        "user": "1000:1000", "read_only": True,
        "writable": {"/home/node/.n8n": "volume", "/home/node/.cache": "tmpfs", "/tmp": "tmpfs"},
        "env": {"N8N_PORT": "5678", "N8N_DIAGNOSTICS_ENABLED": "false"},
        "required": ["AIBOX_EDGE_KEY"], "health": "/healthz", "port": ("5678", "5678"),
    },
    "browser": {
        "user": "65532:65532", "read_only": True,
        "writable": {"/tmp": "tmpfs"},
        "env": {"HOME": "/tmp", "HTTP_PROXY": "http://edge:3128", "HTTPS_PROXY": "http://edge:3128"},
        "required": [], "health": "9222", "port": None,
    },
    "comfyui": {
        "user": "65532:65532", "read_only": True,
        "writable": {"/root": "volume", "/tmp": "tmpfs"},
        "env": {"HOME": "/root", "CLI_ARGS": "--cpu"},
        "required": [], "health": "8188", "port": ("8188", "8188"),
    },
    "openclaw": {
        "user": "1000:1000", "read_only": False,
        "writable": {"/home/node/.openclaw": "volume", "/tmp": "tmpfs"},
        "env": {"HOME": "/home/node", "OPENCLAW_STATE_DIR": "/home/node/.openclaw"},
        "required": ["OPENCLAW_GATEWAY_TOKEN"], "health": "18789", "port": ("6666", "18789"),
    },
}
# Rendered with every secret set, as ./aibox up leaves .env.
SECRETS = {"OPEN_WEBUI_SECRET_KEY": "w" * 32, "N8N_EDGE_KEY": "aibox-" + "1" * 48,
           "OPENCLAW_GATEWAY_TOKEN": "g" * 32}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict:
    return render_config(tmp_path_factory.mktemp("third-party"), env=SECRETS)["services"]


def mounts(service: dict) -> dict[str, str]:
    """Container path -> "volume" (bind or named) or "tmpfs"."""
    out: dict[str, str] = {}
    for v in service.get("volumes") or []:
        if isinstance(v, dict):
            out[v["target"]] = "tmpfs" if v.get("type") == "tmpfs" else "volume"
        else:
            parts = str(v).split(":")
            out[parts[1] if len(parts) > 1 else parts[0]] = "volume"
    tmpfs = service.get("tmpfs") or []
    for t in [tmpfs] if isinstance(tmpfs, str) else tmpfs:
        out[str(t).split(":")[0]] = "tmpfs"
    return out


def health_text(service: dict) -> str:
    return " ".join(str(x) for x in (service.get("healthcheck") or {}).get("test") or [])


@pytest.mark.parametrize("name", sorted(RESEARCH))
def test_service_runs_as_researched(rendered, name):
    want, s = RESEARCH[name], rendered[name]
    env = s.get("environment") or {}
    assert str(s.get("user")) == want["user"], f"{name}: user {s.get('user')}"
    assert bool(s.get("read_only")) is want["read_only"], f"{name}: read_only {s.get('read_only')}"
    got = mounts(s)
    for path, kind in want["writable"].items():
        assert got.get(path) == kind, f"{name}: {path} must be a {kind}, is {got.get(path)} ({got})"
    for key, value in want["env"].items():
        assert str(env.get(key)) == value, f"{name}: {key}={env.get(key)!r}, want {value!r}"
    for key in want["required"]:
        assert env.get(key), f"{name}: {key} is empty"
    assert want["health"] in health_text(s), f"{name}: health check {health_text(s)!r}"
    ports = published_ports(s)
    if want["port"] is None:
        assert not ports, f"{name} publishes {ports}"
    else:
        published, target = want["port"]
        assert ports == [{"host_ip": "127.0.0.1", "published": published, "target": target}], ports


def test_every_exception_says_why_beside_it():
    # A writable root filesystem is an exception to the bundle's rule: the compose file gives the
    # reason in the comment right above `read_only: false`.
    lines = COMPOSE_FILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip() == "read_only: false":
            above = lines[i - 1].strip()
            assert above.startswith("#") and len(above) > 20, f"line {i + 1}: no reason above read_only: false"


def test_comfyui_is_beside_the_gateway_not_behind_it(rendered):
    # Reached from the dashboard (its published loopback port), never through the model gateway:
    # no network with the edge, and the edge does not name it as a provider.
    comfy = rendered["comfyui"]
    nets = set(comfy.get("networks") or {})
    assert nets == {"comfyui"}, nets
    assert "comfyui" not in set(rendered["edge"].get("networks") or {})
    assert "comfyui" not in (ROOT / "deploy" / "edge.toml").read_text()


def test_the_doc_table_covers_every_third_party_service():
    text = DOC.read_text()
    for name in RESEARCH:
        assert re.search(rf"^\| *`?{re.escape(name)}`? *\|", text, re.M), f"{name} missing from the table"
    # Every fact cites the upstream file it comes from.
    for cite in ("open-webui/open-webui", "backend/open_webui/config.py", "n8n-io/n8n", "ollama/ollama",
                 "YanWenKun/ComfyUI-Docker"):
        assert cite in text, cite


def test_open_webui_seed_and_n8n_credentials_are_wired():
    # Open WebUI: the key of its one connection is seeded into a fresh data directory.
    compose_sh = (ROOT / "deploy" / "compose.sh").read_text()
    assert '"api_configs": {"0": {"enable": true, "key"' in compose_sh
    # n8n: the example credentials hold no key, only the placeholder the import fills in.
    creds = (ROOT / "data" / "n8n" / "aibox-credentials.example.json").read_text()
    import json
    entries = json.loads(creds)
    assert {e["type"] for e in entries} == {"openAiApi", "ollamaApi"}
    for e in entries:
        assert "aibox-" not in json.dumps(e), "a real key in the committed example"
        assert "AIBOX_N8N_EDGE_KEY" in json.dumps(e["data"])
        assert "model-gateway:11435" in json.dumps(e["data"])


# ---------- deploy/pin-images.sh ----------

PIN = ROOT / "deploy" / "pin-images.sh"
REF = re.compile(r"^[a-z0-9./_-]+(:[\w.-]+)?(@sha256:[0-9a-f]{64})?$")


def test_pin_images_lists_every_third_party_image_without_a_registry():
    p = subprocess.run([str(PIN), "--list"], capture_output=True, text=True, timeout=30,
                       env={"PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stderr
    refs = p.stdout.split()
    for ref in refs:
        assert REF.match(ref), f"unparsable reference {ref!r}"
    names = {r.split("@")[0].rsplit(":", 1)[0] if ":" in r.split("@")[0].split("/")[-1] else r.split("@")[0]
             for r in refs}
    for image in ("ollama/ollama", "ghcr.io/open-webui/open-webui", "n8nio/n8n", "chromedp/headless-shell",
                  "yanwk/comfyui-boot", "ghcr.io/openclaw/openclaw"):
        assert image in names, f"{image} not found by pin-images.sh --list: {refs}"


def test_pin_images_write_rewrites_each_reference_to_its_digest(tmp_path):
    # A copy of the bundle's files, and a stub `docker` that answers like a registry would.
    (tmp_path / "deploy").mkdir()
    shutil.copy2(PIN, tmp_path / "deploy" / "pin-images.sh")
    for f in ("docker-compose.yml", "deploy/compose.gpu-nvidia.yml", "deploy/compose.gpu-amd.yml"):
        shutil.copy2(ROOT / f, tmp_path / f)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "docker"
    stub.write_text('#!/bin/sh\n'
                    'case "$1 $2" in\n'
                    '  "buildx version") echo "github.com/docker/buildx v0.0.0-stub"; exit 0 ;;\n'
                    '  "buildx imagetools") printf \'"sha256:%s"\\n\' '
                    '"$(printf %s "$4" | sha256sum | cut -c1-64)"; exit 0 ;;\n'
                    'esac\nexit 1\n')
    stub.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    p = subprocess.run([str(tmp_path / "deploy" / "pin-images.sh"), "--write"], capture_output=True,
                       text=True, timeout=60, env=env)
    assert p.returncode == 0, p.stderr
    after = subprocess.run([str(tmp_path / "deploy" / "pin-images.sh"), "--list"], capture_output=True,
                           text=True, timeout=30, env=env).stdout.split()
    assert after, "nothing listed after --write"
    for ref in after:
        m = re.fullmatch(r"(?P<tag>[a-z0-9./_-]+:[\w.-]+)@(?P<digest>sha256:[0-9a-f]{64})", ref)
        assert m, f"not name:tag@sha256 after --write: {ref}"
        import hashlib
        assert m["digest"] == "sha256:" + hashlib.sha256(m["tag"].encode()).hexdigest(), ref
    # The rest of the file is untouched, and compose still renders it.
    before = (ROOT / "docker-compose.yml").read_text().splitlines()
    now = (tmp_path / "docker-compose.yml").read_text().splitlines()
    assert len(before) == len(now)
    assert [a for a, b in zip(before, now) if a != b and "_IMAGE:-" not in a] == []
    if shutil.which("docker") and os.access(shutil.which("docker"), os.X_OK):
        render_config(tmp_path, files=[tmp_path / "docker-compose.yml"])


# ---------- ./aibox n8n-credentials ----------

def test_n8n_credentials_import_fills_the_key_only_inside_the_container(tmp_path):
    """The one-step import, with stubs for `docker` and the compose CLI: the command asks compose
    for n8n's health, then pipes the credentials with n8n's key filled in to `n8n
    import:credentials` inside the container, whose temporary file is gone afterwards."""
    key = "aibox-" + "7" * 48
    env_file = tmp_path / "aibox.env"
    env_file.write_text(f"N8N_EDGE_KEY={key}\n")
    env_file.chmod(0o600)
    bin_dir, container_tmp, seen = tmp_path / "bin", tmp_path / "container-tmp", tmp_path / "imported.json"
    bin_dir.mkdir()
    container_tmp.mkdir()
    (bin_dir / "docker").write_text(
        '#!/bin/sh\ncase "$1" in\n'
        '  info) exit 0 ;;\n'
        '  inspect) echo running/healthy; exit 0 ;;\n'
        'esac\nexit 1\n')
    # The compose CLI: `ps -q n8n` names a container; `exec -T n8n sh -c SCRIPT` runs SCRIPT here,
    # with the container's /tmp a directory of the test and a stub `n8n` that keeps what it read.
    (bin_dir / "compose-stub").write_text(
        '#!/bin/bash\n'
        'while [ $# -gt 0 ] && [ "$1" != ps ] && [ "$1" != exec ]; do shift; done\n'
        'case "$1" in\n'
        '  ps) echo c0ffee ;;\n'
        f'  exec) script=${{@: -1}}; PATH="{bin_dir}/n8n-bin:$PATH" exec sh -c "${{script//\\/tmp\\//{container_tmp}/}}" ;;\n'
        'esac\n')
    (bin_dir / "n8n-bin").mkdir()
    (bin_dir / "n8n-bin" / "n8n").write_text(
        f'#!/bin/sh\n[ "$1" = import:credentials ] || exit 3\ncp "${{2#--input=}}" {seen}\n'
        'echo "Successfully imported 2 credentials."\n')
    for f in (bin_dir / "docker", bin_dir / "compose-stub", bin_dir / "n8n-bin" / "n8n"):
        f.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "AIBOX_ENV_FILE": str(env_file),
           "AIBOX_COMPOSE": str(bin_dir / "compose-stub"), "AIBOX_GPU": "none",
           "AIBOX_DATA_DIR": str(tmp_path / "data"), "COMPOSE_PROJECT_NAME": "aiboxn8ntest"}
    p = subprocess.run([str(ROOT / "aibox"), "n8n-credentials"], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "imported the credentials" in p.stderr
    assert key not in p.stdout + p.stderr, "the key was printed"
    import json
    imported = json.loads(seen.read_text())
    assert [c["data"].get("apiKey") for c in imported] == [key, key]
    assert "AIBOX_N8N_EDGE_KEY" not in seen.read_text()
    assert list(container_tmp.iterdir()) == [], "the filled-in file was left in the container's /tmp"
