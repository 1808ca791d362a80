//! `IMPORTER_SOURCE=http`: a disk image streamed into the target, or an archive
//! extracted into the data volume.
//!
//! Where CDI downloads to `/scratch` and then runs `qemu-img convert`, the disk
//! image goes through [`crate::pipeline::run`] in one pass. What stays CDI's is
//! the envelope: the space budget, the resize after the import, mode 0660,
//! fsync, and the cleanup after a checksum mismatch.

use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::archive;
use crate::format::{PlanOptions, SpillPolicy};
use crate::job::{Content, ImportError, ImportJob, InputOptions};
use crate::pace::Pace;
use crate::progress::Counter;
use crate::source::{HttpOptions, SourceSpec};
use crate::target::TargetOptions;

use super::config::{ContentType, PodConfig};
use super::logging::{display_url, Redactor};
use super::outcome::Outcome;
use super::paths::PodPaths;
use super::{headers, volume};

/// Everything an HTTP import needs from the pod run.
pub(crate) struct HttpContext<'a> {
    pub cfg: &'a PodConfig,
    pub paths: &'a PodPaths,
    pub block: bool,
    pub rt: &'a tokio::runtime::Runtime,
    pub counter: Arc<Counter>,
    pub redactor: &'a Redactor,
    /// A registry image (`IMPORTER_SOURCE=registry`, see
    /// [`super::registry_import`]): labels from the image's environment,
    /// no checksum, and scratch space is never asked for.
    pub registry: bool,
}

/// CDI's prefix for failures to set up the HTTP client.
fn connect_failed(detail: impl std::fmt::Display) -> Outcome {
    Outcome::Failed(format!("Unable to connect to http data source: {detail}"))
}

/// The HTTP client settings from the pod: auth, headers (environment then
/// secret files), CA directories, TLS verification.
pub(crate) fn http_options(cfg: &PodConfig, paths: &PodPaths) -> Result<HttpOptions, Outcome> {
    let mut opts = HttpOptions {
        basic_auth: cfg.basic_auth.clone(),
        insecure_tls: cfg.insecure_tls,
        ..HttpOptions::default()
    };
    let secret = headers::read_secret_headers(&paths.extra_headers_dir)
        .map_err(|e| connect_failed(format!("Error getting extra headers for HTTP client: {e}")))?;
    for h in cfg.env_headers.iter().chain(secret.iter()) {
        tracing::info!(header = %h.name, secret = h.secret, "adding extra request header");
        opts.extra_headers.push((h.name.clone(), h.value.clone()));
    }
    if let Some(dir) = &cfg.cert_dir {
        // CDI fails when the configured CA directory cannot be listed.
        fs::read_dir(dir).map_err(|e| {
            connect_failed(format!(
                "Error creating http client: Error listing files in {}: {e}",
                dir.display()
            ))
        })?;
        opts.ca_dirs.push(dir.clone());
    }
    if fs::read_dir(&paths.proxy_certs_dir).is_ok() {
        opts.ca_dirs.push(paths.proxy_certs_dir.clone());
    }
    Ok(opts)
}

/// Checks the endpoint the way CDI's `ParseEndpoint` does before connecting.
fn check_endpoint(endpoint: &str) -> Result<(), Outcome> {
    match reqwest::Url::parse(endpoint) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(()),
        Ok(u) => Err(connect_failed(format!(
            "unable to parse endpoint {:?}: unsupported scheme {:?}",
            display_url(endpoint),
            u.scheme()
        ))),
        Err(e) => Err(connect_failed(format!(
            "unable to parse endpoint {:?}: {e}",
            display_url(endpoint)
        ))),
    }
}

/// Runs the HTTP import described by `ctx`.
pub(crate) fn run(ctx: &HttpContext<'_>) -> Outcome {
    if let Err(o) = check_endpoint(&ctx.cfg.endpoint) {
        return o;
    }
    let http = match http_options(ctx.cfg, ctx.paths) {
        Ok(h) => h,
        Err(o) => return o,
    };
    tracing::info!(
        endpoint = %display_url(&ctx.cfg.endpoint),
        content_type = ?ctx.cfg.content_type,
        block = ctx.block,
        "starting http import"
    );
    match ctx.cfg.content_type {
        ContentType::KubeVirt => disk_image(ctx, http),
        ContentType::Archive => archive_import(ctx, http),
    }
}

fn unable(e: impl std::fmt::Display) -> String {
    format!("Unable to process data: {e}")
}

/// A disk image (`kubevirt` content) into the block device or `/data/disk.img`.
pub(crate) fn disk_image(ctx: &HttpContext<'_>, http: HttpOptions) -> Outcome {
    let cfg = ctx.cfg;
    let paths = ctx.paths;
    let target: PathBuf = if ctx.block {
        paths.block_device.clone()
    } else {
        paths.disk_image.clone()
    };

    // A restarted container may find a partial disk.img from the previous
    // attempt: start over, before measuring free space so that it does not
    // count against us.
    if !ctx.block {
        if let Err(e) = volume::clean(&target) {
            return Outcome::Failed(unable(format!("removing {}: {e}", target.display())));
        }
    }
    let available = match volume::available_space(
        ctx.block,
        &paths.block_device,
        &paths.data_dir,
        cfg.image_size,
    ) {
        Ok(a) => a,
        Err(e) => return Outcome::Failed(e),
    };
    tracing::info!(available, "target space");

    let spill = if paths.scratch_dir.is_dir() {
        SpillPolicy::Dir(paths.scratch_dir.clone())
    } else {
        SpillPolicy::Forbid
    };
    let source = match SourceSpec::parse(&cfg.endpoint) {
        Ok(s) => s,
        Err(e) => return connect_failed(e),
    };
    let job = ImportJob {
        input: InputOptions {
            http,
            // CDI verifies IMPORTER_CHECKSUM for http only; registry blobs
            // are verified against their digests.
            checksum: cfg.checksum.clone().filter(|_| !ctx.registry),
            ..InputOptions::new(source)
        },
        target: target.clone(),
        target_opts: TargetOptions {
            available: Some(available),
            ..TargetOptions::default()
        },
        plan: PlanOptions {
            spill,
            ..PlanOptions::default()
        },
    };

    let result = run_pipeline(ctx, job);
    match result {
        Ok(report) => {
            tracing::info!(
                bytes_received = report.bytes_received,
                virtual_size = report.virtual_size,
                bytes_written = report.bytes_written,
                spilled_bytes = report.spilled_bytes,
                "image written"
            );
            let finish = if ctx.block {
                volume::sync_path(&target)
            } else {
                volume::finish_file(&target, &space_rules(cfg), available)
                    .and_then(|()| volume::sync_path(&paths.data_dir))
            };
            match finish {
                Ok(()) => {
                    ctx.counter.set_done();
                    Outcome::Complete {
                        scratch_space_required: Some(false),
                        preallocation_applied: cfg.preallocation,
                        labels: report
                            .registry
                            .as_ref()
                            .map(|r| super::sidecar::envs_to_labels(&r.env))
                            .unwrap_or_default(),
                    }
                }
                Err(e) => {
                    if !ctx.block {
                        let _ = volume::clean(&target);
                    }
                    Outcome::Failed(unable(e))
                }
            }
        }
        Err(ImportError::ChecksumMismatch {
            expected,
            calculated,
        }) => {
            volume::remove_target(ctx.block, &target);
            Outcome::ChecksumMismatch(unable(format!(
                "checksum mismatch: expected {expected}, calculated {calculated}"
            )))
        }
        Err(e) if e.scratch_required() && ctx.registry => {
            if !ctx.block {
                let _ = volume::clean(&target);
            }
            Outcome::Failed(unable(format!(
                "{}; the image's layout needs scratch space, which registry imports do not use",
                ctx.redactor.scrub(&e.message())
            )))
        }
        Err(e) if e.scratch_required() => {
            tracing::info!(reason = %ctx.redactor.scrub(&e.message()), "scratch space required");
            if !ctx.block {
                let _ = volume::clean(&target);
            }
            Outcome::ScratchRequired
        }
        Err(e) => {
            if !ctx.block {
                let _ = volume::clean(&target);
            }
            Outcome::Failed(unable(match (&e, ctx.registry) {
                // CDI's wording for a registry source's failures.
                (ImportError::Source { source, .. }, true) => format!(
                    "Failed to read registry image: {}",
                    ctx.redactor.scrub(&crate::error_chain(source))
                ),
                _ => ctx.redactor.scrub(&super::failure_message(&e)),
            }))
        }
    }
}

/// Runs the pipeline on a blocking thread; a panic there becomes an error
/// (never a success).
fn run_pipeline(
    ctx: &HttpContext<'_>,
    job: ImportJob,
) -> Result<crate::job::ImportReport, ImportError> {
    let handle = ctx.rt.handle().clone();
    let counter = Arc::clone(&ctx.counter);
    let task = ctx
        .rt
        .spawn_blocking(move || crate::pipeline::run(&job, &handle, counter));
    match ctx.rt.block_on(task) {
        Ok(r) => r,
        Err(e) => Err(ImportError::Read {
            display: "the import thread".to_string(),
            source: io::Error::other(e.to_string()),
        }),
    }
}

/// The pod's size and preallocation settings, for [`volume::finish_file`].
fn space_rules(cfg: &PodConfig) -> volume::SpaceRules {
    volume::SpaceRules {
        image_size: cfg.image_size,
        overhead: cfg.overhead,
        preallocation: cfg.preallocation,
    }
}

/// An archive (`archive` content) extracted into the data volume.
pub(crate) fn archive_import(ctx: &HttpContext<'_>, http: HttpOptions) -> Outcome {
    if ctx.block {
        return Outcome::Failed(unable(
            "archive content needs a filesystem volume, but the PVC is in block mode",
        ));
    }
    let source = match SourceSpec::parse(&ctx.cfg.endpoint) {
        Ok(s) => s,
        Err(e) => return connect_failed(e),
    };
    let data_dir = ctx.paths.data_dir.clone();
    let opts = InputOptions {
        http,
        checksum: ctx.cfg.checksum.clone(),
        content: Content::Archive,
        ..InputOptions::new(source)
    };
    let counter = Arc::clone(&ctx.counter);
    let handle = ctx.rt.handle().clone();
    let dir = data_dir.clone();
    let task = ctx.rt.spawn_blocking(move || {
        let input = crate::pipeline::open_input(&opts, &handle, counter, &Pace::new())?;
        if let Some(w) = input.wrappers.first() {
            tracing::info!(wrapper = %w, "archive compression");
        }
        crate::pipeline::extract_archive(input, &dir)
    });
    let result = match ctx.rt.block_on(task) {
        Ok(r) => r,
        Err(e) => {
            return Outcome::Failed(unable(format!("import thread failed: {e}")));
        }
    };
    match result {
        Ok(_) => match volume::syncfs(&data_dir) {
            Ok(()) => {
                ctx.counter.set_done();
                Outcome::Complete {
                    scratch_space_required: Some(false),
                    preallocation_applied: false,
                    labels: Default::default(),
                }
            }
            Err(e) => Outcome::Failed(unable(e)),
        },
        Err(ImportError::ChecksumMismatch {
            expected,
            calculated,
        }) => {
            if let Err(e) = archive::remove_contents(&data_dir) {
                tracing::warn!(error = %e, "failed to clean the volume after a checksum mismatch");
            }
            Outcome::ChecksumMismatch(unable(format!(
                "checksum mismatch: expected {expected}, calculated {calculated}"
            )))
        }
        Err(e) => Outcome::Failed(unable(ctx.redactor.scrub(&super::failure_message(&e)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(vars: &[(&str, &str)]) -> PodConfig {
        // Given variables first: the first occurrence of a name wins.
        let mut v: Vec<(String, String)> = vars
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        v.push(("PREALLOCATION".into(), "false".into()));
        PodConfig::from_vars(&v).expect("config")
    }

    #[test]
    fn options_from_env_secrets_and_ca_dirs() {
        let root = tempfile::tempdir().expect("tempdir");
        let paths = PodPaths::under(root.path());
        fs::create_dir_all(paths.extra_headers_dir.join("0")).expect("mkdir");
        fs::write(paths.extra_headers_dir.join("0/h"), "X-Secret: s3cr3t").expect("write");
        let certs = root.path().join("certs");
        fs::create_dir(&certs).expect("mkdir");
        let c = cfg(&[
            ("IMPORTER_EXTRA_HEADER_0", "X-Env: v"),
            ("IMPORTER_CERT_DIR", certs.to_str().expect("utf8")),
            ("IMPORTER_ACCESS_KEY_ID", "u"),
            ("IMPORTER_SECRET_KEY", "p"),
            ("INSECURE_TLS", "1"),
        ]);
        let o = http_options(&c, &paths).expect("options");
        assert_eq!(
            o.extra_headers,
            vec![
                ("X-Env".to_string(), "v".to_string()),
                ("X-Secret".to_string(), "s3cr3t".to_string())
            ]
        );
        assert_eq!(o.ca_dirs, vec![certs.clone()]);
        assert_eq!(o.basic_auth, Some(("u".into(), "p".into())));
        assert!(o.insecure_tls);

        // /proxycerts is added when present.
        fs::create_dir(&paths.proxy_certs_dir).expect("mkdir");
        let o = http_options(&c, &paths).expect("options");
        assert_eq!(o.ca_dirs, vec![certs, paths.proxy_certs_dir.clone()]);

        // A configured CA directory that cannot be listed fails like CDI.
        let missing = cfg(&[("IMPORTER_CERT_DIR", "/nonexistent/certs")]);
        match http_options(&missing, &paths) {
            Err(Outcome::Failed(m)) => {
                assert!(m.starts_with("Unable to connect to http data source: Error creating http client: Error listing files in /nonexistent/certs"), "{m}")
            }
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn endpoints() {
        assert!(check_endpoint("https://h/x.img").is_ok());
        assert!(check_endpoint("http://h:8080/x.img").is_ok());
        for bad in ["", "ftp://h/x", "not a url", "file:///etc/passwd"] {
            match check_endpoint(bad) {
                Err(Outcome::Failed(m)) => {
                    assert!(
                        m.starts_with("Unable to connect to http data source"),
                        "{m}"
                    )
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        // Credentials never reach the message.
        match check_endpoint("ftp://user:hunter2@h/x") {
            Err(Outcome::Failed(m)) => assert!(!m.contains("hunter2"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
