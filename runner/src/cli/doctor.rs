//! `runner doctor`: what this host can run guests with, in plain words, and
//! which backend `--backend auto` picks and why. Exits 0 when the backend
//! `auto` picks can work here, 1 otherwise (with the fix).

use std::path::PathBuf;
use std::process::Command;

use super::failure::Failure;
use runner_machine::select::{
    probe_host, select, AutoPick, HostProbe, KvmAccess, Ring0Speed, Selection,
};

/// Everything the report is made of; gathered by [`HostReport::gather`],
/// rendered by [`HostReport::render`] (kept apart so the wording is tested
/// for hosts we are not running on).
#[derive(Clone, Debug)]
pub struct HostReport {
    pub probe: HostProbe,
    /// Path and `--version` line.
    pub qemu: Option<(PathBuf, String)>,
    pub selection: Selection,
}

impl HostReport {
    pub fn gather() -> HostReport {
        let probe = probe_host();
        let selection = select(&probe);
        let qemu = which::which_global("qemu-system-x86_64").ok().map(|path| {
            let version = qemu_version(&path);
            (path, version)
        });
        HostReport {
            probe,
            qemu,
            selection,
        }
    }

    /// Whether the backend `auto` picks has everything it needs.
    pub fn auto_works(&self) -> bool {
        match self.selection.pick {
            AutoPick::Kvm => true,
            AutoPick::QemuTcg => self.qemu.is_some(),
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut line = |label: &str, text: String| {
            let indent = " ".repeat(LABEL_WIDTH + 3);
            let body = wrap(&text, WIDTH - indent.len()).join(&format!("\n{indent}"));
            out.push_str(&format!("  {label:<LABEL_WIDTH$} {body}\n"));
        };
        let module = self.probe.module.as_deref().unwrap_or("module unknown");
        let usable = matches!(self.probe.access, KvmAccess::Available { .. });

        line(
            "/dev/kvm",
            match &self.probe.access {
                KvmAccess::Available {
                    api_version,
                    max_vcpus,
                } => format!("usable (KVM API {api_version}, up to {max_vcpus} vCPUs, {module})"),
                KvmAccess::Unavailable { error, hint } => {
                    format!("not usable: {error}. Fix: {hint}")
                }
            },
        );
        line("guest ring 0", ring0_text(&self.probe, usable));
        line("PVM", pvm_text(&self.probe));
        line(
            "qemu-system-x86_64",
            match &self.qemu {
                Some((path, version)) => format!("{} ({version})", path.display()),
                None => "not installed (`apt-get install qemu-system-x86`)".to_string(),
            },
        );
        let pick = self.selection.pick;
        line(
            "--backend auto",
            format!("picks {}: {}", pick.backend_name(), self.selection.reason),
        );
        line("--backend kvm", kvm_choice_text(pick));
        line(
            "--backend qemu",
            qemu_choice_text(pick, self.qemu.is_some()),
        );
        let verdict = match (pick, self.auto_works()) {
            (AutoPick::Kvm, _) => "ready: guests run under the built-in KVM VMM".to_string(),
            (AutoPick::QemuTcg, true) => {
                "ready: guests run under QEMU with software emulation (TCG)".to_string()
            }
            (AutoPick::QemuTcg, false) => "not ready: the qemu backend needs \
                                            qemu-system-x86_64 (`apt-get install qemu-system-x86`)"
                .to_string(),
        };
        out.push_str(&format!("\n{verdict}\n"));
        out
    }
}

/// What `--backend kvm` would do here.
fn kvm_choice_text(pick: AutoPick) -> String {
    match pick {
        AutoPick::Kvm => "the built-in VMM at hardware speed".to_string(),
        AutoPick::QemuTcg => "the built-in VMM would start, but a Linux guest would not \
                              boot in reasonable time on this /dev/kvm (see above)"
            .to_string(),
    }
}

/// What `--backend qemu` would do here: it uses KVM exactly where `auto`
/// would pick the built-in VMM (see `backend::qemu_accel`).
fn qemu_choice_text(pick: AutoPick, installed: bool) -> String {
    let how = match pick {
        AutoPick::Kvm => "QEMU with KVM acceleration (-accel kvm)",
        AutoPick::QemuTcg => "QEMU with software emulation (-accel tcg)",
    };
    if installed {
        how.to_string()
    } else {
        format!("{how}, once qemu-system-x86_64 is installed")
    }
}

/// Report width, and the width of the label column.
const WIDTH: usize = 100;
const LABEL_WIDTH: usize = 18;

/// Splits `text` into lines of at most `width` characters at spaces (a
/// longer word gets a line of its own).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split_whitespace() {
        let Some(current) = lines.last_mut() else {
            break;
        };
        if current.is_empty() {
            current.push_str(word);
        } else if current.chars().count() + 1 + word.chars().count() <= width {
            current.push(' ');
            current.push_str(word);
        } else {
            lines.push(word.to_string());
        }
    }
    lines
}

fn ring0_text(probe: &HostProbe, usable: bool) -> String {
    let rate = |ips: f64| format!("{:.1} M instructions/s", ips / 1e6);
    match &probe.calibration {
        _ if !usable => "not tested (no usable /dev/kvm)".to_string(),
        Some(Ok(c)) if c.speed == Ring0Speed::Native => format!(
            "native: the calibration guest ran {} at ring 0",
            rate(c.instructions_per_sec)
        ),
        Some(Ok(c)) => format!(
            "emulated: the calibration guest ran only {} at ring 0 (hardware \
             virtualization runs it at billions per second)",
            rate(c.instructions_per_sec)
        ),
        Some(Err(e)) => format!("unknown: the calibration guest failed ({e})"),
        None => "not tested".to_string(),
    }
}

fn pvm_text(probe: &HostProbe) -> String {
    if probe.is_pvm {
        return "yes: /dev/kvm is PVM (kvm_pvm, Pagetable-based Virtual Machine), which works \
                without VT-x/AMD-V by emulating the ring 0 of a normal guest kernel. A full \
                Linux guest would crawl here (first console lines within seconds, tens of \
                minutes to reach init), so `auto` uses QEMU's software emulation (TCG) \
                instead; `--backend kvm` still boots, but only gets through early boot"
            .to_string();
    }
    match &probe.module {
        Some(module) => format!("no ({module})"),
        None => "no (could not tell which module implements /dev/kvm)".to_string(),
    }
}

fn qemu_version(path: &std::path::Path) -> String {
    match Command::new(path).arg("--version").output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("version unknown")
            .trim()
            .to_string(),
        Ok(out) => format!("`--version` failed: {}", out.status),
        Err(e) => format!("cannot run it: {e}"),
    }
}

pub fn run() -> Result<i32, Failure> {
    let report = HostReport::gather();
    print!("{}", report.render());
    Ok(if report.auto_works() { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use runner_machine::select::Calibration;

    fn report(module: &str, speed: Ring0Speed, ips: f64, qemu: bool) -> HostReport {
        let probe = HostProbe {
            access: KvmAccess::Available {
                api_version: 12,
                max_vcpus: 1024,
            },
            module: Some(module.into()),
            is_pvm: module == "kvm_pvm",
            calibration: Some(Ok(Calibration {
                iterations: 1,
                elapsed: Duration::from_millis(300),
                instructions_per_sec: ips,
                speed,
            })),
        };
        HostReport {
            selection: select(&probe),
            probe,
            qemu: qemu.then(|| {
                (
                    PathBuf::from("/usr/bin/qemu-system-x86_64"),
                    "QEMU emulator version 7.2.15".to_string(),
                )
            }),
        }
    }

    /// The report with its line wrapping undone.
    fn flat(text: &str) -> String {
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn wrap_breaks_at_spaces_within_the_width() {
        assert_eq!(wrap("aa bb cc", 5), vec!["aa bb", "cc"]);
        assert_eq!(wrap("toolongword x", 4), vec!["toolongword", "x"]);
        assert_eq!(wrap("", 10), vec![""]);
    }

    #[test]
    fn pvm_host_with_qemu_is_ready_and_explained() {
        let r = report("kvm_pvm", Ring0Speed::Emulated, 1.5e6, true);
        let text = flat(&r.render());
        assert!(r.auto_works());
        assert!(
            text.contains("usable (KVM API 12, up to 1024 vCPUs, kvm_pvm)"),
            "{text}"
        );
        assert!(
            text.contains("emulated: the calibration guest ran only 1.5 M"),
            "{text}"
        );
        assert!(text.contains("would crawl"), "{text}");
        assert!(text.contains("QEMU emulator version 7.2.15"), "{text}");
        assert!(text.contains("picks qemu: /dev/kvm is PVM"), "{text}");
        assert!(text.contains(" ready: guests run under QEMU"), "{text}");
        assert!(
            text.contains("--backend qemu QEMU with software emulation (-accel tcg)"),
            "{text}"
        );
    }

    #[test]
    fn pvm_host_without_qemu_is_not_ready_and_names_the_fix() {
        let r = report("kvm_pvm", Ring0Speed::Emulated, 1.5e6, false);
        let text = flat(&r.render());
        assert!(!r.auto_works());
        assert!(text.contains("not ready: the qemu backend needs qemu-system-x86_64 (`apt-get install qemu-system-x86`)"), "{text}");
    }

    #[test]
    fn native_host_picks_kvm_even_without_qemu() {
        let r = report("kvm_intel", Ring0Speed::Native, 3e9, false);
        let text = flat(&r.render());
        assert!(r.auto_works());
        assert!(
            text.contains("native: the calibration guest ran 3000.0 M"),
            "{text}"
        );
        assert!(text.contains("no (kvm_intel)"), "{text}");
        assert!(text.contains("picks kvm:"), "{text}");
        assert!(
            text.contains("--backend qemu QEMU with KVM acceleration (-accel kvm), once"),
            "{text}"
        );
        assert!(
            text.contains(" ready: guests run under the built-in KVM VMM"),
            "{text}"
        );
    }

    #[test]
    fn missing_kvm_names_the_fix() {
        let mut r = report("kvm_intel", Ring0Speed::Native, 3e9, true);
        r.probe.access = KvmAccess::Unavailable {
            error: "No such file or directory (os error 2)".into(),
            hint: runner_vmm::kvm_host::open_hint(libc::ENOENT).into(),
        };
        r.probe.calibration = None;
        r.selection = select(&r.probe);
        let text = flat(&r.render());
        assert!(text.contains("not usable: No such file"), "{text}");
        assert!(text.contains("modprobe kvm_intel"), "{text}");
        assert!(text.contains("not tested (no usable /dev/kvm)"), "{text}");
        assert!(text.contains("picks qemu"), "{text}");
        assert!(r.auto_works());
    }
}
