#!/usr/bin/env python3
"""Writes the seed inputs under fuzz/seeds/<target>/: a few valid inputs per
target, in the layouts the entry points document (see the `fuzzing` module
of each crate). Run it again after changing a layout; the seeds are
committed, so neither the fuzzers nor the replay tests need Python."""

import io
import json
import os
import shutil
import struct
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


def device_states():
    """Saved device states (runner_devices::snapshot and the block and vsock
    `snapshot` modules), checked against the `STATE_*` constants of
    runner_devices::fuzzing."""
    header = lambda device: b"RVDS" + struct.pack("<BI", 1, device)
    features, sectors, chunk = 0x1_3000_0244, 33 * 8 + 4, 4096
    serial = b"fuzz-serial".ljust(20, b"\0")
    chunks = (sectors * 512 + chunk - 1) // chunk  # 34, the last one short
    words = (chunks + 63) // 64

    def block(written, activated=1):
        bitmap = 0
        data = b""
        for c in written:
            bitmap |= 1 << c
            length = min(chunk, sectors * 512 - c * chunk)
            data += bytes([c + 1]) * length
        body = struct.pack("<QQBQ", features, features, activated, sectors) + serial
        body += b"\x01" + struct.pack("<QQ", chunk, words)
        body += b"".join(struct.pack("<Q", (bitmap >> (64 * i)) & (2**64 - 1)) for i in range(words))
        return header(2) + body + data

    write("device_state", "block-empty", b"\x00" + block([]))
    write("device_state", "block-written", b"\x00" + block([0, 1, 5, 33]))
    # Bit 1 of the control byte: a read-only device (checked against the
    # same offered features; the entry point only models the mode).
    read_only = struct.pack("<QQBQ", features, 0, 0, sectors) + serial + b"\x00"
    write("device_state", "block-read-only", b"\x02" + header(2) + read_only)
    vsock = header(19) + struct.pack("<QBQ", 0x1_3000_0000, 1, 3)
    write("device_state", "vsock", b"\x01" + vsock)


def pipelines():
    src = os.path.join(HERE, "..", "pipelines")
    for name in sorted(os.listdir(src)):
        if name.endswith(".yml"):
            shutil.copy(os.path.join(src, name), os.path.join(SEEDS, "pipeline", name))


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


if __name__ == "__main__":
    shutil.rmtree(SEEDS, ignore_errors=True)
    os.makedirs(os.path.join(SEEDS, "pipeline"))
    frames()
    vsock()
    block()
    device_states()
    pipelines()
    tars()
