//! One function per subcommand: build the job from flags, run it, map the outcome to an exit code.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tracing_subscriber::prelude::*;

use crate::cli::{Cli, Command, ConvertArgs, InfoArgs, OutputFormat, SourceArgs};
use crate::report::{ProgressMode, Reporter};
use streamdisk::format::{PlanOptions, SpillPolicy};
use streamdisk::job::{ImportError, ImportJob, InputOptions};
use streamdisk::progress::Counter;
use streamdisk::source::{HttpOptions, SourceSpec};
use streamdisk::target::{Depth, TargetOptions};

/// Runs the parsed command line and returns the process exit code.
pub(crate) fn dispatch(cli: Cli) -> i32 {
    init_logging(cli.quiet, cli.verbose);
    let result = match cli.command {
        Command::Convert(a) => convert(a, cli.quiet),
        Command::Info(a) => info(a),
        Command::Cdi { args } => return streamdisk::cdi::run_pod(args),
        Command::UploadServer(a) => {
            return streamdisk::cdi::serve_cli(&streamdisk::cdi::UploadCliOptions {
                listen: a.listen,
                cert: a.cert,
                key: a.key,
                client_ca: a.client_ca,
                client_name: a.client_name,
                target: a.target,
            })
        }
    };
    match result {
        Ok(()) => 0,
        Err(Failure { message, code }) => {
            eprintln!("streamdisk: error: {}", message.replace('\n', " "));
            code
        }
    }
}

/// An error message plus the exit code it maps to.
struct Failure {
    message: String,
    code: i32,
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure {
            message: format!("{e:#}"),
            code: 1,
        }
    }
}

fn init_logging(quiet: bool, verbose: u8) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let _ = tracing_subscriber::registry()
        .with(layer)
        .with(streamdisk::log_filter("STREAMDISK_LOG", level))
        .try_init();
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    streamdisk::source::runtime().context("starting the async runtime")
}

fn http_options(a: &SourceArgs) -> anyhow::Result<HttpOptions> {
    let mut o = HttpOptions::default();
    if let (Some(user), Some(var)) = (&a.user, &a.password_env) {
        let pass =
            std::env::var(var).with_context(|| format!("reading the password from ${var}"))?;
        o.basic_auth = Some((user.clone(), pass));
    }
    for h in &a.headers {
        let (name, value) = h
            .split_once(':')
            .with_context(|| format!("invalid --header {h:?}: expected \"Name: value\""))?;
        o.extra_headers
            .push((name.trim().to_string(), value.trim().to_string()));
    }
    o.ca_dirs = a.ca_dirs.clone();
    o.insecure_tls = a.insecure;
    o.stall_timeout = Duration::from_secs(a.stall_timeout.max(1));
    o.max_attempts = a.retries.max(1);
    o.max_retry_time = Duration::from_secs(a.retry_time);
    o.registry.arch = a.arch.clone();
    o.registry.os = Some(a.os.clone());
    o.s3.endpoint = a.s3_endpoint.clone();
    o.s3.region = a.region.clone();
    o.s3.path_style = a.s3_path_style.then_some(true);
    o.gcs.endpoint = a.gcs_endpoint.clone();
    o.resolve = a.resolve.clone();
    Ok(o)
}

/// The input side of a command: the source and how to read it.
fn input_options(a: &SourceArgs) -> Result<InputOptions, Failure> {
    let source = SourceSpec::parse(&a.source).map_err(|e| Failure {
        message: streamdisk::error_chain(&e),
        code: 1,
    })?;
    Ok(InputOptions {
        http: http_options(a)?,
        disk: a.disk,
        ..InputOptions::new(source)
    })
}

fn convert(a: ConvertArgs, quiet: bool) -> Result<(), Failure> {
    let mut input = input_options(&a.src)?;
    input.http.connections = a.connections;
    input.http.segment_size = usize::try_from(a.segment_size)
        .map_err(|_| anyhow::anyhow!("segment size {} is too large", a.segment_size))?;
    input.format = a.format.choice();
    input.checksum = a.checksum.clone();
    let job = ImportJob {
        input,
        target: a.target.clone(),
        target_opts: TargetOptions {
            target_is_zero: a.target_is_zero,
            buffer_size: usize::try_from(a.buffer_size)
                .ok()
                .filter(|b| *b >= 4096)
                .ok_or_else(|| anyhow::anyhow!("--buffer-size must be at least 4096"))?,
            // A depth given by hand is kept throughout.
            depth: a
                .queue_depth
                .map_or(Depth::Auto, |d| Depth::Fixed(d.max(1))),
            available: None,
        },
        plan: PlanOptions {
            window: usize::try_from(a.window)
                .map_err(|_| anyhow::anyhow!("--window is too large"))?,
            spill: if a.no_spill {
                SpillPolicy::Forbid
            } else {
                SpillPolicy::Dir(a.scratch.clone().unwrap_or_else(std::env::temp_dir))
            },
        },
    };
    let progress = if quiet {
        ProgressMode::None
    } else {
        a.progress
    };
    let rt = runtime()?;
    streamdisk::signals::install(rt.handle(), |_| {});
    let counter = Arc::new(Counter::default());
    let reporter = Reporter::start(progress, Arc::clone(&counter));
    let started = std::time::Instant::now();
    let result = streamdisk::pipeline::run(&job, rt.handle(), Arc::clone(&counter));
    drop(reporter);
    match result {
        Ok(r) => {
            counter.set_done();
            let secs = started.elapsed().as_secs_f64();
            tracing::info!(
                "import complete: {} virtual, {} received, {} written, {:.2}s{}",
                mib(r.virtual_size),
                mib(r.bytes_received),
                mib(r.bytes_written),
                secs,
                if r.spilled_bytes > 0 {
                    format!(", {} spilled to scratch", mib(r.spilled_bytes))
                } else {
                    String::new()
                }
            );
            Ok(())
        }
        Err(ImportError::Interrupted(i)) => Err(Failure {
            message: format!("{i}; the import is incomplete"),
            code: streamdisk::signals::exit_code(i.0),
        }),
        Err(e @ ImportError::ChecksumMismatch { .. }) => Err(Failure {
            message: format!("{}; {}", e.message(), wipe_after_mismatch(&job.target)),
            code: 1,
        }),
        Err(e) => Err(Failure {
            message: e.message(),
            code: 1,
        }),
    }
}

/// After a checksum mismatch (`--checksum`, or a registry blob's digest)
/// nothing of the untrusted image is left that looks like a disk: the
/// target's first and last MiB are zeroed, as pod mode does on a block
/// volume (a file keeps its length). Says what was done, for the message.
fn wipe_after_mismatch(target: &std::path::Path) -> String {
    match streamdisk::target::wipe_edges(target) {
        Ok(()) => format!("the first and last MiB of {} were zeroed", target.display()),
        Err(e) if matches!(&e, streamdisk::target::TargetError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound) =>
        {
            format!("{} was not created", target.display())
        }
        Err(e) => format!(
            "zeroing the edges of {} failed: {}",
            target.display(),
            streamdisk::error_chain(&e)
        ),
    }
}

fn info(a: InfoArgs) -> Result<(), Failure> {
    let input = input_options(&a.src)?;
    let rt = runtime()?;
    let info = streamdisk::info::probe_source(&input, rt.handle()).map_err(|e| Failure {
        message: e.message(),
        code: 1,
    })?;
    match a.output {
        OutputFormat::Json => {
            let s = serde_json::to_string_pretty(&info).context("encoding JSON")?;
            println!("{s}");
        }
        OutputFormat::Human => print!("{}", info.human()),
    }
    Ok(())
}

/// Bytes as MiB with two decimals, so small imports do not read as "0 MiB".
fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / 1048576.0)
}
