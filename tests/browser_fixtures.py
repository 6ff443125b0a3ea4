"""Fixtures of the browser-worker tests: the bundle with the `browser` profile on our offline
Chromium image, the OpenClaw stand-in (tests/cdp_standin/standin.py in a Python image built
offline from this machine's interpreter), a test origin and a canary, on networks the test makes.

NETWORK RULE: every address involved belongs to networks this test created (the compose project's
and two `docker network create` ones); the host side only talks to 127.0.0.1.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from compose_fixtures import ROOT, CoreStack, run

STANDIN_DIR = Path(__file__).resolve().parent / "cdp_standin"

STANDIN_DOCKERFILE = """\
FROM scratch
COPY rootfs/ /
ENV PYTHONHOME=/opt/python PYTHONDONTWRITEBYTECODE=1 LD_LIBRARY_PATH=/opt/python/lib
USER 65532:65532
ENTRYPOINT ["/opt/python/bin/python3", "/opt/standin/standin.py"]
"""

TEST_OVERRIDE = """\
# Test-only (tests/test_browser_box.py): a test origin and a canary on two networks the test
# created; the edge joins both so its egress proxy can reach (or refuse) them.
services:
  edge:
    networks:
      web: {{}}
      dark: {{}}
  origin:
    image: {image}
    command: ["origin", "--port", "8080"]
    user: "65532:65532"
    read_only: true
    cap_drop: [ALL]
    security_opt: ["no-new-privileges:true"]
    mem_limit: 128m
    pids_limit: 64
    networks:
      web:
        aliases: [origin]
  canary:
    image: {image}
    command: ["canary", "--port", "8080"]
    user: "65532:65532"
    read_only: true
    cap_drop: [ALL]
    security_opt: ["no-new-privileges:true"]
    mem_limit: 128m
    pids_limit: 64
    networks:
      dark:
        aliases: [canary]
networks:
  web:
    external: true
    name: {web}
  dark:
    external: true
    name: {dark}
"""


def _copy_libs(binary: Path, rootfs: Path) -> None:
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True).stdout
    for line in out.splitlines():
        parts = line.split()
        path = parts[2] if len(parts) >= 3 and parts[1] == "=>" else parts[0] if parts else ""
        if not path.startswith("/"):
            continue
        dest = rootfs / path.lstrip("/")
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(path).resolve(), dest)


def build_standin_image(tag: str, workdir: Path) -> None:
    """Python (this interpreter's build), its standard library, websocket-client and the script,
    FROM scratch. Laid out under /opt/python so PYTHONHOME finds it."""
    ctx = workdir / "standin-ctx"
    rootfs = ctx / "rootfs"
    py = rootfs / "opt" / "python"
    (py / "bin").mkdir(parents=True)
    real = Path(sys.executable).resolve()
    shutil.copy2(real, py / "bin" / "python3")
    _copy_libs(real, rootfs)
    libpython = Path(sysconfig.get_config_var("LIBDIR") or "") / str(sysconfig.get_config_var("INSTSONAME") or "")
    if libpython.is_file():
        (py / "lib").mkdir(parents=True, exist_ok=True)
        shutil.copy2(libpython, py / "lib" / libpython.name)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skip = shutil.ignore_patterns("test", "tests", "idlelib", "tkinter", "turtledemo", "ensurepip",
                                  "lib2to3", "site-packages", "__pycache__", "config-*")
    shutil.copytree(stdlib, py / "lib" / stdlib.name, ignore=skip)
    for so in (py / "lib" / stdlib.name / "lib-dynload").glob("*.so"):
        _copy_libs(so, rootfs)
    import websocket  # websocket-client, from the test venv
    shutil.copytree(Path(websocket.__file__).parent, py / "lib" / stdlib.name / "site-packages" / "websocket",
                    ignore=shutil.ignore_patterns("__pycache__", "tests"))
    (rootfs / "opt" / "standin").mkdir(parents=True)
    shutil.copy2(STANDIN_DIR / "standin.py", rootfs / "opt" / "standin" / "standin.py")
    (rootfs / "tmp").mkdir(mode=0o1777)
    (rootfs / "etc").mkdir(exist_ok=True)
    (rootfs / "etc" / "passwd").write_text("root:x:0:0::/:/sbin/nologin\nstandin:x:65532:65532::/tmp:/sbin/nologin\n")
    (rootfs / "etc" / "nsswitch.conf").write_text("hosts: files dns\n")
    (ctx / "Dockerfile").write_text(STANDIN_DOCKERFILE)
    run(["docker", "build", "-q", "-t", tag, str(ctx)], env={"DOCKER_BUILDKIT": "0"}, timeout=180)


class BrowserStack(CoreStack):
    """The core plus the `browser` profile on our Chromium image, a test origin and a canary."""

    def __init__(self, workdir: Path, port: int):
        super().__init__(workdir, port)
        self.browser_image = f"{self.prefix}-browser:{self.tag}"
        self.standin_image = f"{self.prefix}-standin:{self.tag}"
        self.web_net = f"{self.prefix}-web"
        self.dark_net = f"{self.prefix}-dark"
        self.test_override = workdir / "browser-test.yml"
        self.edge_config = workdir / "edge.toml"

    @property
    def env(self) -> dict[str, str]:
        env = super().env
        env.update({
            "AIBOX_PROFILES": "browser",
            "BROWSER_IMAGE": self.browser_image,
            "AIBOX_EDGE_CONFIG": str(self.edge_config),
            "AIBOX_COMPOSE_OVERRIDES": f"{self.override}:{self.test_override}",
            "AIBOX_BROWSER_IMAGE": self.browser_image,
        })
        return env

    def build_images(self) -> None:
        super().build_images()
        run(["deploy/build-browser-image.sh"], env=self.env, timeout=240)
        build_standin_image(self.standin_image, self.workdir)

    def make_networks(self) -> str:
        """Two internal networks of this run; returns the web network's subnet."""
        for net in (self.web_net, self.dark_net):
            run(["docker", "network", "create", "--internal", "--label", f"io.aibox.test={self.project}", net])
        info = json.loads(run(["docker", "network", "inspect", self.web_net]).stdout)[0]
        return info["IPAM"]["Config"][0]["Subnet"]

    def configure(self) -> None:
        subnet = self.make_networks()
        base = (ROOT / "deploy" / "edge.toml").read_text()
        # The origin's network is a private range: allow exactly it, and its port. Everything
        # else keeps the built-in denials (the canary's network, the edge, loopback).
        self.edge_config.write_text(base + f'\n[egress]\nports = [80, 443, 8080]\nallow_cidrs = ["{subnet}"]\n')
        self.test_override.write_text(TEST_OVERRIDE.format(image=self.standin_image, web=self.web_net,
                                                           dark=self.dark_net))

    def visit(self, url: str, timeout: float = 20) -> dict:
        """The stand-in, on the `cdp` network only, drives the browser to `url`."""
        p = run(["docker", "run", "--rm", "--network", f"{self.project}_cdp", "--read-only", "--cap-drop", "ALL",
                 "--security-opt", "no-new-privileges:true", "--memory", "128m", self.standin_image,
                 "visit", "--timeout", str(timeout), url], timeout=timeout * 3 + 30)
        return json.loads(p.stdout.strip().splitlines()[-1])

    def exec_in(self, service: str, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
        cid = self.container(service)["Id"]
        return run(["docker", "exec", cid, *cmd], timeout=timeout, check=False)

    def logs(self, service: str) -> str:
        cid = self.container(service)["Id"]
        p = run(["docker", "logs", cid], check=False)
        return p.stdout + p.stderr

    def down(self) -> None:
        super().down()
        for net in (self.web_net, self.dark_net):
            run(["docker", "network", "rm", net], check=False)
