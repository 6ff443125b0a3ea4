#!/usr/bin/env bash
# Build the aibox images (edge, controller, dashboard) offline from already-built binaries.
# The controller image also carries mcp-bridge (with its libraries) for MCP tool containers.
#
#   deploy/build-images.sh                  # images from target/release (cargo build --release first)
#   AIBOX_PROFILE=debug deploy/build-images.sh   # from target/debug (what the tests use: no extra build)
#
# Env: AIBOX_PROFILE (release|debug, default release), AIBOX_TAG (default: the git revision),
#      AIBOX_IMAGE_PREFIX (default aibox -> aibox-edge:TAG, aibox-controller:TAG, aibox-dashboard:TAG).
# No base image is pulled: the context holds the binaries (stripped), the shared libraries they
# link against (found with ldd, at the paths the loader expects), CA certificates, a passwd file
# and a static busybox for the HEALTHCHECK. Prints one line per image: `image NAME SIZE_BYTES`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

PROFILE=${AIBOX_PROFILE:-release}
PREFIX=${AIBOX_IMAGE_PREFIX:-aibox}
TAG=${AIBOX_TAG:-$(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo local)}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BINS=(edge controller dashboard)
UID_GID=65532

die() { echo "build-images: $*" >&2; exit 1; }

for b in "${BINS[@]}" mcp-bridge; do
  [ -x "$TARGET_DIR/$PROFILE/$b" ] || die "missing $TARGET_DIR/$PROFILE/$b (run: cargo build $( [ "$PROFILE" = release ] && echo --release ) -p edge -p controller -p dashboard -p mcp-bridge)"
done
command -v docker >/dev/null || die "docker is not installed"
BUSYBOX=${AIBOX_BUSYBOX:-/bin/busybox}
linkage=$(ldd "$BUSYBOX" 2>&1 || true)  # ldd exits 1 for a static binary
if [ ! -x "$BUSYBOX" ] || ! grep -qE 'not a dynamic executable|statically linked' <<<"$linkage"; then
  die "$BUSYBOX is not a static busybox (Debian: apt-get install busybox-static)"
fi

CTX=$(mktemp -d "${TMPDIR:-/tmp}/aibox-image.XXXXXX")
trap 'rm -rf "$CTX"' EXIT
mkdir -p "$CTX/bin" "$CTX/rootfs/etc/ssl/certs" "$CTX/rootfs/bin" "$CTX/rootfs/tmp" \
         "$CTX/data/mcp" "$CTX/data/ops-controller" "$CTX/data/edge"
chmod 1777 "$CTX/rootfs/tmp"

for b in "${BINS[@]}"; do
  # Strip into the context (the debug binaries are mostly symbols); never touch target/.
  if command -v objcopy >/dev/null; then
    objcopy --strip-all "$TARGET_DIR/$PROFILE/$b" "$CTX/bin/$b"
  else
    cp "$TARGET_DIR/$PROFILE/$b" "$CTX/bin/$b"
  fi
done

# The shared libraries, copied as real files to the path the binaries ask for.
copy_lib() {
  local want=$1 real
  real=$(readlink -f "$want")
  mkdir -p "$CTX/rootfs$(dirname "$want")"
  cp "$real" "$CTX/rootfs$want"
}
for b in "${BINS[@]}"; do
  ldd "$TARGET_DIR/$PROFILE/$b" 2>/dev/null | awk '
    $2 == "=>" && $3 ~ /^\// { print $3 }
    $1 ~ /^\// { print $1 }' 
done | sort -u | while read -r lib; do copy_lib "$lib"; done

# The MCP bridge travels in the controller image, which places it into each tool container
# (docs/mcp.md). Tool images carry whatever C library they like, so the bridge brings its own:
# the libraries ldd names, flat in lib/, run through the loader among them.
mkdir -p "$CTX/bridge/lib"
if command -v objcopy >/dev/null; then
  objcopy --strip-all "$TARGET_DIR/$PROFILE/mcp-bridge" "$CTX/bridge/mcp-bridge"
else
  cp "$TARGET_DIR/$PROFILE/mcp-bridge" "$CTX/bridge/mcp-bridge"
fi
ldd "$TARGET_DIR/$PROFILE/mcp-bridge" 2>/dev/null | awk '
  $2 == "=>" && $3 ~ /^\// { print $3 }
  $1 ~ /^\// { print $1 }' | sort -u | while read -r lib; do
  cp "$(readlink -f "$lib")" "$CTX/bridge/lib/$(basename "$lib")"
done
chmod 0755 "$CTX/bridge/mcp-bridge" "$CTX/bridge/lib/"*

cp "$BUSYBOX" "$CTX/rootfs/bin/busybox"
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  cp /etc/ssl/certs/ca-certificates.crt "$CTX/rootfs/etc/ssl/certs/ca-certificates.crt"
fi
printf 'root:x:0:0:root:/:/sbin/nologin\naibox:x:%s:%s:aibox:/tmp:/sbin/nologin\n' $UID_GID $UID_GID >"$CTX/rootfs/etc/passwd"
printf 'root:x:0:\naibox:x:%s:\n' $UID_GID >"$CTX/rootfs/etc/group"
printf 'hosts: files dns\n' >"$CTX/rootfs/etc/nsswitch.conf"

REV=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
# BuildKit (when the buildx plugin is there) sends each target only the files it uses; the
# classic builder (Debian's docker.io without buildx) builds the stages before the target too,
# which costs only a cached COPY each.
if [ -z "${DOCKER_BUILDKIT:-}" ]; then
  if docker buildx version >/dev/null 2>&1; then export DOCKER_BUILDKIT=1; else export DOCKER_BUILDKIT=0; fi
fi
for b in "${BINS[@]}"; do
  image="$PREFIX-$b:$TAG"
  if ! docker build -q --target "$b" -t "$image" \
    --label "org.opencontainers.image.revision=$REV" \
    --label "org.opencontainers.image.source=aibox" \
    --label "io.aibox.profile=$PROFILE" \
    -f "$ROOT/deploy/Dockerfile" "$CTX" >"$CTX/build.log" 2>&1; then
    cat "$CTX/build.log" >&2
    die "docker build of $image failed"
  fi
  echo "image $image $(docker image inspect -f '{{.Size}}' "$image")"
done
