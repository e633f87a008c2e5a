#![no_main]
//! `pm_core::fuzz::manifest`: see that module for what the check asserts.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pm_core::fuzz::manifest(data));
