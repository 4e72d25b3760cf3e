//! Which backend `--backend auto` picks, and why; the backend constructors.
//!
//! The built-in KVM VMM is the fast path wherever KVM runs guest ring 0
//! natively (VT-x/AMD-V). Where it does not (no KVM, or a KVM that emulates
//! ring 0 such as PVM) a Linux guest would crawl, and QEMU's TCG is faster.
//! The decision is a pure function of a [`HostProbe`], so it is testable
//! without the host it describes; the probe itself runs once per process.

use std::sync::OnceLock;

use crate::{kvm, qemu, Backend, BootError};

use runner_vmm::kvm_host;
use runner_vmm::probe;
/// What the host can run, as `runner doctor` shows it: the same probe
/// `auto` decides on.
pub use runner_vmm::probe::{probe_host, Calibration, HostProbe, KvmAccess, Ring0Speed};

/// What `auto` boots guests with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoPick {
    /// The built-in VMM (`--backend kvm`).
    Kvm,
    /// QEMU with software emulation (`--backend qemu`).
    QemuTcg,
}

impl AutoPick {
    /// The `--backend` value that picks the same.
    pub fn backend_name(self) -> &'static str {
        match self {
            AutoPick::Kvm => "kvm",
            AutoPick::QemuTcg => "qemu",
        }
    }
}

/// The choice and a sentence saying why, for `runner doctor` and logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    pub pick: AutoPick,
    pub reason: String,
}

/// Decides from what is known about the host's KVM.
pub fn select(probe: &HostProbe) -> Selection {
    let qemu = |reason: String| Selection {
        pick: AutoPick::QemuTcg,
        reason,
    };
    if let KvmAccess::Unavailable { error, .. } = &probe.access {
        return qemu(format!(
            "/dev/kvm is not usable ({error}), so guests run under QEMU's software emulation (TCG)"
        ));
    }
    match &probe.calibration {
        Some(Ok(c)) if c.speed == Ring0Speed::Native => Selection {
            pick: AutoPick::Kvm,
            reason: format!(
                "/dev/kvm works and runs guest ring 0 natively ({}), so the built-in VMM boots \
                 guests at hardware speed",
                rate(c.instructions_per_sec)
            ),
        },
        Some(Ok(c)) if probe.is_pvm => qemu(format!(
            "/dev/kvm is PVM, which emulates guest ring 0 ({}); a Linux guest would need tens of \
             minutes to boot under it, QEMU's TCG boots it in about a second",
            rate(c.instructions_per_sec)
        )),
        Some(Ok(c)) => qemu(format!(
            "/dev/kvm runs guest ring 0 at only {}, which means it is emulated; QEMU's TCG is \
             faster for Linux guests",
            rate(c.instructions_per_sec)
        )),
        Some(Err(e)) => qemu(format!(
            "/dev/kvm opens but a test guest could not run under it ({e}); using QEMU's TCG"
        )),
        None if probe.is_pvm => qemu(
            "/dev/kvm is PVM (kvm_pvm), which emulates the ring 0 of a normal guest kernel; a \
             Linux guest would need tens of minutes to boot under it, QEMU's TCG boots it in \
             about a second"
                .to_string(),
        ),
        None => qemu(
            "/dev/kvm opens but was not tested, so it is not trusted; using QEMU's TCG".to_string(),
        ),
    }
}

fn rate(instructions_per_sec: f64) -> String {
    format!("{:.1} M instructions/s", instructions_per_sec / 1e6)
}

/// What `auto` picks on this host. Probed once per process: the probe opens
/// /dev/kvm and runs a calibration guest, which takes up to
/// [`probe::CALIBRATION_BUDGET`].
pub fn auto_selection() -> &'static Selection {
    static SELECTION: OnceLock<Selection> = OnceLock::new();
    SELECTION.get_or_init(|| {
        let selection = select(&quick_probe());
        tracing::debug!(pick = ?selection.pick, reason = %selection.reason, "auto backend");
        selection
    })
}

/// [`probe::probe_host`], minus the calibration guest where its answer is
/// known in advance: a PVM module runs every non-PVM guest kernel's ring 0
/// in its emulator, so calibrating it would only cost
/// [`probe::CALIBRATION_BUDGET`] per `runner` invocation to learn that.
/// `runner doctor` always calibrates.
fn quick_probe() -> HostProbe {
    let module = kvm_host::kvm_module();
    if module.as_deref() != Some("kvm_pvm") {
        return probe::probe_host();
    }
    let access = match kvm_host::open_kvm() {
        Ok(kvm) => KvmAccess::Available {
            api_version: kvm.get_api_version(),
            max_vcpus: kvm.get_max_vcpus(),
        },
        Err(e) => KvmAccess::Unavailable {
            error: e.to_string(),
            hint: String::new(),
        },
    };
    HostProbe {
        access,
        module,
        is_pvm: true,
        calibration: None,
    }
}

/// The backend `auto` picks on this host.
pub fn default_backend() -> Result<Box<dyn Backend>, BootError> {
    match auto_selection().pick {
        AutoPick::Kvm => Ok(Box::new(kvm::KvmBackend::new())),
        AutoPick::QemuTcg => qemu_tcg_backend(),
    }
}

/// QEMU with software emulation (TCG) and our own vsock and disk devices.
pub fn qemu_tcg_backend() -> Result<Box<dyn Backend>, BootError> {
    qemu_with(qemu::Accel::Tcg)
}

/// `--backend qemu`: QEMU with KVM acceleration where KVM runs guest ring 0
/// natively (VT-x/AMD-V), with TCG elsewhere (no KVM, or PVM, which would
/// emulate the guest kernel far slower than TCG translates it).
pub fn qemu_backend() -> Result<Box<dyn Backend>, BootError> {
    qemu_with(qemu_accel())
}

/// The accelerator `--backend qemu` uses on this host.
pub fn qemu_accel() -> qemu::Accel {
    match auto_selection().pick {
        AutoPick::Kvm => qemu::Accel::Kvm,
        AutoPick::QemuTcg => qemu::Accel::Tcg,
    }
}

fn qemu_with(accel: qemu::Accel) -> Result<Box<dyn Backend>, BootError> {
    let qemu = qemu::QemuBackend::locate(
        accel,
        qemu::VsockProvider::Builtin,
        qemu::DiskProvider::Builtin,
    )?;
    Ok(Box::new(qemu))
}

/// The backend named by `RUNNER_BACKEND` (`auto`, `qemu` or `kvm`, as
/// `--backend` takes them; unset means `auto`). Tests boot through this, so
/// one suite runs against either backend.
pub fn from_env() -> Result<Box<dyn Backend>, BootError> {
    match std::env::var("RUNNER_BACKEND").as_deref() {
        Err(_) | Ok("") | Ok("auto") => default_backend(),
        Ok("qemu") => qemu_backend(),
        Ok("kvm") => Ok(Box::new(kvm::KvmBackend::new())),
        Ok(other) => Err(BootError::Setup(format!(
            "RUNNER_BACKEND={other} is not a backend (expected auto, qemu or kvm)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use runner_vmm::probe::Calibration;

    fn probe(module: &str, calibration: Option<Result<Calibration, String>>) -> HostProbe {
        HostProbe {
            access: KvmAccess::Available {
                api_version: 12,
                max_vcpus: 255,
            },
            module: Some(module.into()),
            is_pvm: module == "kvm_pvm",
            calibration,
        }
    }

    fn calibrated(
        instructions_per_sec: f64,
        speed: Ring0Speed,
    ) -> Option<Result<Calibration, String>> {
        Some(Ok(Calibration {
            iterations: 1000,
            elapsed: Duration::from_millis(10),
            instructions_per_sec,
            speed,
        }))
    }

    #[test]
    fn native_ring0_picks_the_built_in_vmm() {
        let s = select(&probe("kvm_intel", calibrated(2.5e9, Ring0Speed::Native)));
        assert_eq!(s.pick, AutoPick::Kvm);
        assert!(
            s.reason.contains("natively (2500.0 M instructions/s)"),
            "{}",
            s.reason
        );
    }

    #[test]
    fn pvm_picks_qemu_and_says_why() {
        let s = select(&probe("kvm_pvm", calibrated(1.5e6, Ring0Speed::Emulated)));
        assert_eq!(s.pick, AutoPick::QemuTcg);
        assert!(
            s.reason.contains("PVM") && s.reason.contains("1.5 M"),
            "{}",
            s.reason
        );
        // Without calibration (the quick probe) the answer is the same.
        let s = select(&probe("kvm_pvm", None));
        assert_eq!(s.pick, AutoPick::QemuTcg);
        assert!(s.reason.contains("PVM"), "{}", s.reason);
    }

    #[test]
    fn slow_ring0_without_pvm_still_picks_qemu() {
        let s = select(&probe("kvm_amd", calibrated(3e6, Ring0Speed::Emulated)));
        assert_eq!(s.pick, AutoPick::QemuTcg);
        assert!(s.reason.contains("only 3.0 M"), "{}", s.reason);
    }

    #[test]
    fn unusable_or_untested_kvm_picks_qemu() {
        let mut p = probe("kvm_intel", None);
        p.access = KvmAccess::Unavailable {
            error: "Permission denied (os error 13)".into(),
            hint: kvm_host::open_hint(libc::EACCES).into(),
        };
        let s = select(&p);
        assert_eq!(s.pick, AutoPick::QemuTcg);
        assert!(s.reason.contains("Permission denied"), "{}", s.reason);

        let s = select(&probe("kvm_intel", Some(Err("KVM_CREATE_VM: busy".into()))));
        assert_eq!(s.pick, AutoPick::QemuTcg);
        assert!(s.reason.contains("KVM_CREATE_VM: busy"), "{}", s.reason);

        assert_eq!(select(&probe("kvm_intel", None)).pick, AutoPick::QemuTcg);
    }

    /// The quick probe (no calibration on PVM) must agree with the full
    /// one on this host, whatever this host is.
    #[test]
    fn auto_selection_agrees_with_a_full_probe() {
        let full = select(&probe::probe_host());
        assert_eq!(auto_selection().pick, full.pick, "{}", full.reason);
        // And it is computed once.
        assert!(std::ptr::eq(auto_selection(), auto_selection()));
    }
}
