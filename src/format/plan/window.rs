//! The window: stream bytes whose place is not known yet.
//!
//! qcow2 may store data before the L2 table that maps it (compressed images,
//! up to ~120 KiB ahead), or everything before the L1 table (resized images);
//! other formats may put their block table after the blocks. Such bytes are
//! held here, keyed by host offset, until a table places them or the mapping
//! is complete (then they are garbage and dropped). The in-memory part is
//! bounded by `limit`; beyond it the bytes spill to a scratch file, or the
//! hold is refused, by [`SpillPolicy`]. (On a seekable source the decoder
//! asks for its tables with range reads before it gets that far.)

use std::collections::BTreeMap;

use std::path::PathBuf;

use super::spill::SpillFile;
use super::{PlanError, SpillPolicy};

/// Largest in-memory segment; bounds the copy done when a hole is freed inside one.
const SEGMENT_MAX: usize = 64 << 10;

/// Held bytes, in memory and (after an overflow) in a scratch file.
pub(crate) struct Window {
    limit: usize,
    mem: BTreeMap<u64, Vec<u8>>,
    mem_bytes: usize,
    policy: SpillPolicy,
    spill: Option<SpillFile>,
    /// Bytes spilled over the whole decode (the file goes away early).
    spilled_total: u64,
}

impl Window {
    pub(crate) fn new(limit: usize, policy: SpillPolicy) -> Window {
        Window {
            limit,
            mem: BTreeMap::new(),
            mem_bytes: 0,
            policy,
            spill: None,
            spilled_total: 0,
        }
    }

    /// Bytes held in memory.
    #[cfg(test)]
    pub(crate) fn mem_bytes(&self) -> usize {
        self.mem_bytes
    }

    /// Bytes written to the scratch file so far.
    pub(crate) fn spilled_bytes(&self) -> u64 {
        self.spilled_total
    }

    /// Whether holding `n` more bytes would exceed the in-memory limit.
    pub(crate) fn would_overflow(&self, n: usize) -> bool {
        self.would_exceed(n, self.limit)
    }

    /// Whether holding `n` more bytes would take the in-memory part past `level`.
    pub(crate) fn would_exceed(&self, n: usize, level: usize) -> bool {
        self.mem_bytes.saturating_add(n) > level
    }

    /// Holds `bytes` found at host offset `host`. On overflow, moves the
    /// in-memory bytes to the scratch file, or fails if spilling is forbidden.
    pub(crate) fn hold(&mut self, host: u64, bytes: &[u8]) -> Result<(), PlanError> {
        if bytes.is_empty() {
            return Ok(());
        }
        if self.would_overflow(bytes.len()) {
            self.spill_all()?;
        }
        let mut host = host;
        let mut rest = bytes;
        // Append to the last segment when contiguous and not full.
        if let Some((&start, seg)) = self.mem.range_mut(..=host).next_back() {
            if start.checked_add(seg.len() as u64) == Some(host) && seg.len() < SEGMENT_MAX {
                let n = (SEGMENT_MAX - seg.len()).min(rest.len());
                let (a, b) = rest.split_at(n);
                seg.extend_from_slice(a);
                self.mem_bytes += n;
                rest = b;
                host = host.saturating_add(n as u64);
            }
        }
        for piece in rest.chunks(SEGMENT_MAX) {
            self.mem.insert(host, piece.to_vec());
            self.mem_bytes += piece.len();
            host = host.saturating_add(piece.len() as u64);
        }
        Ok(())
    }

    fn spill_all(&mut self) -> Result<(), PlanError> {
        let dir = match &self.policy {
            SpillPolicy::Forbid => return Err(PlanError::ScratchRequired { held: self.limit }),
            SpillPolicy::Dir(d) => d.clone(),
        };
        let scratch = |what: &'static str, dir: &PathBuf| {
            let dir = dir.clone();
            move |source| PlanError::Scratch { what, dir, source }
        };
        let spill = match self.spill.take() {
            Some(s) => self.spill.insert(s),
            None => self
                .spill
                .insert(SpillFile::create(&dir).map_err(scratch("creating", &dir))?),
        };
        for (host, seg) in std::mem::take(&mut self.mem) {
            spill.append(host, &seg).map_err(scratch("writing", &dir))?;
            self.spilled_total += seg.len() as u64;
        }
        self.mem_bytes = 0;
        Ok(())
    }

    /// Copies the held bytes `[host, host + out.len())` into `out`. Returns
    /// false when any of them is not held (never arrived as unknown bytes,
    /// or was already used). With `release`, the bytes leave memory.
    pub(crate) fn take(
        &mut self,
        host: u64,
        out: &mut [u8],
        release: bool,
    ) -> Result<bool, PlanError> {
        let Some(end) = host.checked_add(out.len() as u64) else {
            return Ok(false);
        };
        let mut filled = 0u64;
        // Memory segments first.
        let first = self
            .mem
            .range(..=host)
            .next_back()
            .map(|(&s, _)| s)
            .unwrap_or(host);
        let mut spans: Vec<(u64, u64)> = Vec::new();
        for (&s, seg) in self.mem.range(first..end) {
            let e = s.saturating_add(seg.len() as u64);
            let (a, b) = (s.max(host), e.min(end));
            if a >= b {
                continue;
            }
            let (src_a, src_b) = ((a - s) as usize, (b - s) as usize);
            let (dst_a, dst_b) = ((a - host) as usize, (b - host) as usize);
            if let (Some(d), Some(src)) = (out.get_mut(dst_a..dst_b), seg.get(src_a..src_b)) {
                d.copy_from_slice(src);
                spans.push((a, b));
                filled += b - a;
            }
        }
        if filled < out.len() as u64 {
            // The rest may be in the scratch file.
            let Some(spill) = self.spill.as_mut() else {
                return Ok(false);
            };
            spans.sort_unstable();
            let mut gaps = Vec::new();
            let mut cur = host;
            for &(a, b) in &spans {
                if a > cur {
                    gaps.push((cur, a));
                }
                cur = cur.max(b);
            }
            if cur < end {
                gaps.push((cur, end));
            }
            for (a, b) in gaps {
                let Some(dst) = out.get_mut((a - host) as usize..(b - host) as usize) else {
                    return Ok(false);
                };
                let ok = spill.read(a, dst).map_err(|source| PlanError::Scratch {
                    what: "reading",
                    dir: match &self.policy {
                        SpillPolicy::Dir(d) => d.clone(),
                        SpillPolicy::Forbid => PathBuf::new(),
                    },
                    source,
                })?;
                if !ok {
                    return Ok(false);
                }
            }
        }
        if release {
            self.release(host, end);
        }
        Ok(true)
    }

    /// Forgets the in-memory bytes of `[a, b)`.
    pub(crate) fn release(&mut self, a: u64, b: u64) {
        let first = self
            .mem
            .range(..=a)
            .next_back()
            .map(|(&s, _)| s)
            .unwrap_or(a);
        let keys: Vec<u64> = self.mem.range(first..b).map(|(&s, _)| s).collect();
        for s in keys {
            let Some(seg) = self.mem.remove(&s) else {
                continue;
            };
            let e = s.saturating_add(seg.len() as u64);
            if e <= a || s >= b {
                self.mem.insert(s, seg);
                continue;
            }
            self.mem_bytes -= seg.len();
            if s < a {
                let left = seg.get(..(a - s) as usize).unwrap_or_default().to_vec();
                self.mem_bytes += left.len();
                self.mem.insert(s, left);
            }
            if e > b {
                let right = seg.get((b - s) as usize..).unwrap_or_default().to_vec();
                self.mem_bytes += right.len();
                self.mem.insert(b, right);
            }
        }
    }

    /// Drops everything: the mapping is complete, what is held is garbage.
    pub(crate) fn clear(&mut self) {
        self.mem.clear();
        self.mem_bytes = 0;
        // The scratch file's bytes are no longer needed either; it was unlinked
        // at creation, so dropping it frees the space.
        self.spill = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_take_release() {
        let mut w = Window::new(1 << 20, SpillPolicy::Forbid);
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        w.hold(1000, &data).expect("hold");
        let mut out = vec![0u8; 70_000];
        assert!(w.take(1000 + 60_000, &mut out, true).expect("take"));
        assert_eq!(&out[..], &data[60_000..130_000]);
        assert_eq!(w.mem_bytes(), 200_000 - 70_000);
        assert!(!w.take(1000 + 60_000, &mut out, false).expect("take"));
        let mut out = vec![0u8; 10];
        assert!(w.take(1000 + 130_000, &mut out, false).expect("take"));
        assert_eq!(&out[..], &data[130_000..130_010]);
        w.clear();
        assert_eq!(w.mem_bytes(), 0);
    }

    #[test]
    fn forbid_refuses_overflow() {
        let mut w = Window::new(100, SpillPolicy::Forbid);
        w.hold(0, &[1; 100]).expect("fits");
        let e = w.hold(100, &[1]).unwrap_err();
        assert!(matches!(e, PlanError::ScratchRequired { held: 100 }), "{e}");
    }

    #[test]
    fn spills_and_reads_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        spill_roundtrip(dir.path());
    }

    /// tmpfs refuses O_DIRECT: the spill falls back to buffered I/O.
    #[test]
    fn spills_on_tmpfs() {
        match tempfile::tempdir_in("/dev/shm") {
            Ok(dir) => spill_roundtrip(dir.path()),
            Err(e) => println!("skipped: no /dev/shm ({e})"),
        }
    }

    fn spill_roundtrip(dir: &std::path::Path) {
        let mut w = Window::new(10_000, SpillPolicy::Dir(dir.to_path_buf()));
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        for (i, c) in data.chunks(3000).enumerate() {
            w.hold(5000 + (i * 3000) as u64, c).expect("hold");
        }
        assert!(w.spilled_bytes() > 0);
        // From the flushed part of the file, across the staging buffer, and
        // from the staging buffer alone.
        for (a, n) in [
            (40_000usize, 50_000usize),
            (1_000_000, 1_200_000),
            (2_500_000, 400_000),
        ] {
            let mut out = vec![0u8; n];
            assert!(w.take(5000 + a as u64, &mut out, false).expect("take"));
            assert!(out[..] == data[a..a + n], "spilled bytes at {a}");
        }
        assert_eq!(std::fs::read_dir(dir).expect("dir").count(), 0, "unlinked");
    }
}
