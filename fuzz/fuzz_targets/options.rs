#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| plyfs_fuzz::targets::options(data));
