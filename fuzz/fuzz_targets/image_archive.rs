#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    plyfs_fuzz::targets::image_archive(&plyfs_fuzz::targets::scratch("image_archive"), data)
});
