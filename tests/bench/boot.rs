//! Boot-to-agent-ready and exec round-trip, measured in one run.
//!
//! `cargo bench -p e2e-tests --bench boot` (images as for the tests:
//! RUNNER_KERNEL / RUNNER_ROOTFS, or the named defaults).
//!
//! Targets on the development machines (QEMU TCG, no hardware
//! virtualization): boot-to-ready ≤ 2.5 s median of 5, `true` round-trip
//! ≤ 100 ms median.

use std::time::{Duration, Instant};

use e2e_tests::{run, spec};
use runner::session::wait_for_agent;
use runner_machine::select;

const BOOTS: usize = 5;
const EXECS: usize = 20;
const BOOT_TARGET: Duration = Duration::from_millis(2500);
const EXEC_TARGET: Duration = Duration::from_millis(100);

fn main() {
    let backend = select::default_backend().unwrap_or_else(|e| fail(&e.to_string()));
    let spec = spec("bench");
    let mut boots = Vec::new();
    let mut execs = Vec::new();
    for i in 0..BOOTS {
        let start = Instant::now();
        let mut vm = backend
            .start(&spec)
            .unwrap_or_else(|e| fail(&e.to_string()));
        let mut session =
            wait_for_agent(vm.as_mut(), spec.boot_timeout).unwrap_or_else(|e| fail(&e.to_string()));
        boots.push(start.elapsed());
        if i == 0 {
            for _ in 0..EXECS {
                let start = Instant::now();
                let ran = run(
                    &mut session,
                    agent_protocol::ExecRequest {
                        command: agent_protocol::Command::Argv(vec!["true".into()]),
                        ..Default::default()
                    },
                );
                execs.push(start.elapsed());
                assert_eq!(ran.status.code, Some(0));
            }
        }
        let _ = session.shutdown();
        vm.wait_exit(Duration::from_secs(10));
    }
    report("boot to agent ready", &mut boots, BOOT_TARGET);
    report("exec round-trip `true`", &mut execs, EXEC_TARGET);
}

fn report(what: &str, samples: &mut [Duration], target: Duration) {
    samples.sort();
    let median = samples[samples.len() / 2];
    let ratio = median.as_secs_f64() / target.as_secs_f64();
    println!(
        "{what}: median {:.3}s of {} (min {:.3}s, max {:.3}s); target {:.3}s; ratio {ratio:.2} ({})",
        median.as_secs_f64(),
        samples.len(),
        samples[0].as_secs_f64(),
        samples[samples.len() - 1].as_secs_f64(),
        target.as_secs_f64(),
        if ratio <= 1.0 { "met" } else { "MISSED" }
    );
}

fn fail(message: &str) -> ! {
    eprintln!("bench: {message}");
    std::process::exit(1);
}
