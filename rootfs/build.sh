#!/usr/bin/env bash
# Build a runner guest root filesystem image (ext4, attached read-only).
#
#   rootfs/build.sh minimal --agent PATH
#   rootfs/build.sh debian  --agent PATH [--mirror URL]
#
# Images are cached at ${RUNNER_CACHE:-$HOME/.cache/runner}/rootfs/<kind>-<key>.ext4.
# The last line on stdout is the image path; progress goes to stderr.
# See rootfs/README.md for the boot contract and the cache key.
set -euo pipefail
# e2fsprogs' tools live in /sbin, which a normal user's PATH lacks.
export PATH="$PATH:/usr/sbin:/sbin"

readonly SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly SCRIPT_PATH="$SCRIPT_DIR/$(basename "${BASH_SOURCE[0]}")"
readonly INIT_SCRIPT="$SCRIPT_DIR/runner-init"
readonly MKE2FS_CONF="$SCRIPT_DIR/mke2fs.conf"
# Lists the inodes mke2fs -d populated (shared by build.sh and build-spec.sh).
readonly USED_INODES_AWK="$SCRIPT_DIR/used-inodes.awk"
readonly CACHE_ROOT="${RUNNER_CACHE:-$HOME/.cache/runner}"
# Every timestamp we control in the image (mtime of files we create, ctime,
# atime, crtime, superblock times). Fixed so that equal inputs give equal bytes.
readonly IMAGE_EPOCH=1704067200 # 2024-01-01T00:00:00Z
readonly DEBIAN_SUITE=bookworm
readonly DEBIAN_PACKAGES=bash,coreutils,git,make,python3,ca-certificates,busybox-static

export LC_ALL=C TZ=UTC

log() { printf 'rootfs/build.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
    cat >&2 <<EOF
usage: rootfs/build.sh minimal --agent PATH
       rootfs/build.sh debian  --agent PATH [--mirror URL]

  minimal   busybox-static + agent + runner-init (no root needed)
  debian    debootstrap $DEBIAN_SUITE minbase + $DEBIAN_PACKAGES (needs root)
EOF
}

[ $# -ge 1 ] || { usage; exit 1; }
kind="$1"; shift
case "$kind" in
    minimal|debian) ;;
    -h|--help) usage; exit 0 ;;
    *) usage; die "unknown image kind '$kind' (expected minimal or debian)" ;;
esac
agent=""
mirror="http://deb.debian.org/debian"
while [ $# -gt 0 ]; do
    case "$1" in
        --agent) [ $# -ge 2 ] || die "--agent needs a path"; agent="$2"; shift 2 ;;
        --agent=*) agent="${1#--agent=}"; shift ;;
        --mirror) [ $# -ge 2 ] || die "--mirror needs a URL"; mirror="$2"; shift 2 ;;
        --mirror=*) mirror="${1#--mirror=}"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage; die "unknown argument: $1" ;;
    esac
done
[ -n "$agent" ] || { usage; die "--agent PATH is required"; }
[ -f "$agent" ] || die "agent not found or not a regular file: $agent"
[ -r "$agent" ] || die "agent is not readable: $agent"

if [ "$kind" = debian ] && [ "$(id -u)" != 0 ]; then
    echo "rootfs/build.sh debian: needs root (debootstrap must chroot and create device nodes); run it as root" >&2
    exit 1
fi

# --- dependencies ------------------------------------------------------------------
pkg_installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}
pkg_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo unknown; }

missing=()
for tool in mkfs.ext4 debugfs dumpe2fs e2fsck; do
    command -v "$tool" >/dev/null || { missing+=(e2fsprogs); break; }
done
if [ "$kind" = minimal ]; then
    # The guest has no libc: busybox must be the static build, not the
    # dynamically linked "busybox" package that also installs /bin/busybox.
    pkg_installed busybox-static && [ -x /bin/busybox ] || missing+=(busybox-static)
else
    command -v debootstrap >/dev/null || missing+=(debootstrap)
fi
if [ "${#missing[@]}" -gt 0 ]; then
    echo "missing build dependencies: apt-get install ${missing[*]}" >&2
    exit 1
fi

# A dynamically linked agent cannot run in the minimal image (there is no
# libc there); say so now instead of failing inside the guest.
if [ "$kind" = minimal ] && command -v readelf >/dev/null \
    && [ "$(head -c4 "$agent" | od -An -c | tr -d ' ')" = '177ELF' ] \
    && readelf -l "$agent" 2>/dev/null | grep -q 'Requesting program interpreter'; then
    die "agent $agent is dynamically linked; the minimal image has no libc (build it with -C target-feature=+crt-static)"
fi

# --- cache key ------------------------------------------------------------------------
sha() { sha256sum "$1" | cut -d' ' -f1; }
key_inputs="kind=$kind
agent=$(sha "$agent")
init=$(sha "$INIT_SCRIPT")
build.sh=$(sha "$SCRIPT_PATH")
used-inodes.awk=$(sha "$USED_INODES_AWK")
mke2fs.conf=$(sha "$MKE2FS_CONF")
e2fsprogs=$(pkg_version e2fsprogs)"
if [ "$kind" = minimal ]; then
    key_inputs+="
busybox=$(pkg_version busybox-static) $(sha /bin/busybox)"
else
    key_inputs+="
debootstrap=$(pkg_version debootstrap)
suite=$DEBIAN_SUITE mirror=$mirror packages=$DEBIAN_PACKAGES"
fi
key_hash="$(printf '%s' "$key_inputs" | sha256sum | cut -d' ' -f1)"
key="${key_hash:0:16}"
image="$CACHE_ROOT/rootfs/$kind-$key.ext4"
if [ -f "$image" ]; then
    log "cache hit: $image"
    printf '%s\n' "$image"
    exit 0
fi

# --- temp dir, cleanup ------------------------------------------------------------------
mkdir -p "$CACHE_ROOT/rootfs"
work="$(mktemp -d "$CACHE_ROOT/rootfs/.build-$kind-$key.XXXXXX")"
child=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    if [ -n "$child" ] && kill -0 "$child" 2>/dev/null; then
        kill -TERM -- "-$child" 2>/dev/null || true
        wait "$child" 2>/dev/null || true
    fi
    # debootstrap mounts /proc, /sys (and in containers /dev) inside the
    # target; an interrupted run leaves them there. Detach them, deepest
    # first, and never let rm cross into a mount.
    if [ -r /proc/self/mounts ]; then
        awk -v w="$work/" 'index($2, w) == 1 { print $2 }' /proc/self/mounts | sort -r \
            | while IFS= read -r m; do umount -l "$m" 2>/dev/null || true; done
    fi
    rm -rf --one-file-system "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM HUP

# Long steps run in their own session so an interrupt stops all of them.
run() {
    setsid "$@" >&2 &
    child=$!
    local rc=0
    wait "$child" || rc=$?
    child=""
    return "$rc"
}

stage="$work/root"
start=$(date +%s)
log "building $kind image, key $key"

# --- content -----------------------------------------------------------------------------
# Does `wget -T 1` crash this busybox? With no URL it stops at a usage error
# right after option parsing, so nothing is fetched. The braces keep bash's
# own "Segmentation fault" notice off the build's output.
wget_timeout_crashes() {
    local rc=0
    { "$1" wget -T 1 >/dev/null 2>&1; } 2>/dev/null || rc=$?
    [ "$rc" -gt 128 ]
}

# Debian's busybox-static before 1.36.1-5 is built without
# FEATURE_WGET_TIMEOUT, yet its wget still parses `-T N` as a number stored
# through a NULL pointer: `wget -T 5 URL` dies with "Segmentation fault"
# before connecting (plain `wget URL` works). Upstream's fix parses -T as a
# string, which getopt32 drops when it has nowhere to store it; do the same
# with a same-length edit of wget's option string ("T:+t:n::" to
# "T:t:n:::", and glibc's getopt reads "n:::" as "n::"). -T is then accepted
# and has no effect: `timeout N wget URL` bounds a fetch.
fix_busybox_wget_timeout() {
    local bb="$1"
    wget_timeout_crashes "$bb" || return 0
    # Another build of busybox is left as it is (one line says so): the
    # image still works, only wget -T does not.
    if ! perl -0777 -pe '$n += s/\^cqSO:o:P:Y:U:T:\+t:n::\0/^cqSO:o:P:Y:U:T:t:n:::\0/g;
        END { exit($n == 1 ? 0 : 3) }' "$bb" >"$bb.fixed"; then
        rm -f "$bb.fixed"
        log "warning: this busybox's wget crashes on -T, and its option string is not the one this script knows how to fix; left as it is"
        return 0
    fi
    chmod 0755 "$bb.fixed"
    mv -f "$bb.fixed" "$bb"
    ! wget_timeout_crashes "$bb" || die "busybox's wget still crashes on -T after the fix"
    [ "$("$bb" wget --help 2>&1)" = "$(/bin/busybox wget --help 2>&1)" ] \
        || die "fixing busybox's wget -T changed its usage text"
    log "busybox: wget -T (no timeout support in this build) is now accepted and ignored instead of crashing"
}

build_minimal() {
    local d
    mkdir -m 0755 "$stage"
    for d in bin sbin usr usr/bin usr/sbin etc dev proc sys run mnt var home; do
        mkdir -m 0755 "$stage/$d"
    done
    mkdir -m 0700 "$stage/root"
    mkdir -m 1777 "$stage/tmp" "$stage/var/tmp"

    install -m 0755 /bin/busybox "$stage/bin/busybox"
    fix_busybox_wget_timeout "$stage/bin/busybox"
    # One symlink per applet at its usual place. No /sbin/init or /linuxrc:
    # booting without init=/sbin/runner-init should fail loudly, not start
    # busybox init.
    local applet
    while IFS= read -r applet; do
        case "$applet" in
            linuxrc|sbin/init|bin/busybox|"") continue ;;
        esac
        mkdir -p "$stage/$(dirname "$applet")"
        ln -s /bin/busybox "$stage/$applet"
    done < <(/bin/busybox --list-full)
    [ -L "$stage/bin/sh" ] || die "busybox provides no sh applet"

    install -m 0755 "$INIT_SCRIPT" "$stage/sbin/runner-init"
    install -m 0755 "$agent" "$stage/sbin/runner-agent"

    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' \
        > "$stage/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' > "$stage/etc/group"
    printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' > "$stage/etc/hosts"
    printf 'runner\n' > "$stage/etc/hostname"
    ln -s /proc/self/mounts "$stage/etc/mtab"
    chmod 0644 "$stage"/etc/passwd "$stage"/etc/group "$stage"/etc/hosts "$stage"/etc/hostname
}

build_debian() {
    local debs="$CACHE_ROOT/rootfs/debootstrap-debs"
    mkdir -p "$debs"
    touch "$work/start-marker"
    sleep 1 # mtimes have 1 s resolution in the image; keep "before" and "during" apart
    log "debootstrap $DEBIAN_SUITE (minbase + $DEBIAN_PACKAGES) from $mirror"
    run debootstrap --variant=minbase --include="$DEBIAN_PACKAGES" --cache-dir="$debs" \
        "$DEBIAN_SUITE" "$stage" "$mirror" \
        || die "debootstrap failed (see output above; is $mirror reachable?)"

    log "cleaning caches, logs and host-specific files"
    chroot "$stage" apt-get clean >&2
    rm -rf "$stage"/var/lib/apt/lists/* "$stage"/var/cache/apt/*.bin \
        "$stage"/var/log/* "$stage"/var/cache/ldconfig/aux-cache \
        "$stage"/var/cache/debconf/*-old "$stage"/var/lib/dpkg/*-old \
        "$stage"/etc/resolv.conf "$stage"/debootstrap "$stage"/tmp/* "$stage"/var/tmp/* \
        "$stage"/root/.bash_history
    # No systemd, but some tools read it: present and empty, never a host id.
    : > "$stage/etc/machine-id"
    printf 'runner\n' > "$stage/etc/hostname"
    printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' > "$stage/etc/hosts"
    # Password "last changed" day is the build day: pin it.
    local day=$((IMAGE_EPOCH / 86400)) f
    for f in "$stage/etc/shadow" "$stage/etc/shadow-"; do
        if [ -f "$f" ]; then
            sed -i -E "s/^([^:]*:[^:]*:)[0-9]+:/\1$day:/" "$f"
        fi
    done
    [ -x "$stage/bin/busybox" ] || die "busybox-static did not install /bin/busybox in the image"

    # Merged /usr: /sbin is a relative symlink to usr/sbin. Write through the
    # real directory so nothing can escape the staging tree.
    local sbin="$stage/sbin"
    if [ -L "$sbin" ]; then
        [ "$(readlink "$sbin")" = usr/sbin ] || die "unexpected /sbin symlink in the image: $(readlink "$sbin")"
        sbin="$stage/usr/sbin"
    fi
    install -m 0755 "$INIT_SCRIPT" "$sbin/runner-init"
    install -m 0755 "$agent" "$sbin/runner-agent"

    # Keep the packages' own mtimes (Python's .pyc files are validated
    # against them); pin everything this build created or changed.
    find "$stage" -xdev -newer "$work/start-marker" -exec touch -h -d "@$IMAGE_EPOCH" {} +
}

"build_$kind"

# --- image ----------------------------------------------------------------------------------
# Size: content plus ~15% and 8 MiB for ext4 metadata; inodes: entries plus 10%.
content_kib=$(du -sk --apparent-size "$stage" | cut -f1)
used_kib=$(du -sk "$stage" | cut -f1)
[ "$used_kib" -gt "$content_kib" ] && content_kib=$used_kib
entries=$(find "$stage" -xdev | wc -l)
inodes=$((entries + entries / 10 + 256))
size_mib=$(( (content_kib + content_kib * 15 / 100 + inodes / 4 + 8192 + 1023) / 1024 ))
uuid="${key_hash:16:8}-${key_hash:24:4}-${key_hash:28:4}-${key_hash:32:4}-${key_hash:36:12}"

log "mkfs.ext4: ${size_mib} MiB, $inodes inodes, $entries entries"
img="$work/image.ext4"
truncate -s "${size_mib}M" "$img"
# root_owner: the root directory is root:root even when built by a normal user.
E2FSPROGS_FAKE_TIME=$IMAGE_EPOCH MKE2FS_CONFIG="$MKE2FS_CONF" run mkfs.ext4 -q -F -t ext4 -T default \
    -m 0 -N "$inodes" -L runner-root -U "$uuid" \
    -E "root_owner=0:0,hash_seed=$uuid" -d "$stage" "$img" \
    || die "mkfs.ext4 -d failed"

# mkfs.ext4 -d copies owner, ctime and atime from the staging files. ctime
# can't be set from user space, and a non-root build owns everything, so
# rewrite them on every inode it populated (inode 12 on; 1-11 are reserved
# or lost+found and already carry the fake time).
used_inodes() {
    dumpe2fs "$1" 2>/dev/null | awk -v from=12 -f "$USED_INODES_AWK"
}
{
    while IFS= read -r ino; do
        if [ "$kind" = minimal ]; then
            printf 'sif <%s> uid 0\nsif <%s> gid 0\nsif <%s> mtime @%s\n' "$ino" "$ino" "$ino" "$IMAGE_EPOCH"
        fi
        printf 'sif <%s> ctime @%s\nsif <%s> atime @%s\n' "$ino" "$IMAGE_EPOCH" "$ino" "$IMAGE_EPOCH"
    done < <(used_inodes "$img")
} > "$work/fixup.debugfs"
[ -s "$work/fixup.debugfs" ] || die "found no populated inodes in the new image"
log "normalising owners and timestamps ($(wc -l < "$work/fixup.debugfs") debugfs edits)"
# debugfs exits 0 even when a command fails: anything on stderr besides its
# version banner is an error.
E2FSPROGS_FAKE_TIME=$IMAGE_EPOCH debugfs -w -f "$work/fixup.debugfs" "$img" \
    >/dev/null 2>"$work/debugfs.err" || die "debugfs could not open the new image"
if grep -v '^debugfs [0-9]' "$work/debugfs.err" | grep -q .; then
    head -n 5 "$work/debugfs.err" >&2
    die "debugfs could not normalise the image (first errors above)"
fi
e2fsck -fn "$img" >"$work/e2fsck.log" 2>&1 || {
    tail -n 20 "$work/e2fsck.log" >&2
    die "e2fsck found problems in the new image"
}

# Atomic publish: rename(2) within the cache filesystem.
mv -f "$img" "$image"
log "done in $(( $(date +%s) - start )) s: $image ($(du -h --apparent-size "$image" | cut -f1) apparent, $(du -h "$image" | cut -f1) on disk)"
printf '%s\n' "$image"
