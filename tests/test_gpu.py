"""GPUs for Ollama: deploy/gpu-detect.sh's guess on fake hosts (fake device nodes under a temporary
/dev, stub `nvidia-smi` and `docker` first on PATH), the override deploy/compose.sh adds for each
mode, and the compose model each override renders to.
"""
from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from compose_fixtures import COMPOSE_FILE, ROOT, render_config

DETECT = ROOT / "deploy" / "gpu-detect.sh"
NVIDIA_FILE = ROOT / "deploy" / "compose.gpu-nvidia.yml"
AMD_FILE = ROOT / "deploy" / "compose.gpu-amd.yml"

NVIDIA_SMI_OK = """#!/bin/sh
[ "$1" = -L ] || exit 2
echo "GPU 0: NVIDIA GeForce RTX 4090 (UUID: GPU-0f0e0d0c-0000-0000-0000-000000000000)"
echo "GPU 1: NVIDIA GeForce RTX 4090 (UUID: GPU-0f0e0d0c-0000-0000-0000-000000000001)"
"""
# What nvidia-smi says when the driver is not loaded (and what hides a real nvidia-smi on a GPU host).
NVIDIA_SMI_NO_DRIVER = """#!/bin/sh
echo "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver." >&2
exit 9
"""
DOCKER_TEMPLATE = """#!/bin/sh
# A stub engine: `docker info --format '{{{{json .Runtimes}}}}'` and a bare `docker info`.
if [ "$1" = info ]; then echo '{runtimes}'; exit 0; fi
exit 1
"""
RUNTIMES_RUNC = '{"io.containerd.runc.v2":{"path":"runc"},"runc":{"path":"runc"}}'
RUNTIMES_NVIDIA = '{"nvidia":{"path":"nvidia-container-runtime"},"runc":{"path":"runc"}}'


class FakeHost:
    """A /dev root and a PATH directory for one test; nothing of the real host leaks in."""

    def __init__(self, tmp_path: Path):
        self.dev = tmp_path / "dev"
        self.bin = tmp_path / "bin"
        self.dev.mkdir()
        self.bin.mkdir()
        self.stub("nvidia-smi", NVIDIA_SMI_NO_DRIVER)
        self.docker(RUNTIMES_RUNC)

    def stub(self, name: str, script: str) -> None:
        p = self.bin / name
        p.write_text(script)
        p.chmod(p.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)

    def docker(self, runtimes: str) -> None:
        self.stub("docker", DOCKER_TEMPLATE.format(runtimes=runtimes))

    def nvidia(self, with_runtime: bool = True) -> None:
        self.stub("nvidia-smi", NVIDIA_SMI_OK)
        self.docker(RUNTIMES_NVIDIA if with_runtime else RUNTIMES_RUNC)

    def node(self, rel: str) -> Path:
        """A fake device node (a plain file: the script only looks at names and owners)."""
        p = self.dev / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.touch()
        return p

    def amd(self) -> None:
        self.node("kfd")
        self.node("dri/card0")
        self.node("dri/renderD128")

    @property
    def env(self) -> dict[str, str]:
        return {"PATH": f"{self.bin}:/usr/bin:/bin", "AIBOX_GPU_DEV_ROOT": str(self.dev)}

    def detect(self, gpu: str | None = None) -> tuple[dict[str, str], str, int]:
        env = self.env
        if gpu is not None:
            env["AIBOX_GPU"] = gpu
        p = subprocess.run([str(DETECT)], env=env, capture_output=True, text=True, timeout=30)
        out = dict(line.split("=", 1) for line in p.stdout.splitlines() if "=" in line)
        return out, p.stderr, p.returncode


@pytest.fixture
def host(tmp_path) -> FakeHost:
    return FakeHost(tmp_path)


# ---------- the guess ----------

def test_no_gpu_means_cpu(host):
    out, err, rc = host.detect()
    assert rc == 0 and out["AIBOX_GPU"] == "none", (out, err)
    assert "CPU" in out["AIBOX_GPU_REASON"]
    assert err == ""


def test_nvidia_gpu_with_the_container_toolkit(host):
    host.nvidia()
    out, err, rc = host.detect()
    assert rc == 0 and out["AIBOX_GPU"] == "nvidia", (out, err)
    assert "2 GPU(s)" in out["AIBOX_GPU_REASON"]


def test_nvidia_gpu_without_the_toolkit_runtime_falls_back_to_cpu_and_says_how_to_fix(host):
    host.nvidia(with_runtime=False)
    out, err, rc = host.detect()
    assert rc == 0 and out["AIBOX_GPU"] == "none", (out, err)
    assert "nvidia-container-toolkit" in err and "nvidia-ctk runtime configure" in err


def test_nvidia_runtime_without_a_working_driver_is_cpu(host):
    host.docker(RUNTIMES_NVIDIA)  # nvidia-smi stays the failing stub
    out, _, rc = host.detect()
    assert rc == 0 and out["AIBOX_GPU"] == "none"


def test_amd_gpu_with_kfd_and_a_render_node(host):
    host.amd()
    out, err, rc = host.detect()
    assert rc == 0 and out["AIBOX_GPU"] == "amd", (out, err)
    assert out["AIBOX_GPU_VIDEO_GID"] == str(os.stat(host.dev / "dri" / "card0").st_gid)
    assert out["AIBOX_GPU_RENDER_GID"] == str(os.stat(host.dev / "dri" / "renderD128").st_gid)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown of the fake nodes needs root")
def test_amd_groups_are_the_device_nodes_owners(host):
    host.amd()
    os.chown(host.dev / "dri" / "card0", -1, 44)
    os.chown(host.dev / "dri" / "renderD128", -1, 993)
    out, _, _ = host.detect()
    assert (out["AIBOX_GPU_VIDEO_GID"], out["AIBOX_GPU_RENDER_GID"]) == ("44", "993")


def test_dri_alone_is_not_an_amd_compute_gpu(host):
    host.node("dri/card0")
    host.node("dri/renderD128")  # an Intel iGPU or a display adapter: no /dev/kfd
    out, _, _ = host.detect()
    assert out["AIBOX_GPU"] == "none"


def test_nvidia_wins_when_both_are_present(host):
    host.nvidia()
    host.amd()
    out, _, _ = host.detect()
    assert out["AIBOX_GPU"] == "nvidia"


# ---------- AIBOX_GPU overrides the guess ----------

def test_aibox_gpu_none_overrides_present_hardware(host):
    host.nvidia()
    host.amd()
    out, err, rc = host.detect("none")
    assert rc == 0 and out["AIBOX_GPU"] == "none" and err == ""


def test_aibox_gpu_forced_without_hardware_warns(host):
    out, err, rc = host.detect("nvidia")
    assert rc == 0 and out["AIBOX_GPU"] == "nvidia"
    assert "nvidia-smi lists no GPU" in err and "no nvidia runtime" in err
    out, err, rc = host.detect("amd")
    assert rc == 0 and out["AIBOX_GPU"] == "amd"
    assert "kfd" in err


def test_aibox_gpu_auto_and_empty_guess(host):
    host.amd()
    assert host.detect("auto")[0]["AIBOX_GPU"] == "amd"
    assert host.detect("")[0]["AIBOX_GPU"] == "amd"


def test_aibox_gpu_rejects_unknown_values(host):
    out, err, rc = host.detect("intel")
    assert rc == 2 and out == {}
    assert "auto, nvidia, amd or none" in err


# ---------- deploy/compose.sh adds the override of the mode ----------

RECORDING_COMPOSE = """#!/bin/sh
# Records the compose command line instead of running compose.
echo "$*" >> "{log}"
"""


def compose_files_used(host: FakeHost, tmp_path: Path, gpu: str | None) -> tuple[list[str], str]:
    """`deploy/compose.sh status` on the fake host with a compose that records its arguments."""
    log = tmp_path / "compose.log"
    host.stub("compose-recorder", RECORDING_COMPOSE.format(log=log))
    env = {**host.env, "AIBOX_ENV_FILE": str(tmp_path / "none.env"), "AIBOX_COMPOSE": str(host.bin / "compose-recorder"),
           "COMPOSE_PROJECT_NAME": "aiboxgputest", "DOCKER_SOCKET": str(tmp_path / "no.sock"),
           "HOME": str(tmp_path)}
    if gpu is not None:
        env["AIBOX_GPU"] = gpu
    p = subprocess.run([str(ROOT / "deploy" / "compose.sh"), "status"], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    first = log.read_text().splitlines()[0].split()
    files = [first[i + 1] for i, a in enumerate(first) if a == "-f"]
    return files, p.stdout


def test_compose_sh_adds_the_override_of_the_detected_gpu(host, tmp_path):
    host.amd()
    files, out = compose_files_used(host, tmp_path, None)
    assert files == [str(COMPOSE_FILE), str(AMD_FILE)]
    assert "GPU: amd (" in out and "ollama is not running" in out


def test_compose_sh_follows_aibox_gpu(host, tmp_path):
    host.amd()
    files, out = compose_files_used(host, tmp_path, "nvidia")
    assert files == [str(COMPOSE_FILE), str(NVIDIA_FILE)]
    assert "GPU: nvidia (AIBOX_GPU=nvidia)" in out


def test_compose_sh_adds_nothing_for_cpu(host, tmp_path):
    files, out = compose_files_used(host, tmp_path, None)
    assert files == [str(COMPOSE_FILE)]
    assert "GPU: none (" in out


def test_compose_sh_refuses_an_unknown_aibox_gpu(host, tmp_path):
    env = {**host.env, "AIBOX_ENV_FILE": str(tmp_path / "none.env"), "AIBOX_GPU": "cuda",
           "AIBOX_COMPOSE": "true", "HOME": str(tmp_path)}
    p = subprocess.run([str(ROOT / "deploy" / "compose.sh"), "status"], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0
    assert "AIBOX_GPU must be auto, nvidia, amd or none (got 'cuda')" in p.stderr


# ---------- the compose model of each mode ----------

def ollama(rendered: dict) -> dict:
    return rendered["services"]["ollama"]


def test_cpu_model_has_no_gpu(tmp_path):
    s = ollama(render_config(tmp_path))
    assert "devices" not in s and "deploy" not in s and "group_add" not in s
    assert s["image"].startswith("ollama/ollama:0.12.6@sha256:")


def test_nvidia_model_reserves_every_gpu_for_ollama(tmp_path):
    rendered = render_config(tmp_path, files=[COMPOSE_FILE, NVIDIA_FILE])
    s = ollama(rendered)
    devices = s["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    # Same image, and every hardening rule of the bundle still holds.
    assert s["image"] == ollama(render_config(tmp_path))["image"]
    assert s["user"] == "65532:65532" and s["read_only"] is True and s["cap_drop"] == ["ALL"]
    for name, other in rendered["services"].items():
        if name != "ollama":
            assert "deploy" not in other, f"{name} got a GPU"


def test_amd_model_uses_the_rocm_image_and_the_devices(tmp_path):
    rendered = render_config(tmp_path, files=[COMPOSE_FILE, AMD_FILE],
                             env={"AIBOX_GPU_VIDEO_GID": "44", "AIBOX_GPU_RENDER_GID": "993"})
    s = ollama(rendered)
    assert s["image"] == "ollama/ollama:0.12.6-rocm"
    # The ROCm tag of the same Ollama release as the CPU/NVIDIA image.
    base = ollama(render_config(tmp_path))["image"]
    assert base.split("@")[0] + "-rocm" == s["image"]
    devices = sorted(d if isinstance(d, str) else f"{d['source']}:{d['target']}" for d in s["devices"])
    assert [d.split(":")[0] for d in devices] == ["/dev/dri", "/dev/kfd"]
    assert sorted(str(g) for g in s["group_add"]) == ["44", "993"]
    assert s["user"] == "65532:65532" and s["read_only"] is True and s["cap_drop"] == ["ALL"]
    assert not s.get("privileged") and not s.get("cap_add")


def test_amd_model_refuses_to_render_without_the_groups(tmp_path):
    from compose_fixtures import compose_command
    env_file = tmp_path / "r.env"
    env_file.write_text("OPS_CONTROLLER_TOKEN=" + "t" * 40 + "\nAIBOX_ADMIN_TOKEN=" + "a" * 40
                        + "\nDASHBOARD_PASSWORD=" + "p" * 16 + "\n")
    p = subprocess.run([*compose_command(), "--env-file", str(env_file), "-f", str(COMPOSE_FILE), "-f", str(AMD_FILE),
                        "config"], cwd=ROOT, capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", "COMPOSE_PROFILES": "full"}, timeout=60)
    assert p.returncode != 0
    assert "AIBOX_GPU_VIDEO_GID" in p.stdout + p.stderr


def test_ollama_tuning_passes_through_from_env(tmp_path):
    tuning = {"OLLAMA_KEEP_ALIVE": "30m", "OLLAMA_NUM_PARALLEL": "4", "OLLAMA_MAX_LOADED_MODELS": "2",
              "OLLAMA_CONTEXT_LENGTH": "8192", "OLLAMA_FLASH_ATTENTION": "1"}
    env = ollama(render_config(tmp_path, env=tuning))["environment"]
    for k, v in tuning.items():
        assert env[k] == v, k
    # Unset: empty, which Ollama reads as its own default.
    env = ollama(render_config(tmp_path))["environment"]
    assert all(env[k] == "" for k in tuning)


def test_gpu_settings_are_documented():
    example = (ROOT / ".env.example").read_text()
    for key in ("AIBOX_GPU=", "OLLAMA_ROCM_IMAGE=", "AIBOX_GPU_VIDEO_GID=", "AIBOX_GPU_RENDER_GID=",
                "OLLAMA_KEEP_ALIVE=", "OLLAMA_NUM_PARALLEL=", "OLLAMA_MAX_LOADED_MODELS=",
                "OLLAMA_CONTEXT_LENGTH=", "OLLAMA_FLASH_ATTENTION="):
        assert f"\n{key}" in example, key


# ---------- ./aibox status: what the ollama container was given ----------

@pytest.fixture(scope="module")
def tiny_image(tmp_path_factory):
    """A FROM scratch image built offline, only to create (never start) containers from."""
    from compose_fixtures import require_docker, run
    require_docker()
    ctx = tmp_path_factory.mktemp("tiny")
    (ctx / "Dockerfile").write_text('FROM scratch\nCOPY Dockerfile /x\nENTRYPOINT ["/x"]\n')
    ref = f"aiboxgputiny{os.getpid()}:ci"
    run(["docker", "build", "-q", "-t", ref, str(ctx)], env={"DOCKER_BUILDKIT": "0"})
    yield ref
    run(["docker", "rmi", ref], check=False)


@pytest.mark.parametrize("create_args, expected", [
    (["--gpus", "all"], "ollama has the NVIDIA GPUs (device reservation)"),
    (["--device", "/dev/null:/dev/kfd", "--device", "/dev/null:/dev/dri"], "ollama has the AMD GPUs"),
    ([], "ollama runs on the CPU"),
])
def test_status_says_what_the_ollama_container_was_given(tmp_path, tiny_image, create_args, expected):
    from compose_fixtures import run
    # Created, not started: the engine records the request without needing the hardware.
    cid = run(["docker", "create", "--network", "none", *create_args, tiny_image]).stdout.strip()
    try:
        log = tmp_path / "compose.log"
        stub = tmp_path / "compose"
        stub.write_text(f'#!/bin/sh\necho "$*" >> "{log}"\ncase " $* " in *" ps -q ollama "*) echo {cid} ;; esac\n')
        stub.chmod(0o755)
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "DOCKER_HOST")}
        env.update({"AIBOX_ENV_FILE": str(tmp_path / "none.env"), "AIBOX_COMPOSE": str(stub), "AIBOX_GPU": "none",
                    "COMPOSE_PROJECT_NAME": "aiboxgpustatus"})
        p = subprocess.run([str(ROOT / "aibox"), "status"], env=env, cwd=ROOT, capture_output=True, text=True,
                           timeout=60)
        assert p.returncode == 0, p.stdout + p.stderr
        assert expected in p.stdout.splitlines()[-1], p.stdout
    finally:
        run(["docker", "rm", "-f", cid], check=False)
