//! Building a VM from a snapshot instead of a kernel.

use std::time::Instant;

use vm_superio::serial::SerialState;

use super::{create_vm, open_kvm_for, vcpu_count, BootProtocol, Legacy, Parts, Vmm};
use crate::config::{SnapshotConfig, VmmConfig};
use crate::error::{Error, Result};
use crate::memory;
use crate::snapshot::{file, SnapshotState};

impl Vmm {
    /// A VM in the state `from` was saved in. `config` gives the vCPUs and
    /// memory (which must match the snapshot's), the serial log and the
    /// timeout; its kernel is not used, and neither is `config.snapshot`
    /// unless the clone itself is to be snapshotted.
    ///
    /// Guest memory is mapped privately from the file: clones share its
    /// pages copy-on-write and only read those the guest touches. Attach
    /// the same virtio devices in the same order as the snapshotted VM did
    /// (configured alike), then [`Vmm::run`]: it restores their state first.
    pub fn restore(config: VmmConfig, from: &SnapshotConfig) -> Result<Vmm> {
        let created = Instant::now();
        let num_vcpus = vcpu_count(&config)?;
        let memory_len = u64::from(config.memory.size_mib) << 20;
        let opened = file::open(&from.path, &from.identity, memory_len)?;
        let refused = |detail: String| Error::SnapshotRefused {
            path: from.path.clone(),
            detail,
        };
        let state = SnapshotState::decode(&opened.state)
            .map_err(|e| refused(format!("unreadable state: {e}")))?;
        if state.vcpus.len() != num_vcpus || state.memory_mib != config.memory.size_mib {
            return Err(refused(format!(
                "made with {} vCPUs and {} MiB, this VM has {num_vcpus} and {} MiB",
                state.vcpus.len(),
                state.memory_mib,
                config.memory.size_mib
            )));
        }

        let kvm = open_kvm_for(num_vcpus)?;
        let mem = memory::map_snapshot_memory(
            &opened.file,
            opened.header.memory_offset,
            config.memory.size_mib,
        )?;
        let vm = create_vm(&kvm)?;
        memory::register_with_kvm(&vm, &mem)?;
        state.vm.restore(&vm)?;
        let legacy = Legacy::new(&vm, &config, Some(&SerialState::from(&state.serial)))?;
        let mut vcpus = Vec::with_capacity(num_vcpus);
        for (index, saved) in state.vcpus.iter().enumerate() {
            let fd = vm
                .create_vcpu(index as u64)
                .map_err(Error::kvm("KVM_CREATE_VCPU"))?;
            saved.restore(&fd).map_err(|e| Error::Vcpu {
                index,
                detail: format!("restoring its state: {e}"),
            })?;
            vcpus.push(fd);
        }
        let e820 = crate::boot::params::e820_table(&mem);
        tracing::debug!(snapshot = %from.path.display(), "microVM restored");
        Vmm::assemble(Parts {
            config,
            created,
            vcpus,
            vm,
            kvm,
            mem,
            memory_file: opened.file,
            legacy,
            entry: None,
            restored_devices: Some(state.devices),
            // Attaching devices again adds their entries here; nothing
            // writes it into the restored guest's memory.
            cmdline: linux_loader::loader::Cmdline::new(crate::layout::CMDLINE_MAX_SIZE)
                .map_err(|e| Error::Cmdline(e.to_string()))?,
            e820,
            protocol: BootProtocol::Snapshot,
        })
    }

    /// Puts the attached devices into their saved state (a restored VM).
    pub(super) fn restore_devices(&mut self) -> Result<()> {
        let Some(saved) = self.restored_devices.take() else {
            return Ok(());
        };
        if saved.len() != self.virtio.len() {
            return Err(Error::Snapshot(format!(
                "the snapshot has {} virtio devices, {} were attached",
                saved.len(),
                self.virtio.len()
            )));
        }
        for (slot, state) in self.virtio.iter().zip(&saved) {
            let mut transport = slot.transport.lock().unwrap_or_else(|p| p.into_inner());
            transport.restore_state(state)?;
        }
        Ok(())
    }
}
