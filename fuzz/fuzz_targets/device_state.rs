//! Fuzz target `device_state`: see the entry point's documentation.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = runner_devices::fuzzing::device_state(data);
});
