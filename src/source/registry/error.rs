//! [`RegistryError`]: why a registry image could not be read, one line
//! each, naming the image or blob and the problem.

/// Why a registry image could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The `docker://` reference does not parse.
    #[error("invalid image reference {reference:?}: {reason}")]
    BadReference {
        /// As given.
        reference: String,
        /// What is wrong.
        reason: String,
    },
    /// The registry asks for credentials and none were given (or found in
    /// an auth file for this registry).
    #[error("{registry} requires credentials (--user and --password-env, or an auth file entry for {registry})")]
    CredentialsRequired {
        /// The registry host.
        registry: String,
    },
    /// The token service refused or failed.
    #[error("token service {realm}: {detail}")]
    Token {
        /// The realm URL, without query.
        realm: String,
        /// What went wrong.
        detail: String,
    },
    /// A manifest kind this client does not read.
    #[error("{image}: {what} manifests are not supported{hint}")]
    UnsupportedManifest {
        /// The image.
        image: String,
        /// The kind, by name.
        what: String,
        /// What to do instead (starts with "; " when present).
        hint: &'static str,
    },
    /// An index lists no image for the platform asked for.
    #[error("{image}: no image for platform {wanted}; the index has {available}")]
    NoPlatform {
        /// The image.
        image: String,
        /// `os/arch[/variant]` asked for.
        wanted: String,
        /// The platforms it lists, comma-separated.
        available: String,
    },
    /// A single-platform image whose config names another architecture than
    /// the one required (CDI's wording).
    #[error("Error validating architecture: manifest image architecture: \"{found}\" doesn't match requested architecture: \"{wanted}\"")]
    WrongArchitecture {
        /// The config's architecture.
        found: String,
        /// The one required.
        wanted: String,
    },
    /// A bootc/ostree image: a bootable OS tree, not a disk (CDI's wording).
    #[error("bootc image detected: this image contains an ostree-based bootable OS (containers.bootc=1 or ostree.bootable=1) and cannot be imported as a regular container disk; bootc-to-disk conversion is not yet implemented")]
    Bootc,
    /// A blob's bytes do not hash to its digest (or have another length).
    #[error("checksum mismatch: {what}: expected {expected}, calculated {calculated}")]
    DigestMismatch {
        /// Which blob (manifest, config, layer N of M).
        what: String,
        /// The digest named by the manifest.
        expected: String,
        /// What arrived.
        calculated: String,
    },
    /// A blob is longer or shorter than its descriptor says.
    #[error("{what}: {got} bytes received, the manifest says {expected}")]
    SizeMismatch {
        /// Which blob.
        what: String,
        /// Bytes received.
        got: u64,
        /// Bytes announced.
        expected: u64,
    },
    /// A document (manifest, config) is larger than the limit.
    #[error("{what} is larger than {limit} bytes")]
    TooLarge {
        /// Which document.
        what: String,
        /// The limit.
        limit: u64,
    },
    /// A JSON document does not parse.
    #[error("{what} is not valid: {detail}")]
    BadDocument {
        /// Which document.
        what: String,
        /// The parser's message.
        detail: String,
    },
    /// No layer holds a disk entry.
    #[error("Failed to find VM disk image file in the container image {image}: no layer has an entry under disk/ (first entries seen: {seen})")]
    NoDisk {
        /// The image.
        image: String,
        /// The first entry names, comma-separated.
        seen: String,
    },
}
