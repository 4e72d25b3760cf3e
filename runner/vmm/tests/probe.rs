//! The host probe on this machine's real /dev/kvm.

use std::time::Duration;

use runner_vmm::probe::{
    probe_host, KvmAccess, Ring0Speed, CALIBRATION_ATTEMPTS, CALIBRATION_BUDGET,
};

#[test]
fn probe_reports_access_module_and_a_bounded_calibration() {
    let start = std::time::Instant::now();
    let probe = probe_host();
    let took = start.elapsed();
    eprintln!("{probe:#?}\n{}\nprobe took {took:?}", probe.verdict());
    match &probe.access {
        KvmAccess::Available { api_version, .. } => assert_eq!(*api_version, 12),
        KvmAccess::Unavailable { error, hint } => {
            panic!("/dev/kvm is needed for this test: {error}: {hint}")
        }
    }
    let cal = probe
        .calibration
        .clone()
        .expect("calibrated")
        .expect("calibration guest ran");
    assert!(cal.iterations > 0);
    assert!(
        cal.elapsed <= CALIBRATION_BUDGET + Duration::from_millis(200),
        "{cal:?}"
    );
    // Each run is cut off at its budget by a watchdog; the slack only
    // catches a probe that hangs.
    let bound = CALIBRATION_BUDGET * CALIBRATION_ATTEMPTS + Duration::from_secs(10);
    assert!(took < bound, "probe took {took:?}");
    if probe.is_pvm {
        // PVM emulates ring 0: the countdown cannot finish in the budget.
        assert_eq!(cal.speed, Ring0Speed::Emulated, "{cal:?}");
        assert!(probe.verdict().contains("PVM"));
    }
}
