#!/usr/bin/env bash
# Build the sandbox runtime image (default tag wflo-runtime:python3.11).
#
#   scripts/build-runtime-image.sh
#
# Idempotent and fast when up to date: the image carries the label
# org.wflo.recipe-hash = sha256(the recipe — Dockerfile, requirements.txt —
# + base image name and id + SITE_FORMAT below); when the existing image's
# label matches, nothing is built and nothing is downloaded.
#
# Python packages (runtimes/python3.11/requirements.txt, every one pinned) are
# installed on the HOST, from wheels only, for the base image's Python
# (cp311), architecture and glibc: `pip install --target .build/site
# --only-binary=:all: --platform manylinux_... -r requirements.txt`. The
# Dockerfile copies that tree into the image, so the build itself needs
# neither pip in the image nor network. The tree is cached in
# runtimes/python3.11/.build/ (gitignored) under a key of requirements.txt and
# the platform, so a rebuild for the same requirements downloads nothing
# (and pip's own cache serves wheels it fetched before). Needs a python with
# pip on the host: $WFLO_PIP_PYTHON, else python3 (as root on Debian,
# python3-pip is installed when no pip is found).
#
# Base image choice (recorded in the label org.wflo.runtime-base):
#   1. $WFLO_RUNTIME_BASE when set;
#   2. else the base the existing image was built from, if still present;
#   3. else python:3.11-slim if present locally, or wflo-base:bookworm if an
#      earlier run already built it (this machine has no registry);
#   4. else `docker pull python:3.11-slim` (25 s timeout);
#   5. else build wflo-base:bookworm from a Debian mirror with debootstrap
#      (no registry needed) and `docker import` it.
#
# Environment:
#   WFLO_RUNTIME_IMAGE   image tag to build (default wflo-runtime:python3.11)
#   WFLO_RUNTIME_BASE    base image to build FROM (skips the choice above)
#   WFLO_DEBIAN_MIRROR   mirror for debootstrap (default: from apt sources,
#                        else http://deb.debian.org/debian)
#   WFLO_ROOTFS_TMPDIR   where debootstrap builds the rootfs (default /var/tmp;
#                        removed afterwards; must not be mounted nodev/noexec)
#   WFLO_PIP_PYTHON      python (with pip) that installs the wheels on the host
#
# Needs a Docker engine that answers (scripts/ensure-docker.sh) and, for the
# debootstrap path, root.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONTEXT="$ROOT/runtimes/python3.11"
REQUIREMENTS="$CONTEXT/requirements.txt"
# Generated, gitignored, inside the build context (the Dockerfile COPYs
# .build/site); never part of the recipe hash.
BUILD_DIR="$CONTEXT/.build"
SITE_DIR="$BUILD_DIR/site"
SITE_KEY_FILE="$BUILD_DIR/site.key"
# Bump when the way .build/site is made (pip options, trimming) changes: it
# enters both the site key and the recipe hash, so images are rebuilt.
SITE_FORMAT=1
IMAGE="${WFLO_RUNTIME_IMAGE:-wflo-runtime:python3.11}"
REGISTRY_BASE="python:3.11-slim"
LOCAL_BASE="wflo-base:bookworm"
SUITE="bookworm"
PULL_TIMEOUT=25
ROOTFS_TMPDIR="${WFLO_ROOTFS_TMPDIR:-/var/tmp}"   # must allow device nodes (not nodev)

say() { printf '[wflo] %s\n' "$*"; }
die() { printf '[wflo] ERROR: %s\n' "$*" >&2; exit 1; }

sha256() {
    if command -v sha256sum >/dev/null 2>&1; then sha256sum | cut -d' ' -f1
    else shasum -a 256 | cut -d' ' -f1; fi
}

# Run with a time limit when coreutils `timeout` exists (it may not on macOS).
with_timeout() {
    local seconds="$1"; shift
    if command -v timeout >/dev/null 2>&1; then timeout "$seconds" "$@"; else "$@"; fi
}

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

image_id() { docker image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }

recipe_hash() {
    # Every recipe file of the build context (path + content; not the
    # generated .build/) plus the base name and id (a rebuilt or re-pulled
    # base means a rebuild on top of it) and SITE_FORMAT.
    # Usage: recipe_hash BASE [BASE_ID]
    local base="$1" base_id="${2-}" f
    [[ -n "$base_id" ]] || base_id="$(image_id "$base")"
    {
        printf 'base=%s\n' "$base"
        printf 'base-id=%s\n' "$base_id"
        printf 'site-format=%s\n' "$SITE_FORMAT"
        (cd "$CONTEXT" && find . -path ./.build -prune -o -type f -print | LC_ALL=C sort) \
            | while IFS= read -r f; do
                printf '%s %s\n' "$f" "$(sha256 <"$CONTEXT/$f")"
            done
    } | sha256
}

[[ -f "$CONTEXT/Dockerfile" ]] || die "missing $CONTEXT/Dockerfile"
[[ -f "$REQUIREMENTS" ]] || die "missing $REQUIREMENTS"
command -v docker >/dev/null 2>&1 || die "docker client not found; run scripts/ensure-docker.sh first"

# Sets OLD_ID and OLD_HASH (the current image, if any: one docker call) and
# BASE/BASE_ID (the explicit base, or the one the current image was built
# from while that base is still present).
inspect_current() {
    local info previous=""
    BASE="${WFLO_RUNTIME_BASE:-}"
    info="$(docker image inspect --format \
        '{{.Id}}|{{index .Config.Labels "org.wflo.recipe-hash"}}|{{index .Config.Labels "org.wflo.runtime-base"}}' \
        "$IMAGE" 2>/dev/null || true)"
    IFS='|' read -r OLD_ID OLD_HASH previous <<<"$info" || true
    [[ -n "$BASE" ]] || BASE="$previous"
    BASE_ID=""
    if [[ -n "$BASE" ]]; then
        BASE_ID="$(image_id "$BASE")"
        # A remembered base that is gone is chosen afresh below.
        if [[ -z "$BASE_ID" && -z "${WFLO_RUNTIME_BASE:-}" ]]; then BASE=""; fi
    fi
}

# --- Fast path: the existing image is up to date. ---------------------------
inspect_current
if [[ -n "$OLD_ID" && -n "$BASE_ID" && "$OLD_HASH" == "$(recipe_hash "$BASE" "$BASE_ID")" ]]; then
    say "runtime image up to date ($IMAGE, base $BASE)"
    exit 0
fi

if ! with_timeout 10 docker info >/dev/null 2>&1; then
    die "no Docker engine answers (DOCKER_HOST=${DOCKER_HOST:-unset}); run scripts/ensure-docker.sh first"
fi

# One builder at a time; whoever waits re-checks below and finds the image
# up to date. The lock is released when this script exits.
if command -v flock >/dev/null 2>&1; then
    exec 9>"${TMPDIR:-/tmp}/wflo-build-runtime-image.lock"
    flock -w 600 9 || die "another build-runtime-image.sh is still running (lock ${TMPDIR:-/tmp}/wflo-build-runtime-image.lock)"
    inspect_current
fi

# --- Helpers for the registry-free base. ------------------------------------
apt_updated=0
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "need $* but apt-get is not available to install it"
    export DEBIAN_FRONTEND=noninteractive
    if [[ "$apt_updated" -eq 0 ]]; then
        apt-get -o DPkg::Lock::Timeout=120 update -qq
        apt_updated=1
    fi
    say "installing $* with apt..."
    apt-get -o DPkg::Lock::Timeout=120 install -y -qq --no-install-recommends "$@" >/dev/null
    hash -r
}

# A Debian archive URI (also a snapshot.debian.org one), not -security/ports.
DEBIAN_URI='/debian(/[0-9]{8}T[0-9]{6}Z)?/?$'
debian_mirror() {
    if [[ -n "${WFLO_DEBIAN_MIRROR:-}" ]]; then echo "$WFLO_DEBIAN_MIRROR"; return; fi
    local uri f
    # deb822 sources (bookworm default): "URIs: http://deb.debian.org/debian"
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f "$f" ]] || continue
        uri="$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) print $i }' "$f" \
               | grep -E "$DEBIAN_URI" | head -n 1 || true)"
        if [[ -n "$uri" ]]; then echo "${uri%/}"; return; fi
    done
    # one-line sources: "deb [opts] http://deb.debian.org/debian bookworm main"
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f "$f" ]] || continue
        uri="$(sed -E -n 's/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+).*/\2/p' "$f" \
               | grep -E "$DEBIAN_URI" | head -n 1 || true)"
        if [[ -n "$uri" ]]; then echo "${uri%/}"; return; fi
    done
    echo "http://deb.debian.org/debian"
}

# run_with_heartbeat LOG LABEL CMD...: run CMD with output to LOG, printing a
# progress line every 10 s; on failure show the end of LOG.
run_with_heartbeat() {
    local log="$1" label="$2"; shift 2
    local start=$SECONDS next=$((SECONDS + 10)) pid rc=0 last
    "$@" >"$log" 2>&1 &
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        sleep 1
        if ((SECONDS >= next)) && kill -0 "$pid" 2>/dev/null; then
            last="$(tail -n 1 "$log" 2>/dev/null | cut -c1-100 || true)"
            say "  $label: $((SECONDS - start)) s${last:+ — $last}"
            next=$((SECONDS + 10))
        fi
    done
    wait "$pid" || rc=$?
    if [[ "$rc" -ne 0 ]]; then
        printf '[wflo] ERROR: %s failed (exit %s); last lines of its output:\n' "$label" "$rc" >&2
        tail -n 25 "$log" >&2 || true
        return "$rc"
    fi
    say "  $label: done in $((SECONDS - start)) s"
}

WORKDIR=""
BUILD_LOG=""
PIP_LOG=""
NEW_SITE=""
cleanup() {
    if [[ -n "$BUILD_LOG" ]]; then rm -f "$BUILD_LOG"; fi
    if [[ -n "$PIP_LOG" ]]; then rm -f "$PIP_LOG"; fi
    if [[ -n "$NEW_SITE" ]]; then rm -rf "$NEW_SITE"; fi
    [[ -n "$WORKDIR" && -d "$WORKDIR" ]] || return 0
    # debootstrap mounts proc/sys inside the target; never delete through them.
    local m
    { grep -o " $WORKDIR/[^ ]*" /proc/mounts 2>/dev/null || true; } | sort -r | while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done
    rm -rf --one-file-system "$WORKDIR"
}
trap cleanup EXIT

build_local_base() {
    [[ "$(id -u)" -eq 0 ]] || die "building $LOCAL_BASE with debootstrap needs root (or set WFLO_RUNTIME_BASE to an image you have)"
    command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
    if [[ ! -f /usr/share/keyrings/debian-archive-keyring.gpg ]]; then
        apt_install debian-archive-keyring
    fi
    local mirror rootfs
    mirror="$(debian_mirror)"
    mkdir -p "$ROOTFS_TMPDIR"
    WORKDIR="$(mktemp -d "$ROOTFS_TMPDIR/wflo-rootfs.XXXXXX")"
    rootfs="$WORKDIR/rootfs"
    say "building base image $LOCAL_BASE from Debian mirror $mirror (about 60 s)..."
    run_with_heartbeat "$WORKDIR/debootstrap.log" debootstrap \
        debootstrap --variant=minbase --include=python3 "$SUITE" "$rootfs" "$mirror" \
        || die "debootstrap could not build a $SUITE rootfs in $rootfs from $mirror (a nodev/noexec filesystem? set WFLO_ROOTFS_TMPDIR; a mirror problem? set WFLO_DEBIAN_MIRROR)"
    # Trim what a sandbox never needs; keep the host's name and resolver out.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
           "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/* "$rootfs"/tmp/* 2>/dev/null || true
    : >"$rootfs/etc/resolv.conf"
    echo wflo >"$rootfs/etc/hostname"
    say "importing the rootfs as $LOCAL_BASE..."
    tar --numeric-owner -C "$rootfs" -c . \
        | docker import \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'ENV LANG=C.UTF-8' \
            --change 'LABEL org.wflo.base=debootstrap-bookworm-minbase' \
            --change 'CMD ["python3"]' \
            --message "wflo: debootstrap --variant=minbase --include=python3 $SUITE ($mirror)" \
            - "$LOCAL_BASE" >/dev/null \
        || die "docker import of the $SUITE rootfs failed"
    cleanup
    WORKDIR=""
    say "base image $LOCAL_BASE ready"
}

# --- Choose the base. --------------------------------------------------------
if [[ -z "$BASE" ]]; then
    if image_exists "$REGISTRY_BASE"; then
        BASE="$REGISTRY_BASE"
    elif image_exists "$LOCAL_BASE"; then
        BASE="$LOCAL_BASE"
    else
        say "trying docker pull $REGISTRY_BASE (at most ${PULL_TIMEOUT} s)..."
        if with_timeout "$PULL_TIMEOUT" docker pull -q "$REGISTRY_BASE" >/dev/null 2>&1; then
            BASE="$REGISTRY_BASE"
        else
            say "no registry answers; using a base built from a Debian mirror instead"
            BASE="$LOCAL_BASE"
        fi
    fi
fi
if ! image_exists "$BASE"; then
    if [[ "$BASE" == "$LOCAL_BASE" ]]; then
        build_local_base
    else
        say "pulling base image $BASE..."
        docker pull -q "$BASE" >/dev/null || die "base image $BASE is not present and cannot be pulled"
    fi
fi

HASH="$(recipe_hash "$BASE")"
if [[ -n "$OLD_ID" && "$OLD_HASH" == "$HASH" ]]; then
    say "runtime image up to date ($IMAGE, base $BASE)"
    exit 0
fi

# --- Python packages: wheels installed on the host into .build/site. --------
# A python with pip on the host (pip targets the base's Python with
# --python-version/--platform, so the host's own version does not matter).
pip_python() {
    local py
    if [[ -n "${WFLO_PIP_PYTHON:-}" ]]; then
        "$WFLO_PIP_PYTHON" -m pip --version >/dev/null 2>&1 \
            || die "WFLO_PIP_PYTHON=$WFLO_PIP_PYTHON has no pip"
        echo "$WFLO_PIP_PYTHON"; return
    fi
    for py in python3 /usr/bin/python3; do
        if command -v "$py" >/dev/null 2>&1 && "$py" -m pip --version >/dev/null 2>&1; then
            echo "$py"; return
        fi
    done
    if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        apt_install python3-pip >&2
        /usr/bin/python3 -m pip --version >/dev/null 2>&1 && { echo /usr/bin/python3; return; }
    fi
    die "no python with pip on this machine to fetch the runtime image's wheels; install pip (Debian: apt-get install python3-pip) or set WFLO_PIP_PYTHON"
}

# The wheels' total size, best effort from the index's JSON API (PEP 691/700):
# prints "COUNT MB", or "COUNT" alone when the index cannot tell.
# Usage: estimate_download PYTHON INDEX_URL PYTAG PLATFORM,PLATFORM,...
estimate_download() {
    with_timeout 20 "$1" - "$REQUIREMENTS" "$2" "$3" "$4" <<'PY' 2>/dev/null || true
import json, re, sys, urllib.request
from concurrent.futures import ThreadPoolExecutor

requirements, index, pytag, platforms = sys.argv[1:5]
rank = {p: i for i, p in enumerate(platforms.split(",") + ["any"])}
pins = []
for line in open(requirements, encoding="utf-8"):
    m = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;#]+)", line.split("#", 1)[0].strip())
    if m:
        pins.append((re.sub(r"[-_.]+", "-", m[1]).lower(), m[2]))

def size(pin):
    name, version = pin
    request = urllib.request.Request(
        f"{index.rstrip('/')}/{name}/",
        headers={"Accept": "application/vnd.pypi.simple.v1+json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        files = json.load(response)["files"]
    best = None
    for f in files:
        parts = f["filename"][:-4].split("-")
        if not f["filename"].endswith(".whl") or len(parts) < 5 or parts[1] != version:
            continue
        py, abi, plat = parts[-3:]
        if not set(py.split(".")) & {pytag, "py3", "py" + pytag[2:]} or abi not in (pytag, "abi3", "none"):
            continue
        r = min((rank[p] for p in plat.split(".") if p in rank), default=None)
        if r is not None and (best is None or r < best[0]):
            best = (r, f["size"])
    return best[1]

try:
    with ThreadPoolExecutor(8) as pool:
        print(len(pins), round(sum(pool.map(size, pins)) / 1e6))
except Exception:
    print(len(pins))
PY
}

# Makes $SITE_DIR hold requirements.txt installed for the base's Python,
# architecture and glibc, unless it already does (key in $SITE_KEY_FILE).
prepare_site() {
    local probe pytag arch glibc minor key py index estimate count mb start cached pkg
    probe="$(docker run --rm --network none --entrypoint python3 "$BASE" -c \
        'import os, sys, sysconfig; print("cp%d%d" % sys.version_info[:2], sysconfig.get_platform().split("-", 1)[1], os.confstr("CS_GNU_LIBC_VERSION").split()[1])' \
        2>&1)" || die "cannot run python3 in base image $BASE: $probe"
    read -r pytag arch glibc <<<"$probe"
    [[ "$pytag" == cp311 ]] || die "base image $BASE has Python $pytag; $REQUIREMENTS is for cp311"
    minor="${glibc#2.}"
    [[ "$minor" =~ ^[0-9]+$ && "$minor" -ge 17 ]] || die "base image $BASE has glibc '$glibc'; manylinux wheels need glibc >= 2.17"
    # Every manylinux tag this glibc runs, newest first (pip prefers the first).
    local platforms=() platform_args=() p
    rm -rf "$BUILD_DIR/site.new"   # left by an interrupted run; never build from it
    for ((p = minor; p >= 17; p--)); do platforms+=("manylinux_2_${p}_$arch"); done
    platforms+=("manylinux2014_$arch")
    case "$arch" in x86_64|i686) platforms+=("manylinux2010_$arch" "manylinux1_$arch") ;; esac
    for p in "${platforms[@]}"; do platform_args+=(--platform "$p"); done

    key="$({
        printf 'site-format=%s\npython=%s\nplatforms=%s\n' "$SITE_FORMAT" "$pytag" "${platforms[*]}"
        cat "$REQUIREMENTS"
    } | sha256)"
    if [[ -d "$SITE_DIR" && -f "$SITE_KEY_FILE" && "$(cat "$SITE_KEY_FILE")" == "$key" ]]; then
        say "python packages up to date in ${SITE_DIR#"$ROOT"/} ($pytag, $arch; nothing to download)"
        return
    fi

    py="$(pip_python)"
    index="${PIP_INDEX_URL:-$("$py" -m pip config get global.index-url 2>/dev/null || true)}"
    estimate="$(estimate_download "$py" "${index:-https://pypi.org/simple}" "$pytag" "$(IFS=,; echo "${platforms[*]}")")"
    read -r count mb <<<"$estimate" || true
    count="${count:-$(grep -cE '^[A-Za-z0-9._-]+==' "$REQUIREMENTS" || true)}"
    say "downloading $count wheels for the runtime image (${mb:+about $mb MB, }$pytag, $arch, glibc $glibc) with $py..."
    start=$SECONDS
    mkdir -p "$BUILD_DIR"
    NEW_SITE="$BUILD_DIR/site.new"
    PIP_LOG="$(mktemp "${TMPDIR:-/tmp}/wflo-pip.XXXXXX")"
    # --target keeps the host's environments untouched (and is allowed on an
    # externally managed Python); --only-binary: wheels only, nothing compiled.
    run_with_heartbeat "$PIP_LOG" "pip install" \
        env PIP_REQUIRE_VIRTUALENV=0 PIP_USER=0 PIP_DISABLE_PIP_VERSION_CHECK=1 \
        "$py" -m pip install --no-input --progress-bar off --no-compile --no-warn-script-location \
            --target "$NEW_SITE" --only-binary=:all: \
            --implementation cp --python-version 3.11 --abi "$pytag" "${platform_args[@]}" \
            -r "$REQUIREMENTS" \
        || die "pip could not fetch the runtime image's wheels (requirements: $REQUIREMENTS)"
    cached="$(grep -cE '^ *(Using cached|Processing /)' "$PIP_LOG" || true)"

    # Trim what a sandbox never uses: console scripts (their #! names the host's
    # python), the libraries' own test suites, C/C++ headers and sources.
    rm -rf "$NEW_SITE/bin" "$NEW_SITE/pyarrow/include" "$NEW_SITE/pyarrow/src"
    for pkg in numpy pandas pyarrow matplotlib mpl_toolkits; do
        if [[ -d "$NEW_SITE/$pkg" ]]; then
            find "$NEW_SITE/$pkg" -type d -name tests -prune -exec rm -rf {} +
        fi
    done
    find "$NEW_SITE" -type d -name __pycache__ -prune -exec rm -rf {} +
    # Readable by uid 1000 whatever the host's umask; written by nobody.
    chmod -R u+rwX,go+rX,go-w "$NEW_SITE"

    rm -rf "$SITE_DIR" "$SITE_KEY_FILE"
    mv "$NEW_SITE" "$SITE_DIR"
    NEW_SITE=""
    echo "$key" >"$SITE_KEY_FILE"
    say "python packages ready in ${SITE_DIR#"$ROOT"/}: $(du -sm "$SITE_DIR" | cut -f1) MB installed, ${cached:-0} of $count wheels were already on this machine, $((SECONDS - start)) s"
}
prepare_site

# --- Build. ------------------------------------------------------------------
# BuildKit only through the buildx plugin (newer clients refuse it otherwise);
# the legacy builder works everywhere. --network=none works with both: the
# Dockerfile needs no network, and dockerd here runs with --bridge=none.
build_args=(--network=none --build-arg "BASE=$BASE"
            --label "org.wflo.recipe-hash=$HASH" --label "org.wflo.runtime-base=$BASE"
            -t "$IMAGE")
if docker buildx version >/dev/null 2>&1; then
    export DOCKER_BUILDKIT=1
    builder="BuildKit"
else
    export DOCKER_BUILDKIT=0
    builder="legacy builder"
    build_args+=(--force-rm)
fi
say "building $IMAGE from $BASE with the $builder..."
BUILD_LOG="$(mktemp "${TMPDIR:-/tmp}/wflo-build.XXXXXX")"
run_with_heartbeat "$BUILD_LOG" "docker build" docker build "${build_args[@]}" "$CONTEXT" \
    || die "docker build of $IMAGE failed"

NEW_ID="$(docker image inspect --format '{{.Id}}' "$IMAGE")"
if [[ -n "$OLD_ID" && "$OLD_ID" != "$NEW_ID" ]]; then
    docker image rm "$OLD_ID" >/dev/null 2>&1 || true   # the superseded build
fi
say "runtime image $IMAGE ready (base $BASE, recipe ${HASH:0:12})"
