//! Log setup for pod mode, and keeping secrets out of logs and messages.
//!
//! Logs are structured `tracing` lines on stderr (the kubelet collects them).
//! klog's `-v=N` maps onto levels: 0 info, 1-2 debug, 3 and up trace;
//! `RUST_LOG`, when set, wins.
//!
//! Secrets reach us in the environment (basic-auth password, header values,
//! userinfo in the URL) and could come back inside an error message from a lower
//! layer. [`Redactor`] scrubs every known secret from any text before it is
//! logged or written to the termination message.

use tracing_subscriber::prelude::*;

/// Installs the stderr subscriber. Harmless if one is already installed (tests).
pub(crate) fn init(verbosity: Option<u8>) {
    let level = match verbosity.unwrap_or(0) {
        0 => "info",
        1 | 2 => "debug",
        _ => "trace",
    };
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false);
    let _ = tracing_subscriber::registry()
        .with(layer)
        .with(crate::log_filter("RUST_LOG", level))
        .try_init();
}

/// Replaces known secret strings with `***`.
#[derive(Debug, Default, Clone)]
pub(crate) struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    /// Registers a secret. Very short values (under 3 bytes) are not
    /// registered: scrubbing them would mangle ordinary text and they protect
    /// nothing anyway.
    pub(crate) fn add(&mut self, secret: &str) {
        if secret.len() >= 3 && !self.secrets.iter().any(|s| s == secret) {
            self.secrets.push(secret.to_string());
            // Longest first, so that a secret containing another is removed whole.
            self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
    }

    /// Registers the userinfo of `url` (user, password, and percent-decoded forms).
    pub(crate) fn add_url_userinfo(&mut self, url: &str) {
        if let Ok(u) = reqwest::Url::parse(url) {
            if let Some(p) = u.password() {
                self.add(p);
                if let Ok(d) = percent_decode(p) {
                    self.add(&d);
                }
            }
            if !u.username().is_empty() {
                let user = u.username().to_string();
                if let Some(p) = u.password() {
                    self.add(&format!("{user}:{p}"));
                }
            }
        }
    }

    /// `text` with every registered secret replaced.
    pub(crate) fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "***");
            }
        }
        out
    }
}

fn percent_decode(s: &str) -> Result<String, std::string::FromUtf8Error> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let decoded = match (b.get(i), b.get(i + 1), b.get(i + 2)) {
            (Some(b'%'), Some(h), Some(l)) => hex_val(*h).zip(hex_val(*l)).map(|(h, l)| h * 16 + l),
            _ => None,
        };
        match decoded {
            Some(v) => {
                out.push(v);
                i += 3;
            }
            None => {
                out.push(b.get(i).copied().unwrap_or_default());
                i += 1;
            }
        }
    }
    String::from_utf8(out)
}

fn hex_val(c: u8) -> Option<u8> {
    (c as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// A URL fit for logs: no userinfo, and the query (which often carries signed
/// tokens) replaced by `?...`.
pub(crate) fn display_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            let had_query = u.query().is_some();
            u.set_query(None);
            u.set_fragment(None);
            let mut s = u.to_string();
            if had_query {
                s.push_str("?...");
            }
            s
        }
        Err(_) => "<unparseable URL>".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubs_secrets() {
        let mut r = Redactor::default();
        r.add("hunter2");
        r.add("ab"); // too short to register
        r.add_url_userinfo("https://bob:p%40ss@example.com/x");
        assert_eq!(
            r.scrub("auth hunter2 failed for bob:p%40ss and p@ss, ab"),
            "auth *** failed for *** and ***, ab"
        );
    }

    #[test]
    fn urls_for_logs() {
        assert_eq!(
            display_url("https://bob:secret@example.com:8080/a/b.img?X-Amz-Signature=abc#f"),
            "https://example.com:8080/a/b.img?..."
        );
        assert_eq!(display_url("http://h/x"), "http://h/x");
        assert_eq!(display_url("not a url"), "<unparseable URL>");
    }
}
