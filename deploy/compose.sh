#!/usr/bin/env bash
# deploy/compose.sh: what `./aibox up | down | status` runs.
#
#   up [--no-build]   check the prerequisites, build the binaries and images (offline), write
#                     missing secrets into .env, prepare data/, start the core (plus
#                     AIBOX_PROFILES), wait until healthy
#   check [--no-build] only the prerequisite check that `up` starts with
#   down              stop and remove the project's containers and networks (data/ stays)
#   status            the project's services, state and health
#
# Settings (environment first, then the env file; every one is described in .env.example):
#   AIBOX_ENV_FILE            env file to read and to write secrets into (default ./.env)
#   COMPOSE_PROJECT_NAME      compose project, also the controller's scope (default aibox)
#   AIBOX_PORT                host port of the edge, on 127.0.0.1 (default 11435)
#   AIBOX_PROFILES            third-party services to add: ollama,webui,n8n,browser or full
#   AIBOX_PROFILE             cargo profile of the binaries: release (default) or debug
#   AIBOX_CARGO_BUILD         0 = use the binaries already in target/ (default 1: cargo build)
#   AIBOX_TAG                 image tag (default: the git revision; also tagged :local)
#   AIBOX_DATA_DIR            runtime state (default ./data)
#   AIBOX_COMPOSE_OVERRIDES   extra compose files, ':'-separated (e.g. the UI ports file)
#   AIBOX_UP_TIMEOUT          seconds to wait for the core to be healthy (default 120)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
CORE=(edge controller dashboard)
APP_UID=65532

say() { echo "aibox: $*" >&2; }
die() { say "$*"; exit 1; }

ENV_FILE=${AIBOX_ENV_FILE:-$ROOT/.env}

# A value from the environment, else from the env file (last assignment wins), else $2.
setting() {
  local key=$1 default=${2:-} v
  v=${!key:-}
  if [ -z "$v" ] && [ -f "$ENV_FILE" ]; then
    v=$(grep -E "^${key}=" "$ENV_FILE" 2>/dev/null | tail -n 1 | cut -d= -f2- || true)
    v=${v%\"}; v=${v#\"}; v=${v%\'}; v=${v#\'}
  fi
  echo "${v:-$default}"
}

# Every tool `up` needs, checked before anything is built or written: a missing package found
# after a 7-minute release build costs the whole build. One line per missing tool, then the one
# command that installs them all (Debian package names).
check_prerequisites() {
  local do_build=$1 missing=() packages=() rust=""
  need() { missing+=("$1"); [ -n "$2" ] && packages+=("$2"); return 0; }
  if [ "$do_build" = 1 ] && [ "$(setting AIBOX_CARGO_BUILD 1)" != 0 ]; then
    if ! command -v cargo >/dev/null; then
      missing+=("cargo (the Rust toolchain, 1.88 or newer; Debian's package is too old)")
      rust=1
    fi
    command -v cc >/dev/null || need "cc (a C compiler: zlib-ng, zstd, ring and aws-lc are built from C)" build-essential
    command -v make >/dev/null || need "make" build-essential
    command -v cmake >/dev/null || need "cmake (zlib-ng, which Pingora links, is built with it)" cmake
  fi
  if [ "$do_build" = 1 ]; then
    local busybox=${AIBOX_BUSYBOX:-/bin/busybox}
    if [ ! -x "$busybox" ] || ! { ldd "$busybox" 2>&1 || true; } | grep -qE 'not a dynamic executable|statically linked'; then
      need "a static busybox at $busybox (the images' health checks run it)" busybox-static
    fi
  fi
  if ! command -v docker >/dev/null; then
    need "docker (Docker Engine)" docker.io
  fi
  if [ -z "${AIBOX_COMPOSE:-}" ] && ! { command -v docker >/dev/null && docker compose version >/dev/null 2>&1; } \
     && ! command -v docker-compose >/dev/null; then
    need "docker compose (the compose plugin) or docker-compose" docker-compose
  fi
  if [ "${#missing[@]}" -gt 0 ]; then
    say "missing prerequisites (nothing was built or changed):"
    local m
    for m in "${missing[@]}"; do say "  - $m"; done
    if [ "${#packages[@]}" -gt 0 ]; then
      local sudo=""
      [ "$(id -u)" = 0 ] || sudo="sudo "
      # shellcheck disable=SC2207
      packages=($(printf '%s\n' "${packages[@]}" | sort -u))
      say "install them with: ${sudo}apt-get install -y ${packages[*]}"
      if [[ " ${packages[*]} " == *" docker-compose "* ]]; then
        say "(or docker-compose-plugin, if Docker's own apt repository is set up)"
      fi
    fi
    if [ -n "$rust" ]; then
      say "install Rust with: curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh"
    fi
    exit 1
  fi
  if ! docker info >/dev/null 2>&1; then
    die "the Docker engine is not reachable (is dockerd running: sudo systemctl start docker; are you in the docker group: sudo usermod -aG docker \$USER, then log in again?)"
  fi
}

compose_cmd() {
  if [ -n "${AIBOX_COMPOSE:-}" ]; then
    # shellcheck disable=SC2206
    COMPOSE=($AIBOX_COMPOSE)
  elif docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
  elif command -v docker-compose >/dev/null 2>&1; then
    COMPOSE=(docker-compose)
  else
    die "neither 'docker compose' nor 'docker-compose' is installed"
  fi
}

setup() {
  command -v docker >/dev/null || die "docker is not installed"
  docker info >/dev/null 2>&1 || die "the Docker engine is not reachable (is dockerd running, are you in the docker group?)"
  compose_cmd
  export COMPOSE_PROJECT_NAME
  COMPOSE_PROJECT_NAME=$(setting COMPOSE_PROJECT_NAME aibox)
  export AIBOX_DATA_DIR
  AIBOX_DATA_DIR=$(setting AIBOX_DATA_DIR "$ROOT/data")
  case "$AIBOX_DATA_DIR" in /*) ;; *) AIBOX_DATA_DIR="$ROOT/${AIBOX_DATA_DIR#./}" ;; esac
  export AIBOX_PORT
  AIBOX_PORT=$(setting AIBOX_PORT 11435)
  local profiles
  profiles=$(setting AIBOX_PROFILES "")
  if [ -n "$profiles" ]; then export COMPOSE_PROFILES=$profiles; fi
  # The controller joins the socket's group instead of running as root.
  local sock
  sock=$(setting DOCKER_SOCKET /var/run/docker.sock)
  export DOCKER_GID
  DOCKER_GID=$(stat -c %g "$sock" 2>/dev/null || echo 0)
  FILES=(-f "$ROOT/docker-compose.yml")
  local extra
  extra=$(setting AIBOX_COMPOSE_OVERRIDES "")
  if [ -n "$extra" ]; then
    local IFS=:
    for f in $extra; do FILES+=(-f "$f"); done
  fi
  ENV_ARGS=()
  if [ -f "$ENV_FILE" ]; then ENV_ARGS=(--env-file "$ENV_FILE"); fi
}

dc() { "${COMPOSE[@]}" "${ENV_ARGS[@]}" -p "$COMPOSE_PROJECT_NAME" "${FILES[@]}" "$@"; }

random_hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }

# Write any missing secret into the env file (0600); never print one in full.
ensure_secrets() {
  local created=0
  if [ ! -f "$ENV_FILE" ]; then
    (umask 077; printf '# aibox settings and secrets (generated by ./aibox up; keep this file private).\n# Every variable is described in .env.example.\n' >"$ENV_FILE")
    created=1
  fi
  chmod 600 "$ENV_FILE"
  local key value
  for key in OPS_CONTROLLER_TOKEN AIBOX_ADMIN_TOKEN DASHBOARD_PASSWORD DASHBOARD_SESSION_KEY; do
    if [ -n "$(setting "$key")" ]; then continue; fi
    case $key in
      DASHBOARD_PASSWORD) value=$(random_hex 12) ;;
      *) value=$(random_hex 32) ;;
    esac
    printf '%s=%s\n' "$key" "$value" >>"$ENV_FILE"
    say "generated $key (${value:0:4}…) in $ENV_FILE"
  done
  # The audit chain's own key, so rotating OPS_CONTROLLER_TOKEN later does not change it. Only for
  # a new audit log: adding a key under an existing chain would break its verification.
  local audit_dir=$AIBOX_DATA_DIR/ops-controller fresh_audit=0
  if [ ! -d "$audit_dir" ]; then
    fresh_audit=1
  elif [ -r "$audit_dir" ] && [ -x "$audit_dir" ] && [ -z "$(find "$audit_dir" -type f -size +0 -print -quit)" ]; then
    fresh_audit=1
  fi
  if [ -z "$(setting AUDIT_HMAC_KEY)" ] && [ "$fresh_audit" = 1 ]; then
    value=$(random_hex 32)
    printf 'AUDIT_HMAC_KEY=%s\n' "$value" >>"$ENV_FILE"
    say "generated AUDIT_HMAC_KEY (${value:0:4}…) in $ENV_FILE"
  fi
  if [ "$created" = 1 ]; then
    say "the dashboard password is DASHBOARD_PASSWORD in $ENV_FILE (mode 0600)"
  fi
  ENV_ARGS=(--env-file "$ENV_FILE")
}

git_tag() {
  local rev
  rev=$(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null) || { echo local; return; }
  if ! git -C "$ROOT" diff --quiet HEAD -- 2>/dev/null; then rev="$rev-dirty"; fi
  echo "$rev"
}

build() {
  local profile prefix
  profile=$(setting AIBOX_PROFILE release)
  prefix=$(setting AIBOX_IMAGE_PREFIX aibox)
  export AIBOX_IMAGE_PREFIX=$prefix
  # Chosen by the user (environment or env file)? Then only that tag; else the revision + :local.
  local chosen_tag
  chosen_tag=$(setting AIBOX_TAG)
  export AIBOX_TAG=${chosen_tag:-$(git_tag)}
  if [ "$(setting AIBOX_CARGO_BUILD 1)" != 0 ]; then
    command -v cargo >/dev/null || die "cargo is not installed (or set AIBOX_CARGO_BUILD=0 with binaries in target/$profile)"
    local flags=()
    [ "$profile" = release ] && flags=(--release)
    say "building the binaries (cargo build ${flags[*]:-} -p edge -p controller -p dashboard)"
    cargo build "${flags[@]}" -p edge -p controller -p dashboard
  fi
  say "building the images ($prefix-{edge,controller,dashboard}:$AIBOX_TAG, from target/$profile)"
  AIBOX_PROFILE=$profile "$ROOT/deploy/build-images.sh"
  if [ -z "$chosen_tag" ]; then
    for b in "${CORE[@]}"; do docker tag "$prefix-$b:$AIBOX_TAG" "$prefix-$b:local"; done
    say "tagged $prefix-{edge,controller,dashboard}:$AIBOX_TAG also as :local (./aibox up --no-build runs :local)"
  fi
}

# Host directories the containers write, owned by the uid that writes them. A short-lived
# container from our own image does the chown, so this works without root on the host too.
prepare_data() {
  local d=$AIBOX_DATA_DIR
  mkdir -p "$d/mcp" "$d/ops-controller" "$d/edge" "$d/ollama" "$d/open-webui" "$d/n8n"
  # Committed examples (data/**/*.example*, README.md) stay the user's, so git keeps working.
  local keep=(! -name '*.example*' ! -name README.md)
  local wrong=""
  for sub in mcp ops-controller ollama open-webui; do
    if [ -n "$(find "$d/$sub" "${keep[@]}" ! -user $APP_UID -print -quit 2>/dev/null)" ]; then wrong=1; fi
  done
  if [ -n "$(find "$d/n8n" ! -user 1000 -print -quit 2>/dev/null)" ]; then wrong=1; fi
  [ -z "$wrong" ] && return 0
  local image="${AIBOX_IMAGE_PREFIX:-aibox}-edge:${AIBOX_TAG:-local}"
  docker run --rm --network none --user 0:0 --cap-drop ALL --cap-add CHOWN --cap-add FOWNER \
    --security-opt no-new-privileges:true --entrypoint /bin/busybox -v "$d:/mnt" "$image" \
    sh -c "find /mnt/mcp /mnt/ops-controller /mnt/ollama /mnt/open-webui ! -name '*.example*' ! -name README.md \
             -exec chown $APP_UID:$APP_UID {} + \
           && chown -R 1000:1000 /mnt/n8n && chmod 700 /mnt/ops-controller" \
    || die "could not set the owner of $d (the containers run as uid $APP_UID)"
}

health_of() {
  local id
  id=$(dc ps -q "$1" 2>/dev/null | head -n 1)
  [ -n "$id" ] || { echo missing; return; }
  docker inspect -f '{{.State.Status}}/{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$id" 2>/dev/null || echo missing
}

wait_healthy() {
  local timeout start now s state all
  timeout=$(setting AIBOX_UP_TIMEOUT 120)
  start=$(date +%s)
  while :; do
    all=1
    for s in "${CORE[@]}"; do
      state=$(health_of "$s")
      case $state in
        running/healthy) ;;
        exited/*|dead/*|*/unhealthy)
          say "$s is $state; its last log lines:"
          dc logs --tail 30 "$s" >&2 || true
          die "$s did not come up" ;;
        *) all=0 ;;
      esac
    done
    now=$(date +%s)
    if [ "$all" = 1 ]; then
      say "core healthy in $((now - start)) s"
      return 0
    fi
    if [ $((now - start)) -ge "$timeout" ]; then
      for s in "${CORE[@]}"; do say "$s: $(health_of "$s")"; done
      die "the core was not healthy within $timeout s (see: ./aibox status; docker logs)"
    fi
    sleep 1
  done
}

cmd_up() {
  local do_build=1
  for a in "$@"; do
    case $a in
      --no-build) do_build=0 ;;
      *) die "up: unknown option $a" ;;
    esac
  done
  check_prerequisites "$do_build"
  setup
  ensure_secrets
  if [ "$do_build" = 1 ]; then
    build
  else
    export AIBOX_TAG
    AIBOX_TAG=$(setting AIBOX_TAG local)
    export AIBOX_IMAGE_PREFIX
    AIBOX_IMAGE_PREFIX=$(setting AIBOX_IMAGE_PREFIX aibox)
  fi
  prepare_data
  local t0
  t0=$(date +%s)
  dc up -d --remove-orphans
  wait_healthy
  say "up in $(( $(date +%s) - t0 )) s: http://127.0.0.1:$AIBOX_PORT/ (models at /v1 and /api, tools at /mcp, dashboard at /)"
}

cmd_down() {
  setup
  # Every profile, so services started with AIBOX_PROFILES go too.
  export COMPOSE_PROFILES=full
  AIBOX_TAG=$(setting AIBOX_TAG local) OPS_CONTROLLER_TOKEN=${OPS_CONTROLLER_TOKEN:-unset} \
    AIBOX_ADMIN_TOKEN=${AIBOX_ADMIN_TOKEN:-unset} DASHBOARD_PASSWORD=${DASHBOARD_PASSWORD:-unset} \
    dc down --remove-orphans
}

cmd_status() {
  setup
  export COMPOSE_PROFILES=full
  OPS_CONTROLLER_TOKEN=${OPS_CONTROLLER_TOKEN:-unset} AIBOX_ADMIN_TOKEN=${AIBOX_ADMIN_TOKEN:-unset} \
    DASHBOARD_PASSWORD=${DASHBOARD_PASSWORD:-unset} dc ps
}

cmd_check() {
  local do_build=1
  for a in "$@"; do
    case $a in
      --no-build) do_build=0 ;;
      *) die "check: unknown option $a" ;;
    esac
  done
  check_prerequisites "$do_build"
  say "all prerequisites are installed"
}

case "${1:-}" in
  up) shift; cmd_up "$@" ;;
  check) shift; cmd_check "$@" ;;
  down) shift; cmd_down "$@" ;;
  status) shift; cmd_status "$@" ;;
  *) echo "usage: deploy/compose.sh up [--no-build] | check [--no-build] | down | status" >&2; exit 2 ;;
esac
