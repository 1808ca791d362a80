//! The fixed paths of a CDI importer pod, and the test-only root override.
//!
//! CDI mounts everything at absolute paths (`/data`, `/dev/cdi-block-volume`,
//! `/scratch`, ...). Production must use exactly those. To let the test suite run
//! pod mode as an unprivileged subprocess, every path can be re-rooted under the
//! directory named by [`POD_ROOT_ENV`]. That variable is for tests only: CDI never
//! sets it, and when it is unset the paths below are used verbatim. Paths that
//! come from other variables (`IMPORTER_CERT_DIR`) are used as given.

use std::path::{Path, PathBuf};

/// Test-only: re-roots every pod path under this directory when set and non-empty.
pub(crate) const POD_ROOT_ENV: &str = "STREAMDISK_POD_ROOT";

/// Where the pod's volumes and files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PodPaths {
    /// The filesystem volume's mount point (`/data`); archives are extracted here.
    pub data_dir: PathBuf,
    /// The disk image in filesystem mode (`/data/disk.img`).
    pub disk_image: PathBuf,
    /// The block volume, when the PVC is in block mode (`/dev/cdi-block-volume`).
    pub block_device: PathBuf,
    /// Where the kubelet reads the termination message (`/dev/termination-log`).
    pub termination_log: PathBuf,
    /// The scratch volume, present only when the controller added one (`/scratch`).
    pub scratch_dir: PathBuf,
    /// Secret extra headers, one file each under numbered directories (`/extraheaders`).
    pub extra_headers_dir: PathBuf,
    /// Cluster-wide proxy CA certificates (`/proxycerts/`).
    pub proxy_certs_dir: PathBuf,
    /// The pod's service account: its token and the cluster's CA
    /// (`/var/run/secrets/kubernetes.io/serviceaccount`), for the poller.
    pub service_account_dir: PathBuf,
    /// A GCS service-account key, mounted from the DataVolume's secret
    /// (`/google/credentials.json`).
    pub google_credentials: PathBuf,
}

impl PodPaths {
    /// Paths under `root` (`/` in production).
    pub(crate) fn under(root: &Path) -> Self {
        let at = |p: &str| root.join(p);
        PodPaths {
            data_dir: at("data"),
            disk_image: at("data/disk.img"),
            block_device: at("dev/cdi-block-volume"),
            termination_log: at("dev/termination-log"),
            scratch_dir: at("scratch"),
            extra_headers_dir: at("extraheaders"),
            proxy_certs_dir: at("proxycerts"),
            service_account_dir: at(super::kube::SERVICE_ACCOUNT_DIR),
            google_credentials: at("google/credentials.json"),
        }
    }

    /// The production paths, or the test root from `root_override`
    /// (the value of [`POD_ROOT_ENV`]) when it is set and non-empty.
    pub(crate) fn from_override(root_override: Option<&str>) -> Self {
        match root_override {
            Some(r) if !r.is_empty() => Self::under(Path::new(r)),
            _ => Self::under(Path::new("/")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_paths_are_exact() {
        for o in [None, Some("")] {
            let p = PodPaths::from_override(o);
            assert_eq!(p.data_dir, Path::new("/data"));
            assert_eq!(p.disk_image, Path::new("/data/disk.img"));
            assert_eq!(p.block_device, Path::new("/dev/cdi-block-volume"));
            assert_eq!(p.termination_log, Path::new("/dev/termination-log"));
            assert_eq!(p.scratch_dir, Path::new("/scratch"));
            assert_eq!(p.extra_headers_dir, Path::new("/extraheaders"));
            assert_eq!(p.proxy_certs_dir, Path::new("/proxycerts"));
            assert_eq!(
                p.service_account_dir,
                Path::new("/var/run/secrets/kubernetes.io/serviceaccount")
            );
            assert_eq!(p.google_credentials, Path::new("/google/credentials.json"));
        }
    }

    #[test]
    fn test_root_reroots_everything() {
        let p = PodPaths::from_override(Some("/tmp/x"));
        assert_eq!(p.disk_image, Path::new("/tmp/x/data/disk.img"));
        assert_eq!(p.termination_log, Path::new("/tmp/x/dev/termination-log"));
    }
}
