//! Does the log hold entries to replay? Asked only when the current header
//! names a log (a non-zero LogGuid): the log is a circular buffer of 4 KiB
//! sectors, and an entry is valid when its header, its descriptors and its
//! CRC-32C over every sector agree.
//!
//! qemu scans the log sector by sector from its start (block/vhdx-log.c,
//! `vhdx_log_search`): an invalid entry header moves one sector on; a valid
//! header whose descriptors are invalid makes the whole image unreadable; a
//! checksum mismatch moves past the sectors read; the scan stops once it
//! wraps around. Any valid entry means the log must be replayed, which qemu
//! refuses on a read-only open and so does this decoder. The scan is
//! replayed here over the held log, the same way.

use super::layout::{guid_at, u32_at, u64_at};
use super::{digest, VhdxError};

const SECTOR: usize = 4096;
/// An entry header's size.
const ENTRY_HEAD: usize = 64;
/// A descriptor's size.
const DESC: usize = 32;

/// Checks the log (`log` is the whole log region, a multiple of 1 MiB;
/// `guid` the current header's LogGuid; `offset` where the log lies, for
/// messages).
pub(crate) fn check(log: &[u8], guid: &[u8; 16], offset: u64) -> Result<(), VhdxError> {
    let sectors = log.len() / SECTOR;
    if sectors == 0 {
        return Ok(());
    }
    let sector = |i: usize| log.get((i % sectors) * SECTOR..(i % sectors + 1) * SECTOR);
    let mut read = 0usize;
    // Sectors the scan has moved over; a hostile log could make qemu loop
    // for ever (an entry as long as the log, with a bad checksum).
    let mut walked = 0usize;
    loop {
        let tail = read;
        let Some(first) = sector(read) else {
            return Ok(());
        };
        let step = match entry_header(first, log.len(), guid) {
            None => 1,
            Some(h) => {
                // The descriptor sectors: the header, then 32-byte descriptors.
                let desc_sectors = (h.count as usize + 2).div_ceil(128);
                for i in 0..h.count as usize {
                    let at = ENTRY_HEAD + DESC * i;
                    let d = sector(read + at / SECTOR)
                        .and_then(|s| s.get(at % SECTOR..at % SECTOR + DESC))
                        .unwrap_or_default();
                    if !descriptor_ok(d, h.seq) {
                        return Err(VhdxError::LogDescriptor(offset + (read * SECTOR) as u64));
                    }
                }
                let total = h.length as usize / SECTOR;
                let n = desc_sectors.max(total);
                let mut d = digest();
                for i in 0..n {
                    let s = sector(read + i).unwrap_or_default();
                    if i == 0 {
                        // The checksum field itself counts as zero.
                        d.update(s.get(..4).unwrap_or_default());
                        d.update(&[0; 4]);
                        d.update(s.get(8..).unwrap_or_default());
                    } else {
                        d.update(s);
                    }
                }
                if d.finalize() == h.checksum {
                    return Err(VhdxError::LogToReplay);
                }
                n
            }
        };
        walked += step;
        if walked > 2 * sectors {
            return Err(VhdxError::LogUnscannable);
        }
        read = (read + step) % sectors;
        if read < tail {
            return Ok(());
        }
    }
}

/// A log entry header's fields, when it passes qemu's checks.
struct EntryHeader {
    checksum: u32,
    length: u32,
    seq: u64,
    count: u32,
}

fn entry_header(s: &[u8], log_len: usize, guid: &[u8; 16]) -> Option<EntryHeader> {
    let h = EntryHeader {
        checksum: u32_at(s, 4),
        length: u32_at(s, 8),
        seq: u64_at(s, 16),
        count: u32_at(s, 24),
    };
    let ok = s.get(..4) == Some(b"loge")
        && h.length as usize <= log_len
        && h.length as usize % SECTOR == 0
        && h.seq != 0
        && guid_at(s, 32) == *guid
        && u64::from(h.count) * DESC as u64 <= u64::from(h.length);
    ok.then_some(h)
}

fn descriptor_ok(d: &[u8], seq: u64) -> bool {
    if u64_at(d, 24) != seq || u64_at(d, 16) % SECTOR as u64 != 0 {
        return false;
    }
    match d.get(..4) {
        Some(b"zero") => u64_at(d, 8) % SECTOR as u64 == 0,
        Some(b"desc") => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::super::checksum;
    use super::*;

    pub(crate) const GUID: [u8; 16] = [7; 16];

    /// A log of `mib` MiB with one entry at sector `at`: a header sector with
    /// one zero descriptor (`bad_desc` spoils it) and `data` more sectors.
    fn log(mib: usize, at: usize, data: usize, bad_desc: bool, bad_crc: bool) -> Vec<u8> {
        let mut l = vec![0u8; mib << 20];
        let start = at * SECTOR;
        let len = (1 + data) * SECTOR;
        let e = &mut l[start..start + len];
        e[..4].copy_from_slice(b"loge");
        e[8..12].copy_from_slice(&(len as u32).to_le_bytes());
        e[16..24].copy_from_slice(&5u64.to_le_bytes());
        e[24..28].copy_from_slice(&1u32.to_le_bytes());
        e[32..48].copy_from_slice(&GUID);
        let d = &mut e[64..96];
        d[..4].copy_from_slice(if bad_desc { b"nope" } else { b"zero" });
        d[8..16].copy_from_slice(&4096u64.to_le_bytes());
        d[16..24].copy_from_slice(&(8u64 << 20).to_le_bytes());
        d[24..32].copy_from_slice(&5u64.to_le_bytes());
        for s in 1..=data {
            e[s * SECTOR..s * SECTOR + 4].copy_from_slice(b"data");
        }
        let c = checksum(e, 4) ^ u32::from(bad_crc);
        e[4..8].copy_from_slice(&c.to_le_bytes());
        l
    }

    #[test]
    fn finds_entries_to_replay_as_qemu_does() {
        assert!(check(&vec![0u8; 1 << 20], &GUID, 0).is_ok());
        for (at, data) in [(0, 0), (3, 2), (255, 0)] {
            assert!(matches!(
                check(&log(1, at, data, false, false), &GUID, 0),
                Err(VhdxError::LogToReplay)
            ));
        }
        // An entry that wraps around the end of the log.
        let mut l = log(1, 0, 1, false, false);
        l.rotate_left(SECTOR);
        assert!(matches!(check(&l, &GUID, 0), Err(VhdxError::LogToReplay)));
        // Another log's entry, a bad checksum: nothing to replay.
        assert!(check(&log(1, 3, 1, false, false), &[8; 16], 0).is_ok());
        assert!(check(&log(1, 3, 1, false, true), &GUID, 0).is_ok());
        // A valid header over a bad descriptor: qemu cannot open the image.
        assert!(matches!(
            check(&log(1, 3, 0, true, false), &GUID, 1 << 20),
            Err(VhdxError::LogDescriptor(o)) if o == (1 << 20) + 3 * 4096
        ));
    }

    #[test]
    fn an_endless_scan_is_refused() {
        // An entry as long as the whole log, with a bad checksum, at sector 0:
        // qemu's scan would come back to it for ever.
        let mut l = log(1, 0, 255, false, true);
        assert!(matches!(
            check(&l, &GUID, 0),
            Err(VhdxError::LogUnscannable)
        ));
        l[8..12].copy_from_slice(&(4096u32 * 100).to_le_bytes());
        assert!(check(&l, &GUID, 0).is_ok());
    }
}
