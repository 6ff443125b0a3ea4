#!/usr/bin/env bash
# Build the aibox browser worker image OFFLINE from Debian's Chromium (no base image, no registry).
#
#   apt-get install chromium-headless-shell fonts-dejavu-core fonts-liberation   # once, on the build host
#   cargo build -p cdp-gate                                                  # (or --release)
#   deploy/build-browser-image.sh                                            # prints: image NAME SIZE_BYTES
#   BROWSER_IMAGE=aibox-browser:local ./aibox up                             # the bundle uses it
#
# Env: AIBOX_PROFILE (release|debug, default release; where cdp-gate is taken from),
#      AIBOX_BROWSER_IMAGE (default aibox-browser:local), AIBOX_CHROMIUM (default: Debian's
#      headless shell, /usr/lib/chromium/chromium-headless-shell, from the `chromium-headless-shell`
#      package built from the same source as `chromium`; the full `chromium` binary is used with
#      --headless when the shell is missing).
#
# The image holds: cdp-gate (the entrypoint: starts Chromium with DevTools on 127.0.0.1:9223 and
# forwards :9222 to it, see edge/cdp-gate/src/main.rs), the Chromium binary and the resource files
# next to it (paks, ICU data, V8 snapshots, the SwiftShader GL/Vulkan libraries it dlopens), every
# shared library ldd names for those, NSS's dlopened modules (for HTTPS), fontconfig with the
# DejaVu and Liberation fonts, CA certificates, /etc/passwd with uid 65532 and a static busybox
# (the healthcheck's wget and /bin/sh). Nothing else: no package manager, no shell tools.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

PROFILE=${AIBOX_PROFILE:-release}
IMAGE=${AIBOX_BROWSER_IMAGE:-aibox-browser:local}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
CHROMIUM=${AIBOX_CHROMIUM:-/usr/lib/chromium/chromium-headless-shell}
BUSYBOX=${AIBOX_BUSYBOX:-/bin/busybox}
UID_GID=65532

die() { echo "build-browser-image: $*" >&2; exit 1; }

GATE="$TARGET_DIR/$PROFILE/cdp-gate"
[ -x "$GATE" ] || die "missing $GATE (run: cargo build $( [ "$PROFILE" = release ] && echo --release ) -p cdp-gate)"
HEADLESS_FLAG=()
if [ ! -x "$CHROMIUM" ]; then
  [ -x /usr/lib/chromium/chromium ] || die "no Chromium: apt-get install chromium-headless-shell (or chromium)"
  CHROMIUM=/usr/lib/chromium/chromium
  HEADLESS_FLAG=(--headless)
fi
CHROMIUM_DIR=$(dirname "$CHROMIUM")
command -v docker >/dev/null || die "docker is not installed"
linkage=$(ldd "$BUSYBOX" 2>&1 || true)
if [ ! -x "$BUSYBOX" ] || ! grep -qE 'not a dynamic executable|statically linked' <<<"$linkage"; then
  die "$BUSYBOX is not a static busybox (Debian: apt-get install busybox-static)"
fi

CTX=$(mktemp -d "${TMPDIR:-/tmp}/aibox-browser-image.XXXXXX")
trap 'rm -rf "$CTX"' EXIT
R="$CTX/rootfs"
mkdir -p "$R/usr/local/bin" "$R/bin" "$R/etc/ssl/certs" "$R/tmp" "$R$CHROMIUM_DIR" "$R/usr/share/fonts/truetype"
chmod 1777 "$R/tmp"

if command -v objcopy >/dev/null; then
  objcopy --strip-all "$GATE" "$R/usr/local/bin/cdp-gate"
else
  cp "$GATE" "$R/usr/local/bin/cdp-gate"
fi

# Chromium and the files it loads from its own directory. Locales: en-US only (the headless
# shell reads its strings from headless_lib_strings.pak; the full binary needs a locale pak).
cp "$CHROMIUM" "$R$CHROMIUM"
for f in "$CHROMIUM_DIR"/*.pak "$CHROMIUM_DIR"/*.bin "$CHROMIUM_DIR"/icudtl.dat \
         "$CHROMIUM_DIR"/libEGL.so "$CHROMIUM_DIR"/libGLESv2.so "$CHROMIUM_DIR"/libvk_swiftshader.so \
         "$CHROMIUM_DIR"/libvulkan.so.1 "$CHROMIUM_DIR"/vk_swiftshader_icd.json; do
  [ -e "$f" ] && cp "$f" "$R$CHROMIUM_DIR/"
done
if [ -f "$CHROMIUM_DIR/locales/en-US.pak" ]; then
  mkdir -p "$R$CHROMIUM_DIR/locales"
  cp "$CHROMIUM_DIR/locales/en-US.pak" "$R$CHROMIUM_DIR/locales/"
fi

# NSS opens its crypto token and root store with dlopen, so ldd does not name them.
NSS_DIR=/usr/lib/x86_64-linux-gnu
[ -d "$NSS_DIR" ] || NSS_DIR=$(dirname "$(ldd "$CHROMIUM" | awk '/libnss3.so/ {print $3}')")
DLOPENED=()
for f in libsoftokn3.so libfreebl3.so libfreeblpriv3.so libnssckbi.so libnssdbm3.so \
         libsoftokn3.chk libfreebl3.chk libfreeblpriv3.chk libnssdbm3.chk; do
  if [ -e "$NSS_DIR/$f" ]; then
    mkdir -p "$R$NSS_DIR"
    cp -L "$NSS_DIR/$f" "$R$NSS_DIR/$f"
    case $f in *.so) DLOPENED+=("$NSS_DIR/$f") ;; esac
  fi
done

# Every shared library the binaries and the dlopened modules name, as real files at the path the
# loader asks for.
copy_lib() {
  local want=$1
  [ -e "$R$want" ] && return 0
  mkdir -p "$R$(dirname "$want")"
  cp -L "$want" "$R$want"
}
for bin in "$CHROMIUM" "$R/usr/local/bin/cdp-gate" "${DLOPENED[@]}" \
           "$CHROMIUM_DIR"/libEGL.so "$CHROMIUM_DIR"/libGLESv2.so "$CHROMIUM_DIR"/libvk_swiftshader.so; do
  [ -e "$bin" ] || continue
  ldd "$bin" 2>/dev/null | awk '
    $2 == "=>" && $3 ~ /^\// { print $3 }
    $1 ~ /^\// { print $1 }'
done | sort -u | while read -r lib; do copy_lib "$lib"; done

# Fonts: fontconfig's configuration and two small families that cover Latin, Greek, Cyrillic.
cp -r /etc/fonts "$R/etc/fonts"
for family in dejavu liberation; do
  [ -d "/usr/share/fonts/truetype/$family" ] && cp -r "/usr/share/fonts/truetype/$family" "$R/usr/share/fonts/truetype/"
done
ls "$R/usr/share/fonts/truetype/" | grep -q . || die "no fonts: apt-get install fonts-dejavu-core fonts-liberation"

cp "$BUSYBOX" "$R/bin/busybox"
ln -s busybox "$R/bin/sh"
[ -f /etc/ssl/certs/ca-certificates.crt ] && cp /etc/ssl/certs/ca-certificates.crt "$R/etc/ssl/certs/"
printf 'root:x:0:0:root:/:/sbin/nologin\nchromium:x:%s:%s:chromium:/tmp:/sbin/nologin\n' $UID_GID $UID_GID >"$R/etc/passwd"
printf 'root:x:0:\nchromium:x:%s:\n' $UID_GID >"$R/etc/group"
printf 'hosts: files dns\n' >"$R/etc/nsswitch.conf"

# The fixed flags (the proxy flags come from the compose file's `command:`, appended after these,
# so the same command line serves the public default image too). `--remote-debugging-port` on
# loopback only: cdp-gate is the one door to it. `--user-data-dir` on the /tmp tmpfs: nothing a
# page leaves behind survives a restart.
ENTRY=("/usr/local/bin/cdp-gate" "--listen" "0.0.0.0:9222" "--to" "127.0.0.1:9223" "--"
       "$CHROMIUM" "${HEADLESS_FLAG[@]}" "--remote-debugging-port=9223" "--user-data-dir=/tmp/chromium"
       "--no-first-run" "--no-default-browser-check" "--disable-gpu" "--disable-dev-shm-usage"
       "--disable-crash-reporter" "--disable-breakpad")
json_array() { local out="" a; for a in "$@"; do out+="${out:+, }\"$a\""; done; printf '[%s]' "$out"; }

cat >"$CTX/Dockerfile" <<EOF
# aibox browser worker: Debian's Chromium + cdp-gate, assembled by deploy/build-browser-image.sh.
FROM scratch
COPY rootfs/ /
ENV HOME=/tmp \\
    FONTCONFIG_PATH=/etc/fonts
USER $UID_GID:$UID_GID
EXPOSE 9222
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \\
    CMD ["/bin/busybox", "wget", "-Y", "off", "-q", "-O", "/dev/null", "http://127.0.0.1:9222/json/version"]
ENTRYPOINT $(json_array "${ENTRY[@]}")
EOF

REV=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
VERSION=$("$CHROMIUM" --version 2>/dev/null | awk '{print $NF}' || echo unknown)
if [ -z "${DOCKER_BUILDKIT:-}" ]; then
  if docker buildx version >/dev/null 2>&1; then export DOCKER_BUILDKIT=1; else export DOCKER_BUILDKIT=0; fi
fi
if ! docker build -q -t "$IMAGE" \
  --label "org.opencontainers.image.revision=$REV" \
  --label "org.opencontainers.image.source=aibox" \
  --label "io.aibox.chromium=$VERSION" \
  "$CTX" >"$CTX/build.log" 2>&1; then
  cat "$CTX/build.log" >&2
  die "docker build of $IMAGE failed"
fi
echo "image $IMAGE $(docker image inspect -f '{{.Size}}' "$IMAGE")"
