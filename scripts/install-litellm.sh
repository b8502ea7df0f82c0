#!/usr/bin/env bash
# The environment of LiteLLM's proxy, a third-party OpenAI-compatible server the
# gateway is tested against (tests/integration/test_third_party_server.py): a virtualenv
# of its own (its fastapi, uvicorn, ... pins are not the project's), exactly
# requirements-litellm.lock (hashes checked), with nothing of the project in it.
# Skipped when the lock has not changed since the last install.
#
#   scripts/install-litellm.sh [VENV_DIR [LOCK]]     (`make test` runs it; default
#                                                    .venv-litellm requirements-litellm.lock)
#
# Needs the project's environment first (`make install`): its uv installs this one.
set -euo pipefail

VENV="${1:-.venv-litellm}"
LOCK="${2:-requirements-litellm.lock}"
UV="${UV:-.venv/bin/uv}"
PYTHON="${PYTHON:-python3}"
say() { printf '[wflo] %s\n' "$*"; }
die() { printf '[wflo] ERROR: %s\n' "$*" >&2; exit 1; }

[[ -f "$LOCK" ]] || die "$LOCK is missing; run 'make lock'"
[[ -x "$UV" ]] || die "$UV is missing; run 'make install' first"

stamp="$VENV/.wflo-installed"
fingerprint="$(sha256sum "$LOCK" | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$fingerprint" && -x "$VENV/bin/litellm" ]]; then
    say "LiteLLM proxy environment up to date ($VENV, $LOCK)"
    exit 0
fi
if [[ ! -x "$VENV/bin/python" ]]; then
    say "creating virtualenv $VENV"
    "$PYTHON" -m venv --without-pip "$VENV"
fi
say "installing $LOCK into $VENV ($(grep -c '^[a-z0-9].*==' "$LOCK") pins; a minute on a fresh machine)..."
"$UV" pip sync -q --python "$VENV/bin/python" --require-hashes "$LOCK" \
    || die "uv pip sync $LOCK failed (see above)"
"$VENV/bin/python" scripts/check_lock.py --env --lock "$LOCK" --only-groups litellm-proxy \
    || die "$VENV does not match $LOCK, or $LOCK does not fit pyproject.toml ('make lock')"
LITELLM_LOCAL_MODEL_COST_MAP=True "$VENV/bin/litellm" --help >/dev/null || die "the litellm command does not run in $VENV"
echo "$fingerprint" > "$stamp"
say "LiteLLM proxy environment ready ($VENV: exactly $LOCK, $(du -sh "$VENV" | cut -f1))"
