"""All three binaries log the same way: JSON lines when stdout is not a terminal (containers,
pipes), readable lines on a terminal, and never an escape code outside a terminal. The edge's own
health checks are not traffic: they are logged at DEBUG, so the INFO log is requests only.
"""
from __future__ import annotations

import json
import time
import urllib.request

import pytest

from conftest import fake_upstream

ESC = "\x1b"
TOKEN = "t" * 40


def start_all(procs, tmp_path, env: dict[str, str], args: tuple[str, ...] = ()):
    """The three binaries, each writing to a pipe (the test reads it), none given --log-format."""
    controller = procs.start("controller", ["controller", *args], env={
        "OPS_CONTROLLER_TOKEN": TOKEN, "COMPOSE_PROJECT_NAME": f"logs-{time.time_ns()}",
        "CONTROLLER_LISTEN": "127.0.0.1:0", "CONTROLLER_AUDIT_DIR": str(tmp_path / "audit"), **env})
    dashboard = procs.start("dashboard", ["dashboard", *args], env={
        "DASHBOARD_LISTEN": "127.0.0.1:0", "DASHBOARD_PASSWORD": "pw-for-the-logs-test",
        "CONTROLLER_URL": controller.url(), "OPS_CONTROLLER_TOKEN": TOKEN, "EDGE_URL": "none", **env})
    edge = start_plain_edge(procs, tmp_path, env, args)
    return controller, dashboard, edge


def start_plain_edge(procs, tmp_path, env: dict[str, str], args: tuple[str, ...] = (), config: str = ""):
    cfg = tmp_path / "edge.toml"
    cfg.write_text(config)
    return procs.start("edge", ["edge", *args], env={
        "EDGE_LISTEN": "127.0.0.1:0", "EGRESS_LISTEN": "127.0.0.1:0", "EDGE_CONFIG": str(cfg), **env})


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def log_lines(proc) -> list[str]:
    """The process's output without the `<label> listening on` announcements."""
    return [line for line in proc.output().splitlines() if line and " listening on " not in line]


@pytest.mark.parametrize("fmt", [None, "pretty", "json"])
def test_logs_have_no_escape_codes_when_not_on_a_terminal(procs, tmp_path, fmt):
    env = {"RUST_LOG": "debug"}
    if fmt:
        env["LOG_FORMAT"] = fmt
    else:
        env["LOG_FORMAT"] = ""  # unset: the default, auto
    binaries = start_all(procs, tmp_path, env)
    for p in binaries:
        get(p.url() + ("/healthz" if p.name == "dashboard" else "/health"))
    time.sleep(0.5)
    for p in binaries:
        lines = log_lines(p)
        assert lines, p.name
        assert not any(ESC in line for line in lines), (p.name, [line for line in lines if ESC in line][:3])
        if fmt != "pretty":
            # auto outside a terminal is JSON: every line one object, fields at the top level.
            for line in lines:
                obj = json.loads(line)
                assert {"timestamp", "level"} <= obj.keys(), (p.name, line)


def test_the_command_line_flag_still_overrides(procs, tmp_path):
    edge = start_plain_edge(procs, tmp_path, {"RUST_LOG": "info", "LOG_FORMAT": "json"}, ("--log-format", "pretty"))
    get(edge.url() + "/v1/models")
    line = edge.wait_for_line(r"request")
    assert not line.startswith("{") and ESC not in line, line


def test_edge_logs_its_own_health_checks_at_debug_only(procs, tmp_path):
    ollama = fake_upstream(procs, "ollama")
    config = f'[[providers]]\nname = "local"\nkind = "ollama"\nbase_url = "{ollama.url()}"\n'
    edge = start_plain_edge(procs, tmp_path, {"RUST_LOG": "info"}, config=config)
    for _ in range(5):
        assert get(edge.url() + "/health") == 200
    get(edge.url() + "/ready")
    assert get(edge.url() + "/v1/models") == 200
    edge.wait_for_line(r'"path":"/v1/models"')
    requests = [json.loads(line) for line in log_lines(edge) if '"message":"request"' in line]
    paths = [r["path"] for r in requests]
    assert "/v1/models" in paths
    assert "/health" not in paths and "/ready" not in paths, requests
