//! GPU ops: validation on the host, parameter blocks, launches.
pub mod batch_decode;
pub mod single_decode;
pub mod single_prefill;

pub use batch_decode::{BatchDecode, BatchDecodePlan, DecodeKernel, GraphLimits};
pub use single_decode::SingleDecode;
pub use single_prefill::SinglePrefill;
