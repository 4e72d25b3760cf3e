//! Fuzz target `oci_layer`: see the entry point's documentation.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = runner_machine::fuzzing::oci_layer(data);
});
