"""Open WebUI under the bundle's exact settings (issue 17): the heavy test, `./aibox test --heavy`.

Open WebUI's image cannot be pulled here, but Open WebUI is on PyPI. So: the PyPI package at the
version docker-compose.yml pins (`open-webui==0.6.38` for `open-webui:v0.6.38`) goes into a venv
of Debian's python3.11 (AIBOX_HEAVY_DIR, default .heavy/; about 7 GB the first time, reused after),
and an image is built offline from it like the bundle's own images: `FROM scratch` with Debian's
python3.11, its standard library, the libraries ldd names, curl (the compose health check runs
it) and the venv (without the CUDA wheels: the upstream image ships the CPU build of torch too).
Its layout is the upstream image's where the compose file depends on it: data in
/app/backend/data, working directory /app/backend.

Then the real `./aibox up` (deploy/compose.sh, as every live test) brings up the core, a fake
Ollama behind the edge and the `webui` profile with OPEN_WEBUI_IMAGE set to that image, so Open
WebUI runs with docker-compose.yml's own settings for it: user 65532, read-only root, the /tmp
tmpfs, data/open-webui owned by 65532 and seeded with its key by `up`, no capabilities. The test
proves that it becomes healthy, that its first user signs up through its API, that it lists the
edge's models once each, that a chat goes through the edge (counted against the `open-webui`
client), and that a pull gets the edge's admin-key refusal (docs/third-party-services.md).

NETWORK RULE: Open WebUI phones home (Hugging Face for its embedding model, version checks). A
test override makes the `front` network internal, so its only peers are the edge and the test;
the test reaches it at its address on that network, which this test's compose project made.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from compose_fixtures import COMPOSE_FILE, ROOT, CoreStack, require_docker, run
from conftest import free_port

pytestmark = pytest.mark.skipif(
    os.environ.get("AIBOX_HEAVY") != "1",
    reason="heavy (a 7 GB PyPI install and a 3 GB image): run it with ./aibox test --heavy")

HEAVY_DIR = Path(os.environ.get("AIBOX_HEAVY_DIR", ROOT / ".heavy"))
PY = Path("/usr/bin/python3.11")
# The CUDA wheels (3 GB, `nvidia`, `triton`) are not needed on the CPU; the upstream image installs
# torch's CPU build for the same reason. pip and friends are not needed at run time.
SKIP_SITE = {"nvidia", "triton", "pip", "setuptools", "_distutils_hack"}
SKIP_STDLIB = {"test", "idlelib", "tkinter", "ensurepip", "lib2to3", "turtledemo", "pydoc_data"}
DOCKERFILE = """\
FROM scratch
COPY rootfs/ /
ENV PYTHONPATH=/app/venv PYTHONDONTWRITEBYTECODE=1 PATH=/usr/bin:/bin LANG=C.UTF-8 \\
    ENV=prod PORT=8080 SCARF_NO_ANALYTICS=true DO_NOT_TRACK=true ANONYMIZED_TELEMETRY=false
WORKDIR /app/backend
EXPOSE 8080
ENTRYPOINT ["/usr/bin/python3.11", "-c", "import sys; from open_webui import app; sys.argv[0] = 'open-webui'; sys.exit(app())"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
"""
HEAVY_OVERRIDE = """\
# Test-only (tests/test_open_webui_heavy.py): Open WebUI may phone home, so `front` is internal.
networks:
  front:
    internal: true
"""


def pinned_version() -> str:
    m = re.search(r"OPEN_WEBUI_IMAGE:-ghcr\.io/open-webui/open-webui:v([\d.]+)", COMPOSE_FILE.read_text())
    assert m, "docker-compose.yml pins no Open WebUI version"
    return os.environ.get("OPEN_WEBUI_VERSION", m.group(1))


def ensure_venv(version: str) -> Path:
    """The PyPI package in a venv of Debian's python3.11, kept across runs (stamped by version)."""
    if not PY.exists():
        pytest.fail("Debian's python3.11 is needed: apt-get install -y python3 python3-venv", pytrace=False)
    venv = HEAVY_DIR / "venv"
    stamp = venv / f".open-webui-{version}"
    if stamp.exists():
        return venv
    HEAVY_DIR.mkdir(parents=True, exist_ok=True)
    if venv.exists():
        shutil.rmtree(venv)
    subprocess.run([str(PY), "-m", "venv", str(venv)], check=True)
    t0 = time.monotonic()
    print(f"installing open-webui=={version} from PyPI into {venv} (about 7 GB)", file=sys.stderr)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--cache-dir", str(HEAVY_DIR / "pip-cache"),
                    f"open-webui=={version}"], check=True, timeout=3600)
    print(f"installed in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    stamp.touch()
    return venv


def ldd_libs(paths) -> set[str]:
    libs: set[str] = set()
    paths = [str(p) for p in paths]
    # ldd takes many files at once; in chunks, so the command line stays short.
    for i in range(0, len(paths), 200):
        out = subprocess.run(["ldd", *paths[i:i + 200]], capture_output=True, text=True).stdout
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[1] == "=>" and parts[2].startswith("/"):
                libs.add(parts[2])
            elif parts and parts[0].startswith("/") and not parts[0].endswith(":"):
                libs.add(parts[0])
    return libs


def build_image(venv: Path, ctx: Path, tag: str) -> float:
    """The offline image; returns the seconds it took. The venv's files are hard-linked into the
    build context (same file system), so only `docker build` copies them."""
    t0 = time.monotonic()
    root = ctx / "rootfs"
    site = venv / "lib" / "python3.11" / "site-packages"
    stdlib = Path("/usr/lib/python3.11")

    def link(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(stdlib, root / "usr/lib/python3.11", symlinks=False, copy_function=link,
                    ignore=lambda d, names: [n for n in names if (d == str(stdlib) and n in SKIP_STDLIB)
                                             or n in ("__pycache__", "site-packages", "dist-packages")])
    shutil.copytree(site, root / "app/venv", symlinks=True, copy_function=link,
                    ignore=lambda d, names: [n for n in names if (d == str(site) and (
                        n.split("-")[0].split(".")[0] in SKIP_SITE or n.startswith("nvidia_")))
                        or n == "__pycache__"])
    (root / "usr/bin").mkdir(parents=True)
    shutil.copy2(PY, root / "usr/bin/python3.11")
    curl = Path(shutil.which("curl") or "/usr/bin/curl")
    shutil.copy2(curl, root / "usr/bin/curl")
    objects = [PY, curl, *(stdlib / "lib-dynload").glob("*.so"), *(root / "app/venv").rglob("*.so*")]
    for lib in ldd_libs([o for o in objects if o.is_file()]):
        if str(root) in lib or "/site-packages/" in lib:
            continue  # a wheel's own bundled library, already in the venv
        dest = root / lib.lstrip("/")
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(os.path.realpath(lib), dest)
    for etc in ("/etc/ssl/certs/ca-certificates.crt", "/etc/mime.types"):
        if Path(etc).exists():
            (root / etc.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(etc, root / etc.lstrip("/"))
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/sbin/nologin\n"
                                     "nonroot:x:65532:65532::/app/backend/data:/sbin/nologin\n")
    (root / "etc/group").write_text("root:x:0:\nnonroot:x:65532:\n")
    (root / "etc/nsswitch.conf").write_text("hosts: files dns\n")
    for d in ("tmp", "app/backend/data", "root"):
        (root / d).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    run(["docker", "build", "-q", "-t", tag, str(ctx)], env={"DOCKER_BUILDKIT": "0"}, timeout=1800)
    shutil.rmtree(root)
    return time.monotonic() - t0


class WebUIStack(CoreStack):
    """The core, the fake Ollama and the `webui` profile on the image built from PyPI."""

    def __init__(self, workdir: Path, port: int):
        super().__init__(workdir, port)
        self.webui_image = f"{self.prefix}-open-webui:{self.tag}"
        self.heavy_override = workdir / "heavy.yml"

    @property
    def env(self) -> dict[str, str]:
        env = super().env
        env.update({
            "AIBOX_PROFILES": "webui",
            "OPEN_WEBUI_IMAGE": self.webui_image,
            "AIBOX_COMPOSE_OVERRIDES": f"{self.override}:{self.heavy_override}",
            "AIBOX_UP_TIMEOUT": "180",
        })
        return env

    def address(self, service: str, network: str = "front") -> str:
        nets = self.container(service)["NetworkSettings"]["Networks"]
        return next(v["IPAddress"] for k, v in nets.items() if k.endswith(f"_{network}"))

    def wait_healthy(self, service: str, timeout: float) -> float:
        t0 = time.monotonic()
        state = {}
        while time.monotonic() - t0 < timeout:
            state = self.container(service)["State"]
            health = (state.get("Health") or {}).get("Status")
            if health == "healthy":
                return time.monotonic() - t0
            if state.get("Status") in ("exited", "dead"):
                break
            time.sleep(3)
        logs = run(["docker", "logs", "--tail", "80", self.container(service)["Id"]], check=False)
        raise AssertionError(f"{service} not healthy ({state.get('Status')}, "
                             f"{(state.get('Health') or {}).get('Status')}):\n{logs.stdout}\n{logs.stderr}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    require_docker()
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    venv = ensure_venv(pinned_version())
    timings["venv"] = time.monotonic() - t0
    s = WebUIStack(tmp_path_factory.mktemp("heavy"), free_port())
    s.heavy_override.write_text(HEAVY_OVERRIDE)
    try:
        s.build_images()
        reuse = os.environ.get("AIBOX_HEAVY_REUSE_IMAGE")
        if reuse:  # an image this test built before (kept with AIBOX_HEAVY_KEEP=1): saves its build
            run(["docker", "tag", reuse, s.webui_image])
        else:
            timings["image"] = build_image(venv, s.workdir / "webui-ctx", s.webui_image)
        t1 = time.monotonic()
        s.up()
        timings["up"] = time.monotonic() - t1
        timings["open-webui healthy"] = s.wait_healthy("open-webui", timeout=900)
        s.timings = timings
        yield s
    finally:
        if os.environ.get("AIBOX_HEAVY_KEEP") != "1":
            s.down()
        summary = {k: round(v) for k, v in timings.items()}
        print(f"heavy timings (s): {summary}", file=sys.stderr)
        (ROOT / "artifacts").mkdir(exist_ok=True)
        (ROOT / "artifacts" / "heavy-timings.json").write_text(json.dumps(summary, indent=2) + "\n")


def test_open_webui_runs_with_the_compose_settings(stack):
    c = stack.container("open-webui")
    host = c["HostConfig"]
    assert c["Config"]["User"] == "65532:65532"
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"] or host["CapDrop"] == ["all"], host["CapDrop"]
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert "/tmp" in (host.get("Tmpfs") or {})
    assert any(m["Destination"] == "/app/backend/data" and m["RW"] for m in c["Mounts"])
    env = dict(e.split("=", 1) for e in c["Config"]["Env"])
    assert env["ENABLE_OPENAI_API"] == "false" and env["OLLAMA_BASE_URL"] == "http://edge:11435"
    # ./aibox up seeded the key; Open WebUI moved it into its database (and renamed the file).
    assert not (stack.data_dir / "open-webui" / "config.json").exists()
    assert (stack.data_dir / "open-webui" / "webui.db").exists()


@pytest.fixture(scope="module")
def webui(stack):
    base = f"http://{stack.address('open-webui')}:8080"
    with httpx.Client(base_url=base, timeout=120) as client:
        r = client.post("/api/v1/auths/signup",
                        json={"name": "Admin", "email": "admin@example.test", "password": "correct horse 42"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["role"] == "admin", body  # the first account is the admin
        client.headers["Authorization"] = f"Bearer {body['token']}"
        yield client


def test_sign_in_is_required(stack, webui):
    base = f"http://{stack.address('open-webui')}:8080"
    r = httpx.get(f"{base}/api/models", timeout=60)
    assert r.status_code in (401, 403), r.text


def test_the_edge_models_are_listed_once(stack, webui):
    edge = f"http://{stack.address('edge')}:11435"
    tags = httpx.get(f"{edge}/api/tags", timeout=30,
                     headers={"Authorization": f"Bearer {stack.secret('OPEN_WEBUI_EDGE_KEY')}"}).json()
    expected = sorted(m["name"] for m in tags["models"])
    assert expected, tags
    r = webui.get("/api/models")
    assert r.status_code == 200, r.text
    ids = [m["id"] for m in r.json()["data"] if m.get("owned_by") in ("ollama", "openai")]
    assert sorted(ids) == expected, f"Open WebUI lists {ids}, the edge serves {expected}"


def test_a_chat_goes_through_the_edge(stack, webui):
    model = webui.get("/api/models").json()["data"][0]["id"]
    r = webui.post("/api/chat/completions", json={
        "model": model, "stream": False,
        "messages": [{"role": "user", "content": "Say hello through the edge."}]})
    assert r.status_code == 200, r.text
    body = r.json()
    content = body["choices"][0]["message"]["content"] if "choices" in body else body["message"]["content"]
    assert content.strip(), body
    # The edge counted it against Open WebUI's own client.
    edge = f"http://{stack.address('edge')}:11435"
    keys = httpx.get(f"{edge}/api/edge/keys", timeout=30,
                     headers={"Authorization": f"Bearer {stack.secret('AIBOX_ADMIN_TOKEN')}"}).json()
    row = next(c for c in keys["clients"] if c["name"] == "open-webui")
    assert row["requests_hour"] >= 1, row


def test_a_pull_gets_the_edge_refusal(stack, webui):
    # The documented decision: Open WebUI holds a client key, and pulls are admin calls.
    r = webui.post("/ollama/api/pull/0", json={"model": "tinyllama", "stream": False})
    text = r.text
    assert r.status_code >= 400 or "admin key" in text, f"{r.status_code}: {text[:500]}"
    assert "admin key" in text or r.status_code in (401, 403), f"{r.status_code}: {text[:500]}"
