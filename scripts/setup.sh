#!/usr/bin/env bash
# Idempotent machine setup for Podspan on Debian (run as root):
# apt packages (bcc, bpftool, fallback kernel headers, test servers), a venv
# that can import Debian's bcc, and the project installed editable with test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${PODSPAN_VENV:-$ROOT/.venv}

step() { printf '\033[1m==> %s\033[0m\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "podspan setup: must run as root (eBPF and apt need it)" >&2
    exit 2
fi

# Packages: bcc + headers fallback + the real servers and load tools the tests use, and a C
# toolchain: `cc` with libc headers (tests compile against bpf/include) and Python's headers for
# building C extensions (gcc-12 alone, pulled in by bcc, gives neither `cc` nor libc6-dev).
APT_PACKAGES=(
    python3 python3-venv python3-dev gcc libc6-dev
    python3-bpfcc bpfcc-tools libbpfcc bpftool linux-headers-amd64
    iproute2 procps nginx-light wrk
    redis-server postgresql mariadb-server
    golang-go
)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    step "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # Servers must not start system-wide instances: tests run their own on loopback.
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    apt-get install -y -q --no-install-recommends "${missing[@]}"
    rm -f /usr/sbin/policy-rc.d
else
    step "apt packages present"
fi

# A CPython 3.11 for the venv: bcc's Python module is built for Debian's 3.11.
PY=""
for cand in python3.11 /usr/bin/python3.11; do
    if command -v "$cand" >/dev/null && "$cand" -c 'import sys, venv; assert sys.version_info[:2] == (3, 11)' 2>/dev/null; then
        PY=$(command -v "$cand"); break
    fi
done
[ -n "$PY" ] || { echo "podspan setup: no CPython 3.11 with venv found" >&2; exit 2; }

if [ ! -x "$VENV/bin/python" ]; then
    step "creating venv $VENV ($PY)"
    "$PY" -m venv "$VENV"
fi
# Expose only Debian's bcc package (not all of dist-packages) to the venv.
SHIM="$VENV/bcc-shim"
mkdir -p "$SHIM"
ln -sfn /usr/lib/python3/dist-packages/bcc "$SHIM/bcc"
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$SHIM" > "$SITE/podspan-bcc.pth"

STAMP="$VENV/.podspan-installed"
# Reinstall when the project's metadata or a C extension's sources changed (the install builds them in place;
# _ringbuf.c and _conntable.c include bpf/include/podspan_events.h, the only BPF header userspace compiles).
changed=""
if [ -f "$STAMP" ]; then
    changed=$(find pyproject.toml agent/podspan_agent/*.c agent/podspan_agent/*.h bpf/include/podspan_events.h -newer "$STAMP" -print -quit 2>/dev/null)
fi
if [ ! -f "$STAMP" ] || [ -n "$changed" ]; then
    step "pip install -e .[test]"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e ".[test]"
    touch "$STAMP"
else
    step "python dependencies up to date"
fi
"$VENV/bin/python" -c 'import bcc' || { echo "podspan setup: bcc not importable from venv" >&2; exit 2; }
step "setup complete (venv: $VENV)"
