//! The upload server (`cdi-uploadserver` / `streamdisk upload-server`), end
//! to end: the real binary as a subprocess, configured as CDI's upload
//! controller configures it (pod paths re-rooted under a temp dir with
//! `STREAMDISK_POD_ROOT`), certificates made at test time with rcgen (a CA,
//! the server's, a client's with CDI's proxy CN and one with another CN),
//! and requests sent with curl and with a small Rust HTTPS client written
//! here (so that a test can stop sending half-way or hold an upload open).
//! Disks are compared with `qemu-img convert -O raw`.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{
    assert_same_bytes, have_tool, qcow2_create, qemu_io, qemu_raw, qemu_raw_fmt, tempdir,
    LoopDevice,
};

const MIB: u64 = 1 << 20;
/// CDI's upload proxy's client name.
const CLIENT_NAME: &str = "client.upload-server.cdi.kubevirt.io";
const UPLOAD_COMPLETE: &str = r#"{"preallocationApplied":false,"message":"Upload Complete"}"#;

// -------------------------------------------------------------------------------------
// Certificates
// -------------------------------------------------------------------------------------

/// PEM files for one test: a CA, the server's certificate for 127.0.0.1 and
/// localhost, and two client certificates signed by the CA.
struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    fn new() -> Certs {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let dir = tempdir();
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.distinguished_name
            .push(DnType::CommonName, "streamdisk upload test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).expect("CA cert");
        let issuer = Issuer::new(ca, &ca_key);
        let write = |name: &str, text: &str| {
            fs::write(dir.path().join(name), text).expect("write pem");
        };
        write("ca.crt", &ca_cert.pem());

        let key = KeyPair::generate().expect("server key");
        let mut p = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("server params");
        p.distinguished_name
            .push(DnType::CommonName, "cdi-upload-server");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = p.signed_by(&key, &issuer).expect("server cert");
        write("tls.crt", &cert.pem());
        write("tls.key", &key.serialize_pem());

        for (name, cn) in [
            ("client", CLIENT_NAME),
            ("other", "srcns/srcpvc-tgtns/tgtpvc"),
        ] {
            let key = KeyPair::generate().expect("client key");
            let mut p = CertificateParams::new(Vec::<String>::new()).expect("client params");
            p.distinguished_name.push(DnType::CommonName, cn);
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            let cert = p.signed_by(&key, &issuer).expect("client cert");
            write(&format!("{name}.crt"), &cert.pem());
            write(&format!("{name}.key"), &key.serialize_pem());
        }
        Certs { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

// -------------------------------------------------------------------------------------
// The server subprocess
// -------------------------------------------------------------------------------------

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind")
        .port()
}

/// One upload pod: a temp root with `data/` and `dev/`, CDI's environment.
struct Pod {
    root: tempfile::TempDir,
    certs: Arc<Certs>,
    port: u16,
    envs: Vec<(String, String)>,
}

/// A running upload server.
struct Server {
    child: Child,
    stderr: std::thread::JoinHandle<String>,
    port: u16,
    certs: Arc<Certs>,
}

/// How a server run ended.
#[derive(Debug)]
struct Ended {
    code: Option<i32>,
    stderr: String,
    termination: Option<String>,
}

impl Ended {
    fn assert_message(&self, code: i32, message: &str) {
        assert_eq!(self.code, Some(code), "exit code; stderr:\n{}", self.stderr);
        assert_eq!(
            self.termination.as_deref(),
            Some(message),
            "termination message; stderr:\n{}",
            self.stderr
        );
    }
}

impl Pod {
    fn new(certs: &Arc<Certs>) -> Pod {
        let root = tempdir();
        fs::create_dir(root.path().join("data")).expect("mkdir data");
        fs::create_dir(root.path().join("dev")).expect("mkdir dev");
        let mut pod = Pod {
            root,
            certs: Arc::clone(certs),
            port: free_port(),
            envs: Vec::new(),
        };
        let c = |n: &str| certs.path(n).display().to_string();
        // What the upload controller sets (an empty TLS profile, as when
        // CDIConfig has none, is the Go default).
        pod.env("TLS_KEY_FILE", &c("tls.key"))
            .env("TLS_CERT_FILE", &c("tls.crt"))
            .env("CLIENT_CERT_FILE", &c("ca.crt"))
            .env("FILESYSTEM_OVERHEAD", "0")
            .env("UPLOAD_IMAGE_SIZE", "")
            .env("CLIENT_NAME", CLIENT_NAME)
            .env("PREALLOCATION", "false")
            .env("TLS_CIPHERS", "")
            .env("TLS_MIN_VERSION", "")
            .env("LISTEN_ADDRESS", "127.0.0.1");
        pod
    }

    fn env(&mut self, k: &str, v: &str) -> &mut Self {
        self.envs.retain(|(n, _)| n != k);
        self.envs.push((k.to_string(), v.to_string()));
        self
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }

    fn disk(&self) -> PathBuf {
        self.path("data/disk.img")
    }

    /// Starts the server as CDI's image does (argv[0] `cdi-uploadserver`,
    /// klog flags) and waits until it accepts connections.
    fn spawn(&self) -> Server {
        let link = self.path("cdi-uploadserver");
        if !link.exists() {
            std::os::unix::fs::symlink(crate::common::bin(), &link).expect("symlink");
        }
        let mut child = Command::new(&link)
            .args(["-alsologtostderr", "-v=1"])
            .env_clear()
            .env("STREAMDISK_POD_ROOT", self.root.path())
            .env("LISTEN_PORT", self.port.to_string())
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the upload server");
        let mut err = child.stderr.take().expect("stderr");
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        let mut server = Server {
            child,
            stderr,
            port: self.port,
            certs: Arc::clone(&self.certs),
        };
        server.wait_listening();
        server
    }

    fn wait(&self, server: Server) -> Ended {
        let Server {
            mut child, stderr, ..
        } = server;
        let start = Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().expect("wait") {
                break st;
            }
            if start.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "upload server did not exit:\n{}",
                    stderr.join().unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stderr = stderr.join().unwrap_or_default();
        assert!(!stderr.contains("panicked"), "panic:\n{stderr}");
        Ended {
            code: status.code(),
            stderr,
            termination: fs::read_to_string(self.path("dev/termination-log")).ok(),
        }
    }
}

impl Server {
    fn wait_listening(&mut self) {
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("upload server exited early ({st})");
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "upload server never listened"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// `curl` with the CA and, when named, a client certificate; returns
    /// the status and body.
    fn curl(&self, client: Option<&str>, args: &[&str], path: &str) -> (u16, String) {
        let out_file = tempfile::NamedTempFile::new().expect("tmp");
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "60", "--cacert"])
            .arg(self.certs.path("ca.crt"))
            .arg("-o")
            .arg(out_file.path())
            .args(["-w", "%{http_code}"]);
        if let Some(c) = client {
            cmd.arg("--cert")
                .arg(self.certs.path(&format!("{c}.crt")))
                .arg("--key")
                .arg(self.certs.path(&format!("{c}.key")));
        }
        let out = cmd
            .args(args)
            .arg(self.url(path))
            .output()
            .expect("run curl");
        let code = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        let body = fs::read_to_string(out_file.path()).unwrap_or_default();
        assert!(
            code != 0,
            "curl got no answer: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (code, body)
    }
}

fn have_curl() -> bool {
    if have_tool("curl") {
        return true;
    }
    eprintln!("SKIP: curl is not installed");
    false
}

// -------------------------------------------------------------------------------------
// A Rust client: HTTP/1.1 over rustls, written by hand so that a test controls
// every byte it sends (and when it stops).
// -------------------------------------------------------------------------------------

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// One HTTPS connection.
struct Client {
    tls: Tls,
}

/// An answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: String,
}

impl Client {
    async fn connect(server: &Server, cert: Option<&str>) -> Client {
        let certs = &server.certs;
        let read = |n: &str| fs::read(certs.path(n)).expect("read pem");
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut &read("ca.crt")[..]) {
            roots.add(c.expect("ca pem")).expect("add ca");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
        let config = match cert {
            Some(c) => {
                let chain: Vec<_> = rustls_pemfile::certs(&mut &read(&format!("{c}.crt"))[..])
                    .collect::<Result<_, _>>()
                    .expect("client pem");
                let key = rustls_pemfile::private_key(&mut &read(&format!("{c}.key"))[..])
                    .expect("key pem")
                    .expect("a key");
                builder
                    .with_client_auth_cert(chain, key)
                    .expect("client auth")
            }
            None => builder.with_no_client_auth(),
        };
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", server.port))
            .await
            .expect("connect");
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let tls = connector.connect(name, tcp).await.expect("TLS handshake");
        Client { tls }
    }

    /// Sends the request head (`Content-Length: len`, or none with `None`).
    async fn head(&mut self, method: &str, path: &str, headers: &[(&str, &str)], len: Option<u64>) {
        let mut h = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
        for (k, v) in headers {
            h.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(n) = len {
            h.push_str(&format!("Content-Length: {n}\r\n"));
        }
        h.push_str("\r\n");
        self.tls.write_all(h.as_bytes()).await.expect("send head");
    }

    /// Sends body bytes; false once the server stopped reading.
    async fn send(&mut self, data: &[u8]) -> bool {
        for piece in data.chunks(256 << 10) {
            if self.tls.write_all(piece).await.is_err() {
                return false;
            }
        }
        self.tls.flush().await.is_ok()
    }

    /// Reads one answer.
    async fn answer(&mut self) -> Answer {
        read_answer(&mut self.tls).await
    }

    /// One whole request.
    async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Answer {
        self.head(method, path, headers, Some(body.len() as u64))
            .await;
        // Send and read at once: an early answer must arrive whatever the body.
        let (mut r, mut w) = tokio::io::split(&mut self.tls);
        let send = async move {
            for piece in body.chunks(256 << 10) {
                if w.write_all(piece).await.is_err() {
                    break;
                }
            }
            let _ = w.flush().await;
        };
        let recv = async move { read_answer(&mut r).await };
        let ((), a) = tokio::join!(send, recv);
        a
    }
}

/// Reads one answer (Content-Length bodies, as the server sends).
async fn read_answer<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> Answer {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(60), r.read(&mut byte)).await {
            Ok(Ok(1)) => buf.push(byte[0]),
            other => panic!(
                "no answer ({other:?}), got {:?}",
                String::from_utf8_lossy(&buf)
            ),
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            if k.eq_ignore_ascii_case("content-length") {
                v.trim().parse().ok()
            } else {
                None
            }
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.expect("body");
    Answer {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

// -------------------------------------------------------------------------------------
// Images
// -------------------------------------------------------------------------------------

/// A qcow2 image with data in a few places, and its oracle conversion.
fn sample_qcow2(dir: &Path, name: &str, virtual_size: u64) -> (PathBuf, PathBuf) {
    let img = dir.join(name);
    qcow2_create(&img, virtual_size, "");
    let last = virtual_size - MIB;
    qemu_io(
        &img,
        &[
            "write -P 0x11 0 1M",
            "write -P 0x22 3M 512k",
            &format!("write -P 0x33 {last} 1M"),
        ],
    );
    let raw = qemu_raw(&img);
    (img, raw)
}

/// Go's snappy framing, as CDI's cloner writes it.
fn snappy(data: &[u8]) -> Vec<u8> {
    let mut w = snap::write::FrameEncoder::new(Vec::new());
    w.write_all(data).expect("snappy");
    w.into_inner().expect("snappy finish")
}

fn assert_zeros_from(path: &Path, from: u64) {
    let data = fs::read(path).expect("read");
    assert!(
        data[from as usize..].iter().all(|&b| b == 0),
        "{} is not zero past {from}",
        path.display()
    );
}

// -------------------------------------------------------------------------------------
// Tests
// -------------------------------------------------------------------------------------

#[test]
fn sync_qcow2_with_curl_into_a_filesystem_volume() {
    if !have_curl() {
        return;
    }
    let certs = Arc::new(Certs::new());
    let work = tempdir();
    let (img, raw) = sample_qcow2(work.path(), "disk.qcow2", 8 * MIB);
    let mut pod = Pod::new(&certs);
    pod.env("UPLOAD_IMAGE_SIZE", "16Mi");
    let srv = pod.spawn();
    let (code, body) = srv.curl(None, &[], "/healthz");
    assert_eq!((code, body.as_str()), (200, "OK"));
    let (code, metrics) = srv.curl(None, &[], "/metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("kubevirt_cdi_upload_progress_total 0.0\n"),
        "{metrics}"
    );
    // curl -T is a PUT.
    let img_arg = img.display().to_string();
    let (code, body) = srv.curl(Some("client"), &["-T", &img_arg], "/v1beta1/upload");
    assert_eq!((code, body.as_str()), (200, ""));
    let end = pod.wait(srv);
    end.assert_message(0, UPLOAD_COMPLETE);
    assert!(end.stderr.contains("Wrote data"), "{}", end.stderr);
    // Resized to UPLOAD_IMAGE_SIZE as the importer does; mode 0660.
    let m = fs::metadata(pod.disk()).expect("disk.img");
    assert_eq!(m.len(), 16 * MIB);
    assert_eq!(m.mode() & 0o777, 0o660);
    let got = fs::read(pod.disk()).expect("read");
    assert!(
        got[..8 * MIB as usize] == fs::read(&raw).expect("oracle")[..],
        "differs from qemu-img"
    );
    assert_zeros_from(&pod.disk(), 8 * MIB);
}

/// CDI's upload pod converts whatever qemu-img identifies; so does this one,
/// by its decoders: a VMDK from VMware, a VHDX from Hyper-V, a VDI from
/// VirtualBox, a VHD, each uploaded as it is.
#[test]
fn uploads_of_vmdk_vhdx_vdi_and_vhd_match_qemu_img() {
    if !have_curl() {
        return;
    }
    let certs = Arc::new(Certs::new());
    let work = tempdir();
    let (img, raw) = sample_qcow2(work.path(), "disk.qcow2", 8 * MIB);
    for (fmt, opts) in [
        ("vmdk", "subformat=streamOptimized"),
        ("vhdx", "block_size=1M"),
        ("vdi", "static=off"),
        ("vpc", "subformat=dynamic"),
    ] {
        let conv = work.path().join(format!("disk.{fmt}"));
        crate::common::qemu_convert(&img, "qcow2", fmt, opts, &conv);
        // The oracle is the converted file's own conversion (a VHD's
        // geometry may round its size).
        let oracle = qemu_raw_fmt(&conv, Some(fmt));
        let mut pod = Pod::new(&certs);
        pod.env("UPLOAD_IMAGE_SIZE", "16Mi");
        let srv = pod.spawn();
        let arg = conv.display().to_string();
        let (code, body) = srv.curl(Some("client"), &["-T", &arg], "/v1beta1/upload");
        assert_eq!((code, body.as_str()), (200, ""), "{fmt}");
        let end = pod.wait(srv);
        end.assert_message(0, UPLOAD_COMPLETE);
        let want = fs::read(&oracle).expect("oracle");
        let got = fs::read(pod.disk()).expect("read");
        assert!(
            got.len() >= want.len() && got[..want.len()] == want[..],
            "{fmt}: differs from qemu-img"
        );
        assert_zeros_from(&pod.disk(), want.len() as u64);
        let first = fs::read(&raw).expect("raw");
        assert!(
            want.get(..first.len()) == Some(&first[..]),
            "{fmt}: the conversion changed the disk"
        );
    }
}

#[test]
fn async_gzip_qcow2_after_virtctls_probe_into_a_block_volume() {
    let work = tempdir();
    let backing = work.path().join("dev.img");
    fs::write(&backing, vec![0xAAu8; 16 * MIB as usize]).expect("device file");
    let Some(lo) = LoopDevice::attach(&backing) else {
        return;
    };
    let (img, raw) = sample_qcow2(work.path(), "disk.qcow2", 16 * MIB);
    let Some(gz) = crate::common::wrap(&img, crate::common::Wrapper::Gzip) else {
        return;
    };
    let certs = Arc::new(Certs::new());
    let mut pod = Pod::new(&certs);
    pod.env("DESTINATION", &lo.dev.display().to_string());
    let srv = pod.spawn();
    let rt = runtime();
    rt.block_on(async {
        // virtctl probes with HEAD (no certificate needed), then uploads.
        let mut c = Client::connect(&srv, None).await;
        c.head("HEAD", "/v1beta1/upload-async", &[], None).await;
        let a = c.answer().await;
        assert_eq!(a.status, 200, "{a:?}");
        let mut c = Client::connect(&srv, Some("client")).await;
        let body = fs::read(&gz).expect("gz");
        let a = c.request("POST", "/v1beta1/upload-async", &[], &body).await;
        assert_eq!((a.status, a.body.as_str()), (200, ""), "{a:?}");
    });
    let end = pod.wait(srv);
    end.assert_message(0, UPLOAD_COMPLETE);
    assert_same_bytes(&lo.dev, &raw);
}

#[test]
fn form_upload_with_curl_and_a_part_before_the_file() {
    if !have_curl() {
        return;
    }
    let certs = Arc::new(Certs::new());
    let work = tempdir();
    let (img, raw) = sample_qcow2(work.path(), "disk.qcow2", 8 * MIB);
    let pod = Pod::new(&certs);
    let srv = pod.spawn();
    let file = format!("file=@{}", img.display());
    let (code, body) = srv.curl(
        Some("client"),
        &["-F", "note=first part", "-F", &file, "-F", "after=x"],
        "/v1beta1/upload-form",
    );
    assert_eq!((code, body.as_str()), (200, ""));
    let end = pod.wait(srv);
    end.assert_message(0, UPLOAD_COMPLETE);
    assert_same_bytes(&pod.disk(), &raw);
}

#[test]
fn form_without_a_file_part_is_a_bad_request() {
    if !have_curl() {
        return;
    }
    let certs = Arc::new(Certs::new());
    let pod = Pod::new(&certs);
    let mut srv = pod.spawn();
    let (code, body) = srv.curl(
        Some("client"),
        &["-F", "note=no file"],
        "/v1beta1/upload-form-async",
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("no part named \"file\""), "{body}");
    let (code, _) = srv.curl(
        Some("client"),
        &["--data-binary", "x"],
        "/v1beta1/upload-form",
    );
    assert_eq!(code, 400, "not multipart");
    assert!(srv.running(), "a refused upload does not end the server");
    let _ = srv.child.kill();
}

#[test]
fn archive_upload_is_extracted_into_the_volume() {
    if !have_curl() || !have_tool("tar") {
        return;
    }
    let certs = Arc::new(Certs::new());
    let work = tempdir();
    let src = work.path().join("src");
    fs::create_dir_all(src.join("sub")).expect("mkdir");
    fs::write(src.join("a.txt"), b"hello").expect("a");
    fs::write(src.join("sub/b.bin"), vec![7u8; 300_000]).expect("b");
    let tgz = work.path().join("files.tar.gz");
    let st = Command::new("tar")
        .arg("-czf")
        .arg(&tgz)
        .arg("-C")
        .arg(&src)
        .args(["a.txt", "sub"])
        .status()
        .expect("tar");
    assert!(st.success());
    let pod = Pod::new(&certs);
    let srv = pod.spawn();
    let tgz_arg = format!("@{}", tgz.display());
    let (code, body) = srv.curl(
        Some("client"),
        &["--data-binary", &tgz_arg],
        "/v1alpha1/upload-archive",
    );
    assert_eq!((code, body.as_str()), (200, ""));
    let end = pod.wait(srv);
    end.assert_message(0, UPLOAD_COMPLETE);
    assert_eq!(fs::read(pod.path("data/a.txt")).expect("a"), b"hello");
    assert_eq!(
        fs::read(pod.path("data/sub/b.bin")).expect("b"),
        vec![7u8; 300_000]
    );
}

#[test]
fn clients_without_a_certificate_or_with_another_name_get_401() {
    if !have_curl() {
        return;
    }
    let certs = Arc::new(Certs::new());
    let work = tempdir();
    let (img, raw) = sample_qcow2(work.path(), "disk.qcow2", 8 * MIB);
    // A body far larger than the socket buffers: the answer must still
    // arrive whole, not be lost to a reset.
    let big = work.path().join("big.raw");
    fs::write(&big, vec![0x5Au8; 24 * MIB as usize]).expect("big");
    let pod = Pod::new(&certs);
    let mut srv = pod.spawn();
    let big_arg = format!("@{}", big.display());
    for client in [None, Some("other")] {
        let (code, _) = srv.curl(client, &["--data-binary", &big_arg], "/v1beta1/upload");
        assert_eq!(code, 401, "curl as {client:?}");
    }
    let rt = runtime();
    rt.block_on(async {
        let body = fs::read(&big).expect("big");
        for client in [None, Some("other")] {
            let mut c = Client::connect(&srv, client).await;
            let a = c.request("POST", "/v1beta1/upload", &[], &body).await;
            assert_eq!(a.status, 401, "rust client as {client:?}");
        }
        // Other methods: 404, as CDI.
        let mut c = Client::connect(&srv, Some("client")).await;
        c.head("GET", "/v1beta1/upload", &[], None).await;
        assert_eq!(c.answer().await.status, 404);
    });
    assert!(srv.running());
    assert!(!pod.disk().exists(), "nothing written for refused clients");
    let img_arg = format!("@{}", img.display());
    let (code, _) = srv.curl(
        Some("client"),
        &["--data-binary", &img_arg],
        "/v1beta1/upload",
    );
    assert_eq!(code, 200);
    pod.wait(srv).assert_message(0, UPLOAD_COMPLETE);
    assert_same_bytes(&pod.disk(), &raw);
}

#[test]
fn concurrent_upload_gets_503_and_one_after_success_409() {
    if !have_curl() {
        return;
    }
    let certs = Arc::new(Certs::new());
    let work = tempdir();
    let (img, raw) = sample_qcow2(work.path(), "disk.qcow2", 8 * MIB);
    let body = fs::read(&img).expect("img");
    let pod = Pod::new(&certs);
    let srv = pod.spawn();
    let img_arg = format!("@{}", img.display());
    let rt = runtime();
    rt.block_on(async {
        let mut c = Client::connect(&srv, Some("client")).await;
        c.head("POST", "/v1beta1/upload", &[], Some(body.len() as u64))
            .await;
        let half = body.len() / 2;
        assert!(c.send(&body[..half]).await);
        // While it is held open, another upload is refused.
        let (code, _) = srv.curl(
            Some("client"),
            &["--data-binary", &img_arg],
            "/v1beta1/upload",
        );
        assert_eq!(code, 503);
        assert!(c.send(&body[half..]).await);
        let a = c.answer().await;
        assert_eq!((a.status, a.body.as_str()), (200, ""), "{a:?}");
        // A second upload on the same connection, right after: done already.
        let a = c.request("POST", "/v1beta1/upload", &[], b"late").await;
        assert_eq!(a.status, 409, "{a:?}");
    });
    pod.wait(srv).assert_message(0, UPLOAD_COMPLETE);
    assert_same_bytes(&pod.disk(), &raw);
}

#[test]
fn an_image_too_large_is_a_400_and_the_next_upload_starts_clean() {
    if !have_curl() {
        return;
    }
    let certs = Arc::new(Certs::new());
    let work = tempdir();
    let (big, _) = sample_qcow2(work.path(), "big.qcow2", 64 * MIB);
    let (small, raw) = sample_qcow2(work.path(), "small.qcow2", 4 * MIB);
    let mut pod = Pod::new(&certs);
    pod.env("UPLOAD_IMAGE_SIZE", "32Mi");
    let mut srv = pod.spawn();
    let big_arg = format!("@{}", big.display());
    let (code, body) = srv.curl(
        Some("client"),
        &["--data-binary", &big_arg],
        "/v1beta1/upload",
    );
    assert_eq!(code, 400, "{body}");
    assert!(
        body.starts_with("Saving stream failed: effective image size is larger than the reported available storage: virtual image size 67108864 is larger than the reported available storage 33554432. A larger PVC is required"),
        "{body}"
    );
    assert!(srv.running());
    assert!(!pod.disk().exists());
    let small_arg = format!("@{}", small.display());
    let (code, _) = srv.curl(
        Some("client"),
        &["--data-binary", &small_arg],
        "/v1beta1/upload",
    );
    assert_eq!(code, 200);
    pod.wait(srv).assert_message(0, UPLOAD_COMPLETE);
    let got = fs::read(pod.disk()).expect("disk");
    assert_eq!(got.len() as u64, 32 * MIB, "resized to the request");
    assert!(got[..4 * MIB as usize] == fs::read(&raw).expect("oracle")[..]);
}

#[test]
fn a_deadline_already_passed_ends_the_server() {
    let certs = Arc::new(Certs::new());
    let mut pod = Pod::new(&certs);
    pod.env("DEADLINE", "2000-01-01T00:00:00Z");
    let srv = pod.spawn_or_exited();
    let end = pod.wait(srv);
    end.assert_message(0, r#"{"deadlinePassed":true,"message":"Deadline Passed"}"#);
    // A deadline that is not RFC 3339 is fatal, as in CDI.
    let mut bad = Pod::new(&certs);
    bad.env("DEADLINE", "tomorrow");
    let srv = bad.spawn_or_exited();
    let end = bad.wait(srv);
    assert_eq!(end.code, Some(1), "{}", end.stderr);
    assert!(
        end.termination
            .as_deref()
            .unwrap_or_default()
            .contains("Failed to parse deadline"),
        "{end:?}"
    );
}

impl Pod {
    /// Starts the server without waiting for it to listen (it may exit first).
    fn spawn_or_exited(&self) -> Server {
        let link = self.path("cdi-uploadserver");
        if !link.exists() {
            std::os::unix::fs::symlink(crate::common::bin(), &link).expect("symlink");
        }
        let mut child = Command::new(&link)
            .arg("-v=1")
            .env_clear()
            .env("STREAMDISK_POD_ROOT", self.root.path())
            .env("LISTEN_PORT", self.port.to_string())
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut err = child.stderr.take().expect("stderr");
        Server {
            child,
            stderr: std::thread::spawn(move || {
                let mut s = String::new();
                let _ = err.read_to_string(&mut s);
                s
            }),
            port: self.port,
            certs: Arc::clone(&self.certs),
        }
    }
}

#[test]
fn a_connection_dropped_mid_upload_fails_and_the_next_starts_clean() {
    let certs = Arc::new(Certs::new());
    let work = tempdir();
    let (img, raw) = sample_qcow2(work.path(), "disk.qcow2", 8 * MIB);
    let body = fs::read(&img).expect("img");
    let pod = Pod::new(&certs);
    let mut srv = pod.spawn();
    let rt = runtime();
    rt.block_on(async {
        let mut c = Client::connect(&srv, Some("client")).await;
        c.head("POST", "/v1beta1/upload", &[], Some(body.len() as u64))
            .await;
        assert!(c.send(&body[..body.len() * 2 / 3]).await);
        // Gone, without a TLS close_notify.
        drop(c);
        tokio::time::sleep(Duration::from_millis(500)).await;
    });
    assert!(srv.running(), "a failed upload does not end the server");
    assert!(
        !pod.path("dev/termination-log").exists(),
        "nothing claims success"
    );
    assert!(!pod.disk().exists(), "the partial disk.img is removed");
    rt.block_on(async {
        let mut c = Client::connect(&srv, Some("client")).await;
        let a = c.request("POST", "/v1beta1/upload", &[], &body).await;
        assert_eq!(a.status, 200, "{a:?}");
    });
    let end = pod.wait(srv);
    end.assert_message(0, UPLOAD_COMPLETE);
    assert!(
        end.stderr.contains("Saving stream failed"),
        "{}",
        end.stderr
    );
    assert_same_bytes(&pod.disk(), &raw);
}

#[test]
fn checksum_header_is_verified() {
    let certs = Arc::new(Certs::new());
    let work = tempdir();
    let (img, raw) = sample_qcow2(work.path(), "disk.qcow2", 8 * MIB);
    let body = fs::read(&img).expect("img");
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&body))
    };
    let wrong = format!("sha256:{}", "0".repeat(64));
    let right = format!("sha256:{sha}");
    let pod = Pod::new(&certs);
    let mut srv = pod.spawn();
    let rt = runtime();
    rt.block_on(async {
        let mut c = Client::connect(&srv, Some("client")).await;
        let a = c
            .request(
                "POST",
                "/v1beta1/upload",
                &[("x-cdi-checksum", &wrong)],
                &body,
            )
            .await;
        assert_eq!(a.status, 500, "{a:?}");
        assert!(
            a.body.contains("checksum mismatch: expected sha256:000"),
            "{a:?}"
        );
        let mut c = Client::connect(&srv, Some("client")).await;
        let a = c
            .request(
                "POST",
                "/v1beta1/upload",
                &[("x-cdi-checksum", "sha256:xyz")],
                &body,
            )
            .await;
        assert_eq!(a.status, 400, "{a:?}");
    });
    assert!(srv.running());
    assert!(!pod.disk().exists(), "a mismatch leaves no disk");
    rt.block_on(async {
        let mut c = Client::connect(&srv, Some("client")).await;
        let a = c
            .request(
                "POST",
                "/v1beta1/upload",
                &[("x-cdi-checksum", &right)],
                &body,
            )
            .await;
        assert_eq!(a.status, 200, "{a:?}");
    });
    pod.wait(srv).assert_message(0, UPLOAD_COMPLETE);
    assert_same_bytes(&pod.disk(), &raw);
}

/// A raw disk whose first bytes are qcow2's magic: a clone must copy it as
/// it is, never decode it.
fn qcow2_looking_raw(dir: &Path) -> PathBuf {
    let (img, _) = sample_qcow2(dir, "looks.qcow2", 4 * MIB);
    let raw = dir.join("clone-source.raw");
    let mut data = fs::read(&img).expect("qcow2 bytes");
    data.resize(6 * MIB as usize, 0);
    data[5 * MIB as usize..].fill(0x77);
    fs::write(&raw, data).expect("raw");
    raw
}

#[test]
fn blockdevice_clone_into_block_and_filesystem_volumes() {
    let certs = Arc::new(Certs::new());
    let work = tempdir();
    let source = qcow2_looking_raw(work.path());
    let expected = qemu_raw_as_raw(&source);
    let framed = snappy(&fs::read(&source).expect("source"));
    let clone_header = [("x-cdi-content-type", "blockdevice-clone")];
    let clone_complete = r#"{"preallocationApplied":false,"message":"Clone Complete"}"#;
    let rt = runtime();

    // Filesystem volume.
    let pod = Pod::new(&certs);
    let srv = pod.spawn();
    rt.block_on(async {
        let mut c = Client::connect(&srv, Some("other")).await;
        let a = c
            .request("POST", "/v1beta1/upload", &clone_header, &framed)
            .await;
        // The clone source's CN is not the client name.
        assert_eq!(a.status, 401);
        let mut c = Client::connect(&srv, Some("client")).await;
        let a = c
            .request("POST", "/v1beta1/upload-async", &clone_header, &framed)
            .await;
        assert_eq!(a.status, 500);
        assert_eq!(a.body, "Saving stream failed: async clone not supported");
        let mut c = Client::connect(&srv, Some("client")).await;
        let a = c
            .request("POST", "/v1beta1/upload", &clone_header, &framed)
            .await;
        assert_eq!(a.status, 200, "{a:?}");
    });
    pod.wait(srv).assert_message(0, clone_complete);
    assert_same_bytes(&pod.disk(), &expected);

    // Block volume, prefilled with garbage.
    let backing = work.path().join("dev.img");
    fs::write(&backing, vec![0xEEu8; 6 * MIB as usize]).expect("device file");
    let Some(lo) = LoopDevice::attach(&backing) else {
        return;
    };
    let mut pod = Pod::new(&certs);
    pod.env("DESTINATION", &lo.dev.display().to_string());
    let srv = pod.spawn();
    rt.block_on(async {
        let mut c = Client::connect(&srv, Some("client")).await;
        let a = c
            .request("POST", "/v1beta1/upload", &clone_header, &framed)
            .await;
        assert_eq!(a.status, 200, "{a:?}");
    });
    pod.wait(srv).assert_message(0, clone_complete);
    assert_same_bytes(&lo.dev, &expected);
}

/// The oracle for a raw disk: `qemu-img convert -f raw -O raw`.
fn qemu_raw_as_raw(path: &Path) -> PathBuf {
    crate::common::qemu_raw_fmt(path, Some("raw"))
}

#[test]
fn filesystem_clone_of_a_sparse_volume_into_filesystem_and_block_volumes() {
    if !have_tool("tar") {
        return;
    }
    let certs = Arc::new(Certs::new());
    let work = tempdir();
    // The source volume: a sparse disk.img (the oracle's raw conversion of a
    // qcow2) and another file, archived as CDI's cloner does (`tar cv -S`).
    let vol = work.path().join("volume");
    fs::create_dir(&vol).expect("mkdir");
    let (_, raw) = sample_qcow2(work.path(), "src.qcow2", 32 * MIB);
    let st = Command::new("cp")
        .args(["--sparse=always"])
        .arg(&raw)
        .arg(vol.join("disk.img"))
        .status()
        .expect("cp");
    assert!(st.success());
    fs::write(vol.join("notes.txt"), b"cloned too").expect("notes");
    let out = Command::new("tar")
        .args(["cv", "-S", "disk.img", "notes.txt"])
        .current_dir(&vol)
        .stderr(Stdio::null())
        .output()
        .expect("tar");
    assert!(out.status.success());
    assert!(
        out.stdout.len() < 8 * MIB as usize,
        "tar -S stored the holes: {} bytes",
        out.stdout.len()
    );
    let framed = snappy(&out.stdout);
    let header = [("x-cdi-content-type", "filesystem-clone")];
    let rt = runtime();

    // Into a filesystem volume: extracted, holes kept.
    let pod = Pod::new(&certs);
    let srv = pod.spawn();
    rt.block_on(async {
        let mut c = Client::connect(&srv, Some("client")).await;
        let a = c.request("POST", "/v1beta1/upload", &header, &framed).await;
        assert_eq!(a.status, 200, "{a:?}");
    });
    pod.wait(srv).assert_message(
        0,
        r#"{"preallocationApplied":true,"message":"Clone Complete"}"#,
    );
    assert_same_bytes(&pod.disk(), &raw);
    assert_eq!(
        fs::read(pod.path("data/notes.txt")).expect("notes"),
        b"cloned too"
    );
    let m = fs::metadata(pod.disk()).expect("disk");
    assert!(
        m.blocks() * 512 < 8 * MIB,
        "extracted sparse: {} bytes allocated",
        m.blocks() * 512
    );

    // Into a block volume: the disk.img member only.
    let backing = work.path().join("dev.img");
    fs::write(&backing, vec![0xEEu8; 32 * MIB as usize]).expect("device file");
    let Some(lo) = LoopDevice::attach(&backing) else {
        return;
    };
    let mut pod = Pod::new(&certs);
    pod.env("DESTINATION", &lo.dev.display().to_string());
    let srv = pod.spawn();
    rt.block_on(async {
        let mut c = Client::connect(&srv, Some("client")).await;
        let a = c.request("POST", "/v1beta1/upload", &header, &framed).await;
        assert_eq!(a.status, 200, "{a:?}");
    });
    pod.wait(srv).assert_message(
        0,
        r#"{"preallocationApplied":false,"message":"Clone Complete"}"#,
    );
    assert_same_bytes(&lo.dev, &raw);
}

#[test]
fn cli_accepts_one_upload_into_a_file() {
    if !have_curl() {
        return;
    }
    let certs = Arc::new(Certs::new());
    let work = tempdir();
    let (img, raw) = sample_qcow2(work.path(), "disk.qcow2", 8 * MIB);
    let target = work.path().join("out.raw");
    let port = free_port();
    let mut child = Command::new(crate::common::bin())
        .args(["upload-server", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--cert")
        .arg(certs.path("tls.crt"))
        .arg("--key")
        .arg(certs.path("tls.key"))
        .arg("--client-ca")
        .arg(certs.path("ca.crt"))
        .args(["--client-name", CLIENT_NAME])
        .arg(&target)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut err = child.stderr.take().expect("stderr");
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut srv = Server {
        child,
        stderr,
        port,
        certs: Arc::clone(&certs),
    };
    srv.wait_listening();
    let (code, _) = srv.curl(None, &["-T", &img.display().to_string()], "/v1beta1/upload");
    assert_eq!(code, 401, "a client certificate is required");
    let (code, _) = srv.curl(
        Some("client"),
        &["-T", &img.display().to_string()],
        "/v1beta1/upload",
    );
    assert_eq!(code, 200);
    let start = Instant::now();
    let status = loop {
        if let Some(st) = srv.child.try_wait().expect("wait") {
            break st;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = srv.stderr.join().unwrap_or_default();
    assert!(status.success(), "{log}");
    assert!(log.contains("Upload Complete"), "{log}");
    assert_same_bytes(&target, &raw);
}
