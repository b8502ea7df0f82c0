#!/usr/bin/env bash
# Install what wflo-jupyter needs on this machine, idempotently:
#   - Debian packages (when apt-get exists and we are root): docker.io, debootstrap,
#     bubblewrap, chromium — only those missing, with one `apt-get update` first;
#   - the virtualenv .venv with the project and its `local,dev` extras (skipped when
#     pyproject.toml has not changed since the last install).
#
#   scripts/install.sh [VENV_DIR]
set -euo pipefail

VENV="${1:-.venv}"
PYTHON="${PYTHON:-python3}"
say() { printf '[wflo] %s\n' "$*"; }
die() { printf '[wflo] ERROR: %s\n' "$*" >&2; exit 1; }

# --- system packages ---------------------------------------------------------------
declare -A BINARY_OF=([docker.io]=dockerd [debootstrap]=debootstrap [bubblewrap]=bwrap [chromium]=chromium)
missing=()
for pkg in "${!BINARY_OF[@]}"; do
    command -v "${BINARY_OF[$pkg]}" >/dev/null 2>&1 || [[ -x "/usr/sbin/${BINARY_OF[$pkg]}" ]] || missing+=("$pkg")
done
if ((${#missing[@]})); then
    if command -v apt-get >/dev/null 2>&1 && [[ "$(id -u)" -eq 0 ]]; then
        say "installing Debian packages: ${missing[*]} (about a minute)..."
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q >/tmp/wflo-apt-update.log 2>&1 || { tail -20 /tmp/wflo-apt-update.log; die "apt-get update failed"; }
        apt-get install -y -q --no-install-recommends "${missing[@]}" >/tmp/wflo-apt-install.log 2>&1 \
            || { tail -30 /tmp/wflo-apt-install.log; die "apt-get install ${missing[*]} failed"; }
        say "installed ${missing[*]}"
    else
        say "not installing ${missing[*]} (needs root and apt-get); a running Docker engine is enough"
    fi
fi

# --- python ------------------------------------------------------------------------
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), sys.version' \
    || die "$PYTHON is older than 3.11; set PYTHON=python3.11"
if [[ ! -x "$VENV/bin/python" ]]; then
    say "creating virtualenv $VENV"
    "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.wflo-installed"
fingerprint="$(cat pyproject.toml | sha256sum | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$fingerprint" ]] && "$VENV/bin/python" -c 'import wflo_jupyter' 2>/dev/null; then
    say "python environment up to date ($VENV)"
    exit 0
fi
say "installing wflo-jupyter[local,dev] into $VENV (a few minutes on a fresh machine)..."
"$VENV/bin/python" -m pip install --progress-bar off -q --upgrade pip >/dev/null
"$VENV/bin/python" -m pip install --progress-bar off -e '.[local,dev]' 2>&1 \
    | grep -vE "is ignored: it is neither a file nor a directory|^Requirement already satisfied" \
    | grep -E "^(Successfully|ERROR|error)" || true
"$VENV/bin/python" -c 'import wflo_jupyter, temporalio, confluent_kafka, docker, sqlalchemy' \
    || die "the python environment is incomplete; see the pip output above"
echo "$fingerprint" > "$stamp"
say "python environment ready ($VENV)"
