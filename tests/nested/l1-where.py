#!/usr/bin/env python3
"""Where a frozen L1's vCPUs are: asks QEMU's monitor for every vCPU's
registers and names the kernel function each RIP is in, from the
/proc/kallsyms that l1-init saved. A RIP outside L1's kernel is a nested
guest's (L2's) while L1 runs it.

    l1-where.py MONITOR_SOCKET KALLSYMS
"""
import bisect
import re
import socket
import sys
import time


def monitor(path, command):
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(command.encode() + b"\n")
        time.sleep(2)
        chunks = []
        try:
            while True:
                data = s.recv(65536)
                if not data:
                    break
                chunks.append(data)
        except socket.timeout:
            pass
        return b"".join(chunks).decode(errors="replace")


def symbols(path):
    table = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[1] in ("t", "T", "w", "W"):
                table.append((int(parts[0], 16), parts[2]))
    table.sort()
    return table


def main():
    sock, kallsyms = sys.argv[1], sys.argv[2]
    table = symbols(kallsyms)
    addrs = [a for a, _ in table]
    text = monitor(sock, "info registers -a")
    for cpu, rip in re.findall(r"CPU#(\d+).*?RIP=([0-9a-f]+)", text, re.S):
        rip = int(rip, 16)
        i = bisect.bisect_right(addrs, rip) - 1
        inside = i >= 0 and rip - table[i][0] < 0x10000
        where = f"{table[i][1]}+{rip - table[i][0]:#x}" if inside else "not L1's kernel (L2?)"
        print(f"L1 vCPU {cpu}: RIP {rip:#x} in {where}")


if __name__ == "__main__":
    main()
