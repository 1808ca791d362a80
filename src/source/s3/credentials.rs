//! S3 credentials: the environment (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), then the shared
//! credentials file (`AWS_SHARED_CREDENTIALS_FILE` or
//! `~/.aws/credentials`, profile `AWS_PROFILE` or `default`), else anonymous
//! requests, which public buckets answer (CDI refuses to send them).
//!
//! Only static keys are read: roles, SSO and `credential_process` profiles
//! are refused by name rather than silently skipped.

use std::fmt;
use std::path::{Path, PathBuf};

use super::S3Error;

/// Largest credentials file read.
const MAX_FILE: u64 = 1 << 20;

/// An access key, its secret, and the session token of temporary
/// credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Keys {
    /// The access key ID (an identifier, shown in messages).
    pub access_key_id: String,
    /// The secret access key (never shown).
    pub secret_access_key: String,
    /// The session token of temporary credentials (never shown).
    pub session_token: Option<String>,
}

impl fmt::Debug for Keys {
    // Never shows the secret or the token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Keys({}, session token: {})",
            self.access_key_id,
            self.session_token.is_some()
        )
    }
}

/// Where the credentials of an `s3://` source come from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum S3Credentials {
    /// The environment, then the shared credentials file, else anonymous.
    #[default]
    Default,
    /// These keys (CDI's secret in pod mode).
    Static(Keys),
    /// No credentials: requests are not signed.
    Anonymous,
}

/// Credentials resolved for one import, and where they came from.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    /// `None` for anonymous requests.
    pub keys: Option<Keys>,
    /// For messages: which key from where, or "no credentials".
    pub described: String,
}

/// Reads the environment through `env` (a function, so tests need not set
/// process variables).
pub(crate) fn resolve(
    how: &S3Credentials,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Resolved, S3Error> {
    let keys = match how {
        S3Credentials::Anonymous => return Ok(anonymous()),
        S3Credentials::Static(k) => {
            return Ok(Resolved {
                described: describe(k, "the given secret"),
                keys: Some(k.clone()),
            })
        }
        S3Credentials::Default => keys_from_env(env)?,
    };
    if let Some(k) = keys {
        return Ok(Resolved {
            described: describe(&k, "the environment"),
            keys: Some(k),
        });
    }
    let explicit_file = env("AWS_SHARED_CREDENTIALS_FILE");
    let explicit_profile = env("AWS_PROFILE");
    let path = match &explicit_file {
        Some(p) => PathBuf::from(p),
        None => match env("HOME") {
            Some(home) => Path::new(&home).join(".aws/credentials"),
            None => return Ok(anonymous()),
        },
    };
    let profile = explicit_profile.clone().unwrap_or_else(|| "default".into());
    let text = match read_limited(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && explicit_file.is_none() => {
            if explicit_profile.is_some() {
                return Err(S3Error::Credentials(format!(
                    "AWS_PROFILE is {profile:?} but {} does not exist",
                    path.display()
                )));
            }
            return Ok(anonymous());
        }
        Err(e) => {
            return Err(S3Error::Credentials(format!(
                "cannot read {}: {e}",
                path.display()
            )))
        }
    };
    let from = format!("profile {profile} of {}", path.display());
    match profile_keys(&text, &profile) {
        Ok(Some(k)) => Ok(Resolved {
            described: describe(&k, &from),
            keys: Some(k),
        }),
        Ok(None) if explicit_profile.is_none() => Ok(anonymous()),
        Ok(None) => Err(S3Error::Credentials(format!(
            "no profile {profile:?} in {}",
            path.display()
        ))),
        Err(reason) => Err(S3Error::Credentials(format!("{from}: {reason}"))),
    }
}

fn anonymous() -> Resolved {
    Resolved {
        keys: None,
        described: "no credentials (anonymous requests)".to_string(),
    }
}

fn describe(k: &Keys, from: &str) -> String {
    format!(
        "access key {} from {from}{}",
        k.access_key_id,
        if k.session_token.is_some() {
            " with a session token"
        } else {
            ""
        }
    )
}

/// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (both or neither), and
/// `AWS_SESSION_TOKEN`.
fn keys_from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Option<Keys>, S3Error> {
    let get = |name: &str| env(name).filter(|v| !v.is_empty());
    match (get("AWS_ACCESS_KEY_ID"), get("AWS_SECRET_ACCESS_KEY")) {
        (Some(access_key_id), Some(secret_access_key)) => Ok(Some(Keys {
            access_key_id,
            secret_access_key,
            session_token: get("AWS_SESSION_TOKEN"),
        })),
        (None, None) => Ok(None),
        (Some(_), None) => Err(S3Error::Credentials(
            "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not".to_string(),
        )),
        (None, Some(_)) => Err(S3Error::Credentials(
            "AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not".to_string(),
        )),
    }
}

fn read_limited(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_FILE)
        .read_to_string(&mut text)?;
    Ok(text)
}

/// The keys of `[profile]` in a credentials file (INI: `[name]` sections,
/// `key = value` lines, `#` and `;` comment lines). `Ok(None)` when the
/// profile is absent.
fn profile_keys(text: &str, profile: &str) -> Result<Option<Keys>, String> {
    let mut inside = false;
    let mut found = false;
    let (mut id, mut secret, mut token) = (None, None, None);
    let mut other = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.trim() == profile;
            found |= inside;
            continue;
        }
        if !inside {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim().to_string();
        match key.trim().to_ascii_lowercase().as_str() {
            "aws_access_key_id" => id = Some(value),
            "aws_secret_access_key" => secret = Some(value),
            "aws_session_token" => token = Some(value),
            k @ ("role_arn"
            | "credential_process"
            | "sso_session"
            | "sso_start_url"
            | "web_identity_token_file") => other = Some(k.to_string()),
            _ => {}
        }
    }
    if !found {
        return Ok(None);
    }
    match (
        id.filter(|v| !v.is_empty()),
        secret.filter(|v| !v.is_empty()),
    ) {
        (Some(access_key_id), Some(secret_access_key)) => Ok(Some(Keys {
            access_key_id,
            secret_access_key,
            session_token: token.filter(|t| !t.is_empty()),
        })),
        _ => Err(match other {
            Some(k) => format!(
                "{k} profiles are not supported; give aws_access_key_id and aws_secret_access_key"
            ),
            None => "aws_access_key_id and aws_secret_access_key are both needed".to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn environment_first() {
        let env = env_of(&[
            ("AWS_ACCESS_KEY_ID", "AKIAENV"),
            ("AWS_SECRET_ACCESS_KEY", "s3cret"),
            ("AWS_SESSION_TOKEN", "tok"),
            ("HOME", "/nonexistent"),
        ]);
        let r = resolve(&S3Credentials::Default, &env).expect("env");
        let k = r.keys.expect("keys");
        assert_eq!(k.access_key_id, "AKIAENV");
        assert_eq!(k.session_token.as_deref(), Some("tok"));
        assert_eq!(
            r.described,
            "access key AKIAENV from the environment with a session token"
        );
        assert!(!format!("{k:?}").contains("s3cret"));
        let half = env_of(&[("AWS_ACCESS_KEY_ID", "AKIA")]);
        let e = resolve(&S3Credentials::Default, &half).expect_err("half");
        assert!(
            e.to_string().contains("AWS_SECRET_ACCESS_KEY is not"),
            "{e}"
        );
    }

    #[test]
    fn shared_file_profiles() {
        let d = tempfile::tempdir().expect("tempdir");
        let f = d.path().join("credentials");
        std::fs::write(
            &f,
            "# comment\n[default]\naws_access_key_id = AKIADEF\naws_secret_access_key=defsecret\n\n[other]\n; c\naws_access_key_id=AKIAOTHER\naws_secret_access_key = othersecret\naws_session_token = othertoken\n[role]\nrole_arn = arn:aws:iam::1:role/r\nsource_profile = default\n",
        )
        .expect("write");
        let path = f.to_str().expect("utf8");
        let r = resolve(
            &S3Credentials::Default,
            &env_of(&[("AWS_SHARED_CREDENTIALS_FILE", path)]),
        )
        .expect("default profile");
        assert_eq!(r.keys.expect("keys").access_key_id, "AKIADEF");
        let r = resolve(
            &S3Credentials::Default,
            &env_of(&[
                ("AWS_SHARED_CREDENTIALS_FILE", path),
                ("AWS_PROFILE", "other"),
            ]),
        )
        .expect("other profile");
        assert!(r
            .described
            .starts_with("access key AKIAOTHER from profile other of "));
        assert_eq!(
            r.keys.expect("k").session_token.as_deref(),
            Some("othertoken")
        );
        let e = resolve(
            &S3Credentials::Default,
            &env_of(&[
                ("AWS_SHARED_CREDENTIALS_FILE", path),
                ("AWS_PROFILE", "role"),
            ]),
        )
        .expect_err("role");
        assert!(
            e.to_string()
                .contains("role_arn profiles are not supported"),
            "{e}"
        );
        let e = resolve(
            &S3Credentials::Default,
            &env_of(&[
                ("AWS_SHARED_CREDENTIALS_FILE", path),
                ("AWS_PROFILE", "nope"),
            ]),
        )
        .expect_err("missing profile");
        assert!(e.to_string().contains("no profile \"nope\""), "{e}");
        // HOME's file is the default place.
        std::fs::create_dir(d.path().join(".aws")).expect("mkdir");
        std::fs::copy(&f, d.path().join(".aws/credentials")).expect("copy");
        let home = d.path().to_str().expect("utf8");
        let r = resolve(&S3Credentials::Default, &env_of(&[("HOME", home)])).expect("home");
        assert_eq!(r.keys.expect("keys").access_key_id, "AKIADEF");
    }

    #[test]
    fn anonymous_when_nothing_is_configured() {
        let d = tempfile::tempdir().expect("tempdir");
        let home = d.path().to_str().expect("utf8");
        let r = resolve(&S3Credentials::Default, &env_of(&[("HOME", home)])).expect("anon");
        assert!(r.keys.is_none());
        assert_eq!(r.described, "no credentials (anonymous requests)");
        let e = resolve(
            &S3Credentials::Default,
            &env_of(&[("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/creds")]),
        )
        .expect_err("explicit file missing");
        assert!(
            e.to_string().contains("cannot read /nonexistent/creds"),
            "{e}"
        );
        let r = resolve(
            &S3Credentials::Anonymous,
            &env_of(&[("AWS_ACCESS_KEY_ID", "x")]),
        )
        .expect("forced anonymous");
        assert!(r.keys.is_none());
    }
}
