"""The browser worker in the bundle, end to end on this machine's Docker engine: Debian's Chromium
in our offline image, driven over CDP by the OpenClaw stand-in from the `cdp` network, reaching a
test origin only through the edge's egress proxy, and reaching nothing else.

Everything runs on networks this test created; the host side talks only to 127.0.0.1.
"""
from __future__ import annotations

import re
import time

import httpx
import pytest

from browser_fixtures import BrowserStack
from compose_fixtures import require_docker
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
    # The edge's own name: its address on a private network, or (on the allowed test network)
    # refused as one of the edge's own addresses.
    ("http://edge:11435/v1/models", ("edge_address", "private_range")),
    ("http://127.0.0.1:9223/json/version", ("loopback",)),   # the browser's own DevTools
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
    busybox = ("/bin/busybox", "wget", "-T", "3", "-q", "-O", "-")
    # The proxy answers (its own 4xx for a request that is not a proxy request).
    proxy = box.exec_in("browser", *busybox, "http://edge:3128/")
    assert "server returned error" in proxy.stderr or proxy.returncode == 0, proxy.stderr
    # The edge's API is not bound on the egress network: the kernel refuses the connection.
    api = box.exec_in("browser", *busybox, "http://edge:11435/health")
    assert api.returncode != 0 and "refused" in api.stderr.lower(), api.stderr
    api_alias = box.exec_in("browser", *busybox, "http://egress-proxy:11435/v1/models")
    assert api_alias.returncode != 0 and "refused" in api_alias.stderr.lower(), api_alias.stderr
    # The controller is not on any network the browser is on: no name, and no route to its address.
    by_name = box.exec_in("browser", *busybox, "http://controller:9000/health")
    assert by_name.returncode != 0 and "bad address" in by_name.stderr, by_name.stderr
    ops_ip = next(n["IPAddress"] for name, n in box.container("controller")["NetworkSettings"]["Networks"].items())
    by_ip = box.exec_in("browser", *busybox, f"http://{ops_ip}:9000/health")
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
