//! [`TokenAuth`]: OAuth2 access tokens for a service account (the JWT bearer
//! flow, RFC 7523), as an [`Authorize`] for the storage origin.
//!
//! A JWT naming the account, the read-only storage scope and the key's
//! `token_uri` is signed RS256 with the account's key and POSTed to that
//! `token_uri`; the answer's access token goes into `Authorization: Bearer`
//! of the requests for the object, and only those (the endpoint never adds
//! it after a redirect to another origin, and the token request itself
//! carries no source credentials). A token is renewed before it expires
//! ([`refresh_margin`] ahead), so that the resumes and segments of a long
//! download never present an expired one; a 401 renews it at once.
//! CDI ties its whole GCS download to one 60-second context instead.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use reqwest::header::{HeaderValue, AUTHORIZATION};

use super::key::ServiceAccount;
use super::GcsError;
use crate::source::auth::BoxFuture;
use crate::source::http::document::{self, DocumentError};
use crate::source::{Authorize, Connections, HttpOptions, SourceError};

/// The scope asked for: reading objects.
pub(crate) const SCOPE: &str = "https://www.googleapis.com/auth/devstorage.read_only";

/// Lifetime asked for in the JWT (Google's maximum).
const ASSERTION_LIFETIME: u64 = 3600;

/// Largest token answer read.
const MAX_ANSWER: u64 = 64 << 10;

/// A token in use.
struct Token {
    header: HeaderValue,
    /// When to fetch the next one.
    renew_at: Instant,
}

/// Access tokens for one service account.
pub(crate) struct TokenAuth {
    account: ServiceAccount,
    /// Client settings for the token endpoint (TLS, CAs, timeouts), without
    /// the source's credentials or headers.
    http: HttpOptions,
    token: tokio::sync::Mutex<Option<Token>>,
}

impl std::fmt::Debug for TokenAuth {
    // Never shows the key or a token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenAuth({:?})", self.account)
    }
}

/// How long before its expiry a token of `lifetime` is renewed: five
/// minutes, or half the lifetime of a short-lived one.
pub(crate) fn refresh_margin(lifetime: Duration) -> Duration {
    Duration::from_secs(300).min(lifetime / 2)
}

impl TokenAuth {
    pub(crate) fn new(account: ServiceAccount, http: &HttpOptions) -> TokenAuth {
        TokenAuth {
            account,
            http: HttpOptions {
                basic_auth: None,
                authorizer: None,
                extra_headers: Vec::new(),
                connections: Connections::Fixed(1),
                ..http.clone()
            },
            token: tokio::sync::Mutex::new(None),
        }
    }

    /// The service account's e-mail, for messages.
    pub(crate) fn email(&self) -> &str {
        &self.account.email
    }

    fn fail(&self, detail: String) -> SourceError {
        GcsError::Token {
            token_uri: self.account.token_uri.clone(),
            email: self.account.email.clone(),
            detail,
        }
        .into()
    }

    /// The signed JWT for a token request made at `now` (seconds since the
    /// epoch).
    pub(crate) fn assertion(&self, now: u64) -> Result<String, SourceError> {
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let mut header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
        if let Some(kid) = &self.account.key_id {
            header["kid"] = serde_json::Value::String(kid.clone());
        }
        let claims = serde_json::json!({
            "iss": self.account.email,
            "scope": SCOPE,
            "aud": self.account.token_uri,
            "iat": now,
            "exp": now.saturating_add(ASSERTION_LIFETIME),
        });
        let signing_input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let signature = self
            .account
            .sign(signing_input.as_bytes())
            .map_err(|e| self.fail(e))?;
        Ok(format!("{signing_input}.{}", b64(&signature)))
    }

    /// Asks the token endpoint for a new token.
    async fn fetch(&self) -> Result<Token, SourceError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let assertion = self.assertion(now)?;
        tracing::debug!(
            "asking {} for a token for {}",
            self.account.token_uri,
            self.account.email
        );
        let form = [
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", assertion.as_str()),
        ];
        let asked = Instant::now();
        let doc = match document::post_form(&self.account.token_uri, &self.http, &form, MAX_ANSWER)
            .await
        {
            Ok(doc) => doc,
            Err(DocumentError::TooLarge) => {
                return Err(self.fail(format!("the answer is larger than {MAX_ANSWER} bytes")))
            }
            Err(DocumentError::Source(e)) => return Err(self.fail(crate::error_chain(&e))),
        };
        #[derive(serde::Deserialize)]
        struct Answer {
            #[serde(default)]
            access_token: Option<String>,
            #[serde(default)]
            expires_in: Option<u64>,
        }
        let answer: Answer = serde_json::from_slice(&doc.body)
            .map_err(|e| self.fail(format!("the answer is not a token document ({e})")))?;
        let token = answer
            .access_token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| self.fail("the answer holds no access_token".to_string()))?;
        let mut header = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| self.fail("the token is not a valid header value".to_string()))?;
        header.set_sensitive(true);
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(ASSERTION_LIFETIME).max(1));
        let renew_at = asked + lifetime.saturating_sub(refresh_margin(lifetime));
        tracing::debug!(
            "token for {} valid for {}s",
            self.account.email,
            lifetime.as_secs()
        );
        Ok(Token { header, renew_at })
    }

    /// The current token, fetched first when there is none or it is due.
    async fn current(&self, force: bool) -> Result<HeaderValue, SourceError> {
        let mut slot = self.token.lock().await;
        match &*slot {
            Some(t) if !force && Instant::now() < t.renew_at => Ok(t.header.clone()),
            _ => {
                let t = self.fetch().await?;
                let header = t.header.clone();
                *slot = Some(t);
                Ok(header)
            }
        }
    }
}

impl Authorize for TokenAuth {
    fn authorize<'a>(
        &'a self,
        req: &'a mut reqwest::Request,
    ) -> BoxFuture<'a, Result<(), SourceError>> {
        Box::pin(async move {
            let header = self.current(false).await?;
            req.headers_mut().insert(AUTHORIZATION, header);
            Ok(())
        })
    }

    fn refresh<'a>(
        &'a self,
        _challenge: Option<&'a str>,
    ) -> BoxFuture<'a, Result<bool, SourceError>> {
        Box::pin(async move {
            tracing::info!("the storage service refused the token; asking for a new one");
            self.current(true).await?;
            Ok(true)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::refresh_margin;
    use std::time::Duration;

    #[test]
    fn tokens_are_renewed_ahead_of_expiry() {
        assert_eq!(
            refresh_margin(Duration::from_secs(3600)),
            Duration::from_secs(300)
        );
        assert_eq!(
            refresh_margin(Duration::from_secs(4)),
            Duration::from_secs(2)
        );
        assert_eq!(
            refresh_margin(Duration::from_secs(1)),
            Duration::from_millis(500)
        );
    }
}
