#!/usr/bin/env bash
# Build the JupyterLab extension (labextension/) when its sources changed, and make
# VENV's JupyterLab load it:
#   - npm ci from labextension/package-lock.json (only when the lock changed);
#   - tsc + jupyter-builder (the Python package in VENV; the npm devDependency
#     @jupyter/builder does the bundling) into wflo_jupyter/labextension/;
#   - VENV/share/jupyter/labextensions/wflo-jupyter -> wflo_jupyter/labextension (a
#     link, as `jupyter labextension develop` makes, so a rebuild needs no reinstall).
#
#   scripts/build-labextension.sh [VENV_DIR]
set -euo pipefail

VENV="${1:-.venv}"
EXT=labextension
OUT=wflo_jupyter/labextension
say() { printf '[wflo] %s\n' "$*"; }
die() { printf '[wflo] ERROR: %s\n' "$*" >&2; exit 1; }

command -v npm >/dev/null 2>&1 || die "npm is missing: install Node.js 20.19+ (the lab extension is built with it)"
[[ -x "$VENV/bin/jupyter-builder" ]] || die "$VENV/bin/jupyter-builder is missing: run 'make install'"

fingerprint() { cat "$@" | sha256sum | cut -d' ' -f1; }
lock_print="$(fingerprint "$EXT/package-lock.json")"
if [[ "$(cat "$EXT/node_modules/.wflo-lock" 2>/dev/null)" != "$lock_print" ]]; then
    say "installing the lab extension's npm packages (npm ci, about a minute)..."
    (cd "$EXT" && npm ci --no-audit --no-fund --loglevel=error >/tmp/wflo-npm-ci.log 2>&1) \
        || { tail -30 /tmp/wflo-npm-ci.log; die "npm ci failed in $EXT"; }
    echo "$lock_print" >"$EXT/node_modules/.wflo-lock"
fi

mapfile -t sources < <(find "$EXT/src" "$EXT/style" -type f | sort)
source_print="$(fingerprint "${sources[@]}" "$EXT/package.json" "$EXT/package-lock.json" "$EXT/tsconfig.json")"
if [[ "$(cat "$EXT/.wflo-built" 2>/dev/null)" == "$source_print" && -f "$OUT/static/style.js" ]]; then
    say "lab extension up to date ($OUT)"
else
    say "building the lab extension..."
    rm -rf "$OUT" "$EXT/lib" "$EXT/tsconfig.tsbuildinfo"
    (cd "$EXT" && PATH="$(cd .. && pwd)/$VENV/bin:$PATH" npm run build >/tmp/wflo-labextension-build.log 2>&1) \
        || { tail -30 /tmp/wflo-labextension-build.log; die "building the lab extension failed"; }
    echo "$source_print" >"$EXT/.wflo-built"
    say "lab extension built ($OUT)"
fi

target="$VENV/share/jupyter/labextensions/wflo-jupyter"
mkdir -p "$(dirname "$target")"
if [[ "$(readlink "$target" 2>/dev/null)" != "$(pwd)/$OUT" ]]; then
    rm -rf "$target"
    ln -s "$(pwd)/$OUT" "$target"
fi
