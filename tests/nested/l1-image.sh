#!/usr/bin/env bash
# Builds the outer guest ("L1") of the nested KVM tier: Debian's stock kernel,
# whose kvm-amd module gives a real /dev/kvm when QEMU's TCG emulates AMD SVM
# (`-cpu max`), plus an initramfs of busybox-static, the modules that needs,
# and tests/nested/l1-init.
#
#   tests/nested/l1-image.sh      prints the image directory (vmlinuz, initrd.gz)
#
# Debian packages only: the kernel package that linux-image-amd64 depends on
# today (resolved, never hard-coded), busybox-static, and kmod's depmod for
# the module order. Cached under ${RUNNER_CACHE:-~/.cache/runner}/nested/,
# keyed by a hash of every input, and written atomically.
set -euo pipefail

readonly here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly cache="${RUNNER_CACHE:-$HOME/.cache/runner}/nested"
# What L1 needs, in dependency order: virtio-pci and 9p for the host's files,
# overlay for a writable root, kvm and kvm-amd for /dev/kvm.
readonly modules=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci
    netfs fscache 9pnet 9pnet_virtio 9p overlay irqbypass ccp kvm kvm-amd)

log() { printf 'nested/l1-image: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

for tool in depmod cpio gzip; do
    command -v "$tool" >/dev/null || die "$tool is missing (apt-get install kmod cpio gzip)"
done
[ -x /bin/busybox ] || die "/bin/busybox is missing (apt-get install busybox-static)"

# `|| true`: with pipefail, apt-cache's own failure (no package lists) would
# otherwise end the script silently instead of with the line below.
package=$(apt-cache depends linux-image-amd64 2>/dev/null |
    awk '/Depends: linux-image-[0-9]/ {print $2; exit}' || true)
[ -n "$package" ] || die "cannot resolve the kernel package of linux-image-amd64 (run apt-get update)"
version=$(apt-cache show "$package" 2>/dev/null | awk '/^Version:/ {print $2; exit}' || true)
[ -n "$version" ] || die "no Debian package $package is known (run apt-get update)"

key=$( {
    echo "$package $version"
    dpkg-query -W -f='${Version}\n' busybox-static
    printf '%s\n' "${modules[@]}"
    cat "$here/l1-init" "${BASH_SOURCE[0]}"
} | sha256sum | cut -c1-16)
out="$cache/$key"
if [ -f "$out/initrd.gz" ] && [ -f "$out/vmlinuz" ]; then
    echo "$out"
    exit 0
fi

mkdir -p "$cache"
work=$(mktemp -d "$cache/.build-XXXXXX")
trap 'rm -rf "$work"' EXIT
log "building L1 from $package $version"
(cd "$work" && apt-get download -q -o APT::Sandbox::User=root "$package=$version" >&2) ||
    die "cannot download $package $version from the Debian mirror"
dpkg-deb -x "$work"/"$package"_*.deb "$work/pkg"
kver=${package#linux-image-}
mods="$work/pkg/lib/modules/$kver"
[ -d "$mods" ] || die "$package has no lib/modules/$kver"
depmod -b "$work/pkg" "$kver"

root="$work/initramfs"
mkdir -p "$root"/{bin,dev,proc,sys,mnt,modules}
cp /bin/busybox "$root/bin/busybox"
cp "$here/l1-init" "$root/init"
chmod 755 "$root/init"
# Each wanted module, after the ones it depends on (modules.dep order).
for m in "${modules[@]}"; do
    path=$(awk -v m="$m" -F: '{n=$1; sub(".*/", "", n); sub("\\.ko.*", "", n); gsub("-", "_", n);
        w=m; gsub("-", "_", w); if (n == w) {print $1; exit}}' "$mods/modules.dep")
    [ -n "$path" ] || die "$package has no module $m"
    case "$path" in
        *.xz) xz -dc "$mods/$path" >"$root/modules/$m.ko" ;;
        *.zst) zstd -qdc "$mods/$path" >"$root/modules/$m.ko" ;;
        *) cp "$mods/$path" "$root/modules/$m.ko" ;;
    esac
    echo "$m" >>"$root/modules/order"
done
(cd "$root" && find . -print0 | LC_ALL=C sort -z |
    cpio --null -o -H newc --quiet --reproducible | gzip -9n) >"$work/initrd.gz"
cp "$work/pkg/boot/vmlinuz-$kver" "$work/vmlinuz"
mkdir -p "$work/image"
mv "$work/vmlinuz" "$work/initrd.gz" "$work/image/"
echo "$package $version" >"$work/image/source"
rm -rf "$out"
mv "$work/image" "$out"
log "L1 image: $out"
echo "$out"
