#![no_main]
//! See `topoccl::fuzzing::heartbeat`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| topoccl::fuzzing::heartbeat(data));
