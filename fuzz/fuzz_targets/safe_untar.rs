//! Fuzz target `safe_untar`: see the entry point's documentation.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = safe_untar::fuzzing::safe_untar(data);
});
