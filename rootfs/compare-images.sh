#!/usr/bin/env bash
# Compare two ext4 images built from one spec (a reproducibility check):
#
#   rootfs/compare-images.sh A.ext4 B.ext4
#
# Prints whether the images are byte-identical; if not, which paths differ
# in their list, contents, or inode metadata (mode, owner, size, times,
# link target), read with debugfs (no root, no mount). Exit 0 when the file
# lists and contents agree (metadata differences are listed, not fatal).
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 A.ext4 B.ext4" >&2; exit 2; }
a="$1" b="$2"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

if cmp -s "$a" "$b"; then
    echo "byte-identical: $(sha256sum "$a" | cut -c1-16)"
    exit 0
fi
echo "images differ: $(sha256sum "$a" | cut -c1-16) vs $(sha256sum "$b" | cut -c1-16)"

for side in a b; do
    image="${!side}"
    mkdir "$work/$side"
    debugfs -R "rdump / $work/$side" "$image" 2>/dev/null
    # Paths and types; symlink times from rdump are not the image's.
    (cd "$work/$side" && find . -printf '%y %p\n' | sort) > "$work/$side.list"
    # Inode metadata, one debugfs run for all paths.
    sed 's/^. \.//; s|^$|/|' "$work/$side.list" | awk '{ printf "stat \"%s\"\n", ($0 == "" ? "/" : $0) }' > "$work/$side.cmds"
    debugfs -f "$work/$side.cmds" "$image" 2>/dev/null \
        | awk '/^debugfs: stat / { path = $3; gsub(/"/, "", path) }
               /^Inode:|^User:|^ [cma]time:|^crtime:|^Fast link dest:|^Size/ {
                   line = $0; gsub(/Inode: +[0-9]+ +/, "", line); gsub(/Generation:.*/, "", line)
                   print path " " line }' > "$work/$side.meta"
done

status=0
if ! diff -q "$work/a.list" "$work/b.list" >/dev/null; then
    echo "file lists differ:"
    diff "$work/a.list" "$work/b.list" | head -n 20
    status=1
else
    echo "file lists agree: $(wc -l < "$work/a.list") entries"
fi
content="$(cd "$work" && diff -rq --no-dereference a b 2>&1 | head -n 20 || true)"
if [ -n "$content" ]; then
    echo "contents differ:"
    echo "$content"
    status=1
else
    echo "contents agree"
fi
meta="$(diff "$work/a.meta" "$work/b.meta" | grep '^[<>]' || true)"
if [ -n "$meta" ]; then
    echo "metadata differs on $(echo "$meta" | awk '{ print $2 }' | sort -u | wc -l) paths (first lines, < A > B):"
    echo "$meta" | head -n 20
else
    echo "metadata agrees (mode, owner, size, mtime, ctime, atime, crtime)"
fi
exit "$status"
