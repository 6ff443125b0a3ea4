#!/usr/bin/env bash
# Assemble the context of the aibox images from built binaries: what the final stages of the
# Dockerfile copy. Used by deploy/build-images.sh (binaries from target/, offline) and by the
# Dockerfile's build stage (binaries it just compiled).
#
#   deploy/image-context.sh OUT BINDIR      # OUT must not exist or be empty
#
#   OUT/rootfs/  the C runtime the binaries link against (found with ldd, at the paths the loader
#                asks for), CA certificates, /etc/passwd and /etc/group with the `aibox` user
#                (uid/gid 65532), /bin/busybox (static; only the HEALTHCHECK's wget), /tmp
#   OUT/bin/     edge, controller, dashboard, stripped
#   OUT/bridge/  mcp-bridge and the libraries ldd names, flat in lib/ (the controller image
#                carries it and places it into each MCP tool container; docs/mcp.md)
#   OUT/data/    empty mcp/, ops-controller/, edge/ (owned by 65532 in the image)
#
# Env: AIBOX_BUSYBOX (default /bin/busybox; must be static).
set -euo pipefail

die() { echo "image-context: $*" >&2; exit 1; }
[ $# -eq 2 ] || die "usage: deploy/image-context.sh OUT BINDIR"
OUT=$1 BINDIR=$2
BINS=(edge controller dashboard)
UID_GID=65532

for b in "${BINS[@]}" mcp-bridge; do
  [ -x "$BINDIR/$b" ] || die "missing $BINDIR/$b"
done
BUSYBOX=${AIBOX_BUSYBOX:-/bin/busybox}
linkage=$(ldd "$BUSYBOX" 2>&1 || true)  # ldd exits 1 for a static binary
if [ ! -x "$BUSYBOX" ] || ! grep -qE 'not a dynamic executable|statically linked' <<<"$linkage"; then
  die "$BUSYBOX is not a static busybox (Debian: apt-get install busybox-static)"
fi

mkdir -p "$OUT/bin" "$OUT/rootfs/etc/ssl/certs" "$OUT/rootfs/bin" "$OUT/rootfs/tmp" \
         "$OUT/data/mcp" "$OUT/data/ops-controller" "$OUT/data/edge"
chmod 1777 "$OUT/rootfs/tmp"

for b in "${BINS[@]}"; do
  # Strip into the context (the debug binaries are mostly symbols); never touch the originals.
  if command -v objcopy >/dev/null; then
    objcopy --strip-all "$BINDIR/$b" "$OUT/bin/$b"
  else
    cp "$BINDIR/$b" "$OUT/bin/$b"
  fi
done

# The shared libraries, copied as real files to the path the binaries ask for.
copy_lib() {
  local want=$1 real
  real=$(readlink -f "$want")
  mkdir -p "$OUT/rootfs$(dirname "$want")"
  cp "$real" "$OUT/rootfs$want"
}
for b in "${BINS[@]}"; do
  ldd "$BINDIR/$b" 2>/dev/null | awk '
    $2 == "=>" && $3 ~ /^\// { print $3 }
    $1 ~ /^\// { print $1 }'
done | sort -u | while read -r lib; do copy_lib "$lib"; done

# The MCP bridge travels in the controller image, which places it into each tool container
# (docs/mcp.md). Tool images carry whatever C library they like, so the bridge brings its own:
# the libraries ldd names, flat in lib/, run through the loader among them.
mkdir -p "$OUT/bridge/lib"
if command -v objcopy >/dev/null; then
  objcopy --strip-all "$BINDIR/mcp-bridge" "$OUT/bridge/mcp-bridge"
else
  cp "$BINDIR/mcp-bridge" "$OUT/bridge/mcp-bridge"
fi
ldd "$BINDIR/mcp-bridge" 2>/dev/null | awk '
  $2 == "=>" && $3 ~ /^\// { print $3 }
  $1 ~ /^\// { print $1 }' | sort -u | while read -r lib; do
  cp "$(readlink -f "$lib")" "$OUT/bridge/lib/$(basename "$lib")"
done
chmod 0755 "$OUT/bridge/mcp-bridge" "$OUT/bridge/lib/"*

cp "$BUSYBOX" "$OUT/rootfs/bin/busybox"
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  cp /etc/ssl/certs/ca-certificates.crt "$OUT/rootfs/etc/ssl/certs/ca-certificates.crt"
fi
printf 'root:x:0:0:root:/:/sbin/nologin\naibox:x:%s:%s:aibox:/tmp:/sbin/nologin\n' $UID_GID $UID_GID >"$OUT/rootfs/etc/passwd"
printf 'root:x:0:\naibox:x:%s:\n' $UID_GID >"$OUT/rootfs/etc/group"
printf 'hosts: files dns\n' >"$OUT/rootfs/etc/nsswitch.conf"
