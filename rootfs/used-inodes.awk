# Reads `dumpe2fs IMAGE` and prints, one a line, the inodes in use from
# inode `from` on (-v from=N): the ones mke2fs -d populated, whose owners
# and times build.sh and build-spec.sh then pin with debugfs.
/^Inodes per group:/ { ipg = $4 }
/^Group [0-9]+:/ { g = $2 + 0 }
/^  Free inodes:/ {
    first = g * ipg + 1; last = (g + 1) * ipg
    list = $0; sub(/^  Free inodes: */, "", list)
    n = split(list, r, /, */); split("", free)
    for (i = 1; i <= n; i++) {
        if (r[i] == "") continue
        if (split(r[i], ab, "-") == 1) ab[2] = ab[1]
        for (j = ab[1] + 0; j <= ab[2] + 0; j++) free[j] = 1
    }
    for (j = first; j <= last; j++) if (j >= from && !(j in free)) print j
}
