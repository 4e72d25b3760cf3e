//! Opening /dev/kvm with errors that say how to fix the host, and telling
//! which KVM implementation is behind it.

use std::path::Path;
use std::sync::OnceLock;

use kvm_ioctls::Kvm;

use crate::error::{Error, Result};

/// The fix for a failure to open /dev/kvm with `errno`.
pub fn open_hint(errno: i32) -> &'static str {
    match errno {
        libc::ENOENT | libc::ENXIO | libc::ENODEV => {
            "KVM is not available: load the module (`modprobe kvm_intel` or `modprobe kvm_amd`) \
             and enable VT-x/AMD-V in the firmware (on a cloud VM: enable nested virtualization)"
        }
        libc::EACCES | libc::EPERM => {
            "no permission: add the user to the `kvm` group (`sudo usermod -aG kvm $USER`, \
             then log in again) or check the udev rule that sets /dev/kvm's mode"
        }
        _ => "check `dmesg` for KVM errors",
    }
}

/// The KVM device every VM opens.
pub const KVM_DEVICE: &str = "/dev/kvm";

/// Opens /dev/kvm and checks the API version.
pub fn open_kvm() -> Result<Kvm> {
    let kvm = Kvm::new().map_err(|e| Error::KvmUnavailable {
        source: std::io::Error::from_raw_os_error(e.errno()),
        hint: open_hint(e.errno()),
    })?;
    let version = kvm.get_api_version();
    if version != 12 {
        return Err(Error::KvmApiVersion(version));
    }
    Ok(kvm)
}

/// The loaded module that implements /dev/kvm, if we can tell: `kvm_intel`,
/// `kvm_amd` or `kvm_pvm`. Looks at /sys/module first (works without
/// /proc/modules, e.g. in containers), then /proc/modules.
pub fn kvm_module() -> Option<String> {
    kvm_module_in(Path::new("/sys/module"), Path::new("/proc/modules"))
}

fn kvm_module_in(sys_module: &Path, proc_modules: &Path) -> Option<String> {
    const CANDIDATES: [&str; 3] = ["kvm_pvm", "kvm_intel", "kvm_amd"];
    if let Some(m) = CANDIDATES.iter().find(|m| sys_module.join(m).exists()) {
        return Some(m.to_string());
    }
    let modules = std::fs::read_to_string(proc_modules).ok()?;
    modules
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .find(|name| CANDIDATES.contains(name))
        .map(str::to_string)
}

/// True when /dev/kvm is PVM (Pagetable-based Virtual Machine): guest ring
/// 0 is emulated there, which changes what guests can do in useful time.
///
/// The answer is learnt once per process and kept: a jailed VM process has
/// no /sys to look at, so it asks before entering its jail (where a fresh
/// look would wrongly say "not PVM" and show the guest CX16).
pub fn is_pvm() -> bool {
    static IS_PVM: OnceLock<bool> = OnceLock::new();
    *IS_PVM.get_or_init(|| kvm_module().as_deref() == Some("kvm_pvm"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_detection_from_sysfs_and_proc() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("sys");
        std::fs::create_dir_all(sys.join("kvm")).unwrap();
        let proc_modules = dir.path().join("modules");
        assert_eq!(kvm_module_in(&sys, &proc_modules), None);
        std::fs::write(
            &proc_modules,
            "kvm_amd 1 0 - Live 0x0\nkvm 2 1 kvm_amd, Live 0x0\n",
        )
        .unwrap();
        assert_eq!(
            kvm_module_in(&sys, &proc_modules).as_deref(),
            Some("kvm_amd")
        );
        std::fs::create_dir_all(sys.join("kvm_pvm")).unwrap();
        assert_eq!(
            kvm_module_in(&sys, &proc_modules).as_deref(),
            Some("kvm_pvm")
        );
    }

    #[test]
    fn hints_name_the_fix() {
        assert!(open_hint(libc::EACCES).contains("kvm` group"));
        assert!(open_hint(libc::ENOENT).contains("modprobe kvm_intel"));
    }
}
