//! The async half of an upload: the request body (or, for the form routes,
//! the form's `file` part) forwarded chunk by chunk into the bridge of
//! [`super::body`].
//!
//! Forms are parsed with `multer` as they stream: each part's bytes are
//! handed on as they arrive and never collected, parts before `file` are
//! read through and dropped, as CDI's server does with Go's multipart
//! reader. What does not parse as a form is the client's fault (400); the
//! verdict is left in a [`Verdict`] slot before the pipeline hears of it, so
//! the handler can tell such an error from a failed write.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::TryStreamExt;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::oneshot;

use super::body::{BodySender, Closed};

/// The form part CDI takes the image from.
pub(crate) const FORM_FIELD: &str = "file";

/// What the client did wrong, when the forwarder found out.
pub(crate) type Verdict = Arc<Mutex<Option<String>>>;

/// Forwards every data frame of `body`; `received` fires once the whole
/// body was delivered to the bridge.
pub(crate) async fn body(body: Incoming, mut tx: BodySender, received: oneshot::Sender<()>) {
    let mut frames = body.into_data_stream();
    loop {
        match frames.try_next().await {
            Ok(Some(data)) => {
                if tx.put(data).await == Err(Closed) {
                    return;
                }
            }
            Ok(None) => {
                tx.finish(Ok(())).await;
                let _ = received.send(());
                return;
            }
            Err(e) => {
                tx.finish(Err(format!("reading the request body: {e}")))
                    .await;
                return;
            }
        }
    }
}

/// The multipart boundary of a `multipart/form-data` request, or why the
/// request is not one.
pub(crate) fn boundary(content_type: Option<&str>) -> Result<String, String> {
    let ct = content_type.ok_or("a form upload needs a multipart/form-data Content-Type")?;
    multer::parse_boundary(ct)
        .map_err(|e| format!("request Content-Type isn't multipart/form-data: {e}"))
}

/// Forwards the bytes of the form part named [`FORM_FIELD`]; `received`
/// fires once they were all delivered. The parts after it are read
/// through, so that the connection stays usable.
pub(crate) async fn form(
    body: Incoming,
    boundary: String,
    mut tx: BodySender,
    received: oneshot::Sender<()>,
    verdict: Verdict,
) {
    let stream = body.into_data_stream();
    let mut form = multer::Multipart::new(stream, boundary);
    let refuse = |why: String| {
        if let Ok(mut v) = verdict.lock() {
            *v = Some(why.clone());
        }
        why
    };
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => {
                let why = refuse(format!("the form has no part named {FORM_FIELD:?}"));
                tx.finish(Err(why)).await;
                return;
            }
            Err(e) => {
                let why = refuse(format!("reading the form: {e}"));
                tx.finish(Err(why)).await;
                return;
            }
        };
        if field.name() != Some(FORM_FIELD) {
            tracing::info!(part = ?field.name(), "ignoring form part");
            drop(field);
            continue;
        }
        let mut field = field;
        loop {
            match field.chunk().await {
                Ok(Some(chunk)) => {
                    if put(&mut tx, chunk).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let why = match e {
                        multer::Error::StreamReadFailed(_) => {
                            format!("reading the request body: {e}")
                        }
                        other => refuse(format!("reading the form: {other}")),
                    };
                    tx.finish(Err(why)).await;
                    return;
                }
            }
        }
        drop(field);
        tx.finish(Ok(())).await;
        let _ = received.send(());
        // The rest of the form (later parts, the closing boundary).
        while let Ok(Some(rest)) = form.next_field().await {
            tracing::info!(part = ?rest.name(), "ignoring form part after the file");
        }
        return;
    }
}

async fn put(tx: &mut BodySender, chunk: Bytes) -> Result<(), Closed> {
    tx.put(chunk).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries() {
        assert_eq!(
            boundary(Some("multipart/form-data; boundary=------abc123")),
            Ok("------abc123".to_string())
        );
        assert!(boundary(None).is_err());
        assert!(boundary(Some("application/octet-stream")).is_err());
        assert!(boundary(Some("multipart/form-data")).is_err());
    }
}
