#!/usr/bin/env bash
# Build the Linux yardstick: Debian's 6.1 kernel (vmlinuz) and a busybox initramfs, from pinned
# Debian packages, plus the guest workloads (test-images/workloads: rzbench, compiled with the
# host's gcc), into a cache that later runs reuse. See docs/linux-yardstick.md.
#
# Usage: test-images/linux/build.sh [--print-paths] [--force] [--latest] [--help]
#   (no option)     build if the cache entry is missing or stale; log to stderr; print the paths
#                   of vmlinuz and initramfs.cpio.gz as the last two lines of stdout
#   --print-paths   the same, but print nothing on stdout except the two paths
#   --force         rebuild even when the cache entry is valid
#   --latest        show the newest matching packages in the apt lists (for moving the pins)
#
# Cache: ${RINGZERO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ringzero}/linux/<kernel-version>/
# holding vmlinuz, initramfs.cpio.gz, rzbench (the workloads binary, also in the initramfs as
# /bin/rzbench; runs natively too) and manifest. An entry is built in a temporary directory
# beside it and renamed into place at the end, so a directory with that name is always complete.
# The manifest records a hash of this recipe; an entry built by an older recipe is rebuilt.
set -euo pipefail

# --- Pins. To move them, run `build.sh --latest` and copy its output here. ------------------
KERNEL_ABI=6.1.0-50-amd64
KERNEL_PKG=linux-image-${KERNEL_ABI}
KERNEL_VERSION=6.1.176-1
KERNEL_SHA256=7b5597492a0a65aee61985a492e6bcc3f2cde830072a0e3b3d8c7e1b90279bd3
BUSYBOX_PKG="busybox-static"
BUSYBOX_VERSION=1:1.35.0-4+deb12u1+b1
BUSYBOX_SHA256=3d3fdbe91d4660c873e14b092c213fe81c1da6362daa236eb25d0171eb108744
# ---------------------------------------------------------------------------------------------

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SCRIPT="$HERE/$(basename "${BASH_SOURCE[0]}")"
CACHE_ROOT=${RINGZERO_CACHE:-${XDG_CACHE_HOME:-${HOME:?is not set: set RINGZERO_CACHE}/.cache}/ringzero}
LINUX_CACHE=$CACHE_ROOT/linux
DEB_CACHE=$LINUX_CACHE/debs
ENTRY=$LINUX_CACHE/$KERNEL_ABI

PRINT_PATHS_ONLY=0
FORCE=0

log() { printf 'linux-yardstick: %s\n' "$*" >&2; }
die() {
    printf 'linux-yardstick: error: %s\n' "$*" >&2
    exit 1
}

usage() { sed -n '2,17s/^# \{0,1\}//p' "$SCRIPT"; }

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

WORKLOADS=$(cd "$HERE/../workloads" && pwd)

# Everything that decides the bytes of the outputs: this script (pins included), the cpio
# writer, /init, the workloads' sources and build script, and the gcc/libc they are built
# with. A cache entry made by a different recipe is stale.
recipe_hash() {
    {
        cat "$SCRIPT" "$HERE/mkcpio.py" "$HERE/init" "$WORKLOADS/build.sh" "$WORKLOADS"/*.c
        "$WORKLOADS/build.sh" --toolchain
    } | sha256sum | cut -d' ' -f1
}

# A cache entry is valid when its manifest names the current recipe and both outputs still
# have the sha256 it recorded.
entry_valid() {
    local dir=$1 manifest=$1/manifest name want
    [[ -f $manifest ]] || return 1
    grep -qx "recipe $(recipe_hash)" "$manifest" || return 1
    for name in vmlinuz initramfs.cpio.gz rzbench; do
        [[ -f $dir/$name ]] || return 1
        want=$(awk -v n="$name" '$1 == "output" && $2 == n { print $3 }' "$manifest")
        [[ -n $want && $want == "$(sha256_of "$dir/$name")" ]] || return 1
    done
}

print_paths() {
    printf '%s\n%s\n' "$ENTRY/vmlinuz" "$ENTRY/initramfs.cpio.gz"
}

# Prefers the newest kernel ABI that the stable suite itself carries: the security suite often
# has newer ones, but the point release's packages stay on the mirror longer.
show_latest() {
    local abi='' candidate abis pkg ver sha
    abis=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' |
        sed -n 's/^linux-image-\(6\.1\.0-[0-9]*-amd64\) .*/\1/p' | sort -V -r)
    [[ -n $abis ]] || die "no linux-image-6.1.0-*-amd64 in the apt lists (run apt-get update)"
    for candidate in $abis; do
        if apt-cache policy "linux-image-$candidate" | grep -E '^ +[0-9]+ +[a-z]+://' |
            grep -vq -- '-security'; then
            abi=$candidate
            break
        fi
    done
    [[ -n $abi ]] || abi=$(head -n1 <<<"$abis")
    pkg=linux-image-$abi
    ver=$(apt-cache policy "$pkg" | sed -n 's/^ *Candidate: //p')
    sha=$(apt-cache show "$pkg=$ver" | sed -n 's/^SHA256: //p' | head -n1)
    # shellcheck disable=SC2016 # ${KERNEL_ABI} is printed literally, as in the pins.
    printf 'KERNEL_ABI=%s\nKERNEL_PKG=linux-image-${KERNEL_ABI}\nKERNEL_VERSION=%s\nKERNEL_SHA256=%s\n' \
        "$abi" "$ver" "$sha"
    ver=$(apt-cache policy "$BUSYBOX_PKG" | sed -n 's/^ *Candidate: //p')
    sha=$(apt-cache show "$BUSYBOX_PKG=$ver" | sed -n 's/^SHA256: //p' | head -n1)
    printf 'BUSYBOX_PKG=%s\nBUSYBOX_VERSION=%s\nBUSYBOX_SHA256=%s\n' "$BUSYBOX_PKG" "$ver" "$sha"
}

# Fail with the message, then say how to move the pins.
die_moved_on() {
    printf 'linux-yardstick: error: %s\n' "$1" >&2
    cat >&2 <<EOF
linux-yardstick: The Debian mirror has probably moved on past the pinned version (Debian keeps
only current packages). To update the pin: run \`apt-get update\`, then
\`$SCRIPT --latest\`, paste its lines over the pins at the top of $SCRIPT,
update the versions in docs/linux-yardstick.md, rebuild and re-run
test-images/linux/qemu-check.sh.
EOF
    exit 1
}

# True when the apt lists know pkg=version. (`apt-cache show pkg=missing-version` prints
# nothing yet exits 0, so look for the Version line.)
in_apt_lists() {
    apt-cache show "$1=$2" 2>/dev/null | grep -Fqx "Version: $2"
}

# Make sure the apt lists know pkg=version; run apt-get update (once) only if they do not.
APT_UPDATED=0
ensure_in_apt_lists() {
    local pkg=$1 version=$2
    if in_apt_lists "$pkg" "$version"; then
        return 0
    fi
    if [[ $APT_UPDATED == 0 ]]; then
        if [[ $(id -u) != 0 ]]; then
            die "$pkg=$version is not in the apt lists and updating them needs root: run \`sudo apt-get update\` and retry"
        fi
        log "$pkg=$version not in the apt lists; running apt-get update"
        apt-get update -qq >&2 || die "apt-get update failed"
        APT_UPDATED=1
        if in_apt_lists "$pkg" "$version"; then
            return 0
        fi
    fi
    die_moved_on "$pkg=$version is not available from the configured apt sources"
}

# Set FETCHED to the path of a verified .deb for pkg=version in the deb cache, downloading it if
# needed. (A variable, not stdout, so that APT_UPDATED survives: no subshell.)
FETCHED=
fetch_deb() {
    local pkg=$1 version=$2 sha=$3 cached dl got
    cached=$DEB_CACHE/${pkg}_${version//:/%3a}_amd64.deb
    if [[ -f $cached && $(sha256_of "$cached") == "$sha" ]]; then
        log "using cached $cached"
        FETCHED=$cached
        return 0
    fi
    ensure_in_apt_lists "$pkg" "$version"
    mkdir -p "$DEB_CACHE"
    dl=$(mktemp -d "$DEB_CACHE/.download.XXXXXX")
    log "downloading $pkg=$version"
    local sandbox=()
    # As root, apt drops to the _apt user for downloads, which cannot write into a private temp
    # directory (and warns); there is nothing to gain from the sandbox for a file we hash.
    [[ $(id -u) == 0 ]] && sandbox=(-o APT::Sandbox::User=root)
    if ! (cd "$dl" && apt-get download -q "${sandbox[@]}" "$pkg=$version" >&2); then
        rm -rf "$dl"
        die "apt-get download $pkg=$version failed"
    fi
    local debs=("$dl"/*.deb)
    [[ ${#debs[@]} == 1 && -f ${debs[0]} ]] || {
        rm -rf "$dl"
        die "apt-get download $pkg=$version did not leave exactly one .deb"
    }
    got=$(sha256_of "${debs[0]}")
    if [[ $got != "$sha" ]]; then
        rm -rf "$dl"
        die_moved_on "sha256 mismatch for $pkg=$version: pinned $sha, downloaded $got (the package was rebuilt or the mirror moved on)"
    fi
    mv -f "${debs[0]}" "$cached"
    rm -rf "$dl"
    FETCHED=$cached
}

WORK=
build_entry() {
    local kernel_deb busybox_deb root list applet
    mkdir -p "$LINUX_CACHE"
    # Leftovers of builds that were killed; we hold the lock, so none of them is live.
    rm -rf "$LINUX_CACHE"/.build.* "$LINUX_CACHE"/.old.* "$DEB_CACHE"/.download.*
    fetch_deb "$KERNEL_PKG" "$KERNEL_VERSION" "$KERNEL_SHA256"
    kernel_deb=$FETCHED
    fetch_deb "$BUSYBOX_PKG" "$BUSYBOX_VERSION" "$BUSYBOX_SHA256"
    busybox_deb=$FETCHED

    WORK=$(mktemp -d "$LINUX_CACHE/.build.XXXXXX")
    local work=$WORK
    # Remove the half-built entry on any failure or interrupt.
    trap 'rm -rf "$WORK"' EXIT
    trap 'exit 130' INT TERM
    mkdir "$work/out" "$work/kernel" "$work/busybox"

    log "extracting vmlinuz from $(basename "$kernel_deb")"
    # Only the kernel image is needed; streaming the data tarball and picking one member avoids
    # writing the ~400 MB of modules to disk.
    dpkg-deb --fsys-tarfile "$kernel_deb" |
        tar -x -C "$work/kernel" "./boot/vmlinuz-$KERNEL_ABI"
    cp "$work/kernel/boot/vmlinuz-$KERNEL_ABI" "$work/out/vmlinuz"

    log "extracting busybox from $(basename "$busybox_deb")"
    dpkg-deb -x "$busybox_deb" "$work/busybox"
    local busybox=$work/busybox/bin/busybox
    [[ -x $busybox ]] || die "$busybox_deb has no bin/busybox"

    # The same binary goes into the initramfs and stays in the entry for native runs.
    "$WORKLOADS/build.sh" "$work/out/rzbench"

    root=$work/rootfs
    mkdir -p "$root/etc"
    printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
    printf 'root:x:0:\n' >"$root/etc/group"
    printf 'ringzero\n' >"$root/etc/hostname"
    cat >"$root/etc/profile" <<'EOF'
export PATH=/bin
export PS1='ringzero:\w# '
EOF

    list=$work/initramfs.list
    {
        echo "# generated by test-images/linux/build.sh"
        for dir in /bin /dev /etc /proc /root /sys /usr; do
            echo "dir $dir 0755 0 0"
        done
        echo "dir /tmp 1777 0 0"
        # The kernel opens /dev/console for init before anything can mount devtmpfs.
        echo "nod /dev/console 0600 0 0 c 5 1"
        echo "nod /dev/null 0666 0 0 c 1 3"
        echo "file /init $HERE/init 0755 0 0"
        echo "file /bin/busybox $busybox 0755 0 0"
        echo "file /bin/rzbench $work/out/rzbench 0755 0 0"
        for name in passwd group hostname profile; do
            echo "file /etc/$name $root/etc/$name 0644 0 0"
        done
        echo "slink /sbin bin 0777 0 0"
        echo "slink /usr/bin ../bin 0777 0 0"
        echo "slink /usr/sbin ../bin 0777 0 0"
        # busybox-static is a static x86-64 binary, so the host can ask it for its applets.
        "$busybox" --list | LC_ALL=C sort -u | while read -r applet; do
            case $applet in
            busybox | linuxrc | rzbench | '') ;;
            */*) die "unexpected applet name '$applet'" ;;
            *) echo "slink /bin/$applet busybox 0777 0 0" ;;
            esac
        done
    } >"$list"

    log "writing initramfs ($(grep -c '^slink /bin/' "$list") applet links)"
    python3 "$HERE/mkcpio.py" --gzip "$list" "$work/out/initramfs.cpio.gz"

    {
        echo "# ringzero Linux yardstick, written by test-images/linux/build.sh"
        echo "# lines: package <name> <version> <sha256 of the .deb>; output <file> <sha256>"
        echo "kernel-version $KERNEL_ABI"
        echo "recipe $(recipe_hash)"
        echo "package $KERNEL_PKG $KERNEL_VERSION $(sha256_of "$kernel_deb")"
        echo "package $BUSYBOX_PKG $BUSYBOX_VERSION $(sha256_of "$busybox_deb")"
        echo "output vmlinuz $(sha256_of "$work/out/vmlinuz")"
        echo "output initramfs.cpio.gz $(sha256_of "$work/out/initramfs.cpio.gz")"
        echo "output rzbench $(sha256_of "$work/out/rzbench")"
        "$WORKLOADS/build.sh" --toolchain | sed 's/^/toolchain /'
    } >"$work/out/manifest"

    # Swap the finished entry in. A stale entry is moved aside first (rename cannot replace a
    # non-empty directory), so the final name only ever points at a complete build.
    if [[ -e $ENTRY ]]; then
        local old
        old=$(mktemp -d "$LINUX_CACHE/.old.XXXXXX")
        mv "$ENTRY" "$old/entry"
        mv "$work/out" "$ENTRY"
        rm -rf "$old"
    else
        mv "$work/out" "$ENTRY"
    fi
    rm -rf "$work"
    trap - EXIT INT TERM
    log "built $ENTRY"
}

main() {
    local arg latest=0
    for arg in "$@"; do
        case $arg in
        --print-paths) PRINT_PATHS_ONLY=1 ;;
        --force) FORCE=1 ;;
        --latest) latest=1 ;;
        -h | --help)
            usage
            return 0
            ;;
        *)
            usage >&2
            die "unknown option '$arg'"
            ;;
        esac
    done
    if [[ $latest == 1 ]]; then
        show_latest
        return 0
    fi

    for tool in apt-get apt-cache dpkg-deb tar python3 sha256sum flock; do
        command -v "$tool" >/dev/null || die "needs '$tool' (a Debian or Ubuntu host with python3)"
    done

    if [[ $FORCE == 0 ]] && entry_valid "$ENTRY"; then
        [[ $PRINT_PATHS_ONLY == 1 ]] || log "cached: $ENTRY"
        print_paths
        return 0
    fi

    # One builder at a time (parallel tests may all ask); the others wait, then find the entry.
    mkdir -p "$LINUX_CACHE"
    exec 9>"$LINUX_CACHE/.lock"
    flock 9
    if [[ $FORCE == 1 ]] || ! entry_valid "$ENTRY"; then
        build_entry
    fi
    exec 9>&-
    print_paths
}

main "$@"
