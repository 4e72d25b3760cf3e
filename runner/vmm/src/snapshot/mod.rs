//! Snapshots of a running microVM, and restoring fresh clones from them.
//!
//! - [`file`]: the versioned, checked file format (header, state, memory);
//! - [`vcpu_state`] and [`vm_state`]: what KVM holds per vCPU and per VM;
//! - the virtio-mmio transports save their own registers and queues
//!   (`virtio_mmio::state`), and each device model its own state
//!   ([`runner_devices::DeviceState`]).
//!
//! All of it is one [`SnapshotState`], encoded with the one snapshot codec
//! ([`runner_devices::snapshot::codec`]) into the file's state section.
//!
//! Taking one: [`crate::VmmHandle::snapshot`] on a VM built with a
//! [`crate::config::SnapshotConfig`]. Every vCPU is paused, the devices
//! catch up with what the guest left them, then every vCPU saves itself
//! and the event loop saves the VM, the devices, the serial port and guest
//! memory, writes the file and ends the VM
//! ([`crate::ExitReason::Snapshotted`]); `vmm/take_snapshot.rs` says why in
//! that order. Restoring: [`crate::Vmm::restore`], whose devices catch up
//! once more before the guest runs.

pub mod file;
pub mod vcpu_state;
pub mod vm_state;

use runner_devices::snapshot::codec::{self, at_most, CodecError};
use serde::{Deserialize, Serialize};
use vm_superio::serial::SerialState;

use crate::boot::mptable::MAX_VCPUS;
use crate::layout::{IRQ_MAX, VIRTIO_IRQ_BASE};
use crate::virtio_mmio::state::TransportState;
use vcpu_state::VcpuState;
use vm_state::VmState;

/// Most virtio devices a VM has: one per IRQ line they are given.
pub const MAX_VIRTIO_DEVICES: usize = (IRQ_MAX + 1 - VIRTIO_IRQ_BASE) as usize;

/// Everything but guest memory, as stored in the snapshot file's state
/// section ([`SnapshotState::encode`]).
///
/// The counts are bounded when decoding: a vCPU's state decodes from a few
/// bytes into kilobytes (kvm-bindings zero-pads its structs), so an
/// unbounded count in a hostile file would decide an allocation.
#[derive(Serialize, Deserialize)]
pub struct SnapshotState {
    pub memory_mib: u32,
    pub vm: VmState,
    #[serde(deserialize_with = "at_most::<MAX_VCPUS, _, _>")]
    pub vcpus: Vec<VcpuState>,
    pub serial: SavedSerial,
    /// In attach order: a restore attaches the same devices in that order.
    #[serde(deserialize_with = "at_most::<MAX_VIRTIO_DEVICES, _, _>")]
    pub devices: Vec<TransportState>,
}

impl SnapshotState {
    /// The bytes of the file's state section.
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        codec::encode(self)
    }

    /// The state a file's state section holds; untrusted bytes, decoded
    /// within the codec's bounds.
    pub fn decode(bytes: &[u8]) -> Result<SnapshotState, CodecError> {
        codec::decode(bytes)
    }
}

/// The 8250's registers (vm-superio's `SerialState`, which has no serde).
#[derive(Clone, Serialize, Deserialize)]
pub struct SavedSerial {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

impl From<SerialState> for SavedSerial {
    fn from(s: SerialState) -> Self {
        SavedSerial {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }
}

impl From<&SavedSerial> for SerialState {
    fn from(s: &SavedSerial) -> Self {
        SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        }
    }
}

/// What a snapshot depends on in the host: the CPU (vendor, family,
/// model, stepping, feature flags) and what this KVM offers guests
/// (supported CPUID, saveable MSRs). A snapshot made elsewhere must not be
/// loaded: its vCPU state may use features this host lacks.
pub fn host_fingerprint() -> crate::Result<String> {
    use crate::error::Error;
    let kvm = crate::kvm_host::open_kvm()?;
    let cpuid = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(Error::kvm("KVM_GET_SUPPORTED_CPUID"))?;
    let mut kvm_bytes = Vec::new();
    for e in cpuid.as_slice() {
        // KVM fills some leaves from the CPU the ioctl ran on: its APIC id
        // (leaf 1 EBX[31:24], topology leaves 0xB, 0x1F, 0x8000001E).
        // Those differ between calls, not between hosts.
        if matches!(e.function, 0xb | 0x1f | 0x8000_001e) {
            continue;
        }
        let ebx = if e.function == 1 {
            e.ebx & 0x00ff_ffff
        } else {
            e.ebx
        };
        for word in [e.function, e.index, e.flags, e.eax, ebx, e.ecx, e.edx] {
            kvm_bytes.extend_from_slice(&word.to_le_bytes());
        }
    }
    for msr in vcpu_state::msr_list(&kvm)? {
        kvm_bytes.extend_from_slice(&msr.to_le_bytes());
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    // The first CPU's block; microcode and MHz change without the CPU doing so.
    let cpu: String = cpuinfo
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| {
            ["vendor_id", "cpu family", "model", "stepping", "flags"]
                .iter()
                .any(|k| l.split(':').next().is_some_and(|name| name.trim() == *k))
        })
        .collect::<Vec<_>>()
        .join("\n");
    Ok(format!(
        "cpu={:08x} kvm={:08x}",
        crc32fast::hash(cpu.as_bytes()),
        crc32fast::hash(&kvm_bytes)
    ))
}
