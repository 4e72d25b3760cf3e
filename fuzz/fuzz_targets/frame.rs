//! Fuzz target `frame`: see the entry point's documentation.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = agent_protocol::fuzzing::frames(data);
});
