#!/usr/bin/env bash
# Build the Redis image of the Swarm stack offline from Debian's redis-server: FROM scratch with
# the binary, the libraries ldd names, a static busybox (start script and HEALTHCHECK) and a
# passwd entry for uid 65532, the way deploy/image-context.sh packs the aibox images.
#
#   deploy/build-redis-image.sh            # -> ${AIBOX_IMAGE_PREFIX:-aibox}-redis:${AIBOX_TAG:-local}
#
# The container writes its config to /tmp (a tmpfs in the stack): no persistence (the limits are
# windows of a minute), the password from REDIS_PASSWORD_FILE (a Swarm secret), never on the
# command line. Prints `image NAME SIZE_BYTES`.
set -euo pipefail
cd "$(dirname "$0")/.."
die() { echo "build-redis-image: $*" >&2; exit 1; }

PREFIX=${AIBOX_IMAGE_PREFIX:-aibox}
TAG=${AIBOX_TAG:-local}
SERVER=${AIBOX_REDIS_SERVER:-$(command -v redis-server || true)}
[ -n "$SERVER" ] && [ -x "$SERVER" ] || die "redis-server is not installed (Debian: apt-get install redis-server)"
BUSYBOX=${AIBOX_BUSYBOX:-/bin/busybox}
{ ldd "$BUSYBOX" 2>&1 || true; } | grep -qE 'not a dynamic executable|statically linked' \
  || die "$BUSYBOX is not a static busybox (Debian: apt-get install busybox-static)"

CTX=$(mktemp -d "${TMPDIR:-/tmp}/aibox-redis-image.XXXXXX")
trap 'rm -rf "$CTX"' EXIT
mkdir -p "$CTX/rootfs/usr/local/bin" "$CTX/rootfs/bin" "$CTX/rootfs/etc" "$CTX/rootfs/tmp"
chmod 1777 "$CTX/rootfs/tmp"
cp "$(readlink -f "$SERVER")" "$CTX/rootfs/usr/local/bin/redis-server"
ldd "$SERVER" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u |
  while read -r lib; do
    mkdir -p "$CTX/rootfs$(dirname "$lib")"
    cp "$(readlink -f "$lib")" "$CTX/rootfs$lib"
  done
cp "$BUSYBOX" "$CTX/rootfs/bin/busybox"
printf 'root:x:0:0:root:/:/sbin/nologin\naibox:x:65532:65532:aibox:/tmp:/sbin/nologin\n' >"$CTX/rootfs/etc/passwd"
printf 'root:x:0:\naibox:x:65532:\n' >"$CTX/rootfs/etc/group"

cat >"$CTX/rootfs/usr/local/bin/redis-start" <<'SH'
#!/bin/busybox sh
# The config lives in /tmp (0600), so the password is in no command line and no image layer.
set -eu
umask 077
conf=/tmp/redis.conf
{
  printf 'bind 0.0.0.0\nport 6379\nsave ""\nappendonly no\ndir /tmp\n'
  if [ -n "${REDIS_PASSWORD_FILE:-}" ]; then
    printf 'requirepass %s\n' "$(/bin/busybox cat "$REDIS_PASSWORD_FILE")"
  else
    # No password: then Redis's protected mode would refuse every client but loopback.
    printf 'protected-mode no\n'
  fi
} >"$conf"
exec /usr/local/bin/redis-server "$conf" "$@"
SH
cat >"$CTX/rootfs/usr/local/bin/redis-health" <<'SH'
#!/bin/busybox sh
# Up when it answers a PING (NOAUTH counts: it answered, and the check needs no password).
printf 'PING\r\n' | /bin/busybox nc -w 2 127.0.0.1 6379 | /bin/busybox grep -q -e PONG -e NOAUTH
SH
chmod 0755 "$CTX/rootfs/usr/local/bin/"*

cat >"$CTX/Dockerfile" <<'EOF2'
FROM scratch
COPY rootfs/ /
USER 65532:65532
EXPOSE 6379
HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=3 CMD ["/usr/local/bin/redis-health"]
ENTRYPOINT ["/usr/local/bin/redis-start"]
EOF2

image="$PREFIX-redis:$TAG"
if [ -z "${DOCKER_BUILDKIT:-}" ]; then
  if docker buildx version >/dev/null 2>&1; then export DOCKER_BUILDKIT=1; else export DOCKER_BUILDKIT=0; fi
fi
docker build -q -t "$image" --label org.opencontainers.image.source=aibox \
  --label "io.aibox.redis=$("$SERVER" --version | grep -oE 'v=[0-9.]+' | cut -d= -f2)" "$CTX" >/dev/null \
  || die "docker build of $image failed"
echo "image $image $(docker image inspect -f '{{.Size}}' "$image")"
