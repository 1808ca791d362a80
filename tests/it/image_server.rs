//! `cdi-containerimage-server`, the node-pull image server, as a process:
//! CDI's flags, the one-file rule, HTTP with HEAD, Range and keep-alive,
//! `/info`, the ready and done files; and a node-pull import by the
//! importer in pod mode from the real server, compared with qemu-img.
//! (Running it inside a FROM-scratch image as UID 107 is the container
//! test's part: `tests/container/run.sh`.)

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cdi::{assert_prefix_equals, sample_qcow2, Pod};
use crate::common::{server_bin, tempdir};

const MIB: u64 = 1 << 20;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind")
        .port()
}

/// A server process serving `dir`, with its shared directory.
struct Server {
    child: Child,
    port: u16,
    ready: PathBuf,
    done: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts the server on `dir` as CDI's sidecar starts it, with `env`
    /// as the image's environment, and waits for the ready file.
    fn start(dir: &Path, shared: &Path, env: &[(&str, &str)]) -> Server {
        let port = free_port();
        let ready = shared.join("ready");
        let done = shared.join("done");
        let child = Command::new(server_bin())
            .args(["-p", &port.to_string(), "-image-dir"])
            .arg(dir)
            .arg("-ready-file")
            .arg(&ready)
            .arg("-done-file")
            .arg(&done)
            .env_clear()
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the server");
        let mut s = Server {
            child,
            port,
            ready,
            done,
        };
        let start = Instant::now();
        while !s.ready.exists() {
            if let Ok(Some(st)) = s.child.try_wait() {
                panic!("the server exited before it was ready: {st}");
            }
            assert!(start.elapsed() < Duration::from_secs(20), "no ready file");
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }

    /// Waits for the process to exit; its exit code.
    fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                return st.code();
            }
            assert!(start.elapsed() < limit, "the server did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One response.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A client connection that can carry several requests.
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    fn open(port: u16) -> Conn {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        Conn {
            reader: BufReader::new(s.try_clone().expect("clone")),
            writer: s,
        }
    }

    /// Sends `method path` with `headers` and reads the answer.
    fn send(&mut self, method: &str, path: &str, headers: &[&str]) -> Resp {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
        for h in headers {
            req.push_str(h);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        self.writer.write_all(req.as_bytes()).expect("send");
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("status line");
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {line:?}"));
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            self.reader.read_line(&mut h).expect("header");
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (n, v) = h.split_once(':').expect("header colon");
            headers.push((n.to_string(), v.trim().to_string()));
        }
        let len: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .expect("content-length");
        let mut body = vec![0; if method == "HEAD" { 0 } else { len }];
        self.reader.read_exact(&mut body).expect("body");
        Resp {
            status,
            headers,
            body,
        }
    }
}

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0; n];
    streamdisk::testing::Prng::new(seed).fill(&mut v);
    v
}

#[test]
fn help_exits_at_once() {
    let start = Instant::now();
    let out = Command::new(server_bin()).arg("-h").output().expect("run");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(out.status.code(), Some(0));
    let usage = String::from_utf8_lossy(&out.stderr);
    for flag in [
        "-p int",
        "-image-dir string",
        "-ready-file string",
        "-done-file string",
    ] {
        assert!(usage.contains(flag), "{usage}");
    }
    assert!(usage.contains("(default 8100)"), "{usage}");
}

#[test]
fn serves_the_one_file_with_head_ranges_and_keep_alive() {
    let work = tempdir();
    let dir = work.path().join("disk");
    let shared = work.path().join("shared");
    fs::create_dir(&dir).expect("mkdir");
    fs::create_dir(&shared).expect("mkdir");
    let data = random_bytes(300_000, 7);
    fs::write(dir.join("fedora.qcow2"), &data).expect("write");
    let mut srv = Server::start(
        &dir,
        &shared,
        &[
            ("PATH", "/bin"),
            ("KUBEVIRT_IO_OS", "fedora"),
            ("ODD", "a<b>&\"c\"\n\u{7}"),
        ],
    );
    assert_eq!(
        fs::read_to_string(&srv.ready).expect("ready"),
        "fedora.qcow2"
    );

    let mut c = Conn::open(srv.port);
    let whole = c.send("GET", "/fedora.qcow2", &[]);
    assert_eq!(whole.status, 200);
    assert_eq!(whole.body, data);
    assert_eq!(whole.header("accept-ranges"), Some("bytes"));
    let modified = whole
        .header("last-modified")
        .expect("last-modified")
        .to_string();

    // The same connection carries the next requests.
    let head = c.send("HEAD", "/fedora.qcow2", &[]);
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("300000"));
    let part = c.send("GET", "/fedora.qcow2", &["Range: bytes=1000-1999"]);
    assert_eq!(part.status, 206);
    assert_eq!(part.header("content-range"), Some("bytes 1000-1999/300000"));
    assert_eq!(part.body, &data[1000..2000]);
    let tail = c.send("GET", "/fedora.qcow2", &["Range: bytes=-10"]);
    assert_eq!(tail.body, &data[data.len() - 10..]);
    let open = c.send(
        "GET",
        "/fedora.qcow2",
        &["Range: bytes=299990-", &format!("If-Range: {modified}")],
    );
    assert_eq!(open.status, 206);
    assert_eq!(open.body, &data[299_990..]);
    let stale = c.send(
        "GET",
        "/fedora.qcow2",
        &[
            "Range: bytes=0-9",
            "If-Range: Thu, 01 Jan 1970 00:00:00 GMT",
        ],
    );
    assert_eq!(
        (stale.status, stale.body.len()),
        (200, data.len()),
        "a stale If-Range gets it whole"
    );
    let past = c.send("GET", "/fedora.qcow2", &["Range: bytes=300000-"]);
    assert_eq!(past.status, 416);
    assert_eq!(past.header("content-range"), Some("bytes */300000"));
    assert_eq!(c.send("GET", "/other.img", &[]).status, 404);
    assert_eq!(c.send("POST", "/fedora.qcow2", &[]).status, 405);
    let listing = c.send("GET", "/", &[]);
    assert!(String::from_utf8_lossy(&listing.body).contains("href=\"fedora.qcow2\""));

    // /info: the process environment as CDI's ServerInfo, Go's escaping.
    let info = c.send("GET", "/info", &[]);
    assert_eq!(info.status, 200);
    assert_eq!(info.header("content-type"), Some("application/json"));
    let text = String::from_utf8(info.body).expect("utf8");
    assert!(text.ends_with("}\n"), "{text:?}");
    assert!(
        text.contains(r#""ODD=a\u003cb\u003e\u0026\"c\"\n\u0007""#),
        "{text}"
    );
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    let env: Vec<&str> = v["env"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(|e| e.as_str())
        .collect();
    assert!(env.contains(&"KUBEVIRT_IO_OS=fedora"), "{env:?}");
    assert!(env.contains(&"ODD=a<b>&\"c\"\n\u{7}"), "{env:?}");

    // Absent until the done file appears; then both files go and it exits 0.
    std::thread::sleep(Duration::from_millis(300));
    assert!(srv.child.try_wait().expect("wait").is_none());
    fs::write(&srv.done, "").expect("done");
    assert_eq!(srv.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(
        !srv.done.exists() && !srv.ready.exists(),
        "ready and done files removed"
    );
}

#[test]
fn refuses_what_cdi_refuses() {
    let work = tempdir();
    let shared = work.path().join("shared");
    fs::create_dir(&shared).expect("mkdir");
    let run = |dir: &Path, extra: &[&str]| {
        let out = Command::new(server_bin())
            .args(extra)
            .arg("-p")
            .arg(free_port().to_string())
            .arg("-image-dir")
            .arg(dir)
            .arg("-ready-file")
            .arg(shared.join("ready"))
            .arg("-done-file")
            .arg(shared.join("done"))
            .stdin(Stdio::null())
            .output()
            .expect("run");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let two = work.path().join("two");
    fs::create_dir(&two).expect("mkdir");
    fs::write(two.join("a.img"), b"a").expect("write");
    fs::write(two.join("b.img"), b"b").expect("write");
    let (code, err) = run(&two, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("Invalid container image"), "{err}");

    let nested = work.path().join("nested");
    fs::create_dir_all(nested.join("disk")).expect("mkdir");
    let (code, err) = run(&nested, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("Invalid container image"), "{err}");

    let (code, err) = run(&work.path().join("missing"), &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("Failed get image filename"), "{err}");
    assert!(
        !shared.join("ready").exists(),
        "no ready file after a refusal"
    );

    let (code, err) = run(&two, &["-bogus"]);
    assert_eq!(code, Some(2), "Go's exit code for a bad flag: {err}");
    assert!(
        err.contains("flag provided but not defined: -bogus"),
        "{err}"
    );
}

/// The importer in pod mode next to the real server: CDI's node-pull
/// environment, the disk named by the ready file, labels from `/info`,
/// and the server gone once the importer writes the done file.
#[test]
fn node_pull_import_from_the_real_server() {
    let work = tempdir();
    let (img, raw) = sample_qcow2(work.path(), 8 * MIB);
    let dir = work.path().join("disk");
    let shared = work.path().join("shared");
    fs::create_dir(&dir).expect("mkdir");
    fs::create_dir(&shared).expect("mkdir");
    fs::rename(&img, dir.join("fedora.qcow2")).expect("move");
    let mut srv = Server::start(
        &dir,
        &shared,
        &[
            ("PATH", "/usr/bin"),
            ("INSTANCETYPE_KUBEVIRT_IO_DEFAULT_INSTANCETYPE", "u1.small"),
            ("KUBEVIRT_IO_OS", "fedora"),
        ],
    );
    let mut pod = Pod::new();
    pod.http(&format!("http://localhost:{}/disk.img", srv.port))
        .env("IMPORTER_IMAGE_SIZE", "8Mi")
        .env("IMPORTER_PULL_METHOD", "node")
        .env("IMPORTER_READY_FILE", srv.ready.to_str().expect("utf8"))
        .env("IMPORTER_DONE_FILE", srv.done.to_str().expect("utf8"));
    let end = pod.run();
    end.assert_code(0).assert_message(
        r#"{"scratchSpaceRequired":false,"preallocationApplied":false,"labels":{"instancetype.kubevirt.io/default-instancetype":"u1.small","kubevirt.io/os":"fedora"},"message":"Import Complete"}"#,
    );
    assert_prefix_equals(&pod.disk(), &raw, 8 * MIB);
    assert_eq!(
        srv.wait_exit(Duration::from_secs(10)),
        Some(0),
        "the server exits after the done file"
    );
}
