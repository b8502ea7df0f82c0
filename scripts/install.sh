#!/usr/bin/env bash
# Install what wflo-jupyter needs on this machine, idempotently:
#   - Debian packages (when apt-get exists and we are root): docker.io, debootstrap,
#     bubblewrap, chromium — only those missing, with one `apt-get update` first;
#   - the virtualenv .venv with exactly the versions in requirements.lock (skipped when
#     neither pyproject.toml nor the lock changed since the last install), then the
#     project itself, editable, without resolving again.
#
#   scripts/install.sh [--uv-only] [VENV_DIR [LOCK [GROUPS]]]
#
# --uv-only: only make VENV_DIR with the lock's uv in it (what `make lock` needs, even
# when pyproject.toml has changed and the lock no longer fits it). LOCK defaults to requirements.lock (GROUPS: the dependency groups it holds, default
# tooling); `make bench` uses .venv-bench with requirements-bench.lock (tooling,bench).
set -euo pipefail

UV_ONLY=0
if [[ "${1:-}" == --uv-only ]]; then UV_ONLY=1; shift; fi
VENV="${1:-.venv}"
PYTHON="${PYTHON:-python3}"
say() { printf '[wflo] %s\n' "$*"; }
die() { printf '[wflo] ERROR: %s\n' "$*" >&2; exit 1; }

# --- system packages ---------------------------------------------------------------
declare -A BINARY_OF=([docker.io]=dockerd [debootstrap]=debootstrap [bubblewrap]=bwrap [chromium]=chromium)
missing=()
((UV_ONLY)) || for pkg in "${!BINARY_OF[@]}"; do
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
# The environment is exactly the lock (hashes checked): uv is bootstrapped from the
# lock with pip, `uv pip sync` installs the lock and removes anything else, and the
# project goes in editable, without resolving anything again.
LOCK="${2:-requirements.lock}"
GROUPS_IN_LOCK="${3:-tooling}"
[[ -f "$LOCK" ]] || die "$LOCK is missing; run 'make lock'"
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), sys.version' \
    || die "$PYTHON is older than 3.11; set PYTHON=python3.11"
if [[ ! -x "$VENV/bin/python" ]]; then
    say "creating virtualenv $VENV"
    "$PYTHON" -m venv "$VENV"
fi

# The lock's block for one package: its `name==version` line and its --hash lines.
lock_block() {
    awk -v name="$1" '$0 ~ "^"name"==" {on=1; print; next} on && /^ / {print; next} {on=0}' "$LOCK"
}
uv_version() { "$VENV/bin/uv" --version 2>/dev/null | cut -d' ' -f2; }
uv_pin="$(lock_block uv | head -1 | sed -E 's/^uv==([^ ;]+).*/\1/')"
[[ -n "$uv_pin" ]] || die "$LOCK has no uv pin"
if [[ "$(uv_version)" != "$uv_pin" ]]; then
    say "bootstrapping uv $uv_pin from the lock"
    "$VENV/bin/python" -m pip install --progress-bar off -q --disable-pip-version-check \
        --require-hashes --no-deps -r <(lock_block uv) 2>&1 | grep -v "is ignored: it is neither" || true
    [[ "$(uv_version)" == "$uv_pin" ]] || die "could not install uv $uv_pin"
fi
((UV_ONLY)) && exit 0

stamp="$VENV/.wflo-installed"
fingerprint="$(cat pyproject.toml "$LOCK" | sha256sum | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$fingerprint" ]] \
    && "$VENV/bin/python" -c 'import wflo_jupyter' 2>/dev/null; then
    say "python environment up to date ($VENV, $LOCK)"
    exit 0
fi
say "installing $LOCK into $VENV ($(grep -c '^[a-z0-9].*==' "$LOCK") pins; a minute on a fresh machine)..."
"$VENV/bin/uv" pip sync -q --python "$VENV/bin/python" --require-hashes "$LOCK" \
    || die "uv pip sync $LOCK failed (see above)"
# The editable install runs no build hook (no npm here): scripts/build-labextension.sh
# builds the lab extension next and links it into the venv, replacing what this copies.
labextension_link="$VENV/share/jupyter/labextensions/wflo-jupyter"
[[ -L "$labextension_link" ]] && rm "$labextension_link"
HATCH_BUILD_NO_HOOKS=true "$VENV/bin/uv" pip install -q --python "$VENV/bin/python" --no-deps \
    --no-build-isolation -e . || die "installing wflo-jupyter itself failed (see above)"
"$VENV/bin/python" scripts/check_lock.py --env --lock "$LOCK" --groups "$GROUPS_IN_LOCK" \
    || die "the environment does not match $LOCK, or $LOCK does not fit pyproject.toml ('make lock')"
"$VENV/bin/python" -c 'import wflo_jupyter, temporalio, confluent_kafka, docker, sqlalchemy' \
    || die "the python environment is incomplete; see the output above"
echo "$fingerprint" > "$stamp"
say "python environment ready ($VENV: exactly $LOCK)"
