#!/usr/bin/env bash
# Runs one command inside a small QEMU VM with Debian's own kernel, for what this machine's
# kernel may lack: a real kernel sound device (snd-aloop) and traffic shaping (netem, tbf).
#
#   .ci/vm/vm.sh [--timeout SECONDS] [--results DIR] -- COMMAND [ARGS...]
#
# The VM sees the host's / read-only (over virtio-9p, with a tmpfs overlay on top so that
# programs can write), DIR writable at the same path as on the host, and the same working
# folder (/proc, /sys, /dev and /run are the VM's own); so programs built on the host run
# unchanged. COMMAND runs as root with the host's PATH, under `timeout SECONDS`; its output is
# printed here and its exit status is this script's (124 when it timed out; 125 when the VM
# itself failed or hung). The VM always powers off; every wait on this side is bounded too.
#
# Only Debian packages: the kernel is `apt-get download`ed and unpacked into a cache folder
# ($VM_CACHE, default ~/.cache/qwen-asr-realtime-vm), never installed. KVM is not used: some
# CI hosts offer a /dev/kvm that boots no stock kernel, so the VM is emulated (TCG), which
# keeps timers and audio in real time but runs CPU-heavy code several times slower.
set -euo pipefail

timeout_s=300
results=
while [ $# -gt 0 ]; do
    case "$1" in
        --timeout) timeout_s=$2; shift 2 ;;
        --results) results=$2; shift 2 ;;
        --) shift; break ;;
        -h | --help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "vm.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [ $# -eq 0 ]; then
    echo "vm.sh: no command given (see --help)" >&2
    exit 2
fi

# What the VM loads, in this order; dependencies are added by modprobe. snd-aloop's
# parameters make the card hw:Loopback with four substreams per direction.
modules=(virtio_pci 9pnet_virtio 9p overlay virtio-rng snd-aloop sch_netem sch_tbf sch_prio cls_u32)
aloop_params="index=0 id=Loopback pcm_substreams=4"

export DEBIAN_FRONTEND=noninteractive
missing=()
for pkg in qemu-system-x86 busybox-static cpio kmod; do
    dpkg-query -W -f '${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "vm.sh: installing ${missing[*]}" >&2
    # A fresh machine may have no package lists yet.
    timeout 600 apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
        || { timeout 600 apt-get update -qq && timeout 600 apt-get install -y -qq \
            --no-install-recommends "${missing[@]}" >/dev/null; }
fi

cache=${VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qwen-asr-realtime-vm}
mkdir -p "$cache"
# The kernel that bookworm's linux-image-amd64 points at today; a cached one is reused.
kernel_package() {
    apt-cache depends linux-image-amd64 2>/dev/null \
        | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-amd64\)$/\1/p' | head -n 1
}
kpkg=$(kernel_package)
if [ -z "$kpkg" ] && timeout 600 apt-get update -qq; then
    kpkg=$(kernel_package)
fi
if [ -z "$kpkg" ]; then
    # No package lists (offline, or apt-get update not run): any kernel already unpacked.
    kpkg=$(cd "$cache" && ls -d linux-image-* 2>/dev/null | sort -V | tail -n 1 || true)
fi
if [ -z "$kpkg" ]; then
    echo "vm.sh: no linux-image-amd64 package known (run apt-get update)" >&2
    exit 125
fi
kroot=$cache/$kpkg
if [ ! -f "$kroot/.unpacked" ]; then
    echo "vm.sh: fetching $kpkg" >&2
    rm -rf "$kroot" "$cache/dl"
    mkdir -p "$cache/dl"
    (cd "$cache/dl" && timeout 600 apt-get download -q "$kpkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2 || true)
    deb=$(ls "$cache/dl"/*.deb 2>/dev/null | head -n 1 || true)
    if [ -z "$deb" ]; then
        echo "vm.sh: apt-get download $kpkg failed" >&2
        exit 125
    fi
    dpkg-deb -x "$deb" "$kroot"
    rm -rf "$cache/dl"
    kver=$(ls "$kroot/lib/modules" | head -n 1)
    # The package ships no modules.dep (its postinst makes it); modprobe needs one.
    depmod -b "$kroot" "$kver"
    touch "$kroot/.unpacked"
    # Kernels that the archive has since replaced are not needed again.
    find "$cache" -mindepth 1 -maxdepth 1 -name 'linux-image-*' ! -name "$kpkg" -exec rm -rf {} +
fi
kver=$(ls "$kroot/lib/modules" | head -n 1)
kernel=$kroot/boot/vmlinuz-$kver

run=$(mktemp -d)
trap '[ -n "${VM_KEEP:-}" ] || rm -rf "$run"' EXIT

# The initramfs: static busybox, the modules (insmod lines in dependency order, once each),
# and /init.
ird=$run/initramfs
mkdir -p "$ird"/{bin,dev,proc,sys,lower,upper,newroot,lib/modules}
cp /bin/busybox "$ird/bin/busybox"
: > "$run/insmod"
for m in "${modules[@]}"; do
    modprobe -d "$kroot" -S "$kver" --show-depends "$m" | while read -r cmd path _; do
        [ "$cmd" = insmod ] || continue
        name=$(basename "$path")
        grep -q " /lib/modules/$name\$" "$run/insmod" 2>/dev/null && continue
        cp "$path" "$ird/lib/modules/$name"
        echo "insmod /lib/modules/$name" >> "$run/insmod"
    done
done
sed -i "s|^insmod /lib/modules/snd-aloop.ko\$|& $aloop_params|" "$run/insmod"

# Where the host's pieces go inside the VM: the same paths.
workdir=$(pwd -P)
if [ -n "$results" ]; then
    mkdir -p "$results"
    results=$(cd "$results" && pwd -P)
fi
# The command, run by the VM's init in the host's root (chroot), as a script on the initramfs.
{
    echo '#!/bin/sh'
    printf 'export PATH=%q HOME=%q LANG=C.UTF-8 TERM=dumb\n' "$PATH" "${HOME:-/root}"
    [ -n "${CI:-}" ] && printf 'export CI=%q\n' "$CI"
    [ -n "$results" ] && printf 'export VM_RESULTS=%q\n' "$results"
    printf 'cd %q || exit 125\n' "$workdir"
    printf 'exec timeout -k 5 %q' "$timeout_s"
    printf ' %q' "$@"
    printf '\n'
} > "$ird/command"
chmod +x "$ird/command"

cat > "$ird/init" <<EOF
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
$(cat "$run/insmod")
# 9p's default 8 KiB messages make reading the host's binaries slow; 512 KiB is the most
# virtio-9p transfers at once. The read-only root is cached; the results folder is not, so
# that what the command writes is on the host at once (and not lost if the VM dies).
o=trans=virtio,version=9p2000.L,msize=512000
mount -t 9p -o ro,cache=loose,\$o hostroot /lower
mount -t tmpfs -o size=512m tmpfs /upper
mkdir -p /upper/data /upper/work
mount -t overlay -o lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work overlay /newroot
for fs in proc:proc sysfs:sys devtmpfs:dev tmpfs:run; do
    mount -t \${fs%%:*} \${fs%%:*} /newroot/\${fs#*:}
done
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
ln -s /proc/self/fd /newroot/dev/fd
ln -s fd/0 /newroot/dev/stdin; ln -s fd/1 /newroot/dev/stdout; ln -s fd/2 /newroot/dev/stderr
mount -t tmpfs tmpfs /newroot/dev/shm
if [ -n "$results" ]; then
    mkdir -p "/newroot$results"
    mount -t 9p -o \$o results "/newroot$results"
fi
ip link set lo up
cp /command /newroot/tmp/.vm-command
echo; echo vm-command-start > /dev/console
chroot /newroot /tmp/.vm-command < /dev/console > /dev/console 2>&1
echo "vm-exit-status=\$?" > /dev/console
sync
poweroff -f
EOF
chmod +x "$ird/init"
(cd "$ird" && find . | cpio -o -H newc --quiet | gzip -1) > "$run/initramfs.gz"

virtfs=(-virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap")
if [ -n "$results" ]; then
    virtfs+=(-virtfs "local,path=$results,mount_tag=results,security_model=none")
fi
# The host's side of the bound: the command's own timeout, plus boot and power-off.
# A boot can fail before the command starts (under TCG on a busy host the kernel's timer
# checks have been seen to panic): that is retried, a failure once the command ran is not.
boot() {
    set +e
    timeout -k 10 "$((timeout_s + 120))" qemu-system-x86_64 \
        -accel tcg -cpu max -smp 2 -m 1G \
        -no-reboot -nographic -nic none -monitor none -serial stdio \
        -device virtio-rng-pci \
        -kernel "$kernel" -initrd "$run/initramfs.gz" \
        -append "console=ttyS0 quiet loglevel=3 panic=-1 oops=panic no_timer_check rdinit=/init" \
        "${virtfs[@]}" < /dev/null 2>&1 \
        | sed -u 's/\r//g' | tee "$run/console" \
        | sed -u -n '/vm-command-start$/,/^vm-exit-status=/{/^vm-/!p}'
    status=${PIPESTATUS[0]}
    set -e
}
for attempt in 1 2 3; do
    boot
    grep -q 'vm-command-start$' "$run/console" && break
    echo "vm.sh: boot $attempt failed before the command started (qemu exit $status); its console:" >&2
    cat "$run/console" >&2
done
rc=$(sed -n 's/^vm-exit-status=\([0-9]*\)$/\1/p' "$run/console" | tail -n 1)
if [ -z "$rc" ]; then
    echo "vm.sh: the VM ended without the command's exit status (qemu exit $status); its console:" >&2
    cat "$run/console" >&2
    exit 125
fi
exit "$rc"
