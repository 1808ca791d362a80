//! [`Authorize`]: credentials computed per request, for sources built on the
//! HTTP machinery (a registry's bearer token, an S3 signature, a GCS access
//! token).
//!
//! The HTTP endpoint calls it for every request bound for the origin of the
//! original URL (never after a redirect to another origin, so object-store
//! redirects from a registry get no token), after the Range header is set,
//! so a signature can cover it. On a 401 from that origin it asks the
//! authorizer to refresh (answer a challenge, renew an expired token) and
//! tries once more.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use super::SourceError;

/// A boxed future, for the object-safe async methods below.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Adds credentials to requests for one origin.
pub trait Authorize: Send + Sync + fmt::Debug {
    /// Adds credentials to `req`, which is about to be sent to the origin of
    /// the source's URL. Must not log secrets.
    fn authorize<'a>(
        &'a self,
        req: &'a mut reqwest::Request,
    ) -> BoxFuture<'a, Result<(), SourceError>>;

    /// The origin answered 401 with this `WWW-Authenticate` value (if any):
    /// refresh the credentials and say whether the request should be sent
    /// again. The default gives up.
    fn refresh<'a>(
        &'a self,
        challenge: Option<&'a str>,
    ) -> BoxFuture<'a, Result<bool, SourceError>> {
        let _ = challenge;
        Box::pin(async { Ok(false) })
    }
}
