# deploy/swarm.sh: `./aibox up --swarm` and `./aibox down --swarm` (sourced by deploy/compose.sh,
# after its own steps: prerequisites, images, .env secrets, data/, keys).
#
# The stack is deploy/stack.yml (+ deploy/stack.publish.yml unless AIBOX_SWARM_PUBLISH=0), named
# after COMPOSE_PROJECT_NAME. Secrets go from .env into Swarm secrets named
# <stack>_<secret>_<hash of the value> (a Swarm secret cannot change; a new value is a new name and
# a rolling update). Settings: AIBOX_EDGE_REPLICAS (default 2), AIBOX_SWARM_PUBLISH (1),
# AIBOX_SWARM_PUBLISH_MODE (ingress | host), AIBOX_SWARM_ENDPOINT_MODE (vip | dnsrr: for kernels
# without IPVS, where virtual IPs and the routing mesh cannot work), AIBOX_REDIS_PASSWORD
# (generated into .env).
# What Swarm changes, and what the controller does not do there: docs/SCALING.md.

swarm_require() {
  local state
  state=$(docker info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null || echo unknown)
  [ "$state" = active ] || die "this engine is not in a swarm (state: $state): run \`docker swarm init\` first (one node is enough), or use ./aibox up without --swarm"
  [ "$(docker info --format '{{.Swarm.ControlAvailable}}')" = true ] \
    || die "this node is not a swarm manager: run ./aibox up --swarm on a manager"
}

# The password of the stack's Redis, generated into the env file like the other secrets.
swarm_ensure_redis_password() {
  if [ -z "$(setting AIBOX_REDIS_PASSWORD)" ]; then
    local value
    value=$(random_hex 32)
    printf 'AIBOX_REDIS_PASSWORD=%s\n' "$value" >>"$ENV_FILE"
    say "generated AIBOX_REDIS_PASSWORD (${value:0:4}…) in $ENV_FILE"
  fi
}

# One Swarm secret from a value (on stdin, never the command line); exports its name in $2.
swarm_secret() {
  local secret=$1 var=$2 value=$3 name
  # An empty value would be refused by Swarm; a lone newline reads as unset (secret_files).
  [ -n "$value" ] || value=$'\n'
  name="${COMPOSE_PROJECT_NAME}_${secret}_$(printf '%s' "$value" | sha256sum | cut -c1-12)"
  if ! docker secret inspect "$name" >/dev/null 2>&1; then
    printf '%s' "$value" | docker secret create --label "io.aibox.stack=$COMPOSE_PROJECT_NAME" "$name" - >/dev/null \
      || die "could not create the Swarm secret $name"
  fi
  export "$var=$name"
}

swarm_secrets() {
  local pw
  pw=$(setting AIBOX_REDIS_PASSWORD)
  swarm_secret ops_controller_token AIBOX_SECRET_OPS_CONTROLLER_TOKEN "$(setting OPS_CONTROLLER_TOKEN)"
  swarm_secret admin_token AIBOX_SECRET_ADMIN_TOKEN "$(setting AIBOX_ADMIN_TOKEN)"
  swarm_secret audit_hmac_key AIBOX_SECRET_AUDIT_HMAC_KEY "$(setting AUDIT_HMAC_KEY)"
  swarm_secret dashboard_password_hash AIBOX_SECRET_DASHBOARD_PASSWORD_HASH "$(setting DASHBOARD_PASSWORD_HASH)"
  swarm_secret dashboard_session_key AIBOX_SECRET_DASHBOARD_SESSION_KEY "$(setting DASHBOARD_SESSION_KEY)"
  swarm_secret redis_password AIBOX_SECRET_REDIS_PASSWORD "$pw"
  swarm_secret redis_url AIBOX_SECRET_REDIS_URL "redis://:$pw@redis:6379/0"
}

swarm_files() {
  STACK_FILES=(-c "$ROOT/deploy/stack.yml")
  if [ "$(setting AIBOX_SWARM_PUBLISH 1)" != 0 ]; then STACK_FILES+=(-c "$ROOT/deploy/stack.publish.yml"); fi
}

# Every service of the stack at its wanted replicas, each task running and (where it has a
# health check) healthy.
swarm_wait() {
  local timeout start now line all svc want have
  timeout=$(setting AIBOX_UP_TIMEOUT 180)
  start=$(date +%s)
  say "waiting for the stack's services to run all their replicas (up to $timeout s)"
  while :; do
    all=1
    line=""
    while read -r svc want; do
      [ -n "$svc" ] || continue
      have=$(docker ps -q --filter "label=com.docker.swarm.service.name=$svc" \
        --filter health=healthy | wc -l)
      line="$line ${svc#"${COMPOSE_PROJECT_NAME}_"} $have/$want,"
      [ "$have" -ge "$want" ] || all=0
    done < <(docker service ls --filter "label=com.docker.stack.namespace=$COMPOSE_PROJECT_NAME" \
               --format '{{.Name}} {{.Replicas}}' | sed -E 's#([0-9]+)/([0-9]+).*#\2#')
    [ -n "$line" ] || all=0
    now=$(date +%s)
    if [ "$all" = 1 ]; then
      say "stack $COMPOSE_PROJECT_NAME:${line%,}"
      return 0
    fi
    if [ $((now - start)) -ge "$timeout" ]; then
      say "stack $COMPOSE_PROJECT_NAME:${line%,}"
      docker stack ps --no-trunc "$COMPOSE_PROJECT_NAME" >&2 || true
      die "the stack did not come up within $timeout s (docker stack ps $COMPOSE_PROJECT_NAME; docker service logs)"
    fi
    sleep 2
  done
}

swarm_up() {
  swarm_require
  local prefix=${AIBOX_IMAGE_PREFIX:-aibox} tag=${AIBOX_TAG:-local}
  if ! docker image inspect "$prefix-redis:$tag" >/dev/null 2>&1 || [ "${SWARM_BUILD:-1}" = 1 ]; then
    say "building $prefix-redis:$tag from this host's redis-server (deploy/build-redis-image.sh)"
    AIBOX_IMAGE_PREFIX=$prefix AIBOX_TAG=$tag "$ROOT/deploy/build-redis-image.sh" >&2
  fi
  swarm_secrets
  swarm_files
  export AIBOX_DATA_DIR DOCKER_GID AIBOX_TAG=$tag AIBOX_IMAGE_PREFIX=$prefix
  export AIBOX_EDGE_CONFIG
  AIBOX_EDGE_CONFIG=$(setting AIBOX_EDGE_CONFIG "$ROOT/deploy/edge.toml")
  case "$AIBOX_EDGE_CONFIG" in /*) ;; *) AIBOX_EDGE_CONFIG="$ROOT/${AIBOX_EDGE_CONFIG#./}" ;; esac
  local v
  for v in OLLAMA_URL AIBOX_EDGE_REPLICAS AIBOX_SWARM_PUBLISH_MODE AIBOX_SWARM_ENDPOINT_MODE AIBOX_REDIS_TIMEOUT_MS EDGE_LOG CONTROLLER_LOG DASHBOARD_LOG \
           DASHBOARD_USER DASHBOARD_COOKIE_SECURE DASHBOARD_SESSION_HOURS AUDIT_MAX_BYTES AUDIT_KEEP \
           AUDIT_CHECK_INTERVAL_SECS DOCKER_SOCKET; do
    if [ -n "$(setting "$v")" ]; then export "$v=$(setting "$v")"; fi
  done
  local t0
  t0=$(date +%s)
  say "deploying the stack $COMPOSE_PROJECT_NAME (docker stack deploy)"
  docker stack deploy --resolve-image never --prune "${STACK_FILES[@]}" "$COMPOSE_PROJECT_NAME" >&2 \
    || die "docker stack deploy failed"
  swarm_wait
  local where="no published port: clients join the ${COMPOSE_PROJECT_NAME}_front network"
  [ "$(setting AIBOX_SWARM_PUBLISH 1)" != 0 ] && where="http://<any node>:$AIBOX_PORT/"
  say "up in $(( $(date +%s) - t0 )) s on Swarm: $where"
}

swarm_down() {
  local stack=$COMPOSE_PROJECT_NAME i
  docker stack rm "$stack" >&2 || true
  # `stack rm` returns before the tasks and networks are gone; secrets in use cannot go yet.
  for i in $(seq 1 90); do
    if [ -z "$(docker ps -aq --filter "label=com.docker.stack.namespace=$stack")" ] \
       && [ -z "$(docker network ls -q --filter "label=com.docker.stack.namespace=$stack")" ]; then
      break
    fi
    sleep 1
  done
  local secrets
  secrets=$(docker secret ls -q --filter "label=io.aibox.stack=$stack")
  if [ -n "$secrets" ]; then docker secret rm $secrets >/dev/null || true; fi
  say "stack $stack removed"
}
