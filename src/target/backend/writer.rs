//! The bounded write pipeline: a few threads issuing `pwrite`s in parallel.
//!
//! A single `pwrite` at a time leaves a loop device or an SSD idle between
//! requests; a handful in flight keeps the device queue busy. Threads (rather
//! than io_uring) keep this portable to every kernel and container runtime CDI
//! runs on; at 1 MiB per write the per-call overhead is negligible.
//!
//! The pipeline also remembers which ranges are in flight, so a
//! read-modify-write never reads a block that a queued write is about to
//! change, and it keeps the first write error: once a write failed, every later
//! call reports it, and nothing after it can be mistaken for success.

use super::pool::Returner;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use super::pool::AlignedBuf;

/// What a job writes.
pub(crate) enum Payload {
    /// The first `len` bytes of a pool buffer.
    Buf { buf: AlignedBuf, len: usize },
    /// `len` zero bytes, from the pipeline's shared zero buffer.
    Zeros { len: u64 },
    /// Zero `len` bytes of a block device without sending data: a punched
    /// hole or `BLKZEROOUT`. Only submitted once the method has worked on
    /// this device (see [`super::zeroing::DeviceZeroer`]), so a failure here
    /// is a real error, never a reason to fall back.
    Device { len: u64, method: DeviceZero },
}

/// A device zeroing call a writer thread can make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeviceZero {
    Punch,
    ZeroOut,
}

/// One write.
pub(crate) struct Job {
    pub offset: u64,
    pub payload: Payload,
}

impl Job {
    fn len(&self) -> u64 {
        match &self.payload {
            Payload::Buf { len, .. } => *len as u64,
            Payload::Zeros { len } | Payload::Device { len, .. } => *len,
        }
    }
}

struct Shared {
    file: Arc<File>,
    zeros: AlignedBuf,
    /// Ranges `[start, end)` queued or being written.
    inflight: Mutex<Vec<(u64, u64)>>,
    changed: Condvar,
    failed: AtomicBool,
    first_error: Mutex<Option<(io::ErrorKind, String)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking writer thread cannot leave these plain lists inconsistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn record_error(&self, offset: u64, len: u64, err: &io::Error) {
        let mut slot = lock(&self.first_error);
        if slot.is_none() {
            *slot = Some((
                err.kind(),
                format!("writing {len} bytes at offset {offset}: {err}"),
            ));
        }
        self.failed.store(true, Ordering::Release);
    }

    fn error(&self) -> Option<io::Error> {
        lock(&self.first_error)
            .as_ref()
            .map(|(kind, msg)| io::Error::new(*kind, msg.clone()))
    }

    fn done(&self, offset: u64, end: u64) {
        let mut list = lock(&self.inflight);
        if let Some(i) = list.iter().position(|&r| r == (offset, end)) {
            list.swap_remove(i);
        }
        drop(list);
        self.changed.notify_all();
    }

    fn write(&self, job: &Job) -> io::Result<()> {
        match &job.payload {
            Payload::Buf { buf, len } => {
                let data = buf
                    .as_slice()
                    .get(..*len)
                    .ok_or_else(|| io::Error::other("write length exceeds its buffer"))?;
                self.file.write_all_at(data, job.offset)
            }
            Payload::Zeros { len } => {
                let zeros = self.zeros.as_slice();
                let mut off = job.offset;
                let end = job.offset.saturating_add(*len);
                while off < end {
                    let n = usize::try_from(end - off)
                        .unwrap_or(usize::MAX)
                        .min(zeros.len());
                    self.file.write_all_at(&zeros[..n], off)?;
                    off += n as u64;
                }
                Ok(())
            }
            Payload::Device { len, method } => match method {
                DeviceZero::Punch => super::device::punch(&self.file, job.offset, *len),
                DeviceZero::ZeroOut => super::device::zeroout(&self.file, job.offset, *len),
            },
        }
    }
}

/// A running set of writer threads.
pub(crate) struct WritePipeline {
    tx: Option<SyncSender<Job>>,
    returner: Returner,
    threads: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
    zero_chunk: u64,
}

impl WritePipeline {
    /// Starts `threads` writers on `file`. Buffers of finished jobs go back
    /// through `returner`. `zero_len` sizes the shared zero buffer (aligned to
    /// `align`) used for zero-writing jobs.
    pub(crate) fn new(
        file: Arc<File>,
        threads: usize,
        returner: Returner,
        zero_len: usize,
        align: usize,
    ) -> io::Result<Self> {
        let threads_n = threads.max(1);
        let (tx, rx) = sync_channel::<Job>(threads_n);
        let rx = Arc::new(Mutex::new(rx));
        let shared = Arc::new(Shared {
            file,
            zeros: AlignedBuf::new(zero_len, align),
            inflight: Mutex::new(Vec::with_capacity(threads_n * 2 + 2)),
            changed: Condvar::new(),
            failed: AtomicBool::new(false),
            first_error: Mutex::new(None),
        });
        let mut handles = Vec::with_capacity(threads_n);
        for i in 0..threads_n {
            let rx = Arc::clone(&rx);
            let shared = Arc::clone(&shared);
            let thread_returner = returner.clone();
            let h = std::thread::Builder::new()
                .name(format!("sd-writer-{i}"))
                .spawn(move || writer_loop(&rx, &shared, &thread_returner))?;
            handles.push(h);
        }
        Ok(WritePipeline {
            tx: Some(tx),
            returner,
            threads: handles,
            shared,
            zero_chunk: zero_len.max(1) as u64 * 8,
        })
    }

    /// The first write error so far, if any.
    pub(crate) fn check(&self) -> io::Result<()> {
        if self.shared.failed.load(Ordering::Acquire) {
            if let Some(e) = self.shared.error() {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Queues a write. Blocks while all writers are busy and the queue is full.
    /// Fails (without queuing) once any earlier write has failed.
    ///
    /// A job that overlaps one still queued or running waits for it first, so
    /// overlapping jobs land in submission order even though the writer
    /// threads run them in parallel. (Decoders produce each guest range once,
    /// so this wait is a guarantee, not a cost: it never triggers on a
    /// well-formed stream.)
    pub(crate) fn submit(&self, job: Job) -> io::Result<()> {
        if let Err(e) = self.check() {
            self.give_back(job);
            return Err(e);
        }
        let Some(end) = job.offset.checked_add(job.len()) else {
            self.give_back(job);
            return Err(io::Error::other("write range overflows"));
        };
        let Some(tx) = self.tx.as_ref() else {
            self.give_back(job);
            return Err(io::Error::other("write pipeline already shut down"));
        };
        let offset = job.offset;
        {
            let mut list = lock(&self.shared.inflight);
            while list.iter().any(|&(s, e)| s < end && offset < e) {
                list = self
                    .shared
                    .changed
                    .wait(list)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            list.push((offset, end));
        }
        if let Err(returned) = tx.send(job) {
            self.shared.done(offset, end);
            self.give_back(returned.0);
            return Err(io::Error::other("writer threads are gone"));
        }
        Ok(())
    }

    /// Returns an unsubmitted job's buffer to the pool, so the pool never
    /// shrinks (a lost buffer would eventually block the filling side).
    fn give_back(&self, job: Job) {
        if let Payload::Buf { buf, .. } = job.payload {
            self.returner.give(buf);
        }
    }

    /// Queues zero-writing jobs covering `[start, end)`, split so several
    /// writers share a long range.
    pub(crate) fn submit_zeros(&self, start: u64, end: u64) -> io::Result<()> {
        let mut off = start;
        while off < end {
            let len = (end - off).min(self.zero_chunk);
            self.submit(Job {
                offset: off,
                payload: Payload::Zeros { len },
            })?;
            off += len;
        }
        Ok(())
    }

    /// Waits until no queued or running write overlaps `[start, end)`.
    pub(crate) fn wait_overlap(&self, start: u64, end: u64) {
        let mut list = lock(&self.shared.inflight);
        while list.iter().any(|&(s, e)| s < end && start < e) {
            list = self
                .shared
                .changed
                .wait(list)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Waits until every queued write has completed.
    #[cfg(test)]
    pub(crate) fn wait_idle(&self) {
        self.wait_overlap(0, u64::MAX);
    }

    /// Stops the writers after the queue drains and returns the first error.
    pub(crate) fn shutdown(mut self) -> io::Result<()> {
        self.stop();
        match self.shared.error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn stop(&mut self) {
        self.tx = None;
        for h in self.threads.drain(..) {
            if h.join().is_err() {
                self.shared
                    .record_error(0, 0, &io::Error::other("a writer thread panicked"));
            }
        }
    }
}

impl Drop for WritePipeline {
    fn drop(&mut self) {
        self.stop();
    }
}

fn writer_loop(rx: &Mutex<Receiver<Job>>, shared: &Shared, returner: &Returner) {
    loop {
        let job = match lock(rx).recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        let len = job.len();
        let end = job.offset.saturating_add(len);
        // After a failure, later jobs are dropped unwritten: the import has
        // failed and finishing them would only delay the report.
        if !shared.failed.load(Ordering::Acquire) {
            if let Err(e) = shared.write(&job) {
                shared.record_error(job.offset, len, &e);
            }
        }
        let offset = job.offset;
        if let Payload::Buf { buf, .. } = job.payload {
            returner.give(buf);
        }
        shared.done(offset, end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::pool::BufferPool;

    #[test]
    fn writes_land_and_buffers_come_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = Arc::new(File::create(dir.path().join("f")).expect("create"));
        let pool = BufferPool::new(3, 8192, 4096);
        let wp = WritePipeline::new(Arc::clone(&f), 2, pool.returner(), 4096, 4096).expect("start");
        for i in 0..10u64 {
            let mut b = pool.get().expect("buffer");
            b.as_mut_slice().fill(i as u8 + 1);
            wp.submit(Job {
                offset: i * 8192,
                payload: Payload::Buf { buf: b, len: 8192 },
            })
            .expect("submit");
        }
        wp.submit_zeros(10 * 8192, 12 * 8192).expect("zeros");
        wp.wait_idle();
        wp.shutdown().expect("no error");
        let data = std::fs::read(dir.path().join("f")).expect("read");
        assert_eq!(data.len(), 12 * 8192);
        for i in 0..10usize {
            assert!(data[i * 8192..(i + 1) * 8192]
                .iter()
                .all(|&x| x == i as u8 + 1));
        }
        assert!(data[10 * 8192..].iter().all(|&x| x == 0));
    }

    #[test]
    fn overlapping_jobs_land_in_submission_order() {
        // Four writers would run these in parallel; a long zero job followed
        // by data over its middle must still end with the data on disk.
        let dir = tempfile::tempdir().expect("tempdir");
        let f = Arc::new(File::create(dir.path().join("f")).expect("create"));
        let pool = BufferPool::new(4, 4096, 4096);
        let wp = WritePipeline::new(Arc::clone(&f), 4, pool.returner(), 4096, 4096).expect("start");
        for round in 0..50u64 {
            let base = round * (64 << 10);
            wp.submit(Job {
                offset: base,
                payload: Payload::Zeros { len: 64 << 10 },
            })
            .expect("zeros");
            let mut b = pool.get().expect("buffer");
            b.as_mut_slice().fill(round as u8 + 1);
            wp.submit(Job {
                offset: base + 8192,
                payload: Payload::Buf { buf: b, len: 4096 },
            })
            .expect("data");
        }
        wp.wait_idle();
        wp.shutdown().expect("no error");
        let data = std::fs::read(dir.path().join("f")).expect("read");
        for round in 0..50usize {
            let at = round * (64 << 10) + 8192;
            assert!(
                data[at..at + 4096].iter().all(|&x| x == round as u8 + 1),
                "round {round}: the later data write lost to the earlier zeros"
            );
        }
    }

    #[test]
    fn first_error_is_kept_and_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("ro"), b"x").expect("write");
        // Read-only: every pwrite fails with EBADF.
        let f = Arc::new(File::open(dir.path().join("ro")).expect("open"));
        let pool = BufferPool::new(1, 4096, 4096);
        let wp = WritePipeline::new(f, 1, pool.returner(), 4096, 4096).expect("start");
        let b = pool.get().expect("buffer");
        wp.submit(Job {
            offset: 4096,
            payload: Payload::Buf { buf: b, len: 4096 },
        })
        .expect("queued");
        wp.wait_idle();
        let err = wp.check().expect_err("error surfaces");
        assert!(
            err.to_string()
                .contains("writing 4096 bytes at offset 4096"),
            "{err}"
        );
        assert!(wp.submit_zeros(0, 4096).is_err(), "later submits fail");
        assert!(wp.shutdown().is_err());
        // The pool holds one buffer, so this only returns if it came back
        // (with the pipeline shut down, a lost buffer makes `get` say None).
        assert!(pool.get().is_some(), "buffer returned even on failure");
        assert_eq!(pool.allocated(), 1);
    }
}
