//! One HTTP endpoint: the reqwest client (TLS, DNS, proxies, User-Agent),
//! the URL without credentials, and a request function that follows
//! redirects by hand so that credentials and extra headers go only to the
//! origin of the original URL.

use std::error::Error as StdError;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT, IF_RANGE, LOCATION, RANGE};
use reqwest::{Client, Response, StatusCode, Url};

use super::retry::{is_transient_status, retry_after, Failure};
use super::{error_body, tls};
use crate::source::percent;
use crate::source::{HttpOptions, SourceError};

/// Redirect hops followed before giving up.
const MAX_REDIRECTS: usize = 10;

/// The User-Agent sent with every request.
const USER_AGENT: &str = concat!("streamdisk/", env!("CARGO_PKG_VERSION"));

/// Everything needed to send a request for the image.
#[derive(Debug)]
pub(super) struct Endpoint {
    client: Client,
    /// The original URL, userinfo removed.
    url: Url,
    /// `url` as text, for messages.
    pub display: String,
    basic_auth: Option<(String, String)>,
    extra_headers: HeaderMap,
    authorizer: Option<std::sync::Arc<dyn crate::source::Authorize>>,
    /// `Accept`, sent to every origin (a registry's manifest types); not a
    /// credential.
    accept: Option<HeaderValue>,
    /// How long to wait for a response or for the next body chunk.
    pub stall: Duration,
}

/// Which bytes to ask for.
#[derive(Debug, Clone, Copy)]
pub(super) enum Span {
    /// The whole file, no Range header.
    Whole,
    /// `bytes=start-` (end `None`) or `bytes=start-(end-1)`.
    From { start: u64, end: Option<u64> },
}

impl Endpoint {
    /// Parses `url` and builds the client. Credentials in the URL are used
    /// as basic auth when `opts` has none, and never appear in `display`.
    pub(super) fn new(url: &str, opts: &HttpOptions) -> Result<Self, SourceError> {
        let invalid = |reason: String| SourceError::InvalidUrl {
            url: super::redact_url(url),
            reason,
        };
        let mut parsed = Url::parse(url).map_err(|e| invalid(e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(invalid("only http and https are supported".to_string()));
        }
        let url_auth = (!parsed.username().is_empty()).then(|| {
            (
                decode_userinfo(parsed.username()),
                parsed.password().map(decode_userinfo).unwrap_or_default(),
            )
        });
        // Cannot fail for http(s) URLs, which always have a host.
        let _ = parsed.set_username("");
        let _ = parsed.set_password(None);
        let basic_auth = opts.basic_auth.clone().or(url_auth);

        let mut extra_headers = HeaderMap::new();
        for (name, value) in &opts.extra_headers {
            let bad = |reason: String| SourceError::InvalidHeader {
                name: name.clone(),
                reason,
            };
            let name =
                HeaderName::from_bytes(name.trim().as_bytes()).map_err(|e| bad(e.to_string()))?;
            let mut value = HeaderValue::from_str(value.trim()).map_err(|e| bad(e.to_string()))?;
            value.set_sensitive(true);
            extra_headers.append(name, value);
        }

        let mut builder = Client::builder();
        for (host, addr) in &opts.resolve {
            builder = builder.resolve(host, *addr);
        }
        let client = builder
            .use_preconfigured_tls(tls::client_config(opts)?)
            .user_agent(USER_AGENT)
            // Redirects are followed in `send` to control where credentials go.
            .redirect(reqwest::redirect::Policy::none())
            // hickory reads /etc/resolv.conf and /etc/hosts itself: a static
            // binary in a scratch image has no NSS modules for getaddrinfo.
            .hickory_dns(true)
            .connect_timeout(opts.stall_timeout)
            .build()
            .map_err(|e| SourceError::Client(error_chain(&e)))?;

        Ok(Endpoint {
            client,
            display: redact(&parsed),
            url: parsed,
            basic_auth,
            extra_headers,
            authorizer: opts.authorizer.clone(),
            accept: None,
            stall: opts.stall_timeout,
        })
    }

    /// Sends `accept` as the `Accept` header of every request.
    pub(super) fn set_accept(&mut self, accept: &str) -> Result<(), SourceError> {
        let value = HeaderValue::from_str(accept).map_err(|e| SourceError::InvalidHeader {
            name: "Accept".to_string(),
            reason: e.to_string(),
        })?;
        self.accept = Some(value);
        Ok(())
    }

    /// Sends one GET for `span`, following redirects, and classifies the
    /// outcome. A 2xx response (and a 412/416 to a ranged request) is
    /// returned as is for the caller to check; anything else is a
    /// [`Failure`].
    pub(super) async fn send(
        &self,
        span: Span,
        if_range: Option<&str>,
    ) -> Result<Response, Failure> {
        let mut url = self.url.clone();
        let mut refreshed = false;
        for _ in 0..=MAX_REDIRECTS {
            let mut req = self.client.get(url.clone());
            if let Some(accept) = &self.accept {
                req = req.header(ACCEPT, accept.clone());
            }
            if let Span::From { start, end } = span {
                let value = match end.and_then(|e| e.checked_sub(1)) {
                    Some(last) => format!("bytes={start}-{last}"),
                    None => format!("bytes={start}-"),
                };
                req = req.header(RANGE, value);
                if let Some(validator) = if_range {
                    req = req.header(IF_RANGE, validator);
                }
            }
            let same_origin = url.origin() == self.url.origin();
            if same_origin {
                if let Some((user, pass)) = &self.basic_auth {
                    req = req.basic_auth(user, Some(pass));
                }
                req = req.headers(self.extra_headers.clone());
            }
            let mut req = req.build().map_err(|e| self.classify_send_error(&e))?;
            if let (true, Some(auth)) = (same_origin, &self.authorizer) {
                auth.authorize(&mut req).await.map_err(Failure::Fatal)?;
            }
            let resp = match tokio::time::timeout(self.stall, self.client.execute(req)).await {
                Err(_) => {
                    return Err(Failure::retry(SourceError::Timeout {
                        url: self.display.clone(),
                        after: self.stall,
                    }))
                }
                Ok(Err(e)) => return Err(self.classify_send_error(&e)),
                Ok(Ok(resp)) => resp,
            };
            let status = resp.status();
            // 412/416 answer a ranged request; the caller reads their
            // headers to tell a changed file from a finished one.
            let range_answer = matches!(span, Span::From { .. })
                && matches!(
                    status,
                    StatusCode::RANGE_NOT_SATISFIABLE | StatusCode::PRECONDITION_FAILED
                );
            if status.is_success() || range_answer {
                return Ok(resp);
            }
            if status == StatusCode::UNAUTHORIZED && same_origin && !refreshed {
                if let Some(auth) = &self.authorizer {
                    let challenge = resp
                        .headers()
                        .get(reqwest::header::WWW_AUTHENTICATE)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    refreshed = true;
                    if auth
                        .refresh(challenge.as_deref())
                        .await
                        .map_err(Failure::Fatal)?
                    {
                        continue;
                    }
                }
            }
            if is_redirect(status) {
                url = self.redirect_target(&url, &resp)?;
                tracing::debug!("redirected to {}", redact(&url));
                continue;
            }
            let after = retry_after(resp.headers());
            let err = SourceError::Status {
                status: status.to_string(),
                url: redact(&url),
                detail: error_body::detail(resp).await,
            };
            return Err(if is_transient_status(status) {
                Failure::Retry { err, after }
            } else {
                Failure::Fatal(err)
            });
        }
        Err(Failure::Fatal(SourceError::Redirect {
            url: self.display.clone(),
            detail: format!("more than {MAX_REDIRECTS} redirects"),
        }))
    }

    /// POSTs `form` (`application/x-www-form-urlencoded`) to the URL, as an
    /// OAuth2 token request is sent: no redirects, no credentials of the
    /// source, no authorizer. A 200 is returned; anything else is a
    /// [`Failure`] that names the status and what the body said.
    pub(super) async fn post_form(&self, form: &[(&str, &str)]) -> Result<Response, Failure> {
        let body = form
            .iter()
            .map(|(k, v)| {
                format!(
                    "{}={}",
                    percent::encode(k, false),
                    percent::encode(v, false)
                )
            })
            .collect::<Vec<_>>()
            .join("&");
        let req = self
            .client
            .post(self.url.clone())
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(ACCEPT, "application/json")
            .body(body)
            .build()
            .map_err(|e| self.classify_send_error(&e))?;
        let resp = match tokio::time::timeout(self.stall, self.client.execute(req)).await {
            Err(_) => {
                return Err(Failure::retry(SourceError::Timeout {
                    url: self.display.clone(),
                    after: self.stall,
                }))
            }
            Ok(Err(e)) => return Err(self.classify_send_error(&e)),
            Ok(Ok(resp)) => resp,
        };
        let status = resp.status();
        if status == StatusCode::OK {
            return Ok(resp);
        }
        let after = retry_after(resp.headers());
        let err = SourceError::Status {
            status: status.to_string(),
            url: self.display.clone(),
            detail: error_body::detail(resp).await,
        };
        Err(if is_transient_status(status) {
            Failure::Retry { err, after }
        } else {
            Failure::Fatal(err)
        })
    }

    /// Resolves the Location of a redirect against the current URL.
    fn redirect_target(&self, current: &Url, resp: &Response) -> Result<Url, Failure> {
        let fail = |detail: String| {
            Failure::Fatal(SourceError::Redirect {
                url: redact(current),
                detail,
            })
        };
        let location = resp
            .headers()
            .get(LOCATION)
            .ok_or_else(|| fail(format!("{} without Location", resp.status())))?
            .to_str()
            .map_err(|_| fail("Location is not text".to_string()))?;
        let next = current
            .join(location)
            .map_err(|e| fail(format!("bad Location {location:?}: {e}")))?;
        if !matches!(next.scheme(), "http" | "https") {
            return Err(fail(format!(
                "redirect to unsupported scheme {}",
                next.scheme()
            )));
        }
        Ok(next)
    }

    /// Turns a reqwest send error into a retryable or fatal failure with a
    /// message naming the cause (TLS, refused, ...).
    fn classify_send_error(&self, e: &reqwest::Error) -> Failure {
        let url = self.display.clone();
        if let Some(tls) = find_source::<rustls::Error>(e) {
            let err = SourceError::Tls {
                url,
                detail: tls.to_string(),
            };
            // A certificate the client does not trust will not become
            // trusted by asking again; other TLS errors may be a cut link.
            return match tls {
                rustls::Error::InvalidCertificate(_)
                | rustls::Error::NoCertificatesPresented
                | rustls::Error::PeerIncompatible(_)
                | rustls::Error::AlertReceived(_) => Failure::Fatal(err),
                _ => Failure::retry(err),
            };
        }
        if e.is_timeout() {
            return Failure::retry(SourceError::Timeout {
                url,
                after: self.stall,
            });
        }
        if let Some(io) = find_source::<std::io::Error>(e) {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return Failure::retry(SourceError::ConnectionRefused { url });
            }
        }
        Failure::retry(SourceError::Connect {
            url,
            detail: error_chain(e),
        })
    }
}

fn is_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

/// A URL for messages: userinfo removed, and the query (where signed URLs
/// carry their signature) shown as `?...`.
pub(super) fn redact(url: &Url) -> String {
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    let had_query = url.query().is_some();
    url.set_query(None);
    url.set_fragment(None);
    let mut s = url.to_string();
    if had_query {
        s.push_str("?...");
    }
    s
}

/// Finds an error of type `T` in the source chain of `e`. An `io::Error`
/// wrapping a custom error does not list it as its `source()` (it skips to
/// the inner error's source), so those are unwrapped explicitly.
fn find_source<'a, T: StdError + 'static>(e: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(found) = err.downcast_ref::<T>() {
            return Some(found);
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if let Some(found) = find_source::<T>(inner) {
                return Some(found);
            }
        }
        cur = err.source();
    }
    None
}

/// The messages of the causes of `e`, innermost last, without reqwest's
/// own outer "error sending request for url (...)" wrapper.
pub(super) fn error_chain(e: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = e.source();
    while let Some(err) = cur {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = err.source();
    }
    if parts.is_empty() {
        e.to_string()
    } else {
        parts.join(": ")
    }
}

/// Decodes %XX escapes in URL userinfo (a password may contain `@` or `:`).
fn decode_userinfo(s: &str) -> String {
    String::from_utf8_lossy(&percent::decode_bytes(s)).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_credentials_become_basic_auth_and_leave_the_display() {
        let ep = Endpoint::new(
            "http://us%40er:p%3Ass@example.com:8080/x.img",
            &HttpOptions::default(),
        )
        .expect("endpoint");
        assert_eq!(ep.display, "http://example.com:8080/x.img");
        assert_eq!(
            ep.basic_auth,
            Some(("us@er".to_string(), "p:ss".to_string()))
        );
    }

    #[test]
    fn queries_stay_out_of_messages() {
        let ep = Endpoint::new(
            "https://h.example/o?X-Amz-Signature=abc&alt=media#f",
            &HttpOptions::default(),
        )
        .expect("endpoint");
        assert_eq!(ep.display, "https://h.example/o?...");
        assert_eq!(percent::encode("urn:a b/c~d", false), "urn%3Aa%20b%2Fc~d");
    }

    #[test]
    fn explicit_basic_auth_wins() {
        let opts = HttpOptions {
            basic_auth: Some(("a".into(), "b".into())),
            ..HttpOptions::default()
        };
        let ep = Endpoint::new("https://u:p@example.com/x", &opts).expect("endpoint");
        assert_eq!(ep.basic_auth, Some(("a".to_string(), "b".to_string())));
    }

    #[test]
    fn bad_inputs_are_refused_by_name() {
        let err = Endpoint::new("ftp://example.com/x", &HttpOptions::default()).expect_err("ftp");
        assert!(err.to_string().contains("only http and https"), "{err}");
        let opts = HttpOptions {
            extra_headers: vec![("Bad Name".into(), "v".into())],
            ..HttpOptions::default()
        };
        let err = Endpoint::new("http://example.com/x", &opts).expect_err("header");
        assert!(
            err.to_string()
                .starts_with("invalid extra header \"Bad Name\""),
            "{err}"
        );
    }
}
