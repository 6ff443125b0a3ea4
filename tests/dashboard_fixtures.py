"""The dashboard's end-to-end stack and a real Chromium to drive it.

`dashboard_stack(procs, tmp_path, project)` starts, all on loopback:
- a compose-labelled project of two busybox containers (`web`: ticking logs on stdout and stderr,
  with a healthcheck; `worker`) on the real Docker engine (tests/controller_fixtures.py),
- the real `controller` for that project,
- a fake Ollama (tests/testkit) and the real `edge` in front of it, with an MCP registry holding
  mcp-server-time, and the edge proxying every path it does not own to the dashboard,
- the real `dashboard` binary, talking to the controller and the edge.
The browser goes through the edge's port, as a user does.

`chrome(width)` is headless Debian Chromium through chromedriver (selenium); it fails the test
loudly when either is missing.
"""
from __future__ import annotations

import http.client
import json
import os
import secrets
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import ARTIFACTS, ROOT, Proc, fake_upstream, free_port, start_edge
from controller_fixtures import ComposeProject, busybox_image, require_docker

PASSWORD = "dashboard-test-password-" + secrets.token_hex(4)
CONTROLLER_TOKEN = secrets.token_hex(24)
EDGE_ADMIN = "edge-admin-token-" + secrets.token_hex(8)
N8N_KEY = "n8n-key-" + secrets.token_hex(8)
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOTS = ARTIFACTS / "screenshots"
VENV_BIN = ROOT / ".venv" / "bin"

WEB_SCRIPT = ("echo out-hello; echo err-hello >&2; trap 'exit 0' TERM; "
              "i=0; while true; do i=$((i+1)); echo tick $i; sleep 1; done")
WORKER_SCRIPT = "echo worker-up; trap 'exit 0' TERM; while true; do sleep 1; done"


@dataclass
class DashboardStack:
    project: ComposeProject
    controller: Proc
    edge: Proc
    dashboard: Proc
    audit_log: Path

    @property
    def url(self) -> str:
        """Where users open the dashboard: the edge's one port."""
        return self.edge.url()

    @property
    def mcp_dir(self) -> Path:
        """The edge's MCP registry directory (registry.json, .env)."""
        return self.audit_log.parent.parent / "mcp"

    def audit_events(self) -> list[dict]:
        if not self.audit_log.exists():
            return []
        return [json.loads(line) for line in self.audit_log.read_text().splitlines() if line.strip()]


def edge_config(ollama_url: str, mcp_dir: Path) -> str:
    return f"""
admin_token_env = "AIBOX_ADMIN_TOKEN"
clients_file = "{mcp_dir.parent / 'clients.toml'}"

[[providers]]
name = "ollama"
kind = "ollama"
base_url = "{ollama_url}"

[[clients]]
name = "n8n"
key_env = "N8N_KEY"

[mcp]
registry = "{mcp_dir / 'registry.json'}"
servers_txt = "{mcp_dir / 'servers.txt'}"
env_file = "{mcp_dir / '.env'}"
probe_interval_ms = 500

[egress]
dns_servers = ["127.0.0.1:9"]
"""


def dashboard_stack(procs, tmp_path: Path, project: ComposeProject) -> DashboardStack:
    """Start the stack for `project` (the caller removes the project's containers at teardown)."""
    require_docker()
    busybox_image()
    project.run("web", WEB_SCRIPT, health_cmd="true")
    project.run("worker", WORKER_SCRIPT)
    audit_dir = tmp_path / "audit"
    controller = procs.start("controller", ["controller"], env={
        "OPS_CONTROLLER_TOKEN": CONTROLLER_TOKEN, "COMPOSE_PROJECT_NAME": project.name,
        "CONTROLLER_LISTEN": "127.0.0.1:0", "CONTROLLER_AUDIT_DIR": str(audit_dir)})

    ollama = fake_upstream(procs, "ollama", "--chunk-delay-ms", "1")
    mcp_dir = tmp_path / "mcp"
    mcp_dir.mkdir()
    time_server = VENV_BIN / "mcp-server-time"
    assert time_server.exists(), f"{time_server} is missing: ./aibox pytest builds .venv"
    (mcp_dir / "registry.json").write_text(json.dumps({"servers": {
        "time": {"command": str(time_server), "args": ["--local-timezone", "UTC"], "rate_limit_rpm": 120},
    }}, indent=2))

    # The edge proxies to the dashboard and the dashboard reads the edge: fix the edge's port first.
    edge_port = free_port()
    dashboard = procs.start("dashboard", ["dashboard"], env={
        "DASHBOARD_LISTEN": "127.0.0.1:0", "DASHBOARD_PASSWORD": PASSWORD,
        "CONTROLLER_URL": controller.url(), "OPS_CONTROLLER_TOKEN": CONTROLLER_TOKEN,
        "EDGE_URL": f"http://127.0.0.1:{edge_port}", "EDGE_ADMIN_TOKEN": EDGE_ADMIN})
    edge = start_edge(procs, tmp_path, edge_config(ollama.url(), mcp_dir), env={
        "EDGE_LISTEN": f"127.0.0.1:{edge_port}", "DASHBOARD_URL": dashboard.url(),
        "AIBOX_ADMIN_TOKEN": EDGE_ADMIN, "N8N_KEY": N8N_KEY,
        "CONTROLLER_URL": controller.url(), "OPS_CONTROLLER_TOKEN": CONTROLLER_TOKEN})
    return DashboardStack(project=project, controller=controller, edge=edge, dashboard=dashboard,
                          audit_log=audit_dir / "audit.log")


def chrome(width: int, height: int = 900):
    """Headless Chromium at this window width. Fails (never skips) when it cannot run."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.path.exists(path):
            pytest.fail(f"{path} is missing: install Debian's chromium and chromium-driver", pytrace=False)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--no-first-run", "--disable-extensions", "--disable-background-networking",
                "--hide-scrollbars", f"--window-size={width},{height}", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    return driver


def screenshot(driver, name: str, width: int) -> Path:
    """A full-height screenshot of the current page, saved under artifacts/screenshots/."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return Math.max(document.body.scrollHeight, 600)")
    driver.set_window_size(width, min(int(height) + 140, 6000))
    path = SCREENSHOTS / f"{name}-{width}.png"
    driver.save_screenshot(str(path))
    return path


def wait_until(pred, timeout: float = 20.0, what: str = "condition", interval: float = 0.2):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = pred()
            if last:
                return last
        except Exception as e:  # noqa: BLE001 — a page in the middle of loading; try again
            last = e
        time.sleep(interval)
    raise AssertionError(f"{what} not reached in {timeout}s (last: {last!r})")


class PlainClient:
    """Plain HTTP to the dashboard (no browser): keeps the session cookie, never follows redirects."""

    def __init__(self, base: str):
        u = urllib.parse.urlsplit(base)
        self.host, self.port = u.hostname, u.port
        self.cookie: str | None = None

    def request(self, method: str, path: str, form: dict | None = None, headers: dict | None = None):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        hdrs = dict(headers or {})
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form)
            hdrs["Content-Type"] = "application/x-www-form-urlencoded"
        if self.cookie:
            hdrs["Cookie"] = self.cookie
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read().decode(errors="replace")
        conn.close()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data

    def sign_in(self, password: str = PASSWORD) -> None:
        status, headers, body = self.request("POST", "/login", form={"password": password, "next": "/"})
        assert status == 303, (status, body)
        self.cookie = headers["set-cookie"].split(";")[0]


def wait_edge_ready(edge_url: str, timeout: float = 20.0) -> None:
    def ready():
        try:
            with urllib.request.urlopen(edge_url + "/ready", timeout=2) as r:
                return json.load(r).get("ready")
        except Exception:  # noqa: BLE001
            return False
    wait_until(ready, timeout, "edge ready")

