# deploy/doctor.sh: `./aibox doctor`, sourced by deploy/compose.sh (uses its setting, setup, dc,
# health_of, gpu_in_use). Checks what `./aibox up` needs and what a running box should show, one
# line each, and for every problem says what to do. Exit 1 when any check FAILs; warnings do not
# change the exit status. Never prints a secret.
#
# The checks: the Docker engine answers; a compose CLI; .env exists, is 0600 and has the secrets;
# the published ports are free or ours; free disk; the GPU mode; our images present and built from
# this checkout (drift), and the running containers on them; the core services healthy; the
# edge's /health and /ready. Checks that need Docker say `skip` when it does not answer.

DOC_FAILS=0
DOC_WARNS=0

# One result line, then the advice (indented, with an arrow) when there is any.
doc_line() {
  local level=$1 what=$2 advice=${3:-}
  case $level in
    FAIL) DOC_FAILS=$((DOC_FAILS + 1)) ;;
    warn) DOC_WARNS=$((DOC_WARNS + 1)) ;;
  esac
  printf '%-5s %s\n' "$level" "$what"
  if [ -n "$advice" ]; then printf '      -> %s\n' "$advice"; fi
}

doc_docker() {
  if ! command -v docker >/dev/null; then
    doc_line FAIL "docker: not installed" "install Docker Engine (Debian: sudo apt-get install docker.io)"
    return 1
  fi
  local out err
  err=$(mktemp)
  if out=$(timeout 15 docker info --format '{{.ServerVersion}}' 2>"$err"); then
    rm -f "$err"
    doc_line ok "Docker engine answers (server $out${DOCKER_HOST:+, DOCKER_HOST=$DOCKER_HOST})"
    return 0
  fi
  local msg advice
  msg=$(grep -v '^$' "$err" | head -n 1)
  rm -f "$err"
  case $msg in
    *"permission denied"*)
      advice="add yourself to the docker group (sudo usermod -aG docker \$USER, then log in again) or run with sudo" ;;
    *)
      advice="start the engine (sudo systemctl start docker; journalctl -u docker says why it stopped)"
      if [ -n "${DOCKER_HOST:-}" ]; then advice="$advice, or fix DOCKER_HOST=$DOCKER_HOST (unset it for the local engine)"; fi ;;
  esac
  doc_line FAIL "Docker engine does not answer: ${msg:-docker info failed}" "$advice"
  return 1
}

doc_compose() {
  local c
  if c=$(compose_cmd 2>/dev/null && echo "${COMPOSE[*]}"); then
    doc_line ok "compose: $c ($($c version --short 2>/dev/null || $c version 2>/dev/null | head -n 1))"
  else
    doc_line FAIL "compose: neither 'docker compose' nor 'docker-compose' is installed" \
      "install the compose plugin (Debian: sudo apt-get install docker-compose, or docker-compose-plugin from Docker's repository)"
  fi
}

doc_env_file() {
  if [ ! -f "$ENV_FILE" ]; then
    doc_line FAIL "$ENV_FILE does not exist" "run ./aibox up: it writes the file (mode 0600) with generated secrets"
    return
  fi
  local mode missing=() key
  mode=$(stat -c %a "$ENV_FILE")
  if [ "$mode" != 600 ]; then
    doc_line FAIL "$ENV_FILE has mode $mode; it holds secrets and must be 0600" "chmod 600 $ENV_FILE"
  elif [ "$(stat -c %u "$ENV_FILE")" != "$(id -u)" ] && [ "$(id -u)" != 0 ]; then
    doc_line warn "$ENV_FILE is not yours (owner uid $(stat -c %u "$ENV_FILE"))" "chown $(id -u) $ENV_FILE"
  else
    doc_line ok "$ENV_FILE exists, mode 0600"
  fi
  for key in OPS_CONTROLLER_TOKEN AIBOX_ADMIN_TOKEN; do
    [ -n "$(setting "$key")" ] || missing+=("$key")
  done
  # .env keeps the dashboard password as its argon2id hash once ./aibox up has run.
  if [ -z "$(setting DASHBOARD_PASSWORD_HASH)" ] && [ -z "$(setting DASHBOARD_PASSWORD)" ]; then
    missing+=(DASHBOARD_PASSWORD_HASH)
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    doc_line FAIL "secrets missing from $ENV_FILE: ${missing[*]}" "run ./aibox up (it generates the missing ones)"
  fi
}

# Is something listening on 127.0.0.1:$1? (bash's /dev/tcp: no extra tool needed)
doc_listening() { timeout 3 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

doc_ports() {
  local docker_ok=$1 project port name ports=() names=() i extra
  project=$(setting COMPOSE_PROJECT_NAME aibox)
  ports+=("$(setting AIBOX_PORT 11435)"); names+=(AIBOX_PORT)
  extra=$(setting AIBOX_COMPOSE_OVERRIDES "")
  # The web UIs publish a loopback port whenever their profile is on.
  local profiles
  profiles=,$(setting AIBOX_PROFILES ""),
  case $profiles in *,webui,*|*,full,*) ports+=("$(setting OPEN_WEBUI_PORT 3000)"); names+=(OPEN_WEBUI_PORT) ;; esac
  case $profiles in *,n8n,*|*,full,*) ports+=("$(setting N8N_PORT 5678)"); names+=(N8N_PORT) ;; esac
  case $profiles in *,comfyui,*|*,full,*) ports+=("$(setting COMFYUI_PORT 8188)"); names+=(COMFYUI_PORT) ;; esac
  case :$extra: in *compose.ollama-direct.yml:*)
    ports+=("$(setting OLLAMA_DIRECT_PORT 11434)"); names+=(OLLAMA_DIRECT_PORT) ;;
  esac
  for i in "${!ports[@]}"; do
    port=${ports[$i]} name=${names[$i]}
    if ! doc_listening "$port"; then
      doc_line ok "port 127.0.0.1:$port ($name) is free"
    elif [ "$docker_ok" != 1 ]; then
      doc_line warn "port 127.0.0.1:$port ($name) is in use; without Docker it is unknown whether by aibox" \
        "ss -ltnp 'sport = :$port' shows the program"
    elif [ -n "$(docker ps -q --filter "label=com.docker.compose.project=$project" --filter "publish=$port" 2>/dev/null)" ]; then
      doc_line ok "port 127.0.0.1:$port ($name) is ours ($project)"
    else
      doc_line FAIL "port 127.0.0.1:$port ($name) is taken by another program" \
        "stop it (ss -ltnp 'sport = :$port' shows which), or set $name to a free port in $ENV_FILE"
    fi
  done
}

# Free space where $1 lives (the nearest existing directory), in GiB.
doc_free_gib() {
  local d=$1
  while [ ! -d "$d" ] && [ "$d" != / ]; do d=$(dirname "$d"); done
  df -Pk "$d" 2>/dev/null | awk 'NR == 2 { printf "%d", $4 / 1048576 }'
}

doc_disk() {
  local docker_ok=$1 data root free label path
  data=$(setting AIBOX_DATA_DIR "$ROOT/data")
  case "$data" in /*) ;; *) data="$ROOT/${data#./}" ;; esac
  local places=("data (models, audit log)|$data")
  if [ "$docker_ok" = 1 ]; then
    root=$(docker info --format '{{.DockerRootDir}}' 2>/dev/null || true)
    [ -n "$root" ] && [ -d "$root" ] && places+=("Docker's images|$root")
  fi
  for p in "${places[@]}"; do
    label=${p%%|*} path=${p#*|}
    free=$(doc_free_gib "$path")
    if [ -z "$free" ]; then
      doc_line warn "disk: cannot read the free space of $path" ""
    elif [ "$free" -lt 2 ]; then
      doc_line FAIL "disk: $free GiB free for $label ($path)" "free space (docker image prune; docker builder prune; old model files)"
    elif [ "$free" -lt 20 ]; then
      doc_line warn "disk: $free GiB free for $label ($path); a model takes 2-40 GiB" "free space before pulling models"
    else
      doc_line ok "disk: $free GiB free for $label ($path)"
    fi
  done
}

doc_gpu() {
  local docker_ok=$1 out warnings mode reason err
  err=$(mktemp)
  if ! out=$(AIBOX_GPU=$(setting AIBOX_GPU auto) "$ROOT/deploy/gpu-detect.sh" 2>"$err"); then
    doc_line FAIL "GPU: $(sed 's/^gpu: //' "$err")" "set AIBOX_GPU to auto, nvidia, amd or none in $ENV_FILE"
    rm -f "$err"
    return
  fi
  warnings=$(sed 's/^gpu: //' "$err" | tr '\n' ' ')
  rm -f "$err"
  mode=$(sed -n 's/^AIBOX_GPU=//p' <<<"$out")
  reason=$(sed -n 's/^AIBOX_GPU_REASON=//p' <<<"$out")
  if [ -n "$warnings" ]; then
    doc_line warn "GPU: $mode: $reason" "$warnings"
  else
    doc_line ok "GPU: $mode: $reason"
  fi
  [ "$docker_ok" = 1 ] || return 0
  local using
  using=$(gpu_in_use)
  case "$mode/$using" in
    */"ollama is not running") ;;
    nvidia/*NVIDIA*|amd/*AMD*|none/*CPU*) doc_line ok "GPU in use: $using" ;;
    *) doc_line warn "GPU in use: $using, but the mode is $mode" "run ./aibox up to recreate Ollama with the $mode override" ;;
  esac
}

doc_images() {
  local prefix tag chosen head b ref rev id project cid running
  prefix=$(setting AIBOX_IMAGE_PREFIX aibox)
  chosen=$(setting AIBOX_TAG)
  tag=${chosen:-local}
  project=$(setting COMPOSE_PROJECT_NAME aibox)
  head=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || true)
  if ! docker image inspect "$prefix-edge:$tag" "$prefix-controller:$tag" "$prefix-dashboard:$tag" >/dev/null 2>&1 \
     && [ -z "$(docker images -q --filter "reference=$prefix-*:$tag" 2>/dev/null)" ]; then
    doc_line FAIL "our images ($prefix-{edge,controller,dashboard}:$tag) are not built" "run ./aibox up (builds them; nothing is pulled)"
    return
  fi
  for b in "${CORE[@]}"; do
    ref="$prefix-$b:$tag"
    if ! id=$(docker image inspect -f '{{.Id}}' "$ref" 2>/dev/null); then
      doc_line FAIL "image $ref is missing" "run ./aibox up (builds it; nothing is pulled)"
      continue
    fi
    rev=$(docker image inspect -f '{{index .Config.Labels "org.opencontainers.image.revision"}}' "$ref" 2>/dev/null)
    [ "$rev" = "<no value>" ] && rev=""
    if [ -z "$rev" ]; then
      doc_line warn "image $ref has no revision label; whether it matches this checkout is unknown" \
        "run ./aibox up to rebuild it with one"
    elif [ -n "$chosen" ] || [ -z "$head" ] || [ "$rev" = "$head" ]; then
      doc_line ok "image $ref present${rev:+ (revision ${rev:0:12})}"
    else
      doc_line warn "image $ref was built from ${rev:0:12}, this checkout is at ${head:0:12} (drift)" \
        "run ./aibox up to rebuild from this checkout (or set AIBOX_TAG to run a chosen build)"
    fi
    cid=$(docker ps -q --filter "label=com.docker.compose.project=$project" \
      --filter "label=com.docker.compose.service=$b" 2>/dev/null | head -n 1)
    if [ -n "$cid" ]; then
      running=$(docker inspect -f '{{.Image}}' "$cid" 2>/dev/null)
      if [ "$running" != "$id" ]; then
        doc_line warn "$b runs an older image than $ref" "run ./aibox up --no-build to recreate it on the current image"
      fi
    fi
  done
}

doc_services() {
  local s state
  if [ -z "$(dc ps -q 2>/dev/null)" ]; then
    doc_line FAIL "the box is not up (no container of project $(setting COMPOSE_PROJECT_NAME aibox))" "run ./aibox up"
    return
  fi
  for s in "${CORE[@]}"; do
    state=$(health_of "$s")
    case $state in
      running/healthy) doc_line ok "$s is running and healthy" ;;
      missing) doc_line FAIL "$s is not created" "run ./aibox up" ;;
      running/starting) doc_line warn "$s is still starting" "wait a few seconds and run ./aibox doctor again" ;;
      *) doc_line FAIL "$s is $state" "./aibox logs $s shows why; ./aibox up recreates it" ;;
    esac
  done
}

# GET http://127.0.0.1:<port><path>; prints the status code (or nothing when nothing answers).
doc_http_status() {
  timeout 5 bash -c '
    exec 3<>/dev/tcp/127.0.0.1/'"$1"' || exit 1
    printf "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" "'"$2"'" >&3
    IFS=" " read -r _ code _ <&3 && echo "$code"' 2>/dev/null
}

doc_edge() {
  local port code
  port=$(setting AIBOX_PORT 11435)
  code=$(doc_http_status "$port" /health || true)
  if [ "$code" != 200 ]; then
    doc_line FAIL "the edge does not answer on http://127.0.0.1:$port/health${code:+ (HTTP $code)}" \
      "run ./aibox up; ./aibox logs edge shows why it is down"
    return
  fi
  code=$(doc_http_status "$port" /ready || true)
  case $code in
    200) doc_line ok "edge ready at http://127.0.0.1:$port/ (a model provider answers)" ;;
    503) doc_line warn "edge is up but no model provider answers (/ready 503)" \
           "start Ollama (AIBOX_PROFILES=ollama ./aibox up), or point OLLAMA_URL or the edge config at a running one" ;;
    *) doc_line FAIL "edge /ready answered ${code:-nothing}" "./aibox logs edge" ;;
  esac
}

cmd_doctor() {
  [ $# -eq 0 ] || die "doctor: no arguments expected"
  # A failing probe is a finding to report, never the end of the report.
  set +e
  local docker_ok=0
  echo "aibox doctor ($ROOT)"
  doc_docker && docker_ok=1
  doc_compose
  doc_env_file
  doc_disk "$docker_ok"
  local gpu_valid=1
  AIBOX_GPU=$(setting AIBOX_GPU auto) "$ROOT/deploy/gpu-detect.sh" >/dev/null 2>&1 || gpu_valid=0
  if [ "$docker_ok" = 1 ]; then
    # setup: the project, files and env the other commands use. It dies on what was reported
    # above (no compose CLI, a bad AIBOX_GPU), so then the checks that need it are skipped.
    if [ "$gpu_valid" = 1 ] && (compose_cmd) >/dev/null 2>&1; then
      setup
      placeholder_secrets
      export COMPOSE_PROFILES=full
    else
      docker_ok=0
    fi
  fi
  doc_gpu "$docker_ok"
  doc_ports "$docker_ok"
  if [ "$docker_ok" = 1 ]; then
    doc_images
    doc_services
  else
    doc_line skip "images, drift and service health (they need the Docker engine, compose and a valid AIBOX_GPU)"
  fi
  doc_edge
  echo
  if [ "$DOC_FAILS" -gt 0 ]; then
    echo "$DOC_FAILS problem(s), $DOC_WARNS warning(s): fix the FAIL lines above (each says how), then run ./aibox doctor again"
    return 1
  fi
  echo "no problems ($DOC_WARNS warning(s))"
}
