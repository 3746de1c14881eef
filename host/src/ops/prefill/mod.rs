//! Prefill / append attention on tensor cores: [`BatchPrefill`] over ragged (packed) K/V or
//! the paged KV cache, with the plan/run split of batch decode, and [`SinglePrefill`] for one
//! request over contiguous K/V.
//!
//! Batch: `plan_ragged`/`plan_paged` run once per step on the host (validation, the pure
//! planner [`crate::plan::prefill`], one upload of the plan's tables); `run_*` only launches:
//! the prefill kernel, then — when the plan split some query tile over KV chunks — the
//! variable-length state merge (`merge_f32_*`). In CUDA-graph mode
//! ([`BatchPrefill::new_graph`]) every buffer is sized from [`PrefillGraphLimits`] at the first
//! plan, both grids are fixed and the kernels read the item and merge-row counts from device
//! memory, so a captured `run` stays valid after any later `plan_*_into`.
//!
//! | file        | holds                                                                  |
//! |-------------|------------------------------------------------------------------------|
//! | `policy.rs` | the CTA tile and its automatic choice, persistent-CTA choice           |
//! | `graph.rs`  | graph-mode limits, table capacities and their offsets in the metadata  |
//! | `plan.rs`   | [`BatchPrefillPlan`] and planning a step (staging, one upload)         |
//! | `batch.rs`  | [`BatchPrefill`]: construction, settings, launch-only runs             |
//! | `single.rs` | [`SinglePrefill`]                                                      |
//! | `launch.rs` | kernels resolved per op, TMA tensor maps, the one launch path          |
//! | `mask.rs`   | [`DeviceMask`]: a custom mask's device copy for the `_mask` kernels     |
//!
//! Device side: `kernels-gpu/src/prefill.rs`, `prefill_hopper.rs`,
//! `prefill_hopper_persistent.rs`, `merge.rs`.
mod batch;
mod graph;
mod launch;
mod mask;
mod plan;
pub mod policy;
mod single;
mod spans;

pub use batch::BatchPrefill;
pub use graph::PrefillGraphLimits;
pub use mask::DeviceMask;
pub use plan::BatchPrefillPlan;
pub use policy::{
    mean_keys_per_query, persistent_auto, PrefillTile, MIN_CHUNK, PERSISTENT_MAX_MEAN_TILES,
    WGMMA_MIN_KEYS,
};
pub use single::SinglePrefill;
