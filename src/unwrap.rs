//! Compression wrappers (gzip, xz, zstd), found by magic bytes and decoded as streams.
