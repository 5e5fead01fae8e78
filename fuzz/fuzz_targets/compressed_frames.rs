#![no_main]
//! See `topoccl::fuzzing::compressed_frames`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| topoccl::fuzzing::compressed_frames(data));
