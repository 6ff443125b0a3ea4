"""The browser worker in the bundle, end to end on this machine's Docker engine: Debian's Chromium
in our offline image, driven over CDP by the OpenClaw stand-in from the `cdp` network, reaching a
test origin only through the edge's egress proxy, and reaching nothing else.

Everything runs on networks this test created; the host side talks only to 127.0.0.1.
"""
from __future__ import annotations

import json
import os
import re
import time

import httpx
import pytest

from browser_fixtures import BrowserStack
from compose_fixtures import require_docker, run
from conftest import free_port


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    require_docker()
    s = BrowserStack(tmp_path_factory.mktemp("browserbox"), free_port())
    try:
        s.build_images()
        s.configure()
        s.up()
        wait_for_browser(s)
        yield s
    finally:
        s.down()


def wait_for_browser(s: BrowserStack, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        state = s.container("browser")["State"]
        if state.get("Health", {}).get("Status") == "healthy":
            return
        assert state["Status"] == "running", f"browser is {state['Status']}:\n{s.logs('browser')}"
        assert time.monotonic() < deadline, f"browser never became healthy:\n{s.logs('browser')}"
        time.sleep(1)


def decisions(s: BrowserStack) -> list[str]:
    return [line for line in s.logs("edge").splitlines() if "egress decision" in line]


def test_a_page_is_loaded_through_the_proxy_and_read_back_over_cdp(box):
    r = box.visit("http://origin:8080/hello")
    assert r["browser"].startswith("HeadlessChrome/"), r
    # cdp-gate rewrote Host to the address the stand-in reached, so Chromium accepted the
    # request and handed back a WebSocket URL on that same address.
    assert re.match(r"ws://\d+\.\d+\.\d+\.\d+:9222/devtools/browser/", r["ws"]), r
    assert not r["error_text"], r
    assert r["status"] == 200, r
    assert "hello from the test origin" in r["text"], r
    assert "path /hello" in r["text"], r
    assert r["screenshot_png"] and r["screenshot_bytes"] > 1000, r
    # The origin saw the request; the edge logged it as allowed.
    assert "origin request GET /hello" in box.logs("origin")
    assert any('"decision":"allow"' in d and "origin" in d for d in decisions(box)), decisions(box)


@pytest.mark.parametrize("url, reasons", [
    ("http://canary:8080/", ("private_range",)),
    # The edge's API through the proxy: refused before any lookup (not an allowed port).
    ("http://edge:11435/v1/models", ("port_not_allowed",)),
    # The edge on an allowed port: its address on a private network, or (on the allowed test
    # network) refused as one of the edge's own addresses.
    ("http://edge:8080/", ("edge_address", "private_range")),
    # The browser's own DevTools, and loopback on an allowed port.
    ("http://127.0.0.1:9223/json/version", ("port_not_allowed",)),
    ("http://127.0.0.1:8080/", ("loopback",)),
    ("http://169.254.169.254/latest/meta-data/", ("metadata",)),
])
def test_denied_addresses_never_load(box, url, reasons):
    r = box.visit(url, timeout=15)
    # Plain HTTP through a proxy: Chromium shows the proxy's 403 as the document.
    assert r["status"] in (403, None) or r["error_text"], r
    assert "hello from the test origin" not in r.get("text", ""), r
    assert '"name"' not in r.get("text", "") and "HeadlessChrome" not in r.get("text", ""), r
    if r["status"] == 403:
        assert "aibox egress denied this request" in r["text"], r
    host = url.split("/")[2].split(":")[0]
    mine = [d for d in decisions(box) if f'"host":"{host}"' in d]
    assert mine and all('"decision":"deny"' in d for d in mine), mine
    assert any(f'"reason":"{r}"' in d for d in mine for r in reasons), (reasons, mine)


def test_the_canary_saw_no_connection(box):
    box.visit("http://canary:8080/again", timeout=15)
    assert "canary connection" not in box.logs("canary")


def test_from_inside_the_browser_only_the_proxy_is_reachable(box):
    # Addresses, not names: the image's static busybox wget cannot use the C library's resolver
    # (its own `nslookup` asks Docker's DNS directly, below). `-Y off`: a direct connection, not
    # through HTTP_PROXY (that path is the proxy's to judge, above).
    # (busybox's own `-T` crashes in Debian's static build; `timeout` bounds each try instead.)
    wget = ("/bin/busybox", "timeout", "5", "/bin/busybox", "wget", "-Y", "off", "-q", "-O", "-")
    networks = box.container("edge")["NetworkSettings"]["Networks"]
    edge_ip = networks[f"{box.project}_egress"]["IPAddress"]
    # The proxy answers (its own 400 for a request that is not a proxy request).
    proxy = box.exec_in("browser", *wget, f"http://{edge_ip}:3128/")
    assert "server returned error" in proxy.stderr, (proxy.returncode, proxy.stderr)
    # The edge's API is not bound on the egress network: the kernel refuses the connection.
    api = box.exec_in("browser", *wget, f"http://{edge_ip}:11435/health")
    assert api.returncode != 0 and "refused" in api.stderr.lower(), (api.returncode, api.stderr)
    # ... while on its other networks it answers (the address the published port reaches).
    other_ip = next(n["IPAddress"] for name, n in networks.items() if name.endswith("_front"))
    assert other_ip != edge_ip
    edge_side = box.exec_in("edge", "/bin/busybox", "wget", "-q", "-O", "-", f"http://{other_ip}:11435/health")
    assert edge_side.returncode == 0, edge_side.stderr
    # The edge's names resolve to its egress address; the controller's does not resolve at all.
    assert edge_ip in box.exec_in("browser", "/bin/busybox", "nslookup", "egress-proxy").stdout
    ctl_name = box.exec_in("browser", "/bin/busybox", "nslookup", "controller")
    assert ctl_name.returncode != 0 or "can't find" in ctl_name.stdout + ctl_name.stderr, ctl_name.stdout
    # And its address is not routable from the browser.
    ops_ip = next(iter(box.container("controller")["NetworkSettings"]["Networks"].values()))["IPAddress"]
    by_ip = box.exec_in("browser", *wget, f"http://{ops_ip}:9000/health")
    assert by_ip.returncode != 0, by_ip.stdout
    assert "server returned error" not in by_ip.stderr, by_ip.stderr


def test_the_api_still_answers_on_its_other_networks(box):
    # On the published port (another network) and on loopback (the healthcheck).
    with httpx.Client(base_url=f"http://127.0.0.1:{box.port}", trust_env=False, timeout=10) as c:
        assert c.get("/health").status_code == 200
    edge = box.container("edge")
    assert edge["State"]["Health"]["Status"] == "healthy"
    assert "api listener addresses" in box.logs("edge")


def test_the_browser_runs_hardened_on_cdp_and_egress_only(box):
    c = box.container("browser")
    assert set(c["NetworkSettings"]["Networks"]) == {f"{box.project}_cdp", f"{box.project}_egress"}
    assert c["Config"]["User"] == "65532:65532"
    assert c["HostConfig"]["ReadonlyRootfs"] is True
    assert c["HostConfig"]["CapDrop"] == ["ALL"]
    args = c["Args"]
    assert "--proxy-server=http://edge:3128" in args
    assert "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE edge" in args


def test_openclaw_sync_merges_the_edge_into_openclaw_json(box):
    """The one-shot `dashboard openclaw-sync`, as compose runs it before OpenClaw: on `front`,
    asking the real edge (and its fake Ollama) for models, writing data/openclaw/openclaw.json."""
    conf_dir = box.data_dir / "openclaw"
    (conf_dir / "openclaw.json").write_text('// mine\n{ channels: { telegram: { enabled: true } }, }\n')
    os.chown(conf_dir / "openclaw.json", 1000, 1000)  # the user's file, owned as OpenClaw owns it
    run_sync = ["docker", "run", "--rm", "--network", f"{box.project}_front", "--read-only", "--cap-drop", "ALL",
                "--security-opt", "no-new-privileges:true", "--user", "1000:1000", "-v", f"{conf_dir}:/data/openclaw",
                "-e", "BROWSER_CDP_URL=http://browser:9222", "-e", "OPENCLAW_EDGE_KEY",
                box.image("dashboard"), "openclaw-sync"]
    # Its own client key, as compose passes it (the bundle's anonymous policy allows nothing).
    key_env = {"OPENCLAW_EDGE_KEY": box.secret("OPENCLAW_EDGE_KEY")}
    first = run(run_sync, env=key_env, timeout=60)
    assert "models.providers.gateway.models: added" in first.stderr, first.stderr
    doc = json.loads((conf_dir / "openclaw.json").read_text())
    gateway = doc["models"]["providers"]["gateway"]
    assert gateway["baseUrl"] == "http://model-gateway:11435/v1"
    assert gateway["apiKey"] == "${OPENCLAW_EDGE_KEY}"
    assert any(m["id"].endswith("llama3:8b") for m in gateway["models"]), json.dumps(gateway)
    assert doc["mcp"]["servers"]["aibox"]["url"] == "http://model-gateway:11435/mcp"
    assert doc["browser"]["profiles"]["aibox"]["cdpUrl"] == "http://browser:9222"
    assert doc["channels"] == {"telegram": {"enabled": True}}
    assert (conf_dir / "openclaw.json.bak").read_text().startswith("// mine")
    second = run(run_sync, env=key_env, timeout=60)
    assert "is in sync" in second.stderr, second.stderr
