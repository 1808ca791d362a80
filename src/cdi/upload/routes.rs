//! The upload server's paths (CDI's `pkg/common` lists), matched exactly as
//! Go's `ServeMux` matches paths registered without a trailing slash.

/// When the answer comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// After the image is written and durable.
    Sync,
    /// Once the body is received; the rest runs in the background.
    Async,
}

/// How the image is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Body {
    /// The request body is the image.
    Plain,
    /// `multipart/form-data`, the image in the part named `file`.
    Form,
}

/// What the upload holds (unless a clone header says otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Content {
    /// A disk image.
    Disk,
    /// A tar archive for the filesystem volume.
    Archive,
}

/// One path's meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// The readiness probe.
    Healthz,
    /// The progress metric (not CDI's).
    Metrics,
    /// An upload route.
    Upload {
        mode: Mode,
        body: Body,
        content: Content,
    },
    /// Anything else: 404.
    NotFound,
}

impl Route {
    /// The route for `path`.
    pub(crate) fn of(path: &str) -> Route {
        let up = |mode, body, content| Route::Upload {
            mode,
            body,
            content,
        };
        match path {
            "/healthz" => Route::Healthz,
            "/metrics" => Route::Metrics,
            "/v1beta1/upload" | "/v1alpha1/upload" => up(Mode::Sync, Body::Plain, Content::Disk),
            "/v1beta1/upload-async" | "/v1alpha1/upload-async" => {
                up(Mode::Async, Body::Plain, Content::Disk)
            }
            "/v1beta1/upload-archive" | "/v1alpha1/upload-archive" => {
                up(Mode::Sync, Body::Plain, Content::Archive)
            }
            "/v1beta1/upload-form" | "/v1alpha1/upload-form" => {
                up(Mode::Sync, Body::Form, Content::Disk)
            }
            "/v1beta1/upload-form-async" | "/v1alpha1/upload-form-async" => {
                up(Mode::Async, Body::Form, Content::Disk)
            }
            _ => Route::NotFound,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdi_paths() {
        for v in ["v1beta1", "v1alpha1"] {
            assert_eq!(
                Route::of(&format!("/{v}/upload")),
                Route::Upload {
                    mode: Mode::Sync,
                    body: Body::Plain,
                    content: Content::Disk
                }
            );
            assert_eq!(
                Route::of(&format!("/{v}/upload-async")),
                Route::Upload {
                    mode: Mode::Async,
                    body: Body::Plain,
                    content: Content::Disk
                }
            );
            assert_eq!(
                Route::of(&format!("/{v}/upload-archive")),
                Route::Upload {
                    mode: Mode::Sync,
                    body: Body::Plain,
                    content: Content::Archive
                }
            );
            assert_eq!(
                Route::of(&format!("/{v}/upload-form")),
                Route::Upload {
                    mode: Mode::Sync,
                    body: Body::Form,
                    content: Content::Disk
                }
            );
            assert_eq!(
                Route::of(&format!("/{v}/upload-form-async")),
                Route::Upload {
                    mode: Mode::Async,
                    body: Body::Form,
                    content: Content::Disk
                }
            );
        }
        assert_eq!(Route::of("/healthz"), Route::Healthz);
        assert_eq!(Route::of("/metrics"), Route::Metrics);
        for other in ["/", "/v1beta1/upload/", "/v1/upload", "/healthz/x", ""] {
            assert_eq!(Route::of(other), Route::NotFound, "{other:?}");
        }
    }
}
