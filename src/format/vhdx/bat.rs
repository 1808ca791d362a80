//! The block allocation table, parsed as it passes, and the [`Mapping`] it
//! leaves: where each allocated block's bytes lie in the file.
//!
//! Entries come in guest order: `chunk_ratio` payload entries, then one
//! sector bitmap entry (ignored: only differencing images use bitmaps), and
//! so on. Each payload entry's low three bits are its state, the upper 44
//! its file offset in MiB. qemu reads states 0, 1, 2, 3 and 5 as zeros and
//! state 6 (fully present) from the file; it fails on 7 (partially present,
//! differencing images only) and on the reserved 4, and so does this parser.
//!
//! Allocated blocks become runs (consecutive blocks at consecutive file
//! offsets merge, so `qemu-img convert`'s output is one run), zero blocks
//! become guest ranges (merged likewise); both count against the budget, so
//! a huge, fragmented image is refused instead of growing memory. Once the
//! table is complete the runs are sorted by file offset, to be met in stream
//! order, and checked for overlaps.

use super::layout::Layout;
use super::metadata::Params;
use super::VhdxError;

/// Estimated bytes per run and per zero range (a `Vec` element each).
const RUN_COST: usize = std::mem::size_of::<Run>();
const ZERO_COST: usize = std::mem::size_of::<(u64, u64)>();
/// The file offset bits of an entry.
const OFFSET_MASK: u64 = 0xffff_ffff_fff0_0000;
/// Sectors a sector bitmap block describes.
const BITMAP_SECTORS: u64 = 1 << 23;

/// The block geometry the metadata gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub(crate) block_size: u64,
    /// Payload entries between two sector bitmap entries.
    pub(crate) chunk_ratio: u64,
    pub(crate) virtual_size: u64,
    /// Entries to read (payload and bitmap).
    pub(crate) entries: u64,
}

impl Geometry {
    /// The geometry of `p`, checked against a BAT region of `bat_len` bytes.
    pub(crate) fn new(p: &Params, bat_len: u64) -> Result<Geometry, VhdxError> {
        let block_size = u64::from(p.block_size);
        let chunk_ratio = BITMAP_SECTORS * u64::from(p.logical_sector) / block_size;
        let blocks = p.virtual_size.div_ceil(block_size);
        let entries = match blocks {
            0 => 0,
            n => n + (n - 1) / chunk_ratio,
        };
        if entries > bat_len / 8 {
            return Err(VhdxError::BatTooSmall {
                entries,
                len: u32::try_from(bat_len).unwrap_or(u32::MAX),
            });
        }
        Ok(Geometry {
            block_size,
            chunk_ratio,
            virtual_size: p.virtual_size,
            entries,
        })
    }

    /// Bytes of the BAT to read.
    pub(crate) fn bat_bytes(&self) -> u64 {
        self.entries * 8
    }
}

/// Allocated blocks: host `[host, host + len)` holds guest `[guest, guest + len)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Run {
    pub(crate) host: u64,
    pub(crate) guest: u64,
    pub(crate) len: u64,
}

/// Parses BAT entries from consecutive pieces of the table.
#[derive(Debug)]
pub(crate) struct BatParser {
    geo: Geometry,
    /// Bytes taken so far.
    consumed: u64,
    carry: [u8; 8],
    carry_len: usize,
    runs: Vec<Run>,
    zeros: Vec<(u64, u64)>,
    budget: usize,
    /// The stream's length, when known (blocks past it are refused early).
    stream_len: Option<u64>,
}

impl BatParser {
    pub(crate) fn new(geo: Geometry, budget: usize, stream_len: Option<u64>) -> BatParser {
        BatParser {
            geo,
            consumed: 0,
            carry: [0; 8],
            carry_len: 0,
            runs: Vec::new(),
            zeros: Vec::new(),
            budget,
            stream_len,
        }
    }

    pub(crate) fn geometry(&self) -> Geometry {
        self.geo
    }

    /// Bytes of the table taken so far.
    pub(crate) fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Whether every entry has been parsed.
    pub(crate) fn done(&self) -> bool {
        self.consumed >= self.geo.bat_bytes()
    }

    /// Takes the next bytes of the table (anything past its needed length is
    /// ignored); returns how many were taken.
    pub(crate) fn feed(&mut self, bytes: &[u8], layout: &Layout) -> Result<usize, VhdxError> {
        let left = self.geo.bat_bytes() - self.consumed.min(self.geo.bat_bytes());
        let take = usize::try_from(left).unwrap_or(usize::MAX).min(bytes.len());
        let mut b = bytes.get(..take).unwrap_or_default();
        if self.carry_len > 0 {
            let k = (8 - self.carry_len).min(b.len());
            if let (Some(d), Some(s)) = (
                self.carry.get_mut(self.carry_len..self.carry_len + k),
                b.get(..k),
            ) {
                d.copy_from_slice(s);
            }
            self.carry_len += k;
            self.consumed += k as u64;
            b = b.get(k..).unwrap_or_default();
            if self.carry_len < 8 {
                return Ok(take);
            }
            self.carry_len = 0;
            let e = u64::from_le_bytes(self.carry);
            self.entry((self.consumed - 8) / 8, e, layout)?;
        }
        let mut it = b.chunks_exact(8);
        for e in &mut it {
            let mut a = [0u8; 8];
            a.copy_from_slice(e);
            self.consumed += 8;
            self.entry((self.consumed - 8) / 8, u64::from_le_bytes(a), layout)?;
        }
        let rem = it.remainder();
        if let Some(d) = self.carry.get_mut(..rem.len()) {
            d.copy_from_slice(rem);
        }
        self.carry_len = rem.len();
        self.consumed += rem.len() as u64;
        Ok(take)
    }

    /// One entry: `index` counts payload and bitmap entries.
    fn entry(&mut self, index: u64, e: u64, layout: &Layout) -> Result<(), VhdxError> {
        let group = self.geo.chunk_ratio + 1;
        if index % group == self.geo.chunk_ratio {
            return Ok(()); // a sector bitmap entry
        }
        let block = index - index / group;
        let Some(guest) = block.checked_mul(self.geo.block_size) else {
            return Ok(());
        };
        if guest >= self.geo.virtual_size {
            return Ok(());
        }
        let len = self.geo.block_size.min(self.geo.virtual_size - guest);
        match (e & 7) as u8 {
            0 | 1 | 2 | 3 | 5 => self.zero(guest, len),
            6 => self.present(block, e & OFFSET_MASK, guest, len, layout),
            7 => Err(VhdxError::PartiallyPresent(block)),
            state => Err(VhdxError::BlockState { block, state }),
        }
    }

    fn zero(&mut self, guest: u64, len: u64) -> Result<(), VhdxError> {
        if let Some(z) = self.zeros.last_mut() {
            if z.0 + z.1 == guest {
                z.1 += len;
                return Ok(());
            }
        }
        self.push_checked(|s| s.zeros.push((guest, len)))
    }

    fn present(
        &mut self,
        block: u64,
        host: u64,
        guest: u64,
        len: u64,
        layout: &Layout,
    ) -> Result<(), VhdxError> {
        // qemu checks the whole block against the regions, even a last
        // block that the virtual size cuts short.
        let end = host
            .checked_add(self.geo.block_size)
            .filter(|&e| e <= i64::MAX as u64)
            .ok_or(VhdxError::BlockOverlaps {
                block,
                offset: host,
                what: "the end of the address space",
            })?;
        if let Some(what) = layout.overlap(host, end) {
            return Err(VhdxError::BlockOverlaps {
                block,
                offset: host,
                what,
            });
        }
        if let Some(file) = self.stream_len {
            if host + len > file {
                return Err(VhdxError::BlockPastEnd {
                    block,
                    offset: host,
                    len: file,
                });
            }
        }
        if let Some(r) = self.runs.last_mut() {
            if r.host + r.len == host && r.guest + r.len == guest {
                r.len += len;
                return Ok(());
            }
        }
        self.push_checked(|s| s.runs.push(Run { host, guest, len }))
    }

    /// Adds one entry after checking the budget (capacity included, so a
    /// growing `Vec` never holds more than the budget).
    fn push_checked(&mut self, push: impl FnOnce(&mut Self)) -> Result<(), VhdxError> {
        let used = (self.runs.len() + 1) * RUN_COST + (self.zeros.len() + 1) * ZERO_COST;
        if used > self.budget {
            return Err(VhdxError::MappingBudget {
                budget: self.budget,
                runs: self.runs.len() + self.zeros.len(),
            });
        }
        let headroom = self.budget - used;
        for (len, cap, cost) in [
            (self.runs.len(), self.runs.capacity(), RUN_COST),
            (self.zeros.len(), self.zeros.capacity(), ZERO_COST),
        ] {
            if len == cap {
                // Grow by doubling while the budget allows, then by what is left.
                let more = len.max(4).min(headroom / cost / 2).max(1);
                if cost == RUN_COST {
                    self.runs.reserve_exact(more);
                } else {
                    self.zeros.reserve_exact(more);
                }
            }
        }
        push(self);
        Ok(())
    }

    /// The table is complete: sorts the runs by file offset and checks that
    /// no two share a byte.
    pub(crate) fn finish(self) -> Result<Mapping, VhdxError> {
        let BatParser {
            mut runs,
            zeros,
            geo,
            ..
        } = self;
        runs.sort_unstable_by_key(|r| r.host);
        for w in runs.windows(2) {
            if let [a, b] = w {
                if a.host + a.len > b.host {
                    return Err(VhdxError::BlocksOverlap {
                        a: a.guest / geo.block_size,
                        b: b.guest / geo.block_size,
                        offset: b.host,
                    });
                }
            }
        }
        Ok(Mapping {
            runs,
            zeros,
            next: 0,
            done_to: 0,
        })
    }
}

/// The complete mapping, met in stream order.
#[derive(Debug)]
pub(crate) struct Mapping {
    /// Allocated runs, sorted by file offset.
    pub(crate) runs: Vec<Run>,
    /// Guest ranges that read as zeros (reported once, then dropped).
    pub(crate) zeros: Vec<(u64, u64)>,
    /// The first run not fully reported.
    pub(crate) next: usize,
    /// Host offset up to which that run has been reported.
    pub(crate) done_to: u64,
}

impl Mapping {
    /// The first run still to come, if any.
    pub(crate) fn pending(&self) -> Option<&Run> {
        self.runs.get(self.next)
    }
}

#[cfg(test)]
mod tests {
    use super::super::layout::{Kind, Region};
    use super::*;

    fn layout() -> Layout {
        let m = 1u64 << 20;
        let r = |s: u64, e: u64, kind| Region {
            start: s * m,
            end: e * m,
            kind,
        };
        Layout {
            log_guid: [0; 16],
            log: r(1, 2, Kind::Log),
            bat: r(2, 3, Kind::Bat),
            metadata: r(3, 4, Kind::Metadata),
            regions: vec![
                r(1, 2, Kind::Log),
                r(2, 3, Kind::Bat),
                r(3, 4, Kind::Metadata),
            ],
        }
    }

    fn params(bs: u32, vs: u64, lss: u32) -> Params {
        Params {
            block_size: bs,
            leave_allocated: false,
            virtual_size: vs,
            logical_sector: lss,
            physical_sector: 4096,
        }
    }

    #[test]
    fn geometry_counts_bitmap_entries() {
        let m = 1u64 << 20;
        // 32 MiB blocks, 512-byte sectors: a bitmap entry after every 128.
        let g = Geometry::new(&params(32 << 20, 129 * (32 << 20), 512), m).expect("geo");
        assert_eq!((g.chunk_ratio, g.entries), (128, 130));
        let g = Geometry::new(&params(1 << 20, 4096 * m, 4096), m).expect("geo");
        assert_eq!((g.chunk_ratio, g.entries), (32768, 4096));
        assert_eq!(
            Geometry::new(&params(1 << 20, 0, 512), 0)
                .expect("geo")
                .entries,
            0
        );
        assert!(matches!(
            Geometry::new(&params(1 << 20, 1 << 30, 512), 8 * 1023),
            Err(VhdxError::BatTooSmall { entries: 1024, .. })
        ));
    }

    fn entries(list: &[u64]) -> Vec<u8> {
        list.iter().flat_map(|e| e.to_le_bytes()).collect()
    }

    #[test]
    fn entries_in_pieces_merge_into_runs() {
        let m = 1u64 << 20;
        let l = layout();
        // 256 MiB blocks: a bitmap entry after every 16 payload entries.
        let bs = 256 * m;
        let geo = Geometry::new(&params(256 << 20, 18 * bs, 512), m).expect("geo");
        assert_eq!(geo.entries, 19);
        let mut list = vec![0u64; 19];
        list[0] = (4 * m) | 6;
        list[1] = (4 * m + bs) | 6; // continues the run
        list[2] = 2; // zero
        list[16] = 0xdead_0000_0000_0007; // bitmap entry: ignored
        list[17] = (10 * m + 2 * bs) | 6; // block 16
        list[18] = 3; // block 17, unmapped
        let bytes = entries(&list);
        for piece in [1, 3, 8, 13, 152] {
            let mut p = BatParser::new(geo, 1 << 20, None);
            for c in bytes.chunks(piece) {
                p.feed(c, &l).expect("entries");
            }
            assert!(p.done());
            let map = p.finish().expect("mapping");
            assert_eq!(
                map.runs,
                vec![
                    Run {
                        host: 4 * m,
                        guest: 0,
                        len: 2 * bs
                    },
                    Run {
                        host: 10 * m + 2 * bs,
                        guest: 16 * bs,
                        len: bs
                    },
                ]
            );
            assert_eq!(map.zeros, vec![(2 * bs, 14 * bs), (17 * bs, bs)]);
        }
    }

    #[test]
    fn bad_entries_are_refused() {
        let m = 1u64 << 20;
        let l = layout();
        let geo = Geometry::new(&params(1 << 20, 4 * m, 512), m).expect("geo");
        let run = |list: &[u64], stream_len| {
            let mut p = BatParser::new(geo, 1 << 20, stream_len);
            p.feed(&entries(list), &l)?;
            p.finish().map(|_| ())
        };
        assert!(matches!(
            run(&[7], None),
            Err(VhdxError::PartiallyPresent(0))
        ));
        assert!(matches!(
            run(&[0, 4], None),
            Err(VhdxError::BlockState { block: 1, state: 4 })
        ));
        assert!(matches!(
            run(&[6], None),
            Err(VhdxError::BlockOverlaps { .. })
        ));
        assert!(matches!(
            run(&[(2 * m) | 6], None),
            Err(VhdxError::BlockOverlaps { .. })
        ));
        assert!(matches!(
            run(&[(8 * m) | 6, 0, (8 * m) | 6], None),
            Err(VhdxError::BlocksOverlap { a: 0, b: 2, .. })
        ));
        assert!(matches!(
            run(&[OFFSET_MASK | 6], None),
            Err(VhdxError::BlockOverlaps { .. })
        ));
        assert!(matches!(
            run(&[(8 * m) | 6], Some(9 * m - 1)),
            Err(VhdxError::BlockPastEnd { block: 0, .. })
        ));
        assert!(run(&[(8 * m) | 6, 1, 5, (9 * m) | 6], Some(10 * m)).is_ok());
    }

    #[test]
    fn the_budget_is_enforced() {
        let m = 1u64 << 20;
        let l = layout();
        let geo = Geometry::new(&params(1 << 20, 1000 * m, 512), m).expect("geo");
        // Every other block allocated, in reverse order: nothing merges.
        let list: Vec<u64> = (0..1000u64)
            .map(|i| if i % 2 == 0 { ((2000 - i) * m) | 6 } else { 0 })
            .collect();
        let mut p = BatParser::new(geo, 40 * 64, None);
        assert!(matches!(
            p.feed(&entries(&list), &l),
            Err(VhdxError::MappingBudget { .. })
        ));
        let mut p = BatParser::new(geo, 1 << 20, None);
        p.feed(&entries(&list), &l).expect("within budget");
        assert!(p.runs.capacity() * RUN_COST + p.zeros.capacity() * ZERO_COST <= 1 << 20);
    }
}
