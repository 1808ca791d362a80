//! raw: streamed straight through; all-zero blocks become zero extents.
