#!/usr/bin/env bash
# deploy/compose.sh: what `./aibox up | down | status` runs.
#
#   up [--no-build] [--swarm]
#                     check the prerequisites, build the binaries and images (offline), write
#                     missing secrets into .env, prepare data/, register the services' edge keys,
#                     start the core (plus AIBOX_PROFILES), wait until healthy
#   check [--no-build] only the prerequisite check that `up` starts with
#                     --swarm: deploy the stack (deploy/stack.yml) on this node's swarm instead
#                     (deploy/swarm.sh, docs/SCALING.md)
#   down [--swarm]    stop and remove the project's containers and networks (data/ stays)
#   status            the project's services, state and health, and the GPU Ollama has
#   logs [svc] [-f]   the last lines of every (or one) service's log; -f follows
#   doctor            checks Docker, compose, .env, ports, disk, GPU, images, health; says what to do
#   audit verify      checks the audit log's hash chain (controller audit verify)
#   key ARGS          `edge key ARGS` inside the edge container (audited through the controller)
#   n8n-credentials   imports the edge credentials (data/n8n/aibox-credentials.example.json) into n8n
#
# Settings (environment first, then the env file; every one is described in .env.example):
#   AIBOX_ENV_FILE            env file to read and to write secrets into (default ./.env)
#   COMPOSE_PROJECT_NAME      compose project, also the controller's scope (default aibox)
#   AIBOX_PORT                host port of the edge, on 127.0.0.1 (default 11435)
#   AIBOX_PROFILES            third-party services to add: ollama,webui,n8n,browser,openclaw or full
#   AIBOX_PROFILE             cargo profile of the binaries: release (default) or debug
#   AIBOX_CARGO_BUILD         0 = use the binaries already in target/ (default 1: cargo build)
#   AIBOX_BUILD               auto (default: on this host when cargo is here, else in Docker from
#                             the Dockerfile), host, or docker
#   AIBOX_TAG                 image tag (default: the git revision; also tagged :local)
#   AIBOX_DATA_DIR            runtime state (default ./data)
#   AIBOX_COMPOSE_OVERRIDES   extra compose files, ':'-separated (e.g. the UI ports file)
#   AIBOX_UP_TIMEOUT          seconds to wait for the core to be healthy (default 120)
#   AIBOX_GPU                 auto (default): deploy/gpu-detect.sh guesses; nvidia | amd | none
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
CORE=(edge controller dashboard)
APP_UID=65532
# The services the bundle wires to the edge, each with its own key (client name:.env variable).
# The edge knows only the keys' hashes (data/edge/clients.toml); each service gets only its own.
SERVICE_KEYS=(open-webui:OPEN_WEBUI_EDGE_KEY n8n:N8N_EDGE_KEY openclaw:OPENCLAW_EDGE_KEY)

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
  local do_build=$1 missing=() packages=() rust="" way=""
  need() { missing+=("$1"); [ -n "$2" ] && packages+=("$2"); return 0; }
  [ "$do_build" = 1 ] && way=$(build_way)
  # With no toolchain and no BuildKit either, say what the offline host build needs.
  if [ "$way" = docker ] && [ "$(setting AIBOX_BUILD auto)" = auto ] && ! docker buildx version >/dev/null 2>&1; then
    way=host
  fi
  if [ "$way" = docker ] && ! docker buildx version >/dev/null 2>&1; then
    need "docker buildx (AIBOX_BUILD=docker builds the images from source with BuildKit)" docker-buildx
  fi
  if [ "$way" = host ] && [ "$(setting AIBOX_CARGO_BUILD 1)" != 0 ]; then
    if ! command -v cargo >/dev/null; then
      missing+=("cargo (the Rust toolchain, 1.88 or newer; Debian's package is too old), or BuildKit (docker-buildx-plugin) to build the images in Docker from the Dockerfile instead")
      rust=1
    fi
    command -v cc >/dev/null || need "cc (a C compiler: zlib-ng, zstd, ring and aws-lc are built from C)" build-essential
    command -v make >/dev/null || need "make" build-essential
    command -v cmake >/dev/null || need "cmake (zlib-ng, which Pingora links, is built with it)" cmake
  fi
  if [ "$way" = host ]; then
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
  gpu_setup
}

# ---- GPU: which one Ollama gets (deploy/gpu-detect.sh), and the matching compose override ----
GPU_MODE=none
GPU_REASON=
gpu_setup() {
  local out line
  out=$(AIBOX_GPU=$(setting AIBOX_GPU auto) "$ROOT/deploy/gpu-detect.sh") \
    || die "AIBOX_GPU must be auto, nvidia, amd or none (got '$(setting AIBOX_GPU)')"
  while IFS= read -r line; do
    case $line in
      AIBOX_GPU=*) GPU_MODE=${line#*=} ;;
      AIBOX_GPU_REASON=*) GPU_REASON=${line#*=} ;;
      # The device nodes' groups, unless the user set them (env or .env).
      AIBOX_GPU_VIDEO_GID=*) export AIBOX_GPU_VIDEO_GID; AIBOX_GPU_VIDEO_GID=$(setting AIBOX_GPU_VIDEO_GID "${line#*=}") ;;
      AIBOX_GPU_RENDER_GID=*) export AIBOX_GPU_RENDER_GID; AIBOX_GPU_RENDER_GID=$(setting AIBOX_GPU_RENDER_GID "${line#*=}") ;;
    esac
  done <<<"$out"
  if [ "$GPU_MODE" != none ]; then FILES+=(-f "$ROOT/deploy/compose.gpu-$GPU_MODE.yml"); fi
}

# What the running Ollama container was given (the mode of the last `up`, not today's guess).
gpu_in_use() {
  local id devices
  id=$(dc ps -q ollama 2>/dev/null | head -n 1)
  if [ -z "$id" ]; then echo "ollama is not running"; return; fi
  devices=$(docker inspect -f '{{json .HostConfig.DeviceRequests}} {{range .HostConfig.Devices}}{{.PathInContainer}} {{end}}' "$id" 2>/dev/null)
  case $devices in
    *'"nvidia"'*|*'"gpu"'*) echo "ollama has the NVIDIA GPUs (device reservation)" ;;
    *kfd*) echo "ollama has the AMD GPUs (/dev/kfd, /dev/dri)" ;;
    *) echo "ollama runs on the CPU" ;;
  esac
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
  # OPEN_WEBUI_SECRET_KEY: without it Open WebUI's start script writes a key file into /app,
  # which its non-root, read-only container cannot (docs/third-party-services.md).
  for key in OPS_CONTROLLER_TOKEN AIBOX_ADMIN_TOKEN DASHBOARD_PASSWORD DASHBOARD_SESSION_KEY OPENCLAW_GATEWAY_TOKEN \
             OPEN_WEBUI_SECRET_KEY "${SERVICE_KEYS[@]#*:}"; do
    if [ -n "$(setting "$key")" ]; then continue; fi
    # The dashboard password lives on as its argon2id hash (store_dashboard_password).
    if [ "$key" = DASHBOARD_PASSWORD ] && [ -n "$(setting DASHBOARD_PASSWORD_HASH)" ]; then continue; fi
    case $key in
      DASHBOARD_PASSWORD) value=$(random_hex 12) ;;
      *_EDGE_KEY) value="aibox-$(random_hex 24)" ;;
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
  ENV_ARGS=(--env-file "$ENV_FILE")
}

# The env file keeps the dashboard password only as an argon2id PHC string
# (DASHBOARD_PASSWORD_HASH). A plain DASHBOARD_PASSWORD in it (generated just now, or written by
# an older ./aibox up) is hashed by the dashboard binary itself (`dashboard hash-password`, from
# our own image, no network) and its line removed; the password is shown once, here.
store_dashboard_password() {
  [ -f "$ENV_FILE" ] || return 0
  local pw hash tmp image
  pw=$(grep -E '^DASHBOARD_PASSWORD=' "$ENV_FILE" 2>/dev/null | tail -n 1 | cut -d= -f2- || true)
  pw=${pw%\"}; pw=${pw#\"}; pw=${pw%\'}; pw=${pw#\'}
  [ -n "$pw" ] || return 0
  image="${AIBOX_IMAGE_PREFIX:-aibox}-dashboard:${AIBOX_TAG:-local}"
  hash=$(printf '%s\n' "$pw" | docker run --rm -i --network none --cap-drop ALL \
    --security-opt no-new-privileges:true "$image" hash-password) \
    || die "could not hash the dashboard password with $image (dashboard hash-password)"
  case $hash in
    '$argon2id$'*) ;;
    *) die "dashboard hash-password printed no argon2id hash" ;;
  esac
  # A plain password in the file is the newest intent (break-glass reset): it replaces any hash.
  tmp=$(mktemp "$ENV_FILE.XXXXXX")
  grep -vE '^DASHBOARD_PASSWORD(_HASH)?=' "$ENV_FILE" >"$tmp" || true
  # Single quotes: the hash contains `$`, which compose would otherwise interpolate.
  printf "DASHBOARD_PASSWORD_HASH='%s'\n" "$hash" >>"$tmp"
  chmod 600 "$tmp"
  mv "$tmp" "$ENV_FILE"
  say "dashboard password: $pw (shown once: $ENV_FILE keeps only its argon2id hash, DASHBOARD_PASSWORD_HASH)"
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
  if [ "$(build_way)" = docker ]; then
    build_in_docker
  else
    build_on_host "$profile" "$prefix"
  fi
  if [ -z "$chosen_tag" ]; then
    for b in "${CORE[@]}"; do docker tag "$prefix-$b:$AIBOX_TAG" "$prefix-$b:local"; done
    say "tagged $prefix-{edge,controller,dashboard}:$AIBOX_TAG also as :local (./aibox up --no-build runs :local)"
  fi
}

# ---- where the images are built: on this host from target/ (offline, the default), or from
# source inside Docker (the Dockerfile's build stage) when there is no Rust toolchain here ----
build_way() {
  local way
  way=$(setting AIBOX_BUILD auto)
  case $way in
    host|docker) echo "$way" ;;
    auto)
      if [ "$(setting AIBOX_CARGO_BUILD 1)" = 0 ] || command -v cargo >/dev/null; then echo host; else echo docker; fi ;;
    *) die "AIBOX_BUILD must be auto, host or docker (got '$way')" ;;
  esac
}

build_in_docker() {
  docker buildx version >/dev/null 2>&1 \
    || die "no Rust toolchain here, and building in Docker needs BuildKit (the buildx plugin): install docker-buildx-plugin, or install Rust (https://rustup.rs), cmake and busybox-static"
  say "building the images from source in Docker (Dockerfile; pulls $(grep -m1 -oE 'RUST_IMAGE=[^ ]+' "$ROOT/Dockerfile" | cut -d= -f2); the first build takes a while)"
  local b rev n=0
  rev=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
  # docker build rather than compose build: the same labels as deploy/build-images.sh (doctor's
  # drift check reads the revision), and the build stage is shared by the three targets.
  for b in "${CORE[@]}"; do
    n=$((n + 1))
    say "[$n/${#CORE[@]}] $AIBOX_IMAGE_PREFIX-$b:$AIBOX_TAG (target $b)"
    DOCKER_BUILDKIT=1 docker build --target "$b" -t "$AIBOX_IMAGE_PREFIX-$b:$AIBOX_TAG" \
      --label "org.opencontainers.image.revision=$rev" --label "org.opencontainers.image.source=aibox" \
      --label "io.aibox.profile=release" -f "$ROOT/Dockerfile" "$ROOT" \
      || die "docker build of $AIBOX_IMAGE_PREFIX-$b:$AIBOX_TAG failed (the from-source build needs a registry)"
  done
}

build_on_host() {
  local profile=$1 prefix=$2
  if [ "$(setting AIBOX_CARGO_BUILD 1)" != 0 ]; then
    command -v cargo >/dev/null || die "cargo is not installed (or set AIBOX_CARGO_BUILD=0 with binaries in target/$profile)"
    local flags=()
    [ "$profile" = release ] && flags=(--release)
    say "building the binaries (cargo build ${flags[*]:-} -p edge -p controller -p dashboard -p mcp-bridge)"
    cargo build "${flags[@]}" -p edge -p controller -p dashboard -p mcp-bridge
  fi
  say "building the images ($prefix-{edge,controller,dashboard}:$AIBOX_TAG, from target/$profile)"
  AIBOX_PROFILE=$profile "$ROOT/deploy/build-images.sh"
}

# Host directories the containers write, owned by the uid that writes them. A short-lived
# container from our own image does the chown, so this works without root on the host too.
prepare_data() {
  local d=$AIBOX_DATA_DIR
  mkdir -p "$d/mcp" "$d/ops-controller" "$d/edge" "$d/ollama" "$d/open-webui" "$d/n8n" "$d/openclaw" "$d/comfyui"
  seed_open_webui "$d/open-webui"
  # Committed examples (data/**/*.example*, README.md) stay the user's, so git keeps working.
  local keep=(! -name '*.example*' ! -name README.md)
  local wrong=""
  for sub in mcp ops-controller edge ollama open-webui comfyui; do
    if [ -n "$(find "$d/$sub" "${keep[@]}" ! -user $APP_UID -print -quit 2>/dev/null)" ]; then wrong=1; fi
  done
  # n8n and OpenClaw run as their images' uid 1000.
  if [ -n "$(find "$d/n8n" "$d/openclaw" ! -user 1000 -print -quit 2>/dev/null)" ]; then wrong=1; fi
  [ -z "$wrong" ] && return 0
  local image="${AIBOX_IMAGE_PREFIX:-aibox}-edge:${AIBOX_TAG:-local}"
  docker run --rm --network none --user 0:0 --cap-drop ALL --cap-add CHOWN --cap-add FOWNER \
    --security-opt no-new-privileges:true --entrypoint /bin/busybox -v "$d:/mnt" "$image" \
    sh -c "find /mnt/mcp /mnt/ops-controller /mnt/edge /mnt/ollama /mnt/open-webui /mnt/comfyui ! -name '*.example*' ! -name README.md \
             -exec chown $APP_UID:$APP_UID {} + \
           && chown -R 1000:1000 /mnt/n8n /mnt/openclaw && chmod 700 /mnt/ops-controller /mnt/openclaw" \
    || die "could not set the owner of $d (the containers run as uid $APP_UID)"
}

# Open WebUI's one connection (the edge's Ollama surface) needs its key, which Open WebUI takes
# from no environment variable: a config.json in a fresh data directory is moved into its
# database at first start (open_webui/config.py), so the key is seeded there, once. An existing
# install keeps what its admin set (Admin settings > Connections); a leftover seed (Open WebUI
# renames it old_config.json) is removed, so the key does not linger in a second file.
seed_open_webui() {
  local dir=$1 key
  if [ -f "$dir/old_config.json" ] && grep -q '"aibox_seed"' "$dir/old_config.json" 2>/dev/null; then
    rm -f "$dir/old_config.json" 2>/dev/null || true
  fi
  [ -e "$dir/webui.db" ] || [ -e "$dir/config.json" ] && return 0
  key=$(setting OPEN_WEBUI_EDGE_KEY)
  [ -n "$key" ] || return 0
  (umask 077; printf '{"aibox_seed": "./aibox up: the edge key of the Ollama connection", "ollama": {"api_configs": {"0": {"enable": true, "key": "%s"}}}}\n' "$key" >"$dir/config.json") 2>/dev/null \
    || say "could not write $dir/config.json: set Open WebUI's key by hand (docs/third-party-services.md)"
}

# `./aibox n8n-credentials`: n8n's own import (`n8n import:credentials`) of the two edge
# credentials in data/n8n/aibox-credentials.example.json (OpenAI-compatible and Ollama, both at
# http://model-gateway:11435), with n8n's key filled in. The filled-in file exists only in the
# container's /tmp (a tmpfs) for the import; importing again updates the same two credentials.
cmd_n8n_credentials() {
  setup
  AIBOX_TAG=$(setting AIBOX_TAG local)
  export AIBOX_TAG
  local template=$ROOT/data/n8n/aibox-credentials.example.json key
  [ -f "$template" ] || die "no $template"
  key=$(setting N8N_EDGE_KEY)
  [ -n "$key" ] || die "no N8N_EDGE_KEY in $ENV_FILE: run ./aibox up first"
  [ "$(health_of n8n)" = running/healthy ] || die "n8n is not running and healthy (AIBOX_PROFILES=n8n ./aibox up)"
  sed "s/AIBOX_N8N_EDGE_KEY/$key/g" "$template" | dc exec -T n8n sh -c \
    'umask 077; cat >/tmp/aibox-credentials.json; n8n import:credentials --input=/tmp/aibox-credentials.json; rc=$?; rm -f /tmp/aibox-credentials.json; exit $rc' \
    || die "n8n import:credentials failed (see above)"
  say "imported the credentials 'aibox edge (OpenAI-compatible)' and 'aibox edge (Ollama)' into n8n"
}

# The keys file: anonymous callers may use nothing (every request needs a key), and each wired
# service's key from .env is registered by its hash. Existing entries are left alone, so keys
# made with `./aibox key` and an operator's own [anonymous] stay. Runs as the edge's uid in a
# container without network, from the edge image, so the file's owner is the edge's.
register_keys() {
  local image="${AIBOX_IMAGE_PREFIX:-aibox}-edge:${AIBOX_TAG:-local}" script pair
  script="edge key anonymous --none --if-unset --file /data/edge/clients.toml"
  for pair in "${SERVICE_KEYS[@]}"; do
    script="$script && edge key add ${pair%%:*} --key-env ${pair#*:} --if-missing --file /data/edge/clients.toml"
  done
  docker run --rm --network none --user $APP_UID:$APP_UID --cap-drop ALL \
    --security-opt no-new-privileges:true --env-file "$ENV_FILE" -e PATH=/usr/local/bin \
    -v "$AIBOX_DATA_DIR/edge:/data/edge" --entrypoint /bin/busybox "$image" sh -c "$script" >&2 \
    || die "could not register the services' keys in $AIBOX_DATA_DIR/edge/clients.toml"
}

health_of() {
  local id
  id=$(dc ps -q "$1" 2>/dev/null | head -n 1)
  [ -n "$id" ] || { echo missing; return; }
  docker inspect -f '{{.State.Status}}/{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$id" 2>/dev/null || echo missing
}

wait_healthy() {
  local timeout start now s state all line last="" last_at=0
  timeout=$(setting AIBOX_UP_TIMEOUT 120)
  start=$(date +%s)
  say "waiting for ${CORE[*]} to be healthy (up to $timeout s)"
  while :; do
    all=1
    line=""
    for s in "${CORE[@]}"; do
      state=$(health_of "$s")
      line="$line $s $state,"
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
    # Progress: when a state changes, else every 10 s.
    if [ "$all" != 1 ] && { [ "$line" != "$last" ] || [ $((now - last_at)) -ge 10 ]; }; then
      say "  $((now - start)) s:${line%,}"
      last=$line last_at=$now
    fi
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

# The controller's view of every service, the profiles not started included (its `up` creates
# those; docs/controller.md): the resolved compose file (`config`: variables substituted, paths
# absolute). It holds the secrets .env gives the services, so it is written as the controller's
# uid into its 0700 directory. compose v1 prints every service whatever the profiles; v2 needs
# them named (`config --profiles` lists them).
write_compose_model() {
  local image="${AIBOX_IMAGE_PREFIX:-aibox}-edge:${AIBOX_TAG:-local}" all
  all=$(dc config --profiles 2>/dev/null | paste -sd, - || true)
  COMPOSE_PROFILES=${all:-${COMPOSE_PROFILES:-}} dc config 2>/dev/null \
    | docker run --rm -i --network none --user $APP_UID:$APP_UID --cap-drop ALL \
        --security-opt no-new-privileges:true -v "$AIBOX_DATA_DIR/ops-controller:/data/ops-controller" \
        --entrypoint /bin/busybox "$image" sh -c 'umask 077 && cat >/data/ops-controller/compose.model.yml.tmp \
          && mv /data/ops-controller/compose.model.yml.tmp /data/ops-controller/compose.model.yml' \
    || say "warning: could not write the compose model; the dashboard will not offer services never started"
}

cmd_up() {
  local do_build=1 swarm=0
  for a in "$@"; do
    case $a in
      --no-build) do_build=0 ;;
      --swarm) swarm=1 ;;
      *) die "up: unknown option $a" ;;
    esac
  done
  check_prerequisites "$do_build"
  setup
  [ "$swarm" = 0 ] || swarm_require
  ensure_secrets
  [ "$swarm" = 0 ] || swarm_ensure_redis_password
  if [ "$do_build" = 1 ]; then
    build
  else
    export AIBOX_TAG
    AIBOX_TAG=$(setting AIBOX_TAG local)
    export AIBOX_IMAGE_PREFIX
    AIBOX_IMAGE_PREFIX=$(setting AIBOX_IMAGE_PREFIX aibox)
  fi
  store_dashboard_password
  say "preparing $AIBOX_DATA_DIR"
  prepare_data
  say "GPU: $GPU_MODE ($GPU_REASON)"
  register_keys
  if [ "$swarm" = 1 ]; then
    SWARM_BUILD=$do_build swarm_up
    return
  fi
  write_compose_model
  local t0
  t0=$(date +%s)
  say "starting the containers (project $COMPOSE_PROJECT_NAME)"
  # --no-build: the images were built above (or are chosen by tag); never a surprise build here.
  dc up -d --no-build --remove-orphans
  wait_healthy
  say "up in $(( $(date +%s) - t0 )) s: http://127.0.0.1:$AIBOX_PORT/ (models at /v1 and /api, tools at /mcp, dashboard at /)"
}

cmd_down() {
  setup
  if [ "${1:-}" = --swarm ]; then
    swarm_down
    return
  fi
  # Every profile, so services started with AIBOX_PROFILES go too.
  export COMPOSE_PROFILES=full
  export AIBOX_TAG
  AIBOX_TAG=$(setting AIBOX_TAG local)
  export OPS_CONTROLLER_TOKEN=${OPS_CONTROLLER_TOKEN:-unset} AIBOX_ADMIN_TOKEN=${AIBOX_ADMIN_TOKEN:-unset} \
    DASHBOARD_PASSWORD=${DASHBOARD_PASSWORD:-unset}
  # MCP tool containers are the controller's, not compose services: stop the controller first
  # (so it cannot recreate them), remove them by label, then the rest (their network included).
  dc stop controller >/dev/null 2>&1 || true
  remove_tool_containers
  dc down --remove-orphans
  local vols
  vols=$(docker volume ls -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" \
    --filter label=io.aibox.mcp.bridge)
  if [ -n "$vols" ]; then docker volume rm $vols >/dev/null; fi
}

remove_tool_containers() {
  local ids
  ids=$(docker ps -aq --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" \
    --filter label=io.aibox.mcp.server)
  ids="$ids $(docker ps -aq --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" \
    --filter label=io.aibox.mcp.bridge)"
  # shellcheck disable=SC2086
  if [ -n "${ids// /}" ]; then docker rm -f $ids >/dev/null; fi
}

cmd_status() {
  setup
  export COMPOSE_PROFILES=full
  placeholder_secrets
  dc ps
  echo "GPU: $GPU_MODE ($GPU_REASON); $(gpu_in_use)"
}

# ---- everyday commands: logs, audit verify (doctor is deploy/doctor.sh) ----

# Commands that only read (ps, logs) need no secrets, but compose refuses the file without them.
placeholder_secrets() {
  export OPS_CONTROLLER_TOKEN=${OPS_CONTROLLER_TOKEN:-unset} AIBOX_ADMIN_TOKEN=${AIBOX_ADMIN_TOKEN:-unset} \
    DASHBOARD_PASSWORD=${DASHBOARD_PASSWORD:-unset}
}

cmd_logs() {
  local follow=() tail=200 svcs=()
  while [ $# -gt 0 ]; do
    case $1 in
      -f|--follow) follow=(-f) ;;
      --tail) [ $# -ge 2 ] || die "logs: --tail needs a number"; tail=$2; shift ;;
      -*) die "logs: unknown option $1 (usage: ./aibox logs [service...] [-f] [--tail N])" ;;
      *) svcs+=("$1") ;;
    esac
    shift
  done
  setup
  export COMPOSE_PROFILES=full
  placeholder_secrets
  dc logs --tail "$tail" "${follow[@]}" "${svcs[@]}"
}

# `controller audit verify` on the audit log: in the running controller, else in a throwaway
# container of its image (read-only, no network), else a controller binary on this host. The key
# comes from AUDIT_HMAC_KEY or OPS_CONTROLLER_TOKEN (env or .env), through the environment only.
cmd_audit() {
  [ "${1:-}" = verify ] || die "usage: ./aibox audit verify"
  shift
  [ $# -eq 0 ] || die "audit verify: no arguments expected"
  local dir id image bin
  dir=$(setting AIBOX_DATA_DIR "$ROOT/data")
  case "$dir" in /*) ;; *) dir="$ROOT/${dir#./}" ;; esac
  dir=$dir/ops-controller
  export AUDIT_HMAC_KEY OPS_CONTROLLER_TOKEN
  AUDIT_HMAC_KEY=$(setting AUDIT_HMAC_KEY)
  OPS_CONTROLLER_TOKEN=$(setting OPS_CONTROLLER_TOKEN)
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    setup
    # In a subshell: the placeholders must not reach the verifier's environment.
    id=$(placeholder_secrets; dc ps -q controller 2>/dev/null | head -n 1)
    if [ -n "$id" ] && [ "$(docker inspect -f '{{.State.Running}}' "$id" 2>/dev/null)" = true ]; then
      say "verifying in the running controller ($dir)"
      exec docker exec "$id" /usr/local/bin/controller audit verify
    fi
    image="$(setting AIBOX_IMAGE_PREFIX aibox)-controller:$(setting AIBOX_TAG local)"
    if docker image inspect "$image" >/dev/null 2>&1; then
      [ -d "$dir" ] || die "no audit log at $dir"
      say "verifying $dir with $image"
      exec docker run --rm --network none --read-only --cap-drop ALL --security-opt no-new-privileges:true \
        -e AUDIT_HMAC_KEY -e OPS_CONTROLLER_TOKEN -v "$dir:/data/ops-controller:ro" \
        --entrypoint /usr/local/bin/controller "$image" audit verify --dir /data/ops-controller
    fi
  fi
  for bin in "$ROOT/target/release/controller" "$ROOT/target/debug/controller" "$(command -v controller || true)"; do
    if [ -n "$bin" ] && [ -x "$bin" ]; then
      [ -d "$dir" ] || die "no audit log at $dir"
      [ -r "$dir" ] && [ -x "$dir" ] || die "$dir is not readable (owned by uid $APP_UID): run as root, or start the controller and run this again"
      say "verifying $dir with $bin"
      exec "$bin" audit verify --dir "$dir"
    fi
  done
  die "no controller to verify with: start the box (./aibox up), or build it (cargo build -p controller)"
}

# `./aibox key …`: in the running edge container (its CONTROLLER_URL and token make the change
# audited), else in a one-off edge container on the same networks.
cmd_key() {
  setup
  AIBOX_TAG=$(setting AIBOX_TAG local)
  AIBOX_IMAGE_PREFIX=$(setting AIBOX_IMAGE_PREFIX aibox)
  export AIBOX_TAG AIBOX_IMAGE_PREFIX
  if [ "$(health_of edge)" = running/healthy ]; then
    dc exec -T edge /usr/local/bin/edge key "$@"
  else
    dc run --rm --no-deps -T edge key "$@"
  fi
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

# shellcheck source=deploy/swarm.sh
. "$ROOT/deploy/swarm.sh"

case "${1:-}" in
  up) shift; cmd_up "$@" ;;
  key) shift; cmd_key "$@" ;;
  n8n-credentials) shift; cmd_n8n_credentials "$@" ;;
  check) shift; cmd_check "$@" ;;
  down) shift; cmd_down "$@" ;;
  status) shift; cmd_status "$@" ;;
  logs) shift; cmd_logs "$@" ;;
  audit) shift; cmd_audit "$@" ;;
  # shellcheck source=deploy/doctor.sh
  doctor) shift; . "$ROOT/deploy/doctor.sh"; cmd_doctor "$@" ;;
  *) echo "usage: deploy/compose.sh up [--no-build] [--swarm] | down [--swarm] | status | logs [service...] [-f] | check [--no-build] | doctor | audit verify | key ARGS | n8n-credentials" >&2; exit 2 ;;
esac
