#!/usr/bin/env bash
# Podman as it runs on machines without a Docker engine or registry access (see DESIGN.md):
# Debian's podman with runc, no default ulimits, host networking for builds.
#   docker/podman.sh base            make the local base image (debootstrap, Debian's Python 3.11)
#   docker/podman.sh build           build the fedsilo image from the Dockerfile on that base
#   docker/podman.sh postgres        build the stack's PostgreSQL image (Debian's package) on it
#   docker/podman.sh <podman args>   run podman with this configuration
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(dirname "$HERE")"
BASE_IMAGE="${FEDSILO_BASE_IMAGE:-localhost/fedsilo-base:bookworm}"
IMAGE="${FEDSILO_IMAGE:-localhost/fedsilo:dev}"
POSTGRES_IMAGE="${FEDSILO_POSTGRES_IMAGE:-localhost/fedsilo-postgres:dev}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
export CONTAINERS_CONF="$HERE/containers.conf"

podman_() { podman --runtime runc "$@"; }

pip_setting() {  # $1: environment variable, $2: key in `pip config list`
  local value="${!1:-}"
  [ -n "$value" ] || value="$(pip config list 2>/dev/null | sed -n "s/^global\.$2='\(.*\)'$/\1/p" | head -1)"
  printf '%s' "$value"
}

# pip inside a build needs the host's CA bundle, and its local wheel folder where the CPU torch
# wheel lies on machines without internet (then torch's own index is not asked).
pip_mounts() {
  local cert links
  cert="$(pip_setting PIP_CERT cert)"
  links="$(pip_setting PIP_FIND_LINKS find-links)"
  [ -n "$cert" ] && printf -- '-v %s:/etc/pip-ca.crt:ro --build-arg PIP_CERT=/etc/pip-ca.crt ' "$cert"
  [ -n "$links" ] && printf -- '-v %s:/wheels:ro --build-arg PIP_FIND_LINKS=/wheels --build-arg TORCH_INDEX_URL= ' "$links"
  return 0
}

case "${1:-}" in
  base)
    if podman_ image exists "$BASE_IMAGE"; then echo "$BASE_IMAGE exists"; exit 0; fi
    root="$(mktemp -d)"
    trap 'rm -rf "$root"' EXIT
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" "$MIRROR"
    rm -f "$root"/usr/lib/python3.*/EXTERNALLY-MANAGED  # as the official python image: pip installs system-wide
    ln -sf python3 "$root/usr/bin/python"
    tar -C "$root" -c . | podman_ import - "$BASE_IMAGE"
    ;;
  build)
    # shellcheck disable=SC2046
    podman_ build --network=host --build-arg BASE="$BASE_IMAGE" $(pip_mounts) -t "$IMAGE" -f "$REPO/Dockerfile" "$REPO"
    ;;
  postgres)
    podman_ build --network=host --build-arg BASE="$BASE_IMAGE" -t "$POSTGRES_IMAGE" \
      -f "$HERE/postgres.Dockerfile" "$REPO"
    ;;
  *)
    podman_ "$@"
    ;;
esac
