#![no_main]
//! See `topoccl::fuzzing::etcd_replies`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| topoccl::fuzzing::etcd_replies(data));
