"""The controller against the real Docker engine: compose services, logs, pull, audit trail.

Every test talks to the real `controller` binary over a socket; containers are built offline
(tests/controller_fixtures.py) and removed at teardown.
"""
from __future__ import annotations

import http.client
import json
import os
import secrets
import signal
import subprocess
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import BIN
from controller_fixtures import (BUSYBOX, ComposeFile, ComposeProject, LocalRegistry, _free_port,
                                 busybox_image, compose_cli, docker, require_docker, unique_name)

TOKEN = secrets.token_hex(24)  # 48 characters
AUTH = {"Authorization": f"Bearer {TOKEN}"}

WEB_SCRIPT = ("echo out-hello; echo err-hello >&2; trap 'exit 0' TERM; "
              "i=0; while true; do i=$((i+1)); echo tick $i; sleep 1; done")
CONSOLE_SCRIPT = ("printf '\\001\\002 starts with frame-like bytes\\n'; echo tty-hello; echo tty-err >&2; "
                  "trap 'exit 0' TERM; while true; do sleep 1; done")
WORKER_SCRIPT = "echo worker-up; trap 'exit 0' TERM; while true; do sleep 1; done"


# ---------- helpers ----------

class Api:
    def __init__(self, base: str):
        self.host, self.port = base.removeprefix("http://").rsplit(":", 1)

    def call(self, method: str, path: str, body=None, headers: dict | None = None, auth: bool = True,
             raw_body: bytes | None = None, timeout: float = 60):
        conn = http.client.HTTPConnection(self.host, int(self.port), timeout=timeout)
        hdrs = dict(AUTH) if auth else {}
        hdrs.update(headers or {})
        data = raw_body
        if body is not None:
            data = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        payload = resp.read()
        conn.close()
        ctype = resp.getheader("Content-Type", "")
        parsed = json.loads(payload) if payload and "json" in ctype and "ndjson" not in ctype else payload
        return resp.status, dict(resp.getheaders()), parsed

    def get(self, path, **kw):
        return self.call("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.call("POST", path, body=body, **kw)


def assert_error(status_body, status: int, code: str):
    got_status, _, body = status_body
    assert got_status == status, body
    assert set(body) >= {"error"}, body
    assert body["error"]["code"] == code, body
    assert body["error"]["message"], body


def start_controller(procs, project: str, audit_dir: Path, env: dict | None = None, name: str = "controller"):
    full = {"OPS_CONTROLLER_TOKEN": TOKEN, "COMPOSE_PROJECT_NAME": project,
            "CONTROLLER_LISTEN": "127.0.0.1:0", "CONTROLLER_AUDIT_DIR": str(audit_dir)}
    full.update(env or {})
    p = procs.start(name, ["controller"], env=full)
    return p, Api(p.url())


def verify_cli(audit_dir: Path, env: dict | None = None, args: tuple[str, ...] = ()):
    full = dict(os.environ, OPS_CONTROLLER_TOKEN=TOKEN)
    full.update(env or {})
    return subprocess.run([str(BIN / "controller"), "audit", "verify", "--dir", str(audit_dir), *args],
                          capture_output=True, text=True, env=full, timeout=30)


def audit_lines(audit_dir: Path) -> list[dict]:
    files = sorted(audit_dir.glob("audit.log.*"), key=lambda p: -int(p.suffix[1:])) + [audit_dir / "audit.log"]
    events = []
    for f in files:
        if f.exists():
            events += [json.loads(line) for line in f.read_text().splitlines() if line]
    return events


def outcomes(events: list[dict]) -> list[dict]:
    """The outcome events of a list, each checked against the intent it names."""
    by_seq = {e["seq"]: e for e in events}
    out = [e for e in events if e["result"] != "intent"]
    for e in out:
        intent = by_seq.get(e["metadata"].get("intent_seq"))
        if intent is not None:
            assert intent["result"] == "intent" and intent["correlation_id"] == e["correlation_id"], (intent, e)
    assert len(out) * 2 == len(events), f"an intent without its outcome: {events}"
    return out


def started_at(project: ComposeProject, service: str) -> str:
    return project.inspect(service)["State"]["StartedAt"]


# ---------- fixtures ----------

@pytest.fixture(scope="module")
def stack():
    """Project P (web: non-tty + healthy, console: tty, worker: unhealthy) and project Q (web)."""
    require_docker()
    busybox_image()
    p, q = ComposeProject(unique_name("aiboxp")), ComposeProject(unique_name("aiboxq"))
    try:
        p.run("web", WEB_SCRIPT, health_cmd="true")
        p.run("console", CONSOLE_SCRIPT, tty=True)
        p.run("worker", WORKER_SCRIPT, health_cmd="false")
        q.run("web", WEB_SCRIPT)
        p.wait_health("web", "healthy")
        p.wait_health("worker", "unhealthy")
        yield p, q
    finally:
        p.cleanup()
        q.cleanup()


# ---------- startup and auth ----------

@pytest.mark.parametrize("token,needle", [("", "OPS_CONTROLLER_TOKEN is not set"),
                                          ("short-token", "at least 32")])
def test_refuses_to_start_without_a_strong_token(tmp_path, token, needle):
    env = dict(os.environ, OPS_CONTROLLER_TOKEN=token, COMPOSE_PROJECT_NAME="x",
               CONTROLLER_LISTEN="127.0.0.1:0", CONTROLLER_AUDIT_DIR=str(tmp_path))
    res = subprocess.run([str(BIN / "controller")], capture_output=True, text=True, env=env, timeout=30)
    assert res.returncode != 0
    assert needle in res.stderr, res.stderr
    assert "listening" not in res.stderr


def test_refuses_to_start_when_the_audit_log_cannot_be_used(tmp_path):
    (tmp_path / "audit.log").mkdir()
    env = dict(os.environ, OPS_CONTROLLER_TOKEN=TOKEN, COMPOSE_PROJECT_NAME="x",
               CONTROLLER_LISTEN="127.0.0.1:0", CONTROLLER_AUDIT_DIR=str(tmp_path))
    res = subprocess.run([str(BIN / "controller")], capture_output=True, text=True, env=env, timeout=30)
    assert res.returncode != 0
    assert "audit" in res.stderr and "not a regular file" in res.stderr, res.stderr


def test_health_is_open_everything_else_needs_the_token(procs, tmp_path, stack):
    p, _ = stack
    _, api = start_controller(procs, p.name, tmp_path / "audit")
    status, headers, body = api.get("/health", auth=False)
    assert status == 200 and body["ok"] is True, body
    assert body["audit"] == {"head": {"seq": 0, "hash": "0" * 64}, "alarm": None}, body
    assert headers.get("x-request-id")
    assert_error(api.get("/services", auth=False), 401, "unauthorized")
    assert_error(api.get("/services", auth=False, headers={"Authorization": "Bearer " + "x" * 48}), 401, "unauthorized")
    assert_error(api.post("/services/web/restart", {"confirm": True}, auth=False), 401, "unauthorized")
    assert_error(api.get("/audit", auth=False), 401, "unauthorized")
    assert_error(api.get("/nope"), 404, "not_found")
    # Nothing acted, nothing audited.
    assert api.get("/audit")[2]["events"] == []


def test_docker_unreachable_is_a_clear_503(procs, tmp_path):
    _, api = start_controller(procs, "whatever", tmp_path / "audit",
                              env={"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"})
    assert api.get("/health", auth=False)[0] == 200
    status, _, body = api.get("/services")
    assert_error((status, None, body), 503, "docker_unavailable")
    assert "unreachable" in body["error"]["message"]


# ---------- services ----------

def test_lists_only_this_projects_services_with_state_and_health(procs, tmp_path, stack):
    p, q = stack
    _, api = start_controller(procs, p.name, tmp_path / "audit")
    status, _, body = api.get("/services")
    assert status == 200, body
    assert body["project"] == p.name
    by_name = {s["name"]: s for s in body["services"]}
    assert set(by_name) == {"web", "console", "worker"}
    web = by_name["web"]
    assert web["state"] == "running"
    assert web["health"] == "healthy"
    assert by_name["worker"]["health"] == "unhealthy"
    assert by_name["console"]["health"] == "none"
    assert web["image"] == BUSYBOX
    assert web["image_id"].startswith("sha256:")
    assert web["container"] == p.container_name("web")
    assert q.name not in json.dumps(body)
    assert isinstance(web["restart_count"], int)
    assert web["uptime_seconds"] >= 0 and web["started_at"]
    assert web["allowed"] and web["replicas"] == 1 and web["ports"] == []


def test_actions_dry_run_confirm_and_audit(procs, tmp_path, stack):
    p, q = stack
    audit_dir = tmp_path / "audit"
    _, api = start_controller(procs, p.name, audit_dir)
    dash = {"X-Actor": "dashboard", "X-Actor-User": "alice"}
    q_before = started_at(q, "web")
    before = started_at(p, "worker")

    # Dry run: describes, changes nothing, is not audited.
    status, _, body = api.post("/services/worker/restart", {"dry_run": True})
    assert status == 200, body
    assert body["would"] == "restart worker" and body["dry_run"] is True
    assert started_at(p, "worker") == before

    # Missing or false confirmation, junk bodies, unknown services and actions.
    assert_error(api.post("/services/worker/restart"), 400, "confirmation_required")
    assert_error(api.post("/services/worker/restart", {}), 400, "confirmation_required")
    assert_error(api.post("/services/worker/restart", {"confirm": False}), 400, "confirmation_required")
    assert_error(api.post("/services/worker/restart", raw_body=b"{nope"), 400, "invalid_body")
    assert_error(api.post("/services/worker/explode", {"confirm": True}), 400, "unknown_action")
    assert_error(api.post("/services/ghost/restart", {"confirm": True}), 404, "unknown_service")
    assert started_at(p, "worker") == before

    status, headers, body = api.post("/services/worker/restart", {"confirm": True},
                                     headers={**dash, "X-Request-ID": "req-restart-1"})
    assert status == 200, body
    assert body == {"ok": True, "service": "worker", "action": "restarted", "changed": True,
                    "containers": [p.container_name("worker")]}
    assert headers["x-request-id"] == "req-restart-1"
    assert started_at(p, "worker") != before

    status, _, body = api.post("/services/worker/stop", {"confirm": True}, headers=dash)
    assert (status, body["action"], body["changed"]) == (200, "stopped", True), body
    assert p.inspect("worker")["State"]["Running"] is False
    # Stopping a stopped service is a success, not an error.
    status, _, body = api.post("/services/worker/stop", {"confirm": True}, headers=dash)
    assert (status, body["ok"], body["changed"]) == (200, True, False), body
    status, _, body = api.post("/services/worker/start", {"confirm": True}, headers=dash)
    assert (status, body["action"], body["changed"]) == (200, "started", True), body
    status, _, body = api.post("/services/worker/start", {"confirm": True}, headers=dash)
    assert (status, body["changed"]) == (200, False), body
    assert p.inspect("worker")["State"]["Running"] is True

    # The other project was never touched.
    assert started_at(q, "web") == q_before
    assert q.inspect("web")["State"]["Running"] is True

    # Two events per performed action: the intent before it, the outcome after (naming the
    # intent's seq), newest first, with the caller's identity.
    status, _, body = api.get("/audit?limit=50")
    assert status == 200
    events = body["events"]
    assert [(e["action"], e["resource"], e["result"]) for e in events] == [
        ("start", "worker", "ok"), ("start", "worker", "intent"),
        ("start", "worker", "ok"), ("start", "worker", "intent"),
        ("stop", "worker", "ok"), ("stop", "worker", "intent"),
        ("stop", "worker", "ok"), ("stop", "worker", "intent"),
        ("restart", "worker", "ok"), ("restart", "worker", "intent")]
    assert [e["seq"] for e in events] == list(range(10, 0, -1))
    assert all(e["actor"] == "dashboard" and e["metadata"]["user"] == "alice" for e in events)
    assert all(e["metadata"]["intent_seq"] == e["seq"] - 1 for e in events if e["result"] != "intent")
    assert [e["correlation_id"] for e in events[-2:]] == ["req-restart-1"] * 2
    assert events[-1]["metadata"] == {"containers": [p.container_name("worker")], "user": "alice"}
    assert events[0]["metadata"]["changed"] is False and events[2]["metadata"]["changed"] is True
    assert events[-1]["ts"].endswith("Z") and len(events[-1]["ts"]) == 24
    assert len(audit_lines(audit_dir)) == 10

    # Same service name in both projects: only this project's container restarts.
    web_before = started_at(p, "web")
    status, _, body = api.post("/services/web/restart", {"confirm": True})
    assert status == 200 and body["containers"] == [p.container_name("web")], body
    assert started_at(p, "web") != web_before
    assert started_at(q, "web") == q_before
    res = verify_cli(audit_dir)
    assert res.returncode == 0 and res.stdout.strip() == "ok: 12 events", res.stdout + res.stderr


# ---------- JSON bodies are objects ----------

NOT_OBJECTS = {"array": b"[true]", "string": b'"confirm"', "number": b"1", "null": b"null"}


@pytest.mark.parametrize("kind", NOT_OBJECTS)
def test_json_bodies_must_be_objects(procs, tmp_path, stack, kind):
    p, _ = stack
    audit_dir = tmp_path / "audit"
    _, api = start_controller(procs, p.name, audit_dir)
    before = started_at(p, "web")
    raw = NOT_OBJECTS[kind]
    for path, body in (("/services/web/restart", raw),
                       ("/images/pull", b'[["web"],false,true]' if kind == "array" else raw),
                       ("/audit", b'["mcp_add","x"]' if kind == "array" else raw)):
        status, _, answer = api.post(path, raw_body=body, headers={"Content-Type": "application/json"})
        assert_error((status, None, answer), 400, "invalid_body")
        assert "must be an object" in answer["error"]["message"], answer
    assert started_at(p, "web") == before, "nothing was restarted"
    assert audit_lines(audit_dir) == [], "nothing was recorded"


# ---------- intent and outcome: the caller hangs up mid-action ----------

SLOW_STOP_SCRIPT = "trap '' TERM; echo slow-up; while true; do sleep 1; done"  # ignores SIGTERM


def hang_up_during(api: Api, path: str, body: dict, request_id: str, after: float = 0.3) -> None:
    """Sends the request and drops the connection after `after` seconds, before any answer."""
    conn = http.client.HTTPConnection(api.host, int(api.port), timeout=after)
    try:
        conn.request("POST", path, body=json.dumps(body).encode(),
                     headers={**AUTH, "Content-Type": "application/json", "X-Request-ID": request_id})
        with pytest.raises((TimeoutError, OSError, http.client.HTTPException)):
            conn.getresponse()
    finally:
        conn.close()


def events_of(events: list[dict], request_id: str) -> list[dict]:
    return sorted((e for e in events if e["correlation_id"] == request_id), key=lambda e: e["seq"])


def wait_for(pred, timeout: float = 30, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = pred()
        except (OSError, http.client.HTTPException):
            got = None
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout}s")
        time.sleep(0.2)


def test_a_caller_that_hangs_up_mid_action_still_gets_intent_and_outcome(procs, tmp_path, stack):
    project = ComposeProject(unique_name("aiboxhang"))
    audit_dir = tmp_path / "audit"
    try:
        project.run("slow", SLOW_STOP_SCRIPT)  # a restart takes the 1 s stop timeout
        _, api = start_controller(procs, project.name, audit_dir)
        before = started_at(project, "slow")
        hang_up_during(api, "/services/slow/restart", {"confirm": True}, "hangup-1")
        pair = wait_for(lambda: len(events_of(audit_lines(audit_dir), "hangup-1")) == 2
                        and events_of(audit_lines(audit_dir), "hangup-1"), what="intent and outcome")
        intent, outcome = pair
        assert (intent["action"], intent["resource"], intent["result"]) == ("restart", "slow", "intent")
        assert (outcome["action"], outcome["result"]) == ("restart", "ok"), outcome
        assert outcome["metadata"]["intent_seq"] == intent["seq"]
        assert started_at(project, "slow") != before, "Docker acted: the container restarted"
        assert verify_cli(audit_dir).returncode == 0
    finally:
        project.cleanup()


def test_the_controller_restarting_itself_records_the_outcome_when_it_is_back(tmp_path):
    """The controller in a container of its own project, restarting that very container: the
    connection dies with the old process, and the new process closes the open intent."""
    require_docker()
    busybox_image()
    project = ComposeProject(unique_name("aiboxself"))
    audit_dir = tmp_path / "audit"
    audit_dir.mkdir()
    port = _free_port()
    try:
        docker("run", "-d", "--name", project.container_name("controller"), "--stop-timeout", "2",
               "--label", f"com.docker.compose.project={project.name}",
               "--label", "com.docker.compose.service=controller",
               "--label", "com.docker.compose.container-number=1",
               "--label", "com.docker.compose.oneoff=False",
               "-p", f"127.0.0.1:{port}:9000",
               # The debug binary and the host's libraries it links against, read-only.
               "-v", f"{BIN / 'controller'}:/controller:ro", "-v", "/usr/lib:/lib:ro",
               "-v", "/usr/lib64:/lib64:ro", "-v", "/var/run/docker.sock:/var/run/docker.sock",
               "-v", f"{audit_dir}:/audit",
               "-e", f"OPS_CONTROLLER_TOKEN={TOKEN}", "-e", f"COMPOSE_PROJECT_NAME={project.name}",
               "-e", "CONTROLLER_LISTEN=0.0.0.0:9000", "-e", "CONTROLLER_AUDIT_DIR=/audit",
               "--entrypoint", "/controller", BUSYBOX)
        api = Api(f"http://127.0.0.1:{port}")
        wait_for(lambda: api.get("/health", auth=False, timeout=2)[0] == 200, what="controller up")
        first_start = started_at(project, "controller")
        hang_up_during(api, "/services/controller/restart", {"confirm": True}, "self-restart-1", after=5)
        wait_for(lambda: started_at(project, "controller") != first_start, what="the container restarted")
        wait_for(lambda: api.get("/health", auth=False, timeout=2)[0] == 200, what="controller back")
        status, _, body = api.get("/audit?limit=10")
        assert status == 200, body
        intent, outcome = events_of(body["events"], "self-restart-1")
        assert (intent["action"], intent["resource"], intent["result"]) == ("restart", "controller", "intent")
        assert (outcome["result"], outcome["metadata"]["intent_seq"]) == ("ok", intent["seq"]), outcome
        assert outcome["metadata"]["recovered"] is True and outcome["metadata"]["state"] == "running"
        assert verify_cli(audit_dir).returncode == 0
    finally:
        logs = docker("logs", project.container_name("controller"), check=False)
        print(logs.stdout, logs.stderr)
        project.cleanup()


COMPOSE_YAML = f"""
version: "2.4"
services:
  alpha:
    image: {BUSYBOX}
    network_mode: none
    stop_grace_period: 1s
    command: ["sh", "-c", "echo alpha-up; trap 'exit 0' TERM; while true; do sleep 1; done"]
  beta:
    image: {BUSYBOX}
    network_mode: none
    stop_grace_period: 1s
    command: ["sh", "-c", "echo beta-up >&2; trap 'exit 0' TERM; while true; do sleep 1; done"]
    healthcheck:
      test: ["CMD", "true"]
      interval: 1s
"""


def test_a_project_started_by_docker_compose(procs, tmp_path, stack):
    compose = ComposeFile(tmp_path, COMPOSE_YAML)
    try:
        compose.up()
        _, api = start_controller(procs, compose.name, tmp_path / "audit")
        deadline = time.monotonic() + 30
        while True:
            services = {s["name"]: s for s in api.get("/services")[2]["services"]}
            if services.get("beta", {}).get("health") == "healthy" or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert set(services) == {"alpha", "beta"}
        assert services["beta"]["health"] == "healthy" and services["alpha"]["state"] == "running"
        status, _, body = api.post("/services/alpha/restart", {"confirm": True})
        assert (status, body["action"]) == (200, "restarted"), body
        lines = api.get("/services/beta/logs")[2]["lines"]
        assert {"stream": "stderr", "line": "beta-up"} in lines
    finally:
        compose.down()


UP_COMPOSE_YAML = """
services:
  core:
    image: {busybox}
    stop_grace_period: 1s
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
    networks: [inner]
  extra:
    image: {app}
    profiles: [extra]
    read_only: true
    cap_drop: [ALL]
    security_opt: ["no-new-privileges:true"]
    restart: unless-stopped
    mem_limit: 64m
    pids_limit: 32
    stop_grace_period: 1s
    user: "65532:65532"
    tmpfs: ["/tmp:size=8m,mode=1777"]
    environment: {{GREETING: hello-from-the-model}}
    labels: {{com.example.role: extra}}
    volumes: ["./data:/data:ro", "state:/state"]
    networks:
      inner: {{aliases: [extra-alias]}}
    healthcheck: {{test: ["CMD", "true"], interval: 1s, retries: 1}}
    command: ["sh", "-c", "cat /marker; echo; echo $$GREETING; trap 'exit 0' TERM; while true; do sleep 1; done"]
  odd:
    image: {busybox}
    profiles: [odd]
    ulimits: {{nofile: 1024}}
networks:
  inner: {{internal: true}}
volumes:
  state: {{}}
"""


def test_up_creates_a_service_never_started_and_recreates_it_when_its_image_changes(procs, tmp_path):
    """A compose project whose profile service was never started: the controller lists it as "not
    created" (from the resolved compose model), `up` creates it as compose would (settings,
    labels, network alias, volumes) and starts it; after the image's tag moves, `up` recreates it
    on the new image; a key it cannot honour is refused by name. Every `up` is audited."""
    require_docker()
    busybox_image()
    app = f"aibox-test/up-app-{uuid.uuid4().hex[:8]}:1"
    v1 = busybox_image(app, marker="image-v1")
    compose = ComposeFile(tmp_path, UP_COMPOSE_YAML.format(busybox=BUSYBOX, app=app))
    (compose.dir / "data").mkdir()
    try:
        compose.up()
        model = tmp_path / "compose.model.yml"
        model.write_text(subprocess.run([*compose_cli(), "-p", compose.name, "-f", str(compose.dir / "docker-compose.yml"),
                                         "config"], capture_output=True, text=True, check=True, cwd=compose.dir).stdout)
        _, api = start_controller(procs, compose.name, tmp_path / "audit", env={"CONTROLLER_COMPOSE_MODEL": str(model)})
        services = {s["name"]: s for s in api.get("/services")[2]["services"]}
        assert services["core"]["state"] == "running"
        assert (services["extra"]["state"], services["extra"]["profiles"], services["extra"]["image"]) == \
            ("not created", ["extra"], app), services["extra"]
        assert_error(api.post("/services/extra/start", {"confirm": True}), 404, "unknown_service")

        status, _, body = api.post("/services/extra/up", {"dry_run": True})
        assert (status, body["step"], body["would"]) == (200, "create", "create and start extra"), body
        assert_error(api.post("/services/extra/up", {}), 400, "confirmation_required")
        status, _, body = api.post("/services/extra/up", {"confirm": True}, headers={"X-Actor": "dashboard"})
        assert (status, body["step"], body["changed"]) == (200, "create", True), body
        name = f"{compose.name}-extra-1"
        info = json.loads(docker("inspect", name).stdout)[0]
        assert info["State"]["Running"] is True and info["Image"] == v1
        assert info["Config"]["Labels"]["com.docker.compose.service"] == "extra"
        assert info["Config"]["Labels"]["com.example.role"] == "extra"
        assert "GREETING=hello-from-the-model" in info["Config"]["Env"]
        assert info["Config"]["User"] == "65532:65532"
        host = info["HostConfig"]
        assert (host["ReadonlyRootfs"], host["CapDrop"], host["Memory"], host["PidsLimit"]) == (True, ["ALL"], 64 << 20, 32)
        assert host["RestartPolicy"]["Name"] == "unless-stopped"
        assert f"{compose.dir / 'data'}:/data:ro" in host["Binds"] and f"{compose.name}_state:/state" in host["Binds"]
        endpoint = info["NetworkSettings"]["Networks"][f"{compose.name}_inner"]
        assert "extra-alias" in endpoint["Aliases"] and "extra" in endpoint["Aliases"]
        deadline = time.monotonic() + 30
        while "hello-from-the-model" not in str(api.get("/services/extra/logs")[2]):
            assert time.monotonic() < deadline, api.get("/services/extra/logs")
            time.sleep(0.3)
        assert {"stream": "stdout", "line": "image-v1"} in api.get("/services/extra/logs")[2]["lines"]

        # Up to date: nothing to do.
        status, _, body = api.post("/services/extra/up", {"confirm": True})
        assert (status, body["step"], body["changed"]) == (200, "nothing", False), body

        # The tag now names another image (a pull or a rebuild): up recreates the container on it.
        v2 = busybox_image(app, marker="image-v2")
        assert v2 != v1
        status, _, body = api.post("/services/extra/up", {"dry_run": True})
        assert (body["step"], body["container_image_id"], body["current_image_id"]) == ("recreate", v1, v2), body
        status, _, body = api.post("/services/extra/up", {"confirm": True})
        assert (status, body["step"], body["changed"]) == (200, "recreate", True), body
        info = json.loads(docker("inspect", name).stdout)[0]
        assert info["Image"] == v2 and info["State"]["Running"] is True
        left = docker("ps", "-a", "--filter", f"label=com.docker.compose.project={compose.name}",
                      "--format", "{{.Names}}").stdout.split()
        assert sorted(left) == sorted([name, f"{compose.name}_core_1" if f"{compose.name}_core_1" in left
                                       else f"{compose.name}-core-1"]), left

        # A key the controller cannot turn into a setting is named, and nothing is created.
        status, _, body = api.post("/services/odd/up", {"confirm": True})
        assert status == 422 and body["error"]["code"] == "compose_model_error", body
        assert "services.odd.ulimits" in body["error"]["message"], body

        assert f"{compose.name}-odd-1" not in docker("ps", "-a", "--format", "{{.Names}}").stdout

        # Refused before anything was done, `odd` is not an action; the three others are.
        events = outcomes(api.get("/audit?action=up")[2]["events"])
        assert [(e["resource"], e["result"], e["metadata"].get("step")) for e in events] == [
            ("extra", "ok", "recreate"), ("extra", "ok", "nothing"), ("extra", "ok", "create")]
        assert events[0]["metadata"]["container_image_id"] == v1 and events[0]["metadata"]["image_id"] == v2
    finally:
        ComposeProject(compose.name).cleanup()
        compose.down()
        docker("volume", "rm", "-f", f"{compose.name}_state", check=False)
        docker("rmi", "-f", app, v1, check=False)


def test_every_service_of_the_bundle_can_be_created_by_the_controller(procs, tmp_path):
    """The bundle's own compose file (every profile, both GPU overrides): the resolved model that
    `./aibox up` writes holds no key the controller's `up` cannot turn into a setting."""
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, OPS_CONTROLLER_TOKEN="x" * 32, AIBOX_ADMIN_TOKEN="y" * 32, COMPOSE_PROFILES="",
               AIBOX_GPU_VIDEO_GID="44", AIBOX_GPU_RENDER_GID="110")
    for override in ([], ["-f", str(root / "deploy/compose.gpu-nvidia.yml")],
                     ["-f", str(root / "deploy/compose.gpu-amd.yml")]):
        project = unique_name("aiboxmodel")
        res = subprocess.run([*compose_cli(), "-p", project, "-f", str(root / "docker-compose.yml"), *override, "config"],
                             capture_output=True, text=True, env=env, cwd=root)
        assert res.returncode == 0, res.stderr
        model = tmp_path / f"{project}.yml"
        model.write_text(res.stdout)
        _, api = start_controller(procs, project, tmp_path / f"audit-{project}", name=f"controller-{project}",
                                  env={"CONTROLLER_COMPOSE_MODEL": str(model)})
        services = {s["name"]: s for s in api.get("/services")[2]["services"]}
        assert {"edge", "controller", "dashboard", "ollama", "open-webui", "n8n", "browser"} <= set(services)
        assert all(s["state"] == "not created" for s in services.values()), services
        for name in services:
            status, _, body = api.post(f"/services/{name}/up", {"dry_run": True})
            assert (status, body.get("step")) == (200, "create"), (override, name, body)
        assert api.get("/audit")[2]["events"] == [], "dry runs change nothing"


def test_allowlist_narrows_actions(procs, tmp_path, stack):
    p, _ = stack
    _, api = start_controller(procs, p.name, tmp_path / "audit", env={"CONTROLLER_SERVICES": "web,console"})
    allowed = {s["name"]: s["allowed"] for s in api.get("/services")[2]["services"]}
    assert allowed == {"web": True, "console": True, "worker": False}
    assert_error(api.post("/services/worker/restart", {"confirm": True}), 403, "service_not_allowed")
    assert_error(api.get("/services/worker/logs"), 403, "service_not_allowed")
    assert api.get("/audit")[2]["events"] == []


def test_stopping_a_service_that_locks_the_user_out_needs_its_name_typed(procs, tmp_path):
    """The edge, the dashboard and the controller: stop needs `confirm_service`; the dry run says
    what becomes unreachable and how to recover; restart and other services need nothing more."""
    require_docker()
    busybox_image()
    box = ComposeProject(unique_name("aiboxlock"))
    try:
        for service in ("edge", "dashboard", "worker"):
            box.run(service, WORKER_SCRIPT)
        _, api = start_controller(procs, box.name, tmp_path / "audit")
        status, _, body = api.post("/services/edge/stop", {"dry_run": True})
        assert status == 200 and body["confirm_service_required"] is True, body
        assert "./aibox up" in body["warning"] and "dashboard" in body["warning"], body
        for refused in ({"confirm": True}, {"confirm": True, "confirm_service": "Edge"},
                        {"confirm": True, "confirm_service": "dashboard"}):
            status, _, body = api.post("/services/edge/stop", refused)
            assert (status, body["error"]["code"]) == (400, "service_name_required"), body
            assert "./aibox up" in body["error"]["message"], body
        assert box.inspect("edge")["State"]["Running"] is True
        assert api.get("/audit")[2]["events"] == [], "a refused stop is not an action"
        # Typed: it stops, audited like any stop.
        status, _, body = api.post("/services/edge/stop", {"confirm": True, "confirm_service": "edge"},
                                   headers={"X-Actor": "dashboard"})
        assert (status, body["action"]) == (200, "stopped"), body
        assert box.inspect("edge")["State"]["Running"] is False
        assert [(e["action"], e["resource"], e["result"]) for e in api.get("/audit")[2]["events"]] == [
            ("stop", "edge", "ok"), ("stop", "edge", "intent")]
        # Restart comes back by itself, and other services never need the name.
        status, _, body = api.post("/services/dashboard/restart", {"confirm": True})
        assert status == 200, body
        status, _, body = api.post("/services/worker/stop", {"dry_run": True})
        assert "confirm_service_required" not in body and "warning" not in body, body
        status, _, body = api.post("/services/worker/stop", {"confirm": True})
        assert status == 200, body
    finally:
        box.cleanup()


# ---------- logs ----------

def test_logs_stdout_stderr_and_tty(procs, tmp_path, stack):
    p, _ = stack
    _, api = start_controller(procs, p.name, tmp_path / "audit")
    status, _, body = api.get("/services/web/logs?tail=1000", headers={"X-Actor": "cli"})
    assert status == 200, body
    assert body["tty"] is False and body["container"] == p.container_name("web")
    lines = [(l["stream"], l["line"]) for l in body["lines"]]
    assert ("stdout", "out-hello") in lines
    assert ("stderr", "err-hello") in lines
    assert any(s == "stdout" and t.startswith("tick ") for s, t in lines)

    status, _, body = api.get("/services/console/logs?tail=100")
    assert status == 200 and body["tty"] is True, body
    got = [l["line"] for l in body["lines"]]
    assert all(l["stream"] == "tty" for l in body["lines"])
    assert "\x01\x02 starts with frame-like bytes" in got
    assert "tty-hello" in got and "tty-err" in got

    status, _, body = api.get("/services/web/logs?tail=2")
    assert status == 200 and len(body["lines"]) == 2
    status, _, body = api.get("/services/web/logs?tail=1&timestamps=true")
    assert body["lines"][0]["ts"].endswith("Z")

    assert_error(api.get("/services/web/logs?tail=99999"), 400, "invalid_query")
    assert_error(api.get("/services/web/logs?tail=abc"), 400, "invalid_query")
    assert_error(api.get("/services/ghost/logs"), 404, "unknown_service")

    events = api.get("/audit?action=logs")[2]["events"]
    assert [(e["resource"], e["metadata"]["tail"]) for e in events] == [("web", 1), ("web", 2), ("console", 100), ("web", 1000)]
    assert events[-1]["actor"] == "cli" and events[-1]["result"] == "ok"


def test_follow_streams_until_the_client_leaves(procs, tmp_path, stack):
    p, _ = stack
    ctl, api = start_controller(procs, p.name, tmp_path / "audit")
    conn = http.client.HTTPConnection(api.host, int(api.port), timeout=30)
    conn.request("GET", "/services/web/logs?tail=1&follow=true", headers=AUTH)
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("Content-Type") == "application/x-ndjson"
    seen = []
    deadline = time.monotonic() + 20
    while len([s for s in seen if s["line"].startswith("tick ")]) < 3 and time.monotonic() < deadline:
        line = resp.readline()
        assert line, "stream ended early"
        if line.strip():
            seen.append(json.loads(line))
    ticks = [int(s["line"].split()[1]) for s in seen if s["line"].startswith("tick ")]
    assert len(ticks) >= 3 and ticks == sorted(ticks), seen
    conn.close()  # the client leaves
    time.sleep(0.5)
    assert api.get("/health", auth=False)[0] == 200
    events = api.get("/audit?action=logs")[2]["events"]
    assert len(events) == 1 and events[0]["metadata"]["follow"] is True


# ---------- pull ----------

def test_pull_through_a_loopback_registry_shows_drift(procs, tmp_path, stack):
    p, _ = stack
    registry = LocalRegistry(tmp_path)
    app = ComposeProject(unique_name("aiboxpull"))
    repo = f"aibox-test/app-{uuid.uuid4().hex[:8]}:1"
    try:
        v1 = busybox_image(f"aibox-test/app-v1-{uuid.uuid4().hex[:6]}:1", marker="v1 " + uuid.uuid4().hex)
        ref = registry.push(v1, repo)
        app.run("app", WORKER_SCRIPT, image=ref)
        # A newer image is published under the same tag; the engine no longer has that tag locally.
        v2_tag = f"aibox-test/app-v2-{uuid.uuid4().hex[:6]}:1"
        v2 = busybox_image(v2_tag, marker="v2 " + uuid.uuid4().hex)
        registry.push(v2_tag, repo)
        docker("rmi", ref, v2_tag)  # v1 stays: the container still uses it
        assert v1 != v2

        _, api = start_controller(procs, app.name, tmp_path / "audit")
        status, _, body = api.post("/images/pull", {"services": ["app"], "dry_run": True})
        assert status == 200 and body["would"] == "pull images for app", body
        assert_error(api.post("/images/pull", {"services": ["app"]}), 400, "confirmation_required")
        assert_error(api.post("/images/pull", {"services": ["ghost"], "confirm": True}), 404, "unknown_service")

        status, _, body = api.post("/images/pull", {"services": ["app"], "confirm": True},
                                   headers={"X-Actor": "dashboard"})
        assert status == 200, body
        assert "does not change running containers" in body["note"]
        (res,) = body["results"]
        assert res["ok"] is True and res["image"] == ref
        assert res["container_image_id"] == v1
        assert res["pulled_image_id"] == v2
        assert res["drift"] is True
        assert any("Downloaded newer image" in line for line in res["progress"]), res["progress"]
        # The running container is unchanged.
        assert app.inspect("app")["Image"] == v1
        assert app.inspect("app")["State"]["Running"] is True

        # A tag that is not in the registry: a pull error, reported as such.
        missing_ref = f"{registry.host}/aibox-test/missing-{uuid.uuid4().hex[:6]}:1"
        docker("tag", v1, missing_ref)  # exists locally, never pushed
        app.run("broken", WORKER_SCRIPT, image=missing_ref)
        status, _, body = api.post("/images/pull", {"services": ["broken"], "confirm": True})
        assert status == 502 and body["error"]["code"] == "pull_failed", body
        assert body["results"][0]["ok"] is False and body["results"][0]["error"]

        # A registry that serves the manifest but lost a layer: the engine answers 200 and reports
        # the failure inside the progress stream.
        repo3 = f"aibox-test/corrupt-{uuid.uuid4().hex[:6]}"
        tag3 = f"aibox-test/app-v3-{uuid.uuid4().hex[:6]}:1"
        busybox_image(tag3, marker="v3 " + uuid.uuid4().hex)
        ref3 = registry.push(tag3, f"{repo3}:1")
        docker("rmi", ref3, tag3)
        req = urllib.request.Request(f"http://{registry.host}/v2/{repo3}/manifests/1", headers={
            "Accept": "application/vnd.docker.distribution.manifest.v2+json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            layer = json.load(r)["layers"][0]["digest"].split(":", 1)[1]
        (registry.storage / "docker/registry/v2/blobs/sha256" / layer[:2] / layer / "data").unlink()
        docker("tag", v1, ref3)
        app.run("corrupt", WORKER_SCRIPT, image=ref3)
        status, _, body = api.post("/images/pull", {"services": ["corrupt"], "confirm": True})
        assert status == 502 and body["error"]["code"] == "pull_failed", body
        (res,) = body["results"]
        assert res["ok"] is False and res["error"] and res["drift"] is None, res
        assert res["progress"], "progress before the failure is kept"
        assert app.inspect("corrupt")["State"]["Running"] is True

        events = outcomes(api.get("/audit?action=pull")[2]["events"])
        assert [(e["resource"], e["result"]) for e in events] == [
            ("corrupt", "error"), ("broken", "error"), ("app", "ok")]
        assert events[2]["metadata"]["drift"] is True and events[2]["actor"] == "dashboard"
    finally:
        app.cleanup()
        registry.stop()
        for row in docker("image", "ls", "--format", "{{.ID}} {{.Repository}}").stdout.splitlines():
            image_id, repo_name = row.split(" ", 1)
            if repo_name.startswith((registry.host, "aibox-test/app-")):
                docker("rmi", "-f", image_id, check=False)


def read_ndjson(api: Api, path: str, body: dict, headers: dict | None = None):
    """POSTs and reads the NDJSON answer line by line as it arrives, with a plain HTTP client."""
    conn = http.client.HTTPConnection(api.host, int(api.port), timeout=120)
    try:
        conn.request("POST", path, body=json.dumps(body).encode(),
                     headers={**AUTH, "Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        assert resp.getheader("Content-Type") == "application/x-ndjson"
        lines = []
        while raw := resp.readline():
            lines.append(json.loads(raw))
        return lines
    finally:
        conn.close()


def test_pull_streams_ndjson_progress_and_in_stream_errors(procs, tmp_path, stack):
    registry = LocalRegistry(tmp_path)
    app = ComposeProject(unique_name("aiboxpulls"))
    repo = f"aibox-test/app-{uuid.uuid4().hex[:8]}:1"
    try:
        v1 = busybox_image(f"aibox-test/app-v1-{uuid.uuid4().hex[:6]}:1", marker="v1 " + uuid.uuid4().hex)
        ref = registry.push(v1, repo)
        app.run("app", WORKER_SCRIPT, image=ref)
        v2_tag = f"aibox-test/app-v2-{uuid.uuid4().hex[:6]}:1"
        v2 = busybox_image(v2_tag, marker="v2 " + uuid.uuid4().hex)
        registry.push(v2_tag, repo)
        docker("rmi", ref, v2_tag)
        missing_ref = f"{registry.host}/aibox-test/missing-{uuid.uuid4().hex[:6]}:1"
        docker("tag", v1, missing_ref)  # exists locally, never pushed
        app.run("broken", WORKER_SCRIPT, image=missing_ref)

        _, api = start_controller(procs, app.name, tmp_path / "audit")
        # Refusals before anything runs stay plain JSON errors.
        assert_error(api.post("/images/pull?stream=true", {"services": ["app"]}), 400, "confirmation_required")
        assert_error(api.post("/images/pull?stream=maybe", {"services": ["app"], "confirm": True}),
                     400, "invalid_query")

        lines = read_ndjson(api, "/images/pull", {"services": ["app"], "confirm": True},
                            headers={"Accept": "application/x-ndjson", "X-Actor": "dashboard"})
        *events, last = lines
        assert events and all(e["service"] == "app" and "status" in e for e in events), lines
        assert any("Downloaded newer image" in e["status"] for e in events), events
        assert not any("error" in e for e in events), events
        assert last["done"] is True and last["ok"] is True, last
        (res,) = last["results"]
        assert res["ok"] is True and res["pulled_image_id"] == v2 and res["drift"] is True, res
        assert "does not change running containers" in last["note"]

        lines = read_ndjson(api, "/images/pull?stream=true", {"services": ["broken"], "confirm": True})
        *events, last = lines
        errors = [e for e in events if "error" in e]
        assert len(errors) == 1 and errors[0]["service"] == "broken" and errors[0]["error"], lines
        assert last["done"] is True and last["ok"] is False, last
        assert last["error"]["code"] == "pull_failed", last
        assert last["results"][0]["error"] == errors[0]["error"], last

        events = outcomes(api.get("/audit?action=pull")[2]["events"])
        assert [(e["resource"], e["result"]) for e in events] == [("broken", "error"), ("app", "ok")]
        assert events[1]["metadata"]["drift"] is True and events[1]["actor"] == "dashboard"
    finally:
        app.cleanup()
        registry.stop()
        for row in docker("image", "ls", "--format", "{{.ID}} {{.Repository}}").stdout.splitlines():
            image_id, repo_name = row.split(" ", 1)
            if repo_name.startswith((registry.host, "aibox-test/app-")):
                docker("rmi", "-f", image_id, check=False)


# ---------- audit log ----------

def test_post_audit_records_events_for_other_components(procs, tmp_path, stack):
    p, _ = stack
    _, api = start_controller(procs, p.name, tmp_path / "audit")
    status, headers, ev = api.post("/audit", {"action": "mcp_add", "resource": "time", "metadata": {"url": "x"}},
                                   headers={"X-Actor": "dashboard", "X-Actor-User": "bob", "X-Request-ID": "r-9"})
    assert status == 201, ev
    assert ev["seq"] == 1 and ev["action"] == "mcp_add" and ev["resource"] == "time"
    assert ev["actor"] == "dashboard" and ev["result"] == "ok" and ev["correlation_id"] == "r-9"
    assert ev["metadata"] == {"url": "x", "user": "bob"}
    assert len(ev["prev_hash"]) == 64
    status, _, ev2 = api.post("/audit", {"action": "model_pull", "resource": "llama3", "actor": "edge",
                                         "result": "error", "correlation_id": "c-2"})
    assert status == 201 and ev2["seq"] == 2 and ev2["actor"] == "edge" and ev2["result"] == "error"
    assert_error(api.post("/audit", {"action": "Bad Action", "resource": "x"}), 400, "invalid_body")
    assert_error(api.post("/audit", {"action": "a", "resource": "x", "result": "maybe"}), 400, "invalid_body")
    assert_error(api.post("/audit", {"action": "a", "resource": "x", "extra": 1}), 400, "invalid_body")
    assert_error(api.post("/audit", {"action": "a", "resource": "x", "metadata": {"blob": "x" * 20000}}),
                 400, "invalid_body")
    assert_error(api.post("/audit", {"action": "a", "resource": "x", "metadata": [1]}), 400, "invalid_body")
    # The controller's own actions are recorded only by the controller.
    for own in ("restart", "pull", "audit_recovered"):
        assert_error(api.post("/audit", {"action": own, "resource": "x"}), 400, "invalid_body")
    # Another component's intent, then its outcome naming the intent.
    status, _, intent = api.post("/audit", {"action": "model_delete", "resource": "m", "result": "intent"})
    assert status == 201 and intent["result"] == "intent", intent
    status, _, outcome = api.post("/audit", {"action": "model_delete", "resource": "m", "result": "ok",
                                             "metadata": {"intent_seq": intent["seq"]}})
    assert status == 201 and outcome["metadata"]["intent_seq"] == intent["seq"], outcome
    assert_error(api.post("/audit", {"action": "a", "resource": "x"}, auth=False), 401, "unauthorized")

    status, headers, text = api.get("/audit?format=jsonl")
    assert status == 200 and headers["content-type"] == "application/x-ndjson"
    assert [json.loads(l)["seq"] for l in text.decode().splitlines()] == [4, 3, 2, 1]
    assert api.get("/audit?since=2999-01-01T00:00:00Z")[2]["events"] == []
    assert len(api.get("/audit?since=2000-01-01T00:00:00Z")[2]["events"]) == 4
    assert api.get("/audit?actor=edge")[2]["count"] == 1
    assert_error(api.get("/audit?since=yesterday"), 400, "invalid_query")
    assert_error(api.get("/audit?limit=0"), 400, "invalid_query")
    assert_error(api.get("/audit?format=xml"), 400, "invalid_query")
    status, _, report = api.get("/audit/verify")
    assert status == 200 and report["ok"] is True and report["events"] == 4 and report["last_seq"] == 4


def test_actions_are_refused_while_the_audit_log_cannot_be_written(procs, tmp_path, stack):
    p, _ = stack
    audit_dir = tmp_path / "audit"
    _, api = start_controller(procs, p.name, audit_dir, env={"AUDIT_MAX_BYTES": "1024", "AUDIT_KEEP": "1"})
    assert api.post("/audit", {"action": "mcp_add", "resource": "pad", "metadata": {"pad": "x" * 1000}})[0] == 201
    # The next event must rotate audit.log, which needs audit.log.1 gone; a directory there blocks it.
    (audit_dir / "audit.log.1").mkdir()
    before = started_at(p, "worker")
    # The failure is found when the intent is written, before the action: nothing is done.
    status, _, body = api.post("/services/worker/restart", {"confirm": True})
    assert_error((status, None, body), 503, "audit_unavailable")
    assert started_at(p, "worker") == before
    # From then on actions are refused (fail closed) and nothing is done.
    assert_error(api.post("/services/worker/restart", {"confirm": True}), 503, "audit_unavailable")
    assert_error(api.get("/services/worker/logs"), 503, "audit_unavailable")
    assert_error(api.post("/audit", {"action": "mcp_add", "resource": "x"}), 503, "audit_unavailable")
    assert started_at(p, "worker") == before
    # Once the log is writable again the gap is recorded and actions resume.
    (audit_dir / "audit.log.1").rmdir()
    status, _, body = api.post("/services/worker/restart", {"confirm": True})
    assert status == 200, body
    events = api.get("/audit")[2]["events"]
    # (AUDIT_KEEP=1: the rotated file holding seq 1 may be gone by now.)
    assert [(e["seq"], e["action"], e["result"]) for e in events][:3] == [
        (4, "restart", "ok"), (3, "restart", "intent"), (2, "audit_recovered", "ok")]
    assert events[2]["actor"] == "controller" and events[2]["metadata"]["error"]
    assert verify_cli(audit_dir).returncode == 0


@pytest.mark.parametrize("tamper", ["edit", "delete", "reorder"])
def test_verifier_detects_tampering_in_the_middle(procs, tmp_path, stack, tamper):
    p, _ = stack
    audit_dir = tmp_path / "audit"
    ctl, api = start_controller(procs, p.name, audit_dir)
    for i in range(6):
        assert api.post("/audit", {"action": "mcp_add", "resource": f"srv{i}"})[0] == 201
    ctl.stop()
    assert verify_cli(audit_dir).returncode == 0
    path = audit_dir / "audit.log"
    lines = path.read_text().splitlines(keepends=True)
    if tamper == "edit":
        lines[2] = lines[2].replace('"srv2"', '"srvX"')
        expect = ("seq 4", "line 4")
    elif tamper == "delete":
        del lines[2]
        expect = ("seq 4", "line 3")
    else:
        lines[2], lines[3] = lines[3], lines[2]
        expect = ("seq 4", "line 3")
    path.write_text("".join(lines))
    res = verify_cli(audit_dir)
    assert res.returncode == 1, res.stdout + res.stderr
    assert res.stdout.startswith("broken:"), res.stdout
    for needle in (*expect, "audit.log"):
        assert needle in res.stdout, res.stdout


def test_a_shortened_log_is_caught_against_the_head_anchor(procs, tmp_path, stack):
    p, _ = stack
    audit_dir = tmp_path / "audit"
    ctl, api = start_controller(procs, p.name, audit_dir, env={"AUDIT_CHECK_INTERVAL_SECS": "1"})
    for i in range(5):
        assert api.post("/audit", {"action": "mcp_add", "resource": f"srv{i}"})[0] == 201
    status, _, report = api.get("/audit/head")
    head = report["head"]
    assert status == 200 and head["seq"] == 5 and len(head["hash"]) == 64, report
    assert api.get("/health", auth=False)[2]["audit"]["head"] == head
    assert (audit_dir / "audit.head").read_text().strip() == f"{5:020}:{head['hash']}"
    anchor = f"{head['seq']}:{head['hash']}"
    assert verify_cli(audit_dir, args=("--expect-head", anchor)).returncode == 0
    wait_for(lambda: api.get("/audit/head")[2]["check"], what="a first self-check")
    assert api.get("/audit/head")[2]["check"]["ok"] is True

    # An attacker with write access drops the last two events: the chain itself still verifies.
    path = audit_dir / "audit.log"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:3]))
    res = verify_cli(audit_dir)
    assert res.returncode == 0 and res.stdout.strip() == "ok: 3 events", res.stdout
    # ... but not against the head anchor,
    res = verify_cli(audit_dir, args=("--expect-head", anchor))
    assert res.returncode == 1 and "2 event(s) missing" in res.stdout, res.stdout + res.stderr
    # ... and the running controller's self-check raises the alarm: an ERROR line and a flag.
    check = wait_for(lambda: (c := api.get("/audit/head")[2]["check"]) and c["alarm"] and c, what="the alarm")
    assert check["ok"] is False and "missing" in check["alarm"], check
    assert "missing" in api.get("/health", auth=False)[2]["audit"]["alarm"]
    ctl.wait_for_line(r"ERROR.*AUDIT ALARM")
    ctl.stop()
    # A new process refuses to continue a log shorter than its anchor.
    env = dict(os.environ, OPS_CONTROLLER_TOKEN=TOKEN, COMPOSE_PROJECT_NAME=p.name,
               CONTROLLER_LISTEN="127.0.0.1:0", CONTROLLER_AUDIT_DIR=str(audit_dir))
    res = subprocess.run([str(BIN / "controller")], capture_output=True, text=True, env=env, timeout=30)
    assert res.returncode != 0 and "head anchor" in res.stderr, res.stderr
    assert verify_cli(audit_dir, args=("--expect-head", "5:nothex")).returncode == 2


def test_kill_9_during_a_burst_loses_no_acknowledged_event(procs, tmp_path, stack):
    p, _ = stack
    audit_dir = tmp_path / "audit"
    ctl, api = start_controller(procs, p.name, audit_dir)
    acked: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def writer(w: int):
        i = 0
        while not stop.is_set():
            cid = f"w{w}-{i}"
            i += 1
            try:
                if w % 2:  # a real audited action: reading a service's logs
                    status, _, _ = api.get("/services/web/logs?tail=1", headers={"X-Request-ID": cid}, timeout=5)
                else:
                    status, _, _ = api.post("/audit", {"action": "model_pull", "resource": "m",
                                                       "correlation_id": cid}, timeout=5)
            except (OSError, http.client.HTTPException):
                return
            if status in (200, 201):
                with lock:
                    acked.append(cid)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(acked) < 100 and time.monotonic() < deadline:
        time.sleep(0.01)
    ctl.signal(signal.SIGKILL)  # mid-burst: eight writers are in flight
    stop.set()
    for t in threads:
        t.join(timeout=10)
    assert len(acked) >= 100
    raw = (audit_dir / "audit.log").read_bytes()
    assert raw.endswith(b"\n"), "torn last line"
    stored = {e["correlation_id"] for e in audit_lines(audit_dir)}
    missing = set(acked) - stored
    assert not missing, f"{len(missing)} acknowledged events lost"
    res = verify_cli(audit_dir)
    assert res.returncode == 0, res.stdout + res.stderr
    # The chain carries on after a restart.
    _, api2 = start_controller(procs, p.name, audit_dir, name="controller-again")
    status, _, ev = api2.post("/audit", {"action": "mcp_remove", "resource": "time"})
    assert status == 201 and ev["seq"] == len(stored) + 1
    assert verify_cli(audit_dir).returncode == 0


def test_rotation_under_concurrent_writes_keeps_every_event(procs, tmp_path, stack):
    p, _ = stack
    audit_dir = tmp_path / "audit"
    _, api = start_controller(procs, p.name, audit_dir, env={"AUDIT_MAX_BYTES": "4096", "AUDIT_KEEP": "200"})

    def record(i: int) -> str:
        cid = f"rot-{i}"
        status, _, body = api.post("/audit", {"action": "mcp_add", "resource": f"s{i}", "correlation_id": cid})
        assert status == 201, body
        return cid

    with ThreadPoolExecutor(max_workers=8) as pool:
        cids = list(pool.map(record, range(300)))
    rotated = list(audit_dir.glob("audit.log.*"))
    assert len(rotated) >= 10, rotated
    assert all(f.stat().st_size <= 4096 for f in [*rotated, audit_dir / "audit.log"])
    events = audit_lines(audit_dir)
    assert [e["seq"] for e in events] == list(range(1, 301))
    assert {e["correlation_id"] for e in events} == set(cids)
    for f in [*rotated, audit_dir / "audit.log"]:
        assert f.read_bytes().endswith(b"\n")
    res = verify_cli(audit_dir)
    assert res.returncode == 0 and res.stdout.strip() == "ok: 300 events", res.stdout + res.stderr
    status, _, report = api.get("/audit/verify")
    assert report["ok"] is True and report["events"] == 300
    # Reading back spans the rotated files.
    assert [e["seq"] for e in api.get("/audit?limit=1000")[2]["events"]] == list(range(300, 0, -1))
    # A whole rotated file gone from the middle is a missing link.
    middle = sorted(rotated, key=lambda f: int(f.suffix[1:]))[len(rotated) // 2]
    middle.unlink()
    res = verify_cli(audit_dir)
    assert res.returncode == 1 and "missing" in res.stdout, res.stdout
