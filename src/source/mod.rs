//! Byte sources: HTTP(S), an OCI registry image, an S3 or GCS object, a local
//! file, stdin.
//!
//! Every source is consumed as a forward `std::io::BufRead` stream (the pipeline runs
//! on a blocking thread). Seekable sources (files, HTTP servers that honour
//! `Range`) also hand out a [`RangeRead`] so that the qcow2 planner can fetch
//! metadata out of order instead of spilling.
//!
//! Layout: `file` and `stdin` are thin; `http` holds the client (TLS,
//! redirects, credentials), the resumable transfer loop, the retry policy,
//! range reads and the parallel segmented download; `registry` reads a
//! containerDisk image over the distribution API, on top of `http`; `s3` and
//! `gcs` read objects through `http` with a per-request authorizer (a SigV4
//! signature, an OAuth2 token).

use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use crate::io::RangeRead;
use crate::pace::Pace;
use crate::progress::Counter;

pub mod auth;
mod error;
mod file;
pub mod gcs;
mod http;
mod percent;
pub mod registry;
pub mod s3;
mod stdin;

pub use auth::Authorize;
pub use error::SourceError;

/// One kind of source. Each module under `source/` implements it for its
/// locator; [`SourceSpec::parse`] is the one place that picks the module by
/// the locator's scheme.
pub trait Source: std::fmt::Debug + Send + Sync {
    /// A name for logs and messages, never containing credentials.
    fn display(&self) -> String;

    /// Opens the source. Network transfers run on `ctx.rt`; the returned
    /// reader blocks. Must be called from a thread that is not driving the
    /// runtime (the pipeline's blocking thread, or a plain thread).
    fn open(&self, ctx: &OpenContext<'_>) -> Result<OpenedSource, SourceError>;
}

/// What a source needs to open.
pub struct OpenContext<'a> {
    /// Client settings (HTTP and everything built on it).
    pub http: &'a HttpOptions,
    /// The runtime that carries network transfers.
    pub rt: &'a tokio::runtime::Handle,
    /// Who sets the pace: a source that reads ahead says so, and stops
    /// reading ahead once decompression sets the pace.
    pub pace: &'a Pace,
    /// Progress, for a source that counts its own bytes (see
    /// [`OpenedSource::counts_itself`]); others leave it to the pipeline.
    pub counter: &'a Arc<Counter>,
}

/// Where the image comes from: a URL, a path or `-`, parsed once.
#[derive(Debug, Clone)]
pub struct SourceSpec(Arc<dyn Source>);

impl SourceSpec {
    /// Parses a SOURCE argument: a URL (by its scheme), `-` for stdin, or a
    /// path. An unknown scheme is an error rather than a file name.
    pub fn parse(s: &str) -> Result<SourceSpec, SourceError> {
        if s == "-" {
            return Ok(SourceSpec::new(stdin::Stdin));
        }
        match s
            .split_once("://")
            .map(|(scheme, _)| scheme.to_ascii_lowercase())
        {
            Some(scheme) if scheme == "http" || scheme == "https" => {
                Ok(SourceSpec::new(http::HttpSource::new(s)))
            }
            Some(scheme) if scheme == "docker" => {
                Ok(SourceSpec::new(registry::RegistrySource::parse(s)?))
            }
            Some(scheme) if scheme == "s3" => Ok(SourceSpec::new(s3::S3Source::parse(s)?)),
            Some(scheme) if scheme == "gs" => Ok(SourceSpec::new(gcs::GcsSource::parse(s)?)),
            Some(scheme)
                if scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) =>
            {
                Err(SourceError::UnknownScheme(scheme))
            }
            _ => Ok(SourceSpec::new(file::FileSource::new(PathBuf::from(s)))),
        }
    }

    /// A local file, whatever its name looks like (`SOURCE` arguments that
    /// look like URLs are taken as URLs by [`SourceSpec::parse`]).
    pub fn file(path: PathBuf) -> SourceSpec {
        SourceSpec::new(file::FileSource::new(path))
    }

    /// A spec for a source built by hand (a request body, a test double).
    pub fn new(source: impl Source + 'static) -> SourceSpec {
        SourceSpec(Arc::new(source))
    }

    /// A name for logs and messages, never containing credentials
    /// (URL userinfo is removed).
    pub fn display(&self) -> String {
        self.0.display()
    }

    /// Opens the source (see [`Source::open`]).
    pub fn open(&self, ctx: &OpenContext<'_>) -> Result<OpenedSource, SourceError> {
        self.0.open(ctx)
    }
}

/// HTTP client settings shared by the CLI and the CDI pod mode.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Basic-auth user and password; sent only to the origin of the first URL.
    pub basic_auth: Option<(String, String)>,
    /// Credentials computed per request (tokens, signatures); used only for
    /// the origin of the first URL, after basic auth and extra headers.
    pub authorizer: Option<Arc<dyn Authorize>>,
    /// Extra request headers (`Name`, `value`); sent only to the first origin.
    pub extra_headers: Vec<(String, String)>,
    /// Directories whose files hold extra PEM CA certificates.
    pub ca_dirs: Vec<PathBuf>,
    /// Skip TLS certificate verification.
    pub insecure_tls: bool,
    /// Reconnect when no byte arrived for this long.
    pub stall_timeout: Duration,
    /// Maximum attempts per request (first try included).
    ///
    /// Counted per streak of failures: any byte received resets the count,
    /// so a long transfer survives many separate drops.
    pub max_attempts: u32,
    /// Upper bound on the total time spent in backoff.
    ///
    /// Measured from the first failure of a streak (see `max_attempts`).
    pub max_retry_time: Duration,
    /// For `docker://` sources: the platform and where credentials come from.
    pub registry: registry::RegistryOptions,
    /// For `s3://` sources: endpoint, region, addressing style, credentials.
    pub s3: s3::S3Options,
    /// For `gs://` sources: endpoint and credentials.
    pub gcs: gcs::GcsOptions,
    /// Host names connected to a given address instead of being resolved
    /// (`--resolve`): for virtual-host S3 names, private endpoints and
    /// tests, without touching `/etc/hosts`. The address's port is used
    /// when the URL names none; a URL's own port always wins.
    pub resolve: Vec<(String, std::net::SocketAddr)>,
    /// The service serves byte ranges of every object whether or not a
    /// response says `Accept-Ranges` (S3, GCS): resume and range reads
    /// are used anyway.
    pub assume_ranges: bool,
    /// Parallel range connections.
    pub connections: Connections,
    /// Bytes per segment when the download is segmented; each segment
    /// behind the one being read is held in memory whole.
    pub segment_size: usize,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            basic_auth: None,
            authorizer: None,
            extra_headers: Vec::new(),
            ca_dirs: Vec::new(),
            insecure_tls: false,
            stall_timeout: Duration::from_secs(60),
            max_attempts: 8,
            max_retry_time: Duration::from_secs(300),
            registry: registry::RegistryOptions::default(),
            s3: s3::S3Options::default(),
            gcs: gcs::GcsOptions::default(),
            resolve: Vec::new(),
            assume_ranges: false,
            connections: Connections::Auto,
            segment_size: DEFAULT_SEGMENT,
        }
    }
}

/// How many connections a download may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Connections {
    /// The source chooses: two connections for files of 64 MiB or more on
    /// servers with Range support, back to one stream when segments stop
    /// paying (decompression sets the pace, slow answers, refused ranges).
    #[default]
    Auto,
    /// Exactly this many (1 is a single streaming GET), whatever happens.
    Fixed(usize),
}

/// Parses one `--resolve` entry, `HOST=ADDR:PORT` (`HOST=[V6ADDR]:PORT`
/// for IPv6): requests for HOST connect to that address.
pub fn parse_resolve(s: &str) -> Result<(String, std::net::SocketAddr), String> {
    let (host, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("invalid resolve entry {s:?}: expected HOST=ADDR:PORT"))?;
    let host = host.trim();
    if host.is_empty() || host.contains(['/', ':', ' ']) {
        return Err(format!(
            "invalid resolve entry {s:?}: {host:?} is not a host name"
        ));
    }
    let addr = addr
        .trim()
        .parse()
        .map_err(|e| format!("invalid resolve entry {s:?}: {e} (expected ADDR:PORT)"))?;
    Ok((host.to_ascii_lowercase(), addr))
}

/// Default [`HttpOptions::segment_size`].
pub const DEFAULT_SEGMENT: usize = 2 << 20;

/// Buffer in front of file and stdin reads: the size of the slices the
/// decoders work on.
pub(crate) const READ_BUFFER: usize = 256 << 10;

/// An opened source.
pub struct OpenedSource {
    /// The forward stream of raw bytes as received. Buffered (`BufRead`), so
    /// that consumers can work on the bytes where they already are: over HTTP
    /// the slices are the network chunks themselves (see `http::reader`).
    pub reader: Box<dyn BufRead + Send>,
    /// Total length when known (Content-Length, file size).
    pub size: Option<u64>,
    /// Random access, when the source supports it.
    pub range: Option<Box<dyn RangeRead>>,
    /// For logs: the URL without credentials, the path, or "stdin".
    pub display: String,
    /// The source adds the bytes it receives to [`OpenContext::counter`]
    /// and sets its total itself: a registry receives compressed layers
    /// and yields the disk entry inside them, so counting what it yields
    /// would not be progress. Otherwise the pipeline counts `reader`.
    pub counts_itself: bool,
    /// What a registry said about the image (digest, platform, layers, the
    /// disk entry, the environment for CDI's labels).
    pub registry: Option<Box<registry::ImageDetails>>,
}

/// Opens `spec` with a pace of its own, for callers that do not share one
/// (tests, small probes).
pub fn open(
    spec: &SourceSpec,
    http: &HttpOptions,
    rt: &tokio::runtime::Handle,
) -> Result<OpenedSource, SourceError> {
    spec.open(&OpenContext {
        http,
        rt,
        pace: &Pace::new(),
        counter: &Arc::new(Counter::default()),
    })
}

/// The async runtime that carries network transfers.
///
/// One worker thread: the pipeline runs on its own blocking thread and the
/// writers on theirs, so the runtime only has the HTTP connection and the
/// transfer task(s) to drive; with two workers those tasks hopped between
/// threads on every chunk (BENCHMARKS.md, "Tuning"). Parallel segments
/// (`--connections`) are I/O-bound and share the one worker well.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("sd-net")
        .enable_all()
        .build()
}
