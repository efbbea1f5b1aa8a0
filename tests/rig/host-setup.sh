#!/usr/bin/env bash
# Prepare this host for the real libvirtd + QEMU tests (Debian 12, root, no systemd).
#
#  * installs the Debian packages the rig needs, if any is missing;
#  * starts virtlogd and libvirtd by hand when they are not running;
#  * waits until qemu:///system answers;
#  * sets `namespaces = [ ]` in /etc/libvirt/qemu.conf when QEMU's private
#    mount namespace cannot work here (`/` not a mount point: chroots, some
#    containers) and restarts libvirtd.
#
# Idempotent: running it again on a ready host only checks and returns.
set -euo pipefail

PACKAGES=(libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils
          libvirt-dev pkg-config cpio ovmf)  # ovmf: UEFI guests (NVRAM) of test_backup_beside
URI=qemu:///system
QEMU_CONF=/etc/libvirt/qemu.conf
CONNECT_TIMEOUT=${SPK_RIG_CONNECT_TIMEOUT:-60}

# Daemons this script started are listed here, so that host-teardown.sh stops only those.
STARTED=${SPK_RIG_STARTED:-/run/sensu-plugins-kvm-rig.started}

log() { printf 'host-setup: %s\n' "$*" >&2; }
die() { printf 'host-setup: ERROR: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root"

# --- packages ---------------------------------------------------------------
missing=()
for p in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)
    [[ $status == ii* ]] || missing+=("$p")
done
if ((${#missing[@]})); then
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 \
        || die "apt-get install ${missing[*]} failed"
else
    log "packages present"
fi
for b in virsh libvirtd virtlogd qemu-system-x86_64 qemu-img cpio; do
    command -v "$b" >/dev/null || die "$b not found after install"
done

# --- /dev/kvm permissions -------------------------------------------------------
# Without udev, /dev/kvm may be root-only (0600). QEMU's capability probe still
# reports KVM, but libvirtd then finds /dev/kvm unusable for the QEMU user, calls
# its cached capabilities outdated and re-probes QEMU (~4 s) on *every* lookup:
# measured 31 s per `virsh define`, 4.5 s per start. udev's usual rule
# (GROUP="kvm", MODE="0660") makes the cache stable; the tests still use TCG.
qemu_user=$(sed -nE 's/^[[:space:]]*user[[:space:]]*=[[:space:]]*"([^"]+)".*/\1/p' "$QEMU_CONF" 2>/dev/null | tail -n1)
qemu_user=${qemu_user:-libvirt-qemu}
if [[ -c /dev/kvm ]] && getent group kvm >/dev/null && id "$qemu_user" >/dev/null 2>&1; then
    if setpriv --reuid="$qemu_user" --regid=kvm --init-groups test -r /dev/kvm -a -w /dev/kvm 2>/dev/null; then
        log "/dev/kvm usable by $qemu_user"
    else
        log "/dev/kvm not usable by $qemu_user; setting root:kvm 0660 (as udev would)"
        chgrp kvm /dev/kvm && chmod 0660 /dev/kvm || die "cannot fix /dev/kvm permissions"
    fi
fi

# --- daemons ----------------------------------------------------------------
# running PIDFILE NAME: true when the pid in PIDFILE is alive and is NAME
# (or, without a usable pidfile, when a process named NAME runs at all).
running() {
    local pidfile=$1 name=$2 pid
    if [[ -s $pidfile ]]; then
        pid=$(<"$pidfile")
        if [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/comm && $(</proc/"$pid"/comm) == "$name" ]]; then
            return 0
        fi
    fi
    command -v pgrep >/dev/null && pgrep -x "$name" >/dev/null
}

# A daemon must not inherit our open files: run under `flock /tmp/spk-hv.lock`, it would hold the
# test lock for as long as it runs (measured: every later flock waited until libvirtd's fd was closed).
daemon() {
    (
        for fd in /proc/$BASHPID/fd/*; do
            n=${fd##*/}
            if [ "$n" -gt 2 ]; then eval "exec $n>&-"; fi
        done
        exec "$@"
    )
}

start_virtlogd() {
    if running /run/virtlogd.pid virtlogd; then
        log "virtlogd already running"
    else
        log "starting virtlogd"
        daemon virtlogd -d || die "virtlogd -d failed"
        echo virtlogd >>"$STARTED"
    fi
}

start_libvirtd() {
    if running /run/libvirtd.pid libvirtd; then
        log "libvirtd already running"
    else
        log "starting libvirtd"
        daemon libvirtd -d || die "libvirtd -d failed"
        grep -qx libvirtd "$STARTED" 2>/dev/null || echo libvirtd >>"$STARTED"
    fi
}

stop_libvirtd() {
    local pid i
    running /run/libvirtd.pid libvirtd || return 0
    pid=$(cat /run/libvirtd.pid 2>/dev/null || true)
    if ! [[ $pid =~ ^[0-9]+$ && -d /proc/$pid ]]; then
        pid=$(pgrep -x -o libvirtd) || return 0
    fi
    log "stopping libvirtd (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
        [[ -d /proc/$pid ]] || return 0
        sleep 0.2
    done
    die "libvirtd (pid $pid) did not exit within 30 s"
}

wait_connect() {
    local deadline=$((SECONDS + CONNECT_TIMEOUT)) out
    log "waiting for $URI (first connection probes QEMU, ~8 s)"
    while :; do
        if out=$(virsh -c "$URI" version 2>&1); then
            log "$URI answers: $(grep -m1 'Running hypervisor' <<<"$out" || echo ok)"
            return 0
        fi
        ((SECONDS < deadline)) || die "$URI did not answer within ${CONNECT_TIMEOUT} s: $out"
        sleep 1
    done
}

start_virtlogd
start_libvirtd
wait_connect

# --- QEMU mount namespace ---------------------------------------------------
# libvirt gives each QEMU a private /dev in its own mount namespace and first
# makes `/` a slave mount. Where `/` is not a mount point that fails with
# "Failed disable mount propagation out of the root filesystem".
namespaces_disabled() {
    grep -Eq '^[[:space:]]*namespaces[[:space:]]*=[[:space:]]*\[[[:space:]]*\]' "$QEMU_CONF"
}

if unshare -m sh -c 'mount --make-rslave /' 2>/dev/null; then
    log "mount namespaces work; qemu.conf namespaces left as is"
elif namespaces_disabled; then
    log "mount namespaces unusable here; qemu.conf already has namespaces = [ ]"
else
    log "mount namespaces unusable here; setting namespaces = [ ] in $QEMU_CONF"
    [[ -f $QEMU_CONF ]] || die "$QEMU_CONF missing"
    cp -p "$QEMU_CONF" "$QEMU_CONF.spk-rig.bak"
    # Drop any active namespaces setting (single- or multi-line list), then append ours.
    python3 - "$QEMU_CONF" <<'EOF' || die "could not edit $QEMU_CONF"
import re, sys
path = sys.argv[1]
text = open(path).read()
note = '# added by sensu-plugins-kvm tests/rig/host-setup.sh: / is not a mount point here\n'
text = re.sub(r'(?m)^[ \t]*namespaces[ \t]*=[ \t]*\[[^\]]*\][ \t]*\n?', '', text).replace(note, '')
if not text.endswith('\n'):
    text += '\n'
text += note + 'namespaces = [ ]\n'
open(path, 'w').write(text)
EOF
    namespaces_disabled || die "namespaces = [ ] not found in $QEMU_CONF after edit"
    stop_libvirtd
    start_libvirtd
    wait_connect
fi

log "ready"
