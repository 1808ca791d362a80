//! The HTTP source honours the proxy environment (`http_proxy`, `no_proxy`),
//! as CDI passes it to the importer pod. A test binary of its own, because
//! it changes process-wide environment variables.

use std::io::Read;
use std::time::Duration;

use crate::common::server::{Body, TestServer};
use streamdisk::source::{self, HttpOptions, SourceSpec};

fn fetch(url: &str) -> Result<Vec<u8>, String> {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let opts = HttpOptions {
        stall_timeout: Duration::from_secs(3),
        max_attempts: 2,
        ..HttpOptions::default()
    };
    let mut src = source::open(&SourceSpec::parse(url).expect("url"), &opts, rt.handle())
        .map_err(|e| streamdisk::error_chain(&e))?;
    let mut out = Vec::new();
    src.reader
        .read_to_end(&mut out)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

#[test]
fn proxy_environment_is_honoured() {
    let body = b"through the proxy".to_vec();
    // The test server answers any request target, so it can play a forward
    // proxy: it logs the absolute-form URL the client sends to a proxy.
    let proxy = TestServer::serve(Body::mem(body.clone()));
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "no_proxy",
        "all_proxy",
    ] {
        std::env::remove_var(var);
    }
    std::env::set_var("http_proxy", proxy.base());

    // A name that cannot resolve: only the proxy can answer it.
    let url = "http://streamdisk-proxy-test.invalid/disk.img";
    assert_eq!(fetch(url).expect("fetched through the proxy"), body);
    let log = proxy.log();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].path, url, "the proxy got an absolute-form request");

    // no_proxy sends matching hosts direct.
    let direct = TestServer::serve(Body::mem(b"direct".to_vec()));
    std::env::set_var("no_proxy", "127.0.0.1");
    assert_eq!(fetch(&direct.url("/x")).expect("direct"), b"direct");
    assert_eq!(direct.log()[0].path, "/x");
    assert_eq!(proxy.log().len(), 1, "no_proxy host went through the proxy");
}
