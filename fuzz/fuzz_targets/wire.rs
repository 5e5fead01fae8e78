#![no_main]
//! See `topoccl::fuzzing::wire`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| topoccl::fuzzing::wire(data));
