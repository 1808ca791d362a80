//! How a pod run ends: the exit code and the termination message, which
//! together are all the import controller sees.
//!
//! Only three endings exit 0 (success, "scratch space required", checksum
//! mismatch) and each writes the JSON the controller unmarshals. Every other
//! ending is [`Outcome::Failed`]: plain text, exit 1, so the kubelet restarts
//! the container and the controller shows the text.

use std::collections::BTreeMap;

use super::termination::{TerminationMessage, COMPLETE};

/// The end of a pod run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Imported (or blank disk made). `scratch_space_required` is `None` for
    /// blank disks, whose message CDI writes without that field.
    Complete {
        scratch_space_required: Option<bool>,
        preallocation_applied: bool,
        /// PVC labels from a registry node-pull sidecar (usually empty).
        labels: BTreeMap<String, String>,
    },
    /// The image needs spill space and the pod has no `/scratch`: the
    /// controller recreates the pod with a scratch volume.
    ScratchRequired,
    /// The full message, starting `Unable to process data: checksum mismatch`.
    ChecksumMismatch(String),
    /// Any other failure, as the text to show.
    Failed(String),
}

impl Outcome {
    pub(crate) fn exit_code(&self) -> i32 {
        match self {
            Outcome::Failed(_) => 1,
            _ => 0,
        }
    }

    /// The termination message text (before newline normalization).
    pub(crate) fn message(&self) -> String {
        match self {
            Outcome::Complete {
                scratch_space_required,
                preallocation_applied,
                labels,
            } => TerminationMessage {
                scratch_space_required: *scratch_space_required,
                preallocation_applied: Some(*preallocation_applied),
                labels: labels.clone(),
                message: Some(COMPLETE.to_string()),
                ..Default::default()
            }
            .to_json(),
            Outcome::ScratchRequired => TerminationMessage {
                scratch_space_required: Some(true),
                preallocation_applied: Some(false),
                message: Some(COMPLETE.to_string()),
                ..Default::default()
            }
            .to_json(),
            Outcome::ChecksumMismatch(m) => TerminationMessage {
                message: Some(m.clone()),
                ..Default::default()
            }
            .to_json(),
            Outcome::Failed(m) => controller_wording(m),
        }
    }
}

/// The controller recognises "volume too small" by lower-case substrings
/// (`no space left on device`, `disk quota exceeded`) that Go's error strings
/// use; Rust's `io::Error` prints the C library's capitalised `strerror` text.
pub(crate) fn controller_wording(msg: &str) -> String {
    msg.replace("No space left on device", "no space left on device")
        .replace("Disk quota exceeded", "disk quota exceeded")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_codes() {
        let ok = Outcome::Complete {
            scratch_space_required: Some(false),
            preallocation_applied: true,
            labels: BTreeMap::new(),
        };
        assert_eq!(ok.exit_code(), 0);
        assert_eq!(
            ok.message(),
            r#"{"scratchSpaceRequired":false,"preallocationApplied":true,"message":"Import Complete"}"#
        );
        let blank = Outcome::Complete {
            scratch_space_required: None,
            preallocation_applied: false,
            labels: BTreeMap::new(),
        };
        assert_eq!(
            blank.message(),
            r#"{"preallocationApplied":false,"message":"Import Complete"}"#
        );
        assert_eq!(
            Outcome::ScratchRequired.message(),
            r#"{"scratchSpaceRequired":true,"preallocationApplied":false,"message":"Import Complete"}"#
        );
        assert_eq!(Outcome::ScratchRequired.exit_code(), 0);
        let cm = Outcome::ChecksumMismatch("Unable to process data: checksum mismatch: a".into());
        assert_eq!(cm.exit_code(), 0);
        assert_eq!(
            cm.message(),
            r#"{"message":"Unable to process data: checksum mismatch: a"}"#
        );
        let f = Outcome::Failed("writing: No space left on device (os error 28)".into());
        assert_eq!(f.exit_code(), 1);
        assert_eq!(
            f.message(),
            "writing: no space left on device (os error 28)"
        );
    }
}
