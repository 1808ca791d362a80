//! SIGTERM/SIGINT handling shared by the CLI and the pod mode.
//!
//! A signal sets a process-wide flag that the pipeline's reading tap checks on
//! every read, so the import unwinds through its normal error path: the reader
//! stops, in-flight writes drain (a few MiB at most), and the front end reports
//! a failure. A streaming decoder cannot be paused, and a rerun rewrites the
//! whole target, so nothing is lost by stopping hard. If the unwinding has not
//! finished after [`FORCE_EXIT_AFTER`] (for example the reader is blocked on a
//! stalled socket), the process exits non-zero anyway: the contract is "stop
//! within 2 seconds, never report success".

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

/// Grace period before a forced exit after a signal.
pub const FORCE_EXIT_AFTER: Duration = Duration::from_millis(1500);

/// 0 = none, 1 = SIGINT, 2 = SIGTERM.
static PENDING: AtomicU8 = AtomicU8::new(0);

/// The signal received so far, if any.
pub fn pending() -> Option<&'static str> {
    match PENDING.load(Ordering::Relaxed) {
        1 => Some("SIGINT"),
        2 => Some("SIGTERM"),
        _ => None,
    }
}

/// Exit status conventionally used after a signal (128 + signal number).
pub fn exit_code(name: &str) -> i32 {
    if name == "SIGINT" {
        130
    } else {
        143
    }
}

/// Installs the handlers on `rt`. `on_force_exit` runs just before a forced
/// exit (the pod mode writes its termination message there).
pub fn install(rt: &tokio::runtime::Handle, on_force_exit: fn(&'static str)) {
    rt.spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (mut term, mut int) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(t), Ok(i)) => (t, i),
            _ => {
                tracing::warn!("cannot install signal handlers; SIGTERM will kill the process");
                return;
            }
        };
        let name = tokio::select! {
            _ = term.recv() => { PENDING.store(2, Ordering::Relaxed); "SIGTERM" }
            _ = int.recv() => { PENDING.store(1, Ordering::Relaxed); "SIGINT" }
        };
        tracing::warn!(signal = name, "interrupted: stopping the import");
        tokio::time::sleep(FORCE_EXIT_AFTER).await;
        on_force_exit(name);
        eprintln!("streamdisk: interrupted by {name}; the import is incomplete");
        std::process::exit(exit_code(name));
    });
}
