#!/bin/sh
# moby's check-config.sh (Debian's docker.io ships it) on the running
# kernel, judged on what Docker and Podman need: every "Generally Necessary"
# line, the overlay storage driver and the bridge network driver. The
# script's own exit status also counts optional features (btrfs, zfs,
# vxlan...), which a CI guest does without.
report=$(/usr/share/docker.io/contrib/check-config.sh 2>&1 | sed 's/\x1b\[[0-9;]*m//g')
printf '%s\n' "$report"
necessary=$(printf '%s\n' "$report" | sed -n '/^Generally Necessary:/,/^Optional Features:/p')
[ -n "$necessary" ] || { echo "check-kernel: check-config.sh printed no 'Generally Necessary' section"; exit 1; }
if printf '%s\n' "$necessary" | grep -E 'missing|nonexistent|single mountpoint'; then
    echo "check-kernel: the kernel lacks what containers need (above)"
    exit 1
fi
# The overlay storage driver, and what Docker's bridge driver uses beyond the
# necessary list.
for option in OVERLAY_FS BRIDGE VETH BRIDGE_NETFILTER IP_NF_NAT NF_TABLES NFT_COMPAT; do
    zgrep -q "^CONFIG_$option=y" /proc/config.gz || { echo "check-kernel: CONFIG_$option is not set"; exit 1; }
done
echo "check-kernel: every option Docker and Podman need is enabled"
