#![no_main]
//! See `topoccl::fuzzing::endpoint`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| topoccl::fuzzing::endpoint(data));
