//! Small I/O pieces shared by the stages, one concern per file: memory
//! aligned for `O_DIRECT` ([`aligned`]) and opening with `O_DIRECT` where
//! the filesystem allows it ([`direct`]); the taps on
//! the source stream ([`count`] for progress, [`hash`] for checksums,
//! [`interrupt`] for signals), looking at a stream's first bytes without
//! consuming them ([`peek`]), random access to a source ([`range`]), a run
//! of zeros being joined before it is reported ([`zero_run`]), the bounded
//! bridge from an async producer to a blocking reader ([`chunk_pipe`]), and
//! the `Read`-through-`BufRead` helper the taps share.

pub(crate) mod aligned;
pub(crate) mod chunk_pipe;
pub(crate) mod count;
pub(crate) mod direct;
pub(crate) mod hash;
pub(crate) mod interrupt;
pub(crate) mod peek;
pub(crate) mod range;
pub(crate) mod zero_run;

use std::io::{self, BufRead};

pub use aligned::AlignedBuf;
pub(crate) use count::CountTap;
pub(crate) use hash::HashTap;
pub(crate) use interrupt::{InterruptTap, Interrupted};
pub(crate) use peek::PeekReader;
pub use range::RangeRead;
pub(crate) use zero_run::ZeroRun;

/// `Read::read` for a `BufRead` stage (the HTTP reader, the progress and
/// checksum taps): copy out of `fill_buf`, then `consume`, so a stage that
/// acts on consumed bytes sees each byte exactly once whichever way it is read.
pub(crate) fn read_via_buf<R: BufRead + ?Sized>(r: &mut R, out: &mut [u8]) -> io::Result<usize> {
    if out.is_empty() {
        return Ok(0);
    }
    let avail = r.fill_buf()?;
    let n = out.len().min(avail.len());
    out[..n].copy_from_slice(&avail[..n]);
    r.consume(n);
    Ok(n)
}
