//! A real OCI registry for the tests: Debian's `docker-registry` (the CNCF
//! distribution registry) on loopback, with TLS from a CA made at test
//! time, htpasswd basic auth or `auth: token` with a token service written
//! here (so the Bearer flow runs for real); images built with buildah
//! (`FROM scratch`, the disk under `/disk/`) and pushed with buildah; and a
//! TCP proxy that cuts a connection once or slows it down.
//!
//! ```ignore
//! let Some(reg) = Registry::builder().tls().htpasswd("u", "p").start() else { return };
//! let image = Image::new().layer(&[(&disk, "/disk/")]).env("KUBEVIRT_IO_OS=fedora");
//! let pushed = reg.push(&image, "test/disk:1", Push::default());
//! // streamdisk convert pushed.reference ...
//! ```
//!
//! Every registry has its own port (a free one), storage and log; tests run
//! in parallel. Tools missing: [`Registry::builder`]`.start()` returns
//! `None` after printing why, and the test returns (CI installs them all).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;

use super::server::{make_ca_and_cert, TestCerts};
use super::tempdir;

/// The tools the registry tests need.
const TOOLS: &[&str] = &["docker-registry", "buildah", "htpasswd"];

/// Whether the tools are installed; prints what is missing.
pub fn tools_available() -> bool {
    let missing: Vec<&str> = TOOLS
        .iter()
        .copied()
        .filter(|t| {
            Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .stdout(Stdio::null())
                .status()
                .map(|s| !s.success())
                .unwrap_or(true)
        })
        .collect();
    if missing.is_empty() {
        true
    } else {
        eprintln!(
            "SKIP: registry test needs {} (apt-get install docker-registry buildah apache2-utils)",
            missing.join(", ")
        );
        false
    }
}

/// A free loopback port (bound and released: the registry binds it next).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind")
        .port()
}

/// How the registry authenticates.
enum Auth {
    Anonymous,
    Htpasswd {
        user: String,
        pass: String,
    },
    Token {
        user: String,
        pass: String,
        anonymous_pull: bool,
    },
}

/// Builds a [`Registry`].
pub struct Builder {
    tls: bool,
    auth: Auth,
    schema1: bool,
}

impl Builder {
    /// Serve HTTPS with a certificate for 127.0.0.1 from a fresh CA.
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }
    /// htpasswd basic auth with one user.
    pub fn htpasswd(mut self, user: &str, pass: &str) -> Self {
        self.auth = Auth::Htpasswd {
            user: user.into(),
            pass: pass.into(),
        };
        self
    }
    /// `auth: token` with a [`TokenService`] knowing one user; anonymous
    /// pulls are granted when `anonymous_pull`.
    pub fn token(mut self, user: &str, pass: &str, anonymous_pull: bool) -> Self {
        self.auth = Auth::Token {
            user: user.into(),
            pass: pass.into(),
            anonymous_pull,
        };
        self
    }
    /// Accept Docker schema 1 manifests (for the refusal test).
    pub fn schema1(mut self) -> Self {
        self.schema1 = true;
        self
    }

    /// Starts the registry; `None` (after saying why) when tools are missing.
    pub fn start(self) -> Option<Registry> {
        if !tools_available() {
            return None;
        }
        let mut dir = tempdir();
        let mut certs = self.tls.then(|| make_ca_and_cert("127.0.0.1"));
        let mut auth_yaml = String::new();
        let mut token = None;
        let mut creds = None;
        match &self.auth {
            Auth::Anonymous => {}
            Auth::Htpasswd { user, pass } => {
                let file = dir.path().join("htpasswd");
                let out = Command::new("htpasswd")
                    .args(["-Bbn", user, pass])
                    .output()
                    .expect("htpasswd");
                assert!(out.status.success(), "htpasswd failed");
                std::fs::write(&file, &out.stdout).expect("write htpasswd");
                auth_yaml = format!(
                    "auth:\n  htpasswd:\n    realm: test-realm\n    path: {}\n",
                    file.display()
                );
                creds = Some((user.clone(), pass.clone()));
            }
            Auth::Token {
                user,
                pass,
                anonymous_pull,
            } => {
                let svc = TokenService::start(user, pass, *anonymous_pull);
                let bundle = dir.path().join("token-ca.pem");
                std::fs::write(&bundle, &svc.cert_pem).expect("write bundle");
                auth_yaml = format!(
                    "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                    svc.realm(),
                    TOKEN_SERVICE,
                    TOKEN_ISSUER,
                    bundle.display()
                );
                creds = Some((user.clone(), pass.clone()));
                token = Some(svc);
            }
        }
        let mut ca_dir = certs.as_ref().map(|c| {
            let d = dir.path().join("ca");
            std::fs::create_dir(&d).expect("mkdir ca");
            std::fs::write(d.join("ca.crt"), &c.ca_cert_pem).expect("write ca");
            d
        });
        let tls_yaml = match &certs {
            Some(c) => {
                let cert = dir.path().join("server.crt");
                let key = dir.path().join("server.key");
                std::fs::write(&cert, &c.server_cert_pem).expect("write cert");
                std::fs::write(&key, &c.server_key_pem).expect("write key");
                format!(
                    "  tls:\n    certificate: {}\n    key: {}\n",
                    cert.display(),
                    key.display()
                )
            }
            None => String::new(),
        };
        let compat = if self.schema1 {
            "compatibility:\n  schema1:\n    enabled: true\n"
        } else {
            ""
        };
        let storage = dir.path().join("storage");
        for _attempt in 0..5 {
            let port = free_port();
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{tls_yaml}{auth_yaml}{compat}",
                    storage.display()
                ),
            )
            .expect("write config");
            let log = dir.path().join(format!("registry-{port}.log"));
            let child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&log).expect("log"))
                .stderr(
                    std::fs::File::create(dir.path().join(format!("registry-{port}.err")))
                        .expect("log"),
                )
                .spawn()
                .expect("spawn docker-registry");
            let mut reg = Registry {
                child,
                dir,
                port,
                certs,
                ca_dir,
                token,
                creds,
                log,
            };
            if reg.wait_up() {
                return Some(reg);
            }
            // The port was taken meanwhile: try another.
            let _ = reg.child.kill();
            let _ = reg.child.wait();
            dir = std::mem::replace(&mut reg.dir, tempdir());
            certs = reg.certs.take();
            ca_dir = reg.ca_dir.take();
            token = reg.token.take();
            creds = reg.creds.take();
        }
        panic!("docker-registry did not start");
    }
}

/// A running registry, stopped when dropped.
pub struct Registry {
    child: Child,
    dir: tempfile::TempDir,
    /// Its port on 127.0.0.1.
    pub port: u16,
    certs: Option<TestCerts>,
    ca_dir: Option<PathBuf>,
    /// The token service, for `auth: token`.
    pub token: Option<TokenService>,
    creds: Option<(String, String)>,
    log: PathBuf,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    /// A builder: plain HTTP, anonymous, unless told otherwise.
    pub fn builder() -> Builder {
        Builder {
            tls: false,
            auth: Auth::Anonymous,
            schema1: false,
        }
    }

    fn wait_up(&mut self) -> bool {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `docker://127.0.0.1:PORT/NAME` (NAME with its tag or digest).
    pub fn reference(&self, name: &str) -> String {
        format!("docker://{}/{name}", self.host())
    }

    /// A directory holding the CA certificate (TLS registries).
    pub fn ca_dir(&self) -> Option<&Path> {
        self.ca_dir.as_deref()
    }

    /// The user and password the registry knows.
    pub fn creds(&self) -> Option<(&str, &str)> {
        self.creds.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// Where the registry keeps the blob with `digest` (`sha256:HEX`).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// The registry's access log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A scratch directory that lives as long as the registry.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// buildah's flags to reach this registry.
    fn push_flags(&self) -> Vec<String> {
        let mut f = Vec::new();
        match &self.ca_dir {
            Some(d) => f.push(format!("--cert-dir={}", d.display())),
            None => f.push("--tls-verify=false".to_string()),
        }
        if let Some((u, p)) = &self.creds {
            f.push(format!("--creds={u}:{p}"));
        }
        f
    }

    /// Builds `image` and pushes it as `name` (`repo:tag`).
    pub fn push(&self, image: &Image, name: &str, how: Push) -> Pushed {
        let local = build(image);
        self.push_local(&local, name, how)
    }

    fn push_local(&self, local: &str, name: &str, how: Push) -> Pushed {
        let digest_file = self.dir.path().join(format!("digest-{}", unique()));
        let mut args: Vec<String> = vec!["push".into(), "-q".into()];
        args.extend(self.push_flags());
        args.push(format!("--digestfile={}", digest_file.display()));
        match how.compression {
            Compression::Gzip => {}
            Compression::Zstd => args.push("--compression-format=zstd".into()),
            Compression::None => args.push("--disable-compression".into()),
        }
        if let Some(f) = how.format {
            args.push(format!("--format={f}"));
        }
        args.push(local.to_string());
        args.push(format!("docker://{}/{name}", self.host()));
        buildah(&args);
        let digest = std::fs::read_to_string(&digest_file).unwrap_or_default();
        Pushed {
            reference: self.reference(name),
            digest: digest.trim().to_string(),
        }
    }

    /// Builds each image of `platforms` (with its architecture set) and
    /// pushes them as one index named `name`.
    pub fn push_index(&self, platforms: &[(&str, &Image)], name: &str) -> Pushed {
        let list = format!("sd-list-{}", unique());
        buildah(&["manifest".to_string(), "create".into(), list.clone()]);
        for (arch, image) in platforms {
            let mut image: Image = (*image).clone();
            image.arch = Some(arch.to_string());
            let local = build(&image);
            buildah(&[
                "manifest".to_string(),
                "add".into(),
                format!("--arch={arch}"),
                list.clone(),
                local,
            ]);
        }
        let digest_file = self.dir.path().join(format!("digest-{}", unique()));
        let mut args: Vec<String> = vec![
            "manifest".into(),
            "push".into(),
            "-q".into(),
            "--all".into(),
        ];
        args.extend(self.push_flags());
        args.push(format!("--digestfile={}", digest_file.display()));
        args.push(list);
        args.push(format!("docker://{}/{name}", self.host()));
        buildah(&args);
        Pushed {
            reference: self.reference(name),
            digest: std::fs::read_to_string(&digest_file)
                .unwrap_or_default()
                .trim()
                .to_string(),
        }
    }

    /// The manifest `name` (a tag or digest) of `repo`, and the layer and
    /// config descriptors it lists (`(digest, size)`), read with curl.
    pub fn manifest(&self, repo: &str, reference: &str) -> serde_json::Value {
        let mut cmd = Command::new("curl");
        cmd.args(["-sf", "-H", "Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json"]);
        let scheme = match &self.ca_dir {
            Some(d) => {
                cmd.arg("--cacert").arg(d.join("ca.crt"));
                "https"
            }
            None => "http",
        };
        if let Some((u, p)) = &self.creds {
            if self.token.is_none() {
                cmd.args(["-u", &format!("{u}:{p}")]);
            } else {
                let t = self
                    .token
                    .as_ref()
                    .map(|t| t.token_for(u, &format!("repository:{repo}:pull")))
                    .unwrap_or_default();
                cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
            }
        }
        cmd.arg(format!(
            "{scheme}://{}/v2/{repo}/manifests/{reference}",
            self.host()
        ));
        let out = cmd.output().expect("curl");
        assert!(out.status.success(), "curl manifest failed");
        serde_json::from_slice(&out.stdout).expect("manifest json")
    }
}

/// An image pushed.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// `docker://127.0.0.1:PORT/repo:tag`.
    pub reference: String,
    /// The manifest digest buildah wrote.
    pub digest: String,
}

/// How layers are compressed on push.
#[derive(Debug, Clone, Copy, Default)]
pub enum Compression {
    #[default]
    Gzip,
    Zstd,
    None,
}

/// Push options.
#[derive(Debug, Clone, Copy, Default)]
pub struct Push {
    pub compression: Compression,
    /// `oci` (default), `v2s2` or `v2s1`.
    pub format: Option<&'static str>,
}

/// An image to build: layers (each a list of `(file, directory in the
/// image)`), environment, labels, architecture.
#[derive(Debug, Clone, Default)]
pub struct Image {
    layers: Vec<Vec<(PathBuf, String)>>,
    env: Vec<String>,
    labels: Vec<String>,
    arch: Option<String>,
}

impl Image {
    pub fn new() -> Image {
        Image::default()
    }
    /// One more layer holding these files.
    pub fn layer(mut self, files: &[(&Path, &str)]) -> Image {
        self.layers.push(
            files
                .iter()
                .map(|(p, d)| (p.to_path_buf(), d.to_string()))
                .collect(),
        );
        self
    }
    /// `NAME=value` in the config's environment.
    pub fn env(mut self, e: &str) -> Image {
        self.env.push(e.into());
        self
    }
    /// `name=value` label.
    pub fn label(mut self, l: &str) -> Image {
        self.labels.push(l.into());
        self
    }
}

/// buildah with the tests' storage (vfs, under one directory per process).
fn buildah<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> String {
    static ROOT: OnceLock<tempfile::TempDir> = OnceLock::new();
    let root = ROOT.get_or_init(tempdir);
    let out = Command::new("buildah")
        .arg("--storage-driver=vfs")
        .arg(format!("--root={}", root.path().join("root").display()))
        .arg(format!("--runroot={}", root.path().join("run").display()))
        .args(args)
        .output()
        .expect("run buildah");
    assert!(
        out.status.success(),
        "buildah {:?} failed:\n{}",
        args.iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect::<Vec<_>>(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A name no other test uses.
fn unique() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Builds `image` in local storage, one commit per layer; returns its name.
fn build(image: &Image) -> String {
    let mut from = "scratch".to_string();
    let mut name = String::new();
    let layers = if image.layers.is_empty() {
        vec![Vec::new()]
    } else {
        image.layers.clone()
    };
    for (i, files) in layers.iter().enumerate() {
        let ctr = buildah(&["from", "-q", &from]);
        for (file, dir) in files {
            buildah(&[
                "copy".to_string(),
                ctr.clone(),
                file.display().to_string(),
                dir.clone(),
            ]);
        }
        if i + 1 == layers.len() {
            let mut args = vec!["config".to_string()];
            for e in &image.env {
                args.push(format!("--env={e}"));
            }
            for l in &image.labels {
                args.push(format!("--label={l}"));
            }
            if let Some(a) = &image.arch {
                args.push(format!("--arch={a}"));
            }
            args.push(ctr.clone());
            buildah(&args);
        }
        name = format!("localhost/sd-img-{}", unique());
        buildah(&["commit", "-q", &ctr, &name]);
        buildah(&["rm", &ctr]);
        from = name.clone();
    }
    name
}

// ---------------------------------------------------------------------------------------
// Token service
// ---------------------------------------------------------------------------------------

/// The `service` the registry and the token service agree on.
pub const TOKEN_SERVICE: &str = "streamdisk-test-registry";
/// The token issuer.
pub const TOKEN_ISSUER: &str = "streamdisk-test-issuer";

/// A token service for `auth: token`: `GET /token?service=...&scope=...`
/// answers a JWT (ES256, signed by a key whose self-signed certificate is
/// the registry's root bundle and rides in the `x5c` header) granting the
/// scope's actions to the user (basic auth), or `pull` to anonymous
/// clients when allowed. Wrong credentials get 401.
pub struct TokenService {
    port: u16,
    /// The signing certificate (the registry's `rootcertbundle`).
    pub cert_pem: String,
    state: Arc<TokenState>,
}

struct TokenState {
    key: ring::signature::EcdsaKeyPair,
    cert_der: Vec<u8>,
    user: String,
    pass: String,
    anonymous_pull: bool,
    /// Every request: `(scope, authenticated user or "")`.
    log: Mutex<Vec<(String, String)>>,
    stop: AtomicBool,
}

impl TokenService {
    fn start(user: &str, pass: &str, anonymous_pull: bool) -> TokenService {
        let key = rcgen::KeyPair::generate().expect("token key");
        let mut params =
            rcgen::CertificateParams::new(vec!["token-signer".to_string()]).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "streamdisk token signer");
        let cert = params.self_signed(&key).expect("token cert");
        let rng = ring::rand::SystemRandom::new();
        let signing = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &key.serialize_der(),
            &rng,
        )
        .expect("ring key");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind token service");
        let port = listener.local_addr().expect("addr").port();
        let state = Arc::new(TokenState {
            key: signing,
            cert_der: cert.der().to_vec(),
            user: user.into(),
            pass: pass.into(),
            anonymous_pull,
            log: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let st = Arc::clone(&state);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(stream) = conn else { continue };
                let st = Arc::clone(&st);
                std::thread::spawn(move || serve_token(stream, &st));
            }
        });
        TokenService {
            port,
            cert_pem: cert.pem(),
            state,
        }
    }

    /// The realm URL.
    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    /// Requests so far: `(scope, user)` (user empty when anonymous).
    pub fn requests(&self) -> Vec<(String, String)> {
        self.state.log.lock().expect("lock").clone()
    }

    /// A token for `user` and `scope`, as the service would issue it.
    pub fn token_for(&self, user: &str, scope: &str) -> String {
        self.state.issue(user, &[scope.to_string()])
    }
}

impl Drop for TokenService {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

impl TokenState {
    /// A signed JWT granting `scopes` (`repository:NAME:ACTIONS`) to `user`
    /// (anonymous: pull only, when allowed).
    fn issue(&self, user: &str, scopes: &[String]) -> String {
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let access: Vec<serde_json::Value> = scopes
            .iter()
            .filter_map(|s| {
                let mut parts = s.splitn(3, ':');
                let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
                let actions: Vec<&str> = actions
                    .split(',')
                    .filter(|a| !user.is_empty() || (self.anonymous_pull && *a == "pull"))
                    .collect();
                Some(serde_json::json!({"type": kind, "name": name, "actions": actions}))
            })
            .collect();
        let header = serde_json::json!({
            "alg": "ES256",
            "typ": "JWT",
            "x5c": [base64::engine::general_purpose::STANDARD.encode(&self.cert_der)],
        });
        let claims = serde_json::json!({
            "iss": TOKEN_ISSUER,
            "sub": user,
            "aud": TOKEN_SERVICE,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": unique(),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = self
            .key
            .sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes())
            .expect("sign");
        format!("{signing_input}.{}", b64(sig.as_ref()))
    }
}

fn serve_token(stream: TcpStream, st: &TokenState) {
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut stream = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).map(|n| n == 0).unwrap_or(true) {
            return;
        }
        let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut auth = None;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).map(|n| n == 0).unwrap_or(true) {
                return;
            }
            if h == "\r\n" || h == "\n" {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("authorization") {
                    auth = Some(v.trim().to_string());
                }
            }
        }
        let query = target.split_once('?').map_or("", |(_, q)| q);
        let scopes: Vec<String> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .filter(|(k, _)| *k == "scope")
            .map(|(_, v)| percent_decode(v))
            .collect();
        let user = match auth.as_deref().and_then(|a| a.strip_prefix("Basic ")) {
            Some(b) => {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .ok()
                    .and_then(|d| String::from_utf8(d).ok())
                    .unwrap_or_default();
                if decoded == format!("{}:{}", st.user, st.pass) {
                    Some(st.user.clone())
                } else {
                    None
                }
            }
            None => Some(String::new()),
        };
        st.log.lock().expect("lock").push((
            scopes.join(" "),
            user.clone().unwrap_or_else(|| "<refused>".into()),
        ));
        let (status, body) = match user {
            Some(u) => {
                let t = st.issue(&u, &scopes);
                (
                    "200 OK",
                    serde_json::json!({"token": t, "access_token": t, "expires_in": 300})
                        .to_string(),
                )
            }
            None => (
                "401 Unauthorized",
                r#"{"details":"bad credentials"}"#.to_string(),
            ),
        };
        let resp = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (c, hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------
// TCP proxy: cut once, or slow down
// ---------------------------------------------------------------------------------------

/// A TCP proxy in front of a port on 127.0.0.1: it can cut, once, the
/// first connection that has sent `cut_after` bytes to its client (a
/// connection dropped mid-layer), and pace what it sends to `rate` bytes
/// per second per connection.
pub struct TcpProxy {
    /// The proxy's port.
    pub port: u16,
    cuts: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl TcpProxy {
    /// Forwards to `127.0.0.1:upstream`.
    pub fn start(upstream: u16, cut_after: Option<u64>, rate: Option<u64>) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let cuts = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (Arc::clone(&cuts), Arc::clone(&stop));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = conn else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let c = Arc::clone(&c);
                // Client to server: copied as it comes.
                let (mut cr, mut sw) = match (client.try_clone(), server.try_clone()) {
                    (Ok(a), Ok(b)) => (a, b),
                    _ => continue,
                };
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut cr, &mut sw);
                    let _ = sw.shutdown(Shutdown::Write);
                });
                // Server to client: counted, paced, maybe cut.
                let (mut sr, mut cw) = (server, client);
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 16 << 10];
                    let mut sent = 0u64;
                    let start = Instant::now();
                    loop {
                        let n = match sr.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let chunk = &buf[..n];
                        if let Some(limit) = cut_after {
                            if sent + n as u64 > limit && c.load(Ordering::Relaxed) == 0 {
                                let keep = (limit.saturating_sub(sent)) as usize;
                                let _ = cw.write_all(&chunk[..keep.min(chunk.len())]);
                                c.fetch_add(1, Ordering::Relaxed);
                                let _ = cw.shutdown(Shutdown::Both);
                                let _ = sr.shutdown(Shutdown::Both);
                                return;
                            }
                        }
                        if let Some(r) = rate {
                            let due = Duration::from_secs_f64((sent + n as u64) as f64 / r as f64);
                            if let Some(wait) = due.checked_sub(start.elapsed()) {
                                std::thread::sleep(wait);
                            }
                        }
                        if cw.write_all(chunk).is_err() {
                            break;
                        }
                        sent += n as u64;
                    }
                    let _ = cw.shutdown(Shutdown::Write);
                });
            }
        });
        TcpProxy { port, cuts, stop }
    }

    /// Connections cut so far.
    pub fn cuts(&self) -> u64 {
        self.cuts.load(Ordering::Relaxed)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Whether this host is amd64 (the default platform then is linux/amd64).
pub fn host_is_amd64() -> bool {
    std::env::consts::ARCH == "x86_64"
}

impl Registry {
    /// Pushes an image made by hand through the registry API (curl): each
    /// layer is `(media type, blob bytes)`, so a test controls compression
    /// and media types exactly (buildah 1.28 compresses on push whatever it
    /// is told). Anonymous plain-http registries only. Returns the
    /// reference and the manifest digest.
    pub fn push_raw(
        &self,
        name: &str,
        layers: &[(&str, Vec<u8>)],
        config: &serde_json::Value,
    ) -> Pushed {
        use sha2::Digest;
        let (repo, tag) = name.split_once(':').expect("repo:tag");
        let digest = |b: &[u8]| format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)));
        let upload = |bytes: &[u8]| -> String {
            let d = digest(bytes);
            let file = self.dir.path().join(format!("blob-{}", unique()));
            std::fs::write(&file, bytes).expect("write blob");
            let out = Command::new("curl")
                .args(["-sf", "-X", "POST", "-D", "-", "-o", "/dev/null"])
                .arg(format!("http://{}/v2/{repo}/blobs/uploads/", self.host()))
                .output()
                .expect("curl");
            assert!(out.status.success(), "upload start failed");
            let headers = String::from_utf8_lossy(&out.stdout);
            let location = headers
                .lines()
                .find_map(|l| {
                    l.strip_prefix("Location: ")
                        .or_else(|| l.strip_prefix("location: "))
                })
                .expect("Location")
                .trim()
                .to_string();
            let sep = if location.contains('?') { '&' } else { '?' };
            let url = if location.starts_with("http") {
                format!("{location}{sep}digest={d}")
            } else {
                format!("http://{}{location}{sep}digest={d}", self.host())
            };
            let st = Command::new("curl")
                .args([
                    "-sf",
                    "-X",
                    "PUT",
                    "-H",
                    "Content-Type: application/octet-stream",
                    "--data-binary",
                ])
                .arg(format!("@{}", file.display()))
                .arg(url)
                .output()
                .expect("curl");
            assert!(st.status.success(), "blob upload failed");
            d
        };
        let config_bytes = config.to_string().into_bytes();
        let config_digest = upload(&config_bytes);
        let descs: Vec<serde_json::Value> = layers
            .iter()
            .map(|(mt, b)| serde_json::json!({"mediaType": mt, "digest": upload(b), "size": b.len()}))
            .collect();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_bytes.len()},
            "layers": descs,
        })
        .to_string();
        let file = self.dir.path().join(format!("manifest-{}", unique()));
        std::fs::write(&file, &manifest).expect("write manifest");
        let st = Command::new("curl")
            .args([
                "-sf",
                "-X",
                "PUT",
                "-H",
                "Content-Type: application/vnd.oci.image.manifest.v1+json",
                "--data-binary",
            ])
            .arg(format!("@{}", file.display()))
            .arg(format!("http://{}/v2/{repo}/manifests/{tag}", self.host()))
            .output()
            .expect("curl");
        assert!(
            st.status.success(),
            "manifest upload failed: {}",
            String::from_utf8_lossy(&st.stderr)
        );
        Pushed {
            reference: self.reference(name),
            digest: digest(manifest.as_bytes()),
        }
    }
}

/// A tar holding `files` (`(name in the tar, bytes)`; a name ending in
/// `/` is a directory), as a layer.
pub fn tar_layer(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        if name.ends_with('/') {
            h.set_mode(0o755);
            h.set_entry_type(tar::EntryType::Directory);
        } else {
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
        }
        b.append_data(&mut h, name, *data).expect("tar append");
    }
    b.into_inner().expect("tar")
}
