//! [`GcsError`]: why a GCS object could not be read, one line each, naming
//! the object (or the key file) and what to check.

/// Why a GCS object could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GcsError {
    /// The `gs://` locator or the pod's endpoint does not parse.
    #[error("invalid GCS location {location:?}: {reason}")]
    BadLocation {
        /// As given, without credentials.
        location: String,
        /// What is wrong.
        reason: String,
    },
    /// `--gcs-endpoint` is not an http(s) URL.
    #[error("invalid GCS endpoint {endpoint:?}: {reason}")]
    BadEndpoint {
        /// As given.
        endpoint: String,
        /// What is wrong.
        reason: String,
    },
    /// The service-account key file cannot be used.
    #[error("GCS credentials {path}: {reason}")]
    Key {
        /// The key file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The token endpoint refused or failed.
    #[error("GCS token from {token_uri} for {email}: {detail}")]
    Token {
        /// The key's `token_uri`.
        token_uri: String,
        /// The service account.
        email: String,
        /// What went wrong.
        detail: String,
    },
    /// The service refused the request (401/403).
    #[error("access to {object} denied ({cause}) with {credentials}; {hint}")]
    AccessDenied {
        /// `gs://BUCKET/OBJECT`.
        object: String,
        /// The HTTP error, with the service's message.
        cause: String,
        /// Which credentials were used (never the key or a token).
        credentials: String,
        /// What to check.
        hint: &'static str,
    },
    /// No such bucket or object (404).
    #[error("{object} not found ({cause})")]
    NotFound {
        /// `gs://BUCKET/OBJECT`.
        object: String,
        /// The HTTP error, with the service's message.
        cause: String,
    },
}
