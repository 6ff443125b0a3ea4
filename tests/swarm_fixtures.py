"""Fixtures of the Swarm test: a single-node swarm on loopback, the stack brought up by the real
`./aibox up --swarm` (deploy/compose.sh, deploy/swarm.sh) under a unique stack name, a fake Ollama
service on the stack's `models` network, and a forwarder so the test reaches the edges.

Reaching the edges: Swarm's routing mesh publishes on every address of the host and cannot bind
only loopback, so the stack publishes nothing (AIBOX_SWARM_PUBLISH=0). A plain container the test
makes joins the stack's attachable `front` network and publishes on 127.0.0.1 only; inside it,
busybox `nc` forwards each connection: one port to the `edge` service's virtual IP (Swarm's load
balancer, a new backend per connection), and one port per edge task (to aim at one replica).

The swarm is made by the fixture and left by its finalizer, also when a test fails; a swarm that
was already there is used and left alone.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from compose_fixtures import DEBUG_BIN, FAKE_DOCKERFILE, ROOT, require_docker, run

SWARM_KEY_ENV = "AIBOX_SWARM_TEST_KEY"


def kernel_has_ipvs() -> bool:
    """Swarm's virtual IPs and routing mesh are the kernel's IPVS. Without it (a minimal VM
    kernel), services are reached by DNS round-robin (endpoint_mode dnsrr) instead."""
    release = os.uname().release
    modules = Path("/proc/modules").read_text() if Path("/proc/modules").exists() else ""
    return (Path("/proc/net/ip_vs").exists() or Path("/sys/module/ip_vs").exists() or "ip_vs " in modules
            or any(Path(f"/lib/modules/{release}").glob("**/ip_vs.ko*")))


def swarm_state() -> str:
    return run(["docker", "info", "--format", "{{.Swarm.LocalNodeState}}"]).stdout.strip()


def wait_until(pred, what: str, timeout: float = 60.0, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class SwarmStack:
    """The stack of one test run; every name carries `self.id`."""

    def __init__(self, workdir: Path):
        self.id = uuid.uuid4().hex[:8]
        self.stack = f"aiboxswarm{self.id}"
        self.prefix = f"aiboxswarm{self.id}"
        self.tag = "ci"
        self.workdir = workdir
        self.env_file = workdir / "aibox.env"
        self.data_dir = workdir / "data"
        self.edge_config = workdir / "edge.toml"
        self.fake_image = f"{self.prefix}-fake-ollama:{self.tag}"
        self.fake_service = f"{self.stack}-ollama"
        self.forwarder = f"{self.stack}-client"
        self.ports: dict[int, int] = {}
        self.ipvs = kernel_has_ipvs()
        self.up_output = ""
        self.up_seconds = 0.0

    @property
    def env(self) -> dict[str, str]:
        return {
            "AIBOX_ENV_FILE": str(self.env_file),
            "AIBOX_DATA_DIR": str(self.data_dir),
            "AIBOX_EDGE_CONFIG": str(self.edge_config),
            "COMPOSE_PROJECT_NAME": self.stack,
            "AIBOX_PROFILE": "debug",
            "AIBOX_CARGO_BUILD": "0",
            "AIBOX_TAG": self.tag,
            "AIBOX_IMAGE_PREFIX": self.prefix,
            "AIBOX_UP_TIMEOUT": "150",
            "AIBOX_PROFILES": "",
            "AIBOX_GPU": "none",
            "AIBOX_SWARM_PUBLISH": "0",
            "AIBOX_SWARM_ENDPOINT_MODE": "vip" if self.ipvs else "dnsrr",
            "OLLAMA_URL": f"http://{self.fake_service}:11434",
            "EDGE_LOG": "info,pingora_core=warn,pingora_proxy=warn",
            # A loaded machine must not turn a slow Redis answer into the local fallback.
            "AIBOX_REDIS_TIMEOUT_MS": "3000",
        }

    def image(self, service: str) -> str:
        return f"{self.prefix}-{service}:{self.tag}"

    # ---- bring-up ----

    def prepare(self, clients: dict[str, dict]) -> None:
        """The edge config and the keys file: each client of `clients` (name -> policy) with
        the key `key-<name>`."""
        missing = [b for b in ("edge", "controller", "dashboard", "mcp-bridge", "fake-upstream")
                   if not (DEBUG_BIN / b).exists()]
        if missing:
            pytest.fail(f"missing target/debug/{', '.join(missing)}: run `cargo build --workspace --bins`",
                        pytrace=False)
        if shutil.which("redis-server") is None:
            pytest.fail("redis-server is not installed (Debian: apt-get install redis-server); "
                        "the stack's Redis image is built from it", pytrace=False)
        self.edge_config.write_text(
            'service_names = ["swarm-test"]\n'
            '[[providers]]\nname = "ollama"\nkind = "ollama"\nbase_url = "http://ollama:11434"\n'
            '[health]\nprobe_interval_ms = 1000\n'
        )
        keys = self.data_dir / "edge" / "clients.toml"
        keys.parent.mkdir(parents=True)
        (self.data_dir / "mcp").mkdir(parents=True)
        for name, policy in clients.items():
            args = [str(DEBUG_BIN / "edge"), "key", "add", name, "--key-env", SWARM_KEY_ENV, "--file", str(keys)]
            for k, v in policy.items():
                args += [f"--{k}", str(v)]
            run(args, env={SWARM_KEY_ENV: f"swarm-test-key-{name}"})

    def build_fake(self) -> None:
        """The fake Ollama's image, FROM the edge image (its C runtime and busybox)."""
        ctx = self.workdir / "fake-ctx"
        ctx.mkdir()
        if shutil.which("objcopy"):
            subprocess.run(["objcopy", "--strip-all", str(DEBUG_BIN / "fake-upstream"), str(ctx / "fake-upstream")],
                           check=True)
        else:
            shutil.copy2(DEBUG_BIN / "fake-upstream", ctx / "fake-upstream")
        (ctx / "Dockerfile").write_text(FAKE_DOCKERFILE.format(base=self.image("edge")))
        run(["docker", "build", "-q", "-t", self.fake_image, str(ctx)], env={"DOCKER_BUILDKIT": "0"}, timeout=120)

    def up(self) -> None:
        t0 = time.monotonic()
        # Without --no-build: the images are built from target/debug (AIBOX_CARGO_BUILD=0), the
        # Redis image from this host's redis-server, as `./aibox up --swarm` does.
        p = run(["deploy/compose.sh", "up", "--swarm"], env=self.env, timeout=400, check=False)
        self.up_seconds = time.monotonic() - t0
        self.up_output = p.stdout + p.stderr
        if p.returncode != 0:
            ps = run(["docker", "stack", "ps", "--no-trunc", self.stack], check=False)
            raise AssertionError(f"./aibox up --swarm failed ({p.returncode}):\n{self.up_output}\n{ps.stdout}{ps.stderr}")
        self.build_fake()
        # A slow stream (chunks every 300 ms) so a replica can be killed while it streams.
        run(["docker", "service", "create", "--detach", "--name", self.fake_service,
             "--network", f"{self.stack}_models", "--read-only", "--cap-drop", "ALL",
             "--user", "65532:65532", "--label", f"io.aibox.test={self.stack}",
             # The edge image's check (inherited) asks port 11435; a service's own check would
             # need a shell. The test waits for the fake's answers instead.
             "--no-healthcheck", "--endpoint-mode", "vip" if self.ipvs else "dnsrr",
             self.fake_image, "--kind", "ollama", "--listen", "0.0.0.0:11434", "--chunk-delay-ms", "300"])
        wait_until(lambda: self.running_tasks(self.fake_service), "the fake Ollama's task", timeout=90)

    def start_forwarder(self) -> None:
        """Port 8080 -> the edge service's virtual IP (with IPVS; without, 8080 is the first
        task too); 8081, 8082 -> each edge task (started again after a task was replaced: the
        new one has a new address)."""
        run(["docker", "rm", "-f", self.forwarder], check=False)
        tasks = self.edge_tasks()
        assert len(tasks) == 2, tasks
        # By address: a static busybox cannot resolve names (no NSS), so the service's virtual IP
        # on `front` is looked up here.
        vip = tasks[0]["ip"]
        if self.ipvs:
            front = run(["docker", "network", "inspect", "-f", "{{.Id}}", f"{self.stack}_front"]).stdout.strip()
            vips = json.loads(run(["docker", "service", "inspect", "-f", "{{json .Endpoint.VirtualIPs}}",
                                   f"{self.stack}_edge"]).stdout)
            vip = next(v["Addr"].split("/")[0] for v in vips if v["NetworkID"] == front)
        script = (f"/bin/busybox nc -ll -p 8081 -e /bin/busybox nc {tasks[0]['ip']} 11435 & "
                  f"/bin/busybox nc -ll -p 8082 -e /bin/busybox nc {tasks[1]['ip']} 11435 & "
                  f"exec /bin/busybox nc -ll -p 8080 -e /bin/busybox nc {vip} 11435")
        run(["docker", "run", "-d", "--name", self.forwarder, "--network", f"{self.stack}_front",
             "--read-only", "--cap-drop", "ALL", "--user", "65532:65532",
             "-p", "127.0.0.1::8080", "-p", "127.0.0.1::8081", "-p", "127.0.0.1::8082",
             "--label", f"io.aibox.test={self.stack}",
             "--entrypoint", "/bin/busybox", self.image("edge"), "sh", "-c", script])
        info = json.loads(run(["docker", "inspect", self.forwarder]).stdout)[0]
        for port in (8080, 8081, 8082):
            self.ports[port] = int(info["NetworkSettings"]["Ports"][f"{port}/tcp"][0]["HostPort"])
        self.task_by_port = {8081: tasks[0], 8082: tasks[1]}

    # ---- looking at it ----

    def running_tasks(self, service: str) -> list[str]:
        return run(["docker", "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={service}",
                    "--filter", "status=running"]).stdout.split()

    def edge_tasks(self, healthy: bool = True) -> list[dict]:
        """The edge's running containers: id, task id and address on the `front` network."""
        args = ["docker", "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={self.stack}_edge"]
        if healthy:
            args += ["--filter", "health=healthy"]
        out = []
        for cid in run(args).stdout.split():
            info = json.loads(run(["docker", "inspect", cid]).stdout)[0]
            net = info["NetworkSettings"]["Networks"].get(f"{self.stack}_front")
            out.append({"id": cid, "task": info["Config"]["Labels"].get("com.docker.swarm.task.id"),
                        "ip": net["IPAddress"] if net else None})
        return sorted(out, key=lambda t: t["task"])

    def logs(self, container: str) -> str:
        p = run(["docker", "logs", container], check=False)
        return p.stdout + p.stderr

    def url(self, port: int = 8080) -> str:
        return f"http://127.0.0.1:{self.ports[port]}/v1"

    # ---- taking it down ----

    def down(self) -> None:
        run(["docker", "rm", "-f", self.forwarder], check=False)
        run(["docker", "service", "rm", self.fake_service], check=False)
        run(["deploy/compose.sh", "down", "--swarm"], env=self.env, timeout=180, check=False)
        # `service rm` returns before its task's container is gone (and its image is in use).
        try:
            wait_until(lambda: not run(["docker", "ps", "-aq", "--filter",
                                        f"label=com.docker.swarm.service.name={self.fake_service}"]).stdout.strip(),
                       "the fake Ollama's container to go", timeout=60)
        except AssertionError:
            pass  # reported by leftovers()

    def leftovers(self) -> dict[str, list[str]]:
        ns = f"label=com.docker.stack.namespace={self.stack}"
        return {
            "services": run(["docker", "service", "ls", "-q", "--filter", ns]).stdout.split()
            + run(["docker", "service", "ls", "-q", "--filter", f"label=io.aibox.test={self.stack}"]).stdout.split(),
            "containers": run(["docker", "ps", "-aq", "--filter", ns]).stdout.split()
            + run(["docker", "ps", "-aq", "--filter", f"label=io.aibox.test={self.stack}"]).stdout.split()
            + run(["docker", "ps", "-aq", "--filter",
                   f"label=com.docker.swarm.service.name={self.fake_service}"]).stdout.split(),
            "networks": run(["docker", "network", "ls", "-q", "--filter", ns]).stdout.split(),
            "secrets": run(["docker", "secret", "ls", "-q", "--filter", f"label=io.aibox.stack={self.stack}"]).stdout.split(),
        }

    def remove_images_and_data(self) -> None:
        # The containers wrote data/ as uid 65532; hand it back so pytest can delete tmp_path.
        if self.data_dir.exists() and os.geteuid() != 0:
            run(["docker", "run", "--rm", "--network", "none", "--user", "0:0", "-v", f"{self.data_dir}:/mnt",
                 "--entrypoint", "/bin/busybox", self.image("edge"), "chown", "-R",
                 f"{os.geteuid()}:{os.getegid()}", "/mnt"], check=False)
        names = run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}", "--filter",
                     f"reference={self.prefix}-*"], check=False).stdout.split()
        names.sort(key=lambda n: n != self.fake_image)
        for name in names:
            run(["docker", "rmi", name], check=False)


@pytest.fixture(scope="module")
def swarm_node():
    """A single-node swarm on loopback for this module; left at the end (even after a failure)
    when this fixture made it."""
    require_docker()
    made = False
    if swarm_state() != "active":
        p = run(["docker", "swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", "127.0.0.1:2377",
                 "--data-path-addr", "127.0.0.1"], check=False, timeout=120)
        if p.returncode != 0:
            pytest.skip(f"this Docker engine refuses `docker swarm init`: {(p.stderr or p.stdout).strip()}")
        made = True
    try:
        yield
    finally:
        if made:
            run(["docker", "swarm", "leave", "--force"], check=False, timeout=120)
