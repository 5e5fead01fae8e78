#![no_main]
//! See `topoccl::fuzzing::replan_records`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| topoccl::fuzzing::replan_records(data));
