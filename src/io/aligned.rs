//! [`AlignedBuf`]: memory aligned for `O_DIRECT`, without `unsafe`.
//!
//! `O_DIRECT` needs the memory address, the file offset and the length of
//! every transfer aligned to the device's logical block size. The write pool
//! and the spill file both need such buffers; this is the one type for it.

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
        self.storage
            .get(self.start..self.start + self.len)
            .unwrap_or_default()
    }

    /// The aligned window, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        self.storage
            .get_mut(self.start..self.start + self.len)
            .unwrap_or_default()
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

#[cfg(test)]
mod tests {
    use super::AlignedBuf;

    #[test]
    fn the_window_is_aligned_and_zeroed() {
        for align in [512usize, 4096, 1 << 20] {
            let mut b = AlignedBuf::new(3 * align, align);
            assert_eq!(b.as_slice().as_ptr() as usize % align, 0);
            assert_eq!(b.len(), 3 * align);
            assert!(b.as_slice().iter().all(|&x| x == 0));
            b.as_mut_slice()[align] = 7;
            assert_eq!(b.as_slice()[align], 7);
        }
        assert!(AlignedBuf::new(0, 4096).is_empty());
    }
}
