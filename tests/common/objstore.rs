//! Object-store servers for the S3 and GCS tests, all on loopback:
//!
//! - [`Store`]: moto's S3 server (it verifies SigV4 once auth is on) or
//!   gcp-storage-emulator, run by `objstore.py` from a Python environment
//!   that has them (`.ci/run` makes one; tests SKIP without it).
//! - [`Proxy`]: a TCP proxy in front of a store that records what clients
//!   send, can drop the first connection after some response bytes (with a
//!   hook run before the next connection is served, to replace an object
//!   in between), and can demand a bearer token issued by a [`TokenServer`].
//! - [`TokenServer`]: an OAuth2 token endpoint that checks the JWT's RS256
//!   signature against the test key's public half.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;

/// The objects the S3 and GCS tests serve, first: a sparse raw disk of
/// `len` bytes laid out as `regions`, named by `seed`.
pub fn object_raw(dir: &Path, seed: u64, len: u64, regions: &[(u64, u64, super::Fill)]) -> PathBuf {
    let raw = dir.join(format!("disk-{seed}.raw"));
    super::make_raw(&raw, len, regions);
    raw
}

/// Then `raw` as a qcow2 with compressed clusters, with `overwrite` (a
/// qemu-io command) making plain ones: the qcow2 and qemu-img's conversion
/// of it.
pub fn object_qcow2(raw: &Path, overwrite: &str) -> (PathBuf, PathBuf) {
    let img = raw.with_extension("qcow2");
    super::qcow2_from_raw(raw, &img, true, "");
    super::qemu_io(&img, &[overwrite]);
    let expected = super::qemu_raw(&img);
    (img, expected)
}

/// The Python interpreter with moto and gcp-storage-emulator:
/// `STREAMDISK_OBJSTORE_PYTHON`, else the venv `.ci/run` makes, else
/// `python3`, if it can import both.
pub fn python() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("STREAMDISK_OBJSTORE_PYTHON").map(PathBuf::from),
        Some(PathBuf::from("/opt/objstore-venv/bin/python")),
        Some(PathBuf::from("python3")),
    ];
    candidates.into_iter().flatten().find(|py| {
        Command::new(py)
            .args(["-c", "import moto.server, boto3, gcp_storage_emulator"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Says SKIP and returns `None` when no Python has the servers.
pub fn python_or_skip(what: &str) -> Option<PathBuf> {
    let py = python();
    if py.is_none() {
        eprintln!(
            "SKIP {what}: no Python with moto[server] and gcp-storage-emulator \
             (python3 -m venv /opt/objstore-venv && /opt/objstore-venv/bin/pip install \
             'moto[server]' gcp-storage-emulator, or set STREAMDISK_OBJSTORE_PYTHON)"
        );
    }
    py
}

/// Access keys the S3 store made (IAM users and an assumed role).
#[derive(Debug, Clone)]
pub struct Keys {
    pub id: String,
    pub secret: String,
    pub token: Option<String>,
}

/// A running store, driven through `objstore.py`'s stdin.
pub struct Store {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub port: u16,
    hello: serde_json::Value,
}

impl Store {
    /// Starts moto (`"s3"`) or the GCS emulator (`"gcs"`).
    pub fn start(python: &Path, kind: &str) -> Store {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/common/objstore.py");
        let mut child = Command::new(python)
            .arg(script)
            .arg(kind)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start objstore.py");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("hello");
        let hello: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("objstore.py said {line:?}: {e}"));
        let port = hello["port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .expect("port");
        Store {
            child,
            stdin,
            stdout,
            port,
            hello,
        }
    }

    /// Keys of `who` ("admin", "reader", "session") on the S3 store.
    pub fn keys(&self, who: &str) -> Keys {
        let k = &self.hello["keys"][who];
        Keys {
            id: k["id"].as_str().expect("id").to_string(),
            secret: k["secret"].as_str().expect("secret").to_string(),
            token: k["token"].as_str().map(str::to_string),
        }
    }

    fn cmd(&mut self, cmd: serde_json::Value) {
        writeln!(self.stdin, "{cmd}").expect("send");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("answer");
        assert_eq!(line.trim(), "ok", "objstore.py {cmd}");
    }

    pub fn bucket(&mut self, bucket: &str) {
        self.cmd(serde_json::json!({"op": "bucket", "bucket": bucket}));
    }

    /// Uploads `file` as `bucket/key` (S3: as the admin user, signed;
    /// `public` gives it the public-read ACL).
    pub fn put(&mut self, bucket: &str, key: &str, file: &Path, public: bool) {
        self.cmd(serde_json::json!({
            "op": "put", "bucket": bucket, "key": key,
            "file": file.to_str().expect("utf8"), "public": public,
        }));
    }

    /// S3: from now on every request must carry a valid SigV4 signature.
    pub fn require_auth(&mut self) {
        self.cmd(serde_json::json!({"op": "auth"}));
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Says whether a bearer token is acceptable.
pub type BearerCheck = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// What a [`Proxy`] does besides forwarding.
#[derive(Default)]
pub struct ProxyRules {
    /// Close the first connection after this many response bytes.
    pub drop_after: Option<u64>,
    /// Run once after that drop, before another connection is served.
    pub after_drop: Option<Box<dyn FnOnce() + Send>>,
    /// Answer 401 to requests without a bearer token this accepts.
    pub bearer: Option<BearerCheck>,
}

/// A loopback TCP proxy in front of `upstream` (see the module doc).
pub struct Proxy {
    pub port: u16,
    /// Every request head clients sent, in order.
    pub heads: Arc<Mutex<Vec<String>>>,
    /// Connections accepted.
    pub connections: Arc<AtomicUsize>,
    /// The first connection was dropped.
    pub dropped: Arc<AtomicBool>,
    /// Requests answered 401 for want of a valid bearer token.
    pub rejected: Arc<AtomicUsize>,
}

impl Proxy {
    /// A proxy in front of `store` that drops the first connection after
    /// `drop_after` response bytes and, before it serves the next one,
    /// replaces `bucket/key` with `file`: an object that changes while a
    /// download resumes.
    pub fn replacing_after_drop(
        store: &Arc<Mutex<Store>>,
        drop_after: u64,
        (bucket, key): (&str, &str),
        file: &Path,
    ) -> Proxy {
        let port = store.lock().expect("lock").port;
        let replacer = Arc::clone(store);
        let (bucket, key, file) = (bucket.to_string(), key.to_string(), file.to_path_buf());
        Proxy::start(
            port,
            ProxyRules {
                drop_after: Some(drop_after),
                after_drop: Some(Box::new(move || {
                    replacer
                        .lock()
                        .expect("lock")
                        .put(&bucket, &key, &file, false);
                })),
                ..ProxyRules::default()
            },
        )
    }

    pub fn start(upstream: u16, rules: ProxyRules) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let dropped = Arc::new(AtomicBool::new(false));
        let rejected = Arc::new(AtomicUsize::new(0));
        let (h, c, d, r) = (
            Arc::clone(&heads),
            Arc::clone(&connections),
            Arc::clone(&dropped),
            Arc::clone(&rejected),
        );
        thread::spawn(move || {
            let ProxyRules {
                drop_after,
                mut after_drop,
                bearer,
            } = rules;
            let drop_done = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
            for (n, client) in listener.incoming().enumerate() {
                let Ok(client) = client else { continue };
                c.fetch_add(1, Ordering::SeqCst);
                if n > 0 && drop_after.is_some() {
                    // Hold later connections until the first one was dropped
                    // (or finished), then run the hook once.
                    let (lock, cv) = &*drop_done;
                    let mut done = lock.lock().expect("lock");
                    while !*done {
                        done = cv.wait(done).expect("wait");
                    }
                    if let Some(hook) = after_drop.take() {
                        hook();
                    }
                }
                let limit = if n == 0 { drop_after } else { None };
                let (h, d, r, bearer, drop_done) = (
                    Arc::clone(&h),
                    Arc::clone(&d),
                    Arc::clone(&r),
                    bearer.clone(),
                    Arc::clone(&drop_done),
                );
                thread::spawn(move || {
                    serve(client, upstream, limit, &h, &d, &r, bearer.as_deref());
                    let (lock, cv) = &*drop_done;
                    *lock.lock().expect("lock") = true;
                    cv.notify_all();
                });
            }
        });
        Proxy {
            port,
            heads,
            connections,
            dropped,
            rejected,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().expect("lock").clone()
    }
}

/// Reads one request head (GETs only: no bodies) from `r`.
fn read_head(r: &mut BufReader<TcpStream>) -> Option<String> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        head.push_str(&line);
        if line == "\r\n" || line == "\n" {
            return Some(head);
        }
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn serve(
    client: TcpStream,
    upstream: u16,
    limit: Option<u64>,
    heads: &Mutex<Vec<String>>,
    dropped: &AtomicBool,
    rejected: &AtomicUsize,
    bearer: Option<&(dyn Fn(&str) -> bool + Send + Sync)>,
) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    let (Ok(mut client_w), Ok(mut server_r)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    // Responses back to the client, cut after `limit` bytes; when the
    // upstream closes or the cut comes, the client's socket is shut so
    // that it sees the end at once.
    let client_for_down = client.try_clone().ok();
    let down = thread::spawn(move || {
        let mut sent = 0u64;
        let mut cut = false;
        let mut buf = vec![0u8; 16 << 10];
        loop {
            let n = match server_r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let n = match limit {
                Some(l) => n.min(usize::try_from(l.saturating_sub(sent)).unwrap_or(usize::MAX)),
                None => n,
            };
            if client_w.write_all(&buf[..n]).is_err() {
                break;
            }
            sent += n as u64;
            if limit.is_some_and(|l| sent >= l) {
                cut = true;
                break;
            }
        }
        if let Some(c) = client_for_down {
            let _ = c.shutdown(Shutdown::Both);
        }
        let _ = server_r.shutdown(Shutdown::Both);
        cut
    });
    let mut reader = BufReader::new(client);
    let mut server_w = server;
    while let Some(head) = read_head(&mut reader) {
        heads.lock().expect("lock").push(head.clone());
        if let Some(accept) = bearer {
            let ok = header(&head, "authorization")
                .and_then(|v| v.strip_prefix("Bearer "))
                .is_some_and(accept);
            if !ok {
                rejected.fetch_add(1, Ordering::SeqCst);
                let body = r#"{"error":{"code":401,"message":"Invalid Credentials"}}"#;
                let resp = format!(
                    "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = reader.get_mut().write_all(resp.as_bytes());
                break;
            }
        }
        if server_w.write_all(head.as_bytes()).is_err() {
            break;
        }
    }
    let _ = server_w.shutdown(Shutdown::Both);
    if down.join().unwrap_or(false) {
        dropped.store(true, Ordering::SeqCst);
    }
}

/// A service-account key made at test time with openssl.
pub struct TestKey {
    /// The key file (`GOOGLE_APPLICATION_CREDENTIALS`).
    pub file: PathBuf,
    pub email: String,
    /// The public half (PKCS#1 RSAPublicKey DER).
    pub public_der: Vec<u8>,
}

impl TestKey {
    /// Makes a 2048-bit RSA key in `dir` and a key file naming `token_uri`.
    pub fn make(dir: &Path, token_uri: &str) -> Option<TestKey> {
        if !super::have_tool("openssl") {
            eprintln!("SKIP: openssl is not installed");
            return None;
        }
        let pem = dir.join("sa.pem");
        let der = dir.join("sa-pub.der");
        let ok = |args: &[&str]| {
            Command::new("openssl")
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        let pem_s = pem.to_str().expect("utf8");
        assert!(ok(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            pem_s
        ]));
        assert!(ok(&[
            "rsa",
            "-in",
            pem_s,
            "-RSAPublicKey_out",
            "-outform",
            "DER",
            "-out",
            der.to_str().expect("utf8")
        ]));
        let email = "importer@test-project.iam.gserviceaccount.com".to_string();
        let key = serde_json::json!({
            "type": "service_account",
            "project_id": "test-project",
            "private_key_id": "0123456789abcdef",
            "private_key": std::fs::read_to_string(&pem).expect("pem"),
            "client_email": email,
            "client_id": "1",
            "token_uri": token_uri,
        });
        let file = dir.join("credentials.json");
        std::fs::write(&file, key.to_string()).expect("key file");
        Some(TestKey {
            file,
            email,
            public_der: std::fs::read(&der).expect("der"),
        })
    }
}

/// Tokens a [`TokenServer`] issued, with their expiry.
pub type Issued = Arc<Mutex<Vec<(String, Instant)>>>;

/// An OAuth2 token endpoint for the JWT bearer flow on loopback.
pub struct TokenServer {
    pub port: u16,
    pub issued: Issued,
    /// Requests refused (bad signature, bad claims).
    pub refused: Arc<AtomicUsize>,
}

impl TokenServer {
    /// Accepts JWTs signed by the key whose public half is `public_der`,
    /// issued by `email`, for `aud`; tokens live `lifetime` seconds.
    pub fn start(public_der: Vec<u8>, email: String, lifetime: u64) -> TokenServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind token server");
        let port = listener.local_addr().expect("addr").port();
        let aud = format!("http://127.0.0.1:{port}/token");
        let issued: Issued = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(AtomicUsize::new(0));
        let (iss, refs) = (Arc::clone(&issued), Arc::clone(&refused));
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (status, body) = match answer(
                    stream.try_clone().expect("clone"),
                    &public_der,
                    &email,
                    &aud,
                ) {
                    Ok(()) => {
                        let mut list = iss.lock().expect("lock");
                        let token = format!("tok-{}-{}", list.len(), port);
                        list.push((
                            token.clone(),
                            Instant::now() + Duration::from_secs(lifetime),
                        ));
                        ("200 OK", serde_json::json!({"access_token": token, "expires_in": lifetime, "token_type": "Bearer"}).to_string())
                    }
                    Err(why) => {
                        refs.fetch_add(1, Ordering::SeqCst);
                        (
                            "400 Bad Request",
                            serde_json::json!({"error": "invalid_grant", "error_description": why})
                                .to_string(),
                        )
                    }
                };
                let mut s = stream;
                let _ = write!(
                    s,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        TokenServer {
            port,
            issued,
            refused,
        }
    }

    pub fn uri(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    /// Whether `token` was issued here and has not expired.
    pub fn accepts(issued: &Issued) -> impl Fn(&str) -> bool + Send + Sync + 'static {
        let issued = Arc::clone(issued);
        move |t| {
            issued
                .lock()
                .expect("lock")
                .iter()
                .any(|(tok, until)| tok == t && Instant::now() < *until)
        }
    }
}

/// Reads a token request and checks its JWT: form fields, RS256 signature,
/// iss, aud, scope, iat/exp.
fn answer(stream: TcpStream, public_der: &[u8], email: &str, aud: &str) -> Result<(), String> {
    let mut r = BufReader::new(stream);
    let head = read_head(&mut r).ok_or("no request")?;
    if !head.starts_with("POST /token ") {
        return Err(format!("unexpected request {:?}", head.lines().next()));
    }
    let len: usize = header(&head, "content-length")
        .and_then(|v| v.parse().ok())
        .ok_or("no content-length")?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).map_err(|e| e.to_string())?;
    let body = String::from_utf8(body).map_err(|e| e.to_string())?;
    let field = |name: &str| {
        body.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == name).then(|| percent_decode(v))
        })
    };
    if field("grant_type").as_deref() != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
        return Err("wrong grant_type".into());
    }
    let jwt = field("assertion").ok_or("no assertion")?;
    let parts: Vec<&str> = jwt.split('.').collect();
    let [h, c, s] = parts.as_slice() else {
        return Err("not a JWT".into());
    };
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let sig = b64.decode(s).map_err(|e| e.to_string())?;
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        public_der,
    )
    .verify(format!("{h}.{c}").as_bytes(), &sig)
    .map_err(|_| "Invalid JWT Signature.".to_string())?;
    let header: serde_json::Value =
        serde_json::from_slice(&b64.decode(h).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    if header["alg"] != "RS256" {
        return Err("alg is not RS256".into());
    }
    let claims: serde_json::Value =
        serde_json::from_slice(&b64.decode(c).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let iat = claims["iat"].as_u64().ok_or("no iat")?;
    let exp = claims["exp"].as_u64().ok_or("no exp")?;
    if claims["iss"] != email
        || claims["aud"] != aud
        || !claims["scope"]
            .as_str()
            .is_some_and(|s| s.contains("devstorage.read_only"))
        || iat > now + 60
        || exp <= now
        || exp > iat + 3600
    {
        return Err(format!("bad claims {claims}"));
    }
    Ok(())
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let v = u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap_or(b'?');
                out.push(v);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
