#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    plyfs_fuzz::targets::union(&plyfs_fuzz::targets::scratch("union"), data)
});
