//! Aligned buffers and the fixed pool they circulate in.
//!
//! `O_DIRECT` needs the memory address, the file offset and the length of every
//! transfer aligned to the target's logical block size. The pool allocates all
//! its buffers once, when the target opens; after that buffers only move between
//! the filling side and the writer threads, so the write side's memory is
//! `(queue_depth + 1) * buffer_size` whatever the image size.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

/// A heap buffer whose start address is a multiple of `align`.
///
/// It over-allocates by `align` bytes and works on the aligned window inside,
/// which keeps it free of `unsafe` at a cost of one block per buffer.
pub struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// A zero-filled buffer of `len` bytes aligned to `align` (a power of two).
    pub fn new(len: usize, align: usize) -> Self {
        debug_assert!(align.is_power_of_two());
        let storage = vec![0u8; len.saturating_add(align)];
        let addr = storage.as_ptr() as usize;
        // Distance from the allocation to the next multiple of `align`; always < align.
        let start = addr.wrapping_neg() & (align - 1);
        AlignedBuf {
            storage,
            start,
            len,
        }
    }

    /// The aligned window.
    pub fn as_slice(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }

    /// The aligned window, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }

    /// Capacity of the aligned window.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a zero-length buffer.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A fixed set of equally sized aligned buffers.
///
/// `get` blocks until a writer thread hands a buffer back, which is what bounds
/// the number of writes in flight: the decoder simply cannot run further ahead
/// than the pool allows.
pub struct BufferPool {
    free_rx: Receiver<AlignedBuf>,
    free_tx: SyncSender<AlignedBuf>,
    buffer_size: usize,
}

impl BufferPool {
    /// Allocates `count` buffers of `buffer_size` bytes aligned to `align`.
    pub fn new(count: usize, buffer_size: usize, align: usize) -> Self {
        let (free_tx, free_rx) = sync_channel(count);
        for _ in 0..count {
            // Cannot fail or block: the channel has room for exactly `count`.
            let _ = free_tx.try_send(AlignedBuf::new(buffer_size, align));
        }
        BufferPool {
            free_rx,
            free_tx,
            buffer_size,
        }
    }

    /// Waits for a free buffer. `None` only if every returner is gone and the
    /// pool is empty, which means a writer thread died.
    pub fn get(&self) -> Option<AlignedBuf> {
        self.free_rx.recv().ok()
    }

    /// A handle writer threads use to give buffers back.
    pub fn returner(&self) -> SyncSender<AlignedBuf> {
        self.free_tx.clone()
    }

    /// Gives a buffer back from the filling side.
    pub fn put(&self, buf: AlignedBuf) {
        // The channel's capacity equals the buffer count, so this never blocks.
        let _ = self.free_tx.try_send(buf);
    }

    /// Size of every buffer.
    pub fn buffer_size(&self) -> usize {
        self.buffer_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_sized() {
        for align in [512usize, 4096, 65536] {
            let b = AlignedBuf::new(3 * align, align);
            assert_eq!(b.as_slice().as_ptr() as usize % align, 0);
            assert_eq!(b.len(), 3 * align);
            assert!(b.as_slice().iter().all(|&x| x == 0));
        }
    }

    #[test]
    fn pool_hands_out_exactly_its_buffers() {
        let pool = BufferPool::new(2, 8192, 4096);
        let a = pool.get().expect("first");
        let b = pool.get().expect("second");
        // The pool is now empty: a third get would block, so try the channel directly.
        assert!(pool.free_rx.try_recv().is_err());
        pool.put(a);
        pool.returner().send(b).expect("return");
        assert!(pool.get().is_some());
        assert!(pool.get().is_some());
        assert_eq!(pool.buffer_size(), 8192);
    }
}
