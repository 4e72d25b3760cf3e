#!/usr/bin/env bash
# Build the root file system of an image spec from a pipeline (`image: { base:
# debian, packages: [...], files: [...], setup: ..., size: ... }`). Called by
# the runner (runner/machine/src/images), which owns the cache key, the lock, the
# temp name and the manifest; see rootfs/README.md, "Image specs".
#
#   build-spec.sh --base debian|minimal|tree --out FILE --agent PATH --key HEX
#                 [--from-image EXT4] [--tree DIR] [--packages a,b]
#                 [--files LIST] [--setup FILE] [--size-mib N]
#                 [--mirror URL] [--debs DIR]
#
#   debian   mmdebstrap --mode=unshare bookworm minbase + packages
#   minimal  the contents of the named minimal image (--from-image)
#   tree     a directory already unpacked by the runner (an OCI image)
#
# LIST has one `from<TAB>to` line per file. Progress goes to stderr, with
# `runner-image-phase NAME SECONDS` lines for the benchmark. Exit status 65
# means the spec is at fault (unknown package, failing setup, too big for
# `size`) and the last stderr line says how; anything else is a failure of
# the build itself.
set -euo pipefail
# e2fsprogs' tools live in /sbin, which a normal user's PATH lacks.
export PATH="$PATH:/usr/sbin:/sbin"

readonly SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly INIT_SCRIPT="$SCRIPT_DIR/runner-init"
readonly MKE2FS_CONF="$SCRIPT_DIR/mke2fs.conf"
# Lists the inodes mke2fs -d populated (shared by build.sh and build-spec.sh).
readonly USED_INODES_AWK="$SCRIPT_DIR/used-inodes.awk"
# With a `size`, the image's free space is the job's room to write: this
# marker makes runner-init mount the root read-write (on the host's per-VM
# copy-on-write layer) instead of a tmpfs overlay in guest RAM. A command
# for `sh -c` and mmdebstrap hooks alike: $1 is the tree.
readonly MARK_ROOT_ON_DISK='mkdir -p "$1/etc/runner" && echo "job writes go to this disk (see /sbin/runner-init)" > "$1/etc/runner/root-on-disk"'
# Same epoch as build.sh: every timestamp the build creates is pinned to it.
readonly IMAGE_EPOCH=1704067200
readonly DEBIAN_SUITE=bookworm
export LC_ALL=C TZ=UTC SOURCE_DATE_EPOCH=$IMAGE_EPOCH

log() { printf 'image: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
# 65 (EX_DATAERR), not 2: bash itself exits 2 on a syntax error.
spec_error() { printf 'error: %s\n' "$*" >&2; exit 65; }

base="" out="" agent="" key="" from_image="" tree="" packages="" files="" setup=""
size_mib="" mirror="http://deb.debian.org/debian" debs="" owners="" setup_timeout=1800 setup_network=0
while [ $# -gt 0 ]; do
    # The one flag without a value: setup may use the network (the
    # operator's grant, runner --allow-setup-network).
    if [ "$1" = --setup-network ]; then setup_network=1; shift; continue; fi
    [ $# -ge 2 ] || die "$1 needs a value"
    case "$1" in
        --base) base="$2" ;;
        --out) out="$2" ;;
        --agent) agent="$2" ;;
        --key) key="$2" ;;
        --from-image) from_image="$2" ;;
        --tree) tree="$2" ;;
        --packages) packages="$2" ;;
        --files) files="$2" ;;
        --setup) setup="$2" ;;
        --size-mib) size_mib="$2" ;;
        --mirror) mirror="$2" ;;
        --debs) debs="$2" ;;
        --owners) owners="$2" ;;
        --setup-timeout) setup_timeout="$2" ;;
        *) die "unknown argument: $1" ;;
    esac
    shift 2
done
case "$base" in debian|minimal|tree) ;; *) die "--base must be debian, minimal or tree" ;; esac
[ -n "$out" ] && [ -n "$key" ] && [ ${#key} -ge 44 ] || die "--out and --key (>= 44 hex digits) are required"
[ -f "$agent" ] || die "agent not found: $agent"

rootless=1
[ "$(id -u)" = 0 ] && rootless=0
# A pipeline's setup and its packages' maintainer scripts are hostile code,
# and a chroot is no boundary for root: as root, the runner runs this script
# as its unprivileged build user (runner/machine/src/images/build_user.rs).
if [ "$rootless" = 0 ] && { [ -n "$setup" ] || [ -n "$packages" ]; }; then
    die "refusing to run setup or packages' scripts as the host's root; run this as an unprivileged user (the runner uses runner-build, see scripts/setup-host)"
fi

work="$(mktemp -d "$(dirname "$out")/.work-${key:0:16}.XXXXXX")"
# mmdebstrap's hooks run as the namespace's root, which is not us when
# rootless: they must be able to read the helper scripts in here.
chmod 0755 "$work"
stage="$work/root"
ns_out="$work/ns-out"
child=""
# The command prefix that sees the tree's owners right; see below.
inside=()
cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    if [ -n "$child" ] && kill -0 "$child" 2>/dev/null; then
        kill -TERM -- "-$child" 2>/dev/null || true
        wait "$child" 2>/dev/null || true
    fi
    # A tree given to subordinate ids (Debian, or setup's): only a user
    # namespace mapping them can remove all of it.
    if [ ${#inside[@]} -gt 0 ] && [ -d "$stage" ]; then
        mmdebstrap --unshare-helper rm -rf --one-file-system "$stage" "$ns_out" 2>/dev/null || true
    fi
    rm -rf --one-file-system "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

# Long steps run in their own session so that an interrupt stops all of them.
run() {
    setsid "$@" &
    child=$!
    local rc=0
    wait "$child" || rc=$?
    child=""
    return "$rc"
}

now() { date +%s.%N; }
phase() { printf 'runner-image-phase %s %.2f\n' "$1" "$(echo "$3 - $2" | bc)" >&2; }

# The setup script, run as root inside the image, with its output kept so a
# failure can show it. Used as an mmdebstrap hook (debian) and for the other
# bases under unshare(1). It is the pipeline's code: it gets a time limit,
# a PID namespace (nothing it starts outlives it) and, unless the operator
# granted the network to setup, a network namespace with only loopback.
write_setup_runner() {
    local net=--net
    [ "$setup_network" = 1 ] && net=
    cat > "$work/run-setup.sh" <<EOF
root="\$1"
rc=0
timeout --kill-after=10 $setup_timeout unshare --pid --fork --kill-child $net sh -c \
    'ip link set lo up 2>/dev/null; exec chroot "\$1" /bin/sh -e /run/runner-setup.sh' sh "\$root" \
    > "\$root/run/runner-setup.log" 2>&1 || rc=\$?
sed 's/^/setup: /' "\$root/run/runner-setup.log" >&2
rm -f "\$root/run/runner-setup.sh" "\$root/run/runner-setup.log"
if [ "\$rc" = 124 ] || [ "\$rc" = 137 ]; then
    echo "runner-setup-failed: it did not finish within ${setup_timeout}s, the limit for image setup" >&2
    exit 1
fi
if [ "\$rc" != 0 ]; then
    echo "runner-setup-failed: exit status \$rc" >&2
    exit 1
fi
EOF
}

# --- files --------------------------------------------------------------------------
# Targets ending in `/` are directories the file goes into.
file_target() {
    case "$2" in */) printf '%s%s' "$2" "$(basename "$1")" ;; *) printf '%s' "$2" ;; esac
}

copy_files_into() { # root dir: plain copies (minimal, tree)
    local from to target
    [ -n "$files" ] || return 0
    while IFS=$'\t' read -r from to; do
        target="$1$(file_target "$from" "$to")"
        mkdir -p "$(dirname "$target")"
        if [ -d "$from" ]; then
            mkdir -p "$target"
            cp -a --no-preserve=ownership "$from/." "$target/"
        else
            cp --preserve=mode --no-preserve=ownership "$from" "$target"
        fi
    done < "$files"
}

# --- bases --------------------------------------------------------------------------
build_debian() {
    command -v mmdebstrap >/dev/null || die "missing build dependency: apt-get install mmdebstrap uidmap"
    local mode=unshare include=busybox-static
    [ -n "$packages" ] && include="$include,$packages"
    # unshare mode needs user namespaces (and, as a normal user, newuidmap
    # and /etc/subuid). Without them only root can build, chrooting directly.
    if ! unshare --user --map-root-user true 2>/dev/null; then
        [ "$rootless" = 0 ] || die "user namespaces are unavailable and this is not root: cannot build a Debian image"
        log "user namespaces are unavailable: building as root with mmdebstrap --mode=root"
        mode=root
    fi
    local hooks=()
    if [ -n "$debs" ]; then
        mkdir -p "$debs"
        hooks+=(--skip=download/empty
            --setup-hook='mkdir -p "$1"/var/cache/apt/archives/'
            --setup-hook="sync-in $debs /var/cache/apt/archives/"
            --customize-hook="sync-out /var/cache/apt/archives $debs")
    fi
    # Our init and agent, where build.sh puts them (merged /usr: /sbin is usr/sbin).
    hooks+=(--customize-hook="upload $INIT_SCRIPT /usr/sbin/runner-init"
        --customize-hook="upload $agent /usr/sbin/runner-agent"
        --customize-hook='chmod 0755 "$1/usr/sbin/runner-init" "$1/usr/sbin/runner-agent"')
    [ -z "$size_mib" ] || hooks+=(--customize-hook="$MARK_ROOT_ON_DISK")
    if [ -n "$files" ]; then
        local from to target mode_bits
        while IFS=$'\t' read -r from to; do
            target="$(file_target "$from" "$to")"
            hooks+=(--customize-hook="mkdir -p \"\$1$(dirname "$target")\"")
            if [ -d "$from" ]; then
                hooks+=(--customize-hook="mkdir -p \"\$1$target\"" --customize-hook="sync-in $from $target")
            else
                mode_bits="$(stat -c %a "$from")"
                hooks+=(--customize-hook="upload $from $target"
                    --customize-hook="chmod $mode_bits \"\$1$target\"")
            fi
        done < "$files"
    fi
    if [ -n "$setup" ]; then
        write_setup_runner
        hooks+=(--customize-hook="upload $setup /run/runner-setup.sh"
            --customize-hook='echo "runner-image-mark setup-start $(date +%s.%N)" >&2'
            --customize-hook="sh $work/run-setup.sh \"\$1\""
            --customize-hook='echo "runner-image-mark setup-end $(date +%s.%N)" >&2')
    fi
    # Host-specific and time-dependent files out, ours in. (The mtimes of
    # what the build made are pinned after mmdebstrap's own clean-up.)
    local day=$((IMAGE_EPOCH / 86400))
    hooks+=(--customize-hook=': > "$1/etc/machine-id"; echo runner > "$1/etc/hostname"; printf "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n" > "$1/etc/hosts"'
        --customize-hook="for f in \"\$1/etc/shadow\" \"\$1/etc/shadow-\"; do [ -f \"\$f\" ] && sed -i -E 's/^([^:]*:[^:]*:)[0-9]+:/\\1$day:/' \"\$f\"; done; true")
    log "mmdebstrap --mode=$mode $DEBIAN_SUITE minbase + ${packages:-nothing} from $mirror"
    local t0 rc=0
    t0=$(now)
    run mmdebstrap --mode="$mode" --variant=minbase --format=directory \
        --include="$include" "${hooks[@]}" "$DEBIAN_SUITE" "$stage" "$mirror" \
        > "$work/mmdebstrap.log" 2>&1 || rc=$?
    local t1
    t1=$(now)
    local marks s0 s1
    marks="$(grep '^runner-image-mark' "$work/mmdebstrap.log" || true)"
    s0="$(awk '$2 == "setup-start" { print $3 }' <<<"$marks")"
    s1="$(awk '$2 == "setup-end" { print $3 }' <<<"$marks")"
    if [ "$rc" != 0 ]; then
        if grep -q '^runner-setup-failed' "$work/mmdebstrap.log"; then
            grep '^setup: ' "$work/mmdebstrap.log" | sed 's/^setup: //' >&2 || true
            spec_error "setup failed ($(sed -n 's/^runner-setup-failed: //p' "$work/mmdebstrap.log" | head -n1)); its output is above"
        fi
        local apt_error
        apt_error="$(grep -m1 -E "^E: (Unable to locate package|Package '.*' has no installation candidate|Version '.*' for '.*' was not found|Release '.*' for '.*' was not found|Couldn't find any package)" "$work/mmdebstrap.log" || true)"
        [ -n "$apt_error" ] && spec_error "apt: $apt_error"
        tail -n 25 "$work/mmdebstrap.log" >&2
        die "mmdebstrap failed (its last lines are above; is $mirror reachable?)"
    fi
    grep '^setup: ' "$work/mmdebstrap.log" >&2 || true
    # Caches, logs and host files out, after mmdebstrap's own clean-up: in a
    # hook, removing /tmp/* or the apt lists pulls files from under the
    # `apt-get clean` it runs last.
    "${inside[@]}" sh -c 'cd "$1" && rm -rf etc/resolv.conf var/log/* var/cache/ldconfig/aux-cache \
        var/cache/debconf/*-old var/lib/dpkg/*-old tmp/* var/tmp/* root/.bash_history \
        var/lib/apt/lists/* var/cache/apt/*.bin' sh "$stage"
    # Everything this build created or changed, mmdebstrap's own files and
    # clean-up included, gets the fixed epoch; package files keep their
    # mtimes from the .debs (Python's .pyc files are checked against them).
    "${inside[@]}" find "$stage" -xdev -newer "$work/start-marker" -exec touch -h -d "@$IMAGE_EPOCH" {} +
    if [ -n "$s0" ] && [ -n "$s1" ]; then
        phase bootstrap "$t0" "$(echo "$t1 - ($s1 - $s0)" | bc)"
        phase setup "$s0" "$s1"
    else
        phase bootstrap "$t0" "$t1"
    fi
}

# A non-Debian tree: files, init and agent copied in, setup under unshare(1).
finish_tree() {
    copy_files_into "$stage"
    local sbin="$stage/sbin"
    if [ -L "$sbin" ]; then
        sbin="$stage/$(readlink "$sbin" | sed 's|^/||')"
        case "$sbin" in "$stage"/usr/sbin) ;; *) die "unexpected /sbin symlink in the image" ;; esac
    fi
    mkdir -p "$sbin" "$stage/run" "$stage/proc" "$stage/sys" "$stage/dev" "$stage/tmp"
    install -m 0755 "$INIT_SCRIPT" "$sbin/runner-init"
    install -m 0755 "$agent" "$sbin/runner-agent"
    [ -z "$size_mib" ] || sh -c "$MARK_ROOT_ON_DISK" sh "$stage"
    # runner-init is a busybox script: the image needs /bin/busybox.
    if [ ! -x "$stage/bin/busybox" ]; then
        install -D -m 0755 /bin/busybox "$stage/bin/busybox"
    fi
    if [ -n "$setup" ]; then
        [ -x "$stage/bin/sh" ] || [ -L "$stage/bin/sh" ] || spec_error "setup needs /bin/sh, and the image has none"
        write_setup_runner
        install -m 0700 "$setup" "$stage/run/runner-setup.sh"
    fi
    if [ -n "$setup" ] || [ -n "$owners" ]; then
        give_tree_to_subordinate_root
    fi
    if [ -n "$setup" ]; then
        local t0 rc=0
        t0=$(now)
        # The namespace's root is a subordinate id: it owns the tree and
        # nothing else on the host, not even our own files.
        run "${inside[@]}" unshare --mount --pid --fork --kill-child sh -c \
            'mount -t proc proc "$1/proc" && sh "$2" "$1"; rc=$?; umount "$1/proc"; exit $rc' \
            sh "$stage" "$work/run-setup.sh" 2> "$work/setup.log" || rc=$?
        phase setup "$t0" "$(now)"
        if [ "$rc" != 0 ]; then
            sed -n 's/^setup: //p' "$work/setup.log" >&2
            grep -v '^setup: \|^runner-setup-failed' "$work/setup.log" >&2 || true
            spec_error "setup failed ($(sed -n 's/^runner-setup-failed: //p' "$work/setup.log" | head -n1)); its output is above"
        fi
        cat "$work/setup.log" >&2
    fi
    # Whatever this build created or changed gets the fixed epoch.
    "${inside[@]}" find "$stage" -xdev -newer "$work/start-marker" -exec touch -h -d "@$IMAGE_EPOCH" {} +
}

# Before a minimal or OCI tree's setup runs: the tree, ours so far, becomes
# the subordinate root's (as in mmdebstrap's unshare mode), so that setup
# runs as a root that cannot touch our files. A namespace that maps both
# our uid and the subordinate range does the chown; setuid and setgid bits,
# which chown clears, are put back.
give_tree_to_subordinate_root() {
    command -v mmdebstrap >/dev/null || die "missing build dependency: apt-get install mmdebstrap uidmap"
    grep -q "^\($(id -un)\|$(id -u)\):" /etc/subuid 2>/dev/null \
        || die "setup runs as the root of a user namespace, and $(id -un) has no range in /etc/subuid and /etc/subgid: run scripts/setup-host as root, or: usermod --add-subuids 100000-165535 --add-subgids 100000-165535 $(id -un)"
    # An OCI tree's owners and modes, as its layers gave them (recorded by
    # the unpacker, runner/machine/src/images/oci): ids of this namespace,
    # which own nothing on the host.
    unshare --user --map-auto --map-user=65536 --map-group=65536 --setuid 0 --setgid 0 \
        bash -c 'set -e
            find "$1" -xdev ! -type l -perm /6000 -printf "%m\t%p\0" > "$2"
            chown -R -h 0:0 "$1"
            while IFS=$'"'"'\t'"'"' read -r -d "" mode path; do chmod "$mode" "$path"; done < "$2"
            [ -n "$3" ] || exit 0
            while IFS= read -r -d "" record; do
                uid=${record%%:*}; rest=${record#*:}
                gid=${rest%%:*}; rest=${rest#*:}
                mode=${rest%%:*}; path=$1/${rest#*:}
                chown -h "$uid:$gid" "$path"
                [ -L "$path" ] || chmod "$mode" "$path"
            done < "$3"' \
        bash "$stage" "$work/setid.list" "$owners" || die "cannot give the tree to the user namespace's root (unshare --map-auto)"
    inside=(mmdebstrap --unshare-helper)
}

# In a rootless Debian build only mmdebstrap's user namespace sees the
# owners right; mke2fs must read the tree from inside it. (So must a minimal
# or OCI tree's steps after setup: give_tree_to_subordinate_root.)
[ "$rootless" = 1 ] && [ "$base" = debian ] && inside=(mmdebstrap --unshare-helper)

# Everything newer than this was made by the build (symlinks debugfs rdump
# creates, copied files, what setup writes): it gets the fixed epoch. Files
# of a base keep their own mtimes, restored by rdump or the OCI unpacker.
touch "$work/start-marker"
sleep 1 # mtimes have 1 s resolution in the image; keep "before" and "during" apart
t0=$(now)
case "$base" in
    debian) build_debian ;;
    minimal)
        [ -f "$from_image" ] || die "--from-image is required for base minimal"
        mkdir "$stage"
        debugfs -R "rdump / $stage" "$from_image" >/dev/null 2>"$work/rdump.log" \
            || { cat "$work/rdump.log" >&2; die "cannot unpack $from_image"; }
        phase bootstrap "$t0" "$(now)"
        finish_tree ;;
    tree)
        [ -d "$tree" ] || die "--tree DIR is required for base tree"
        mv "$tree" "$stage"
        phase bootstrap "$t0" "$(now)"
        finish_tree ;;
esac

# --- ext4 ---------------------------------------------------------------------------
t0=$(now)
content_kib=$("${inside[@]}" du -sk --apparent-size "$stage" | cut -f1)
used_kib=$("${inside[@]}" du -sk "$stage" | cut -f1)
[ "$used_kib" -gt "$content_kib" ] && content_kib=$used_kib
entries=$("${inside[@]}" find "$stage" -xdev | wc -l)
inodes=$((entries + entries / 10 + 256))
need_mib=$(( (content_kib + content_kib * 15 / 100 + inodes / 4 + 8192 + 1023) / 1024 ))
if [ -n "$size_mib" ]; then
    if [ "$need_mib" -gt "$size_mib" ]; then
        spec_error "the image needs ${need_mib}M, $((need_mib - size_mib))M more than its size: ${size_mib}M"
    fi
    # The rest of `size` is free space in the file system (sparse on disk).
    inodes=$(( inodes > size_mib * 64 ? inodes : size_mib * 64 ))
    mib=$size_mib
else
    mib=$need_mib
fi
uuid="${key:16:8}-${key:24:4}-${key:28:4}-${key:32:4}-${key:36:12}"
img="$work/image.ext4"
log "mkfs.ext4: ${mib} MiB, $inodes inodes, $entries entries"
mkfs_args=(-q -F -t ext4 -T default -m 0 -N "$inodes" -L runner-root -U "$uuid"
    -E "root_owner=0:0,hash_seed=$uuid" -d "$stage")
if [ ${#inside[@]} -eq 0 ]; then
    truncate -s "${mib}M" "$img"
    E2FSPROGS_FAKE_TIME=$IMAGE_EPOCH MKE2FS_CONFIG="$MKE2FS_CONF" run mkfs.ext4 "${mkfs_args[@]}" "$img" >&2 \
        || die "mkfs.ext4 -d failed"
else
    # Inside the namespace we are a subordinate id that may not write our
    # files: mke2fs writes into a sticky world-writable directory, and we
    # copy the result out (sparse) as ourselves.
    mkdir -m 1777 "$ns_out"
    E2FSPROGS_FAKE_TIME=$IMAGE_EPOCH MKE2FS_CONFIG="$MKE2FS_CONF" run "${inside[@]}" \
        sh -c 'truncate -s "$1" "$2" && shift 2 && exec mkfs.ext4 "$@"' \
        sh "${mib}M" "$ns_out/image.ext4" "${mkfs_args[@]}" "$ns_out/image.ext4" >&2 \
        || die "mkfs.ext4 -d failed"
    cp --sparse=always "$ns_out/image.ext4" "$img"
    "${inside[@]}" rm -f "$ns_out/image.ext4"
fi

# ctime cannot be set from user space and atime moves when files are read:
# pin both on every populated inode from lost+found (11) on; 1-10 are
# reserved and carry the fake time already. Minimal and OCI trees
# built without root belong to the building user: give them to root.
fix_owner=0
[ "$rootless" = 1 ] && [ ${#inside[@]} -eq 0 ] && fix_owner=1
E2FSPROGS_FAKE_TIME=$IMAGE_EPOCH debugfs -R "ls -l /" "$img" >/dev/null 2>&1 || die "debugfs cannot read the new image"
dumpe2fs "$img" 2>/dev/null | awk -v from=11 -f "$USED_INODES_AWK" \
    | awk -v epoch="$IMAGE_EPOCH" -v owner="$fix_owner" '{
        if (owner) printf "sif <%d> uid 0\nsif <%d> gid 0\n", $1, $1
        printf "sif <%d> ctime @%s\nsif <%d> atime @%s\n", $1, epoch, $1, epoch
    }' > "$work/fixup.debugfs"
E2FSPROGS_FAKE_TIME=$IMAGE_EPOCH debugfs -w -f "$work/fixup.debugfs" "$img" >/dev/null 2>"$work/debugfs.err" \
    || die "debugfs could not open the new image"
if grep -v '^debugfs [0-9]' "$work/debugfs.err" | grep -q .; then
    head -n 5 "$work/debugfs.err" >&2
    die "debugfs could not normalise the image (first errors above)"
fi
e2fsck -fn "$img" > "$work/e2fsck.log" 2>&1 || { tail -n 20 "$work/e2fsck.log" >&2; die "e2fsck found problems in the new image"; }
phase ext4 "$t0" "$(now)"
mv -f "$img" "$out"
