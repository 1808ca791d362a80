//! CDI pod mode: a drop-in for `cdi-importer`.
//!
//! KubeVirt's Containerized Data Importer starts an importer pod with the job
//! in environment variables, then reads back the termination message and the
//! progress metric. This module is a thin shell around the shared import
//! pipeline that speaks that contract exactly (see `docs/pod-mode.md` and
//! `docs/cdi-contract.md`):
//!
//! ```text
//! flags ─► logging ─► metrics endpoint ─► config (env) ─► blank │ http ─► outcome ─► termination log + exit code
//! ```
//!
//! | module | concern |
//! |---|---|
//! | [`flags`] | klog-style `-v=N` and ignored single-dash flags |
//! | [`config`], [`quantity`], [`headers`] | the environment, typed |
//! | [`paths`] | pod paths and the test-only root override |
//! | [`space`] | available space, usable space and resize arithmetic |
//! | [`blank`] | `IMPORTER_SOURCE=none` |
//! | [`http_import`], [`archive`] | `IMPORTER_SOURCE=http`, disk image or archive |
//! | [`registry_import`] | `IMPORTER_SOURCE=registry` (pod pull), streamed |
//! | [`sidecar`] | registry node-pull imports: ready/done files, labels |
//! | [`metrics`] | the HTTPS progress endpoint |
//! | [`outcome`], [`termination`] | exit codes and the termination message |
//! | [`logging`] | stderr logs and secret scrubbing |
//! | [`volume`] | the target volume around the pipeline (clean, budget, resize, sync) |
//! | [`upload`] | the upload server (`cdi-uploadserver`), clone target included |
//!
//! The other CDI tools that run from the importer image, chosen by the
//! binary's name like pod mode (`docs/container.md`):
//!
//! | module | concern |
//! |---|---|
//! | [`size_detection`], [`gourl`] | `cdi-image-size-detection` (host-assisted clones) |
//! | [`poller`], [`kube`] | `cdi-source-update-poller` (DataImportCron registry polls) |
//! | [`goflag`], [`gojson`], [`civil`] | Go's flags, JSON strings and UTC dates, shared with `cdi-containerimage-server` |

pub(crate) mod blank;
// Shared with cdi-containerimage-server, which uses the HTTP date and log
// forms that the library does not.
#[allow(dead_code)]
pub(crate) mod civil;
pub(crate) mod config;
pub(crate) mod flags;
pub(crate) mod goflag;
pub(crate) mod gojson;
pub(crate) mod gourl;
pub(crate) mod headers;
pub(crate) mod http_import;
pub(crate) mod kube;
pub(crate) mod logging;
pub(crate) mod metrics;
pub(crate) mod objstore_import;
pub(crate) mod outcome;
pub(crate) mod paths;
pub(crate) mod poller;
pub(crate) mod quantity;
pub(crate) mod registry_import;
pub(crate) mod sidecar;
pub(crate) mod size_detection;
pub(crate) mod space;
pub(crate) mod termination;
pub(crate) mod upload;
pub(crate) mod volume;

pub use poller::run as run_poller;
pub use size_detection::run as run_size_detection;

use std::ffi::OsString;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use crate::progress::Counter;

pub use upload::{run_upload_pod, serve_cli, UploadCliOptions};

use config::{go_parse_bool, ContentType, PodConfig, SourceKind};
use outcome::Outcome;
use paths::PodPaths;

/// Runs pod mode and returns the process exit code.
///
/// `args` are the arguments after the program name (for `streamdisk cdi ...`,
/// after `cdi`).
pub fn run_pod(args: Vec<OsString>) -> i32 {
    let flags = flags::parse(&args);
    if flags.help {
        eprint!("{}", POD_USAGE);
        return 0;
    }
    logging::init(flags.verbosity);
    for f in &flags.ignored {
        tracing::debug!(flag = %f, "ignoring klog flag");
    }

    let vars: Vec<(String, String)> = std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect();
    let root = config::env_value(&vars, paths::POD_ROOT_ENV);
    let paths = PodPaths::from_override(Some(root));
    if !root.is_empty() {
        tracing::warn!(root = %root, "test-only {} is set: pod paths are re-rooted", paths::POD_ROOT_ENV);
    }

    let outcome = match crate::source::runtime() {
        Ok(rt) => {
            let _ = FORCE_EXIT_LOG.set(paths.termination_log.clone());
            crate::signals::install(rt.handle(), on_force_exit);
            let counter = Arc::new(Counter::default());
            start_metrics(&rt, &vars, Arc::clone(&counter));
            let outcome = run_with(&rt, &vars, &paths, counter);
            // Network tasks (the metrics server) must not delay the exit.
            rt.shutdown_background();
            outcome
        }
        Err(e) => Outcome::Failed(format!("Unable to start the async runtime: {e}")),
    };
    finish(&paths, &outcome)
}

/// What `cdi-importer -h` prints: the job is in the environment, not in flags.
const POD_USAGE: &str = "Usage of cdi-importer (streamdisk's CDI pod mode):
  The import is described by CDI's IMPORTER_* environment variables (docs/pod-mode.md);
  the outcome goes to /dev/termination-log.
  -v int
    \tklog verbosity (0 info, 1-2 debug, 3 and up trace)
  Other klog flags (-alsologtostderr, ...) are accepted and ignored.
";

/// Where [`on_force_exit`] writes (a `fn` pointer cannot capture it).
static FORCE_EXIT_LOG: OnceLock<PathBuf> = OnceLock::new();

/// Runs when a SIGTERM/SIGINT did not unwind the import in time: leave the
/// controller a plain-text failure before the process exits non-zero.
fn on_force_exit(signal: &'static str) {
    if let Some(p) = FORCE_EXIT_LOG.get() {
        let _ = termination::write(
            p,
            &format!("Unable to process data: interrupted by {signal}"),
        );
    }
}

/// Logs the outcome, writes the termination message, and picks the exit code.
fn finish(paths: &PodPaths, outcome: &Outcome) -> i32 {
    let message = outcome.message();
    match outcome {
        Outcome::Failed(_) => tracing::error!(termination = %message, "import failed"),
        _ => tracing::info!(termination = %message, "import finished"),
    }
    if let Err(e) = termination::write(&paths.termination_log, &message) {
        tracing::error!(path = %paths.termination_log.display(), error = %e, "could not write the termination message");
        // CDI exits 1 when a success (or scratch-required) message cannot be
        // written: without it the controller cannot tell what happened.
        if matches!(outcome, Outcome::Complete { .. } | Outcome::ScratchRequired) {
            return 1;
        }
    }
    outcome.exit_code()
}

fn start_metrics(rt: &tokio::runtime::Runtime, vars: &[(String, String)], counter: Arc<Counter>) {
    let owner_uid = config::env_value(vars, config::ENV_OWNER_UID);
    let port = match config::env_value(vars, metrics::PORT_ENV) {
        "" => metrics::DEFAULT_PORT,
        p => p.parse::<u16>().unwrap_or_else(|_| {
            tracing::warn!(value = %p, "invalid {}, using {}", metrics::PORT_ENV, metrics::DEFAULT_PORT);
            metrics::DEFAULT_PORT
        }),
    };
    let reg = Arc::new(metrics::registry(counter, owner_uid));
    match metrics::start(rt.handle(), port, reg) {
        Ok(addr) => tracing::info!(%addr, "serving progress metrics over https"),
        // The import matters more than its progress bar.
        Err(e) => tracing::error!(error = %e, "progress metrics unavailable; importing anyway"),
    }
}

/// The pod run proper, in CDI's order of checks.
fn run_with(
    rt: &tokio::runtime::Runtime,
    vars: &[(String, String)],
    paths: &PodPaths,
    counter: Arc<Counter>,
) -> Outcome {
    let get = |name: &str| config::env_value(vars, name);

    // 1. PREALLOCATION: CDI refuses to start without a valid boolean.
    let prealloc = get(config::ENV_PREALLOCATION);
    if go_parse_bool(prealloc).is_none() {
        return Outcome::Failed(
            config::ConfigError::Preallocation(prealloc.to_string()).to_string(),
        );
    }

    // 2. The source kind, so that an unknown or unsupported source gets its
    //    own message whatever else is wrong.
    let source_raw = get(config::ENV_SOURCE);
    match config::SourceKind::parse(source_raw) {
        SourceKind::Unknown(s) => return Outcome::Failed(format!("Unknown data source: {s}")),
        SourceKind::Unsupported(s) => {
            return Outcome::Failed(format!(
                "Unable to connect to {s} data source: the {s} source is not supported yet by streamdisk (supported: http, registry, s3, gcs, none)"
            ))
        }
        SourceKind::Http
        | SourceKind::None
        | SourceKind::Registry
        | SourceKind::S3
        | SourceKind::Gcs => {}
    }

    let cfg = match PodConfig::from_vars(vars) {
        Ok(c) => c,
        Err(e @ config::ConfigError::Checksum(_)) => {
            return Outcome::Failed(format!("Unable to connect to http data source: {e}"))
        }
        Err(e) => return Outcome::Failed(format!("Unable to process data: {e}")),
    };
    match cfg.cache_mode.as_str() {
        "" => {}
        "TRYNONE" => tracing::debug!("CACHE_MODE=TRYNONE: streamdisk always writes with O_DIRECT"),
        other => tracing::warn!(value = %other, "ignoring unknown CACHE_MODE"),
    }

    let mut redactor = logging::Redactor::default();
    if let Some((_, p)) = &cfg.basic_auth {
        redactor.add(p);
    }
    for h in &cfg.env_headers {
        redactor.add(&h.value);
    }
    redactor.add_url_userinfo(&cfg.endpoint);

    // 3. Volume mode: block iff the device path exists (CDI's os.Stat test).
    let block = !matches!(
        std::fs::metadata(&paths.block_device),
        Err(e) if e.kind() == io::ErrorKind::NotFound
    );
    tracing::info!(
        source = ?cfg.source,
        block,
        image_size = ?cfg.image_size,
        overhead = cfg.overhead,
        preallocation = cfg.preallocation,
        "starting importer"
    );

    match cfg.source {
        SourceKind::None => {
            let outcome = blank_disk(&cfg, paths, block);
            if matches!(outcome, Outcome::Complete { .. }) {
                counter.set_done();
            }
            outcome
        }
        SourceKind::Registry => {
            let ctx = http_import::HttpContext {
                cfg: &cfg,
                paths,
                block,
                rt,
                counter,
                redactor: &redactor,
                registry: true,
            };
            registry_import::run(&ctx, vars)
        }
        SourceKind::S3 | SourceKind::Gcs => {
            let ctx = http_import::HttpContext {
                cfg: &cfg,
                paths,
                block,
                rt,
                counter,
                redactor: &redactor,
                registry: false,
            };
            let store = if cfg.source == SourceKind::S3 {
                objstore_import::Store::S3
            } else {
                objstore_import::Store::Gcs
            };
            objstore_import::run(&ctx, store)
        }
        _ => http_pod(rt, vars, cfg, paths, block, counter, &redactor),
    }
}

/// `IMPORTER_SOURCE=http`, including the registry node-pull variant with its
/// image-server sidecar (ready file, done file, labels; see [`sidecar`]).
fn http_pod(
    rt: &tokio::runtime::Runtime,
    vars: &[(String, String)],
    mut cfg: PodConfig,
    paths: &PodPaths,
    block: bool,
    counter: Arc<Counter>,
    redactor: &logging::Redactor,
) -> Outcome {
    let ready = config::env_value(vars, sidecar::ENV_READY_FILE);
    if !ready.is_empty() {
        let ready = std::path::Path::new(ready);
        let poll = std::time::Duration::from_secs(1);
        if let Err(m) = sidecar::wait_ready(
            ready,
            sidecar::READY_TIMEOUT,
            poll,
            sidecar::READY_LOG_EVERY,
        ) {
            return Outcome::Failed(m);
        }
        match sidecar::endpoint(&cfg.endpoint, ready) {
            Ok(ep) => cfg.endpoint = ep,
            Err(m) => return Outcome::Failed(m),
        }
    }
    let ctx = http_import::HttpContext {
        cfg: &cfg,
        paths,
        block,
        rt,
        counter,
        redactor,
        registry: false,
    };
    let mut outcome = http_import::run(&ctx);
    // The labels first: once the done file exists the sidecar exits.
    if let Outcome::Complete { labels, .. } = &mut outcome {
        if config::env_value(vars, sidecar::ENV_PULL_METHOD) == "node" {
            *labels = sidecar::fetch_labels(rt, &cfg.endpoint);
        }
    }
    let done = config::env_value(vars, sidecar::ENV_DONE_FILE);
    if !done.is_empty() && matches!(outcome, Outcome::Complete { .. } | Outcome::ScratchRequired) {
        sidecar::touch_done(std::path::Path::new(done));
    }
    outcome
}

/// `IMPORTER_SOURCE=none`.
fn blank_disk(cfg: &PodConfig, paths: &PodPaths, block: bool) -> Outcome {
    let failed =
        |e: &dyn std::fmt::Display| Outcome::Failed(format!("Unable to create blank image: {e}"));
    if cfg.content_type == ContentType::Archive {
        return Outcome::Failed("Cannot create empty disk with content type archive".into());
    }
    let done = Outcome::Complete {
        scratch_space_required: None,
        preallocation_applied: cfg.preallocation,
        labels: Default::default(),
    };
    if block && !cfg.preallocation {
        tracing::info!("blank block volume without preallocation is already an empty disk");
        return done;
    }
    let Some(requested) = cfg.image_size else {
        return failed(&format!("{} is not set", config::ENV_IMAGE_SIZE));
    };
    let available = if block {
        space::device_size(&paths.block_device)
    } else {
        // Drop a leftover first so that it does not count as used space.
        match std::fs::remove_file(&paths.disk_image) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return failed(&e),
            _ => {}
        }
        space::filesystem_free(&paths.data_dir)
    };
    let available = match available {
        Ok(a) => a,
        Err(e) => return failed(&format!("determining available space: {e}")),
    };
    let res = match blank::plan(block, available, requested, cfg.overhead, cfg.preallocation) {
        blank::BlankPlan::File { size, preallocate } => {
            tracing::info!(size, preallocate, "creating blank image");
            blank::create_file(&paths.disk_image, size, preallocate)
                .map_err(|e| crate::error_chain(&e))
        }
        blank::BlankPlan::ZeroBlock { len } => {
            tracing::info!(len, "preallocating blank block volume");
            crate::target::write_zeros_direct(&paths.block_device, len)
                .map_err(|e| crate::error_chain(&e))
        }
        blank::BlankPlan::Nothing => Ok(()),
    };
    match res {
        Ok(()) => done,
        Err(e) => failed(&e),
    }
}

/// A failed import in the words CDI's controller expects: the size refusal
/// as CDI words it (the controller looks for `is larger than the reported
/// available`), everything else as its error chain.
pub(crate) fn failure_message(e: &crate::job::ImportError) -> String {
    match e.too_large() {
        Some((size, available)) => format!(
            "virtual image size {size} is larger than the reported available storage {available}. A larger PVC is required"
        ),
        None => e.message(),
    }
}
