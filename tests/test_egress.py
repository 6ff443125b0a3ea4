"""The browser worker's egress proxy, end to end through the real edge binary.

Only loopback is ever connected to. A test DNS server maps test names to 127.0.0.x; loopback is
reachable only through the test-only `allow_loopback_for_tests` switch plus an allow list; every
denial is proven without a connection (recorders that must stay empty).
"""
from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT, start_edge
from egress_fixtures import (
    DnsServer,
    Origin,
    Recorder,
    chromium_behind_proxy,
    connect_tunnel,
    egress_toml,
    follow_redirects,
    via_proxy,
)

FIREWALL = ROOT / "deploy" / "firewall" / "aibox-egress-firewall.sh"


@pytest.fixture
def loopback():
    """Started fixtures, closed at teardown."""
    opened = []

    def keep(x):
        opened.append(x)
        return x

    yield keep
    for x in reversed(opened):
        x.close()


def decisions(edge) -> list[dict]:
    """The edge's structured egress decision lines (JSON log format)."""
    out = []
    for line in edge.output().splitlines():
        if "egress decision" not in line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        out.append(record.get("fields", record))
    return out


def metrics_text(edge) -> str:
    with urllib.request.urlopen(edge.url("api") + "/metrics", timeout=10) as resp:
        return resp.read().decode()


def test_egress_plain_http_and_connect_reach_a_loopback_origin(procs, tmp_path, loopback):
    origin = loopback(Origin("127.0.0.2"))
    dns = loopback(DnsServer({"origin.test": ["127.0.0.2"]}))
    edge = start_edge(procs, tmp_path, egress_toml(dns, [origin.port], allow=["127.0.0.2/32"]),
                      wait_for=("api", "egress"))
    proxy = edge.addr("egress")

    resp = via_proxy(proxy, f"http://origin.test:{origin.port}/hello?q=1",
                     headers={"Proxy-Authorization": "Basic YnJvd3Nlcjp4"})
    assert resp.status == 200, resp
    assert resp.body == b"hello from the origin: GET /hello?q=1\n"
    method, path, headers = origin.seen[-1]
    assert path == "/hello?q=1"  # origin-form, not the absolute URL
    assert headers["Host"] == f"origin.test:{origin.port}"
    assert "Proxy-Authorization" not in headers

    status, _, sock = connect_tunnel(proxy, f"origin.test:{origin.port}")
    with sock:
        assert status == 200
        sock.sendall(b"GET /through-the-tunnel HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    assert b"hello from the origin: GET /through-the-tunnel" in data

    lines = [d for d in decisions(edge) if d.get("decision") == "allow"]
    assert len(lines) == 2, edge.output()
    first = lines[0]
    assert first["client"] == "browser"
    assert first["host"] == "origin.test"
    assert first["resolved_ip"] == "127.0.0.2"
    assert first["reason"] == "none"
    assert "dns_ms" in first and "connect_ms" in first and first["id"]


def test_egress_redirect_hops_are_each_judged_afresh(procs, tmp_path, loopback):
    origin = loopback(Origin("127.0.0.2"))
    dns = loopback(DnsServer({"origin.test": ["127.0.0.2"], "metadata.test": ["169.254.169.254"]}))
    edge = start_edge(procs, tmp_path, egress_toml(dns, [80, origin.port], allow=["127.0.0.2/32"]),
                      wait_for=("api", "egress"))
    start = f"http://origin.test:{origin.port}/redirect?to=http://metadata.test/latest/meta-data/"
    hops = follow_redirects(edge.addr("egress"), start)
    assert [r.status for _, r in hops] == [302, 403], hops
    assert hops[1][0] == "http://metadata.test/latest/meta-data/"
    assert hops[1][1].deny == "metadata"
    assert b"metadata" in hops[1][1].body

    # A redirect to an allowed place is followed to the end.
    ok = follow_redirects(edge.addr("egress"),
                          f"http://origin.test:{origin.port}/redirect?to=http://origin.test:{origin.port}/landed")
    assert [r.status for _, r in ok] == [302, 200]


def test_egress_denials_never_connect(procs, tmp_path, loopback):
    v4 = loopback(Recorder("127.0.0.1"))
    port = v4.port
    v6 = loopback(Recorder("::1", port))
    dns = loopback(DnsServer({
        "loopback.test": ["127.0.0.1"],
        "metadata.test": ["169.254.169.254"],
        "router.test": ["192.168.1.1"],
        "tailnet.test": ["100.100.1.2"],
    }))
    # The production shape: no loopback allowance at all.
    edge = start_edge(procs, tmp_path, egress_toml(dns, [80, 443, port]), wait_for=("api", "egress"))
    proxy = edge.addr("egress")
    cases = {
        "127.1": "loopback",
        "0x7f.1": "loopback",
        "2130706433": "loopback",
        "0177.0.0.1": "loopback",
        "0": "loopback",
        "127.0.0.1.": "loopback",
        "[::]": "loopback",
        "[::1]": "loopback",
        "[::ffff:127.0.0.1]": "loopback",
        "[::ffff:a9fe:a9fe]": "metadata",
        "[64:ff9b::a9fe:a9fe]": "metadata",
        "[2002:a9fe:a9fe::1]": "metadata",
        "169.254.169.254": "metadata",
        "loopback.test.": "loopback",
        "metadata.test": "metadata",
        "router.test": "private_range",
        "tailnet.test": "tailnet",
        "no-such-name.test": "dns_failure",
    }
    failures = []
    for host, reason in cases.items():
        resp = via_proxy(proxy, f"http://{host}:{port}/")
        if (resp.status, resp.deny) != (403, reason):
            failures.append(f"GET {host}: {resp.status} {resp.deny}, want 403 {reason}")
        status, headers, sock = connect_tunnel(proxy, f"{host}:{port}")
        sock.close()
        if (status, headers.get("x-aibox-egress-deny")) != (403, reason):
            failures.append(f"CONNECT {host}: {status} {headers}, want 403 {reason}")
    for url, reason in [
        (f"http://user@127.0.0.1:{port}/", "userinfo"),
        (f"http://example.test@169.254.169.254:{port}/", "userinfo"),
        ("ftp://example.test/", "scheme_not_allowed"),
        ("http://example.test:22/", "port_not_allowed"),
    ]:
        resp = via_proxy(proxy, url)
        if resp.deny != reason:
            failures.append(f"{url}: {resp.status} {resp.deny}, want {reason}")
    resp = via_proxy(proxy, f"http://loopback.test:{port}/", headers={"Host": "other.test"})
    if resp.deny != "host_mismatch":
        failures.append(f"Host mismatch: {resp}")
    assert not failures, "\n".join(failures)
    assert v4.connections == 0 and v6.connections == 0

    text = metrics_text(edge)
    assert 'aibox_egress_decisions_total{decision="deny",reason="metadata"} 10' in text, text
    assert "aibox_egress_connect_attempts_total 0" in text
    denied = [d for d in decisions(edge) if d.get("decision") == "deny"]
    assert len(denied) == 2 * len(cases) + 5
    assert any(d.get("resolved_ip") == "169.254.169.254" and d["reason"] == "metadata" for d in denied)


def test_egress_dns_rebinding_cannot_reach_the_denied_address(procs, tmp_path, loopback):
    origin = loopback(Origin("127.0.0.2"))
    recorder = loopback(Recorder("127.0.0.3", origin.port))
    dns = loopback(DnsServer({
        "rebind.test": lambda n: ["127.0.0.2"] if n == 0 else ["127.0.0.3"],
        "mixed.test": ["127.0.0.2", "127.0.0.3"],
    }))
    config = egress_toml(dns, [origin.port], allow=["127.0.0.2/32"], extra='deny_cidrs = ["127.0.0.3/32"]\n')
    edge = start_edge(procs, tmp_path, config, wait_for=("api", "egress"))
    proxy = edge.addr("egress")

    first = via_proxy(proxy, f"http://rebind.test:{origin.port}/first")
    assert first.status == 200, first
    assert dns.a_queries["rebind.test"] == 1  # one resolution per decision

    again = via_proxy(proxy, f"http://rebind.test:{origin.port}/again")
    assert (again.status, again.deny) == (403, "denied_cidr")
    status, headers, sock = connect_tunnel(proxy, f"rebind.test:{origin.port}")
    sock.close()
    assert (status, headers.get("x-aibox-egress-deny")) == (403, "denied_cidr")

    mixed = via_proxy(proxy, f"http://mixed.test:{origin.port}/")
    assert (mixed.status, mixed.deny) == (403, "denied_cidr")

    assert recorder.connections == 0
    assert [p for _, p, _ in origin.seen] == ["/first"]


def test_egress_report_mode_is_per_client_and_never_relaxes_address_rules(procs, tmp_path, loopback):
    origin = loopback(Origin("127.0.0.2"))
    dns = loopback(DnsServer({"blocked.test": ["127.0.0.2"], "metadata.test": ["169.254.169.254"]}))
    extra = 'deny_domains = ["*.test"]\n[egress.client_modes]\nauditor = "report"\n'
    edge = start_edge(procs, tmp_path, egress_toml(dns, [origin.port], allow=["127.0.0.2/32"], extra=extra),
                      wait_for=("api", "egress"))
    proxy = edge.addr("egress")
    url = f"http://blocked.test:{origin.port}/"
    assert via_proxy(proxy, url).deny == "denied_domain"
    auditor = {"Proxy-Authorization": "Basic YXVkaXRvcjp4"}  # auditor:x
    assert via_proxy(proxy, url, headers=auditor).status == 200
    assert via_proxy(proxy, f"http://metadata.test:{origin.port}/", headers=auditor).deny == "metadata"
    would = [d for d in decisions(edge) if d.get("decision") == "would_deny"]
    assert len(would) == 1 and would[0]["client"] == "auditor" and would[0]["reason"] == "denied_domain"


def test_egress_firewall_script_dry_run_prints_rules_for_both_backends():
    for backend, needle in [("iptables", "-A AIBOX-EGRESS -d 169.254.0.0/16 -j DROP"),
                            ("nftables", "ip daddr 169.254.0.0/16 drop")]:
        out = subprocess.run(
            [str(FIREWALL), "--dry-run", "--backend", backend, "--subnet", "172.31.250.0/24",
             "--subnet", "fd00:aa::/64", "--allow", "172.31.250.2:3128"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout
        assert needle in out, out
        assert "DOCKER-USER" in out
        assert "172.31.250.2" in out
        for cidr in ["10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "192.168.0.0/16", "240.0.0.0/4",
                     "fc00::/7", "fe80::/10", "2002::/16", "64:ff9b::/96"]:
            assert cidr in out, (backend, cidr)
    bad = subprocess.run([str(FIREWALL), "--dry-run", "--subnet", "not-a-subnet"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0 and "--subnet" in bad.stderr


def test_egress_real_chromium_reaches_the_web_only_through_the_proxy(procs, tmp_path, loopback):
    """Debian Chromium with the bundle's flags: allowed pages load, loopback URLs go to the proxy
    too (`<-loopback>`), redirects to metadata are refused at the next hop, HTTPS tunnels are
    judged, and the recorder on 127.0.0.1 is never reached."""
    origin = loopback(Origin("127.0.0.2"))
    recorder = loopback(Recorder("127.0.0.1"))
    dns = loopback(DnsServer({"origin.test": ["127.0.0.2"], "metadata.test": ["169.254.169.254"]}))
    edge = start_edge(procs, tmp_path,
                      egress_toml(dns, [80, 443, origin.port, recorder.port], allow=["127.0.0.2/32"]),
                      wait_for=("api", "egress"))
    driver = chromium_behind_proxy(edge.addr("egress"))
    try:
        driver.get(f"http://origin.test:{origin.port}/hello")
        assert "hello from the origin: GET /hello" in driver.page_source

        driver.get(f"http://127.0.0.1:{recorder.port}/")
        assert "aibox egress denied this request: loopback" in driver.page_source

        driver.get(f"http://origin.test:{origin.port}/redirect?to=http://metadata.test/latest/")
        assert "aibox egress denied this request: metadata" in driver.page_source

        # HTTPS is a CONNECT tunnel, refused before any TLS; Chromium reports the refused tunnel.
        from selenium.common.exceptions import WebDriverException

        with pytest.raises(WebDriverException, match="ERR_TUNNEL_CONNECTION_FAILED"):
            driver.get("https://metadata.test/")
    finally:
        driver.quit()
    assert recorder.connections == 0
    seen = {(d.get("host"), d.get("port"), d.get("reason")) for d in decisions(edge)}
    assert ("127.0.0.1", recorder.port, "loopback") in seen, seen
    assert ("metadata.test", 80, "metadata") in seen, seen
    assert ("metadata.test", 443, "metadata") in seen, seen
    paths = [p for _, p, _ in origin.seen]
    assert "/hello" in paths and "/redirect?to=http://metadata.test/latest/" in paths, paths
