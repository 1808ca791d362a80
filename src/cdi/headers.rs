//! Secret extra headers: one `Name: value` per file under `/extraheaders/`.
//!
//! CDI mounts each secret at `/extraheaders/<i>/`; Kubernetes populates a
//! secret volume with `..data` and timestamped `..2024_...` directories plus
//! symlinks, so, like CDI, entries whose name starts with a dot are skipped and
//! the visible files are read in lexical order. A missing directory means no
//! secret headers.

use std::io;
use std::path::Path;

use super::config::Header;

/// Reads every secret header under `dir`. Lines without a colon are dropped
/// (as CDI drops them), with a warning naming the file but never its content.
pub(crate) fn read_secret_headers(dir: &Path) -> io::Result<Vec<Header>> {
    let mut out = Vec::new();
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(with_path(e, dir)),
        Ok(_) => {}
    }
    walk(dir, &mut out)?;
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<Header>) -> io::Result<()> {
    let mut entries = std::fs::read_dir(dir)
        .map_err(|e| with_path(e, dir))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| with_path(e, dir))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        // Like CDI's filepath.Walk: directories are descended without following
        // symlinks (no loops), and every other entry is read through (the
        // visible names of a secret volume are symlinks into `..data`).
        let meta = std::fs::symlink_metadata(&path).map_err(|e| with_path(e, &path))?;
        if meta.is_dir() {
            walk(&path, out)?;
        } else {
            let text = std::fs::read_to_string(&path).map_err(|e| with_path(e, &path))?;
            match Header::parse(&text, true) {
                Some(h) => out.push(h),
                None => {
                    tracing::warn!(file = %path.display(), "ignoring secret header file without a \"Name: value\" line")
                }
            }
        }
    }
    Ok(())
}

fn with_path(e: io::Error, p: &Path) -> io::Error {
    io::Error::new(
        e.kind(),
        format!("reading headers from {}: {e}", p.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_secret_volume_layout() {
        let root = tempfile::tempdir().expect("tempdir");
        let d0 = root.path().join("0");
        let data = d0.join("..2024_01_01");
        std::fs::create_dir_all(&data).expect("mkdir");
        std::fs::write(data.join("token"), "Authorization: Bearer s3cr3t\n").expect("write");
        std::os::unix::fs::symlink("..2024_01_01", d0.join("..data")).expect("symlink");
        std::os::unix::fs::symlink("..data/token", d0.join("token")).expect("symlink");
        let d1 = root.path().join("1");
        std::fs::create_dir_all(&d1).expect("mkdir");
        std::fs::write(d1.join("h"), "X-Other:v").expect("write");
        std::fs::write(d1.join("bad"), "no colon").expect("write");
        std::fs::write(d1.join(".hidden"), "X-Hidden: 1").expect("write");

        let h = read_secret_headers(root.path()).expect("read");
        let got: Vec<_> = h
            .iter()
            .map(|h| (h.name.as_str(), h.value.as_str(), h.secret))
            .collect();
        assert_eq!(
            got,
            vec![
                ("Authorization", "Bearer s3cr3t", true),
                ("X-Other", "v", true)
            ]
        );
        assert!(read_secret_headers(&root.path().join("absent"))
            .expect("ok")
            .is_empty());
    }
}
