//! The HTTP source honours the proxy environment (`http_proxy`, `no_proxy`),
//! as CDI passes it to the importer pod. The imports run as subprocesses:
//! the proxy variables are process-wide, and the other tests of this binary
//! run in the same process.

use std::path::Path;

use crate::common::server::{Body, TestServer};
use crate::common::Streamdisk;

/// Imports `url` into a file with only `vars` as proxy settings.
fn import(url: &str, out: &Path, vars: &[(&str, &str)]) -> crate::common::Run {
    let mut sd = Streamdisk::convert(url, out).args(["--retries", "2", "--stall-timeout", "3"]);
    for var in [
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
    ] {
        sd = match vars.iter().find(|(k, _)| *k == var) {
            Some((k, v)) => sd.env(k, v),
            None => sd.env_remove(var),
        };
    }
    sd.run()
}

#[test]
fn proxy_environment_is_honoured() {
    let body = vec![0x5au8; 4096];
    // The test server answers any request target, so it can play a forward
    // proxy: it logs the absolute-form URL the client sends to a proxy.
    let proxy = TestServer::serve(Body::mem(body.clone()));
    let dir = crate::common::tempdir();

    // A name that cannot resolve: only the proxy can answer it.
    let url = "http://streamdisk-proxy-test.invalid/disk.img";
    let out = dir.path().join("via-proxy.raw");
    import(url, &out, &[("http_proxy", &proxy.base())]).assert_ok();
    assert_eq!(std::fs::read(&out).expect("output"), body);
    let log = proxy.log();
    // The download, and the range read of the last sector (a raw image's
    // trailer check), both through the proxy.
    assert!(!log.is_empty(), "{log:?}");
    assert!(
        log.iter().all(|r| r.path == url),
        "the proxy got absolute-form requests: {log:?}"
    );
    let through_proxy = log.len();

    // no_proxy sends matching hosts direct.
    let direct = TestServer::serve(Body::mem(vec![7u8; 4096]));
    let out = dir.path().join("direct.raw");
    import(
        &direct.url("/x"),
        &out,
        &[("http_proxy", &proxy.base()), ("no_proxy", "127.0.0.1")],
    )
    .assert_ok();
    assert_eq!(std::fs::read(&out).expect("output"), vec![7u8; 4096]);
    assert_eq!(direct.log()[0].path, "/x");
    assert_eq!(
        proxy.log().len(),
        through_proxy,
        "no_proxy host went through the proxy"
    );
}
