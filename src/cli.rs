//! Command-line definitions. The doc comments here are the `--help` text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use streamdisk::format::Format;
use streamdisk::job::FormatChoice;
use streamdisk::source::Connections;

use crate::report::ProgressMode;

/// Stream a disk image (qcow2, VMDK, VHD, VHDX, VDI or raw, optionally
/// gzip/xz/zstd/bzip2-compressed, or a disk of an OVA) from HTTP(S), a
/// registry, a file or stdin onto a block device or file in one pass, with O_DIRECT writes and memory that does not grow with the image. Formats it
/// recognises and does not decode are refused by name, never copied as raw.
#[derive(Debug, Parser)]
#[command(name = "streamdisk", version, propagate_version = true)]
pub(crate) struct Cli {
    /// Less output (only errors).
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// More output (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Import SOURCE into TARGET (a block device, or a file that is created or overwritten).
    Convert(ConvertArgs),
    /// Describe SOURCE: wrapper, format, virtual size, cluster size, features. Reads only the header.
    Info(InfoArgs),
    /// Accept one upload into TARGET over HTTPS (CDI's upload API, `curl -T` works), then exit.
    /// Without TARGET, given only klog-style flags, it is CDI's upload pod
    /// (same as invoking the binary as `cdi-uploadserver`), configured by the environment.
    UploadServer(UploadServerArgs),
    /// Run as the CDI importer pod entrypoint (same as invoking the binary as `cdi-importer`).
    #[command(disable_help_flag = true)]
    Cdi {
        /// Go/klog-style flags passed by the pod (`-alsologtostderr`, `-v=N`, ...).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

#[derive(Debug, Args)]
pub(crate) struct UploadServerArgs {
    /// Address to listen on: HOST:PORT, or :PORT for every interface.
    #[arg(long, value_name = "ADDR")]
    pub listen: String,
    /// The server's certificate chain (PEM).
    #[arg(long, value_name = "FILE")]
    pub cert: PathBuf,
    /// The server's private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Require a client certificate signed by this CA (PEM); without it anyone may upload.
    #[arg(long, value_name = "FILE")]
    pub client_ca: Option<PathBuf>,
    /// With --client-ca: require this subject CN in the client certificate.
    #[arg(long, value_name = "CN", requires = "client_ca")]
    pub client_name: Option<String>,
    /// A block device, a file (created or replaced), or a directory (disk
    /// uploads become DIR/disk.img, archive uploads are extracted into it).
    pub target: PathBuf,
}

/// Whether `streamdisk upload-server ARGS` is the upload pod: no TARGET and
/// none of the command's own options, only klog-style flags (`-v=N`,
/// `-v N`, `-alsologtostderr`).
pub(crate) fn is_upload_pod(args: &[std::ffi::OsString]) -> bool {
    let mut value_of_v = false;
    for a in args {
        let s = a.to_string_lossy();
        if value_of_v {
            value_of_v = false;
            continue;
        }
        if !s.starts_with('-') {
            return false;
        }
        let name = s.trim_start_matches('-').split('=').next().unwrap_or("");
        if matches!(
            name,
            "listen"
                | "cert"
                | "key"
                | "client-ca"
                | "client-name"
                | "help"
                | "h"
                | "version"
                | "V"
        ) {
            return false;
        }
        value_of_v = name == "v" && !s.contains('=');
    }
    true
}

/// Options shared by every command that reads a source.
#[derive(Debug, Args)]
pub(crate) struct SourceArgs {
    /// Image to read: an http:// or https:// URL, a docker://HOST[:PORT]/REPO[:TAG|@DIGEST]
    /// containerDisk image, an s3://BUCKET/KEY or gs://BUCKET/OBJECT object, a local path,
    /// or - for stdin.
    pub source: String,
    /// Basic-auth user for HTTP, or the registry user (password from --password-env).
    /// Without it, registry credentials come from the podman/skopeo/docker auth files.
    #[arg(long, requires = "password_env")]
    pub user: Option<String>,
    /// Name of the environment variable holding the basic-auth password.
    #[arg(long)]
    pub password_env: Option<String>,
    /// Extra HTTP request header, "Name: value" (repeatable). Sent only to the original origin.
    #[arg(long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// Directory of extra PEM CA certificates (repeatable); added to the built-in web roots.
    #[arg(long = "ca-dir", value_name = "DIR")]
    pub ca_dirs: Vec<PathBuf>,
    /// Do not verify TLS certificates (for a registry: also fall back to plain http).
    #[arg(long)]
    pub insecure: bool,
    /// Registry images: the architecture to take from a multi-platform image
    /// (amd64, arm64, arm/v7...) [default: this host's]. When given, a
    /// single-platform image must be of this architecture.
    #[arg(long, value_name = "ARCH")]
    pub arch: Option<String>,
    /// Registry images: the operating system to take from a multi-platform image.
    #[arg(long, value_name = "OS", default_value = "linux")]
    pub os: String,
    /// S3: the service's URL, for any S3-compatible service [default: AWS's regional
    /// endpoint]. Credentials come from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
    /// AWS_SESSION_TOKEN, then the shared credentials file (AWS_SHARED_CREDENTIALS_FILE,
    /// AWS_PROFILE); without any, requests are anonymous.
    #[arg(long, value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// S3: the region requests are signed for [default: $AWS_REGION, $AWS_DEFAULT_REGION,
    /// the region of an AWS endpoint's host name, then us-east-1].
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
    /// S3: name the bucket in the path (HOST/BUCKET/KEY) instead of the host name
    /// (BUCKET.HOST/KEY). Automatic for IP addresses, custom ports and bucket names that
    /// cannot be host names.
    #[arg(long)]
    pub s3_path_style: bool,
    /// GCS: the service's URL, for emulators and private endpoints
    /// [default: https://storage.googleapis.com]. A service-account key is read from
    /// GOOGLE_APPLICATION_CREDENTIALS; without one, requests are anonymous.
    #[arg(long, value_name = "URL")]
    pub gcs_endpoint: Option<String>,
    /// Connect HOST to ADDR:PORT instead of resolving it, without /etc/hosts (repeatable;
    /// also STREAMDISK_RESOLVE, comma-separated). The port is used when the URL names
    /// none. For virtual-host S3 names, private endpoints and tests.
    #[arg(long = "resolve", value_name = "HOST=ADDR:PORT", env = "STREAMDISK_RESOLVE",
          value_delimiter = ',', value_parser = streamdisk::source::parse_resolve)]
    pub resolve: Vec<(String, std::net::SocketAddr)>,
    /// Reconnect (resuming at the next byte) when no data arrived for this many seconds.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub stall_timeout: u64,
    /// Maximum attempts per HTTP request, first one included.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub retries: u32,
    /// Upper bound on the total time spent waiting between retries.
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    pub retry_time: u64,
    /// For an OVA: import disk N of the OVF's DiskSection, counting from 1
    /// [default: the first]. Refused for a source that is not an OVA.
    #[arg(long, value_name = "N", value_parser = parse_disk)]
    pub disk: Option<usize>,
}

#[derive(Debug, Args)]
pub(crate) struct ConvertArgs {
    #[command(flatten)]
    pub src: SourceArgs,
    /// Block device or regular file to write the raw disk into.
    pub target: PathBuf,
    /// Image format after decompression: detected by signature, or required.
    /// `raw` copies the bytes as they are, whatever their signature says.
    #[arg(long, value_enum, default_value_t = FormatArg::Auto)]
    pub format: FormatArg,
    /// Verify ALGO:HEX (md5, sha1, sha256, sha512) over the bytes as received.
    #[arg(long, value_name = "ALGO:HEX")]
    pub checksum: Option<streamdisk::checksum::Checksum>,
    /// The target already reads as zeros (e.g. a fresh thin volume): skip zeroing.
    #[arg(long)]
    pub target_is_zero: bool,
    /// Size of each aligned write buffer (e.g. 1M, 4MiB).
    #[arg(long, default_value = "1MiB", value_parser = parse_size, value_name = "BYTES")]
    pub buffer_size: u64,
    /// Writes in flight [default: 8, and 4 once decompression sets the pace].
    /// Write-side memory is at most buffer-size x (queue-depth + 1).
    #[arg(long, value_name = "N")]
    pub queue_depth: Option<usize>,
    /// Bytes of not-yet-mapped qcow2 data held in memory before a spill (a seekable
    /// source range-reads the missing tables earlier, at 1 MiB or this, the smaller).
    #[arg(long, default_value = "4MiB", value_parser = parse_size, value_name = "BYTES")]
    pub window: u64,
    /// Directory for spilling qcow2 data that arrives before its metadata on a
    /// non-seekable source (default: the system temporary directory).
    #[arg(long, value_name = "DIR", conflicts_with = "no_spill")]
    pub scratch: Option<PathBuf>,
    /// Never spill: stop with an error if the image layout needs scratch space.
    #[arg(long)]
    pub no_spill: bool,
    /// Parallel HTTP range connections (servers with Range support only).
    /// `auto` uses two for files of 64 MiB or more, which keeps a second read
    /// going on the server, and goes back to one stream when the server is
    /// slow to answer requests.
    #[arg(long, default_value = "auto", value_parser = parse_connections, value_name = "auto|N")]
    pub connections: Connections,
    /// Bytes per segment of a parallel download. Each segment ahead of the
    /// one being written is held in memory: (connections - 1) x this.
    #[arg(long, default_value = "2MiB", value_parser = parse_size, value_name = "BYTES")]
    pub segment_size: u64,
    /// How to show progress: a bar on a terminal, log lines otherwise.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
}

/// `--format`, named as qemu names the formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum FormatArg {
    /// Detect by signature.
    Auto,
    /// A raw disk: the bytes as they are.
    Raw,
    /// qcow2.
    Qcow2,
    /// VMDK.
    Vmdk,
    /// VHD (qemu's `vpc`).
    Vpc,
    /// VHDX.
    Vhdx,
    /// VDI.
    Vdi,
}

impl FormatArg {
    /// The library's choice.
    pub(crate) fn choice(self) -> FormatChoice {
        let f = match self {
            FormatArg::Auto => return FormatChoice::Auto,
            FormatArg::Raw => Format::Raw,
            FormatArg::Qcow2 => Format::Qcow2,
            FormatArg::Vmdk => Format::Vmdk,
            FormatArg::Vpc => Format::Vpc,
            FormatArg::Vhdx => Format::Vhdx,
            FormatArg::Vdi => Format::Vdi,
        };
        FormatChoice::Exactly(f)
    }
}

/// `info --output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum OutputFormat {
    Human,
    Json,
}

#[derive(Debug, Args)]
pub(crate) struct InfoArgs {
    #[command(flatten)]
    pub src: SourceArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
    pub output: OutputFormat,
}

/// `auto` (the source decides) or a count of at least 1.
pub(crate) fn parse_connections(s: &str) -> Result<Connections, String> {
    if s.trim().eq_ignore_ascii_case("auto") {
        return Ok(Connections::Auto);
    }
    match s.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(Connections::Fixed(n)),
        _ => Err(format!(
            "invalid connection count {s:?} (auto or 1 or more)"
        )),
    }
}

/// A disk number, counted from 1 as the OVF's DiskSection lists them.
pub(crate) fn parse_disk(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        Ok(_) => Err("disks are counted from 1".to_string()),
        Err(_) => Err(format!("invalid disk number {s:?}")),
    }
}

/// Parses `4096`, `64K`, `1M`, `1MiB`, `2G` (binary multiples).
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("invalid size {s:?}"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(format!("invalid size unit in {s:?}")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert!(parse_size("1X").is_err());
        assert_eq!(parse_connections("auto"), Ok(Connections::Auto));
        assert_eq!(parse_connections("3"), Ok(Connections::Fixed(3)));
        assert!(parse_connections("0").is_err());
        assert_eq!(parse_disk("2"), Ok(2));
        assert!(parse_disk("0").is_err_and(|e| e.contains("from 1")));
        assert!(parse_disk("x").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
    }

    #[test]
    fn upload_pod_or_command() {
        let os = |v: &[&str]| -> Vec<std::ffi::OsString> { v.iter().map(Into::into).collect() };
        assert!(is_upload_pod(&os(&[])));
        assert!(is_upload_pod(&os(&["-alsologtostderr", "-v=3"])));
        assert!(is_upload_pod(&os(&["-v", "3"])));
        assert!(!is_upload_pod(&os(&["--listen", ":8443", "/dev/x"])));
        assert!(!is_upload_pod(&os(&["/dev/x"])));
        assert!(!is_upload_pod(&os(&["--help"])));
        assert!(!is_upload_pod(&os(&["--listen=:1"])));
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
