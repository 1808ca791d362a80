//! The integration tests: one binary, so that the crate is linked once
//! (as ripgrep does). Each file is one area; `common` holds the helpers
//! every file uses (qemu-img and qemu-io, loop devices, memory cgroups, the
//! test HTTP server, the streamdisk subprocess).

#![allow(dead_code)]
// Helpers are `pub` for the other test modules; nothing here is an API.
#![allow(unreachable_pub)]

// Runs children inside a memory cgroup: `pre_exec` is unsafe by nature.
#[allow(unsafe_code)]
#[path = "../common/mod.rs"]
mod common;

mod bad_input;
mod bzip2;
// Sets the pod's umask in `pre_exec`, unsafe by nature.
#[allow(unsafe_code)]
mod cdi;
mod cdi_registry;
mod convert;
mod fuzz_regressions;
mod gcs;
mod image_server;
mod interrupt;
mod layouts;
mod ova;
mod poller;
mod qcow2_decoder;
mod registry;
mod s3;
mod server_selftest;
mod size_detection;
mod source_http;
mod source_proxy;
mod target;
mod upload;
mod vdi;
mod vhdx;
mod vmdk;
mod vpc;
