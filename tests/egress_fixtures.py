"""Loopback-only fixtures for the egress tests: a DNS server, an origin, a recorder, a proxy client.

NETWORK RULE: everything here binds and connects to 127.0.0.0/8 or ::1 only. The proxy client
talks to the edge's egress listener and nothing else; redirects are followed by sending the next
hop to the proxy again, as a browser does.
"""
from __future__ import annotations

import http.client
import http.server
import socket
import socketserver
import struct
import threading
from typing import Callable
from urllib.parse import parse_qs, urlsplit

Answer = Callable[[int], list[str]]


class DnsServer:
    """A UDP DNS responder on 127.0.0.1. `zone` maps a name to a list of IPv4 addresses or to a
    function of how many A queries for it came before. Unknown names get NXDOMAIN; AAAA queries
    an empty answer. TTL 0, so the resolver never answers from cache."""

    def __init__(self, zone: dict[str, list[str] | Answer]):
        self.zone = {k.lower().rstrip("."): v for k, v in zone.items()}
        self.a_queries: dict[str, int] = {}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.addr = "%s:%d" % self.sock.getsockname()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(1500)
            except (socket.timeout, OSError):
                continue
            reply = self._answer(data)
            if reply:
                self.sock.sendto(reply, peer)

    def _answer(self, q: bytes) -> bytes | None:
        if len(q) < 12:
            return None
        i, labels = 12, []
        while i < len(q) and q[i] != 0:
            n = q[i]
            labels.append(q[i + 1:i + 1 + n].decode("ascii", "replace").lower())
            i += 1 + n
        if i + 5 > len(q):
            return None
        qtype = struct.unpack("!H", q[i + 1:i + 3])[0]
        question = q[12:i + 5]
        name = ".".join(labels)
        entry = self.zone.get(name)
        ips: list[str] = []
        if entry is not None and qtype == 1:
            seen = self.a_queries.get(name, 0)
            self.a_queries[name] = seen + 1
            ips = entry(seen) if callable(entry) else list(entry)
        rcode = 0 if entry is not None else 3
        head = q[:2] + bytes([0x81, 0x80 | rcode]) + struct.pack("!HHHH", 1, len(ips), 0, 0)
        answers = b"".join(
            b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 0, 4) + socket.inet_aton(ip) for ip in ips
        )
        return head + question + answers

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


class Recorder:
    """A TCP listener that counts connections. Denial tests assert it stays at zero."""

    def __init__(self, host: str, port: int = 0):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


class _OriginHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.server.seen.append((self.command, self.path, dict(self.headers)))  # type: ignore[attr-defined]
        url = urlsplit(self.path)
        if url.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", parse_qs(url.query)["to"][0])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = f"hello from the origin: {self.command} {self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *args) -> None:
        pass


class Origin:
    """A small HTTP/1.1 server on a loopback address (not 127.0.0.1, which is the edge's own)."""

    def __init__(self, host: str = "127.0.0.2", port: int = 0):
        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = http.server.ThreadingHTTPServer((host, port), _OriginHandler)
        self.server.seen = []  # type: ignore[attr-defined]
        self.host, self.port = self.server.server_address[:2]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def seen(self) -> list:
        return self.server.seen  # type: ignore[attr-defined]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class ProxyResponse:
    def __init__(self, status: int, headers: dict[str, str], body: bytes):
        self.status, self.headers, self.body = status, headers, body

    @property
    def deny(self) -> str | None:
        return self.headers.get("x-aibox-egress-deny")

    def __repr__(self) -> str:
        return f"<{self.status} {self.headers} {self.body[:200]!r}>"


def via_proxy(proxy_addr: str, url: str, method: str = "GET", headers: dict[str, str] | None = None,
              body: bytes | None = None) -> ProxyResponse:
    """One absolute-form request sent to the egress proxy (and only to it)."""
    host, port = proxy_addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=15)
    try:
        conn.request(method, url, body=body, headers=headers or {})
        resp = conn.getresponse()
        return ProxyResponse(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def follow_redirects(proxy_addr: str, url: str, max_hops: int = 5) -> list[tuple[str, ProxyResponse]]:
    """Follow redirects the way the browser does: every hop is a new request to the proxy."""
    hops = []
    for _ in range(max_hops):
        resp = via_proxy(proxy_addr, url)
        hops.append((url, resp))
        if resp.status not in (301, 302, 303, 307, 308):
            break
        url = resp.headers["location"]
    return hops


def connect_tunnel(proxy_addr: str, authority: str, headers: dict[str, str] | None = None,
                   timeout: float = 15) -> tuple[int, dict[str, str], socket.socket]:
    """Send CONNECT; return the status, headers and the open socket (caller closes it)."""
    host, port = proxy_addr.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n{extra}\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    lines = head.split("\r\n")
    status = int(lines[0].split(" ")[1]) if lines and " " in lines[0] else 0
    hdrs = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            hdrs[k.strip().lower()] = v.strip()
    return status, hdrs, sock


def egress_toml(dns: DnsServer, ports: list[int], allow: list[str] | None = None, extra: str = "") -> str:
    """An `[egress]` table for tests: the test DNS server, and loopback reachable only through
    the test-only switch plus an explicit allow list."""
    lines = [
        "[egress]",
        f'dns_servers = ["{dns.addr}"]',
        "dns_timeout_ms = 2000",
        f"ports = {sorted(set(ports))}",
    ]
    if allow:
        lines.append("allow_loopback_for_tests = true")
        lines.append("allow_cidrs = [" + ", ".join(f'"{a}"' for a in allow) + "]")
    return "\n".join(lines) + "\n" + extra


CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def chromium_behind_proxy(proxy_addr: str):
    """Headless Debian Chromium with the egress guard's flags (docs/egress.md), pointed at the
    edge's egress listener. Fails (never skips) when Chromium or chromedriver is missing."""
    import os

    import pytest

    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.path.exists(path):
            pytest.fail(f"{path} is missing: install Debian's chromium and chromium-driver", pytrace=False)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
        "--no-first-run", "--disable-extensions", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-default-apps",
        # The egress guard's flags, exactly as the compose bundle passes them:
        f"--proxy-server=http://{proxy_addr}",
        "--proxy-bypass-list=<-loopback>",
        "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    return driver
