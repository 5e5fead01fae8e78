#![no_main]
//! See `topoccl::fuzzing::metrics_expositions`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| topoccl::fuzzing::metrics_expositions(data));
