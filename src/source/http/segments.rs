//! Parallel segmented download: consecutive segments of the file fetched
//! over N connections, handed to the reader strictly in order.
//!
//! Two reasons to open more than one connection:
//! - object stores often cap each connection's throughput, and N
//!   connections multiply it;
//! - a static server reading its disk one buffer at a time per connection
//!   (nginx with `directio`, for one) keeps one read in flight; a second
//!   connection keeps a second read going, and the disk delivers more.
//!
//! The front segment (the one the reader is in) streams: its bytes go to
//! the reader as they arrive, through a small queue of its own
//! ([`FRONT_QUEUE`]). The segments behind it read ahead into memory, from
//! one budget shared by all of them: (N - 1) x segment size. When the front
//! ends, the next segment is promoted: what it holds is handed over (giving
//! its bytes back to the shared budget), and from then on it streams. So
//! the download holds at most (N - 1) x segment size + [`FRONT_QUEUE`], plus
//! the reader's pipe ([`super::reader::BUFFER_BYTES`]).
//!
//! In auto mode ([`Plan::adaptive`]) the rest of the file is asked for in
//! one request and streamed when segments stop paying:
//! - the server takes longer than [`SLOW_ANSWER`] to answer requests (a
//!   distant server): the round trips cost more than the second read gains;
//! - decompression sets the pace ([`Pace::decompressing`]): bytes read ahead
//!   would only wait in memory, next to the inflate workers' buffers.
//!
//! Auto mode also reads nothing ahead until the first segment is in (by
//! then a wrapper has shown itself), and a failed segment makes it fall
//! back to one stream from the first byte not yet handed over.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::task::JoinHandle;

use super::endpoint::Endpoint;
use super::fetch::{fetch, Sink};
use super::reader::ChannelSink;
use super::retry::RetryState;
use super::validator::Validator;
use crate::pace::Pace;
use crate::source::{HttpOptions, SourceError};

/// Bytes the front segment may queue beyond the reader's own pipe: one
/// network chunk (a chunk larger than this takes all of it), so that its
/// connection keeps flowing while the previous chunk is handed over. The
/// reader's pipe behind it is the real buffer.
const FRONT_QUEUE: usize = 64 << 10;

/// A segment request answered slower than this is a slow answer in auto
/// mode. The time counts the round trip and the server's own latency (nginx
/// with `directio` reads its whole first buffer from disk before it sends a
/// byte: about 3 ms for 2 MiB here). At 10 ms, one 2 MiB segment per
/// request caps each connection near 200 MB/s, while one stream over a path
/// that slow is held back by its TCP window, not by the server's reads.
const SLOW_ANSWER: Duration = Duration::from_millis(10);

/// Slow answers in a row that make auto mode give up on segments (one alone
/// may be a hiccup of the server's disk).
const SLOW_ANSWERS: u32 = 2;

/// How the download is cut up.
pub(super) struct Plan {
    /// Bytes per segment; also what each connection may read ahead.
    pub segment: u64,
    /// Auto mode: slow answers, or decompression setting the pace, make
    /// the rest of the file one segment.
    pub adaptive: bool,
    /// Read to learn whether decompression sets the pace.
    pub pace: Pace,
    /// Connections to use (at least 1).
    pub connections: usize,
}

/// Which budget a queued chunk took its permits from.
#[derive(Clone, Copy)]
enum Budget {
    Shared,
    Front,
}

/// What a segment task reports when it is done.
struct Fetched {
    /// Time from sending the request to its first byte (retries included).
    first_byte: Option<Duration>,
}

/// Read-ahead budget shared by the segments behind the front.
struct Ahead {
    permits: Semaphore,
    /// Most permits one chunk takes (larger chunks take them all).
    total: usize,
}

/// State shared by a segment task and the coordinator.
struct Shared {
    ahead: Arc<Ahead>,
    /// This segment's own queue budget once it is the front.
    front: Semaphore,
    promoted: AtomicBool,
    /// Wakes the task if it waits for read-ahead permits when promoted.
    wake: Notify,
}

/// A segment being fetched.
struct Segment {
    task: JoinHandle<Result<Fetched, SourceError>>,
    rx: mpsc::UnboundedReceiver<(Bytes, Budget)>,
    shared: Arc<Shared>,
    /// Index of its client in [`Clients`].
    client: usize,
    /// Whether its answer time counts for [`SLOW_ANSWER`].
    timed: bool,
}

impl Drop for Segment {
    /// A segment is dropped when the reader goes away or another segment
    /// failed: its transfer stops with it.
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs the whole segmented download into `sink`, then reports the outcome.
///
/// `first` is the client that opened the file; the others (one per
/// connection, `opts.connections` in all) are made for `url` when first
/// needed. One client per connection: over HTTP/2 a single client would
/// multiplex every segment onto one TCP connection, and the
/// per-connection caps that make segments worthwhile would apply.
pub(super) async fn run(
    first: Arc<Endpoint>,
    url: String,
    validator: Arc<Validator>,
    opts: HttpOptions,
    plan: Plan,
    total: u64,
    mut sink: ChannelSink,
) {
    let mut clients = Clients {
        url,
        limit: plan.connections.max(1),
        made: vec![first],
        idle: vec![0],
        used: vec![false],
    };
    let result = download(&mut clients, validator, &opts, &plan, total, &mut sink).await;
    sink.finish(result).await;
}

/// The download's HTTP clients, made as needed, and which are idle.
struct Clients {
    url: String,
    /// Most clients made.
    limit: usize,
    made: Vec<Arc<Endpoint>>,
    /// Idle clients, the most recently used last: a segment goes to the
    /// connection that just finished one, whose buffers are already there.
    idle: Vec<usize>,
    /// Whether each client has sent a request yet.
    used: Vec<bool>,
}

impl Clients {
    /// An idle client (made if none is left and fewer than `limit` exist), and whether it has sent a request before.
    fn take(&mut self, opts: &HttpOptions) -> Result<(usize, Arc<Endpoint>, bool), SourceError> {
        let i = match self.idle.pop() {
            Some(i) => i,
            None if self.made.len() < self.limit => {
                self.made.push(Arc::new(Endpoint::new(&self.url, opts)?));
                self.made.len() - 1
            }
            None => {
                return Err(SourceError::Internal {
                    url: super::redact_url(&self.url),
                    detail: "no idle HTTP client for a segment".to_string(),
                })
            }
        };
        let Some(ep) = self.made.get(i) else {
            return Err(SourceError::Internal {
                url: super::redact_url(&self.url),
                detail: "segment client out of range".to_string(),
            });
        };
        if self.used.len() <= i {
            self.used.resize(i + 1, false);
        }
        let used = std::mem::replace(&mut self.used[i], true);
        Ok((i, ep.clone(), used))
    }

    fn release(&mut self, i: usize) {
        self.idle.push(i);
    }
}

/// Why the segmented download stopped early.
enum Stop {
    /// Nothing more to try: the reader went away, or the one stream for
    /// the rest of the file failed after its full retry policy.
    Final(SourceError),
    /// A segment failed (after its own retries).
    Segment(SourceError),
}

/// Runs the segments; in auto mode a failed segment is not the end: the
/// rest of the file is fetched over one connection from the first byte not
/// yet handed over, with the full retry policy. A server that advertises
/// ranges but answers a range with the whole file, or that refuses a
/// second connection, still works as it did for one stream; a file that
/// changed fails there too, as it should.
async fn download(
    clients: &mut Clients,
    validator: Arc<Validator>,
    opts: &HttpOptions,
    plan: &Plan,
    total: u64,
    sink: &mut ChannelSink,
) -> Result<(), SourceError> {
    let mut handed: u64 = 0;
    let failed = match segmented(clients, &validator, opts, plan, total, sink, &mut handed).await {
        Ok(()) => return Ok(()),
        Err(Stop::Final(err)) => return Err(err),
        Err(Stop::Segment(err)) if !plan.adaptive => return Err(err),
        Err(Stop::Segment(err)) => err,
    };
    let Some(ep) = clients.made.first().cloned() else {
        return Err(failed);
    };
    tracing::warn!(
        "{}: segmented download failed at byte {handed} ({failed}); continuing over one connection",
        ep.display
    );
    let mut retry = RetryState::new(opts);
    fetch(
        &ep,
        &validator,
        &mut retry,
        (handed, Some(total)),
        None,
        sink,
    )
    .await
}

/// Retry policy of a segment in auto mode: one retry, then the fallback to
/// one stream takes over (with the full policy). Waiting out the full
/// policy on a second connection the server refuses would stall the whole
/// download for minutes.
fn auto_segment_retry(opts: &HttpOptions) -> RetryState {
    RetryState::new(&HttpOptions {
        max_attempts: opts.max_attempts.min(2),
        max_retry_time: opts.max_retry_time.min(Duration::from_secs(5)),
        ..opts.clone()
    })
}

/// The segmented download proper. `handed` counts the bytes handed to the
/// reader, all in order from the start of the file.
async fn segmented(
    clients: &mut Clients,
    validator: &Arc<Validator>,
    opts: &HttpOptions,
    plan: &Plan,
    total: u64,
    sink: &mut ChannelSink,
    handed: &mut u64,
) -> Result<(), Stop> {
    let label = clients
        .made
        .first()
        .map(|ep| ep.display.clone())
        .unwrap_or_default();
    let internal = |detail: String| {
        Stop::Segment(SourceError::Internal {
            url: label.clone(),
            detail,
        })
    };
    let connections = plan.connections.max(1);
    let per_connection = usize::try_from(plan.segment).unwrap_or(usize::MAX);
    let ahead_total = per_connection
        .saturating_mul(connections - 1)
        .clamp(1, Semaphore::MAX_PERMITS);
    let ahead = Arc::new(Ahead {
        permits: Semaphore::new(ahead_total),
        total: ahead_total,
    });
    let mut segment = plan.segment.max(1);
    let mut next: u64 = 0;
    let mut slow: u32 = 0;
    // Whether a segment has been handed over whole (auto mode reads ahead
    // only from then on).
    let mut warmed = false;
    let mut in_flight: VecDeque<Segment> = VecDeque::with_capacity(connections);
    loop {
        if plan.adaptive && segment < total && plan.pace.decompressing() {
            tracing::debug!(
                "{label}: decompression sets the pace; fetching the rest from byte {next} in one request"
            );
            segment = total;
        }
        if segment >= total && in_flight.is_empty() && next < total {
            // One stream for the rest: straight into the reader's pipe, as
            // a single-connection download would, without the segment
            // queue in between (about 1 MiB less at the peak on the raw.xz
            // benchmark image).
            let (client, ep, _) = clients.take(opts).map_err(Stop::Segment)?;
            let mut retry = RetryState::new(opts);
            let mut counted = Counted { sink, handed };
            let result = fetch(
                &ep,
                validator,
                &mut retry,
                (next, Some(total)),
                None,
                &mut counted,
            )
            .await;
            clients.release(client);
            return result.map_err(Stop::Final);
        }
        // Auto mode reads nothing ahead until the first segment has been
        // read: by then a wrapper's magic or the qcow2 header has shown
        // whether decompression will set the pace (and stopped the
        // read-ahead if so), and the server has shown that it honours
        // ranges.
        let wanted = if plan.adaptive && !warmed {
            1
        } else {
            connections
        };
        while in_flight.len() < wanted && next < total {
            let end = next.saturating_add(segment).min(total);
            let (client, ep, used) = clients.take(opts).map_err(Stop::Segment)?;
            let retry = if plan.adaptive {
                auto_segment_retry(opts)
            } else {
                RetryState::new(opts)
            };
            in_flight.push_back(start_segment(
                ep,
                validator.clone(),
                retry,
                (next, end),
                ahead.clone(),
                client,
                // A client's first request also opens its connection (and
                // TLS session): its answer time says little about the rest.
                used,
            ));
            next = end;
        }
        let Some(mut front) = in_flight.pop_front() else {
            return Ok(());
        };
        hand_over(&mut front, sink, handed).await?;
        let fetched = match (&mut front.task).await {
            Ok(result) => result.map_err(Stop::Segment)?,
            Err(join) => return Err(internal(format!("segment task failed: {join}"))),
        };
        clients.release(front.client);
        warmed = true;
        if plan.adaptive && front.timed {
            match fetched.first_byte {
                Some(t) if t > SLOW_ANSWER => slow += 1,
                _ => slow = 0,
            }
            if slow >= SLOW_ANSWERS && segment < total && next < total {
                tracing::info!(
                    "{label}: the server took {:?} to answer a segment request; fetching the rest from byte {next} in one request",
                    fetched.first_byte.unwrap_or_default()
                );
                segment = total;
            }
        }
    }
}

/// Starts fetching `[start, end)`.
fn start_segment(
    ep: Arc<Endpoint>,
    validator: Arc<Validator>,
    mut retry: RetryState,
    (start, end): (u64, u64),
    ahead: Arc<Ahead>,
    client: usize,
    timed: bool,
) -> Segment {
    let shared = Arc::new(Shared {
        ahead,
        front: Semaphore::new(FRONT_QUEUE),
        promoted: AtomicBool::new(false),
        wake: Notify::new(),
    });
    let (tx, rx) = mpsc::unbounded_channel();
    let mut queue = QueueSink {
        tx,
        shared: shared.clone(),
        sent_at: Instant::now(),
        first_byte: None,
        display: ep.display.clone(),
    };
    let task = tokio::spawn(async move {
        fetch(
            &ep,
            &validator,
            &mut retry,
            (start, Some(end)),
            None,
            &mut queue,
        )
        .await?;
        Ok(Fetched {
            first_byte: queue.first_byte,
        })
    });
    Segment {
        task,
        rx,
        shared,
        client,
        timed,
    }
}

/// Promotes `front` and moves its bytes to the reader until its task is
/// done with them, giving each chunk's permits back to the budget it came
/// from.
async fn hand_over(
    front: &mut Segment,
    sink: &mut ChannelSink,
    handed: &mut u64,
) -> Result<(), Stop> {
    front.shared.promoted.store(true, Ordering::Release);
    front.shared.wake.notify_one();
    while let Some((chunk, budget)) = front.rx.recv().await {
        match budget {
            Budget::Shared => {
                let ahead = &front.shared.ahead;
                ahead.permits.add_permits(chunk.len().min(ahead.total));
            }
            Budget::Front => front.shared.front.add_permits(chunk.len().min(FRONT_QUEUE)),
        }
        let len = u64::try_from(chunk.len()).unwrap_or(u64::MAX);
        sink.put(chunk).await.map_err(Stop::Final)?;
        *handed = handed.saturating_add(len);
    }
    Ok(())
}

/// The reader's pipe, counting what passes.
struct Counted<'a> {
    sink: &'a mut ChannelSink,
    handed: &'a mut u64,
}

impl Sink for Counted<'_> {
    async fn put(&mut self, data: Bytes) -> Result<(), SourceError> {
        let len = u64::try_from(data.len()).unwrap_or(u64::MAX);
        self.sink.put(data).await?;
        *self.handed = self.handed.saturating_add(len);
        Ok(())
    }
}

/// The segment task's side of its queue.
struct QueueSink {
    tx: mpsc::UnboundedSender<(Bytes, Budget)>,
    shared: Arc<Shared>,
    sent_at: Instant,
    first_byte: Option<Duration>,
    display: String,
}

impl QueueSink {
    /// Takes permits for `len` bytes: from the shared read-ahead budget
    /// while the segment is behind the front, from its own small budget
    /// once it is the front (including when it is promoted while waiting).
    async fn reserve(&self, len: usize) -> Result<Budget, tokio::sync::AcquireError> {
        let shared = &self.shared;
        loop {
            if shared.promoted.load(Ordering::Acquire) {
                let wanted = u32::try_from(len.min(FRONT_QUEUE)).unwrap_or(u32::MAX);
                shared.front.acquire_many(wanted).await?.forget();
                return Ok(Budget::Front);
            }
            let wanted = u32::try_from(len.min(shared.ahead.total)).unwrap_or(u32::MAX);
            tokio::select! {
                permit = shared.ahead.permits.acquire_many(wanted) => {
                    permit?.forget();
                    return Ok(Budget::Shared);
                }
                () = shared.wake.notified() => {}
            }
        }
    }
}

impl Sink for QueueSink {
    async fn put(&mut self, data: Bytes) -> Result<(), SourceError> {
        if self.first_byte.is_none() {
            self.first_byte = Some(self.sent_at.elapsed());
        }
        let cancelled = || SourceError::Cancelled {
            url: self.display.clone(),
        };
        let budget = self.reserve(data.len()).await.map_err(|_| cancelled())?;
        self.tx.send((data, budget)).map_err(|_| cancelled())
    }
}
