//! Snapshots of a running microVM, and restoring fresh clones from them.
//!
//! - [`file`]: the versioned, checked file format (header, state, memory);
//! - [`vcpu_state`] and [`vm_state`]: what KVM holds per vCPU and per VM;
//! - the virtio-mmio transports save their own registers and queues
//!   (`virtio_mmio::state`), and each device model its own bytes.
//!
//! Taking one: [`crate::VmmHandle::snapshot`] on a VM built with a
//! [`crate::config::SnapshotConfig`]. Every vCPU is kicked out of KVM_RUN
//! and saves itself, then the event loop saves the VM, the devices, the
//! serial port and guest memory, writes the file and ends the VM
//! ([`crate::ExitReason::Snapshotted`]). Restoring: [`crate::Vmm::restore`].

pub mod file;
pub mod vcpu_state;
pub mod vm_state;

use serde::{Deserialize, Serialize};
use vm_superio::serial::SerialState;

use crate::virtio_mmio::state::TransportState;
use vcpu_state::VcpuState;
use vm_state::VmState;

/// Everything but guest memory, as stored (JSON) in the snapshot file.
#[derive(Serialize, Deserialize)]
pub struct SnapshotState {
    pub memory_mib: u32,
    pub vm: VmState,
    pub vcpus: Vec<VcpuState>,
    pub serial: SavedSerial,
    /// In attach order: a restore attaches the same devices in that order.
    pub devices: Vec<TransportState>,
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
