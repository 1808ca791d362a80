//! `streamdisk` binary: parse the command line and dispatch. Nothing else lives here.

mod cli;
mod commands;
mod report;

use std::ffi::OsString;
use std::path::Path;

use clap::Parser;

fn main() {
    let args: Vec<OsString> = std::env::args_os().collect();
    // CDI's tools are chosen by name before clap sees anything: CDI passes
    // Go-style single-dash flags (`-alsologtostderr`, `-v=3`, `-image-path`)
    // that clap would reject.
    let invoked_as = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let rest = || args.iter().skip(1).cloned().collect();
    match invoked_as.as_str() {
        "cdi-importer" => std::process::exit(streamdisk::cdi::run_pod(rest())),
        "cdi-image-size-detection" => {
            std::process::exit(streamdisk::cdi::run_size_detection(&invoked_as, rest()))
        }
        "cdi-source-update-poller" => {
            std::process::exit(streamdisk::cdi::run_poller(&invoked_as, rest()))
        }
        _ => {}
    }
    if invoked_as == "cdi-uploadserver" {
        std::process::exit(streamdisk::cdi::run_upload_pod(
            args.into_iter().skip(1).collect(),
        ));
    }
    // `streamdisk upload-server` with only klog-style flags is the upload
    // pod; with a TARGET (or --listen, --help) it is the command below.
    if args.get(1).is_some_and(|a| a == "upload-server") && cli::is_upload_pod(&args[2..]) {
        std::process::exit(streamdisk::cdi::run_upload_pod(
            args.into_iter().skip(2).collect(),
        ));
    }
    if args.get(1).is_some_and(|a| a == "cdi") {
        std::process::exit(streamdisk::cdi::run_pod(args.into_iter().skip(2).collect()));
    }
    let cli = cli::Cli::parse();
    std::process::exit(commands::dispatch(cli));
}
