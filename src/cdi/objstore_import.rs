//! `IMPORTER_SOURCE=s3` and `IMPORTER_SOURCE=gcs`: an object streamed from
//! S3 or GCS into the target through the same one-pass pipeline as an HTTP
//! import (see [`super::http_import::disk_image`]), every format included,
//! with no scratch space and progress as it downloads.
//!
//! CDI's envelope is kept. S3: `IMPORTER_ENDPOINT` in CDI's path-style form
//! `scheme://host[:port]/BUCKET/KEY`, or an AWS virtual-host URL
//! (`https://BUCKET.s3.REGION.amazonaws.com/KEY`, which CDI cannot read);
//! the region of an `s3.REGION.amazonaws.com` host, otherwise
//! `AWS_REGION` / `AWS_DEFAULT_REGION`, then `us-east-1`; keys from
//! `IMPORTER_ACCESS_KEY_ID` / `IMPORTER_SECRET_KEY`, and anonymous requests
//! when they are empty (CDI fails there). GCS: `gs://BUCKET/OBJECT` or
//! `http(s)://HOST/BUCKET/OBJECT` (HOST being the storage endpoint), the
//! service-account key at `/google/credentials.json` when it exists,
//! anonymous otherwise. CAs come from `IMPORTER_CERT_DIR` and `/proxycerts/`
//! for both.

use super::config::{ContentType, PodConfig};
use super::http_import::{self, HttpContext};
use super::logging::display_url;
use super::outcome::Outcome;
use crate::source::gcs::{GcsCredentials, GcsSource};
use crate::source::s3::{location, Keys, S3Credentials};
use crate::source::HttpOptions;

/// Which object store the pod reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Store {
    /// `IMPORTER_SOURCE=s3`.
    S3,
    /// `IMPORTER_SOURCE=gcs`.
    Gcs,
}

impl Store {
    fn name(self) -> &'static str {
        match self {
            Store::S3 => "s3",
            Store::Gcs => "gcs",
        }
    }
}

/// CDI's prefix for failures to reach the source.
fn connect_failed(store: Store, detail: impl std::fmt::Display) -> Outcome {
    Outcome::Failed(format!(
        "Unable to connect to {} data source: {detail}",
        store.name()
    ))
}

/// Runs the import described by `ctx` from `store`.
pub(crate) fn run(ctx: &HttpContext<'_>, store: Store) -> Outcome {
    let mut http = match http_import::http_options(ctx.cfg, ctx.paths) {
        Ok(h) => h,
        Err(o) => return o,
    };
    // CDI's object-store sources send no basic auth and no extra headers:
    // the pod's keys are S3 keys, and headers would reach the store.
    http.basic_auth = None;
    http.extra_headers.clear();
    http.resolve = ctx.cfg.resolve.clone();
    let locator = match store {
        Store::S3 => s3_locator(ctx.cfg, &mut http),
        Store::Gcs => gcs_locator(ctx.cfg, ctx.paths, &mut http),
    };
    let locator = match locator {
        Ok(l) => l,
        Err(e) => return connect_failed(store, e),
    };
    tracing::info!(
        endpoint = %display_url(&ctx.cfg.endpoint),
        object = %locator,
        content_type = ?ctx.cfg.content_type,
        block = ctx.block,
        "starting {} import",
        store.name()
    );
    let cfg = PodConfig {
        endpoint: locator,
        ..ctx.cfg.clone()
    };
    let ctx = HttpContext {
        cfg: &cfg,
        paths: ctx.paths,
        block: ctx.block,
        rt: ctx.rt,
        counter: std::sync::Arc::clone(&ctx.counter),
        redactor: ctx.redactor,
        registry: false,
    };
    match cfg.content_type {
        ContentType::KubeVirt => http_import::disk_image(&ctx, http),
        ContentType::Archive => http_import::archive_import(&ctx, http),
    }
}

/// The `s3://` locator for the pod's endpoint, with the endpoint, style,
/// region and keys set in `http`.
fn s3_locator(cfg: &PodConfig, http: &mut HttpOptions) -> Result<String, String> {
    let loc = location::parse_pod_endpoint(&cfg.endpoint).map_err(|e| e.to_string())?;
    http.s3.endpoint = Some(loc.endpoint.clone());
    http.s3.path_style = Some(loc.path_style);
    // The region of an AWS host name, as CDI; otherwise the environment's,
    // then us-east-1 (the source's own order).
    http.s3.region = loc.region.clone();
    http.s3.credentials = match &cfg.basic_auth {
        Some((id, secret)) => S3Credentials::Static(Keys {
            access_key_id: id.clone(),
            secret_access_key: secret.clone(),
            session_token: None,
        }),
        None => S3Credentials::Anonymous,
    };
    Ok(loc.object.display())
}

/// The `gs://` locator for the pod's endpoint, with the endpoint and the
/// key file set in `http`.
fn gcs_locator(
    cfg: &PodConfig,
    paths: &super::paths::PodPaths,
    http: &mut HttpOptions,
) -> Result<String, String> {
    let (display, endpoint) = GcsSource::pod_parts(&cfg.endpoint).map_err(|e| e.to_string())?;
    if endpoint.is_some() {
        http.gcs.endpoint = endpoint;
    }
    http.gcs.credentials = if paths.google_credentials.is_file() {
        GcsCredentials::File(paths.google_credentials.clone())
    } else {
        GcsCredentials::Anonymous
    };
    Ok(display)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdi::paths::PodPaths;

    fn cfg(endpoint: &str, keys: Option<(&str, &str)>) -> PodConfig {
        let mut vars = vec![
            ("PREALLOCATION".to_string(), "false".to_string()),
            ("IMPORTER_ENDPOINT".to_string(), endpoint.to_string()),
        ];
        if let Some((id, secret)) = keys {
            vars.push(("IMPORTER_ACCESS_KEY_ID".to_string(), id.to_string()));
            vars.push(("IMPORTER_SECRET_KEY".to_string(), secret.to_string()));
        }
        PodConfig::from_vars(&vars).expect("config")
    }

    #[test]
    fn s3_endpoints_become_locators() {
        let mut http = HttpOptions::default();
        let c = cfg(
            "http://10.1.2.3:9000/bkt/dir/disk%20a.qcow2",
            Some(("AK", "SK")),
        );
        assert_eq!(
            s3_locator(&c, &mut http).expect("s3"),
            "s3://bkt/dir/disk a.qcow2"
        );
        assert_eq!(http.s3.endpoint.as_deref(), Some("http://10.1.2.3:9000"));
        assert_eq!(http.s3.path_style, Some(true));
        assert_eq!(http.s3.region, None);
        assert!(
            matches!(&http.s3.credentials, S3Credentials::Static(k) if k.access_key_id == "AK")
        );

        let mut http = HttpOptions::default();
        let c = cfg("https://bkt.s3.eu-west-3.amazonaws.com/k.img", None);
        assert_eq!(s3_locator(&c, &mut http).expect("vh"), "s3://bkt/k.img");
        assert_eq!(
            http.s3.endpoint.as_deref(),
            Some("https://s3.eu-west-3.amazonaws.com")
        );
        assert_eq!(http.s3.path_style, Some(false));
        assert_eq!(http.s3.region.as_deref(), Some("eu-west-3"));
        assert_eq!(http.s3.credentials, S3Credentials::Anonymous);

        assert!(s3_locator(&cfg("http://h/only-bucket", None), &mut http).is_err());
    }

    #[test]
    fn gcs_endpoints_become_locators() {
        let d = tempfile::tempdir().expect("tempdir");
        let paths = PodPaths::under(d.path());
        let mut http = HttpOptions::default();
        let c = cfg("http://127.0.0.1:4443/bkt/a/b.img", None);
        assert_eq!(
            gcs_locator(&c, &paths, &mut http).expect("gcs"),
            "gs://bkt/a/b.img"
        );
        assert_eq!(http.gcs.endpoint.as_deref(), Some("http://127.0.0.1:4443"));
        assert_eq!(http.gcs.credentials, GcsCredentials::Anonymous);

        std::fs::create_dir_all(d.path().join("google")).expect("mkdir");
        std::fs::write(&paths.google_credentials, "{}").expect("write");
        let mut http = HttpOptions::default();
        let c = cfg("gs://bkt/o", None);
        assert_eq!(
            gcs_locator(&c, &paths, &mut http).expect("gs"),
            "gs://bkt/o"
        );
        assert_eq!(http.gcs.endpoint, None);
        assert_eq!(
            http.gcs.credentials,
            GcsCredentials::File(paths.google_credentials.clone())
        );
    }
}
