//! GPU ops: validation on the host, parameter blocks, launches.
//!
//! Each op resolves its kernels once, when it is built; planned ops (batch decode, batch
//! prefill) keep their step's tables in a shared plan workspace ([`workspace`]).
pub mod batch_decode;
pub mod cascade;
mod io_check;
pub(crate) mod kv_copy;
pub mod merge;
pub mod model;
pub mod prefill;
pub(crate) mod rope_attn;
pub mod single_decode;
mod workspace;

pub use batch_decode::{BatchDecode, BatchDecodePlan, DecodeKernel, GraphLimits, PagedKvSpans};
pub use cascade::{CascadeAttention, CascadePlan};
pub use kv_copy::{append_spans, AppendMetaSpans, RowSpans};
pub use merge::{
    merge_state, merge_state_in_place, merge_state_in_place_spans, merge_state_spans, merge_states,
    merge_states_spans, MergeShape,
};
pub use model::ModelKernels;
pub use prefill::{
    mean_keys_per_query, BatchPrefill, BatchPrefillPlan, DeviceMask, PrefillGraphLimits,
    PrefillTile, SinglePrefill, WGMMA_MIN_KEYS,
};
pub use single_decode::SingleDecode;
