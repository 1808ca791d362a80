//! libFuzzer entry point for the VMDK decoder; the harness itself is
//! `fuzz/harness.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use streamdisk::format::Format;

#[path = "../harness.rs"]
#[allow(dead_code)]
mod harness;

fuzz_target!(|data: &[u8]| harness::check_format(Format::Vmdk, data));
