//! Compressed units (qcow2 clusters, VMDK grains) decompressed on a small
//! worker pool.
//!
//! Inflating is the decoder's main CPU cost on compressed images (cloud images
//! are made with `qemu-img convert -c`), and one core cannot keep up with a
//! fast network. Jobs are handed to `threads` workers and their results are
//! collected strictly in submission order, so extents reach the sink in the
//! same order as without the pool. In-flight jobs are bounded by bytes
//! (`INFLIGHT_BYTES` of output), which keeps the memory budget whatever the
//! unit size. With one thread (or none available) it runs inline.

use std::collections::VecDeque;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::codec::{Codec, Decompressor, InflateError};

/// Output bytes in flight at most: 512 KiB (8 units of 64 KiB) keeps both
/// cores busy at the smallest peak (BENCHMARKS.md, "Tuning").
const INFLIGHT_BYTES: u64 = 512 << 10;
/// Workers at most (more does not help a single stream).
const MAX_THREADS: usize = 4;

/// One compressed unit to decompress.
pub struct Job {
    /// Host offset of the compressed bytes.
    pub host: u64,
    /// Guest offset of the unit.
    pub guest: u64,
    /// The compressed bytes (possibly followed by unrelated ones).
    pub input: Vec<u8>,
    /// The unit, once decompressed; its length is the unit's size.
    pub out: Vec<u8>,
}

/// A finished job: the unit in `out` (for [`Codec::Zlib`], truncated to
/// what the stream made), or why it failed.
pub struct Done {
    /// The job, with its buffers.
    pub job: Job,
    /// Input bytes consumed, or the error.
    pub result: Result<usize, InflateError>,
}

type Queue = Arc<Mutex<Receiver<(Job, Sender<Done>)>>>;

/// The workers and the jobs in flight.
pub struct Pool {
    codec: Codec,
    started: bool,
    unit_size: usize,
    max_inflight: usize,
    /// Inline decompressor when there are no workers.
    inline: Option<Decompressor>,
    tx: Option<Sender<(Job, Sender<Done>)>>,
    handles: Vec<JoinHandle<()>>,
    inflight: VecDeque<Receiver<Done>>,
    spare: Vec<Vec<u8>>,
}

impl Pool {
    /// A pool for units of at most `unit_size` bytes; threads start with
    /// the first job, so images without compressed units never spawn any.
    pub fn new(codec: Codec, unit_size: usize) -> Result<Pool, InflateError> {
        let max_inflight = (INFLIGHT_BYTES / (unit_size.max(1) as u64)).clamp(2, 64) as usize;
        // Fail early (at the header) if the decompressor cannot be set up.
        Decompressor::new(codec)?;
        Ok(Pool {
            codec,
            started: false,
            unit_size,
            max_inflight,
            inline: None,
            tx: None,
            handles: Vec::new(),
            inflight: VecDeque::new(),
            spare: Vec::new(),
        })
    }

    fn start(&mut self) -> Result<(), InflateError> {
        self.started = true;
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_THREADS);
        if threads >= 2 {
            let (tx, rx) = channel::<(Job, Sender<Done>)>();
            let rx: Queue = Arc::new(Mutex::new(rx));
            for i in 0..threads {
                let rx = Arc::clone(&rx);
                let mut d = Decompressor::new(self.codec)?;
                let h = std::thread::Builder::new()
                    .name(format!("sd-inflate-{i}"))
                    .spawn(move || worker(&rx, &mut d));
                match h {
                    Ok(h) => self.handles.push(h),
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot start a decompression worker");
                        break;
                    }
                }
            }
            if !self.handles.is_empty() {
                self.tx = Some(tx);
                return Ok(());
            }
        }
        self.inline = Some(Decompressor::new(self.codec)?);
        Ok(())
    }

    /// A buffer for a job's input, reused when possible.
    pub fn buffer(&mut self) -> Vec<u8> {
        let mut b = self.spare.pop().unwrap_or_default();
        b.clear();
        b
    }

    fn recycle(&mut self, mut b: Vec<u8>) {
        if self.spare.len() < 2 * self.max_inflight {
            b.clear();
            self.spare.push(b);
        }
    }

    /// Gives a finished job's buffers back.
    pub fn give_back(&mut self, job: Job) {
        self.recycle(job.input);
        self.recycle(job.out);
    }

    /// Submits a unit of `len` bytes (at most the pool's unit size).
    /// Pushes onto `done` the oldest results that had to be collected to
    /// stay within the in-flight bound (in submission order).
    pub fn submit(
        &mut self,
        host: u64,
        guest: u64,
        input: Vec<u8>,
        len: usize,
        done: &mut Vec<Done>,
    ) {
        let mut out = self.spare.pop().unwrap_or_default();
        out.clear();
        out.resize(len.min(self.unit_size), 0);
        let job = Job {
            host,
            guest,
            input,
            out,
        };
        if !self.started {
            if let Err(e) = self.start() {
                done.push(Done {
                    job,
                    result: Err(e),
                });
                return;
            }
        }
        if let Some(d) = self.inline.as_mut() {
            let mut job = job;
            let result = d.unit_vec(&job.input, &mut job.out);
            done.push(Done { job, result });
            return;
        }
        let (rtx, rrx) = channel();
        let sent = self.tx.as_ref().map(|tx| tx.send((job, rtx)));
        match sent {
            Some(Ok(())) => self.inflight.push_back(rrx),
            Some(Err(e)) => {
                // Workers gone (cannot happen while we hold `tx`): report it.
                let (job, _) = e.0;
                done.push(Done {
                    job,
                    result: Err(InflateError::WorkerGone),
                });
                return;
            }
            None => {}
        }
        while self.inflight.len() > self.max_inflight {
            self.collect_one(done);
        }
    }

    fn collect_one(&mut self, done: &mut Vec<Done>) {
        if let Some(rx) = self.inflight.pop_front() {
            match rx.recv() {
                Ok(d) => done.push(d),
                Err(_) => done.push(Done {
                    job: Job {
                        host: 0,
                        guest: 0,
                        input: Vec::new(),
                        out: Vec::new(),
                    },
                    result: Err(InflateError::WorkerGone),
                }),
            }
        }
    }

    /// Collects every job in flight.
    pub fn drain(&mut self, done: &mut Vec<Done>) {
        while !self.inflight.is_empty() {
            self.collect_one(done);
        }
    }
}

fn worker(rx: &Queue, d: &mut Decompressor) {
    loop {
        let next = match rx.lock() {
            Ok(q) => q.recv(),
            Err(_) => return,
        };
        let Ok((mut job, reply)) = next else { return };
        let result = d.unit_vec(&job.input, &mut job.out);
        if reply.send(Done { job, result }).is_err() {
            return;
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.tx = None;
        self.inflight.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}
