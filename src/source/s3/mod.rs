//! S3 source: `s3://BUCKET/KEY` on AWS or any S3-compatible service, read
//! through the HTTP source (resume with `Range` + `If-Range`, retries, two
//! connections, range reads for the planner, the ETag check that refuses to
//! mix two versions of an object), every request signed with SigV4.
//!
//! | module | concern |
//! |---|---|
//! | [`location`] | bucket and key, endpoint, addressing style, region in AWS host names, CDI's endpoint forms |
//! | [`credentials`] | environment, shared credentials file, anonymous |
//! | [`sign`] | the SigV4 [`Authorize`](crate::source::Authorize) |
//!
//! Where CDI forces path-style, guesses the region from the host name,
//! refuses anonymous buckets and makes one `GetObject` with no resume, this
//! source picks the style per endpoint, takes the region from the user (or
//! an AWS host name), sends unsigned requests when there are no
//! credentials, and streams every format without scratch space.

pub mod credentials;
mod error;
pub(crate) mod location;
mod sign;

use std::sync::Arc;

pub use credentials::{Keys, S3Credentials};
pub use error::S3Error;

use self::location::{Object, Style};
use super::{HttpOptions, OpenContext, OpenedSource, Source, SourceError};

/// The region signed for when none is given.
pub const DEFAULT_REGION: &str = "us-east-1";

/// S3 settings beside the HTTP client's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Options {
    /// The service's URL (`--s3-endpoint`); AWS's regional endpoint when
    /// `None`.
    pub endpoint: Option<String>,
    /// The region signed for (`--region`); otherwise `AWS_REGION`,
    /// `AWS_DEFAULT_REGION`, the region of an AWS endpoint host name, then
    /// [`DEFAULT_REGION`].
    pub region: Option<String>,
    /// `Some(true)`: path-style (`--s3-path-style`); `Some(false)`:
    /// virtual-host style; `None`: chosen per endpoint and bucket.
    pub path_style: Option<bool>,
    /// Where credentials come from.
    pub credentials: S3Credentials,
}

/// An `s3://BUCKET/KEY` locator.
#[derive(Debug, Clone)]
pub(crate) struct S3Source {
    object: Object,
}

impl S3Source {
    pub(crate) fn parse(s: &str) -> Result<S3Source, SourceError> {
        Ok(S3Source {
            object: Object::parse(s)?,
        })
    }
}

/// How one import reaches the object.
struct Plan {
    url: String,
    region: String,
    style: Style,
    credentials: credentials::Resolved,
}

fn plan(object: &Object, opts: &S3Options) -> Result<Plan, S3Error> {
    let env = |name: &str| std::env::var(name).ok();
    plan_with(object, opts, &env)
}

/// [`plan`] with the environment read through `env`.
fn plan_with(
    object: &Object,
    opts: &S3Options,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Plan, S3Error> {
    let from_env = || {
        ["AWS_REGION", "AWS_DEFAULT_REGION"]
            .iter()
            .find_map(|v| env(v).filter(|r| !r.trim().is_empty()))
    };
    let given = opts.region.clone().or_else(from_env);
    let (endpoint, region) = match &opts.endpoint {
        Some(e) => {
            let url = location::parse_endpoint(e)?;
            let region = given
                .or_else(|| url.host_str().and_then(location::aws_region))
                .unwrap_or_else(|| DEFAULT_REGION.to_string());
            (url, region)
        }
        None => {
            let region = given.unwrap_or_else(|| DEFAULT_REGION.to_string());
            (
                location::parse_endpoint(&location::aws_endpoint(&region))?,
                region,
            )
        }
    };
    let style = location::choose_style(&endpoint, &object.bucket, opts.path_style);
    let url = location::object_url(&endpoint, object, style)?;
    let credentials = credentials::resolve(&opts.credentials, env)?;
    Ok(Plan {
        url: url.to_string(),
        region,
        style,
        credentials,
    })
}

impl Source for S3Source {
    fn display(&self) -> String {
        self.object.display()
    }

    fn open(&self, ctx: &OpenContext<'_>) -> Result<OpenedSource, SourceError> {
        let object = self.object.display();
        let plan = plan(&self.object, &ctx.http.s3)?;
        tracing::info!(
            "{object}: {} ({}, region {}), {}",
            super::http::redact_url(&plan.url),
            match plan.style {
                Style::Path => "path-style",
                Style::VirtualHost => "virtual-host style",
            },
            plan.region,
            plan.credentials.described
        );
        let authorizer = plan.credentials.keys.as_ref().map(|k| {
            Arc::new(sign::SigV4::new(k, &plan.region, &object)) as Arc<dyn super::Authorize>
        });
        let opts = HttpOptions {
            basic_auth: None,
            authorizer,
            assume_ranges: true,
            ..ctx.http.clone()
        };
        let mut opened = super::http::open(&plan.url, &opts, ctx.rt, ctx.pace)
            .map_err(|e| explain(e, &object, &plan))?;
        opened.display = object;
        Ok(opened)
    }
}

/// Turns a refusal into a message that says what to check.
fn explain(e: SourceError, object: &str, plan: &Plan) -> SourceError {
    let SourceError::Status { status, .. } = last(&e) else {
        return e;
    };
    let code = status.split_whitespace().next().unwrap_or_default();
    let cause = last(&e).to_string();
    let wrong_region = cause.contains("AuthorizationHeaderMalformed")
        || cause.contains("PermanentRedirect")
        || cause.contains("IllegalLocationConstraint");
    let anonymous = plan.credentials.keys.is_none();
    // S3 answers 400 to some credential problems (a session token it does
    // not know, an expired one, an unknown key on some services).
    let bad_credentials = [
        "InvalidToken",
        "ExpiredToken",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
    ]
    .iter()
    .any(|c| cause.contains(&format!(": {c}")));
    let err = match code {
        "301" | "400" if wrong_region => S3Error::WrongRegion {
            object: object.to_string(),
            region: plan.region.clone(),
            cause,
        },
        "401" | "403" | "400" if code != "400" || bad_credentials => S3Error::AccessDenied {
            object: object.to_string(),
            cause,
            credentials: plan.credentials.described.clone(),
            hint: if anonymous {
                "the bucket does not allow anonymous reads: give credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile)"
            } else {
                "check the secret key (and session token), the key's permission to read the object, the region and the clock"
            },
        },
        "404" => S3Error::NotFound {
            object: object.to_string(),
            cause,
        },
        _ => return e,
    };
    err.into()
}

/// The last failure of a retried request.
fn last(e: &SourceError) -> &SourceError {
    match e {
        SourceError::RetriesExhausted { last, .. } => last,
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    fn obj() -> Object {
        Object::new("my-bucket", "images/disk.qcow2").expect("object")
    }

    #[test]
    fn aws_by_default_with_the_region_from_the_environment() {
        let p = plan_with(
            &obj(),
            &S3Options::default(),
            &env_of(&[
                ("AWS_DEFAULT_REGION", "eu-west-3"),
                ("HOME", "/nonexistent"),
            ]),
        )
        .expect("plan");
        assert_eq!(
            p.url,
            "https://my-bucket.s3.eu-west-3.amazonaws.com/images/disk.qcow2"
        );
        assert_eq!(p.region, "eu-west-3");
        assert!(p.credentials.keys.is_none());

        let p = plan_with(
            &obj(),
            &S3Options::default(),
            &env_of(&[("HOME", "/nonexistent")]),
        )
        .expect("plan");
        assert_eq!(p.region, DEFAULT_REGION);
        assert_eq!(
            p.url,
            "https://my-bucket.s3.us-east-1.amazonaws.com/images/disk.qcow2"
        );
    }

    #[test]
    fn endpoints_styles_and_regions() {
        let opts = S3Options {
            endpoint: Some("http://127.0.0.1:9000".into()),
            region: Some("eu-north-1".into()),
            ..S3Options::default()
        };
        let p = plan_with(
            &obj(),
            &opts,
            &env_of(&[("AWS_REGION", "ignored-1"), ("HOME", "/x")]),
        )
        .expect("plan");
        assert_eq!(p.url, "http://127.0.0.1:9000/my-bucket/images/disk.qcow2");
        assert_eq!((p.region.as_str(), p.style), ("eu-north-1", Style::Path));

        let opts = S3Options {
            endpoint: Some("https://s3.ap-northeast-1.amazonaws.com".into()),
            path_style: Some(true),
            ..S3Options::default()
        };
        let p = plan_with(&obj(), &opts, &env_of(&[("HOME", "/x")])).expect("plan");
        assert_eq!(
            p.url,
            "https://s3.ap-northeast-1.amazonaws.com/my-bucket/images/disk.qcow2"
        );
        assert_eq!(p.region, "ap-northeast-1", "from the AWS host name");

        let opts = S3Options {
            endpoint: Some("ftp://x".into()),
            ..S3Options::default()
        };
        assert!(plan_with(&obj(), &opts, &env_of(&[])).is_err());
    }

    #[test]
    fn refusals_name_what_to_check() {
        let p = plan_with(&obj(), &S3Options::default(), &env_of(&[("HOME", "/x")])).expect("plan");
        let status = |s: &str, detail: &str| SourceError::Status {
            status: s.to_string(),
            url: "https://h/k".to_string(),
            detail: detail.to_string(),
        };
        let e = explain(
            status("403 Forbidden", ": AccessDenied"),
            "s3://my-bucket/k",
            &p,
        );
        let m = e.to_string();
        assert!(m.starts_with("access to s3://my-bucket/k denied (HTTP 403 Forbidden for https://h/k: AccessDenied) with no credentials"), "{m}");
        assert!(m.contains("anonymous reads"), "{m}");
        let e = explain(
            status("404 Not Found", ": NoSuchKey"),
            "s3://my-bucket/k",
            &p,
        );
        assert!(
            e.to_string().starts_with("s3://my-bucket/k not found"),
            "{e}"
        );
        let e = explain(
            status(
                "400 Bad Request",
                ": AuthorizationHeaderMalformed: the region 'us-east-1' is wrong",
            ),
            "s3://my-bucket/k",
            &p,
        );
        assert!(e.to_string().contains("wrong region us-east-1"), "{e}");
        let e = explain(
            status(
                "400 Bad Request",
                ": InvalidToken: The provided token is malformed",
            ),
            "s3://my-bucket/k",
            &p,
        );
        assert!(
            e.to_string()
                .starts_with("access to s3://my-bucket/k denied"),
            "{e}"
        );
        let e = explain(
            status("400 Bad Request", ": InvalidArgument"),
            "s3://my-bucket/k",
            &p,
        );
        assert!(matches!(e, SourceError::Status { .. }), "{e}");
        let e = explain(
            status("500 Internal Server Error", ""),
            "s3://my-bucket/k",
            &p,
        );
        assert!(matches!(e, SourceError::Status { .. }));
    }
}
