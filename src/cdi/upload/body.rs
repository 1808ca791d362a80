//! The request body as the pipeline's source: the bridge from the async
//! side (hyper delivers the body's frames on the runtime) to the blocking
//! side (the pipeline reads a `BufRead` on its own thread) is a
//! [`chunk_pipe`](crate::io::chunk_pipe) bounded to [`BUFFER_BYTES`], so
//! memory stays flat whatever the upload's size; [`BodySource`] hands it to
//! the pipeline as a [`Source`].

use std::io::{self, BufRead};
use std::sync::Mutex;

use crate::io::chunk_pipe::{self, PipeReader, PipeSender};
use crate::source::{OpenContext, OpenedSource, Source, SourceError};

pub(crate) use crate::io::chunk_pipe::Closed;

/// Bytes in flight between the connection and the pipeline (the HTTP
/// source's figure: the socket buffers and the writes in flight absorb the
/// jitter; more only costs memory).
pub(crate) const BUFFER_BYTES: usize = 512 << 10;

/// The async end: the forwarder puts the body's frames in.
pub(crate) type BodySender = PipeSender<String>;

/// The blocking end. Dropping it tells the forwarder to stop.
pub(crate) type BodyReader = PipeReader<String>;

/// Creates the two ends of the bridge.
pub(crate) fn pipe() -> (BodySender, BodyReader) {
    chunk_pipe::pipe(
        BUFFER_BYTES,
        "the request body ended without its end".to_string(),
    )
}

/// A stream for the pipeline, and its length when known.
pub(crate) type Adapted = (Box<dyn BufRead + Send>, Option<u64>);

/// How the body is turned into the stream the pipeline reads (given the
/// body and its `Content-Length`).
pub(crate) type Adapt =
    Box<dyn FnOnce(BodyReader, Option<u64>) -> Result<Adapted, SourceError> + Send>;

/// An upload's body as a [`Source`], opened once: a forward stream, never
/// seekable, with the size from `Content-Length` when it is the image's.
pub(crate) struct BodySource {
    body: Mutex<Option<(BodyReader, Adapt)>>,
    size: Option<u64>,
}

impl std::fmt::Debug for BodySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodySource")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// How the upload is named in logs and messages.
pub(crate) const DISPLAY: &str = "the upload";

impl BodySource {
    /// The body as it is (`size`: its `Content-Length`, when that is the
    /// image's length).
    pub(crate) fn plain(body: BodyReader, size: Option<u64>) -> BodySource {
        BodySource::adapted(body, size, Box::new(|b, size| Ok((Box::new(b), size))))
    }

    /// The body through `adapt` (a clone stream's framing and tar).
    pub(crate) fn adapted(body: BodyReader, size: Option<u64>, adapt: Adapt) -> BodySource {
        BodySource {
            body: Mutex::new(Some((body, adapt))),
            size,
        }
    }
}

impl Source for BodySource {
    fn display(&self) -> String {
        DISPLAY.to_string()
    }

    fn open(&self, _: &OpenContext<'_>) -> Result<OpenedSource, SourceError> {
        let taken = self.body.lock().ok().and_then(|mut b| b.take());
        let Some((body, adapt)) = taken else {
            return Err(SourceError::Io {
                what: "opening the upload a second time".to_string(),
                source: io::Error::other("a request body can be read once"),
            });
        };
        let (reader, size) = adapt(body, self.size)?;
        Ok(OpenedSource {
            reader,
            size,
            range: None,
            display: DISPLAY.to_string(),
            counts_itself: false,
            registry: None,
        })
    }
}
