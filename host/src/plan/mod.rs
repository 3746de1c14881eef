//! Host-side planners: pure functions from a step's shapes to a work partition (FlashInfer's
//! plan/run split). Plans are computed once per step and reused by every layer.
pub mod cascade;
pub mod decode;

/// Most entries (work items, query tiles, merge rows, scheduled units, CTAs) one plan may hold.
/// A plan's tables are allocated on the host and uploaded every step; 2^22 entries (tens of
/// MiB) is far beyond any real step (the GPU prefill launches at most 65535 items, decode
/// splits a request into at most 1024), while a caller's fixed split of one key over
/// 2^31 − 1 keys would otherwise ask for tens of GiB and abort the process (or be killed when
/// the memory is touched). Beyond it the planners return [`crate::Error::InvalidArgument`]
/// naming this limit: split the step.
pub const MAX_PLAN_ENTRIES: usize = 1 << 22;
pub mod prefill;
pub mod units;

pub use cascade::{plan as plan_cascade, CascadeLevel, LevelBatch};
pub use decode::{plan as plan_decode, DecodePlan, DecodeProblem};
pub use prefill::{plan as plan_prefill, PrefillPlan, PrefillProblem};
pub use units::{schedule as schedule_units, UnitSchedule};
