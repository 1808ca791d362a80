//! Progress on the command line: an indicatif bar on a terminal, periodic
//! log lines otherwise, reading the library's shared [`Counter`].

use std::sync::atomic::Ordering;
use std::sync::Arc;

use streamdisk::progress::Counter;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub(crate) enum ProgressMode {
    /// A bar on a terminal, log lines otherwise.
    #[default]
    Auto,
    /// Always an indicatif bar.
    Bar,
    /// Periodic log lines.
    Log,
    /// Nothing.
    None,
}

/// Shows progress until dropped: an indicatif bar or periodic log lines.
pub(crate) struct Reporter {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Interval between log lines when not on a terminal.
const LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

impl Reporter {
    /// Starts reporting `counter` in `mode` (`Auto` picks a bar on a TTY).
    pub(crate) fn start(mode: ProgressMode, counter: Arc<Counter>) -> Self {
        use std::io::IsTerminal;
        let mode = match mode {
            ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Bar,
            ProgressMode::Auto => ProgressMode::Log,
            m => m,
        };
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = match mode {
            ProgressMode::None | ProgressMode::Auto => None,
            ProgressMode::Bar => {
                let stop = std::sync::Arc::clone(&stop);
                Some(std::thread::spawn(move || run_bar(&counter, &stop)))
            }
            ProgressMode::Log => {
                let stop = std::sync::Arc::clone(&stop);
                Some(std::thread::spawn(move || run_log(&counter, &stop)))
            }
        };
        Reporter { stop, thread }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run_bar(counter: &Counter, stop: &std::sync::atomic::AtomicBool) {
    use indicatif::{ProgressBar, ProgressStyle};
    let bar = match counter.total() {
        Some(t) => ProgressBar::new(t),
        None => ProgressBar::new_spinner(),
    };
    let style = if counter.total().is_some() {
        "{elapsed_precise} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
    } else {
        "{elapsed_precise} {spinner} {bytes} {bytes_per_sec}"
    };
    if let Ok(s) = ProgressStyle::with_template(style) {
        bar.set_style(s.progress_chars("=> "));
    }
    while !stop.load(Ordering::Relaxed) {
        if let Some(t) = counter.total() {
            bar.set_length(t);
        }
        bar.set_position(counter.received());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    bar.set_position(counter.received());
    bar.finish_and_clear();
}

fn run_log(counter: &Counter, stop: &std::sync::atomic::AtomicBool) {
    let start = std::time::Instant::now();
    let mut last = start;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(std::time::Duration::from_millis(100));
        if last.elapsed() < LOG_EVERY {
            continue;
        }
        last = std::time::Instant::now();
        let got = counter.received();
        let secs = start.elapsed().as_secs_f64().max(0.001);
        let rate = got as f64 / secs / 1048576.0;
        match counter.total() {
            Some(t) => tracing::info!(
                "progress: {} of {} MiB received ({:.1}%), {:.1} MiB/s",
                got >> 20,
                t >> 20,
                got as f64 * 100.0 / t as f64,
                rate
            ),
            None => tracing::info!("progress: {} MiB received, {:.1} MiB/s", got >> 20, rate),
        }
    }
}
