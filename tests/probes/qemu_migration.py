#!/usr/bin/env python3
"""Can QEMU save (migrate to a file) a guest that uses our vhost-user devices?

Boots the minimal guest under QEMU TCG with our vhost-user-blk and
vhost-user-vsock servers (a `runner __vm-process` device process, as the
qemu backend runs them), waits for the agent, stops the guest and asks QEMU
over QMP to `migrate` it to a file, then prints QEMU's answers. On QEMU 7.2
the answer is a refusal (see README.md, "Warm start"); exit status 0 when
QEMU refuses, 1 when it saved the guest (the README would be out of date).

    RUNNER_KERNEL=... RUNNER_ROOTFS=... tests/probes/qemu_migration.py [target/debug/runner]
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

runner = sys.argv[1] if len(sys.argv) > 1 else "target/debug/runner"
kernel, rootfs = os.environ["RUNNER_KERNEL"], os.environ["RUNNER_ROOTFS"]
d = tempfile.mkdtemp(prefix="qemu-migration-")
config = {"protocol": 3, "name": "probe", "seccomp": "on", "role": {"devices": {
    "disk": {"image": rootfs, "overlay_dir": d, "serial": "runner-rootfs", "socket": f"{d}/blk.sock"},
    "vsock": {"uds": f"{d}/vsock.sock", "guest_cid": 3, "socket": f"{d}/vu.sock"}}}}
devices = subprocess.Popen([runner, "__vm-process"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
devices.stdin.write(json.dumps(config).encode())
devices.stdin.close()
assert devices.stdout.readline().strip() == b"ready", "the device process did not start"
cmdline = "console=ttyS0 reboot=k panic=-1 no_timer_check root=/dev/vda ro rootfstype=ext4 init=/sbin/runner-init"
qemu = subprocess.Popen([
    "qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-M", "microvm,acpi=off,memory-backend=mem",
    "-m", "256M", "-object", "memory-backend-memfd,id=mem,size=256M,share=on",
    "-kernel", kernel, "-append", cmdline,
    "-chardev", f"socket,id=root,path={d}/blk.sock", "-device", "vhost-user-blk,chardev=root",
    "-chardev", f"socket,id=vsock,path={d}/vu.sock", "-device", "vhost-user-vsock-device,chardev=vsock",
    "-serial", f"file:{d}/serial.log", "-display", "none", "-nodefaults", "-no-user-config",
    "-device", "i8042", "-no-reboot", "-qmp", f"unix:{d}/qmp.sock,server=on,wait=off"])
try:
    deadline = time.time() + 300
    def console():
        try:
            return open(f"{d}/serial.log", "rb").read()
        except FileNotFoundError:
            return b""

    while b"runner-agent: ready" not in console():
        assert time.time() < deadline and qemu.poll() is None, "the guest did not become ready"
        time.sleep(0.2)
    qmp = socket.socket(socket.AF_UNIX)
    qmp.connect(f"{d}/qmp.sock")
    f = qmp.makefile("rw")
    print("QEMU:", json.loads(f.readline())["QMP"]["version"]["qemu"])

    def call(command, **args):
        f.write(json.dumps({"execute": command, "arguments": args}) + "\n")
        f.flush()
        while True:
            answer = json.loads(f.readline())
            if "return" in answer or "error" in answer:
                return answer

    call("qmp_capabilities")
    print("stop:", call("stop"))
    migrate = call("migrate", uri=f"exec:cat > {d}/guest.state")
    print("migrate:", migrate)
    time.sleep(2)
    print("query-migrate:", call("query-migrate"))
    sys.exit(0 if "error" in migrate else 1)
finally:
    qemu.kill()
    devices.kill()
    qemu.wait()
    devices.wait()
    subprocess.run(["rm", "-rf", d])
