#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| creditd::fuzzing::record_decode(data));
