//! Boots a kernel under the built-in VMM with the console on stdout.
//!
//! cargo run -p runner-vmm --example boot -- KERNEL [CMDLINE] [TIMEOUT_SECS] [VCPUS] [MEM_MIB]

use std::time::Duration;

use runner_vmm::{Vmm, VmmConfig};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(kernel) = args.first() else {
        eprintln!("usage: boot KERNEL [CMDLINE] [TIMEOUT_SECS] [VCPUS] [MEM_MIB]");
        std::process::exit(2);
    };
    let cmdline = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "console=ttyS0 reboot=k panic=-1".into());
    let mut config = VmmConfig::new(kernel, cmdline);
    config.timeout = Some(Duration::from_secs(
        args.get(2).and_then(|s| s.parse().ok()).unwrap_or(60),
    ));
    config.vcpus.num = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1);
    config.memory.size_mib = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(256);
    config.serial.console = true;
    let result = Vmm::new(config).and_then(|vmm| {
        eprintln!(
            "[boot] protocol {:?}, cmdline {:?}",
            vmm.boot_protocol(),
            vmm.cmdline()
        );
        vmm.run()
    });
    match result {
        Ok(exit) => eprintln!("\n[boot] {} ({:?})", exit.reason, exit.timings),
        Err(e) => {
            eprintln!("[boot] error: {e}");
            std::process::exit(1);
        }
    }
}
