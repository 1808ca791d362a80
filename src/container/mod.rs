//! Containers: archives that hold the image as one member, read as a
//! stream of that member (range reads stop here, as they stop at a
//! compression wrapper). [`tar`] walks a tar stream member by member; the
//! registry source (a layer's disk entry) and OVA import (the first disk
//! of the OVF, [`ova`], with its descriptor parsed by [`ovf`]) choose the
//! member.

pub(crate) mod ova;
pub(crate) mod ovf;
pub(crate) mod tar;

pub use ova::{open as open_ova, Compression, OvaDisk, OvaError};
pub use ovf::OvfError;
