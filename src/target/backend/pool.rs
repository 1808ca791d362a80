//! Aligned buffers and the bounded pool they circulate in.
//!
//! `O_DIRECT` needs the memory address, the file offset and the length of every
//! transfer aligned to the target's logical block size. The pool hands out at
//! most `count` buffers; they move between the filling side and the writer
//! threads, so the write side's memory is at most `count * buffer_size`
//! whatever the image size.
//!
//! Buffers are allocated on first need, not up front, and the most recently
//! returned buffer is handed out first (a stack, not a queue). A pipeline that
//! the decoder limits (compressed images, where the writers wait for data)
//! then keeps reusing the same two or three buffers, and the rest are never
//! allocated, so they cost no memory: the pool's bound only becomes real
//! memory when the writes are what limits the import, which is exactly when
//! more writes in flight buy speed (BENCHMARKS.md, "Tuning").

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

pub use crate::io::AlignedBuf;

/// A bounded, lazily filled set of equally sized aligned buffers.
///
/// `get` blocks until a writer thread hands a buffer back once `count` exist,
/// which is what bounds the number of writes in flight: the decoder simply
/// cannot run further ahead than the pool allows.
pub struct BufferPool {
    shared: Arc<Shared>,
    buffer_size: usize,
    align: usize,
}

struct Shared {
    state: Mutex<State>,
    returned: Condvar,
}

struct State {
    /// Free buffers; the last one pushed is the next handed out.
    free: Vec<AlignedBuf>,
    /// Buffers allocated so far (free or in use), at most `count`.
    allocated: usize,
    count: usize,
    /// Live [`Returner`]s: when none is left and every buffer is out, no
    /// buffer can ever come back.
    returners: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a holder panicked; the state (a stack
        // and two counters) is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn give(&self, buf: AlignedBuf) {
        let mut st = self.lock();
        if st.allocated > st.count {
            // The limit was lowered while this buffer was out: free it.
            st.allocated -= 1;
            drop(st);
            drop(buf);
            return;
        }
        st.free.push(buf);
        drop(st);
        self.returned.notify_one();
    }
}

impl BufferPool {
    /// A pool of at most `count` buffers of `buffer_size` bytes aligned to
    /// `align`. Nothing is allocated yet.
    pub fn new(count: usize, buffer_size: usize, align: usize) -> Self {
        BufferPool {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    free: Vec::with_capacity(count),
                    allocated: 0,
                    count: count.max(1),
                    returners: 0,
                }),
                returned: Condvar::new(),
            }),
            buffer_size,
            align,
        }
    }

    /// A free buffer: the most recently returned one, else a new one while
    /// fewer than `count` exist, else the next one returned. `None` only if
    /// every buffer is out and no returner is left, which means the writer
    /// threads are gone.
    pub fn get(&self) -> Option<AlignedBuf> {
        let mut st = self.shared.lock();
        loop {
            if let Some(buf) = st.free.pop() {
                return Some(buf);
            }
            if st.allocated < st.count {
                st.allocated += 1;
                drop(st);
                return Some(AlignedBuf::new(self.buffer_size, self.align));
            }
            if st.returners == 0 {
                return None;
            }
            st = self
                .shared
                .returned
                .wait(st)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// A handle writer threads use to give buffers back.
    pub fn returner(&self) -> Returner {
        self.shared.lock().returners += 1;
        Returner(Arc::clone(&self.shared))
    }

    /// Gives a buffer back from the filling side.
    pub fn put(&self, buf: AlignedBuf) {
        self.shared.give(buf);
    }

    /// Size of every buffer.
    pub fn buffer_size(&self) -> usize {
        self.buffer_size
    }

    /// Lowers the most buffers that may exist to `count` (never raises it).
    /// Free buffers beyond the new limit are released now, buffers in use
    /// when they come back.
    pub fn lower_limit(&self, count: usize) {
        let mut st = self.shared.lock();
        st.count = st.count.min(count.max(1));
        while st.allocated > st.count {
            if st.free.pop().is_none() {
                break;
            }
            st.allocated -= 1;
        }
    }

    /// The most buffers that may exist now.
    pub fn limit(&self) -> usize {
        self.shared.lock().count
    }

    /// Buffers allocated so far (for tests and reports).
    pub fn allocated(&self) -> usize {
        self.shared.lock().allocated
    }
}

/// Gives buffers back to their pool from any thread.
pub struct Returner(Arc<Shared>);

impl Returner {
    /// Returns `buf` to the pool (never blocks for long: one short lock).
    pub fn give(&self, buf: AlignedBuf) {
        self.0.give(buf);
    }
}

impl Clone for Returner {
    fn clone(&self) -> Self {
        self.0.lock().returners += 1;
        Returner(Arc::clone(&self.0))
    }
}

impl Drop for Returner {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.returners = st.returners.saturating_sub(1);
        drop(st);
        // A `get` waiting for a buffer must learn that none will come.
        self.0.returned.notify_all();
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
    fn pool_allocates_lazily_and_reuses_the_last_buffer_returned() {
        let pool = BufferPool::new(3, 8192, 4096);
        assert_eq!(pool.allocated(), 0);
        let mut a = pool.get().expect("first");
        a.as_mut_slice()[0] = 1;
        let a_addr = a.as_slice().as_ptr();
        pool.put(a);
        // Reused, not a second allocation.
        let b = pool.get().expect("again");
        assert_eq!(b.as_slice().as_ptr(), a_addr);
        assert_eq!(pool.allocated(), 1);
        let c = pool.get().expect("second");
        let d = pool.get().expect("third");
        assert_eq!(pool.allocated(), 3);
        let ret = pool.returner();
        ret.give(c);
        ret.give(d);
        // Last in, first out.
        let e = pool.get().expect("reuse");
        assert_ne!(e.as_slice().as_ptr(), a_addr);
        assert_eq!(pool.allocated(), 3);
        assert_eq!(pool.buffer_size(), 8192);
        drop((b, e));
    }

    #[test]
    fn lowering_the_limit_releases_buffers_as_they_come_back() {
        let pool = BufferPool::new(4, 4096, 4096);
        let held: Vec<_> = (0..4).map(|_| pool.get().expect("buffer")).collect();
        assert_eq!(pool.allocated(), 4);
        pool.lower_limit(2);
        let ret = pool.returner();
        for b in held {
            ret.give(b);
        }
        assert_eq!(pool.allocated(), 2, "two freed on return");
        let a = pool.get().expect("first");
        let b = pool.get().expect("second");
        assert_eq!(pool.allocated(), 2);
        drop(ret);
        // With the returner gone and both buffers out, a third is refused
        // rather than allocated past the lowered limit.
        assert!(pool.get().is_none());
        pool.lower_limit(8);
        assert!(pool.get().is_none(), "the limit is never raised");
        drop((a, b));
    }

    #[test]
    fn get_waits_for_a_returned_buffer_and_gives_up_when_no_returner_is_left() {
        let pool = BufferPool::new(1, 4096, 4096);
        let a = pool.get().expect("only buffer");
        let ret = pool.returner();
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            ret.give(a);
        });
        assert!(pool.get().is_some(), "the returned buffer arrives");
        t.join().expect("returner thread");
        // Every buffer out, no returner: get must not block forever.
        let pool = BufferPool::new(1, 4096, 4096);
        let held = pool.get().expect("only buffer");
        assert!(pool.get().is_none());
        drop(held);
    }
}
