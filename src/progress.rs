//! Progress: a shared byte counter, shown as an indicatif bar, log lines, or the CDI metric.

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ProgressMode {
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

use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes received from the source so far, and the total when known.
///
/// Shared (behind an `Arc`) between the reading thread, which bumps it, and
/// the reporters (bar, log lines, the CDI metric), which only read it.
#[derive(Debug, Default)]
pub struct Counter {
    received: AtomicU64,
    /// 0 while unknown.
    total: AtomicU64,
    done: std::sync::atomic::AtomicBool,
}

impl Counter {
    pub fn add(&self, n: u64) {
        self.received.fetch_add(n, Ordering::Relaxed);
    }
    pub fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
    }
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
    pub fn total(&self) -> Option<u64> {
        match self.total.load(Ordering::Relaxed) {
            0 => None,
            t => Some(t),
        }
    }
    /// Marks the import complete (every byte durable).
    pub fn set_done(&self) {
        self.done.store(true, Ordering::Release);
    }
    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }
    /// Percent for the CDI metric: below 100 until [`Counter::set_done`], monotonic.
    pub fn percent(&self) -> f64 {
        if self.is_done() {
            return 100.0;
        }
        match self.total() {
            Some(t) => (self.received() as f64 * 100.0 / t as f64).clamp(0.0, 99.0),
            None => 0.0,
        }
    }
}

/// The tap on the raw source stream: counts bytes for progress and turns a
/// pending SIGTERM/SIGINT into a read error, which unwinds the pipeline
/// through its ordinary failure path. A `BufRead` over a `BufRead`: bytes
/// are counted as they are consumed, and never copied.
pub struct Tap<R> {
    inner: R,
    counter: std::sync::Arc<Counter>,
}

impl<R> Tap<R> {
    pub fn new(inner: R, counter: std::sync::Arc<Counter>) -> Self {
        Tap { inner, counter }
    }
}

impl<R: std::io::BufRead> std::io::BufRead for Tap<R> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        if let Some(sig) = crate::signals::pending() {
            // Not `ErrorKind::Interrupted`: readers retry those (EINTR), and
            // this one must stop them.
            return Err(std::io::Error::other(format!("interrupted by {sig}")));
        }
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        self.counter.add(amt as u64);
        self.inner.consume(amt);
    }
}

impl<R: std::io::BufRead> std::io::Read for Tap<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        crate::source::read_via_buf(self, buf)
    }
}

/// Shows progress until dropped: an indicatif bar or periodic log lines.
pub struct Reporter {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Interval between log lines when not on a terminal.
const LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

impl Reporter {
    /// Starts reporting `counter` in `mode` (`Auto` picks a bar on a TTY).
    pub fn start(mode: ProgressMode, counter: std::sync::Arc<Counter>) -> Self {
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
