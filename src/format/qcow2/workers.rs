//! Compressed clusters decompressed on a small worker pool.
//!
//! Inflating is the decoder's main CPU cost on compressed images (cloud images
//! are made with `qemu-img convert -c`), and one core cannot keep up with a
//! fast network. Jobs are handed to `threads` workers and their results are
//! collected strictly in submission order, so extents reach the sink in the
//! same order as without the pool. In-flight jobs are bounded by bytes
//! (`INFLIGHT_BYTES` of output), which keeps the memory budget whatever the
//! cluster size. With one thread (or none available) it runs inline.

use std::collections::VecDeque;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::decompress::Decompressor;
use super::header::CompressionType;

/// Output bytes in flight at most. 512 KiB (8 clusters of 64 KiB) keeps both
/// cores busy: on the zlib rootfs image of BENCHMARKS.md over loopback HTTP,
/// 1 MiB ran as fast as 4 MiB (1.96-2.09 s against 2.04-2.33 s, 3 runs each)
/// with a cgroup peak of 30 MiB instead of 37 MiB; later, 512 KiB ran as fast
/// as 1 MiB (2.37-2.58 s against 2.22-2.58 s) with a peak of 22 MiB instead
/// of 24 MiB.
const INFLIGHT_BYTES: u64 = 512 << 10;
/// Workers at most (more does not help a single stream).
const MAX_THREADS: usize = 4;

/// One compressed cluster to decompress.
pub struct Job {
    pub host: u64,
    pub guest: u64,
    pub input: Vec<u8>,
    pub out: Vec<u8>,
}

/// A finished job: the cluster in `out`, or why it failed.
pub struct Done {
    pub job: Job,
    /// Input bytes consumed, or the error.
    pub result: Result<usize, String>,
}

type Queue = Arc<Mutex<Receiver<(Job, Sender<Done>)>>>;

pub struct Pool {
    kind: CompressionType,
    started: bool,
    cluster_size: usize,
    max_inflight: usize,
    /// Inline decompressor when there are no workers.
    inline: Option<Decompressor>,
    tx: Option<Sender<(Job, Sender<Done>)>>,
    handles: Vec<JoinHandle<()>>,
    inflight: VecDeque<Receiver<Done>>,
    spare: Vec<Vec<u8>>,
}

impl Pool {
    /// A pool for clusters of `cluster_size`; threads start with the first job,
    /// so images without compressed clusters never spawn any.
    pub fn new(kind: CompressionType, cluster_size: u64) -> Result<Pool, String> {
        let max_inflight = (INFLIGHT_BYTES / cluster_size.max(1)).clamp(2, 64) as usize;
        let cs = usize::try_from(cluster_size).map_err(|_| "cluster size".to_string())?;
        // Fail early (at the header) if the decompressor cannot be set up.
        Decompressor::new(kind)?;
        Ok(Pool {
            kind,
            started: false,
            cluster_size: cs,
            max_inflight,
            inline: None,
            tx: None,
            handles: Vec::new(),
            inflight: VecDeque::new(),
            spare: Vec::new(),
        })
    }

    fn start(&mut self) -> Result<(), String> {
        self.started = true;
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_THREADS);
        if threads >= 2 {
            let (tx, rx) = channel::<(Job, Sender<Done>)>();
            let rx: Queue = Arc::new(Mutex::new(rx));
            for i in 0..threads {
                let rx = Arc::clone(&rx);
                let mut d = Decompressor::new(self.kind)?;
                let h = std::thread::Builder::new()
                    .name(format!("qcow2-inflate-{i}"))
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
        self.inline = Some(Decompressor::new(self.kind)?);
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

    /// Submits a cluster. Returns the oldest results that had to be
    /// collected to stay within the in-flight bound (in submission order).
    pub fn submit(&mut self, host: u64, guest: u64, input: Vec<u8>, done: &mut Vec<Done>) {
        let mut out = self.spare.pop().unwrap_or_default();
        out.resize(self.cluster_size, 0);
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
            let result = d.cluster(&job.input, &mut job.out);
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
                    result: Err("decompression worker stopped".into()),
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
                    result: Err("decompression worker died".into()),
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
        let result = d.cluster(&job.input, &mut job.out);
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
