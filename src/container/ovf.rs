//! The OVF descriptor of an OVA: which files the package holds
//! (`References/File`) and which disks are made of them
//! (`DiskSection/Disk`). Nothing else of the descriptor (hardware,
//! networks, properties) matters to an import.
//!
//! The descriptor is parsed with `roxmltree`, a read-only DOM: descriptors
//! are small (a few KiB; [`super::ova::MAX_OVF`] bounds them), a tree is the
//! simplest way to query two sections by namespace, and the crate has no
//! dependency but `memchr`. DTDs are refused and the node count is bounded,
//! so a hostile descriptor cannot expand entities or grow the tree without
//! limit.
//!
//! Elements are matched in the root's namespace, which must be one of the
//! DMTF envelope namespaces (`.../ovf/envelope/1` for OVF 1.x, `/2` for
//! 2.x); attributes in that namespace (`ovf:href`) or unqualified, since
//! some writers leave the prefix off.

/// The DMTF OVF envelope namespaces start with this (1 and 2 follow).
const OVF_NAMESPACE: &str = "http://schemas.dmtf.org/ovf/envelope/";

/// Most XML nodes accepted in a descriptor (real ones have a few hundred to
/// a few thousand): bounds the tree of a hostile one, as [`super::ova::MAX_OVF`]
/// bounds its text and attributes.
const MAX_NODES: u32 = 20_000;

/// The parts of an OVF descriptor an import uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Descriptor {
    /// `References/File`, in document order.
    pub files: Vec<FileRef>,
    /// `DiskSection/Disk`, in document order (`--disk N` counts these).
    pub disks: Vec<Disk>,
}

/// One `References/File`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FileRef {
    /// `ovf:id`, what a disk's `ovf:fileRef` names.
    pub id: String,
    /// `ovf:href`: the member's name in the tar.
    pub href: String,
    /// `ovf:size` in bytes, when given and a number.
    pub size: Option<u64>,
    /// `ovf:compression` as written (`gzip`, or absent / `identity`).
    pub compression: Option<String>,
    /// `ovf:chunkSize` as written: the file is split into chunk members.
    pub chunk_size: Option<String>,
}

/// One `DiskSection/Disk`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Disk {
    /// `ovf:diskId`.
    pub id: String,
    /// `ovf:fileRef`; absent for an empty disk created at deployment.
    pub file_ref: Option<String>,
    /// `ovf:capacity` times `ovf:capacityAllocationUnits`, in bytes, when
    /// both are plain numbers (the capacity may be a `${property}`).
    pub capacity: Option<u64>,
    /// `ovf:format`: a URI naming the disk format (VMware's
    /// `...vmdk.html#streamOptimized`, for instance).
    pub format: Option<String>,
}

/// Why a descriptor could not be read.
#[derive(Debug, thiserror::Error)]
pub enum OvfError {
    /// Not UTF-8 (the encoding OVF requires).
    #[error("the descriptor is not UTF-8 text")]
    NotText,
    /// Not well-formed XML, or over the node limit, or with a DTD.
    #[error("the descriptor is not well-formed XML ({0})")]
    Xml(roxmltree::Error),
    /// The root is not an OVF `Envelope`.
    #[error("the descriptor's root element is {0}, not an OVF Envelope")]
    NotEnvelope(String),
    /// A `File` or `Disk` lacks an attribute it cannot do without.
    #[error("an OVF {element} element has no ovf:{attr} attribute")]
    Missing {
        /// `File` or `Disk`.
        element: &'static str,
        /// The attribute.
        attr: &'static str,
    },
}

/// Parses an OVF descriptor.
pub(crate) fn parse(bytes: &[u8]) -> Result<Descriptor, OvfError> {
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let text = std::str::from_utf8(bytes).map_err(|_| OvfError::NotText)?;
    let opts = roxmltree::ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_NODES,
        ..roxmltree::ParsingOptions::default()
    };
    let doc = roxmltree::Document::parse_with_options(text, opts).map_err(OvfError::Xml)?;
    let root = doc.root_element();
    let tag = root.tag_name();
    let ns = tag.namespace().filter(|n| n.starts_with(OVF_NAMESPACE));
    let Some(ns) = ns.filter(|_| tag.name() == "Envelope") else {
        return Err(OvfError::NotEnvelope(match tag.namespace() {
            Some(n) => format!("<{}> in namespace {n:?}", tag.name()),
            None => format!("<{}> without a namespace", tag.name()),
        }));
    };
    let ovf = Ovf { ns };
    let mut out = Descriptor::default();
    for refs in ovf.children(root, "References") {
        for f in ovf.children(refs, "File") {
            out.files.push(FileRef {
                id: ovf.required(f, "File", "id")?,
                href: ovf.required(f, "File", "href")?,
                size: ovf.attr(f, "size").and_then(number),
                compression: ovf.attr(f, "compression").map(str::to_string),
                chunk_size: ovf.attr(f, "chunkSize").map(str::to_string),
            });
        }
    }
    for section in ovf.children(root, "DiskSection") {
        for d in ovf.children(section, "Disk") {
            let capacity = ovf.attr(d, "capacity").and_then(number);
            let units = match ovf.attr(d, "capacityAllocationUnits") {
                None => Some(1),
                Some(u) => allocation_units(u),
            };
            out.disks.push(Disk {
                id: ovf.required(d, "Disk", "diskId")?,
                file_ref: ovf.attr(d, "fileRef").map(str::to_string),
                capacity: capacity.zip(units).and_then(|(c, u)| c.checked_mul(u)),
                format: ovf.attr(d, "format").map(str::to_string),
            });
        }
    }
    Ok(out)
}

/// Lookups in the descriptor's namespace.
struct Ovf<'a> {
    ns: &'a str,
}

impl<'a> Ovf<'a> {
    /// Child elements of `node` named `name` in the OVF namespace.
    fn children<'d, 'i>(
        &self,
        node: roxmltree::Node<'d, 'i>,
        name: &'static str,
    ) -> impl Iterator<Item = roxmltree::Node<'d, 'i>> + use<'d, 'i, 'a> {
        let ns = self.ns;
        node.children()
            .filter(move |c| c.is_element() && c.has_tag_name((ns, name)))
    }

    /// `ovf:name`, or an unqualified `name`.
    fn attr<'d>(&self, node: roxmltree::Node<'d, '_>, name: &str) -> Option<&'d str> {
        node.attribute((self.ns, name))
            .or_else(|| node.attribute(name))
    }

    fn required(
        &self,
        node: roxmltree::Node<'_, '_>,
        element: &'static str,
        attr: &'static str,
    ) -> Result<String, OvfError> {
        self.attr(node, attr)
            .map(str::to_string)
            .ok_or(OvfError::Missing { element, attr })
    }
}

fn number(s: &str) -> Option<u64> {
    s.trim().parse().ok()
}

/// `byte`, or `byte * 2^N` (the form OVF writers use, from DSP0004's
/// programmatic units), as a multiplier; `None` for anything else.
fn allocation_units(s: &str) -> Option<u64> {
    let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    let rest = compact.strip_prefix("byte")?;
    if rest.is_empty() {
        return Some(1);
    }
    let exp: u32 = rest.strip_prefix("*2^")?.parse().ok()?;
    1u64.checked_shl(exp).filter(|_| exp < 64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OVF1: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope vmw:buildId="build-1" xmlns="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:vmw="http://www.vmware.com/schema/ovf">
  <References>
    <File ovf:href="disk1.vmdk" ovf:id="file1" ovf:size="68608"/>
    <File ovf:href="disk2.img.gz" ovf:id="file2" ovf:compression="gzip"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="16" ovf:capacityAllocationUnits="byte * 2^30" ovf:diskId="vmdisk1"
      ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
    <Disk ovf:capacity="1048576" ovf:diskId="vmdisk2" ovf:fileRef="file2"/>
    <Disk ovf:capacity="${size}" ovf:diskId="scratch"/>
  </DiskSection>
</Envelope>"#;

    #[test]
    fn files_and_disks_in_order() {
        let d = parse(OVF1.as_bytes()).expect("parse");
        assert_eq!(d.files.len(), 2);
        assert_eq!(d.files[0].href, "disk1.vmdk");
        assert_eq!(d.files[0].size, Some(68608));
        assert_eq!(d.files[1].compression.as_deref(), Some("gzip"));
        assert_eq!(d.disks.len(), 3);
        assert_eq!(d.disks[0].capacity, Some(16 << 30));
        assert!(d.disks[0]
            .format
            .as_deref()
            .is_some_and(|f| f.ends_with("#streamOptimized")));
        assert_eq!(d.disks[1].file_ref.as_deref(), Some("file2"));
        assert_eq!(d.disks[1].capacity, Some(1 << 20));
        assert_eq!(d.disks[2].capacity, None);
        assert_eq!(d.disks[2].file_ref, None);
    }

    #[test]
    fn ovf2_and_unprefixed_attributes() {
        let x = r#"<ovf:Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/2">
            <ovf:References><ovf:File id="f" href="a.raw" ovf:chunkSize="1000"/></ovf:References>
            <ovf:DiskSection><ovf:Disk diskId="d" fileRef="f"/></ovf:DiskSection>
            </ovf:Envelope>"#;
        let d = parse(x.as_bytes()).expect("parse");
        assert_eq!(d.files[0].href, "a.raw");
        assert_eq!(d.files[0].chunk_size.as_deref(), Some("1000"));
        assert_eq!(d.disks[0].file_ref.as_deref(), Some("f"));
    }

    #[test]
    fn elements_outside_the_namespace_do_not_count() {
        let x = r#"<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:o="urn:other">
            <o:DiskSection><o:Disk diskId="d"/></o:DiskSection></Envelope>"#;
        assert!(parse(x.as_bytes()).expect("parse").disks.is_empty());
    }

    #[test]
    fn refusals() {
        let cases: &[(&[u8], &str)] = &[
            (b"\xff\xfe<\0", "not UTF-8"),
            (b"<Envelope", "not well-formed"),
            (b"<Envelope/>", "without a namespace"),
            (b"<a xmlns=\"http://schemas.dmtf.org/ovf/envelope/1\"/>", "<a>"),
            (
                b"<!DOCTYPE x [<!ENTITY a \"aaaa\">]><Envelope xmlns=\"http://schemas.dmtf.org/ovf/envelope/1\"/>",
                "not well-formed",
            ),
            (
                b"<Envelope xmlns=\"http://schemas.dmtf.org/ovf/envelope/1\"><References><File id=\"x\"/></References></Envelope>",
                "no ovf:href",
            ),
        ];
        for (bytes, words) in cases {
            let e = parse(bytes).expect_err("refused").to_string();
            assert!(e.contains(words), "{e}");
        }
    }

    #[test]
    fn the_node_count_is_bounded() {
        let mut x = String::from("<Envelope xmlns=\"http://schemas.dmtf.org/ovf/envelope/1\">");
        for _ in 0..MAX_NODES {
            x.push_str("<a/>");
        }
        x.push_str("</Envelope>");
        assert!(matches!(parse(x.as_bytes()), Err(OvfError::Xml(_))));
    }

    #[test]
    fn units() {
        assert_eq!(allocation_units("byte"), Some(1));
        assert_eq!(allocation_units("byte * 2^20"), Some(1 << 20));
        assert_eq!(allocation_units("byte*2^64"), None);
        assert_eq!(allocation_units("MegaBytes"), None);
    }
}
