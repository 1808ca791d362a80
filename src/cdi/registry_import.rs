//! `IMPORTER_SOURCE=registry` with the pod pull method: a containerDisk
//! image streamed from the registry into the target.
//!
//! Where CDI pulls the image into `/scratch`, extracts the disk file and
//! converts it, the `docker://` endpoint goes through the registry source
//! and the same one-pass pipeline as an HTTP import (see
//! [`super::http_import::disk_image`]): progress moves during the pull, every
//! blob is checked against its digest (a mismatch is handled as a checksum
//! mismatch: target wiped, exit 0, the controller gives up), and scratch
//! space is never asked for. CDI's envelope is kept: `IMPORTER_ACCESS_KEY_ID`
//! and `IMPORTER_SECRET_KEY` as the registry's user and password,
//! `IMPORTER_CERT_DIR` and `/proxycerts/` for CAs, `INSECURE_TLS`,
//! `IMPORTER_REGISTRY_IMAGE_ARCHITECTURE`, the `kubevirt` content type only,
//! and the image's `KUBEVIRT_IO_*` environment as PVC labels.

use super::config::{self, ContentType};
use super::http_import::{self, HttpContext};
use super::logging::display_url;
use super::outcome::Outcome;

/// Runs the registry import described by `ctx` (with `ctx.registry` set).
pub(crate) fn run(ctx: &HttpContext<'_>, vars: &[(String, String)]) -> Outcome {
    if ctx.cfg.content_type != ContentType::KubeVirt {
        // CDI's check and words (cmd/cdi-importer/importer.go).
        return Outcome::Failed(format!(
            "Unsupported content type {} when importing from registry",
            config::env_value(vars, config::ENV_CONTENT_TYPE)
        ));
    }
    let endpoint = &ctx.cfg.endpoint;
    if !endpoint.starts_with("docker://") {
        return Outcome::Failed(format!(
            "Unable to process data: Failed to read registry image: Invalid image name {:?}, expected docker://HOST/REPO[:TAG|@DIGEST]",
            display_url(endpoint)
        ));
    }
    let mut http = match http_import::http_options(ctx.cfg, ctx.paths) {
        Ok(h) => h,
        Err(o) => return o,
    };
    // CDI's registry source sends no extra headers and reads no auth files:
    // credentials come from the pod's secret only.
    http.extra_headers.clear();
    http.registry.auth_files = false;
    let arch = config::env_value(vars, config::ENV_REGISTRY_ARCH);
    http.registry.arch = (!arch.is_empty()).then(|| arch.to_string());
    tracing::info!(
        endpoint = %display_url(endpoint),
        architecture = %arch,
        block = ctx.block,
        "starting registry import"
    );
    http_import::disk_image(ctx, http)
}
