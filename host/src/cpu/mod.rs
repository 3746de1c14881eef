//! CPU backend: the public ops implemented with rayon and f32 accumulation, for machines
//! without a GPU (and as the embedded default the CLI falls back to).
//!
//! The CPU ops have the GPU ops' semantics (masks and lse: [`crate::reference`]; state merge:
//! [`merge`]) and share their math:
//! logits go through `ferrinfer_kernels::math::softmax::LogitTransform` into the base-2 domain
//! and are folded with the same online-softmax `State`, and states merge with the same
//! `merge_weights`, so a difference between backends is a difference in rounding, never in
//! formulas. They accept more shapes than the GPU kernels (any head dim and group size, any
//! in-bounds strides) and validate every input before writing anything, returning a typed
//! [`crate::Error`] instead of panicking.
//!
//! | op                           | function                                         |
//! |------------------------------|--------------------------------------------------|
//! | batch decode on a page pool  | [`batch_decode()`]                               |
//! | single-request decode        | [`single_decode`], [`single_decode_contiguous`]  |
//! | decode to an f32 state       | [`single_decode_state`]                          |
//! | single-request prefill       | [`single_prefill`]                               |
//! | batch prefill, ragged KV     | [`batch_prefill_ragged`]                         |
//! | batch prefill, paged KV      | [`batch_prefill_paged`]                          |
//! | multi-level cascade, paged | [`cascade_paged`]                                |
//! | prefill under a custom mask | [`batch_prefill_ragged_masked`], [`batch_prefill_paged_masked`], [`single_prefill_masked`] |
//! | the same over fp8 K/V (with `k_scale`/`v_scale`) | [`batch_decode_fp8`], [`single_decode_fp8`], [`batch_prefill_paged_fp8`], [`batch_prefill_ragged_fp8`] |
//! | merge two states             | [`merge_state`], [`merge_state_in_place`]        |
//! | merge `n` states             | [`merge_states`]                                 |
//! | RMSNorm (+ residual add)     | [`norm::rms_norm`], [`norm::add_rms_norm`]       |
//! | RoPE                         | [`rope::apply_rope`]                             |
//! | SwiGLU gate                  | [`activation::silu_and_mul`]                     |
//! | sampling                     | [`sampling::argmax`], [`sampling::sample`]       |
pub mod activation;
pub mod batch_decode;
pub mod cascade;
pub mod decode;
pub mod merge;
pub mod norm;
pub mod prefill;
pub mod rope;
pub mod sampling;

pub use crate::ops::single_decode::KvStrides;
pub use batch_decode::{batch_decode, batch_decode_fp8, batch_decode_rope};
pub use cascade::cascade_paged;
pub use decode::{
    single_decode, single_decode_contiguous, single_decode_fp8, single_decode_rope,
    single_decode_state,
};
pub use merge::{merge_state, merge_state_in_place, merge_states};
pub use prefill::{
    batch_prefill_paged, batch_prefill_paged_fp8, batch_prefill_paged_masked,
    batch_prefill_paged_rope, batch_prefill_ragged, batch_prefill_ragged_fp8,
    batch_prefill_ragged_masked, batch_prefill_ragged_rope, single_prefill, single_prefill_masked,
};
