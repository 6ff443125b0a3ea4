"""The dashboard in real Chromium, behind the real edge, acting through the real controller on real
Docker containers: sign in, act on a service and watch it change, read and follow its logs, see
the audit row; wrong passwords and forms without their CSRF token refused; screenshots of every
page at 1280 and 375 px (artifacts/screenshots/).
"""
from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import urllib.error
import urllib.parse
import urllib.request

import pytest
from selenium.webdriver.common.by import By

from conftest import BIN, free_port, start_edge
from controller_fixtures import BUSYBOX, ComposeProject, docker
from dashboard_fixtures import (CONTROLLER_TOKEN, EDGE_ADMIN, N8N_KEY, PASSWORD, VENV_BIN, PlainClient, chrome, dashboard_stack,
                                screenshot, wait_edge_ready, wait_until)

PAGES = {
    "overview": "/",
    "services": "/services",
    "confirm": "/services/web/restart",
    "logs": "/services/web/logs?tail=100",
    "models": "/models",
    "tools": "/tools",
    "keys": "/keys",
    "audit": "/audit",
}


@pytest.fixture(scope="module")
def stack(module_procs, tmp_path_factory):
    project = ComposeProject()
    try:
        s = dashboard_stack(module_procs, tmp_path_factory.mktemp("dashboard"), project)
        wait_edge_ready(s.url)
        yield s
    finally:
        module_procs.stop_all()
        project.cleanup()


def sign_in(driver, base: str, password: str) -> None:
    driver.get(base + "/login")
    field = driver.find_element(By.ID, "password")
    field.send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "form[action='/login'] button[type=submit]").click()


def flash_text(driver) -> str:
    els = driver.find_elements(By.CSS_SELECTOR, ".flashes")
    return els[0].text if els else ""


def card_state(driver, service: str) -> str:
    return driver.find_element(By.ID, f"svc-{service}").get_attribute("data-state")


def act(driver, service: str, action: str) -> str:
    """Click the card's button, read the dry run, confirm; returns the flash after the redirect."""
    driver.find_element(By.CSS_SELECTOR, f"#svc-{service} a[href='/services/{service}/{action}']").click()
    dry = wait_until(lambda: driver.find_element(By.CSS_SELECTOR, "section.confirm").text, what="dry run")
    assert f"would: {action} {service}" in dry, dry
    driver.find_element(By.CSS_SELECTOR, f"form[action='/services/{service}/{action}'] button[type=submit]").click()
    return wait_until(lambda: flash_text(driver), what=f"{action} flash")


def test_dashboard_refuses_to_start_without_a_password():
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASHBOARD_")}
    env["DASHBOARD_LISTEN"] = "127.0.0.1:0"
    res = subprocess.run([str(BIN / "dashboard")], env=env, capture_output=True, text=True, timeout=30)
    assert res.returncode == 2
    assert "DASHBOARD_PASSWORD" in res.stderr and "refuses to run open" in res.stderr, res.stderr


def test_dashboard_wrong_password_is_refused(stack):
    d = chrome(1280)
    try:
        sign_in(d, stack.url, "not-the-password")
        err = wait_until(lambda: d.find_element(By.ID, "signin-error").text, what="sign-in error")
        assert "Wrong password" in err
        assert d.get_cookie("aibox_session") is None
        d.get(stack.url + "/audit")
        assert "/login" in d.current_url, "still signed out"
    finally:
        d.quit()


def test_dashboard_sign_in_restart_logs_and_audit_row(stack):
    d = chrome(1280)
    try:
        sign_in(d, stack.url, PASSWORD)
        wait_until(lambda: d.find_element(By.ID, "svc-web"), what="services page")
        assert "Signed in as admin" in d.find_element(By.CSS_SELECTOR, ".who").text
        assert card_state(d, "web") == "running"
        assert "healthy" in d.find_element(By.ID, "svc-web").text or "starting" in d.find_element(By.ID, "svc-web").text

        # Stop the worker and watch its card change, then start it again.
        assert "Stopped worker." in act(d, "worker", "stop")
        wait_until(lambda: card_state(d, "worker") == "exited", what="worker exited on the page")
        assert stack.project.inspect("worker")["State"]["Status"] == "exited"
        assert "Started worker." in act(d, "worker", "start")
        wait_until(lambda: card_state(d, "worker") == "running", what="worker running on the page")
        assert stack.project.inspect("worker")["State"]["Running"] is True

        # Restart web: Docker's start time moves, and the flash names the request id.
        before = stack.project.inspect("web")["State"]["StartedAt"]
        flash = act(d, "web", "restart")
        assert "Restarted web." in flash, flash
        request_id = re.search(r"request ([0-9a-f-]{36})", flash).group(1)
        assert stack.project.inspect("web")["State"]["StartedAt"] != before

        # Logs: stdout and stderr lines, then follow mode streams new lines in.
        d.find_element(By.CSS_SELECTOR, "#svc-web a[href='/services/web/logs']").click()
        wait_until(lambda: "out-hello" in d.find_element(By.ID, "log").text, what="log lines")
        assert "err-hello" in d.find_element(By.CSS_SELECTOR, "#log li.s-stderr").text
        d.find_element(By.CSS_SELECTOR, "input[name=follow]").click()
        d.find_element(By.CSS_SELECTOR, "form.toolbar button[type=submit]").click()
        wait_until(lambda: d.find_element(By.ID, "follow-state").text == "following live", what="follow mode")

        # (Docker keeps the lines of the container's previous run, so count lines, not tick numbers.)
        def tick_lines() -> int:
            return len(re.findall(r"tick \d+", d.find_element(By.ID, "log").text))
        first = wait_until(tick_lines, what="tick lines")
        wait_until(lambda: tick_lines() >= first + 2, timeout=15, what="new lines while following")

        # The audit page shows the restart, by the dashboard, for the signed-in user.
        d.get(stack.url + "/audit?action=restart")
        row = wait_until(lambda: [r for r in d.find_elements(By.CSS_SELECTOR, "#audit tbody tr") if request_id in r.text],
                         what="audit row")[0]
        cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]
        assert cells[1:6] == ["restart", "web", "dashboard", "admin", "ok"], cells
        # ... and the controller's log has it with the same correlation id.
        events = [e for e in stack.audit_events() if e.get("correlation_id") == request_id]
        assert [(e["action"], e["resource"], e["actor"], e["result"], e["metadata"].get("user")) for e in events] == \
            [("restart", "web", "dashboard", "intent", "admin"), ("restart", "web", "dashboard", "ok", "admin")]
        assert any(e["action"] == "logs" and e["actor"] == "dashboard" for e in stack.audit_events()), \
            "reading logs is audited too"
    finally:
        d.quit()


def test_dashboard_services_page_refreshes_itself(stack):
    """With JavaScript, the status region updates in place (no reload) when a container changes."""
    d = chrome(1280)
    try:
        sign_in(d, stack.url, PASSWORD)
        wait_until(lambda: card_state(d, "worker") == "running", what="worker running")
        d.execute_script("window.__notReloaded = true")
        docker("stop", stack.project.container_name("worker"))
        try:
            wait_until(lambda: card_state(d, "worker") == "exited", timeout=30, what="card refreshed to exited")
            assert d.execute_script("return window.__notReloaded === true"), "the page was reloaded"
        finally:
            docker("start", stack.project.container_name("worker"))
        wait_until(lambda: card_state(d, "worker") == "running", timeout=30, what="card refreshed to running")
    finally:
        d.quit()


def test_dashboard_form_without_csrf_token_is_refused(stack):
    c = PlainClient(stack.url)
    status, _, _ = c.request("POST", "/services/web/restart", form={"confirm": "yes"})
    assert status == 401, "not signed in"
    c.sign_in()
    before = stack.project.inspect("web")["State"]["StartedAt"]
    restarts = sum(1 for e in stack.audit_events() if e["action"] == "restart")
    for form in ({"confirm": "yes"}, {"confirm": "yes", "csrf": "forged-token"}):
        status, _, body = c.request("POST", "/services/web/restart", form=form)
        assert status == 403, (status, body)
        assert "security token" in body
    assert stack.project.inspect("web")["State"]["StartedAt"] == before, "nothing was restarted"
    assert sum(1 for e in stack.audit_events() if e["action"] == "restart") == restarts
    # The same form with the session's token goes through.
    _, _, page = c.request("GET", "/")
    token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    status, headers, _ = c.request("POST", "/services/worker/restart", form={"confirm": "yes", "csrf": token})
    assert (status, headers["location"]) == (303, "/")
    # Security headers on every page.
    _, headers, _ = c.request("GET", "/")
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"


def test_stopping_the_dashboard_needs_its_name_typed(stack):
    """A service the dashboard depends on (here a stand-in container named `dashboard`): the
    confirmation says what becomes unreachable and how to recover, and the stop happens only with
    the name typed; the dashboard refuses before the controller is asked, the controller again."""
    stack.project.run("dashboard", "trap 'exit 0' TERM; while true; do sleep 1; done")
    try:
        c = PlainClient(stack.url)
        c.sign_in()
        _, _, page = c.request("GET", "/services/dashboard/stop")
        assert "locks you out" in page and "./aibox up" in page, page
        assert re.search(r'<input[^>]*name="confirm_service"[^>]*required', page), page
        token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        for typed in ({}, {"confirm_service": "dash"}, {"confirm_service": "web"}):
            status, headers, _ = c.request("POST", "/services/dashboard/stop",
                                           form={"csrf": token, "confirm": "yes", **typed})
            assert (status, headers["location"]) == (303, "/services/dashboard/stop")
            _, _, again = c.request("GET", "/services/dashboard/stop")
            assert "type dashboard to confirm" in again, again
        assert stack.project.inspect("dashboard")["State"]["Running"] is True
        assert not [e for e in stack.audit_events() if e["resource"] == "dashboard"], "nothing was asked of the controller"
        status, headers, _ = c.request("POST", "/services/dashboard/stop",
                                       form={"csrf": token, "confirm": "yes", "confirm_service": "dashboard"})
        assert (status, headers["location"]) == (303, "/")
        assert stack.project.inspect("dashboard")["State"]["Running"] is False
        assert [(e["action"], e["result"]) for e in stack.audit_events() if e["resource"] == "dashboard"] == [
            ("stop", "intent"), ("stop", "ok")]
        # Another service's stop page asks for nothing typed.
        _, _, page = c.request("GET", "/services/worker/stop")
        assert "confirm_service" not in page and "locks you out" not in page
    finally:
        docker("rm", "-f", stack.project.container_name("dashboard"), check=False)


def test_a_service_never_created_is_listed_and_created_from_the_dashboard(stack, procs, tmp_path):
    """With the compose model (what `./aibox up` writes), a profile service that has no container
    is listed as "not created"; "Create and start" shows the controller's dry run and creates it."""
    extra = stack.project.container_name("extra")
    model = tmp_path / "compose.model.yml"
    model.write_text(f"""services:
  web: {{image: {BUSYBOX}}}
  worker: {{image: {BUSYBOX}}}
  extra:
    image: {BUSYBOX}
    profiles: [extra]
    container_name: {extra}
    network_mode: none
    stop_grace_period: 1s
    command: ["sh", "-c", "echo extra-up; trap 'exit 0' TERM; while true; do sleep 1; done"]
""")
    controller = procs.start("controller-model", ["controller"], env={
        "OPS_CONTROLLER_TOKEN": CONTROLLER_TOKEN, "COMPOSE_PROJECT_NAME": stack.project.name,
        "CONTROLLER_LISTEN": "127.0.0.1:0", "CONTROLLER_AUDIT_DIR": str(tmp_path / "audit"),
        "CONTROLLER_COMPOSE_MODEL": str(model)})
    dash = procs.start("dashboard-model", ["dashboard"], env={
        "DASHBOARD_LISTEN": "127.0.0.1:0", "DASHBOARD_PASSWORD": PASSWORD,
        "CONTROLLER_URL": controller.url(), "OPS_CONTROLLER_TOKEN": CONTROLLER_TOKEN,
        "EDGE_URL": stack.edge.url(), "EDGE_ADMIN_TOKEN": EDGE_ADMIN})
    try:
        c = PlainClient(dash.url())
        c.sign_in()
        _, _, page = c.request("GET", "/services")
        card = re.search(r'id="svc-extra".*?</article>', page, re.S).group(0)
        assert 'data-state="not created"' in card and "profile extra" in card, card
        assert 'href="/services/extra/up"' in card and "Create and start" in card, card
        _, _, confirm = c.request("GET", "/services/extra/up")
        assert "create and start extra" in confirm, confirm
        token = re.search(r'name="csrf" value="([^"]+)"', confirm).group(1)
        status, headers, _ = c.request("POST", "/services/extra/up", form={"csrf": token, "confirm": "yes"})
        assert (status, headers["location"]) == (303, "/")
        _, _, page = c.request("GET", "/")
        assert "Created and started extra." in page, page
        assert json.loads(docker("inspect", extra).stdout)[0]["State"]["Running"] is True
        card = re.search(r'id="svc-extra".*?</article>', page, re.S).group(0)
        assert 'data-state="running"' in card, card
        events = [json.loads(line) for line in (tmp_path / "audit" / "audit.log").read_text().splitlines()]
        assert [(e["action"], e["resource"], e["result"], e["actor"]) for e in events] == [
            ("up", "extra", "intent", "dashboard"), ("up", "extra", "ok", "dashboard")]
    finally:
        docker("rm", "-f", extra, check=False)


def test_a_user_who_leaves_mid_restart_still_leaves_intent_and_outcome(stack):
    """The browser's connection drops while the dashboard waits for the controller: the restart
    goes ahead and the audit log has both events under the edge's request id."""
    stack.project.run("slow", "trap '' TERM; while true; do sleep 1; done")  # restart takes 1 s
    try:
        c = PlainClient(stack.url)
        c.sign_in()
        _, _, page = c.request("GET", "/")
        token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        before = stack.project.inspect("slow")["State"]["StartedAt"]
        conn = http.client.HTTPConnection(c.host, c.port, timeout=0.3)
        try:
            conn.request("POST", "/services/slow/restart", body=urllib.parse.urlencode({"csrf": token, "confirm": "yes"}),
                         headers={"Content-Type": "application/x-www-form-urlencoded", "Cookie": c.cookie,
                                  "X-Request-ID": "dash-hangup-1"})
            with pytest.raises((TimeoutError, OSError, http.client.HTTPException)):
                conn.getresponse()
        finally:
            conn.close()
        events = wait_until(lambda: len(mine := [e for e in stack.audit_events()
                                                 if e["correlation_id"] == "dash-hangup-1"]) == 2 and mine,
                            timeout=30, what="intent and outcome")
        assert [(e["action"], e["resource"], e["actor"], e["result"]) for e in events] == [
            ("restart", "slow", "dashboard", "intent"), ("restart", "slow", "dashboard", "ok")]
        assert events[1]["metadata"]["intent_seq"] == events[0]["seq"]
        assert stack.project.inspect("slow")["State"]["StartedAt"] != before
    finally:
        docker("rm", "-f", stack.project.container_name("slow"), check=False)


NOT_OBJECTS = {"array": b"[true]", "string": b'"llama3:8b"', "number": b"1", "null": b"null"}


def raw_request(base: str, method: str, path: str, body: bytes, headers: dict) -> tuple[int, str, str]:
    u = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type", ""), resp.read().decode(errors="replace")
    finally:
        conn.close()


@pytest.mark.parametrize("kind", NOT_OBJECTS)
def test_edge_admin_routes_take_json_objects_only(stack, kind):
    """Each JSON route of the edge answers 400 in its own protocol's error shape."""
    admin = {"Authorization": f"Bearer {EDGE_ADMIN}", "Content-Type": "application/json"}
    raw = NOT_OBJECTS[kind]
    status, ctype, body = raw_request(stack.url, "PUT", "/api/mcp/registry", raw, admin)
    assert (status, ctype) == (400, "application/problem+json"), body
    assert "must be an object" in json.loads(body)["detail"], body
    for path in ("/api/pull", "/api/delete", "/api/copy", "/api/create", "/api/chat"):
        method = "DELETE" if path == "/api/delete" else "POST"
        status, _, body = raw_request(stack.url, method, path, raw, admin)
        assert status == 400 and "must be a JSON object" in json.loads(body)["error"], (path, body)
    status, _, body = raw_request(stack.url, "POST", "/v1/chat/completions", raw, admin)
    assert status == 400 and "must be a JSON object" in json.loads(body)["error"]["message"], body
    assert not [e for e in stack.audit_events() if e["actor"] == "edge"], "nothing was recorded"


@pytest.mark.parametrize("kind", NOT_OBJECTS)
def test_dashboard_actions_take_forms_not_json(stack, kind):
    c = PlainClient(stack.url)
    c.sign_in()
    before = stack.project.inspect("web")["State"]["StartedAt"]
    for path in ("/services/web/restart", "/services/web/pull", "/models/pull", "/tools/add"):
        status, ctype, body = raw_request(stack.url, "POST", path, NOT_OBJECTS[kind],
                                          {"Content-Type": "application/json", "Cookie": c.cookie})
        assert status == 400 and ctype.startswith("text/html") and "forms only" in body, (path, status, body)
    assert stack.project.inspect("web")["State"]["StartedAt"] == before, "nothing was restarted"


def test_a_down_provider_shows_not_ready_instead_of_an_error(stack, module_procs, tmp_path):
    """A real edge whose only provider is down answers /ready 503 with "models": null; the
    dashboard reads that as "not ready", not as an error."""
    closed = free_port()  # nothing listens there
    edge = start_edge(module_procs, tmp_path, f"""
admin_token_env = "AIBOX_ADMIN_TOKEN"

[[providers]]
name = "web"
kind = "ollama"
base_url = "http://127.0.0.1:{closed}"

[egress]
dns_servers = ["127.0.0.1:9"]
""", env={"AIBOX_ADMIN_TOKEN": EDGE_ADMIN}, name="edge-down")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(edge.url() + "/ready", timeout=5)
    assert e.value.code == 503
    assert json.load(e.value)["providers"][0]["endpoints"][0]["models"] is None
    dash = module_procs.start("dashboard-down", ["dashboard"], env={
        "DASHBOARD_LISTEN": "127.0.0.1:0", "DASHBOARD_PASSWORD": PASSWORD,
        "CONTROLLER_URL": stack.controller.url(), "OPS_CONTROLLER_TOKEN": CONTROLLER_TOKEN,
        "EDGE_URL": edge.url(), "EDGE_ADMIN_TOKEN": EDGE_ADMIN})
    c = PlainClient(dash.url())
    c.sign_in()
    _, _, services = c.request("GET", "/")
    assert "HTTP 503" not in services and "unavailable" not in services, services
    card = re.search(r'id="svc-web".*?</article>', services, re.S).group(0)
    assert "not ready" in card, card
    _, _, models = c.request("GET", "/models")
    assert "HTTP 503" not in models and "not ready" in models, models
    assert "unknown (no answer yet)" in models


def test_dashboard_refuses_mcp_server_names_the_edge_refuses(stack):
    c = PlainClient(stack.url)
    c.sign_in()
    for name in ("a__b", "trailing_", "x" * 49):
        _, _, page = c.request("GET", "/tools")
        token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        status, headers, _ = c.request("POST", "/tools/add", form={
            "csrf": token, "name": name, "source": "url", "target": "http://127.0.0.1:9/mcp"})
        assert status == 303, status
        _, _, page = c.request("GET", headers["location"].split("#")[0])
        assert "is not a server name" in page and "__" in page, page
    assert not [e for e in stack.audit_events() if e["action"] == "mcp_add"], "nothing was added"


def test_dashboard_adds_servers_of_each_kind_and_keeps_secrets_out_of_the_registry(stack):
    secret = "ghp_" + os.urandom(12).hex()
    d = chrome(1280)
    try:
        sign_in(d, stack.url, PASSWORD)

        def add(name: str, kind: str, target: str, **fields: str) -> str:
            d.get(stack.url + "/tools")
            form = wait_until(lambda: d.find_element(By.ID, "add-server"), what="the add form")
            form.find_element(By.NAME, "name").send_keys(name)
            form.find_element(By.CSS_SELECTOR, f"input[name=source][value={kind}]").click()
            form.find_element(By.NAME, "target").send_keys(target)
            for field, text in fields.items():
                form.find_element(By.NAME, field).send_keys(text)
            form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
            return wait_until(lambda: flash_text(d), what=f"the flash after adding {name}")

        # An image entry with its secret: entered once, into the secrets file.
        flash = add("github", "image", "mcp/github", secrets=f"GITHUB_PERSONAL_ACCESS_TOKEN={secret}")
        assert "Added github" in flash and "Saved GITHUB_PERSONAL_ACCESS_TOKEN" in flash, flash
        card = wait_until(lambda: d.find_element(By.ID, "tool-github").text, what="github's card")
        assert "GITHUB_PERSONAL_ACCESS_TOKEN" in card and "••••••••" in card, card
        assert secret not in d.page_source
        registry = json.loads((stack.mcp_dir / "registry.json").read_text())
        assert registry["servers"]["github"] == {
            "image": "mcp/github", "env_schema": {"GITHUB_PERSONAL_ACCESS_TOKEN": {"required": True}}}
        assert secret not in (stack.mcp_dir / "registry.json").read_text()
        env_file = stack.mcp_dir / ".env"
        assert f'GITHUB_PERSONAL_ACCESS_TOKEN="{secret}"' in env_file.read_text()
        assert env_file.stat().st_mode & 0o777 == 0o600
        # The edge (outside the box here) loaded it with its secret: not served, not missing secrets.
        wait_until(lambda: "not served" in d.find_element(By.ID, "tool-github").text or d.refresh(),
                   what="github not served natively")
        # Audited by name, never by value.
        events = wait_until(lambda: [e for e in stack.audit_events() if e["action"] == "mcp_secret_set"],
                            what="the mcp_secret_set event")
        assert events[-1]["metadata"]["names"] == ["GITHUB_PERSONAL_ACCESS_TOKEN"], events[-1]
        assert secret not in stack.audit_log.read_text()

        # A command entry: here (no tool containers) the edge's own child, served at once.
        server = str(VENV_BIN / "mcp-server-time")
        flash = add("clock", "command", server, args="--local-timezone\nUTC")
        assert "Added clock" in flash, flash
        wait_until(lambda: "healthy" in d.find_element(By.ID, "tool-clock").text or d.refresh(), timeout=30,
                   what="the command server healthy")
        assert json.loads((stack.mcp_dir / "registry.json").read_text())["servers"]["clock"] == {
            "command": server, "args": ["--local-timezone", "UTC"]}

        # A URL entry, and one the edge's own rules refuse (checked before anything is written).
        assert "Added far" in add("far", "url", "http://127.0.0.1:9/mcp")
        flash = add("bad", "url", "ftp://127.0.0.1/mcp")
        assert "Not added" in flash and "servers.bad.url" in flash, flash
        assert "bad" not in json.loads((stack.mcp_dir / "registry.json").read_text())["servers"]
    finally:
        d.quit()
        # Leave the registry as the other tests expect it.
        reg = json.loads((stack.mcp_dir / "registry.json").read_text())
        for name in ("github", "clock", "far"):
            reg["servers"].pop(name, None)
        req = urllib.request.Request(stack.url + "/api/mcp/registry", data=json.dumps(reg).encode(), method="PUT",
                                     headers={"Authorization": f"Bearer {EDGE_ADMIN}",
                                              "Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=30).read()


def test_audit_page_shows_the_head_the_alarm_and_a_correct_plural(stack, module_procs, tmp_path):
    audit_dir = tmp_path / "audit"
    ctl = module_procs.start("controller-alarm", ["controller"], env={
        "OPS_CONTROLLER_TOKEN": CONTROLLER_TOKEN, "COMPOSE_PROJECT_NAME": stack.project.name,
        "CONTROLLER_LISTEN": "127.0.0.1:0", "CONTROLLER_AUDIT_DIR": str(audit_dir),
        "AUDIT_CHECK_INTERVAL_SECS": "1"})
    dash = module_procs.start("dashboard-alarm", ["dashboard"], env={
        "DASHBOARD_LISTEN": "127.0.0.1:0", "DASHBOARD_PASSWORD": PASSWORD,
        "CONTROLLER_URL": ctl.url(), "OPS_CONTROLLER_TOKEN": CONTROLLER_TOKEN})
    for i in range(3):
        req = urllib.request.Request(ctl.url() + "/audit", method="POST",
                                     data=json.dumps({"action": "mcp_add", "resource": f"s{i}"}).encode(),
                                     headers={"Authorization": f"Bearer {CONTROLLER_TOKEN}",
                                              "Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=10).close()
    c = PlainClient(dash.url())
    c.sign_in()
    _, _, page = c.request("GET", "/audit?resource=s1")
    assert "1 event, newest first" in page, page
    assert "Head: seq 3" in page and "Audit alarm" not in page, page
    log = audit_dir / "audit.log"
    log.write_text("".join(log.read_text().splitlines(keepends=True)[:1]))
    page = wait_until(lambda: (p := c.request("GET", "/audit")[2]) and "Audit alarm" in p and p,
                      timeout=15, what="the alarm on the Audit page")
    assert "2 event(s) missing" in page, page


def test_locally_built_images_are_not_offered_for_pulling(stack):
    c = PlainClient(stack.url)
    c.sign_in()
    _, _, page = c.request("GET", "/")
    card = re.search(r'id="svc-web".*?</article>', page, re.S).group(0)
    assert "Pull image" not in card and "no registry has this image" in card, card
    token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    status, headers, _ = c.request("POST", "/services/web/pull", form={"csrf": token})
    assert (status, headers["location"]) == (303, "/")
    _, _, page = c.request("GET", "/")
    assert "no registry has this image" in page
    assert not [e for e in stack.audit_events() if e["action"] == "pull"], "nothing was pulled"


def test_edge_metrics_are_open_on_internal_networks_and_keyed_elsewhere(module_procs, tmp_path):
    def get(url: str, headers: dict | None = None) -> int:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
    base = 'admin_token_env = "AIBOX_ADMIN_TOKEN"\n[egress]\ndns_servers = ["127.0.0.1:9"]\n'
    open_edge = start_edge(module_procs, tmp_path, base, env={"AIBOX_ADMIN_TOKEN": EDGE_ADMIN},
                           name="edge-metrics-default")
    assert get(open_edge.url() + "/metrics") == 200, "loopback is open by default"
    # Only 10.0.0.0/8 is open: a request from 127.0.0.1 now needs the admin key.
    keyed = start_edge(module_procs, tmp_path, 'metrics_open_cidrs = ["10.0.0.0/8"]\n' + base,
                       env={"AIBOX_ADMIN_TOKEN": EDGE_ADMIN}, name="edge-metrics-keyed")
    assert get(keyed.url() + "/metrics") == 401
    assert get(keyed.url() + "/metrics", {"Authorization": "Bearer wrong"}) == 401
    assert get(keyed.url() + "/metrics", {"Authorization": f"Bearer {EDGE_ADMIN}"}) == 200


def test_dashboard_models_pull_and_traffic(stack):
    # Some traffic for the charts: a chat completion by the n8n client through the edge.
    req = urllib.request.Request(stack.url + "/v1/chat/completions", method="POST",
                                 data=json.dumps({"model": "llama3:8b", "messages": [{"role": "user", "content": "hi"}]}).encode(),
                                 headers={"Authorization": f"Bearer {N8N_KEY}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200
    d = chrome(1280)
    try:
        sign_in(d, stack.url, PASSWORD)
        # The edge lists a provider's models once it has answered; on a loaded machine the first
        # answer can miss the page's first render, so the test reloads until the table is there.
        def models_table():
            found = d.find_elements(By.ID, "models")
            if not found:
                d.get(stack.url + "/models")
                found = d.find_elements(By.ID, "models")
            return found[0].text if found else None
        d.get(stack.url + "/models")
        try:
            models = wait_until(models_table, timeout=60, interval=2, what="models table")
        except AssertionError:
            raise AssertionError("no models table; the page said: " + d.find_element(By.TAG_NAME, "main").text)
        assert "llama3:8b" in models
        wait_until(lambda: "n8n" in d.find_element(By.CSS_SELECTOR, "section[aria-labelledby=traffic-title]").text,
                   what="n8n traffic chart")
        field = d.find_element(By.ID, "pull-model")
        field.send_keys("tinyllama:1b")
        d.find_element(By.CSS_SELECTOR, "form[action='/models/pull'] button").click()
        wait_until(lambda: "pulled" in d.find_element(By.ID, "pulls").text, timeout=30, what="pull finished")
        events = wait_until(lambda: [e for e in stack.audit_events() if e["action"] == "model_pull"
                                     and e["actor"] == "dashboard"], what="model_pull audit event")
        assert events[0]["metadata"]["user"] == "admin"
    finally:
        d.quit()


def test_overview_shows_the_box_at_a_glance_and_links_each_part(stack):
    """The home page: GPU memory of the loaded models (bars), traffic of the last hour (charts),
    tool servers' health, egress denials, the newest audit events and every service's card; each
    part links to its page, and the region refreshes in place."""
    req = urllib.request.Request(stack.url + "/v1/chat/completions", method="POST",
                                 data=json.dumps({"model": "llama3:8b", "messages": [{"role": "user", "content": "hi"}]}).encode(),
                                 headers={"Authorization": f"Bearer {N8N_KEY}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200
    c = PlainClient(stack.url)
    c.sign_in()
    c.request("GET", "/services/web/logs?tail=5")  # reading logs is audited
    d = chrome(1280)
    try:
        sign_in(d, stack.url, PASSWORD)
        wait_until(lambda: d.find_element(By.ID, "svc-web"), what="service cards on the overview")
        assert d.find_element(By.TAG_NAME, "h1").text == "Overview"
        assert d.find_element(By.CSS_SELECTOR, "nav a[aria-current=page]").text == "Overview"
        # The fake Ollama reports its first model loaded, all of it on the GPU.
        gpu = wait_until(lambda: d.find_element(By.ID, "ov-gpu").text if "GPU memory held" in d.find_element(By.ID, "ov-gpu").text else None,
                         timeout=30, what="GPU memory bars")
        assert "4.8 GB of GPU memory held by 1 loaded model" in gpu, gpu
        assert "not each GPU's total" in gpu
        bar = d.find_element(By.CSS_SELECTOR, "#ov-gpu svg.vram-track")
        assert "on the GPU" in bar.get_attribute("aria-label")
        traffic = wait_until(lambda: d.find_element(By.ID, "ov-traffic").text if "Requests per minute" in d.find_element(By.ID, "ov-traffic").text else None,
                             timeout=30, what="traffic charts")
        assert "out" in traffic, traffic
        assert len(d.find_elements(By.CSS_SELECTOR, "#ov-traffic figure.chart svg[role=img]")) == 2
        wait_until(lambda: "healthy" in d.find_element(By.ID, "ov-tools").text, timeout=30, what="time server healthy")
        assert "time" in d.find_element(By.ID, "ov-tools").text
        assert "None since the edge started." in d.find_element(By.ID, "ov-egress").text
        assert "logs web" in d.find_element(By.ID, "ov-audit").text, "the newest audit events"
        links = {a.get_attribute("href").removeprefix(stack.url) for a in d.find_elements(By.CSS_SELECTOR, "#overview h2 a")}
        assert links == {"/models", "/models#traffic-title", "/tools", "/egress", "/audit", "/services"}, links
        assert d.find_element(By.ID, "overview").get_attribute("data-refresh") == "10"
    finally:
        d.quit()
    _, _, models = c.request("GET", "/models")
    assert "GB of GPU memory held by 1 loaded model" in models and "not each GPU&#x27;s total" in models or \
        "not each GPU's total" in models, models


def test_dashboard_keys_create_use_and_revoke(stack):
    d = chrome(1280)
    try:
        sign_in(d, stack.url, PASSWORD)
        d.get(stack.url + "/keys")
        wait_until(lambda: d.find_element(By.ID, "keys-table"), what="keys table")
        d.find_element(By.CSS_SELECTOR, "#create-key input[name=name]").send_keys("from-dashboard")
        d.find_element(By.CSS_SELECTOR, "#create-key input[name=models]").send_keys("ollama/llama3*")
        d.find_element(By.CSS_SELECTOR, "#create-key input[name=rpm]").send_keys("30")
        d.find_element(By.CSS_SELECTOR, "#create-key button[type=submit]").click()
        key = wait_until(lambda: d.find_element(By.ID, "new-key-value").text, what="the new key, shown once")
        assert key.startswith("aibox-")
        # The key works at once and sees only its models.
        req = urllib.request.Request(stack.url + "/v1/models", headers={"Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            ids = [m["id"] for m in json.load(r)["data"]]
        assert ids == ["ollama/llama3:8b"], ids
        # Shown once: the listing never shows it again.
        d.get(stack.url + "/keys")
        row = wait_until(lambda: d.find_element(By.CSS_SELECTOR, "tr[data-client=from-dashboard]").text,
                         what="the new client's row")
        assert key not in d.page_source
        assert "ollama/llama3*" in row and "30" in row
        assert "1 req" in d.find_element(By.CSS_SELECTOR, "tr[data-client=from-dashboard] td.usage-hour").text
        # Revoke asks first.
        d.find_element(By.CSS_SELECTOR, "a[href='/keys/from-dashboard/revoke']").click()
        wait_until(lambda: "Revoke the key" in d.find_element(By.TAG_NAME, "h1").text, what="confirmation")
        d.find_element(By.CSS_SELECTOR, "form[action='/keys/from-dashboard/revoke'] button[type=submit]").click()
        assert "Revoked the key of from-dashboard" in wait_until(lambda: flash_text(d), what="revoke flash")
        assert not d.find_elements(By.CSS_SELECTOR, "tr[data-client=from-dashboard]")
        events = wait_until(lambda: [e for e in stack.audit_events() if e["resource"] == "key:from-dashboard"],
                            what="key audit events")
        assert {e["action"] for e in events} >= {"key_create"}
        wait_until(lambda: any(e["action"] == "key_revoke" for e in stack.audit_events()), what="key_revoke event")
        assert events[0]["metadata"]["user"] == "admin"
    finally:
        d.quit()


@pytest.mark.parametrize("width", [1280, 375])
def test_dashboard_screenshots_of_every_page(stack, width):
    d = chrome(width)
    try:
        d.get(stack.url + "/login")
        wait_until(lambda: d.find_element(By.ID, "password"))
        screenshot(d, "login", width)
        sign_in(d, stack.url, PASSWORD)
        wait_until(lambda: d.find_element(By.ID, "svc-web"), what="services page")
        for name, path in PAGES.items():
            d.get(stack.url + path)
            wait_until(lambda: d.find_element(By.TAG_NAME, "h1").text, what=f"{name} page")
            if name == "tools":
                wait_until(lambda: "healthy" in d.find_element(By.ID, "tool-time").text, timeout=30,
                           what="time server healthy")
            # Nothing is wider than the window (no sideways scrolling on a phone).
            overflow = d.execute_script(
                "return document.documentElement.scrollWidth - document.documentElement.clientWidth")
            assert overflow <= 1, f"{name} at {width}px scrolls sideways by {overflow}px"
            path = screenshot(d, name, width)
            assert path.stat().st_size > 5000
            d.set_window_size(width, 900)
    finally:
        d.quit()
