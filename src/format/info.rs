//! [`ImageInfo`]: what `streamdisk info` reports about an image, with the
//! field names `qemu-img info --output json` uses, so that scripts written
//! against qemu-img read ours unchanged.

use serde::Serialize;

use super::Format;

/// The header facts of one image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageInfo {
    /// The format, named as qemu names it (`vpc` for VHD).
    pub format: Format,
    /// The guest-visible size in bytes (unknown only for a raw stream of
    /// unknown length).
    #[serde(rename = "virtual-size")]
    pub virtual_size: Option<u64>,
    /// The allocation unit (cluster, grain, block), where the format has one.
    #[serde(rename = "cluster-size", skip_serializing_if = "Option::is_none")]
    pub cluster_size: Option<u64>,
    /// The format's own fields.
    #[serde(rename = "format-specific", skip_serializing_if = "Option::is_none")]
    pub format_specific: Option<FormatSpecific>,
}

/// `format-specific` as qemu-img prints it: a type tag and a map of fields
/// (qemu's names, in kebab case).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FormatSpecific {
    /// The format's name.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The fields.
    pub data: serde_json::Map<String, serde_json::Value>,
}

impl FormatSpecific {
    /// An empty map for `kind`; add fields with [`FormatSpecific::with`].
    pub fn new(kind: &'static str) -> FormatSpecific {
        FormatSpecific {
            kind,
            data: serde_json::Map::new(),
        }
    }

    /// Adds one field.
    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> FormatSpecific {
        self.data.insert(key.to_string(), value.into());
        self
    }
}
