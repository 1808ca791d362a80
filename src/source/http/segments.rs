//! Parallel segmented download: consecutive segments of the file fetched
//! over N connections, handed to the reader strictly in order.
//!
//! Object stores often cap each connection's throughput; N connections
//! multiply it. Memory stays bounded: at most N segments are being fetched
//! or waiting (N x `segment_size`, which counts toward the memory budget),
//! plus at most [`super::reader::BUFFER_BYTES`] of the segment being handed
//! over.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::task::JoinHandle;

use super::endpoint::Endpoint;
use super::fetch::{fetch, Sink};
use super::reader::ChannelSink;
use super::retry::RetryState;
use super::validator::Validator;
use crate::source::{HttpOptions, SourceError};

/// Size of the pieces a finished segment is handed over in, so that the
/// channel holds little of it at a time.
pub(super) const HANDOFF_CHUNK: usize = 256 << 10;

/// A segment task that is aborted when dropped (when the reader goes away
/// or another segment failed).
struct SegmentTask(JoinHandle<Result<Bytes, SourceError>>);

impl Drop for SegmentTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the whole segmented download into `tx`, then reports the outcome.
pub(super) async fn run(
    clients: Vec<Arc<Endpoint>>,
    validator: Arc<Validator>,
    opts: HttpOptions,
    total: u64,
    mut sink: ChannelSink,
) {
    let result = download(&clients, validator, &opts, total, &mut sink).await;
    sink.finish(result).await;
}

/// Segment `k` goes to client `k % clients.len()`: the segments in flight
/// are consecutive, so each uses its own client and connection.
async fn download(
    clients: &[Arc<Endpoint>],
    validator: Arc<Validator>,
    opts: &HttpOptions,
    total: u64,
    sink: &mut ChannelSink,
) -> Result<(), SourceError> {
    let display = clients
        .first()
        .map(|ep| ep.display.clone())
        .unwrap_or_default();
    let internal = |detail: String| SourceError::Internal {
        url: display.clone(),
        detail,
    };
    let connections = clients.len();
    if connections == 0 {
        return Err(internal("no HTTP client for the segments".to_string()));
    }
    let mut index: usize = 0;
    let segment = u64::try_from(opts.segment_size.max(1)).unwrap_or(u64::MAX);
    let mut next: u64 = 0;
    let mut in_flight: VecDeque<SegmentTask> = VecDeque::with_capacity(connections);
    loop {
        while in_flight.len() < connections && next < total {
            let end = next.saturating_add(segment).min(total);
            let Some(ep) = index.checked_rem(connections).and_then(|i| clients.get(i)) else {
                return Err(internal("segment client out of range".to_string()));
            };
            index = index.wrapping_add(1);
            in_flight.push_back(SegmentTask(tokio::spawn(fetch_segment(
                ep.clone(),
                validator.clone(),
                RetryState::new(opts),
                next,
                end,
            ))));
            next = end;
        }
        let Some(mut task) = in_flight.pop_front() else {
            return Ok(());
        };
        let data = match (&mut task.0).await {
            Ok(result) => result?,
            Err(join) => return Err(internal(format!("segment task failed: {join}"))),
        };
        let mut data = data;
        while !data.is_empty() {
            let piece = data.split_to(HANDOFF_CHUNK.min(data.len()));
            sink.put(piece).await?;
        }
    }
}

/// Fetches `[start, end)` into one buffer, resuming within the segment.
async fn fetch_segment(
    ep: Arc<Endpoint>,
    validator: Arc<Validator>,
    mut retry: RetryState,
    start: u64,
    end: u64,
) -> Result<Bytes, SourceError> {
    let len = usize::try_from(end.saturating_sub(start)).unwrap_or(0);
    let mut sink = BufferSink(BytesMut::with_capacity(len));
    fetch(
        &ep,
        &validator,
        &mut retry,
        (start, Some(end)),
        None,
        &mut sink,
    )
    .await?;
    Ok(sink.0.freeze())
}

/// Collects a segment in memory.
struct BufferSink(BytesMut);

impl Sink for BufferSink {
    async fn put(&mut self, data: Bytes) -> Result<(), SourceError> {
        self.0.extend_from_slice(&data);
        Ok(())
    }
}
