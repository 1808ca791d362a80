//! [`SourceError`]: why a source could not be opened or read, one line each.

use std::io;
use std::time::Duration;

/// Why a source could not be opened or read.
///
/// Every message is one line that names the URL or path (URLs never carry
/// credentials) and the problem, so that a user can act on it.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A local file or stdin failed.
    #[error("{what}")]
    Io {
        /// What was being done, with the path.
        what: String,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// A locator with a scheme no source handles.
    #[error("unsupported source scheme {0:?}:// (use http://, https://, docker://, s3://, gs://, a path or -)")]
    UnknownScheme(String),
    /// The URL could not be parsed or is not http(s).
    #[error("invalid URL {url}: {reason}")]
    InvalidUrl {
        /// The URL, without credentials.
        url: String,
        /// Why it is refused.
        reason: String,
    },
    /// An extra header name or value is not valid HTTP.
    #[error("invalid extra header {name:?}: {reason}")]
    InvalidHeader {
        /// The header name as given.
        name: String,
        /// Why it is refused.
        reason: String,
    },
    /// TLS settings could not be built (bad CA directory and so on).
    #[error("TLS setup failed: {0}")]
    TlsSetup(String),
    /// The HTTP client could not be built.
    #[error("cannot build HTTP client: {0}")]
    Client(String),
    /// The server answered with a status that is not a success.
    #[error("HTTP {status} for {url}{detail}")]
    Status {
        /// The status line.
        status: String,
        /// The URL, without credentials.
        url: String,
        /// What the error body said (an object store's error code and
        /// message), as `": CODE: message"`, or empty.
        detail: String,
    },
    /// The TLS handshake failed (certificate not trusted, name mismatch...).
    #[error("TLS failure connecting to {url}: {detail}")]
    Tls {
        /// The URL, without credentials.
        url: String,
        /// What went wrong.
        detail: String,
    },
    /// Nobody listens at the server's address.
    #[error("connection refused by {url}")]
    ConnectionRefused {
        /// The URL, without credentials.
        url: String,
    },
    /// Any other failure to connect or to send the request.
    #[error("cannot connect to {url}: {detail}")]
    Connect {
        /// The URL, without credentials.
        url: String,
        /// What went wrong.
        detail: String,
    },
    /// The response did not start in time.
    #[error("no response from {url} within {}s", .after.as_secs_f64())]
    Timeout {
        /// The URL, without credentials.
        url: String,
        /// How long it waited.
        after: Duration,
    },
    /// No byte arrived for the stall timeout.
    #[error("download of {url} stalled: no data for {}s at byte {offset}", .after.as_secs_f64())]
    Stalled {
        /// The URL, without credentials.
        url: String,
        /// Bytes of the file received before it.
        offset: u64,
        /// How long it waited.
        after: Duration,
    },
    /// The body failed mid-transfer (reset, protocol error).
    #[error("download of {url} broke at byte {offset}: {detail}")]
    Body {
        /// The URL, without credentials.
        url: String,
        /// Bytes of the file received before it.
        offset: u64,
        /// What went wrong.
        detail: String,
    },
    /// The body ended before the announced length.
    #[error("download of {url} ended at byte {offset}, expected {expected} bytes")]
    Truncated {
        /// The URL, without credentials.
        url: String,
        /// Bytes of the file received before it.
        offset: u64,
        /// The announced length.
        expected: u64,
    },
    /// The server sent more bytes than it announced.
    #[error("{url} sent more bytes than announced ({expected})")]
    TooLong {
        /// The URL, without credentials.
        url: String,
        /// The announced length.
        expected: u64,
    },
    /// A resume found a different version of the file.
    #[error("source changed during download: {url} ({detail}); not mixing two versions")]
    SourceChanged {
        /// The URL, without credentials.
        url: String,
        /// What went wrong.
        detail: String,
    },
    /// A resume was answered with the whole file.
    #[error("server does not support Range; cannot resume {url} at byte {offset}")]
    RangeIgnored {
        /// The URL, without credentials.
        url: String,
        /// Bytes of the file received before it.
        offset: u64,
    },
    /// A 206 answer whose Content-Range does not match the request.
    #[error("bad Content-Range from {url}: {detail}")]
    BadContentRange {
        /// The URL, without credentials.
        url: String,
        /// What went wrong.
        detail: String,
    },
    /// Too many redirects, or a redirect without a usable Location.
    #[error("redirect error for {url}: {detail}")]
    Redirect {
        /// The URL, without credentials.
        url: String,
        /// What went wrong.
        detail: String,
    },
    /// Retries ran out.
    #[error("giving up after {attempts} attempts over {}s: {last}", .elapsed.as_secs())]
    RetriesExhausted {
        /// Attempts made, the first included.
        attempts: u32,
        /// Time spent, backoff included.
        elapsed: Duration,
        /// The last failure.
        last: Box<SourceError>,
    },
    /// The consumer went away; the transfer was stopped.
    #[error("download of {url} cancelled")]
    Cancelled {
        /// The URL, without credentials.
        url: String,
    },
    /// A registry image could not be read.
    #[error(transparent)]
    Registry(#[from] super::registry::RegistryError),
    /// An S3 object could not be read.
    #[error(transparent)]
    S3(#[from] super::s3::S3Error),
    /// A GCS object could not be read.
    #[error(transparent)]
    Gcs(#[from] super::gcs::GcsError),
    /// An internal task ended without reporting (should not happen).
    #[error("download of {url} ended unexpectedly: {detail}")]
    Internal {
        /// The URL, without credentials.
        url: String,
        /// What went wrong.
        detail: String,
    },
}

impl SourceError {
    /// Converts into an `io::Error` that keeps this error as its source, so
    /// that the one-line message survives the `Read` interface.
    pub fn into_io(self) -> io::Error {
        let kind = match &self {
            SourceError::Truncated { .. } => io::ErrorKind::UnexpectedEof,
            SourceError::Stalled { .. } | SourceError::Timeout { .. } => io::ErrorKind::TimedOut,
            SourceError::ConnectionRefused { .. } => io::ErrorKind::ConnectionRefused,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, self)
    }
}
