//! [`RegistryAuth`]: the registry's credentials as an [`Authorize`], so the
//! HTTP endpoint adds them to requests for the registry's origin only (a
//! blob redirected to object storage never gets them) and asks for a
//! refresh on a 401.
//!
//! Nothing is sent until the registry asks: the first 401's challenge says
//! how. `Bearer realm=...,service=...,scope=...` is the token flow: GET the
//! realm with the service and scope (with the user's credentials as basic
//! auth when there are any, anonymously otherwise) and send the token it
//! returns. `Basic` is plain basic auth with the user's credentials. A token
//! that expires during a long pull is renewed the same way, on the 401.

use std::sync::Mutex;

use base64::Engine;
use reqwest::header::{HeaderValue, AUTHORIZATION};

use super::challenge::{self, Challenge};
use super::RegistryError;
use crate::source::auth::BoxFuture;
use crate::source::http::document::{self, DocumentError};
use crate::source::{Authorize, HttpOptions, SourceError};

/// Largest token answer read.
const MAX_TOKEN_ANSWER: u64 = 1 << 20;

/// What goes into the `Authorization` header now.
enum Scheme {
    /// Nothing asked for yet.
    Anonymous,
    /// `Basic base64(user:password)`.
    Basic(HeaderValue),
    /// `Bearer TOKEN`.
    Bearer(HeaderValue),
}

/// Credentials for one registry and repository.
pub(crate) struct RegistryAuth {
    /// `host[:port]`, for messages.
    registry: String,
    /// `repository:NAME:pull`, asked for when a challenge names no scope.
    scope: String,
    /// The user's credentials, if any.
    creds: Option<(String, String)>,
    /// Client settings for the token service (TLS, CAs, timeouts).
    http: HttpOptions,
    scheme: Mutex<Scheme>,
}

impl std::fmt::Debug for RegistryAuth {
    // Never shows credentials or tokens.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RegistryAuth({}, credentials: {})",
            self.registry,
            self.creds.is_some()
        )
    }
}

impl RegistryAuth {
    /// Credentials for `repository` on `registry`; `http` are the client
    /// settings the token service is reached with.
    pub(crate) fn new(
        registry: &str,
        repository: &str,
        creds: Option<(String, String)>,
        http: &HttpOptions,
    ) -> RegistryAuth {
        RegistryAuth {
            registry: registry.to_string(),
            scope: format!("repository:{repository}:pull"),
            creds,
            http: HttpOptions {
                basic_auth: None,
                authorizer: None,
                extra_headers: Vec::new(),
                connections: crate::source::Connections::Fixed(1),
                ..http.clone()
            },
            scheme: Mutex::new(Scheme::Anonymous),
        }
    }

    fn set(&self, scheme: Scheme) {
        match self.scheme.lock() {
            Ok(mut s) => *s = scheme,
            Err(p) => *p.into_inner() = scheme,
        }
    }

    fn current(&self) -> Option<HeaderValue> {
        let s = match self.scheme.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        match &*s {
            Scheme::Anonymous => None,
            Scheme::Basic(v) | Scheme::Bearer(v) => Some(v.clone()),
        }
    }

    fn is_basic(&self) -> bool {
        let s = match self.scheme.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        matches!(&*s, Scheme::Basic(_))
    }

    /// Answers one challenge; `Ok(false)` when nothing more can be tried.
    async fn answer(&self, challenge: Option<&str>) -> Result<bool, SourceError> {
        let challenges = challenge.map(challenge::parse).unwrap_or_default();
        if let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer") {
            let token = self.fetch_token(bearer).await?;
            self.set(Scheme::Bearer(token));
            return Ok(true);
        }
        // Basic (or a 401 that names no scheme): the user's credentials,
        // once; a second 401 means they were refused.
        let Some((user, pass)) = &self.creds else {
            return Err(RegistryError::CredentialsRequired {
                registry: self.registry.clone(),
            }
            .into());
        };
        if self.is_basic() {
            return Ok(false);
        }
        self.set(Scheme::Basic(basic_value(user, pass)?));
        Ok(true)
    }

    /// The token flow: GET the realm with the service and scope.
    async fn fetch_token(&self, c: &Challenge) -> Result<HeaderValue, SourceError> {
        let realm = c.param("realm").unwrap_or_default();
        let token_err = |detail: String| {
            SourceError::from(RegistryError::Token {
                realm: realm.to_string(),
                detail,
            })
        };
        let mut url = reqwest::Url::parse(realm)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| token_err("the realm is not an http(s) URL".to_string()))?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(service) = c.param("service") {
                q.append_pair("service", service);
            }
            q.append_pair("scope", c.param("scope").unwrap_or(&self.scope));
        }
        let opts = HttpOptions {
            basic_auth: self.creds.clone(),
            ..self.http.clone()
        };
        tracing::debug!(
            "asking {realm} for a token (scope {}, {})",
            c.param("scope").unwrap_or(&self.scope),
            if self.creds.is_some() {
                "with credentials"
            } else {
                "anonymously"
            }
        );
        let doc = match document::get(
            url.as_str(),
            &opts,
            Some("application/json"),
            MAX_TOKEN_ANSWER,
        )
        .await
        {
            Ok(doc) => doc,
            Err(DocumentError::TooLarge) => {
                return Err(token_err(format!(
                    "the answer is larger than {MAX_TOKEN_ANSWER} bytes"
                )))
            }
            Err(DocumentError::Source(SourceError::Status { status, .. }))
                if status.starts_with("401") || status.starts_with("403") =>
            {
                return Err(match &self.creds {
                    Some(_) => token_err(format!("HTTP {status}: the credentials were refused")),
                    None => RegistryError::CredentialsRequired {
                        registry: self.registry.clone(),
                    }
                    .into(),
                })
            }
            Err(DocumentError::Source(e)) => return Err(e),
        };
        #[derive(serde::Deserialize)]
        struct Answer {
            #[serde(default)]
            token: Option<String>,
            #[serde(default)]
            access_token: Option<String>,
        }
        let answer: Answer = serde_json::from_slice(&doc.body)
            .map_err(|e| token_err(format!("the answer is not a token document ({e})")))?;
        let token = answer
            .token
            .or(answer.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| token_err("the answer holds no token".to_string()))?;
        let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| token_err("the token is not a valid header value".to_string()))?;
        value.set_sensitive(true);
        Ok(value)
    }
}

fn basic_value(user: &str, pass: &str) -> Result<HeaderValue, SourceError> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    let mut v = HeaderValue::from_str(&format!("Basic {encoded}")).map_err(|e| {
        SourceError::InvalidHeader {
            name: "Authorization".to_string(),
            reason: e.to_string(),
        }
    })?;
    v.set_sensitive(true);
    Ok(v)
}

impl Authorize for RegistryAuth {
    fn authorize<'a>(
        &'a self,
        req: &'a mut reqwest::Request,
    ) -> BoxFuture<'a, Result<(), SourceError>> {
        Box::pin(async move {
            if let Some(v) = self.current() {
                req.headers_mut().insert(AUTHORIZATION, v);
            }
            Ok(())
        })
    }

    fn refresh<'a>(
        &'a self,
        challenge: Option<&'a str>,
    ) -> BoxFuture<'a, Result<bool, SourceError>> {
        Box::pin(self.answer(challenge))
    }
}
