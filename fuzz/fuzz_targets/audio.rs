#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| alluvium_fuzz::targets::audio(data));
