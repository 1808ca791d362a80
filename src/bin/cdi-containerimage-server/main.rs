//! `cdi-containerimage-server`: serves a containerDisk's disk file to the
//! importer next to it, as CDI's tool of that name does, for registry
//! imports with `pullMethod: node`.
//!
//! CDI's init container copies this binary out of the importer image
//! (`sh -c "cp /usr/bin/cdi-containerimage-server /shared/server"`) into a
//! volume shared with a container that runs the *user's* image, often
//! `FROM scratch`, as UID 107:
//! `/shared/server -p 8100 -image-dir /disk -ready-file /shared/ready -done-file /shared/done`.
//! So it is its own small static binary (std, and nix for signals), and it
//! needs nothing from the image it runs in: no passwd, NSS, CA bundle or
//! time zone data. It binds 127.0.0.1 and ::1 by address rather than
//! resolving `localhost`, which would go through NSS.
//!
//! CDI's order: refuse bootc images (`/sysroot` or `/ostree`), list the
//! directory, require exactly one entry that is not a directory, listen,
//! write the file's name into the ready file, serve it (see [`http`]), and
//! exit once the done file appears, removing both files. `-h` prints the
//! usage and exits at once (CDI's DataImportCron digest pod runs just that).

// The server has no use for the RFC 3339 form the poller uses.
#[allow(dead_code)]
#[path = "../../cdi/civil.rs"]
mod civil;
#[path = "../../cdi/goflag.rs"]
mod goflag;
#[path = "../../cdi/gojson.rs"]
mod gojson;
mod http;
mod range;

use std::fs;
use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr, TcpListener};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use goflag::{FlagError, Kind, Spec};

/// CDI's flags, defaults and help texts.
const SPECS: &[Spec] = &[
    Spec {
        name: "p",
        kind: Kind::Int,
        default: "8100",
        usage: "server port",
    },
    Spec {
        name: "image-dir",
        kind: Kind::Str,
        default: ".",
        usage: "directory to serve",
    },
    Spec {
        name: "ready-file",
        kind: Kind::Str,
        default: "/shared/ready",
        usage: "file to create when ready for connections",
    },
    Spec {
        name: "done-file",
        kind: Kind::Str,
        default: "/shared/done",
        usage: "file created when the client is done",
    },
];

/// CDI's words for a bootc image.
const BOOTC: &str = "bootc image detected: this image contains an ostree-based bootable OS and cannot be imported as a regular container disk; bootc-to-disk conversion is not yet implemented";

/// How often the done file is looked for (CDI's interval).
const DONE_POLL: Duration = Duration::from_secs(1);

/// Most paths listed at start (the listing is only for the log).
const MAX_LISTED: usize = 1000;

fn main() {
    let mut argv = std::env::args_os().map(|a| a.to_string_lossy().into_owned());
    let program = argv
        .next()
        .unwrap_or_else(|| "cdi-containerimage-server".to_string());
    let args: Vec<String> = argv.collect();
    let values = match goflag::parse(&args, SPECS) {
        Ok(v) => v,
        Err(FlagError::Help) => {
            eprint!("{}", goflag::usage(&program, SPECS));
            std::process::exit(0);
        }
        Err(FlagError::Bad(m)) => {
            eprintln!("{m}");
            eprint!("{}", goflag::usage(&program, SPECS));
            std::process::exit(2);
        }
    };
    let [port, dir, ready, done] = values.as_slice() else {
        fatal("internal error: flag values missing");
    };
    watch_signals();
    run(port, Path::new(dir), Path::new(ready), Path::new(done));
}

/// Everything after the flags, in CDI's order.
fn run(port: &str, dir: &Path, ready: &Path, done: &Path) -> ! {
    if ["/sysroot", "/ostree"]
        .iter()
        .any(|d| Path::new(d).is_dir())
    {
        fatal(BOOTC);
    }
    print_files(dir);
    let name = image_filename(dir).unwrap_or_else(|e| {
        fatal(&format!(
            "Failed get image filename in {}: {e}",
            dir.display()
        ))
    });
    let v4 = port
        .parse::<u16>()
        .map_err(|_| format!("listen tcp: address {port}: invalid port"))
        .and_then(|p| TcpListener::bind((Ipv4Addr::LOCALHOST, p)).map_err(|e| e.to_string()))
        .unwrap_or_else(|e| fatal(&format!("Failed listening on localhost:{port} err: {e}")));
    let bound = v4.local_addr().map_or(0, |a| a.port());
    // `localhost` may resolve to ::1 first in the importer; a pod without
    // IPv6 simply has no second listener.
    let v6 = TcpListener::bind((Ipv6Addr::LOCALHOST, bound)).ok();

    let site = Arc::new(http::Site::new(dir.join(&name), name.clone(), info_body()));
    if let Err(e) = write_ready(ready, &name) {
        fatal(&format!("Failed creating \"ready\" file: {e}"));
    }
    log(&format!("Serving {} on HTTP port: {bound}", dir.display()));
    for l in std::iter::once(v4).chain(v6) {
        let site = Arc::clone(&site);
        if std::thread::Builder::new()
            .name("accept".into())
            .spawn(move || http::accept_loop(l, site))
            .is_err()
        {
            fatal("Serve failed: cannot start a thread");
        }
    }
    while !done.exists() {
        std::thread::sleep(DONE_POLL);
    }
    let _ = fs::remove_file(done);
    let _ = fs::remove_file(ready);
    log("Importer has completed");
    std::process::exit(0);
}

/// The name of the one entry of `dir`, which must not be a directory.
fn image_filename(dir: &Path) -> Result<String, String> {
    let entries: Vec<fs::DirEntry> = fs::read_dir(dir)
        .map_err(|e| format!("open {}: {e}", dir.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("readdir {}: {e}", dir.display()))?;
    match entries.as_slice() {
        [one] if !one.file_type().is_ok_and(|t| t.is_dir()) => {
            Ok(one.file_name().to_string_lossy().into_owned())
        }
        _ => Err("Invalid container image".to_string()),
    }
}

/// Prints `dir` and what is under it, one path a line, as CDI's server does
/// (symbolic links are not followed; at most [`MAX_LISTED`] paths).
fn print_files(dir: &Path) {
    let mut out = std::io::stdout().lock();
    let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
    let mut listed = 0;
    while let Some(p) = stack.pop() {
        if listed >= MAX_LISTED {
            let _ = writeln!(out, "...");
            break;
        }
        listed += 1;
        let _ = writeln!(out, "{}", p.display());
        if fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
            if let Ok(rd) = fs::read_dir(&p) {
                let mut children: Vec<PathBuf> =
                    rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
                children.sort();
                stack.extend(children.into_iter().rev());
            }
        }
    }
    let _ = out.flush();
}

/// Writes the file name into the ready file, mode 0600 as CDI does.
fn write_ready(path: &Path, name: &str) -> std::io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(name.as_bytes())
}

/// `/info`: `{"env":[...]}` with the process environment, as Go's
/// `json.Encoder` writes CDI's `ServerInfo` (a newline at the end).
fn info_body() -> Vec<u8> {
    let env: Vec<String> = std::env::vars_os()
        .map(|(k, v)| {
            gojson::go_json_string(&format!("{}={}", k.to_string_lossy(), v.to_string_lossy()))
        })
        .collect();
    format!("{{\"env\":[{}]}}\n", env.join(",")).into_bytes()
}

/// Exits on SIGTERM or SIGINT. As PID 1 of its container the process
/// would otherwise ignore them (the kernel drops signals PID 1 has no
/// handler for), and a deleted pod would wait out its grace period.
fn watch_signals() {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    // Blocked here, before any other thread starts, so every thread
    // inherits the mask and the waiting thread alone takes them.
    if set.thread_block().is_err() {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Ok(sig) = set.wait() {
                log(&format!("{sig}: exiting"));
                std::process::exit(128 + sig as i32);
            }
        });
}

/// A log line on stderr, in Go's `log` format.
fn log(msg: &str) {
    eprintln!("{} {msg}", civil::Civil::of(SystemTime::now()).log_stamp());
}

/// Logs `msg` and exits 1, as Go's `log.Fatal`.
fn fatal(msg: &str) -> ! {
    log(msg);
    std::process::exit(1);
}
