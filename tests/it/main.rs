//! The integration tests: one binary, so that the crate is linked once
//! (as ripgrep does). Each file is one area; `common` holds the helpers
//! every file uses (qemu-img and qemu-io, loop devices, memory cgroups, the
//! test HTTP server, the streamdisk subprocess).

#![allow(dead_code)]

#[path = "../common/mod.rs"]
mod common;

mod bad_input;
mod cdi;
mod convert;
mod fuzz_regressions;
mod interrupt;
mod layouts;
mod qcow2_decoder;
mod server_selftest;
mod source_http;
mod source_proxy;
mod target;
