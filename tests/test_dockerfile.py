"""The Dockerfile: one set of final stages filled two ways. The `-host` targets are built here,
offline, from binaries built on this host (what `./aibox up` does by default) and run; the
from-source `build` stage is only linted (test_compose.py) and checked for its place in the file,
because this machine has no registry to pull the Rust image from.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import uuid

import pytest

from compose_fixtures import CORE, DEBUG_BIN, ROOT, image_size, render_config, require_docker, run

DOCKERFILE = ROOT / "Dockerfile"
MB = 1024 * 1024


def stages() -> list[tuple[str, str]]:
    """(base, name) of every stage, in file order."""
    return re.findall(r"^FROM\s+(\S+)\s+AS\s+(\S+)\s*$", DOCKERFILE.read_text(), re.M)


def test_each_image_has_a_host_and_a_source_target_with_one_definition():
    by_name = {name: base for base, name in stages()}
    for b in CORE:
        # Both targets start from the same metadata stage, so ENV, USER, HEALTHCHECK and
        # ENTRYPOINT are written once.
        assert by_name[f"{b}-host"] == f"{b}-meta" and by_name[b] == f"{b}-meta", by_name
    assert by_name["build"] == "${RUST_IMAGE}"
    assert re.search(r"^ARG RUST_IMAGE=rust:[\d.]+-slim-bookworm$", DOCKERFILE.read_text(), re.M)


def test_the_classic_builder_never_reaches_the_build_stage_for_a_host_target():
    # Without BuildKit every stage before the target is built: the pulling stage must come after.
    names = [name for _, name in stages()]
    build_at = names.index("build")
    for b in CORE:
        assert names.index(f"{b}-host") < build_at
        assert names.index(b) > build_at


def test_compose_builds_the_source_targets(tmp_path):
    rendered = render_config(tmp_path)
    for b in CORE:
        build = rendered["services"][b]["build"]
        assert build["target"] == b
        assert str(build["context"]).rstrip("/") in (str(ROOT), ".")
    for name, s in rendered["services"].items():
        if name not in CORE:
            assert "build" not in s, f"{name} is a third-party image; it is pulled, never built"


def test_the_build_context_keeps_secrets_and_state_out():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".env", "data", "target", ".git"} <= ignored


@pytest.fixture(scope="module")
def host_images(tmp_path_factory):
    """The three `-host` targets, built offline from target/debug with the classic builder."""
    require_docker()
    missing = [b for b in CORE if not (DEBUG_BIN / b).exists()]
    if missing:
        pytest.fail(f"missing target/debug/{', '.join(missing)}: run `cargo build --workspace --bins`", pytrace=False)
    ctx = tmp_path_factory.mktemp("ctx") / "ctx"
    run(["deploy/image-context.sh", str(ctx), str(DEBUG_BIN)])
    prefix = f"aiboxdf{uuid.uuid4().hex[:8]}"
    images = {}
    try:
        for b in CORE:
            images[b] = f"{prefix}-{b}:ci"
            run(["docker", "build", "-q", "--target", f"{b}-host", "-t", images[b], "-f", str(DOCKERFILE), str(ctx)],
                env={"DOCKER_BUILDKIT": "0"}, timeout=240)
        yield images
    finally:
        for ref in images.values():
            run(["docker", "rmi", ref], check=False)
        shutil.rmtree(ctx, ignore_errors=True)


def test_host_targets_run_their_binary(host_images):
    for b, ref in host_images.items():
        p = run(["docker", "run", "--rm", "--network", "none", "--read-only", "--cap-drop", "ALL", ref, "--help"],
                timeout=60)
        assert "Usage:" in p.stdout, (b, p.stdout, p.stderr)
    p = run(["docker", "run", "--rm", "--network", "none", host_images["controller"], "audit", "--help"])
    assert "verify" in p.stdout


def test_host_targets_are_scratch_images_as_small_as_before(host_images):
    for b, ref in host_images.items():
        info = run(["docker", "image", "inspect", "-f",
                    "{{.Config.User}}|{{json .Config.Entrypoint}}|{{json .Config.Healthcheck.Test}}", ref]).stdout.strip()
        user, entrypoint, health = info.split("|")
        assert user == "65532:65532", b
        assert entrypoint == f'["/usr/local/bin/{b}"]', b
        assert '"/bin/busybox","wget"' in health, b
        # target/debug binaries, stripped: the same bounds as the images deploy/build-images.sh made.
        limit = 64 * MB if b == "edge" else 50 * MB
        assert image_size(ref) < limit, f"{b}: {image_size(ref) / MB:.1f} MB"


def test_the_healthcheck_passes_in_a_host_target(host_images):
    name = f"aiboxdf{uuid.uuid4().hex[:8]}"
    run(["docker", "run", "-d", "--name", name, "--network", "none", "--read-only", "--cap-drop", "ALL",
         "--tmpfs", "/tmp", "-e", "EDGE_LISTEN=127.0.0.1:11435", host_images["edge"]])
    try:
        # The image's own HEALTHCHECK command, run the way Docker runs it.
        for _ in range(60):
            p = run(["docker", "exec", name, "/bin/busybox", "wget", "-q", "-O", "/dev/null",
                     "http://127.0.0.1:11435/health"], check=False)
            if p.returncode == 0:
                break
            subprocess.run(["sleep", "0.5"])
        assert p.returncode == 0, run(["docker", "logs", name], check=False).stderr
    finally:
        run(["docker", "rm", "-f", name], check=False)


def test_doctor_reports_images_built_from_another_revision(host_images, tmp_path):
    """Drift: `:local` images whose revision label is not this checkout's HEAD."""
    prefix = f"aiboxdrift{uuid.uuid4().hex[:8]}"
    stale = "0123456789ab" + "0" * 28
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    tagged = []
    try:
        for b, ref in host_images.items():
            # A label on top of the built image: the same files, another revision.
            (ctx / "Dockerfile").write_text(f"FROM {ref}\n")
            tagged.append(f"{prefix}-{b}:local")
            run(["docker", "build", "-q", "-t", tagged[-1], "--label", f"org.opencontainers.image.revision={stale}",
                 str(ctx)], env={"DOCKER_BUILDKIT": "0"}, timeout=120)
        env_file = tmp_path / "aibox.env"
        env_file.write_text("OPS_CONTROLLER_TOKEN=" + "c" * 64 + "\nAIBOX_ADMIN_TOKEN=" + "d" * 64
                            + "\nDASHBOARD_PASSWORD=" + "e" * 24 + "\n")
        env_file.chmod(0o600)
        env = {"AIBOX_ENV_FILE": str(env_file), "AIBOX_DATA_DIR": str(tmp_path / "data"),
               "COMPOSE_PROJECT_NAME": prefix, "AIBOX_IMAGE_PREFIX": prefix, "AIBOX_TAG": "", "AIBOX_GPU": "none"}
        p = run(["./aibox", "doctor"], env=env, check=False)
        head = run(["git", "rev-parse", "HEAD"]).stdout.strip()
        for b in CORE:
            assert (f"warn  image {prefix}-{b}:local was built from 0123456789ab, this checkout is at {head[:12]} "
                    "(drift)") in p.stdout, p.stdout
        assert "run ./aibox up to rebuild from this checkout" in p.stdout
    finally:
        for ref in tagged:
            run(["docker", "rmi", ref], check=False)
