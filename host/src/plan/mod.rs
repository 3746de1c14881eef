//! Host-side planners: pure functions from a step's shapes to a work partition (FlashInfer's
//! plan/run split). Plans are computed once per step and reused by every layer.
pub mod decode;
pub mod prefill;
pub mod units;

pub use decode::{plan as plan_decode, DecodePlan, DecodeProblem};
pub use prefill::{plan as plan_prefill, PrefillPlan, PrefillProblem};
pub use units::{schedule as schedule_units, UnitSchedule};
