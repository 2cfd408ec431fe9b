#!/usr/bin/env bash
# Run the whole test suite on a fresh Debian bookworm, as on a bare machine (run as root).
#
#   bash scripts/fresh_check.sh [pytest args...]   (default: -q -p no:cacheprovider)
#
# Builds once (then reuses) a pristine minbase bookworm with only git, curl, python3 and
# ca-certificates in $PODSPAN_FRESH_ROOT-base; every run copies it afresh to
# $PODSPAN_FRESH_ROOT (default /srv/podspan-fresh), clones this checkout's committed HEAD to
# /root/podspan there, mounts /proc, /sys and /dev, runs `bash scripts/test.sh` in the chroot
# (which installs everything else, so nothing from an earlier run is reused but the apt and pip
# download caches), unmounts, and prints where the log is. Exits with the suite's exit code.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
ROOT=${PODSPAN_FRESH_ROOT:-/srv/podspan-fresh}
BASE=$ROOT-base
CACHE=$ROOT-cache
LOG=${PODSPAN_FRESH_LOG:-/var/log/podspan-fresh-check.log}
MIRROR=http://deb.debian.org/debian
ARGS=("$@")
[ ${#ARGS[@]} -gt 0 ] || ARGS=(-q -p no:cacheprovider)

step() { printf '\033[1m==> %s\033[0m\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "fresh check: must run as root (debootstrap, chroot and eBPF need it)" >&2
    exit 2
fi

mounted_under() { awk -v p="$1/" 'index($5 "/", p) == 1 { print $5 }' /proc/self/mountinfo; }
unmount_all() {
    local dir=$1 m
    for m in $(mounted_under "$dir" | sort -r); do
        umount -R "$m" 2>/dev/null || umount -R -l "$m" 2>/dev/null || true
    done
    if [ -n "$(mounted_under "$dir")" ]; then
        echo "fresh check: cannot unmount $(mounted_under "$dir" | head -1)" >&2
        return 1
    fi
}
chroot_env() {
    local root=$1; shift
    chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM="${TERM:-dumb}" \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"
}

if ! command -v debootstrap >/dev/null; then
    step "apt-get install debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap
fi

if [ ! -f "$BASE/.podspan-fresh-base" ]; then
    step "debootstrap bookworm $BASE"
    unmount_all "$BASE"
    rm -rf --one-file-system "$BASE"
    debootstrap --variant=minbase bookworm "$BASE" "$MIRROR"
    # What an installed Debian has and minbase leaves out: updates and security suites, /etc/hosts.
    cat > "$BASE/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
    cat > "$BASE/etc/hosts" <<EOF
127.0.0.1	localhost
127.0.1.1	podspan-fresh
::1	localhost ip6-localhost ip6-loopback
ff02::1	ip6-allnodes
ff02::2	ip6-allrouters
EOF
    cp -L /etc/resolv.conf "$BASE/etc/resolv.conf"
    step "apt-get install git curl python3 ca-certificates (in $BASE)"
    chroot_env "$BASE" sh -c 'apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q git curl python3 ca-certificates && apt-get clean'
    touch "$BASE/.podspan-fresh-base"
fi

step "fresh copy of $BASE at $ROOT"
unmount_all "$ROOT"
rm -rf --one-file-system "$ROOT"
cp -a "$BASE" "$ROOT"
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
# The host's own CAs (e.g. of a TLS-intercepting proxy in front of PyPI), as its admin would add them.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
    chroot_env "$ROOT" update-ca-certificates >/dev/null
fi

trap 'unmount_all "$ROOT"' EXIT
# A machine's / is a mount point (`ip netns` remounts it rslave) and its /run a tmpfs.
mount --bind "$ROOT" "$ROOT"
mount --make-private "$ROOT"
mount -t tmpfs -o mode=755,nosuid,nodev tmpfs "$ROOT/run"
for m in proc sys dev; do
    mount --rbind "/$m" "$ROOT/$m"
    mount --make-rslave "$ROOT/$m"  # unmounting these must never unmount the host's
done
# Only download caches survive between runs.
mkdir -p "$CACHE/apt" "$CACHE/pip" "$ROOT/root/.cache/pip"
mount --bind "$CACHE/apt" "$ROOT/var/cache/apt/archives"
mount --bind "$CACHE/pip" "$ROOT/root/.cache/pip"

step "clone $(git -C "$REPO" rev-parse --short HEAD) into $ROOT/root/podspan"
git clone -q "$REPO" "$ROOT/root/podspan"

step "bash scripts/test.sh ${ARGS[*]} (in the chroot; log: $LOG)"
start=$(date +%s)
rc=0
chroot_env "$ROOT" bash -c 'cd /root/podspan && exec bash scripts/test.sh "$@"' test.sh "${ARGS[@]}" \
    > "$LOG" 2>&1 || rc=$?
tail -n 25 "$LOG"
step "exit $rc after $(( $(date +%s) - start ))s; log: $LOG"
exit "$rc"
