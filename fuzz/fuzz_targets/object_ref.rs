#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| alluvium_fuzz::targets::object_ref(data));
