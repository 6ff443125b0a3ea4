#!/usr/bin/env bash
# Build the aibox images (edge, controller, dashboard) offline from already-built binaries.
# The controller image also carries mcp-bridge (with its libraries) for MCP tool containers.
#
#   deploy/build-images.sh                  # images from target/release (cargo build --release first)
#   AIBOX_PROFILE=debug deploy/build-images.sh   # from target/debug (what the tests use: no extra build)
#
# Env: AIBOX_PROFILE (release|debug, default release), AIBOX_TAG (default: the git revision),
#      AIBOX_IMAGE_PREFIX (default aibox -> aibox-edge:TAG, aibox-controller:TAG, aibox-dashboard:TAG).
# No base image is pulled: deploy/image-context.sh assembles a context of the binaries (stripped),
# the shared libraries they link against (found with ldd), CA certificates, a passwd file and a
# static busybox for the HEALTHCHECK, and the Dockerfile's `<name>-host` targets (the same final
# stages as the from-source build, fed from this context) pack it. Prints one line per image:
# `image NAME SIZE_BYTES`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

PROFILE=${AIBOX_PROFILE:-release}
PREFIX=${AIBOX_IMAGE_PREFIX:-aibox}
TAG=${AIBOX_TAG:-$(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo local)}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BINS=(edge controller dashboard)

die() { echo "build-images: $*" >&2; exit 1; }

for b in "${BINS[@]}" mcp-bridge; do
  [ -x "$TARGET_DIR/$PROFILE/$b" ] || die "missing $TARGET_DIR/$PROFILE/$b (run: cargo build $( [ "$PROFILE" = release ] && echo --release ) -p edge -p controller -p dashboard -p mcp-bridge)"
done
command -v docker >/dev/null || die "docker is not installed"

CTX=$(mktemp -d "${TMPDIR:-/tmp}/aibox-image.XXXXXX")
trap 'rm -rf "$CTX"' EXIT
"$ROOT/deploy/image-context.sh" "$CTX" "$TARGET_DIR/$PROFILE" || die "could not assemble the image context"
echo "build-images: context ready (binaries from $TARGET_DIR/$PROFILE, $(du -sh "$CTX" | cut -f1))" >&2

REV=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
# BuildKit (when the buildx plugin is there) builds only the stages a target needs; the classic
# builder (Debian's docker.io without buildx) builds the stages before the target too, which is
# why the Dockerfile puts the `-host` targets before its build stage.
if [ -z "${DOCKER_BUILDKIT:-}" ]; then
  if docker buildx version >/dev/null 2>&1; then export DOCKER_BUILDKIT=1; else export DOCKER_BUILDKIT=0; fi
fi
n=0
for b in "${BINS[@]}"; do
  image="$PREFIX-$b:$TAG"
  n=$((n + 1))
  echo "build-images: [$n/${#BINS[@]}] $image ..." >&2
  if ! docker build -q --target "$b-host" -t "$image" \
    --label "org.opencontainers.image.revision=$REV" \
    --label "org.opencontainers.image.source=aibox" \
    --label "io.aibox.profile=$PROFILE" \
    -f "$ROOT/Dockerfile" "$CTX" >"$CTX/build.log" 2>&1; then
    cat "$CTX/build.log" >&2
    die "docker build of $image failed"
  fi
  echo "image $image $(docker image inspect -f '{{.Size}}' "$image")"
done
