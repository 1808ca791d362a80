//! A stand-in for the Kubernetes API server, for the DataImportCron
//! poller: HTTPS on 127.0.0.1 with a certificate for that address, one
//! DataImportCron object at its API path, GET and JSON-patch PATCH.
//!
//! No real API server can run on the test machines (no etcd, no cluster),
//! so this checks what a real one would refuse: the bearer token (401),
//! the patch's content type (415), the patch document (422: an array of
//! `add` operations on existing `/metadata/annotations` with string
//! values), and applies the patch so that a second poll sees the result.
//! Every request is recorded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::server::{make_ca_and_cert, rustls_server_config, TestCerts};

/// One request the stand-in received.
#[derive(Debug, Clone)]
pub struct ApiRequest {
    pub method: String,
    pub path: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The status answered.
    pub status: u16,
}

impl ApiRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

struct State {
    token: String,
    path: String,
    object: Mutex<serde_json::Value>,
    log: Mutex<Vec<ApiRequest>>,
    stop: AtomicBool,
}

/// A running stand-in; stops when dropped.
pub struct KubeApi {
    pub port: u16,
    pub certs: TestCerts,
    state: Arc<State>,
}

impl KubeApi {
    /// Serves `object` at the API path of DataImportCron `ns/name`, to
    /// clients presenting `token`.
    pub fn start(ns: &str, name: &str, token: &str, object: serde_json::Value) -> KubeApi {
        let certs = make_ca_and_cert("127.0.0.1");
        let tls = Arc::new(rustls_server_config(
            &certs.server_cert_pem,
            &certs.server_key_pem,
        ));
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let state = Arc::new(State {
            token: token.to_string(),
            path: format!("/apis/cdi.kubevirt.io/v1beta1/namespaces/{ns}/dataimportcrons/{name}"),
            object: Mutex::new(object),
            log: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let st = Arc::clone(&state);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(tcp) = conn else { continue };
                let st = Arc::clone(&st);
                let tls = Arc::clone(&tls);
                std::thread::spawn(move || {
                    let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
                    let Ok(sc) = rustls::ServerConnection::new(tls) else {
                        return;
                    };
                    let mut stream = rustls::StreamOwned::new(sc, tcp);
                    while let Some(req) = read_request(&mut stream) {
                        let (status, body) = answer(&st, &req);
                        let reason = match status {
                            200 => "OK",
                            401 => "Unauthorized",
                            404 => "Not Found",
                            405 => "Method Not Allowed",
                            415 => "Unsupported Media Type",
                            _ => "Unprocessable Entity",
                        };
                        let head = format!(
                            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                            body.len()
                        );
                        st.log
                            .lock()
                            .expect("lock")
                            .push(ApiRequest { status, ..req });
                        if stream.write_all(head.as_bytes()).is_err()
                            || stream.write_all(&body).is_err()
                            || stream.flush().is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        KubeApi { port, certs, state }
    }

    /// The requests so far.
    pub fn requests(&self) -> Vec<ApiRequest> {
        self.state.log.lock().expect("lock").clone()
    }

    /// The object as patched so far.
    pub fn object(&self) -> serde_json::Value {
        self.state.object.lock().expect("lock").clone()
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Reads one request with its body (Content-Length only).
fn read_request(stream: &mut impl Read) -> Option<ApiRequest> {
    let mut r = BufReader::with_capacity(1, stream);
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (n, v) = h.split_once(':')?;
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(ApiRequest {
        method,
        path,
        headers,
        body,
        status: 0,
    })
}

/// What the API server would answer.
fn answer(st: &State, req: &ApiRequest) -> (u16, Vec<u8>) {
    let status = |code: u16, msg: &str| {
        let body = serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": msg, "code": code});
        (code, body.to_string().into_bytes())
    };
    if req.header("authorization") != Some(&format!("Bearer {}", st.token)) {
        return status(401, "Unauthorized");
    }
    if req.path != st.path {
        return status(404, "dataimportcrons.cdi.kubevirt.io not found");
    }
    match req.method.as_str() {
        "GET" => (
            200,
            st.object.lock().expect("lock").to_string().into_bytes(),
        ),
        "PATCH" => {
            if req.header("content-type") != Some("application/json-patch+json") {
                return status(415, "the body of the request was in an unknown format");
            }
            let Ok(serde_json::Value::Array(ops)) = serde_json::from_slice(&req.body) else {
                return status(422, "the patch is not a JSON array");
            };
            let mut object = st.object.lock().expect("lock");
            let mut patched = object.clone();
            for op in &ops {
                let (Some("add"), Some(path), Some(value)) = (
                    op.get("op").and_then(|v| v.as_str()),
                    op.get("path").and_then(|v| v.as_str()),
                    op.get("value").and_then(|v| v.as_str()),
                ) else {
                    return status(422, "only add operations with string values are expected");
                };
                let Some(key) = path.strip_prefix("/metadata/annotations/") else {
                    return status(422, "only annotations are expected");
                };
                let key = key.replace("~1", "/").replace("~0", "~");
                let Some(annotations) = patched
                    .pointer_mut("/metadata/annotations")
                    .and_then(|a| a.as_object_mut())
                else {
                    return status(422, "add operation does not apply: doc is missing path");
                };
                annotations.insert(key, serde_json::Value::String(value.to_string()));
            }
            *object = patched.clone();
            (200, patched.to_string().into_bytes())
        }
        _ => status(405, "method not allowed"),
    }
}
