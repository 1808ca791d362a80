//! The upload server: a drop-in for CDI's `cdi-uploadserver`, clone target
//! included, on the importer's streaming pipeline.
//!
//! CDI's server writes every upload that is not raw to a scratch volume and
//! then runs `qemu-img convert`; here the request body is the pipeline's
//! source, so wrappers, format detection, decoding and the O_DIRECT target
//! are the importer's, and memory stays flat whatever the size. See
//! `docs/upload-server.md`.
//!
//! ```text
//! TLS (client CA, CN) ─► routes ─► state (one upload) ─► body bridge ─► pipeline ─► volume
//!                                                 form part / snappy / tar member ┘
//! ```
//!
//! | module | concern |
//! |---|---|
//! | [`config`], [`rfc3339`] | the pod's environment |
//! | [`tls`], [`linger`] | certificates, the client's name, a graceful close |
//! | [`routes`], [`handler`], [`state`] | CDI's paths, answers and one-upload lifecycle |
//! | [`body`], [`forward`] | the body (or a form's `file` part) as a bounded stream |
//! | [`clone`] | the clone content types (snappy framing, the tar's disk.img) |
//! | [`write`] | the pipeline and the space rules, per kind of upload |
//! | [`server`] | listening, connections, the end |

pub(crate) mod body;
pub(crate) mod clone;
pub(crate) mod config;
pub(crate) mod forward;
pub(crate) mod handler;
pub(crate) mod linger;
pub(crate) mod rfc3339;
pub(crate) mod routes;
pub(crate) mod server;
pub(crate) mod state;
pub(crate) mod tls;
pub(crate) mod write;

use std::ffi::OsString;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use super::paths::PodPaths;
use super::termination::{self, TerminationMessage};
use super::volume::SpaceRules;
use super::{flags, logging};

use config::UploadConfig;
use handler::Auth;
use server::{Finished, Settings};
use tls::TlsSettings;
use write::Volume;

/// CDI's termination messages.
const UPLOAD_COMPLETE: &str = "Upload Complete";
const CLONE_COMPLETE: &str = "Clone Complete";
const DEADLINE_PASSED: &str = "Deadline Passed";

/// Whether `path` is a block device (a missing path is not).
fn is_block_device(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device())
}

/// Runs the upload pod (`cdi-uploadserver`, `streamdisk upload-server`
/// without a target) from the environment and returns the exit code.
///
/// `args` are the klog-style flags after the program name.
pub fn run_upload_pod(args: Vec<OsString>) -> i32 {
    let flags = flags::parse(&args);
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
    let root = super::config::env_value(&vars, super::paths::POD_ROOT_ENV);
    let paths = PodPaths::from_override(Some(root));
    if !root.is_empty() {
        tracing::warn!(root = %root, "test-only {} is set: pod paths are re-rooted", super::paths::POD_ROOT_ENV);
    }
    let failed = |message: String| {
        tracing::error!("UploadServer failed: {message}");
        // CDI writes nothing here and the kubelet falls back to the log's
        // tail; the same line, written, reads the same.
        let _ = termination::write(&paths.termination_log, &message);
        1
    };
    let cfg = match UploadConfig::from_vars(&vars) {
        Ok(c) => c,
        Err(e) => return failed(crate::error_chain(&e)),
    };
    let disk = cfg
        .destination
        .clone()
        .unwrap_or_else(|| paths.disk_image.clone());
    let block = is_block_device(&disk);
    tracing::info!(destination = %disk.display(), block, image_size = ?cfg.image_size, overhead = cfg.overhead, preallocation = cfg.preallocation, "starting upload server");
    let settings = Settings {
        address: cfg.address.clone(),
        port: cfg.port,
        tls: TlsSettings {
            cert_file: cfg.cert_file.clone(),
            key_file: cfg.key_file.clone(),
            client_ca_file: cfg.client_ca_file.clone(),
            ciphers: cfg.ciphers.clone(),
            min_version: cfg.min_version.clone(),
        },
        auth: Auth::Client {
            name: Some(cfg.client_name.clone()),
        },
        volume: Volume {
            disk,
            block,
            data_dir: Some(paths.data_dir.clone()),
            rules: SpaceRules {
                image_size: cfg.image_size,
                overhead: cfg.overhead,
                preallocation: cfg.preallocation,
            },
        },
        deadline: cfg.deadline,
        owner_uid: cfg.owner_uid.clone(),
    };
    let rt = match crate::source::runtime() {
        Ok(rt) => rt,
        Err(e) => return failed(format!("Unable to start the async runtime: {e}")),
    };
    let result = server::run(settings, &rt, |_| {});
    rt.shutdown_background();
    let message = match result {
        Ok(Finished::Complete(w)) => TerminationMessage {
            preallocation_applied: Some(w.preallocation_applied),
            message: Some(
                if w.clone {
                    CLONE_COMPLETE
                } else {
                    UPLOAD_COMPLETE
                }
                .to_string(),
            ),
            ..Default::default()
        },
        Ok(Finished::DeadlinePassed) => TerminationMessage {
            deadline_passed: Some(true),
            message: Some(DEADLINE_PASSED.to_string()),
            ..Default::default()
        },
        Err(e) => return failed(crate::error_chain(&e)),
    };
    if let Err(e) = termination::write(&paths.termination_log, &message.to_json()) {
        tracing::error!(path = %paths.termination_log.display(), error = %e, "could not write the termination message");
        return 1;
    }
    tracing::info!("UploadServer successfully exited");
    0
}

/// `streamdisk upload-server --listen ADDR --cert F --key F TARGET`.
#[derive(Debug, Clone)]
pub struct UploadCliOptions {
    /// `HOST:PORT` (`:PORT` for every interface).
    pub listen: String,
    /// The server's PEM certificate chain.
    pub cert: PathBuf,
    /// Its PEM private key.
    pub key: PathBuf,
    /// Require a client certificate signed by this PEM CA.
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: require this subject CN too.
    pub client_name: Option<String>,
    /// A block device, a file (created or replaced), or a directory (a
    /// filesystem volume: disk.img inside it, archives extracted into it).
    pub target: PathBuf,
}

/// Why the command line cannot be served.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("--listen {0:?}: expected HOST:PORT or :PORT")]
    Listen(String),
    #[error("--client-name needs --client-ca")]
    NameWithoutCa,
}

fn split_listen(listen: &str) -> Result<(String, u16), CliError> {
    let (host, port) = listen
        .rsplit_once(':')
        .ok_or_else(|| CliError::Listen(listen.to_string()))?;
    let port = port
        .parse::<u16>()
        .map_err(|_| CliError::Listen(listen.to_string()))?;
    Ok((host.to_string(), port))
}

/// Serves one upload into `o.target`, then returns the exit code (0 once
/// an upload succeeded). Logging must already be set up.
pub fn serve_cli(o: &UploadCliOptions) -> i32 {
    let run = || -> anyhow::Result<Finished> {
        let (address, port) = split_listen(&o.listen)?;
        if o.client_name.is_some() && o.client_ca.is_none() {
            return Err(CliError::NameWithoutCa.into());
        }
        let volume = if o.target.is_dir() {
            Volume {
                disk: o.target.join("disk.img"),
                block: false,
                data_dir: Some(o.target.clone()),
                rules: SpaceRules {
                    image_size: None,
                    overhead: 0.0,
                    preallocation: false,
                },
            }
        } else {
            Volume {
                disk: o.target.clone(),
                block: is_block_device(&o.target),
                data_dir: None,
                rules: SpaceRules {
                    image_size: None,
                    overhead: 0.0,
                    preallocation: false,
                },
            }
        };
        let settings = Settings {
            address,
            port,
            tls: TlsSettings {
                cert_file: o.cert.clone(),
                key_file: o.key.clone(),
                client_ca_file: o.client_ca.clone(),
                ..TlsSettings::default()
            },
            auth: match &o.client_ca {
                Some(_) => Auth::Client {
                    name: o.client_name.clone(),
                },
                None => Auth::Anyone,
            },
            volume,
            deadline: None,
            owner_uid: None,
        };
        let rt = crate::source::runtime()?;
        let r = server::run(settings, &rt, |addr| {
            eprintln!(
                "streamdisk: listening on https://{addr}/ for one upload into {}",
                o.target.display()
            );
        });
        rt.shutdown_background();
        Ok(r?)
    };
    match run() {
        Ok(Finished::Complete(w)) => {
            eprintln!(
                "streamdisk: {} into {}",
                if w.clone {
                    CLONE_COMPLETE
                } else {
                    UPLOAD_COMPLETE
                },
                o.target.display()
            );
            0
        }
        Ok(Finished::DeadlinePassed) => {
            eprintln!("streamdisk: {DEADLINE_PASSED}");
            1
        }
        Err(e) => {
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("streamdisk: error: {}", chain.join(": "));
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(split_listen(":8443").expect("port"), (String::new(), 8443));
        assert_eq!(
            split_listen("127.0.0.1:9000").expect("v4"),
            ("127.0.0.1".to_string(), 9000)
        );
        assert_eq!(
            split_listen("[::1]:9000").expect("v6"),
            ("[::1]".to_string(), 9000)
        );
        assert!(split_listen("8443").is_err());
        assert!(split_listen("host:http").is_err());
    }

    #[test]
    fn termination_messages_are_cdis() {
        let done = TerminationMessage {
            preallocation_applied: Some(false),
            message: Some(UPLOAD_COMPLETE.into()),
            ..Default::default()
        };
        assert_eq!(
            done.to_json(),
            r#"{"preallocationApplied":false,"message":"Upload Complete"}"#
        );
        let late = TerminationMessage {
            deadline_passed: Some(true),
            message: Some(DEADLINE_PASSED.into()),
            ..Default::default()
        };
        assert_eq!(
            late.to_json(),
            r#"{"deadlinePassed":true,"message":"Deadline Passed"}"#
        );
    }
}
