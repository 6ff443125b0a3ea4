#!/usr/bin/env bash
# Pin the third-party images of docker-compose.yml (and the GPU overrides) by digest.
#
#   deploy/pin-images.sh --list            the references found, one per line (no registry needed)
#   deploy/pin-images.sh                   resolve each tag now; print `name:tag@sha256:...`
#   deploy/pin-images.sh --write           resolve, and rewrite the files to the new digests
#   deploy/pin-images.sh ollama/ollama:0.13.0   resolve these references instead (print only)
#
# A reference is the default of an `${X_IMAGE:-name:tag[@sha256:...]}` in the files; the tag is
# what gets resolved (a digest already there is replaced by the tag's current one). Resolving
# needs a registry: `docker buildx imagetools inspect` (the multi-arch index digest, no pull),
# else `docker pull` and the repo digest the registry reported. docs/third-party-services.md,
# "Refreshing the pins".
set -euo pipefail
cd "$(dirname "$0")/.."
FILES=(docker-compose.yml deploy/compose.gpu-nvidia.yml deploy/compose.gpu-amd.yml)

# Every `_IMAGE:-REF}` default: "file<TAB>ref".
image_refs() {
  local f
  for f in "${FILES[@]}"; do
    [ -f "$f" ] || continue
    grep -oE '_IMAGE:-[^}]+\}' "$f" | sed -e 's/^_IMAGE:-//' -e 's/}$//' | sed "s|^|$f	|"
  done
}

# name:tag of a reference (without its digest); a reference without a tag means :latest.
tag_of() {
  local ref=${1%@*}
  case ${ref##*/} in *:*) echo "$ref" ;; *) echo "$ref:latest" ;; esac
}

resolve() {
  local ref=$1 digest
  if docker buildx version >/dev/null 2>&1; then
    digest=$(docker buildx imagetools inspect "$ref" --format '{{json .Manifest.Digest}}' | tr -d '"')
  else
    docker pull -q "$ref" >/dev/null
    digest=$(docker image inspect -f '{{range .RepoDigests}}{{println .}}{{end}}' "$ref" | head -n 1 | sed 's/.*@//')
  fi
  case $digest in
    sha256:*) [ ${#digest} -eq 71 ] || { echo "pin-images: odd digest for $ref: $digest" >&2; return 1; } ;;
    *) echo "pin-images: no digest for $ref" >&2; return 1 ;;
  esac
  echo "$digest"
}

mode=print
case ${1:-} in
  --list) mode=list; shift ;;
  --write) mode=write; shift ;;
  -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
esac

if [ $# -gt 0 ]; then
  [ "$mode" = print ] || { echo "pin-images: --list/--write work on the files, not on references given" >&2; exit 2; }
  for ref in "$@"; do echo "$(tag_of "$ref")@$(resolve "$(tag_of "$ref")")"; done
  exit 0
fi

refs=$(image_refs)
[ -n "$refs" ] || { echo "pin-images: no \${X_IMAGE:-...} references found" >&2; exit 1; }
if [ "$mode" = list ]; then
  echo "$refs" | cut -f2
  exit 0
fi
while IFS=$'\t' read -r file ref; do
  tag=$(tag_of "$ref")
  pinned="$tag@$(resolve "$tag")"
  echo "$pinned"
  if [ "$mode" = write ] && [ "$pinned" != "$ref" ]; then
    # Only this default, exactly: `_IMAGE:-<old>}` becomes `_IMAGE:-<new>}`.
    old=$(printf '%s' "_IMAGE:-$ref}" | sed 's/[][\.*^$/|]/\\&/g')
    sed -i "s|$old|_IMAGE:-$pinned}|" "$file"
    echo "  $file: $ref -> $pinned" >&2
  fi
done <<<"$refs"
