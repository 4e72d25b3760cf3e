//! Helpers shared by the KVM integration tests.

#![allow(dead_code)]

pub use runner_vmm::testing::elf_image;

pub fn require_kvm() {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!(
            "these tests boot guests under KVM and /dev/kvm is unusable ({e}): {}",
            runner_vmm::kvm_host::open_hint(e.raw_os_error().unwrap_or(0))
        );
    }
}
