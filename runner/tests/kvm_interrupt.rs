//! Ctrl-C with the `kvm` backend: the interrupt hook stops running VMs, and
//! a VM started after the interrupt is stopped at once. (Its own test
//! binary: an interrupt marks the whole process as interrupted.)

mod common;

use std::time::{Duration, Instant};

use common::{require_kvm, spec, vm_processes};
use runner::session::wait_for_agent;
use runner_machine::kvm::KvmBackend;
use runner_machine::{BootError, Vm};

const STOP_LIMIT: Duration = Duration::from_secs(5);

fn wait_for_end(vm: &mut dyn Vm) -> String {
    let start = Instant::now();
    loop {
        if let Some(status) = vm.exited() {
            return status;
        }
        assert!(
            start.elapsed() < STOP_LIMIT,
            "still running after {STOP_LIMIT:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn interrupt_stops_running_and_later_vms() {
    require_kvm();
    let backend = KvmBackend::new();
    let spec = spec("kvm-interrupt", Duration::from_secs(60));
    let mut running = backend.start_vm(&spec).expect("the VM starts");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(running.exited(), None);

    runner_machine::interrupt::trigger();
    assert_eq!(wait_for_end(&mut running), "stopped by the host");
    assert!(matches!(
        wait_for_agent(&mut running, spec.boot_timeout),
        Err(BootError::Interrupted)
    ));

    let mut late = backend.start_vm(&spec).expect("the VM starts");
    assert_eq!(wait_for_end(&mut late), "stopped by the host");
    drop(running);
    drop(late);
    assert_eq!(vm_processes(), Vec::<u32>::new());
}
