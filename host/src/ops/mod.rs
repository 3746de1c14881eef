//! GPU ops: validation on the host, parameter blocks, launches.
pub mod single_decode;

pub use single_decode::SingleDecode;
