//! Fuzz target `libtest`: see the entry point's documentation.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = runner::fuzzing::libtest(data);
});
