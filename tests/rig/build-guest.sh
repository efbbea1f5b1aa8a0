#!/usr/bin/env bash
# Build a tiny Linux guest for the real-QEMU tests.
#
#   tests/rig/build-guest.sh OUTDIR
#
# Produces OUTDIR/vmlinuz (Debian's cloud kernel) and OUTDIR/initrd.gz
# (busybox-static, the virtio modules, qemu-guest-agent and its libraries, and
# an /init driven by the kernel parameter spk.mode=MODE[,MODE...]):
#
#   write  write a non-zero pattern to /dev/vda sequentially, forever (wraps
#          around at the end of the disk); prints "SPK-WRITE <MiB>" lines
#   cpu    busy loop on the vCPU forever
#   idle   nothing (the default)
#   agent  start qemu-ga on the org.qemu.guest_agent.0 virtio port
#   agentfs  make an ext2 file system of spk.fs.kib= KiB (default 8192) on
#          /dev/vda, mount it at /mnt/data and fill it to spk.fs.fill= percent
#          (default 95) so that the guest agent reports a nearly full file
#          system; prints "SPK-AGENTFS-READY <used%>" (combine: agent,agentfs)
#   net    bring eth0 (the first virtio NIC) up with spk.net.addr=ADDR/PREFIX and
#          ping spk.net.peer=ADDR (the host's end of the tap) every
#          spk.net.interval= seconds (default 0.05) with spk.net.size= bytes of
#          payload (default 1000), forever; the guest's kernel also answers
#          what the host sends (echo requests, ARP), so both directions carry
#          traffic; prints "SPK-NET-UP eth0 ADDR" (or "SPK-NET-NONIC")
#
# Every mode prints "SPK-READY" once the modules are loaded; the guest never
# powers off by itself. The build is cached: OUTDIR/stamp records the hash of
# this script and the kernel version; a matching stamp means nothing to do.
set -euo pipefail

log() { printf 'build-guest: %s\n' "$*" >&2; }
die() { printf 'build-guest: ERROR: %s\n' "$*" >&2; exit 1; }

[[ $# -eq 1 ]] || die "usage: $0 OUTDIR"
OUTDIR=$1
SELF=$(readlink -f "${BASH_SOURCE[0]}")

# Insmod order (each module's own dependencies are added before it).
MODULES=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
         virtio_blk virtio_balloon virtio_console virtio_net)

for b in apt-get apt-cache dpkg-deb cpio gzip ldd sha256sum flock; do
    command -v "$b" >/dev/null || die "$b not found (run tests/rig/host-setup.sh)"
done

# --- which kernel -----------------------------------------------------------
resolve_kernel() {
    apt-cache depends linux-image-cloud-amd64 2>/dev/null \
        | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9].*-cloud-amd64$/ {print $2; exit}'
}
KPKG=$(resolve_kernel || true)
if [[ -z $KPKG ]]; then
    log "linux-image-cloud-amd64 unknown to apt-cache; running apt-get update"
    apt-get update -qq >&2 || die "apt-get update failed"
    KPKG=$(resolve_kernel || true)
fi
[[ -n $KPKG ]] || die "cannot resolve linux-image-cloud-amd64 with apt-cache depends"
KVER=${KPKG#linux-image-}
STAMP="script=$(sha256sum "$SELF" | cut -d' ' -f1)
kernel=$KVER"

stamp_ok() {
    [[ -f $OUTDIR/stamp && -s $OUTDIR/vmlinuz && -s $OUTDIR/initrd.gz ]] \
        && [[ $(<"$OUTDIR/stamp") == "$STAMP" ]]
}

mkdir -p "$(dirname "$OUTDIR")"
OUTDIR=$(readlink -f "$OUTDIR")
# Serialise concurrent builds (parallel test workers) on a lock next to OUTDIR.
exec 9>"$OUTDIR.lock"
flock 9
if stamp_ok; then
    log "cached build in $OUTDIR is current (kernel $KVER)"
    exit 0
fi

START=$SECONDS
WORK=$(mktemp -d "${TMPDIR:-/tmp}/spk-guest-build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
chmod 755 "$WORK"

# --- download and unpack ----------------------------------------------------
log "downloading $KPKG busybox-static qemu-guest-agent"
mkdir -p "$WORK/debs"
# apt's _apt sandbox user must be able to write the download directory.
chown _apt "$WORK/debs" 2>/dev/null || true
(cd "$WORK/debs" && apt-get download -qq "$KPKG" busybox-static qemu-guest-agent >&2) \
    || die "apt-get download failed"
for name in kernel:linux-image busybox:busybox-static qga:qemu-guest-agent; do
    dir=${name%%:*} pat=${name#*:}
    deb=$(find "$WORK/debs" -maxdepth 1 -name "${pat}_*.deb" -print -quit)
    [[ -n $deb ]] || deb=$(find "$WORK/debs" -maxdepth 1 -name "${pat}-*.deb" -print -quit)
    [[ -n $deb ]] || die "no .deb for $pat downloaded"
    dpkg-deb -x "$deb" "$WORK/$dir"
done

KERNEL_IMG=$WORK/kernel/boot/vmlinuz-$KVER
MODDIR=$WORK/kernel/lib/modules/$KVER
[[ -f $KERNEL_IMG ]] || die "no /boot/vmlinuz-$KVER in $KPKG"
[[ -d $MODDIR ]] || die "no /lib/modules/$KVER in $KPKG"

ROOT=$WORK/root
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,run,tmp,var,lib/modules,lib64}
mkdir -p "$ROOT/lib/x86_64-linux-gnu"
ln -s ../run "$ROOT/var/run"
chmod 1777 "$ROOT/tmp"

# --- busybox ----------------------------------------------------------------
install -m 755 "$WORK/busybox/bin/busybox" "$ROOT/bin/busybox"
ln -s busybox "$ROOT/bin/sh"

# --- kernel modules -----------------------------------------------------------
# The .deb carries no modules.dep (depmod runs at install time) and the host may
# lack kmod, so take each module's dependencies from its own "depends=" modinfo
# string and load dependencies first.
declare -A MODPATH=() LOADED=()
while IFS= read -r path; do
    base=${path##*/}
    base=${base%%.ko*}
    MODPATH[${base//-/_}]=$path
done < <(find "$MODDIR/kernel" -name '*.ko*' -type f)
BUILTIN=" "
if [[ -f $MODDIR/modules.builtin ]]; then
    while IFS= read -r path; do
        base=${path##*/}
        base=${base%%.ko*}
        BUILTIN+="${base//-/_} "
    done <"$MODDIR/modules.builtin"
fi
mkdir -p "$WORK/ko"

# unpack_module NAME: decompressed copy in $WORK/ko/NAME.ko (busybox insmod may
# not read compressed modules).
unpack_module() {
    local src=${MODPATH[$1]} dst=$WORK/ko/$1.ko
    case $src in
        *.ko.xz) xz -dc "$src" >"$dst" ;;
        *.ko.zst) zstd -qdc "$src" >"$dst" ;;
        *.ko.gz) gzip -dc "$src" >"$dst" ;;
        *.ko) cp "$src" "$dst" ;;
        *) die "unknown module format: $src" ;;
    esac
}

ORDER=()
add_module() {
    local m=$1 deps d
    [[ -n ${LOADED[$m]:-} ]] && return 0
    if [[ $BUILTIN == *" $m "* ]]; then
        log "module $m is built in"
        LOADED[$m]=builtin
        return 0
    fi
    [[ -n ${MODPATH[$m]:-} ]] || die "module $m is neither built in nor in $KPKG"
    LOADED[$m]=1
    unpack_module "$m"
    deps=$(tr '\0' '\n' <"$WORK/ko/$m.ko" | sed -n 's/^depends=//p' | head -n1)
    for d in ${deps//,/ }; do add_module "${d//-/_}"; done
    ORDER+=("$m")
}
for m in "${MODULES[@]}"; do add_module "$m"; done

: >"$ROOT/lib/modules/order"
for m in "${ORDER[@]}"; do
    mv "$WORK/ko/$m.ko" "$ROOT/lib/modules/$m.ko"
    echo "$m" >>"$ROOT/lib/modules/order"
done
log "modules: ${ORDER[*]:-(all built in)}"

# --- qemu-guest-agent and its libraries ---------------------------------------
QGA=$WORK/qga/usr/sbin/qemu-ga
[[ -x $QGA ]] || die "qemu-ga not found in the qemu-guest-agent package"
install -m 755 "$QGA" "$ROOT/usr/sbin/qemu-ga"
LDD_OUT=$(ldd "$QGA") || die "ldd $QGA failed"
if grep -q 'not found' <<<"$LDD_OUT"; then
    die "libraries of qemu-ga missing on this host:
$(grep 'not found' <<<"$LDD_OUT")"
fi
while read -r a b c _; do
    # "libx.so.1 => /lib/.../libx.so.1 (0x...)", "/lib64/ld-linux-x86-64.so.2 (0x...)",
    # "linux-vdso.so.1 (0x...)"
    if [[ $b == "=>" && $c == /* ]]; then
        cp -L "$c" "$ROOT/lib/x86_64-linux-gnu/${c##*/}"
    elif [[ $a == /* ]]; then
        mkdir -p "$ROOT$(dirname "$a")"
        cp -L "$a" "$ROOT$a"
    fi
done <<<"$LDD_OUT"
[[ -e $ROOT/lib64/ld-linux-x86-64.so.2 ]] || die "dynamic loader not found in ldd output"
mkdir -p "$ROOT/etc/qemu"
: >"$ROOT/etc/qemu/qemu-ga.conf"
cat >"$ROOT/etc/os-release" <<EOF
NAME="spk-rig"
ID=spk-rig
PRETTY_NAME="sensu-plugins-kvm test guest ($KVER)"
VERSION_ID="1"
EOF
echo spk-guest >"$ROOT/etc/hostname"
echo 'root:x:0:0:root:/:/bin/sh' >"$ROOT/etc/passwd"
echo 'root:x:0:' >"$ROOT/etc/group"
: >"$ROOT/etc/fstab"

# --- /init ------------------------------------------------------------------
cat >"$ROOT/init" <<'EOF'
#!/bin/sh
# sensu-plugins-kvm rig guest init (tests/rig/build-guest.sh)
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || true
mkdir -p /dev/pts /dev/shm
hostname spk-guest

while read -r m; do
    insmod "/lib/modules/$m.ko" || echo "SPK-INSMOD-FAILED $m"
done </lib/modules/order

mode=idle
for arg in $(cat /proc/cmdline); do
    case $arg in spk.mode=*) mode=${arg#spk.mode=} ;; esac
done
echo "SPK-READY mode=$mode"

spk_write() {
    # Wait for the disk (module probe is asynchronous).
    i=0
    while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    if [ ! -b /dev/vda ]; then echo "SPK-WRITE-NODISK"; return; fi
    size=$(( $(cat /sys/block/vda/size) / 2048 ))
    # A 1 MiB non-zero pattern (zero writes may be detected and not allocated).
    yes 'spk-rig-write-pattern' | head -c 1048576 >/tmp/pattern
    echo "SPK-WRITE-START size=${size}MiB"
    off=0
    while :; do
        if [ $off -ge $size ]; then off=0; echo "SPK-WRITE-WRAP"; fi
        n=4
        [ $((off + n)) -gt $size ] && n=$((size - off))
        j=0
        while [ $j -lt $n ]; do
            dd if=/tmp/pattern of=/dev/vda bs=1M count=1 seek=$((off + j)) \
                oflag=direct conv=notrunc 2>/dev/null || echo "SPK-WRITE-ERROR at $((off + j))MiB"
            j=$((j + 1))
        done
        off=$((off + n))
        [ $((off % 16)) -eq 0 ] && echo "SPK-WRITE $off"
    done
}

spk_cpu() {
    echo "SPK-CPU-START"
    while :; do :; done
}

spk_agent() {
    port=
    i=0
    while [ -z "$port" ] && [ $i -lt 100 ]; do
        for f in /sys/class/virtio-ports/*/name; do
            [ -f "$f" ] || continue
            if [ "$(cat "$f")" = org.qemu.guest_agent.0 ]; then
                port=${f%/name}
                port=${port##*/}
            fi
        done
        [ -n "$port" ] || { sleep 0.1; i=$((i + 1)); }
    done
    if [ -z "$port" ]; then echo "SPK-AGENT-NOPORT"; return; fi
    i=0
    while [ ! -c "/dev/$port" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    echo "SPK-AGENT-START /dev/$port"
    while :; do
        LD_LIBRARY_PATH=/lib/x86_64-linux-gnu /usr/sbin/qemu-ga -m virtio-serial \
            -p "/dev/$port" -t /run
        echo "SPK-AGENT-EXITED rc=$?"
        sleep 1
    done
}

spk_agentfs() {
    kib=8192 fill=95
    for arg in $(cat /proc/cmdline); do
        case $arg in
            spk.fs.kib=*) kib=${arg#spk.fs.kib=} ;;
            spk.fs.fill=*) fill=${arg#spk.fs.fill=} ;;
        esac
    done
    i=0
    while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    if [ ! -b /dev/vda ]; then echo "SPK-AGENTFS-NODISK"; return; fi
    mke2fs -q -F -m 0 /dev/vda "$kib" >/dev/null 2>&1 || { echo "SPK-AGENTFS-MKFS-FAILED"; return; }
    mkdir -p /mnt/data
    mount -t ext2 /dev/vda /mnt/data || { echo "SPK-AGENTFS-MOUNT-FAILED"; return; }
    # df -k: Filesystem 1K-blocks Used Available Use% Mounted
    set -- $(df -k /mnt/data | tail -n 1)
    want=$(( $2 * fill / 100 - $3 ))
    [ $want -gt 0 ] && dd if=/dev/zero of=/mnt/data/fill bs=1k count=$want 2>/dev/null
    sync
    set -- $(df -k /mnt/data | tail -n 1)
    echo "SPK-AGENTFS-READY $5"
}

spk_net() {
    addr= peer= interval=0.05 size=1000
    for arg in $(cat /proc/cmdline); do
        case $arg in
            spk.net.addr=*) addr=${arg#spk.net.addr=} ;;
            spk.net.peer=*) peer=${arg#spk.net.peer=} ;;
            spk.net.interval=*) interval=${arg#spk.net.interval=} ;;
            spk.net.size=*) size=${arg#spk.net.size=} ;;
        esac
    done
    if [ -z "$addr" ] || [ -z "$peer" ]; then echo "SPK-NET-NOADDR"; return; fi
    i=0
    while [ ! -d /sys/class/net/eth0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    if [ ! -d /sys/class/net/eth0 ]; then echo "SPK-NET-NONIC"; return; fi
    ip link set lo up
    ip addr add "$addr" dev eth0
    ip link set eth0 up
    echo "SPK-NET-UP eth0 $addr"
    while :; do
        ping -q -i "$interval" -s "$size" "$peer" >/dev/null 2>&1
        sleep 1
    done
}

for m in $(echo "$mode" | tr ',' ' '); do
    case $m in
        write) spk_write & ;;
        cpu) spk_cpu & ;;
        agent) spk_agent & ;;
        agentfs) spk_agentfs & ;;
        net) spk_net & ;;
        idle) ;;
        *) echo "SPK-UNKNOWN-MODE $m" ;;
    esac
done

# PID 1 must never exit (that would panic the kernel); reap children forever.
while :; do sleep 3600; done
EOF
chmod 755 "$ROOT/init"

# --- pack -------------------------------------------------------------------
(cd "$ROOT" && find . -print0 | LC_ALL=C sort -z \
    | cpio --null -o -H newc --owner 0:0 --quiet) | gzip -1 >"$WORK/initrd.gz" \
    || die "packing the initramfs failed"

# --- install atomically -------------------------------------------------------
NEW=$OUTDIR.new.$$
rm -rf "$NEW"
mkdir -p "$NEW"
cp "$KERNEL_IMG" "$NEW/vmlinuz"
mv "$WORK/initrd.gz" "$NEW/initrd.gz"
printf '%s\n' "$STAMP" >"$NEW/stamp.tmp"
# `$(<stamp)` strips the trailing newline, so the comparison above matches.
mv "$NEW/stamp.tmp" "$NEW/stamp"
chmod 755 "$NEW"
chmod 644 "$NEW"/*
if [[ -e $OUTDIR ]]; then
    OLD=$OUTDIR.old.$$
    mv "$OUTDIR" "$OLD"
    mv "$NEW" "$OUTDIR"
    rm -rf "$OLD"
else
    mv "$NEW" "$OUTDIR"
fi
log "built $OUTDIR (kernel $KVER, initrd $(du -k "$OUTDIR/initrd.gz" | cut -f1) KiB) in $((SECONDS - START)) s"
