#!/usr/bin/env python3
"""Host side of tests/bench/vsock.sh: talks to the guest program
(runner/vhost/tests/guest/vsock_guest.rs)
through the hybrid-vsock Unix socket, checks what comes back, and prints one
`RESULTS {json}` line with the measurements.

usage: host.py UDS_PATH SIZE_MB TEST... [reboot]"""
import os, socket, sys, threading, time, zlib, json

UDS = sys.argv[1]
MB = 1024 * 1024
SIZE = int(sys.argv[2]) * MB
WHAT = sys.argv[3:]


def connect(port, timeout=60.0):
    deadline = time.time() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(UDS)
            s.sendall(b"CONNECT %d\n" % port)
            line = b""
            while not line.endswith(b"\n"):
                b = s.recv(1)
                if not b:
                    raise ConnectionError("closed before OK (guest refused?)")
                line += b
            if not line.startswith(b"OK "):
                raise ConnectionError("bad ack %r" % line)
            # A lost byte must fail the run, not hang it.
            s.settimeout(120)
            return s
        except (ConnectionError, FileNotFoundError, ConnectionRefusedError) as e:
            s.close()
            if time.time() > deadline:
                raise
            time.sleep(0.2)


def recv_exact(s, n):
    chunks, got = [], 0
    while got < n:
        b = s.recv(min(1 << 20, n - got))
        if not b:
            break
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def recv_line(s):
    line = b""
    while not line.endswith(b"\n"):
        b = s.recv(1)
        if not b:
            break
        line += b
    return line.decode().strip()


def source_pattern(n):
    blocks, i = [], 0
    while i < n:
        k = i // 65536
        blk = bytes(((j * 7 + k) & 0xFF) for j in range(256)) * 256
        blocks.append(blk[: min(65536, n - i)])
        i += 65536
    return b"".join(blocks)


results = {}


def test_echo_small():
    s = connect(1234)
    s.sendall(b"hello vsock")
    assert recv_exact(s, 11) == b"hello vsock"
    s.close()
    print("echo small: ok")


def test_echo_large(n=SIZE, half_close=True):
    s = connect(1234)
    data = os.urandom(n)
    t0 = time.time()
    th = threading.Thread(target=lambda: (s.sendall(data), half_close and s.shutdown(socket.SHUT_WR)))
    th.start()
    back = recv_exact(s, n)
    dt = time.time() - t0
    th.join()
    assert back == data, "echo of %d bytes corrupted (got %d)" % (n, len(back))
    if half_close:
        assert s.recv(1) == b"", "expected EOF after echo"
    s.close()
    print("echo large%s: %d MB intact both ways in %.2fs (%.1f MB/s each way)"
          % (" + half-close" if half_close else "", n // MB, dt, n / MB / dt))
    results["echo_mbps"] = n / MB / dt


def test_sink(n=SIZE):
    s = connect(1235)
    s.sendall(b"SINK %d\n" % n)
    data = os.urandom(n)
    t0 = time.time()
    s.sendall(data)
    line = recv_line(s)
    dt = time.time() - t0
    crc, missing = line.split()
    assert int(missing) == 0 and int(crc, 16) == zlib.crc32(data), "sink mismatch: %s" % line
    s.close()
    print("host->guest: %d MB in %.2fs = %.1f MB/s (crc ok)" % (n // MB, dt, n / MB / dt))
    results["h2g_mbps"] = n / MB / dt


def test_source(n=SIZE):
    s = connect(1235)
    t0 = time.time()
    s.sendall(b"SOURCE %d\n" % n)
    data = recv_exact(s, n)
    dt = time.time() - t0
    assert len(data) == n and zlib.crc32(data) == zlib.crc32(source_pattern(n)), "source mismatch"
    assert s.recv(1) == b""
    s.close()
    print("guest->host: %d MB in %.2fs = %.1f MB/s (crc ok)" % (n // MB, dt, n / MB / dt))
    results["g2h_mbps"] = n / MB / dt


def test_rtt(rounds=500):
    s = connect(1234)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    t0 = time.time()
    for _ in range(rounds):
        s.sendall(b"x" * 64)
        recv_exact(s, 64)
    dt = time.time() - t0
    s.close()
    print("rtt: %d round trips of 64 B, mean %.1f us" % (rounds, dt / rounds * 1e6))
    results["rtt_us"] = dt / rounds * 1e6


def test_connect_rate(n=100):
    t0 = time.time()
    for _ in range(n):
        s = connect(1234, timeout=5)
        s.close()
    dt = time.time() - t0
    print("connect+close: %d in %.2fs, %.1f ms each" % (n, dt, dt / n * 1e3))
    results["connect_ms"] = dt / n * 1e3


def test_dial():
    path = "%s_%d" % (UDS, 5555)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    l = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    l.bind(path)
    l.listen(1)

    def serve():
        c, _ = l.accept()
        got = recv_line(c)
        c.sendall(("host saw: %s\n" % got).encode())
        c.close()

    th = threading.Thread(target=serve)
    th.start()
    s = connect(1235)
    s.sendall(b"DIAL 5555\n")
    reply = recv_line(s)
    th.join()
    l.close()
    os.unlink(path)
    assert reply == "DIALED host saw: hello from guest", reply
    print("guest-initiated: ok (%s)" % reply)


def test_refused():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(UDS)
    s.sendall(b"CONNECT 4321\n")
    s.settimeout(30)
    assert s.recv(100) == b"", "expected close for a port nobody listens on"
    print("connect to closed guest port: socket closed (ok)")


def reboot():
    try:
        s = connect(1235, timeout=5)
        s.sendall(b"REBOOT\n")
        recv_line(s)
    except Exception as e:
        print("reboot: %s" % e)


tests = {
    "echo": test_echo_small,
    "large": test_echo_large,
    "large-noclose": lambda: test_echo_large(half_close=False),
    "sink": test_sink,
    "source": test_source,
    "rtt": test_rtt,
    "connects": test_connect_rate,
    "dial": test_dial,
    "refused": test_refused,
}
failed = None
for name in WHAT:
    try:
        if name == "reboot":
            reboot()
        else:
            tests[name]()
    except Exception as e:
        import traceback
        traceback.print_exc()
        failed = "%s: %s: %s" % (name, type(e).__name__, e)
        break
if failed:
    results["failed"] = failed
print("RESULTS " + json.dumps(results))
if failed:
    # Still stop the guest so QEMU exits on its own.
    if "reboot" in WHAT:
        reboot()
    sys.exit(1)
