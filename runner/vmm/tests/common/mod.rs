//! Helpers shared by the KVM integration tests.

#![allow(dead_code)]

pub use runner_vmm::testing::{elf_image, require_kvm};
