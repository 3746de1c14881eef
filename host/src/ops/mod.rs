//! GPU ops: validation on the host, parameter blocks, launches.
pub mod batch_decode;
pub mod batch_prefill;
mod io_check;
pub mod merge;
pub mod model;
pub mod single_decode;
pub mod single_prefill;

pub use batch_decode::{BatchDecode, BatchDecodePlan, DecodeKernel, GraphLimits};
pub use batch_prefill::{
    mean_keys_per_query, BatchPrefill, BatchPrefillPlan, PrefillGraphLimits, PrefillTile,
    WGMMA_MIN_KEYS,
};
pub use merge::{merge_state, merge_state_in_place, merge_states, MergeShape};
pub use model::ModelKernels;
pub use single_decode::SingleDecode;
pub use single_prefill::SinglePrefill;
