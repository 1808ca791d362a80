//! Progress on the command line: an indicatif bar on a terminal, periodic
//! log lines otherwise, reading the library's shared [`Counter`].

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
///
/// The thread sleeps on a channel, not a timer: dropping the reporter drops
/// the sender, which wakes it at once. (It slept 100 ms at a time and the
/// drop joined it, so every import ended up to 100 ms late, 50 ms on
/// average: 4% of a 1.3 s import.)
pub(crate) struct Reporter {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Interval between log lines when not on a terminal.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Interval between redraws of the bar.
const BAR_EVERY: Duration = Duration::from_millis(100);

impl Reporter {
    /// Starts reporting `counter` in `mode` (`Auto` picks a bar on a TTY).
    pub(crate) fn start(mode: ProgressMode, counter: Arc<Counter>) -> Self {
        use std::io::IsTerminal;
        let mode = match mode {
            ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Bar,
            ProgressMode::Auto => ProgressMode::Log,
            m => m,
        };
        let (stop, stopped) = mpsc::channel();
        let thread = match mode {
            ProgressMode::None | ProgressMode::Auto => None,
            ProgressMode::Bar => Some(std::thread::spawn(move || run_bar(&counter, &stopped))),
            ProgressMode::Log => Some(std::thread::spawn(move || run_log(&counter, &stopped))),
        };
        Reporter {
            stop: Some(stop),
            thread,
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Waits `every`; false once the reporter is dropped.
fn keep_going(stopped: &mpsc::Receiver<()>, every: Duration) -> bool {
    matches!(stopped.recv_timeout(every), Err(RecvTimeoutError::Timeout))
}

fn run_bar(counter: &Counter, stopped: &mpsc::Receiver<()>) {
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
    loop {
        if let Some(t) = counter.total() {
            bar.set_length(t);
        }
        bar.set_position(counter.received());
        if !keep_going(stopped, BAR_EVERY) {
            break;
        }
    }
    bar.set_position(counter.received());
    bar.finish_and_clear();
}

fn run_log(counter: &Counter, stopped: &mpsc::Receiver<()>) {
    let start = Instant::now();
    while keep_going(stopped, LOG_EVERY) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropping_the_reporter_wakes_its_thread_at_once() {
        for mode in [ProgressMode::Log, ProgressMode::Bar] {
            let r = Reporter::start(mode, Arc::new(Counter::default()));
            let t = Instant::now();
            drop(r);
            // The log thread waits LOG_EVERY (5 s) between lines: a drop
            // that had to wait that out would take seconds.
            assert!(
                t.elapsed() < Duration::from_secs(2),
                "{mode:?}: {:?}",
                t.elapsed()
            );
        }
    }
}
