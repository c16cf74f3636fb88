#!/usr/bin/env bash
# Install the system tools the integration tests and benchmarks run for real:
# nginx (+ lua module), OpenSSH server/client, iproute2 (network namespaces), haproxy,
# wrk, curl, git, procps, python3-venv, sudo (the fleet tests' non-root deploy user),
# headless Chromium + ChromeDriver (the status page's browser test drives the real page),
# and systemd-container + debootstrap (the systemd backend's tests boot a Debian 12 root
# filesystem with systemd as its PID 1: testkit/systemd_host.py).
#
# Idempotent: anything already present is reported as "found" and left alone, and
# `apt-get update` runs only when something is actually missing. Run as root on Debian 12.
#
#   scripts/install-system-deps.sh            install what is missing
#   scripts/install-system-deps.sh --check    report only; exit 1 if something is missing
set -euo pipefail

check_only=0
case "${1:-}" in
    "") ;;
    --check) check_only=1 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

if [[ $check_only -eq 0 && $(id -u) -ne 0 ]]; then
    echo "error: run as root (apt-get install, /run/sshd)" >&2
    exit 1
fi

# Non-login root shells sometimes lack the sbin dirs, which would make sshd/nginx look
# missing and trigger a pointless reinstall.
export PATH="${PATH}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

pkg_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

# package | how to recognise it is already there. Commands are checked with
# `command -v` first, because an nginx/ssh from another package flavour (nginx-full,
# a source build) must count as present: nginx-light conflicts with the other flavours.
# Packages without a command of their own are checked by file or dpkg status.
checks=(
    "nginx-light|cmd:nginx"
    "libnginx-mod-http-lua|file:/usr/lib/nginx/modules/ngx_http_lua_module.so"
    "openssh-server|file:/usr/sbin/sshd"
    "openssh-client|cmd:ssh"
    "iproute2|cmd:ip"
    "procps|cmd:pgrep"
    "curl|cmd:curl"
    "git|cmd:git"
    "haproxy|cmd:haproxy"
    "wrk|cmd:wrk"
    "unzip|cmd:unzip"
    "python3-venv|pkg:python3-venv"
    "ca-certificates|file:/etc/ssl/certs/ca-certificates.crt"
    "chromium|cmd:chromium"
    "chromium-driver|cmd:chromedriver"
    "sudo|cmd:sudo"
    "systemd-container|cmd:systemd-nspawn"
    "debootstrap|cmd:debootstrap"
)

# Prints where the thing an entry describes was found; prints nothing when it is absent.
locate() {
    local probe=${1#*|}
    local kind=${probe%%:*} what=${probe#*:}
    case $kind in
        cmd) command -v "$what" || true ;;
        file) if [[ -e $what ]]; then echo "$what"; fi ;;
        pkg) if pkg_installed "$what"; then echo "dpkg: $what"; fi ;;
        *) echo "internal error: bad check $1" >&2; exit 2 ;;
    esac
}

missing=()
missing_entries=()
for entry in "${checks[@]}"; do
    pkg=${entry%%|*}
    where=$(locate "$entry")
    if [[ -n $where ]]; then
        echo "found:     $pkg ($where)"
    else
        echo "missing:   $pkg"
        missing+=("$pkg")
        missing_entries+=("$entry")
    fi
done

installed_now=()
if [[ ${#missing[@]} -gt 0 ]]; then
    if [[ $check_only -eq 1 ]]; then
        echo "check: ${#missing[@]} package(s) missing: ${missing[*]}"
        exit 1
    fi
    # Keep services from starting at all during the install where nothing else already
    # decided that (Docker images ship their own policy-rc.d; leave that one alone).
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        created_policy=1
    fi
    cleanup_policy() { [[ $created_policy -eq 1 ]] && rm -f "$policy"; return 0; }
    trap cleanup_policy EXIT

    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
    # Trust the probes, not apt's exit code alone: a package can install fine and still
    # not provide what the tests look for (e.g. a diverted or renamed binary).
    for entry in "${missing_entries[@]}"; do
        pkg=${entry%%|*}
        where=$(locate "$entry")
        if [[ -z $where ]]; then
            echo "error: installed $pkg but its probe (${entry#*|}) still fails" >&2
            exit 1
        fi
        echo "installed: $pkg ($where)"
        installed_now+=("$pkg")
    done
fi

# A freshly installed nginx/sshd may have been started by its package (hosts without a
# policy-rc.d). Tests use private prefixes and ports, so these daemons are not needed;
# stop only what this run installed, never a service the machine already ran.
stop_nginx=0
stop_ssh=0
for pkg in "${installed_now[@]}"; do
    case $pkg in
        nginx-light|libnginx-mod-http-lua) stop_nginx=1 ;;
        openssh-server) stop_ssh=1 ;;
    esac
done
if [[ $stop_nginx -eq 1 ]]; then
    service nginx stop >/dev/null 2>&1 || true
    echo "stopped:   system nginx service (tests run their own)"
fi
if [[ $stop_ssh -eq 1 ]]; then
    service ssh stop >/dev/null 2>&1 || true
    echo "stopped:   system ssh service (tests run their own sshd)"
fi

# sshd refuses to start without its privilege-separation directory; /run is a tmpfs,
# so this is needed after every boot, not just after the install.
if [[ $check_only -eq 0 ]]; then
    install -d -m 0755 /run/sshd
    echo "ready:     /run/sshd"
elif [[ -d /run/sshd ]]; then
    echo "found:     /run/sshd"
else
    echo "note:      /run/sshd is missing (created on a real run; the tests create it too)"
fi

echo "all system dependencies present"
