//! Compact mapping state: what the bytes ahead of the stream position are.
//!
//! Only host ranges *not yet passed* are kept, and they are dropped as the
//! stream passes them, so memory follows the number of pending extents, never
//! the virtual size:
//! - `plain`: disjoint ranges: runs of contiguous host-to-guest data (one entry
//!   for any number of clusters), the L1 table, L2 tables being awaited, and
//!   ranges known to hold no data (the refcount table);
//! - `compressed`: one entry per compressed cluster (they may share a sector);
//! - `l2_tables`: the host offset of every L2 table of the active L1, kept to
//!   refuse data that overlaps a table even after the table has passed.
//!
//! The budget ([`MAPPING_BUDGET`]) caps all three; an image that needs more
//! (extremely fragmented, or a huge image whose tables are all fetched up front
//! with range reads) is refused with a clear error instead of growing.

use std::collections::{BTreeMap, BTreeSet};

use super::Qcow2Error;

/// Memory the mapping state may use, in bytes (estimated per entry).
pub const MAPPING_BUDGET: usize = 8 << 20;
/// Estimated bytes per entry, BTreeMap overhead included.
const PLAIN_COST: usize = 64;
const COMPRESSED_COST: usize = 80;
const L2_COST: usize = 32;
/// Refcount blocks tracked at most (one per 2 GiB of a 64 KiB-cluster image,
/// so this covers 8 TiB; beyond, their bytes just pass through the window).
const MAX_REFBLOCKS: usize = 4096;

/// Parsing progress through a table that arrives in pieces.
#[derive(Debug, Clone, Default)]
pub(super) struct TableCursor {
    /// Bytes of the table consumed so far.
    pub parsed: u64,
    next_idx: u64,
    carry: [u8; 16],
    carry_len: usize,
}

impl TableCursor {
    /// Splits `bytes` (the next bytes of the table) into whole entries of
    /// `esize` (8 or 16) bytes, pushed to `out` as (index, first u64, second u64).
    pub(super) fn feed(&mut self, mut bytes: &[u8], esize: usize, out: &mut Vec<(u64, u64, u64)>) {
        self.parsed = self.parsed.saturating_add(bytes.len() as u64);
        let mut idx = self.next_idx;
        if self.carry_len > 0 {
            let need = esize - self.carry_len;
            let k = need.min(bytes.len());
            if let (Some(d), Some(s)) = (
                self.carry.get_mut(self.carry_len..self.carry_len + k),
                bytes.get(..k),
            ) {
                d.copy_from_slice(s);
            }
            self.carry_len += k;
            bytes = bytes.get(k..).unwrap_or_default();
            if self.carry_len < esize {
                self.next_idx = idx;
                return;
            }
            let e = self.carry;
            out.push(decode(idx, e.get(..esize).unwrap_or_default()));
            idx += 1;
            self.carry_len = 0;
        }
        let mut it = bytes.chunks_exact(esize);
        for e in &mut it {
            out.push(decode(idx, e));
            idx += 1;
        }
        self.next_idx = idx;
        let rem = it.remainder();
        if let Some(d) = self.carry.get_mut(..rem.len()) {
            d.copy_from_slice(rem);
        }
        self.carry_len = rem.len();
    }
}

fn decode(idx: u64, e: &[u8]) -> (u64, u64, u64) {
    let word = |i: usize| {
        let mut a = [0u8; 8];
        if let Some(s) = e.get(i..i + 8) {
            a.copy_from_slice(s);
        }
        u64::from_be_bytes(a)
    };
    (idx, word(0), if e.len() >= 16 { word(8) } else { 0 })
}

/// What a plain (non-compressed) pending host range holds.
#[derive(Debug, Clone)]
pub(super) enum Plain {
    /// Guest data: host byte `start + k` belongs at guest `guest + k`.
    Data { guest: u64 },
    /// The active L1 table.
    L1(TableCursor),
    /// An L2 table mapped by L1 entry `l1_index`.
    L2 { l1_index: u64, cursor: TableCursor },
    /// The refcount table: parsed only to learn where refcount blocks are.
    RefTable(TableCursor),
    /// A refcount block: holds no guest data, so its bytes are dropped
    /// instead of filling the reorder window.
    RefBlock,
}

#[derive(Debug, Clone)]
pub(super) struct PlainRegion {
    pub end: u64,
    pub kind: Plain,
}

/// A compressed cluster being collected.
#[derive(Debug, Clone)]
pub(super) struct CompressedRegion {
    /// End of its byte range (start + the descriptor's length bound).
    pub end: u64,
    /// Bytes received so far, from the start of the range.
    pub buf: Vec<u8>,
}

#[derive(Default)]
pub(super) struct MapState {
    pub plain: BTreeMap<u64, PlainRegion>,
    /// Keyed by (host start, guest offset): ranges may overlap.
    pub compressed: BTreeMap<(u64, u64), CompressedRegion>,
    pub l2_tables: BTreeSet<u64>,
    /// Fixed metadata ranges: header cluster, L1 (cluster-rounded), refcount table.
    pub fixed: Vec<(u64, u64, &'static str)>,
    /// Longest compressed range possible (bounds overlap searches).
    pub max_compressed: u64,
    pub cluster_size: u64,
    pub budget: usize,
    /// Refcount blocks marked so far.
    refblocks: usize,
    /// Bytes buffered by pending compressed clusters.
    compressed_bytes: usize,
}

impl MapState {
    pub(super) fn new(cluster_size: u64, budget: usize) -> MapState {
        MapState {
            cluster_size,
            // Up to 2^(cluster_bits - 8) sectors: at most two clusters.
            max_compressed: cluster_size.saturating_mul(2).saturating_add(512),
            budget,
            ..MapState::default()
        }
    }

    /// Estimated bytes in use.
    pub(super) fn usage(&self) -> usize {
        self.plain.len() * PLAIN_COST
            + self.compressed.len() * COMPRESSED_COST
            + self.l2_tables.len() * L2_COST
            + self.compressed_bytes
    }

    /// Adds a compressed cluster being collected (with the bytes it has).
    pub(super) fn insert_compressed(
        &mut self,
        key: (u64, u64),
        r: CompressedRegion,
    ) -> Result<(), Qcow2Error> {
        self.compressed_bytes += r.buf.len();
        if let Some(old) = self.compressed.insert(key, r) {
            self.compressed_bytes -= old.buf.len();
        }
        self.check_budget()
    }

    /// Removes a compressed cluster, returning it.
    pub(super) fn remove_compressed(&mut self, key: &(u64, u64)) -> Option<CompressedRegion> {
        let r = self.compressed.remove(key)?;
        self.compressed_bytes = self.compressed_bytes.saturating_sub(r.buf.len());
        Some(r)
    }

    /// Appends bytes to a compressed cluster; the budget bounds the total
    /// (hostile images can point many clusters at the same bytes).
    pub(super) fn extend_compressed(
        &mut self,
        key: &(u64, u64),
        bytes: &[u8],
    ) -> Result<(), Qcow2Error> {
        self.compressed_bytes += bytes.len();
        self.check_budget()?;
        if let Some(r) = self.compressed.get_mut(key) {
            r.buf.extend_from_slice(bytes);
        }
        Ok(())
    }

    pub(super) fn check_budget(&self) -> Result<(), Qcow2Error> {
        let u = self.usage();
        if u > self.budget {
            return Err(Qcow2Error::MappingBudget {
                budget: self.budget,
                extents: self.plain.len(),
                compressed: self.compressed.len(),
                l2_tables: self.l2_tables.len(),
            });
        }
        Ok(())
    }

    /// Refuses `[a, b)` if it overlaps the header, L1, refcount table or an L2 table.
    pub(super) fn check_metadata(
        &self,
        a: u64,
        b: u64,
        what: &'static str,
    ) -> Result<(), Qcow2Error> {
        let overlap = |other, other_at| Qcow2Error::Overlap {
            what,
            at: a,
            other,
            other_at,
        };
        for &(s, e, name) in &self.fixed {
            if a < e && s < b {
                return Err(overlap(name, s));
            }
        }
        let cs = self.cluster_size;
        if let Some(&t) = self.l2_tables.range(..b).next_back() {
            if t.saturating_add(cs) > a {
                return Err(overlap("L2 table", t));
            }
        }
        Ok(())
    }

    /// Refuses `[a, b)` if it overlaps a pending plain region.
    pub(super) fn check_plain(&self, a: u64, b: u64, what: &'static str) -> Result<(), Qcow2Error> {
        if let Some((&s, r)) = self.plain.range(..b).next_back() {
            if r.end > a {
                return Err(Qcow2Error::Overlap {
                    what,
                    at: a,
                    other: describe(&r.kind),
                    other_at: s,
                });
            }
        }
        Ok(())
    }

    /// Refuses `[a, b)` if it overlaps a pending compressed cluster.
    pub(super) fn check_compressed(
        &self,
        a: u64,
        b: u64,
        what: &'static str,
    ) -> Result<(), Qcow2Error> {
        let lo = a.saturating_sub(self.max_compressed);
        for (&(s, _), r) in self.compressed.range((lo, 0)..(b, 0)) {
            if r.end > a && s < b {
                return Err(Qcow2Error::Overlap {
                    what,
                    at: a,
                    other: "compressed cluster",
                    other_at: s,
                });
            }
        }
        Ok(())
    }

    /// Inserts a data run, merging with the run that ends where it starts.
    pub(super) fn insert_data(
        &mut self,
        host: u64,
        end: u64,
        guest: u64,
    ) -> Result<(), Qcow2Error> {
        self.check_plain(host, end, "data cluster")?;
        self.check_compressed(host, end, "data cluster")?;
        if let Some((&s, r)) = self.plain.range_mut(..host).next_back() {
            if let Plain::Data { guest: g } = r.kind {
                if r.end == host && g.checked_add(host - s) == Some(guest) {
                    r.end = end;
                    return Ok(());
                }
            }
        }
        self.plain.insert(
            host,
            PlainRegion {
                end,
                kind: Plain::Data { guest },
            },
        );
        self.check_budget()
    }

    pub(super) fn insert_table(
        &mut self,
        host: u64,
        end: u64,
        kind: Plain,
    ) -> Result<(), Qcow2Error> {
        self.check_plain(host, end, describe(&kind))?;
        self.check_compressed(host, end, describe(&kind))?;
        self.plain.insert(host, PlainRegion { end, kind });
        self.check_budget()
    }

    /// Marks a refcount block as known garbage, if it overlaps nothing
    /// (refcounts do not matter for reading, so a bad entry is ignored).
    pub(super) fn insert_refblock(&mut self, host: u64, end: u64) {
        let ok = self.check_metadata(host, end, "").is_ok()
            && self.check_plain(host, end, "").is_ok()
            && self.check_compressed(host, end, "").is_ok()
            && self.refblocks < MAX_REFBLOCKS;
        if ok {
            self.refblocks += 1;
            self.plain.insert(
                host,
                PlainRegion {
                    end,
                    kind: Plain::RefBlock,
                },
            );
        }
    }

    /// The plain region covering `pos`, if any, with its start.
    pub(super) fn plain_at(&self, pos: u64) -> Option<u64> {
        match self.plain.range(..=pos).next_back() {
            Some((&s, r)) if r.end > pos => Some(s),
            _ => None,
        }
    }

    /// Start of the first plain region after `pos`.
    pub(super) fn next_plain(&self, pos: u64) -> Option<u64> {
        self.plain.range(pos..).next().map(|(&s, _)| s)
    }
}

pub(super) fn describe(k: &Plain) -> &'static str {
    match k {
        Plain::Data { .. } => "data cluster",
        Plain::L1(_) => "L1 table",
        Plain::L2 { .. } => "L2 table",
        Plain::RefTable(_) => "refcount table",
        Plain::RefBlock => "refcount block",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_splits_entries_across_pieces() {
        let mut table = Vec::new();
        for i in 0..20u64 {
            table.extend_from_slice(&(i * 3).to_be_bytes());
            table.extend_from_slice(&(i * 5).to_be_bytes());
        }
        for piece in [1usize, 3, 7, 16, 17, 320] {
            let mut c = TableCursor::default();
            let mut out = Vec::new();
            for p in table.chunks(piece) {
                c.feed(p, 16, &mut out);
            }
            assert_eq!(out.len(), 20, "piece {piece}");
            for (i, &(idx, a, b)) in out.iter().enumerate() {
                assert_eq!((idx, a, b), (i as u64, i as u64 * 3, i as u64 * 5));
            }
        }
    }

    #[test]
    fn runs_merge_and_overlaps_are_refused() {
        let mut m = MapState::new(65536, MAPPING_BUDGET);
        for i in 0..100u64 {
            let h = 0x100000 + i * 65536;
            m.insert_data(h, h + 65536, i * 65536).expect("insert");
        }
        assert_eq!(m.plain.len(), 1, "one run for contiguous clusters");
        let e = m.insert_data(0x100000 + 65536 * 5, 0x100000 + 65536 * 6, 0);
        assert!(
            matches!(
                e,
                Err(Qcow2Error::Overlap {
                    what: "data cluster",
                    at: 0x150000,
                    other: "data cluster",
                    other_at: 0x100000
                })
            ),
            "{e:?}"
        );
        m.l2_tables.insert(0x900000);
        let e = m.check_metadata(0x900000, 0x910000, "data");
        assert!(
            matches!(
                e,
                Err(Qcow2Error::Overlap {
                    other: "L2 table",
                    other_at: 0x900000,
                    ..
                })
            ),
            "{e:?}"
        );
        assert!(m.check_metadata(0x910000, 0x920000, "data").is_ok());
        m.fixed.push((0, 65536, "image header"));
        let e = m.check_metadata(100, 65636, "compressed cluster");
        assert!(
            matches!(
                e,
                Err(Qcow2Error::Overlap {
                    what: "compressed cluster",
                    other: "image header",
                    ..
                })
            ),
            "{e:?}"
        );
    }

    #[test]
    fn budget_is_enforced() {
        let mut m = MapState::new(65536, 64 * 100);
        let mut err = None;
        for i in 0..1000u64 {
            // Every other cluster: no merging possible.
            let h = 0x100000 + i * 2 * 65536;
            if let Err(e) = m.insert_data(h, h + 65536, i * 65536) {
                err = Some(e);
                break;
            }
        }
        let err = err.expect("budget error");
        assert!(
            matches!(
                err,
                Qcow2Error::MappingBudget {
                    budget: 6400,
                    compressed: 0,
                    ..
                }
            ),
            "{err:?}"
        );
    }
}
