#!/usr/bin/env bash
# Print the current digest of each third-party image tag in docker-compose.yml, as the
# `name:tag@sha256:...` reference to paste back into it (or into .env). Needs a reachable registry.
#   deploy/pin-images.sh                 # the tags pinned today
#   deploy/pin-images.sh ollama/ollama:0.13.0   # a new tag
set -euo pipefail
cd "$(dirname "$0")/.."
refs=("$@")
if [ ${#refs[@]} -eq 0 ]; then
  # shellcheck disable=SC2207
  refs=($(grep -ohE '_IMAGE:-[^}@]+' docker-compose.yml deploy/compose.gpu-amd.yml | sed 's/^_IMAGE:-//'))
fi
for ref in "${refs[@]}"; do
  if docker buildx version >/dev/null 2>&1; then
    digest=$(docker buildx imagetools inspect "$ref" --format '{{json .Manifest.Digest}}' | tr -d '"')
  else
    # Without buildx: pull and read the repo digest the registry reported.
    docker pull -q "$ref" >/dev/null
    digest=$(docker image inspect -f '{{range .RepoDigests}}{{println .}}{{end}}' "$ref" | head -n 1 | sed 's/.*@//')
  fi
  echo "$ref@$digest"
done
