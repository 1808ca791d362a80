//! The termination message: how the import controller learns the outcome.
//!
//! The kubelet copies `/dev/termination-log` into the pod status; the controller
//! `json.Unmarshal`s it when the container exited 0, and otherwise shows it as
//! text (matching substrings such as `no space left on device`). CDI writes it
//! with Go's `encoding/json` (fields in declaration order, `omitempty`, HTML
//! characters escaped) and then replaces newlines with spaces and keeps the first
//! line. We reproduce that byte for byte.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::gojson::go_json_string;

/// The message CDI writes on success.
pub(crate) const COMPLETE: &str = "Import Complete";

/// The kubelet keeps at most this many bytes of a termination message.
const KUBELET_LIMIT: usize = 4096;

/// CDI's `common.TerminationMessage`, restricted to the fields an import or
/// an upload sets. `None` fields are omitted, as with Go's `omitempty` on pointers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TerminationMessage {
    pub scratch_space_required: Option<bool>,
    pub preallocation_applied: Option<bool>,
    /// The upload server's deadline passed before an upload finished.
    pub deadline_passed: Option<bool>,
    /// PVC labels (registry node-pull imports); omitted when empty, like a
    /// Go map with `omitempty`. Go writes map keys sorted, as `BTreeMap` iterates.
    pub labels: BTreeMap<String, String>,
    pub message: Option<String>,
}

impl TerminationMessage {
    /// The JSON text, as Go's `json.Marshal` would produce it.
    pub(crate) fn to_json(&self) -> String {
        let mut fields = Vec::new();
        if let Some(b) = self.scratch_space_required {
            fields.push(format!("\"scratchSpaceRequired\":{b}"));
        }
        if let Some(b) = self.preallocation_applied {
            fields.push(format!("\"preallocationApplied\":{b}"));
        }
        if let Some(b) = self.deadline_passed {
            fields.push(format!("\"deadlinePassed\":{b}"));
        }
        if !self.labels.is_empty() {
            let pairs: Vec<String> = self
                .labels
                .iter()
                .map(|(k, v)| format!("{}:{}", go_json_string(k), go_json_string(v)))
                .collect();
            fields.push(format!("\"labels\":{{{}}}", pairs.join(",")));
        }
        if let Some(m) = &self.message {
            fields.push(format!("\"message\":{}", go_json_string(m)));
        }
        format!("{{{}}}", fields.join(","))
    }
}

/// What CDI's `WriteTerminationMessageToFile` turns a message into: newlines
/// become spaces and only the first line is kept (which drops a trailing `\r`).
/// We also cut at the kubelet's limit, on a character boundary, where CDI would
/// write nothing at all for an over-long message.
pub(crate) fn normalize(message: &str) -> String {
    let mut line = message.replace('\n', " ");
    if line.ends_with('\r') {
        line.pop();
    }
    if line.len() > KUBELET_LIMIT {
        let mut cut = KUBELET_LIMIT;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
    }
    line
}

/// Writes `message` (normalized) to the termination log, replacing its
/// contents, mode 0600 as CDI creates it. An empty message writes nothing, as in CDI.
pub(crate) fn write(path: &Path, message: &str) -> io::Result<()> {
    let line = normalize(message);
    if line.is_empty() {
        return Ok(());
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(line.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_order_and_omission() {
        let ok = TerminationMessage {
            scratch_space_required: Some(false),
            preallocation_applied: Some(false),
            message: Some(COMPLETE.into()),
            ..Default::default()
        };
        assert_eq!(
            ok.to_json(),
            r#"{"scratchSpaceRequired":false,"preallocationApplied":false,"message":"Import Complete"}"#
        );
        let blank = TerminationMessage {
            preallocation_applied: Some(true),
            message: Some(COMPLETE.into()),
            ..Default::default()
        };
        assert_eq!(
            blank.to_json(),
            r#"{"preallocationApplied":true,"message":"Import Complete"}"#
        );
        let mismatch = TerminationMessage {
            message: Some("Unable to process data: checksum mismatch: x".into()),
            ..Default::default()
        };
        assert_eq!(
            mismatch.to_json(),
            r#"{"message":"Unable to process data: checksum mismatch: x"}"#
        );
        assert_eq!(TerminationMessage::default().to_json(), "{}");
        let labelled = TerminationMessage {
            scratch_space_required: Some(false),
            preallocation_applied: Some(false),
            labels: [
                ("z".to_string(), "1".to_string()),
                ("a<".to_string(), "2".to_string()),
            ]
            .into_iter()
            .collect(),
            message: Some(COMPLETE.into()),
            ..Default::default()
        };
        assert_eq!(
            labelled.to_json(),
            r#"{"scratchSpaceRequired":false,"preallocationApplied":false,"labels":{"a\u003c":"2","z":"1"},"message":"Import Complete"}"#
        );
    }

    #[test]
    fn normalizes_like_cdi() {
        assert_eq!(normalize("a\nb\n"), "a b ");
        assert_eq!(normalize("a\r"), "a");
        let long = "é".repeat(3000);
        let n = normalize(&long);
        assert!(n.len() <= KUBELET_LIMIT && n.len() >= KUBELET_LIMIT - 1);
    }

    #[test]
    fn writes_and_replaces() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("termination-log");
        write(&p, "first message that is long").expect("write");
        write(&p, "two\nlines").expect("write");
        assert_eq!(std::fs::read_to_string(&p).expect("read"), "two lines");
        write(&p, "").expect("write");
        assert_eq!(std::fs::read_to_string(&p).expect("read"), "two lines");
    }
}
