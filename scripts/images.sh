#!/usr/bin/env bash
# Build Clarion's images with rootful podman, on a machine that reaches Debian's mirror and PyPI but
# no image registry (CI and this project's machines):
#
#   scripts/images.sh build    host setup, the Python base image (once, cached by tag), the images
#   scripts/images.sh setup    host setup only: podman, buildah, runc, debootstrap, podman-compose
#   scripts/images.sh clean    remove Clarion's images (the base stays)
#
# The checks that run the images live in tests/test_images.py (run by the suite when the images
# exist). Where a registry is reachable, plain `docker build -f Dockerfile.X .` works too: see the
# Dockerfiles' headers.
#
# TORCH_WHEEL  the torch wheel to install (default: the CPU wheel pip finds in its find-links folder,
#              /opt/wheels here); its folder is bind-mounted into the build.
# IMAGE_TAG    tag of the built images (default: local)
set -euo pipefail
cd "$(dirname "$0")/.."

BASE=localhost/clarion-python:bookworm
TAG=${IMAGE_TAG:-local}
REDIS=docker.io/library/redis:7.4-alpine  # the name docker-compose.yml uses

log() { printf '[images %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

setup() {
  local missing="" tool
  for tool in podman buildah runc debootstrap podman-compose; do
    command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
  done
  if [ -n "$missing" ]; then
    log "installing$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  fi
  # Two host settings, or no container starts here: root cannot raise its limits to podman's
  # defaults, and this cgroup layout makes crun refuse to start containers (runc accepts it).
  local conf=/etc/containers/containers.conf
  if ! grep -qs 'clarion:' "$conf"; then
    if [ -s "$conf" ]; then
      log "$conf exists: check that it sets default_ulimits and runtime = \"runc\" as below"
    else
      mkdir -p /etc/containers
      cat >"$conf" <<'EOF'
# clarion: root here cannot raise limits to podman's defaults; crun refuses this cgroup layout.
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
EOF
    fi
  fi
}

# Debian's own Python, from the mirror apt already uses, with its security updates (no registry
# holds a python image we can reach). Debian marks its Python externally managed (PEP 668), so the
# image puts a venv first on PATH: `python` and `pip` are the venv's, as the Dockerfiles expect.
# Debian's own pip goes once the venv has its pip, and so do docs, man pages and locales.
base_image() {
  if podman image exists "$BASE"; then
    return
  fi
  local mirror root started=$SECONDS
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  mirror=${mirror:-http://deb.debian.org/debian}
  root=$(mktemp -d /var/tmp/clarion-rootfs.XXXXXX)
  log "debootstrap bookworm from $mirror"
  debootstrap --variant=minbase bookworm "$root" "$mirror" >/dev/null
  cat >"$root/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb ${mirror%/debian}/debian-security bookworm-security main
EOF
  mount -t proc proc "$root/proc"
  trap 'umount "$root/proc" 2>/dev/null || true' RETURN
  chroot "$root" sh -c 'apt-get update -qq && apt-get upgrade -y -qq >/dev/null &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      python3 python3-venv python3-pip ca-certificates >/dev/null &&
    python3 -m venv /opt/venv &&
    apt-get purge -y -qq python3-pip >/dev/null && apt-get autoremove -y -qq --purge >/dev/null &&
    apt-get clean && rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/* /usr/share/info/* \
      /usr/share/locale/* /var/cache/debconf/*-old /var/log/*.log'
  umount "$root/proc"
  tar -C "$root" -c . | podman import --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' - "$BASE" >/dev/null
  rm -rf "$root"
  log "base image $BASE in $((SECONDS - started)) s"
}

torch_wheel() {
  if [ -n "${TORCH_WHEEL:-}" ]; then
    echo "$TORCH_WHEEL"
    return
  fi
  local links
  links=$(python3 -m pip config get global.find-links 2>/dev/null || true)
  ls "${links:-/opt/wheels}"/torch-2.13.0+cpu-cp311-*.whl 2>/dev/null | head -n 1
}

build() {
  local wheel name started
  wheel=$(torch_wheel)
  if [ -z "$wheel" ]; then
    echo "images.sh: no CPU torch wheel found; set TORCH_WHEEL" >&2
    exit 1
  fi
  # The build reaches PyPI through this machine's network, whose TLS proxy signs with the host's CA.
  local common=(--format docker --network host
    --build-arg "BASE_IMAGE=$BASE" --build-arg "TORCH=/wheels/$(basename "$wheel")" --build-arg TORCH_INDEX_URL=
    -v "$(dirname "$wheel"):/wheels:ro"
    -v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
  for name in sagemaker api worker; do
    started=$SECONDS
    podman build -q "${common[@]}" -f "Dockerfile.$name" -t "localhost/clarion-$name:$TAG" . >/dev/null
    log "clarion-$name:$TAG built in $((SECONDS - started)) s, $(image_size "localhost/clarion-$name:$TAG")"
  done
  # Redis for compose, from Debian's redis-server, under the name the compose file uses.
  podman build -q --format docker -f - -t "$REDIS" . >/dev/null <<EOF
FROM $BASE
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      redis-server >/dev/null && apt-get clean && rm -rf /var/lib/apt/lists/* && mkdir -p /data \
    && printf '#!/bin/sh\nif [ "\$1" = redis-server ]; then shift; exec redis-server --protected-mode no "\$@"; fi\nexec "\$@"\n' \
      >/usr/local/bin/entrypoint && chmod +x /usr/local/bin/entrypoint
WORKDIR /data
# Like the official image: reachable from the other containers of its network (protected mode off),
# whatever arguments compose's `command` adds.
ENTRYPOINT ["/usr/local/bin/entrypoint"]
CMD ["redis-server"]
EOF
  log "redis built (Debian's redis-server, tagged redis:7.4-alpine for docker-compose.yml)"
}

image_size() {
  podman image inspect --format '{{.Size}}' "$1" | awk '{printf "%.2f GB", $1 / 1e9}'
}

case "${1:-}" in
  setup) setup ;;
  build)
    setup
    base_image
    build
    ;;
  clean)
    for image in "localhost/clarion-"{sagemaker,api,worker}":$TAG" "$REDIS"; do
      podman rmi -f "$image" >/dev/null 2>&1 || true
    done
    ;;
  *)
    echo "usage: scripts/images.sh build | setup | clean" >&2
    exit 2
    ;;
esac
