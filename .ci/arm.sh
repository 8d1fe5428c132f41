#!/usr/bin/env bash
# ARM builds for Raspberry Pi, run by .ci/run on every CI run.
#
# Cross-builds the library and the examples a Pi runs (mic, transcribe_file) in release mode for
#   aarch64-unknown-linux-gnu       Pi 3/4/5, Zero 2 W on a 64-bit OS
#   armv7-unknown-linux-gnueabihf   Pi 2/3/4, Zero 2 W on a 32-bit OS
# runs the whole test suite for both under qemu-user (the ALSA capture tests too: they point
# alsa-lib at a file PCM through environment variables, which the ARM libasound reads as well),
# runs both examples against the bundled emulator under qemu (mic through an ALSA file PCM) and
# reports their size and peak RSS, and checks that arm-unknown-linux-gnueabihf (ARMv6: Pi
# Zero/1) compiles and links. Everything is built with the feature `opus` (ARM_FEATURES): libopus
# is C, compiled from source by cmake with each target's cross compiler, so the ARM build is
# where a broken cross build of it shows (NEON intrinsics on 32-bit ARM did, see Cargo.toml),
# and the Opus tests (the encoder, the emulator decoding Opus sessions, opusdec decoding what
# it received) run under qemu with the rest of the suite.
#
# Why Debian's own Rust (rustc-web) and not rustup: rustup's ARM std components are not reliably
# reachable from CI, while Debian ships the aarch64 std as libstd-rust-web-dev:arm64 and the std
# source (rust-web-src) for -Zbuild-std on 32-bit ARM. Everything is apt. See README,
# "Build for a Raspberry Pi", for the same route by hand and for `cross`.
#
# Every setting lives in this script's environment: no .cargo/config.toml, and a target dir of
# its own so host builds are not invalidated. Idempotent: a second run installs nothing and
# rebuilds only what changed. Binaries: target/arm/aarch64-unknown-linux-gnu/release/examples/
# and target/arm/build-std/{armv7,arm}-unknown-linux-gnueabihf/release/examples/.
#
# Needs Debian 12 (bookworm) on x86_64, and root (or password-less sudo) for apt.
# Leaves arm64 and armhf enabled as dpkg foreign architectures.
#
# Environment knobs:
#   ARM_TARGET_DIR      cargo target dir for the ARM builds          (default: target/arm)
#   ARM_ARMV6=0         skip the ARMv6 build                          (default: 1)
#   ARM_TEST_TIMEOUT_S  limit for each `cargo test` under qemu        (default: 900)
#   ARM_AARCH64_STD     auto | build-std: how aarch64 gets its std    (default: auto)
#   ARM_TEST_SKIP       test names to skip under qemu, space-separated (default: none; each
#                       skip is announced in a banner, for a known qemu-only flake)
#   ARM_FEATURES        cargo features of the builds and tests       (default: opus)

set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

export DEBIAN_FRONTEND=noninteractive
ARM_TARGET_DIR=${ARM_TARGET_DIR:-$ROOT/target/arm}
ARM_ARMV6=${ARM_ARMV6:-1}
ARM_TEST_TIMEOUT_S=${ARM_TEST_TIMEOUT_S:-900}
ARM_AARCH64_STD=${ARM_AARCH64_STD:-auto}
ARM_TEST_SKIP=${ARM_TEST_SKIP:-}
ARM_FEATURES=${ARM_FEATURES-opus}
FEATURES=()
[[ -z $ARM_FEATURES ]] || FEATURES=(--features "$ARM_FEATURES")

AARCH64=aarch64-unknown-linux-gnu
ARMV7=armv7-unknown-linux-gnueabihf
ARMV6=arm-unknown-linux-gnueabihf

# Debian's toolchain, called directly: rustup's proxies stay first on PATH for the host build,
# and going around them needs no `rustup toolchain link` on the machine.
CARGO=/usr/bin/cargo
export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
# CI starts from a fresh machine: incremental state would only cost disk and time.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
unset RUSTUP_TOOLCHAIN QEMU_LD_PREFIX RUSTFLAGS CARGO_BUILD_TARGET

SUDO=()
if [[ $EUID -ne 0 ]]; then
    SUDO=(sudo -n)
fi
# --no-remove: never let a multiarch install take a host package away; fail instead.
APT_INSTALL=(apt-get install -y -q --no-install-recommends --no-remove
    -o DPkg::Lock::Timeout=300 -o Dpkg::Use-Pty=0)

HOST_ARCH=$(dpkg --print-architecture)
declare -A SSL_ROUTE=()
APT_UPDATED=0
CURRENT_STEP=setup
TIMINGS=()
REPORT=()
# The README's size table, filled as the steps measure: keys "TARGET EXAMPLE", values KiB.
declare -A SIZE_KIB=() RSS_KIB=() FLOOR_KIB=()

log() { printf '[arm] %s\n' "$*"; }

banner() {
    printf '\n%s\n' "########################################################################" >&2
    printf '### %s\n' "$@" >&2
    printf '%s\n\n' "########################################################################" >&2
}

die() {
    banner "ARM CI FAILED in step '$CURRENT_STEP':" "$@"
    exit 1
}

trap 'rc=$?; banner "ARM CI FAILED in step '"'"'$CURRENT_STEP'"'"' (exit $rc, line $LINENO)"' ERR

# CPU seconds used so far by this script's finished children (cargo, rustc, qemu, apt...):
# on a shared machine the wall time of a step says little, its CPU time does.
cpu_s() {
    awk -v hz="$CLK_TCK" '{ printf "%d", ($16 + $17) / hz }' /proc/$$/stat
}
CLK_TCK=$(getconf CLK_TCK)

# step NAME FUNCTION [ARGS...]: runs one step and records its wall and CPU time.
step() {
    local name=$1
    shift
    local t0=$SECONDS c0
    c0=$(cpu_s)
    CURRENT_STEP=$name
    printf '\n[arm] ==> %s\n' "$name"
    "$@"
    local dt=$((SECONDS - t0)) dc=$(($(cpu_s) - c0))
    printf '[arm] <== %s: %d s wall, %d s CPU\n' "$name" "$dt" "$dc"
    TIMINGS+=("$(printf '%-56s %5d s wall %5d s CPU' "$name" "$dt" "$dc")")
}

# --- apt helpers -------------------------------------------------------------------------------

installed_version() { # pkg[:arch] -> installed version, empty if none; a bare name means the
    # host's architecture or arch all (dpkg-query alone lists every architecture's instance)
    local name=${1%%:*} arch=""
    [[ $1 == *:* ]] && arch=${1#*:}
    dpkg-query -W -f='${db:Status-Abbrev} ${Architecture} ${Version}\n' "$name" 2>/dev/null |
        awk -v a="$arch" -v h="$HOST_ARCH" \
            '$1 == "ii" && (a != "" ? $2 == a : ($2 == h || $2 == "all")) { print $3; exit }' || true
}

candidate_version() { # pkg[:arch] -> version apt would install, empty if none
    apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ && $2 != "(none)" { print $2 }'
}

available() { # pkg[:arch] version -> does an index hold exactly this version?
    # (not `apt-cache show pkg=ver`: it exits 0 when the version is missing)
    apt-cache madison "$1" 2>/dev/null | awk -F' *[|] *' -v v="$2" '$2 == v { found = 1 } END { exit !found }'
}

apt_update() {
    local rc=0
    "${SUDO[@]}" apt-get update -q -o DPkg::Lock::Timeout=300 </dev/null || rc=$?
    APT_UPDATED=1
    if ((rc != 0)); then
        banner "WARNING: apt-get update exited $rc (see the E: lines above)." \
            "A broken index (seen: bookworm-security binary-armhf 'File has unexpected size ...'" \
            "'Mirror sync in progress?') leaves apt with older package versions for that" \
            "architecture. Continuing: every package below is pinned to an exact version and" \
            "checked; where armhf lags, the documented fallbacks are used and announced."
    fi
}

ensure_foreign_arch() {
    if ! dpkg --print-foreign-architectures | grep -qx "$1"; then
        log "adding dpkg architecture $1"
        "${SUDO[@]}" dpkg --add-architecture "$1"
        # One update per architecture, arm64 first: when arm64 and armhf were added together and
        # the armhf security index failed, apt dropped the arm64 security index as well.
        apt_update
    fi
}

# Decides what to install and how each target gets std and OpenSSL. Sets PKGS, RUST_VER,
# AARCH64_STD and SSL_ROUTE[arm64|armhf] (apt | sysroot).
plan() {
    RUST_VER=$(installed_version rustc-web)
    [[ -n $RUST_VER ]] || RUST_VER=$(candidate_version rustc-web)
    [[ -n $RUST_VER ]] || die "apt has no rustc-web (Debian 12 bookworm: main has 1.85, bookworm-security newer)."

    # cmake: libopus's build (it needs 3.16; bookworm has 3.25). opus-tools: the tests run the
    # host's opusdec and opusinfo on what the ARM code wrote.
    PKGS=("rustc-web=$RUST_VER" cargo-web "rust-web-src=$RUST_VER"
        pkg-config file time qemu-user cmake opus-tools
        gcc-aarch64-linux-gnu libc6-dev-arm64-cross
        gcc-arm-linux-gnueabihf libc6-dev-armhf-cross
        libasound2-dev:arm64 libasound2-dev:armhf)

    # aarch64: Debian's prebuilt std if it is the compiler's exact version (Multi-Arch: same),
    # else build it from rust-web-src like the 32-bit targets.
    AARCH64_STD=build-std
    if [[ $ARM_AARCH64_STD != build-std ]] &&
        { [[ $(installed_version libstd-rust-web-dev:arm64) == "$RUST_VER" ]] ||
            available libstd-rust-web-dev:arm64 "$RUST_VER"; }; then
        AARCH64_STD=prebuilt
        PKGS+=("libstd-rust-web-dev:arm64=$RUST_VER")
    fi

    # OpenSSL: libssl-dev is Multi-Arch: same, so the ARM one must be the host's exact version.
    # When the ARM index lags, unpack it into a private sysroot instead (step_openssl_sysroot).
    local ssl_ver arch
    ssl_ver=$(installed_version libssl-dev)
    [[ -n $ssl_ver ]] || ssl_ver=$(candidate_version libssl-dev)
    for arch in arm64 armhf; do
        if [[ $(installed_version "libssl-dev:$arch") == "$ssl_ver" ]] ||
            available "libssl-dev:$arch" "$ssl_ver"; then
            SSL_ROUTE[$arch]=apt
            PKGS+=("libssl-dev:$arch=$ssl_ver")
        else
            SSL_ROUTE[$arch]=sysroot
        fi
    done
    SSL_HOST_VER=$ssl_ver
}

missing_packages() {
    local spec name want have
    for spec in "${PKGS[@]}"; do
        name=${spec%%=*}
        want=""
        [[ $spec == *=* ]] && want=${spec#*=}
        have=$(installed_version "$name")
        if [[ -z $have || (-n $want && $have != "$want") ]]; then
            printf '%s\n' "$spec"
        fi
    done
}

# --- steps -------------------------------------------------------------------------------------

step_packages() {
    ensure_foreign_arch arm64
    ensure_foreign_arch armhf

    local missing=()
    plan
    mapfile -t missing < <(missing_packages)
    if ((${#missing[@]} > 0)) && ((APT_UPDATED == 0)); then
        apt_update
        plan
        mapfile -t missing < <(missing_packages)
    fi
    if ((${#missing[@]} > 0)); then
        log "installing: ${missing[*]}"
        "${SUDO[@]}" "${APT_INSTALL[@]}" "${missing[@]}" </dev/null ||
            die "apt-get install failed for: ${missing[*]}" \
                "A Multi-Arch: same package (libc6, libasound2, libssl, libstd-rust-web) must have the" \
                "same version for amd64 and the ARM architecture; a lagging ARM index (see any apt-get" \
                "update warning above) is the usual cause. Re-run when the mirror has synced."
    else
        log "all packages already installed"
    fi

    local still
    still=$(missing_packages)
    [[ -z $still ]] || die "still missing after apt-get install: $still"

    log "aarch64 std: $AARCH64_STD; armv7/armv6 std: build-std (rust-web-src $RUST_VER)"
    log "OpenSSL for arm64: ${SSL_ROUTE[arm64]}, for armhf: ${SSL_ROUTE[armhf]} (host libssl-dev $SSL_HOST_VER)"
    local arch
    for arch in arm64 armhf; do
        if [[ ${SSL_ROUTE[$arch]} == sysroot ]]; then
            banner "NOTE: libssl-dev:$arch $SSL_HOST_VER (the host's version) is not in apt's $arch index," \
                "so it cannot be co-installed. Fallback: unpacking libssl-dev:$arch into a private" \
                "sysroot and pointing openssl-sys and qemu at it (documented in .ci/arm.sh)."
        fi
    done
}

# Unpacks libssl-dev + libssl3 for one architecture into $ARM_TARGET_DIR/sysroot-<arch>.
openssl_sysroot() {
    local arch=$1 triplet=$2
    local dir=$ARM_TARGET_DIR/sysroot-$arch
    local ver
    ver=$(candidate_version "libssl-dev:$arch")
    [[ -n $ver ]] || die "apt has no libssl-dev:$arch at all: cannot build the $arch targets with OpenSSL."
    if [[ $(cat "$dir/.unpacked" 2>/dev/null) != "$ver" ]]; then
        rm -rf "$dir"
        mkdir -p "$dir/debs"
        (cd "$dir/debs" && apt-get download -q -o APT::Sandbox::User=root \
            "libssl-dev:$arch=$ver" "libssl3:$arch=$ver" </dev/null)
        local deb
        for deb in "$dir"/debs/*.deb; do
            dpkg-deb -x "$deb" "$dir"
        done
        # openssl-sys takes one include dir; Debian keeps configuration.h in the multiarch one.
        cp -n "$dir/usr/include/$triplet/openssl/"* "$dir/usr/include/openssl/"
        printf '%s' "$ver" >"$dir/.unpacked"
        log "unpacked libssl-dev:$arch $ver into $dir"
    else
        log "libssl-dev:$arch $ver already unpacked in $dir"
    fi
}

step_openssl_sysroot() {
    if [[ ${SSL_ROUTE[arm64]} == sysroot ]]; then
        openssl_sysroot arm64 aarch64-linux-gnu
    fi
    if [[ ${SSL_ROUTE[armhf]} == sysroot ]]; then
        openssl_sysroot armhf arm-linux-gnueabihf
    fi
    if [[ ${SSL_ROUTE[arm64]} == apt && ${SSL_ROUTE[armhf]} == apt ]]; then
        log "not needed: libssl-dev:arm64 and libssl-dev:armhf come from apt"
    fi
}

# Linker, runner, C compiler and pkg-config for each target, as target-suffixed variables so
# the host build in the same environment would be untouched.
setup_env() {
    export PKG_CONFIG_ALLOW_CROSS=1

    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
    export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
    export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
    export PKG_CONFIG_LIBDIR_aarch64_unknown_linux_gnu=/usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig

    local t
    for t in armv7_unknown_linux_gnueabihf arm_unknown_linux_gnueabihf; do
        export "CARGO_TARGET_${t^^}_LINKER=arm-linux-gnueabihf-gcc"
        export "CC_$t=arm-linux-gnueabihf-gcc"
        export "AR_$t=arm-linux-gnueabihf-ar"
        export "PKG_CONFIG_LIBDIR_$t=/usr/lib/arm-linux-gnueabihf/pkgconfig:/usr/share/pkgconfig"
    done

    # Plain qemu-user, no -L: the multiarch libc6:arm64/armhf that libasound2 pulls in installs
    # the dynamic loader at its standard path. `-L /usr/<triplet>` mixes the cross libc with the
    # multiarch one and hangs as soon as a test thread starts.
    RUNNER_aarch64=(qemu-aarch64)
    RUNNER_armv7=(qemu-arm)
    if [[ ${SSL_ROUTE[arm64]} == sysroot ]]; then
        local lib=$ARM_TARGET_DIR/sysroot-arm64/usr/lib/aarch64-linux-gnu
        export AARCH64_UNKNOWN_LINUX_GNU_OPENSSL_LIB_DIR=$lib
        export AARCH64_UNKNOWN_LINUX_GNU_OPENSSL_INCLUDE_DIR=$ARM_TARGET_DIR/sysroot-arm64/usr/include
        RUNNER_aarch64+=(-E "LD_LIBRARY_PATH=$lib")
    fi
    if [[ ${SSL_ROUTE[armhf]} == sysroot ]]; then
        local lib=$ARM_TARGET_DIR/sysroot-armhf/usr/lib/arm-linux-gnueabihf
        for t in ARMV7_UNKNOWN_LINUX_GNUEABIHF ARM_UNKNOWN_LINUX_GNUEABIHF; do
            export "${t}_OPENSSL_LIB_DIR=$lib"
            export "${t}_OPENSSL_INCLUDE_DIR=$ARM_TARGET_DIR/sysroot-armhf/usr/include"
        done
        RUNNER_armv7+=(-E "LD_LIBRARY_PATH=$lib")
    fi
    # cargo splits the runner on spaces; the paths above contain none unless the checkout does.
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="${RUNNER_aarch64[*]}"
    export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_RUNNER="${RUNNER_armv7[*]}"
}

step_versions() {
    local msrv rustc_ver
    msrv=$(sed -n 's/^rust-version *= *"\(.*\)"/\1/p' Cargo.toml)
    rustc_ver=$("$RUSTC" --version | awk '{ print $2 }')
    log "rustc:   $("$RUSTC" --version) (sysroot $("$RUSTC" --print sysroot)); crate MSRV ${msrv:-unset}"
    log "cargo:   $("$CARGO" --version)"
    log "rustup:  $(rustc --version 2>/dev/null || echo 'no rustc on PATH') is what the host build uses"
    log "gcc:     $(aarch64-linux-gnu-gcc --version | head -n1); $(arm-linux-gnueabihf-gcc --version | head -n1)"
    log "cmake:   $(cmake --version | head -n1) (libopus); features: ${ARM_FEATURES:-none}"
    log "qemu:    $(qemu-aarch64 --version | head -n1)"
    log "libs:    libasound2-dev:arm64 $(installed_version libasound2-dev:arm64)," \
        "libasound2-dev:armhf $(installed_version libasound2-dev:armhf)"
    local arch ver
    for arch in arm64 armhf; do
        if [[ ${SSL_ROUTE[$arch]} == sysroot ]]; then
            ver="$(cat "$ARM_TARGET_DIR/sysroot-$arch/.unpacked") (private sysroot)"
        else
            ver=$(installed_version "libssl-dev:$arch")
        fi
        log "OpenSSL: libssl-dev:$arch $ver"
    done
    if [[ -n $msrv ]] && [[ $(printf '%s\n%s\n' "$msrv" "$rustc_ver" | sort -V | head -n1) != "$msrv" ]]; then
        die "Debian's rustc $rustc_ver is older than the crate's MSRV $msrv."
    fi
    [[ -d $("$RUSTC" --print sysroot)/lib/rustlib/src/rust/library ]] ||
        die "rust-web-src does not provide the std source at \$(rustc --print sysroot)/lib/rustlib/src/rust."
}

uses_build_std() { # TARGET
    [[ $1 != "$AARCH64" || $AARCH64_STD != prebuilt ]]
}

# Where cargo puts TARGET's output. The -Zbuild-std targets get a target dir of their own: they
# need RUSTC_BOOTSTRAP=1, which build scripts watch (proc-macro2, thiserror), so sharing the
# host-side build units with the aarch64 build would rebuild them, and everything after them,
# on every switch between the two.
target_dir() { # TARGET
    if uses_build_std "$1"; then
        echo "$ARM_TARGET_DIR/build-std"
    else
        echo "$ARM_TARGET_DIR"
    fi
}

# cargo_cmd TARGET SUBCOMMAND ARGS...: sets CMD to cargo for one ARM target, with -Zbuild-std
# where Debian has no prebuilt std for it (RUSTC_BOOTSTRAP=1 lets the stable compiler take -Z).
# --locked like the host build in .ci/run (it holds for std's own lock file too).
cargo_cmd() {
    local target=$1 sub=$2
    shift 2
    local zflags=()
    CMD=(env "CARGO_TARGET_DIR=$(target_dir "$target")")
    if uses_build_std "$target"; then
        CMD+=(RUSTC_BOOTSTRAP=1)
        zflags=("-Zbuild-std=std,panic_abort")
        # Tests at opt-level 0 ran ~15x slower under qemu-arm than under qemu-aarch64 (2.5 min
        # for the armv7 suite, seconds per resampler test): AArch32 VFP emulation on top of an
        # unoptimized std and compiler_builtins. opt-level 1 keeps debug assertions and overflow
        # checks, so the tests check the same things.
        [[ $sub == test ]] && CMD+=(CARGO_PROFILE_DEV_OPT_LEVEL=1)
    fi
    # Test builds: line tables are enough for a panic's file:line, and full debug info was a
    # large part of the test builds' compile and link time.
    [[ $sub == test ]] && CMD+=(CARGO_PROFILE_DEV_DEBUG=line-tables-only)
    CMD+=("$CARGO" "$sub" "${zflags[@]}" --locked --target "$target" "$@")
}

cargo_arm() {
    cargo_cmd "$@"
    "${CMD[@]}"
}

list_examples() {
    local f
    for f in examples/*.rs examples/*/main.rs; do
        [[ -e $f ]] || continue
        if [[ $f == */main.rs ]]; then
            basename "$(dirname "$f")"
        else
            basename "$f" .rs
        fi
    done
}

step_build() { # TARGET
    local ex args=()
    for ex in $(deploy_examples); do
        args+=(--example "$ex")
    done
    log "release examples: ${args[*]:-none yet (examples/ is empty): the library only}"
    cargo_arm "$1" build --release --lib "${FEATURES[@]}" "${args[@]}"
}

step_test_compile() { # TARGET
    cargo_arm "$1" test --no-run "${FEATURES[@]}"
}

step_test_run() { # TARGET
    local name skip=()
    for name in $ARM_TEST_SKIP; do
        skip+=(--skip "$name")
    done
    if ((${#skip[@]} > 0)); then
        banner "SKIPPING under qemu, on request (ARM_TEST_SKIP): $ARM_TEST_SKIP" \
            "These tests still run in the host suite; remove them from ARM_TEST_SKIP once fixed."
        skip=(-- "${skip[@]}")
    fi
    cargo_cmd "$1" test --no-fail-fast "${FEATURES[@]}" "${skip[@]}"
    # timeout kills its whole process group (cargo and qemu) if a test hangs under emulation.
    timeout -k 10 "$ARM_TEST_TIMEOUT_S" "${CMD[@]}" ||
        die "the $1 test suite failed under qemu, or hit ARM_TEST_TIMEOUT_S=$ARM_TEST_TIMEOUT_S s; see above."
}

# The examples a Pi user deploys (mic, transcribe_file), or every example while those do not
# exist yet. Only these are built in release mode: each release binary is a full LTO link. The
# others are still compiled (in the test profile) by `cargo test`.
deploy_examples() {
    local ex found=0
    for ex in mic transcribe_file; do
        if [[ -f examples/$ex.rs ]]; then
            echo "$ex"
            found=1
        fi
    done
    ((found)) || list_examples
}

step_sizes() {
    local target strip ex bin stripped size_kib
    for target in "$AARCH64" "$ARMV7" "$ARMV6"; do
        [[ $target == "$ARMV6" && $ARM_ARMV6 == 0 ]] && continue
        [[ $target == "$AARCH64" ]] && strip=aarch64-linux-gnu-strip || strip=arm-linux-gnueabihf-strip
        for ex in $(deploy_examples); do
            bin=$(target_dir "$target")/$target/release/examples/$ex
            [[ -f $bin ]] || die "example binary $bin is missing after the build."
            stripped=$(target_dir "$target")/$target/release/examples/.$ex.stripped
            "$strip" -o "$stripped" "$bin"
            log "$target $ex: $bin"
            log "  $(file -b "$bin")"
            log "  needs: $(readelf -d "$bin" | sed -n 's/.*NEEDED.*\[\(.*\)\]/\1/p' | paste -sd ' ')," \
                "glibc >= $(readelf -V -W "$bin" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n1 | cut -d_ -f2)"
            [[ $target == "$AARCH64" ]] || log "  $(readelf -A "$bin" | grep -m1 'Tag_CPU_arch:' | tr -s ' ' || true)"
            size_kib=$(($(stat -c %s "$stripped") / 1024))
            log "  size: $(stat -c %s "$bin") bytes as built, $(stat -c %s "$stripped") bytes stripped ($size_kib KiB)"
            REPORT+=("$(printf 'size  %-31s %-16s %6d KiB stripped' "$target" "$ex" "$size_kib")")
            SIZE_KIB["$target $ex"]=$size_kib
        done
    done
    if [[ -z $(list_examples) ]]; then
        log "no example binary to measure yet (examples/ is empty)"
    fi
}

# peak_rss_kib FILE: "Maximum resident set size" from a `/usr/bin/time -v` report.
peak_rss_kib() {
    awk -F': ' '/Maximum resident set size/ { print $2 }' "$1"
}

# run_measured NAME RUNNER... -- records NAME's output, exit status and peak RSS in $out.
run_measured() {
    local name=$1 rc=0
    shift
    log "running: $*"
    /usr/bin/time -v -o "$out/$name.time" "$@" </dev/null >"$out/$name.out" 2>"$out/$name.err" || rc=$?
    sed 's/^/[arm]   | /' "$out/$name.err" "$out/$name.out" | tail -n 8
    ((rc < 128)) || die "$name died from signal $((rc - 128)) under qemu."
    ((rc == 0)) || die "$name exited $rc under qemu (output above)."
    log "$name: peak RSS $(peak_rss_kib "$out/$name.time") KiB," \
        "wall $(awk -F': ' '/Elapsed \(wall clock\)/ { print $2 }' "$out/$name.time") (m:ss)"
}

# The release examples under qemu, with their peak RSS next to qemu's own floor (a C program
# that only returns): transcribe_file streams the shipped WAV to the bundled emulator, and mic
# captures the same audio through an ALSA file PCM (as .ci/run does on the host), so both must
# print the same digests. The RSS includes the in-process emulator and qemu's translation cache.
step_examples_under_qemu() {
    local target=$1 qemu=$2 cc=$3
    local -n runner=$4
    local dir out
    dir=$(target_dir "$target")/$target/release/examples
    out=$(target_dir "$target")/$target/qemu-run
    local wav floor
    mkdir -p "$out"
    printf 'int main(void) { return 0; }\n' >"$out/true.c"
    "$cc" -O2 -o "$out/true" "$out/true.c"
    /usr/bin/time -v -o "$out/true.time" "$qemu" "$out/true"
    floor=$(peak_rss_kib "$out/true.time")
    log "qemu's floor (a C program that only returns): $floor KiB"

    wav=$(find examples -name '*.wav' | sort | head -n1)
    if [[ ! -f $dir/transcribe_file || -z $wav ]] || ! grep -rq -- '--emulator' examples/; then
        local ex
        for ex in $(list_examples); do
            run_measured "$ex" "${runner[@]}" "$dir/$ex" --help
            REPORT+=("$(printf 'rss   %-31s %-16s %6d KiB peak (qemu floor %d KiB), --help' \
                "$target" "$ex" "$(peak_rss_kib "$out/$ex.time")" "$floor")")
        done
        return 0
    fi

    run_measured transcribe_file "${runner[@]}" "$dir/transcribe_file" --emulator "$wav"
    RSS_KIB["$target transcribe_file"]=$(peak_rss_kib "$out/transcribe_file.time")
    FLOOR_KIB[$target]=$floor
    REPORT+=("$(printf 'rss   %-31s %-16s %6d KiB peak (qemu floor %d KiB), --emulator %s' \
        "$target" transcribe_file "$(peak_rss_kib "$out/transcribe_file.time")" "$floor" "$wav")")
    [[ -f $dir/mic ]] || return 0

    # The WAV's data as a raw file behind an ALSA `file` PCM; mic stops after its duration.
    local channels rate seconds
    channels=$(od -An -t u2 -j 22 -N 2 "$wav" | tr -d ' ')
    rate=$(od -An -t u4 -j 24 -N 4 "$wav" | tr -d ' ')
    tail -c +45 "$wav" >"$out/capture.raw"
    seconds=$(awk -v b="$(stat -c %s "$out/capture.raw")" -v r="$rate" -v c="$channels" \
        'BEGIN { printf "%.1f", int(b / (2 * r * c) * 10) / 10 }')
    mkdir -p "$out/xdg/alsa"
    printf 'pcm.ci_capture { type file slave.pcm "null" file "/dev/null" infile "%s" format "raw" }\n' \
        "$out/capture.raw" >"$out/xdg/alsa/asoundrc"
    XDG_CONFIG_HOME=$out/xdg run_measured mic "${runner[@]}" "$dir/mic" --emulator \
        --device ci_capture --seconds "$seconds"
    REPORT+=("$(printf 'rss   %-31s %-16s %6d KiB peak (qemu floor %d KiB), --emulator, ALSA file PCM' \
        "$target" mic "$(peak_rss_kib "$out/mic.time")" "$floor")")
    RSS_KIB["$target mic"]=$(peak_rss_kib "$out/mic.time")
    if ! cmp -s "$out/transcribe_file.out" "$out/mic.out" || [[ ! -s $out/mic.out ]]; then
        die "$target: mic through ALSA did not print the digests transcribe_file printed" \
            "($out/mic.out vs $out/transcribe_file.out)."
    fi
    log "$target: mic through ALSA and transcribe_file printed the same digests"
}

# The README's table of sizes and peak RSS ("What is verified here"), from this run's
# measurements, with the commit they belong to: the README carries no figures of its own, which
# went stale as the code grew. Unmeasured cells (ARMv6 is not run; a step skipped) stay empty.
readme_table() {
    local commit ex target cell row
    commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "unknown (not a git checkout)")
    if [[ $commit != unknown* ]] && ! git -C "$ROOT" diff --quiet HEAD -- 2>/dev/null; then
        commit+=" plus uncommitted changes"
    fi
    printf 'Sizes and peak RSS, measured at commit %s:\n' "$commit"
    printf '| | aarch64 | armv7 | ARMv6 |\n| --- | --- | --- | --- |\n'
    for ex in $(deploy_examples); do
        row="| \`$ex\`, stripped |"
        for target in "$AARCH64" "$ARMV7" "$ARMV6"; do
            cell=${SIZE_KIB["$target $ex"]:-}
            row+=" ${cell:+$cell KiB} |"
        done
        printf '%s\n' "$row"
    done
    for ex in transcribe_file mic; do
        case $ex in
        transcribe_file) row="| peak RSS under qemu, \`transcribe_file --emulator\` (qemu's own floor) |" ;;
        mic) row="| peak RSS under qemu, \`mic --emulator\`, ALSA file PCM (qemu's own floor) |" ;;
        esac
        for target in "$AARCH64" "$ARMV7"; do
            cell=${RSS_KIB["$target $ex"]:-}
            if [[ -n $cell ]]; then
                row+=$(awk -v r="$cell" -v f="${FLOOR_KIB[$target]:-0}" \
                    'BEGIN { printf " %.1f MiB (%.1f MiB) |", r / 1024, f / 1024 }')
            else
                row+=" |"
            fi
        done
        printf '%s |\n' "$row"
    done
}

main() {
    local t0=$SECONDS
    log "ARM builds in $ARM_TARGET_DIR (ARMv6: $([[ $ARM_ARMV6 == 0 ]] && echo skipped || echo build only))"
    step "install packages" step_packages
    step "OpenSSL private sysroot" step_openssl_sysroot
    setup_env
    step "toolchain versions" step_versions

    step "build $AARCH64 (release)" step_build "$AARCH64"
    step "build $ARMV7 (release)" step_build "$ARMV7"
    step "compile tests $AARCH64" step_test_compile "$AARCH64"
    step "run tests $AARCH64 (qemu-aarch64)" step_test_run "$AARCH64"
    step "compile tests $ARMV7" step_test_compile "$ARMV7"
    step "run tests $ARMV7 (qemu-arm)" step_test_run "$ARMV7"
    if [[ $ARM_ARMV6 != 0 ]]; then
        # Build only: Debian's armhf crt files and libc are ARMv7, so this binary SIGILLs on a
        # real ARMv6 core (qemu -cpu arm1176). A true Pi Zero/1 binary needs cross's ARMv6
        # toolchain or a Raspberry Pi OS sysroot; see README.
        step "build $ARMV6 (release, build only)" step_build "$ARMV6"
    fi
    step "sizes" step_sizes
    step "examples under qemu $AARCH64" step_examples_under_qemu "$AARCH64" qemu-aarch64 \
        aarch64-linux-gnu-gcc RUNNER_aarch64
    step "examples under qemu $ARMV7" step_examples_under_qemu "$ARMV7" qemu-arm \
        arm-linux-gnueabihf-gcc RUNNER_armv7

    CURRENT_STEP=summary
    printf '\n[arm] ===== summary =====\n'
    printf '[arm] %s\n' "${TIMINGS[@]}"
    printf '[arm] %s\n' "${REPORT[@]+"${REPORT[@]}"}"
    printf '[arm] total: %d s wall, %d s CPU (load average now: %s)\n' "$((SECONDS - t0))" "$(cpu_s)" \
        "$(cut -d' ' -f1-3 /proc/loadavg)"
    printf '\n'
    readme_table
}

main "$@"
