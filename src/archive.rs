//! `archive` content: a tar (optionally gzip/xz/zstd compressed, unwrapped by
//! [`crate::unwrap`] before it gets here) extracted into the data volume, safely.
//!
//! CDI pipes the stream into `tar --preserve-permissions --no-same-owner -x`.
//! We extract in-process with the same effect (modes kept, owners not, mtimes
//! set), but refuse what could reach outside the volume or create nodes an
//! unprivileged pod must not: a hostile archive is a realistic input here, since
//! the URL is user-supplied.
//!
//! * Member names are made relative (a leading `/` is dropped, as GNU tar
//!   does); a `..` component fails the import.
//! * A member whose parent path goes through a symbolic link fails the import:
//!   after that, lexical checks no longer describe where bytes land.
//! * Symbolic links whose target is absolute or climbs out of the volume, hard
//!   links to outside, device nodes and FIFOs are skipped with a warning.
//! * Directory permissions are applied last, so a read-only directory in the
//!   archive does not stop its own contents from being written.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use tar::EntryType;

/// Why extraction stopped.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("archive member {0:?} escapes the target directory")]
    Escapes(String),
    #[error("archive member {0:?} passes through a symbolic link")]
    ThroughSymlink(String),
    #[error("unable to untar files from endpoint: {context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> ArchiveError {
    let context = context.into();
    move |source| ArchiveError::Io { context, source }
}

/// What was extracted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExtractStats {
    pub files: u64,
    pub dirs: u64,
    pub links: u64,
    pub skipped: u64,
    pub bytes: u64,
}

/// Extracts the tar stream `input` (already decompressed) into `dest`.
pub(crate) fn extract(input: &mut dyn Read, dest: &Path) -> Result<ExtractStats, ArchiveError> {
    let mut stats = ExtractStats::default();
    let mut dir_modes: Vec<(PathBuf, u32, u64)> = Vec::new();
    let mut archive = tar::Archive::new(input);
    let entries = archive.entries().map_err(io_err("reading archive"))?;
    for entry in entries {
        let mut entry = entry.map_err(io_err("reading archive"))?;
        let raw_name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let name = entry
            .path()
            .map_err(io_err(format!("member {raw_name:?}")))?;
        let Some(rel) =
            member_path(&name).ok_or_else(|| ArchiveError::Escapes(raw_name.clone()))?
        else {
            continue; // "." or "/": the volume itself
        };
        let kind = entry.header().entry_type();
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        let mtime = entry.header().mtime().unwrap_or(0);
        if matches!(kind, EntryType::XGlobalHeader | EntryType::XHeader) {
            continue;
        }
        let target = prepare_parent(dest, &rel, &raw_name)?;
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                remove_existing(&target)?;
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&target)
                    .map_err(io_err(format!("creating {}", target.display())))?;
                let n = copy_sparse(&mut entry, &mut f)
                    .map_err(io_err(format!("writing {}", target.display())))?;
                f.set_permissions(fs::Permissions::from_mode(mode))
                    .map_err(io_err(format!("chmod {}", target.display())))?;
                set_mtime(&f, mtime);
                stats.files = stats.files.saturating_add(1);
                stats.bytes = stats.bytes.saturating_add(n);
            }
            EntryType::Directory => {
                match fs::symlink_metadata(&target) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        remove_existing(&target)?;
                        mkdir(&target)?;
                    }
                    Err(_) => mkdir(&target)?,
                }
                dir_modes.push((target, mode, mtime));
                stats.dirs = stats.dirs.saturating_add(1);
            }
            EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(io_err(format!("member {raw_name:?}")))?
                    .unwrap_or_default()
                    .into_owned();
                if !symlink_stays_inside(&rel, &link) {
                    tracing::warn!(member = %raw_name, target = %link.display(), "skipping a symbolic link that points outside the volume");
                    stats.skipped = stats.skipped.saturating_add(1);
                    continue;
                }
                remove_existing(&target)?;
                std::os::unix::fs::symlink(&link, &target)
                    .map_err(io_err(format!("creating symlink {}", target.display())))?;
                stats.links = stats.links.saturating_add(1);
            }
            EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(io_err(format!("member {raw_name:?}")))?
                    .unwrap_or_default()
                    .into_owned();
                let Some(Some(link_rel)) = member_path(&link) else {
                    tracing::warn!(member = %raw_name, target = %link.display(), "skipping a hard link to outside the volume");
                    stats.skipped = stats.skipped.saturating_add(1);
                    continue;
                };
                let source = prepare_parent(dest, &link_rel, &raw_name)?;
                remove_existing(&target)?;
                // linkat(2) without AT_SYMLINK_FOLLOW: a link to a symlink links
                // the symlink itself, never what it points to.
                fs::hard_link(&source, &target)
                    .map_err(io_err(format!("creating hard link {}", target.display())))?;
                stats.links = stats.links.saturating_add(1);
            }
            other => {
                tracing::warn!(member = %raw_name, kind = ?other, "skipping an archive member that is not a file, directory or link");
                stats.skipped = stats.skipped.saturating_add(1);
            }
        }
    }
    // Deepest first, so that a read-only parent is locked only after its children.
    dir_modes.sort_by_key(|d| std::cmp::Reverse(d.0.components().count()));
    for (dir, mode, mtime) in dir_modes {
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode))
            .map_err(io_err(format!("chmod {}", dir.display())))?;
        if let Ok(f) = File::open(&dir) {
            set_mtime(&f, mtime);
        }
    }
    Ok(stats)
}

/// Granule of [`copy_sparse`]'s zero detection: a filesystem block or more.
const SPARSE_GRANULE: usize = 64 << 10;

/// Copies `r` into the new, empty file `f`, leaving holes where whole
/// granules of zeros are (a GNU sparse member's holes, or a disk image's
/// empty regions, which `tar -S` does not mark when the source volume was
/// preallocated). Returns the bytes copied.
fn copy_sparse(r: &mut dyn Read, f: &mut File) -> io::Result<u64> {
    use std::io::{Seek, SeekFrom, Write};
    let mut buf = vec![0u8; SPARSE_GRANULE];
    let mut total = 0u64;
    let mut pending_hole = false;
    loop {
        // Fill a whole granule (or what is left) so holes stay aligned.
        let mut got = 0;
        while got < buf.len() {
            match r.read(buf.get_mut(got..).unwrap_or_default()) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if got == 0 {
            break;
        }
        let chunk = buf.get(..got).unwrap_or_default();
        if crate::format::raw::is_zero(chunk) {
            f.seek(SeekFrom::Current(got as i64))?;
            pending_hole = true;
        } else {
            f.write_all(chunk)?;
            pending_hole = false;
        }
        total += got as u64;
        if got < buf.len() {
            break;
        }
    }
    if pending_hole {
        // A trailing hole: the length comes from the size, not a write.
        f.set_len(total)?;
    }
    Ok(total)
}

/// A member name as a path relative to the volume: `Some(None)` for the volume
/// itself, `None` when it climbs out (`..`).
fn member_path(name: &Path) -> Option<Option<PathBuf>> {
    let mut out = PathBuf::new();
    for c in name.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
            Component::ParentDir => return None,
        }
    }
    Some((!out.as_os_str().is_empty()).then_some(out))
}

/// Whether a symlink at `rel` (relative to the volume) with target `link`
/// stays inside the volume.
///
/// Only targets of the form `../../a/b` are accepted: some `..` (never more
/// than the link's depth), then names. A `..` after a name is refused because
/// that name may itself be a symlink, and then `..` moves relative to where it
/// points (`l -> .` makes `l/l/../..` climb two levels, not zero). With this rule,
/// and members never written through symlinks, every link we create resolves
/// inside the volume by induction.
fn symlink_stays_inside(rel: &Path, link: &Path) -> bool {
    if link.is_absolute() || link.as_os_str().is_empty() {
        return false;
    }
    let mut ups_allowed: usize = rel.components().count().saturating_sub(1);
    let mut descending = false;
    for c in link.components() {
        match c {
            Component::Normal(_) => descending = true,
            Component::CurDir => {}
            Component::ParentDir if !descending => match ups_allowed.checked_sub(1) {
                Some(d) => ups_allowed = d,
                None => return false,
            },
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// Creates the parent directories of `dest/rel` (mode 0755, adjusted later if
/// the archive lists them), refusing to go through a symlink. Returns the full path.
fn prepare_parent(dest: &Path, rel: &Path, member: &str) -> Result<PathBuf, ArchiveError> {
    let mut cur = dest.to_path_buf();
    let parts: Vec<_> = rel.components().collect();
    let (last, parents) = match parts.split_last() {
        Some(x) => x,
        None => return Err(ArchiveError::Escapes(member.to_string())),
    };
    for c in parents {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(ArchiveError::ThroughSymlink(member.to_string()))
            }
            Ok(_) => {
                remove_existing(&cur)?;
                mkdir(&cur)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => mkdir(&cur)?,
            Err(e) => return Err(io_err(format!("inspecting {}", cur.display()))(e)),
        }
    }
    cur.push(last);
    Ok(cur)
}

fn mkdir(p: &Path) -> Result<(), ArchiveError> {
    fs::create_dir(p).map_err(io_err(format!("creating directory {}", p.display())))
}

/// Removes a non-directory (or an empty directory) at `p`, as tar replaces
/// existing members; a symlink is removed, never followed.
fn remove_existing(p: &Path) -> Result<(), ArchiveError> {
    match fs::symlink_metadata(p) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(format!("inspecting {}", p.display()))(e)),
        Ok(m) if m.is_dir() => {
            fs::remove_dir(p).map_err(io_err(format!("replacing directory {}", p.display())))
        }
        Ok(_) => fs::remove_file(p).map_err(io_err(format!("replacing {}", p.display()))),
    }
}

/// Best effort, like tar's: a failure to set a timestamp is not worth failing the import.
fn set_mtime(f: &File, mtime: u64) {
    let secs = i64::try_from(mtime).unwrap_or(i64::MAX);
    let t = nix::sys::time::TimeSpec::new(secs, 0);
    if let Err(e) = nix::sys::stat::futimens(f, &t, &t) {
        tracing::debug!(error = %e, "could not set a file time");
    }
}

/// Removes everything inside `dir` but not `dir` itself (it is the volume's
/// mount point), as CDI does after an archive fails its checksum.
pub(crate) fn remove_contents(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let p = entry.path();
        let res = if entry.file_type()?.is_dir() {
            make_writable(&p);
            fs::remove_dir_all(&p)
        } else {
            fs::remove_file(&p)
        };
        if let Err(e) = res {
            tracing::warn!(path = %p.display(), error = %e, "could not remove after a checksum failure");
        }
    }
    Ok(())
}

/// Read-only directories from the archive would stop `remove_dir_all`.
fn make_writable(dir: &Path) {
    if let Ok(m) = fs::symlink_metadata(dir) {
        if m.is_dir() {
            let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
            if let Ok(rd) = fs::read_dir(dir) {
                for e in rd.flatten() {
                    make_writable(&e.path());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Appends a member with an arbitrary (possibly hostile) name, bypassing
    /// the builder's own path checks.
    fn raw_member(
        b: &mut tar::Builder<Vec<u8>>,
        name: &str,
        kind: EntryType,
        link: &str,
        data: &[u8],
    ) {
        let mut h = tar::Header::new_gnu();
        {
            let old = h.as_old_mut();
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_mode(0o640);
        h.set_size(data.len() as u64);
        h.set_mtime(1_000_000_000);
        h.set_cksum();
        b.append(&h, data).expect("append");
    }

    fn extract_bytes(tar: &[u8], dest: &Path) -> Result<ExtractStats, ArchiveError> {
        let mut r = io::Cursor::new(tar.to_vec());
        extract(&mut r, dest)
    }

    #[test]
    fn extracts_files_dirs_links_with_modes() {
        let mut b = tar::Builder::new(Vec::new());
        raw_member(&mut b, "./dir/", EntryType::Directory, "", b"");
        raw_member(&mut b, "dir/a.txt", EntryType::Regular, "", b"hello");
        raw_member(&mut b, "/abs.txt", EntryType::Regular, "", b"abs");
        raw_member(&mut b, "dir/ln", EntryType::Symlink, "a.txt", b"");
        raw_member(&mut b, "hard", EntryType::Link, "dir/a.txt", b"");
        raw_member(&mut b, "deep/er/f", EntryType::Regular, "", b"x");
        let tar = b.into_inner().expect("tar");
        let dir = tempfile::tempdir().expect("tempdir");
        let s = extract_bytes(&tar, dir.path()).expect("extract");
        assert_eq!((s.files, s.dirs, s.links, s.skipped), (3, 1, 2, 0));
        let p = dir.path();
        assert_eq!(fs::read(p.join("dir/a.txt")).expect("read"), b"hello");
        assert_eq!(fs::read(p.join("abs.txt")).expect("read"), b"abs");
        assert_eq!(fs::read(p.join("dir/ln")).expect("read"), b"hello");
        assert_eq!(fs::read(p.join("hard")).expect("read"), b"hello");
        let m = fs::metadata(p.join("dir/a.txt")).expect("meta");
        assert_eq!(m.permissions().mode() & 0o777, 0o640);
        assert_eq!(
            fs::metadata(p.join("dir"))
                .expect("meta")
                .permissions()
                .mode()
                & 0o777,
            0o640
        );
        use std::os::unix::fs::MetadataExt;
        assert_eq!(m.mtime(), 1_000_000_000);
        // Make the 0640 directory removable for the tempdir's cleanup.
        make_writable(p);
    }

    #[test]
    fn refuses_traversal_and_skips_unsafe_nodes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut b = tar::Builder::new(Vec::new());
        raw_member(&mut b, "../evil", EntryType::Regular, "", b"x");
        let e = extract_bytes(&b.into_inner().expect("tar"), dir.path()).expect_err("refused");
        assert!(matches!(e, ArchiveError::Escapes(_)), "{e}");

        let mut b = tar::Builder::new(Vec::new());
        raw_member(&mut b, "up", EntryType::Symlink, "../../etc", b"");
        raw_member(&mut b, "abs", EntryType::Symlink, "/etc/passwd", b"");
        raw_member(&mut b, "hl", EntryType::Link, "../outside", b"");
        raw_member(&mut b, "dev", EntryType::Block, "", b"");
        raw_member(&mut b, "chr", EntryType::Char, "", b"");
        raw_member(&mut b, "fifo", EntryType::Fifo, "", b"");
        raw_member(&mut b, "loop", EntryType::Symlink, "sub/../x", b"");
        raw_member(&mut b, "ok", EntryType::Symlink, "./x", b"");
        raw_member(&mut b, "d2/ok", EntryType::Symlink, "../x/y", b"");
        let s = extract_bytes(&b.into_inner().expect("tar"), dir.path()).expect("extract");
        assert_eq!(s.skipped, 7);
        assert_eq!(s.links, 2);
        for n in ["up", "abs", "hl", "dev", "chr", "fifo", "loop"] {
            assert!(fs::symlink_metadata(dir.path().join(n)).is_err(), "{n}");
        }

        // A member written through a symlink (even one that stays inside) is refused.
        let mut b = tar::Builder::new(Vec::new());
        raw_member(&mut b, "d", EntryType::Directory, "", b"");
        raw_member(&mut b, "l", EntryType::Symlink, "d", b"");
        raw_member(&mut b, "l/f", EntryType::Regular, "", b"x");
        let e = extract_bytes(&b.into_inner().expect("tar"), dir.path()).expect_err("refused");
        assert!(matches!(e, ArchiveError::ThroughSymlink(_)), "{e}");
        make_writable(dir.path());
    }

    #[test]
    fn replaces_a_planted_symlink_instead_of_following_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        let victim = outside.path().join("victim");
        fs::write(&victim, b"keep").expect("write");
        std::os::unix::fs::symlink(&victim, dir.path().join("f")).expect("symlink");
        let mut b = tar::Builder::new(Vec::new());
        raw_member(&mut b, "f", EntryType::Regular, "", b"new");
        extract_bytes(&b.into_inner().expect("tar"), dir.path()).expect("extract");
        assert_eq!(fs::read(&victim).expect("read"), b"keep");
        assert_eq!(fs::read(dir.path().join("f")).expect("read"), b"new");
    }

    #[test]
    fn remove_contents_keeps_the_mount_point() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(dir.path().join("a/b")).expect("mkdir");
        fs::write(dir.path().join("a/b/f"), b"x").expect("write");
        fs::set_permissions(dir.path().join("a"), fs::Permissions::from_mode(0o500))
            .expect("chmod");
        fs::write(dir.path().join("g"), b"x").expect("write");
        remove_contents(dir.path()).expect("remove");
        assert!(dir.path().exists());
        assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 0);
    }
}
