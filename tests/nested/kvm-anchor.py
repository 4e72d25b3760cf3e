#!/usr/bin/env python3
"""Holds one KVM VM with an in-kernel irqchip and one vCPU that never runs,
for as long as L1 lives (run-l1.sh starts it unless --no-anchor).

Why: KVM counts vCPUs whose local APIC is software-disabled in a static key
(apic_sw_disabled). Every VM's vCPU is created that way and enables its APIC
a moment later, so each boot flips the key 0 -> 1 -> 0, and each flip makes
L1's kernel patch its own code through int3 breakpoints and IPIs to every
CPU. The L1 freezes caught so far stopped in exactly that patching
(README.md). An idle vCPU that keeps its APIC disabled keeps the count
above zero, so the key, and L1's code, stay as they are.

Measured with ftrace in L1 (function tracer on text_poke_bp_batch and
jump_label_update, `runner exec --backend kvm -- true`): without the anchor
every boot made 12 text_poke_bp_batch and 16 jump_label_update calls, from
kvm_create_lapic, kvm_lapic_reg_write and kvm_destroy_vm; with it, none.
"""
import fcntl
import os
import signal

KVM_CREATE_VM = 0xAE01
KVM_CREATE_VCPU = 0xAE41
KVM_CREATE_IRQCHIP = 0xAE60

kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
vm = fcntl.ioctl(kvm, KVM_CREATE_VM, 0)
fcntl.ioctl(vm, KVM_CREATE_IRQCHIP, 0)
vcpu = fcntl.ioctl(vm, KVM_CREATE_VCPU, 0)
print(f"kvm-anchor: VM fd {vm}, vCPU fd {vcpu}; holding them", flush=True)
while True:
    signal.pause()
