#!/usr/bin/env bash
# Which GPU Ollama gets: nvidia, amd or none. deploy/compose.sh runs this on every command and adds
# deploy/compose.gpu-<mode>.yml (nothing for none). Prints KEY=VALUE lines on stdout:
#
#   AIBOX_GPU=nvidia|amd|none
#   AIBOX_GPU_REASON=<one line: why this mode>
#   AIBOX_GPU_VIDEO_GID=<gid>    amd only: the groups of the device nodes, for the container's
#   AIBOX_GPU_RENDER_GID=<gid>   group_add (Ollama's install.sh puts its user in video and render)
#
# and warnings (a GPU that is there but cannot be used, a forced mode without the hardware) on
# stderr. Exit 2 when AIBOX_GPU is not one of auto, nvidia, amd, none.
#
# Input (environment):
#   AIBOX_GPU            auto (default, or empty): guess; nvidia | amd | none: use that
#   AIBOX_GPU_DEV_ROOT   where the device nodes are (default /dev; the tests point it at fake nodes)
#   PATH                 where `nvidia-smi` and `docker` are found (the tests put stubs first)
#
# The guess, in order:
#   nvidia  `nvidia-smi -L` lists a GPU AND the engine has the NVIDIA container toolkit's runtime
#           (`docker info` Runtimes has `nvidia`; `nvidia-ctk runtime configure` adds it). A GPU
#           without the runtime cannot be given to a container: none, with a warning.
#   amd     <dev>/kfd (the ROCm compute interface) and a <dev>/dri/renderD* node exist. /dev/dri
#           alone is any GPU (Intel, a display); Ollama's ROCm build needs kfd.
#   none    otherwise: Ollama runs on the CPU.
set -uo pipefail

DEV=${AIBOX_GPU_DEV_ROOT:-/dev}
want=${AIBOX_GPU:-auto}

warn() { echo "gpu: $*" >&2; }

nvidia_gpus() {
  command -v nvidia-smi >/dev/null 2>&1 || return 1
  local out
  out=$(nvidia-smi -L 2>/dev/null) || return 1
  grep -c '^GPU ' <<<"$out"
}

docker_has_nvidia_runtime() {
  command -v docker >/dev/null 2>&1 || return 1
  docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q '"nvidia"'
}

render_node() {
  local n
  for n in "$DEV"/dri/renderD*; do
    [ -e "$n" ] && { echo "$n"; return 0; }
  done
  return 1
}

amd_present() { [ -e "$DEV/kfd" ] && render_node >/dev/null; }

# The gid that owns a node, else a name the image knows (compose then fails loudly if it does not).
gid_of() { stat -c %g "$1" 2>/dev/null || echo "$2"; }

emit_amd() {
  local reason=$1 card render
  render=$(render_node || echo "$DEV/kfd")
  card=$(for n in "$DEV"/dri/card*; do [ -e "$n" ] && { echo "$n"; break; }; done)
  echo "AIBOX_GPU=amd"
  echo "AIBOX_GPU_REASON=$reason"
  echo "AIBOX_GPU_VIDEO_GID=$(gid_of "${card:-$DEV/dri}" video)"
  echo "AIBOX_GPU_RENDER_GID=$(gid_of "$render" render)"
}

emit() {
  echo "AIBOX_GPU=$1"
  echo "AIBOX_GPU_REASON=$2"
}

case $want in
  none)
    emit none "AIBOX_GPU=none"
    ;;
  nvidia)
    nvidia_gpus >/dev/null || warn "AIBOX_GPU=nvidia but nvidia-smi lists no GPU; Ollama will not start"
    docker_has_nvidia_runtime || warn "AIBOX_GPU=nvidia but Docker has no nvidia runtime (install nvidia-container-toolkit, then: sudo nvidia-ctk runtime configure --runtime=docker && sudo systemctl restart docker)"
    emit nvidia "AIBOX_GPU=nvidia"
    ;;
  amd)
    amd_present || warn "AIBOX_GPU=amd but $DEV/kfd or $DEV/dri/renderD* is missing (amdgpu driver with ROCm support loaded?); Ollama will not start"
    emit_amd "AIBOX_GPU=amd"
    ;;
  auto)
    if n=$(nvidia_gpus) && [ "$n" -gt 0 ]; then
      if docker_has_nvidia_runtime; then
        emit nvidia "nvidia-smi lists $n GPU(s) and Docker has the nvidia runtime"
        exit 0
      fi
      warn "nvidia-smi lists $n GPU(s) but Docker has no nvidia runtime, so Ollama runs on the CPU; install nvidia-container-toolkit, then: sudo nvidia-ctk runtime configure --runtime=docker && sudo systemctl restart docker"
    fi
    if amd_present; then
      emit_amd "$DEV/kfd and $(render_node) present (AMD ROCm)"
      exit 0
    fi
    emit none "no usable GPU found, so Ollama runs on the CPU; AIBOX_GPU=nvidia|amd forces one"
    ;;
  *)
    warn "AIBOX_GPU must be auto, nvidia, amd or none (got '$want')"
    exit 2
    ;;
esac
