//! A service-account key file (`GOOGLE_APPLICATION_CREDENTIALS`, or CDI's
//! `/google/credentials.json`): the account's e-mail, its RSA private key
//! (PEM PKCS#8), the key's id, and the `token_uri` that exchanges a signed
//! JWT for an access token.

use std::io::Read;
use std::path::Path;

use ring::rand::SystemRandom;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};

use super::GcsError;

/// Largest key file read (real ones are about 2.3 KiB).
const MAX_FILE: u64 = 64 << 10;

/// Where Google's token endpoint is when a key names none.
const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";

/// A service account able to sign its own token requests.
pub(crate) struct ServiceAccount {
    pub email: String,
    /// `private_key_id`, sent as the JWT's `kid`.
    pub key_id: Option<String>,
    pub token_uri: String,
    key: RsaKeyPair,
}

impl std::fmt::Debug for ServiceAccount {
    // Never shows the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServiceAccount({}, {})", self.email, self.token_uri)
    }
}

#[derive(serde::Deserialize)]
struct KeyFile {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    client_email: Option<String>,
    #[serde(default)]
    private_key: Option<String>,
    #[serde(default)]
    private_key_id: Option<String>,
    #[serde(default)]
    token_uri: Option<String>,
}

impl ServiceAccount {
    /// Reads and checks the key file at `path`.
    pub(crate) fn load(path: &Path) -> Result<ServiceAccount, GcsError> {
        let bad = |reason: String| GcsError::Key {
            path: path.display().to_string(),
            reason,
        };
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_FILE).read_to_string(&mut text))
            .map_err(|e| bad(format!("cannot read it: {e}")))?;
        Self::parse(&text).map_err(bad)
    }

    fn parse(text: &str) -> Result<ServiceAccount, String> {
        let file: KeyFile =
            serde_json::from_str(text).map_err(|e| format!("not a JSON key file ({e})"))?;
        match file.kind.as_str() {
            "service_account" => {}
            "authorized_user" => {
                return Err("user credentials (gcloud auth application-default login) are not supported; use a service-account key".to_string())
            }
            "" => return Err("no \"type\"; expected a service-account key".to_string()),
            other => return Err(format!("{other} credentials are not supported; use a service-account key")),
        }
        let email = file
            .client_email
            .filter(|e| !e.is_empty())
            .ok_or("no client_email")?;
        let pem = file.private_key.ok_or("no private_key")?;
        let der = rustls_pemfile::pkcs8_private_keys(&mut pem.as_bytes())
            .next()
            .ok_or("private_key holds no PEM PKCS#8 key")?
            .map_err(|e| format!("private_key is not valid PEM: {e}"))?;
        let key = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
            .map_err(|e| format!("private_key is not a usable RSA key: {e}"))?;
        let token_uri = file
            .token_uri
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| DEFAULT_TOKEN_URI.to_string());
        if !(token_uri.starts_with("https://") || token_uri.starts_with("http://")) {
            return Err(format!("token_uri {token_uri:?} is not an http(s) URL"));
        }
        Ok(ServiceAccount {
            email,
            key_id: file.private_key_id.filter(|k| !k.is_empty()),
            token_uri,
            key,
        })
    }

    /// RS256 (RSASSA-PKCS1-v1_5 with SHA-256) signature of `msg`.
    pub(crate) fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, String> {
        let mut sig = vec![0u8; self.key.public().modulus_len()];
        self.key
            .sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), msg, &mut sig)
            .map_err(|_| "RSA signing failed".to_string())?;
        Ok(sig)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_by_name() {
        let e = |t: &str| ServiceAccount::parse(t).expect_err(t);
        assert!(e(r#"{"type":"authorized_user"}"#).contains("not supported"));
        assert!(e(r#"{"type":"external_account"}"#).contains("external_account credentials"));
        assert!(e(r#"{}"#).contains("no \"type\""));
        assert!(e("not json").contains("not a JSON key file"));
        assert!(e(r#"{"type":"service_account"}"#).contains("no client_email"));
        assert!(e(r#"{"type":"service_account","client_email":"a@b"}"#).contains("no private_key"));
        assert!(
            e(r#"{"type":"service_account","client_email":"a@b","private_key":"junk"}"#)
                .contains("no PEM PKCS#8 key")
        );
        let bad_key = r#"{"type":"service_account","client_email":"a@b","private_key":"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}"#;
        assert!(
            e(bad_key).contains("not a usable RSA key"),
            "{}",
            e(bad_key)
        );
    }
}
