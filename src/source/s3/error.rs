//! [`S3Error`]: why an S3 object could not be read, one line each, naming
//! the object and what to check.

/// Why an S3 object could not be read.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    /// The `s3://` locator or the pod's endpoint does not parse.
    #[error("invalid S3 location {location:?}: {reason}")]
    BadLocation {
        /// As given, without credentials.
        location: String,
        /// What is wrong.
        reason: String,
    },
    /// `--s3-endpoint` is not an http(s) URL.
    #[error("invalid S3 endpoint {endpoint:?}: {reason}")]
    BadEndpoint {
        /// As given, without credentials.
        endpoint: String,
        /// What is wrong.
        reason: String,
    },
    /// Credentials were configured but cannot be used.
    #[error("S3 credentials: {0}")]
    Credentials(String),
    /// A request could not be signed (a header value that is not text).
    #[error("cannot sign the request for {object}: {detail}")]
    Signing {
        /// `s3://BUCKET/KEY`.
        object: String,
        /// What went wrong.
        detail: String,
    },
    /// The service refused the request (401/403).
    #[error("access to {object} denied ({cause}) with {credentials}; {hint}")]
    AccessDenied {
        /// `s3://BUCKET/KEY`.
        object: String,
        /// The HTTP error, with the service's code and message.
        cause: String,
        /// Which credentials were used (never the secret).
        credentials: String,
        /// What to check.
        hint: &'static str,
    },
    /// No such bucket or key (404).
    #[error("{object} not found ({cause})")]
    NotFound {
        /// `s3://BUCKET/KEY`.
        object: String,
        /// The HTTP error, with the service's code and message.
        cause: String,
    },
    /// The bucket lives in another region than the one signed for.
    #[error("{object}: wrong region {region} ({cause}); give the bucket's region with --region or AWS_REGION")]
    WrongRegion {
        /// `s3://BUCKET/KEY`.
        object: String,
        /// The region the request was signed for.
        region: String,
        /// The HTTP error, with the service's code and message.
        cause: String,
    },
}
