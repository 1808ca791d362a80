//! Where an S3 object is: the bucket and key (from `s3://BUCKET/KEY`, or
//! from CDI's endpoint forms in pod mode), and the URL a GET for it goes to,
//! path-style (`https://HOST/BUCKET/KEY`) or virtual-host style
//! (`https://BUCKET.HOST/KEY`).
//!
//! CDI forces path-style and guesses the region from the host's first DNS
//! label; here the style is chosen per endpoint (path-style where a bucket
//! cannot be a host name: IP addresses, custom ports, bucket names that are
//! not DNS labels) and the region is only read from AWS host names.

use reqwest::Url;

use super::S3Error;
use crate::source::percent;

/// A bucket and a key in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Object {
    pub bucket: String,
    pub key: String,
}

impl Object {
    /// Parses `s3://BUCKET/KEY`. The key is taken literally (no percent
    /// decoding), as the AWS CLI takes it.
    pub(crate) fn parse(s: &str) -> Result<Object, S3Error> {
        let bad = |reason: &str| S3Error::BadLocation {
            location: s.to_string(),
            reason: reason.to_string(),
        };
        let rest = s
            .get(..5)
            .filter(|p| p.eq_ignore_ascii_case("s3://"))
            .and_then(|_| s.get(5..))
            .ok_or_else(|| bad("expected s3://BUCKET/KEY"))?;
        let (bucket, key) = rest
            .split_once('/')
            .ok_or_else(|| bad("no key after the bucket (expected s3://BUCKET/KEY)"))?;
        Object::new(bucket, key).map_err(|reason| bad(&reason))
    }

    /// Checks a bucket and key taken apart elsewhere.
    pub(crate) fn new(bucket: &str, key: &str) -> Result<Object, String> {
        if bucket.is_empty() {
            return Err("the bucket name is empty".to_string());
        }
        if bucket
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "/?#@:".contains(c))
        {
            return Err(format!("{bucket:?} is not a bucket name"));
        }
        if key.is_empty() {
            return Err("the key is empty".to_string());
        }
        if key.chars().any(char::is_control) {
            return Err("the key holds control characters".to_string());
        }
        // A URL path cannot carry these segments: they would be resolved
        // away (and the signature would not match what the server sees).
        if key.split('/').any(|seg| seg == "." || seg == "..") {
            return Err(
                "keys with \".\" or \"..\" segments cannot be addressed by URL".to_string(),
            );
        }
        Ok(Object {
            bucket: bucket.to_string(),
            key: key.to_string(),
        })
    }

    /// `s3://BUCKET/KEY`, for messages.
    pub(crate) fn display(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }
}

/// How the bucket is addressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Style {
    /// `HOST/BUCKET/KEY`.
    Path,
    /// `BUCKET.HOST/KEY`.
    VirtualHost,
}

/// AWS's regional endpoint for `region`.
pub(crate) fn aws_endpoint(region: &str) -> String {
    let suffix = if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    };
    format!("https://s3.{region}.{suffix}")
}

/// Parses an endpoint URL (`--s3-endpoint`, or the pod's `scheme://host`).
pub(crate) fn parse_endpoint(s: &str) -> Result<Url, S3Error> {
    let bad = |reason: String| S3Error::BadEndpoint {
        endpoint: s.to_string(),
        reason,
    };
    let url = Url::parse(s).map_err(|e| bad(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("only http and https are supported".to_string()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host".to_string()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "credentials go in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, not in the URL"
                .to_string(),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("an endpoint has no query or fragment".to_string()));
    }
    Ok(url)
}

/// The addressing style for `bucket` on `endpoint`: `forced` when given
/// (`Some(true)` for path-style), otherwise path-style when the bucket
/// cannot be a host name label there (IP address or custom port endpoints,
/// bucket names that are not lowercase DNS names, dotted names over TLS,
/// whose certificates would not match), virtual-host style otherwise.
pub(crate) fn choose_style(endpoint: &Url, bucket: &str, forced: Option<bool>) -> Style {
    match forced {
        Some(true) => return Style::Path,
        Some(false) => return Style::VirtualHost,
        None => {}
    }
    let ip_host = endpoint
        .host_str()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
        .is_some_and(|h| h.parse::<std::net::IpAddr>().is_ok());
    if ip_host
        || endpoint.port().is_some()
        || !dns_compatible(bucket)
        || (endpoint.scheme() == "https" && bucket.contains('.'))
    {
        Style::Path
    } else {
        Style::VirtualHost
    }
}

/// Whether `bucket` can be a DNS label sequence: 3 to 63 lowercase
/// letters, digits, hyphens and dots, starting and ending alphanumeric,
/// without empty labels.
fn dns_compatible(bucket: &str) -> bool {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    (3..=63).contains(&bucket.len())
        && bucket.chars().all(ok_char)
        && edge(bucket.chars().next())
        && edge(bucket.chars().last())
        && !bucket.contains("..")
}

/// The URL of `obj` on `endpoint` in `style`. Every byte of the bucket and
/// key but the unreserved ones (and the key's `/`) is percent-encoded, so
/// that the path sent is the one signed.
pub(crate) fn object_url(endpoint: &Url, obj: &Object, style: Style) -> Result<Url, S3Error> {
    let host = endpoint.host_str().unwrap_or_default();
    let port = endpoint.port().map(|p| format!(":{p}")).unwrap_or_default();
    let base = endpoint.path().trim_end_matches('/');
    let key = percent::encode(&obj.key, true);
    let text = match style {
        Style::Path => format!(
            "{}://{host}{port}{base}/{}/{key}",
            endpoint.scheme(),
            percent::encode(&obj.bucket, false)
        ),
        Style::VirtualHost => format!(
            "{}://{}.{host}{port}{base}/{key}",
            endpoint.scheme(),
            obj.bucket
        ),
    };
    let bad = |reason: String| S3Error::BadLocation {
        location: obj.display(),
        reason,
    };
    let url = Url::parse(&text).map_err(|e| bad(e.to_string()))?;
    // The parser must not have rewritten the path (dot segments are refused
    // earlier; this guards the signature against any other rewrite).
    let sent_path = text
        .split_once("://")
        .and_then(|(_, rest)| rest.find('/').and_then(|i| rest.get(i..)))
        .unwrap_or("/");
    if url.path() != sent_path {
        return Err(bad(format!(
            "the path {sent_path:?} would be sent as {:?}",
            url.path()
        )));
    }
    Ok(url)
}

/// The region in an AWS S3 host name: `s3.REGION.amazonaws.com`,
/// `BUCKET.s3.REGION.amazonaws.com`, `s3.dualstack.REGION...`,
/// `s3-REGION.amazonaws.com`; `None` for the global `s3.amazonaws.com` and
/// for every other host.
pub(crate) fn aws_region(host: &str) -> Option<String> {
    let (labels, at) = aws_s3_label(host)?;
    let s3 = labels.get(at)?;
    if let Some(region) = s3.strip_prefix("s3-") {
        return (!region.is_empty() && region != "accelerate" && region != "external-1")
            .then(|| region.to_string());
    }
    let rest: Vec<&str> = labels
        .get(at.saturating_add(1)..)?
        .iter()
        .copied()
        .take_while(|l| *l != "amazonaws")
        .filter(|l| *l != "dualstack")
        .collect();
    match rest.as_slice() {
        [region] if !region.is_empty() => Some((*region).to_string()),
        _ => None,
    }
}

/// The labels of an AWS S3 host name and the index of its `s3` (or
/// `s3-REGION`) label.
fn aws_s3_label(host: &str) -> Option<(Vec<&str>, usize)> {
    let host = host.trim_end_matches('.');
    let lower = host.to_ascii_lowercase();
    if !(lower.ends_with(".amazonaws.com") || lower.ends_with(".amazonaws.com.cn")) {
        return None;
    }
    let labels: Vec<&str> = host.split('.').collect();
    let at = labels.iter().position(|l| {
        let l = l.to_ascii_lowercase();
        l == "s3" || l.starts_with("s3-")
    })?;
    Some((labels, at))
}

/// What CDI's `IMPORTER_ENDPOINT` says for an S3 import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PodLocation {
    /// `scheme://host[:port]` of the service (the bucket taken out of a
    /// virtual-host name).
    pub endpoint: String,
    pub object: Object,
    /// The URL named the bucket in its path (CDI's form).
    pub path_style: bool,
    /// The region in an AWS host name.
    pub region: Option<String>,
}

/// Parses CDI's endpoint forms: `scheme://host[:port]/BUCKET/KEY` (CDI's own,
/// path-style) and `scheme://BUCKET.s3.REGION.amazonaws.com/KEY` (an AWS
/// virtual-host URL, which CDI cannot read). The path is percent-decoded, as
/// CDI's URL parser decodes it.
pub(crate) fn parse_pod_endpoint(s: &str) -> Result<PodLocation, S3Error> {
    let bad = |reason: String| S3Error::BadLocation {
        location: crate::source::http::redact_url(s),
        reason,
    };
    let url = Url::parse(s).map_err(|e| bad(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad(format!("unsupported scheme {:?}", url.scheme())));
    }
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| bad("no host".to_string()))?;
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    let path = percent::decode(url.path().trim_start_matches('/'))
        .ok_or_else(|| bad("the path is not valid UTF-8 once decoded".to_string()))?;
    let region = aws_region(host);
    if let Some((labels, at)) = aws_s3_label(host).filter(|(_, at)| *at > 0) {
        let bucket = labels.get(..at).unwrap_or_default().join(".");
        let service = labels.get(at..).unwrap_or_default().join(".");
        let object = Object::new(&bucket, &path).map_err(bad)?;
        return Ok(PodLocation {
            endpoint: format!("{}://{service}{port}", url.scheme()),
            object,
            path_style: false,
            region,
        });
    }
    let (bucket, key) = path.split_once('/').unwrap_or((path.as_str(), ""));
    let object = Object::new(bucket, key).map_err(|r| {
        bad(format!(
            "{r} (expected {}://{host}{port}/BUCKET/KEY)",
            url.scheme()
        ))
    })?;
    Ok(PodLocation {
        endpoint: format!("{}://{host}{port}", url.scheme()),
        object,
        path_style: true,
        region,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        parse_endpoint(s).expect("endpoint")
    }

    #[test]
    fn s3_locators() {
        let o = Object::parse("s3://bucket/dir/disk image.qcow2").expect("parse");
        assert_eq!(
            (o.bucket.as_str(), o.key.as_str()),
            ("bucket", "dir/disk image.qcow2")
        );
        assert_eq!(o.display(), "s3://bucket/dir/disk image.qcow2");
        for bad in [
            "s3://bucket",
            "s3://bucket/",
            "s3:///key",
            "s3://b@x/k",
            "s3://b/a/../c",
            "s3://b/./c",
            "http://b/k",
        ] {
            let e = Object::parse(bad).expect_err(bad);
            assert!(
                e.to_string().starts_with("invalid S3 location"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn styles() {
        let aws = url("https://s3.eu-west-1.amazonaws.com");
        assert_eq!(choose_style(&aws, "my-bucket", None), Style::VirtualHost);
        assert_eq!(
            choose_style(&aws, "my.bucket", None),
            Style::Path,
            "dots over TLS"
        );
        assert_eq!(
            choose_style(&aws, "My_Bucket", None),
            Style::Path,
            "not a DNS name"
        );
        assert_eq!(choose_style(&aws, "my-bucket", Some(true)), Style::Path);
        assert_eq!(
            choose_style(&url("http://127.0.0.1"), "b-1", None),
            Style::Path
        );
        assert_eq!(choose_style(&url("http://[::1]"), "b-1", None), Style::Path);
        assert_eq!(
            choose_style(&url("http://minio.local:9000"), "b-1", None),
            Style::Path
        );
        assert_eq!(
            choose_style(&url("http://minio.local"), "b-1", None),
            Style::VirtualHost
        );
        assert_eq!(
            choose_style(&url("http://minio.local:9000"), "b-1", Some(false)),
            Style::VirtualHost
        );
        assert_eq!(
            aws_endpoint("cn-north-1"),
            "https://s3.cn-north-1.amazonaws.com.cn"
        );
    }

    #[test]
    fn urls_encode_the_key_once() {
        let o = Object::new("bkt", "dir/a b+c%.img").expect("object");
        let path = object_url(&url("http://127.0.0.1:9000"), &o, Style::Path).expect("url");
        assert_eq!(
            path.as_str(),
            "http://127.0.0.1:9000/bkt/dir/a%20b%2Bc%25.img"
        );
        let vh = object_url(
            &url("https://s3.us-east-1.amazonaws.com/"),
            &o,
            Style::VirtualHost,
        )
        .expect("url");
        assert_eq!(
            vh.as_str(),
            "https://bkt.s3.us-east-1.amazonaws.com/dir/a%20b%2Bc%25.img"
        );
        let prefixed = object_url(&url("http://gw.local/s3/"), &o, Style::Path).expect("url");
        assert_eq!(
            prefixed.as_str(),
            "http://gw.local/s3/bkt/dir/a%20b%2Bc%25.img"
        );
        for bad in ["ftp://h", "http://u:p@h", "http://h/?x=1", "not a url"] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn regions_from_aws_hosts() {
        assert_eq!(
            aws_region("s3.us-west-2.amazonaws.com").as_deref(),
            Some("us-west-2")
        );
        assert_eq!(
            aws_region("b.s3.eu-central-1.amazonaws.com").as_deref(),
            Some("eu-central-1")
        );
        assert_eq!(
            aws_region("b.s3.dualstack.ap-south-1.amazonaws.com").as_deref(),
            Some("ap-south-1")
        );
        assert_eq!(
            aws_region("s3-us-west-1.amazonaws.com").as_deref(),
            Some("us-west-1")
        );
        assert_eq!(
            aws_region("s3.cn-north-1.amazonaws.com.cn").as_deref(),
            Some("cn-north-1")
        );
        assert_eq!(aws_region("s3.amazonaws.com"), None);
        assert_eq!(aws_region("b.s3.amazonaws.com"), None);
        assert_eq!(aws_region("minio.example.com"), None);
        assert_eq!(aws_region("s3.example.com"), None);
    }

    #[test]
    fn cdi_endpoint_forms() {
        let p =
            parse_pod_endpoint("http://10.0.0.5:9000/bucket/dir/disk%20one.qcow2").expect("cdi");
        assert_eq!(p.endpoint, "http://10.0.0.5:9000");
        assert_eq!(
            p.object,
            Object::new("bucket", "dir/disk one.qcow2").expect("o")
        );
        assert!(p.path_style);
        assert_eq!(p.region, None);

        let p =
            parse_pod_endpoint("https://s3.us-west-2.amazonaws.com/bucket/k").expect("aws path");
        assert_eq!(p.endpoint, "https://s3.us-west-2.amazonaws.com");
        assert!(p.path_style);
        assert_eq!(p.region.as_deref(), Some("us-west-2"));

        let p =
            parse_pod_endpoint("https://my.bucket.s3.eu-west-1.amazonaws.com/a/b.img").expect("vh");
        assert_eq!(p.endpoint, "https://s3.eu-west-1.amazonaws.com");
        assert_eq!(p.object, Object::new("my.bucket", "a/b.img").expect("o"));
        assert!(!p.path_style);
        assert_eq!(p.region.as_deref(), Some("eu-west-1"));

        let p = parse_pod_endpoint("https://bkt.s3.amazonaws.com/k").expect("global vh");
        assert_eq!(
            (p.endpoint.as_str(), p.region),
            ("https://s3.amazonaws.com", None)
        );

        for bad in [
            "ftp://h/b/k",
            "http://h/bucket",
            "http://h/",
            "http://h/b/%FF",
            "nope",
        ] {
            let e = parse_pod_endpoint(bad).expect_err(bad);
            assert!(
                e.to_string().starts_with("invalid S3 location"),
                "{bad}: {e}"
            );
        }
        let e = parse_pod_endpoint("http://u:hunter2@h/b").expect_err("no key");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
}
