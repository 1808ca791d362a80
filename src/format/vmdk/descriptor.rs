//! The text descriptor ("Virtual Disk Format 1.1", *The Descriptor File*):
//! embedded in a sparse extent (sector 1 on), or a file of its own that
//! names separate extent files.
//!
//! QEMU reads the embedded one loosely, with `strstr` and `sscanf`
//! (`vmdk_read_cid`, `vmdk_parent_open`): the CID is the hex number four
//! characters after the first `CID`, the parent CID ten after the first
//! `parentCID`, and a `parentFileNameHint` makes the disk a delta that needs
//! its parent. [`qemu_cid`] and [`parent_hint`] do the same, so that `info`
//! prints qemu-img's numbers and a delta disk is refused as qemu-img would
//! need its parent. The extent lines and `createType` are read line by line
//! ([`Descriptor::parse`]), only to name what a multi-file disk needs.

/// Most extent file names listed in a refusal.
const MAX_NAMED: usize = 8;

/// One extent line: `ACCESS SECTORS TYPE "FILE" [OFFSET]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Extent {
    /// `FLAT`, `SPARSE`, `VMFS`, ...
    pub(crate) kind: String,
    /// The extent file's name, as written.
    pub(crate) file: String,
}

/// What a descriptor says about the disk's files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Descriptor {
    /// `createType`, without quotes.
    pub(crate) create_type: Option<String>,
    /// The extent lines.
    pub(crate) extents: Vec<Extent>,
}

/// The text up to its first NUL (as C string functions see it).
fn c_str(area: &[u8]) -> &[u8] {
    let end = area.iter().position(|&b| b == 0).unwrap_or(area.len());
    area.get(..end).unwrap_or_default()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl Descriptor {
    /// Reads the `createType` and extent lines of `text`.
    pub(crate) fn parse(text: &[u8]) -> Descriptor {
        let text = String::from_utf8_lossy(c_str(text));
        let mut d = Descriptor::default();
        for line in text.lines() {
            let line = line.trim();
            if let Some(v) = line.strip_prefix("createType") {
                if let Some(v) = v.trim_start().strip_prefix('=') {
                    d.create_type = Some(v.trim().trim_matches('"').to_string());
                }
                continue;
            }
            if let Some(e) = extent_line(line) {
                d.extents.push(e);
            }
        }
        d
    }

    /// The extent files named, for a message: `a.vmdk, b.vmdk` (the first
    /// few, then how many more).
    pub(crate) fn files(&self) -> String {
        let mut names: Vec<String> = self
            .extents
            .iter()
            .take(MAX_NAMED)
            .map(|e| e.file.clone())
            .collect();
        if self.extents.len() > MAX_NAMED {
            names.push(format!("and {} more", self.extents.len() - MAX_NAMED));
        }
        names.join(", ")
    }

    /// Whether this descriptor, embedded in a sparse extent, describes a
    /// disk made of more files than this one.
    pub(crate) fn is_multi_file(&self) -> bool {
        let single = matches!(
            self.create_type.as_deref(),
            None | Some("monolithicSparse" | "streamOptimized")
        );
        !single || self.extents.len() > 1
    }
}

/// `RW 2048 SPARSE "disk.vmdk"`, `RDONLY 4096 FLAT "disk-flat.vmdk" 0`, ...
fn extent_line(line: &str) -> Option<Extent> {
    let (access, rest) = token(line)?;
    if !matches!(access, "RW" | "RDONLY" | "NOACCESS") {
        return None;
    }
    let (sectors, rest) = token(rest)?;
    sectors.parse::<u64>().ok()?;
    let (kind, rest) = token(rest)?;
    let (file, _) = rest.strip_prefix('"')?.split_once('"')?;
    Some(Extent {
        kind: kind.to_string(),
        file: file.to_string(),
    })
}

/// The first word of `s` and what follows it (leading blanks removed).
fn token(s: &str) -> Option<(&str, &str)> {
    let s = s.trim_start();
    let (word, rest) = s.split_once(char::is_whitespace)?;
    Some((word, rest.trim_start()))
}

/// The CID (or with `parent`, the parent CID) as QEMU reads it from the
/// descriptor area: `None` where QEMU fails to open the image.
pub(crate) fn qemu_cid(area: &[u8], parent: bool) -> Option<u32> {
    let text = c_str(area);
    let name: &[u8] = if parent { b"parentCID" } else { b"CID" };
    let at = find(text, name)? + name.len() + 1;
    scan_hex(text.get(at..)?)
}

/// `sscanf("%x")`: optional white space, sign and `0x`, then hex digits,
/// converted as `strtoul` does and truncated to 32 bits.
fn scan_hex(s: &[u8]) -> Option<u32> {
    let mut i = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let negative = match s.get(i) {
        Some(b'-') => {
            i += 1;
            true
        }
        Some(b'+') => {
            i += 1;
            false
        }
        _ => false,
    };
    if matches!(s.get(i..i + 2), Some(b"0x" | b"0X"))
        && s.get(i + 2).is_some_and(u8::is_ascii_hexdigit)
    {
        i += 2;
    }
    let mut v: u64 = 0;
    let mut digits = 0;
    let mut overflow = false;
    while let Some(d) = s.get(i).and_then(|&c| (c as char).to_digit(16)) {
        match v.checked_mul(16).and_then(|x| x.checked_add(u64::from(d))) {
            Some(x) => v = x,
            None => overflow = true,
        }
        digits += 1;
        i += 1;
    }
    if digits == 0 {
        return None;
    }
    if overflow {
        v = u64::MAX;
    } else if negative {
        v = v.wrapping_neg();
    }
    Some(v as u32)
}

/// The parent named by `parentFileNameHint="..."`, as QEMU finds it.
pub(crate) fn parent_hint(area: &[u8]) -> Option<String> {
    let text = c_str(area);
    let name = b"parentFileNameHint";
    let at = find(text, name)? + name.len() + 2;
    let rest = text.get(at..).unwrap_or_default();
    let end = rest.iter().position(|&b| b == b'"').unwrap_or(rest.len());
    Some(String::from_utf8_lossy(rest.get(..end).unwrap_or_default()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const QEMU: &str = "# Disk DescriptorFile\nversion=1\nCID=72efcf41\nparentCID=ffffffff\n\
        createType=\"twoGbMaxExtentSparse\"\n\n# Extent description\n\
        RW 4194304 SPARSE \"sp-s001.vmdk\"\nRW 2097152 SPARSE \"sp-s002.vmdk\"\n\n\
        # The Disk Data Base\n#DDB\n\nddb.adapterType = \"ide\"\n";

    #[test]
    fn reads_create_type_extents_and_cids() {
        let d = Descriptor::parse(QEMU.as_bytes());
        assert_eq!(d.create_type.as_deref(), Some("twoGbMaxExtentSparse"));
        assert_eq!(d.files(), "sp-s001.vmdk, sp-s002.vmdk");
        assert!(d.is_multi_file());
        assert_eq!(qemu_cid(QEMU.as_bytes(), false), Some(0x72ef_cf41));
        assert_eq!(qemu_cid(QEMU.as_bytes(), true), Some(0xffff_ffff));
        assert_eq!(parent_hint(QEMU.as_bytes()), None);
        let flat =
            Descriptor::parse(b"createType=monolithicFlat\nRDONLY 2048 FLAT \"d-flat.vmdk\" 0\n");
        assert_eq!(flat.extents[0].kind, "FLAT");
        assert!(flat.is_multi_file());
        let single =
            Descriptor::parse(b"createType=\"streamOptimized\"\nRW 2048 SPARSE \"x.vmdk\"\n");
        assert!(!single.is_multi_file());
    }

    #[test]
    fn cids_as_sscanf_reads_them() {
        assert_eq!(qemu_cid(b"CID= 0x1f\n", false), Some(0x1f));
        assert_eq!(qemu_cid(b"CID=-1\n", false), Some(0xffff_ffff));
        assert_eq!(
            qemu_cid(b"CID=fffffffffffffffff\n", false),
            Some(0xffff_ffff)
        );
        assert_eq!(qemu_cid(b"CID=zz\n", false), None);
        assert_eq!(qemu_cid(b"no id\n", false), None);
        // Only parentCID: its "CID" is found first, as strstr finds it.
        assert_eq!(qemu_cid(b"parentCID=12\n", false), Some(0x12));
        assert_eq!(qemu_cid(b"CID=1\0parentCID=2", true), None);
        assert_eq!(
            parent_hint(b"parentFileNameHint=\"base.vmdk\"\n").as_deref(),
            Some("base.vmdk")
        );
    }

    #[test]
    fn many_extents_are_counted_not_listed() {
        let text: String = (0..12)
            .map(|i| format!("RW 100 FLAT \"f{i}.vmdk\" 0\n"))
            .collect();
        let d = Descriptor::parse(text.as_bytes());
        assert_eq!(d.extents.len(), 12);
        assert!(d.files().ends_with("f7.vmdk, and 4 more"), "{}", d.files());
    }
}
