//! `cdi-source-update-poller`: the DataImportCron's registry check.
//!
//! For a DataImportCron with a registry source pulled by the pod (the
//! default boot sources), CDI's controller runs a CronJob from the importer
//! image: `/usr/bin/cdi-source-update-poller -ns NS -cron NAME -url
//! docker://... [-certdir /certs]`, with the registry's credentials in
//! `IMPORTER_ACCESS_KEY_ID` / `IMPORTER_SECRET_KEY`, `INSECURE_TLS=true` for
//! an insecure registry, proxy settings, and CAs in `/proxycerts/`. It
//! resolves the image's current manifest digest and records it on the
//! DataImportCron, which the controller then imports.
//!
//! The requests are CDI's (`tools/cdi-source-update-poller/main.go`): a GET
//! of the DataImportCron, then one JSON patch of `add` operations, always
//! `cdi.kubevirt.io/storage.import.lastCronTime` (RFC 3339, UTC) and
//! `cdi.kubevirt.io/storage.import.sourceDesiredDigest` when the digest
//! differs from the one recorded. Each `add` names one annotation, so the
//! object's other annotations stay as they are. The digest comes from
//! [`crate::source::registry::resolve_digest`], the registry client of
//! imports; the API from [`super::kube`], with the pod's service account.

use std::collections::BTreeMap;
use std::ffi::OsString;

use super::civil::Civil;
use super::config::{self, go_parse_bool};
use super::goflag::{self, FlagError, Kind, Spec};
use super::gojson::go_json_string;
use super::kube::InCluster;
use super::logging::{display_url, Redactor};
use super::paths::{PodPaths, POD_ROOT_ENV};
use crate::source::HttpOptions;

/// The annotation with the time of the last poll.
pub(crate) const ANN_LAST_CRON_TIME: &str = "cdi.kubevirt.io/storage.import.lastCronTime";
/// The annotation with the digest the controller should import.
pub(crate) const ANN_DESIRED_DIGEST: &str = "cdi.kubevirt.io/storage.import.sourceDesiredDigest";

/// The content type of a JSON patch (RFC 6902).
const JSON_PATCH: &str = "application/json-patch+json";

/// CDI's flags (`-kubeconfig` defaults to `$KUBECONFIG`, as there).
const SPECS: &[Spec] = &[
    Spec {
        name: "kubeconfig",
        kind: Kind::Str,
        default: "",
        usage: "(Optional) Overrides $KUBECONFIG.",
    },
    Spec {
        name: "server",
        kind: Kind::Str,
        default: "",
        usage: "(Optional) URL address of a remote api server.  Do not set for local clusters.",
    },
    Spec {
        name: "ns",
        kind: Kind::Str,
        default: "",
        usage: "DataImportCron namespace.",
    },
    Spec {
        name: "cron",
        kind: Kind::Str,
        default: "",
        usage: "DataImportCron name.",
    },
    Spec {
        name: "url",
        kind: Kind::Str,
        default: "",
        usage: "registry source url.",
    },
    Spec {
        name: "certdir",
        kind: Kind::Str,
        default: "",
        usage: "registry certificates path.",
    },
];

/// Runs the poller with `args` (after the program name); returns the exit
/// code: 0 once the patch is accepted, 2 for a bad command line (Go's),
/// 1 for any other failure (Go's `log.Fatal`).
pub fn run(program: &str, args: Vec<OsString>) -> i32 {
    super::logging::init(None);
    let args: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let values = match goflag::parse(&args, SPECS) {
        Ok(v) => v,
        Err(FlagError::Help) => {
            eprint!("{}", goflag::usage(program, SPECS));
            return 0;
        }
        Err(FlagError::Bad(m)) => {
            eprintln!("{m}");
            eprint!("{}", goflag::usage(program, SPECS));
            return 2;
        }
    };
    let vars: Vec<(String, String)> = std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect();
    match poll(&values, &vars) {
        Ok(()) => 0,
        Err(m) => {
            tracing::error!("{m}");
            1
        }
    }
}

/// The flags' values, by name.
struct Flags<'a> {
    kubeconfig: &'a str,
    server: &'a str,
    ns: &'a str,
    cron: &'a str,
    url: &'a str,
    certdir: &'a str,
}

/// The poll, in CDI's order; `Err` is the fatal log line.
fn poll(values: &[String], vars: &[(String, String)]) -> Result<(), String> {
    let [kubeconfig, server, ns, cron, url, certdir] = values else {
        return Err("internal error: flag values missing".into());
    };
    let env_kubeconfig = config::env_value(vars, "KUBECONFIG");
    let f = Flags {
        kubeconfig: if kubeconfig.is_empty() {
            env_kubeconfig
        } else {
            kubeconfig.as_str()
        },
        server,
        ns,
        cron,
        url,
        certdir,
    };
    if f.url.is_empty() || f.ns.is_empty() || f.cron.is_empty() {
        return Err("One or more mandatory parameters are missing".into());
    }
    let get = |k: &str| config::env_value(vars, k);
    let (user, secret) = (get(config::ENV_ACCESS_KEY), get(config::ENV_SECRET_KEY));
    let mut redactor = Redactor::default();
    redactor.add(secret);

    let paths = PodPaths::from_override(Some(get(POD_ROOT_ENV)));
    // The API client first: a pod that cannot reach its API server should
    // not query the registry for nothing.
    let api = in_cluster(&f, vars, &paths)?;

    let mut http = HttpOptions {
        basic_auth: (!user.is_empty() && !secret.is_empty())
            .then(|| (user.to_string(), secret.to_string())),
        insecure_tls: go_parse_bool(get(config::ENV_INSECURE_TLS)).unwrap_or(false),
        ..HttpOptions::default()
    };
    if !f.certdir.is_empty() {
        http.ca_dirs.push(f.certdir.into());
    }
    if std::fs::read_dir(&paths.proxy_certs_dir).is_ok() {
        http.ca_dirs.push(paths.proxy_certs_dir.clone());
    }
    // Credentials come from the pod's secret only, as in CDI.
    http.registry.auth_files = false;

    let rt =
        crate::source::runtime().map_err(|e| format!("Unable to start the async runtime: {e}"))?;
    tracing::info!("Inspecting image from '{}'", display_url(f.url));
    let digest =
        crate::source::registry::resolve_digest(f.url, &http, rt.handle()).map_err(|e| {
            redactor.scrub(&format!(
                "Failed to get image digest: {}",
                crate::error_chain(&e)
            ))
        })?;
    tracing::info!("Digest is {digest}");

    let path = cron_path(f.ns, f.cron);
    let failed = |what: &str, e: &(dyn std::error::Error + 'static)| {
        format!(
            "Failed {what} DataImportCron {}/{}: {}",
            f.ns,
            f.cron,
            crate::error_chain(e)
        )
    };
    let object = rt
        .block_on(api.get(&path))
        .map_err(|e| failed("getting", &e))?;
    let current = annotations(&object)
        .get(ANN_DESIRED_DIGEST)
        .cloned()
        .unwrap_or_default();
    let now = Civil::of(std::time::SystemTime::now()).rfc3339();
    let mut ops = vec![(ANN_LAST_CRON_TIME, now)];
    if !digest.is_empty() && digest != current {
        ops.push((ANN_DESIRED_DIGEST, digest));
        tracing::info!("Digest updated");
    } else {
        tracing::info!("No digest update");
    }
    rt.block_on(api.patch(&path, JSON_PATCH, patch_body(&ops).into_bytes()))
        .map_err(|e| failed("patching", &e))?;
    rt.shutdown_background();
    Ok(())
}

/// The API client, or CDI's words for why there is none.
fn in_cluster(
    f: &Flags<'_>,
    vars: &[(String, String)],
    paths: &PodPaths,
) -> Result<InCluster, String> {
    let context = |why: String| {
        format!(
            "Failed to build config; kubeURL {} configPath {}: {why}",
            f.server, f.kubeconfig
        )
    };
    if !f.kubeconfig.is_empty() || !f.server.is_empty() {
        return Err(context(
            "kubeconfig files and -server are not supported: streamdisk's poller uses the pod's service account".into(),
        ));
    }
    InCluster::new(vars, &paths.service_account_dir).map_err(|e| context(crate::error_chain(&e)))
}

/// The DataImportCron's API path.
fn cron_path(ns: &str, name: &str) -> String {
    format!(
        "/apis/cdi.kubevirt.io/v1beta1/namespaces/{}/dataimportcrons/{}",
        path_segment(ns),
        path_segment(name)
    )
}

/// `s` percent-encoded as one path segment (names are DNS labels, so this
/// changes nothing for a valid one).
fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The object's annotations (none when it has none).
fn annotations(object: &serde_json::Value) -> BTreeMap<String, String> {
    object
        .pointer("/metadata/annotations")
        .and_then(|a| a.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// The JSON patch CDI sends: one `add` per annotation, in Go's encoding.
pub(crate) fn patch_body(ops: &[(&str, String)]) -> String {
    let items: Vec<String> = ops
        .iter()
        .map(|(key, value)| {
            format!(
                "{{\"op\":\"add\",\"path\":{},\"value\":{}}}",
                go_json_string(&format!(
                    "/metadata/annotations/{}",
                    json_pointer_token(key)
                )),
                go_json_string(value)
            )
        })
        .collect();
    format!("[{}]", items.join(","))
}

/// RFC 6901 escaping of one pointer token: `~` as `~0`, `/` as `~1`.
fn json_pointer_token(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_is_cdis() {
        assert_eq!(
            patch_body(&[
                (ANN_LAST_CRON_TIME, "2026-12-01T10:00:00Z".into()),
                (ANN_DESIRED_DIGEST, "sha256:ab".into()),
            ]),
            r#"[{"op":"add","path":"/metadata/annotations/cdi.kubevirt.io~1storage.import.lastCronTime","value":"2026-12-01T10:00:00Z"},{"op":"add","path":"/metadata/annotations/cdi.kubevirt.io~1storage.import.sourceDesiredDigest","value":"sha256:ab"}]"#
        );
        assert_eq!(json_pointer_token("a~b/c"), "a~0b~1c");
    }

    #[test]
    fn paths_and_annotations() {
        assert_eq!(
            cron_path("kubevirt-os-images", "fedora-image-cron"),
            "/apis/cdi.kubevirt.io/v1beta1/namespaces/kubevirt-os-images/dataimportcrons/fedora-image-cron"
        );
        assert_eq!(path_segment("a/b c"), "a%2Fb%20c");
        let obj = serde_json::json!({"metadata": {"annotations": {"a": "1", ANN_DESIRED_DIGEST: "sha256:x"}}});
        assert_eq!(
            annotations(&obj)
                .get(ANN_DESIRED_DIGEST)
                .map(String::as_str),
            Some("sha256:x")
        );
        assert!(annotations(&serde_json::json!({"metadata": {}})).is_empty());
    }
}
