#!/usr/bin/env bash
# Build the runner guest kernel (vmlinux with the PVH note, and bzImage),
# reproducibly, cached under ${RUNNER_CACHE:-$HOME/.cache/runner}/kernels/<key>/.
#
#   kernels/build.sh [--source TARBALL] [--install-deps]
#
# The last line on stdout is the output directory; everything else goes to
# stderr. See kernels/README.md for the cache layout and the key.
set -euo pipefail

readonly SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly SCRIPT_PATH="$SCRIPT_DIR/$(basename "${BASH_SOURCE[0]}")"
readonly FRAGMENT="$SCRIPT_DIR/microvm.config"
readonly DEFAULT_SOURCE=/usr/src/linux-source-6.1.tar.xz
readonly DEFAULT_SOURCE_PKG=linux-source-6.1
readonly CACHE_ROOT="${RUNNER_CACHE:-$HOME/.cache/runner}"

# Fixed build identity so two builds of the same inputs give the same bytes
# (these strings end up in `uname -v` and /proc/version).
export KBUILD_BUILD_TIMESTAMP="Thu Jan  1 00:00:00 UTC 1970"
export KBUILD_BUILD_USER=runner
export KBUILD_BUILD_HOST=runner
export KBUILD_BUILD_VERSION=1
export LC_ALL=C TZ=UTC
# Anything in the caller's environment that would change what kbuild does.
unset KBUILD_OUTPUT KCFLAGS KCPPFLAGS KAFLAGS CROSS_COMPILE ARCH SUBARCH \
    CC LD O V W C M MAKEFLAGS MFLAGS MAKELEVEL KCONFIG_CONFIG KCONFIG_ALLCONFIG

log() { printf 'kernels/build.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
    cat >&2 <<EOF
usage: kernels/build.sh [--source TARBALL] [--install-deps]

Builds vmlinux (PVH-bootable ELF) and bzImage from Debian's
$DEFAULT_SOURCE (default) or a kernel.org tarball, using
tinyconfig + kernels/microvm.config. Prints the cache directory on the
last stdout line.

  --source TARBALL   build this kernel.org tarball instead
  --install-deps     apt-get install missing build dependencies (root only)
EOF
}

source_tarball="$DEFAULT_SOURCE"
custom_source=0
install_deps=0
while [ $# -gt 0 ]; do
    case "$1" in
        --source)
            [ $# -ge 2 ] || { usage; die "--source needs a tarball path"; }
            source_tarball="$2"; custom_source=1; shift 2 ;;
        --source=*) source_tarball="${1#--source=}"; custom_source=1; shift ;;
        --install-deps) install_deps=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage; die "unknown argument: $1" ;;
    esac
done

if [ "$custom_source" = 1 ]; then
    [ -f "$source_tarball" ] || die "source tarball not found: $source_tarball"
    source_tarball="$(cd "$(dirname "$source_tarball")" && pwd)/$(basename "$source_tarball")"
fi

# --- cache key ---------------------------------------------------------------
# The key covers everything that decides the output bytes: the source, our
# fragment, this script and the toolchain. Computing it is cheap (no tarball
# hashing for the Debian package), so a cache hit returns in well under 2 s.
source_identity() {
    if [ "$custom_source" = 1 ]; then
        printf 'tarball-sha256:%s' "$(sha256sum "$source_tarball" | cut -d' ' -f1)"
    else
        local ver
        ver="$(dpkg-query -W -f='${Status} ${Version}' "$DEFAULT_SOURCE_PKG" 2>/dev/null || true)"
        case "$ver" in
            "install ok installed "*) printf 'debian:%s:%s' "$DEFAULT_SOURCE_PKG" "${ver##* }" ;;
            *) return 1 ;;
        esac
    fi
}

toolchain_identity() {
    local cc ld
    cc="$(gcc --version 2>/dev/null | head -n1 || true)"
    ld="$(ld --version 2>/dev/null | head -n1 || true)"
    printf 'cc=%s\nld=%s' "${cc:-none}" "${ld:-none}"
}

compute_key() {
    src_id="$(source_identity)" || return 1
    key_inputs="$(printf 'source=%s\nfragment=%s\nbuild.sh=%s\n%s\n' \
        "$src_id" \
        "$(sha256sum "$FRAGMENT" | cut -d' ' -f1)" \
        "$(sha256sum "$SCRIPT_PATH" | cut -d' ' -f1)" \
        "$(toolchain_identity)")"
    key="$(printf '%s' "$key_inputs" | sha256sum | cut -c1-16)"
    cache_dir="$CACHE_ROOT/kernels/$key"
}

if [ -f "$source_tarball" ] && compute_key \
    && [ -f "$cache_dir/vmlinux" ] && [ -f "$cache_dir/bzImage" ] && [ -f "$cache_dir/config" ]; then
    log "cache hit: $cache_dir"
    printf '%s\n' "$cache_dir"
    exit 0
fi

# --- build dependencies ----------------------------------------------------------
missing_packages() {
    local -a pkgs=()
    command -v make >/dev/null || pkgs+=(make)
    command -v gcc >/dev/null || pkgs+=(gcc)
    command -v ld >/dev/null && command -v readelf >/dev/null || pkgs+=(binutils)
    command -v bc >/dev/null || pkgs+=(bc)
    command -v flex >/dev/null || pkgs+=(flex)
    command -v bison >/dev/null || pkgs+=(bison)
    command -v gzip >/dev/null || pkgs+=(gzip)
    command -v perl >/dev/null || pkgs+=(perl)
    case "$source_tarball" in *.xz) command -v xz >/dev/null || pkgs+=(xz-utils) ;; esac
    # objtool (always built for x86_64) links against libelf.
    [ -f /usr/include/gelf.h ] || pkgs+=(libelf-dev)
    # libc headers for the host tools (kconfig, objtool, ...).
    [ -f /usr/include/x86_64-linux-gnu/sys/types.h ] || [ -f /usr/include/sys/types.h ] || pkgs+=(libc6-dev)
    if [ "$custom_source" = 0 ] && [ ! -f "$source_tarball" ]; then
        pkgs+=("$DEFAULT_SOURCE_PKG")
    fi
    printf '%s\n' "${pkgs[@]}"
}

mapfile -t missing < <(missing_packages | sed '/^$/d')
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$install_deps" = 1 ]; then
        [ "$(id -u)" = 0 ] || die "--install-deps needs root; run: apt-get install ${missing[*]}"
        log "installing: ${missing[*]}"
        apt-get update >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2
        mapfile -t missing < <(missing_packages | sed '/^$/d')
        [ "${#missing[@]}" = 0 ] || die "still missing after install: ${missing[*]}"
    else
        echo "missing build dependencies: apt-get install ${missing[*]}" >&2
        exit 1
    fi
fi

# Computed again: installing packages can change the toolchain or the source.
compute_key || die "cannot identify $source_tarball (is $DEFAULT_SOURCE_PKG installed?)"

# --- temp dir, cleanup ------------------------------------------------------------
# The temp dir lives next to the cache entry so the final rename is atomic.
mkdir -p "$CACHE_ROOT/kernels"
work="$(mktemp -d "$CACHE_ROOT/kernels/.build-$key.XXXXXX")"
child=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    if [ -n "$child" ] && kill -0 "$child" 2>/dev/null; then
        # Each long step runs in its own session: stop the whole group (make, gcc...).
        kill -TERM -- "-$child" 2>/dev/null || true
        wait "$child" 2>/dev/null || true
    fi
    rm -rf --one-file-system "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM HUP

# Run a long step in its own session so an interrupt can stop all of it, and
# wait in a way that lets our traps fire immediately.
run() {
    setsid "$@" >&2 &
    child=$!
    local rc=0
    wait "$child" || rc=$?
    child=""
    return "$rc"
}

kmake() { run make -C "$work/src" ARCH=x86_64 "$@"; }

log "building kernel, key $key (source: $src_id)"
start=$(date +%s)

phase_start=$start
phase_done() { local now; now=$(date +%s); log "$1 took $((now - phase_start)) s"; phase_start=$now; }

log "extracting $source_tarball"
mkdir "$work/src"
# Debian's tarball is multi-block xz: decompressing on all cores halves this step.
decompress=()
case "$source_tarball" in *.xz) decompress=(-I "xz -T0") ;; esac
run tar "${decompress[@]}" -xf "$source_tarball" -C "$work/src" --strip-components=1 \
    || die "could not extract $source_tarball"
phase_done "extracting"
[ -f "$work/src/Makefile" ] && [ -d "$work/src/arch/x86" ] \
    || die "$source_tarball does not look like a Linux source tree"

# --- configure -------------------------------------------------------------------
# tinyconfig, then the fragment applied in allnoconfig mode: options that the
# fragment makes visible but does not mention stay off (olddefconfig alone
# would switch them to their upstream defaults, e.g. VT -> INPUT -> mice).
# Only tinyconfig's on/off decisions are carried over: its numbers were
# computed for a uniprocessor kernel (NR_CPUS=1, ...) and must be recomputed
# from their defaults under the final options.
log "configuring: tinyconfig + $(basename "$FRAGMENT")"
kmake -s tinyconfig || die "make tinyconfig failed"
{
    grep -E '^(CONFIG_[A-Za-z0-9_]+=[ym]|# CONFIG_[A-Za-z0-9_]+ is not set)$' "$work/src/.config"
    cat "$FRAGMENT"
} > "$work/allno.config"
kmake -s KCONFIG_ALLCONFIG="$work/allno.config" allnoconfig || die "applying $FRAGMENT failed"
kmake -s olddefconfig || die "make olddefconfig failed"

# Every option the fragment sets must have exactly that value now.
bad=0
while IFS= read -r line; do
    case "$line" in
        CONFIG_*=*)
            if ! grep -qxF -- "$line" "$work/src/.config"; then
                sym="${line%%=*}"
                got="$(grep -E "^(# )?$sym[= ]" "$work/src/.config" || echo "$sym absent (unknown symbol or unmet dependency)")"
                log "fragment option not applied: wanted $line, got: $got"
                bad=1
            fi ;;
        "# CONFIG_"*" is not set")
            sym="${line#\# }"; sym="${sym%% *}"
            if grep -qE "^$sym=" "$work/src/.config"; then
                log "fragment option not applied: wanted $sym off, got: $(grep -E "^$sym=" "$work/src/.config")"
                bad=1
            fi ;;
    esac
done < "$FRAGMENT"
[ "$bad" = 0 ] || die "the final .config does not match $FRAGMENT (see above); fix a missing dependency in the fragment"
phase_done "configuring"

# --- build -----------------------------------------------------------------------
jobs="$(nproc)"
log "make -j$jobs vmlinux bzImage"
kmake -j"$jobs" vmlinux bzImage || die "kernel build failed (output above)"
phase_done "compiling and linking"

# The PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY, type 0x12, owner "Xen") is
# what lets a VMM boot vmlinux directly.
readelf -n "$work/src/vmlinux" | grep -E '^\s*Xen\s' | grep -qE '0x0*12|PHYS32_ENTRY' \
    || die "vmlinux has no PVH (Xen PHYS32_ENTRY) ELF note"

mkdir "$work/out"
cp "$work/src/vmlinux" "$work/out/vmlinux"
cp "$work/src/arch/x86/boot/bzImage" "$work/out/bzImage"
cp "$work/src/.config" "$work/out/config"
printf '%s\n' "$key_inputs" > "$work/out/inputs"
sync -f "$work/out/vmlinux" 2>/dev/null || true

# Atomic publish: rename(2) of the whole directory. If another build of the
# same key finished first, keep that one.
if ! mv -T "$work/out" "$cache_dir" 2>/dev/null; then
    [ -f "$cache_dir/vmlinux" ] || die "could not move the build into $cache_dir"
    log "another build published $cache_dir first; using it"
fi

log "done in $(( $(date +%s) - start )) s: $cache_dir"
printf '%s\n' "$cache_dir"
