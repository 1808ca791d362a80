//! Decompression of compressed units inside an image (qcow2 clusters, VMDK
//! grains), on all cores: [`codec`] decompresses one unit with QEMU's
//! acceptance rules, [`pool`] runs them on worker threads and hands the
//! results back in submission order.

pub(crate) mod codec;
pub(crate) mod pool;

pub use codec::{Codec, Decompressor, InflateError};
pub use pool::{Done, Job, Pool};
