#![no_main]
//! See `topoccl::fuzzing::store_protocol`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| topoccl::fuzzing::store_protocol(data));
