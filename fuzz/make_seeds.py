#!/usr/bin/env python3
"""Writes the seed inputs under fuzz/seeds/<target>/: a few valid inputs per
target, in the layouts the entry points document (see the `fuzzing` module
of each crate). Run it again after changing a layout; the seeds are
committed, so neither the fuzzers nor the replay tests need Python.

The `device_state` and `snapshot` seeds are not written here: they are
the snapshot codec's encoding of Rust types, so the crates' tests write
them from the types themselves (see "Seeds and regressions" in
fuzz/README.md)."""

import gzip
import io
import json
import os
import shutil
import struct
import subprocess
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = os.path.join(HERE, "seeds")

# runner_devices::fuzzing layout.
QUEUE_SIZE = 8
DATA = 0x1000
REGION2 = 0x20000
F_NEXT, F_WRITE, F_INDIRECT = 1, 2, 4


def write(target, name, data):
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def frame(kind, payload):
    return struct.pack("<IB", len(payload), kind) + payload


def control(msg):
    return frame(0, json.dumps(msg).encode())


def desc(addr, length, flags=0, nxt=0):
    return struct.pack("<QIHH", addr, length, flags, nxt)


def chain_input(control_byte, descs, memory):
    """`descs` fill the table from index 0; `memory` lands at DATA."""
    table = b"".join(descs).ljust(QUEUE_SIZE * 16, b"\0")
    return bytes([control_byte]) + table + memory


def vsock_hdr(length, op=5, src_cid=3, dst_cid=2, type_=1):
    return struct.pack("<QQIIIHHIII", src_cid, dst_cid, 1234, 10000, length,
                       type_, op, 0, 65536, 0)


def frames():
    hello = control({"type": "hello", "version": 2,
                     "capabilities": ["exec"], "who": "seed"})
    exited = control({"type": "exited", "code": 0, "signal": None,
                      "duration_ms": 5, "max_rss_kib": 100,
                      "timed_out": False, "cancelled": False})
    write("frame", "hello", b"\x00" + hello)
    write("frame", "exec-output", b"\x03" + hello + frame(1, b"out\n")
          + frame(2, b"err\n") + exited)
    write("frame", "restore", b"\x07" + control({
        "type": "restored", "generation": 1, "entropy": list(range(64)),
        "unix_time_ns": 1700000000123456789,
        "clone_id": "0123456789abcdef0123456789abcdef"})
        + control({"type": "restore_applied", "generation": 1}))
    write("frame", "tar-stream", b"\x0f" + frame(4, b"x" * 600)
          + frame(4, b"y" * 10) + control({"type": "tar_end"}))


def vsock():
    payload = b"hello"
    # Linux 6.1 style: header and payload in separate descriptors.
    write("vsock_packet", "tx-split", chain_input(0, [
        desc(DATA, 44, F_NEXT, 1), desc(DATA + 44, len(payload))],
        vsock_hdr(len(payload)) + payload))
    # Later kernels: one descriptor.
    write("vsock_packet", "tx-single", chain_input(0, [
        desc(DATA, 44 + len(payload))], vsock_hdr(len(payload)) + payload))
    write("vsock_packet", "tx-request", chain_input(0, [
        desc(DATA, 44)], vsock_hdr(0, op=1)))
    # Payload spilling over into the second region.
    write("vsock_packet", "tx-two-regions", chain_input(0, [
        desc(DATA, 44, F_NEXT, 1), desc(REGION2, 100)],
        vsock_hdr(100).ljust(0x10000 - DATA, b"\0") + b"z" * 100))
    # One payload descriptor across the boundary of the first two regions.
    write("vsock_packet", "tx-across-regions", chain_input(0, [
        desc(DATA, 44, F_NEXT, 1), desc(0x7ff0, 100)],
        vsock_hdr(100).ljust(0x7ff0 - DATA, b"\0") + b"w" * 100))
    # An indirect table at DATA + 0x100 holding header and payload.
    indirect = desc(DATA, 44, F_NEXT, 1) + desc(DATA + 44, 5)
    write("vsock_packet", "tx-indirect", chain_input(0, [
        desc(DATA + 0x100, len(indirect), F_INDIRECT)],
        (vsock_hdr(5) + payload).ljust(0x100, b"\0") + indirect))
    write("vsock_packet", "rx", chain_input(0x80, [
        desc(DATA, 44, F_WRITE | F_NEXT, 1), desc(DATA + 0x100, 4096, F_WRITE)],
        b""))


def block():
    def hdr(kind, sector):
        return struct.pack("<IIQ", kind, 0, sector)
    # IN (0): header, 512-byte buffer, status.
    write("block_request", "read", chain_input(0, [
        desc(DATA, 16, F_NEXT, 1), desc(DATA + 0x100, 512, F_WRITE | F_NEXT, 2),
        desc(DATA + 0x400, 1, F_WRITE)], hdr(0, 8)))
    # OUT (1): header, data, status.
    write("block_request", "write", chain_input(0, [
        desc(DATA, 16, F_NEXT, 1), desc(DATA + 0x100, 1024, F_NEXT, 2),
        desc(DATA + 0x800, 1, F_WRITE)], hdr(1, 0)))
    # A read whose buffer spans the boundary of the first two regions.
    write("block_request", "read-across-regions", chain_input(0, [
        desc(DATA, 16, F_NEXT, 1), desc(0x7f00, 1024, F_WRITE | F_NEXT, 2),
        desc(DATA + 0x400, 1, F_WRITE)], hdr(0, 8)))
    # FLUSH (4) with header and status in the same indirect table.
    indirect = desc(DATA, 16, F_NEXT, 1) + desc(DATA + 0x20, 1, F_WRITE)
    write("block_request", "flush-indirect", chain_input(0, [
        desc(DATA + 0x100, len(indirect), F_INDIRECT)],
        hdr(4, 0).ljust(0x100, b"\0") + indirect))
    # GET_ID (8): the serial buffer and status in one writable descriptor.
    write("block_request", "get-id", chain_input(0, [
        desc(DATA, 16, F_NEXT, 1), desc(REGION2, 21, F_WRITE)], hdr(8, 0)))


def eth(ethertype, payload):
    return b"\xff" * 6 + bytes([0x52, 0x54, 0, 0x12, 0x34, 0x56]) \
        + struct.pack(">H", ethertype) + payload


def ipv4(protocol, dst, segment):
    header = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(segment), 1, 0x4000,
                         64, protocol, 0, bytes([10, 0, 2, 15]), bytes(dst))
    return eth(0x0800, header + segment)


def ipv6(next_header, dst, segment):
    header = struct.pack(">IHBB16s16s", 0x6000_0000, len(segment), next_header, 64,
                         bytes(16), bytes(dst))
    return eth(0x86dd, header + segment)


def tcp_syn(src_port, dst_port):
    return struct.pack(">HHIIBBHHH", src_port, dst_port, 1, 0, 0x50, 0x02, 65535, 0, 0)


def udp(src_port, dst_port, payload):
    return struct.pack(">HHHH", src_port, dst_port, 8 + len(payload), 0) + payload


def dns_name(name):
    return b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0"


def dns_query(qid, name):
    return struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + dns_name(name) + struct.pack(">HH", 1, 1)


def dns_answer(qid, name, address, ttl):
    return (struct.pack(">HHHHHH", qid, 0x8180, 1, 1, 0, 0) + dns_name(name)
            + struct.pack(">HH", 1, 1) + struct.pack(">HHHIH", 0xc00c, 1, 1, ttl, 4)
            + bytes(address))


def record(kind, data):
    return bytes([kind]) + struct.pack(">H", len(data)) + data


# The forwarder's first id upstream (runner_devices::net::egress::Egress).
FIRST_FORWARDED_ID = 0xf891


def net():
    """Inputs runner_devices::fuzzing::net_filter accepts: record series
    for the egress policy under net_rules (`NET_BARE_FRAME` = 0x40; kind
    0 a guest frame, 1 a resolver datagram), and TX chains for the device
    (`NET_LEGACY` = 0x08)."""
    frames = {
        "arp": eth(0x0806, struct.pack(">HHBBH", 1, 0x0800, 6, 4, 1) + bytes(20)),
        "dhcp": ipv4(17, [255] * 4, udp(68, 67, bytes(240))),
        "tcp-allowed": ipv4(6, [10, 0, 2, 2], tcp_syn(40002, 8080)),
    }
    for name, frame in frames.items():
        write("net_filter", "bare-" + name, b"\x40" + record(0, frame))
    query = ipv4(17, [10, 0, 2, 3], udp(40000, 53, dns_query(0x1234, "crates.io")))
    # The name resolves, and its address opens on the entry's port.
    write("net_filter", "bare-dns-resolved", b"\x40" + record(0, query)
          + record(1, dns_answer(FIRST_FORWARDED_ID, "crates.io", [151, 101, 0, 1], 60))
          + record(0, ipv4(6, [151, 101, 0, 1], tcp_syn(40005, 443))))
    # The operator's name answers the host's loopback: the gateway opens.
    query = ipv4(17, [10, 0, 2, 3], udp(40000, 53, dns_query(0x1235, "web.test")))
    write("net_filter", "bare-dns-loopback", b"\x40" + record(0, query)
          + record(1, dns_answer(FIRST_FORWARDED_ID, "web.test", [127, 0, 0, 1], 60))
          + record(0, ipv4(6, [10, 0, 2, 2], tcp_syn(40006, 8000))))
    # A name not listed: NXDOMAIN here; then ARP, which passes.
    query = ipv4(17, [10, 0, 2, 3], udp(40000, 53, dns_query(0x1236, "evil.example")))
    write("net_filter", "bare-dns-nxdomain", b"\x40" + record(0, query)
          + record(0, frames["arp"]))
    hdr = bytes(12)
    syn = frames["tcp-allowed"]
    # Linux: the virtio-net header and the frame in one descriptor.
    write("net_filter", "tx-single", chain_input(0, [
        desc(DATA, len(hdr + syn))], hdr + syn))
    # Header and frame apart, the frame across the boundary of two regions.
    write("net_filter", "tx-across-regions", chain_input(0, [
        desc(DATA, 12, F_NEXT, 1), desc(0x8000 - 20, len(syn))],
        hdr.ljust(0x8000 - 20 - DATA, b"\0") + syn))
    # A writable descriptor in a TX chain is not part of the frame.
    dns = query
    write("net_filter", "tx-indirect", chain_input(0, [
        desc(DATA + 0x200, 48, F_INDIRECT)],
        (hdr + dns).ljust(0x200, b"\0") + desc(DATA, 12, F_NEXT, 1)
        + desc(DATA + 12, len(dns), F_NEXT, 2) + desc(DATA + 0x400, 64, F_WRITE)))
    # A legacy driver: a 10-byte header.
    write("net_filter", "tx-legacy", chain_input(0x08, [
        desc(DATA, 10 + len(syn))], bytes(10) + syn))


def reports():
    """Guest test reports, from the report readers' own fixtures. The
    first byte picks the text limit (runner::fuzzing::REPORT_TEXT_LIMITS:
    0, 7, 100 or 64 KiB)."""
    fixtures = os.path.join(HERE, "..", "runner", "src", "imported", "fixtures")
    for name in sorted(os.listdir(fixtures)):
        with open(os.path.join(fixtures, name), "rb") as f:
            text = f.read()
        target = "junit" if name.endswith(".xml") else "libtest"
        stem = os.path.splitext(name)[0]
        write(target, stem, b"\x03" + text)
        write(target, stem + "-cut", b"\x01" + text)


# runner_vmm::fuzzing and virtio-mmio (virtio 1.2, 4.2.2).
REG = dict(MAGIC=0x00, VERSION=0x04, DEVICE_ID=0x08, DEVICE_FEATURES=0x10,
           DEVICE_FEATURES_SEL=0x14, DRIVER_FEATURES=0x20, DRIVER_FEATURES_SEL=0x24,
           QUEUE_SEL=0x30, QUEUE_NUM_MAX=0x34, QUEUE_NUM=0x38, QUEUE_READY=0x44,
           QUEUE_NOTIFY=0x50, INTERRUPT_STATUS=0x60, INTERRUPT_ACK=0x64, STATUS=0x70,
           QUEUE_DESC_LOW=0x80, QUEUE_DESC_HIGH=0x84, QUEUE_DRIVER_LOW=0x90,
           QUEUE_DRIVER_HIGH=0x94, QUEUE_DEVICE_LOW=0xa0, QUEUE_DEVICE_HIGH=0xa4,
           CONFIG=0x100)
ACK, DRIVER, DRIVER_OK, FEATURES_OK = 1, 2, 4, 8
OP_WRITE, OP_READ, OP_NOTIFY, OP_END, OP_BACKEND = 0, 1, 2, 3, 4
VSOCK_FEATURES = (1 << 32) | (1 << 29) | (1 << 28)  # VERSION_1, EVENT_IDX, INDIRECT_DESC
BLOCK_FEATURES = VSOCK_FEATURES | 0x244  # and SEG_MAX, BLK_SIZE, FLUSH
MMIO_QUEUE_LEN = 8
# Queue i: descriptors at i * 0x200, avail ring at + 0x80, used ring at + 0xa0.
RINGS = [0x000, 0x200, 0x400]


def op(kind, register, value=0):
    return struct.pack("<BBI", kind, register // 4, value)


def bring_up(features, queues):
    ops = [op(OP_READ, REG["MAGIC"]), op(OP_READ, REG["VERSION"]),
           op(OP_READ, REG["DEVICE_ID"]), op(OP_WRITE, REG["STATUS"], 0),
           op(OP_WRITE, REG["STATUS"], ACK), op(OP_WRITE, REG["STATUS"], ACK | DRIVER)]
    for sel in (0, 1):
        ops += [op(OP_WRITE, REG["DEVICE_FEATURES_SEL"], sel),
                op(OP_READ, REG["DEVICE_FEATURES"]),
                op(OP_WRITE, REG["DRIVER_FEATURES_SEL"], sel),
                op(OP_WRITE, REG["DRIVER_FEATURES"], (features >> (32 * sel)) & 0xffff_ffff)]
    ops += [op(OP_WRITE, REG["STATUS"], ACK | DRIVER | FEATURES_OK),
            op(OP_READ, REG["STATUS"])]
    for index in range(queues):
        base = RINGS[index]
        ops += [op(OP_WRITE, REG["QUEUE_SEL"], index), op(OP_READ, REG["QUEUE_NUM_MAX"]),
                op(OP_WRITE, REG["QUEUE_NUM"], MMIO_QUEUE_LEN),
                op(OP_WRITE, REG["QUEUE_DESC_LOW"], base),
                op(OP_WRITE, REG["QUEUE_DESC_HIGH"], 0),
                op(OP_WRITE, REG["QUEUE_DRIVER_LOW"], base + 0x80),
                op(OP_WRITE, REG["QUEUE_DRIVER_HIGH"], 0),
                op(OP_WRITE, REG["QUEUE_DEVICE_LOW"], base + 0xa0),
                op(OP_WRITE, REG["QUEUE_DEVICE_HIGH"], 0),
                op(OP_WRITE, REG["QUEUE_READY"], 1)]
    ops.append(op(OP_WRITE, REG["STATUS"], ACK | DRIVER | FEATURES_OK | DRIVER_OK))
    return ops


def guest_memory(chains, data):
    """`chains[i]`: the descriptors of the one chain queue i offers; `data`:
    (address, bytes) pairs."""
    mem = bytearray(0x600)
    for index, descs in enumerate(chains):
        base = RINGS[index]
        for i, d in enumerate(descs):
            mem[base + 16 * i: base + 16 * i + 16] = d
        if descs:
            mem[base + 0x80: base + 0x86] = struct.pack("<HHH", 0, 1, 0)
    for at, value in data:
        mem.extend(bytes(max(0, at + len(value) - len(mem))))
        mem[at: at + len(value)] = value
    return bytes(mem)


def mmio():
    # vsock: a connection request to a host port nobody listens on (the
    # device answers RST into the rx buffer), an event buffer, then the
    # driver resets the device and brings it up again.
    packet = vsock_hdr(0, op=1)
    memory = guest_memory(
        [[desc(0x800, 0x100, F_WRITE)], [desc(0x600, len(packet))], [desc(0x700, 4, F_WRITE)]],
        [(0x600, packet)])
    ops = bring_up(VSOCK_FEATURES, 3)
    ops += [op(OP_READ, REG["CONFIG"]), op(OP_READ, REG["CONFIG"] + 4),
            op(OP_NOTIFY, 0, 1), op(OP_NOTIFY | OP_BACKEND, 0),
            op(OP_READ, REG["INTERRUPT_STATUS"]), op(OP_WRITE, REG["INTERRUPT_ACK"], 1),
            op(OP_WRITE, REG["QUEUE_NOTIFY"], 0)]
    write("mmio_transport", "vsock", b"\x00" + b"".join(ops) + op(OP_END, 0) + memory)
    again = ops + [op(OP_WRITE, REG["STATUS"], 0)] + bring_up(VSOCK_FEATURES, 3)
    write("mmio_transport", "vsock-reset", b"\x00" + b"".join(again) + op(OP_END, 0) + memory)
    # block: a read of sector 1 and a flush in one indirect table.
    header = lambda kind, sector: struct.pack("<IIQ", kind, 0, sector)
    table = (desc(0x600, 16, F_NEXT, 1) + desc(0x800, 512, F_WRITE | F_NEXT, 2)
             + desc(0x620, 1, F_WRITE))
    memory = guest_memory([[desc(0x640, len(table), F_INDIRECT)]],
                          [(0x600, header(0, 1)), (0x640, table)])
    ops = bring_up(BLOCK_FEATURES, 1)
    ops += [op(OP_READ, REG["CONFIG"]), op(OP_NOTIFY, 0, 0)]
    write("mmio_transport", "block", b"\x01" + b"".join(ops) + op(OP_END, 0) + memory)


def pipelines():
    src = os.path.join(HERE, "..", "pipelines")
    for name in sorted(os.listdir(src)):
        if name.endswith(".yml"):
            shutil.copy(os.path.join(src, name), os.path.join(SEEDS, "pipeline", name))
    # Caches: defaults and a job's own, relative paths, a key from files
    # (absent in the fuzzer's empty workspace), every policy and `when`.
    write("pipeline", "caches.yml", b"""\
defaults:
  cache:
    - key: { files: [Cargo.lock, sub/b.lock], prefix: cargo }
      paths: [/usr/local/cargo/registry, target]
      fallback_keys: [cargo-main]
      size: 8G
    - { key: pip, paths: [../pip], policy: pull, when: always }
jobs:
  build: { steps: [cargo build] }
  root:
    files: none
    workdir: /src/app
    cache: { paths: [x, /tmp/y], policy: push, when: on_failure, size: 16M }
    steps: [true]
  off: { cache: [], steps: [true] }
""")
    # Services: defaults and a job's own, an image spec, every key.
    write("pipeline", "services.yml", b"""\
defaults:
  services:
    - name: db
      image: { base: debian, packages: [postgresql] }
      run: ./start-postgres.sh
      ready: pg_isready -h 127.0.0.1
      ready_timeout: 2m
      env: { POSTGRES_PASSWORD: test }
      memory: 512M
    - { name: cache, run: redis-server }
jobs:
  test: { steps: [psql -h db -c 'select 1'] }
  own:
    services: [{ name: web-1, run: httpd -f, image: minimal }]
    steps: [true]
  off: { services: [], steps: [true] }
""")


def tars():
    def archive(members):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for info, data in members:
                tar.addfile(info, io.BytesIO(data) if data is not None else None)
        return buf.getvalue()

    def info(name, kind=tarfile.REGTYPE, size=0, mode=0o644, link=""):
        i = tarfile.TarInfo(name)
        i.type, i.size, i.mode, i.linkname = kind, size, mode, link
        return i

    body = b"test results\n"
    plain = archive([
        (info("./", tarfile.DIRTYPE, mode=0o755), None),
        (info("out", tarfile.DIRTYPE, mode=0o755), None),
        (info("out/report.xml", size=len(body)), body),
        (info("out/latest", tarfile.SYMTYPE, link="report.xml"), None),
        (info("out/copy.xml", tarfile.LNKTYPE, link="out/report.xml"), None),
        (info("run.sh", size=3, mode=0o4755), b"ls\n"),
    ])
    write("unpack", "artifacts", b"\x00" + plain)
    write("unpack", "artifacts-twice", b"\x01" + plain)
    hostile = archive([
        (info("../escape", size=1), b"x"),
        (info("/abs", size=1), b"x"),
        (info("up", tarfile.SYMTYPE, link="../.."), None),
        (info("up/through", size=1), b"x"),
        (info("dev", tarfile.CHRTYPE), None),
    ])
    write("unpack", "hostile", b"\x00" + hostile)
    untar(archive, info, plain)


def untar(archive, info, plain):
    """safe_untar: control bits 0-1 pick the policy (0 artifacts, 1 OCI
    layer, 2 workspace), bit 2 unpacks the stream twice. oci_layer: bit 0
    applies the layer twice; the layer is gzip, zstd or a plain tar."""
    ARTIFACTS, OCI, WORKSPACE, TWICE = 0, 1, 2, 4
    write("safe_untar", "artifacts", bytes([ARTIFACTS]) + plain)
    write("safe_untar", "artifacts-twice", bytes([ARTIFACTS | TWICE]) + plain)
    write("safe_untar", "artifacts-hostile", bytes([ARTIFACTS]) + hostile_after(archive, info))
    layer = archive([
        (info("/etc", tarfile.DIRTYPE, mode=0o755), None),
        (info("etc/passwd", size=5), b"root\n"),
        (info("etc/shadow", tarfile.LNKTYPE, link="/etc/passwd"), None),
        (info("usr/lib/os-release", size=3), b"os\n"),
        (info("lib", tarfile.SYMTYPE, link="/usr/lib"), None),
        (info("run/initctl", tarfile.FIFOTYPE, mode=0o600), None),
        (info("bin/su", size=3, mode=0o4755), b"su\n"),
        (info("etc/.wh.shadow"), b""),
        (info("usr/.wh..wh..opq"), b""),
        (info("usr/new", size=3), b"new"),
        (info("tmp", tarfile.DIRTYPE, mode=0o1777), None),
    ])
    write("safe_untar", "oci-layer", bytes([OCI]) + layer)
    write("safe_untar", "oci-layer-twice", bytes([OCI | TWICE]) + layer)
    write("safe_untar", "oci-layer-hostile", bytes([OCI]) + archive([
        (info("ok", size=2), b"ok"),
        (info("out", tarfile.SYMTYPE, link="../outside"), None),
        (info("out/keep", size=4), b"evil"),
    ]))
    workspace = archive([
        (info("./", tarfile.DIRTYPE, mode=0o750), None),
        (info("usr/lib", tarfile.DIRTYPE, mode=0o755), None),
        (info("lib", tarfile.SYMTYPE, link="usr/lib"), None),
        (info("lib/libx.so", size=3, mode=0o755), b"elf"),
        (info("bin/tool", size=3, mode=0o4755), b"run"),
        (info("bin/alias", tarfile.LNKTYPE, link="bin/tool"), None),
        (info("dangling", tarfile.SYMTYPE, link="later/x"), None),
        (info("later", tarfile.DIRTYPE, mode=0o700), None),
    ])
    write("safe_untar", "workspace", bytes([WORKSPACE]) + workspace)
    write("safe_untar", "workspace-twice", bytes([WORKSPACE | TWICE]) + workspace)
    write("safe_untar", "workspace-hostile", bytes([WORKSPACE]) + archive([
        (info("ok", size=2), b"ok"),
        (info("a/b", tarfile.SYMTYPE, link=".."), None),
        (info("c", tarfile.SYMTYPE, link="a/b/.."), None),
        (info("c/keep", size=4), b"evil"),
    ]))

    write("oci_layer", "plain", b"\x00" + layer)
    write("oci_layer", "gzip-twice", b"\x01" + gzip.compress(layer, mtime=0))
    zstd = subprocess.run(["zstd", "-q", "-c", "-19"], input=layer,
                          capture_output=True, check=True).stdout
    write("oci_layer", "zstd", b"\x00" + zstd)

def hostile_after(archive, info):
    """Honest entries, then what a guest should never get through."""
    return archive([
        (info("ok", size=2), b"ok"),
        (info("../outside/keep", size=4), b"evil"),
        (info("/abs", size=1), b"x"),
        (info("up", tarfile.SYMTYPE, link="../outside"), None),
        (info("up/keep", size=4), b"evil"),
        (info("hard", tarfile.LNKTYPE, link="../outside/keep"), None),
        (info("dev", tarfile.CHRTYPE), None),
        (info("pipe", tarfile.FIFOTYPE), None),
        (info("suid", size=1, mode=0o6777), b"x"),
    ])


# The targets whose seeds this script writes (the others' come from the
# crates' tests).
TARGETS = ["frame", "vsock_packet", "block_request", "net_filter", "pipeline",
           "unpack", "junit", "libtest", "mmio_transport"]

if __name__ == "__main__":
    for target in TARGETS:
        shutil.rmtree(os.path.join(SEEDS, target), ignore_errors=True)
    os.makedirs(os.path.join(SEEDS, "pipeline"))
    frames()
    vsock()
    block()
    net()
    pipelines()
    tars()
    reports()
    mmio()
