#!/usr/bin/env bash
# Make sure a Docker engine answers; install and start one if none does.
#
#   scripts/ensure-docker.sh
#
# - If `docker info` answers (current DOCKER_HOST or the default socket), say
#   which engine and exit 0. Nothing is installed or started.
# - Otherwise (root only): install docker.io with apt when dockerd is missing,
#   start `dockerd --iptables=false --bridge=none --storage-driver=overlay2`
#   in the background (log: /var/log/wflo-dockerd.log), fall back to the vfs
#   storage driver when overlay2 does not work on this filesystem, and wait
#   until the engine answers (at most WFLO_DOCKERD_TIMEOUT seconds, default 60).
# - Never starts a second dockerd: if one is already running (e.g. still
#   starting up) it only waits for it.
#
# Environment:
#   WFLO_DOCKERD_LOG             log file (default /var/log/wflo-dockerd.log)
#   WFLO_DOCKERD_TIMEOUT         seconds to wait for the engine (default 60)
#   WFLO_DOCKER_STORAGE_DRIVER   force a storage driver (default: overlay2, then vfs)
set -euo pipefail

LOG="${WFLO_DOCKERD_LOG:-/var/log/wflo-dockerd.log}"
TIMEOUT="${WFLO_DOCKERD_TIMEOUT:-60}"
PIDFILE=/var/run/docker.pid
DAEMON_JSON=/etc/docker/daemon.json

say() { printf '[wflo] %s\n' "$*"; }
die() { printf '[wflo] ERROR: %s\n' "$*" >&2; exit 1; }

engine_answers() {
    command -v docker >/dev/null 2>&1 || return 1
    timeout 5 docker info >/dev/null 2>&1
}

describe_engine() {
    local version
    version="$(timeout 5 docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?')"
    printf '%s (server %s)' "${DOCKER_HOST:-unix:///var/run/docker.sock}" "$version"
}

# --- 1. An engine already answers: use it. ---------------------------------
if engine_answers; then
    say "docker engine already answers at $(describe_engine)"
    exit 0
fi

# Only a local Unix socket can be served by a dockerd we start ourselves.
SOCKET_ARGS=()
if [[ -n "${DOCKER_HOST:-}" ]]; then
    case "$DOCKER_HOST" in
        unix:///var/run/docker.sock) ;;
        unix://*) SOCKET_ARGS=(--host "$DOCKER_HOST") ;;
        *) die "DOCKER_HOST=$DOCKER_HOST does not answer, and a local dockerd cannot serve it; fix it or unset DOCKER_HOST" ;;
    esac
fi

if [[ "$(id -u)" -ne 0 ]]; then
    die "no Docker engine answers and starting one needs root (run this script as root, or start Docker yourself)"
fi

# One starter at a time (e.g. `make demo` and `make test` side by side); the
# lock is released when this script exits.
if command -v flock >/dev/null 2>&1; then
    exec 9>/run/wflo-ensure-docker.lock
    flock -w "$((TIMEOUT + 120))" 9 || die "another ensure-docker.sh holds /run/wflo-ensure-docker.lock"
    if engine_answers; then
        say "docker engine answers at $(describe_engine) (started by a concurrent run)"
        exit 0
    fi
fi

# --- 2. Install docker.io when the daemon or the client is missing. --------
if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || die "dockerd is missing and apt-get is not available to install it"
    say "installing docker.io with apt (about 40 s)..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=120 update -qq
    # Of docker.io's recommends keep apparmor (dockerd needs apparmor_parser
    # where the kernel has AppArmor) and ca-certificates (TLS to registries).
    apt-get -o DPkg::Lock::Timeout=120 install -y -qq --no-install-recommends \
        docker.io apparmor ca-certificates >/dev/null
    hash -r
    command -v dockerd >/dev/null 2>&1 || die "apt installed docker.io but dockerd is still not on PATH"
    command -v docker >/dev/null 2>&1 || die "apt installed docker.io but the docker client is still not on PATH"
fi

# --- 3. Start dockerd unless one already runs. -----------------------------
running_dockerd_pid() {
    local pid
    if [[ -s "$PIDFILE" ]]; then
        pid="$(cat "$PIDFILE" 2>/dev/null || true)"
        if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null \
            && [[ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" == dockerd ]]; then
            echo "$pid"
            return 0
        fi
    fi
    local comm
    for comm in /proc/[0-9]*/comm; do
        if [[ "$(cat "$comm" 2>/dev/null || true)" == dockerd ]]; then
            pid="${comm#/proc/}"
            echo "${pid%/comm}"
            return 0
        fi
    done
    return 1
}

# Does /etc/docker/daemon.json already set this key? Then a flag for it would
# make dockerd refuse to start ("specified both as a flag and in the config").
config_sets() {
    [[ -f "$DAEMON_JSON" ]] && grep -q "\"$1\"" "$DAEMON_JSON"
}

choose_driver() {
    if [[ -n "${WFLO_DOCKER_STORAGE_DRIVER:-}" ]]; then
        echo "$WFLO_DOCKER_STORAGE_DRIVER"
    elif [[ -d /var/lib/docker/vfs && ! -d /var/lib/docker/overlay2 ]]; then
        echo vfs   # an earlier start fell back to vfs here: keep its images
    else
        echo overlay2
    fi
}

DOCKERD_PID=""
LOG_OFFSET=0

start_dockerd() {
    local driver="$1"
    local args=()
    config_sets iptables || args+=(--iptables=false)
    config_sets bridge || args+=(--bridge=none)
    config_sets storage-driver || args+=("--storage-driver=$driver")
    args+=(${SOCKET_ARGS[@]+"${SOCKET_ARGS[@]}"})
    mkdir -p "$(dirname "$LOG")"
    touch "$LOG"
    LOG_OFFSET="$(stat -c %s "$LOG")"
    say "starting dockerd ${args[*]} (log: $LOG)"
    printf '\n===== %s wflo: dockerd %s =====\n' "$(date -Is)" "${args[*]}" >>"$LOG"
    # setsid + nohup: the daemon survives this script and its terminal.
    # 9>&-: it must not inherit (and keep holding) this script's lock.
    setsid nohup dockerd "${args[@]}" >>"$LOG" 2>&1 </dev/null 9>&- &
    DOCKERD_PID=$!
}

new_log() { tail -c "+$((LOG_OFFSET + 1))" "$LOG" 2>/dev/null || true; }

storage_driver_failed() {
    new_log | grep -qiE 'graphdriver|storage.driver|overlay2?( is)? not supported|driver not supported'
}

STARTED_DRIVER=""
existing="$(running_dockerd_pid || true)"
if [[ -n "$existing" ]]; then
    say "dockerd is already running (pid $existing) but does not answer yet; waiting for it"
else
    STARTED_DRIVER="$(choose_driver)"
    start_dockerd "$STARTED_DRIVER"
fi

# --- 4. Wait until the engine answers. --------------------------------------
deadline=$((SECONDS + TIMEOUT))
next_report=$((SECONDS + 5))
while ! engine_answers; do
    if [[ -n "$DOCKERD_PID" ]] && ! kill -0 "$DOCKERD_PID" 2>/dev/null; then
        # Our dockerd exited. Retry once with vfs if overlay2 was the problem.
        if [[ "$STARTED_DRIVER" == overlay2 ]] && storage_driver_failed; then
            say "overlay2 does not work on this filesystem; falling back to --storage-driver=vfs"
            STARTED_DRIVER=vfs
            start_dockerd vfs
            continue
        fi
        printf '[wflo] ERROR: dockerd exited during start-up; last lines of %s:\n' "$LOG" >&2
        new_log | tail -n 30 >&2
        exit 1
    fi
    if ((SECONDS >= deadline)); then
        printf '[wflo] ERROR: no Docker engine answered within %ss; last lines of %s:\n' "$TIMEOUT" "$LOG" >&2
        tail -n 30 "$LOG" >&2 || true
        exit 1
    fi
    if ((SECONDS >= next_report)); then
        say "waiting for dockerd to answer ($((deadline - SECONDS)) s left)..."
        next_report=$((SECONDS + 5))
    fi
    sleep 0.5
done

driver="$(timeout 5 docker info --format '{{.Driver}}' 2>/dev/null || echo '?')"
say "docker engine ready at $(describe_engine), storage driver $driver"
