//! What an error answer's body says, in one short line: object stores
//! explain a refusal there (S3's `<Code>SignatureDoesNotMatch</Code>`, GCS's
//! JSON `error.message`, an OAuth2 server's `error_description`), and the
//! status alone cannot tell a wrong secret from a missing permission.

use std::time::Duration;

use reqwest::Response;

/// Most body bytes read for the explanation: error documents are small, and
/// a large body is not one.
const MAX_BODY: usize = 4 << 10;

/// Longest time spent waiting for the body.
const MAX_WAIT: Duration = Duration::from_secs(5);

/// Longest explanation kept, in characters.
const MAX_DETAIL: usize = 300;

/// Reads the start of `resp`'s body and returns `": CODE: message"` (or the
/// parts found), or an empty string when the body explains nothing in a
/// form known here (an HTML page, a timeout).
pub(super) async fn detail(mut resp: Response) -> String {
    let mut body = Vec::new();
    let read = async {
        while body.len() < MAX_BODY {
            match resp.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(MAX_WAIT, read).await;
    body.truncate(MAX_BODY);
    explain(&String::from_utf8_lossy(&body))
}

/// The explanation found in `text` (see [`detail`]).
fn explain(text: &str) -> String {
    let text = text.trim_start();
    let parts: Vec<String> = if text.starts_with('<') {
        ["Code", "Message"]
            .iter()
            .filter_map(|tag| xml_element(text, tag))
            .collect()
    } else if text.starts_with('{') {
        json_parts(text)
    } else {
        Vec::new()
    };
    let joined = parts
        .iter()
        .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(": ");
    if joined.is_empty() {
        return String::new();
    }
    let short: String = joined.chars().take(MAX_DETAIL).collect();
    format!(": {short}")
}

/// The text of the first `<tag>...</tag>` in `xml` (no nesting, no
/// entities beyond the five predefined ones).
fn xml_element(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)?.checked_add(open.len())?;
    let len = xml.get(start..)?.find(&close)?;
    let raw = xml.get(start..start.checked_add(len)?)?;
    Some(
        raw.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

/// `{"error": {"code": N, "message": "..."}}` (Google APIs),
/// `{"error": "...", "error_description": "..."}` (OAuth2), or
/// `{"message": "..."}`.
fn json_parts(text: &str) -> Vec<String> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
        return Vec::new();
    };
    let s = |v: Option<&serde_json::Value>| v.and_then(|x| x.as_str()).map(str::to_string);
    match v.get("error") {
        Some(serde_json::Value::Object(e)) => s(e.get("message")).into_iter().collect(),
        Some(serde_json::Value::String(code)) => std::iter::once(code.clone())
            .chain(s(v.get("error_description")))
            .collect(),
        _ => s(v.get("message")).into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::explain;

    #[test]
    fn s3_xml_errors() {
        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match the signature you provided. Check your key &amp; signing method.</Message><RequestId>1</RequestId></Error>";
        assert_eq!(
            explain(body),
            ": SignatureDoesNotMatch: The request signature we calculated does not match the signature you provided. Check your key & signing method."
        );
        assert_eq!(
            explain("<Error><Code>NoSuchKey</Code></Error>"),
            ": NoSuchKey"
        );
    }

    #[test]
    fn json_errors() {
        assert_eq!(
            explain(r#"{"error":{"code":403,"message":"no access\n to it"}}"#),
            ": no access to it"
        );
        assert_eq!(
            explain(r#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#),
            ": invalid_grant: Invalid JWT Signature."
        );
        assert_eq!(explain(r#"{"message":"nope"}"#), ": nope");
    }

    #[test]
    fn other_bodies_explain_nothing() {
        assert_eq!(explain("<html><body>404</body></html>"), "");
        assert_eq!(explain("not found"), "");
        assert_eq!(explain(""), "");
        assert_eq!(explain("{broken"), "");
        assert_eq!(explain("<Error><Code>unterminated"), "");
        let long = format!("<Code>{}</Code>", "x".repeat(1000));
        assert_eq!(explain(&long).chars().count(), 302);
    }
}
