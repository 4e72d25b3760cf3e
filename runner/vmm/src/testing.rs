//! Helpers for the VMM's own tests and for tests and benchmarks elsewhere:
//! tiny guest images whose first instruction is known, without a real
//! kernel; guest images named by the environment; what Linux prints for
//! our e820 map.

use crate::boot::params::{E820Entry, E820_RAM, E820_RESERVED};

/// A minimal x86_64 ELF executable with one PT_LOAD segment.
pub fn elf_image(paddr: u64, code: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 64 + 56];
    b[..4].copy_from_slice(b"\x7fELF");
    b[4] = 2; // 64-bit
    b[5] = 1; // little endian
    b[6] = 1; // version
    b[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    b[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    b[20..24].copy_from_slice(&1u32.to_le_bytes());
    b[24..32].copy_from_slice(&paddr.to_le_bytes()); // e_entry
    b[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    b[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    b[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    b[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
    let ph = 64;
    b[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    b[ph + 4..ph + 8].copy_from_slice(&7u32.to_le_bytes()); // RWX
    b[ph + 8..ph + 16].copy_from_slice(&120u64.to_le_bytes()); // p_offset
    b[ph + 16..ph + 24].copy_from_slice(&paddr.to_le_bytes());
    b[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
    b[ph + 32..ph + 40].copy_from_slice(&(code.len() as u64).to_le_bytes());
    b[ph + 40..ph + 48].copy_from_slice(&(code.len() as u64).to_le_bytes());
    b.extend_from_slice(code);
    b
}

/// Panics with the reason and the fix unless /dev/kvm opens read-write:
/// tests that boot guests under KVM fail, never skip, without it.
pub fn require_kvm() {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!(
            "this test boots guests under KVM and /dev/kvm is unusable ({e}): {}",
            crate::kvm_host::open_hint(e.raw_os_error().unwrap_or(0))
        );
    }
}

/// A guest image named by an environment variable (`RUNNER_KERNEL`,
/// `RUNNER_ROOTFS`; scripts/test sets both). The variable may name the
/// kernel build's directory instead of its vmlinux: then `in_dir` is the
/// file taken from it. Panics with the fix when the image is missing.
pub fn image_from_env(var: &str, in_dir: Option<&str>) -> std::path::PathBuf {
    let hint = "run the tests through scripts/test, which builds the guest images and sets \
                RUNNER_KERNEL and RUNNER_ROOTFS, or set both to the files it prints";
    let mut path = std::env::var_os(var)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| panic!("{var} is not set: {hint}"));
    if let (true, Some(file)) = (path.is_dir(), in_dir) {
        path = path.join(file);
    }
    assert!(
        path.is_file(),
        "{var}={} is not a file: {hint}",
        path.display()
    );
    path
}

/// The line Linux prints for an e820 entry at boot
/// (`BIOS-e820: [mem 0x...-0x...] usable`), for matching the console.
pub fn e820_log_line(entry: &E820Entry) -> String {
    let kind = match entry.kind {
        E820_RAM => "usable",
        E820_RESERVED => "reserved",
        _ => "unknown",
    };
    format!(
        "BIOS-e820: [mem {:#018x}-{:#018x}] {kind}",
        entry.addr,
        entry.addr + entry.size - 1
    )
}
