#!/usr/bin/env bash
# Stop the daemons that host-setup.sh started (and only those), after the tests removed their
# domains. A daemon that was already running before the tests is left alone.
set -uo pipefail
STARTED=${SPK_RIG_STARTED:-/run/sensu-plugins-kvm-rig.started}
log() { printf 'host-teardown: %s\n' "$*" >&2; }

[[ -s $STARTED ]] || { log "no daemon was started by host-setup.sh"; exit 0; }

left=$(virsh -c qemu:///system list --all --name 2>/dev/null | grep '^spk-test-' || true)
[[ -z $left ]] || log "test domains still defined (a test did not clean up): $(echo $left)"

stop() {  # stop NAME PIDFILE
    local name=$1 pidfile=$2 pid i
    pid=$(cat "$pidfile" 2>/dev/null || pgrep -x -o "$name" || true)
    [[ $pid =~ ^[0-9]+$ && -d /proc/$pid ]] || return 0
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
        [[ -d /proc/$pid ]] || return 0
        sleep 0.2
    done
    log "$name (pid $pid) did not exit within 30 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
}

# libvirtd first: it holds virtlogd's connections.
grep -qx libvirtd "$STARTED" && stop libvirtd /run/libvirtd.pid
grep -qx virtlogd "$STARTED" && stop virtlogd /run/virtlogd.pid
rm -f "$STARTED"
exit 0
