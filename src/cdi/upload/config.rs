//! The upload pod's environment, parsed as `cmd/cdi-uploadserver` parses it.
//!
//! CDI's upload server is lenient where the importer is strict:
//! `PREALLOCATION` and `FILESYSTEM_OVERHEAD` that do not parse count as
//! `false` and `0`; `LISTEN_PORT` that does not parse keeps 8443;
//! `LISTEN_ADDRESS`, when set, is used even if empty (all interfaces). What
//! CDI treats as fatal (a `DEADLINE` that is not RFC 3339, an
//! `UPLOAD_IMAGE_SIZE` that is not a quantity, a missing server certificate)
//! is an error here too.

use std::path::PathBuf;
use std::time::SystemTime;

use crate::cdi::config::{env_value, go_parse_bool};
use crate::cdi::quantity;

use super::rfc3339;

pub(crate) const ENV_TLS_KEY: &str = "TLS_KEY_FILE";
pub(crate) const ENV_TLS_CERT: &str = "TLS_CERT_FILE";
pub(crate) const ENV_CLIENT_CERT: &str = "CLIENT_CERT_FILE";
pub(crate) const ENV_CLIENT_NAME: &str = "CLIENT_NAME";
pub(crate) const ENV_IMAGE_SIZE: &str = "UPLOAD_IMAGE_SIZE";
pub(crate) const ENV_OVERHEAD: &str = "FILESYSTEM_OVERHEAD";
pub(crate) const ENV_PREALLOCATION: &str = "PREALLOCATION";
pub(crate) const ENV_CIPHERS: &str = "TLS_CIPHERS";
pub(crate) const ENV_MIN_VERSION: &str = "TLS_MIN_VERSION";
pub(crate) const ENV_DEADLINE: &str = "DEADLINE";
pub(crate) const ENV_DESTINATION: &str = "DESTINATION";
pub(crate) const ENV_LISTEN_ADDRESS: &str = "LISTEN_ADDRESS";
pub(crate) const ENV_LISTEN_PORT: &str = "LISTEN_PORT";
/// Not CDI's: an `ownerUID` label for the progress metric, when set.
pub(crate) const ENV_OWNER_UID: &str = "OWNER_UID";

/// CDI's listening port.
pub(crate) const DEFAULT_PORT: u16 = 8443;
/// CDI's listening address.
pub(crate) const DEFAULT_ADDRESS: &str = "0.0.0.0";

/// A value the upload server cannot start with.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UploadConfigError {
    #[error("invalid {ENV_IMAGE_SIZE}")]
    ImageSize(#[source] quantity::QuantityError),
    #[error("invalid {ENV_OVERHEAD} {0:?}: must be a finite, non-negative fraction")]
    Overhead(String),
    /// CDI's wording (`klog.Fatalf`).
    #[error("Failed to parse deadline: {0}")]
    Deadline(String),
    /// CDI's wording when either file is not configured.
    #[error("Error getting TLS config: invalid TLS config")]
    NoServerCert,
}

/// Everything the environment says about the upload server.
#[derive(Debug, Clone)]
pub(crate) struct UploadConfig {
    /// Host part of the listening address (empty: all interfaces).
    pub address: String,
    pub port: u16,
    pub key_file: PathBuf,
    pub cert_file: PathBuf,
    /// The CA that signs client certificates; without it no client can
    /// present a verified certificate.
    pub client_ca_file: Option<PathBuf>,
    /// The CN the verified client certificate must carry.
    pub client_name: String,
    pub image_size: Option<u64>,
    pub overhead: f64,
    pub preallocation: bool,
    /// `TLS_CIPHERS`, comma-separated OpenSSL or IANA names (empty: defaults).
    pub ciphers: Vec<String>,
    /// `TLS_MIN_VERSION` (`VersionTLS12`, ...; empty: defaults).
    pub min_version: String,
    pub deadline: Option<SystemTime>,
    /// `DESTINATION`, when set; otherwise the pod's disk.img.
    pub destination: Option<PathBuf>,
    pub owner_uid: Option<String>,
}

impl UploadConfig {
    /// Parses the process environment.
    pub(crate) fn from_vars(vars: &[(String, String)]) -> Result<UploadConfig, UploadConfigError> {
        let get = |name: &str| env_value(vars, name);
        let is_set = |name: &str| vars.iter().any(|(k, _)| k == name);

        let address = if is_set(ENV_LISTEN_ADDRESS) {
            get(ENV_LISTEN_ADDRESS).to_string()
        } else {
            DEFAULT_ADDRESS.to_string()
        };
        let port = match get(ENV_LISTEN_PORT) {
            "" => DEFAULT_PORT,
            p => p.parse::<u16>().unwrap_or_else(|_| {
                tracing::warn!(value = %p, "invalid {ENV_LISTEN_PORT}, using {DEFAULT_PORT}");
                DEFAULT_PORT
            }),
        };

        let (key, cert) = (get(ENV_TLS_KEY), get(ENV_TLS_CERT));
        if key.is_empty() || cert.is_empty() {
            return Err(UploadConfigError::NoServerCert);
        }

        let size_raw = get(ENV_IMAGE_SIZE);
        let image_size = if size_raw.is_empty() {
            None
        } else {
            Some(quantity::parse_bytes(size_raw).map_err(UploadConfigError::ImageSize)?)
        };

        let overhead_raw = get(ENV_OVERHEAD);
        let overhead = overhead_raw.trim().parse::<f64>().unwrap_or(0.0);
        if !overhead.is_finite() || overhead < 0.0 {
            return Err(UploadConfigError::Overhead(overhead_raw.to_string()));
        }

        let deadline = match get(ENV_DEADLINE) {
            "" => None,
            d => Some(rfc3339::parse(d).map_err(|e| UploadConfigError::Deadline(e.to_string()))?),
        };

        let nonempty = |name: &str| Some(get(name)).filter(|v| !v.is_empty());
        Ok(UploadConfig {
            address,
            port,
            key_file: PathBuf::from(key),
            cert_file: PathBuf::from(cert),
            client_ca_file: nonempty(ENV_CLIENT_CERT).map(PathBuf::from),
            client_name: get(ENV_CLIENT_NAME).to_string(),
            image_size,
            overhead,
            preallocation: go_parse_bool(get(ENV_PREALLOCATION)).unwrap_or(false),
            ciphers: get(ENV_CIPHERS)
                .split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect(),
            min_version: get(ENV_MIN_VERSION).to_string(),
            deadline,
            destination: nonempty(ENV_DESTINATION).map(PathBuf::from),
            owner_uid: nonempty(ENV_OWNER_UID).map(str::to_string),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(v: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = v
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        out.push(("TLS_KEY_FILE".into(), "/etc/tls/tls.key".into()));
        out.push(("TLS_CERT_FILE".into(), "/etc/tls/tls.crt".into()));
        out
    }

    #[test]
    fn cdi_pod_environment() {
        let c = UploadConfig::from_vars(&vars(&[
            ("CLIENT_CERT_FILE", "/etc/tls/ca.crt"),
            ("CLIENT_NAME", "client.upload-server.cdi.kubevirt.io"),
            ("UPLOAD_IMAGE_SIZE", "10Gi"),
            ("FILESYSTEM_OVERHEAD", "0.055"),
            ("PREALLOCATION", "true"),
            (
                "TLS_CIPHERS",
                "ECDHE-ECDSA-AES128-GCM-SHA256,ECDHE-RSA-AES128-GCM-SHA256",
            ),
            ("TLS_MIN_VERSION", "VersionTLS12"),
            ("DEADLINE", "2030-01-02T03:04:05Z"),
            ("DESTINATION", "/dev/cdi-block-volume"),
        ]))
        .expect("valid");
        assert_eq!((c.address.as_str(), c.port), ("0.0.0.0", 8443));
        assert_eq!(c.client_ca_file, Some(PathBuf::from("/etc/tls/ca.crt")));
        assert_eq!(c.client_name, "client.upload-server.cdi.kubevirt.io");
        assert_eq!(c.image_size, Some(10 << 30));
        assert!((c.overhead - 0.055).abs() < 1e-12);
        assert!(c.preallocation);
        assert_eq!(c.ciphers.len(), 2);
        assert_eq!(c.min_version, "VersionTLS12");
        assert!(c.deadline.is_some());
        assert_eq!(c.destination, Some(PathBuf::from("/dev/cdi-block-volume")));
    }

    #[test]
    fn lenient_where_cdi_is() {
        let c = UploadConfig::from_vars(&vars(&[
            ("PREALLOCATION", "maybe"),
            ("FILESYSTEM_OVERHEAD", "bogus"),
            ("LISTEN_PORT", "99999"),
            ("LISTEN_ADDRESS", ""),
        ]))
        .expect("valid");
        assert!(!c.preallocation);
        assert_eq!(c.overhead, 0.0);
        assert_eq!(c.port, 8443);
        assert_eq!(c.address, "", "set but empty: all interfaces");
        assert_eq!(c.destination, None);
        assert_eq!(c.deadline, None);
        let c = UploadConfig::from_vars(&vars(&[("LISTEN_PORT", "9443")])).expect("valid");
        assert_eq!(c.port, 9443);
    }

    #[test]
    fn fatal_where_cdi_is() {
        let bad = |k: &str, v: &str| UploadConfig::from_vars(&vars(&[(k, v)])).is_err();
        assert!(bad("DEADLINE", "tomorrow"));
        assert!(bad("UPLOAD_IMAGE_SIZE", "ten"));
        assert!(bad("FILESYSTEM_OVERHEAD", "-1"));
        let no_cert = vec![("TLS_KEY_FILE".to_string(), "/k".to_string())];
        assert!(matches!(
            UploadConfig::from_vars(&no_cert),
            Err(UploadConfigError::NoServerCert)
        ));
    }
}
