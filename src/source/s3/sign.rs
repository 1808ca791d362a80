//! [`SigV4`]: every request for the object signed with AWS Signature
//! Version 4 in its `Authorization` header, by AWS's own signer
//! (`aws-sigv4`, without the SDK).
//!
//! The HTTP endpoint calls it after the `Range` and `If-Range` headers are
//! set, so the signature covers them; each resume and each segment is a new
//! request with a fresh signature and date. The payload (a GET's empty body)
//! is signed as the hash of nothing, in `x-amz-content-sha256`, which S3
//! requires. Signatures go in headers, never in the URL, so that a logged
//! URL carries none.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use reqwest::header::{HeaderName, HeaderValue};

use super::credentials::Keys;
use super::S3Error;
use crate::source::auth::BoxFuture;
use crate::source::{Authorize, SourceError};

/// Signs for one access key and region.
pub(crate) struct SigV4 {
    identity: aws_credential_types::Credentials,
    region: String,
    /// `s3://BUCKET/KEY`, for messages.
    object: String,
}

impl std::fmt::Debug for SigV4 {
    // Never shows the secret or the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SigV4({}, {}, {})",
            self.identity.access_key_id(),
            self.region,
            self.object
        )
    }
}

impl SigV4 {
    pub(crate) fn new(keys: &Keys, region: &str, object: &str) -> SigV4 {
        SigV4 {
            identity: Credentials::new(
                keys.access_key_id.clone(),
                keys.secret_access_key.clone(),
                keys.session_token.clone(),
                None,
                "streamdisk",
            ),
            region: region.to_string(),
            object: object.to_string(),
        }
    }

    /// Signs `req` as of `now`.
    pub(crate) fn sign_at(
        &self,
        req: &mut reqwest::Request,
        now: SystemTime,
    ) -> Result<(), S3Error> {
        let fail = |detail: String| S3Error::Signing {
            object: self.object.clone(),
            detail,
        };
        let url = req.url();
        let host = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            (None, _) => return Err(fail("the URL has no host".to_string())),
        };
        let mut headers: Vec<(&str, &str)> = vec![("host", host.as_str())];
        for (name, value) in req.headers() {
            let value = value
                .to_str()
                .map_err(|_| fail(format!("header {name} is not text")))?;
            headers.push((name.as_str(), value));
        }
        let mut settings = SigningSettings::default();
        // S3 signs the path as sent (encoded once, not normalized) and
        // wants the payload hash in x-amz-content-sha256.
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        let identity = self.identity.clone().into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("s3")
            .time(now)
            .settings(settings)
            .build()
            .map_err(|e| fail(e.to_string()))?
            .into();
        let signable = SignableRequest::new(
            req.method().as_str(),
            url.as_str(),
            headers.into_iter(),
            SignableBody::Bytes(&[]),
        )
        .map_err(|e| fail(e.to_string()))?;
        let (instructions, _signature) = sign(signable, &params)
            .map_err(|e| fail(e.to_string()))?
            .into_parts();
        let (new_headers, _params) = instructions.into_parts();
        for h in new_headers {
            let name = HeaderName::from_static(h.name());
            let mut value = HeaderValue::from_str(h.value()).map_err(|e| fail(e.to_string()))?;
            value.set_sensitive(h.sensitive() || name == reqwest::header::AUTHORIZATION);
            req.headers_mut().insert(name, value);
        }
        Ok(())
    }
}

impl Authorize for SigV4 {
    fn authorize<'a>(
        &'a self,
        req: &'a mut reqwest::Request,
    ) -> BoxFuture<'a, Result<(), SourceError>> {
        Box::pin(async move { Ok(self.sign_at(req, SystemTime::now())?) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    /// A GET request built without a client (which would need a TLS
    /// crypto provider installed).
    fn get(url: &str) -> reqwest::Request {
        reqwest::Request::new(reqwest::Method::GET, reqwest::Url::parse(url).expect("url"))
    }

    /// AWS's worked example for a ranged GET (S3 API reference,
    /// "Signature Calculations for the Authorization Header", GET Object):
    /// the signature is published there.
    #[test]
    fn matches_the_published_example() {
        let keys = Keys {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".to_string(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".to_string(),
            session_token: None,
        };
        let signer = SigV4::new(&keys, "us-east-1", "s3://examplebucket/test.txt");
        let mut req = get("https://examplebucket.s3.amazonaws.com/test.txt");
        req.headers_mut()
            .insert("range", HeaderValue::from_static("bytes=0-9"));
        // 20130524T000000Z
        let when = UNIX_EPOCH + Duration::from_secs(1_369_353_600);
        signer.sign_at(&mut req, when).expect("sign");
        let auth = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .expect("authorization");
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
        assert!(req
            .headers()
            .get("authorization")
            .is_some_and(HeaderValue::is_sensitive));
        assert_eq!(
            req.headers()
                .get("x-amz-content-sha256")
                .and_then(|v| v.to_str().ok()),
            Some("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        );
        assert!(!format!("{signer:?}").contains("wJalr"));
    }

    #[test]
    fn session_tokens_are_signed_and_sent() {
        let keys = Keys {
            access_key_id: "ASIAEXAMPLE".to_string(),
            secret_access_key: "secret".to_string(),
            session_token: Some("the-token".to_string()),
        };
        let signer = SigV4::new(&keys, "eu-west-1", "s3://b/k");
        let mut req = get("http://127.0.0.1:9000/b/k");
        signer.sign_at(&mut req, SystemTime::now()).expect("sign");
        let get = |n: &str| {
            req.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        assert_eq!(get("x-amz-security-token"), "the-token");
        assert!(get("authorization").contains("/eu-west-1/s3/aws4_request"));
        assert!(
            get("authorization").contains("x-amz-security-token"),
            "{}",
            get("authorization")
        );
    }
}
